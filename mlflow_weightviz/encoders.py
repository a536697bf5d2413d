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
Each step is a plain function (:func:`build_palette`, :class:`Quantizer`,
:func:`changed_box`, :func:`encode_image`), so worker processes can encode frames and the
writer only puts the blocks in order: the file is the same whoever encoded them.
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, Protocol

import numpy as np

from mlflow_weightviz._files import atomic_file
from mlflow_weightviz.options import DEFAULT_FRAME_MS, MIN_FRAME_MS, GifOptions

if TYPE_CHECKING:
    from mlflow_weightviz.frames import HeatmapRenderer

__all__ = ["TRANSPARENT", "Animation", "Frame", "FrameEncoder", "FrameWriter", "GifEncoder", "GifWriter",
           "Quantizer", "StepImageWriter", "build_palette", "changed_box", "encode_image", "encode_next",
           "frames_to_gif", "saving"]

_MAX_DELAY_MS = 655_350  # the GIF delay field is 16 bits of 10 ms
#: Palette index of "unchanged" pixels inside a frame's changed rectangle.
TRANSPARENT = 255  # all bits set: _encode_changes relies on it
_COLOURS = 255


def build_palette(first: np.ndarray, seed: np.ndarray | None = None) -> np.ndarray:
    """The GIF's one colour table: the seed colours, then the first frame's own colours.

    255 colours are used; index 255 (:data:`TRANSPARENT`) marks pixels a frame leaves as
    they were in the frame before.

    Deterministic: the same first frame and seed always give the same table, so frames
    quantized in different processes agree.

    Args:
        first: The first (H, W, 3) uint8 frame.
        seed: (K, 3) uint8 colours that must be in the palette (the renderer's colours).

    Returns:
        A (256, 3) uint8 colour table.
    """
    from PIL import Image

    seeded = np.zeros((0, 3), np.uint8) if seed is None else np.asarray(seed, np.uint8).reshape(-1, 3)
    seeded = np.unique(seeded, axis=0)[:_COLOURS]
    free = _COLOURS - len(seeded)
    colours = [seeded]
    if free:
        adaptive = Image.fromarray(first).quantize(colors=free, method=Image.Quantize.FASTOCTREE)
        used = len(adaptive.getcolors(256) or [])
        pal = np.frombuffer(bytes(adaptive.getpalette() or b""), np.uint8).reshape(-1, 3)[:max(used, 1)]
        colours.append(pal)
    palette = np.unique(np.vstack(colours), axis=0)[:_COLOURS]
    table = np.zeros((256, 3), np.uint8)
    table[: len(palette)] = palette
    # Pad with a repeat, and make the transparent slot a repeat too: the nearest-colour map
    # picks the lowest index among equals, so neither is ever chosen for a pixel.
    table[len(palette):] = palette[-1]
    table[TRANSPARENT] = palette[0]
    return table


class Quantizer:
    """Maps RGB frames to the indices of a fixed palette, exactly and without dithering.

    Each pixel gets the palette entry nearest to it in RGB. Pillow's own palette mapping
    looks colours up at 6 bits per channel, which bands smooth gradients (a colorbar) and
    turns white into (252, 252, 252); here every distinct colour is matched once at full
    precision and remembered in a 2**24-entry table (16 MiB, flat however many frames).

    Args:
        table: The (256, 3) uint8 palette; index :data:`TRANSPARENT` is never chosen.
    """

    def __init__(self, table: np.ndarray) -> None:
        self.table = np.asarray(table, np.uint8).reshape(256, 3)
        # Squared distance |c|² - 2 c·p + |p|² with one BLAS product; every term is an integer below
        # 2**24, so float32 holds it exactly and the nearest entry (lowest index among equals) is exact.
        choices = self.table[:TRANSPARENT].astype(np.float32)
        self._twice = np.ascontiguousarray(2.0 * choices.T)
        self._norms = (choices ** 2).sum(axis=1)
        # TRANSPARENT doubles as "not looked up yet": it is never a pixel's answer.
        self._lut = np.full(1 << 24, TRANSPARENT, np.uint8)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """The (H, W) uint8 palette indices of an (H, W, 3) uint8 frame."""
        key = rgb[..., 0].astype(np.uint32) << 16
        key |= rgb[..., 1].astype(np.uint32) << 8
        key |= rgb[..., 2]
        return self.lookup(key)

    def lookup(self, key: np.ndarray) -> np.ndarray:
        """The palette indices of colours packed as ``0xRRGGBB`` (uint32), like :meth:`__call__` of the colours."""
        index = np.take(self._lut, key)  # (faster than fancy indexing)
        unknown = index == TRANSPARENT
        if unknown.any():
            missing = key[unknown]
            new = np.unique(missing)
            colours = np.stack([(new >> 16) & 255, (new >> 8) & 255, new & 255], axis=1).astype(np.float32)
            # (256 × 255) distance blocks stay in the L2 cache, and BLAS keeps products this small on one
            # thread: blocks of 1024 rows measured 10-45x slower per colour on 2 vCPUs.
            for start in range(0, len(new), 256):
                dist = self._norms - colours[start:start + 256] @ self._twice  # |c|² is the same along a row
                self._lut[new[start:start + 256]] = dist.argmin(axis=1).astype(np.uint8)
            index[unknown] = np.take(self._lut, missing)
        return np.asarray(index)


