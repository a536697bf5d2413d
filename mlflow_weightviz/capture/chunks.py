"""The recorder's on-disk buffer: raw segments of fixed-size records, written out as chunk files.

A :class:`Segment` is one raw file of snapshots that share a :class:`Layout`: each
record is the step as int64, then every layer's bytes. :meth:`Segment.write_chunk`
turns it into one ``chunk_<first>-<last>.npz`` of the canonical layout, one zip member
(layer) at a time, so neither the snapshots nor a chunk are ever held in memory whole.
A reduced layer ``L`` is three members ``L::mean``, ``L::maxabs``, ``L::rms``; the
``__weightviz__`` member describing them (and crops) is part of the layout, written once
per chunk, not stacked.

Writing uses ``os.writev`` and reading the raw file back ``os.pread``; both are POSIX-only.
"""

from __future__ import annotations

import contextlib
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from mlflow_weightviz.capture.reduce import META_KEY
from mlflow_weightviz.snapshots import STEPS_KEY

__all__ = ["Layout", "Segment"]

_STEP_DTYPE = np.dtype("<i8")
_IOV_MAX = 1024  # buffers per writev (Linux's limit)
_COPY_BLOCK = 8 << 20  # bytes copied at a time from the raw buffer into a chunk file


@dataclass(frozen=True)
class Layout:
    """Names, dtypes and shapes of one snapshot's arrays: the fixed record of a raw segment."""

    names: tuple[str, ...]
    dtypes: tuple[np.dtype[Any], ...]
    shapes: tuple[tuple[int, ...], ...]
    meta: bytes = b""

    @classmethod
    def of(cls, arrays: Mapping[str, np.ndarray]) -> Layout:
        """The layout of one snapshot's arrays (a ``__weightviz__`` member among them becomes ``meta``)."""
        meta = arrays.get(META_KEY)
        stacked = {k: a for k, a in arrays.items() if k != META_KEY}
        return cls(tuple(stacked), tuple(a.dtype for a in stacked.values()), tuple(a.shape for a in stacked.values()),
                   b"" if meta is None else np.asarray(meta, dtype=np.uint8).tobytes())

    def matches(self, arrays: Mapping[str, np.ndarray]) -> bool:
        """Whether ``arrays`` fit this layout's records."""
        return self == Layout.of(arrays)

    def sizes(self) -> list[int]:
        """Bytes of each array in a record."""
        return [int(np.prod(s, dtype=np.int64)) * d.itemsize for d, s in zip(self.dtypes, self.shapes, strict=True)]


class Segment:
    """Snapshots of one layout, appended to one raw file, later written out as one chunk.

    Attributes:
        path: The raw file.
        layout: The arrays of every record.
        count: Records appended so far.
        first: The step of the first record (-1 while empty).
        last: The step of the latest record (-1 while empty).
    """

    def __init__(self, path: Path, layout: Layout) -> None:
        self.path = path
        self.layout = layout
        self.sizes = layout.sizes()
        self.record_bytes = _STEP_DTYPE.itemsize + sum(self.sizes)
        self.count = 0
        self.first = -1
        self.last = -1
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def append(self, step: int, arrays: Mapping[str, np.ndarray]) -> None:
        """Append one record; after a failed write the file is cut back, so records stay aligned.

        Raises:
            OSError: The record could not be written.
        """
        try:
            parts = [memoryview(np.asarray(step, _STEP_DTYPE).tobytes())]
            parts += [np.ascontiguousarray(arrays[name]).reshape(-1).view(np.uint8).data  # no copy
                      for name in self.layout.names]
            _write_all(self._fd, parts)
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
        """The chunk file's name, from the first and last step."""
        return f"chunk_{self.first}-{self.last}.npz"

    def write_chunk(self, target: Path) -> Path:
        """Write the canonical chunk file, one zip member (layer) at a time.

        Each member is copied slice by slice from the raw file with ``os.pread``: at most
        :data:`_COPY_BLOCK` bytes are in memory at once, and no memory map inflates the
        process's resident size with the chunk's pages.

        Raises:
            OSError: The raw file cannot be read or the chunk cannot be written.
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
                if self.layout.meta:
                    with zf.open(f"{META_KEY}.npy", "w", force_zip64=True) as fh:
                        np.lib.format.write_array(fh, np.frombuffer(self.layout.meta, dtype=np.uint8))
        finally:
            os.close(fd)
        return target

    def close(self) -> None:
        """Close the raw file for appending; safe to call twice."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def discard(self) -> None:
        """Close and delete the raw file."""
        self.close()
        self.path.unlink(missing_ok=True)


def _write_all(fd: int, parts: list[memoryview]) -> None:
    # One gathered write per record, not one per layer: each call gives up the GIL, and
    # taking it back from a busy thread (the metrics logger) can cost milliseconds.
    parts = [p for p in parts if p.nbytes]
    while parts:
        done = os.writev(fd, parts[:_IOV_MAX])
        while parts and done >= parts[0].nbytes:
            done -= parts[0].nbytes
            parts.pop(0)
        if parts and done:
            parts[0] = parts[0][done:]


def _copy_range(fd: int, offset: int, size: int, out: IO[bytes]) -> None:
    end = offset + size
    while offset < end:
        data = os.pread(fd, min(_COPY_BLOCK, end - offset), offset)
        if not data:
            msg = "the snapshot buffer file is shorter than expected"
            raise OSError(msg)
        out.write(data)
        offset += len(data)
