"""Recording weight snapshots while training: :func:`record` and the :class:`Recorder` behind every callback.

How snapshots travel, so that RAM stays flat however long the run:

1. Each snapshot is appended to a raw file in a local temporary folder, as one
   fixed-size record: the step as int64, then every layer's bytes.
2. When the buffer holds a chunk's worth of snapshots, it is turned into one
   ``chunk_<first>-<last>.npz`` of the canonical layout, streamed layer by layer from a
   memory map of the raw file (never the whole chunk in memory), and logged with
   ``MlflowClient.log_artifact``.
3. Chunks start at ``chunk_steps`` snapshots and double every :data:`DOUBLE_EVERY`
   uploads, and after ``max_uploads - 1`` uploads the rest waits for the last one, so a
   run of any length makes at most ``max_uploads`` uploads.

On exit the buffer is flushed, then the run's snapshots are rendered to GIFs and logged
to the run. If training raised, the same happens and the exception propagates.
"""

from __future__ import annotations

import atexit
import contextlib
import operator
import os
import shutil
import sys
import tempfile
import threading
import warnings
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from mlflow_weightviz import _tracking
from mlflow_weightviz.capture._arrays import DEFAULT_LAYER, weights_mapping
from mlflow_weightviz.errors import OutputError, UsageError, WeightvizError
from mlflow_weightviz.options import RenderOptions, WeightvizWarning
from mlflow_weightviz.snapshots import STEPS_KEY

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from mlflow_weightviz.pipeline import RenderResult

__all__ = ["DEFAULT_CHUNK_STEPS", "DEFAULT_MAX_UPLOADS", "DOUBLE_EVERY", "RecordSettings", "Recorder", "record"]

#: Snapshots in the first chunk file.
DEFAULT_CHUNK_STEPS = 50
#: Upper bound on chunk uploads per recorder.
DEFAULT_MAX_UPLOADS = 32
#: The chunk size doubles after this many uploads, so uploads grow with the log of the run length.
DOUBLE_EVERY = 4

_STEP_DTYPE = np.dtype("<i8")
_COPY_BLOCK = 8 << 20  # bytes copied at a time from the raw buffer into a chunk file

# Render options that make no sense from a recorder: it picks the layers itself and writes no pickles.
_NOT_RENDER_OPTIONS = frozenset({"layers", "allow_pickle"})

Reader = Callable[[], Mapping[str, Any]]


# ----------------------------------------------------------------------- settings


