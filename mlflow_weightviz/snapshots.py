"""The Snapshot value type and safe decoding of every snapshot format.

A snapshot is one layer's weights at one training step. Files are only opened when a
snapshot is loaded, and memory-mapped where the format allows, so a folder of thousands
of snapshots or one huge matrix costs little until it is drawn.

Formats, detected from the extension and then from the first bytes:

* ``.npy``: one array; a step number in the file name makes it one step, otherwise an
  array of 3 or more dims is a stack of steps along axis 0.
* ``.npz`` and ``.safetensors``: one array per layer. With a 1-D ``steps`` array it is a
  chunk holding many steps (each layer stacked along axis 0); otherwise it is one step
  named by the file name, or a stack of steps when the name has no number.
* ``.pt``/``.pth``/``.ckpt``: torch state dicts, loaded with ``weights_only=True``.
* Python pickles (a list of 2-D arrays, as the original script used), only with
  ``allow_pickle=True`` because unpickling can run arbitrary code.

Memory stays bounded for every layout. Arrays whose file bytes are their values are
memory-mapped (C- or Fortran-order ``.npy``, stored ``.npz`` members, safetensors);
larger ones that must be converted or inflated (bfloat16 safetensors, torch tensors,
deflated ``.npz`` members over 64 MiB) come back from :meth:`Snapshot.open` as a
:class:`LazyArray`, which :func:`mlflow_weightviz.grid.to_grid` reads a band at a time.

Limits, checked on the headers before any per-step work: one file declares at most
:data:`MAX_SNAPSHOTS_PER_FILE` snapshots, and a stack of steps that hold no values is
refused (there is nothing to draw). Only regular files are opened: a FIFO, socket or
device given by name is refused; in a folder it is skipped with a warning, as are
broken symbolic links and symbolic link loops.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import json
import math
import mmap
import os
import pickle
import re
import stat
import struct
import threading
import warnings
import weakref
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import numpy as np

from mlflow_weightviz.errors import (
    MissingDependencyError,
    PickleNotAllowedError,
    SnapshotFormatError,
    SnapshotsNotFoundError,
    WeightvizError,
)
from mlflow_weightviz.options import WeightvizWarning

__all__ = ["MAX_SNAPSHOTS_PER_FILE", "META_KEY", "STATS", "Crop", "LazyArray", "Reduced", "Snapshot",
           "group_layers", "read_snapshots", "release_pages", "step_from_name"]

#: The key that marks a file as a chunk of many steps.
STEPS_KEY = "steps"
#: The member holding the JSON description of reduced layers and crops (a 1-D uint8 array).
META_KEY = "__weightviz__"
#: The block statistics stored for a reduced layer ``L``, as members ``L::mean`` and so on.
STATS = ("mean", "maxabs", "rms")

_NPY_EXT = {".npy"}
_NPZ_EXT = {".npz"}
_SAFETENSORS_EXT = {".safetensors"}
_TORCH_EXT = {".pt", ".pth", ".ckpt", ".bin"}
_PICKLE_EXT = {".pkl", ".pickle", ".obj", ".p"}
_INT_RE = re.compile(r"\d+")
_KIND_NAMES = {"npy": ".npy", "npz": ".npz", "safetensors": ".safetensors", "torch": "torch", "pickle": "pickle"}

#: The most snapshots (layers × steps) one file may declare. Headers are tiny, so a file
#: can claim millions of steps of nothing; past this it is refused before any per-step work.
MAX_SNAPSHOTS_PER_FILE = 1_000_000

#: Arrays larger than this that must be converted or inflated are read in bands (LazyArray).
_LAZY_BYTES = 64 * 1024 * 1024

Loader = Callable[[], "np.ndarray | LazyArray"]


@dataclass(frozen=True)
class Crop:
    """An exact region ``rows`` × ``cols`` of layer ``of``'s matrix, stored as its own layer.

    Attributes:
        of: The layer the region was cut from.
        rows: ``(start, stop)`` rows of that layer's 2-D matrix.
        cols: ``(start, stop)`` columns of it.
        shape: The original shape of the whole layer.
        loader: Reads the region's values (used when a reduced layer is drawn by region).
    """

    of: str
    rows: tuple[int, int]
    cols: tuple[int, int]
    shape: tuple[int, ...]
    loader: Loader | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class Reduced:
    """A layer stored as block statistics (see docs/formats.md), not its values.

    Attributes:
        shape: The layer's original shape.
        matrix: The 2-D matrix it is drawn as.
        block: Rows and columns of the matrix behind each stored cell.
        grid: Rows and columns of stored cells.
        dtype: The original dtype's name (e.g. ``bfloat16``); the statistics are float32.
        stats: A loader for each of :data:`STATS`.
        crops: Exact regions of the layer stored in the same file at the same step.
    """

    shape: tuple[int, ...]
    matrix: tuple[int, int]
    block: tuple[int, int]
    grid: tuple[int, int]
    dtype: str
    stats: Mapping[str, Loader] = field(repr=False, compare=False)
    crops: tuple[Crop, ...] = ()


@dataclass(frozen=True)
class Snapshot:
    """One layer's weights at one step; the array is read only by :meth:`load`.

    ``meta`` is set for layers stored reduced (:class:`Reduced`; ``loader`` then reads
    the block means) and for stored regions of a layer (:class:`Crop`).
    """

    layer: str
    step: int
    origin: str
    loader: Loader = field(repr=False, compare=False)
    meta: Reduced | Crop | None = field(default=None, repr=False, compare=False)

    def load(self) -> np.ndarray:
        """Read the array (often a read-only memory map); a :class:`LazyArray` is read whole."""
        arr = self.open()
        try:
            return np.asarray(arr)
        except WeightvizError:
            raise
        except Exception as exc:  # any decoder failure becomes our own error
            msg = f"cannot read {self.origin}: {_describe(exc)}"
            raise SnapshotFormatError(msg) from exc

    def open(self) -> np.ndarray | LazyArray:
        """The array without reading it: a memory map, a small array, or a :class:`LazyArray`.

        This is what bounded-memory readers use (:func:`mlflow_weightviz.grid.to_grid`
        reads either kind a band at a time); :meth:`load` always returns an ndarray.
        """
        try:
            arr = self.loader()
            return arr if isinstance(arr, LazyArray) else np.asarray(arr)
        except WeightvizError:
            raise
        except Exception as exc:  # any decoder failure becomes our own error
            msg = f"cannot read {self.origin}: {_describe(exc)}"
            raise SnapshotFormatError(msg) from exc


class LazyArray:
    """A large array whose values are read a block at a time, never whole.

    Files whose bytes are not the values themselves (bfloat16 and torch tensors shown as
    float32) or that cannot be memory-mapped (deflated ``.npz`` members) give one of these
    for large arrays. :func:`mlflow_weightviz.grid.to_grid` reads it in bands;
    ``np.asarray`` reads it whole. ``strides`` and ``itemsize`` describe the raw bytes
    in the file (for the memory a band spans); ``dtype`` is the dtype of the values.
    """

    def __init__(self, raw: _RawSource, shape: tuple[int, ...], strides: tuple[int, ...], offset: int,
                 dtype: np.dtype[Any], convert: Callable[[np.ndarray], np.ndarray], where: str) -> None:
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self._raw = raw
        self._estrides = tuple(strides)  # in elements of the raw dtype
        self._offset = offset
        self._convert = convert
        self._where = where

    @property
    def ndim(self) -> int:
        """Number of dimensions."""
        return len(self.shape)

    @property
    def size(self) -> int:
        """Number of values."""
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def itemsize(self) -> int:
        """Bytes of one raw element in the file."""
        return self._raw.dtype.itemsize

    @property
    def strides(self) -> tuple[int, ...]:
        """Bytes between neighbours along each axis, in the raw data."""
        return tuple(s * self.itemsize for s in self._estrides)

    def __repr__(self) -> str:
        return f"LazyArray({self._where}, shape={self.shape}, dtype={self.dtype})"

    def __getitem__(self, index: int) -> LazyArray:
        """One entry along axis 0 (a step of a stack), still unread."""
        if not self.shape or not -self.shape[0] <= index < self.shape[0]:
            msg = f"index {index} is out of range for shape {self.shape}"
            raise IndexError(msg)
        index %= self.shape[0]
        return LazyArray(self._raw, self.shape[1:], self._estrides[1:], self._offset + index * self._estrides[0],
                         self.dtype, self._convert, self._where)

    def reshape(self, rows: int, cols: int) -> LazyArray | None:
        """The same values as a (rows, cols) matrix without copying, or ``None`` if that needs a copy."""
        probe = np.lib.stride_tricks.as_strided(np.empty(1, np.uint8), shape=self.shape, strides=self._estrides)
        try:
            view = np.reshape(probe, (rows, cols), copy=False)
        except ValueError:
            return None
        return LazyArray(self._raw, (rows, cols), tuple(view.strides), self._offset, self.dtype, self._convert,
                         self._where)

    def window(self, index: tuple[slice, ...]) -> LazyArray:
        """A block (one ``slice(start, stop)`` per axis) as a LazyArray, still unread."""
        bounds = [s.indices(n)[:2] for s, n in zip(index, self.shape, strict=True)]
        shape = tuple(max(0, stop - start) for start, stop in bounds)
        offset = self._offset + sum(start * st for (start, _), st in zip(bounds, self._estrides, strict=True))
        return LazyArray(self._raw, shape, self._estrides, offset, self.dtype, self._convert, self._where)

    def read(self, index: tuple[slice, ...]) -> np.ndarray:
        """The values of a block (one ``slice(start, stop)`` per axis), read in one go."""
        counts = [len(range(*s.indices(n))) for s, n in zip(index, self.shape, strict=True)]
        starts = [s.indices(n)[0] for s, n in zip(index, self.shape, strict=True)]
        lo = self._offset + sum(a * st for a, st in zip(starts, self._estrides, strict=True))
        if not all(counts):
            return np.empty(counts, self.dtype)
        hi = lo + sum((c - 1) * st for c, st in zip(counts, self._estrides, strict=True)) + 1
        try:
            raw = self._raw.span(lo, hi)
            view = np.lib.stride_tricks.as_strided(raw, shape=counts, strides=self.strides, writeable=False)
            return np.asarray(self._convert(view), dtype=self.dtype)
        except WeightvizError:
            raise
        except Exception as exc:  # decoder failures (zlib, I/O) become our own error
            msg = f"cannot read {self._where}: {_describe(exc)}"
            raise SnapshotFormatError(msg) from exc

    def release(self) -> None:
        """Let the kernel drop the file pages read so far (they are re-read if needed)."""
        self._raw.release()

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = self.read(tuple(slice(0, n) for n in self.shape))
        return whole if dtype is None else whole.astype(dtype)


class _RawSource:
    """Raw elements of one array in a file, read by element range."""

    dtype: np.dtype[Any]

    def span(self, lo: int, hi: int) -> np.ndarray:
        """Raw elements ``[lo, hi)`` as a 1-D contiguous array."""
        raise NotImplementedError

    def release(self) -> None:
        """Drop the pages read so far, if the memory is a file mapping."""


class _MappedRaw(_RawSource):
    """Raw elements in memory: a memory map (released with madvise) or a torch storage."""

    def __init__(self, flat: np.ndarray, drop: Callable[[], None] | None, keep: Any = None) -> None:
        self.dtype = flat.dtype
        self._flat = flat
        self._drop = drop
        self._keep = keep  # whatever owns the memory (a torch storage) stays alive with us

    def span(self, lo: int, hi: int) -> np.ndarray:
        return self._flat[lo:hi]

    def release(self) -> None:
        if self._drop is not None:
            self._drop()


class _ZipMemberRaw(_RawSource):
    """A deflated zip member, inflated as a stream: reads go forward, going back re-inflates from the start."""

    def __init__(self, path: Path, member: str, data_at: int, dtype: np.dtype[Any]) -> None:
        self.dtype = dtype
        self._path, self._member, self._data_at = path, member, data_at
        self._lock = threading.Lock()
        self._open: list[Any] = []  # [ZipFile, member stream] while open
        self._pos = 0
        weakref.finalize(self, _close_all, self._open)

    def span(self, lo: int, hi: int) -> np.ndarray:
        start, size = self._data_at + lo * self.dtype.itemsize, (hi - lo) * self.dtype.itemsize
        with self._lock:
            if not self._open or self._pos > start:
                _close_all(self._open)
                zf = zipfile.ZipFile(self._path)
                self._open[:] = [zf, zf.open(self._member)]
                self._pos = 0
            stream = self._open[1]
            while self._pos < start:  # skip forward, inflating and dropping at most 16 MiB at a time
                skipped = len(stream.read(min(start - self._pos, 1 << 24)))
                if not skipped:
                    break
                self._pos += skipped
            data = bytearray(size)
            view, got = memoryview(data), 0
            while self._pos == start and got < size:  # 1 MiB pieces: no growing concatenation
                n = stream.readinto(view[got:got + (1 << 20)])
                if not n:
                    break
                got += n
            self._pos = start + got
        if got < size:
            msg = f"{self._path.name}: member {self._member!r} is truncated"
            raise SnapshotFormatError(msg)
        return np.frombuffer(data, dtype=self.dtype)


def _close_all(handles: list[Any]) -> None:
    for handle in reversed(handles):
        handle.close()
    handles.clear()


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


def _drop_private_pages(address: int, length: int) -> None:
    """madvise(MADV_DONTNEED) on the whole pages inside a read-only private file mapping.

    Only for memory torch mapped from a file and never wrote to: such pages are re-read
    from the file when touched again. Partial pages at either end are left alone.
    """
    advice = getattr(mmap, "MADV_DONTNEED", None)
    libc = _libc()
    if advice is None or libc is None:
        return
    page = mmap.PAGESIZE
    start, end = -(-address // page) * page, (address + length) // page * page
    if end > start:
        libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), ctypes.c_int(advice))


@functools.cache
def _libc() -> Any:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc if hasattr(libc, "madvise") else None
    except OSError:
        return None


def step_from_name(name: str) -> int | None:
    """The last integer in a file name without its extension: ``w5_step10.npy`` → 10."""
    found = _INT_RE.findall(Path(name).stem if "." in name else name)
    return int(found[-1]) if found else None


# --------------------------------------------------------------------------- reading


def read_snapshots(path: str | os.PathLike[str], *, allow_pickle: bool = False,
                   root_name: str | None = None) -> list[Snapshot]:
    """Find every snapshot in a file or folder.

    Args:
        path: A snapshot file or a folder of them (searched recursively).
        allow_pickle: Read Python pickles. Unpickling runs code from the file, so only
            allow it for files you trust.
        root_name: Layer name for loose single-array files at the top of a folder;
            defaults to the folder's name.

    Returns:
        The snapshots, in no particular order (see :func:`group_layers`).

    Only regular files are opened. A path that is a FIFO, socket or device, a broken
    symbolic link or a symbolic link loop is refused with its name; inside a folder such
    entries are skipped with a :class:`~mlflow_weightviz.options.WeightvizWarning` that
    names them, so one stray entry does not stop the others from rendering.

    Raises:
        SnapshotsNotFoundError: The path does not exist or holds no snapshot.
        SnapshotFormatError: A file cannot be read safely, or is not a regular file.
        PickleNotAllowedError: A pickle was found and ``allow_pickle`` is false.
    """
    root = Path(path)
    problem = _not_regular(root)
    if problem is not None and os.path.lexists(root) and not root.is_dir():
        msg = f"{root}: {problem}; only regular files are read as snapshots"
        raise SnapshotFormatError(msg)
    if root.is_file():
        # A file keeps its own stem as layer name, also when root_name is just its file name.
        name = root.stem if root_name in (None, root.name) else root_name
        snaps = _read_file(root, rel_dir="", root_name=name,
                           allow_pickle=allow_pickle, strict=True)
    elif root.is_dir():
        snaps = []
        name = root_name or root.name
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            rel_dir = Path(dirpath).relative_to(root).as_posix()
            rel_dir = "" if rel_dir == "." else rel_dir
            for fname in sorted(filenames):
                if fname.startswith((".", "latest_")):
                    continue  # hidden files; mlflow's latest_* checkpoints repeat an epoch
                problem = _not_regular(Path(dirpath, fname))
                if problem is not None:
                    shown = f"{rel_dir}/{fname}" if rel_dir else fname
                    warnings.warn(f"skipped {shown}: {problem}", WeightvizWarning, stacklevel=2)
                    continue
                snaps.extend(_read_file(Path(dirpath, fname), rel_dir=rel_dir, root_name=name,
                                        allow_pickle=allow_pickle, strict=False))
    else:
        msg = f"no snapshot file or folder at {root}"
        raise SnapshotsNotFoundError(msg)
    if not snaps:
        msg = f"no weight snapshots found in {root} (expected .npz, .npy, .safetensors or .pt files)"
        raise SnapshotsNotFoundError(msg)
    return snaps


def _not_regular(path: Path) -> str | None:
    """Why ``path`` cannot be opened as a snapshot file, or ``None`` if it is a regular file."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        if os.path.islink(path):
            return ("a symbolic link loop" if exc.errno == errno.ELOOP
                    else f"a broken symbolic link (to {os.readlink(path)})")
        return None  # missing or unreadable: the callers say so in their own words
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
    return f"{kind}, not a regular file" if kind != "not a regular file" else kind


