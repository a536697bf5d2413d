"""One layer from several runs side by side, step-aligned, under one colour scale (``compare``).

Runs are snapshotted at different steps. A comparison runs over the union of every run's
steps (the same rule as the ``--grid`` montage, :func:`~mlflow_weightviz.outputs.montage.aligned_steps`):
at each step a run shows its latest snapshot at or before it, and a run that has no
snapshot yet is drawn as an empty grey panel. Every run's panel is drawn by its own
heatmap renderer, all with the same colour scale, number format and size, so a colour
means the same value in every panel. An optional last panel shows the first run minus
the second, on its own symmetric scale.

:class:`Comparison` is a frame source for the pipeline's one frame loop; its frames carry
every panel's values (:class:`CompareFrame`), which :class:`ComparePlayerWriter` turns into
one HTML page: each panel is the layer player of :mod:`~mlflow_weightviz.outputs.html_player`
(hover values and all), driven by one shared slider and play button.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from mlflow_weightviz.encoders import Animation, Frame
from mlflow_weightviz.errors import ShapeMismatchError
from mlflow_weightviz.frames import shorten
from mlflow_weightviz.grid import PreparedLayer, choose_format, finite_range, prepare_layer
from mlflow_weightviz.options import RenderOptions, Scale, View
from mlflow_weightviz.outputs.montage import _Layout, _palette, aligned_steps

if TYPE_CHECKING:
    from mlflow_weightviz.frames import HeatmapRenderer
    from mlflow_weightviz.snapshots import Snapshot

__all__ = ["MAX_RUNS", "CompareFrame", "ComparePlayerWriter", "Comparison", "PanelFrame", "read_compare_player",
           "shared_scale"]

#: The most runs one comparison shows (panels get too small beyond it).
MAX_RUNS = 8
_LABEL_CHARS = 40  # a run name in a panel title

Scale3 = tuple[float, float, bool]  # (vmin, vmax, diverging)
_DIFF = "\0diff"  # the renderers' key of the difference panel (no run label starts with NUL)
_BLANK = "\0blank"  # suffix of the key of a panel's renderer for empty frames


@dataclass(frozen=True)
class PanelFrame:
    """One panel of a comparison frame: its title, the values it shows and its colour scale."""

    title: str
    values: np.ndarray
    limits: tuple[float, float]


@dataclass(frozen=True)
class CompareFrame(Frame):
    """A comparison frame: the composed picture (``block``/``indices``) and every panel's values."""

    panels: tuple[PanelFrame, ...] = ()


def shared_scale(scales: Sequence[Scale3], options: RenderOptions) -> Scale3:
    """One colour scale covering every run's own: the union of their ranges, symmetric when any is diverging.

    Each run's scale already respects ``--vmin``/``--vmax`` and ``--view`` (see
    :func:`~mlflow_weightviz.grid.prepare_layer`); the union follows the same rule as one
    layer: diverging when any run is, or when the union has both signs, and then centred
    on 0 unless an end was fixed.
    """
    lo = min(s[0] for s in scales)
    hi = max(s[1] for s in scales)
    diverging = any(s[2] for s in scales) or lo < 0 < hi
    if diverging and options.vmin is None and options.vmax is None:
        m = max(abs(lo), abs(hi)) or 1.0
        lo, hi = -m, m
    return lo, hi, diverging


def _shared_format(formats: Sequence[str]) -> str:
    """The most precise of the runs' formats (all chosen against the same scale, so of one kind)."""
    parsed = [re.fullmatch(r"\{x:\.(\d+)([ef])\}", f) for f in formats]
    if any(p is None for p in parsed):
        return formats[0]
    kinds = {p[2] for p in parsed if p is not None}
    kind = "e" if "e" in kinds else "f"
    digits = max(int(p[1]) for p in parsed if p is not None and p[2] == kind)
    return f"{{x:.{digits}{kind}}}"


