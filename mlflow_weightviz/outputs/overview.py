"""The layers × steps overview: one picture that says which layers move, and when.

One row per layer (in model order), one column per snapshot step; the colour is a
per-layer statistic from :mod:`mlflow_weightviz.stats` (the update ratio
‖W_t − W_s‖/‖W_s‖ by default, on a log scale). The statistics are the ones the
``weightviz/<layer>/<stat>`` metrics carry: computed once per render by
:func:`mlflow_weightviz.stats.collect`, or read back where ``record()`` logged them.

Two files are written: ``overview.png`` (matplotlib, one figure) and ``overview.html``
(self-contained, no GIF: the cells as one small embedded PNG with the values on hover).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlflow_weightviz.frames import NAN_COLOR, shorten, text_is_dark
from mlflow_weightviz.options import OverviewStat
from mlflow_weightviz.stats import StepStats

__all__ = ["OVERVIEW_HTML", "OVERVIEW_PNG", "OverviewData", "model_order", "overview_data", "short_names",
           "write_overview"]

OVERVIEW_PNG = "overview.png"
OVERVIEW_HTML = "overview.html"

_CMAP = "viridis"
_DPI = 100
_LABEL_CHARS = 28  # a row label; longer names are shortened (the full ones are in the HTML)
_CHAR_EM = 0.62
# Leading parts of a name that only say which wrapper holds the model.
_WRAPPERS = {"module", "_orig_mod", "model", "transformer", "base_model", "_fsdp_wrapped_module"}

_TITLES = {
    OverviewStat.UPDATE_RATIO: "update ratio ‖W_t − W_s‖ / ‖W_s‖ against the previous snapshot",
    OverviewStat.DRIFT: "drift ‖W_t − W_0‖ / ‖W_0‖ against the first snapshot",
    OverviewStat.RMS: "RMS of the weights",
    OverviewStat.NORM: "Frobenius norm ‖W_t‖",
}


@dataclass(frozen=True)
class OverviewData:
    """The overview's numbers: ``values[i, j]`` is layer ``layers[i]`` at ``steps[j]`` (NaN: none)."""

    stat: OverviewStat
    layers: tuple[str, ...]
    labels: tuple[str, ...]
    steps: tuple[int, ...]
    values: np.ndarray

    def note(self) -> str:
        """What the empty (grey) cells mean."""
        if self.stat is OverviewStat.UPDATE_RATIO:
            return "grey: no value (a layer's first snapshot has no previous one)"
        return "grey: no value"