def group_layers(snapshots: Iterable[Snapshot], layers: Iterable[str] = ()) -> dict[str, list[Snapshot]]:
    """Group snapshots by layer in step order, keeping the layers that match ``layers``.

    ``layers`` holds names or shell-style globs; empty keeps every layer. When two
    snapshots share a layer and step, the one from the later file wins and a warning says so.
    """
    by_layer: dict[str, dict[int, Snapshot]] = {}
    duplicates = 0
    for snap in sorted(snapshots, key=lambda s: (s.layer, s.origin)):
        steps = by_layer.setdefault(snap.layer, {})
        duplicates += snap.step in steps
        steps[snap.step] = snap
    if duplicates:
        warnings.warn(f"{duplicates} snapshot(s) repeat a step of their layer; the later file wins",
                      WeightvizWarning, stacklevel=2)
    wanted = list(layers)
    selected = {name: [s[k] for k in sorted(s)] for name, s in sorted(by_layer.items())
                if not wanted or any(name == w or fnmatchcase(name, w) for w in wanted)}
    if wanted and not selected:
        msg = f"no layer matches {', '.join(wanted)}; the layers are: {', '.join(by_layer)}"
        raise SnapshotsNotFoundError(msg)
    return selected


# ------------------------------------------------------------------------ one file


