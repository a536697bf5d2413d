"""The outputs besides the per-layer GIF, made once the GIFs are staged.

* ``html``: an interactive player per layer (:mod:`mlflow_weightviz.html_player`), written
  from the layer's prepared values, so hovering shows the data rather than the picture;
* ``mp4``: a video per staged GIF (:mod:`mlflow_weightviz.video`), frame for frame what
  the GIF shows;
* step images: every k-th frame of a staged GIF with its step, for MLflow's image slider;
* local copies of every staged file.

Everything is made from finished, staged files, so it does not depend on how the GIFs
were drawn (one process or many).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mlflow_weightviz.grid import PreparedLayer
from mlflow_weightviz.options import Format, RenderOptions

__all__ = ["copy_extras", "gif_needed", "step_frames", "warn_if_too_big", "write_player", "write_videos"]

#: The MLflow UI previews artifacts up to this size; larger files can only be downloaded.
PREVIEW_LIMIT = 50 * 1024 * 1024

TitleFn = Callable[[PreparedLayer, RenderOptions, int, int], str]


def warn_if_too_big(files: Sequence[Path]) -> None:
    """Warn about GIFs and videos the MLflow UI will not preview (the player warns for itself)."""
    import warnings

    from mlflow_weightviz.options import WeightvizWarning

    for path in files:
        size = path.stat().st_size if path.suffix != ".html" and path.is_file() else 0
        if size > PREVIEW_LIMIT:
            warnings.warn(f"{path.name} is {size / 2**20:.0f} MiB, over the MLflow UI's {PREVIEW_LIMIT // 2**20} MiB "
                          "preview limit (it can only be downloaded); use --max-frames, --format mp4 or --format html",
                          WeightvizWarning, stacklevel=3)


def gif_needed(options: RenderOptions) -> bool:
    """Whether GIFs must be drawn: asked for, or the source of the MP4s or step images."""
    return bool({Format.GIF, Format.MP4} & set(options.formats)) or options.step_images is not None


def write_player(prepared: PreparedLayer, options: RenderOptions, target: Path, *, title: TitleFn,
                 renderer_kwargs: Mapping[str, Any]) -> int:
    """Write the HTML player of a prepared layer; returns its size in bytes.

    ``renderer_kwargs`` are the GIF renderer's arguments (colormap, scale, format and
    labels), so the player shows what the GIF shows.
    """
    from mlflow_weightviz._files import atomic_file
    from mlflow_weightviz.html_player import HtmlPlayerWriter

    stack = prepared.stack()
    try:
        with atomic_file(target) as fh, HtmlPlayerWriter(
                fh, name=prepared.name, grid=prepared.info.grid, cmap=renderer_kwargs["cmap"],
                vmin=prepared.vmin, vmax=prepared.vmax, fmt=prepared.fmt,
                row_labels=renderer_kwargs["row_labels"], col_labels=renderer_kwargs["col_labels"],
                frame_ms=options.frame_ms, hold_last_ms=options.hold_last_ms, annotate=options.annotate,
                note=prepared.info.note(), block=prepared.info.block, matrix=prepared.info.matrix) as player:
            for i, step in enumerate(prepared.steps):
                player.add_frame(np.asarray(stack[i]), step=step, title=title(prepared, options, i, step),
                                 limits=prepared.limits(i))
    finally:
        del stack
    return player.bytes_written


def write_videos(gifs: Sequence[Path], options: RenderOptions) -> list[Path]:
    """Write ``<stem>.mp4`` beside each staged GIF; returns the videos.

    Raises:
        MissingDependencyError: imageio or imageio-ffmpeg is not installed.
        OutputError: A video cannot be written.
    """
    from mlflow_weightviz.video import gif_to_mp4

    videos = []
    for gif in gifs:
        target = gif.with_suffix(".mp4")
        try:
            gif_to_mp4(gif, target, frame_ms=options.frame_ms)
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        videos.append(target)
    return videos


def step_frames(gif: Path, steps: Sequence[int], *, frame_ms: int, every: int) -> Iterator[tuple[int, np.ndarray]]:
    """Every ``every``-th frame of a staged GIF (and always the last) with its step."""
    from mlflow_weightviz.replay import rendered_frames

    last = len(steps) - 1
    for i, rgb in enumerate(rendered_frames(gif, frame_ms=frame_ms, count=len(steps))):
        if i % every == 0 or i == last:
            yield steps[i], rgb


def copy_extras(files: Mapping[str, Path], *, out: Path | None, output_dir: Path | None) -> dict[str, Path]:
    """Local copies of the files besides each layer's main one; returns file name → local path.

    With ``out``, a file goes beside it under the same name with its own suffix
    (``--out fc1.gif`` also gives ``fc1.html``); with ``output_dir``, into that folder.
    """
    from mlflow_weightviz.sinks import LocalSink

    copied: dict[str, Path] = {}
    for name, path in files.items():
        if out is not None:
            copied.update(LocalSink(out=out.with_suffix(path.suffix)).deliver({name: path}))
        elif output_dir is not None:
            copied.update(LocalSink(output_dir=output_dir).deliver({name: path}))
    return copied