class Comparison:
    """One layer of several runs side by side: a frame source for the writers, one frame per step.

    Use it as a context manager; the stacks and renderers are released at the end::

        with Comparison("fc1", {"run a": snaps_a, "run b": snaps_b}, options, workdir=tmp,
                        spec=spec, player=player) as comparison:
            for step, rgb, panels in comparison.frames():
                ...

    Args:
        layer: The layer's name (frame titles).
        runs: Each run's label (panel title) and its snapshots of the layer, sorted by step.
        options: Drawing options; ``max_frames`` samples the union of steps.
        workdir: Folder for the temporary stacks.
        spec: The heatmap renderer's arguments for a prepared layer (as a layer's own GIF).
        player: The HTML player's arguments for a prepared layer and its renderer arguments.
        diff: Add a panel with the first run minus the second, on its own symmetric scale.

    Raises:
        ShapeMismatchError: The runs' layers are not drawn on the same grid, or differ in
            shape without being pooled.
    """

    def __init__(self, layer: str, runs: Mapping[str, Sequence[Snapshot]], options: RenderOptions, *,
                 workdir: Path, spec: Callable[[PreparedLayer], dict[str, Any]],
                 player: Callable[[PreparedLayer, Mapping[str, Any]], dict[str, Any]], diff: bool = False) -> None:
        self.layer = layer
        self._runs = runs
        self._options = options
        self._workdir = workdir
        self._spec = spec
        self._player = player
        self._diff = diff
        steps, self._shown = aligned_steps(runs, options.max_frames)
        self.steps = tuple(steps)
        self.labels = tuple(runs)
        self._prepared: dict[str, PreparedLayer] = {}
        self._position: dict[str, dict[int, int]] = {}
        self._stacks: dict[str, np.ndarray] = {}
        self._renderers: dict[str, HeatmapRenderer] = {}
        self._specs: dict[str, dict[str, Any]] = {}
        self._diff_layer: PreparedLayer | None = None
        self._diff_stack: np.ndarray | None = None
        self._diff_path: Path | None = None
        self.players: list[dict[str, Any]] = []
        self.size = (0, 0)
        #: The layer's display grid (rows, cols), and the panels' rows and columns.
        self.grid = (0, 0)
        self.layout = (0, 0)
        self.palette_colors = np.zeros((0, 3), np.uint8)

    # ------------------------------------------------------------------ setup

    def __enter__(self) -> Comparison:
        try:
            self._prepare()
            self._check_shapes()
            scaled = self._share_scale()
            self._frame_limits = self._shared_frame_limits(scaled)
            titles = self._titles()
            sample = _widest([t for per in titles.values() for t in per])
            self._titles_by_run = titles
            for label in self.labels:
                spec = {**self._spec(scaled[label]), "title_sample": sample}
                self._renderers[label] = _build(spec)
                self._specs[label] = spec
                self.players.append({**self._player(scaled[label], spec), "name": label})
            if self._diff:
                self._prepare_diff()
            renderers = list(self._renderers.values())
            self._layout = _Layout([r.size for r in renderers], header_lines=2 if self._header_note() else 1)
        except BaseException:
            self.close()
            raise
        self.size, self.layout = self._layout.size, self._layout.grid
        self.grid = self._prepared[self.labels[0]].info.grid
        self.palette_colors = _palette([r.palette_colors() for r in renderers])
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _prepare(self) -> None:
        per_run = self._options.replace(max_frames=None)
        for label, snaps in self._runs.items():
            needed = {j for j in self._shown[label] if j >= 0}
            if self._options.view is View.DELTA_INIT:
                needed.add(0)  # the change since the run's own first snapshot, even when it is not shown
            order = sorted(needed)
            self._prepared[label] = prepare_layer(self.layer, [snaps[j] for j in order], per_run, self._workdir)
            self._position[label] = {j: k for k, j in enumerate(order)}
            self._stacks[label] = self._prepared[label].stack()

    def _check_shapes(self) -> None:
        first_label = self.labels[0]
        first = self._prepared[first_label].info
        for label in self.labels[1:]:
            info = self._prepared[label].info
            same_grid = info.grid == first.grid
            if same_grid and (info.shape == first.shape or (info.pooled and first.pooled)):
                continue
            what = "is drawn as" if same_grid else "is drawn on a grid of"
            msg = (f"layer {self.layer!r} has shape {_x(first.shape)} in {first_label} but {_x(info.shape)} in "
                   f"{label}; compare needs the same shape, or layers pooled to the same grid (it {what} "
                   f"{_x(first.grid)} vs {_x(info.grid)} cells; try smaller --max-rows/--max-cols)")
            raise ShapeMismatchError(msg)

    def _share_scale(self) -> dict[str, PreparedLayer]:
        """Every run's prepared layer with the shared colour scale and number format."""
        lo, hi, diverging = shared_scale([(p.vmin, p.vmax, p.diverging) for p in self._prepared.values()],
                                         self._options)
        fmt = self._options.fmt or _shared_format(
            [choose_format(self._stacks[label], lo, hi) for label in self.labels])
        return {label: replace(p, vmin=lo, vmax=hi, diverging=diverging, fmt=fmt)
                for label, p in self._prepared.items()}

    def _shared_frame_limits(self, scaled: Mapping[str, PreparedLayer]) -> list[tuple[float, float]]:
        """Each frame's colour scale: the shared one, or with ``--scale frame`` the union of the panels' own."""
        first = scaled[self.labels[0]]
        if self._options.scale is not Scale.FRAME:
            return [(first.vmin, first.vmax)] * len(self.steps)
        limits = []
        for i in range(len(self.steps)):
            shown = [(self._prepared[label], self._position[label][self._shown[label][i]])
                     for label in self.labels if self._shown[label][i] >= 0]
            lo, hi, _ = shared_scale([(*p.limits(k), first.diverging) for p, k in shown] or
                                     [(first.vmin, first.vmax, first.diverging)], self._options)
            limits.append((lo, hi))
        return limits

    def _titles(self) -> dict[str, list[str]]:
        notes = {p.info.note() for p in self._prepared.values()}
        titles: dict[str, list[str]] = {}
        for label in self.labels:
            snaps = self._runs[label]
            note = self._prepared[label].info.note() if len(notes) > 1 else ""
            per = []
            for i, step in enumerate(self.steps):
                j = self._shown[label][i]
                if j < 0:
                    line = f"no snapshot until step {snaps[0].step}"
                elif snaps[j].step == step:
                    line = f"step {step}"
                else:
                    line = f"step {snaps[j].step} (latest at {step})"
                per.append("\n".join(t for t in (label, line, note) if t))
            titles[label] = per
        return titles

    def _prepare_diff(self) -> None:
        a, b = self.labels[0], self.labels[1]
        first = self._prepared[a]
        rows, cols = first.info.grid
        fd, name = tempfile.mkstemp(prefix="diff-", suffix=".npy", dir=self._workdir)
        os.close(fd)
        path = Path(name)
        self._diff_path = path
        stack = np.lib.format.open_memmap(path, mode="w+", dtype=np.float64, shape=(len(self.steps), rows, cols))
        peaks = []
        for i in range(len(self.steps)):
            va, vb = self._values(a, i), self._values(b, i)
            with np.errstate(invalid="ignore", over="ignore"):
                stack[i] = va - vb if va is not None and vb is not None else np.nan
            r = finite_range(stack[i])
            peaks.append(max(abs(r[0]), abs(r[1])) if r is not None else 0.0)
        stack.flush()
        m = max(peaks) or 1.0
        fmt = self._options.fmt or choose_format(stack, -m, m)
        self._diff_stack = stack
        frame_limits = tuple((-(p or m), p or m) for p in peaks) if self._options.scale is Scale.FRAME else None
        # Run labels end in the short run id ("name  ·  1a2b3c4d"); the id alone keeps the title short.
        label = " − ".join(shorten(x.rsplit("  ·  ", 1)[-1], _LABEL_CHARS) for x in (a, b))
        self._diff_layer = PreparedLayer(name=self.layer, steps=self.steps, stack_path=path, info=first.info,
                                         dtype=first.dtype, vmin=-m, vmax=m, frame_limits=frame_limits,
                                         diverging=True, fmt=fmt, total_snapshots=len(self.steps))
        self._diff_titles = []
        for i, step in enumerate(self.steps):
            missing = [x for x in (a, b) if self._shown[x][i] < 0]
            line = ("no snapshot yet in " + " and ".join(missing)) if missing else f"difference at step {step}"
            self._diff_titles.append(f"{label}\n{line}\nown scale, symmetric ±{m:.3g}")
        sample = _widest(self._diff_titles)
        spec = {**self._spec(self._diff_layer), "title_sample": sample}
        self._renderers[_DIFF] = _build(spec)
        self._specs[_DIFF] = spec
        self.players.append({**self._player(self._diff_layer, spec), "name": label})

    # ------------------------------------------------------------------ frames

    def _values(self, label: str, i: int) -> np.ndarray | None:
        j = self._shown[label][i]
        return None if j < 0 else np.asarray(self._stacks[label][self._position[label][j]])

    def _header_note(self) -> str:
        notes = {p.info.note() for p in self._prepared.values()}
        parts = [notes.pop()] if len(notes) == 1 else []
        if self._options.view is View.DELTA_INIT:
            parts.append("change since each run's first snapshot")
        elif self._options.view is View.DELTA_STEP:
            parts.append("change since each run's previous snapshot")
        parts.append("one colour scale for all runs")
        return "; ".join(p for p in parts if p)

    def frame_title(self, i: int) -> str:
        """The title of frame ``i``: layer, step, frame number (and the notes on a second line)."""
        head = f"{shorten(self.layer, 64)}  ·  step {self.steps[i]}  ·  frame {i + 1}/{len(self.steps)}"
        note = self._header_note()
        return f"{head}\n{note}" if note else head

    def frames(self) -> Iterator[tuple[int, np.ndarray, tuple[PanelFrame, ...]]]:
        """Every frame's step, (H, W, 3) uint8 picture and panels, in order; a panel is redrawn when it changes."""
        cache: dict[str, tuple[object, np.ndarray]] = {}
        rows, cols = self._prepared[self.labels[0]].info.grid
        blank = np.full((rows, cols), np.nan)
        for i, step in enumerate(self.steps):
            panels: list[PanelFrame] = []
            pictures = []
            limits = self._frame_limits[i]
            for label in self.labels:
                values = self._values(label, i)
                panel = PanelFrame(self._titles_by_run[label][i], blank if values is None else values, limits)
                key = (self._shown[label][i], limits, panel.title)
                if label not in cache or cache[label][0] != key:
                    cache[label] = (key, self._draw(label, panel, values is None))
                panels.append(panel)
                pictures.append(cache[label][1])
            if self._diff_layer is not None and self._diff_stack is not None:
                diff = PanelFrame(self._diff_titles[i], np.asarray(self._diff_stack[i]), self._diff_layer.limits(i))
                panels.append(diff)
                empty = any(self._shown[label][i] < 0 for label in self.labels[:2])
                pictures.append(self._draw(_DIFF, diff, empty))
            header = self.frame_title(i).split("\n")
            yield step, self._layout.compose(pictures, header), tuple(panels)

    def _draw(self, key: str, panel: PanelFrame, empty: bool) -> np.ndarray:
        """A panel's picture; an empty one (no snapshot yet) in plain grey, without a "nan" in every cell."""
        if not empty:
            return self._renderers[key].render(panel.values, panel.title, panel.limits)
        blank_key = key + _BLANK
        if blank_key not in self._renderers:
            # The same figure, the same size, only without values written in the cells.
            size = self._renderers[key].size
            self._renderers[blank_key] = _build({**self._specs[key], "annotate": False, "size": size})
        return self._renderers[blank_key].render(panel.values, panel.title, panel.limits)

    def close(self) -> None:
        """Release the renderers and remove the stacks."""
        for renderer in self._renderers.values():
            renderer.close()
        self._renderers.clear()
        self._stacks.clear()
        for prepared in self._prepared.values():
            prepared.stack_path.unlink(missing_ok=True)
        self._prepared.clear()
        self._diff_stack = None
        if self._diff_path is not None:
            self._diff_path.unlink(missing_ok=True)


