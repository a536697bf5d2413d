"""The heatmap renderer: how a grid of values becomes an RGB frame.

It draws matplotlib's annotated heatmap (the gallery example the original script copied):
values written in the cells with a text colour chosen for contrast, tick labels on top
with the column labels rotated, a white grid between cells and no spines, plus a
colorbar and a title. The figure and every artist are built once and the figure size is
fixed in pixels, so every frame has the same size and layout.

matplotlib stays the source of truth for the look. Drawing every frame with it is slow,
so by default the first frame is drawn by matplotlib and the frames after it are
composed with numpy by :mod:`mlflow_weightviz._glyphs`, on the matplotlib versions it
supports. ``reference=True`` keeps the plain matplotlib drawing of every frame, which
tests use to check that both paths give the same picture.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from mlflow_weightviz.errors import UsageError
from mlflow_weightviz.grid import format_value  # the one place values become text; re-exported

if TYPE_CHECKING:
    from mlflow_weightviz._glyphs import Composer

__all__ = ["NAME_CHARS", "NAN_COLOR", "HeatmapRenderer", "cell_size", "format_value", "shorten", "text_is_dark"]

#: Colour of NaN and infinite cells; it is in neither default colormap.
NAN_COLOR = "#808080"
_FONT_PT = 9.0
_TITLE_PT = 11.0
_CHAR_EM = 0.62  # average width of a digit or letter in DejaVu Sans, in ems
_DIGIT_EM = 0.64  # the widest digits of DejaVu Sans, in ems (tick labels are mostly digits)
_LINE_EM = 1.2  # height of a line of text (ascent + descent), in ems
_MIN_SIZED_CELL = 2  # the smallest cell, in pixels, a frame of a given size may have
_MAX_ANNOTATED_PX = 1600  # auto-annotation only while the grid stays this small
_DARK_TEXT = "#262626"
_LIGHT_TEXT = "#ffffff"
#: Longest layer name shown whole in a title; longer ones keep their start and end (the full name
#: stays in the tags and the HTML player).
NAME_CHARS = 64
_TITLE_LINE_CHARS = 120  # any title line; beyond it the frame would grow with the text
_LABEL_CHARS = 32  # a tick label


def shorten(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters with an ellipsis in the middle, keeping both ends."""
    if len(text) <= limit:
        return text
    head = limit // 2
    tail = limit - 1 - head
    return text[:head] + "…" + (text[len(text) - tail:] if tail > 0 else "")


def _title_text(title: str) -> str:
    """A title whose every line fits the frame: longer lines end in an ellipsis."""
    return "\n".join(line if len(line) <= _TITLE_LINE_CHARS else line[:_TITLE_LINE_CHARS - 1] + "…"
                     for line in title.split("\n"))


