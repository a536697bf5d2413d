"""Reading a finished GIF back frame by frame: the source of the MP4 and the step images.

The GIF encoder merges identical consecutive frames into one (adding their delays) and
holds the last frame longer, so a GIF frame can stand for several rendered frames. These
readers undo that from the delays, without keeping more than one frame in memory, so
every other output is made from exactly the pictures the GIF shows.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

__all__ = ["gif_frames", "rendered_frames"]


def gif_frames(path: Path) -> Iterator[tuple[np.ndarray, int]]:
    """Each frame of a GIF as an (H, W, 3) uint8 RGB array with its delay in milliseconds."""
    from PIL import Image, ImageSequence

    with Image.open(path) as im:
        for frame in ImageSequence.Iterator(im):
            yield np.asarray(frame.convert("RGB")), int(frame.info.get("duration", 0))


def rendered_frames(path: Path, *, frame_ms: int, count: int) -> Iterator[np.ndarray]:
    """The ``count`` frames that were rendered into a GIF, one per snapshot, in order.

    A GIF frame shown for ``k × frame_ms`` stands for ``k`` identical rendered frames; the
    last GIF frame covers whatever is left (its delay also includes the hold at the end).

    Raises:
        ValueError: The GIF's delays do not add up to ``count`` frames.
    """
    emitted = 0
    pending: tuple[np.ndarray, int] | None = None
    for rgb, ms in gif_frames(path):
        if pending is not None:
            copies = max(1, round(pending[1] / frame_ms))
            for _ in range(min(copies, count - emitted)):
                yield pending[0]
            emitted += copies
        pending = (rgb, ms)
    if pending is not None and emitted < count:
        for _ in range(count - emitted):
            yield pending[0]
        emitted = count
    if emitted != count:
        msg = f"{path.name}: its delays stand for {emitted} frames at {frame_ms} ms each; expected {count}"
        raise ValueError(msg)