def changed_box(previous: np.ndarray | None, index: np.ndarray,
                within: tuple[int, int, int, int] | None = None) -> tuple[int, int, int, int] | None:
    """The rectangle ``(left, top, right, bottom)`` where ``index`` differs from ``previous``.

    The whole frame when there is no previous frame; ``None`` when nothing changed.
    ``within`` ``(y0, y1, x0, x1)``: a box outside which the two are known to be equal
    (only it is compared; the answer is the same).
    """
    if previous is None:
        return (0, 0, index.shape[1], index.shape[0])
    y0, y1, x0, x1 = (0, index.shape[0], 0, index.shape[1]) if within is None else within
    rect = _unequal_rect(index[y0:y1, x0:x1] == previous[y0:y1, x0:x1])
    if rect is None:
        return None
    top, bottom, left, right = rect
    return (left + x0, top + y0, right + x0, bottom + y0)


def _unequal_rect(same: np.ndarray) -> tuple[int, int, int, int] | None:
    """``(top, bottom, left, right)`` around the ``False`` pixels of ``same``; ``None`` when there are none."""
    rows = np.flatnonzero(~same.all(axis=1))
    if rows.size == 0:
        return None
    top, bottom = int(rows[0]), int(rows[-1]) + 1
    cols = np.flatnonzero(~same[top:bottom].all(axis=0))
    return top, bottom, int(cols[0]), int(cols[-1]) + 1


def encode_image(index: np.ndarray, box: tuple[int, int, int, int], previous: np.ndarray | None = None) -> bytes:
    """One GIF image block (descriptor and LZW data) of the ``box`` part of a palette-index frame.

    With the ``previous`` frame, pixels inside the box that did not change are written as
    :data:`TRANSPARENT`, so the previous frame shows through; long runs of one index
    compress far better than the unchanged picture. The block has no graphic control
    extension: the encoder adds it with the frame's delay, which is only known once the
    following frames are (identical ones are merged).
    """
    left, top, right, bottom = box
    part = index[top:bottom, left:right]
    if previous is not None:
        same = part == previous[top:bottom, left:right]
        part = part.copy()
        np.copyto(part, np.uint8(TRANSPARENT), where=same)
    return _lzw(part, left, top)


def _lzw(part: np.ndarray, left: int, top: int) -> bytes:
    from PIL import GifImagePlugin, Image

    crop = Image.fromarray(np.ascontiguousarray(part))
    return b"".join(GifImagePlugin.getdata(crop, offset=(left, top)))


def _encode_changes(previous: np.ndarray, index: np.ndarray, within: tuple[int, int, int, int]) -> bytes | None:
    """``encode_image(index, changed_box(previous, index, within), previous)`` with one comparison of the pixels."""
    y0, y1, x0, x1 = within
    if y1 <= y0 or x1 <= x0:
        return None
    new = index[y0:y1, x0:x1]
    same = new == previous[y0:y1, x0:x1]
    rect = _unequal_rect(same)
    if rect is None:
        return None
    top, bottom, left, right = rect
    # TRANSPARENT is 255 (all bits set): OR-ing 255 into unchanged pixels marks them in one pass.
    part = np.negative(same[top:bottom, left:right].view(np.uint8))
    np.bitwise_or(part, new[top:bottom, left:right], out=part)
    return _lzw(part, left + x0, top + y0)


