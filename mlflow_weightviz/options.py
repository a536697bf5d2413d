"""The one typed options object shared by the CLI and the Python API."""

from __future__ import annotations

import enum
import math
import operator
import warnings
from dataclasses import InitVar, dataclass, fields, replace
from typing import Any

from mlflow_weightviz.errors import UsageError

__all__ = ["DEFAULT_FRAME_MS", "DEFAULT_HOLD_LAST_MS", "MAX_DPI", "MAX_FRAME_MS", "MAX_GRID", "MAX_SIZE", "MIN_DPI",
           "MIN_FRAME_MS", "MIN_SIZE", "Format", "GifOptions", "LookOptions", "OutputOptions", "OverviewStat", "Pool",
           "RenderOptions", "Scale", "View", "WeightvizWarning", "frame_size", "span"]

#: Browsers play GIF delays of 10 ms or less as 100 ms, so 20 ms is the shortest safe delay.
MIN_FRAME_MS = 20
#: The longest delay a GIF can store (65535 hundredths of a second).
MAX_FRAME_MS = 655_350
#: Below this resolution the smallest text is under one pixel and the font engine refuses it.
MIN_DPI = 20
#: Above this a frame of a full grid runs into hundreds of megapixels.
MAX_DPI = 600
#: Smallest and largest side of a frame given as ``size``, in pixels.
MIN_SIZE = 32
MAX_SIZE = 16384
#: The most rows or columns of cells a frame can have (``max_rows``, ``max_cols``).
MAX_GRID = 512


class WeightvizWarning(UserWarning):
    """Something was adjusted or skipped; the render still goes ahead."""


class Scale(str, enum.Enum):
    """How the colour scale is chosen."""

    GLOBAL = "global"
    FRAME = "frame"


class Pool(str, enum.Enum):
    """How blocks of a matrix larger than the display grid are reduced to one cell."""

    MEAN = "mean"
    MAXABS = "maxabs"
    RMS = "rms"


class View(str, enum.Enum):
    """What each frame shows: the weights, or their change."""

    WEIGHTS = "weights"
    DELTA_INIT = "delta-init"
    DELTA_STEP = "delta-step"


class Format(str, enum.Enum):
    """Which files are written per layer (or for the ``--grid`` montage)."""

    GIF = "gif"
    HTML = "html"
    MP4 = "mp4"


class OverviewStat(str, enum.Enum):
    """The per-layer statistic coloured in the layers × steps overview (see :mod:`mlflow_weightviz.stats`)."""

    UPDATE_RATIO = "update_ratio"
    DRIFT = "drift"
    RMS = "rms"
    NORM = "norm"


#: The ``--grid`` montage's default size budget: frame width and pixels per frame.
GRID_MAX_WIDTH = 2048
GRID_MAX_PIXELS = 4_000_000
#: The smallest budget accepted: below it not even a bare panel per layer can be drawn.
_MIN_GRID_WIDTH = 320
_MIN_GRID_PIXELS = 100_000


def _round_delay(ms: float) -> int:
    # GIF stores delays in 10 ms units.
    return int(round(ms / 10.0)) * 10


#: Display time of one frame, in milliseconds, unless told otherwise (every writer's default).
DEFAULT_FRAME_MS = 200
#: Display time of the last frame, so the end state can be read.
DEFAULT_HOLD_LAST_MS = 1000


