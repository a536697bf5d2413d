"""The fast path of the heatmap renderer: frames composed with numpy from captured parts.

matplotlib stays the source of truth for the look, but drawing ~100 texts per frame
with it costs hundreds of milliseconds. So only the first frame uses matplotlib's full
drawing, to capture the parts that never change (tick labels, grid, colorbar, axes) and
where each cell lies; every frame after that is composed with numpy:

* cell colours: the colormap applied to the values, spread over each cell's pixels;
* grid lines: the static drawing over black and over white cells gives each pixel's
  coverage, so a grid pixel over any cell colour is ``black + (white - black) * colour``;
* value texts: the glyphs matplotlib's Agg backend would draw, rasterised once by
  matplotlib's own FreeType engine at the same sub-pixel positions (each string is
  placed with matplotlib's own text layout), blended with the text colour;
* title (and the colorbar when the colour scale changes): drawn by matplotlib itself,
  on their own, into their part of the frame.

Reproducing Agg's text pixel for pixel takes matplotlib internals that have no public
equivalent: ``FT2Font._layout`` (glyphs and pen positions, with font fallback),
``FT2Font._set_transform`` and ``FT2Font._render_glyph`` (one glyph at a 1/64 px
offset, as Agg draws it since 3.11), ``Text._get_layout`` (where each line of a text
goes) and ``FontManager._find_fonts_by_props`` (the font list Agg uses). They are used
in this module only, and only when :func:`available` says the installed matplotlib is in
:data:`SUPPORTED`; otherwise the renderer draws every frame with matplotlib's public API.
"""

from __future__ import annotations

import importlib
import math
import re
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from mlflow_weightviz.frames import HeatmapRenderer

__all__ = ["SUPPORTED", "Composer", "available", "supported"]

#: matplotlib versions ``(from, below)`` whose Agg text drawing the composer reproduces pixel for
#: pixel: 3.11 is the first to draw text glyph by glyph at 1/64 px. Widen it only once
#: tests/test_glyphs.py passes on the new version.
SUPPORTED: tuple[tuple[int, int], tuple[int, int]] = ((3, 11), (3, 12))

#: The private matplotlib names the composer calls: module, object, attributes.
_PRIVATE = (
    ("matplotlib.ft2font", "FT2Font", ("_layout", "_render_glyph", "_set_transform")),
    ("matplotlib.text", "Text", ("_get_layout",)),
    ("matplotlib.font_manager", "fontManager", ("_find_fonts_by_props",)),
)

_DIGITS_TO_ZERO = str.maketrans("123456789", "000000000")


def supported(version: str) -> bool:
    """Whether a matplotlib version string, e.g. ``"3.11.2"``, lies in :data:`SUPPORTED`."""
    match = re.match(r"(\d+)\.(\d+)", version)
    if match is None:
        return False
    low, below = SUPPORTED
    return low <= (int(match[1]), int(match[2])) < below


def available(version: str | None = None) -> bool:
    """Whether the fast path can run: a supported matplotlib that has every private name it calls.

    Args:
        version: The matplotlib version to judge; ``None`` is the installed one.
    """
    import matplotlib

    if not supported(matplotlib.__version__ if version is None else version):
        return False
    return all(hasattr(getattr(importlib.import_module(module), owner), name)
               for module, owner, names in _PRIVATE for name in names)


class _TextLayout:
    """Where matplotlib puts the glyphs of one string, relative to the text's anchor point."""

    __slots__ = ("dx", "fonts", "gids", "x_off", "y_off")

    def __init__(self, x_off: float, y_off: float, dx: np.ndarray, fonts: list[Any], gids: list[int]) -> None:
        self.x_off = x_off
        self.y_off = y_off
        self.dx = dx
        self.fonts = fonts
        self.gids = gids