class FrameEncoder:
    """Turns RGB frames into GIF image blocks against the previous frame (quantize, diff, LZW).

    The same steps run in the single-process encoder and in worker processes, so both
    produce the same bytes.
    """

    def __init__(self, table: np.ndarray) -> None:
        self.quantize = Quantizer(table)
        self.table = self.quantize.table
        self.previous: np.ndarray | None = None

    def reset(self, rgb: np.ndarray) -> None:
        """Make ``rgb`` the previous frame without encoding it (a worker starting mid-layer)."""
        self.previous = self.quantize(rgb)

    def encode(self, rgb: np.ndarray | None, changed: list[tuple[int, int, int, int]] | None = None, *,
               index: np.ndarray | None = None) -> bytes | None:
        """The image block of one frame, or ``None`` when it equals the previous frame.

        Args:
            rgb: The (H, W, 3) uint8 frame.
            changed: Boxes ``(y0, y1, x0, x1)`` outside which ``rgb`` equals the previous
                frame (see :attr:`HeatmapRenderer.changed_boxes`): only they are mapped to
                the palette. The mapping is per pixel, so the result is the same.
            index: ``rgb`` already as this palette's indices (see
                :meth:`HeatmapRenderer.render_indices`, composed without mapping each pixel);
                then ``rgb`` is not read and may be ``None``.
        """
        within = None
        if changed is not None and self.previous is not None:
            # The new indices equal the previous frame's outside the changed boxes: diff only their span.
            boxes = [b for b in changed if b[1] > b[0] and b[3] > b[2]]
            within = ((min(b[0] for b in boxes), max(b[1] for b in boxes), min(b[2] for b in boxes),
                       max(b[3] for b in boxes)) if boxes else (0, 0, 0, 0))
        if index is not None:
            pass
        elif rgb is None:
            msg = "encode needs the frame's RGB or its indices"
            raise ValueError(msg)
        elif changed is None or self.previous is None:
            index = self.quantize(rgb)
        else:
            index = self.previous.copy()
            for y0, y1, x0, x1 in changed:
                if y1 > y0 and x1 > x0:
                    index[y0:y1, x0:x1] = self.quantize(np.ascontiguousarray(rgb[y0:y1, x0:x1]))
        if self.previous is None:
            block: bytes | None = encode_image(index, (0, 0, index.shape[1], index.shape[0]))
        else:
            block = _encode_changes(self.previous, index, within or (0, index.shape[0], 0, index.shape[1]))
        self.previous = index
        return block


def encode_next(renderer: HeatmapRenderer, encoder: FrameEncoder | None, values: np.ndarray, title: str,
                limits: tuple[float, float] | None) -> tuple[FrameEncoder, bytes | None]:
    """Draw the next frame of an animation and encode it against the one before.

    Frames are composed directly as palette indices when the renderer can
    (:meth:`HeatmapRenderer.render_indices`); otherwise (the first frame, a new colour
    scale) drawn in RGB and mapped. The first frame also chooses the palette: the
    renderer's colours and the first frame's own.

    Returns:
        The encoder (new with the first frame; its ``previous`` is this frame's indices)
        and the frame's image block (``None``: the same picture as the frame before).
    """
    if encoder is not None:
        index = renderer.render_indices(values, title, limits, quantize=encoder.quantize, previous=encoder.previous)
        if index is not None:
            return encoder, encoder.encode(None, renderer.changed_boxes, index=index)
    rgb = renderer.render(values, title, limits, copy=False)
    if encoder is None:
        encoder = FrameEncoder(build_palette(rgb, renderer.palette_colors()))
    return encoder, encoder.encode(rgb, renderer.changed_boxes)


