"""The drawn data back as arrays, for notebooks: :func:`load_snapshots`."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlflow_weightviz import _tracking
from mlflow_weightviz.grid import GridInfo, prepare_layer
from mlflow_weightviz.options import Pool, RenderOptions
from mlflow_weightviz.snapshots import group_layers, read_snapshots
from mlflow_weightviz.sources import RunSource

__all__ = ["LayerSnapshots", "load_snapshots"]


@dataclass(frozen=True)
class LayerSnapshots:
    """One layer's snapshots as the renderer draws them.

    Attributes:
        name: The layer.
        steps: The training steps, a 1-D int64 array of length T.
        values: The drawn values, a float64 array of shape ``(T, rows, cols)``: exact for
            layers within the grid, block statistics (see ``info``) for larger ones.
        info: The original shape and matrix, the block layout and the pool kind.
        dtype: The dtype the layer was recorded in (e.g. ``bfloat16`` for reduced layers).
    """

    name: str
    steps: np.ndarray
    values: np.ndarray
    info: GridInfo
    dtype: str


def load_snapshots(run_id_or_local_path: str | os.PathLike[str], *, layers: Sequence[str] = (),
                   pool: Pool | str | None = "mean", tracking_uri: str | None = None, source: str = "weights",
                   max_rows: int = 64, max_cols: int = 64, rows: Any = None, cols: Any = None,
                   allow_pickle: bool = False) -> dict[str, LayerSnapshots]:
    """Load a run's (or a local file's or folder's) snapshots as arrays, exactly as they are drawn.

    Every format :func:`~mlflow_weightviz.render_file` reads works, full and reduced
    snapshots alike. Layers within ``max_rows`` × ``max_cols`` come back exact; larger ones
    pooled to the grid with ``pool`` (from a reduced snapshot's stored statistic).

    Args:
        run_id_or_local_path: A path that exists locally is read locally; anything else is
            an MLflow run id.
        layers: Layer names or shell-style globs; empty means all layers.
        pool: ``"mean"``, ``"maxabs"`` or ``"rms"`` of each block; ``None`` picks like the
            renderer does (RMS for pooled layers).
        tracking_uri: For run ids; defaults to ``MLFLOW_TRACKING_URI`` or MLflow's default.
        source: The run's artifact path of the snapshots.
        max_rows: Rows of the grid larger layers are pooled to.
        max_cols: Columns of that grid.
        rows: Only rows ``start:stop`` of each matrix (as ``--rows``), e.g. ``(0, 32)``.
        cols: Only columns ``start:stop`` (as ``--cols``).
        allow_pickle: Read Python pickles, which can run arbitrary code.

    Returns:
        ``{layer: LayerSnapshots}`` in layer order; each has ``.steps`` (T,) and ``.values``
        (T, rows, cols).

    Raises:
        SnapshotsNotFoundError: Nothing to read at the path or in the run.
        RunNotFoundError: The run does not exist.
        UsageError: An option is invalid, or a region is not stored.
    """
    options = RenderOptions(layers=tuple(layers), pool=pool, max_rows=max_rows, max_cols=max_cols, rows=rows,
                            cols=cols)
    with tempfile.TemporaryDirectory(prefix="weightviz-") as tmp:
        work = Path(tmp)
        local = Path(run_id_or_local_path)
        if local.exists():
            found = read_snapshots(local, allow_pickle=allow_pickle)
        else:
            client = _tracking.client(tracking_uri)
            run = _tracking.get_run(client, str(run_id_or_local_path))
            src = RunSource(client, run.info.run_id, source)
            found = read_snapshots(src.fetch(work), allow_pickle=allow_pickle, root_name=src.name)
        out = {}
        for name, snaps in group_layers(found, options.layers).items():
            prepared = prepare_layer(name, snaps, options, work)
            try:
                values = np.array(prepared.stack(), dtype=np.float64)  # a copy: the stack file goes with tmp
            finally:
                prepared.stack_path.unlink(missing_ok=True)
            out[name] = LayerSnapshots(name, np.asarray(prepared.steps, dtype=np.int64), values, prepared.info,
                                       prepared.dtype)
    return out
