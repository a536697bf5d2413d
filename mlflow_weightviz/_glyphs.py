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
        diff = black[ay0:ay1, ax0:ax1] != white[ay0:ay1, ax0:ax1]
        touched = diff[..., 0] | diff[..., 1] | diff[..., 2]  # not .any(axis=2): ~5x slower over 3 channels
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
        mixed = ((region_b[..., 0] | region_b[..., 1] | region_b[..., 2]) != 0) | (
            (region_w[..., 0] & region_w[..., 1] & region_w[..., 2]) != 255)
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
        # Each (base, span) packed into one int64, in the order of its six numbers: np.unique over
        # rows (axis=0) would sort a structured view, about 10x slower, for the same patterns.
        parts = np.hstack([base[~fixed].astype(np.int64), span[~fixed].astype(np.int64) + 255])
        keys = np.zeros(len(parts), np.int64)
        for column in range(6):
            np.left_shift(keys, 9, out=keys)
            np.bitwise_or(keys, parts[:, column], out=keys)
        packed, inverse = np.unique(keys, return_inverse=True)
        patterns = (packed[:, None] >> np.arange(45, -1, -9)) & 511
        patterns[:, 3:] -= 255
        self.pattern_base = patterns[:, :3].astype(np.int32)
        self.pattern_span = patterns[:, 3:].astype(np.int32)
        self.mixed_pattern = inverse.reshape(-1).astype(np.intp)
        self.mixed_span = span[~fixed].astype(np.uint16)
        self.row_edges = np.concatenate([[0], np.cumsum(self.row_counts)]) + self.y0

        self.static = black  # outside the cells' region every draw is the same
        self.static_version = 0  # counts the colorbar's redraws into it
        self.frame = black.copy()
        self.limits = r._limits
        self.text_box: tuple[int, int, int, int] | None = None
        #: Boxes ``(y0, y1, x0, x1)`` outside which the last frame equals the one before; None: anywhere.
        self.changed: list[tuple[int, int, int, int]] | None = None
        self.started = False
        #: The last frame's texts' box when they reached outside the cells (either path drew it).
        self.outside_box: tuple[int, int, int, int] | None = None
        self.row_of, self.col_of = row_of, col_of
        self.tables: _IndexTables | None = None  # for frames composed as palette indices

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
        frame = self.frame
        full = not self.started  # the first frame, or a new colour scale, may differ anywhere
        if limits is not None and (float(limits[0]), float(limits[1])) != self.limits:
            self._set_limits(limits)
            full = True
        masked = np.ma.masked_invalid(values)
        normed = r._norm(masked)
        colours = r._cmap(normed, bytes=True)[..., :3]

        changed = [(self.y0, self.y1, self.x0, self.x1)]
        if self.text_box is not None:  # texts this buffer holds outside the cells
            y0, y1, x0, x1 = self.text_box
            frame[y0:y1, x0:x1] = self.static[y0:y1, x0:x1]
            changed.append(self.text_box)
            self.text_box = None
        if self.outside_box is not None:  # the last frame's, when it was composed as indices
            changed.append(self.outside_box)
        self._fill(colours)

        if r._probe is not None:
            dark = r._text_dark(normed)
            self._draw_texts(values.ravel().tolist(), dark)
        self.outside_box = self.text_box
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

    # ------------------------------------------------------------------ frames as palette indices

    def render_indices(self, values: np.ndarray, title: str, limits: tuple[float, float] | None,
                       quantize: Any, previous: np.ndarray | None) -> np.ndarray | None:
        """The next frame composed directly as palette indices, equal to ``quantize(render(...))``.

        Nothing is drawn in RGB but the title band: cells take their colour's index, grid
        pixels one of a few blend patterns over it, and each value-text pixel the index of
        its blend, from a table per colour under it (a cell's, a grid line's blend, the
        margins'; text colour × coverage → index). Pixels where two glyphs overlap are blended
        exactly in RGB, in matplotlib's order, and then mapped. ``None``, with nothing drawn, when the
        frame may differ anywhere (the first frame, a new colour scale): the caller draws it
        with :meth:`render` and maps it whole.

        Args:
            values: The grid's values.
            title: The frame's title.
            limits: Its colour scale; ``None`` keeps the current one.
            quantize: The :class:`~mlflow_weightviz.encoders.Quantizer` of the GIF's palette.
            previous: The previous frame's indices (the same ``quantize``).
        """
        if not self.started or previous is None:
            return None
        if limits is not None and (float(limits[0]), float(limits[1])) != self.limits:
            return None
        r = self.r
        rows, cols = r.grid
        tables = self.tables
        if tables is None or tables.quantize is not quantize:
            tables = self.tables = _IndexTables(self, quantize)
        entry = self._entries_of(values)
        if entry is None:  # a colour scale the table route does not cover: matplotlib's own calls
            masked = np.ma.masked_invalid(values)
            normed = r._norm(masked)
            colours = r._cmap(normed, bytes=True)[..., :3].reshape(-1, 3)
            cid = tables.ids(colours)
            dark = r._text_dark(normed)
        else:
            colours, dark = self.cmap_bytes[entry], self.cmap_dark[entry]
            cid = tables.cid_of_entry[entry]
            if (cid < 0).any():  # colours not met yet
                new = np.flatnonzero(cid < 0)
                tables.cid_of_entry[entry[new]] = cid[new] = tables.ids(colours[new])

        index = previous.copy()
        flat = index.reshape(-1)
        changed = [(self.y0, self.y1, self.x0, self.x1)]
        region = (self.y0, self.y1, self.x0, self.x1)
        if self.outside_box is not None:  # texts drawn outside the cells last frame (the cells are redrawn)
            static = tables.static_index()
            for y0, y1, x0, x1 in _outside(self.outside_box, region):
                index[y0:y1, x0:x1] = static[y0:y1, x0:x1]
            changed.append(self.outside_box)
            self.outside_box = None
        band = np.repeat(tables.cell[cid].reshape(rows, cols), self.col_counts, axis=1)
        edges = self.row_edges.tolist()
        for i in range(len(edges) - 1):  # one broadcast copy per row of cells
            index[edges[i]:edges[i + 1], self.x0:self.x1] = band[i]
        flat[self.fixed_px] = tables.fixed
        if self.mixed_px.size:
            flat[self.mixed_px] = tables.patterns.reshape(-1)[cid[self.mixed_cell] * tables.n_patterns
                                                               + self.mixed_pattern]
        if r._probe is not None:
            glyphs = self._glyph_pixels(values.ravel().tolist())
            if glyphs is not None:
                tables.stamp(glyphs, dark, cid, colours, flat)
                self.outside_box = glyphs.outside
                if glyphs.outside is not None:
                    changed.append(glyphs.outside)
                    if self.cax_box is not None:  # the colorbar is drawn over the texts
                        y0, y1, x0, x1 = self.cax_box
                        index[y0:y1, x0:x1] = tables.static_index()[y0:y1, x0:x1]
        self._draw_title(title)
        y0, y1, x0, x1 = self.title_box
        if y1 > y0 and x1 > x0:
            index[y0:y1, x0:x1] = quantize(np.ascontiguousarray(self.frame[y0:y1, x0:x1]))
        changed.append(self.title_box)
        self.changed = changed
        return index

    def _entries_of(self, values: np.ndarray) -> np.ndarray | None:
        """Each cell's entry in :attr:`cmap_bytes`, as ``Normalize`` and ``Colormap`` pick it; None: not this route.

        The same steps as matplotlib's ``Normalize.__call__`` (float64 ``(v - vmin) / (vmax - vmin)``) and
        ``Colormap.__call__`` (``x * N``, 1.0 kept in the last entry, truncated; under, over and bad
        apart), without their masked-array work: a tenth of the time. The colours themselves come
        from the colormap's public calls (:meth:`_colour_tables`). ``tests/test_glyphs.py`` checks
        the entries against matplotlib's own calls, edge cases included.
        """
        import matplotlib as mpl

        norm = self.r._norm
        if type(norm) is not mpl.colors.Normalize or norm.clip or norm.vmin is None or norm.vmax is None:
            return None
        vmin, vmax = np.float64(norm.vmin), np.float64(norm.vmax)
        if not vmin < vmax:
            return None
        self._colour_tables()
        n = self.cmap_n
        flat = values.reshape(-1)
        with np.errstate(invalid="ignore", over="ignore"):
            x = (flat - vmin) / (vmax - vmin) * n
            x[x == n] = n - 1
            entry = x.astype(np.intp)
            entry[x < 0] = n
            entry[x >= n] = n + 1
        entry[~np.isfinite(flat)] = n + 2
        return entry

    def _colour_tables(self) -> None:
        """The colormap's entries, then under, over and bad: RGB bytes and whether text on them is dark."""
        if hasattr(self, "cmap_bytes"):
            return
        from mlflow_weightviz.frames import text_is_dark

        cmap = self.r._cmap
        n = self.cmap_n = int(cmap.N)
        probes = [np.arange(n), np.array([-1]), np.array([n]), np.ma.masked_all(1)]  # type: ignore[no-untyped-call]
        rgba = np.vstack([cmap(p) for p in probes])
        self.cmap_bytes = np.vstack([cmap(p, bytes=True) for p in probes])[:, :3].copy()
        self.cmap_dark = np.asarray(text_is_dark(rgba), bool)

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
        self.static_version += 1
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

    def _glyph_pixels(self, values: list[float]) -> _Glyphs | None:
        """Every inked pixel of the value texts, glyph by glyph, in drawing order (``None``: no text)."""
        groups: dict[str, list[int]] = {}
        strings = self.r._cell_texts(values)
        for k, s in enumerate(strings):
            if s:  # texts are drawn literally ('$' included), as matplotlib does with parse_math=False
                groups.setdefault(s.translate(_DIGITS_TO_ZERO), []).append(k)
        parts: list[tuple[np.ndarray, ...]] = []
        widest = 0.0
        for key, ks in groups.items():
            shared = self._layout_of(key)
            widest = max(widest, -2 * shared.x_off)
            if self.layouts[key] is not None:
                parts.append(self._place(shared, key, ks, [strings[k] for k in ks]))
            else:
                parts.extend(self._place(self._layout_of(strings[k]), strings[k], [k], [strings[k]]) for k in ks)
        if not parts:
            return None
        # Texts may be wider than the samples the renderer was sized for (an outlier value).
        by_column = self.col_groups > 1 or widest + 4 > self.r._cell
        font_id, gid, ox, oy, cells, order = (np.concatenate(a) for a in zip(*parts, strict=True))
        keys = (((font_id << 20) + gid) << 12) + ((ox & 63) << 6) + (oy & 63)
        e = self._entries(keys)
        # Neighbouring glyphs, and texts wider than their cell, overlap at the edges. matplotlib
        # blends them one after another, so draw in passes that never overlap within a pass: glyphs
        # of even and odd places, and when texts overlap their neighbours, column by column.
        passes = order % 2 + 2 * (cells % self.r.grid[1] if by_column else 0)
        sort = np.argsort(passes, kind="stable")
        e, cells, passes = e[sort], cells[sort], passes[sort]
        left = (ox[sort] >> 6) + self.atlas_left[e]
        top = self.height - ((oy[sort] >> 6) + self.atlas_top[e])
        gh, gw = self.atlas.shape[1:]
        if left.min() < 0 or top.min() < 0 or (left + gw).max() > self.width or (top + gh).max() > self.height:
            inside = (left >= 0) & (top >= 0) & (left + gw <= self.width) & (top + gh <= self.height)
            e, cells, passes, left, top = e[inside], cells[inside], passes[inside], left[inside], top[inside]
        if e.size == 0:
            return None
        box = (int(top.min()), int((top + gh).max()), int(left.min()), int((left + gw).max()))
        outside = box[0] < self.y0 or box[1] > self.y1 or box[2] < self.x0 or box[3] > self.x1
        # Each glyph's inked pixels, from the atlas in sparse form.
        counts = self.sparse_count[e]
        total = int(counts.sum())
        ends = np.cumsum(counts)
        pick = np.arange(total) - np.repeat(ends - counts - self.sparse_start[e], counts)
        at = np.repeat(top * self.width + left, counts) + np.take(self.sparse_offset, pick)
        # Where each pass ends, in pixels (a pass's glyphs never overlap one another).
        bounds = ends[np.searchsorted(passes, np.unique(passes), side="right") - 1]
        return _Glyphs(cells, passes, counts, ends, bounds, at, np.take(self.sparse_alpha, pick),
                       box if outside else None)

    def _draw_texts(self, values: list[float], dark: np.ndarray) -> None:
        g = self._glyph_pixels(values)
        if g is None:
            return
        self.text_box = g.outside
        cover = g.alpha[:, None]
        colour = self.text_rgb[np.repeat(dark[g.cells].astype(np.intp), g.counts)]
        # Each pass as one gather, blend and scatter over the frame's bytes (Agg's 8-bit blend).
        at3 = (g.at * 3)[:, None] + np.arange(3)
        flat = self.frame.reshape(-1)
        start = 0
        for end in g.bounds.tolist():
            # Texts wider than expected (an outlier value) may still overlap within a pass: blend a
            # pixel's second glyph after its first, as matplotlib draws them.
            for part in _in_turn(g.at[start:end]):
                where = at3[start:end][part]
                a = cover[start:end][part]
                mix = flat[where] * (255 - a) + colour[start:end][part] * a + 128
                flat[where] = ((mix + (mix >> 8)) >> 8).astype(np.uint8)
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


