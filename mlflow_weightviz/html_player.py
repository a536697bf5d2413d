"""An interactive HTML player for one layer: one self-contained file, no network needed.

The MLflow UI shows ``.html`` artifacts in a sandboxed iframe that runs scripts, so a
player logged next to the GIF works right in the run's artifact view. It has play/pause,
a step slider, keyboard arrows, a colour-scale legend, and shows a cell's row and column
labels and its value at that step when the pointer is over it. The value comes from the
data embedded in the file, not from the picture.

Storage is compact and lossless at float32 precision: each frame's float32 bits are
XOR-ed with the previous frame's (slowly changing weights share their sign, exponent and
leading mantissa bits), split into four byte planes, deflated as one zlib stream and
base64-encoded. The browser inflates it with ``DecompressionStream`` and draws each frame
on a canvas with the same matplotlib colormap as the GIF (its lookup table is embedded).

The writer streams like the GIF encoder (``add_frame`` then ``finish``), so a long run
never needs all frames in memory on the Python side.
"""

from __future__ import annotations

import base64
import json
import os
import re
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy as np

from mlflow_weightviz._files import atomic_file
from mlflow_weightviz.options import WeightvizWarning

__all__ = ["MLFLOW_PREVIEW_LIMIT", "HtmlPlayerWriter", "colormap_table", "js_format_spec", "read_player",
           "write_player"]

#: The MLflow UI previews artifacts up to this size; larger files can only be downloaded.
MLFLOW_PREVIEW_LIMIT = 50 * 1024 * 1024

_FMT = re.compile(r"^(?P<pre>[^{}]*)\{x(?::(?P<spec>[^{}]*))?\}(?P<post>[^{}]*)$")
_SPEC = re.compile(r"^(?P<sign>[+\- ]?)(?P<zero>0?)(?P<width>\d*)(?P<group>[,_]?)"
                   r"(?:\.(?P<prec>\d+))?(?P<type>[eEfFgGn%]?)$")


def js_format_spec(fmt: str) -> dict[str, Any] | None:
    """Translate a ``"{x:.3f}"``-style pattern into the parts the player's formatter uses.

    Returns ``None`` for patterns the player cannot reproduce exactly (it then shows
    7 significant digits).
    """
    m = _FMT.match(fmt)
    if m is None:
        return None
    spec = _SPEC.match(m["spec"] or "")
    if spec is None:
        return None
    return {"pre": m["pre"].replace("{{", "{").replace("}}", "}"), "post": m["post"],
            "sign": spec["sign"], "zero": bool(spec["zero"]), "width": int(spec["width"] or 0),
            "group": spec["group"], "prec": None if spec["prec"] is None else int(spec["prec"]),
            "type": spec["type"]}


def colormap_table(name: str) -> dict[str, Any]:
    """The colormap's lookup table as the player needs it: RGB bytes and a dark-text flag per entry.

    The GIF's renderer maps a value through ``Normalize`` and this same table, so both
    show the same colour for the same value.
    """
    import matplotlib as mpl

    from mlflow_weightviz.frames import NAN_COLOR, text_is_dark

    cmap = mpl.colormaps[name]
    rgba = np.asarray(cmap(np.arange(cmap.N)))
    extremes = np.asarray([cmap.get_under(), cmap.get_over(), mpl.colors.to_rgba(NAN_COLOR)])

    def to_bytes(colours: np.ndarray) -> list[int]:
        return [int(v) for v in np.round(colours[:, :3] * 255).astype(np.uint8).ravel()]

    return {"n": int(cmap.N), "lut": base64.b64encode(bytes(to_bytes(rgba))).decode(),
            "dark": "".join("1" if d else "0" for d in text_is_dark(rgba)),
            "under": to_bytes(extremes[:1]), "over": to_bytes(extremes[1:2]), "bad": to_bytes(extremes[2:]),
            "extremes_dark": [bool(d) for d in text_is_dark(extremes)]}


