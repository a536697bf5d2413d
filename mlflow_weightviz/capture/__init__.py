"""Capture: getting weight snapshots into an MLflow run while training.

The canonical layout under the run's ``weights/`` artifact folder:

* ``step_<N>.npz``: one step, one array per layer name;
* ``chunk_<first>-<last>.npz``: many steps, each layer stacked along axis 0, plus a 1-D
  integer ``steps`` array naming the step of each entry.

Both are plain ``np.savez`` files (no pickle), readable by ``np.load(allow_pickle=False)``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mlflow_weightviz.errors import UsageError
from mlflow_weightviz.snapshots import STEPS_KEY

__all__ = ["log_snapshot", "to_numpy", "weights_mapping", "write_step_file"]

#: Layer name used when a single array is given instead of a mapping.
DEFAULT_LAYER = "weights"


def to_numpy(value: Any) -> np.ndarray:
    """Convert a torch, TensorFlow/Keras, JAX or array-like value to numpy without importing any framework."""
    if hasattr(value, "detach"):  # torch.Tensor / Parameter
        tensor = value.detach()
        if str(getattr(tensor, "dtype", "")) == "torch.bfloat16":
            tensor = tensor.float()  # numpy has no bfloat16
        return np.asarray(tensor.cpu().numpy())
    if hasattr(value, "numpy") and callable(value.numpy):  # tf.Variable, keras Variable, EagerTensor
        return np.asarray(value.numpy())
    return np.asarray(value)


def weights_mapping(weights: Any, dtype: Any = None) -> dict[str, np.ndarray]:
    """Normalise ``weights`` (a mapping name → array-like, or one array) to name → numpy array."""
    items = weights.items() if isinstance(weights, Mapping) else [(DEFAULT_LAYER, weights)]
    out = {}
    for name, value in items:
        key = str(name)
        if key == STEPS_KEY:
            msg = f"a layer may not be called {STEPS_KEY!r}: the snapshot format reserves that name"
            raise UsageError(msg)
        arr = to_numpy(value)
        if arr.dtype.hasobject or arr.dtype.kind not in "biufc":
            msg = f"layer {key!r} must be numeric; got dtype {arr.dtype}"
            raise UsageError(msg)
        out[key] = arr.astype(dtype) if dtype is not None else arr
    if not out:
        msg = "weights must hold at least one array"
        raise UsageError(msg)
    return out


def write_step_file(folder: Path, step: int, arrays: Mapping[str, np.ndarray]) -> Path:
    """Write one step in the canonical layout (``step_<N>.npz``) and return its path."""
    path = folder / f"step_{int(step)}.npz"
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def log_snapshot(weights: Any, step: int, *, run_id: str | None = None, artifact_path: str = "weights",
                 dtype: Any = None, tracking_uri: str | None = None) -> str:
    """Log one step's weights to an MLflow run in the canonical layout.

    Args:
        weights: A mapping of layer name → array-like (numpy, torch, TF, JAX), or one array.
        step: The training step.
        run_id: The run; defaults to the active run.
        artifact_path: Folder of the snapshots in the run.
        dtype: Store as this dtype, e.g. ``"float16"`` to halve the size.
        tracking_uri: Defaults to the current tracking URI.

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
    arrays = weights_mapping(weights, dtype)
    with tempfile.TemporaryDirectory(prefix="weightviz-") as tmp:
        path = write_step_file(Path(tmp), step, arrays)
        client = _tracking.client(tracking_uri)
        with _tracking.translate(f"logging a snapshot to run {run_id}", writing=True):
            client.log_artifact(run_id, os.fspath(path), artifact_path)
    return f"{artifact_path}/{path.name}"