@dataclass(frozen=True, kw_only=True)
class LookOptions:
    """How each frame looks: colours, numbers, pooling, labels, resolution and view.

    Attributes:
        scale: ``global`` uses one colour scale for all frames of a layer, ``frame``
            rescales every frame.
        vmin: Fixed lower end of the colour scale.
        vmax: Fixed upper end of the colour scale.
        cmap: A matplotlib colormap name, checked when the options are made. By default
            a diverging map centred on 0 is used when a layer has both signs, and a
            sequential one otherwise.
        annotate: Write each cell's value in the cell. ``None`` decides from the cell size.
        fmt: A ``str.format`` pattern for the cell values such as ``"{x:.3f}"``.
            ``None`` picks a precision that shows the change between frames.
        max_rows: Larger matrices are block-pooled down to this many rows.
        max_cols: Larger matrices are block-pooled down to this many columns.
        pool: How a block is reduced: its mean, its value of largest magnitude, or its
            root mean square. ``None`` (auto) draws pooled layers by their block RMS, with a
            sequential colormap since the RMS is never negative.
        row_label: Prefix of the row tick labels.
        col_label: Prefix of the column tick labels.
        dpi: Resolution of the drawn figure.
        size: Frame size in pixels, ``(width, height)`` or ``"WIDTHxHEIGHT"``; the figure is
            ``size / dpi`` inches and the square cells are made as large as fit. ``None``
            sizes the frame from the grid.
        view: Show the weights, or their change since the start or since the last frame.
        rows: Draw only rows ``start:stop`` of each layer's matrix (a ``(start, stop)``
            pair, a ``slice`` or ``"start:stop"``); tick labels keep the matrix's indices.
        cols: Draw only columns ``start:stop``, like ``rows``.
    """

    scale: Scale = Scale.GLOBAL
    vmin: float | None = None
    vmax: float | None = None
    cmap: str | None = None
    annotate: bool | None = None
    fmt: str | None = None
    max_rows: int = 64
    max_cols: int = 64
    pool: Pool | None = None
    row_label: str = ""
    col_label: str = ""
    dpi: int = 100
    size: tuple[int, int] | None = None
    view: View = View.WEIGHTS
    rows: tuple[int, int] | None = None
    cols: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise through object.__setattr__
        set_(self, "scale", _enum(Scale, self.scale, "scale"))
        set_(self, "pool", None if self.pool is None else _enum(Pool, self.pool, "pool"))
        set_(self, "rows", span(self.rows, "rows"))
        set_(self, "cols", span(self.cols, "cols"))
        set_(self, "view", _enum(View, self.view, "view"))
        set_(self, "size", frame_size(self.size))
        for name in ("vmin", "vmax"):
            value = getattr(self, name)
            if value is not None and not _finite(value):
                msg = f"{name} must be a finite number; got {value}"
                raise UsageError(msg)
        if self.vmin is not None and self.vmax is not None and not self.vmin < self.vmax:
            msg = f"vmin must be below vmax; got vmin={self.vmin} and vmax={self.vmax}"
            raise UsageError(msg)
        if self.fmt is not None:
            try:
                self.fmt.format(x=0.5)
            except (KeyError, IndexError, ValueError, TypeError, AttributeError) as exc:
                msg = f"fmt must be a format pattern using {{x}}, such as '{{x:.3f}}'; got {self.fmt!r} ({exc})"
                raise UsageError(msg) from None
        for name, low, high in (("max_rows", 1, MAX_GRID), ("max_cols", 1, MAX_GRID), ("dpi", MIN_DPI, MAX_DPI)):
            value = getattr(self, name)
            if not (_finite(value) and low <= value <= high):
                msg = f"{name} must be from {low} to {high}; got {value}"
                raise UsageError(msg)
        if self.cmap is not None:
            import matplotlib as mpl  # only when a colormap is named: plain options stay light

            if self.cmap not in mpl.colormaps:
                msg = (f"unknown colormap {self.cmap!r}; try viridis, magma, YlGn, RdBu_r or any matplotlib "
                       "colormap name")
                raise UsageError(msg)


@dataclass(frozen=True, kw_only=True)
class GifOptions:
    """The timing of every animation (GIF, MP4, HTML player), checked once here.

    Attributes:
        frame_ms: Display time of each frame in milliseconds, rounded to the GIF's
            10 ms units and at least :data:`MIN_FRAME_MS` (with a warning).
        hold_last_ms: Display time of the last frame, so the end state can be read.
        loop: GIF loop count: 0 loops forever, ``None`` plays once.
        fps: Frames per second; an alternative to ``frame_ms`` (not stored).
    """

    frame_ms: int = DEFAULT_FRAME_MS
    hold_last_ms: int = DEFAULT_HOLD_LAST_MS
    loop: int | None = 0
    fps: InitVar[float | None] = None

    def __post_init__(self, fps: float | None) -> None:
        set_ = object.__setattr__
        if self.loop is not None and not 0 <= self.loop <= 65535:
            msg = f"loop must be between 0 (forever) and 65535; got {self.loop}"
            raise UsageError(msg)
        frame_ms: float = self.frame_ms
        if fps is not None:
            if not (_finite(fps) and fps >= 1000.0 / MAX_FRAME_MS):
                msg = f"fps must be a finite number of at least {1000.0 / MAX_FRAME_MS:.4g}; got {fps}"
                raise UsageError(msg)
            frame_ms = 1000.0 / fps
        elif not (_finite(frame_ms) and 0 <= frame_ms <= MAX_FRAME_MS):
            msg = f"frame_ms must be from 0 to {MAX_FRAME_MS} (a GIF's longest delay); got {frame_ms}"
            raise UsageError(msg)
        if not (_finite(self.hold_last_ms) and 0 <= self.hold_last_ms <= MAX_FRAME_MS):
            msg = f"hold_last_ms must be from 0 to {MAX_FRAME_MS} (a GIF's longest delay); got {self.hold_last_ms}"
            raise UsageError(msg)
        rounded = _round_delay(frame_ms)
        if rounded < MIN_FRAME_MS:
            warnings.warn(
                f"frame delay {frame_ms:g} ms raised to {MIN_FRAME_MS} ms: "
                "browsers play GIF delays of 10 ms or less as 100 ms",
                WeightvizWarning,
                stacklevel=4,
            )
            rounded = MIN_FRAME_MS
        set_(self, "frame_ms", rounded)
        set_(self, "hold_last_ms", _round_delay(self.hold_last_ms))


