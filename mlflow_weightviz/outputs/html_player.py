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
never needs all frames in memory on the Python side. The page's script and stylesheet
are the package files ``player.js`` and ``player.css``.
"""

from __future__ import annotations

import base64
import functools
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
from mlflow_weightviz.encoders import Animation, Frame
from mlflow_weightviz.options import DEFAULT_FRAME_MS, DEFAULT_HOLD_LAST_MS, WeightvizWarning

__all__ = ["MLFLOW_PREVIEW_LIMIT", "HtmlPlayerWriter", "HtmlWriter", "colormap_table", "decode_player",
           "js_format_spec", "read_player", "write_player"]

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
                 frame_ms: int = DEFAULT_FRAME_MS, hold_last_ms: int = DEFAULT_HOLD_LAST_MS,
                 annotate: bool | None = None, note: str = "", block: tuple[int, int] = (1, 1),
                 matrix: tuple[int, int] | None = None,
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
        self._write(_page()[0].replace("%TITLE%", _html_text(f"{name} · weightviz")).encode())

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
        self._write(_page()[1].encode())
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


class HtmlWriter:
    """A :class:`~mlflow_weightviz.encoders.FrameWriter`: the player of one layer, from each frame's values.

    Args:
        path: The file to write.
        **player: Arguments of :class:`HtmlPlayerWriter` (everything but ``fh``).
    """

    pixels = ""

    def __init__(self, path: Path, **player: Any) -> None:
        self.path = path
        self._args = player
        self._fh: IO[bytes] | None = None
        self._player: HtmlPlayerWriter | None = None

    def setup(self, animation: Animation) -> None:
        """Open the file and write the page's head."""
        from mlflow_weightviz.errors import OutputError

        try:
            self._fh = self.path.open("wb")
        except OSError as exc:
            msg = f"cannot write {self.path.name}: {exc.strerror or exc}"
            raise OutputError(msg) from exc
        self._player = HtmlPlayerWriter(self._fh, **self._args)

    def add_frame(self, frame: Frame) -> None:
        """Add the frame's values, step, title and colour scale."""
        assert self._player is not None
        assert frame.values is not None
        self._player.add_frame(frame.values, step=frame.step, title=frame.title, limits=frame.limits)

    def finish(self) -> None:
        """Write the rest of the page."""
        assert self._player is not None
        assert self._fh is not None
        self._player.finish()
        self._fh.close()

    def abort(self) -> None:
        """Close and remove the half-written page."""
        if self._fh is not None:
            self._fh.close()
        self.path.unlink(missing_ok=True)


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
    return meta, decode_player(meta, data)


def decode_player(meta: dict[str, Any], data: str) -> np.ndarray:
    """A player's embedded base64 data as (frames, rows, cols) float32 values, decoded as the browser does."""
    raw = base64.b64decode("".join(data.split()))
    if meta["codec"] == "deflate":
        raw = zlib.decompress(raw)
    frames, n = len(meta["steps"]), meta["rows"] * meta["cols"]
    planes = np.frombuffer(raw, np.uint8).reshape(frames, 4, n)
    xored = planes.transpose(0, 2, 1).copy().view("<u4")[..., 0]
    bits = np.bitwise_xor.accumulate(xored, axis=0)  # undo the XOR with the previous frame
    return np.asarray(bits.view("<f4").reshape(frames, meta["rows"], meta["cols"]))


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
%CSS%</style></head>
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


def _asset(name: str) -> str:
    from importlib.resources import files

    return files("mlflow_weightviz.outputs").joinpath(name).read_text(encoding="utf-8")


@functools.cache
def _page() -> tuple[str, str]:
    """The page before the data (with the stylesheet) and the script after it, from the package files."""
    script = "<script>\n" + _asset("player.js") + "</script>\n</body></html>\n"
    return _HEAD.replace("%CSS%", _asset("player.css")), script