class GifEncoder:
    """Writes an animated GIF frame by frame to a binary file.

    Use it as a context manager, which always finishes (or, on error, stops) the file::

        with GifEncoder(fh, frame_ms=100) as gif:
            for frame in frames:
                gif.add_frame(frame)

    Frames encoded elsewhere (by worker processes, see :mod:`mlflow_weightviz.parallel`)
    go in with :meth:`start` and :meth:`add_block` instead.

    Args:
        fh: A binary file opened for writing.
        frame_ms: Display time of each frame, in milliseconds (rounded to 10 ms).
        hold_last_ms: Display time of the last frame if longer than ``frame_ms``.
        loop: 0 loops forever, N repeats N times, ``None`` plays once.
        palette_colors: (K, 3) uint8 colours that must be in the palette.
    """

    @classmethod
    def from_options(cls, fh: IO[bytes], gif: GifOptions, *, palette_colors: np.ndarray | None = None) -> GifEncoder:
        """An encoder with the checked timing of ``gif``."""
        return cls(fh, frame_ms=gif.frame_ms, hold_last_ms=gif.hold_last_ms, loop=gif.loop,
                   palette_colors=palette_colors)

    def __init__(self, fh: IO[bytes], *, frame_ms: int = DEFAULT_FRAME_MS, hold_last_ms: int | None = None,
                 loop: int | None = 0, palette_colors: np.ndarray | None = None) -> None:
        self._fh = fh
        self._frame_ms = max(MIN_FRAME_MS, int(round(frame_ms / 10)) * 10)
        self._hold_last_ms = hold_last_ms
        self._loop = loop
        self._seed = palette_colors
        self._size: tuple[int, int] | None = None
        self._frames: FrameEncoder | None = None
        self._pending: tuple[bytes, int] | None = None
        self.palette: np.ndarray | None = None
        self.frames_written = 0

    def __enter__(self) -> GifEncoder:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.finish()

    def add_frame(self, frame: Any, changed: list[tuple[int, int, int, int]] | None = None) -> None:
        """Add one frame: an (H, W, 3) uint8 array or a Pillow image of the GIF's size.

        ``changed`` optionally bounds where it differs from the frame added before (see
        :meth:`FrameEncoder.encode`).
        """
        from PIL import Image

        rgb = np.asarray(frame.convert("RGB") if isinstance(frame, Image.Image) else frame)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            msg = f"a frame must be an (H, W, 3) uint8 RGB array; got shape {rgb.shape} and dtype {rgb.dtype}"
            raise ValueError(msg)
        if self._size is None:
            self.start(build_palette(rgb, self._seed), (rgb.shape[1], rgb.shape[0]))
        elif (rgb.shape[1], rgb.shape[0]) != self._size:
            msg = f"every frame must be {self._size[0]}×{self._size[1]} px; got {rgb.shape[1]}×{rgb.shape[0]}"
            raise ValueError(msg)
        if self._frames is None:
            assert self.palette is not None
            self._frames = FrameEncoder(self.palette)
        self.add_block(self._frames.encode(rgb, changed))

    def start(self, table: np.ndarray, size: tuple[int, int]) -> None:
        """Write the header: the (256, 3) uint8 palette and the ``(width, height)`` of every frame."""
        width, height = size
        self._size = (width, height)
        self.palette = np.asarray(table, np.uint8).reshape(256, 3)
        header = b"GIF89a" + struct.pack("<HHBBB", width, height, 0xF7, 0, 0) + self.palette.tobytes()
        if self._loop is not None:
            header += b"!\xff\x0bNETSCAPE2.0\x03\x01" + struct.pack("<H", self._loop) + b"\x00"
        self._fh.write(header)

    def add_block(self, block: bytes | None) -> None:
        """Add a frame as an image block from :func:`encode_image`; ``None`` repeats the previous frame."""
        if block is None:  # identical frame: show the previous one longer
            if self._pending is None:
                msg = "the first frame cannot repeat a previous one"
                raise ValueError(msg)
            self._pending = (self._pending[0], self._pending[1] + self._frame_ms)
            return
        self._flush_pending()
        self._pending = (block, self._frame_ms)

    def finish(self) -> None:
        """Write the last frame and the GIF trailer."""
        if self._pending is None:
            msg = "a GIF needs at least one frame"
            raise ValueError(msg)
        block, ms = self._pending
        if self._hold_last_ms is not None:
            self._pending = (block, max(ms, self._hold_last_ms))
        self._flush_pending()
        self._fh.write(b";")
        self._fh.flush()

    def _flush_pending(self) -> None:
        if self._pending is None:
            return
        block, ms = self._pending
        delay = min(ms, _MAX_DELAY_MS) // 10
        # Graphic control extension: disposal 1 keeps the previous frame in place around (and,
        # through the transparent index, inside) the rectangle this frame replaces.
        self._fh.write(b"!\xf9\x04" + struct.pack("<BHBB", 1 << 2 | 1, delay, TRANSPARENT, 0))
        self._fh.write(block)
        self.frames_written += 1
        self._pending = None


