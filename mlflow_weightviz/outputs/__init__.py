"""The outputs besides the GIF, as frame writers, and what is done with finished files.

* :mod:`~mlflow_weightviz.outputs.html_player`: an interactive player per layer, written
  from the layer's values, so hovering shows the data rather than the picture;
* :mod:`~mlflow_weightviz.outputs.video`: an MP4 per layer (or montage), frame for frame
  what the GIF shows;
* :mod:`~mlflow_weightviz.outputs.montage`: all layers side by side (``--grid``), a frame
  source for the same writers.

Every writer follows :class:`~mlflow_weightviz.encoders.FrameWriter` and is fed by the one
frame loop in :mod:`mlflow_weightviz.pipeline`. The helpers here act on staged files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["PREVIEW_LIMIT", "copy_extras", "warn_if_too_big"]

#: The MLflow UI previews artifacts up to this size; larger files can only be downloaded.
PREVIEW_LIMIT = 50 * 1024 * 1024


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