@dataclass(frozen=True, kw_only=True)
class OutputOptions:
    """Which files are made besides nothing else: formats, the montage, step images, the caption.

    Attributes:
        formats: Files to write: ``gif``, ``html`` (an interactive player with the exact
            values) and/or ``mp4``.
        grid: Draw all layers side by side in one frame per step, into one ``grid`` file.
        step_images: Also log every k-th frame (and the last) as an MLflow image with its
            step, for the run's image slider; ``None`` logs none. Needs a run.
        caption_metric: A run metric whose value at or before each frame's step is written
            under the frame's title. Needs a run.
        metrics: Log each layer's training diagnostics (``weightviz/<layer>/norm``,
            ``update_ratio``, ``drift``, ``max_abs``, ``rms``, ``nonfinite``) as run metrics,
            one per snapshot step (see docs/metrics.md). Only when rendering to a run;
            metrics the run already has are not logged again.
        overview: Also make the layers × steps overview, ``overview.png`` and ``overview.html``.
            ``None`` (default) makes it when the render logs to a run; ``True`` also for
            local renders (``render_file``, ``--output-dir``); ``False`` never.
        overview_stat: The statistic the overview colours: ``update_ratio`` (default, log
            scale), ``drift``, ``rms`` or ``norm``.
        grid_max_width: The ``--grid`` frame is at most this many pixels wide.
        grid_max_pixels: And has at most about this many pixels; panels shrink to fit,
            dropping what cannot be read at their size.
    """

    formats: tuple[Format, ...] = (Format.GIF,)
    grid: bool = False
    step_images: int | None = None
    caption_metric: str | None = None
    metrics: bool = True
    overview: bool | None = None
    overview_stat: OverviewStat = OverviewStat.UPDATE_RATIO
    grid_max_width: int = GRID_MAX_WIDTH
    grid_max_pixels: int = GRID_MAX_PIXELS

    def __post_init__(self) -> None:
        given: Any = self.formats  # a single "gif" is accepted too
        formats = (given,) if isinstance(given, str) else tuple(given)
        object.__setattr__(self, "formats", tuple(dict.fromkeys(_enum(Format, f, "format") for f in formats)))
        if not self.formats:
            msg = "formats must name at least one of 'gif', 'html', 'mp4'; got none"
            raise UsageError(msg)
        if self.step_images is not None and self.step_images < 1:
            msg = f"step_images must be at least 1 (every frame); got {self.step_images}"
            raise UsageError(msg)
        if self.caption_metric is not None and not self.caption_metric.strip():
            msg = "caption_metric must be a metric name such as 'loss'; got an empty name"
            raise UsageError(msg)
        object.__setattr__(self, "overview_stat", _enum(OverviewStat, self.overview_stat, "overview_stat"))
        for name, low in (("grid_max_width", _MIN_GRID_WIDTH), ("grid_max_pixels", _MIN_GRID_PIXELS)):
            value = getattr(self, name)
            if not (_finite(value) and value == int(value) and value >= low):
                msg = f"{name} must be a whole number of at least {low}; got {value}"
                raise UsageError(msg)
        if self.grid and Format.HTML in self.formats:
            msg = ("--grid draws all layers into one GIF or MP4, but the HTML player shows one layer: "
                   "use --format gif/mp4 with --grid, or drop --grid")
            raise UsageError(msg)


