"""Block statistics of a big layer, computed where the layer lives, so only the small result is copied.

A layer is seen as the 2-D matrix the renderer draws (``grid.matrix_shape``) and cut into
the blocks ``grid.to_grid`` pools: ``br = ceil(rows / max_rows)``, ``bc = ceil(cols / max_cols)``,
ragged edge blocks having fewer values. Per block three float32 statistics are kept: the
NaN-skipping mean, the value of largest magnitude with its sign (ties: the first in
row-major order), and the root mean square.

How it is computed, so that nothing big is copied and memory stays bounded:

1. The matrix is read in bands of rows (at most :data:`BAND_VALUES` values each; only a
   band is ever upcast, so a bf16/fp16 layer never gets a float32 copy of its own size).
2. Whole block rows, a few at a time so that they stay in the cache: per column, the
   sum, the sum of squares, the maximum and the minimum down the block's rows (reductions
   over the middle axis, vectorised over the contiguous columns), into per-column arrays;
   then, once per piece of the band (at most :data:`_PIECE_VALUES` values in those arrays),
   across each block's columns. On the CPU a few threads share the work: several big
   layers side by side (:func:`partials_of`), or one big layer's groups of block rows.
   Block rows with a NaN or an infinity, and the partial block rows at a band's or a
   shard's edges, take a slower path per row and block column (NaN-skipping where needed).
3. Only the ``(block rows, grid cols)`` result reaches the host, as a :class:`Partial`
   (on an accelerator the rows are merged there first).

Partials of different row ranges add up (:meth:`Partial.merge`): that is how the shards of
a sharded layer (each rank holding some rows) combine into the statistics of the whole.

Torch tensors are reduced with torch on their own device (accumulating in float32, or
float64 for float64 layers); numpy arrays with numpy. Other array types (TensorFlow,
JAX, Keras variables on other backends) are first converted to numpy, a host copy of
that one layer, then reduced the same way.
"""

from __future__ import annotations

import json
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlflow_weightviz.grid import matrix_shape

__all__ = ["BAND_VALUES", "META_KEY", "STATS", "BlockPlan", "Partial", "block_sketch", "dtype_name", "host_array",
           "is_torch", "metadata_array", "partial_of", "partials_of", "plan", "reduce_layer", "sketch_buckets"]

#: The member of a snapshot file that describes its reduced layers and crops.
META_KEY = "__weightviz__"
#: The statistics stored per block, as ``<layer>::<stat>`` arrays.
STATS = ("mean", "maxabs", "rms")
_Four = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
_NUMPY_FRIENDLY = frozenset({"torch.float32", "torch.float64", "torch.float16"})
#: Values reduced together on the CPU, to stay in the cache (2 MiB of float32): the reductions
#: after the first read the group from there. Larger than one core's L2 on some machines, but
#: half as many groups means half the numpy calls, whose set-up holds the GIL: two threads
#: then overlap better (measured: 8 layers of 2560 x 2560, 2 threads, 15% faster than 1 MiB).
CACHE_VALUES = 1 << 19
#: The per-column arrays of a piece of whole block rows, and its sketch row products, hold at most
#: this many values (unless one block row has more columns).
_PIECE_VALUES = 1 << 20
#: Bands at least this big are reduced by a few threads.
_THREADED_VALUES = 1 << 20
#: Layers at least this big are reduced on the threads, a few layers at a time (see partials_of).
_LAYER_THREADED_VALUES = 1 << 16
_POOL: ThreadPoolExecutor | None = None
_POOL_NAME = "weightviz-reduce"
#: Values reduced at once; bounds the extra memory a reduction takes on the layer's device.
BAND_VALUES = 1 << 24


@dataclass(frozen=True)
class BlockPlan:
    """How one layer maps onto the display grid.

    Attributes:
        shape: The layer's shape.
        matrix: The 2-D shape it is drawn as.
        block: Rows × columns of one block.
        grid: Blocks down × across.
    """

    shape: tuple[int, ...]
    matrix: tuple[int, int]
    block: tuple[int, int]
    grid: tuple[int, int]

    @property
    def reduced(self) -> bool:
        """Whether the layer is larger than the grid (and so stored as block statistics)."""
        return self.block != (1, 1)

    def describe(self, dtype: str) -> dict[str, Any]:
        """This layer's entry in the ``__weightviz__`` metadata."""
        return {"kind": "reduced", "shape": list(self.shape), "matrix": list(self.matrix),
                "block": list(self.block), "grid": list(self.grid), "dtype": dtype}


