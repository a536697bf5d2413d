"""All layers side by side in one frame per step (``--grid``).

Layers can have different shapes and different snapshot steps. The montage runs over
the union of every layer's steps; at each step a layer shows its latest snapshot at or
before that step (its last value is held), and a layer that has no snapshot yet is drawn
empty. A panel is redrawn only when its snapshot changes. A header line gives the step,
the frame number and, with ``--caption-metric``, the metric.

Frames keep a size budget (``--grid-max-width``, ``--grid-max-pixels``). While the
layers' own heatmaps fit it, each panel is the layer's heatmap with its own colour scale
and colorbar, drawn by the same renderer as its own GIF. Beyond it, panels are compact
pictures drawn with numpy and Pillow, shrunk to fit: values in the cells, then tick
labels, then per-panel colorbars are dropped as they stop being readable, and panels of
one colormap then share one colour scale shown in the header. Memory then grows with the
frame, not with the number of layers: no figure is kept per layer.
"""

from __future__ import annotations

import bisect
import functools
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

__all__ = ["LEGEND_FILE", "Montage", "aligned_steps"]

#: Beside the montage: what each panel is, with the layers' full names (see :meth:`Montage.legend`).
LEGEND_FILE = "grid-legend.json"

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

    The frame keeps the size budget of ``options.outputs`` (``grid_max_width``,
    ``grid_max_pixels``). While every layer's own heatmap fits it, each panel is that
    heatmap, drawn by the same renderer as the layer's GIF. Otherwise the panels are
    compact pictures of one size that shrink to fit, dropping what cannot be read at
    their size: the values in the cells first, then the tick labels, then each panel's
    colorbar; without colorbars every panel of one colormap shares one colour scale,
    shown in the header. Long layer names are shortened; :meth:`legend` has them in full.

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
        self._compact: dict[str, _CompactPanel] = {}
        self._stacks: dict[str, np.ndarray] = {}
        self._shared: dict[str, tuple[float, float, int]] = {}
        self.size = (0, 0)
        self.panels = (0, 0)
        self.palette_colors = np.zeros((0, 3), np.uint8)
        #: ``full`` (every layer's own heatmap) or ``compact`` (shrunk panels), decided on entering.
        self.mode = "full"
        #: What the panels show in compact mode: ``annotations``, ``ticks``, ``colorbars`` (dropped in that order).
        self.features: tuple[str, ...] = ()

    def __enter__(self) -> Montage:
        from mlflow_weightviz.grid import prepare_layer

        try:
            per_layer = self._options.replace(max_frames=None)
            for name, snaps in self._layers.items():
                needed = sorted({j for j in self._shown[name] if j >= 0})
                self._prepared[name] = prepare_layer(name, [snaps[j] for j in needed], per_layer, self._workdir)
                self._position[name] = {j: k for k, j in enumerate(needed)}
                self._stacks[name] = self._prepared[name].stack()
            header_lines = 2 if self._caption is not None else 1
            max_w, max_px = self._options.outputs.grid_max_width, self._options.outputs.grid_max_pixels
            if not self._full_layout(header_lines, max_w, max_px):
                self._compact_layout(header_lines, max_w, max_px)
        except BaseException:
            self.close()
            raise
        self.size, self.panels = self._layout.size, self._layout.grid
        return self

    def _full_layout(self, header_lines: int, max_w: int, max_px: int) -> bool:
        """Each layer's own heatmap renderer, if the panels fit the budget (built only until they do not)."""
        from mlflow_weightviz.frames import cell_size

        # A lower bound of the panels' area (their cells alone), so a grid that cannot fit builds no figure.
        look = self._options.look
        cells = 0
        for name in self.names:
            prepared = self._prepared[name]
            rows, cols = prepared.info.grid
            cell = cell_size((rows, cols), text_chars=_value_chars(prepared), annotate=look.annotate, dpi=look.dpi)[0]
            cells += rows * cols * cell * cell
        if cells > max_px:
            return False
        area = 0
        for name in self.names:
            renderer = self._make_renderer(self._prepared[name])
            self._renderers[name] = renderer
            area += (renderer.size[0] + _GAP) * (renderer.size[1] + _GAP)
            if area > max_px or renderer.size[0] + 2 * _GAP > max_w:
                break
        else:
            layout = _Layout([self._renderers[n].size for n in self.names], header_lines=header_lines)
            if layout.size[0] <= max_w and layout.size[0] * layout.size[1] <= max_px:
                self._layout = layout
                self.palette_colors = _palette([self._renderers[n].palette_colors() for n in self.names])
                return True
        for name in list(self._renderers):
            self._renderers.pop(name).close()
        return False

    def _compact_layout(self, header_lines: int, max_w: int, max_px: int) -> None:
        look = self._options.look
        kinds = {name: look.cmap or ("RdBu_r" if p.diverging else "YlGn") for name, p in self._prepared.items()}
        grids = [self._prepared[n].info.grid for n in self.names]
        prepared = [self._prepared[n] for n in self.names]
        label_chars = max(len(str(p.info.row_index(p.info.grid[0] - 1))) for p in prepared)

        def height(width: int) -> int:  # a panel's height at this width: its features' margins and the cells
            left, top, right = _margins(_features(width, grids, prepared, look.annotate), label_chars, 7)
            room_w = width - left - right - 2
            return _TITLE_PX + 6 + top + 2 + max(1, max(round(room_w * min(2.0, r / c)) for r, c in grids))

        # The header gets a line of shared colour scales if the panels turn out too small for colorbars.
        shared_h = _SCALE_ROW_H * len(set(kinds.values()))
        per_row, box = _plan(len(self.names), max_w, max_px, _header_height(header_lines) + shared_h, height)
        self.features = _features(box[0], grids, prepared, look.annotate)
        if "colorbars" not in self.features:
            for kind in dict.fromkeys(kinds.values()):
                members = [self._prepared[n] for n in self.names if kinds[n] == kind]
                lo = min(p.vmin for p in members)
                hi = max(p.vmax for p in members)
                if all(p.diverging for p in members):
                    m = max(abs(lo), abs(hi))
                    lo, hi = -m, m
                self._shared[kind] = (lo, hi, len(members))
        labels = _panel_labels(list(self.names), box[0])
        for name, label in zip(self.names, labels, strict=True):
            shared = self._shared.get(kinds[name])
            self._compact[name] = _CompactPanel(self._prepared[name], label, box, kinds[name], self.features,
                                                shared[:2] if shared else None)
        self._layout = _Layout([box] * len(self.names), header_lines=header_lines,
                               extra_header=shared_h if self._shared else 0, per_row=per_row)
        self.mode = "compact"
        self.palette_colors = _palette([_lut(kind) for kind in dict.fromkeys(kinds.values())])

    def __exit__(self, *exc: object) -> None:
        self.close()

    def legend(self) -> dict[str, Any]:
        """What each panel is: full layer names, shapes and scales, and where it sits in the frame."""
        panels = []
        for k, name in enumerate(self.names):
            prepared = self._prepared[name]
            x, y = self._layout.offsets[k]
            compact = self._compact.get(name)
            panels.append({
                "index": k, "layer": name, "label": compact.label if compact else shorten(name, NAME_CHARS),
                "shape": list(prepared.info.shape), "grid": list(prepared.info.grid), "note": prepared.info.note(),
                "cmap": compact.kind if compact else None,
                "scale": list(compact.shared or (prepared.vmin, prepared.vmax)) if compact
                else [prepared.vmin, prepared.vmax],
                "row": k // self._layout.grid[1], "col": k % self._layout.grid[1],
                "box": [x, y, *(self._layout.sizes[k])]})
        return {"frame_size": list(self.size), "mode": self.mode, "features": list(self.features),
                "shared_scales": {kind: {"min": lo, "max": hi, "layers": count}
                                  for kind, (lo, hi, count) in self._shared.items()},
                "steps": list(self.steps), "panels": panels}

    def frames(self) -> Iterator[tuple[int, np.ndarray]]:
        """Every frame's step and (H, W, 3) uint8 picture, in order; a panel is redrawn only when it changes."""
        cache: dict[str, tuple[int, np.ndarray]] = {}
        for i, step in enumerate(self.steps):
            panels = []
            for name in self.names:
                j = self._shown[name][i]
                if name not in cache or cache[name][0] != j:
                    if name in self._compact:
                        panel = self._compact[name].draw(j, self._layers[name], self._position[name],
                                                         self._stacks[name])
                    else:
                        panel = _panel(name, j, self._layers[name], self._prepared[name], self._position[name],
                                       self._stacks[name], self._renderers[name])
                    cache[name] = (j, panel)
                panels.append(cache[name][1])
            header = [f"step {step}  ·  frame {i + 1}/{len(self.steps)}  ·  {len(self.names)} layers"]
            if self._caption is not None:
                header.append(self._caption(step))
            yield step, self._layout.compose(panels, header, self._shared)

    def close(self) -> None:
        """Release the renderers and remove the stacks."""
        for name, prepared in self._prepared.items():
            self._stacks.pop(name, None)
            if name in self._renderers:
                self._renderers.pop(name).close()
            prepared.stack_path.unlink(missing_ok=True)
        self._compact.clear()
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


