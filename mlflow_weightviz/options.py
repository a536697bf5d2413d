"""The one typed options object shared by the CLI and the Python API."""

from __future__ import annotations

import enum
import warnings
from dataclasses import dataclass, replace
from typing import Any

from mlflow_weightviz.errors import UsageError

__all__ = ["Format", "Pool", "RenderOptions", "Scale", "View", "WeightvizWarning"]

#: Browsers play GIF delays of 10 ms or less as 100 ms, so 20 ms is the shortest safe delay.
MIN_FRAME_MS = 20


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


def _round_delay(ms: float) -> int:
    # GIF stores delays in 10 ms units.
    return int(round(ms / 10.0)) * 10


@dataclass(frozen=True, kw_only=True)
class RenderOptions:
    """How snapshots are selected, drawn and encoded.

    Every field has a default that gives a readable GIF, so ``RenderOptions()`` is a
    complete configuration. Values are checked when the object is made.

    Attributes:
        layers: Layer names or shell-style globs to render; empty means all layers.
        scale: ``global`` uses one colour scale for all frames of a layer, ``frame``
            rescales every frame.
        vmin: Fixed lower end of the colour scale.
        vmax: Fixed upper end of the colour scale.
        cmap: A matplotlib colormap name. By default a diverging map centred on 0 is
            used when a layer has both signs, and a sequential one otherwise.
        annotate: Write each cell's value in the cell. ``None`` decides from the cell
            size.
        fmt: A ``str.format`` pattern for the cell values such as ``"{x:.3f}"``.
            ``None`` picks a precision that shows the change between frames.
        max_rows: Larger matrices are block-pooled down to this many rows.
        max_cols: Larger matrices are block-pooled down to this many columns.
        pool: How a block is reduced: its mean, or its value of largest magnitude.
        row_label: Prefix of the row tick labels.
        col_label: Prefix of the column tick labels.
        frame_ms: Display time of each frame in milliseconds.
        fps: Frames per second; an alternative to ``frame_ms``.
        hold_last_ms: Display time of the last frame, so the end state can be read.
        loop: GIF loop count: 0 loops forever, ``None`` plays once.
        max_frames: Sample this many frames evenly, always keeping the first and last.
        dpi: Resolution of the drawn figure.
        allow_pickle: Allow reading Python pickles, which can run arbitrary code.
        workers: Processes that draw frames in parallel.
        view: Show the weights, or their change since the start or since the last frame.
        formats: Files to write: ``gif``, ``html`` (an interactive player with the exact
            values) and/or ``mp4``.
        step_images: Also log every k-th frame (and the last) as an MLflow image with its
            step, for the run's image slider; ``None`` logs none. Needs a run.
        caption_metric: A run metric whose value at or before each frame's step is written
            under the frame's title. Needs a run.
        grid: Draw all layers side by side in one frame per step, into one ``grid`` file.
    """

    layers: tuple[str, ...] = ()
    scale: Scale = Scale.GLOBAL
    vmin: float | None = None
    vmax: float | None = None
    cmap: str | None = None
    annotate: bool | None = None
    fmt: str | None = None
    max_rows: int = 64
    max_cols: int = 64
    pool: Pool = Pool.MEAN
    row_label: str = ""
    col_label: str = ""
    frame_ms: int = 200
    fps: float | None = None
    hold_last_ms: int = 1000
    loop: int | None = 0
    max_frames: int | None = None
    dpi: int = 100
    allow_pickle: bool = False
    workers: int = 1
    view: View = View.WEIGHTS
    formats: tuple[Format, ...] = (Format.GIF,)
    step_images: int | None = None
    caption_metric: str | None = None
    grid: bool = False

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise through object.__setattr__
        set_(self, "layers", tuple(self.layers))
        set_(self, "scale", _enum(Scale, self.scale, "scale"))
        set_(self, "pool", _enum(Pool, self.pool, "pool"))
        set_(self, "view", _enum(View, self.view, "view"))
        given: Any = self.formats  # a single "gif" is accepted too
        formats = (given,) if isinstance(given, str) else tuple(given)
        set_(self, "formats", tuple(dict.fromkeys(_enum(Format, f, "format") for f in formats)))
        if not self.formats:
            msg = "formats must name at least one of 'gif', 'html', 'mp4'; got none"
            raise UsageError(msg)
        if self.step_images is not None and self.step_images < 1:
            msg = f"step_images must be at least 1 (every frame); got {self.step_images}"
            raise UsageError(msg)
        if self.caption_metric is not None and not self.caption_metric.strip():
            msg = "caption_metric must be a metric name such as 'loss'; got an empty name"
            raise UsageError(msg)
        if self.grid and Format.HTML in self.formats:
            msg = ("--grid draws all layers into one GIF or MP4, but the HTML player shows one layer: "
                   "use --format gif/mp4 with --grid, or drop --grid")
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
        for name in ("max_rows", "max_cols", "dpi", "workers"):
            if getattr(self, name) < 1:
                msg = f"{name} must be at least 1; got {getattr(self, name)}"
                raise UsageError(msg)
        if self.max_frames is not None and self.max_frames < 2:
            msg = f"max_frames must be at least 2 (the first and last frame); got {self.max_frames}"
            raise UsageError(msg)
        if self.loop is not None and not 0 <= self.loop <= 65535:
            msg = f"loop must be between 0 (forever) and 65535; got {self.loop}"
            raise UsageError(msg)
        if self.fps is not None:
            if self.fps <= 0:
                msg = f"fps must be positive; got {self.fps}"
                raise UsageError(msg)
            set_(self, "frame_ms", 1000.0 / self.fps)
        if self.hold_last_ms < 0:
            msg = f"hold_last_ms must not be negative; got {self.hold_last_ms}"
            raise UsageError(msg)
        frame_ms = _round_delay(self.frame_ms)
        if frame_ms < MIN_FRAME_MS:
            warnings.warn(
                f"frame delay {self.frame_ms:g} ms raised to {MIN_FRAME_MS} ms: "
                "browsers play GIF delays of 10 ms or less as 100 ms",
                WeightvizWarning,
                stacklevel=3,
            )
            frame_ms = MIN_FRAME_MS
        set_(self, "frame_ms", frame_ms)
        set_(self, "hold_last_ms", _round_delay(self.hold_last_ms))

    def replace(self, **changes: Any) -> RenderOptions:
        """Return a copy with some fields changed (and checked again)."""
        changes.setdefault("fps", None)
        return replace(self, **changes)

    def fingerprint_fields(self) -> dict[str, Any]:
        """The fields that change the rendered output, as plain JSON-able values."""
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            if name in {"allow_pickle", "workers", "fps"}:
                continue
            value = getattr(self, name)
            out[name] = value.value if isinstance(value, enum.Enum) else value
        out["layers"] = list(self.layers)
        out["formats"] = [f.value for f in self.formats]
        return out


def _enum(kind: type[enum.Enum], value: Any, name: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(repr(m.value) for m in kind)
        msg = f"{name} must be one of {choices}; got {value!r}"
        raise UsageError(msg) from None