@dataclass(frozen=True)
class _Ref:
    """One array inside a file: its header, and how to read it."""

    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    read: Loader


def _read_file(path: Path, *, rel_dir: str, root_name: str, allow_pickle: bool,
               strict: bool) -> list[Snapshot]:
    kind = _detect(path)
    origin = path.name if not rel_dir else f"{rel_dir}/{path.name}"
    if kind is None:
        if strict:
            msg = f"{path.name}: not a snapshot format (expected .npz, .npy, .safetensors, .pt or a pickle)"
            raise SnapshotFormatError(msg)
        return []
    if path.stat().st_size == 0:
        msg = f"{origin}: the file is empty (0 bytes); expected a {_KIND_NAMES[kind]} file"
        raise SnapshotFormatError(msg)
    step = step_from_name(path.name)
    if step is None and kind == "torch":  # mlflow autolog: checkpoints/epoch_3/checkpoint.pth
        for part in reversed(Path(rel_dir).parts):
            step = step_from_name(part + ".x")
            if step is not None:
                break
    try:
        if kind == "npy":
            layer = rel_dir or root_name
            return _arrange({layer: _npy_ref(path)}, step=step, origin=origin, stack_first=strict)
        if kind == "npz":
            try:
                refs = _npz_refs(path)
            except zipfile.BadZipFile as exc:
                msg = f"{origin}: not a readable .npz (zip) archive, perhaps truncated ({_describe(exc)})"
                raise SnapshotFormatError(msg) from exc
            # Named on its own, (T, N, M) arrays are a stack even with digits in the name
            # (data_8x12.npz); a step_10.npz of 4-D conv kernels stays one step.
            stacks = step is None or all(len(r.shape) == 3 for k, r in refs.items() if k not in (STEPS_KEY, META_KEY))
            return _arrange(refs, step=step, origin=origin, stack_first=strict and stacks)
        if kind == "safetensors":
            return _arrange(_safetensors_refs(path), step=step, origin=origin)
        if kind == "torch":
            return _arrange(_torch_refs(path), step=step, origin=origin)
        return _read_pickle(path, allow_pickle=allow_pickle, layer=Path(path.name).stem, origin=origin)
    except WeightvizError:
        raise
    except Exception as exc:  # decoder errors of every library become one of ours
        msg = f"cannot read {origin}: {_describe(exc)}"
        raise SnapshotFormatError(msg) from exc


