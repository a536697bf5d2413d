"""From snapshot arrays to what a frame shows: the display grid, its colour scale and number format.

Every array becomes a 2-D float matrix (a 1-D bias is one row, a conv kernel is reshaped
to ``(shape[0], -1)``), large matrices are block-pooled down to the display grid, reading
a memory-mapped file a band of rows at a time so a huge layer never sits in memory whole.
:func:`prepare_layer` does this for every frame of a layer once, into a temporary
memory-mapped stack, and derives the layer's colour scale and value format from it.
"""

from __future__ import annotations

import functools
import math
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlflow_weightviz.errors import OutputError, ShapeMismatchError, SnapshotError, SnapshotFormatError, UsageError
from mlflow_weightviz.options import Pool, RenderOptions, Scale, View
from mlflow_weightviz.snapshots import Crop, LazyArray, Reduced, Snapshot, release_pages

__all__ = ["GridInfo", "PreparedLayer", "choose_format", "finite_range", "format_value", "prepare_layer",
           "release_pages", "sample_indices", "snapshot_grid", "to_grid"]

# Bytes of raw data pooled at once; bounds memory for huge layers.
_BAND_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class GridInfo:
    """How a snapshot's array maps onto the display grid."""

    shape: tuple[int, ...]
    matrix: tuple[int, int]
    grid: tuple[int, int]
    block: tuple[int, int]
    pool: Pool
    #: The matrix row and column of the first cell: not (0, 0) when a region is drawn.
    origin: tuple[int, int] = (0, 0)
    #: The layer's whole matrix when only a region of it (``matrix``) is drawn.
    full: tuple[int, int] | None = None

    @property
    def pooled(self) -> bool:
        """Whether cells stand for blocks of weights rather than single weights."""
        return self.block != (1, 1)

    def row_index(self, i: int) -> int:
        """The matrix row where grid row ``i`` starts (for tick labels)."""
        return self.origin[0] + i * self.block[0]

    def col_index(self, j: int) -> int:
        """The matrix column where grid column ``j`` starts (for tick labels)."""
        return self.origin[1] + j * self.block[1]

    def note(self) -> str:
        """A short description of the reshaping, the region and the pooling, for titles."""
        parts = []
        if len(self.shape) != 2:
            parts.append(f"shape {_x(self.shape)} shown as {_x(self.full or self.matrix)}")
        if self.full is not None:
            (r0, c0), (rows, cols) = self.origin, self.matrix
            parts.append(f"rows {r0}:{r0 + rows}, cols {c0}:{c0 + cols} of {_x(self.full)}")
        if self.pooled:
            parts.append(f"pooled {_x(self.matrix)} → {_x(self.grid)} ({self.pool.value} of {_x(self.block)} blocks)")
        return "; ".join(parts)


def _x(shape: Sequence[int]) -> str:
    return "×".join(str(d) for d in shape) or "scalar"


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """The 2-D shape an array of ``shape`` is drawn as."""
    if len(shape) == 0:
        return (1, 1)
    if len(shape) == 1:
        return (1, shape[0])
    return (shape[0], math.prod(shape[1:]))