def frames_to_gif(frames: Iterable[Any], path: str | os.PathLike[str], *, frame_ms: int = DEFAULT_FRAME_MS,
                  hold_last_ms: int | None = None, loop: int | None = 0,
                  palette_colors: np.ndarray | None = None) -> Path:
    """Write RGB frames (uint8 arrays or Pillow images) to an animated GIF.

    Frames stream through one at a time and the file appears only when complete
    (it is written to a temporary file beside ``path`` and then renamed). Needs no MLflow.

    All frames share one palette. Without ``palette_colors`` it is taken from up to 16
    evenly spaced frames when ``frames`` is a sequence, or, for a one-pass iterator, from
    an even colour cube plus the first frame's own colours.

    Returns:
        The path written.

    Raises:
        ValueError: No frames, or frames of different sizes.
        OutputError: The file cannot be written.
    """
    if palette_colors is None:
        palette_colors = _sampled_colours(frames) if isinstance(frames, Sequence) else _colour_cube()
    with atomic_file(Path(path)) as fh, GifEncoder(fh, frame_ms=frame_ms, hold_last_ms=hold_last_ms, loop=loop,
                                                   palette_colors=palette_colors) as gif:
        for frame in frames:
            gif.add_frame(frame)
    return Path(path)


def _rgb(frame: Any) -> np.ndarray:
    from PIL import Image

    return np.asarray(frame.convert("RGB") if isinstance(frame, Image.Image) else frame, np.uint8)


def _sampled_colours(frames: Sequence[Any]) -> np.ndarray | None:
    """Up to 200 representative colours of up to 16 evenly spaced frames."""
    from PIL import Image

    if not frames:
        return None
    picks = sorted({int(round(i)) for i in np.linspace(0, len(frames) - 1, min(16, len(frames)))})
    parts = []
    for i in picks:
        rgb = _rgb(frames[i])
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            return None  # add_frame reports the bad frame
        step = max(1, int(np.sqrt(rgb.shape[0] * rgb.shape[1] / 65536)))  # ~64k pixels a frame
        parts.append(rgb[::step, ::step].reshape(-1, 3))
    sample = np.concatenate(parts)[None, :, :]
    quant = Image.fromarray(np.ascontiguousarray(sample)).quantize(colors=200, method=Image.Quantize.FASTOCTREE)
    used = len(quant.getcolors(256) or [])
    return np.frombuffer(bytes(quant.getpalette() or b""), np.uint8).reshape(-1, 3)[:max(used, 1)].copy()


def _colour_cube() -> np.ndarray:
    """An even 5×6×5 RGB cube (150 colours): every colour has a near neighbour."""
    r, g, b = np.meshgrid(np.linspace(0, 255, 5), np.linspace(0, 255, 6), np.linspace(0, 255, 5), indexing="ij")
    return np.round(np.stack([r, g, b], axis=-1).reshape(-1, 3)).astype(np.uint8)


# ------------------------------------------------------------------------ writers


@dataclass(frozen=True)
class Animation:
    """What every writer learns before the first frame of one animation (a layer, or the montage).

    Attributes:
        name: The layer (or ``grid``).
        steps: Every frame's step, in order; ``len(steps)`` frames follow.
        size: The frames' ``(width, height)`` in pixels; ``None`` when nothing is drawn.
        palette: The GIF's (256, 3) uint8 colour table; ``None`` when nothing is drawn.
    """

    name: str
    steps: tuple[int, ...]
    size: tuple[int, int] | None = None
    palette: np.ndarray | None = None


@dataclass(frozen=True)
class Frame:
    """One frame on its way to the writers.

    Attributes:
        index: Its place in the animation, from 0.
        step: The training step it shows.
        title: Its title.
        values: The values drawn (rows, cols), or ``None`` (the montage).
        limits: Its colour scale ``(vmin, vmax)``, or ``None`` (the montage).
        block: Its GIF image block (see :func:`encode_image`); ``None`` when it shows the
            same picture as the frame before, or when nothing is drawn.
        indices: Its (H, W) palette indices, exactly what the GIF shows; ``None`` when not needed.
        palette: The (256, 3) uint8 colour table of ``indices``.
    """

    index: int
    step: int
    title: str = ""
    values: np.ndarray | None = None
    limits: tuple[float, float] | None = None
    block: bytes | None = None
    indices: np.ndarray | None = None
    palette: np.ndarray | None = None

    def shown(self) -> np.ndarray:
        """The (H, W, 3) uint8 picture the GIF shows for this frame."""
        if self.indices is None or self.palette is None:
            msg = "this frame was not drawn"
            raise ValueError(msg)
        return np.asarray(self.palette[self.indices])