def cell_size(grid: tuple[int, int], *, text_chars: int, annotate: bool | None, dpi: int,
              font_pt: float = _FONT_PT) -> tuple[int, bool]:
    """The side of a cell in pixels, and whether values are written in the cells."""
    char_px = font_pt * dpi / 72 * _CHAR_EM
    text_cell = max(22, math.ceil(text_chars * char_px + 10))
    if annotate is None:
        annotate = max(grid) * text_cell <= _MAX_ANNOTATED_PX
    if annotate:
        return text_cell, True
    return int(min(40, max(4, 720 // max(grid)))), False


def text_is_dark(rgba: np.ndarray) -> np.ndarray:
    """Whether dark text reads better than light text on each colour (seaborn's rule)."""
    rgb = rgba[..., :3]
    rgb = np.where(rgb <= 0.03928, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    return np.asarray(rgb @ np.array([0.2126, 0.7152, 0.0722]) > 0.408)


class HeatmapRenderer:
    """Draws annotated-heatmap frames of one fixed grid shape onto one reused figure.

    Args:
        grid: Rows and columns of the display grid.
        cmap: A matplotlib colormap name.
        vmin: Lower end of the colour scale (frames may override it).
        vmax: Upper end of the colour scale.
        fmt: ``str.format`` pattern of the cell values, e.g. ``"{x:.4f}"``.
        annotate: Write the values in the cells; ``None`` decides from the cell size.
        row_labels: One tick label per grid row.
        col_labels: One tick label per grid column.
        title_sample: The longest title that will be shown, to size the figure.
        dpi: Resolution of the figure.
        size: Frame size in pixels ``(width, height)``; the grid's square cells are then
            made as large as fit. ``None`` sizes the frame from the grid (pixels per cell).
        fontsize: Size in points of the values and tick labels (default 9).

    Raises:
        UsageError: ``size`` leaves less than 2 pixels per cell beside the margins.
        reference: Draw every frame with matplotlib alone (slow; the fast composition is
            checked against it). The renderer also does so, and sets ``reference``, when
            the composer does not apply: a matplotlib version outside ``_glyphs.SUPPORTED``.

    Every text is drawn literally (``parse_math=False``): a ``$`` in a layer name, a label
    or the value format is a dollar sign, never math text. Titles and tick labels too
    long for a frame are shortened with an ellipsis (see :func:`shorten`).
    """

    def __init__(self, grid: tuple[int, int], *, cmap: str, vmin: float, vmax: float, fmt: str,
                 annotate: bool | None, row_labels: Sequence[str], col_labels: Sequence[str],
                 title_sample: str, dpi: int = 100, size: tuple[int, int] | None = None,
                 fontsize: float | None = None, reference: bool = False) -> None:
        import matplotlib as mpl
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        from mlflow_weightviz import _glyphs

        rows, cols = grid
        self.grid = grid
        self.fmt = fmt
        # The fast path needs a matplotlib version it supports (texts are never math text).
        self.reference = reference or not _glyphs.available()
        title_sample = _title_text(title_sample)
        row_labels = [shorten(str(label), _LABEL_CHARS) for label in row_labels]
        col_labels = [shorten(str(label), _LABEL_CHARS) for label in col_labels]
        font_pt = _FONT_PT if fontsize is None else float(fontsize)
        self._font_pt = font_pt
        samples = [*self._cell_texts([vmin, vmax, -abs(vmax), -abs(vmin)]), "-inf"]
        text_chars = max(map(len, samples))
        cell, self.annotated = cell_size(grid, text_chars=text_chars, annotate=annotate, dpi=dpi, font_pt=font_pt)
        fs_px = font_pt * dpi / 72
        char_px = fs_px * _CHAR_EM
        title_lines = title_sample.count("\n") + 1
        self._title_lines = title_lines
        title_px = _TITLE_PT * dpi / 72
        cbar_text = max(len(f"{v:.3g}") for v in (vmin, vmax)) + 1
        right = 14 + 16 + cbar_text * char_px + 16
        bottom = 10

        # Column labels are turned 30°: each one's box is about width·cos30 + height·sin30
        # wide, so every k-th label is shown where they would otherwise overlap.
        col_text = max((len(label) for label in col_labels), default=1) * fs_px * _DIGIT_EM
        col_box = col_text * math.cos(math.radians(30)) + fs_px * _LINE_EM * 0.5 + 2

        def margins(cell: int) -> tuple[float, float, int, int]:
            row_step = max(1, math.ceil(fs_px * 1.3 / cell))
            col_step = max(1, math.ceil(fs_px * 1.6 / cell), math.ceil(col_box / cell))
            row_chars = max((len(row_labels[i]) for i in range(0, rows, row_step)), default=1)
            col_chars = max((len(col_labels[j]) for j in range(0, cols, col_step)), default=1)
            left = max(row_chars * char_px + 16, col_chars * char_px * 0.87 - cell / 2 + 8)
            top = title_lines * title_px * 1.35 + 14 + col_chars * char_px * 0.5 + fs_px + 10
            return left, top, row_step, col_step

        # Pixel layout, fixed for every frame (no tight bbox during an animation).
        left, top, row_step, col_step = margins(cell)
        if size is None:
            grid_w, grid_h = cols * cell, rows * cell
            body_h = max(grid_h, 160)
            width = math.ceil(max(left + grid_w + right,
                                  max(map(len, title_sample.splitlines())) * title_px * _CHAR_EM + 24))
            height = math.ceil(top + body_h + bottom)
            width += width % 2  # even sizes keep video encoders happy
            height += height % 2
        else:
            width, height = int(size[0]), int(size[1])
            for _ in range(2):  # the margins depend a little on the cell size
                cell = max(1, math.floor(min((width - left - right) / cols, (height - top - bottom) / rows)))
                left, top, row_step, col_step = margins(cell)
            if min((width - left - right) / cols, (height - top - bottom) / rows) < _MIN_SIZED_CELL:
                need = (math.ceil(left + right + cols * _MIN_SIZED_CELL),
                        math.ceil(top + bottom + rows * _MIN_SIZED_CELL))
                msg = (f"size {width}x{height} is too small for a {rows}x{cols} grid with its labels and colorbar: "
                       f"it needs at least {max(width, need[0])}x{max(height, need[1])} pixels")
                raise UsageError(msg)
            if annotate is None:
                self.annotated = cell >= cell_size(grid, text_chars=text_chars, annotate=True, dpi=dpi,
                                                   font_pt=font_pt)[0]
            grid_w, grid_h = cols * cell, rows * cell
            # Centre the square cells in the room left by the margins, like tight_layout does.
            left = round(left + max(0.0, (width - left - right - grid_w) / 2))
            top = round(top + max(0.0, (height - top - bottom - grid_h) / 2))
            body_h = grid_h
        self.size = (width, height)
        self._cell = cell

        fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
        self._canvas = FigureCanvasAgg(fig)
        self._fig = fig
        ax_bottom = height - top - grid_h
        ax = fig.add_axes((left / width, ax_bottom / height, grid_w / width, grid_h / height))
        self._ax = ax
        self._cmap = mpl.colormaps[cmap].with_extremes(bad=NAN_COLOR)
        self._norm = mpl.colors.Normalize(vmin=vmin, vmax=vmax)
        self._limits = (float(vmin), float(vmax))
        blank = np.ma.masked_all(grid)  # type: ignore[no-untyped-call]
        self._image = ax.imshow(blank, cmap=self._cmap, norm=self._norm, aspect="auto", interpolation="nearest")
        cax = fig.add_axes(((left + grid_w + 14) / width, (height - top - body_h) / height,
                            16 / width, body_h / height))
        self._cax = cax
        cbar = fig.colorbar(self._image, cax=cax)
        cbar.outline.set_visible(False)
        cax.tick_params(labelsize=font_pt)

        ax.set_xticks(np.arange(0, cols, col_step), labels=[col_labels[j] for j in range(0, cols, col_step)],
                      fontsize=font_pt)
        ax.set_yticks(np.arange(0, rows, row_step), labels=[row_labels[i] for i in range(0, rows, row_step)],
                      fontsize=font_pt)
        ax.tick_params(top=True, bottom=False, labeltop=True, labelbottom=False)
        for label in ax.get_xticklabels():
            label.set(rotation=-30, ha="right", rotation_mode="anchor", parse_math=False)
        for label in ax.get_yticklabels():
            label.set(parse_math=False)
        for spine in ax.spines.values():
            spine.set_visible(False)
        self._grid_kw: dict[str, Any] | None = None
        if cell >= 6:
            ax.set_xticks(np.arange(cols + 1) - 0.5, minor=True)
            ax.set_yticks(np.arange(rows + 1) - 0.5, minor=True)
            self._grid_kw = {"color": "w", "linestyle": "-", "linewidth": min(3.0, cell * 0.08 * 72 / dpi)}
            ax.grid(which="minor", **self._grid_kw)
            ax.tick_params(which="minor", bottom=False, left=False, top=False)
        self._title = fig.text(0.5, 1 - 8 / height, "", ha="center", va="top", fontsize=_TITLE_PT,
                               parse_math=False)
        self._texts: list[Any] = []
        self._probe: Any = None
        if self.annotated and self.reference:
            self._texts = [ax.text(j, i, "", ha="center", va="center", fontsize=font_pt, parse_math=False)
                           for i in range(rows) for j in range(cols)]
        elif self.annotated:  # the fast path only asks matplotlib where a value text would go
            self._probe = ax.text(0, 0, "", ha="center", va="center", fontsize=font_pt, parse_math=False)
        self._dark = np.zeros(rows * cols, dtype=bool)
        self._dark_set = False
        self._fast: Composer | None = None

    def render(self, values: np.ndarray, title: str, limits: tuple[float, float] | None = None, *,
               copy: bool = True) -> np.ndarray:
        """Draw one frame and return it as an (height, width, 3) uint8 RGB array.

        Args:
            values: The grid's values, of the renderer's grid shape; NaN and ±inf allowed.
            title: The frame's title (may have several lines).
            limits: This frame's colour scale ``(vmin, vmax)``; ``None`` keeps the current one.
            copy: Return a new array; ``False`` returns the renderer's own buffer, valid
                until the next call (saves a copy when the frame is consumed at once).

        Raises:
            ValueError: ``values`` does not have the renderer's grid shape.
        """
        if values.shape != self.grid:
            msg = f"values must have the renderer's grid shape {self.grid}; got shape {values.shape}"
            raise ValueError(msg)
        values = np.asarray(values, dtype=np.float64)
        title = _title_text(title)
        if self.reference:
            return self._render_reference(values, title, limits)
        if self._fast is None:
            from mlflow_weightviz._glyphs import Composer

            self._fast = Composer(self)
        frame = self._fast.render(values, title, limits)
        return frame.copy() if copy else frame

    @property
    def changed_boxes(self) -> list[tuple[int, int, int, int]] | None:
        """Boxes ``(y0, y1, x0, x1)`` outside which the last frame equals the frame before it.

        ``None`` when it may differ anywhere (the first frame, a new colour scale, the
        reference path). Encoders use it to map only those pixels to the palette.
        """
        return None if self._fast is None else self._fast.changed

    def render_indices(self, values: np.ndarray, title: str, limits: tuple[float, float] | None, *,
                       quantize: Any, previous: np.ndarray | None) -> np.ndarray | None:
        """The next frame composed directly as palette indices: the same as ``quantize(render(...))``, faster.

        Only the changed parts are composed (see :attr:`changed_boxes`); the rest is ``previous``.

        Args:
            values: The grid's values, of the renderer's grid shape.
            title: The frame's title.
            limits: This frame's colour scale; ``None`` keeps the current one.
            quantize: The :class:`~mlflow_weightviz.encoders.Quantizer` of the GIF's palette.
            previous: The previous frame's indices (the same ``quantize``).

        Returns:
            The (H, W) uint8 indices, or ``None``, with nothing drawn, when the frame must be
            drawn with :meth:`render` and mapped whole: the first frame, a new colour scale,
            the reference path, no ``previous``.

        Raises:
            ValueError: ``values`` does not have the renderer's grid shape.
        """
        if self._fast is None or previous is None:
            return None
        if values.shape != self.grid:
            msg = f"values must have the renderer's grid shape {self.grid}; got shape {values.shape}"
            raise ValueError(msg)
        return self._fast.render_indices(np.asarray(values, dtype=np.float64), _title_text(title), limits,
                                         quantize, previous)

    def _render_reference(self, values: np.ndarray, title: str, limits: tuple[float, float] | None) -> np.ndarray:
        if limits is not None and (self._norm.vmin, self._norm.vmax) != limits:
            self._image.set_clim(*limits)
        masked = np.ma.masked_invalid(values)
        self._image.set_data(masked)
        self._title.set_text(title)
        if self._texts:
            dark = self._text_dark(self._norm(masked))
            changed = np.flatnonzero(dark != self._dark) if self._dark_set else range(dark.size)
            for k in changed:
                self._texts[k].set_color(_DARK_TEXT if dark[k] else _LIGHT_TEXT)
            self._dark, self._dark_set = dark, True
            for text, string in zip(self._texts, self._cell_texts(values.ravel().tolist()), strict=True):
                text.set_text(string)
        self._canvas.draw()  # type: ignore[no-untyped-call]
        return np.asarray(self._canvas.buffer_rgba())[..., :3].copy()  # type: ignore[no-untyped-call]

    def _cell_texts(self, values: list[float]) -> list[str]:
        """The strings written in the cells, for both paths."""
        fmt = self.fmt
        return [format_value(fmt, v) for v in values]

    def _text_dark(self, normed: np.ndarray) -> np.ndarray:
        """Per cell, flattened: whether its text is dark, from the values through the norm."""
        return text_is_dark(self._cmap(normed)).ravel()

    def palette_colors(self) -> np.ndarray:
        """The colours frames are built from, as (K, 3) uint8, to seed a shared GIF palette."""
        import matplotlib as mpl

        lut = self._cmap(np.linspace(0.0, 1.0, 160))[:, :3]
        fixed = [mpl.colors.to_rgb(c) for c in (NAN_COLOR, _DARK_TEXT, _LIGHT_TEXT, "black")]
        greys = np.linspace(0.0, 1.0, 24)[:, None].repeat(3, axis=1)
        return np.round(np.vstack([lut, fixed, greys]) * 255).astype(np.uint8)

    def close(self) -> None:
        """Release the figure."""
        self._fast = None
        self._fig.clear()