def to_grid(arr: np.ndarray | LazyArray, *, max_rows: int, max_cols: int,
            pool: Pool | None = Pool.MEAN) -> tuple[np.ndarray, GridInfo]:
    """Reshape ``arr`` to 2-D and block-pool it to at most ``max_rows`` × ``max_cols`` cells.

    ``pool=None`` (auto) pools by block RMS. Returns a float64 matrix and a description
    of what was done. Complex values are
    shown by magnitude. Large input is read in bands whatever its layout: bands of rows
    for C order, bands of columns where the matrix is stored column by column (Fortran
    order, a step of a Fortran-order stack), and each band in pieces that span at most
    64 MiB of the file, whose pages are released after reading. A :class:`LazyArray`
    (bfloat16, torch, deflated members) is converted band by band the same way. Every
    block is pooled from the same values in the same order whichever way it was read.
    """
    shape = tuple(arr.shape)
    rows, cols = matrix_shape(shape)
    if rows == 0 or cols == 0:
        msg = f"cannot draw an empty array: it must have at least one value; this one has shape {shape}"
        raise SnapshotError(msg)
    br, bc = math.ceil(rows / max_rows), math.ceil(cols / max_cols)
    gr, gc = math.ceil(rows / br), math.ceil(cols / bc)
    if pool is None:
        pool = Pool.RMS if (br, bc) != (1, 1) else Pool.MEAN
    info = GridInfo(shape, (rows, cols), (gr, gc), (br, bc), pool)
    if (br, bc) == (1, 1):
        return _as_float(np.asarray(arr).reshape(rows, cols)), info
    out = np.empty((gr, gc))
    for axis, start, block in _bands(arr, rows, cols, br, bc):
        pooled = _pool_band(block, br, bc, pool)
        del block
        if axis == 0:
            out[start // br:start // br + pooled.shape[0]] = pooled
        else:
            out[:, start // bc:start // bc + pooled.shape[1]] = pooled
    return out, info


def _bands(arr: np.ndarray | LazyArray, rows: int, cols: int, br: int = 1,
           bc: int = 1) -> Iterator[tuple[int, int, np.ndarray]]:
    """Float64 bands of ``arr``'s (rows, cols) matrix as ``(axis, start, block)``, aligned to whole blocks.

    Bands hold about :data:`_BAND_BYTES` of data; pages are released after each one is used.
    """
    if len(arr.shape) < 2:
        arr = _matrix_view(arr, rows, cols)
    itemsize = max(arr.itemsize, arr.dtype.itemsize)
    strides = _matrix_strides(arr, rows, cols)
    if strides is not None and abs(strides[1]) > abs(strides[0]):  # stored column by column
        mat = _matrix_view(arr, rows, cols)
        band = max(1, _BAND_BYTES // max(1, rows * itemsize * bc)) * bc
        for c0 in range(0, cols, band):
            block = _read_float(mat, (slice(0, rows), slice(c0, min(c0 + band, cols))))
            _release(mat)  # before the band is pooled: its file pages are not needed any more
            yield 1, c0, block
            del block  # not kept alive while the next band is read
        return
    band = max(1, _BAND_BYTES // max(1, cols * itemsize * br)) * br
    rest = tuple(slice(0, n) for n in arr.shape[1:])
    for r0 in range(0, rows, band):
        r1 = min(r0 + band, rows)
        block = _read_float(arr, (slice(r0, r1), *rest)).reshape(r1 - r0, cols)
        _release(arr)  # before the band is pooled: its file pages are not needed any more
        yield 0, r0, block
        del block  # not kept alive while the next band is read


def _matrix_view(arr: np.ndarray | LazyArray, rows: int, cols: int) -> np.ndarray | LazyArray:
    """``arr`` as its (rows, cols) matrix; only called where that needs no copy."""
    if isinstance(arr, LazyArray):
        view = arr.reshape(rows, cols)
        assert view is not None
        return view
    return arr.reshape(rows, cols)


def _matrix_strides(arr: np.ndarray | LazyArray, rows: int, cols: int) -> tuple[int, int] | None:
    """The byte strides of ``arr`` seen as its (rows, cols) matrix, or ``None`` if that needs a copy."""
    probe = np.lib.stride_tricks.as_strided(np.empty(1, np.uint8), shape=arr.shape, strides=arr.strides)
    try:
        view = np.reshape(probe, (rows, cols), copy=False)
    except ValueError:
        return None
    return int(view.strides[0]), int(view.strides[1])


def _read_float(src: np.ndarray | LazyArray, index: tuple[slice, ...]) -> np.ndarray:
    """The float64 values of ``src[index]``, read in pieces that each span at most _BAND_BYTES of memory."""
    shape = tuple(s.stop - s.start for s in index)
    pieces = list(_pieces(shape, tuple(src.strides), src.itemsize, _BAND_BYTES))
    if len(pieces) == 1:
        return _as_float(_read(src, index))
    out = np.empty(shape)
    for piece in pieces:
        out[piece] = _as_float(_read(src, tuple(slice(s.start + p.start, s.start + p.stop)
                                                for s, p in zip(index, piece, strict=True))))
        _release(src)
    return out


def _pieces(shape: tuple[int, ...], strides: tuple[int, ...], itemsize: int,
            budget: int) -> Iterator[tuple[slice, ...]]:
    """Split a block into pieces of whole index ranges, each spanning at most ``budget`` bytes.

    A piece's span is the distance from its first to its last byte in memory: a step of a
    Fortran-order stack, for example, spans far more than it holds. Pieces go forward in
    memory, which streamed members need.
    """
    span = itemsize + sum((n - 1) * abs(st) for n, st in zip(shape, strides, strict=True) if n > 0)
    long_axes = [i for i, n in enumerate(shape) if n > 1]
    if span <= budget or not long_axes:
        yield tuple(slice(0, n) for n in shape)
        return
    k = max(long_axes, key=lambda i: abs(strides[i]))
    one = span - (shape[k] - 1) * abs(strides[k])  # the span of one index along axis k
    if one <= budget:
        step = max(1, (budget - one) // max(1, abs(strides[k])) + 1)
        for a in range(0, shape[k], step):
            yield tuple(slice(a, min(a + step, n)) if i == k else slice(0, n) for i, n in enumerate(shape))
        return
    sub = tuple(1 if i == k else n for i, n in enumerate(shape))
    for a in range(shape[k]):
        for piece in _pieces(sub, strides, itemsize, budget):
            yield tuple(slice(a, a + 1) if i == k else p for i, p in enumerate(piece))


def _read(src: np.ndarray | LazyArray, index: tuple[slice, ...]) -> np.ndarray:
    return src.read(index) if isinstance(src, LazyArray) else src[index]


def _release(src: np.ndarray | LazyArray) -> None:
    if isinstance(src, LazyArray):
        src.release()
    else:
        release_pages(src)


def _as_float(a: np.ndarray) -> np.ndarray:
    # A signalling NaN (any bit pattern a file can hold) warns "invalid value" when cast;
    # it stays NaN, which is all that matters here.
    with np.errstate(invalid="ignore", over="ignore"):
        if a.dtype.kind == "c":
            return np.asarray(np.abs(a), dtype=np.float64)
        return np.asarray(a, dtype=np.float64)


def _tiles(block: np.ndarray, br: int, bc: int) -> np.ndarray:
    """``block``'s (br, bc) blocks as a (rows/br, cols/bc, br*bc) array; ragged edges are padded with NaN.

    NaN is skipped by the nan-aware reductions. This is padding the band with NaN and
    reshaping it into blocks, down to the memory layout (a reduction adds the values in
    an order that depends on it), but a ragged band is copied only once: straight into
    the tiles when the reshape would copy, else into the padded band it is a view of.
    """
    rows, cols = block.shape
    gr, gc, fr, fc = -(-rows // br), -(-cols // bc), rows // br, cols // bc
    if (fr, fc) == (gr, gc):
        return block.reshape(gr, br, gc, bc).swapaxes(1, 2).reshape(gr, gc, br * bc)
    if br == 1 or bc == 1 or gc == 1:  # the blocks are a view of the padded band
        padded = np.full((gr * br, gc * bc), np.nan)
        padded[:rows, :cols] = block
        return padded.reshape(gr, br, gc, bc).swapaxes(1, 2).reshape(gr, gc, br * bc, copy=False)
    tiles = np.full((gr, gc, br * bc), np.nan)
    t4 = tiles.reshape(gr, gc, br, bc).transpose(0, 2, 1, 3)  # t4[i, a, j, b] is block[i*br + a, j*bc + b]
    rr, rc = rows - fr * br, cols - fc * bc
    t4[:fr, :, :fc, :] = block[:fr * br, :fc * bc].reshape(fr, br, fc, bc)
    if rc:
        t4[:fr, :, fc, :rc] = block[:fr * br, fc * bc:].reshape(fr, br, rc)
    if rr:
        t4[fr, :rr, :fc, :] = block[fr * br:, :fc * bc].reshape(rr, fc, bc)
    if rr and rc:
        t4[fr, :rr, fc, :rc] = block[fr * br:, fc * bc:]
    return tiles


def _pool_band(block: np.ndarray, br: int, bc: int, pool: Pool) -> np.ndarray:
    tiles = _tiles(block, br, bc)
    with warnings.catch_warnings(), np.errstate(invalid="ignore", over="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks stay NaN
        if pool is Pool.MEAN:
            return np.asarray(np.nanmean(tiles, axis=2))
        if pool is Pool.RMS:
            # Squared in place when the tiles are a copy of their own: one band of float64 less
            # at the peak of a huge layer (the same values either way).
            own = not np.may_share_memory(tiles, block)
            return np.asarray(np.sqrt(np.nanmean(np.square(tiles, out=tiles if own else None), axis=2)))
        idx = np.nanargmax(np.where(np.isnan(tiles), -1.0, np.abs(tiles)), axis=2)
        return np.asarray(np.take_along_axis(tiles, idx[..., None], axis=2)[..., 0])


Span = tuple[int, int]


def snapshot_grid(snap: Snapshot, arr: np.ndarray | LazyArray | None = None, *, max_rows: int, max_cols: int,
                  pool: Pool | None = None, rows: Span | None = None,
                  cols: Span | None = None) -> tuple[np.ndarray, GridInfo]:
    """What a snapshot shows: its display grid and a description, for full and reduced snapshots alike.

    ``rows``/``cols`` pick a region of the layer's matrix (matrix indices). A full
    snapshot is read only over that region, a band at a time. A layer stored reduced is
    drawn from its stored block statistic chosen by ``pool`` (``None``: RMS), pooled
    further by whole stored blocks when the requested grid is smaller; a region of it
    needs a stored crop that covers it. ``arr`` is the opened full array, if the caller
    has it.

    Raises:
        UsageError: The region is outside the matrix, or the layer is reduced and no
            stored crop covers the region.
        SnapshotFormatError: Reduced statistics do not have the stored grid's shape.
    """
    meta = snap.meta
    if isinstance(meta, Reduced):
        if rows is None and cols is None:
            return _reduced_grid(snap, meta, max_rows=max_rows, max_cols=max_cols, pool=pool)
        full = meta.matrix
        want = _check_region(snap.layer, full, rows, cols)
        crop = next((c for c in meta.crops if c.rows[0] <= want[0][0] and want[0][1] <= c.rows[1]
                     and c.cols[0] <= want[1][0] and want[1][1] <= c.cols[1]), None)
        if crop is None or crop.loader is None:
            stored = "; stored regions: " + ", ".join(
                f"rows {c.rows[0]}:{c.rows[1]}, cols {c.cols[0]}:{c.cols[1]}" for c in meta.crops) if meta.crops else ""
            msg = (f"layer {snap.layer!r} was stored reduced ({_x(full)} as {_x(meta.grid)} blocks of "
                   f"{_x(meta.block)}), so its exact values of rows {want[0][0]}:{want[0][1]}, cols "
                   f"{want[1][0]}:{want[1][1]} were not stored{stored}. Record the region exactly with "
                   f"record(..., crops={{{snap.layer!r}: (slice({want[0][0]}, {want[0][1]}), "
                   f"slice({want[1][0]}, {want[1][1]}))}}), or drop --rows/--cols")
            raise UsageError(msg)
        return _region_grid(crop.loader(), crop.rows[0], crop.cols[0], meta.shape, full, want,
                            max_rows=max_rows, max_cols=max_cols, pool=pool)
    if arr is None:
        arr = snap.open()
    if isinstance(meta, Crop):
        full = matrix_shape(meta.shape)
        here = matrix_shape(tuple(arr.shape))
        if rows is None and cols is None:
            want = ((meta.rows[0], meta.rows[0] + here[0]), (meta.cols[0], meta.cols[0] + here[1]))
        else:
            want = _check_region(snap.layer, here, rows, cols, origin=(meta.rows[0], meta.cols[0]))
        return _region_grid(arr, meta.rows[0], meta.cols[0], meta.shape, full, want,
                            max_rows=max_rows, max_cols=max_cols, pool=pool)
    if rows is None and cols is None:
        return to_grid(arr, max_rows=max_rows, max_cols=max_cols, pool=pool)
    full = matrix_shape(tuple(arr.shape))
    want = _check_region(snap.layer, full, rows, cols)
    return _region_grid(arr, 0, 0, tuple(arr.shape), full, want, max_rows=max_rows, max_cols=max_cols, pool=pool)


def _check_region(layer: str, matrix: tuple[int, int], rows: Span | None, cols: Span | None,
                  origin: tuple[int, int] = (0, 0)) -> tuple[Span, Span]:
    """``rows``/``cols`` (all of an axis when ``None``), checked to lie within the matrix."""
    out = []
    for name, given, start, size in (("rows", rows, origin[0], matrix[0]), ("cols", cols, origin[1], matrix[1])):
        span = given if given is not None else (start, start + size)
        if not (start <= span[0] < span[1] <= start + size):
            msg = (f"--{name} {span[0]}:{span[1]} is outside layer {layer!r}, whose matrix has {name} "
                   f"{start}:{start + size}")
            raise UsageError(msg)
        out.append(span)
    return out[0], out[1]


def _region_grid(arr: np.ndarray | LazyArray, r0: int, c0: int, shape: tuple[int, ...], full: tuple[int, int],
                 want: tuple[Span, Span], *, max_rows: int, max_cols: int,
                 pool: Pool | None) -> tuple[np.ndarray, GridInfo]:
    """Grid of region ``want`` (matrix indices) of ``arr``, whose first value is matrix cell (r0, c0)."""
    (a, b), (c, d) = want
    values, info = to_grid(_region(arr, (a - r0, b - r0), (c - c0, d - c0)), max_rows=max_rows,
                           max_cols=max_cols, pool=pool)
    is_whole = (a, b, c, d) == (0, full[0], 0, full[1])
    return values, GridInfo(shape, info.matrix, info.grid, info.block, info.pool, (a, c),
                            None if is_whole else full)


def _region(arr: np.ndarray | LazyArray, rows: Span, cols: Span) -> np.ndarray | LazyArray:
    """Rows and columns of ``arr``'s matrix, as a view where possible (nothing is read)."""
    m_rows, m_cols = matrix_shape(tuple(arr.shape))
    index = (slice(*rows), slice(*cols))
    if (rows, cols) == ((0, m_rows), (0, m_cols)):
        return arr
    if _matrix_strides(arr, m_rows, m_cols) is not None:
        if isinstance(arr, LazyArray):
            view = arr.reshape(m_rows, m_cols)
            assert view is not None
            return view.window(index)
        return arr.reshape(m_rows, m_cols)[index]
    # The matrix is not a view of the array (a strided N-d layout): read only the rows asked for.
    rest = tuple(slice(0, n) for n in arr.shape[1:])
    return _read_float(arr, (slice(*rows), *rest)).reshape(rows[1] - rows[0], m_cols)[:, cols[0]:cols[1]]


def _reduced_grid(snap: Snapshot, meta: Reduced, *, max_rows: int, max_cols: int,
                  pool: Pool | None) -> tuple[np.ndarray, GridInfo]:
    """The stored statistic of a reduced layer, pooled further by whole stored blocks if the grid asks for it.

    Further pooling is exact: block means are averaged weighted by their element counts,
    RMS values through their weighted mean of squares, and max-abs values by max-abs.
    When the requested block is not a whole number of stored blocks, the next whole
    number is used (the title says which).
    """
    kind = pool or Pool.RMS
    rows, cols = meta.matrix
    (br, bc), (gr, gc) = meta.block, meta.grid
    try:
        stat = _as_float(np.asarray(meta.stats[kind.value]()))
    except SnapshotError:
        raise
    except Exception as exc:  # any decoder failure becomes our own error
        msg = f"cannot read {snap.origin} ({kind.value}): {exc}"
        raise SnapshotFormatError(msg) from exc
    if stat.shape != (gr, gc):
        msg = (f"{snap.origin}: the stored {kind.value} of reduced layer {snap.layer!r} has shape {stat.shape}; "
               f"its description says {_x((gr, gc))}")
        raise SnapshotFormatError(msg)
    kr = max(1, math.ceil(math.ceil(rows / max_rows) / br))
    kc = max(1, math.ceil(math.ceil(cols / max_cols) / bc))
    if (kr, kc) != (1, 1):
        if kind is Pool.MAXABS:
            stat = _pool_band(stat, kr, kc, Pool.MAXABS)
        else:
            n = np.outer(np.minimum(br, rows - np.arange(gr) * br), np.minimum(bc, cols - np.arange(gc) * bc))
            n = np.where(np.isnan(stat), 0, n).astype(np.float64)
            with np.errstate(invalid="ignore", over="ignore"):
                part = stat * n if kind is Pool.MEAN else np.square(stat) * n
            total = _block_sum(part, kr, kc, nan_as_zero=True)
            count = _block_sum(n, kr, kc)
            with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
                mean = np.where(count > 0, total / np.where(count > 0, count, 1), np.nan)
                stat = mean if kind is Pool.MEAN else np.sqrt(mean)
    info = GridInfo(meta.shape, meta.matrix, (stat.shape[0], stat.shape[1]), (br * kr, bc * kc), kind)
    return stat, info


def _block_sum(a: np.ndarray, kr: int, kc: int, *, nan_as_zero: bool = False) -> np.ndarray:
    """Sums over ``kr`` × ``kc`` tiles of ``a`` (ragged edges padded with zeros)."""
    if nan_as_zero:
        a = np.where(np.isnan(a), 0.0, a)
    pr, pc = -a.shape[0] % kr, -a.shape[1] % kc
    a = np.pad(a, ((0, pr), (0, pc)))
    with np.errstate(invalid="ignore", over="ignore"):
        return np.asarray(a.reshape(a.shape[0] // kr, kr, a.shape[1] // kc, kc).sum(axis=(1, 3)))


def sample_indices(count: int, max_frames: int | None) -> list[int]:
    """Evenly spaced frame indices, always keeping the first and last."""
    if max_frames is None or count <= max_frames:
        return list(range(count))
    return sorted({int(round(i)) for i in np.linspace(0, count - 1, max_frames)})


@dataclass(frozen=True)
class PreparedLayer:
    """A layer ready to draw: its display stack on disk and everything derived from it."""

    name: str
    steps: tuple[int, ...]
    stack_path: Path
    info: GridInfo
    dtype: str
    vmin: float
    vmax: float
    frame_limits: tuple[tuple[float, float], ...] | None
    diverging: bool
    fmt: str
    total_snapshots: int

    def stack(self) -> np.ndarray:
        """The (frames, rows, cols) display values, memory-mapped read-only."""
        return np.asarray(np.load(self.stack_path, mmap_mode="r"))

    def limits(self, index: int) -> tuple[float, float]:
        """The colour scale of frame ``index``."""
        return self.frame_limits[index] if self.frame_limits is not None else (self.vmin, self.vmax)


def prepare_layer(name: str, snapshots: Sequence[Snapshot], options: RenderOptions, workdir: Path) -> PreparedLayer:
    """Load, reshape and pool every sampled snapshot of a layer into a stack on disk.

    Raises:
        ShapeMismatchError: Snapshots of the layer do not share one shape.
        SnapshotError: The layer holds an empty array.
    """
    chosen = [snapshots[i] for i in sample_indices(len(snapshots), options.max_frames)]
    first_arr, first_shape, dtype = _opened(chosen[0])
    grid_info: GridInfo | None = None
    stack = None
    try:
        fd, tmp_name = tempfile.mkstemp(prefix="stack-", suffix=".npy", dir=workdir)
        os.close(fd)
    except OSError as exc:
        raise _scratch_error(workdir, exc) from exc
    stack_path = Path(tmp_name)
    init = prev = None
    look = options.look
    try:
        for i, snap in enumerate(chosen):
            arr, shape, _ = (first_arr, first_shape, dtype) if i == 0 else _opened(snap)
            if shape != first_shape:
                msg = (f"layer {name!r} changes shape: every snapshot must have the shape of step "
                       f"{chosen[0].step}, {first_shape}; step {snap.step} has shape {shape}")
                raise ShapeMismatchError(msg)
            if arr is not None and arr.dtype.kind not in "biufc":
                msg = f"{snap.origin}: dtype must be bool, integer, float or complex; got {arr.dtype}"
                raise SnapshotFormatError(msg)
            try:
                values, info = snapshot_grid(snap, arr, max_rows=look.max_rows, max_cols=look.max_cols,
                                             pool=look.pool, rows=look.rows, cols=look.cols)
            except SnapshotError as exc:
                msg = f"layer {name!r}, step {snap.step} ({snap.origin}): {exc}"
                raise SnapshotError(msg) from exc
            del arr
            if grid_info is not None and values.shape != grid_info.grid:
                msg = (f"layer {name!r}: step {snap.step} is drawn as {_x(values.shape)} cells but step "
                       f"{chosen[0].step} as {_x(grid_info.grid)} (snapshots stored reduced to different grids); "
                       "render with smaller --max-rows/--max-cols")
                raise ShapeMismatchError(msg)
            grid_info = grid_info or info
            if stack is None:
                stack = _open_stack(stack_path, (len(chosen), *values.shape))
            if options.view is View.DELTA_INIT:
                init = values if init is None else init
                shown = values - init
            elif options.view is View.DELTA_STEP:
                shown = values - (values if prev is None else prev)
                prev = values
            else:
                shown = values
            stack[i] = shown
    except BaseException:
        del stack
        stack_path.unlink(missing_ok=True)
        raise
    assert stack is not None
    assert grid_info is not None
    stack.flush()
    vmin, vmax, frame_limits, diverging = _colour_scale(stack, options)
    fmt = options.fmt or choose_format(stack, vmin, vmax)
    del stack
    return PreparedLayer(name=name, steps=tuple(s.step for s in chosen), stack_path=stack_path, info=grid_info,
                         dtype=dtype, vmin=vmin, vmax=vmax, frame_limits=frame_limits,
                         diverging=diverging, fmt=fmt, total_snapshots=len(snapshots))


def _opened(snap: Snapshot) -> tuple[np.ndarray | LazyArray | None, tuple[int, ...], str]:
    """A snapshot's array (``None`` for a reduced one, read later), original shape and dtype name."""
    if isinstance(snap.meta, Reduced):
        return None, snap.meta.shape, snap.meta.dtype
    arr = snap.open()
    return arr, tuple(arr.shape), str(arr.dtype)


def _open_stack(path: Path, shape: tuple[int, ...]) -> np.memmap[Any, Any]:
    """A writable memory-mapped .npy of ``shape`` with every byte reserved on disk.

    Writing through a memory map into a sparse file on a full disk kills the process
    with SIGBUS, so the space is reserved up front, where a full disk is a clean error.
    """
    try:
        stack = np.lib.format.open_memmap(path, mode="w+", dtype=np.float64, shape=shape)
        if hasattr(os, "posix_fallocate"):
            fd = os.open(path, os.O_RDWR)
            try:
                os.posix_fallocate(fd, 0, path.stat().st_size)
            finally:
                os.close(fd)
    except OSError as exc:
        raise _scratch_error(path.parent, exc) from exc
    return stack


def _scratch_error(folder: Path, exc: OSError) -> OutputError:
    msg = (f"cannot write temporary data in {folder}: {exc.strerror or exc} "
           "(point TMPDIR at a folder with more free space)")
    return OutputError(msg)


def finite_range(arr: np.ndarray | LazyArray) -> tuple[float, float] | None:
    """The smallest and largest finite value (complex by magnitude), read in bands; ``None`` if there is none."""
    if arr.size == 0:
        return None
    lo, hi = np.inf, -np.inf
    for _, _, values in _bands(arr, *matrix_shape(tuple(arr.shape))):
        finite = values[np.isfinite(values)]
        if finite.size:
            lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
        del values, finite
    return (lo, hi) if lo <= hi else None


#: Colour scales are kept within ±this: near float64's limit (1.8e308) the colorbar's
#: tick arithmetic overflows. Larger values still show their true value in the cell.
SCALE_LIMIT = 1e300


def _widen(lo: float, hi: float, *, fixed_lo: bool = False, fixed_hi: bool = False) -> tuple[float, float]:
    lo, hi = max(-SCALE_LIMIT, min(lo, SCALE_LIMIT)), max(-SCALE_LIMIT, min(hi, SCALE_LIMIT))
    if lo < hi:
        return lo, hi
    # A constant matrix, or one fixed end past all the data, still needs a non-empty scale
    # that keeps the end the user fixed.
    if fixed_lo and not fixed_hi:
        return lo, lo + (abs(lo) * 0.1 or 1.0)
    if fixed_hi and not fixed_lo:
        return hi - (abs(hi) * 0.1 or 1.0), hi
    pad = abs(lo) * 0.1 or 1.0
    return lo - pad, hi + pad


def _colour_scale(stack: np.ndarray, options: RenderOptions) -> tuple[
        float, float, tuple[tuple[float, float], ...] | None, bool]:
    delta = options.view is not View.WEIGHTS
    ranges = [finite_range(frame) for frame in stack]
    known = [r for r in ranges if r is not None]
    lo = min((r[0] for r in known), default=0.0)
    hi = max((r[1] for r in known), default=1.0 if not delta else 0.0)
    if options.vmin is not None:
        lo = options.vmin
    if options.vmax is not None:
        hi = options.vmax
    diverging = delta or (lo < 0 < hi)
    if diverging and options.vmin is None and options.vmax is None:
        m = max(abs(lo), abs(hi)) or 1.0
        lo, hi = -m, m
    fixed = {"fixed_lo": options.vmin is not None, "fixed_hi": options.vmax is not None}
    lo, hi = _widen(lo, hi, **fixed)
    frame_limits = None
    if options.scale is Scale.FRAME:
        limits = []
        for r in ranges:
            flo, fhi = r if r is not None else (lo, hi)
            flo = options.vmin if options.vmin is not None else flo
            fhi = options.vmax if options.vmax is not None else fhi
            if diverging and options.vmin is None and options.vmax is None:
                m = max(abs(flo), abs(fhi)) or 1.0
                flo, fhi = -m, m
            limits.append(_widen(flo, fhi, **fixed))
        frame_limits = tuple(limits)
    return lo, hi, frame_limits, diverging


def choose_format(stack: np.ndarray, vmin: float, vmax: float) -> str:
    """A value format precise enough to show the typical change between frames.

    It also shows at least two significant digits of the layer's typical value (the
    median of its non-zero magnitudes), and the leading digit of the largest one: a
    layer of values around 0.003 reads ``0.0031``, not ``0.00``, even when the scale
    reaches 0.5.
    """
    magnitude = max(abs(vmin), abs(vmax))
    if not math.isfinite(magnitude) or magnitude == 0:
        magnitude = 1.0
    sample = stack[:: max(1, stack.shape[0] // 200)]
    change = None
    if stack.shape[0] > 1:
        with np.errstate(invalid="ignore", over="ignore"):
            d = np.abs(np.diff(sample, axis=0))
        d = d[np.isfinite(d) & (d > 0)]
        if d.size:
            change = _middle(d)
    if change is None or not change >= magnitude * 1e-9:
        change = magnitude / 1000  # three significant digits when nothing moves
    if not change > 0:  # magnitude near the smallest subnormal: 1/1000 of it is 0
        change = magnitude
    if magnitude >= 1e5 or magnitude < 1e-4:
        # Every value gets its own exponent here, so each shows 1 + digits significant digits.
        digits = min(6, max(1, math.ceil(math.log10(max(1.0, magnitude / change)))))
        return f"{{x:.{digits}e}}"
    decimals = max(0, math.ceil(-math.log10(change)))
    if magnitude < 1:  # always show the leading significant digit
        decimals = max(decimals, math.ceil(-math.log10(magnitude)) + 1)
    a = np.abs(sample[np.isfinite(sample)])
    a = a[a > 0]
    if a.size:
        typical = _middle(a)
        decimals = max(decimals, 1 - math.floor(math.log10(typical)))  # two significant digits of it
    return f"{{x:.{min(decimals, 9)}f}}"


def _middle(a: np.ndarray) -> float:
    # The middle element itself: np.median averages two, which overflows near 1.8e308.
    return float(np.partition(a, a.size // 2)[a.size // 2])


@functools.lru_cache(maxsize=256)
def _zero_texts(fmt: str) -> tuple[str, str]:
    return fmt.format(x=-0.0), fmt.format(x=0.0)


def format_value(fmt: str, value: float) -> str:
    """Format one value for display; NaN and infinities read ``nan``, ``inf`` and ``-inf``.

    A value that rounds to zero reads as zero without a sign: ``-0.001`` with
    ``"{x:.2f}"`` gives ``0.00``, not ``-0.00``. Every place that writes a value for a
    reader (GIF cells, the player's texts, tables) goes through this function.
    """
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    text = fmt.format(x=value)
    if value <= 0:  # includes -0.0; only then can the text be a signed zero
        negative_zero, zero = _zero_texts(fmt)
        if text == negative_zero:
            return zero
    return text