_GROUPS: dict[str, type[Any]] = {"look": LookOptions, "gif": GifOptions, "outputs": OutputOptions}
#: Every flat keyword of :class:`RenderOptions` and the group it belongs to ("" = the options themselves).
_KEYWORDS: dict[str, str] = {
    "layers": "", "max_frames": "",
    **{f.name: "look" for f in fields(LookOptions)},
    **{f.name: "gif" for f in fields(GifOptions)}, "fps": "gif",
    **{f.name: "outputs" for f in fields(OutputOptions)},
}
#: Flat names in the order the fingerprint has always listed them.
_FINGERPRINT = ("layers", "scale", "vmin", "vmax", "cmap", "annotate", "fmt", "max_rows", "max_cols", "pool",
                "row_label", "col_label", "frame_ms", "hold_last_ms", "loop", "max_frames", "dpi", "view",
                "formats", "step_images", "caption_metric", "grid")


@dataclass(frozen=True, init=False)
class RenderOptions:
    """How snapshots are selected, drawn and timed, and which files are made.

    Every field has a default that gives a readable GIF, so ``RenderOptions()`` is a
    complete configuration. Values are checked when the object is made.

    The options come in groups: :attr:`look` (:class:`LookOptions`), :attr:`gif`
    (:class:`GifOptions`, the timing) and :attr:`outputs` (:class:`OutputOptions`). Any
    field of a group can also be given (and read) flat, e.g.
    ``RenderOptions(cmap="viridis", fps=10).look.cmap``.

    Attributes:
        layers: Layer names or shell-style globs to render; empty means all layers.
        max_frames: Sample this many frames evenly, always keeping the first and last.
        look: Colours, numbers, pooling, labels, resolution and view.
        gif: Frame time, the hold of the last frame and the loop count.
        outputs: Formats, the ``--grid`` montage, step images and the caption metric.
    """

    layers: tuple[str, ...]
    max_frames: int | None
    look: LookOptions
    gif: GifOptions
    outputs: OutputOptions

    def __init__(self, *, layers: Any = (), max_frames: int | None = None, look: LookOptions | None = None,
                 gif: GifOptions | None = None, outputs: OutputOptions | None = None, **flat: Any) -> None:
        unknown = sorted(set(flat) - set(_KEYWORDS))
        if unknown:
            hint = ""
            if {"workers", "allow_pickle"} & set(unknown):
                hint = " (workers and allow_pickle are arguments of render_run, render_file and inspect_*)"
            msg = (f"unknown render option(s) {', '.join(unknown)}{hint}; the render options are: "
                   f"{', '.join(sorted(_KEYWORDS))}")
            raise UsageError(msg)
        groups: dict[str, Any] = {"look": look, "gif": gif, "outputs": outputs}
        for group, kind in _GROUPS.items():
            given = {k: v for k, v in flat.items() if _KEYWORDS[k] == group}
            base = groups[group]
            groups[group] = kind(**given) if base is None else replace(base, **given) if given else base
        size = groups["look"].size
        if size is not None and Format.MP4 in groups["outputs"].formats and (size[0] % 2 or size[1] % 2):
            msg = f"an MP4 (H.264) needs even frame sides; got size {size[0]}x{size[1]}"
            raise UsageError(msg)
        if max_frames is not None and max_frames < 2:
            msg = f"max_frames must be at least 2 (the first and last frame); got {max_frames}"
            raise UsageError(msg)
        set_ = object.__setattr__  # frozen
        set_(self, "layers", tuple(layers))
        set_(self, "max_frames", max_frames)
        for group, value in groups.items():
            set_(self, group, value)

    def __getattr__(self, name: str) -> Any:
        # Flat reads (options.cmap, options.frame_ms) go to the field's group.
        group = _KEYWORDS.get(name) if name != "fps" else None
        if not group:
            msg = f"{type(self).__name__!r} object has no attribute {name!r}"
            raise AttributeError(msg)
        return getattr(object.__getattribute__(self, group), name)

    @staticmethod
    def keywords() -> tuple[str, ...]:
        """Every flat keyword ``RenderOptions(...)`` accepts, sorted."""
        return tuple(sorted(_KEYWORDS))

    def replace(self, **changes: Any) -> RenderOptions:
        """Return a copy with some fields (flat or whole groups) changed, and checked again."""
        base: dict[str, Any] = {"layers": self.layers, "max_frames": self.max_frames, "look": self.look,
                                "gif": self.gif, "outputs": self.outputs}
        base.update(changes)
        return RenderOptions(**base)

    def fingerprint_fields(self) -> dict[str, Any]:
        """The fields that change the rendered output, as plain JSON-able values."""
        out: dict[str, Any] = {}
        for name in _FINGERPRINT:
            value = getattr(self, name)
            out[name] = value.value if isinstance(value, enum.Enum) else value
        out["layers"] = list(self.layers)
        out["formats"] = [f.value for f in self.outputs.formats]
        for name in ("rows", "cols", "size"):  # only when set: other renders keep their fingerprint
            if getattr(self.look, name) is not None:
                out[name] = list(getattr(self.look, name))
        if not self.outputs.metrics:  # only when off: renders from before metrics keep their fingerprint
            out["metrics"] = False
        # Also only when they differ from the default, so renders made before the overview keep theirs.
        if self.outputs.overview is not None:
            out["overview"] = self.outputs.overview
        if self.outputs.overview is not False and self.outputs.overview_stat is not OverviewStat.UPDATE_RATIO:
            out["overview_stat"] = self.outputs.overview_stat.value
        if self.outputs.grid:  # the budgeted montage differs from the one drawn before it: render it again
            out["grid_budget"] = [self.outputs.grid_max_width, self.outputs.grid_max_pixels]
        return out


