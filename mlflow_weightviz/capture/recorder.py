"""Recording weight snapshots while training: :func:`record` and the :class:`Recorder` behind every callback.

How snapshots travel, so that RAM stays flat however long the run:

1. Each snapshot is appended to a raw file in a local temporary folder, as one
   fixed-size record: the step as int64, then every layer's bytes (see ``chunks.py``).
2. When the buffer holds a chunk's worth of snapshots, it is turned into one
   ``chunk_<first>-<last>.npz`` of the canonical layout, streamed layer by layer from the
   raw file (never the whole chunk in memory), and logged with ``MlflowClient.log_artifact``.
3. Chunks start at ``chunk_steps`` snapshots and double every :data:`DOUBLE_EVERY`
   uploads, and after ``max_uploads - 1`` uploads the rest waits for the last one, so a
   run of any length makes at most ``max_uploads`` uploads.

A layer larger than the display grid (the render's ``max_rows`` × ``max_cols``, 64×64 by
default) is reduced where it lives before anything is copied (see ``reduce.py``): the
snapshot holds its block mean, max-abs and RMS, so a snapshot costs about
``3 × 64 × 64 × 4`` bytes per big layer whatever its size. ``reduce=False`` keeps every
layer whole; ``crops=`` keeps chosen regions exactly.

Under ``torch.distributed`` one rank records (see ``_distributed.py``): rank 0 of the
default process group, after every rank reduced its own shard when the parameters are
sharded (FSDP2); under FSDP1 every rank gathers the full parameters to rank 0 with
``summon_full_params`` (offloaded to its CPU) at each snapshot. A capture problem while
training (a layer that cannot be read or reduced, a full disk, a failed upload) is a
:class:`WeightvizWarning`, given once, and training goes on; only the arguments of
:func:`record` raise, when it is called.

On exit the buffer is flushed, then the run's snapshots are rendered to GIFs and logged
to the run. If training raised, the same happens and the exception propagates.
Recorders still open when Python exits are flushed and rendered then.
"""

from __future__ import annotations

import atexit
import operator
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from mlflow_weightviz import _tracking
from mlflow_weightviz.capture import _distributed
from mlflow_weightviz.capture._arrays import ndim, snapshot_arrays, source_reader, to_numpy
from mlflow_weightviz.capture._live import LiveMetrics, MetricLog
from mlflow_weightviz.capture.chunks import Layout, Segment
from mlflow_weightviz.capture.reduce import Partial
from mlflow_weightviz.capture.settings import DEFAULT_CHUNK_STEPS, DEFAULT_MAX_UPLOADS, DOUBLE_EVERY, RecordSettings
from mlflow_weightviz.errors import OutputError, UsageError, WeightvizError
from mlflow_weightviz.options import WeightvizWarning

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from mlflow_weightviz.pipeline import RenderResult

