"""MP4 output for long runs, through imageio and imageio-ffmpeg (ffmpeg ships inside its wheel).

An MP4 of a long run is far smaller than its GIF and the MLflow UI plays it in the
artifact view. The video is H.264 in yuv420p, which every browser plays; that format
needs even frame sizes, which the heatmap renderer always produces. Frames are
written at ``1000 / frame_ms`` frames per second; a frame shown longer in the GIF (a
merged repeat, or the held last frame) is repeated to last as long. :class:`Mp4Writer`
is fed by the frame loop with the GIF's own pictures, so nothing is decoded back.

imageio is an optional dependency: ``pip install 'mlflow-weightviz[mp4]'``.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from mlflow_weightviz.encoders import Animation, Frame
from mlflow_weightviz.errors import MissingDependencyError, OutputError
from mlflow_weightviz.options import DEFAULT_FRAME_MS, GifOptions

__all__ = ["Mp4Encoder", "Mp4Writer", "check_available"]

_MAX_DELAY_MS = 655_350  # the GIF's longest delay (16 bits of 10 ms): the video shows what the GIF shows

_HINT = "pip install 'mlflow-weightviz[mp4]'"


def _imageio() -> Any:
    try:
        import imageio.v2 as iio
        import imageio_ffmpeg  # noqa: F401  (the FFMPEG plugin needs it; fail here with the hint)
    except ImportError as exc:
        msg = f"MP4 output needs imageio and imageio-ffmpeg ({exc.name} is missing): {_HINT}"
        raise MissingDependencyError(msg) from None
    return iio


def check_available() -> None:
    """Raise :class:`MissingDependencyError`, with the pip command, when MP4 output cannot work."""
    _imageio()


class Mp4Encoder:
    """Writes RGB frames to an H.264 MP4, in matplotlib's ``setup / add_frame / finish`` shape.

    Use it as a context manager, which always closes the file::

        with Mp4Encoder("run.mp4", frame_ms=100) as mp4:
            for frame in frames:
                mp4.add_frame(frame)

    Args:
        path: The file to write.
        frame_ms: Display time of one frame; the video has ``1000 / frame_ms`` fps.
        crf: H.264 quality, 0 (lossless) to 51; 20 keeps cell values and text readable.

    Raises:
        MissingDependencyError: imageio or imageio-ffmpeg is not installed.
    """

    def __init__(self, path: str | os.PathLike[str], *, frame_ms: int = DEFAULT_FRAME_MS, crf: int = 20) -> None:
        if frame_ms <= 0:
            msg = f"frame_ms must be positive; got {frame_ms}"
            raise ValueError(msg)
        self.path = Path(path)
        self.fps = 1000.0 / frame_ms
        self.frames_written = 0
        self._crf = crf
        self._size: tuple[int, int] | None = None
        self._writer: Any = None
        self._iio = _imageio()

    def __enter__(self) -> Mp4Encoder:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.finish()

    def add_frame(self, frame: np.ndarray, repeat: int = 1) -> None:
        """Add an (H, W, 3) uint8 frame, shown for ``repeat`` frame times.

        Raises:
            ValueError: The frame is not RGB uint8, has odd sides, or differs in size from the first.
            OutputError: ffmpeg cannot write the file.
        """
        rgb = np.asarray(frame)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            msg = f"a frame must be an (H, W, 3) uint8 RGB array; got shape {rgb.shape} and dtype {rgb.dtype}"
            raise ValueError(msg)
        size = (rgb.shape[1], rgb.shape[0])
        if self._size is None:
            if size[0] % 2 or size[1] % 2:
                msg = f"H.264 in yuv420p needs even frame sides; got {size[0]}×{size[1]} px"
                raise ValueError(msg)
            self._open(size)
        elif size != self._size:
            msg = f"every frame must be {self._size[0]}×{self._size[1]} px; got {size[0]}×{size[1]}"
            raise ValueError(msg)
        try:
            for _ in range(repeat):
                self._writer.append_data(rgb)
                self.frames_written += 1
        except (OSError, RuntimeError) as exc:
            msg = f"cannot write {self.path.name}: {exc}"
            raise OutputError(msg) from exc

    def finish(self) -> None:
        """Close the video (idempotent)."""
        if self._writer is not None:
            writer, self._writer = self._writer, None
            try:
                writer.close()
            except (OSError, RuntimeError) as exc:
                msg = f"cannot write {self.path.name}: {exc}"
                raise OutputError(msg) from exc

    def _open(self, size: tuple[int, int]) -> None:
        self._size = size
        self._writer = self._iio.get_writer(
            self.path, format="FFMPEG", mode="I", fps=self.fps, codec="libx264", pixelformat="yuv420p",
            quality=None, macro_block_size=2, ffmpeg_log_level="error",
            # faststart puts the index first, so a browser starts playing before the whole file arrives.
            output_params=["-crf", str(self._crf), "-preset", "veryfast",
                           "-movflags", "+faststart"])


class Mp4Writer:
    """A :class:`~mlflow_weightviz.encoders.FrameWriter`: an MP4 of exactly what the GIF shows, as long.

    Each frame is the GIF's palette-mapped picture. Like the GIF, a run of identical
    frames is one picture shown for their total time (capped at the GIF's longest
    delay), and the last one is held for ``hold_last_ms``; the video repeats a picture
    to last as long.

    Args:
        path: The file to write.
        gif: The timing; the video has ``1000 / frame_ms`` fps.
        crf: H.264 quality, 0 (lossless) to 51.
    """

    pixels = "shown"

    def __init__(self, path: Path, gif: GifOptions, *, crf: int = 20) -> None:
        self.path = path
        self._gif = gif
        self._crf = crf
        self._encoder: Mp4Encoder | None = None
        self._pending: tuple[np.ndarray, int] | None = None  # a picture and how many frames show it

    def setup(self, animation: Animation) -> None:
        """Open the video."""
        self._encoder = Mp4Encoder(self.path, frame_ms=self._gif.frame_ms, crf=self._crf)

    def add_frame(self, frame: Frame) -> None:
        """Add the frame's picture; an identical one only lengthens the picture before."""
        if self._pending is not None and frame.block is None:
            self._pending = (self._pending[0], self._pending[1] + 1)
            return
        self._flush(last=False)
        self._pending = (frame.shown(), 1)

    def finish(self) -> None:
        """Write the last picture, held, and close the video."""
        assert self._encoder is not None
        self._flush(last=True)
        self._encoder.finish()

    def abort(self) -> None:
        """Close and remove the half-written video."""
        if self._encoder is not None:
            with contextlib.suppress(OutputError, ValueError):
                self._encoder.finish()
        self.path.unlink(missing_ok=True)

    def _flush(self, *, last: bool) -> None:
        if self._pending is None:
            return
        assert self._encoder is not None
        rgb, count = self._pending
        frame_ms = self._gif.frame_ms
        ms = count * frame_ms
        if last:
            ms = max(ms, self._gif.hold_last_ms)
        delay = min(ms, _MAX_DELAY_MS) // 10 * 10  # as the GIF stores it
        self._encoder.add_frame(rgb, repeat=max(1, round(delay / frame_ms)))
        self._pending = None
