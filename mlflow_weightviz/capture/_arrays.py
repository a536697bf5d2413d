"""Turning framework tensors and array-likes into numpy, and writing the per-step file."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mlflow_weightviz.errors import UsageError
from mlflow_weightviz.snapshots import STEPS_KEY

__all__ = ["DEFAULT_LAYER", "to_numpy", "weights_mapping", "write_step_file"]

#: Layer name used when a single array is given instead of a mapping.
DEFAULT_LAYER = "weights"


def to_numpy(value: Any) -> np.ndarray:
    """Convert a torch, TensorFlow/Keras, JAX or array-like value to numpy without importing any framework."""
    if hasattr(value, "detach"):  # torch.Tensor / Parameter
        tensor = value.detach()
        if str(getattr(tensor, "dtype", "")) == "torch.bfloat16":
            tensor = tensor.float()  # numpy has no bfloat16
        return np.asarray(tensor.cpu().numpy())
    if type(value).__module__.startswith("keras.") and hasattr(value, "value"):
        # A Keras 3 Variable: convert the backend tensor it wraps (its own .numpy() warns under numpy 2).
        return to_numpy(value.value)
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