__all__ = ["DEFAULT_CHUNK_STEPS", "DEFAULT_MAX_UPLOADS", "DOUBLE_EVERY", "RecordSettings", "Recorder", "record"]

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
        self._world = _distributed.world()
        self._sharded = self._world is not None and _has_dtensors(source)
        # FSDP1 holds flat shards: every rank gathers the full parameters with summon_full_params.
        self._summoned = source if not self._sharded and _fsdp1(source) else None
        # Who does what: "solo" records alone, "lead" records from every rank's shard,
        # "helper" sends its shard to the lead, "summon" (FSDP1 rank > 0) only takes part in
        # the gathering, "idle" (data-parallel rank > 0) does nothing.
        rank = 0 if self._world is None else self._world[0]
        if self._sharded:
            self._role = "lead" if rank == 0 else "helper"
        elif self._summoned is not None:
            self._role = "solo" if rank == 0 else "summon"
        else:
            self._role = "solo" if rank == 0 else "idle"
        if self._writes:
            self._client: MlflowClient = _tracking.client(tracking_uri)
            self.tracking_uri: str = str(self._client.tracking_uri)
            self.run_id = _resolve_run(self._client, run_id)
        else:  # other ranks never talk to MLflow: they need no run
            self.tracking_uri = tracking_uri or ""
            self.run_id = run_id or ""
        self._warn_repeats = warn_repeats
        self.snapshots = 0
        self.last_step: int | None = None
        self.uploads = 0
        self.artifact_paths: list[str] = []
        self.result: RenderResult | None = None
        self.closed = False
        self.failures = 0
        self._selection: tuple[tuple[str, ...], tuple[str, ...]] | None = None
        self._segment: Segment | None = None
        self._sealed: list[Segment] = []
        self._segments_made = 0
        self._retry_at = 0
        # Training diagnostics, measured at each snapshot and logged in the background (see _live.py).
        self._live: LiveMetrics | None = None
        if self._writes and self.settings.options.outputs.metrics:
            self._live = LiveMetrics(MetricLog(self._client, self.run_id), self.settings.grid)
        self._measure_failures = 0
        self._sketch_cache: dict[Any, Any] = {}  # non-None: ranks measure their rows for the metrics
        # A model or a mapping: a layer selection that matches nothing fails now. (Not under FSDP1:
        # its layer names are only there while the parameters are gathered, a collective.)
        if _readable_now(source) and self._summoned is None:
            self._check_selection()
        self._dir = Path()
        if self._writes:
            parent = self.settings.buffer_dir
            if parent is not None:
                parent.mkdir(parents=True, exist_ok=True)
            self._dir = Path(tempfile.mkdtemp(prefix="weightviz-record-",
                                              dir=None if parent is None else os.fspath(parent)))
            _register(self)

    @property
    def _writes(self) -> bool:
        """Whether this process buffers, uploads and renders (rank 0, or not distributed)."""
        return self._role in ("solo", "lead")

    @property
    def records(self) -> bool:
        """Whether this process records: ``False`` on the ranks other than 0 of data-parallel training."""
        return self._role != "idle"

    def _check_selection(self) -> None:
        try:
            current = self._read()
            names = {str(k) for k in current}
        except Exception:  # reading fails later, with a warning, if at all
            return
        if not names:
            return
        self._select(current)
        for layer, _, _ in self.settings.crops:
            if layer not in names:
                msg = f"crops: no layer {layer!r}; the layers are: {_listing(sorted(names))}"
                raise UsageError(msg)

    # -- the training loop's side

    def step(self, step: int) -> bool:
        """Take a snapshot if ``step`` is divisible by ``every``; returns whether one was taken.

        Steps must increase: a step at or before the latest snapshot is skipped (with a
        warning), so nothing is recorded twice. A snapshot that cannot be taken (the
        source raises, a layer cannot be reduced, the disk is full) is skipped with a
        :class:`WeightvizWarning`, given once; training goes on. On data-parallel ranks
        other than 0 this returns ``False`` at once; with sharded parameters (FSDP2, or
        FSDP1, whose full parameters are gathered to rank 0) every rank must call it at
        the same steps.

        Raises:
            UsageError: ``step`` is not a non-negative integer, or the recorder is closed.
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
        if self._role == "idle" or step % self.settings.every:
            return False
        if self.last_step is not None and step <= self.last_step:
            if self._warn_repeats:
                warnings.warn(f"step {step} is not after the latest snapshot (step {self.last_step}); skipped",
                              WeightvizWarning, stacklevel=2)
            return False
        if self._sharded:
            return self._capture_sharded(step)
        if self._summoned is not None:
            return self._capture_summoned(step)
        try:
            arrays, measured, partials = self._snapshot()
        except Exception as err:  # a capture problem never stops training
            self._capture_failed(step, err)
            return False
        stored = self._store(step, arrays)
        # Measured after the buffer write: measuring wakes the metrics logger thread, which
        # would otherwise hold the GIL while the write waits for it.
        self._measure(step, measured, arrays, partials)
        return stored

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
        if not self._writes:
            return None
        try:
            self._close_live()  # before the render, which then finds them and logs none twice
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

    def _close_at_exit(self) -> None:
        """:meth:`close` while Python exits: flush here, render in a new process (see :func:`_render_in_child`)."""
        if self.closed:
            return
        self.closed = True
        _OPEN.discard(self)
        self._close_live()
        self._final_flush()
        if self.settings.render and self.snapshots:
            _render_in_child(self.run_id, self.settings, self.tracking_uri)

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close(exc)

    def __repr__(self) -> str:
        return (f"Recorder(run_id={self.run_id!r}, every={self.settings.every}, snapshots={self.snapshots}, "
                f"uploads={self.uploads}, closed={self.closed})")

    # -- inside

    def _snapshot(self) -> tuple[dict[str, Any], dict[str, Any], dict[str, Partial]]:
        """The snapshot's arrays, the recorded layers' full tensors and the reduced ones' partials (metrics)."""
        current = self._read()
        names = self._select(current)
        values = {str(k): v for k, v in current.items()}
        settings = self.settings
        chosen = {n: values[n] for n in names}
        # With metrics on, the reduction also sketches each reduced layer in the same pass (see _live.py).
        partials: dict[str, Partial] | None = {} if self._live is not None else None
        arrays = snapshot_arrays(chosen, dtype=settings.dtype, grid=settings.grid, reduce=settings.reduce,
                                 crops=settings.crops, everything=values, partials=partials)
        return arrays, chosen, partials or {}

    def _measure(self, step: int, values: Mapping[str, Any], arrays: Mapping[str, Any],
                 partials: Mapping[str, Partial]) -> None:
        """Measure the layers on their full tensors and queue the metrics; problems are warnings."""
        if self._live is None:
            return
        try:
            # Layers stored whole are already on the host (exactly, unless a storage dtype was asked for).
            host = {n: arrays[n] for n in values if n in arrays} if self.settings.dtype is None else {
                n: to_numpy(values[n]) for n in values if n in arrays}
            self._live.measure(step, values, host, partials)
        except Exception as err:
            self._measure_failures += 1
            if self._measure_failures == 1:
                warnings.warn(f"could not measure the training metrics of step {step}: {type(err).__name__}: "
                              f"{err}; training goes on (later problems are not reported again)",
                              WeightvizWarning, stacklevel=4)

    def _measure_combined(self, step: int, arrays: Mapping[str, Any], measures: Mapping[str, Any]) -> None:
        """Sharded layers: measured on rank 0 from the combined snapshot and the ranks' merged measures."""
        assert self._live is not None
        try:
            self._live.measure_combined(step, arrays, measures)
        except Exception as err:
            self._measure_failures += 1
            if self._measure_failures == 1:
                warnings.warn(f"could not measure the training metrics of step {step}: {type(err).__name__}: "
                              f"{err}; training goes on (later problems are not reported again)",
                              WeightvizWarning, stacklevel=4)

    def _close_live(self) -> None:
        if self._live is not None and self._live.log is not None:
            self._live.log.close()

    def _capture_failed(self, step: int, err: BaseException, where: str = "") -> None:
        self.failures += 1
        if self.failures == 1:
            warnings.warn(f"could not take the snapshot of step {step}{where}: {type(err).__name__}: {err}; "
                          "training goes on without it (later capture problems are not reported again)",
                          WeightvizWarning, stacklevel=4)

    def _capture_sharded(self, step: int) -> bool:
        """Every rank reduces its shard; the ranks agree nothing failed; rank 0 gathers and stores."""
        assert self._world is not None
        rank, size = self._world
        settings = self.settings
        kw: dict[str, Any] = {"rank": rank, "grid": settings.grid, "reduce": settings.reduce,
                              "dtype": settings.dtype, "crops": settings.crops,
                              "measure": self._sketch_cache if settings.options.outputs.metrics else None}
        failure: str | None = None
        piece: _distributed.Piece | None = None
        current: Mapping[str, Any] = {}
        try:
            current = self._read()
            piece = _distributed.local_pieces(current, self._select(current), **kw)
        except Exception as err:  # still take part in the collectives below
            failure = f"{type(err).__name__}: {err}"
            self._capture_failed(step, err)
        try:
            failures = _distributed.agree(failure, size)
            bad = [(r, f) for r, f in enumerate(failures) if f is not None]
            if bad:
                if failure is None:
                    r, f = bad[0]
                    self._capture_failed(step, RuntimeError(f), f" on rank {r} (skipped on every rank)")
                return False
            assert piece is not None
            _distributed.assemble(piece, current, **kw)
            pieces = _distributed.gather(piece, rank, size)
        except Exception as err:
            self._capture_failed(step, err)
            return False
        self.last_step = step  # on every rank alike, so later steps stay in step
        if pieces is None:
            return True
        try:
            arrays = _distributed.combine(pieces)
        except Exception as err:
            self._capture_failed(step, err)
            return False
        stored = self._store(step, arrays)
        if self._live is not None:  # after the write, as in step()
            self._measure_combined(step, arrays, _distributed.measures(pieces))
        return stored

    def _capture_summoned(self, step: int) -> bool:
        """FSDP1: every rank gathers the full parameters (to rank 0 only, on its CPU); rank 0 records them.

        ``summon_full_params`` is a collective, so every rank calls it at the same steps;
        what rank 0 does inside (reading, reducing, buffering, measuring) involves no other
        rank, and a problem there is a warning that leaves the context normally.
        """
        from torch.distributed.fsdp import FullyShardedDataParallel

        module = self._summoned
        assert module is not None
        stored = False
        try:
            # Offloaded to the CPU when they live elsewhere: rank 0 never holds the whole model on an
            # accelerator. (On the CPU, torch's offload path fails, and there is nothing to move.)
            offload = any(p.device.type != "cpu" for p in module.parameters())
            with FullyShardedDataParallel.summon_full_params(module, writeback=False, rank0_only=True,
                                                             offload_to_cpu=offload):
                self.last_step = step  # on every rank alike, so later steps stay in step
                if self._role == "solo":
                    try:
                        arrays, measured, partials = self._snapshot()
                    except Exception as err:  # a capture problem never stops training
                        self._capture_failed(step, err)
                    else:
                        stored = self._store(step, arrays)
                        # Inside: the full parameters exist only while they are gathered.
                        self._measure(step, measured, arrays, partials)
                        del arrays, measured  # exact layers may be views of memory FSDP frees on leaving
        except Exception as err:  # gathering the parameters failed
            self._capture_failed(step, err)
        return stored

    def _store(self, step: int, arrays: Mapping[str, Any]) -> bool:
        """Buffer one snapshot and upload a chunk when one is full; problems are warnings."""
        if self._segment is not None and not self._segment.layout.matches(arrays):
            self._segment.close()  # the layers changed: the next chunk starts here
            self._sealed.append(self._segment)
            self._segment = None
        try:
            if self._segment is None:
                self._segments_made += 1
                self._segment = Segment(self._dir / f"segment-{self._segments_made}.raw", Layout.of(arrays))
            segment = self._segment
            segment.append(step, arrays)
        except OSError as exc:
            err = OutputError(f"cannot buffer the snapshot of step {step} in {self._dir}: {exc.strerror or exc}")
            self._capture_failed(step, err)
            return False
        self.snapshots += 1
        self.last_step = step
        if segment.count >= max(self._capacity(), self._retry_at) and self.uploads < self.settings.max_uploads - 1:
            try:
                self._upload()
            except WeightvizError as err:
                # Keep training: the snapshots stay on disk and go with a later chunk.
                self._retry_at = segment.count + self._capacity()
                warnings.warn(f"could not log snapshots yet, will retry: {err}", WeightvizWarning, stacklevel=4)
        return True

    def _capacity(self) -> int:
        return int(self.settings.chunk_steps << (self.uploads // DOUBLE_EVERY))

    def _select(self, current: Mapping[str, Any]) -> tuple[str, ...]:
        names = tuple(str(k) for k in current)
        if self._selection is None or self._selection[0] != names:
            self._selection = (names, self._choose(current, names))
        return self._selection[1]

    def _choose(self, current: Mapping[str, Any], names: tuple[str, ...]) -> tuple[str, ...]:
        globs = self.settings.layers
        if globs is None:
            chosen = tuple(str(k) for k, v in current.items() if ndim(v) >= 2)
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

    def _log_segment(self, seg: Segment) -> str:
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
            if not any(kept.iterdir()):  # nothing was left unsent: keep no empty folders behind
                shutil.rmtree(self._dir, ignore_errors=True)
                raise
            msg = (f"{err}; the snapshots not yet logged are kept in {kept}: log them with "
                   f"MlflowClient().log_artifacts({self.run_id!r}, {os.fspath(kept)!r}, "
                   f"{self.settings.artifact_path!r}) or render them with: mlflow-weightviz render-file {kept}")
            raise type(err)(msg) from err
        shutil.rmtree(self._dir, ignore_errors=True)

    def _keep_unsent(self) -> Path:
        shutil.rmtree(self._dir / "out", ignore_errors=True)  # staging: only unsent/ is worth keeping
        kept = self._dir / "unsent"
        kept.mkdir(exist_ok=True)
        for seg in [*self._sealed, *([self._segment] if self._segment is not None else [])]:
            if seg.count:
                seg.write_chunk(kept / seg.chunk_name)
            seg.discard()
        self._sealed.clear()
        self._segment = None
        return kept


def _has_dtensors(source: Any) -> bool:
    """Whether the source's parameters are sharded DTensors (FSDP2); callables are not looked into."""
    if callable(getattr(source, "named_parameters", None)):
        return any(_distributed.is_dtensor(p) for _, p in source.named_parameters())
    if isinstance(source, Mapping):
        return any(_distributed.is_dtensor(v) for v in source.values())
    return False


def _fsdp1(source: Any) -> bool:
    """Whether the source is (or holds) an FSDP1 ``FullyShardedDataParallel`` module."""
    modules = getattr(source, "modules", None)
    if not callable(modules) or "torch.distributed.fsdp" not in sys.modules:
        return False
    try:
        return any(type(m).__name__ == "FullyShardedDataParallel" for m in modules())
    except Exception:  # only a hint: never fail because of it
        return False


def _readable_now(source: Any) -> bool:
    """Whether reading the source now is harmless: a torch module or a mapping (not Keras, not a callable)."""
    return isinstance(source, Mapping) or (
        callable(getattr(source, "named_parameters", None)) and not callable(getattr(source, "get_weights", None)))


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
        atexit.register(_close_open_recorders)
        _ATEXIT_REGISTERED = True


def _close_open_recorders() -> None:
    """At interpreter exit, finish recorders nobody closed (a callback whose ``fit`` raised)."""
    for rec in list(_OPEN):
        try:
            rec._close_at_exit()
        except WeightvizError as err:
            sys.stderr.write(f"mlflow-weightviz: {err}\n")


# By the time atexit functions run, concurrent.futures refuses new work ("cannot schedule
# new futures after interpreter shutdown"), and artifact downloads use thread pools. So a
# recorder closed at exit renders in a fresh Python process, which gets its arguments on stdin.
_CHILD_CODE = "from mlflow_weightviz.capture.recorder import _render_from_stdin; _render_from_stdin()"


def _render_in_child(run_id: str, settings: RecordSettings, tracking_uri: str) -> None:
    """Render ``run_id``'s snapshots in a new interpreter and wait for it; its errors go to stderr."""
    if not sys.executable:  # an embedded interpreter: no Python to start
        msg = (f"cannot render run {run_id} while Python exits; render it with: "
               f"mlflow-weightviz render {run_id} --source {settings.artifact_path}")
        raise OutputError(msg)
    package_root = str(Path(__file__).resolve().parents[2])  # the child imports this same copy of the package
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    payload = pickle.dumps((run_id, settings.options, settings.artifact_path, settings.render_artifact_path,
                            tracking_uri))
    subprocess.run([sys.executable, "-c", _CHILD_CODE], input=payload, env=env, check=False)


def _render_from_stdin() -> None:
    """The child's side of :func:`_render_in_child`: render, and exit 1 with the error on stderr."""
    from mlflow_weightviz.pipeline import render_run

    run_id, options, source, artifact_path, tracking_uri = pickle.loads(sys.stdin.buffer.read())  # from our parent
    try:
        render_run(run_id, options, source=source, artifact_path=artifact_path, tracking_uri=tracking_uri)
    except WeightvizError as err:
        sys.stderr.write(f"mlflow-weightviz: {err}\n")
        raise SystemExit(1) from None


# -------------------------------------------------------------------------- public


def record(source: Any, *, every: int = 1, layers: str | Sequence[str] | None = None,
           artifact_path: str = "weights", render: bool = True, run_id: str | None = None,
           tracking_uri: str | None = None, dtype: Any = None, chunk_steps: int = DEFAULT_CHUNK_STEPS,
           max_uploads: int = DEFAULT_MAX_UPLOADS, buffer_dir: str | os.PathLike[str] | None = None,
           render_artifact_path: str = "weightviz", reduce: bool = True,
           crops: Mapping[str, tuple[slice, slice]] | None = None, **render_options: Any) -> Recorder:
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
        reduce: Store a layer larger than the grid as its block mean, max-abs and RMS
            (``<layer>::mean`` ...), computed on the layer's own device; ``False`` stores
            every layer whole. The grid is the render options' ``max_rows`` × ``max_cols``
            (64×64 unless given), so ``max_rows=128`` sets both what is stored and what is drawn.
        crops: Regions stored exactly, as their own layers ``<layer>[r0:r1,c0:c1]``:
            ``{"fc.weight": (slice(0, 32), slice(100, 164))}`` (rows and columns of the
            layer's 2-D view, step 1; bounds are clipped to the layer).
        **render_options: Fields of :class:`~mlflow_weightviz.RenderOptions` for the GIFs,
            such as ``max_frames=50`` or ``cmap="viridis"``. ``metrics=False`` also stops the
            training metrics (``weightviz/<layer>/norm``, ...) that are otherwise measured at
            every snapshot on the full tensors and logged in the background while training
            (see docs/metrics.md).

    Under ``torch.distributed`` (call ``record`` after ``init_process_group``, on every
    rank): with data parallelism (DDP) rank 0 of the default group records and
    ``rec.step()`` does nothing elsewhere; with sharded parameters (FSDP2 DTensors) every
    rank must call ``rec.step()`` at the same steps, each reduces its own shard, and
    rank 0 combines, uploads and renders.

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
                                    render_options=render_options, reduce=reduce, crops=crops)
    return Recorder(source, settings, run_id=run_id, tracking_uri=tracking_uri)
