"""MP4 output for long runs, through imageio and imageio-ffmpeg (ffmpeg ships inside its wheel).

An MP4 of a long run is far smaller than its GIF and the MLflow UI plays it in the
artifact view. The video is H.264 in yuv420p, which every browser plays; that format
needs even frame sizes, which the heatmap renderer always produces. Frames are
written at ``1000 / frame_ms`` frames per second; a frame shown longer in the GIF (a
merged repeat, or the held last frame) is repeated to last as long.

imageio is an optional dependency: ``pip install 'mlflow-weightviz[mp4]'``.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from mlflow_weightviz.errors import MissingDependencyError, OutputError

__all__ = ["Mp4Encoder", "check_available", "gif_to_mp4"]

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

    def __init__(self, path: str | os.PathLike[str], *, frame_ms: int = 200, crf: int = 20) -> None:
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


def gif_to_mp4(gif: Path, target: Path, *, frame_ms: int, crf: int = 20) -> int:
    """Write an MP4 showing exactly what ``gif`` shows, frame for frame and as long.

    Returns:
        The number of video frames written.

    Raises:
        MissingDependencyError: imageio or imageio-ffmpeg is not installed.
        OutputError: The video cannot be written.
    """
    from mlflow_weightviz.replay import gif_frames

    with Mp4Encoder(target, frame_ms=frame_ms, crf=crf) as mp4:
        for rgb, ms in gif_frames(gif):
            mp4.add_frame(rgb, repeat=max(1, round(ms / frame_ms)))
    return mp4.frames_written