class _IndexTables:
    """What composing frames as indices of one palette needs, built as cell colours are first seen.

    Per cell colour: its index, the index of every grid blend pattern over it, and of every
    text blend over it. Per pixel: what lies under it, for the value texts.

    Cell colours come from the colormap's table, so there are at most a few hundred of them over a
    whole animation; each is mapped once, when first seen. The blends of grid lines over them,
    and the static picture's colours under texts, get ids too when first met, so that every value-text
    pixel inked once is a table lookup. Colour id 0 is unused ("no plain cell colour here" in
    :meth:`stamp`, before the pixel's own id is found).
    """

    def __init__(self, c: Composer, quantize: Any) -> None:
        self.c = c
        self.quantize = quantize
        self.fixed = np.asarray(quantize(c.fixed_value.reshape(-1, 3)), np.uint8)
        self.sorted_keys = np.zeros(0, np.int64)  # the colours seen (packed 0xRRGGBB), sorted, and their ids
        self.sorted_ids = np.zeros(0, np.intp)
        n_patterns = self.n_patterns = len(c.pattern_base)
        self._static: np.ndarray | None = None
        self._static_packed: np.ndarray | None = None
        self._packed_version = -1
        self._keys_version = -1
        text = c.text_rgb.astype(np.uint32)
        self.text_spread = _spread((text[:, 0] << 16) | (text[:, 1] << 8) | text[:, 2])
        self.rgb_packed = np.zeros(1, np.uint32)
        self.patterns_packed = np.zeros((1, n_patterns), np.uint32)
        self._static_version = -1
        self.cell = np.zeros(1, np.uint8)
        self.patterns = np.zeros((1, n_patterns), np.uint8)
        self.text = np.zeros((1, 512), np.uint8)  # [colour, dark * 256 + alpha]
        self.text_blends = np.zeros((1, 512), np.uint64)  # the same blends' colours, spread (see _spread)
        self.pattern_ids = np.full((1, n_patterns), -1, np.int32)  # [colour, grid pattern]: the blend's colour id
        # Per entry of the composer's colour tables (Composer._entries_of): its colour id, -1 until met.
        self.cid_of_entry = np.full(int(c.r._cmap.N) + 3, -1, np.intp)
        rows, cols = c.r.grid
        self.n_cells = rows * cols
        if c.r._probe is not None:
            # What lies under each pixel: a cell's plain colour (its number); the static picture's colour
            # with id k (n_cells + 1 + k), once met under a text; else n_cells.
            under = np.full(c.height * c.width, self.n_cells, np.int32)
            plain = under.reshape(c.height, c.width)
            plain[c.y0:c.y1, c.x0:c.x1] = c.row_of[:, None] * cols + c.col_of[None, :]
            under[c.fixed_px] = self.n_cells
            under[c.mixed_px] = self.n_cells
            self.under = under
            self.slot = np.full(c.height * c.width, -1, np.int32)  # grid blend pixels: their number
            self.slot[c.mixed_px] = np.arange(c.mixed_px.size, dtype=np.int32)
            self.mark = np.zeros(c.height * c.width, np.int32)  # the last glyph entry to ink each pixel
            self.first = np.zeros(c.height * c.width, np.int32)
            self.flag = np.zeros(c.height * c.width, bool)

    def static_index(self) -> np.ndarray:
        """The static picture (what lies outside the cells) as indices, mapped again after a colorbar redraw."""
        if self._static is None or self._static_version != self.c.static_version:
            self._static = np.asarray(self.quantize(self.c.static), np.uint8)
            self._static_version = self.c.static_version
        return self._static

    def ids(self, colours: np.ndarray) -> np.ndarray:
        """The colour ids of (n, 3) uint8 cell colours, adding the colours not seen yet."""
        keys = (colours[:, 0].astype(np.int64) << 16) | (colours[:, 1].astype(np.int64) << 8) | colours[:, 2]
        return self.packed_ids(keys)

    def packed_ids(self, keys: np.ndarray) -> np.ndarray:
        """The colour ids of ``0xRRGGBB`` colours (int64), adding the colours not seen yet."""
        at = np.searchsorted(self.sorted_keys, keys)
        seen = at < self.sorted_keys.size
        seen[seen] = self.sorted_keys[at[seen]] == keys[seen]
        if not seen.all():
            self._add(np.unique(keys[~seen]))
            at = np.searchsorted(self.sorted_keys, keys)
        return np.asarray(self.sorted_ids[at])

    def _add(self, keys: np.ndarray) -> None:
        c = self.c
        rgb = np.stack([(keys >> 16) & 255, (keys >> 8) & 255, keys & 255], axis=1).astype(np.int32)
        first = len(self.rgb_packed)
        all_keys = np.concatenate([self.sorted_keys, keys])
        order = np.argsort(all_keys)
        self.sorted_keys = all_keys[order]
        self.sorted_ids = np.concatenate([self.sorted_ids, np.arange(first, first + len(keys))])[order]
        self.rgb_packed = np.concatenate([self.rgb_packed, keys.astype(np.uint32)])
        self.cell = np.concatenate([self.cell, np.asarray(self.quantize(rgb.astype(np.uint8)), np.uint8)])
        mix = c.pattern_span[None, :, :] * rgb[:, None, :] + 128
        grid = (c.pattern_base[None] + ((mix + (mix >> 8)) >> 8)).astype(np.uint8)
        self.patterns = np.vstack([self.patterns, np.asarray(self.quantize(grid), np.uint8).reshape(len(keys), -1)])
        grid32 = grid.astype(np.uint32)
        self.patterns_packed = np.vstack([self.patterns_packed, (grid32[..., 0] << 16) | (grid32[..., 1] << 8)
                                          | grid32[..., 2]])
        # Text of either colour at every coverage over the colour, blended as Agg does.
        a = np.arange(256, dtype=np.int32)[None, None, :, None]
        text = c.text_rgb.astype(np.int32)[None, :, None, :]
        mix = rgb[:, None, None, :] * (255 - a) + text * a + 128
        blends = ((mix + (mix >> 8)) >> 8).astype(np.uint8)
        self.text = np.vstack([self.text, np.asarray(self.quantize(blends), np.uint8).reshape(len(keys), 512)])
        self.pattern_ids = np.vstack([self.pattern_ids, np.full((len(keys), self.n_patterns), -1, np.int32)])
        b32 = blends.astype(np.uint32)
        self.text_blends = np.vstack([self.text_blends, _spread((b32[..., 0] << 16) | (b32[..., 1] << 8)
                                                                | b32[..., 2]).reshape(len(keys), 512)])

    def stamp(self, g: _Glyphs, dark: np.ndarray, cid: np.ndarray, colours: np.ndarray, flat: np.ndarray) -> None:
        """Write the value texts' pixels into ``flat`` (the index frame), as blending them in RGB and mapping would."""
        dark_at = np.repeat(dark.astype(np.int32)[g.cells] << 8, g.counts)  # each pixel's text colour, × 256
        if self._keys_version != self.c.static_version:  # a new static picture: its colours are met afresh
            self.under[self.under > self.n_cells] = self.n_cells
            self._keys_version = self.c.static_version
        # What lies under each pixel, as a colour id × 512 (0: not known yet).
        # (np.take with intp indices gathers ~2x faster than fancy indexing on these ~10^5 pixels.)
        known = np.concatenate([cid.astype(np.intp) << 9, np.zeros(1, np.intp),
                                np.arange(len(self.rgb_packed), dtype=np.intp) << 9])
        key = np.take(known, np.take(self.under, g.at))
        other = np.flatnonzero(key == 0)
        if other.size:  # not over a cell's plain colour: over a grid line's blend, or the static picture
            key[other] = self._other_keys(g.at[other], cid)
        key += dark_at
        key += g.alpha
        index = np.take(self.text.reshape(-1), key)
        # A pixel inked by two glyphs is blended twice: find them (a later glyph overwrote the mark).
        order = np.arange(g.at.size, dtype=np.int32)
        self.mark[g.at] = order
        last = np.take(self.mark, g.at)
        slow = last != order
        if slow.any():
            slow[last[slow]] = True  # and the last glyph of each such pixel
        flat[g.at] = index
        if slow.any():
            self._exact(g, np.flatnonzero(slow).astype(np.int32), last, dark_at, cid, flat, key)

    def _exact(self, g: _Glyphs, sel: np.ndarray, last: np.ndarray, dark_at: np.ndarray, cid: np.ndarray,
               flat: np.ndarray, key: np.ndarray) -> None:
        """The pixels of entries ``sel`` blended in RGB over exactly what lies under them, in order, then mapped.

        Most are inked twice (two glyphs): the first blend comes from the table of text blends of
        the colour under the pixel (``key``, as in :meth:`stamp`), the second is computed. Pixels
        inked three times or more go pass by pass.
        """
        final = np.take(last, sel)
        heads = final != sel  # not the last glyph on its pixel
        if 2 * int(np.count_nonzero(heads)) != sel.size:  # some pixel is inked three times or more
            at = g.at[sel]
            self.first[at[::-1]] = sel[::-1]  # each pixel's first glyph (in drawing order)
            heads = sel == self.first[at]
            middle = ~heads & (sel != final)
            many = at[middle]
            self.flag[many] = True
            deep = self.flag[at]
            self.flag[many] = False
            heads &= ~deep
            self._passes(g, sel[deep], dark_at, cid, flat)
        # Each remaining pixel is inked exactly twice: by entry ``head``, then by entry ``tail``.
        head = sel[heads]
        tail = final[heads]
        rgb = _blend(np.take(self.text_blends.reshape(-1), np.take(key, head)),
                     np.take(self.text_spread, np.take(dark_at, tail) >> 8), np.take(g.alpha, tail))
        flat[np.take(g.at, head)] = self.quantize.lookup(_packed(rgb))

    def _passes(self, g: _Glyphs, sel: np.ndarray, dark_at: np.ndarray, cid: np.ndarray, flat: np.ndarray) -> None:
        """The general case: entries ``sel`` (every entry of their pixels) blended pass by pass."""
        pixels, inverse = np.unique(g.at[sel], return_inverse=True)
        rgb = _spread(self._under(pixels, cid))
        colour = self.text_spread[dark_at[sel] >> 8]
        alpha = g.alpha[sel]
        passes = g.passes[np.searchsorted(g.ends, sel, side="right")]
        cuts = np.flatnonzero(np.diff(passes)) + 1
        for lo, hi in zip([0, *cuts.tolist()], [*cuts.tolist(), sel.size], strict=True):
            w = inverse[lo:hi]
            rgb[w] = _blend(rgb[w], colour[lo:hi], alpha[lo:hi])
        flat[pixels] = self.quantize.lookup(_packed(rgb))

    def _other_keys(self, pixels: np.ndarray, cid: np.ndarray) -> np.ndarray:
        """Colour ids × 512 of what lies under ``pixels`` that are not a cell's plain colour.

        Over a grid line's blend: the id of that blend of the cell's colour (the blends are colours
        like any other, given ids as they are first met). Elsewhere: the static picture's colour,
        which ``under`` then keeps for the pixel (until the static picture changes). With an id,
        a text pixel over them is looked up in the tables like one over a cell.
        """
        out = np.empty(pixels.size, np.int32)
        slot = self.slot[pixels]
        grid = slot >= 0
        if not grid.all():
            static = pixels[~grid]
            ids = self.packed_ids(self.static_packed()[static].astype(np.int64)).astype(np.int32)
            self.under[static] = self.n_cells + 1 + ids
            out[~grid] = ids << 9
        if grid.any():
            j = slot[grid]
            colour, pattern = cid[self.c.mixed_cell[j]], self.c.mixed_pattern[j]
            ids = self.pattern_ids[colour, pattern]
            new = ids < 0
            if new.any():
                ids[new] = self.packed_ids(self.patterns_packed[colour[new], pattern[new]].astype(np.int64))
                self.pattern_ids[colour[new], pattern[new]] = ids[new]
            out[grid] = ids << 9
        return out

    def static_packed(self) -> np.ndarray:
        """The static picture as packed ``0xRRGGBB`` colours, one per pixel (made again after a colorbar redraw)."""
        c = self.c
        if self._static_packed is None or self._packed_version != c.static_version:
            rgb = c.static.reshape(-1, 3)
            self._static_packed = (rgb[:, 0].astype(np.uint32) << 16) | (rgb[:, 1].astype(np.uint32) << 8) | rgb[:, 2]
            self._packed_version = c.static_version
        return self._static_packed

    def _under(self, pixels: np.ndarray, cid: np.ndarray) -> np.ndarray:
        """The exact colours (packed ``0xRRGGBB``) under ``pixels`` before any text: cells, grid blends, else static."""
        c = self.c
        kind = self.under[pixels].astype(np.intp)
        packed = self.static_packed()[pixels]
        plain = kind < self.n_cells
        packed[plain] = self.rgb_packed[cid[kind[plain]]]
        slot = self.slot[pixels]
        blend = slot >= 0
        if blend.any():
            j = slot[blend]
            packed[blend] = self.patterns_packed[cid[c.mixed_cell[j]], c.mixed_pattern[j]]
        return np.asarray(packed, np.uint32)