class HtmlPlayerWriter:
    """Writes a self-contained HTML player frame by frame to a binary file.

    Use it as a context manager, which finishes the file on success::

        with HtmlPlayerWriter(fh, name="fc1", grid=(4, 6), cmap="RdBu_r", vmin=-1, vmax=1,
                              fmt="{x:.3f}") as player:
            for step, frame in zip(steps, frames):
                player.add_frame(frame, step=step, title=f"fc1 · step {step}")

    Args:
        fh: A binary file opened for writing.
        name: The layer name, shown in the page title.
        grid: Rows and columns of every frame.
        cmap: A matplotlib colormap name.
        vmin: Low end of the colour scale (frames may override it).
        vmax: High end of the colour scale.
        fmt: ``str.format`` pattern of values, as in the GIF, e.g. ``"{x:.4f}"``.
        row_labels: One label per row; defaults to the row index.
        col_labels: One label per column; defaults to the column index.
        frame_ms: Display time of each frame when playing.
        hold_last_ms: Display time of the last frame when playing.
        annotate: Write values in the cells; ``None`` does so when they fit.
        note: One line under the player, e.g. how the matrix was pooled.
        block: Rows and columns of weights behind each cell when the matrix was pooled.
        matrix: The full matrix shape before pooling (for hover ranges).
        size_limit: Warn when the finished file is larger than this many bytes (the MLflow
            UI's preview limit by default).
    """

    def __init__(self, fh: IO[bytes], *, name: str, grid: tuple[int, int], cmap: str, vmin: float, vmax: float,
                 fmt: str, row_labels: Sequence[str] | None = None, col_labels: Sequence[str] | None = None,
                 frame_ms: int = 200, hold_last_ms: int = 1000, annotate: bool | None = None, note: str = "",
                 block: tuple[int, int] = (1, 1), matrix: tuple[int, int] | None = None,
                 size_limit: int = MLFLOW_PREVIEW_LIMIT) -> None:
        rows, cols = grid
        if rows < 1 or cols < 1:
            msg = f"grid must have at least one row and column; got {grid}"
            raise ValueError(msg)
        self.grid = grid
        self.bytes_written = 0
        self._size_limit = size_limit
        self._fh = fh
        self._meta: dict[str, Any] = {
            "name": name, "rows": rows, "cols": cols, "vmin": float(vmin), "vmax": float(vmax), "fmt": fmt,
            "spec": js_format_spec(fmt), "rowLabels": list(row_labels or map(str, range(rows))),
            "colLabels": list(col_labels or map(str, range(cols))), "frameMs": int(frame_ms),
            "holdLastMs": int(hold_last_ms), "annotate": annotate, "note": note, "block": list(block),
            "matrix": list(matrix or grid), "cmapName": cmap, "cmap": colormap_table(cmap), "codec": "deflate",
        }
        if len(self._meta["rowLabels"]) != rows or len(self._meta["colLabels"]) != cols:
            msg = (f"labels must match the grid {rows}×{cols}; got {len(self._meta['rowLabels'])} row and "
                   f"{len(self._meta['colLabels'])} column labels")
            raise ValueError(msg)
        self._steps: list[int] = []
        self._titles: list[str] = []
        self._limits: list[list[float]] = []
        self._prev = np.zeros(rows * cols, dtype="<u4")
        self._zip = zlib.compressobj(6)
        self._carry = b""  # compressed bytes not yet base64-encoded (base64 works in groups of 3)
        self._write(_HEAD.replace("%TITLE%", _html_text(f"{name} · weightviz")).encode())

    def __enter__(self) -> HtmlPlayerWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.finish()

    @property
    def frames(self) -> int:
        """Frames added so far."""
        return len(self._steps)

    def add_frame(self, values: np.ndarray, *, step: int, title: str = "",
                  limits: tuple[float, float] | None = None) -> None:
        """Add one frame of display values (NaN and ±inf allowed).

        Raises:
            ValueError: ``values`` does not have the player's grid shape.
        """
        arr = np.asarray(values)
        if arr.shape != self.grid:
            msg = f"values must have the player's grid shape {self.grid}; got shape {arr.shape}"
            raise ValueError(msg)
        bits = np.ascontiguousarray(arr, dtype="<f4").ravel().view("<u4")
        planes = (bits ^ self._prev).view(np.uint8).reshape(-1, 4).T  # byte b of every value together
        self._prev = bits.copy()
        self._emit(self._zip.compress(np.ascontiguousarray(planes).tobytes()))
        self._steps.append(int(step))
        self._titles.append(title)
        lo, hi = limits if limits is not None else (self._meta["vmin"], self._meta["vmax"])
        self._limits.append([float(lo), float(hi)])

    def finish(self) -> int:
        """Write the rest of the file; returns its size in bytes.

        Warns with :class:`WeightvizWarning` when the file is too large for the MLflow UI's preview.
        """
        if not self._steps:
            msg = "a player needs at least one frame"
            raise ValueError(msg)
        self._emit(self._zip.flush())
        self._write(base64.b64encode(self._carry) + b"\n</script>\n")
        meta = dict(self._meta, steps=self._steps, titles=self._titles,
                    limits=self._limits if len({tuple(x) for x in self._limits}) > 1 else None)
        # Escaping "<" keeps "</script>" inside a label from ending the script element.
        payload = json.dumps(meta, allow_nan=False, separators=(",", ":"), default=_json_float).replace("<", "\\u003c")
        self._write(f'<script type="application/json" id="wv-meta">{payload}</script>\n'.encode())
        self._write(_PLAYER_JS.encode())
        self._fh.flush()
        if self.bytes_written > self._size_limit:
            warnings.warn(
                f"the HTML player of {self._meta['name']!r} is {self.bytes_written / 2**20:.1f} MiB, over the MLflow "
                f"UI's {MLFLOW_PREVIEW_LIMIT // 2**20} MiB preview limit: the UI will only offer it for download "
                "(fewer frames with --max-frames or a smaller grid with --max-rows/--max-cols keep it viewable)",
                WeightvizWarning, stacklevel=2)
        return self.bytes_written

    def _emit(self, data: bytes) -> None:
        data = self._carry + data
        cut = len(data) - len(data) % 3
        if cut >= 3 * 16384:  # write in large groups; 3 bytes are 4 base64 characters
            self._write(base64.b64encode(data[:cut]) + b"\n")
            data = data[cut:]
        self._carry = data

    def _write(self, data: bytes) -> None:
        self._fh.write(data)
        self.bytes_written += len(data)


