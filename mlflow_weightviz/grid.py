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
import mmap
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlflow_weightviz.errors import OutputError, ShapeMismatchError, SnapshotError, SnapshotFormatError
from mlflow_weightviz.options import Pool, RenderOptions, Scale, View
from mlflow_weightviz.snapshots import Snapshot

__all__ = ["GridInfo", "PreparedLayer", "choose_format", "finite_range", "format_value", "prepare_layer",
           "sample_indices", "to_grid"]

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

    @property
    def pooled(self) -> bool:
        """Whether cells stand for blocks of weights rather than single weights."""
        return self.block != (1, 1)

    def note(self) -> str:
        """A short description of the reshaping and pooling, for titles."""
        parts = []
        if len(self.shape) != 2:
            parts.append(f"shape {_x(self.shape)} shown as {_x(self.matrix)}")
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


def to_grid(arr: np.ndarray, *, max_rows: int, max_cols: int, pool: Pool = Pool.MEAN) -> tuple[np.ndarray, GridInfo]:
    """Reshape ``arr`` to 2-D and block-pool it to at most ``max_rows`` × ``max_cols`` cells.

    Returns a float64 matrix and a description of what was done. Complex values are
    shown by magnitude. Memory-mapped input is read in bands of rows.
    """
    shape = tuple(arr.shape)
    rows, cols = matrix_shape(shape)
    if rows == 0 or cols == 0:
        msg = f"cannot draw an empty array: it must have at least one value; this one has shape {shape}"
        raise SnapshotError(msg)
    mat = arr.reshape(rows, cols)
    br, bc = math.ceil(rows / max_rows), math.ceil(cols / max_cols)
    gr, gc = math.ceil(rows / br), math.ceil(cols / bc)
    info = GridInfo(shape, (rows, cols), (gr, gc), (br, bc), pool)
    if (br, bc) == (1, 1):
        return _as_float(mat), info
    out = np.empty((gr, gc))
    band = max(1, _BAND_BYTES // max(1, cols * mat.dtype.itemsize * br)) * br
    for r0 in range(0, rows, band):
        block = _as_float(mat[r0:r0 + band])
        out[r0 // br:(r0 + block.shape[0] + br - 1) // br] = _pool_band(block, br, bc, pool)
        del block
        release_pages(mat)
    return out, info


def release_pages(arr: np.ndarray) -> None:
    """Let the kernel drop the pages of a memory-mapped array that this process has read.

    Pages of a file mapping that were read stay resident (and count towards the
    process's memory) until the mapping closes, so reading a 1.6 GB layer band by band
    would still end with 1.6 GB resident. Read-only mappings are re-read from the file
    (usually the page cache) if touched again, so dropping them is always safe. Arrays
    that are not read-only file mappings are left alone.
    """
    base: object = arr
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, mmap.mmap) and not arr.flags.writeable and hasattr(mmap, "MADV_DONTNEED"):
        try:
            base.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):  # closed, or the platform refuses: only memory use is at stake
            pass


def _as_float(a: np.ndarray) -> np.ndarray:
    # A signalling NaN (any bit pattern a file can hold) warns "invalid value" when cast;
    # it stays NaN, which is all that matters here.
    with np.errstate(invalid="ignore", over="ignore"):
        if a.dtype.kind == "c":
            return np.asarray(np.abs(a), dtype=np.float64)
        return np.asarray(a, dtype=np.float64)


def _pool_band(block: np.ndarray, br: int, bc: int, pool: Pool) -> np.ndarray:
    rows, cols = block.shape
    pr, pc = -rows % br, -cols % bc
    if pr or pc:  # pad ragged edges with NaN, which the nan-aware reductions skip
        block = np.pad(block, ((0, pr), (0, pc)), constant_values=np.nan)
    grid = block.reshape(block.shape[0] // br, br, block.shape[1] // bc, bc).swapaxes(1, 2)
    tiles = grid.reshape(grid.shape[0], grid.shape[1], br * bc)
    with warnings.catch_warnings(), np.errstate(invalid="ignore", over="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks stay NaN
        if pool is Pool.MEAN:
            return np.asarray(np.nanmean(tiles, axis=2))
        idx = np.nanargmax(np.where(np.isnan(tiles), -1.0, np.abs(tiles)), axis=2)
        return np.asarray(np.take_along_axis(tiles, idx[..., None], axis=2)[..., 0])


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
    first_arr = chosen[0].load()
    first_shape = tuple(first_arr.shape)
    grid_info: GridInfo | None = None
    stack = None
    try:
        fd, tmp_name = tempfile.mkstemp(prefix="stack-", suffix=".npy", dir=workdir)
        os.close(fd)
    except OSError as exc:
        raise _scratch_error(workdir, exc) from exc
    stack_path = Path(tmp_name)
    init = prev = None
    try:
        for i, snap in enumerate(chosen):
            arr = first_arr if i == 0 else snap.load()
            if tuple(arr.shape) != first_shape:
                msg = (f"layer {name!r} changes shape: every snapshot must have the shape of step "
                       f"{chosen[0].step}, {first_shape}; step {snap.step} has shape {tuple(arr.shape)}")
                raise ShapeMismatchError(msg)
            if arr.dtype.kind not in "biufc":
                msg = f"{snap.origin}: dtype must be bool, integer, float or complex; got {arr.dtype}"
                raise SnapshotFormatError(msg)
            try:
                values, grid_info = to_grid(arr, max_rows=options.max_rows, max_cols=options.max_cols,
                                            pool=options.pool)
            except SnapshotError as exc:
                msg = f"layer {name!r}, step {snap.step} ({snap.origin}): {exc}"
                raise SnapshotError(msg) from exc
            del arr
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
                         dtype=str(first_arr.dtype), vmin=vmin, vmax=vmax, frame_limits=frame_limits,
                         diverging=diverging, fmt=fmt, total_snapshots=len(snapshots))


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


def finite_range(arr: np.ndarray) -> tuple[float, float] | None:
    """The smallest and largest finite value (complex by magnitude), read in bands; ``None`` if there is none."""
    if arr.size == 0:
        return None
    mat = arr.reshape(matrix_shape(tuple(arr.shape)))
    band = max(1, _BAND_BYTES // max(1, mat.shape[1] * mat.dtype.itemsize))
    lo, hi = np.inf, -np.inf
    for r0 in range(0, mat.shape[0], band):
        values = _as_float(mat[r0:r0 + band])
        finite = values[np.isfinite(values)]
        if finite.size:
            lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
        del values, finite
        release_pages(mat)
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
