"""Per-layer training diagnostics from snapshots: norm, update ratio, drift, max |w|, RMS.

These are the numbers behind the ``weightviz/<layer>/<stat>`` metrics and the layers × steps
overview, computed once per layer and shared by both. Every figure is exact for snapshots
stored in full: large layers are read a band of rows at a time, with the same rows of the
first and the previous snapshot read alongside, so no second copy of a layer is held.
Layers stored reduced (block statistics, see docs/formats.md) give an exact norm, RMS and
max |w|, but no update ratio or drift: those need the values, and ``record()`` logs them
while training instead.

Non-finite values (NaN, ±Inf) never break anything: every statistic is taken over the
finite entries (for differences, over entries finite in both snapshots), and the fraction
of non-finite entries is its own statistic, ``nonfinite``. A ratio whose denominator is 0
(an all-zero layer) is ``None`` and is not logged.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import numpy as np

from mlflow_weightviz.snapshots import LazyArray, Reduced, Snapshot

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

__all__ = ["METRIC_PREFIX", "STAT_NAMES", "StepStats", "block_stats", "collect", "layer_stats", "logged_history",
           "metric_key", "read_logged", "stats_by_step"]

#: Every metric key starts with this.
METRIC_PREFIX = "weightviz"

#: The statistics of :class:`StepStats`, in the order they are documented and logged.
STAT_NAMES = ("norm", "update_ratio", "drift", "max_abs", "rms", "nonfinite")

#: The longest metric key MLflow accepts.
MAX_KEY = 250

# MLflow metric keys allow letters, digits, "_ - . / " and spaces (as image keys do).
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-./ ]")
_SEGMENT = {"": "_", ".": "_.", "..": "_.."}

# Bands of this many values are read at a time from layers too big to read whole.
_BAND_VALUES = 4 * 1024 * 1024


@dataclass(frozen=True)
class StepStats:
    """One layer's statistics at one snapshot.

    Attributes:
        step: The training step.
        norm: Frobenius norm ‖W_t‖ (over the finite entries).
        update_ratio: ‖W_t − W_s‖ / ‖W_s‖ against the previous snapshot s; ``None`` for the
            first snapshot, for reduced snapshots, and when ‖W_s‖ is 0. Between snapshots
            k steps apart this is the change over k updates, not a per-update figure.
        drift: ‖W_t − W_0‖ / ‖W_0‖ against the first snapshot (0 at the first one);
            ``None`` for reduced snapshots and when ‖W_0‖ is 0.
        max_abs: The largest finite |w|.
        rms: ‖W_t‖ / √(number of finite entries).
        nonfinite: The fraction of entries that are NaN or ±Inf.
    """

    step: int
    norm: float
    update_ratio: float | None
    drift: float | None
    max_abs: float
    rms: float
    nonfinite: float

    def values(self) -> dict[str, float]:
        """The statistics that have a value, by name (``None`` ones left out)."""
        out = {}
        for f in fields(self):
            if f.name == "step":
                continue
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = float(value)
        return out


def metric_key(layer: str, stat: str) -> str:
    """The MLflow metric key of a layer's statistic, e.g. ``weightviz/fc1.weight/norm``.

    The layer name is made a valid key the same way as the step images' keys: characters
    MLflow does not allow become ``_``. A key longer than MLflow's 250 characters keeps
    the start of the layer name and ends it with a hash of the whole name, so it stays
    valid and distinct.
    """
    # MLflow also refuses keys that are not normal paths ("//", "/./", "/../", a trailing
    # "/"), so such path segments become underscores too.
    safe = "/".join(_SEGMENT.get(part, part) for part in _UNSAFE.sub("_", layer).split("/"))
    key = f"{METRIC_PREFIX}/{safe}/{stat}"
    if len(key) <= MAX_KEY:
        return key
    import hashlib

    digest = hashlib.sha256(layer.encode()).hexdigest()[:8]
    room = MAX_KEY - len(f"{METRIC_PREFIX}//{stat}") - len(digest) - 1
    return f"{METRIC_PREFIX}/{safe[:room]}-{digest}/{stat}"


def layer_stats(snapshots: Sequence[Snapshot]) -> list[StepStats]:
    """The statistics of one layer's snapshots, in step order, one per snapshot.

    Snapshots of a region (crops) are measured as the region they are.
    """
    out: list[StepStats] = []
    first: Snapshot | None = None
    previous: Snapshot | None = None
    for snap in snapshots:
        if isinstance(snap.meta, Reduced):
            out.append(_reduced_stats(snap, snap.meta))
            first = previous = None  # a reduced snapshot has no values to compare against
            continue
        out.append(_full_stats(snap, first, previous))
        first = first or snap
        previous = snap
    return out


def stats_by_step(stats: Sequence[StepStats]) -> Mapping[int, StepStats]:
    """``stats`` keyed by step."""
    return {s.step: s for s in stats}


# ---------------------------------------------------------------------------- internals


def _full_stats(snap: Snapshot, first: Snapshot | None, previous: Snapshot | None) -> StepStats:
    cur = snap.open()
    base0 = first.open() if first is not None else None
    basep = previous.open() if previous is not None else None
    if base0 is not None and first is not None and tuple(base0.shape) != tuple(cur.shape):
        from mlflow_weightviz.errors import ShapeMismatchError

        # The grid's own wording: statistics are measured before anything is drawn.
        msg = (f"layer {snap.layer!r} changes shape: every snapshot must have the shape of step "
               f"{first.step}, {tuple(base0.shape)}; step {snap.step} has shape {tuple(cur.shape)}")
        raise ShapeMismatchError(msg)
    total = int(np.prod(cur.shape)) if cur.shape else 1
    sq = maxabs = 0.0
    finite = 0
    # [numerator², denominator²] of the update ratio and of the drift
    upd = [0.0, 0.0]
    dri = [0.0, 0.0]
    for w, w0, wp in _row_bands(cur, base0, basep):  # bands of W_t, W_0, W_s
        ok = np.isfinite(w)
        wf = np.where(ok, w, 0.0)
        finite += int(ok.sum())
        sq += float(np.dot(wf.ravel(), wf.ravel()))
        if wf.size:
            maxabs = max(maxabs, float(np.abs(wf).max()))
        for base, acc in ((wp, upd), (w0, dri)):
            if base is None:
                continue
            both = ok & np.isfinite(base)
            d = np.where(both, w - np.where(both, base, 0.0), 0.0)
            b = np.where(both, base, 0.0)
            acc[0] += float(np.dot(d.ravel(), d.ravel()))
            acc[1] += float(np.dot(b.ravel(), b.ravel()))
    norm = math.sqrt(sq)
    return StepStats(
        step=snap.step, norm=norm,
        update_ratio=_ratio(upd) if previous is not None else None,
        drift=_ratio(dri) if first is not None else 0.0 if norm > 0 else None,
        max_abs=maxabs, rms=norm / math.sqrt(finite) if finite else 0.0,
        nonfinite=1.0 - finite / total if total else 0.0)


def _ratio(acc: Sequence[float]) -> float | None:
    return math.sqrt(acc[0]) / math.sqrt(acc[1]) if acc[1] > 0 else None


def _row_bands(cur: np.ndarray | LazyArray, *others: np.ndarray | LazyArray | None) -> Iterator[
        tuple[np.ndarray, np.ndarray | None, np.ndarray | None]]:
    """Float64 bands of rows of ``cur`` and the same rows of ``others`` (``None`` stays ``None``)."""
    from mlflow_weightviz.grid import matrix_shape

    rows, cols = matrix_shape(tuple(cur.shape))
    mats = [None if o is None else _as_matrix(o, rows, cols, cur.shape) for o in (cur, *others)]
    band = max(1, _BAND_VALUES // max(1, cols))
    for r0 in range(0, rows, band):
        r1 = min(r0 + band, rows)
        w, w0, wp = (None if m is None else _band(m, r0, r1) for m in mats)
        assert w is not None
        yield w, w0, wp


def _as_matrix(arr: np.ndarray | LazyArray, rows: int, cols: int,
               shape: tuple[int, ...]) -> np.ndarray | LazyArray:
    if tuple(arr.shape) != tuple(shape):
        msg = f"snapshots of one layer have different shapes: {tuple(arr.shape)} and {tuple(shape)}"
        from mlflow_weightviz.errors import SnapshotError

        raise SnapshotError(msg)
    if isinstance(arr, LazyArray):
        view = arr.reshape(rows, cols)
        return view if view is not None else np.asarray(arr).reshape(rows, cols)
    return arr.reshape(rows, cols)


def _band(mat: np.ndarray | LazyArray, r0: int, r1: int) -> np.ndarray:
    part = mat.read((slice(r0, r1), slice(0, mat.shape[1]))) if isinstance(mat, LazyArray) else mat[r0:r1]
    part = np.asarray(part)
    if np.iscomplexobj(part):
        part = np.abs(part)
    return part.astype(np.float64, copy=False)


def _reduced_stats(snap: Snapshot, meta: Reduced) -> StepStats:
    return block_stats(snap.step, np.asarray(meta.stats["rms"]()), np.asarray(meta.stats["maxabs"]()), meta.matrix,
                       meta.block)


def block_stats(step: int, rms: np.ndarray, maxabs: np.ndarray, matrix: tuple[int, int],
                block: tuple[int, int]) -> StepStats:
    """Norm, RMS, max |w| and non-finite fraction from a layer's block RMS and max-abs (no ratios)."""
    rms = np.asarray(rms, dtype=np.float64)
    maxabs = np.asarray(maxabs, dtype=np.float64)
    rows, cols = matrix
    br, bc = block
    gr, gc = rms.shape
    # Elements behind each stored cell: edge blocks are smaller.
    n_r = np.minimum(br, rows - np.arange(gr) * br).astype(np.float64)
    n_c = np.minimum(bc, cols - np.arange(gc) * bc).astype(np.float64)
    count = np.outer(n_r, n_c)
    ok = np.isfinite(rms)
    sq = float(np.sum(np.where(ok, rms, 0.0) ** 2 * count))
    finite = float(np.sum(np.where(ok, count, 0.0)))
    total = float(rows * cols)
    fin_max = maxabs[np.isfinite(maxabs)]
    norm = math.sqrt(sq)
    return StepStats(step=step, norm=norm, update_ratio=None, drift=None,
                     max_abs=float(fin_max.max()) if fin_max.size else 0.0,
                     rms=norm / math.sqrt(finite) if finite else 0.0,
                     nonfinite=1.0 - finite / total if total else 0.0)