def _detect(path: Path) -> str | None:
    ext = path.suffix.lower()
    for kind, exts in (("npy", _NPY_EXT), ("npz", _NPZ_EXT), ("safetensors", _SAFETENSORS_EXT),
                       ("torch", _TORCH_EXT), ("pickle", _PICKLE_EXT)):
        if ext in exts:
            return kind
    # O_NONBLOCK: a FIFO swapped in after the check above must not hang the read.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            msg = f"{path.name}: not a regular file; only regular files are read as snapshots"
            raise SnapshotFormatError(msg)
        head = fh.read(16)
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except zipfile.BadZipFile:
            return None
        if any(n.endswith("data.pkl") for n in names):
            return "torch"
        return "npz" if names and all(n.endswith(".npy") for n in names) else None
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return "pickle"
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    return None


def _arrange(refs: Mapping[str, _Ref], *, step: int | None, origin: str,
             stack_first: bool = False) -> list[Snapshot]:
    """Turn a file's arrays into snapshots: a chunk of steps, one step, or a stack.

    Arrays of 3 or more dims sharing their first dim are a stack of steps when the file
    name has no step number, or when the file was named on its own (``stack_first``):
    ``fc1.npy`` of shape (T, N, M) is then T steps, not one step numbered 1.
    """
    if not refs:
        return []
    if META_KEY in refs:
        meta = _read_meta(refs[META_KEY], origin)
        snaps = _arrange({k: r for k, r in refs.items() if k != META_KEY}, step=step, origin=origin,
                         stack_first=stack_first)
        return _apply_meta(snaps, meta, origin)
    steps_ref = refs.get(STEPS_KEY)
    arrays = {k: r for k, r in refs.items() if k != STEPS_KEY}
    if steps_ref is not None and len(steps_ref.shape) == 1:
        _check_count(origin, steps_ref.shape[0] * max(1, len(arrays)), f"{steps_ref.shape[0]} steps")
        steps = np.asarray(steps_ref.read())
        if steps.dtype.kind not in "iu":
            msg = f"{origin}: the 'steps' array must hold integers; it holds {steps.dtype}"
            raise SnapshotFormatError(msg)
        return _stacked(arrays, [int(s) for s in steps], origin)
    if (step is None or stack_first) and arrays and all(len(r.shape) >= 3 for r in arrays.values()) \
            and len({r.shape[0] for r in arrays.values()}) == 1:
        count = next(iter(arrays.values())).shape[0]
        _check_count(origin, count * len(arrays), f"{count} steps")
        if all(not math.prod(r.shape[1:]) for r in arrays.values()):
            # No data bounds the step count of a header-only stack: refuse it before making any step.
            name, ref = next(iter(arrays.items()))
            msg = (f"{origin}: layer {name!r} is a stack of {count} empty snapshots (shape {ref.shape}): "
                   "every step must hold at least one value")
            raise SnapshotFormatError(msg)
        return _stacked(arrays, range(count), origin)
    _check_count(origin, len(arrays), "arrays")
    return [Snapshot(name, step or 0, f"{origin}[{name}]", ref.read) for name, ref in arrays.items()]


