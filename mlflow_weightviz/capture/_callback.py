"""What every framework callback shares: settings checked up front, one Recorder per training run."""

from __future__ import annotations

import os
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from mlflow_weightviz.capture.recorder import DEFAULT_CHUNK_STEPS, DEFAULT_MAX_UPLOADS, Recorder, RecordSettings
from mlflow_weightviz.errors import MissingDependencyError, UsageError

if TYPE_CHECKING:
    from mlflow_weightviz.pipeline import RenderResult

__all__ = ["DEFAULT_CHUNK_STEPS", "DEFAULT_MAX_UPLOADS", "RecordingCallback", "missing", "pick_every"]


def missing(framework: str, extra: str) -> MissingDependencyError:
    """The error raised when a callback's framework is not installed."""
    return MissingDependencyError(f"this callback needs {framework}: pip install 'mlflow-weightviz[{extra}]'")


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
    """Mixin of the framework callbacks: holds the settings and the current :class:`Recorder`.

    A callback can also be used as a context manager around training, which closes the
    recorder (flush, then render) even when training raises in a framework that has no
    exception hook. Recorders still open when Python exits are closed then.
    """

    _settings: RecordSettings
    _run_id: str | None
    _tracking_uri: str | None
    _recorder: Recorder | None
    _result: RenderResult | None

    def _init_recording(self, *, every: int, layers: str | Sequence[str] | None, artifact_path: str,
                        render: bool, render_artifact_path: str, run_id: str | None, tracking_uri: str | None,
                        dtype: Any, chunk_steps: int, max_uploads: int,
                        buffer_dir: str | os.PathLike[str] | None, render_options: dict[str, Any]) -> None:
        self._settings = RecordSettings.build(
            every=every, layers=layers, artifact_path=artifact_path, render=render,
            render_artifact_path=render_artifact_path, dtype=dtype, chunk_steps=chunk_steps,
            max_uploads=max_uploads, buffer_dir=buffer_dir, render_options=render_options)
        self._run_id = run_id
        self._tracking_uri = tracking_uri
        self._recorder = None
        self._result = None

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