def frame_size(value: Any) -> tuple[int, int] | None:
    """A frame size as ``(width, height)`` pixels: from a pair or ``"WIDTHxHEIGHT"``; ``None`` stays ``None``.

    Raises:
        UsageError: Not two whole numbers from :data:`MIN_SIZE` to :data:`MAX_SIZE`.
    """
    if value is None:
        return None
    try:
        if isinstance(value, str):
            parts = value.lower().replace("×", "x").split("x")
            if len(parts) != 2:
                raise ValueError
            width, height = (int(p.strip()) for p in parts)
        else:
            if isinstance(value, bool | float) or any(isinstance(v, bool | float) for v in value):
                raise ValueError
            width, height = (operator.index(v) for v in value)
    except (TypeError, ValueError):
        msg = f"size must be WIDTHxHEIGHT in pixels, such as 1500x1000; got {value!r}"
        raise UsageError(msg) from None
    if not (MIN_SIZE <= width <= MAX_SIZE and MIN_SIZE <= height <= MAX_SIZE):
        msg = f"size must be from {MIN_SIZE} to {MAX_SIZE} pixels a side; got {width}x{height}"
        raise UsageError(msg)
    return (width, height)


def span(value: Any, name: str) -> tuple[int, int] | None:
    """A ``rows``/``cols`` region as ``(start, stop)``: from a pair, a ``slice`` or ``"start:stop"``.

    Raises:
        UsageError: The region is not two whole numbers with ``0 <= start < stop``.
    """
    if value is None:
        return None
    given = value
    if isinstance(value, str):
        value = value.split(":") if value.count(":") == 1 else [value]
    elif isinstance(value, slice):
        if value.step not in (None, 1):
            msg = f"{name} must be a slice with step 1; got {given!r}"
            raise UsageError(msg)
        value = [value.start if value.start is not None else 0, value.stop]
    try:
        start, stop = (int(v) for v in value)
    except (TypeError, ValueError):
        msg = f"{name} must be a range START:STOP of the matrix such as 0:32; got {given!r}"
        raise UsageError(msg) from None
    if not 0 <= start < stop:
        msg = f"{name} must be a non-empty range START:STOP with 0 <= START < STOP; got {given!r}"
        raise UsageError(msg)
    return (start, stop)


def _finite(value: Any) -> bool:
    """Whether ``value`` is a real, finite number (not nan, not inf, not a bool)."""
    try:
        return not isinstance(value, bool) and math.isfinite(value)
    except TypeError:
        return False


def _enum(kind: type[enum.Enum], value: Any, name: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(repr(m.value) for m in kind)
        msg = f"{name} must be one of {choices}; got {value!r}"
        raise UsageError(msg) from None
