"""Reading a model's weights, turning framework tensors and array-likes into numpy, and writing the per-step file."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mlflow_weightviz.capture.reduce import (
    META_KEY,
    Partial,
    dtype_name,
    host_array,
    is_torch,
    metadata_array,
    partials_of,
    plan,
)
from mlflow_weightviz.errors import UsageError
from mlflow_weightviz.grid import matrix_shape
from mlflow_weightviz.snapshots import STEPS_KEY

__all__ = ["DEFAULT_LAYER", "Crop", "Reader", "check_crops", "crop_name", "crop_window", "ndim", "snapshot_arrays",
           "source_reader", "to_numpy", "weights_mapping", "write_step_file"]

#: A crop: the layer, then the [start, stop) rows and columns of its 2-D matrix view (``None``: to the edge).
Crop = tuple[str, tuple[int | None, int | None], tuple[int | None, int | None]]

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
        return host_array(tensor.cpu())  # (not .numpy(): see host_array)
    if type(value).__module__.startswith("keras.") and hasattr(value, "value"):
        # A Keras 3 Variable: convert the backend tensor it wraps (its own .numpy() warns under numpy 2).
        return to_numpy(value.value)
    if hasattr(value, "numpy") and callable(value.numpy):  # tf.Variable, keras Variable, EagerTensor
        return np.asarray(value.numpy())
    return np.asarray(value)


def weights_mapping(weights: Any, dtype: Any = None) -> dict[str, np.ndarray]:
    """Normalise ``weights`` (a mapping name → array-like, or one array) to name → numpy array, exactly."""
    out = {key: _exact(key, value, dtype) for key, value in _named(weights).items()}
    if not out:
        msg = "weights must hold at least one array"
        raise UsageError(msg)
    return out


def snapshot_arrays(weights: Any, *, dtype: Any = None, grid: tuple[int, int] = (64, 64), reduce: bool = True,
                    crops: Sequence[Crop] = (), everything: Mapping[str, Any] | None = None,
                    partials: dict[str, Partial] | None = None) -> dict[str, np.ndarray]:
    """The arrays of one snapshot file: small layers exact, big ones as block statistics, plus crops.

    Args:
        weights: A mapping of layer name → array-like, or one array.
        dtype: Store exact layers and crops as this dtype (block statistics are always float32).
        grid: The display grid (max rows, max columns); a layer larger than it is reduced.
        reduce: Whether to reduce big layers (``False`` stores every layer exactly).
        crops: Exact regions to store as their own layers.
        everything: Where the crops' layers are looked up; defaults to ``weights``.
        partials: If given, receives each reduced layer's block statistics with their
            sketch (computed in the same pass), for the training metrics.

    Raises:
        UsageError: A layer is not numeric, has a reserved name, or a crop's layer is missing or empty.
    """
    named = _named(weights)
    out: dict[str, np.ndarray] = {}
    meta: dict[str, dict[str, Any]] = {}
    plans = {key: plan(_shape(value), *grid) for key, value in named.items()}
    reduced = [key for key in named if reduce and plans[key].reduced and math.prod(plans[key].shape) > 0]
    for key in reduced:
        _check_numeric(key, named[key])
    found = dict(zip(reduced, partials_of([(named[k], plans[k]) for k in reduced], sketch=partials is not None),
                     strict=True))
    for key, value in named.items():
        blocks = plans[key]
        if key in found:
            partial = found[key]
            if partials is not None:
                partials[key] = partial
            for stat, arr in partial.stats().items():
                out[f"{key}::{stat}"] = arr
            meta[key] = blocks.describe(dtype_name(value))
        else:
            out[key] = _exact(key, value, dtype)
    pool = named if everything is None else {str(k): v for k, v in everything.items()}
    for layer, rows, cols in crops:
        if layer not in pool:
            msg = f"crops: no layer {layer!r}; the layers are: {', '.join(list(pool)[:12])}"
            raise UsageError(msg)
        value = pool[layer]
        name, window = crop_window(layer, _shape(value), rows, cols)
        region = _matrix(value, window)
        out[name] = _exact(name, region, dtype)
        meta[name] = {"kind": "crop", "of": layer, "rows": list(window[0]), "cols": list(window[1]),
                      "shape": list(_shape(value))}
    if not out:
        msg = "weights must hold at least one array"
        raise UsageError(msg)
    if meta:
        out[META_KEY] = metadata_array(meta)
    return out


def crop_window(layer: str, shape: tuple[int, ...], rows: tuple[int | None, int | None],
                cols: tuple[int | None, int | None]) -> tuple[str, tuple[tuple[int, int], tuple[int, int]]]:
    """A crop's stored name and its [start, stop) rows and columns, clipped to the layer's 2-D matrix.

    Raises:
        UsageError: The clipped region is empty.
    """
    n_rows, n_cols = matrix_shape(shape)
    r0, r1, _ = slice(*rows).indices(n_rows)
    c0, c1, _ = slice(*cols).indices(n_cols)
    if r1 <= r0 or c1 <= c0:
        msg = (f"crops: the region rows {rows[0]}:{rows[1]}, cols {cols[0]}:{cols[1]} of {layer!r} "
               f"(a {n_rows}×{n_cols} matrix) is empty")
        raise UsageError(msg)
    return crop_name(layer, (r0, r1), (c0, c1)), ((r0, r1), (c0, c1))


def crop_name(layer: str, rows: tuple[int, int], cols: tuple[int, int]) -> str:
    """The layer name a crop is stored under: ``L[r0:r1,c0:c1]``."""
    return f"{layer}[{rows[0]}:{rows[1]},{cols[0]}:{cols[1]}]"


def check_crops(crops: Any) -> tuple[Crop, ...]:
    """Check ``crops={"layer": (rows, cols)}`` (two slices with step 1) and normalise it.

    Raises:
        UsageError: Not a mapping of layer name → two slices of integers with step 1.
    """
    if crops is None:
        return ()
    if not isinstance(crops, Mapping):
        msg = ("crops must map a layer name to (rows, cols) slices, e.g. "
               f"{{'fc.weight': (slice(0, 32), slice(0, 32))}}; got {crops!r}")
        raise UsageError(msg)
    out = []
    for layer, region in crops.items():
        if not isinstance(layer, str) or not isinstance(region, tuple | list) or len(region) != 2 \
                or not all(isinstance(s, slice) for s in region):
            msg = (f"crops[{layer!r}] must be two slices (rows, cols) such as (slice(0, 32), slice(0, 32)); "
                   f"got {region!r}")
            raise UsageError(msg)
        bounds = []
        for axis, part in zip(("rows", "cols"), region, strict=True):
            if part.step not in (None, 1):
                msg = f"crops[{layer!r}]: the {axis} slice must have step 1; got {part}"
                raise UsageError(msg)
            for end in (part.start, part.stop):
                if end is not None and (isinstance(end, bool) or not isinstance(end, int | np.integer)):
                    msg = f"crops[{layer!r}]: the {axis} slice bounds must be integers; got {part}"
                    raise UsageError(msg)
            bounds.append((None if part.start is None else int(part.start),
                           None if part.stop is None else int(part.stop)))
        out.append((layer, bounds[0], bounds[1]))
    return tuple(out)


def _named(weights: Any) -> dict[str, Any]:
    items = weights.items() if isinstance(weights, Mapping) else [(DEFAULT_LAYER, weights)]
    out = {}
    for name, value in items:
        key = str(name)
        if key in (STEPS_KEY, META_KEY) or "::" in key:
            msg = (f"a layer may not be called {key!r}: the snapshot format reserves the names "
                   f"{STEPS_KEY!r}, {META_KEY!r} and names with '::'")
            raise UsageError(msg)
        out[key] = value
    return out


def _exact(key: str, value: Any, dtype: Any) -> np.ndarray:
    arr = to_numpy(value)
    if arr.dtype.hasobject or arr.dtype.kind not in "biufc":
        msg = f"layer {key!r} must be numeric; got dtype {arr.dtype}"
        raise UsageError(msg)
    return arr.astype(dtype) if dtype is not None else arr


def _check_numeric(key: str, value: Any) -> None:
    name = dtype_name(value)
    ok = any(name.startswith(k) for k in ("float", "int", "uint", "bfloat", "complex", "bool", "half", "double"))
    if not ok:
        msg = f"layer {key!r} must be numeric; got dtype {name}"
        raise UsageError(msg)


def _shape(value: Any) -> tuple[int, ...]:
    shape = getattr(value, "shape", None)
    return tuple(int(d) for d in shape) if shape is not None else tuple(np.shape(value))


def _matrix(value: Any, window: tuple[tuple[int, int], tuple[int, int]]) -> Any:
    """The region of ``value``'s 2-D matrix view, sliced where the value lives (no copy of the whole)."""
    (r0, r1), (c0, c1) = window
    rows, cols = matrix_shape(_shape(value))
    if is_torch(value):
        return value.detach().reshape(rows, cols)[r0:r1, c0:c1]
    return to_numpy(value).reshape(rows, cols)[r0:r1, c0:c1]


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