def plan(shape: tuple[int, ...], max_rows: int, max_cols: int) -> BlockPlan:
    """The block layout of a layer of ``shape`` on a ``max_rows`` × ``max_cols`` grid (as ``grid.to_grid``)."""
    rows, cols = matrix_shape(tuple(int(d) for d in shape))
    br, bc = max(1, math.ceil(rows / max_rows)), max(1, math.ceil(cols / max_cols))
    gr, gc = math.ceil(rows / br), math.ceil(cols / bc)
    return BlockPlan(tuple(int(d) for d in shape), (rows, cols), (br, bc), (gr, gc))


def dtype_name(value: Any) -> str:
    """The dtype of a tensor or array as a short name (``float32``, ``bfloat16``)."""
    dtype = getattr(value, "dtype", None)
    return str(dtype if dtype is not None else np.asarray(value).dtype).removeprefix("torch.")


def is_torch(value: Any) -> bool:
    """Whether ``value`` is a torch tensor, without importing torch."""
    return any(c.__module__.startswith("torch") and c.__name__ == "Tensor" for c in type(value).__mro__)


def metadata_array(layers: dict[str, dict[str, Any]]) -> np.ndarray:
    """The ``__weightviz__`` member: the UTF-8 JSON description as a 1-D uint8 array."""
    text = json.dumps({"version": 1, "layers": layers}, sort_keys=True)
    return np.frombuffer(text.encode(), dtype=np.uint8).copy()


@dataclass
class Partial:
    """Running block statistics of some rows of a layer; merges with the partials of other rows.

    All arrays have the grid's shape, as float64: ``total`` and ``squares`` sum the values
    and their squares, ``count`` the values that are not NaN, ``peak`` holds the value of
    largest magnitude seen so far (NaN where none).
    """

    total: np.ndarray
    squares: np.ndarray
    count: np.ndarray
    peak: np.ndarray
    #: The block sketch (see :func:`block_sketch`), when asked for; not stored in snapshots.
    sketch: np.ndarray | None = None

    @classmethod
    def empty(cls, grid: tuple[int, int], sketch: int = 0) -> Partial:
        """Statistics of no values (with a zero sketch of ``sketch`` buckets per block, if not 0)."""
        return cls(np.zeros(grid), np.zeros(grid), np.zeros(grid), np.full(grid, np.nan),
                   np.zeros((grid[0] * sketch, grid[1])) if sketch else None)

    def add_rows(self, start: int, total: np.ndarray, squares: np.ndarray, count: np.ndarray,
                 peak: np.ndarray) -> None:
        """Add the statistics of block rows ``start, start + 1, ...``, from rows after those already added."""
        end = start + total.shape[0]
        self.total[start:end] += total
        self.squares[start:end] += squares
        self.count[start:end] += count
        mine = self.peak[start:end]
        # Strictly larger only: on a tie the earlier value (earlier in row-major order) stays.
        better = _magnitude(peak) > _magnitude(mine)
        mine[better] = peak[better]

    def merge(self, later: Partial) -> None:
        """Add another partial of rows that come after this one's."""
        self.add_rows(0, later.total, later.squares, later.count, later.peak)
        if self.sketch is not None and later.sketch is not None:
            self.sketch += later.sketch
        elif later.sketch is not None or self.sketch is not None:
            self.sketch = None  # one side has none: the sum would be wrong, so there is none

    def stats(self) -> dict[str, np.ndarray]:
        """The stored statistics: ``mean``, ``maxabs`` and ``rms`` as float32 arrays."""
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            mean = self.total / self.count
            rms = np.sqrt(self.squares / self.count)
        return {"mean": mean.astype(np.float32), "maxabs": self.peak.astype(np.float32),
                "rms": rms.astype(np.float32)}


def _magnitude(peak: np.ndarray) -> np.ndarray:
    return np.where(np.isnan(peak), -1.0, np.abs(peak))


def reduce_layer(value: Any, blocks: BlockPlan) -> dict[str, np.ndarray]:
    """The block statistics (``mean``, ``maxabs``, ``rms``) of a whole layer."""
    return partial_of(value, 0, blocks).stats()