def _widest(titles: Sequence[str]) -> str:
    """A title as tall and as wide as any of ``titles``, line by line: the renderer sizes the figure by it."""
    lines = [t.split("\n") for t in titles]
    return "\n".join(max((ls[k] for ls in lines if len(ls) > k), key=len) for k in range(max(map(len, lines))))


def _build(spec: Mapping[str, Any]) -> HeatmapRenderer:
    from mlflow_weightviz.parallel import build_renderer

    return build_renderer(spec)


def _x(shape: Sequence[int]) -> str:
    return "×".join(str(d) for d in shape) or "scalar"


# ---------------------------------------------------------------------------- the HTML page


class ComparePlayerWriter:
    """A :class:`~mlflow_weightviz.encoders.FrameWriter`: one page with every panel's player and one slider.

    Each panel is written by its own :class:`~mlflow_weightviz.outputs.html_player.HtmlPlayerWriter`
    into a temporary file beside ``path`` (so frames stream as for one layer); ``finish``
    puts their data into one page, where the same player script runs once per panel,
    each in its own shadow root, and one play button, slider and arrow keys drive all.

    Args:
        path: The page to write.
        players: Each panel's :class:`HtmlPlayerWriter` arguments (everything but ``fh``).
        title: The page title.
    """

    pixels = ""

    def __init__(self, path: Path, players: Sequence[Mapping[str, Any]], title: str) -> None:
        self.path = path
        self._players = players
        self._title = title
        self._tmp: Path | None = None
        self._files: list[IO[bytes]] = []
        self._writers: list[Any] = []
        self._steps: list[int] = []
        self._titles: list[str] = []
        self._frame_ms = 200
        self._hold_ms = 1000

    def setup(self, animation: Animation) -> None:
        """Open one temporary player per panel."""
        from mlflow_weightviz.errors import OutputError
        from mlflow_weightviz.outputs.html_player import HtmlPlayerWriter

        try:
            self._tmp = Path(tempfile.mkdtemp(prefix=".compare-", dir=self.path.parent))
            for k, args in enumerate(self._players):
                fh = (self._tmp / f"panel-{k}.html").open("wb")
                self._files.append(fh)
                self._writers.append(HtmlPlayerWriter(fh, **args, size_limit=2**62))
        except OSError as exc:
            msg = f"cannot write {self.path.name}: {exc.strerror or exc}"
            raise OutputError(msg) from exc
        self._frame_ms = int(self._players[0].get("frame_ms", 200))
        self._hold_ms = int(self._players[0].get("hold_last_ms", 1000))

    def add_frame(self, frame: Frame) -> None:
        """Add every panel's values of the frame."""
        assert isinstance(frame, CompareFrame)
        for writer, panel in zip(self._writers, frame.panels, strict=True):
            writer.add_frame(panel.values, step=frame.step, title=panel.title, limits=panel.limits)
        self._steps.append(frame.step)
        self._titles.append(frame.title)

    def finish(self) -> None:
        """Finish the panels and write the page (it appears only when complete)."""
        import warnings

        from mlflow_weightviz._files import atomic_file
        from mlflow_weightviz.options import WeightvizWarning
        from mlflow_weightviz.outputs.html_player import MLFLOW_PREVIEW_LIMIT, _asset

        assert self._tmp is not None
        for writer, fh in zip(self._writers, self._files, strict=True):
            writer.finish()
            fh.close()
        meta = {"steps": self._steps, "titles": self._titles, "panels": len(self._writers),
                "frameMs": self._frame_ms, "holdLastMs": self._hold_ms}
        head, tail = _compare_page()
        with atomic_file(self.path) as out:
            out.write(head.replace("%TITLE%", _html_text(self._title)).encode())
            for k in range(len(self._writers)):
                data, panel_meta = _player_parts((self._tmp / f"panel-{k}.html").read_text(encoding="utf-8"))
                out.write(f'<script type="text/plain" id="wv-data-{k}">\n{data}</script>\n'.encode())
                out.write(f'<script type="application/json" id="wv-meta-{k}">{panel_meta}</script>\n'.encode())
            payload = json.dumps(meta, separators=(",", ":")).replace("<", "\\u003c")
            out.write(f'<script type="application/json" id="wv-compare">{payload}</script>\n'.encode())
            css = json.dumps(_asset("player.css") + _PANEL_CSS).replace("<", "\\u003c")
            out.write(("<script>\nconst PLAYER_CSS = " + css + ";\nfunction runPlayer(document, window) {\n"
                       + _asset("player.js") + "\n}\n" + tail).encode())
        shutil.rmtree(self._tmp, ignore_errors=True)
        size = self.path.stat().st_size
        if size > MLFLOW_PREVIEW_LIMIT:
            warnings.warn(f"the HTML comparison {self.path.name} is {size / 2**20:.1f} MiB, over the MLflow UI's "
                          f"{MLFLOW_PREVIEW_LIMIT // 2**20} MiB preview limit: the UI will only offer it for download",
                          WeightvizWarning, stacklevel=2)

    def abort(self) -> None:
        """Close and remove everything written."""
        for fh in self._files:
            fh.close()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> ComparePlayerWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is not None:
            self.abort()


