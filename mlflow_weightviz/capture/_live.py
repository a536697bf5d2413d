"""Training diagnostics measured while recording, and logged in the background.

At every snapshot :class:`LiveMetrics` measures each recorded layer on the full tensor,
where it lives, so the figures are exact for big layers too:

* ``norm``, ``max_abs``, ``rms`` and ``nonfinite``: exact, over the finite entries (as in
  :mod:`mlflow_weightviz.stats`). For layers reduced on the device they come from the
  block reduction's own sums of squares, counts and peaks (no second pass), except when
  the layer holds a NaN or an infinity: then one more pass skips those.
* ``update_ratio`` and ``drift``: exact for layers copied to the host whole anyway (small
  layers, or ``reduce=False``): the first and the previous copy are kept on the host as
  float32 (float64 for float64 layers). For layers reduced on the device no second full
  copy is kept anywhere: the numerator ‖W_t − W_s‖ is estimated from the block sketch
  the reduction computes in the same pass (``reduce.block_sketch``; one value per block,
  kept on the host); the denominator ‖W_s‖ is exact.

The rows go to a :class:`MetricLog`, a background thread that calls ``log_batch``, so the
training loop never waits on the tracking server. Any problem here is a warning.
"""

from __future__ import annotations

import math
import queue
import threading
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mlflow_weightviz.capture.reduce import BlockPlan, Partial, is_torch, partial_of, plan, sketch_buckets
from mlflow_weightviz.options import WeightvizWarning
from mlflow_weightviz.stats import StepStats, metric_key

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

__all__ = ["GRID", "LiveMetrics", "MetricLog", "exact_stats", "measure_device", "sketch"]

#: The grid a layer is sketched on when none is given (the display grid's default).
GRID = (64, 64)
#: Values read at a time when a layer holds non-finite values (float64 temporaries of at most 32 MiB).
BAND_VALUES = 1 << 22
#: Metrics per ``log_batch`` call (MLflow's limit).
BATCH = 1000


# ---------------------------------------------------------------------------- statistics


def exact_stats(step: int, w: np.ndarray, first: np.ndarray | None, previous: np.ndarray | None) -> StepStats:
    """A layer's statistics from a host array and the kept first and previous copies (the rules of ``stats.py``)."""
    x = np.asarray(w)
    if np.iscomplexobj(x):
        x = np.abs(x)
    x = x.astype(np.float64, copy=False).ravel()
    ok = np.isfinite(x)
    xf = np.where(ok, x, 0.0)
    finite = int(ok.sum())
    norm = math.sqrt(float(np.dot(xf, xf)))

    def ratio(base: np.ndarray | None) -> float | None:
        if base is None:
            return None
        b = base.astype(np.float64, copy=False).ravel()
        both = ok & np.isfinite(b)
        d = np.where(both, x - np.where(both, b, 0.0), 0.0)
        bb = np.where(both, b, 0.0)
        den = float(np.dot(bb, bb))
        return math.sqrt(float(np.dot(d, d))) / math.sqrt(den) if den > 0 else None

    return StepStats(step=step, norm=norm, update_ratio=ratio(previous),
                     drift=ratio(first) if first is not None else (0.0 if norm > 0 else None),
                     max_abs=float(np.abs(xf).max()) if xf.size else 0.0,
                     rms=norm / math.sqrt(finite) if finite else 0.0,
                     nonfinite=1.0 - finite / x.size if x.size else 0.0)


@dataclass
class DeviceMeasure:
    """What one pass over a layer on its device gives: exact sums, and the sketch (on the host)."""

    squares: float
    finite: int
    total: int
    max_abs: float
    sketch: np.ndarray

    def merge(self, other: DeviceMeasure) -> None:
        """Add the measure of other rows of the same layer (another rank's shard)."""
        self.squares += other.squares
        self.finite += other.finite
        self.total += other.total
        self.max_abs = max(self.max_abs, other.max_abs)
        self.sketch = self.sketch + other.sketch


