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
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlflow_weightviz.frames import NAME_CHARS, shorten
from mlflow_weightviz.grid import PreparedLayer, sample_indices
from mlflow_weightviz.options import RenderOptions

if TYPE_CHECKING:
    from mlflow_weightviz.frames import HeatmapRenderer
    from mlflow_weightviz.snapshots import Snapshot

__all__ = ["Montage", "aligned_steps"]

_GAP = 12  # pixels between panels
_HEADER_PT = 15


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


class Montage:
    """All layers side by side: a frame source for the writers, one frame per step.

    Use it as a context manager; the layers' stacks and renderers are released at the end::

        with Montage(layers, options, workdir=tmp, make_renderer=build) as montage:
            for step, rgb in montage.frames():
                ...

    Args:
        layers: Snapshots per layer, each sorted by step.
        options: Drawing options; ``max_frames`` samples the union of steps.
        workdir: Folder for the layers' temporary stacks.
        make_renderer: Builds a layer's heatmap renderer (the same one its own GIF uses).
        caption: Text for a frame's step, shown under the header (the caption metric).
    """

    def __init__(self, layers: Mapping[str, Sequence[Snapshot]], options: RenderOptions, *, workdir: Path,
                 make_renderer: Callable[[PreparedLayer], HeatmapRenderer],
                 caption: Callable[[int], str] | None = None) -> None:
        self._layers = layers
        self._options = options
        self._workdir = workdir
        self._make_renderer = make_renderer
        self._caption = caption
        steps, self._shown = aligned_steps(layers, options.max_frames)
        self.steps = tuple(steps)
        self.names = tuple(layers)
        self._prepared: dict[str, PreparedLayer] = {}
        self._position: dict[str, dict[int, int]] = {}
        self._renderers: dict[str, HeatmapRenderer] = {}
        self._stacks: dict[str, np.ndarray] = {}
        self.size = (0, 0)
        self.panels = (0, 0)
        self.palette_colors = np.zeros((0, 3), np.uint8)

    def __enter__(self) -> Montage:
        from mlflow_weightviz.grid import prepare_layer

        try:
            per_layer = self._options.replace(max_frames=None)
            for name, snaps in self._layers.items():
                needed = sorted({j for j in self._shown[name] if j >= 0})
                self._prepared[name] = prepare_layer(name, [snaps[j] for j in needed], per_layer, self._workdir)
                self._position[name] = {j: k for k, j in enumerate(needed)}
                self._renderers[name] = self._make_renderer(self._prepared[name])
                self._stacks[name] = self._prepared[name].stack()
            self._layout = _Layout([self._renderers[n].size for n in self.names],
                                   header_lines=2 if self._caption is not None else 1)
        except BaseException:
            self.close()
            raise
        self.size, self.panels = self._layout.size, self._layout.grid
        self.palette_colors = _palette([self._renderers[n].palette_colors() for n in self.names])
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def frames(self) -> Iterator[tuple[int, np.ndarray]]:
        """Every frame's step and (H, W, 3) uint8 picture, in order; a panel is redrawn only when it changes."""
        cache: dict[str, tuple[int, np.ndarray]] = {}
        for i, step in enumerate(self.steps):
            panels = []
            for name in self.names:
                j = self._shown[name][i]
                if name not in cache or cache[name][0] != j:
                    cache[name] = (j, _panel(name, j, self._layers[name], self._prepared[name],
                                             self._position[name], self._stacks[name], self._renderers[name]))
                panels.append(cache[name][1])
            header = [f"step {step}  ·  frame {i + 1}/{len(self.steps)}  ·  {len(self.names)} layers"]
            if self._caption is not None:
                header.append(self._caption(step))
            yield step, self._layout.compose(panels, header)

    def close(self) -> None:
        """Release the renderers and remove the stacks."""
        for name, prepared in self._prepared.items():
            self._stacks.pop(name, None)
            if name in self._renderers:
                self._renderers.pop(name).close()
            prepared.stack_path.unlink(missing_ok=True)
        self._prepared.clear()


def _panel(name: str, j: int, snaps: Sequence[Snapshot], prepared: PreparedLayer, position: Mapping[int, int],
           stack: np.ndarray, renderer: HeatmapRenderer) -> np.ndarray:
    note = prepared.info.note()
    name = shorten(name, NAME_CHARS)  # the full name is in the tags and the player
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