def _player_parts(page: str) -> tuple[str, str]:
    """A layer player page's base64 data and its metadata JSON."""
    data = page.split('<script type="text/plain" id="wv-data">', 1)[1].split("</script>", 1)[0]
    meta = page.split('<script type="application/json" id="wv-meta">', 1)[1].split("</script>", 1)[0]
    return data.lstrip("\n"), meta


def read_compare_player(path: str | Path) -> tuple[dict[str, Any], list[tuple[dict[str, Any], np.ndarray]]]:
    """A comparison page's own metadata and, per panel, the player metadata and (frames, rows, cols) values.

    Raises:
        ValueError: The file is not a comparison page written by this module.
    """
    from mlflow_weightviz.outputs.html_player import decode_player

    text = Path(path).read_text(encoding="utf-8")
    try:
        meta = json.loads(text.split('<script type="application/json" id="wv-compare">', 1)[1].split("</script>")[0])
    except IndexError:
        msg = f"{path} is not a weightviz comparison page"
        raise ValueError(msg) from None
    panels = []
    for k in range(int(meta["panels"])):
        data = text.split(f'<script type="text/plain" id="wv-data-{k}">', 1)[1].split("</script>", 1)[0]
        panel = text.split(f'<script type="application/json" id="wv-meta-{k}">', 1)[1].split("</script>", 1)[0]
        panel_meta = json.loads(panel)
        panels.append((panel_meta, decode_player(panel_meta, data)))
    return meta, panels