def partial_of(value: Any, row0: int, blocks: BlockPlan, sketch: bool = False) -> Partial:
    """The block statistics of ``value``: the rows ``row0, row0 + 1, ...`` of the layer's 2-D matrix.

    ``value`` is the whole layer (``row0 = 0``) or some of its leading rows, e.g. a shard
    (any shape whose first dimension is rows and the rest flatten to the layer's columns).
    With ``sketch``, the partial also holds the rows' block sketch (:func:`block_sketch`),
    computed in the same band pass.
    """
    cols = blocks.matrix[1]
    if is_torch(value):
        tensor = value.detach()
        if tensor.device.type != "cpu" or str(tensor.dtype) not in _NUMPY_FRIENDLY:
            return _torch_partial(tensor, row0, blocks, sketch)
        # On the CPU numpy reads the same memory (no copy) and its single-threaded
        # reductions do not pay a thread-pool round trip per call, so they are faster here.
        value = host_array(tensor)
    from mlflow_weightviz.capture._arrays import to_numpy

    arr = value if isinstance(value, np.ndarray) else to_numpy(value)
    rows = int(arr.size // cols) if cols else 0
    return _numpy_partial(arr.reshape(rows, cols), row0, blocks, sketch)


def host_array(tensor: Any) -> np.ndarray:
    """A numpy view of a CPU tensor's memory (no copy) that leaves the tensor as it was.

    ``Tensor.numpy()`` marks the tensor's storage as not resizable, for good. FSDP1 frees
    the parameters it gathered with ``summon_full_params`` by resizing their storage to 0,
    which then fails; a DLPack view changes nothing on the tensor. ``.numpy()`` remains the
    fallback for what DLPack cannot export.
    """
    try:
        return np.from_dlpack(tensor)
    except (BufferError, RuntimeError, TypeError, ValueError):
        return np.asarray(tensor.numpy())


def partials_of(items: list[tuple[Any, BlockPlan]], sketch: bool = False) -> list[Partial]:
    """:func:`partial_of` (from row 0) of several layers, a few at a time when they are big and on the CPU.

    Whole layers per thread, each reduced without threads of its own: fewer, larger tasks
    than splitting one layer's block rows, so the threads rarely wait for each other or the GIL.
    Only layers reduced with numpy go side by side: torch's own reductions (bf16 on the CPU,
    accelerators) use torch's thread team, which two callers at once would oversubscribe.
    """
    def host(value: Any) -> bool:
        return isinstance(value, np.ndarray) or (
            is_torch(value) and value.device.type == "cpu" and str(value.dtype) in _NUMPY_FRIENDLY)

    big = [i for i, (value, _) in enumerate(items)
           if host(value) and math.prod(getattr(value, "shape", ())) >= _LAYER_THREADED_VALUES]
    if len(big) < 2 or _in_pool():
        return [partial_of(value, 0, blocks, sketch) for value, blocks in items]
    # Small numpy-reduced layers (biases) first, on this thread, not side by side with the big ones:
    # their many short numpy calls hold the GIL, which a thread coming back from a long reduction
    # then waits for (rec.step() of the 50M MLP ~3% faster, 60 alternating pairs). Right after a
    # training step this also runs while torch's idle OpenMP thread still spins on the other core.
    found = {i: partial_of(value, 0, blocks, sketch) for i, (value, blocks) in enumerate(items)
             if i not in big and host(value)}
    pending = {i: _pool().submit(partial_of, items[i][0], 0, items[i][1], sketch) for i in big}
    wait(pending.values())  # never return (or reduce with torch's threads) while a task still runs
    found.update((i, future.result()) for i, future in pending.items())
    # Torch-reduced ones last, so that torch's threads never meet the pool's.
    return [found[i] if i in found else partial_of(value, 0, blocks, sketch) for i, (value, blocks) in enumerate(items)]


def _in_pool() -> bool:
    """Whether this is one of the reduction's threads (which must not wait on the pool themselves)."""
    return threading.current_thread().name.startswith(_POOL_NAME)


def _band_rows(cols: int) -> int:
    return max(1, BAND_VALUES // max(1, cols))


# ------------------------------------------------------------------------------ numpy


def _numpy_partial(mat: np.ndarray, row0: int, blocks: BlockPlan, sketch: bool = False) -> Partial:
    out = Partial.empty(blocks.grid, sketch_buckets(blocks) if sketch else 0)
    br, bc = blocks.block
    step = _band_rows(mat.shape[1])
    if step >= br:  # whole block rows per band: the partial ones take the slower per-row path
        step = step // br * br
    # Bands start on block-row boundaries of the whole matrix, so each adds whole block rows.
    first = min(mat.shape[0], -row0 % br) or min(mat.shape[0], step)
    starts = [0, *range(first, mat.shape[0], step)] if mat.shape[0] else []
    for i, a in enumerate(starts):
        b = starts[i + 1] if i + 1 < len(starts) else mat.shape[0]
        band = mat[a:b]
        if band.dtype.kind == "c":
            band = np.abs(band)
        acc = np.float64 if band.dtype == np.float64 else np.float32
        if band.dtype not in (np.float32, np.float64):
            band = band.astype(acc)
        g = row0 + a
        head = min(band.shape[0], -g % br)
        whole = (band.shape[0] - head) // br * br
        sk = out.sketch
        if head:  # the end of a block row begun before these rows
            out.add_rows(g // br, *_numpy_blocks(*_numpy_rows(band[:head], bc, acc), g % br, br))
            if sk is not None:
                _numpy_sketch(band[:head], g, blocks, sk)
        # Whole block rows, in pieces whose per-column arrays (one value per block row and column) and
        # sketch row products (one per row and block column) stay small, even for short or narrow blocks.
        rows_cap = _PIECE_VALUES // max(1, mat.shape[1]) * br
        if sk is not None:
            rows_cap = min(rows_cap, _PIECE_VALUES // blocks.grid[1])
        piece = max(br, rows_cap // br * br)
        for s0 in range(head, head + whole, piece):
            s1 = min(head + whole, s0 + piece)
            k0 = (g + s0) // br
            signs = None
            if sk is not None:
                a_signs, b_signs = _signs(blocks, lambda x, t=acc: x.astype(t), ("np", np.dtype(acc).name))
                signs = b_signs[k0:k0 + (s1 - s0) // br]
            found, y = _numpy_whole(band[s0:s1], br, bc, acc, signs)
            out.add_rows(k0, *found)
            if y is not None and sk is not None:
                _bucket(y, g + s0, blocks, a_signs, sk)
        if head + whole < band.shape[0]:  # the start of a block row that goes on after these rows
            out.add_rows((g + head + whole) // br,
                         *_numpy_blocks(*_numpy_rows(band[head + whole:], bc, acc), 0, br))
            if sk is not None:
                _numpy_sketch(band[head + whole:], g + head + whole, blocks, sk)
    return out


def _numpy_whole(band: np.ndarray, br: int, bc: int, acc: Any,
                 signs: np.ndarray | None = None) -> tuple[_Four, np.ndarray | None]:
    """Block statistics of whole block rows, and with ``signs`` their sketch's row products.

    Down the rows of each block: sums, sums of squares, maxima and minima per column, each a
    reduction over the middle axis (vectorised over the contiguous columns), a group of block
    rows at a time so that the later reductions read it from the cache. ``signs`` (the sketch's
    B rows of these block rows) also gives y[k, i, c] = Σ_j B[k, j] W_ij over block column c,
    from the same group. Each group only fills rows of a few per-column arrays: the steps
    across the columns run once per call (a piece of a band), because per-group Python work
    holds the GIL and would serialise the threads.
    Returns (total, squares, count, peak) and y (``(block rows, br, grid cols)``, or None).
    """
    k, cols = band.shape[0] // br, band.shape[1]
    gc = -(-cols // bc)
    sums, squared, highs, lows = (np.empty((k, cols), dtype=acc) for _ in range(4))
    y = None if signs is None else np.empty((k, gc, br), dtype=acc)
    step = max(1, CACHE_VALUES // max(1, br * cols))

    def block_rows(i: int) -> None:
        with np.errstate(invalid="ignore", over="ignore"):  # per thread: numpy's error state is thread-local
            part = band[i * br:(i + step) * br]
            m = part.shape[0] // br
            cube = part.reshape(m, br, cols)
            rows = slice(i, i + m)
            cube.sum(1, dtype=acc, out=sums[rows])
            np.einsum("ijk,ijk->ik", cube, cube, dtype=acc, out=squared[rows])
            # fmax/fmin, not max/min: no NaN propagation to check per value, about 2x faster. A block
            # row with a NaN (or an infinity) has a non-finite sum and is redone by the NaN-aware path below.
            np.fmax.reduce(cube, axis=1, out=highs[rows])
            np.fmin.reduce(cube, axis=1, out=lows[rows])
            if y is not None and signs is not None:
                c0 = 0
                for p, q in zip(_split_columns(part, bc), _split_columns(signs[rows], bc), strict=True):
                    n, w = p.shape[1], p.shape[2]
                    # (m, blocks, rows, width) @ (m, blocks, width, 1): small matrix-vector products in BLAS.
                    found = np.matmul(p.reshape(m, br, n, w).transpose(0, 2, 1, 3), q.reshape(m, n, w, 1))
                    y[rows, c0:c0 + n] = found[..., 0]
                    c0 += n

    starts = range(0, k, step)
    if len(starts) > 1 and band.size >= _THREADED_VALUES and not _in_pool():
        # numpy's reductions release the GIL: the cores the training loop leaves idle during
        # rec.step() share the block rows (each writes its own rows). Independent tasks, not a
        # team that waits at a barrier: a core taken by another process only slows its share.
        list(_pool().map(block_rows, starts))
    else:
        for i in starts:
            block_rows(i)
    total, squares = _across(sums, bc, np.add), _across(squared, bc, np.add)
    top, bottom = _across(highs, bc, np.fmax), _across(lows, bc, np.fmin)
    sizes = np.minimum(bc, cols - np.arange(gc, dtype=np.float64) * bc)
    count = np.repeat(sizes[None, :] * float(br), k, axis=0)
    for bad in np.nonzero(~np.isfinite(total).all(axis=1))[0]:
        # A NaN or an infinity in this block row: the slower NaN-skipping path.
        found = _numpy_blocks(*_numpy_rows(band[bad * br:(bad + 1) * br], bc, acc), 0, br)
        total[bad], squares[bad], count[bad], pk = (f[0] for f in found)
        # Stored as a peak of its own magnitude on both sides, so that no tie is looked up below.
        top[bad], bottom[bad] = pk, pk
    with np.errstate(invalid="ignore"):
        peak = np.where(top >= -bottom, top, bottom)
        tie = (top == -bottom) & (top != 0)
    for a, c in zip(*np.nonzero(tie), strict=True):
        # +x and -x both present: the first in row-major order wins
        block = band[a * br:(a + 1) * br, c * bc:(c + 1) * bc].reshape(-1)
        peak[a, c] = block[np.abs(block).argmax()]
    return (total, squares, count, peak), None if y is None else y.transpose(0, 2, 1)


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1), thread_name_prefix=_POOL_NAME)
    return _POOL


def _across(arr: np.ndarray, bc: int, op: Any) -> np.ndarray:
    """Reduce each row's runs of ``bc`` columns (the last one may be shorter) with ``op``, into float64."""
    if op is np.add and arr.shape[1] % bc == 0:
        # Sums as a matrix-vector product with ones, in the per-column arrays' precision (they are
        # float32 sums of a block's rows already): about 4x faster than a transposed copy and a
        # reduction, which cost more than the additions themselves.
        return (arr.reshape(-1, bc) @ np.ones(bc, dtype=arr.dtype)).reshape(arr.shape[0], -1).astype(np.float64)
    # One call for all the runs, the ragged last one included (~30% faster than a reduction
    # over a transposed copy, 2x faster than over a (rows, blocks, bc) view).
    found: np.ndarray = op.reduceat(arr, np.arange(0, arr.shape[1], bc), axis=1,
                                    dtype=np.float64 if op is np.add else None)
    return found.astype(np.float64, copy=False)


def _numpy_rows(band: np.ndarray, bc: int, acc: Any) -> _Four:
    """Per row and block column: sum, sum of squares, non-NaN count, signed peak."""
    found = [_numpy_segments(p, acc) for p in _split_columns(band, bc)]
    s, sq, n, pk = (np.concatenate([f[k] for f in found], axis=1) for k in range(4))
    return s, sq, n, pk


def _numpy_segments(x: np.ndarray, acc: Any) -> tuple[np.ndarray, ...]:
    with np.errstate(invalid="ignore", over="ignore"):
        s, sq, hi, lo = (np.empty(x.shape[:2], dtype=acc) for _ in range(4))
        # A few rows at a time, so that the four reductions read them from the cache
        # and the layer streams through memory about once.
        step = max(1, CACHE_VALUES // max(1, x.shape[1] * x.shape[2]))
        for r in range(0, x.shape[0], step):
            part = x[r:r + step]
            part.sum(-1, dtype=acc, out=s[r:r + step])
            np.einsum("ijk,ijk->ij", part, part, dtype=acc, out=sq[r:r + step])
            np.fmax.reduce(part, axis=-1, out=hi[r:r + step])  # (as in _numpy_whole: NaNs take the path below)
            np.fmin.reduce(part, axis=-1, out=lo[r:r + step])
        if np.isfinite(s).all():
            peak = np.where(hi >= -lo, hi, lo)
            tie = (hi == -lo) & (hi != 0)
            if tie.any():
                i, j = np.nonzero(tie)
                seg = x[i, j]
                peak[i, j] = seg[np.arange(len(i)), np.abs(seg).argmax(-1)]
            return s, sq, np.full(s.shape, x.shape[-1], dtype=np.float64), peak
        nan = np.isnan(x)
        z = np.where(nan, 0, x)
        mag = np.where(nan, -1, np.abs(x))
        idx = mag.argmax(-1)
        peak = np.take_along_axis(x, idx[..., None], -1)[..., 0]
        return (z.sum(-1, dtype=acc), np.einsum("ijk,ijk->ij", z, z, dtype=acc),
                (~nan).sum(-1).astype(np.float64), peak)


def _numpy_blocks(s: np.ndarray, sq: np.ndarray, n: np.ndarray, pk: np.ndarray, skip: int,
                  br: int) -> tuple[np.ndarray, ...]:
    """Merge per-row statistics into block rows; the first block row misses its first ``skip`` rows."""
    rows = s.shape[0]
    pad = (skip, -(skip + rows) % br)
    fill = [(0.0, s), (0.0, sq), (0.0, n), (np.nan, pk)]
    s, sq, n, pk = (np.pad(a.astype(np.float64), (pad, (0, 0)), constant_values=c) for c, a in fill)
    k = s.shape[0] // br
    s, sq, n, pk = (a.reshape(k, br, -1) for a in (s, sq, n, pk))
    idx = _magnitude(pk).argmax(1)
    peak = np.take_along_axis(pk, idx[:, None, :], 1)[:, 0, :]
    return s.sum(1), sq.sum(1), n.sum(1), peak


# ------------------------------------------------------------------------------ torch


def _torch_partial(tensor: Any, row0: int, blocks: BlockPlan, sketch: bool = False) -> Partial:
    import torch

    out = Partial.empty(blocks.grid, sketch_buckets(blocks) if sketch else 0)
    cols = blocks.matrix[1]
    br, bc = blocks.block
    if tensor.is_complex():
        tensor = tensor.abs()
    rows = int(tensor.numel() // cols) if cols else 0
    mat = tensor.reshape(rows, cols)
    acc = torch.float64 if tensor.dtype == torch.float64 else torch.float32
    # On the CPU the small per-row arrays go to numpy at once (no copy): tiny torch ops cost a
    # thread-pool round trip each. On an accelerator they stay there until merged into block rows.
    host = _on_host(mat)
    step = _band_rows(cols)
    first = min(rows, -row0 % br) or min(rows, step)
    starts = [0, *range(first, rows, step)] if rows else []
    with torch.no_grad():
        for i, a in enumerate(starts):
            b = starts[i + 1] if i + 1 < len(starts) else rows
            band = mat[a:b]
            if not band.is_floating_point():
                band = band.to(acc)
            parts = _split_columns(band, bc)
            if host:
                found = [_torch_segments_host(p, acc) for p in parts]
                s, sq, n, pk = (np.concatenate([f[k] for f in found], axis=1) for k in range(4))
                merged = _numpy_blocks(s, sq, n, pk, (row0 + a) % br, br)
            else:
                dev = [_torch_segments(p, acc) for p in parts]
                ds, dsq, dn, dpk = (torch.cat([f[k] for f in dev], dim=1) for k in range(4))
                blocks_dev = _torch_blocks(ds, dsq, dn, dpk, (row0 + a) % br, br)
                host_copy = torch.stack(blocks_dev).to("cpu", torch.float64).numpy()  # the only copy to the host
                merged = (host_copy[0], host_copy[1], host_copy[2], host_copy[3])
            out.add_rows((row0 + a) // br, *merged)
            if out.sketch is not None:
                _torch_sketch(band, row0 + a, blocks, out.sketch)
    return out


def _on_host(tensor: Any) -> bool:
    return bool(tensor.device.type == "cpu")


def _split_columns(band: Any, bc: int) -> list[Any]:
    """The band as (rows, blocks, bc) views: the full block columns, then the ragged last one."""
    rows, cols = band.shape
    full = cols // bc
    parts = []
    if full:
        parts.append(band[:, :full * bc].reshape(rows, full, bc))
    if cols > full * bc:
        parts.append(band[:, full * bc:].reshape(rows, 1, cols - full * bc))
    return parts


def _torch_segments_host(x: Any, acc: Any) -> tuple[np.ndarray, ...]:
    """:func:`_torch_segments` for a CPU tensor: the four big reductions in torch, the rest in numpy."""
    import torch

    s = x.sum(-1, dtype=acc).numpy()
    if not np.isfinite(s).all():
        return tuple(t.numpy() for t in _torch_segments(x, acc))
    sq = torch.linalg.vector_norm(x, 2, dim=-1, dtype=acc).numpy().astype(np.float64) ** 2
    hi, lo = (t.to(acc).numpy() if t.dtype != acc else t.numpy() for t in (x.amax(-1), x.amin(-1)))
    peak = np.where(hi >= -lo, hi, lo)
    tie = (hi == -lo) & (hi != 0)
    if tie.any():
        i, j = np.nonzero(tie)
        seg = x[torch.from_numpy(i), torch.from_numpy(j)]
        peak[i, j] = seg.gather(-1, seg.abs().argmax(-1, keepdim=True))[:, 0].to(acc).numpy()
    return s, sq, np.full(s.shape, x.shape[-1], dtype=np.float64), peak


def _torch_segments(x: Any, acc: Any) -> tuple[Any, ...]:
    """Per row and block column of ``x`` (rows, blocks, width): sum, sum of squares, count, signed peak."""
    import torch

    s = x.sum(-1, dtype=acc)
    if bool(torch.isfinite(s).all()):
        sq = torch.linalg.vector_norm(x, 2, dim=-1, dtype=acc) ** 2
        hi, lo = x.amax(-1).to(acc), x.amin(-1).to(acc)
        peak = torch.where(hi >= -lo, hi, lo)
        tie = (hi == -lo) & (hi != 0)
        if bool(tie.any()):
            i, j = tie.nonzero(as_tuple=True)
            seg = x[i, j]
            peak[i, j] = seg.gather(-1, seg.abs().argmax(-1, keepdim=True))[:, 0].to(acc)
        return s, sq, torch.full_like(s, x.shape[-1]), peak
    y = x.to(acc)
    nan = torch.isnan(y)
    z = torch.where(nan, torch.zeros((), dtype=acc, device=y.device), y)
    mag = torch.where(nan, torch.full((), -1.0, dtype=acc, device=y.device), y.abs())
    peak = y.gather(-1, mag.argmax(-1, keepdim=True))[..., 0]
    return z.sum(-1), (z * z).sum(-1), (~nan).sum(-1).to(acc), peak


def _torch_blocks(s: Any, sq: Any, n: Any, pk: Any, skip: int, br: int) -> list[Any]:
    import torch
    import torch.nn.functional as F

    rows = s.shape[0]
    pad = (0, 0, skip, -(skip + rows) % br)
    s, sq, n = (F.pad(a, pad, value=0.0) for a in (s, sq, n))
    pk = F.pad(pk, pad, value=float("nan"))
    k = s.shape[0] // br
    s, sq, n, pk = (a.reshape(k, br, -1) for a in (s, sq, n, pk))
    mag = torch.where(torch.isnan(pk), torch.full_like(pk, -1.0), pk.abs())
    peak = pk.gather(1, mag.argmax(1, keepdim=True))[:, 0, :]
    return [s.sum(1), sq.sum(1), n.sum(1), peak]



# ------------------------------------------------------------------------------ sketch

#: The fixed seed of the block sketch's signs, so every snapshot (and every rank) sketches a layer alike.
SKETCH_SEED = 20240611
#: Buckets per block in the sketch: the rows of a block go into this many by row number.
SKETCH_BUCKETS = 8
_SIGNS: dict[Any, tuple[Any, Any]] = {}


def block_sketch(value: Any, blocks: BlockPlan, row0: int = 0) -> np.ndarray:
    """The layer's block sketch X, a float64 array of the grid's shape.

    X[k·R + r, c] = Σ s_ij · W_ij over the rows of the block (k, c) whose place in the
    block is r modulo R,
    with signs s_ij = A[i, c] · B[k, j] (A: rows × grid columns, B: grid rows × columns,
    fixed-seed ±1), independent from block to block; R = :func:`sketch_buckets`. X is
    linear in W, so ‖X(W_t) − X(W_s)‖ estimates ‖W_t − W_s‖ (its square without bias,
    from R times as many buckets as the grid has blocks), and the sketches of row shards
    add up to the whole layer's. :func:`partial_of` computes it in the same band pass as
    the block statistics.
    """
    found = partial_of(value, row0, blocks, sketch=True).sketch
    assert found is not None
    return found


def sketch_buckets(blocks: BlockPlan) -> int:
    """Buckets per block of a layer's sketch: :data:`SKETCH_BUCKETS`, or fewer for blocks of fewer rows."""
    return max(1, min(SKETCH_BUCKETS, blocks.block[0]))


def _signs(blocks: BlockPlan, make: Any, key: Any) -> tuple[Any, Any]:
    """The sign tables A (rows × grid columns) and B (grid rows × columns), cached per layer shape and grid."""
    full = (blocks.matrix, blocks.grid, key)
    if full not in _SIGNS:
        if len(_SIGNS) > 256:  # many shapes come and go: start afresh rather than grow without bound
            _SIGNS.clear()
        (rows, cols), (gr, gc) = blocks.matrix, blocks.grid
        rng = np.random.default_rng([SKETCH_SEED, rows, cols, gr, gc])
        a = rng.integers(0, 2, (rows, gc), dtype=np.int8) * 2 - 1
        b = rng.integers(0, 2, (gr, cols), dtype=np.int8) * 2 - 1
        _SIGNS[full] = (make(a), make(b))
    return _SIGNS[full]


def _block_rows_of(n: int, g: int, br: int) -> list[tuple[int, int, int]]:
    """(block row, first, end) of the rows ``g .. g + n - 1``, as offsets into those rows."""
    out = []
    r = 0
    while r < n:
        k = (g + r) // br
        end = min(n, (k + 1) * br - g)
        out.append((k, r, end))
        r = end
    return out


def _numpy_sketch(part: np.ndarray, g: int, blocks: BlockPlan, out: np.ndarray) -> None:
    """Add the block sketch of ``part`` (rows ``g, g + 1, ...``, all in one block row) into ``out``.

    For the partial block rows at a band's or a shard's edges; whole block rows are sketched
    by :func:`_numpy_whole`.
    """
    acc = np.float64 if part.dtype == np.float64 else np.float32
    a, b = _signs(blocks, lambda x: x.astype(acc), ("np", np.dtype(acc).name))
    k, bc = g // blocks.block[0], blocks.block[1]
    # Per row and block column Σ_j B[k, j] W_ij, then · A[i, c] (in _bucket).
    # (1, blocks, rows, width) @ (1, blocks, width, 1): small matrix-vector products, no temporary of the rows.
    y = np.concatenate([np.matmul(p.reshape(1, *p.shape).transpose(0, 2, 1, 3), q[..., None])[..., 0]
                        for p, q in zip(_split_columns(part, bc), _split_columns(b[k:k + 1], bc), strict=True)],
                       axis=1).transpose(0, 2, 1)
    _bucket(y, g, blocks, a, out)


def _bucket(y: np.ndarray, first: int, blocks: BlockPlan, a: np.ndarray, out: np.ndarray) -> None:
    """Finish the sketch of rows ``first, first + 1, ...``, given as ``y`` (block rows, rows each, grid columns).

    ``y`` holds Σ_j B[k, j] · W_ij per row and block column; here each row is signed with
    A[i, c] and added into its bucket (its place in the block, modulo the buckets).
    """
    (br, _), nb, gc = blocks.block, sketch_buckets(blocks), blocks.grid[1]
    m, k = y.shape[0], first // br
    y = y * a[first:first + y.shape[0] * y.shape[1]].reshape(m, -1, gc)
    # Row i of a block goes to bucket (i's place in the block) mod nb: pad to whole cycles, add them up.
    shift = first % br % nb
    if shift or y.shape[1] % nb:
        y = np.pad(y, ((0, 0), (shift, -(shift + y.shape[1]) % nb), (0, 0)))
    # (The signs make exact products; the bucket sums are taken in float64.)
    out[k * nb:(k + m) * nb] += y.reshape(m, -1, nb, gc).sum(1, dtype=np.float64).reshape(m * nb, gc)


def _torch_sketch(band: Any, g: int, blocks: BlockPlan, out: np.ndarray) -> None:
    """:func:`_numpy_sketch` with torch on the band's device; only the band's block rows reach the host."""
    import torch

    acc = torch.float64 if band.dtype == torch.float64 else torch.float32
    dev = band.device
    a, b = _signs(blocks, lambda x: torch.from_numpy(x).to(device=dev, dtype=acc), ("torch", str(dev), str(acc)))
    import torch.nn.functional as F

    bc, nb = blocks.block[1], sketch_buckets(blocks)
    items = _block_rows_of(int(band.shape[0]), g, blocks.block[0])
    found = []
    with torch.no_grad():
        for k, lo, hi in items:
            seg = band[lo:hi]
            y = torch.cat([(p * q).sum(-1, dtype=acc)
                           for p, q in zip(_split_columns(seg, bc), _split_columns(b[k:k + 1], bc), strict=True)],
                          dim=1)
            y = y.to(torch.float64) * a[g + lo:g + hi]
            shift = (g + lo) % blocks.block[0] % nb
            y = F.pad(y, (0, 0, shift, -(shift + y.shape[0]) % nb))
            found.append(y.reshape(-1, nb, y.shape[1]).sum(0))
        if found:
            host = torch.stack(found).cpu().numpy()
            for (k, _, _), x in zip(items, host, strict=True):
                out[k * nb:(k + 1) * nb] += x