def _stacked(arrays: Mapping[str, _Ref], steps: Sequence[int], origin: str) -> list[Snapshot]:
    if not steps:
        shapes = ", ".join(f"{name} {ref.shape}" for name, ref in arrays.items())
        msg = f"{origin}: expected a stack of at least one snapshot along axis 0; got none ({shapes})"
        raise SnapshotFormatError(msg)
    out = []
    for name, ref in arrays.items():
        if not ref.shape or ref.shape[0] != len(steps):
            msg = (f"{origin}: layer {name!r} must be stacked with one entry per step, "
                   f"shape ({len(steps)}, ...); it has shape {ref.shape}")
            raise SnapshotFormatError(msg)
        for i, step in enumerate(steps):
            out.append(Snapshot(name, step, f"{origin}[{name}][{i}]", functools.partial(_take, ref.read, i)))
    return out


def _read_meta(ref: _Ref, origin: str) -> dict[str, Any]:
    """The JSON description of a file's reduced layers and crops."""
    raw = np.asarray(ref.read())
    problem = f"expected a 1-D uint8 array, got {raw.dtype} {raw.shape}"
    meta: Any = None
    if raw.ndim == 1 and raw.dtype == np.uint8:
        try:
            meta = json.loads(raw.tobytes().decode("utf-8"))
            problem = "expected a JSON object with 'layers'"
        except ValueError as exc:  # UnicodeDecodeError is a ValueError too
            problem = _describe(exc)
    if not isinstance(meta, dict) or not isinstance(meta.get("layers"), dict):
        msg = f"{origin}: corrupt {META_KEY!r} member ({problem})"
        raise SnapshotFormatError(msg)
    return meta