def _html_text(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# Inside a panel: its own slider, play button and key hints give way to the page's.
_PANEL_CSS = """
  #controls, #note { display: none; }
  #wv { padding: 4px 6px; min-width: 0; }
  #title { font-size: 12px; min-height: 4.1em; }
"""

_PANEL_MARKUP = """<div id="wv" data-ready="0" data-frame="-1">
  <div id="title">loading…</div>
  <div id="stage"><canvas id="heat" width="10" height="10"></canvas><canvas id="legend" width="10" height="10">
  </canvas><div id="box"></div><div id="tip"></div></div>
  <div id="controls"><button id="play" type="button">Play</button>
    <input id="slider" type="range" min="0" max="0" value="0" step="1"><span id="stepinfo"></span></div>
  <div id="note"></div><div id="error"></div>
</div>"""

_HEAD = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>%TITLE%</title>
<style>
  html, body { margin: 0; background: #fff; color: #262626;
               font: 13px/1.35 "DejaVu Sans", system-ui, -apple-system, "Segoe UI", sans-serif; }
  #compare { padding: 10px 14px; }
  #ctitle { font-size: 14px; text-align: center; white-space: pre-line; margin-bottom: 6px; }
  #panels { display: flex; flex-wrap: wrap; gap: 8px; align-items: flex-start; }
  #controls { display: flex; align-items: center; gap: 10px; margin-top: 8px; }
  #play { min-width: 66px; padding: 3px 8px; font: inherit; cursor: pointer; }
  #slider { flex: 1; min-width: 160px; }
  #stepinfo { font-variant-numeric: tabular-nums; white-space: nowrap; }
  #hint { color: #666; font-size: 11px; margin-top: 6px; }
</style></head>
<body>
<div id="compare" data-ready="0" data-frame="-1">
  <div id="ctitle">loading…</div>
  <div id="controls"><button id="play" type="button" title="Play / pause (space)">Play</button>
    <input id="slider" type="range" min="0" max="0" value="0" step="1" aria-label="frame">
    <span id="stepinfo"></span></div>
  <div id="panels"></div>
  <div id="hint">One slider for every panel; hover a cell for its value in that run.
    ← → step, Home/End, space plays.</div>
</div>
"""

_SCRIPT = """
(function () {
  "use strict";
  const meta = JSON.parse(document.getElementById("wv-compare").textContent);
  const $ = (id) => document.getElementById(id);
  const root = $("compare"), slider = $("slider"), playBtn = $("play"), T = meta.steps.length;
  const perRow = meta.panels <= 4 ? meta.panels : Math.ceil(Math.sqrt(meta.panels));
  const pageW = document.documentElement.clientWidth || 1200;
  const panels = [];
  for (let k = 0; k < meta.panels; k++) {
    const host = document.createElement("div");
    host.className = "panel"; host.id = `panel-${k}`;
    $("panels").appendChild(host);
    const shadow = host.attachShadow({ mode: "open" });
    shadow.innerHTML = `<style>${PLAYER_CSS}</style>` + PANEL_MARKUP;
    // The layer player's script, unchanged, sees this panel as its document.
    const own = { "wv-data": `wv-data-${k}`, "wv-meta": `wv-meta-${k}` };
    const element = { clientWidth: Math.max(300, Math.floor(pageW / perRow) - 16) };
    const doc = new Proxy(document, { get(target, prop) {
      if (prop === "getElementById") {
        return (id) => (id in own ? target.getElementById(own[id]) : shadow.getElementById(id));
      }
      if (prop === "documentElement") return element;
      if (prop === "addEventListener") return () => {};   // the page's keys drive every panel
      const value = Reflect.get(target, prop);
      return typeof value === "function" ? value.bind(target) : value;
    } });
    const win = {};
    runPlayer(doc, win);
    panels.push({ shadow, api: win.weightviz });
  }
  let current = -1, timer = null;
  function show(i) {
    i = Math.max(0, Math.min(T - 1, i));
    for (const p of panels) p.api.show(i);
    current = i;
    slider.value = String(i);
    $("ctitle").textContent = meta.titles[i];
    $("stepinfo").textContent = `step ${meta.steps[i]}  ·  frame ${i + 1}/${T}`;
    root.dataset.frame = String(i); root.dataset.step = String(meta.steps[i]);
  }
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
      if (ev.target === slider) return;
      stop(); show(current + moves[ev.key]);
    } else if (ev.key === "Home") { stop(); show(0); }
    else if (ev.key === "End") { stop(); show(T - 1); }
    else if (ev.key === " " && ev.target !== playBtn) { timer === null ? play() : stop(); }
    else return;
    ev.preventDefault();
  });
  slider.max = String(T - 1);
  window.weightviz = { show, frame: () => current, frames: T, panels: panels.map((p) => p.api) };
  (function waitReady() {   // each panel decodes its data on its own
    const states = panels.map((p) => p.shadow.getElementById("wv").dataset.ready);
    if (states.includes("error")) { root.dataset.ready = "error"; return; }
    if (states.every((s) => s === "1")) { show(0); root.dataset.ready = "1"; return; }
    setTimeout(waitReady, 30);
  })();
})();
</script>
</body></html>
"""


def _compare_page() -> tuple[str, str]:
    """The page before the panels' data, and the script after the player's (see ``finish``)."""
    tail = "const PANEL_MARKUP = " + json.dumps(_PANEL_MARKUP) + ";\n" + _SCRIPT
    return _HEAD, tail