class Composer:
    """The fast path of :class:`HeatmapRenderer`: frames composed from captured parts.

    Built from the renderer's figure with three matplotlib draws (cells black, cells
    white, cells coloured by their index) that give the static picture, each pixel's
    grid coverage and the cells' pixel extents.
    """

    def __init__(self, r: HeatmapRenderer) -> None:
        from matplotlib.backends.backend_agg import get_hinting_flag
        from matplotlib.font_manager import fontManager, get_font

        self.r = r
        canvas, image = r._canvas, r._image
        rows, cols = r.grid
        width, height = r.size
        self.width, self.height = width, height

        # One full draw with black cells. White cells: the axes' own white background with only the
        # grid and tick lines drawn again over it. Which cell each pixel shows: the image drawn again
        # with index-coded cells, clipped to one row and one column of pixels through the cells.
        image.set_data(np.zeros((rows, cols, 3), np.uint8))
        black = self._draw()
        self.renderer: Any = canvas.get_renderer()  # type: ignore[no-untyped-call]
        self.agg = np.asarray(self.renderer.buffer_rgba())
        box = r._ax.get_window_extent(self.renderer)
        ay0, ay1 = max(0, height - math.ceil(box.y1) - 2), min(height, height - math.floor(box.y0) + 2)
        ax0, ax1 = max(0, math.floor(box.x0) - 2), min(width, math.ceil(box.x1) + 2)
        white = black.copy()
        white[ay0:ay1, ax0:ax1] = self._redraw_cells(ay0, ay1, ax0, ax1)
        centres = r._ax.transData.transform(np.column_stack([np.tile(np.arange(cols), rows),
                                                             np.repeat(np.arange(rows), cols)]).astype(float))
        self.posx, self.posy = centres[:, 0].copy(), centres[:, 1].copy()
        mid_x = min(max(int(self.posx[0]), ax0), ax1 - 1)
        mid_y = min(max(height - 1 - int(self.posy[0]), ay0), ay1 - 1)
        k = np.arange(rows * cols, dtype=np.int64).reshape(rows, cols)
        image.set_data(np.stack([k & 255, (k >> 8) & 255, (k >> 16) & 255], axis=-1).astype(np.uint8))
        coded_row = self._scan_cells(ay0, ay1, ax0, ax1, (ax0, height - mid_y - 1, ax1, height - mid_y))[mid_y, :]
        coded_col = self._scan_cells(ay0, ay1, ax0, ax1, (mid_x, height - ay1, mid_x + 1, height - ay0))[:, mid_x]
        image.set_data(np.ma.masked_all(r.grid))  # type: ignore[no-untyped-call]
        self.agg[ay0:ay1, ax0:ax1, :3] = black[ay0:ay1, ax0:ax1]

        # The cells' region: where the picture depends on the cell colours at all.
        touched = (black[ay0:ay1, ax0:ax1] != white[ay0:ay1, ax0:ax1]).any(axis=2)
        ys, xs = np.flatnonzero(touched.any(axis=1)) + ay0, np.flatnonzero(touched.any(axis=0)) + ax0
        self.y0, self.y1, self.x0, self.x1 = int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1
        col_of = self._cell_runs(coded_row[self.x0:self.x1], rows * cols, lambda c: c % cols, lambda c: c < cols)
        row_of = self._cell_runs(coded_col[self.y0:self.y1], rows * cols, lambda c: c // cols,
                                 lambda c: c % cols == 0)
        self.col_counts = np.bincount(col_of, minlength=cols)
        self.row_counts = np.bincount(row_of, minlength=rows)

        # Pixels of the region that are not plain cell colour: grid lines and their edges.
        region_b = black[self.y0:self.y1, self.x0:self.x1]
        region_w = white[self.y0:self.y1, self.x0:self.x1]
        mixed = ~((region_b == 0).all(axis=2) & (region_w == 255).all(axis=2))
        my, mx = np.nonzero(mixed)
        at = (my + self.y0) * width + (mx + self.x0)
        base = region_b[my, mx]
        span = region_w[my, mx].astype(np.int16) - base
        fixed = (span == 0).all(axis=1)  # opaque grid pixels: the same over any cell colour
        self.fixed_at = ((at[fixed] * 3)[:, None] + np.arange(3)).ravel()
        self.fixed_value = base[fixed].ravel()
        self.mixed_at = (at[~fixed] * 3)[:, None] + np.arange(3)
        self.mixed_cell = (row_of[my] * cols + col_of[mx])[~fixed]
        self.mixed_base = base[~fixed].astype(np.uint16)
        # For frames composed as palette indices: each grid pixel's blend as one of a few patterns.
        self.fixed_px = at[fixed]
        self.mixed_px = at[~fixed]
        patterns, inverse = np.unique(np.hstack([base[~fixed], span[~fixed]]).astype(np.int16).reshape(-1, 6),
                                      axis=0, return_inverse=True)
        self.pattern_base = patterns[:, :3].astype(np.int32)
        self.pattern_span = patterns[:, 3:].astype(np.int32)
        self.mixed_pattern = inverse.reshape(-1).astype(np.intp)
        self.mixed_span = span[~fixed].astype(np.uint16)
        self.row_edges = np.concatenate([[0], np.cumsum(self.row_counts)]) + self.y0

        self.static = black  # outside the cells' region every draw is the same
        self.frame = black.copy()
        self.limits = r._limits
        self.text_box: tuple[int, int, int, int] | None = None
        #: Boxes ``(y0, y1, x0, x1)`` outside which the last frame equals the one before; None: anywhere.
        self.changed: list[tuple[int, int, int, int]] | None = None
        self.started = False
        self.colours = np.zeros((rows, cols, 3), np.uint8)  # the last frame's cell colours
        #: The last frame's value-text passes: pixels and their packed colours, in drawing order.
        self.glyph_passes: list[tuple[np.ndarray, np.ndarray]] = []
        self.index_quantizer: Any = None
        self.fixed_index = np.zeros(0, np.uint8)
        self.pattern_columns: dict[int, np.ndarray] = {}

        # Title: its glyphs composed like the values' (matplotlib's layout and FreeType engine),
        # into its own band restored to the background first.
        from matplotlib.colors import to_rgb

        self.hinting = get_hinting_flag()  # type: ignore[no-untyped-call]
        self.dpi = float(r._fig.dpi)
        title_prop = r._title.get_fontproperties()
        self.title_font: Any = get_font(fontManager._find_fonts_by_props(title_prop))
        self.title_size = float(title_prop.get_size_in_points())
        self.title_anchor = tuple(float(v) for v in r._title.get_transform().transform(r._title.get_position()))
        self.title_rgb = (np.array(to_rgb(r._title.get_color())) * 255).round().astype(np.uint16)
        self.title_layouts: dict[str, list[tuple[float, float, np.ndarray, list[int]]] | None] = {}
        self.title_glyphs: dict[tuple[int, int, int], tuple[np.ndarray, int, int]] = {}
        self.title_gids: dict[str, int] = {}
        r._title.set_text("\n".join(["Mg"] * r._title_lines))
        self.title_rows = (0, 0)
        self.title_box = (0, 0, 0, 0)  # the part of the title band the last frame drew again
        self.title_placed: list[tuple[int, int, np.ndarray, tuple[int, int, int]]] | None = None
        self._title_band(r)

        # Colorbar: redrawn by matplotlib when a frame brings a new colour scale.
        # It is always drawn on its own, so a frame's pixels never depend on the frames before.
        bbox = r._cax.get_tightbbox(self.renderer) or r._cax.get_window_extent(self.renderer)
        pad = math.ceil(r._font_pt * r._fig.dpi / 72)
        self.cbar_box = (max(0, height - math.ceil(bbox.y1) - pad), min(height, height - math.floor(bbox.y0) + pad),
                         max(0, math.floor(bbox.x0) - 2), width)
        self._redraw_colorbar()

        cb = r._cax.get_window_extent(self.renderer)
        self.cax_box: tuple[int, int, int, int] | None = (
            height - math.ceil(cb.y1), height - math.floor(cb.y0), math.floor(cb.x0), math.ceil(cb.x1))

        # Text: matplotlib's FreeType engine draws each glyph at a 1/64 px position.
        self.layouts: dict[str, _TextLayout | None] = {}
        self.exact: dict[str, _TextLayout] = {}
        self.font_ids: dict[int, int] = {}
        self.fonts: list[Any] = []
        self.atlas_keys: dict[tuple[int, int, int, int], int] = {}
        self.glyphs: list[tuple[np.ndarray, int, int]] = []
        self.atlas: np.ndarray = np.zeros((0, 1, 1), np.uint8)
        self.atlas_left = np.zeros(0, np.int64)
        self.atlas_top = np.zeros(0, np.int64)
        self.known_keys = np.zeros(0, np.int64)
        self.known_entries = np.zeros(0, np.int64)
        self.text_rgb = np.array([[255, 255, 255], [0x26, 0x26, 0x26]], np.uint16)  # light, dark
        self.col_groups = 1
        if r._probe is not None:
            prop = r._probe.get_fontproperties()
            self.prop = prop
            self.main_font = get_font(fontManager._find_fonts_by_props(prop))
            # Texts wider than a cell overlap their neighbours; draw those in separate passes.
            samples = r._cell_texts([*self.limits, -abs(self.limits[1]), math.inf, -math.inf])
            widest = max(-2 * self._layout_of(s).x_off for s in samples if s)
            self.col_groups = 2 if widest + 4 > r._cell else 1

    # ------------------------------------------------------------------ setup helpers

    def _draw(self) -> np.ndarray:
        self.r._canvas.draw()  # type: ignore[no-untyped-call]
        return np.asarray(self.r._canvas.buffer_rgba())[..., :3].copy()  # type: ignore[no-untyped-call]

    def _redraw_cells(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """The axes' pixels with white cells.

        The white background, and over it what Axis.draw puts near the cells (grid lines
        and tick marks), in its order.
        """
        r = self.r
        self.agg[y0:y1, x0:x1] = 255
        for axis in (r._ax.xaxis, r._ax.yaxis):
            for tick in [*axis.get_major_ticks(), *axis.get_minor_ticks()]:
                for line in (tick.gridline, tick.tick1line, tick.tick2line):
                    if line.get_visible():
                        r._fig.draw_artist(line)
        return self.agg[y0:y1, x0:x1, :3].copy()

    def _scan_cells(self, y0: int, y1: int, x0: int, x1: int, clip: tuple[int, int, int, int]) -> _CodedView:
        """The index-coded image drawn inside ``clip`` (display coordinates), decoded to cell indices."""
        from matplotlib.transforms import Bbox

        image = self.r._image
        saved = image.get_clip_box()
        self.agg[y0:y1, x0:x1] = 255
        image.set_clip_box(Bbox.from_extents(*clip))
        try:
            self.r._fig.draw_artist(image)
        finally:
            image.set_clip_box(saved)
        return _CodedView(self.agg)


    @staticmethod
    def _cell_runs(line: np.ndarray, count: int, which: Any, valid: Any) -> np.ndarray:
        """Which cell column (or row) each pixel of a scan line belongs to, edges filled by the nearest."""
        ok = (line < count) & valid(np.minimum(line, count - 1))
        out = np.where(ok, which(np.minimum(line, count - 1)), -1)
        idx = np.where(ok, np.arange(line.size), 0)
        np.maximum.accumulate(idx, out=idx)
        out = out[idx]
        first = int(np.flatnonzero(ok)[0])
        out[:first] = out[first]
        if np.any(np.diff(out) < 0):
            msg = "cells are not laid out in order"
            raise RuntimeError(msg)
        return np.asarray(out, dtype=np.int64)

    def _title_band(self, r: HeatmapRenderer) -> None:
        bbox = r._title.get_window_extent(self.renderer)
        top = max(0, self.height - math.ceil(bbox.y1) - 4)
        bottom = min(self.height, self.height - math.floor(bbox.y0) + 4, self.y0)
        self.title_rows = (top, max(top, bottom))
        r._title.set_text("")

    # ------------------------------------------------------------------ per frame

    def render(self, values: np.ndarray, title: str, limits: tuple[float, float] | None) -> np.ndarray:
        r = self.r
        rows, cols = r.grid
        frame = self.frame
        full = not self.started  # the first frame, or a new colour scale, may differ anywhere
        if limits is not None and (float(limits[0]), float(limits[1])) != self.limits:
            self._set_limits(limits)
            full = True
        masked = np.ma.masked_invalid(values)
        normed = r._norm(masked)
        colours = r._cmap(normed, bytes=True)[..., :3]

        changed = [(self.y0, self.y1, self.x0, self.x1)]
        if self.text_box is not None:  # texts drawn outside the cells last frame
            y0, y1, x0, x1 = self.text_box
            frame[y0:y1, x0:x1] = self.static[y0:y1, x0:x1]
            changed.append(self.text_box)
            self.text_box = None
        self._fill(colours)
        self.colours = colours
        self.glyph_passes = []

        if r._probe is not None:
            dark = r._text_dark(normed)
            self._draw_texts(values.ravel().tolist(), dark)
        if full:  # the whole band is drawn again
            self.title_placed = None
        self._draw_title(title)
        changed.append(self.title_box)
        changed.extend(self._texts_outside())
        self.changed = None if full else changed
        self.started = True
        return frame

    def _fill(self, colours: np.ndarray) -> None:
        """Cell colours over the cells' pixels, then the grid-line pixels blended over them."""
        frame = self.frame
        band = np.repeat(colours, self.col_counts, axis=1)
        edges = self.row_edges.tolist()
        for i in range(len(edges) - 1):  # one broadcast copy per row of cells
            frame[edges[i]:edges[i + 1], self.x0:self.x1] = band[i]
        flat = frame.reshape(-1)
        flat[self.fixed_at] = self.fixed_value
        under = colours.reshape(-1, 3).astype(np.uint16)[self.mixed_cell]
        mix = self.mixed_span * under + 128
        flat[self.mixed_at] = (self.mixed_base + ((mix + (mix >> 8)) >> 8)).astype(np.uint8)

    def indices(self, quantize: Any, previous: np.ndarray) -> np.ndarray | None:
        """The last frame as palette indices, equal to ``quantize(frame)``, composed without mapping every pixel.

        The cells' region is composed from what is known about it: each cell's colour is
        mapped once, grid pixels are one of a few blend patterns over the cell colour (a
        table per cell colour), and only the pixels the value texts were drawn on are mapped
        from their RGB. The other changed boxes (title band, texts reaching outside the
        cells) are mapped from the RGB frame. ``None`` when the frame may differ anywhere
        (the caller maps it whole).

        Args:
            quantize: The encoder's :class:`~mlflow_weightviz.encoders.Quantizer`.
            previous: The previous frame's indices, which this frame equals outside :attr:`changed`.
        """
        if self.changed is None:
            return None
        if quantize is not self.index_quantizer:  # tables of another palette
            self.index_quantizer = quantize
            self.fixed_index = np.asarray(quantize(self.fixed_value.reshape(-1, 3)), np.uint8)
            self.pattern_columns = {}
        index = previous.copy()
        flat = index.reshape(-1)
        rows, cols = self.r.grid
        colours = self.colours.reshape(-1, 3)
        cell_index = np.asarray(quantize(colours), np.uint8).reshape(rows, cols)
        band = np.repeat(cell_index, self.col_counts, axis=1)
        edges = self.row_edges.tolist()
        for i in range(len(edges) - 1):
            index[edges[i]:edges[i + 1], self.x0:self.x1] = band[i]
        flat[self.fixed_px] = self.fixed_index
        if self.mixed_px.size:
            keys = (colours[:, 0].astype(np.int64) << 16) | (colours[:, 1].astype(np.int64) << 8) | colours[:, 2]
            distinct, which = np.unique(keys, return_inverse=True)
            table = np.stack([self._pattern_column(int(k), quantize) for k in distinct.tolist()], axis=1)
            flat[self.mixed_px] = table[self.mixed_pattern, which.reshape(-1)[self.mixed_cell]]
        # Text pixels: each pass's blended colours, in order (a pixel drawn twice keeps its last colour).
        # Pixels outside the cells (under the colorbar included) are mapped from the RGB frame below.
        for at, key in self.glyph_passes:
            flat[at] = quantize.lookup(key)
        region = (self.y0, self.y1, self.x0, self.x1)
        for box in self.changed:
            if box == region:
                continue
            for y0, y1, x0, x1 in _outside(box, region):
                index[y0:y1, x0:x1] = quantize(np.ascontiguousarray(self.frame[y0:y1, x0:x1]))
        return index

    def _pattern_column(self, key: int, quantize: Any) -> np.ndarray:
        """Indices of every grid blend pattern over one cell colour (packed 0xRRGGBB)."""
        column = self.pattern_columns.get(key)
        if column is None:
            under = np.array([(key >> 16) & 255, (key >> 8) & 255, key & 255], np.int32)
            mix = self.pattern_span * under + 128
            rgb = (self.pattern_base + ((mix + (mix >> 8)) >> 8)).astype(np.uint8)
            column = np.asarray(quantize(rgb), np.uint8)
            if len(self.pattern_columns) > 4096:
                self.pattern_columns.clear()
            self.pattern_columns[key] = column
        return column

    def _texts_outside(self) -> list[tuple[int, int, int, int]]:
        """The box of this frame's texts when they reach outside the cells, set by :meth:`_draw_texts`."""
        return [] if self.text_box is None else [self.text_box]

    def _set_limits(self, limits: tuple[float, float]) -> None:
        self.r._image.set_clim(*limits)
        self.limits = (float(limits[0]), float(limits[1]))
        self._redraw_colorbar()

    def _redraw_colorbar(self) -> None:
        r = self.r
        y0, y1, x0, x1 = self.cbar_box
        face = (np.asarray(r._fig.get_facecolor()) * 255).round().astype(np.uint8)
        self.agg[y0:y1, x0:x1] = face
        r._fig.draw_artist(r._cax)
        self.static[y0:y1, x0:x1] = self.agg[y0:y1, x0:x1, :3]
        self.frame[y0:y1, x0:x1] = self.static[y0:y1, x0:x1]

    def _draw_title(self, title: str) -> None:
        r = self.r
        t0, t1 = self.title_rows
        lines = self._title_layout(title)
        self.title_box = (t0, t1, 0, self.width)
        if lines is None:  # a title whose layout is not shared: matplotlib draws it
            self.title_placed = None
            self.agg[t0:t1, :, :3] = self.static[t0:t1]
            self.agg[t0:t1, :, 3] = 255
            r._title.set_text(title)
            r._fig.draw_artist(r._title)
            self.frame[t0:t1] = self.agg[t0:t1, :, :3]
            return
        # The same glyphs matplotlib would draw, at the same 1/64 px positions, onto the band's background.
        frame = self.frame
        height = float(self.height)
        posx, posy = self.title_anchor
        placed: list[tuple[int, int, np.ndarray, tuple[int, int, int]]] = []
        for (x_off, y_off, dx, gids), line in zip(lines, title.split("\n"), strict=True):
            x = x_off + posx
            oy = round(0x40 * (height - (height - (y_off + posy))))
            for d, gid, c in zip(dx.tolist(), gids, line, strict=True):
                if c in "123456789":
                    gid = self.title_char_gid(c)
                ox = round(0x40 * (x + d))
                buf, left, top = self._title_glyph(gid, ox & 63, oy & 63)
                if buf.size == 0:
                    continue
                gy = self.height - ((oy >> 6) + top)
                gx = (ox >> 6) + left
                h, w = buf.shape
                if gy < 0 or gx < 0 or gy + h > self.height or gx + w > self.width:
                    continue
                placed.append((gy, gx, buf, (gid, ox & 63, oy & 63)))
        # Titles that differ only in a few digits: only the columns of the glyphs that changed are
        # restored and every glyph reaching into them blended again, in order, clipped to them.
        xa, xb = 0, self.width
        before = self.title_placed
        if before is not None and len(before) == len(placed) and all(
                (p[0], p[1]) == (q[0], q[1]) for p, q in zip(before, placed, strict=True)):
            spans = [(min(p[1], q[1]), max(p[1] + p[2].shape[1], q[1] + q[2].shape[1]))
                     for p, q in zip(before, placed, strict=True) if p[3] != q[3]]
            xa, xb = (min(a for a, _ in spans), max(b for _, b in spans)) if spans else (0, 0)
        self.title_placed = placed
        self.title_box = (t0, t1, xa, xb)
        if xb <= xa:
            return
        frame = self.frame
        frame[t0:t1, xa:xb] = self.static[t0:t1, xa:xb]
        colour = self.title_rgb
        for gy, gx, buf, _ in placed:
            h, w = buf.shape
            c0, c1 = max(gx, xa), min(gx + w, xb)
            if c1 <= c0:
                continue
            patch = frame[gy:gy + h, c0:c1].astype(np.uint16)
            a = buf[:, c0 - gx:c1 - gx, None]
            mix = patch * (255 - a) + colour * a + 128
            frame[gy:gy + h, c0:c1] = ((mix + (mix >> 8)) >> 8).astype(np.uint8)

    def _title_layout(self, title: str) -> list[tuple[float, float, np.ndarray, list[int]]] | None:
        """Per line: anchor offsets, pen positions and glyphs, shared by titles that differ only in digits."""
        key = title.translate(_DIGITS_TO_ZERO)
        if key in self.title_layouts:
            return self.title_layouts[key]
        base = self._measure_title(key)
        ok = base is not None
        for d in ("1", "2", "3", "4", "5", "6", "7", "8", "9", "12"):
            if not ok:
                break
            probe = key.replace("0", d) if len(d) == 1 else self._cycle_digits(key)
            other = self._measure_title(probe)
            ok = other is not None and base is not None and len(other) == len(base) and all(
                (a[0], a[1]) == (b[0], b[1]) and np.array_equal(a[2], b[2]) for a, b in zip(base, other, strict=True))
        if len(self.title_layouts) > 256:
            self.title_layouts.clear()
        self.title_layouts[key] = base if ok else None
        return self.title_layouts[key]

    @staticmethod
    def _cycle_digits(key: str) -> str:
        out, k = [], 0
        for c in key:
            if c == "0":
                out.append("1234567890"[k % 10])
                k += 1
            else:
                out.append(c)
        return "".join(out)

    def _measure_title(self, s: str) -> list[tuple[float, float, np.ndarray, list[int]]] | None:
        t: Any = self.r._title
        t.set_text(s)
        try:
            _, info, _ = t._get_layout(self.renderer)
        finally:
            t.set_text("")
        font = self.title_font
        out = []
        for line, _, (x_off, y_off) in info:
            font.set_size(self.title_size, self.dpi)
            items = font._layout(line, flags=self.hinting) if line else []
            if any(it.ft_object is not font or it.y != 0 for it in items) or len(items) != len(line):
                return None
            out.append((float(x_off), float(y_off), np.array([it.x for it in items], dtype=np.float64),
                        [int(it.glyph_index) for it in items]))
        return out

    def title_char_gid(self, c: str) -> int:
        gid = self.title_gids.get(c)
        if gid is None:
            self.title_font.set_size(self.title_size, self.dpi)
            (item,) = self.title_font._layout(c, flags=self.hinting)
            gid = self.title_gids[c] = int(item.glyph_index)
        return gid

    def _title_glyph(self, gid: int, fx: int, fy: int) -> tuple[np.ndarray, int, int]:
        key = (gid, fx, fy)
        glyph = self.title_glyphs.get(key)
        if glyph is None:
            from matplotlib.ft2font import RenderMode

            font = self.title_font
            font.set_size(self.title_size, self.dpi)
            font._set_transform(np.array([[0x10000, 0], [0, 0x10000]]), [fx, fy])
            bitmap = font._render_glyph(gid, self.hinting, RenderMode.NORMAL)
            glyph = (np.array(bitmap.buffer, dtype=np.uint16), int(bitmap.left), int(bitmap.top))
            self.title_glyphs[key] = glyph
        return glyph

    # ------------------------------------------------------------------ text

    def _font_id(self, font: Any) -> int:
        key = id(font)
        if key not in self.font_ids:
            self.font_ids[key] = len(self.fonts)
            self.fonts.append(font)
        return self.font_ids[key]

    def _measure(self, s: str) -> _TextLayout:
        """Matplotlib's own layout of ``s``: the anchor offset and every glyph's pen position."""
        text = self.r._probe
        saved = text.get_text()
        text.set_text(s)
        try:
            _, info, _ = text._get_layout(self.renderer)
        finally:
            text.set_text(saved)
        (_, _, (x_off, y_off)), = info
        font = self.main_font
        font.set_size(self.prop.get_size_in_points(), self.dpi)
        items = font._layout(s, flags=self.hinting)
        dx = np.array([it.x for it in items], dtype=np.float64)
        if any(it.y != 0 for it in items):
            msg = "vertical glyph offsets are not supported"
            raise RuntimeError(msg)
        return _TextLayout(float(x_off), float(y_off), dx, [it.ft_object for it in items],
                           [int(it.glyph_index) for it in items])

    def _layout_of(self, s: str) -> _TextLayout:
        """Matplotlib's layout of ``s``, shared by every string that differs only in its digits when that holds."""
        key = s.translate(_DIGITS_TO_ZERO)
        if key not in self.layouts:
            base = self._measure(key)
            same = len(base.gids) == len(key)
            for d in "123456789":  # digits must be interchangeable: same advances, no kerning
                other = self._measure(key.replace("0", d))
                if (other.x_off, other.y_off) != (base.x_off, base.y_off) or not np.array_equal(other.dx, base.dx):
                    same = False
                    break
            self.layouts[key] = base if same else None
        shared = self.layouts[key]
        if shared is not None and key == s:
            return shared
        if s not in self.exact:
            if len(self.exact) > 4096:
                self.exact.clear()
            self.exact[s] = self._measure(s)
        return self.exact[s]

    def _glyph(self, font_id: int, gid: int, fx: int, fy: int) -> int:
        """Atlas entry of one glyph rendered at sub-pixel offset ``(fx, fy)`` / 64 px."""
        key = (font_id, gid, fx, fy)
        entry = self.atlas_keys.get(key)
        if entry is None:
            from matplotlib.ft2font import RenderMode

            font = self.fonts[font_id]
            font.set_size(self.prop.get_size_in_points(), self.dpi)
            font._set_transform(np.array([[0x10000, 0], [0, 0x10000]]), [fx, fy])
            bitmap = font._render_glyph(gid, self.hinting, RenderMode.NORMAL)
            entry = len(self.glyphs)
            self.glyphs.append((np.array(bitmap.buffer, dtype=np.uint8), int(bitmap.left), int(bitmap.top)))
            self.atlas_keys[key] = entry
        return entry

    def _pack_atlas(self) -> None:
        gh = max(1, max(g[0].shape[0] for g in self.glyphs))
        gw = max(1, max(g[0].shape[1] for g in self.glyphs))
        atlas = np.zeros((len(self.glyphs), gh, gw), np.uint8)
        for i, (buf, _, _) in enumerate(self.glyphs):
            atlas[i, :buf.shape[0], :buf.shape[1]] = buf
        self.atlas = atlas
        self.atlas_left = np.array([g[1] for g in self.glyphs], np.int64)
        self.atlas_top = np.array([g[2] for g in self.glyphs], np.int64)
        inked = atlas.reshape(len(self.glyphs), -1) > 0
        self.sparse_count = inked.sum(axis=1)
        self.sparse_start = np.concatenate([[0], np.cumsum(self.sparse_count)[:-1]]).astype(np.int64)
        entry, where = np.nonzero(inked)
        self.sparse_offset = (where // gw) * self.width + where % gw
        self.sparse_alpha = atlas.reshape(len(self.glyphs), -1)[entry, where].astype(np.uint16)
        keys = np.array([(((f << 20) + g) << 12) + (fx << 6) + fy for f, g, fx, fy in self.atlas_keys], np.int64)
        order = np.argsort(keys)
        self.known_keys = keys[order]
        self.known_entries = np.array(list(self.atlas_keys.values()), np.int64)[order]

    def _draw_texts(self, values: list[float], dark: np.ndarray) -> None:
        groups: dict[str, list[int]] = {}
        strings = self.r._cell_texts(values)
        for k, s in enumerate(strings):
            if s:  # texts are drawn literally ('$' included), as matplotlib does with parse_math=False
                groups.setdefault(s.translate(_DIGITS_TO_ZERO), []).append(k)
        parts: list[tuple[np.ndarray, ...]] = []
        for key, ks in groups.items():
            self._layout_of(key)
            if self.layouts[key] is not None:
                parts.append(self._place(self.layouts[key], key, ks, [strings[k] for k in ks]))  # type: ignore[arg-type]
            else:
                parts.extend(self._place(self._layout_of(strings[k]), strings[k], [k], [strings[k]]) for k in ks)
        if not parts:
            return
        font_id, gid, ox, oy, cells, order = (np.concatenate(a) for a in zip(*parts, strict=True))
        keys = (((font_id << 20) + gid) << 12) + ((ox & 63) << 6) + (oy & 63)
        e = self._entries(keys)
        # Neighbouring glyphs, and texts wider than their cell, overlap at the edges. matplotlib
        # blends them one after another, so draw in passes that never overlap within a pass: glyphs
        # of even and odd places, and when texts overlap their neighbours, column by column.
        passes = order % 2 + 2 * (cells % self.r.grid[1] if self.col_groups > 1 else 0)
        sort = np.argsort(passes, kind="stable")
        e, cells, passes = e[sort], cells[sort], passes[sort]
        left = (ox[sort] >> 6) + self.atlas_left[e]
        top = self.height - ((oy[sort] >> 6) + self.atlas_top[e])
        gh, gw = self.atlas.shape[1:]
        if left.min() < 0 or top.min() < 0 or (left + gw).max() > self.width or (top + gh).max() > self.height:
            inside = (left >= 0) & (top >= 0) & (left + gw <= self.width) & (top + gh <= self.height)
            e, cells, passes, left, top = e[inside], cells[inside], passes[inside], left[inside], top[inside]
        if e.size == 0:
            return
        box = (int(top.min()), int((top + gh).max()), int(left.min()), int((left + gw).max()))
        if box[0] < self.y0 or box[1] > self.y1 or box[2] < self.x0 or box[3] > self.x1:
            self.text_box = box
        # Each glyph's inked pixels, from the atlas in sparse form.
        counts = self.sparse_count[e]
        total = int(counts.sum())
        ends = np.cumsum(counts)
        pick = np.arange(total) - np.repeat(ends - counts - self.sparse_start[e], counts)
        at = np.repeat(top * self.width + left, counts) + self.sparse_offset[pick]
        cover = self.sparse_alpha[pick][:, None]
        colour = self.text_rgb[np.repeat(dark[cells].astype(np.intp), counts)]
        # Each pass as one gather, blend and scatter over the frame's bytes (Agg's 8-bit blend).
        at3 = (at * 3)[:, None] + np.arange(3)
        bounds = ends[np.searchsorted(passes, np.unique(passes), side="right") - 1].tolist()
        flat = self.frame.reshape(-1)
        start = 0
        for end in bounds:
            where = at3[start:end]
            a = cover[start:end]
            mix = flat[where] * (255 - a) + colour[start:end] * a + 128
            blended = (mix + (mix >> 8)) >> 8
            flat[where] = blended.astype(np.uint8)
            # The pass's colours, packed, for the index frame (a later pass overwrites an earlier one).
            key = blended[:, 0].astype(np.uint32) << 16
            key |= blended[:, 1].astype(np.uint32) << 8
            key |= blended[:, 2]
            self.glyph_passes.append((at[start:end], key))
            start = end
        if self.text_box is not None and self.cax_box is not None:  # the colorbar is drawn over the texts
            y0, y1, x0, x1 = self.cax_box
            self.frame[y0:y1, x0:x1] = self.static[y0:y1, x0:x1]

    def _entries(self, keys: np.ndarray) -> np.ndarray:
        """Atlas entries of glyph keys, rendering the glyphs not seen yet."""
        pos = np.searchsorted(self.known_keys, keys)
        hit = pos < self.known_keys.size
        hit[hit] = self.known_keys[pos[hit]] == keys[hit]
        if not hit.all():
            for u in np.unique(keys[~hit]).tolist():
                self._glyph(int(u >> 32), int((u >> 12) & 0xFFFFF), int((u >> 6) & 63), int(u & 63))
            self._pack_atlas()
            pos = np.searchsorted(self.known_keys, keys)
        return np.asarray(self.known_entries[pos])

    def _place(self, lay: _TextLayout, key: str, ks: list[int], strings: list[str]) -> tuple[np.ndarray, ...]:
        """Glyph placements of strings that share one layout: font, glyph, 26.6 position, cell, order."""
        n, length = len(ks), len(lay.gids)
        cells = np.asarray(ks, dtype=np.int64)
        height = float(self.height)
        x = lay.x_off + self.posx[cells]
        y = height - (height - (lay.y_off + self.posy[cells]))  # as Text.draw and the Agg backend compute it
        ox = np.round(0x40 * (x[:, None] + lay.dx[None, :])).astype(np.int64)
        oy = np.broadcast_to(np.round(0x40 * y).astype(np.int64)[:, None], (n, length))
        font_id = np.tile(np.array([self._font_id(f) for f in lay.fonts], np.int64), (n, 1))
        gid = np.tile(np.array(lay.gids, np.int64), (n, 1))
        digit_at = np.frombuffer(key.encode("utf-32-le"), np.uint32) == ord("0")
        if n > 1 or strings[0] != key:
            codes = np.frombuffer("".join(strings).encode("utf-32-le"), np.uint32).reshape(n, length)
            lut_font, lut_gid = self._digit_luts()
            digits = codes[:, digit_at].astype(np.int64) - ord("0")
            font_id[:, digit_at] = lut_font[digits]
            gid[:, digit_at] = lut_gid[digits]
        order = np.broadcast_to(np.arange(length), (n, length))
        return (font_id.ravel(), gid.ravel(), ox.ravel(), oy.ravel(),
                np.repeat(cells, length), order.ravel())

    def _digit_luts(self) -> tuple[np.ndarray, np.ndarray]:
        if not hasattr(self, "_luts"):
            fonts, gids = [], []
            for d in "0123456789":
                lay = self._measure(d)
                fonts.append(self._font_id(lay.fonts[0]))
                gids.append(lay.gids[0])
            self._luts = (np.array(fonts, np.int64), np.array(gids, np.int64))
        return self._luts


def _outside(box: tuple[int, int, int, int], hole: tuple[int, int, int, int]) -> list[tuple[int, int, int, int]]:
    """``box`` minus ``hole`` (both ``(y0, y1, x0, x1)``) as up to four boxes."""
    y0, y1, x0, x1 = box
    h0, h1, g0, g1 = hole
    if h0 >= y1 or h1 <= y0 or g0 >= x1 or g1 <= x0:
        return [box] if y1 > y0 and x1 > x0 else []
    parts = [(y0, max(y0, h0), x0, x1), (min(y1, h1), y1, x0, x1),
             (max(y0, h0), min(y1, h1), x0, max(x0, g0)), (max(y0, h0), min(y1, h1), min(x1, g1), x1)]
    return [p for p in parts if p[1] > p[0] and p[3] > p[2]]


class _CodedView:
    """Cell indices decoded from the RGB of the Agg buffer, one row or column at a time."""

    def __init__(self, agg: np.ndarray) -> None:
        self.agg = agg

    def __getitem__(self, where: tuple[Any, Any]) -> np.ndarray:
        coded = self.agg[where][..., :3].astype(np.int64)
        return np.asarray(coded[..., 0] | (coded[..., 1] << 8) | (coded[..., 2] << 16))
