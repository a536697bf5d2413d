"""Frames to a file: a streaming animated-GIF encoder.

Pillow's multi-frame GIF writer keeps every frame in memory, so this encoder writes the
GIF itself, one frame at a time, in matplotlib's ``setup / add_frame / finish`` shape:

* one 256-colour palette for the whole file, seeded with the colours the renderer
  draws with and filled from the first frame, so colours never flicker between frames;
* each frame is mapped to that palette without dithering, and only the rectangle that
  changed since the previous frame is written (``disposal=1`` keeps the rest);
* a frame identical to the one before is merged into it by adding the delays, as
  Pillow does; only the previous frame's palette indices are kept in memory;
* delays are written in the GIF's 10 ms units, and the last frame can be held longer.

Pillow still does the LZW compression, through its public ``GifImagePlugin.getdata``.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy as np

from mlflow_weightviz._files import atomic_file
from mlflow_weightviz.options import MIN_FRAME_MS

__all__ = ["GifEncoder", "frames_to_gif"]

_MAX_DELAY_MS = 655_350  # the GIF delay field is 16 bits of 10 ms


class GifEncoder:
    """Writes an animated GIF frame by frame to a binary file.

    Use it as a context manager, which always finishes (or, on error, stops) the file::

        with GifEncoder(fh, frame_ms=200) as gif:
            for frame in frames:
                gif.add_frame(frame)

    Args:
        fh: A binary file opened for writing.
        frame_ms: Display time of each frame, in milliseconds (rounded to 10 ms).
        hold_last_ms: Display time of the last frame if longer than ``frame_ms``.
        loop: 0 loops forever, N repeats N times, ``None`` plays once.
        palette_colors: (K, 3) uint8 colours that must be in the palette.
    """

    def __init__(self, fh: IO[bytes], *, frame_ms: int = 200, hold_last_ms: int | None = None,
                 loop: int | None = 0, palette_colors: np.ndarray | None = None) -> None:
        self._fh = fh
        self._frame_ms = max(MIN_FRAME_MS, int(round(frame_ms / 10)) * 10)
        self._hold_last_ms = hold_last_ms
        self._loop = loop
        self._seed = palette_colors
        self._size: tuple[int, int] | None = None
        self._palette_image: Any = None
        self._prev: np.ndarray | None = None
        self._pending: tuple[Any, tuple[int, int], int] | None = None
        self.frames_written = 0

    def __enter__(self) -> GifEncoder:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.finish()

    def add_frame(self, frame: Any) -> None:
        """Add one frame: an (H, W, 3) uint8 array or a Pillow image of the GIF's size."""
        from PIL import Image

        rgb = np.asarray(frame.convert("RGB") if isinstance(frame, Image.Image) else frame)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            msg = f"a frame must be an (H, W, 3) uint8 RGB array; got shape {rgb.shape} and dtype {rgb.dtype}"
            raise ValueError(msg)
        if self._size is None:
            self._setup(rgb)
        elif (rgb.shape[1], rgb.shape[0]) != self._size:
            msg = f"every frame must be {self._size[0]}×{self._size[1]} px; got {rgb.shape[1]}×{rgb.shape[0]}"
            raise ValueError(msg)
        index = np.asarray(Image.fromarray(rgb).quantize(palette=self._palette_image, dither=Image.Dither.NONE))
        if self._prev is None:
            box = (0, 0, index.shape[1], index.shape[0])
        else:
            changed = index != self._prev
            rows, cols = np.flatnonzero(changed.any(axis=1)), np.flatnonzero(changed.any(axis=0))
            if rows.size == 0:  # identical frame: show the previous one longer
                assert self._pending is not None
                image, offset, ms = self._pending
                self._pending = (image, offset, ms + self._frame_ms)
                return
            box = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
        self._flush_pending()
        crop = Image.fromarray(np.ascontiguousarray(index[box[1]:box[3], box[0]:box[2]]))
        self._pending = (crop, (box[0], box[1]), self._frame_ms)
        self._prev = index

    def finish(self) -> None:
        """Write the last frame and the GIF trailer."""
        if self._pending is None:
            msg = "a GIF needs at least one frame"
            raise ValueError(msg)
        image, offset, ms = self._pending
        if self._hold_last_ms is not None:
            self._pending = (image, offset, max(ms, self._hold_last_ms))
        self._flush_pending()
        self._fh.write(b";")
        self._fh.flush()

    def _setup(self, rgb: np.ndarray) -> None:
        from PIL import Image

        height, width = rgb.shape[:2]
        self._size = (width, height)
        seed = np.zeros((0, 3), np.uint8) if self._seed is None else np.asarray(self._seed, np.uint8).reshape(-1, 3)
        seed = np.unique(seed, axis=0)[:256]
        free = 256 - len(seed)
        colours = [seed]
        if free:
            adaptive = Image.fromarray(rgb).quantize(colors=free, method=Image.Quantize.FASTOCTREE)
            used = len(adaptive.getcolors(256) or [])
            pal = np.frombuffer(bytes(adaptive.getpalette() or b""), np.uint8).reshape(-1, 3)[:max(used, 1)]
            colours.append(pal)
        palette = np.unique(np.vstack(colours), axis=0)[:256]
        table = np.zeros((256, 3), np.uint8)
        table[: len(palette)] = palette
        table[len(palette):] = palette[-1]  # pad with a repeat so padding is never the only match
        self._palette_image = Image.new("P", (1, 1))
        self._palette_image.putpalette(table.tobytes())
        header = b"GIF89a" + struct.pack("<HHBBB", width, height, 0xF7, 0, 0) + table.tobytes()
        if self._loop is not None:
            header += b"!\xff\x0bNETSCAPE2.0\x03\x01" + struct.pack("<H", self._loop) + b"\x00"
        self._fh.write(header)

    def _flush_pending(self) -> None:
        from PIL import GifImagePlugin

        if self._pending is None:
            return
        image, offset, ms = self._pending
        for chunk in GifImagePlugin.getdata(image, offset=offset, duration=min(ms, _MAX_DELAY_MS), disposal=1):
            self._fh.write(chunk)
        self.frames_written += 1
        self._pending = None


def frames_to_gif(frames: Iterable[Any], path: str | os.PathLike[str], *, frame_ms: int = 200,
                  hold_last_ms: int | None = None, loop: int | None = 0,
                  palette_colors: np.ndarray | None = None) -> Path:
    """Write RGB frames (uint8 arrays or Pillow images) to an animated GIF.

    Frames stream through one at a time and the file appears only when complete
    (it is written to a temporary file beside ``path`` and then renamed). Needs no MLflow.

    Returns:
        The path written.

    Raises:
        ValueError: No frames, or frames of different sizes.
        OutputError: The file cannot be written.
    """
    with atomic_file(Path(path)) as fh, GifEncoder(fh, frame_ms=frame_ms, hold_last_ms=hold_last_ms, loop=loop,
                                                   palette_colors=palette_colors) as gif:
        for frame in frames:
            gif.add_frame(frame)
    return Path(path)
