"""The heatmap renderer: how a grid of values becomes an RGB frame.

It draws matplotlib's annotated heatmap (the gallery example the original script copied):
values written in the cells with a text colour chosen for contrast, tick labels on top
with the column labels rotated, a white grid between cells and no spines, plus a
colorbar and a title. As in seaborn's ``matrix.py`` and matplotlib's animation module,
the figure and every artist are built once; each frame only updates the image data, the
texts and the title. The figure size is fixed in pixels from the grid shape, so every
frame has the same size and layout.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["NAN_COLOR", "HeatmapRenderer", "cell_size", "format_value", "text_is_dark"]

#: Colour of NaN and infinite cells; it is in neither default colormap.
NAN_COLOR = "#808080"
_FONT_PT = 9.0
_TITLE_PT = 11.0
_CHAR_EM = 0.62  # average width of a digit or letter in DejaVu Sans, in ems
_MAX_ANNOTATED_PX = 1600  # auto-annotation only while the grid stays this small
_DARK_TEXT = "#262626"
_LIGHT_TEXT = "#ffffff"


def format_value(fmt: str, value: float) -> str:
    """Format one cell value; NaN and infinities read ``nan``, ``inf`` and ``-inf``."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return fmt.format(x=value)


def cell_size(grid: tuple[int, int], *, text_chars: int, annotate: bool | None, dpi: int) -> tuple[int, bool]:
    """The side of a cell in pixels, and whether values are written in the cells."""
    char_px = _FONT_PT * dpi / 72 * _CHAR_EM
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
    """

    def __init__(self, grid: tuple[int, int], *, cmap: str, vmin: float, vmax: float, fmt: str,
                 annotate: bool | None, row_labels: Sequence[str], col_labels: Sequence[str],
                 title_sample: str, dpi: int = 100) -> None:
        import matplotlib as mpl
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        rows, cols = grid
        self.grid = grid
        self.fmt = fmt
        samples = [format_value(fmt, v) for v in (vmin, vmax, -abs(vmax), -abs(vmin))] + ["-inf"]
        cell, self.annotated = cell_size(grid, text_chars=max(map(len, samples)), annotate=annotate, dpi=dpi)
        fs_px = _FONT_PT * dpi / 72
        char_px = fs_px * _CHAR_EM
        row_step = max(1, math.ceil(fs_px * 1.3 / cell))
        col_step = max(1, math.ceil(fs_px * 1.6 / cell))
        row_chars = max((len(row_labels[i]) for i in range(0, rows, row_step)), default=1)
        col_chars = max((len(col_labels[j]) for j in range(0, cols, col_step)), default=1)
        title_lines = title_sample.count("\n") + 1
        title_px = _TITLE_PT * dpi / 72

        # Pixel layout, fixed for every frame (no tight bbox during an animation).
        left = max(row_chars * char_px + 16, col_chars * char_px * 0.87 - cell / 2 + 8)
        top = title_lines * title_px * 1.35 + 14 + col_chars * char_px * 0.5 + fs_px + 10
        cbar_text = max(len(f"{v:.3g}") for v in (vmin, vmax)) + 1
        right = 14 + 16 + cbar_text * char_px + 16
        grid_w, grid_h = cols * cell, rows * cell
        body_h = max(grid_h, 160)
        bottom = 10
        width = math.ceil(max(left + grid_w + right,
                              max(map(len, title_sample.splitlines())) * title_px * _CHAR_EM + 24))
        height = math.ceil(top + body_h + bottom)
        width += width % 2  # even sizes keep video encoders happy
        height += height % 2
        self.size = (width, height)

        fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
        self._canvas = FigureCanvasAgg(fig)
        self._fig = fig
        ax_bottom = height - top - grid_h
        ax = fig.add_axes((left / width, ax_bottom / height, grid_w / width, grid_h / height))
        self._cmap = mpl.colormaps[cmap].with_extremes(bad=NAN_COLOR)
        self._norm = mpl.colors.Normalize(vmin=vmin, vmax=vmax)
        blank = np.ma.masked_all(grid)  # type: ignore[no-untyped-call]
        self._image = ax.imshow(blank, cmap=self._cmap, norm=self._norm, aspect="auto", interpolation="nearest")
        cax = fig.add_axes(((left + grid_w + 14) / width, (height - top - body_h) / height,
                            16 / width, body_h / height))
        cbar = fig.colorbar(self._image, cax=cax)
        cbar.outline.set_visible(False)
        cax.tick_params(labelsize=_FONT_PT)

        ax.set_xticks(np.arange(0, cols, col_step), labels=[col_labels[j] for j in range(0, cols, col_step)],
                      fontsize=_FONT_PT)
        ax.set_yticks(np.arange(0, rows, row_step), labels=[row_labels[i] for i in range(0, rows, row_step)],
                      fontsize=_FONT_PT)
        ax.tick_params(top=True, bottom=False, labeltop=True, labelbottom=False)
        for label in ax.get_xticklabels():
            label.set(rotation=-30, ha="right", rotation_mode="anchor")
        for spine in ax.spines.values():
            spine.set_visible(False)
        if cell >= 6:
            ax.set_xticks(np.arange(cols + 1) - 0.5, minor=True)
            ax.set_yticks(np.arange(rows + 1) - 0.5, minor=True)
            ax.grid(which="minor", color="w", linestyle="-", linewidth=min(3.0, cell * 0.08 * 72 / dpi))
            ax.tick_params(which="minor", bottom=False, left=False, top=False)
        self._title = fig.text(0.5, 1 - 8 / height, "", ha="center", va="top", fontsize=_TITLE_PT)
        self._texts: list[Any] = []
        if self.annotated:
            self._texts = [ax.text(j, i, "", ha="center", va="center", fontsize=_FONT_PT)
                           for i in range(rows) for j in range(cols)]
        self._dark = np.zeros(rows * cols, dtype=bool)
        self._dark_set = False

    def render(self, values: np.ndarray, title: str, limits: tuple[float, float] | None = None) -> np.ndarray:
        """Draw one frame and return it as an (height, width, 3) uint8 RGB array.

        Raises:
            ValueError: ``values`` does not have the renderer's grid shape.
        """
        if values.shape != self.grid:
            msg = f"values must have the renderer's grid shape {self.grid}; got shape {values.shape}"
            raise ValueError(msg)
        if limits is not None and (self._norm.vmin, self._norm.vmax) != limits:
            self._image.set_clim(*limits)
        masked = np.ma.masked_invalid(values)
        self._image.set_data(masked)
        self._title.set_text(title)
        if self._texts:
            dark = text_is_dark(self._cmap(self._norm(masked))).ravel()
            changed = np.flatnonzero(dark != self._dark) if self._dark_set else range(dark.size)
            for k in changed:
                self._texts[k].set_color(_DARK_TEXT if dark[k] else _LIGHT_TEXT)
            self._dark, self._dark_set = dark, True
            fmt = self.fmt
            for text, value in zip(self._texts, values.ravel().tolist(), strict=True):
                text.set_text(format_value(fmt, value))
        self._canvas.draw()  # type: ignore[no-untyped-call]
        return np.asarray(self._canvas.buffer_rgba())[..., :3].copy()  # type: ignore[no-untyped-call]

    def palette_colors(self) -> np.ndarray:
        """The colours frames are built from, as (K, 3) uint8, to seed a shared GIF palette."""
        import matplotlib as mpl

        lut = self._cmap(np.linspace(0.0, 1.0, 160))[:, :3]
        fixed = [mpl.colors.to_rgb(c) for c in (NAN_COLOR, _DARK_TEXT, _LIGHT_TEXT, "black")]
        greys = np.linspace(0.0, 1.0, 24)[:, None].repeat(3, axis=1)
        return np.round(np.vstack([lut, fixed, greys]) * 255).astype(np.uint8)

    def close(self) -> None:
        """Release the figure."""
        self._fig.clear()