@dataclass(frozen=True)
class RecordSettings:
    """What to record and how to upload and render it; checked when made, before training starts.

    Attributes:
        every: Take a snapshot at the steps divisible by this (step 0 included).
        layers: Name globs of the layers to record; ``None`` records every array with 2 or more dims.
        artifact_path: Folder of the snapshots in the run.
        render: Render and log the GIFs when recording ends.
        render_artifact_path: Folder of the GIFs in the run.
        dtype: Store snapshots as this dtype (``float16`` halves the size); ``None`` keeps it.
        chunk_steps: Snapshots in the first chunk file.
        max_uploads: Most chunk uploads of one recorder.
        buffer_dir: Where the local buffer folder is made; defaults to the system's temp folder.
        options: How the GIFs are drawn.
    """

    every: int = 1
    layers: tuple[str, ...] | None = None
    artifact_path: str = "weights"
    render: bool = True
    render_artifact_path: str = "weightviz"
    dtype: np.dtype[Any] | None = None
    chunk_steps: int = DEFAULT_CHUNK_STEPS
    max_uploads: int = DEFAULT_MAX_UPLOADS
    buffer_dir: Path | None = None
    options: RenderOptions = RenderOptions()

    @classmethod
    def build(cls, *, every: int = 1, layers: str | Sequence[str] | None = None, artifact_path: str = "weights",
              render: bool = True, render_artifact_path: str = "weightviz", dtype: Any = None,
              chunk_steps: int = DEFAULT_CHUNK_STEPS, max_uploads: int = DEFAULT_MAX_UPLOADS,
              buffer_dir: str | os.PathLike[str] | None = None,
              render_options: Mapping[str, Any] | None = None) -> RecordSettings:
        """Check every argument and build the settings.

        Raises:
            UsageError: A value is out of range, or a render option is unknown or invalid.
        """
        for name, value, low in (("every", every, 1), ("chunk_steps", chunk_steps, 1),
                                 ("max_uploads", max_uploads, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                msg = f"{name} must be an integer of at least {low}; got {value!r}"
                raise UsageError(msg)
        if isinstance(layers, str):
            layers = (layers,)
        if layers is not None:
            layers = tuple(layers)
            if not layers or not all(isinstance(g, str) and g for g in layers):
                msg = f"layers must be one or more non-empty name globs such as '*.weight'; got {layers!r}"
                raise UsageError(msg)
        for name, path in (("artifact_path", artifact_path), ("render_artifact_path", render_artifact_path)):
            if not isinstance(path, str) or not path.strip("/") or ".." in path.split("/"):
                msg = f"{name} must be a relative artifact folder such as 'weights'; got {path!r}"
                raise UsageError(msg)
        if artifact_path.strip("/") == render_artifact_path.strip("/"):
            msg = f"the snapshots and the GIFs need different folders; both are {artifact_path!r}"
            raise UsageError(msg)
        return cls(every=every, layers=layers, artifact_path=artifact_path.strip("/"), render=bool(render),
                   render_artifact_path=render_artifact_path.strip("/"), dtype=_dtype(dtype),
                   chunk_steps=chunk_steps, max_uploads=max_uploads,
                   buffer_dir=Path(buffer_dir) if buffer_dir is not None else None,
                   options=render_options_from(render_options or {}))


def render_options_from(values: Mapping[str, Any]) -> RenderOptions:
    """Build :class:`RenderOptions` from keyword arguments, failing fast on unknown or bad ones.

    Raises:
        UsageError: An option is unknown, has a bad value, or names an unknown colormap.
    """
    known = sorted(name for name in RenderOptions.keywords() if name not in _NOT_RENDER_OPTIONS)
    unknown = sorted(set(values) - set(known))
    if unknown:
        msg = f"unknown render option(s) {', '.join(unknown)}; the render options are: {', '.join(known)}"
        raise UsageError(msg)
    return RenderOptions(**values)  # checks the colormap too


def _dtype(value: Any) -> np.dtype[Any] | None:
    if value is None:
        return None
    try:
        dtype: np.dtype[Any] = np.dtype(value)
    except TypeError:
        msg = f"dtype must be a numeric numpy dtype such as 'float16'; got {value!r}"
        raise UsageError(msg) from None
    if dtype.hasobject or dtype.kind not in "biufc":
        msg = f"dtype must be a numeric numpy dtype such as 'float16'; got {dtype}"
        raise UsageError(msg)
    return dtype


# ------------------------------------------------------------------------ sources


def source_reader(source: Any) -> Reader:
    """A function returning the source's current name → tensor mapping (nothing is converted yet).

    Keras models come first: on the torch backend they are ``torch.nn.Module`` s too, but
    their variable paths (``sequential/dense/kernel``) are the names users know.

    Raises:
        UsageError: ``source`` is none of the supported kinds.
    """
    if _is_keras(source):
        return lambda: _keras_weights(source)
    if callable(getattr(source, "named_parameters", None)):  # torch.nn.Module, LightningModule, HF model
        return lambda: dict(source.named_parameters())
    if isinstance(source, Mapping):
        return lambda: source
    if callable(source):
        return lambda: _call(source)
    msg = ("source must be a torch.nn.Module, a Keras model, a mapping of layer name → array, or a "
           f"callable returning one; got {type(source).__name__}")
    raise UsageError(msg)


def _is_keras(obj: Any) -> bool:
    return hasattr(obj, "weights") and any(
        c.__module__.split(".")[0] in {"keras", "tf_keras"} for c in type(obj).__mro__)


def _keras_weights(model: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for var in model.weights:
        name = str(getattr(var, "path", None) or var.name)
        key, n = name, 1
        while key in out:  # Keras 2 names can repeat; paths in Keras 3 do not
            n += 1
            key = f"{name}#{n}"
        out[key] = var
    return out


def _call(source: Callable[[], Any]) -> Mapping[str, Any]:
    value = source()
    return value if isinstance(value, Mapping) else {DEFAULT_LAYER: value}


def _ndim(value: Any) -> int:
    shape = getattr(value, "shape", None)
    return len(tuple(shape)) if shape is not None else int(np.ndim(value))


# ------------------------------------------------------------------ local buffer


@dataclass(frozen=True)
class _Layout:
    """Names, dtypes and shapes of one snapshot's arrays: the fixed record of a raw segment."""

    names: tuple[str, ...]
    dtypes: tuple[np.dtype[Any], ...]
    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, arrays: Mapping[str, np.ndarray]) -> _Layout:
        return cls(tuple(arrays), tuple(a.dtype for a in arrays.values()), tuple(a.shape for a in arrays.values()))

    def matches(self, arrays: Mapping[str, np.ndarray]) -> bool:
        return self == _Layout.of(arrays)

    def sizes(self) -> list[int]:
        return [int(np.prod(s, dtype=np.int64)) * d.itemsize for d, s in zip(self.dtypes, self.shapes, strict=True)]


class _Segment:
    """Snapshots of one layout, appended to one raw file, later written out as one chunk."""

    def __init__(self, path: Path, layout: _Layout) -> None:
        self.path = path
        self.layout = layout
        self.sizes = layout.sizes()
        self.record_bytes = _STEP_DTYPE.itemsize + sum(self.sizes)
        self.count = 0
        self.first = -1
        self.last = -1
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def append(self, step: int, arrays: Mapping[str, np.ndarray]) -> None:
        """Append one record; after a failed write the file is cut back, so records stay aligned."""
        try:
            _write_all(self._fd, memoryview(np.asarray(step, _STEP_DTYPE).tobytes()))
            for arr in arrays.values():
                _write_all(self._fd, np.ascontiguousarray(arr).reshape(-1).view(np.uint8).data)  # no copy
        except BaseException:  # a full disk, or Ctrl-C halfway through a record
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self.count * self.record_bytes)
            raise
        if self.count == 0:
            self.first = step
        self.count += 1
        self.last = step

    @property
    def chunk_name(self) -> str:
        return f"chunk_{self.first}-{self.last}.npz"

    def write_chunk(self, target: Path) -> Path:
        """Write the canonical chunk file, one zip member (layer) at a time.

        Each member is copied slice by slice from the raw file with ``os.pread``: at most
        :data:`_COPY_BLOCK` bytes are in memory at once, and no memory map inflates the
        process's resident size with the chunk's pages.
        """
        members: list[tuple[str, np.dtype[Any], tuple[int, ...], int, int]] = [
            (STEPS_KEY, _STEP_DTYPE, (), 0, _STEP_DTYPE.itemsize)]
        offset = _STEP_DTYPE.itemsize
        for name, dtype, shape, size in zip(self.layout.names, self.layout.dtypes, self.layout.shapes,
                                            self.sizes, strict=True):
            members.append((name, dtype, shape, offset, size))
            offset += size
        fd = os.open(self.path, os.O_RDONLY)
        try:
            # Stored, not deflated: the renderer memory-maps stored members in place.
            with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
                for name, dtype, shape, start, size in members:
                    with zf.open(f"{name}.npy", "w", force_zip64=True) as fh:
                        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                                  "shape": (self.count, *shape)}
                        np.lib.format.write_array_header_2_0(fh, header)
                        for row in range(self.count):
                            _copy_range(fd, row * self.record_bytes + start, size, fh)
        finally:
            os.close(fd)
        return target

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def discard(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view):]


