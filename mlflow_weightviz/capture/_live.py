"""Training diagnostics measured while recording, and logged in the background.

At every snapshot :class:`LiveMetrics` measures each recorded layer on the full tensor,
where it lives, before any reduction, so the figures are exact for big layers too:

* ``norm``, ``max_abs``, ``rms`` and ``nonfinite``: exact, over the finite entries (as in
  :mod:`mlflow_weightviz.stats`), accumulated in float64 a band of rows at a time.
* ``update_ratio`` and ``drift``: exact for layers copied to the host whole anyway (small
  layers, or ``reduce=False``): the first and the previous copy are kept on the host as
  float32 (float64 for float64 layers). For layers reduced on the device no second full
  copy is kept anywhere: the numerator ‖W_t − W_s‖ is estimated from a linear sketch
  S(W) = C · W · G kept on the host (see :func:`sketch`); the denominator ‖W_s‖ is exact.

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

from mlflow_weightviz.capture.reduce import is_torch
from mlflow_weightviz.grid import matrix_shape
from mlflow_weightviz.options import WeightvizWarning
from mlflow_weightviz.stats import StepStats, metric_key

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

__all__ = ["BUCKETS", "SKETCH_COLS", "LiveMetrics", "MetricLog", "exact_stats", "measure_device", "sketch"]

#: Columns of the Gaussian sketch: a layer wider than this is multiplied by a cols × 128 matrix.
SKETCH_COLS = 128
#: Rows of the sketch: a layer taller than this has its rows hashed into this many signed buckets.
BUCKETS = 2048
#: The fixed seed of the sketch, so every snapshot of a layer is sketched alike.
SEED = 20240611
#: Values read at a time from a layer (float64 temporaries of at most 32 MiB on its device).
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


def measure_device(value: Any, cache: dict[Any, Any] | None = None, *, row0: int = 0,
                   rows_total: int | None = None) -> DeviceMeasure:
    """Exact norm², finite count and max |w| of a layer, and its sketch, computed where it lives.

    Torch tensors stay on their device (only scalars and the small sketch are copied);
    anything else is converted to numpy first. A shard holding rows ``row0, row0 + 1, ...``
    of a layer of ``rows_total`` rows gives a measure that adds up with the other shards'
    (:meth:`DeviceMeasure.merge`) to that of the whole layer.
    """
    cache = {} if cache is None else cache
    if is_torch(value):
        return _torch_measure(value, cache, row0, rows_total)
    from mlflow_weightviz.capture._arrays import to_numpy

    return _numpy_measure(to_numpy(value), cache, row0, rows_total)


def sketch(value: Any) -> np.ndarray:
    """The layer's sketch S(W) = C · W · G, as a float64 host array (see the module's docs).

    G is a (cols × :data:`SKETCH_COLS`) Gaussian matrix with entries N(0, 1/k) and C adds
    row r, with a random sign, into bucket ``r % BUCKETS`` (a count sketch); each side is
    used only when the layer is bigger than it on that side. Both are linear and fixed by
    :data:`SEED`, so ‖S(W_t) − S(W_s)‖ estimates ‖W_t − W_s‖ (unbiased for the square).
    Non-finite entries count as 0.
    """
    return measure_device(value).sketch


def _band_rows(cols: int) -> int:
    return max(1, BAND_VALUES // max(1, cols))


def _numpy_measure(arr: np.ndarray, cache: dict[Any, Any], row0: int, rows_total: int | None) -> DeviceMeasure:
    if np.iscomplexobj(arr):
        arr = np.abs(arr)
    rows, cols = matrix_shape(tuple(arr.shape))
    mat = arr.reshape(rows, cols)
    total = rows if rows_total is None else rows_total
    g = _numpy_g(cols, cache)
    signs = _numpy_signs(total, cache)
    width = g.shape[1] if g is not None else cols
    out = np.zeros((BUCKETS if signs is not None else total, width))
    sq = mx = 0.0
    finite = 0
    step = _band_rows(cols)
    for r0 in range(0, rows, step):
        band = mat[r0:r0 + step].astype(np.float64)
        if np.isfinite(band.sum()):  # the common case: no mask
            finite += band.size
        else:
            finite += int(np.isfinite(band).sum())
            band = np.nan_to_num(band, nan=0.0, posinf=0.0, neginf=0.0)
        sq += float(np.einsum("ij,ij->", band, band))
        if band.size:
            mx = max(mx, float(np.abs(band).max()))
        y = band @ g if g is not None else band
        at = row0 + r0
        if signs is not None:
            _fold(out, y * signs[at:at + y.shape[0], None], at)
        else:
            out[at:at + y.shape[0]] = y
    return DeviceMeasure(sq, finite, rows * cols, mx, out)


def _numpy_g(cols: int, cache: dict[Any, Any]) -> np.ndarray | None:
    if cols <= SKETCH_COLS:
        return None
    key = ("np-g", cols)
    if key not in cache:
        cache[key] = np.random.default_rng([SEED, cols]).standard_normal((cols, SKETCH_COLS)) / math.sqrt(SKETCH_COLS)
    g: np.ndarray = cache[key]
    return g


def _numpy_signs(rows: int, cache: dict[Any, Any]) -> np.ndarray | None:
    if rows <= BUCKETS:
        return None
    key = ("np-c", rows)
    if key not in cache:
        cache[key] = np.random.default_rng([SEED, rows, 1]).choice(np.array([-1.0, 1.0]), rows)
    signs: np.ndarray = cache[key]
    return signs


def _fold(out: Any, y: Any, r0: int) -> None:
    """Add signed rows ``r0, r0 + 1, ...`` into bucket ``row % BUCKETS`` (contiguous runs, no scatter)."""
    r, end = r0, r0 + y.shape[0]
    while r < end:
        b0 = r % BUCKETS
        n = min(BUCKETS - b0, end - r)
        out[b0:b0 + n] += y[r - r0:r - r0 + n]
        r += n


def _torch_measure(tensor: Any, cache: dict[Any, Any], row0: int, rows_total: int | None) -> DeviceMeasure:
    import torch

    with torch.no_grad():
        t = tensor.detach()
        if t.is_complex():
            t = t.abs()
        rows, cols = matrix_shape(tuple(int(d) for d in t.shape))
        mat = t.reshape(rows, cols)
        dev = mat.device
        # Band sums in float32 (float64 for float64 layers; torch sums pairwise), added up in float64.
        acc = torch.float64 if mat.dtype == torch.float64 else torch.float32
        sk_dtype = acc
        total = rows if rows_total is None else rows_total
        g = _torch_g(cols, dev, sk_dtype, cache)
        signs = _torch_signs(total, dev, sk_dtype, cache)
        width = g.shape[1] if g is not None else cols
        out = torch.zeros((BUCKETS if signs is not None else total, width), dtype=sk_dtype, device=dev)
        sq = torch.zeros((), dtype=torch.float64, device=dev)
        finite: Any = torch.zeros((), dtype=torch.int64, device=dev)
        mx = torch.zeros((), dtype=torch.float64, device=dev)
        step = _band_rows(cols)
        for r0 in range(0, rows, step):
            band = mat[r0:r0 + step]
            if not band.is_floating_point():
                band = band.to(torch.float64)
            if bool(torch.isfinite(band.sum(dtype=acc))):  # the common case: no mask, no copy
                finite += band.numel()
            else:
                finite += torch.isfinite(band).sum()
                band = torch.nan_to_num(band, nan=0.0, posinf=0.0, neginf=0.0)
            sq += torch.linalg.vector_norm(band, dtype=acc).to(torch.float64) ** 2
            if band.numel():
                lo, hi = torch.aminmax(band)
                mx = torch.maximum(mx, torch.maximum(hi.abs(), lo.abs()).to(torch.float64))
            y = band.to(sk_dtype)
            if g is not None:
                y = y @ g
            at = row0 + r0
            if signs is not None:
                _fold(out, y * signs[at:at + y.shape[0], None], at)
            else:
                out[at:at + y.shape[0]] = y
            del band, y
        scalars = torch.stack([sq, finite.to(torch.float64), mx]).cpu().tolist()
        host = out.to("cpu", torch.float64).numpy()
    return DeviceMeasure(float(scalars[0]), int(scalars[1]), rows * cols, float(scalars[2]), host)


def _torch_g(cols: int, dev: Any, dtype: Any, cache: dict[Any, Any]) -> Any:
    import torch

    if cols <= SKETCH_COLS:
        return None
    key = ("t-g", cols, str(dev), str(dtype))
    if key not in cache:  # made on the host from the seed, so every device and run sketches alike
        g = np.random.default_rng([SEED, cols]).standard_normal((cols, SKETCH_COLS)) / math.sqrt(SKETCH_COLS)
        cache[key] = torch.from_numpy(g).to(device=dev, dtype=dtype)
    return cache[key]


def _torch_signs(rows: int, dev: Any, dtype: Any, cache: dict[Any, Any]) -> Any:
    import torch

    if rows <= BUCKETS:
        return None
    key = ("t-c", rows, str(dev), str(dtype))
    if key not in cache:
        signs = _numpy_signs(rows, cache)
        assert signs is not None
        cache[key] = torch.from_numpy(signs).to(device=dev, dtype=dtype)
    return cache[key]


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
    """

    def __init__(self, log: MetricLog | None) -> None:
        self.log = log
        self._kept: dict[str, _Kept] = {}
        self._cache: dict[Any, Any] = {}
        self.last: dict[str, StepStats] = {}

    def measure(self, step: int, values: Mapping[str, Any], host: Mapping[str, np.ndarray]) -> dict[str, StepStats]:
        """Measure ``values`` (layer → full tensor) at ``step``; ``host`` has the layers already copied whole.

        Returns the statistics by layer, and sends them to the log.
        """
        out: dict[str, StepStats] = {}
        for name, value in values.items():
            if name in host:
                out[name] = self._exact(name, step, host[name])
            else:
                out[name] = self._sketched(name, step, value)
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

    def _sketched(self, name: str, step: int, value: Any) -> StepStats:
        shape = tuple(int(d) for d in getattr(value, "shape", np.shape(value)))
        return self._from_measure(name, step, shape, measure_device(value, self._cache))

    def _from_measure(self, name: str, step: int, shape: tuple[int, ...], m: DeviceMeasure) -> StepStats:
        kept = self._fresh(name, shape, sketched=True)
        norm = math.sqrt(m.squares)

        def estimate(base: np.ndarray | None, base_norm: float) -> float | None:
            if base is None or base_norm <= 0:
                return None
            return float(np.linalg.norm(m.sketch - base)) / base_norm

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