def _apply_meta(snaps: list[Snapshot], meta: dict[str, Any], origin: str) -> list[Snapshot]:
    """Merge each reduced layer's ``L::mean/maxabs/rms`` into one snapshot of ``L``, and mark crops."""
    by_key = {(s.layer, s.step): s for s in snaps}
    crops: dict[tuple[str, int], list[Crop]] = {}
    out: dict[tuple[str, int], Snapshot] = {}
    reduced: dict[str, dict[str, Any]] = {}
    try:
        for name, info in meta["layers"].items():
            if info.get("kind") == "reduced":
                reduced[name] = info
            elif info.get("kind") == "crop":
                rows, cols = (tuple(int(v) for v in info[k]) for k in ("rows", "cols"))
                for snap in snaps:
                    if snap.layer == name:
                        crop = Crop(str(info["of"]), (rows[0], rows[1]), (cols[0], cols[1]),
                                    tuple(int(d) for d in info["shape"]), snap.loader)
                        out[(name, snap.step)] = Snapshot(name, snap.step, snap.origin, snap.loader, crop)
                        crops.setdefault((crop.of, snap.step), []).append(crop)
        for name, info in reduced.items():
            shape = tuple(int(d) for d in info["shape"])
            matrix, block, grid = (tuple(int(v) for v in info[k]) for k in ("matrix", "block", "grid"))
            dtype = str(info.get("dtype", "float32"))
            for step in sorted({s.step for s in snaps if s.layer == f"{name}::mean"}):
                parts = {stat: by_key.get((f"{name}::{stat}", step)) for stat in STATS}
                missing = [f"{name}::{stat}" for stat, snap in parts.items() if snap is None]
                if missing:
                    msg = f"{origin}: reduced layer {name!r} lacks {', '.join(missing)} at step {step}"
                    raise SnapshotFormatError(msg)
                first = parts["mean"]
                assert first is not None
                red = Reduced(shape, (matrix[0], matrix[1]), (block[0], block[1]), (grid[0], grid[1]), dtype,
                              {stat: snap.loader for stat, snap in parts.items() if snap is not None},
                              tuple(crops.get((name, step), ())))
                out[(name, step)] = Snapshot(name, step, first.origin.replace(f"[{name}::mean]", f"[{name}]"),
                                             first.loader, red)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        msg = f"{origin}: corrupt {META_KEY!r} description ({_describe(exc)})"
        raise SnapshotFormatError(msg) from None
    stat_names = {f"{name}::{stat}" for name in reduced for stat in STATS}
    return [out.get((s.layer, s.step), s) for s in snaps if s.layer not in stat_names] + [
        s for key, s in out.items() if key[0] in reduced]


def _take(read: Loader, index: int) -> np.ndarray | LazyArray:
    arr = read()
    return arr[index] if isinstance(arr, LazyArray) else np.asarray(arr[index])


def _check_count(origin: str, count: int, what: str) -> None:
    """Refuse a header that declares more snapshots than a file may hold, before making any."""
    if count > MAX_SNAPSHOTS_PER_FILE:
        msg = (f"{origin}: declares {count:,} snapshots ({what}), more than the {MAX_SNAPSHOTS_PER_FILE:,} "
               "one file may hold; refusing it")
        raise SnapshotFormatError(msg)


def _check_dtype(dtype: np.dtype[Any], where: str) -> None:
    if dtype.hasobject:
        msg = (f"{where}: expected a numeric array; got an object array (dtype {dtype}), "
               "which only pickle could read, and .npy/.npz are never unpickled")
        raise SnapshotFormatError(msg)
    if dtype.kind not in "biufc":
        msg = f"{where}: expected a numeric array (bool, integer, float or complex); got dtype {dtype}"
        raise SnapshotFormatError(msg)


# ----------------------------------------------------------------------- .npy / .npz


def _npy_ref(path: Path) -> _Ref:
    arr = _load_npy(path)
    return _Ref(arr.shape, arr.dtype, functools.partial(_load_npy, path))


def _load_npy(path: Path) -> np.ndarray:
    if path.stat().st_size == 0:
        msg = f"{path.name}: the file is empty"
        raise SnapshotFormatError(msg)
    with path.open("rb") as fh:
        version = np.lib.format.read_magic(fh)
        shape, fortran, dtype = _read_npy_header(fh, version)
        _check_dtype(dtype, path.name)
        offset = fh.tell()
    _check_size(path, offset, shape, dtype)
    if not int(np.prod(shape)):
        return np.empty(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape,
                     order="F" if fortran else "C")


def _read_npy_header(fh: Any, version: tuple[int, int]) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fh)
    return np.lib.format.read_array_header_2_0(fh)


def _check_size(path: Path, offset: int, shape: tuple[int, ...], dtype: np.dtype[Any]) -> None:
    need = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    have = path.stat().st_size
    if have < need:
        msg = f"{path.name}: the file is truncated ({have} of {need} bytes)"
        raise SnapshotFormatError(msg)


def _npz_refs(path: Path) -> dict[str, _Ref]:
    refs = {}
    with zipfile.ZipFile(path) as zf, path.open("rb") as raw:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                msg = f"{path.name}: member {info.filename!r} is not a .npy array"
                raise SnapshotFormatError(msg)
            key = info.filename[: -len(".npy")]
            if info.compress_type == zipfile.ZIP_STORED:
                # np.savez stores arrays uncompressed: memory-map them in place.
                raw.seek(info.header_offset)
                local = raw.read(30)
                if local[:4] != b"PK\x03\x04":
                    msg = f"{path.name}: corrupt zip entry {info.filename!r}"
                    raise SnapshotFormatError(msg)
                name_len, extra_len = struct.unpack("<HH", local[26:30])
                raw.seek(info.header_offset + 30 + name_len + extra_len)
                version = np.lib.format.read_magic(raw)
                shape, fortran, dtype = _read_npy_header(raw, version)
                _check_dtype(dtype, f"{path.name}[{key}]")
                data_at = raw.tell()
                expected = data_at - info.header_offset - 30 - name_len - extra_len \
                    + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
                if info.file_size < expected:
                    msg = f"{path.name}: array {key!r} is truncated"
                    raise SnapshotFormatError(msg)
                refs[key] = _Ref(shape, dtype, functools.partial(
                    _npz_memmap, path, data_at, shape, dtype, fortran))
            else:
                with zf.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    shape, fortran, dtype = _read_npy_header(member, version)
                    data_at = member.tell()
                _check_dtype(dtype, f"{path.name}[{key}]")
                nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
                if info.file_size < data_at + nbytes:
                    msg = f"{path.name}: array {key!r} is truncated ({info.file_size} of {data_at + nbytes} bytes)"
                    raise SnapshotFormatError(msg)
                if nbytes > _LAZY_BYTES:  # inflated band by band, never whole
                    refs[key] = _Ref(shape, dtype, functools.partial(
                        _npz_stream, str(path), info.filename, data_at, shape, dtype.str, fortran))
                else:
                    refs[key] = _Ref(shape, dtype, functools.partial(_npz_member, str(path), key))
    return refs