def measure_device(value: Any, blocks: BlockPlan | None = None, *, row0: int = 0,
                   partial: Partial | None = None) -> DeviceMeasure:
    """Exact norm², finite count and max |w| of a layer (or of its rows from ``row0``), and its block sketch.

    They come from the block reduction's :class:`Partial` (``partial``, when the snapshot
    already computed it with its sketch; otherwise computed here), so no other pass over
    the layer runs: Σ squares is ‖W‖², the counts and signed peaks give the rest. Only
    when the rows hold a NaN or an infinity, a slower pass over the finite entries
    (:func:`_finite_measure`) keeps the rules of ``stats.py``. Measures of row shards add
    up (:meth:`DeviceMeasure.merge`) to that of the whole layer.
    """
    shape = tuple(int(d) for d in getattr(value, "shape", np.shape(value)))
    blocks = plan(shape, *GRID) if blocks is None else blocks
    if partial is None or partial.sketch is None:
        partial = partial_of(value, row0, blocks, sketch=True)
    total = math.prod(shape)
    squares = float(partial.squares.sum())
    peaks = partial.peak[~np.isnan(partial.peak)]
    if int(partial.count.sum()) == total and math.isfinite(squares) and np.isfinite(peaks).all():
        assert partial.sketch is not None
        return DeviceMeasure(squares, total, total, float(np.abs(peaks).max()) if peaks.size else 0.0, partial.sketch)
    return _finite_measure(value, row0, blocks)


def sketch(value: Any, grid: tuple[int, int] = GRID) -> np.ndarray:
    """The layer's block sketch on a ``grid`` (see :func:`mlflow_weightviz.capture.reduce.block_sketch`).

    Non-finite entries count as 0.
    """
    shape = tuple(int(d) for d in getattr(value, "shape", np.shape(value)))
    return measure_device(value, plan(shape, *grid)).sketch


