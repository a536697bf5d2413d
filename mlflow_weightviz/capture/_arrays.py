"""Reading a model's weights, turning framework tensors and array-likes into numpy, and writing the per-step file."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mlflow_weightviz.errors import UsageError
from mlflow_weightviz.snapshots import STEPS_KEY

__all__ = ["DEFAULT_LAYER", "Reader", "ndim", "source_reader", "to_numpy", "weights_mapping", "write_step_file"]

#: Layer name used when a single array is given instead of a mapping.
DEFAULT_LAYER = "weights"

#: Returns a source's current layer name → tensor mapping.
Reader = Callable[[], Mapping[str, Any]]


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


def source_reader(source: Any) -> Reader:
    """A function returning the source's current name → tensor mapping (nothing is converted yet).

    Keras models come first: on the torch backend they are ``torch.nn.Module`` s too, but
    their variable paths (``sequential/dense/kernel``) are the names users know.

    Raises:
        UsageError: ``source`` is none of the supported kinds.
    """
    if _is_keras(source):
        return lambda: _keras_weights(source)
    if callable(getattr(source, "named_parameters", None)):  # torch.nn.Module, LightningModule, HF model
        return lambda: dict(source.named_parameters())
    if isinstance(source, Mapping):
        return lambda: source
    if callable(source):
        return lambda: _call(source)
    msg = ("source must be a torch.nn.Module, a Keras model, a mapping of layer name → array, or a "
           f"callable returning one; got {type(source).__name__}")
    raise UsageError(msg)


def ndim(value: Any) -> int:
    """The number of dimensions of a tensor or array-like, without converting it."""
    shape = getattr(value, "shape", None)
    return len(tuple(shape)) if shape is not None else int(np.ndim(value))


def _is_keras(obj: Any) -> bool:
    return hasattr(obj, "weights") and any(
        c.__module__.split(".")[0] in {"keras", "tf_keras"} for c in type(obj).__mro__)


def _keras_weights(model: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for var in model.weights:
        name = str(getattr(var, "path", None) or var.name)
        key, n = name, 1
        while key in out:  # Keras 2 names can repeat; paths in Keras 3 do not
            n += 1
            key = f"{name}#{n}"
        out[key] = var
    return out


def _call(source: Callable[[], Any]) -> Mapping[str, Any]:
    value = source()
    return value if isinstance(value, Mapping) else {DEFAULT_LAYER: value}