# ------------------------------------------------------------------ compact panels

_SCALE_ROW_H = 24  # one shared colour scale in the header
_TITLE_PX = 11  # panel titles
_TICK_PX = 10  # tick and colorbar labels
_VALUE_PX = 12  # values in the cells (9 pt at 100 dpi, as in the layer GIFs)
_MAX_PANEL = 560  # compact panels never grow beyond this side
_FEATURE_PANEL = {"ticks": 200, "colorbars": 120}  # smallest panel side that still has them


def _header_height(lines: int) -> int:
    return 10 + lines * math.ceil(_HEADER_PT * 1.45) + 6


def _plan(count: int, max_w: int, max_px: int, header_h: int, height: Callable[[int], int]) -> tuple[
        int, tuple[int, int]]:
    """Panels per row and the panel size ``(w, height(w))`` that make the panels widest within the budget."""
    best = (1, (0, 0))
    # No much taller than the budget's own shape (2048 × 4 MP: about 1950), so the frame keeps a screen's shape.
    max_h = max(max_px // max_w * 5 // 4, min(max_w, 720))
    for per_row in range(1, count + 1):
        rows = math.ceil(count / per_row)
        w = min(_MAX_PANEL, (max_w - _GAP * (per_row + 1)) // per_row)
        while w > 8:
            width = per_row * (w + _GAP) + _GAP
            total_h = header_h + rows * (height(w) + _GAP) + _GAP
            if width * total_h <= max_px and total_h <= max_h:
                break
            w -= max(1, w // 50)
        if w > best[1][0]:
            best = (per_row, (w, height(w)))
    per_row, (w, h) = best
    if w <= 8:
        msg = (f"--grid cannot fit {count} panels into {max_w} pixels wide and {max_px} pixels: "
               "raise --grid-max-width/--grid-max-pixels or pick layers with --layer")
        from mlflow_weightviz.errors import UsageError

        raise UsageError(msg)
    return per_row, (w, h)


def _value_chars(prepared: PreparedLayer) -> int:
    from mlflow_weightviz.grid import format_value

    samples = [prepared.vmin, prepared.vmax, -abs(prepared.vmax), -abs(prepared.vmin)]
    return max(len(format_value(prepared.fmt, v)) for v in samples)


def _features(width: int, grids: Sequence[tuple[int, int]], prepared: Sequence[PreparedLayer],
              annotate: bool | None) -> tuple[str, ...]:
    """What panels ``width`` pixels wide can show; dropped as they shrink: annotations, tick labels, colorbars."""
    out = [f for f in ("ticks", "colorbars") if width >= _FEATURE_PANEL[f]]
    if annotate is not False and "ticks" in out:
        # values only where every panel's cells are wide enough for its longest value
        left, _, right = _margins(out, 4, 7)
        room = width - left - right
        cells = [room / max(r, c) for r, c in grids]
        if all(cell >= chars * _VALUE_PX * 0.62 + 8 for cell, chars in
               zip(cells, (_value_chars(p) for p in prepared), strict=True)):
            out.insert(0, "annotations")
    return tuple(out)


def _margins(features: Sequence[str], label_chars: int, bar_chars: int) -> tuple[int, int, int]:
    """Left, top and right margins of a compact panel's cells for its features."""
    char = _TICK_PX * 0.62
    left = math.ceil(label_chars * char + 6) if "ticks" in features else 0
    top = _TICK_PX + 6 if "ticks" in features else 0
    right = math.ceil(6 + 8 + 4 + bar_chars * char) if "colorbars" in features else 0
    return left, top, right


def _panel_labels(names: list[str], width: int) -> list[str]:
    from mlflow_weightviz.outputs.overview import short_names

    return short_names(names, max(4, int((width - 4) / (_TITLE_PX * 0.58))))


@functools.lru_cache(maxsize=16)
def _lut(cmap: str) -> np.ndarray:
    """256 colours of ``cmap`` as (256, 3) uint8."""
    import matplotlib as mpl

    return np.asarray(np.round(mpl.colormaps[cmap](np.linspace(0, 1, 256))[:, :3] * 255), dtype=np.uint8)


@functools.lru_cache(maxsize=4)
def _font(px: int) -> Any:
    from matplotlib import font_manager
    from PIL import ImageFont

    return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), px)


_NAN_RGB = (128, 128, 128)


def _colours(values: np.ndarray, lo: float, hi: float, lut: np.ndarray) -> np.ndarray:
    """Each value's colour through ``lut`` on the scale ``lo``…``hi``; NaN and ±inf grey."""
    ok = np.isfinite(values)
    span = hi - lo if hi > lo else 1.0
    idx = np.clip(np.where(ok, (values - lo) / span, 0.0) * 255.0 + 0.5, 0, 255).astype(np.intp)
    rgb = lut[idx]
    rgb[~ok] = _NAN_RGB
    return rgb


class _CompactPanel:
    """One layer's small panel: a title, the cells, and what fits of tick labels, colorbar and values."""

    def __init__(self, prepared: PreparedLayer, label: str, box: tuple[int, int], kind: str,
                 features: Sequence[str], shared: tuple[float, float] | None) -> None:
        self.prepared, self.label, self.box, self.kind = prepared, label, box, kind
        self.features, self.shared = tuple(features), shared
        self._lut = _lut(kind)
        rows, cols = prepared.info.grid
        self._row_labels = [str(prepared.info.row_index(i)) for i in range(rows)]
        self._col_labels = [str(prepared.info.col_index(j)) for j in range(cols)]
        label_chars = max(len(self._row_labels[0]), len(self._row_labels[-1]))
        left, top, right = _margins(self.features, label_chars, 7)
        w, h = box
        room_w, room_h = w - left - right - 2, h - _TITLE_PX - 6 - top - 2
        self._scale = max(1e-9, min(room_w / cols, room_h / rows))
        self._grid_w = max(1, min(room_w, round(cols * self._scale)))
        self._grid_h = max(1, min(room_h, round(rows * self._scale)))
        self._x0 = left + max(0, (room_w - self._grid_w) // 2)
        self._y0 = _TITLE_PX + 6 + top
        # Which cell each pixel of the grid shows (nearest), and the white lines between big cells.
        self._yi = np.minimum(rows - 1, (np.arange(self._grid_h) * rows) // self._grid_h)
        self._xi = np.minimum(cols - 1, (np.arange(self._grid_w) * cols) // self._grid_w)
        self._lines = self._scale >= 6

    def draw(self, j: int, snaps: Sequence[Snapshot], position: Mapping[int, int], stack: np.ndarray) -> np.ndarray:
        """The panel for snapshot ``j`` of the layer (-1: none yet) as (h, w, 3) uint8."""
        from PIL import Image, ImageDraw

        w, h = self.box
        prepared = self.prepared
        if j < 0:
            values = np.full(prepared.info.grid, np.nan)
            limits = (prepared.vmin, prepared.vmax)
        else:
            k = position[j]
            values = np.asarray(stack[k], dtype=np.float64)
            limits = prepared.limits(k)
        lo, hi = self.shared if self.shared is not None else limits
        canvas = np.full((h, w, 3), 255, np.uint8)
        cells = _colours(values, lo, hi, self._lut)
        block = cells[self._yi][:, self._xi]
        if self._lines:
            block[np.flatnonzero(np.diff(self._yi)) + 1] = 255
            block[:, np.flatnonzero(np.diff(self._xi)) + 1] = 255
        canvas[self._y0:self._y0 + self._grid_h, self._x0:self._x0 + self._grid_w] = block
        if "colorbars" in self.features:
            bx = self._x0 + self._grid_w + 6
            ramp = self._lut[np.linspace(255, 0, self._grid_h).round().astype(np.intp)]
            canvas[self._y0:self._y0 + self._grid_h, bx:bx + 8] = ramp[:, None, :]
        image = Image.fromarray(canvas)
        draw = ImageDraw.Draw(image)
        title = self.label if j >= 0 else f"{self.label} · none yet"
        draw.text((w / 2, 2), title, fill=(38, 38, 38), font=_font(_TITLE_PX), anchor="ma")
        small = _font(_TICK_PX)
        if "colorbars" in self.features:
            bx = self._x0 + self._grid_w + 6 + 8 + 3
            draw.text((bx, self._y0), f"{hi:.2g}", fill=(38, 38, 38), font=small, anchor="lt")
            draw.text((bx, self._y0 + self._grid_h), f"{lo:.2g}", fill=(38, 38, 38), font=small, anchor="lb")
        if "ticks" in self.features:
            self._ticks(draw, small)
        if "annotations" in self.features:
            self._values(draw, values, cells)
        return np.asarray(image)

    def _ticks(self, draw: Any, font: Any) -> None:
        rows, cols = self.prepared.info.grid
        row_step = max(1, math.ceil(_TICK_PX * 1.4 / self._scale))
        col_step = max(1, math.ceil((max(map(len, self._col_labels)) * _TICK_PX * 0.62 + 6) / self._scale))
        for i in range(0, rows, row_step):
            y = self._y0 + (i + 0.5) * self._scale
            draw.text((self._x0 - 3, y), self._row_labels[i], fill=(38, 38, 38), font=font, anchor="rm")
        for c in range(0, cols, col_step):
            x = self._x0 + (c + 0.5) * self._scale
            draw.text((x, self._y0 - 2), self._col_labels[c], fill=(38, 38, 38), font=font, anchor="mb")

    def _values(self, draw: Any, values: np.ndarray, cells: np.ndarray) -> None:
        from mlflow_weightviz.frames import format_value, text_is_dark

        dark = text_is_dark(cells.astype(np.float64) / 255.0)
        font = _font(_VALUE_PX)
        rows, cols = values.shape
        for i in range(rows):
            for c in range(cols):
                x = self._x0 + (c + 0.5) * self._scale
                y = self._y0 + (i + 0.5) * self._scale
                draw.text((x, y), format_value(self.prepared.fmt, float(values[i, c])), font=font, anchor="mm",
                          fill=(38, 38, 38) if dark[i, c] else (255, 255, 255))


def _palette(seeds: Sequence[np.ndarray]) -> np.ndarray:
    # Every layer's colours must share one 256-colour GIF palette: keep an even sample of each.
    unique = [np.unique(s.reshape(-1, 3), axis=0) for s in seeds]
    budget = max(16, 224 // max(1, len(unique)))
    picked = [u[np.linspace(0, len(u) - 1, min(len(u), budget)).round().astype(int)] for u in unique]
    return np.unique(np.vstack(picked), axis=0)[:224]


class _Layout:
    """Places panels of fixed sizes in rows under a header; every frame has the same size."""

    def __init__(self, sizes: Sequence[tuple[int, int]], header_lines: int, *, extra_header: int = 0,
                 per_row: int | None = None) -> None:
        count = len(sizes)
        if per_row is None:
            per_row = count if count <= 4 else math.ceil(math.sqrt(count))
        self._rows = [list(range(r, min(count, r + per_row))) for r in range(0, count, per_row)]
        self._font: Any = _font(_HEADER_PT)
        line_h = math.ceil(_HEADER_PT * 1.45)
        self._line_h = line_h
        self._header_lines = header_lines
        self._header_h = _header_height(header_lines) + extra_header
        self.sizes = list(sizes)
        self.offsets: list[tuple[int, int]] = [(0, 0)] * count
        y = self._header_h
        width = 0
        for row in self._rows:
            x = _GAP
            for k in row:
                self.offsets[k] = (x, y)
                x += sizes[k][0] + _GAP
            width = max(width, x)
            y += max(sizes[k][1] for k in row) + _GAP
        width += width % 2  # even sides keep video encoders happy
        y += y % 2
        self.size = (width, y)
        self.grid = (len(self._rows), per_row)

    def compose(self, panels: Sequence[np.ndarray], header: Sequence[str],
                shared: Mapping[str, tuple[float, float, int]] | None = None) -> np.ndarray:
        from PIL import Image, ImageDraw

        width, height = self.size
        canvas = np.full((height, width, 3), 255, dtype=np.uint8)
        for panel, (x, y) in zip(panels, self.offsets, strict=True):
            canvas[y:y + panel.shape[0], x:x + panel.shape[1]] = panel
        image = Image.fromarray(canvas)
        draw = ImageDraw.Draw(image)
        for n, line in enumerate(header):
            draw.text((width / 2, 10 + n * self._line_h), line, fill=(38, 38, 38), font=self._font, anchor="ma")
        # Panels too small for colorbars: one scale per colormap, said so under the header.
        y = _header_height(self._header_lines) - 4
        small = _font(_TICK_PX + 1)
        for kind, (lo, hi, count) in (shared or {}).items():
            bar_w = min(200, width // 5)
            lo_t, hi_t = f"{lo:.3g}", f"{hi:.3g}"
            note = f"one colour scale for all {count} {kind} panels (too small for their own)"
            if small.getlength(lo_t + hi_t + note) + bar_w + 40 > width:
                note = f"shared scale, {count} panels"
            total = small.getlength(lo_t) + 4 + bar_w + 4 + small.getlength(hi_t) + 12 + small.getlength(note)
            x = max(2.0, (width - total) / 2)
            draw.text((x, y + 10), lo_t, fill=(38, 38, 38), font=small, anchor="lm")
            x += small.getlength(lo_t) + 4
            ramp = _lut(kind)[np.linspace(0, 255, bar_w).round().astype(np.intp)]
            image.paste(Image.fromarray(np.repeat(ramp[None], 12, axis=0)), (round(x), y + 4))
            x += bar_w + 4
            draw.text((x, y + 10), hi_t, fill=(38, 38, 38), font=small, anchor="lm")
            x += small.getlength(hi_t) + 12
            draw.text((x, y + 10), note, fill=(85, 85, 85), font=small, anchor="lm")
            y += _SCALE_ROW_H
        return np.asarray(image)