def short_names(names: Sequence[str], limit: int) -> list[str]:
    """Names shortened to fit ``limit`` characters, each distinct while the full names are.

    While every name fits, all stay whole. Otherwise the parts every name shares in front, wrapper
    parts (``module.``, ``transformer.``...) and a trailing ``.weight`` go first
    (``transformer.h.11.mlp.c_fc.weight`` → ``h.11.mlp.c_fc``), then the middle (``…``).
    """
    parts = [n.split(".") for n in names]
    common = 0
    if len(parts) > 1:
        while all(len(p) > common + 1 and p[common] == parts[0][common] for p in parts):
            common += 1
        while common and parts[0][common].isdigit():  # keep the container of an index: h.11, not 11
            common -= 1

    def trimmed(p: list[str]) -> str:
        q = p[common:]
        while len(q) > 1 and q[0] in _WRAPPERS:
            q = q[1:]
        if len(q) > 1 and q[-1] == "weight":
            q = q[:-1]
        return ".".join(q)

    # One rule for all names, so the labels read alike: trimmed as soon as any one does not fit.
    too_long = any(len(n) > limit for n in names)
    out = [trimmed(p) if too_long else n for n, p in zip(names, parts, strict=True)]
    if len(set(out)) < len(set(names)):  # trimming made two names alike: keep those whole
        seen: dict[str, int] = {}
        for s in out:
            seen[s] = seen.get(s, 0) + 1
        out = [n if seen[s] > 1 else s for n, s in zip(names, out, strict=True)]
    if all(len(s) <= limit for s in out):
        return out
    # Cut in the middle; where the cut makes names alike, try other places for it.
    for head in dict.fromkeys([limit // 2, limit // 3, 2 * limit // 3, 1, limit - 2]):
        cut = [s if len(s) <= limit else s[:head] + "…" + s[len(s) - (limit - 1 - head):] for s in out]
        if len(set(cut)) == len(set(names)):
            return cut
    cut = [shorten(s, limit) for s in out]
    count: dict[str, int] = {}
    for s in cut:
        count[s] = count.get(s, 0) + 1
    # Still alike: those get their position in front (the legend has the full names).
    return [f"{i}:{shorten(s, max(1, limit - len(str(i)) - 1))}" if count[s] > 1 else s for i, s in enumerate(cut)]


def _natural(name: str) -> list[tuple[int, int | str]]:
    return [(0, int(t)) if t.isdigit() else (1, t) for t in re.split(r"(\d+)", name) if t]


def model_order(layers: Sequence[str], first_seen: Sequence[str]) -> list[str]:
    """``layers`` in model order: as the snapshots listed them, or by name with numbers compared as numbers.

    Snapshot files written by ``record()`` list a model's layers in its own order; when the
    order seen is just the alphabetical one (one file per layer), ``h.2`` still goes before ``h.10``.
    """
    wanted = set(layers)
    seen = [name for name in dict.fromkeys(first_seen) if name in wanted]
    seen += [name for name in layers if name not in set(seen)]
    if seen == sorted(seen):
        return sorted(seen, key=_natural)
    return seen


def overview_data(layer_stats: Mapping[str, Sequence[StepStats]], stat: OverviewStat | str,
                  order: Sequence[str] | None = None) -> OverviewData:
    """The layers × steps table of ``stat`` from each layer's statistics (those of :func:`stats.collect`)."""
    stat = OverviewStat(stat)
    names = list(order) if order is not None else list(layer_stats)
    steps = sorted({s.step for name in names for s in layer_stats[name]})
    column = {step: j for j, step in enumerate(steps)}
    values = np.full((len(names), len(steps)), np.nan)
    for i, name in enumerate(names):
        for s in layer_stats[name]:
            value = getattr(s, stat.value)
            if value is not None and math.isfinite(value):
                values[i, column[s.step]] = value
    return OverviewData(stat, tuple(names), tuple(short_names(names, _LABEL_CHARS)), tuple(steps), values)


def write_overview(data: OverviewData, folder: Path) -> list[Path]:
    """Write ``overview.png`` and ``overview.html`` into ``folder``; returns both paths."""
    png, page = folder / OVERVIEW_PNG, folder / OVERVIEW_HTML
    scale = _Scale(data)
    _write_png(data, scale, png)
    _write_html(data, scale, page)
    return [png, page]


# ---------------------------------------------------------------------------- internals


class _Scale:
    """The colour scale: logarithmic while every value is positive (as ratios and norms are), else linear."""

    def __init__(self, data: OverviewData) -> None:
        import matplotlib as mpl

        finite = data.values[np.isfinite(data.values)]
        positive = finite[finite > 0]
        self.log = bool(positive.size) and positive.size >= finite.size - int(np.sum(finite == 0))
        if self.log:
            lo, hi = float(positive.min()), float(positive.max())
            if lo == hi:
                lo, hi = lo / 2, hi * 2
            self.norm: mpl.colors.Normalize = mpl.colors.LogNorm(vmin=lo, vmax=hi)
        else:
            lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
            if lo == hi:
                lo, hi = lo - 0.5, hi + 0.5
            self.norm = mpl.colors.Normalize(vmin=lo, vmax=hi)
        self.cmap = mpl.colormaps[_CMAP].with_extremes(bad=NAN_COLOR, under=NAN_COLOR)
        self.lo, self.hi = lo, hi
        # Zeros (the drift of the first snapshot) have no place on a log scale: they are grey.
        self.shown = np.where(np.isfinite(data.values) & ((data.values > 0) | (not self.log)), data.values, np.nan)

    def rgba(self) -> np.ndarray:
        """Every cell's colour, (layers, steps, 4) floats."""
        return np.asarray(self.cmap(self.norm(np.ma.masked_invalid(self.shown))))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _fmt(value: float) -> str:
    return "" if not math.isfinite(value) else f"{value:.2g}"


def _write_png(data: OverviewData, scale: _Scale, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n, m = data.values.shape
    n, m = max(n, 1), max(m, 1)
    # Cells shrink as layers and steps grow, down to sizes whose labels stay readable; the
    # picture grows to about 1650 × 1800 pixels at 150 × 200.
    cell_h = int(np.clip(1600 // n, 11, 28))
    cell_w = int(np.clip(1600 // m, 5, 64))
    label_pt = min(9.0, max(6.0, cell_h * 0.85 * 72 / _DPI))
    label_px = label_pt * _DPI / 72
    row_step = max(1, math.ceil(label_px * 1.15 / cell_h))  # only for thousands of layers
    tick_pt = 8.0
    tick_px = tick_pt * _DPI / 72
    step_chars = max((len(str(s)) for s in data.steps), default=1)
    col_step = max(1, math.ceil((step_chars * tick_px * _CHAR_EM + 10) / cell_w))
    annotate = cell_h >= 16 and cell_w >= 7 * 7 * _DPI / 72 * _CHAR_EM + 6
    left = max((len(s) for s in data.labels), default=4) * label_px * _CHAR_EM + 20
    title_pt = 11.0
    top = 2 * title_pt * _DPI / 72 * 1.45 + 24
    right = 16 + 14 + 8 * tick_px * _CHAR_EM + 24 + tick_px * 1.6
    bottom = tick_px * 1.4 + 14 + tick_px * 1.5 + 10
    grid_w, grid_h = m * cell_w, n * cell_h
    title = f"{_TITLES[data.stat]}  ·  {_count(len(data.layers), 'layer')} × {_count(len(data.steps), 'step')}"
    note = data.note()
    title_w = max(len(title) * title_pt, len(note) * 9) * _DPI / 72 * _CHAR_EM * 0.92 + 32
    width = math.ceil(max(left + grid_w + right, title_w, 480))
    bar_h = max(grid_h, 160)  # a colorbar readable even for one layer
    height = math.ceil(top + bar_h + bottom)
    fig = Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((left / width, (height - top - grid_h) / height, grid_w / width, grid_h / height))
    image = ax.imshow(np.ma.masked_invalid(scale.shown), cmap=scale.cmap, norm=scale.norm, aspect="auto",
                      interpolation="nearest")
    # Labels as plain texts: a matplotlib Tick per row costs several artists and most of the drawing time.
    ax.set_xticks([])
    ax.set_yticks([])
    for i in range(0, len(data.labels), row_step):
        ax.text(-0.5 - 4 / cell_w, i, data.labels[i], ha="right", va="center", fontsize=label_pt, parse_math=False,
                clip_on=False)
    for j in range(0, len(data.steps), col_step):
        ax.text(j, len(data.labels) - 0.5 + 4 / cell_h, str(data.steps[j]), ha="center", va="top",
                fontsize=tick_pt, parse_math=False, clip_on=False)
    ax.text((len(data.steps) - 1) / 2, len(data.labels) - 0.5 + (tick_px * 1.4 + 8) / cell_h, "step", ha="center",
            va="top", fontsize=tick_pt, parse_math=False, clip_on=False)
    for spine in ax.spines.values():
        spine.set_visible(False)
    # White lines between cells as two line collections: minor ticks would cost a Tick each.
    line = 0.6 if min(cell_w, cell_h) < 12 else 1.2
    ax.hlines(np.arange(1, len(data.layers)) - 0.5, -0.5, len(data.steps) - 0.5, colors="w", linewidth=line)
    if cell_w >= 6:
        ax.vlines(np.arange(1, len(data.steps)) - 0.5, -0.5, len(data.layers) - 0.5, colors="w", linewidth=line)
    if annotate:
        dark = text_is_dark(scale.rgba())
        for i in range(data.values.shape[0]):
            for j in range(data.values.shape[1]):
                text = _fmt(float(data.values[i, j]))
                if text:
                    ax.text(j, i, text, ha="center", va="center", fontsize=7, parse_math=False,
                            color="#262626" if dark[i, j] or not np.isfinite(scale.shown[i, j]) else "#ffffff")
    cax = fig.add_axes(((left + grid_w + 16) / width, (height - top - bar_h) / height, 14 / width,
                        bar_h / height))
    cbar = fig.colorbar(image, cax=cax)
    cbar.outline.set_visible(False)
    cax.tick_params(labelsize=tick_pt)
    cbar.set_label("log scale" if scale.log else "linear scale", fontsize=tick_pt)
    fig.text(0.5, 1 - 8 / height, title, ha="center", va="top", fontsize=title_pt, parse_math=False)
    fig.text(0.5, 1 - (12 + title_pt * _DPI / 72 * 1.45) / height, note, ha="center", va="top",
             fontsize=9, color="#555555", parse_math=False)
    fig.savefig(path, dpi=_DPI, format="png")
    fig.clear()


def _png_bytes(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _write_html(data: OverviewData, scale: _Scale, path: Path) -> None:
    cells = (scale.rgba()[..., :3] * 255).round().astype(np.uint8)
    if cells.size == 0:
        cells = np.full((1, 1, 3), 128, np.uint8)
    bar = (np.asarray(scale.cmap(np.linspace(1, 0, 256)))[:, None, :3] * 255).round().astype(np.uint8)  # high on top
    payload = {
        "stat": data.stat.value,
        "layers": list(data.layers),
        "labels": list(data.labels),
        "steps": list(data.steps),
        "values": [[None if not math.isfinite(v) else float(v) for v in row] for row in data.values.tolist()],
    }
    n, m = data.values.shape
    cell_h = int(np.clip(1600 // max(n, 1), 12, 24))
    cell_w = int(np.clip(1600 // max(m, 1), 5, 48))
    kind = "log" if scale.log else "linear"
    title = f"{_TITLES[data.stat]} · {_count(n, 'layer')} × {_count(m, 'step')} · {kind} scale"
    rows = "".join(f'<div title="{html.escape(full)}">{html.escape(short)}</div>'
                   for full, short in zip(data.layers, data.labels, strict=True))
    step_chars = max((len(str(s)) for s in data.steps), default=1)
    col_step = max(1, math.ceil((step_chars * 7 + 10) / cell_w))
    cols = "".join(f'<span style="left:{j * cell_w}px">{data.steps[j]}</span>' for j in range(0, m, col_step))
    legend = "".join(f"<li><code>{html.escape(s)}</code> = <code>{html.escape(f)}</code></li>"
                     for f, s in zip(data.layers, data.labels, strict=True) if f != s)
    page = _PAGE.format(
        title=html.escape(title), note=html.escape(data.note()), cell_h=cell_h, row_pt=min(12, cell_h - 1),
        grid_w=m * cell_w, grid_h=n * cell_h, rows=rows, cols=cols,
        cells=base64.b64encode(_png_bytes(cells)).decode(), bar=base64.b64encode(_png_bytes(bar)).decode(),
        lo=html.escape(f"{scale.lo:.3g}"), hi=html.escape(f"{scale.hi:.3g}"),
        legend=f"<details><summary>full layer names</summary><ul>{legend}</ul></details>" if legend else "",
        data=json.dumps(payload, separators=(",", ":")).replace("</", "<\\/"))
    path.write_text(page, encoding="utf-8")


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>weightviz overview</title>
<style>
body{{font:13px/1.4 system-ui,sans-serif;color:#262626;margin:16px}}
h1{{font-size:15px;margin:0 0 4px}} .note{{color:#555;margin:0 0 12px}}
.wrap{{display:flex;align-items:flex-start}}
.rows{{text-align:right;padding-right:6px;font-size:{row_pt}px;white-space:nowrap}}
.rows div{{height:{cell_h}px;line-height:{cell_h}px;overflow:hidden}}
.cells{{position:relative}}
#cells{{display:block;width:{grid_w}px;height:{grid_h}px;image-rendering:pixelated;cursor:crosshair}}
.cols{{position:relative;height:18px;font-size:11px;color:#444}} .cols span{{position:absolute;top:2px}}
.bar{{margin-left:16px;font-size:11px;text-align:center}}
.bar img{{display:block;width:14px;height:200px;image-rendering:pixelated;margin:4px auto}}
#tip{{position:fixed;pointer-events:none;background:#262626;color:#fff;padding:4px 8px;border-radius:4px;
font-size:12px;display:none;white-space:nowrap}}
</style></head><body>
<h1>{title}</h1><p class="note">{note}</p>
<div class="wrap"><div class="rows">{rows}</div>
<div class="cells"><img id="cells" alt="overview" src="data:image/png;base64,{cells}">
<div class="cols">{cols}</div><div style="text-align:center;font-size:11px">step</div></div>
<div class="bar">{hi}<img alt="colour scale" src="data:image/png;base64,{bar}">{lo}</div>
</div>{legend}<div id="tip"></div>
<script id="data" type="application/json">{data}</script>
<script>
(function(){{
const D=JSON.parse(document.getElementById("data").textContent);
const img=document.getElementById("cells"),tip=document.getElementById("tip");
img.addEventListener("mousemove",function(e){{
  const r=img.getBoundingClientRect();
  const j=Math.floor((e.clientX-r.left)/r.width*D.steps.length);
  const i=Math.floor((e.clientY-r.top)/r.height*D.layers.length);
  if(i<0||j<0||i>=D.layers.length||j>=D.steps.length){{tip.style.display="none";return;}}
  const v=D.values[i][j];
  tip.textContent=D.layers[i]+" · step "+D.steps[j]+" · "+D.stat+" = "+(v===null?"none":v.toPrecision(4));
  tip.style.left=(e.clientX+12)+"px";tip.style.top=(e.clientY+12)+"px";tip.style.display="block";
}});
img.addEventListener("mouseleave",function(){{tip.style.display="none";}});
}})();
</script></body></html>
"""
