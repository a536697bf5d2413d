"""Capture: getting weight snapshots into an MLflow run while training.

The canonical layout under the run's ``weights/`` artifact folder:

* ``step_<N>.npz``: one step, one array per layer name;
* ``chunk_<first>-<last>.npz``: many steps, each layer stacked along axis 0, plus a 1-D
  integer ``steps`` array naming the step of each entry.

Both are plain uncompressed ``np.savez``-style files (no pickle), readable by
``np.load(allow_pickle=False)`` and memory-mapped by the renderer.

:func:`log_snapshot` logs one step; :func:`record` buffers many on local disk and logs
them as chunks: ``settings.py`` checks what to record, ``chunks.py`` writes the local
buffer and the chunk files, ``recorder.py`` takes the snapshots and uploads them. The
framework callbacks live in ``keras.py``, ``lightning.py`` and ``hf.py`` and import their
framework only when used; the keywords they share are those of :class:`RecordingCallback`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow_weightviz.capture._arrays import (
    DEFAULT_LAYER,
    check_crops,
    snapshot_arrays,
    to_numpy,
    weights_mapping,
    write_step_file,
)
from mlflow_weightviz.capture._callback import RecordingCallback
from mlflow_weightviz.capture.recorder import Recorder, record
from mlflow_weightviz.capture.settings import _dtype as _settings_dtype
from mlflow_weightviz.errors import UsageError

__all__ = ["DEFAULT_LAYER", "Recorder", "RecordingCallback", "log_snapshot", "record", "to_numpy", "weights_mapping",
           "write_step_file"]


def log_snapshot(weights: Any, step: int, *, run_id: str | None = None, artifact_path: str = "weights",
                 dtype: Any = None, tracking_uri: str | None = None, reduce: bool = True, max_rows: int = 64,
                 max_cols: int = 64, crops: Mapping[str, tuple[slice, slice]] | None = None) -> str:
    """Log one step's weights to an MLflow run in the canonical layout.

    Args:
        weights: A mapping of layer name → array-like (numpy, torch, TF, JAX), or one array.
        step: The training step.
        run_id: The run; defaults to the active run.
        artifact_path: Folder of the snapshots in the run.
        dtype: Store as this dtype, e.g. ``"float16"`` to halve the size.
        tracking_uri: Defaults to the current tracking URI.
        reduce: Store a layer larger than ``max_rows`` × ``max_cols`` as its block mean,
            max-abs and RMS (see :func:`record`); ``False`` stores it whole.
        max_rows: Rows of the grid big layers are reduced to.
        max_cols: Columns of the grid big layers are reduced to.
        crops: Regions stored exactly as layers ``<layer>[r0:r1,c0:c1]``, e.g.
            ``{"fc.weight": (slice(0, 32), slice(0, 32))}``.

    Returns:
        The artifact path of the logged file.

    Raises:
        UsageError: No run is active and no ``run_id`` was given, or the weights are not numeric.
    """
    import mlflow

    from mlflow_weightviz import _tracking

    if step < 0:
        msg = f"step must not be negative; got {step}"
        raise UsageError(msg)
    if run_id is None:
        active = mlflow.active_run()
        if active is None:
            msg = "log_snapshot needs an active run (mlflow.start_run()) or run_id="
            raise UsageError(msg)
        run_id = active.info.run_id
    for name, value in (("max_rows", max_rows), ("max_cols", max_cols)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            msg = f"{name} must be an integer of at least 1; got {value!r}"
            raise UsageError(msg)
    if dtype is not None:
        dtype = _settings_dtype(dtype)
    arrays = snapshot_arrays(weights, dtype=dtype, grid=(max_rows, max_cols), reduce=reduce, crops=check_crops(crops))
    with tempfile.TemporaryDirectory(prefix="weightviz-") as tmp:
        path = write_step_file(Path(tmp), step, arrays)
        client = _tracking.client(tracking_uri)
        with _tracking.translate(f"logging a snapshot to run {run_id}", writing=True):
            client.log_artifact(run_id, os.fspath(path), artifact_path)
    return f"{artifact_path}/{path.name}"
