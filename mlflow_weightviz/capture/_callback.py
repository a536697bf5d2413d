"""What every framework callback shares: settings checked up front, one Recorder per training run."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from mlflow_weightviz.capture.recorder import Recorder
from mlflow_weightviz.capture.settings import DEFAULT_CHUNK_STEPS, DEFAULT_MAX_UPLOADS, RecordSettings
from mlflow_weightviz.errors import MissingDependencyError, UsageError

if TYPE_CHECKING:
    from mlflow_weightviz.pipeline import RenderResult

__all__ = ["RecordingCallback", "missing", "pick_every", "sharded"]


def missing(framework: str, extra: str) -> MissingDependencyError:
    """The error raised when a callback's framework is not installed."""
    return MissingDependencyError(f"this callback needs {framework}: pip install 'mlflow-weightviz[{extra}]'")


def sharded(model: Any) -> bool:
    """Whether a model is sharded (FSDP2 DTensors, or FSDP1 modules): then every rank takes part in recording."""
    from mlflow_weightviz.capture.recorder import _fsdp1, _has_dtensors

    return _has_dtensors(model) or _fsdp1(model)


def pick_every(unit_a: str, a: int | None, unit_b: str, b: int | None, default: tuple[str, int]) -> tuple[str, int]:
    """The one frequency given (``every_n_<unit>=N``), or the default; giving both is an error."""
    if a is not None and b is not None:
        msg = f"give every_n_{unit_a} or every_n_{unit_b}, not both"
        raise UsageError(msg)
    if a is not None:
        return unit_a, a
    if b is not None:
        return unit_b, b
    return default


class RecordingCallback:
    """Base of the framework callbacks: the recording keywords they share, and the current :class:`Recorder`.

    Each callback takes its own frequency keywords (``every_n_epochs`` and the like),
    then the keywords below, all keyword-only and checked when the callback is made. A
    callback can also be used as a context manager around training, which closes the
    recorder (flush, then render) even when training raises in a framework that has no
    exception hook. Recorders still open when Python exits are closed then.

    Args:
        unit: What a step counts (``"epochs"``, ``"batches"``, ...); given by the subclass.
        every: Record every this many units; given by the subclass.
        layers: Name globs of the weights to record; by default those with 2 or more dims.
        artifact_path: Folder of the snapshots in the run.
        render: Render and log the GIFs when training ends.
        render_artifact_path: Folder of the GIFs in the run.
        run_id: The run; overrides the run the callback finds when training starts.
        tracking_uri: Defaults to the current tracking URI.
        dtype: Store snapshots as this dtype, e.g. ``"float16"``.
        chunk_steps: Snapshots in the first chunk file uploaded.
        max_uploads: Most chunk uploads per training run.
        buffer_dir: Where the local snapshot buffer goes.
        reduce: Store layers larger than the grid (``max_rows`` × ``max_cols``, 64×64 by
            default) as block mean, max-abs and RMS; ``False`` stores them whole.
        crops: Regions stored exactly: ``{"layer": (slice(r0, r1), slice(c0, c1))}``.
        **render_options: Fields of :class:`~mlflow_weightviz.RenderOptions` for the GIFs,
            such as ``max_frames=50``.

    Raises:
        UsageError: A bad argument, or an unknown or bad render option.
    """

    def __init__(self, unit: str, every: int, /, *, layers: str | Sequence[str] | None = None,
                 artifact_path: str = "weights", render: bool = True, render_artifact_path: str = "weightviz",
                 run_id: str | None = None, tracking_uri: str | None = None, dtype: Any = None,
                 chunk_steps: int = DEFAULT_CHUNK_STEPS, max_uploads: int = DEFAULT_MAX_UPLOADS,
                 buffer_dir: str | os.PathLike[str] | None = None, reduce: bool = True,
                 crops: Mapping[str, tuple[slice, slice]] | None = None, **render_options: Any) -> None:
        # unit and every are positional-only, so every=... from a user is an unknown render option.
        self._settings = RecordSettings.build(
            every=every, layers=layers, artifact_path=artifact_path, render=render,
            render_artifact_path=render_artifact_path, dtype=dtype, chunk_steps=chunk_steps,
            max_uploads=max_uploads, buffer_dir=buffer_dir, render_options=render_options, reduce=reduce,
            crops=crops)
        self.unit = unit
        self._run_id = run_id
        self._tracking_uri = tracking_uri
        self._recorder: Recorder | None = None
        self._result: RenderResult | None = None
        super().__init__()  # the framework's Callback, next in the subclass's MRO

    def _start(self, source: Any, *, run_id: str | None = None, tracking_uri: str | None = None) -> Recorder:
        """Open a recorder for a training run; an explicit ``run_id`` given to the callback wins."""
        if self._recorder is not None and not self._recorder.closed:
            self._recorder.close()
        if self._run_id is not None:
            run_id, tracking_uri = self._run_id, self._tracking_uri
        self._recorder = Recorder(source, self._settings, run_id=run_id,
                                  tracking_uri=tracking_uri or self._tracking_uri, warn_repeats=False)
        return self._recorder

    def _step(self, step: int) -> None:
        if self._recorder is not None and not self._recorder.closed:
            self._recorder.step(step)

    @property
    def recorder(self) -> Recorder | None:
        """The recorder of the current (or latest) training run; ``None`` before training starts."""
        return self._recorder

    @property
    def result(self) -> RenderResult | None:
        """The render's result after training ended (``None`` before, or when not rendered)."""
        return self._result

    def close(self, exc: BaseException | None = None) -> RenderResult | None:
        """Flush the snapshots and render the GIFs now; later calls do nothing.

        Args:
            exc: The exception training ended with, if any (see :meth:`Recorder.close`).
        """
        if self._recorder is not None and not self._recorder.closed:
            self._result = self._recorder.close(exc)
        return self._result

    def __enter__(self) -> Any:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close(exc)