def _finite_measure(value: Any, row0: int, blocks: BlockPlan) -> DeviceMeasure:
    """The measure over the finite entries only (non-finite ones count as 0), a band of rows at a time."""
    cols = blocks.matrix[1]
    out = Partial.empty(blocks.grid, sketch_buckets(blocks))
    finite = total = 0
    if is_torch(value):
        import torch

        t = value.detach()
        t = t.abs() if t.is_complex() else t
        mat = t.reshape(-1, cols)
        if not mat.is_floating_point():
            mat = mat.to(torch.float64)
        step = max(1, BAND_VALUES // max(1, cols))
        for r0 in range(0, int(mat.shape[0]), step):
            band = mat[r0:r0 + step]
            ok = torch.isfinite(band)
            finite += int(ok.sum())
            total += band.numel()
            out.merge(partial_of(torch.where(ok, band, torch.zeros((), dtype=band.dtype, device=band.device)),
                                 row0 + r0, blocks, sketch=True))
    else:
        from mlflow_weightviz.capture._arrays import to_numpy

        arr = to_numpy(value)
        arr = np.abs(arr) if np.iscomplexobj(arr) else arr
        mat2 = arr.reshape(-1, cols)
        step = max(1, BAND_VALUES // max(1, cols))
        for r0 in range(0, mat2.shape[0], step):
            nb = mat2[r0:r0 + step]
            ok2 = np.isfinite(nb)
            finite += int(ok2.sum())
            total += nb.size
            out.merge(partial_of(np.where(ok2, nb, 0), row0 + r0, blocks, sketch=True))
    peaks = out.peak[~np.isnan(out.peak)]
    assert out.sketch is not None
    return DeviceMeasure(float(out.squares.sum()), finite, total, float(np.abs(peaks).max()) if peaks.size else 0.0,
                         out.sketch)


# ---------------------------------------------------------------------------- per layer


@dataclass
class _Kept:
    """What is kept on the host between snapshots of one layer."""

    first: np.ndarray | None = None
    previous: np.ndarray | None = None
    first_norm: float = 0.0
    previous_norm: float = 0.0
    sketched: bool = False
    shape: tuple[int, ...] = ()


class LiveMetrics:
    """Measures the recorded layers at each snapshot and hands the metrics to a :class:`MetricLog`.

    Args:
        log: Where the metrics go (``None``: measured only, e.g. for tests).
        grid: The display grid the reduced layers are reduced (and sketched) on.
    """

    def __init__(self, log: MetricLog | None, grid: tuple[int, int] = GRID) -> None:
        self.log = log
        self.grid = grid
        self._kept: dict[str, _Kept] = {}
        self.last: dict[str, StepStats] = {}

    def measure(self, step: int, values: Mapping[str, Any], host: Mapping[str, np.ndarray],
                partials: Mapping[str, Partial] | None = None) -> dict[str, StepStats]:
        """Measure ``values`` (layer → full tensor) at ``step``; ``host`` has the layers already copied whole.

        ``partials`` has the block statistics (with their sketch) the snapshot computed
        for its reduced layers; a reduced layer without one is reduced here.
        Returns the statistics by layer, and sends them to the log.
        """
        out: dict[str, StepStats] = {}
        partials = partials or {}
        for name, value in values.items():
            if name in host:
                out[name] = self._exact(name, step, host[name])
            else:
                out[name] = self._sketched(name, step, value, partials.get(name))
        self._send(out)
        return out

    def measure_combined(self, step: int, arrays: Mapping[str, np.ndarray],
                         measures: Mapping[str, DeviceMeasure] | None = None) -> dict[str, StepStats]:
        """Measure a snapshot assembled from shards (FSDP2) on rank 0.

        Layers stored whole are measured exactly; reduced layers from the ranks' merged
        ``measures`` (as for one process), or, without one, from their block RMS and max-abs
        (norm, RMS, max |w|, non-finite fraction; no update ratio or drift). Crops are left
        to the render.
        """
        measures = measures or {}
        import json

        from mlflow_weightviz.capture.reduce import META_KEY
        from mlflow_weightviz.stats import block_stats

        meta: dict[str, Any] = {}
        if META_KEY in arrays:
            meta = json.loads(bytes(np.asarray(arrays[META_KEY], np.uint8)).decode())["layers"]
        out: dict[str, StepStats] = {}
        for name, info in meta.items():
            if info.get("kind") == "reduced" and name in measures:
                out[name] = self._from_measure(name, step, tuple(info["shape"]), measures[name])
            elif info.get("kind") == "reduced":
                out[name] = block_stats(step, arrays[f"{name}::rms"], arrays[f"{name}::maxabs"],
                                        tuple(info["matrix"]), tuple(info["block"]))
        for name, arr in arrays.items():
            if name != META_KEY and "::" not in name and meta.get(name, {}).get("kind") != "crop":
                out[name] = self._exact(name, step, arr)
        self._send(out)
        return out

    def _send(self, out: Mapping[str, StepStats]) -> None:
        self.last = dict(out)
        if self.log is not None:
            self.log.put([(metric_key(layer, stat), v, s.step) for layer, s in out.items()
                          for stat, v in s.values().items()])

    def _fresh(self, name: str, shape: tuple[int, ...], sketched: bool) -> _Kept:
        kept = self._kept.get(name)
        if kept is None or kept.shape != shape or kept.sketched != sketched:  # new, or the layer changed
            kept = self._kept[name] = _Kept(sketched=sketched, shape=shape)
        return kept

    def _exact(self, name: str, step: int, arr: np.ndarray) -> StepStats:
        x = np.asarray(arr)
        kept = self._fresh(name, tuple(x.shape), sketched=False)
        stats = exact_stats(step, x, kept.first, kept.previous)
        if np.iscomplexobj(x):
            x = np.abs(x)
        copy = x.astype(np.float64 if x.dtype == np.float64 else np.float32, copy=True)
        if kept.first is None:
            kept.first = copy
        kept.previous = copy
        return stats

    def _sketched(self, name: str, step: int, value: Any, partial: Partial | None) -> StepStats:
        shape = tuple(int(d) for d in getattr(value, "shape", np.shape(value)))
        return self._from_measure(name, step, shape, measure_device(value, plan(shape, *self.grid), partial=partial))

    def _from_measure(self, name: str, step: int, shape: tuple[int, ...], m: DeviceMeasure) -> StepStats:
        kept = self._fresh(name, shape, sketched=True)
        norm = math.sqrt(m.squares)

        def estimate(base: np.ndarray | None, base_norm: float) -> float | None:
            if base is None or base_norm <= 0:
                return None
            d = m.sketch - base
            return math.sqrt(float(np.square(d).sum())) / base_norm  # not BLAS: no thread pool for a small sum

        stats = StepStats(step=step, norm=norm, update_ratio=estimate(kept.previous, kept.previous_norm),
                          drift=estimate(kept.first, kept.first_norm) if kept.first is not None
                          else (0.0 if norm > 0 else None),
                          max_abs=m.max_abs, rms=norm / math.sqrt(m.finite) if m.finite else 0.0,
                          nonfinite=1.0 - m.finite / m.total if m.total else 0.0)
        if kept.first is None:
            kept.first, kept.first_norm = m.sketch, norm
        kept.previous, kept.previous_norm = m.sketch, norm
        return stats


# ---------------------------------------------------------------------------- logging


class MetricLog:
    """A background thread that logs queued metrics with ``log_batch``; the caller never waits on the server.

    Args:
        client: The tracking client.
        run_id: The run.
    """

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self.client = client
        self.run_id = run_id
        self.logged = 0
        self._queue: queue.Queue[list[tuple[str, float, int, int]] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._error: str | None = None
        self._warned = False
        self._lock = threading.Lock()

    def put(self, rows: list[tuple[str, float, int]]) -> None:
        """Queue ``(key, value, step)`` rows, stamped now; returns at once."""
        self.report()
        if not rows:
            return
        now = int(time.time() * 1000)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="weightviz-metrics", daemon=True)
            self._thread.start()
        self._queue.put([(k, float(v), int(s), now) for k, v, s in rows])

    def close(self, timeout: float = 60.0) -> None:
        """Log what is queued (waiting at most ``timeout`` seconds), then stop the thread."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            if self._thread.is_alive():
                self._fail(f"metrics still not logged after {timeout:g} s; the rest is dropped")
            self._thread = None
        self.report()

    def report(self) -> None:
        """Warn (once, from the caller's thread) about a failure of the background thread."""
        with self._lock:
            error, warned = self._error, self._warned
            if error is not None:
                self._warned = True
        if error is not None and not warned:
            warnings.warn(f"could not log training metrics to run {self.run_id}: {error}; training goes on "
                          "(later problems are not reported again)", WeightvizWarning, stacklevel=3)

    def _fail(self, message: str) -> None:
        with self._lock:
            if self._error is None:
                self._error = message

    def _run(self) -> None:
        from mlflow.entities import Metric

        done = False
        while not done:
            item = self._queue.get()
            rows: list[tuple[str, float, int, int]] = []
            while item is not None:  # everything queued so far goes in as few calls as possible
                rows.extend(item)
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            done = item is None
            for start in range(0, len(rows), BATCH):
                part = [Metric(k, v, ts, s) for k, v, s, ts in rows[start:start + BATCH]]
                try:
                    self.client.log_batch(self.run_id, metrics=part)
                    self.logged += len(part)
                except Exception as err:  # never let the thread die: report and go on
                    self._fail(f"{type(err).__name__}: {err}")