def _copy_range(fd: int, offset: int, size: int, out: Any) -> None:
    end = offset + size
    while offset < end:
        data = os.pread(fd, min(_COPY_BLOCK, end - offset), offset)
        if not data:
            msg = "the snapshot buffer file is shorter than expected"
            raise OSError(msg)
        out.write(data)
        offset += len(data)


# ----------------------------------------------------------------------- recorder

# Open recorders, held strongly so that one dropped without close() is still flushed at exit.
_OPEN: set[Recorder] = set()
_ATEXIT_REGISTERED = False


class Recorder:
    """Takes snapshots of a model at chosen steps and gets them into an MLflow run.

    Made by :func:`record` (and by the framework callbacks); use it as a context manager
    and call :meth:`step` after every training step.

    Attributes:
        run_id: The run the snapshots go to.
        tracking_uri: The tracking URI used.
        settings: What is recorded and how.
        snapshots: Snapshots taken so far.
        last_step: The step of the latest snapshot, or ``None``.
        uploads: Chunk files logged to the run so far.
        artifact_paths: Their artifact paths.
        result: The render's result once the recorder is closed (``None`` before, or when not rendered).
        closed: Whether :meth:`close` has run.
    """

    def __init__(self, source: Any, settings: RecordSettings | None = None, *, run_id: str | None = None,
                 tracking_uri: str | None = None, warn_repeats: bool = True) -> None:
        self.settings = settings or RecordSettings()
        self._read = source_reader(source)
        self._client: MlflowClient = _tracking.client(tracking_uri)
        self.tracking_uri: str = str(self._client.tracking_uri)
        self.run_id = _resolve_run(self._client, run_id)
        self._warn_repeats = warn_repeats
        self.snapshots = 0
        self.last_step: int | None = None
        self.uploads = 0
        self.artifact_paths: list[str] = []
        self.result: RenderResult | None = None
        self.closed = False
        self._selection: tuple[tuple[str, ...], tuple[str, ...]] | None = None
        self._segment: _Segment | None = None
        self._sealed: list[_Segment] = []
        self._segments_made = 0
        self._retry_at = 0
        parent = self.settings.buffer_dir
        if parent is not None:
            parent.mkdir(parents=True, exist_ok=True)
        self._dir = Path(tempfile.mkdtemp(prefix="weightviz-record-",
                                          dir=None if parent is None else os.fspath(parent)))
        _register(self)

    # -- the training loop's side

    def step(self, step: int) -> bool:
        """Take a snapshot if ``step`` is divisible by ``every``; returns whether one was taken.

        Steps must increase: a step at or before the latest snapshot is skipped (with a
        warning), so nothing is recorded twice.

        Raises:
            UsageError: ``step`` is not a non-negative integer, no layer matches, or the
                recorder is closed.
        """
        if self.closed:
            msg = "this recorder is closed; start a new one with record(...)"
            raise UsageError(msg)
        try:
            step = operator.index(step)
        except TypeError:
            msg = f"step must be an integer; got {step!r}"
            raise UsageError(msg) from None
        if step < 0:
            msg = f"step must not be negative; got {step}"
            raise UsageError(msg)
        if step % self.settings.every:
            return False
        if self.last_step is not None and step <= self.last_step:
            if self._warn_repeats:
                warnings.warn(f"step {step} is not after the latest snapshot (step {self.last_step}); skipped",
                              WeightvizWarning, stacklevel=2)
            return False
        self._capture(step)
        return True

    def flush(self) -> list[str]:
        """Log every buffered snapshot to the run now; returns the artifact paths logged.

        Raises:
            TrackingServerError: The server cannot be reached.
            OutputError: The chunk cannot be written or logged.
        """
        return self._upload()

    def close(self, exc: BaseException | None = None) -> RenderResult | None:
        """Flush the buffer, then render and log the GIFs (when ``render``); safe to call twice.

        Args:
            exc: The exception training ended with, if any. Then failures here become
                warnings, so that ``exc`` is the one that propagates; after an interrupt
                (``KeyboardInterrupt``) the snapshots are flushed but not rendered.

        Returns:
            The render's result, or ``None`` when nothing was rendered.

        Raises:
            WeightvizError: Only when ``exc`` is ``None``: the flush or the render failed.
                Snapshots that could not be logged are kept on local disk, and the error says where.
        """
        if self.closed:
            return self.result
        self.closed = True
        _OPEN.discard(self)
        try:
            self._final_flush()
            if self.settings.render and self.snapshots and (exc is None or isinstance(exc, Exception)):
                from mlflow_weightviz.pipeline import render_run

                self.result = render_run(self.run_id, self.settings.options, source=self.settings.artifact_path,
                                         artifact_path=self.settings.render_artifact_path,
                                         tracking_uri=self.tracking_uri)
        except Exception as err:
            if exc is None:
                raise
            # Never hide the training error behind one of ours.
            warnings.warn(f"while training failed, mlflow-weightviz could not finish: {err}", WeightvizWarning,
                          stacklevel=2)
        return self.result

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close(exc)

    def __repr__(self) -> str:
        return (f"Recorder(run_id={self.run_id!r}, every={self.settings.every}, snapshots={self.snapshots}, "
                f"uploads={self.uploads}, closed={self.closed})")

    # -- inside

    def _capture(self, step: int) -> None:
        arrays = weights_mapping(self._select(self._read()), self.settings.dtype)
        if self._segment is not None and not self._segment.layout.matches(arrays):
            self._segment.close()  # the layers changed: the next chunk starts here
            self._sealed.append(self._segment)
            self._segment = None
        if self._segment is None:
            self._segments_made += 1
            self._segment = _Segment(self._dir / f"segment-{self._segments_made}.raw", _Layout.of(arrays))
        segment = self._segment
        try:
            segment.append(step, arrays)
        except OSError as exc:
            msg = f"cannot buffer the snapshot of step {step} in {self._dir}: {exc.strerror or exc}"
            raise OutputError(msg) from exc
        self.snapshots += 1
        self.last_step = step
        if segment.count >= max(self._capacity(), self._retry_at) and self.uploads < self.settings.max_uploads - 1:
            try:
                self._upload()
            except WeightvizError as err:
                # Keep training: the snapshots stay on disk and go with a later chunk.
                self._retry_at = segment.count + self._capacity()
                warnings.warn(f"could not log snapshots yet, will retry: {err}", WeightvizWarning, stacklevel=3)

    def _capacity(self) -> int:
        return int(self.settings.chunk_steps << (self.uploads // DOUBLE_EVERY))

    def _select(self, current: Mapping[str, Any]) -> dict[str, Any]:
        names = tuple(str(k) for k in current)
        if self._selection is None or self._selection[0] != names:
            self._selection = (names, self._choose(current, names))
        values = {str(k): v for k, v in current.items()}
        return {n: values[n] for n in self._selection[1]}

    def _choose(self, current: Mapping[str, Any], names: tuple[str, ...]) -> tuple[str, ...]:
        globs = self.settings.layers
        if globs is None:
            chosen = tuple(str(k) for k, v in current.items() if _ndim(v) >= 2)
            if not chosen:
                msg = (f"no layer has 2 or more dims (the layers are: {_listing(names)}); "
                       "pass layers=['*'] to record them all")
                raise UsageError(msg)
            return chosen
        chosen = tuple(n for n in names if any(fnmatchcase(n, g) for g in globs))
        if not chosen:
            msg = f"no layer matches {', '.join(globs)}; the layers are: {_listing(names)}"
            raise UsageError(msg)
        return chosen

    def _upload(self) -> list[str]:
        segments = [*self._sealed, *([self._segment] if self._segment is not None else [])]
        logged = []
        for seg in segments:
            if seg.count:
                logged.append(self._log_segment(seg))
            seg.discard()
            if seg is self._segment:
                self._segment = None
            else:
                self._sealed.remove(seg)
        self._retry_at = 0
        return logged

    def _log_segment(self, seg: _Segment) -> str:
        staging = self._dir / "out"
        staging.mkdir(exist_ok=True)
        try:
            path = seg.write_chunk(staging / seg.chunk_name)
        except OSError as exc:
            msg = f"cannot write {seg.chunk_name} in {staging}: {exc.strerror or exc}"
            raise OutputError(msg) from exc
        try:
            with _tracking.translate(f"logging snapshots to run {self.run_id}", writing=True):
                self._client.log_artifact(self.run_id, os.fspath(path), self.settings.artifact_path)
        finally:
            path.unlink(missing_ok=True)
        self.uploads += 1
        logged = f"{self.settings.artifact_path}/{seg.chunk_name}"
        self.artifact_paths.append(logged)
        return logged

    def _final_flush(self) -> None:
        try:
            self._upload()
        except WeightvizError as err:
            kept = self._keep_unsent()
            msg = (f"{err}; the snapshots not yet logged are kept in {kept}: log them with "
                   f"MlflowClient().log_artifacts({self.run_id!r}, {os.fspath(kept)!r}, "
                   f"{self.settings.artifact_path!r}) or render them with: mlflow-weightviz render-file {kept}")
            raise type(err)(msg) from err
        shutil.rmtree(self._dir, ignore_errors=True)

    def _keep_unsent(self) -> Path:
        kept = self._dir / "unsent"
        kept.mkdir(exist_ok=True)
        for seg in [*self._sealed, *([self._segment] if self._segment is not None else [])]:
            if seg.count:
                seg.write_chunk(kept / seg.chunk_name)
            seg.discard()
        self._sealed.clear()
        self._segment = None
        return kept


def _resolve_run(client: MlflowClient, run_id: str | None) -> str:
    if run_id is None:
        import mlflow

        active = mlflow.active_run()
        if active is None:
            msg = "recording needs an active run (mlflow.start_run()) or run_id="
            raise UsageError(msg)
        return str(active.info.run_id)
    _tracking.get_run(client, run_id)  # an unknown run fails now, not at the first upload
    return run_id


def _listing(names: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "") if names else "(none)"


def _register(rec: Recorder) -> None:
    global _ATEXIT_REGISTERED
    _OPEN.add(rec)
    if not _ATEXIT_REGISTERED:
        # Run when the main thread ends, before concurrent.futures refuses new work (its own
        # hook is registered the same way, and these run last-registered first): uploads and
        # downloads use thread pools. Plain atexit where that hook does not exist.
        register = getattr(threading, "_register_atexit", atexit.register)
        register(_close_open_recorders)
        _ATEXIT_REGISTERED = True


def _close_open_recorders() -> None:
    """At interpreter exit, finish recorders nobody closed (a callback whose ``fit`` raised)."""
    for rec in list(_OPEN):
        try:
            rec.close()
        except WeightvizError as err:
            sys.stderr.write(f"mlflow-weightviz: {err}\n")


# -------------------------------------------------------------------------- public


def record(source: Any, *, every: int = 1, layers: str | Sequence[str] | None = None,
           artifact_path: str = "weights", render: bool = True, run_id: str | None = None,
           tracking_uri: str | None = None, dtype: Any = None, chunk_steps: int = DEFAULT_CHUNK_STEPS,
           max_uploads: int = DEFAULT_MAX_UPLOADS, buffer_dir: str | os.PathLike[str] | None = None,
           render_artifact_path: str = "weightviz", **render_options: Any) -> Recorder:
    """Record a model's weights during training into an MLflow run, and render GIFs at the end.

    ::

        with mlflow.start_run():
            with mlflow_weightviz.record(model, every=10) as rec:
                for step in range(steps):
                    train_one_step()
                    rec.step(step)

    Args:
        source: A ``torch.nn.Module`` (its ``named_parameters``), a Keras model (its
            weights by path), a mapping of layer name → array-like, or a callable returning
            such a mapping (called only at the steps recorded).
        every: Take a snapshot at exactly the steps divisible by ``every``, step 0 included.
        layers: Name globs such as ``"*.weight"``; by default every array with 2 or more dims.
        artifact_path: Folder of the snapshots in the run.
        render: Render the GIFs and log them to the run when recording ends.
        run_id: The run; defaults to the active run.
        tracking_uri: Defaults to the current tracking URI.
        dtype: Store snapshots as this dtype, e.g. ``"float16"`` to halve their size.
        chunk_steps: Snapshots in the first chunk file; later chunks double every 4 uploads.
        max_uploads: Most chunk uploads for the whole recording, however long it runs.
        buffer_dir: Where the local buffer folder goes; defaults to the system's temp folder.
        render_artifact_path: Folder of the GIFs in the run.
        **render_options: Fields of :class:`~mlflow_weightviz.RenderOptions` for the GIFs,
            such as ``max_frames=50`` or ``cmap="viridis"``.

    Returns:
        A :class:`Recorder`; as a context manager it flushes and renders on exit, also
        when training raises (the exception then propagates).

    Raises:
        UsageError: A bad argument or render option, or no active run and no ``run_id``.
        RunNotFoundError: ``run_id`` does not exist.
    """
    settings = RecordSettings.build(every=every, layers=layers, artifact_path=artifact_path, render=render,
                                    render_artifact_path=render_artifact_path, dtype=dtype,
                                    chunk_steps=chunk_steps, max_uploads=max_uploads, buffer_dir=buffer_dir,
                                    render_options=render_options)
    return Recorder(source, settings, run_id=run_id, tracking_uri=tracking_uri)