@functools.lru_cache(maxsize=2)
def _npz_stream(path: str, member: str, data_at: int, shape: tuple[int, ...], dtype: str,
                fortran: bool) -> LazyArray:
    # Cached so that the steps of a stack share one stream, read forward step after step.
    raw = _ZipMemberRaw(Path(path), member, data_at, np.dtype(dtype))
    return LazyArray(raw, shape, _element_strides(shape, fortran), 0, np.dtype(dtype), _same,
                     f"{Path(path).name}[{member[:-len('.npy')]}]")


def _element_strides(shape: tuple[int, ...], fortran: bool) -> tuple[int, ...]:
    strides, step = [], 1
    for n in (shape if fortran else shape[::-1]):
        strides.append(step)
        step *= max(n, 1)
    return tuple(strides) if fortran else tuple(strides[::-1])


def _same(a: np.ndarray) -> np.ndarray:
    return a


def _npz_memmap(path: Path, offset: int, shape: tuple[int, ...], dtype: np.dtype[Any],
                fortran: bool) -> np.ndarray:
    if not int(np.prod(shape)):
        return np.empty(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


@functools.lru_cache(maxsize=2)
def _npz_member(path: str, key: str) -> np.ndarray:
    # Compressed chunks are read whole; a tiny cache stops a chunk being inflated once per step.
    with np.load(path, allow_pickle=False) as z:
        arr = np.asarray(z[key])
    arr.setflags(write=False)
    return arr


# ----------------------------------------------------------------------- safetensors

_ST_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
              "I8": "i1", "U8": "u1", "U16": "<u2", "U32": "<u4", "U64": "<u8", "BOOL": "?",
              "BF16": "<u2"}


def _safetensors_refs(path: Path) -> dict[str, _Ref]:
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            msg = f"{path.name}: the file is empty or truncated"
            raise SnapshotFormatError(msg)
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, 100_000_000):
            msg = f"{path.name}: corrupt safetensors header (length {n})"
            raise SnapshotFormatError(msg)
        raw = fh.read(n)
    try:
        header = json.loads(raw)
    except ValueError as exc:  # UnicodeDecodeError is a ValueError too
        msg = f"{path.name}: corrupt safetensors header: expected JSON, got {raw[:20]!r}... ({_describe(exc)})"
        raise SnapshotFormatError(msg) from None
    if not isinstance(header, dict):
        msg = f"{path.name}: corrupt safetensors header"
        raise SnapshotFormatError(msg)
    refs = {}
    base = 8 + n
    for key, meta in header.items():
        if key == "__metadata__":
            continue
        try:
            kind, shape = meta["dtype"], tuple(int(d) for d in meta["shape"])
            begin, end = (int(x) for x in meta["data_offsets"])
            dtype = np.dtype(_ST_DTYPES[kind])
        except (KeyError, TypeError, ValueError):
            msg = f"{path.name}: unsupported or corrupt entry {key!r}"
            raise SnapshotFormatError(msg) from None
        count = int(np.prod(shape, dtype=np.int64))
        if any(d < 0 for d in shape) or end - begin != count * dtype.itemsize or not 0 <= begin <= end \
                or base + end > size:
            msg = (f"{path.name}: tensor {key!r} is truncated or its offsets are corrupt: {kind} {list(shape)} "
                   f"needs {count * dtype.itemsize} bytes, at data offsets [{begin}, {end}) of the "
                   f"{size - base} bytes the file holds")
            raise SnapshotFormatError(msg)
        shown = np.dtype("<f4") if kind == "BF16" else dtype
        refs[key] = _Ref(shape, shown, functools.partial(_st_read, path, base + begin, shape, dtype, kind == "BF16"))
    return refs


def _st_read(path: Path, offset: int, shape: tuple[int, ...], dtype: np.dtype[Any],
             bf16: bool) -> np.ndarray | LazyArray:
    if not int(np.prod(shape)):
        return np.empty(shape, np.float32 if bf16 else dtype)
    arr = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
    if bf16 and arr.size * 4 > _LAZY_BYTES:  # converted band by band, never whole
        flat = arr.reshape(-1)
        return LazyArray(_MappedRaw(flat, functools.partial(release_pages, flat)), shape,
                         _element_strides(shape, False), 0, np.dtype(np.float32), _bf16_to_f32, path.name)
    if bf16:
        return _bf16_to_f32(arr)
    return arr


def _bf16_to_f32(a: np.ndarray) -> np.ndarray:
    # bfloat16 is the top half of a float32
    return (a.astype(np.uint32) << 16).view(np.float32)


# ----------------------------------------------------------------------------- torch


def _torch_refs(path: Path) -> dict[str, _Ref]:
    state = _torch_state(path)
    return {k: _Ref(tuple(t.shape), _torch_dtype(t), functools.partial(_torch_tensor, path, k))
            for k, t in state.items()}