def _json_float(value: object) -> object:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    msg = f"cannot store {type(value).__name__} in the player"
    raise TypeError(msg)


def _html_text(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def read_player(path: str | os.PathLike[str]) -> tuple[dict[str, Any], np.ndarray]:
    """Read a player's metadata and its (frames, rows, cols) float32 values back, as the browser does.

    Raises:
        ValueError: The file is not a player written by this module.
    """
    text = Path(path).read_text(encoding="utf-8")
    try:
        data = text.split('<script type="text/plain" id="wv-data">', 1)[1].split("</script>", 1)[0]
        meta_text = text.split('<script type="application/json" id="wv-meta">', 1)[1].split("</script>", 1)[0]
    except IndexError:
        msg = f"{path} is not a weightviz HTML player (no embedded data)"
        raise ValueError(msg) from None
    meta: dict[str, Any] = json.loads(meta_text)
    raw = base64.b64decode("".join(data.split()))
    if meta["codec"] == "deflate":
        raw = zlib.decompress(raw)
    frames, n = len(meta["steps"]), meta["rows"] * meta["cols"]
    planes = np.frombuffer(raw, np.uint8).reshape(frames, 4, n)
    xored = planes.transpose(0, 2, 1).copy().view("<u4")[..., 0]
    bits = np.bitwise_xor.accumulate(xored, axis=0)  # undo the XOR with the previous frame
    return meta, bits.view("<f4").reshape(frames, meta["rows"], meta["cols"])


def write_player(path: str | os.PathLike[str], values: np.ndarray, *, steps: Sequence[int],
                 titles: Sequence[str] | None = None, limits: Sequence[tuple[float, float]] | None = None,
                 name: str = "layer", cmap: str = "viridis", vmin: float | None = None, vmax: float | None = None,
                 fmt: str = "{x:.4f}", **kwargs: Any) -> Path:
    """Write a player for a (frames, rows, cols) stack of values; the file appears only when complete.

    ``vmin``/``vmax`` default to the finite range of ``values``. Other keyword arguments go to
    :class:`HtmlPlayerWriter`.

    Returns:
        The path written.

    Raises:
        ValueError: ``values`` is not 3-D or ``steps`` does not have one step per frame.
        OutputError: The file cannot be written.
    """
    stack = np.asarray(values)
    if stack.ndim != 3:
        msg = f"values must be 3D with shape (frames, rows, cols); your input has shape {stack.shape}"
        raise ValueError(msg)
    if len(steps) != stack.shape[0]:
        msg = f"steps must give one step per frame ({stack.shape[0]}); got {len(steps)}"
        raise ValueError(msg)
    finite = stack[np.isfinite(stack)]
    lo = float(finite.min()) if vmin is None and finite.size else (vmin if vmin is not None else 0.0)
    hi = float(finite.max()) if vmax is None and finite.size else (vmax if vmax is not None else 1.0)
    if not lo < hi:
        lo, hi = lo - (abs(lo) * 0.1 or 1.0), hi + (abs(hi) * 0.1 or 1.0)
    target = Path(path)
    with atomic_file(target) as fh, HtmlPlayerWriter(fh, name=name, grid=(stack.shape[1], stack.shape[2]),
                                                     cmap=cmap, vmin=lo, vmax=hi, fmt=fmt, **kwargs) as player:
        for i, step in enumerate(steps):
            player.add_frame(stack[i], step=step, title=titles[i] if titles else f"{name}  ·  step {step}",
                             limits=limits[i] if limits else None)
    return target


_HEAD = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>%TITLE%</title>
<style>
  html, body { margin: 0; background: #fff; color: #262626;
               font: 13px/1.35 "DejaVu Sans", system-ui, -apple-system, "Segoe UI", sans-serif; }
  #wv { padding: 10px 14px; display: inline-block; min-width: 320px; }
  #title { font-size: 14px; text-align: center; white-space: pre-line; min-height: 2.7em; margin-bottom: 6px; }
  #stage { display: flex; align-items: flex-start; gap: 6px; position: relative; }
  #heat { cursor: crosshair; max-width: 100%; flex: 0 1 auto; min-width: 0; }
  #legend { flex: none; }
  #box { position: absolute; border: 2px solid #111; pointer-events: none; display: none; box-sizing: border-box; }
  #tip { position: absolute; display: none; pointer-events: none; background: rgba(255,255,255,.96);
         border: 1px solid #999; border-radius: 4px; padding: 4px 7px; white-space: pre; font-size: 12px;
         box-shadow: 0 1px 4px rgba(0,0,0,.2); z-index: 2; }
  #controls { display: flex; align-items: center; gap: 10px; margin-top: 8px; }
  #play { min-width: 66px; padding: 3px 8px; font: inherit; cursor: pointer; }
  #slider { flex: 1; min-width: 160px; }
  #stepinfo { font-variant-numeric: tabular-nums; white-space: nowrap; }
  #note { color: #666; font-size: 11px; margin-top: 6px; }
  #error { color: #b00020; white-space: pre-line; }
