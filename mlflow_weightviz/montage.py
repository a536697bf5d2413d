"""All layers side by side in one frame per step (``--grid``).

Layers can have different shapes and different snapshot steps. The montage runs over
the union of every layer's steps; at each step a layer shows its latest snapshot at or
before that step (its last value is held), and a layer that has no snapshot yet is drawn
empty. Each layer keeps its own heatmap panel, colour scale and colorbar, drawn by the
same renderer as its own GIF; a panel is redrawn only when its snapshot changes. A
header line gives the step, the frame number and, with ``--caption-metric``, the metric.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlflow_weightviz.grid import PreparedLayer, prepare_layer, sample_indices
from mlflow_weightviz.options import RenderOptions

if TYPE_CHECKING:
    from mlflow_weightviz.frames import HeatmapRenderer
    from mlflow_weightviz.snapshots import Snapshot

__all__ = ["GridResult", "aligned_steps", "render_grid"]

_GAP = 12  # pixels between panels
_HEADER_PT = 15


@dataclass(frozen=True)
class GridResult:
    """What ``render_grid`` drew: the steps of its frames and how the panels were laid out."""

    steps: tuple[int, ...]
    layers: tuple[str, ...]
    size: tuple[int, int]
    panels: tuple[int, int]


def aligned_steps(layers: Mapping[str, Sequence[Snapshot]], max_frames: int | None) -> tuple[
        list[int], dict[str, list[int]]]:
    """The montage's frame steps and, per layer, the snapshot index each frame shows (-1: none yet).

    Frames are the union of all layers' steps, sampled to ``max_frames``.
    """
    union = sorted({s.step for snaps in layers.values() for s in snaps})
    chosen = [union[i] for i in sample_indices(len(union), max_frames)]
    shown: dict[str, list[int]] = {}
    for name, snaps in layers.items():
        steps = [s.step for s in snaps]
        shown[name] = [bisect.bisect_right(steps, u) - 1 for u in chosen]
    return chosen, shown


def render_grid(layers: Mapping[str, Sequence[Snapshot]], options: RenderOptions, target: Path, *, workdir: Path,
                make_renderer: Callable[[PreparedLayer], HeatmapRenderer],
                caption: Callable[[int], str] | None = None,
                progress: Callable[[int, int], None] | None = None) -> GridResult:
    """Draw every layer side by side, one frame per step, into the GIF ``target``.

    Args:
        layers: Snapshots per layer, each sorted by step.
        options: Drawing and encoding options; ``max_frames`` samples the union of steps.
        target: The GIF to write.
        workdir: Folder for the layers' temporary stacks.
        make_renderer: Builds a layer's heatmap renderer (the same one its own GIF uses).
        caption: Text for a frame's step, shown under the header (the caption metric).
        progress: Called as ``progress(i, n)`` after each frame.

    Raises:
        OutputError: The GIF cannot be written.
    """
    from mlflow_weightviz._files import atomic_file
    from mlflow_weightviz.encoders import GifEncoder

    steps, shown = aligned_steps(layers, options.max_frames)
    per_layer = options.replace(max_frames=None)
    prepared: dict[str, PreparedLayer] = {}
    position: dict[str, dict[int, int]] = {}
    renderers: dict[str, HeatmapRenderer] = {}
    stacks: dict[str, np.ndarray] = {}
    try:
        for name, snaps in layers.items():
            needed = sorted({j for j in shown[name] if j >= 0})
            prepared[name] = prepare_layer(name, [snaps[j] for j in needed], per_layer, workdir)
            position[name] = {j: k for k, j in enumerate(needed)}
            renderers[name] = make_renderer(prepared[name])
            stacks[name] = prepared[name].stack()
        names = list(layers)
        sizes = [renderers[n].size for n in names]
        layout = _Layout(sizes, header_lines=2 if caption is not None else 1)
        palette = _palette([renderers[n].palette_colors() for n in names])
        cache: dict[str, tuple[int, np.ndarray]] = {}
        with atomic_file(target) as fh, GifEncoder(fh, frame_ms=options.frame_ms, hold_last_ms=options.hold_last_ms,
                                                   loop=options.loop, palette_colors=palette) as gif:
            for i, step in enumerate(steps):
                panels = []
                for name in names:
                    j = shown[name][i]
                    if name not in cache or cache[name][0] != j:
                        cache[name] = (j, _panel(name, j, layers[name], prepared[name], position[name],
                                                 stacks[name], renderers[name]))
                    panels.append(cache[name][1])
                header = [f"step {step}  ·  frame {i + 1}/{len(steps)}  ·  {len(names)} layers"]
                if caption is not None:
                    header.append(caption(step))
                gif.add_frame(layout.compose(panels, header))
                if progress is not None:
                    progress(i + 1, len(steps))
    finally:
        for name in prepared:
            stacks.pop(name, None)
            if name in renderers:
                renderers[name].close()
            prepared[name].stack_path.unlink(missing_ok=True)
    return GridResult(tuple(steps), tuple(names), layout.size, layout.grid)


def _panel(name: str, j: int, snaps: Sequence[Snapshot], prepared: PreparedLayer, position: Mapping[int, int],
           stack: np.ndarray, renderer: HeatmapRenderer) -> np.ndarray:
    note = prepared.info.note()
    if j < 0:
        blank = np.full(prepared.info.grid, np.nan)
        return renderer.render(blank, f"{name}  ·  no snapshot until step {snaps[0].step}")
    k = position[j]
    title = f"{name}  ·  step {snaps[j].step}" + (f"\n{note}" if note else "")
    return renderer.render(np.asarray(stack[k]), title, prepared.limits(k))


def _palette(seeds: Sequence[np.ndarray]) -> np.ndarray:
    # Every layer's colours must share one 256-colour GIF palette: keep an even sample of each.
    unique = [np.unique(s.reshape(-1, 3), axis=0) for s in seeds]
    budget = max(16, 224 // max(1, len(unique)))
    picked = [u[np.linspace(0, len(u) - 1, min(len(u), budget)).round().astype(int)] for u in unique]
    return np.unique(np.vstack(picked), axis=0)[:224]


class _Layout:
    """Places panels of fixed sizes in rows under a header; every frame has the same size."""

    def __init__(self, sizes: Sequence[tuple[int, int]], header_lines: int) -> None:
        from matplotlib import font_manager
        from PIL import ImageFont

        count = len(sizes)
        per_row = count if count <= 4 else math.ceil(math.sqrt(count))
        self._rows = [list(range(r, min(count, r + per_row))) for r in range(0, count, per_row)]
        self._font: Any = ImageFont.truetype(font_manager.findfont("DejaVu Sans"), _HEADER_PT)
        line_h = math.ceil(_HEADER_PT * 1.45)
        self._line_h = line_h
        self._header_h = 10 + header_lines * line_h + 6
        self._offsets: list[tuple[int, int]] = [(0, 0)] * count
        y = self._header_h
        width = 0
        for row in self._rows:
            x = _GAP
            for k in row:
                self._offsets[k] = (x, y)
                x += sizes[k][0] + _GAP
            width = max(width, x)
            y += max(sizes[k][1] for k in row) + _GAP
        width += width % 2  # even sides keep video encoders happy
        y += y % 2
        self.size = (width, y)
        self.grid = (len(self._rows), per_row)

    def compose(self, panels: Sequence[np.ndarray], header: Sequence[str]) -> np.ndarray:
        from PIL import Image, ImageDraw

        width, height = self.size
        canvas = np.full((height, width, 3), 255, dtype=np.uint8)
        for panel, (x, y) in zip(panels, self._offsets, strict=True):
            canvas[y:y + panel.shape[0], x:x + panel.shape[1]] = panel
        image = Image.fromarray(canvas)
        draw = ImageDraw.Draw(image)
        for n, line in enumerate(header):
            draw.text((width / 2, 10 + n * self._line_h), line, fill=(38, 38, 38), font=self._font, anchor="ma")
        return np.asarray(image)
