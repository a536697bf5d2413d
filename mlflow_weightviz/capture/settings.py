"""What a recorder records and how it uploads and renders: :class:`RecordSettings`, checked before training."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlflow_weightviz.capture._arrays import Crop, check_crops
from mlflow_weightviz.errors import UsageError
from mlflow_weightviz.options import RenderOptions

__all__ = ["DEFAULT_CHUNK_STEPS", "DEFAULT_MAX_UPLOADS", "DOUBLE_EVERY", "RecordSettings", "render_options_from"]

#: Snapshots in the first chunk file.
DEFAULT_CHUNK_STEPS = 50
#: Upper bound on chunk uploads per recorder.
DEFAULT_MAX_UPLOADS = 32
#: The chunk size doubles after this many uploads, so uploads grow with the log of the run length.
DOUBLE_EVERY = 4

# Render options that make no sense from a recorder: it picks the layers itself and writes no pickles.
_NOT_RENDER_OPTIONS = frozenset({"layers", "allow_pickle"})


@dataclass(frozen=True)
class RecordSettings:
    """What to record and how to upload and render it; checked when made, before training starts.

    Attributes:
        every: Take a snapshot at the steps divisible by this (step 0 included).
        layers: Name globs of the layers to record; ``None`` records every array with 2 or more dims.
        artifact_path: Folder of the snapshots in the run.
        render: Render and log the GIFs when recording ends.
        render_artifact_path: Folder of the GIFs in the run.
        dtype: Store snapshots as this dtype (``float16`` halves the size); ``None`` keeps it.
        chunk_steps: Snapshots in the first chunk file.
        max_uploads: Most chunk uploads of one recorder.
        buffer_dir: Where the local buffer folder is made; defaults to the system's temp folder.
        options: How the GIFs are drawn; its ``max_rows`` × ``max_cols`` is also the capture grid.
        reduce: Store layers larger than the grid as block statistics (mean, max-abs, RMS).
        crops: Exact regions stored as their own layers: (layer, (row start, stop), (col start, stop)).
    """

    every: int = 1
    layers: tuple[str, ...] | None = None
    artifact_path: str = "weights"
    render: bool = True
    render_artifact_path: str = "weightviz"
    dtype: np.dtype[Any] | None = None
    chunk_steps: int = DEFAULT_CHUNK_STEPS
    max_uploads: int = DEFAULT_MAX_UPLOADS
    buffer_dir: Path | None = None
    options: RenderOptions = RenderOptions()
    reduce: bool = True
    crops: tuple[Crop, ...] = ()

    @property
    def grid(self) -> tuple[int, int]:
        """The capture grid: the render's ``max_rows`` × ``max_cols``, so one keyword sets both."""
        return (self.options.max_rows, self.options.max_cols)

    @classmethod
    def build(cls, *, every: int = 1, layers: str | Sequence[str] | None = None, artifact_path: str = "weights",
              render: bool = True, render_artifact_path: str = "weightviz", dtype: Any = None,
              chunk_steps: int = DEFAULT_CHUNK_STEPS, max_uploads: int = DEFAULT_MAX_UPLOADS,
              buffer_dir: str | os.PathLike[str] | None = None,
              render_options: Mapping[str, Any] | None = None, reduce: bool = True,
              crops: Mapping[str, tuple[slice, slice]] | None = None) -> RecordSettings:
        """Check every argument and build the settings.

        Raises:
            UsageError: A value is out of range, or a render option is unknown or invalid.
        """
        for name, value, low in (("every", every, 1), ("chunk_steps", chunk_steps, 1),
                                 ("max_uploads", max_uploads, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                msg = f"{name} must be an integer of at least {low}; got {value!r}"
                raise UsageError(msg)
        if isinstance(layers, str):
            layers = (layers,)
        if layers is not None:
            layers = tuple(layers)
            if not layers or not all(isinstance(g, str) and g for g in layers):
                msg = f"layers must be one or more non-empty name globs such as '*.weight'; got {layers!r}"
                raise UsageError(msg)
        for name, path in (("artifact_path", artifact_path), ("render_artifact_path", render_artifact_path)):
            # Surrounding slashes are dropped; inside, no empty, "." or ".." part (checked again by render_run).
            if not isinstance(path, str) or any(p in ("", ".", "..") for p in path.strip("/").split("/")):
                msg = f"{name} must be a relative artifact folder such as 'weights'; got {path!r}"
                raise UsageError(msg)
        if artifact_path.strip("/") == render_artifact_path.strip("/"):
            msg = f"the snapshots and the GIFs need different folders; both are {artifact_path!r}"
            raise UsageError(msg)
        return cls(every=every, layers=layers, artifact_path=artifact_path.strip("/"), render=bool(render),
                   render_artifact_path=render_artifact_path.strip("/"), dtype=_dtype(dtype),
                   chunk_steps=chunk_steps, max_uploads=max_uploads,
                   buffer_dir=Path(buffer_dir) if buffer_dir is not None else None,
                   options=render_options_from(render_options or {}), reduce=bool(reduce),
                   crops=check_crops(crops))


def render_options_from(values: Mapping[str, Any]) -> RenderOptions:
    """Build :class:`RenderOptions` from keyword arguments, failing fast on unknown or bad ones.

    Raises:
        UsageError: An option is unknown, has a bad value, or names an unknown colormap.
    """
    known = sorted(name for name in RenderOptions.keywords() if name not in _NOT_RENDER_OPTIONS)
    unknown = sorted(set(values) - set(known))
    if unknown:
        msg = f"unknown render option(s) {', '.join(unknown)}; the render options are: {', '.join(known)}"
        raise UsageError(msg)
    return RenderOptions(**values)  # checks the colormap too


def _dtype(value: Any) -> np.dtype[Any] | None:
    if value is None:
        return None
    try:
        dtype: np.dtype[Any] = np.dtype(value)
    except TypeError:
        msg = f"dtype must be a numeric numpy dtype such as 'float16'; got {value!r}"
        raise UsageError(msg) from None
    if dtype.hasobject or dtype.kind not in "biufc":
        msg = f"dtype must be a numeric numpy dtype such as 'float16'; got {dtype}"
        raise UsageError(msg)
    return dtype