_LOW_BYTES = np.uint64(0x0000_00FF_00FF_00FF)
_HALF = np.uint64(0x0000_0080_0080_0080)
_EIGHT = np.uint64(8)


def _spread(packed: np.ndarray) -> np.ndarray:
    """``0xRRGGBB`` colours with each channel in its own 16-bit lane of a uint64, to blend all three at once."""
    p = packed.astype(np.uint64)
    red, green, blue = p & np.uint64(0xFF0000), p & np.uint64(0xFF00), p & np.uint64(0xFF)
    return np.asarray((red << np.uint64(16)) | (green << _EIGHT) | blue)


def _packed(spread: np.ndarray) -> np.ndarray:
    """The ``0xRRGGBB`` uint32 colours of spread ones."""
    p = ((spread >> np.uint64(16)) & np.uint64(0xFF0000)) | ((spread >> _EIGHT) & np.uint64(0xFF00))
    return np.asarray(p | (spread & np.uint64(0xFF)), np.uint32)


def _blend(under: np.ndarray, text: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Agg's 8-bit blend of ``text`` at coverage ``alpha`` over ``under``, on spread colours, lane by lane.

    Each lane holds ``under * (255 - a) + text * a + 128 <= 65153`` and adding its own top byte
    keeps it below 65536, so no lane spills into the next.
    """
    a = alpha.astype(np.uint64)
    mix = under * (np.uint64(255) - a) + text * a + _HALF
    return np.asarray(((mix + ((mix >> _EIGHT) & _LOW_BYTES)) >> _EIGHT) & _LOW_BYTES)


class _Glyphs:
    """The inked pixels of one frame's value texts, sorted into passes that are drawn one after another.

    Per glyph: ``cells`` (whose text it is), ``passes`` (non-decreasing), ``counts`` (its inked
    pixels) and ``ends`` (their cumulative sum). Per pixel: ``at`` (flat position in the
    frame) and ``alpha`` (coverage). ``bounds``: where each pass ends, in pixels.
    ``outside``: the texts' box when it reaches outside the cells' region.
    """

    __slots__ = ("alpha", "at", "bounds", "cells", "counts", "ends", "outside", "passes")

    def __init__(self, cells: np.ndarray, passes: np.ndarray, counts: np.ndarray, ends: np.ndarray,
                 bounds: np.ndarray, at: np.ndarray, alpha: np.ndarray,
                 outside: tuple[int, int, int, int] | None) -> None:
        self.cells, self.passes, self.counts, self.ends, self.bounds = cells, passes, counts, ends, bounds
        self.at, self.alpha, self.outside = at, alpha, outside


def _in_turn(at: np.ndarray) -> list[slice | np.ndarray]:
    """Entries of ``at`` in groups that each hold a pixel at most once: first inkings, then second ones, ..."""
    order = np.argsort(at, kind="stable")
    ranked = at[order]
    new_run = np.empty(at.size, bool)
    new_run[:1] = True
    np.not_equal(ranked[1:], ranked[:-1], out=new_run[1:])
    if new_run.all():
        return [slice(None)]
    starts = np.flatnonzero(new_run)
    rank = np.empty(at.size, np.int64)
    rank[order] = np.arange(at.size) - starts[np.cumsum(new_run) - 1]
    return [np.flatnonzero(rank == k) for k in range(int(rank.max()) + 1)]


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