class FrameWriter(Protocol):
    """One output file (or set of files) fed frame by frame, in matplotlib's ``setup / grab / finish`` shape.

    Writers are driven through :func:`saving`, which always calls :meth:`finish` on
    success and :meth:`abort` on error.

    Attributes:
        pixels: ``"blocks"`` when the writer needs each frame's GIF block, ``"shown"`` when
            it needs the pictures (:attr:`Frame.indices`), ``""`` when values are enough.
    """

    pixels: str

    def setup(self, animation: Animation) -> None:
        """Start the output, before the first frame."""

    def add_frame(self, frame: Frame) -> None:
        """Add the next frame."""

    def finish(self) -> None:
        """Complete the output."""

    def abort(self) -> None:
        """Remove whatever was half-written (called on error instead of :meth:`finish`)."""


@contextlib.contextmanager
def saving(writers: Sequence[FrameWriter]) -> Iterator[Sequence[FrameWriter]]:
    """Finish every writer when the block succeeds; abort them all (remove half-written files) when it fails."""
    try:
        yield writers
    except BaseException:
        for writer in writers:
            writer.abort()
        raise
    done = 0
    try:
        for writer in writers:
            writer.finish()
            done += 1
    except BaseException:
        for writer in writers[done:]:
            writer.abort()
        raise


class GifWriter:
    """Writes frames' GIF image blocks (drawn here or by workers) to an animated GIF.

    Args:
        path: The GIF to write.
        gif: The timing.
    """

    pixels = "blocks"

    def __init__(self, path: Path, gif: GifOptions) -> None:
        self.path = path
        self._gif = gif
        self._fh: IO[bytes] | None = None
        self._encoder: GifEncoder | None = None

    def setup(self, animation: Animation) -> None:
        """Open the file and write the header with the animation's palette."""
        assert animation.palette is not None
        assert animation.size is not None
        with self._writing():
            self._fh = self.path.open("wb")
            self._encoder = GifEncoder.from_options(self._fh, self._gif)
            self._encoder.start(animation.palette, animation.size)

    def add_frame(self, frame: Frame) -> None:
        """Add the frame's block (``None`` shows the previous frame longer)."""
        assert self._encoder is not None
        with self._writing():
            self._encoder.add_block(frame.block)

    def finish(self) -> None:
        """Write the last frame and the trailer."""
        assert self._encoder is not None
        assert self._fh is not None
        with self._writing():
            self._encoder.finish()
            self._fh.close()

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        # A full disk can strike at any write: report it as this file's error, leaving no partial file.
        from mlflow_weightviz.errors import OutputError

        try:
            yield
        except OSError as exc:
            self.abort()
            msg = f"cannot write {self.path.name}: {exc.strerror or exc}"
            raise OutputError(msg) from exc

    def abort(self) -> None:
        """Close and remove the half-written file."""
        if self._fh is not None:
            self._fh.close()
        self.path.unlink(missing_ok=True)


class StepImageWriter:
    """Keeps every ``every``-th frame (and the last) as the GIF shows it, with its step, for MLflow step images.

    The frames are kept as ``.npy`` files in ``folder`` (not in memory) until
    :meth:`frames` hands them to the sink.
    """

    pixels = "shown"

    def __init__(self, folder: Path, every: int) -> None:
        self.folder = folder
        self._every = every
        self._last = -1
        self._saved: list[tuple[int, Path]] = []

    def setup(self, animation: Animation) -> None:
        """Make the folder; the last frame is always kept."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._last = len(animation.steps) - 1

    def add_frame(self, frame: Frame) -> None:
        """Keep the frame if it is every ``every``-th or the last."""
        if frame.index % self._every == 0 or frame.index == self._last:
            path = self.folder / f"{frame.index:08d}.npy"
            np.save(path, frame.shown())
            self._saved.append((frame.step, path))

    def finish(self) -> None:
        """Nothing to complete: the frames are on disk."""

    def abort(self) -> None:
        """Remove the kept frames."""
        for _, path in self._saved:
            path.unlink(missing_ok=True)
        self._saved.clear()

    def frames(self) -> Iterator[tuple[int, np.ndarray]]:
        """The kept (step, RGB frame) pairs, in order."""
        for step, path in self._saved:
            yield step, np.load(path)