def collect(layers: Mapping[str, Sequence[Snapshot]],
            logged: Mapping[str, Sequence[StepStats]] | None = None) -> dict[str, list[StepStats]]:
    """Every layer's statistics, computed once: read back where logged, computed from snapshots otherwise.

    ``logged`` (from :func:`read_logged`) wins for the steps it has: ``record()`` measured
    those on the full tensors, exact even where only block statistics were stored.
    """
    out: dict[str, list[StepStats]] = {}
    for name, snaps in layers.items():
        have = stats_by_step((logged or {}).get(name, ()))
        if have and all(s.step in have for s in snaps):
            out[name] = [have[s.step] for s in snaps]
            continue
        computed = layer_stats(snaps)
        out[name] = [have.get(c.step, c) for c in computed]
    return out


def logged_history(client: MlflowClient, run_id: str, layers: Iterable[str],
                   metrics: Mapping[str, float] | None = None) -> dict[str, dict[int, float]]:
    """Every ``weightviz/<layer>/<stat>`` metric the run has for ``layers``: key → {step: value}.

    ``metrics`` is the run's latest metrics (``run.data.metrics``): only keys found there
    cost a request (their history), so a run without metrics costs none.
    """
    if metrics is None:
        metrics = client.get_run(run_id).data.metrics
    out: dict[str, dict[int, float]] = {}
    for layer in layers:
        for stat in STAT_NAMES:
            key = metric_key(layer, stat)
            if key in metrics:
                out[key] = {int(m.step): float(m.value) for m in client.get_metric_history(run_id, key)}
    return out