</style></head>
<body>
<div id="wv" data-ready="0" data-frame="-1">
  <div id="title">loading…</div>
  <div id="stage"><canvas id="heat" width="10" height="10"></canvas><canvas id="legend" width="10" height="10">
  </canvas><div id="box"></div><div id="tip"></div></div>
  <div id="controls"><button id="play" type="button" title="Play / pause (space)">Play</button>
    <input id="slider" type="range" min="0" max="0" value="0" step="1" aria-label="frame">
    <span id="stepinfo"></span></div>
  <div id="note"></div><div id="error"></div>
</div>
<script type="text/plain" id="wv-data">
"""

_PLAYER_JS = r"""<script>
"use strict";
(function () {
  const meta = JSON.parse(document.getElementById("wv-meta").textContent);
  const $ = (id) => document.getElementById(id);
  const root = $("wv"), heat = $("heat"), legend = $("legend"), slider = $("slider"), playBtn = $("play");
  const R = meta.rows, C = meta.cols, N = R * C, T = meta.steps.length;
  const cm = meta.cmap;
  const lut = Uint8Array.from(atob(cm.lut), (c) => c.charCodeAt(0));
  let frames = [];          // one Float32Array per frame
  let current = -1, timer = null, hover = null;

  // ---- number formatting: Python's str.format mini-language for one float (the GIF's fmt)
  function pyRepr(x) {
    if (Number.isNaN(x)) return "nan";
    if (!Number.isFinite(x)) return x > 0 ? "inf" : "-inf";
    return null;
  }
  function expFix(s) {   // JS "1.5e-5" -> Python "1.5e-05"
    return s.replace(/e([+-])(\d)$/, "e$10$2");
  }
  function toFixedEven(a, p) {   // toFixed rounds exact ties up; Python rounds them to even
    const s = a.toFixed(p), y = a * Math.pow(10, p);
    if (y > 2 ** 52 || Number.isInteger(y) || !Number.isInteger(y * 2)) return s;
    const lo = Math.floor(y), n = lo % 2 === 0 ? lo : lo + 1;
    const digits = String(n).padStart(p + 1, "0");
    return p === 0 ? digits : digits.slice(0, -p) + "." + digits.slice(-p);
  }
  function fmtG(x, p, upper) {
    p = p === 0 ? 1 : p;
    if (x === 0) return "0";
    const e = parseInt(x.toExponential(p - 1).split("e")[1], 10);
    let s;
    if (e < -4 || e >= p) {
      s = x.toExponential(p - 1);
      let [m, ex] = s.split("e");
      if (m.indexOf(".") >= 0) m = m.replace(/0+$/, "").replace(/\.$/, "");
      s = expFix(m + "e" + ex);
    } else {
      s = toFixedEven(x, Math.max(0, p - 1 - e));
      if (s.indexOf(".") >= 0) s = s.replace(/0+$/, "").replace(/\.$/, "");
    }
    return upper ? s.toUpperCase() : s;
  }
  function shortest32(x) {     // the shortest decimal that reads back as this float32
    const special = pyRepr(x);
    if (special !== null) return special;
    for (let p = 1; p <= 9; p++) {
      const s = x.toPrecision(p);
      if (Math.fround(Number(s)) === x) return String(Number(s));
    }
    return String(x);
  }
  function fmt(x, sp = meta.spec) {   // like grid.format_value: nan/inf spelled out, else the pattern
    const special = pyRepr(x);
    if (special !== null) return special;
    if (!sp) return shortest32(x);
    const t = sp.type, p = sp.prec, a = Math.abs(x);
    let body;
    if (t === "f" || t === "F") body = toFixedEven(a, p === null ? 6 : p);
    else if (t === "e" || t === "E") {
      body = expFix(a.toExponential(p === null ? 6 : p));
      if (t === "E") body = body.toUpperCase();
    } else if (t === "%") body = toFixedEven(a * 100, p === null ? 6 : p) + "%";
    else if (t === "g" || t === "G" || t === "n") body = fmtG(a, p === null ? 6 : p, t === "G");
    else body = p === null ? shortest32(a) : fmtG(a, p, false);
    if (sp.group) {
      const parts = body.split(".");
      parts[0] = parts[0].replace(/\B(?=(\d{3})+(?!\d))/g, sp.group);
      body = parts.join(".");
    }
    // A value that rounds to zero gets no minus sign: never "-0.00" (grid.format_value does the same).
    const negative = (x < 0 || Object.is(x, -0)) && /[1-9]/.test(body);
    let sign = negative ? "-" : sp.sign === "+" ? "+" : sp.sign === " " ? " " : "";
    const pad = sp.width - sign.length - body.length;
    if (pad > 0) {
      if (sp.zero) body = "0".repeat(pad) + body;
      else sign = " ".repeat(pad) + sign;
    }
    return sp.pre + sign + body + sp.post;
  }

  // ---- colours: matplotlib's Normalize + Colormap lookup, with its under/over/bad colours
  function limits(i) { return meta.limits ? meta.limits[i] : [meta.vmin, meta.vmax]; }
  function colourIndex(v, lo, hi) {      // -3 bad, -2 under, -1 over, else LUT index
    if (!Number.isFinite(v)) return -3;
    let x = (v - lo) / (hi - lo) * cm.n;
    if (x === cm.n) x = cm.n - 1;
    if (x < 0) return -2;
    if (x >= cm.n) return -1;
    return Math.floor(x);
  }
  function rgbOf(k) {
    if (k === -3) return cm.bad;
    if (k === -2) return cm.under;
    if (k === -1) return cm.over;
    return [lut[3 * k], lut[3 * k + 1], lut[3 * k + 2]];
  }
  function darkText(k) {
    if (k < 0) return cm.extremes_dark[k === -3 ? 2 : k === -2 ? 0 : 1];
    return cm.dark.charCodeAt(k) === 49;
  }

  // ---- layout, fixed for every frame
  const FONT = "11px 'DejaVu Sans', system-ui, sans-serif";
  const g = heat.getContext("2d");
  g.font = FONT;
  const textW = Math.max(...[meta.vmin, meta.vmax, -Math.abs(meta.vmax), -Math.abs(meta.vmin)]
    .map((v) => g.measureText(fmt(v)).width), g.measureText("-inf").width);
  let rowLabW = 0, colLabW = 0;
  for (const label of meta.rowLabels) rowLabW = Math.max(rowLabW, g.measureText(label).width);
  for (const label of meta.colLabels) colLabW = Math.max(colLabW, g.measureText(label).width);
  const left = Math.ceil(rowLabW + 10), top = Math.ceil(colLabW * 0.72 + 16);
  // Fit the page (the MLflow UI's preview pane is narrow), leaving room for the legend.
  const avail = Math.max(240, (document.documentElement.clientWidth || 900) - 28 - 92) - left - 4;
  let cell = Math.max(2, Math.min(56, Math.floor(Math.min(avail / C, 620 / R))));
  if (meta.annotate === true) cell = Math.max(cell, Math.ceil(textW + 8));
  const annotate = meta.annotate !== false && cell >= textW + 6 && cell >= 16;
  const rowStep = Math.max(1, Math.ceil(14 / cell)), colStep = Math.max(1, Math.ceil(14 / cell));
  const gridW = C * cell, gridH = R * cell;
  heat.width = left + gridW + 4;
  heat.height = top + gridH + 4;
  heat.dataset.left = left; heat.dataset.top = top; heat.dataset.cell = cell;
  const legendH = Math.max(gridH, 160);
  legend.width = 86; legend.height = top + legendH + 8;
  const off = document.createElement("canvas");
  off.width = C; off.height = R;
  const offCtx = off.getContext("2d");
  const pixels = offCtx.createImageData(C, R);

  function drawLabels() {
    g.fillStyle = "#262626"; g.font = FONT;
    g.textAlign = "right"; g.textBaseline = "middle";
    for (let r = 0; r < R; r += rowStep) g.fillText(meta.rowLabels[r], left - 5, top + (r + 0.5) * cell);
    for (let c = 0; c < C; c += colStep) {
      g.save();
      g.translate(left + (c + 0.5) * cell, top - 5);
      g.rotate(-Math.PI / 4);
      g.textAlign = "left"; g.textBaseline = "middle";
      g.fillText(meta.colLabels[c], 0, 0);
      g.restore();
    }
  }

  function drawLegend(lo, hi) {
    const l = legend.getContext("2d");
    l.clearRect(0, 0, legend.width, legend.height);
    const x0 = 6, w = 16, y0 = top, h = legendH;
    for (let y = 0; y < h; y++) {
      const v = hi - (y + 0.5) / h * (hi - lo);
      const rgb = rgbOf(colourIndex(v, lo, hi));
      l.fillStyle = `rgb(${rgb[0]},${rgb[1]},${rgb[2]})`;
      l.fillRect(x0, y0 + y, w, 1);
    }
    l.fillStyle = "#262626"; l.font = FONT; l.textAlign = "left"; l.textBaseline = "middle";
    for (let k = 0; k <= 4; k++) {
      const v = hi - k / 4 * (hi - lo), y = y0 + k / 4 * (h - 1);
      l.fillRect(x0 + w, Math.round(y), 4, 1);
      l.fillText(Number(v.toPrecision(3)).toString(), x0 + w + 7, y);
    }
    legend.dataset.lo = lo; legend.dataset.hi = hi;
  }

  function draw(i) {
    const vals = frames[i];
    const [lo, hi] = limits(i);
    const d = pixels.data, idx = new Int16Array(N);
    for (let k = 0; k < N; k++) {
      const ci = colourIndex(vals[k], lo, hi), rgb = rgbOf(ci);
      idx[k] = ci;
      d[4 * k] = rgb[0]; d[4 * k + 1] = rgb[1]; d[4 * k + 2] = rgb[2]; d[4 * k + 3] = 255;
    }
    offCtx.putImageData(pixels, 0, 0);
    g.clearRect(0, 0, heat.width, heat.height);
    g.imageSmoothingEnabled = false;
    g.drawImage(off, left, top, gridW, gridH);
    if (cell >= 6) {   // white grid between cells, as in the GIF
      g.fillStyle = "#fff";
      const lw = Math.max(1, Math.round(cell * 0.06));
      for (let c = 1; c < C; c++) g.fillRect(left + c * cell - lw / 2, top, lw, gridH);
      for (let r = 1; r < R; r++) g.fillRect(left, top + r * cell - lw / 2, gridW, lw);
    }
    if (annotate) {
      g.font = FONT; g.textAlign = "center"; g.textBaseline = "middle";
      for (let r = 0; r < R; r++) for (let c = 0; c < C; c++) {
        const k = r * C + c;
        g.fillStyle = darkText(idx[k]) ? "#262626" : "#ffffff";
        g.fillText(fmt(vals[k]), left + (c + 0.5) * cell, top + (r + 0.5) * cell);
      }
    }
    drawLabels();
    const prev = current >= 0 ? limits(current) : null;
    if (!prev || prev[0] !== lo || prev[1] !== hi || current < 0) drawLegend(lo, hi);
  }

  function show(i) {
    i = Math.max(0, Math.min(T - 1, i));
    draw(i);
    current = i;
    slider.value = String(i);
    $("title").textContent = meta.titles[i] || `${meta.name}  ·  step ${meta.steps[i]}`;
    $("stepinfo").textContent = `step ${meta.steps[i]}  ·  frame ${i + 1}/${T}`;
    root.dataset.frame = String(i);
    root.dataset.step = String(meta.steps[i]);
    if (hover) showTip(hover.r, hover.c, hover.x, hover.y);
  }

  // ---- hover: labels and the stored value of the cell under the pointer
  function span(i, block, total, labels) {
    if (block <= 1) return labels[i];
    const a = i * block, b = Math.min(total, a + block) - 1;
    return `${labels[i]} (${a}–${b})`;
  }
  function showTip(r, c, x, y) {
    const v = frames[current][r * C + c];
    const tip = $("tip"), box = $("box");
    const rect = heat.getBoundingClientRect(), sx = rect.width / heat.width, sy = rect.height / heat.height;
    tip.textContent = `row ${span(r, meta.block[0], meta.matrix[0], meta.rowLabels)}  ·  ` +
      `col ${span(c, meta.block[1], meta.matrix[1], meta.colLabels)}\n` +
      `step ${meta.steps[current]}:  ${fmt(v)}\nstored value (float32): ${shortest32(v)}`;
    tip.dataset.row = r; tip.dataset.col = c; tip.dataset.value = shortest32(v);
    tip.style.display = "block";
    const stage = $("stage").getBoundingClientRect();
    tip.style.left = `${Math.min(x - stage.left + 14, stage.width - tip.offsetWidth)}px`;
    tip.style.top = `${y - stage.top + 16}px`;
    box.style.display = "block";
    box.style.left = `${(left + c * cell) * sx + rect.left - stage.left}px`;
    box.style.top = `${(top + r * cell) * sy + rect.top - stage.top}px`;
    box.style.width = `${cell * sx}px`; box.style.height = `${cell * sy}px`;
  }
  heat.addEventListener("mousemove", (ev) => {
    if (current < 0) return;
    const rect = heat.getBoundingClientRect();
    const px = (ev.clientX - rect.left) * heat.width / rect.width - left;
    const py = (ev.clientY - rect.top) * heat.height / rect.height - top;
    const c = Math.floor(px / cell), r = Math.floor(py / cell);
    if (px < 0 || py < 0 || r >= R || c >= C) { hideTip(); return; }
    hover = { r, c, x: ev.clientX, y: ev.clientY };
    showTip(r, c, ev.clientX, ev.clientY);
  });
  function hideTip() { hover = null; $("tip").style.display = "none"; $("box").style.display = "none"; }
  heat.addEventListener("mouseleave", hideTip);

  // ---- playback and keys
  function stop() {
    if (timer !== null) clearTimeout(timer);
    timer = null; playBtn.textContent = "Play"; root.dataset.playing = "0";
  }
  function tick() {
    show((current + 1) % T);
    timer = setTimeout(tick, current === T - 1 ? Math.max(meta.frameMs, meta.holdLastMs) : meta.frameMs);
  }
  function play() {
    if (T < 2) return;
    playBtn.textContent = "Pause"; root.dataset.playing = "1";
    timer = setTimeout(tick, meta.frameMs);
  }
  playBtn.addEventListener("click", () => (timer === null ? play() : stop()));
  slider.addEventListener("input", () => { stop(); show(parseInt(slider.value, 10)); });
  document.addEventListener("keydown", (ev) => {
    if (current < 0) return;
    const moves = { ArrowRight: 1, ArrowDown: 1, ArrowLeft: -1, ArrowUp: -1 };
    if (ev.key in moves) {
      if (ev.target === slider) return;   // the slider moves itself and fires "input"
      stop(); show(current + moves[ev.key]);
    } else if (ev.key === "Home") { stop(); show(0); }
    else if (ev.key === "End") { stop(); show(T - 1); }
    else if (ev.key === " " && ev.target !== playBtn) { timer === null ? play() : stop(); }
    else return;
    ev.preventDefault();
  });

  // ---- decoding: base64 → inflate → byte planes → XOR with the previous frame → float32
  async function decode() {
    const raw = Uint8Array.from(atob(document.getElementById("wv-data").textContent.replace(/\s+/g, "")),
                                (c) => c.charCodeAt(0));
    let bytes = raw;
    if (meta.codec === "deflate") {
      if (typeof DecompressionStream === "undefined") {
        throw new Error("this browser cannot inflate the data (it has no DecompressionStream)");
      }
      const stream = new Blob([raw]).stream().pipeThrough(new DecompressionStream("deflate"));
      bytes = new Uint8Array(await new Response(stream).arrayBuffer());
    }
    if (bytes.length !== T * N * 4) throw new Error(`data holds ${bytes.length} bytes, expected ${T * N * 4}`);
    const prev = new Uint32Array(N);
    for (let t = 0; t < T; t++) {
      const base = t * N * 4, bits = new Uint32Array(N);
      for (let k = 0; k < N; k++) {
        bits[k] = (bytes[base + k] | (bytes[base + N + k] << 8) | (bytes[base + 2 * N + k] << 16) |
                   (bytes[base + 3 * N + k] << 24)) ^ prev[k];
        prev[k] = bits[k];
      }
      frames.push(new Float32Array(bits.buffer));
    }
  }

  slider.max = String(T - 1);
  const pooled = meta.block[0] > 1 || meta.block[1] > 1;
  $("note").textContent = `${meta.name}: ${R}×${C} cells` + (meta.note ? `; ${meta.note}` : "") +
    `; colormap ${meta.cmapName}; values stored as float32` + (pooled ? "; hover shows each cell's block" : "") +
    ".  ← → step, Home/End, space plays.";
  // A small read-only handle for scripts and tests driving the page.
  window.weightviz = { format: fmt, shortest: shortest32, show, frame: () => current, frames: T };
  decode().then(() => { show(0); root.dataset.ready = "1"; }, (err) => {
    $("title").textContent = "";
    $("error").textContent = `cannot show the data: ${err.message}`;
    root.dataset.ready = "error";
  });
})();
</script>
</body></html>
"""