def _torch_dtype(t: Any) -> np.dtype[Any]:
    # What _torch_tensor returns: floats as float32, everything else as numpy has it.
    if t.is_floating_point():
        return np.dtype("float32")
    if t.is_complex():
        return np.dtype("complex128") if str(t.dtype) == "torch.complex128" else np.dtype("complex64")
    return np.dtype("bool") if str(t.dtype) == "torch.bool" else np.dtype("int64")


def _torch_state(path: Path) -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        msg = f"{path.name} is a torch file; reading it needs torch: pip install 'mlflow-weightviz[torch]'"
        raise MissingDependencyError(msg) from None
    if path.stat().st_size == 0:
        msg = f"{path.name}: the file is empty"
        raise SnapshotFormatError(msg)
    try:
        # Only the zip format (torch >= 1.6) can be memory-mapped; older files are read whole.
        with warnings.catch_warnings():
            # torch's note about an unusual pickle protocol is noise here: the file is read
            # safely either way, or refused with our own error.
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        raise SnapshotFormatError(_torch_refusal(path.name, str(exc))) from None
    for key in ("state_dict", "model_state_dict"):  # Lightning / common checkpoint layouts
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    flat: dict[str, Any] = {}
    _flatten(obj, "", flat, torch.Tensor)
    return flat


def _torch_refusal(name: str, text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    refused = next((line for line in lines if "GLOBAL" in line), None)
    if refused is not None:
        return (f"{name}: refused by torch's safe loader (weights_only=True): expected only tensors and plain "
                f"containers; the file asks for other objects ({refused})")
    detail = next((line for line in lines if line.startswith("Unsupported")), lines[0] if lines else "")
    return f"{name}: not a readable torch file, perhaps corrupt or truncated ({detail})"


def _flatten(obj: Any, prefix: str, out: dict[str, Any], tensor_type: type) -> None:
    if isinstance(obj, tensor_type):
        if getattr(obj, "ndim", 0) >= 1 and prefix:
            out[prefix] = obj
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out, tensor_type)


def _torch_tensor(path: Path, key: str) -> np.ndarray | LazyArray:
    t = _torch_state(path)[key].detach()
    if t.numel() * t.element_size() > _LAZY_BYTES or (t.is_floating_point() and t.numel() * 4 > _LAZY_BYTES):
        lazy = _torch_lazy(t, mapped=zipfile.is_zipfile(path), where=f"{path.name}[{key}]")
        if lazy is not None:
            return lazy
    if t.is_complex():
        return np.asarray(t.numpy())
    return np.asarray(t.float().numpy() if t.is_floating_point() else t.numpy())


def _torch_lazy(t: Any, *, mapped: bool, where: str) -> LazyArray | None:
    """A large tensor read in bands, straight from its storage (a file mapping for zip-format files)."""
    import torch

    storage = t.untyped_storage()
    flat_t = torch.empty(0, dtype=t.dtype).set_(storage)
    try:
        if t.dtype == torch.bfloat16:
            flat, convert = flat_t.view(torch.int16).numpy().view(np.uint16), _bf16_to_f32
        else:
            flat, convert = flat_t.numpy(), _same
            if t.is_floating_point():
                convert = _to_f32
    except (TypeError, RuntimeError):  # a dtype numpy cannot hold: read the usual way
        return None
    dtype = np.dtype(np.float32) if t.is_floating_point() else flat.dtype
    # Pages of torch's read-only private file mapping can be dropped and are re-read from
    # the file; memory of a legacy (non-zip) file is the heap and must be left alone.
    drop = functools.partial(_drop_private_pages, flat.ctypes.data, flat.nbytes) if mapped else None
    return LazyArray(_MappedRaw(flat, drop, keep=storage), tuple(t.shape), tuple(t.stride()),
                     int(t.storage_offset()), dtype, convert, where)


def _to_f32(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float32)


# ---------------------------------------------------------------------------- pickle


def _read_pickle(path: Path, *, allow_pickle: bool, layer: str, origin: str) -> list[Snapshot]:
    if not allow_pickle:
        msg = (f"{origin} is a Python pickle, and unpickling can run arbitrary code; "
               "pass --allow-pickle (API: allow_pickle=True) only if you trust this file")
        raise PickleNotAllowedError(msg)
    with path.open("rb") as fh:
        obj = pickle.load(fh)  # the user opted in with allow_pickle
    if isinstance(obj, np.ndarray) and obj.dtype != object:
        if obj.ndim >= 3:
            _check_count(origin, obj.shape[0], f"shape {obj.shape}")
        obj = list(obj) if obj.ndim >= 3 else [obj]
    if isinstance(obj, Mapping):
        items = [(str(k), v) for k, v in obj.items()]
    elif isinstance(obj, (list, tuple)):
        items = [(layer, obj)]
    else:
        msg = f"{origin}: expected a pickled list of 2-D arrays; got {type(obj).__name__}"
        raise SnapshotFormatError(msg)
    snaps = []
    _check_count(origin, sum(len(seq) if isinstance(seq, (list, tuple)) else 1 for _, seq in items), "entries")
    for name, seq in items:
        frames = list(seq) if isinstance(seq, (list, tuple)) else [seq]
        for i, frame in enumerate(frames):
            arr = np.asarray(frame)
            _check_dtype(arr.dtype, f"{origin}[{i}]")
            snaps.append(Snapshot(name, i, f"{origin}[{i}]", functools.partial(_identity, arr)))
    return snaps


def _identity(arr: np.ndarray) -> np.ndarray:
    return arr


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