def read_logged(client: MlflowClient, run_id: str, layers: Iterable[str],
                metrics: Mapping[str, float] | None = None,
                history: Mapping[str, Mapping[int, float]] | None = None) -> dict[str, list[StepStats]]:
    """The statistics a run already has as ``weightviz/<layer>/<stat>`` metrics, by layer, in step order.

    ``metrics`` is the run's latest metrics (``run.data.metrics``), used to skip layers that
    have none without a request each. ``history`` (from :func:`logged_history`) saves the
    requests when the histories were read already.
    """
    layers = list(layers)
    if history is None:
        history = logged_history(client, run_id, layers, metrics)
    out: dict[str, list[StepStats]] = {}
    for layer in layers:
        if metric_key(layer, "norm") not in history:
            continue
        series: dict[str, Mapping[int, float]] = {}
        for stat in STAT_NAMES:
            key = metric_key(layer, stat)
            if key in history:
                series[stat] = history[key]
        norms = series.get("norm", {})
        out[layer] = [
            StepStats(step=step, norm=norm,
                      update_ratio=series.get("update_ratio", {}).get(step),
                      drift=series.get("drift", {}).get(step),
                      max_abs=series.get("max_abs", {}).get(step, math.nan),
                      rms=series.get("rms", {}).get(step, math.nan),
                      nonfinite=series.get("nonfinite", {}).get(step, 0.0))
            for step, norm in sorted(norms.items())]
    return out
