"""Reduced snapshot files written in tests exactly as docs/formats.md (REDUCED_LAYOUT) describes.

Independent of the library: the block statistics are computed block by block with numpy.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def matrix(w: np.ndarray) -> np.ndarray:
    if w.ndim == 0:
        return w.reshape(1, 1)
    if w.ndim == 1:
        return w.reshape(1, -1)
    return w.reshape(w.shape[0], -1)


def layout(shape: tuple[int, int], max_rows: int, max_cols: int) -> tuple[tuple[int, int], tuple[int, int]]:
    rows, cols = shape
    br, bc = math.ceil(rows / max_rows), math.ceil(cols / max_cols)
    return (br, bc), (math.ceil(rows / br), math.ceil(cols / bc))


def block_stats(w: np.ndarray, max_rows: int = 64, max_cols: int = 64) -> dict[str, np.ndarray]:
    """mean, maxabs and rms of every block, one block at a time (nan-aware)."""
    m = matrix(np.asarray(w, dtype=np.float64))
    (br, bc), (gr, gc) = layout(m.shape, max_rows, max_cols)
    out = {k: np.full((gr, gc), np.nan) for k in ("mean", "maxabs", "rms")}
    for i in range(gr):
        for j in range(gc):
            block = m[i * br:(i + 1) * br, j * bc:(j + 1) * bc].ravel()
            block = block[~np.isnan(block)]
            if block.size:
                out["mean"][i, j] = block.mean()
                out["maxabs"][i, j] = block[np.argmax(np.abs(block))]
                out["rms"][i, j] = math.sqrt(float(np.mean(block ** 2)))
    return {k: v.astype(np.float32) for k, v in out.items()}


def reduced_meta(w: np.ndarray, max_rows: int = 64, max_cols: int = 64, dtype: str = "float32") -> dict[str, Any]:
    m = matrix(w)
    block, grid = layout(m.shape, max_rows, max_cols)
    return {"kind": "reduced", "shape": list(w.shape), "matrix": list(m.shape), "block": list(block),
            "grid": list(grid), "dtype": dtype}


def _encode(meta: Mapping[str, Any]) -> np.ndarray:
    return np.frombuffer(json.dumps({"version": 1, "layers": dict(meta)}).encode(), dtype=np.uint8)


def write_reduced(path: Path, layers: Mapping[str, Sequence[np.ndarray]], steps: Sequence[int] | None = None, *,
                  max_rows: int = 64, max_cols: int = 64,
                  crops: Mapping[str, tuple[slice, slice]] | None = None, dtype: str = "float32") -> None:
    """One chunk (``steps`` given: each layer a sequence of one array per step) or one step (one array each)."""
    arrays: dict[str, Any] = {}
    meta: dict[str, Any] = {}
    chunk = steps is not None
    for name, frames in layers.items():
        seq = list(frames) if chunk else [frames]
        w0 = np.asarray(seq[0])
        rows, cols = matrix(w0).shape
        if rows <= max_rows and cols <= max_cols:
            arrays[name] = np.stack(seq) if chunk else w0
            continue
        meta[name] = reduced_meta(w0, max_rows, max_cols, dtype)
        stats = [block_stats(np.asarray(w), max_rows, max_cols) for w in seq]
        for k in ("mean", "maxabs", "rms"):
            arrays[f"{name}::{k}"] = np.stack([s[k] for s in stats]) if chunk else stats[0][k]
    for name, (rs, cs) in (crops or {}).items():
        seq = list(layers[name]) if chunk else [layers[name]]
        key = f"{name}[{rs.start}:{rs.stop},{cs.start}:{cs.stop}]"
        meta[key] = {"kind": "crop", "of": name, "rows": [rs.start, rs.stop], "cols": [cs.start, cs.stop],
                     "shape": list(np.asarray(seq[0]).shape)}
        parts = [matrix(np.asarray(w))[rs, cs].astype(np.float32) for w in seq]
        arrays[key] = np.stack(parts) if chunk else parts[0]
    if meta:
        arrays["__weightviz__"] = _encode(meta)
    if chunk:
        arrays["steps"] = np.asarray(steps, dtype=np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
