"""Recording from multi-process training: which rank records, and sharded (FSDP2 / DTensor) snapshots.

* Not distributed (``torch.distributed`` not initialised, or one process): the process records.
* Data parallel (DDP and the like: every rank holds the whole model): global rank 0
  (``torch.distributed.get_rank() == 0`` in the default process group) records; on every
  other rank :meth:`Recorder.step` returns at once, takes part in no collective and never blocks.
* Sharded (the source's parameters are DTensors, as after FSDP2's ``fully_shard``): every
  rank must call ``step`` at the same steps. Each rank reduces its own shard into per-block
  partial sums aligned to the layer's global block rows (the shard's row offset follows
  from the global shape and the rank's mesh coordinate), then only those small partials
  (and the rows of layers at or below the grid, and of crops) are gathered to rank 0,
  which combines, buffers, uploads and renders. Two collectives per snapshot: first the
  ranks agree whether everyone's local part succeeded (if one failed, all skip that
  snapshot, so nobody waits forever), then the pieces are gathered.

  Parameters sharded other than on dim 0 of a 1-D mesh are assembled with
  ``full_tensor()`` (a collective, called by every rank in the same order, after the
  agreement), then reduced on rank 0.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlflow_weightviz.capture._arrays import Crop, _exact, _shape, crop_window, to_numpy
from mlflow_weightviz.capture._live import DeviceMeasure, measure_device
from mlflow_weightviz.capture.reduce import META_KEY, Partial, dtype_name, metadata_array, partial_of, plan
from mlflow_weightviz.grid import matrix_shape

__all__ = ["Exact", "Piece", "combine", "measures", "gather", "is_dtensor", "local_pieces", "world"]


def world() -> tuple[int, int] | None:
    """(rank, world size) of the default process group, or ``None`` when not distributed.

    Never imports torch: a program that has not imported ``torch.distributed`` is not distributed.
    """
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return None
    size = int(dist.get_world_size())
    return (int(dist.get_rank()), size) if size > 1 else None


def is_dtensor(value: Any) -> bool:
    """Whether ``value`` is a DTensor (a sharded parameter), without importing torch."""
    return any(c.__name__ == "DTensor" for c in type(value).__mro__)


@dataclass
class Exact:
    """Rows of a layer kept exactly: ``parts`` are (first global row, rows of the 2-D matrix)."""

    shape: tuple[int, ...]
    window: tuple[tuple[int, int], tuple[int, int]] | None = None
    of: str = ""
    parts: list[tuple[int, np.ndarray]] = field(default_factory=list)


@dataclass
class Piece:
    """One rank's part of a sharded snapshot: partial block statistics and exact rows, by stored name."""

    reduced: dict[str, tuple[Any, str, Partial]] = field(default_factory=dict)  # name → (plan, dtype, partial)
    exact: dict[str, Exact] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    assemble: list[str] = field(default_factory=list)  # layers to gather with full_tensor()
    # Training metrics of reduced rows; None where measuring failed (the layer then gets block figures only).
    measures: dict[str, DeviceMeasure | None] = field(default_factory=dict)


def _rows_of(value: Any, rank: int) -> tuple[Any, int] | None:
    """This rank's rows of a layer and their global offset; ``None`` if it adds nothing, ``...`` to assemble."""
    if not is_dtensor(value):
        return (value, 0) if rank == 0 else None  # every rank holds it whole: rank 0 speaks for all
    if len(value.shape) < 2:  # Shard(0) of a vector splits the columns of its 1×n matrix: assemble it
        raise _Assemble
    mesh, placements = value.device_mesh, tuple(value.placements)
    coord = mesh.get_coordinate()
    if coord is None:
        return None
    if all(p.is_replicate() for p in placements):
        return (value.to_local(), 0) if all(c == 0 for c in coord) else None
    plain_shard0 = len(placements) == 1 and placements[0].is_shard(0) and type(placements[0]).__name__ == "Shard"
    if mesh.ndim == 1 and plain_shard0:
        total = int(value.shape[0])
        size = int(mesh.size(0))
        chunk = math.ceil(total / size)  # torch.chunk's split, as DTensor shards dim 0
        offset = min(total, coord[0] * chunk)
        local = value.to_local()
        if int(local.shape[0]) != max(0, min(chunk, total - offset)):
            raise _Assemble
        return (local, offset) if int(local.shape[0]) else None
    raise _Assemble


class _Assemble(Exception):  # a signal, not an error
    """The layer's sharding is not a plain Shard(0): gather it whole with full_tensor()."""


def local_pieces(current: Mapping[str, Any], names: Sequence[str], *, rank: int, grid: tuple[int, int],
                 reduce: bool, dtype: Any, crops: Sequence[Crop], measure: dict[Any, Any] | None = None) -> Piece:
    """This rank's part of a snapshot of the layers ``names`` (and the crops), computed locally.

    With ``measure`` (not ``None``), reduced rows are also measured for the training
    metrics (see ``_live.py``), in the same pass as they are reduced.
    """
    piece = Piece()
    values = {str(k): v for k, v in current.items()}
    for name in names:
        value = values[name]
        piece.order.append(name)
        try:
            found = _rows_of(value, rank)
        except _Assemble:
            piece.assemble.append(name)
            continue
        _add(piece, name, found, _shape(value), dtype_name(value), grid=grid, reduce=reduce, dtype=dtype,
             measure=measure)
    for layer, rows, cols in crops:
        if layer not in values:
            msg = f"crops: no layer {layer!r}"
            raise KeyError(msg)
        value = values[layer]
        stored, window = crop_window(layer, _shape(value), rows, cols)
        piece.order.append(stored)
        exact = piece.exact.setdefault(stored, Exact(_shape(value), window, layer))
        try:
            found = _rows_of(value, rank)
        except _Assemble:
            piece.assemble.append(stored)
            continue
        if found is not None:
            exact.parts.extend(_crop_rows(found, _shape(value), window, dtype))
    return piece


def _add(piece: Piece, name: str, found: tuple[Any, int] | None, shape: tuple[int, ...], kind: str, *,
         grid: tuple[int, int], reduce: bool, dtype: Any, measure: dict[Any, Any] | None = None) -> None:
    blocks = plan(shape, *grid)
    if reduce and blocks.reduced and math.prod(shape) > 0:
        # With metrics on, the same pass also sketches the rows; their measure comes from that partial.
        partial = Partial.empty(blocks.grid) if found is None else partial_of(found[0], found[1], blocks,
                                                                              sketch=measure is not None)
        if measure is not None and found is not None:
            try:
                piece.measures[name] = measure_device(found[0], blocks, row0=found[1], partial=partial)
            except Exception:  # a metrics problem must not cost the snapshot: rank 0 falls back
                piece.measures[name] = None
        piece.reduced[name] = (blocks, kind, partial)
        return
    exact = piece.exact.setdefault(name, Exact(shape))
    if found is not None:
        rows, cols = matrix_shape(shape)
        local, offset = found
        arr = _exact(name, local, dtype)
        exact.parts.append((offset, arr.reshape(-1, cols) if arr.size else arr.reshape(0, cols)))


def _crop_rows(found: tuple[Any, int], shape: tuple[int, ...], window: tuple[tuple[int, int], tuple[int, int]],
               dtype: Any) -> list[tuple[int, np.ndarray]]:
    local, offset = found
    _, cols = matrix_shape(shape)
    (r0, r1), (c0, c1) = window
    n = int(local.shape[0]) if len(_shape(local)) else 1
    lo, hi = max(r0, offset), min(r1, offset + n)
    if hi <= lo:
        return []
    mat = local.detach().reshape(-1, cols) if hasattr(local, "detach") else to_numpy(local).reshape(-1, cols)
    return [(lo, _exact("crop", mat[lo - offset:hi - offset, c0:c1], dtype))]


def assemble(piece: Piece, current: Mapping[str, Any], *, rank: int, grid: tuple[int, int], reduce: bool,
             dtype: Any, crops: Sequence[Crop], measure: dict[Any, Any] | None = None) -> None:
    """Gather the layers in ``piece.assemble`` with ``full_tensor()`` (a collective: every rank, same order)."""
    values = {str(k): v for k, v in current.items()}
    by_crop = {crop_window(layer, _shape(values[layer]), r, c)[0]: layer for layer, r, c in crops if layer in values}
    for name in piece.assemble:
        source = by_crop.get(name, name)
        whole = values[source].full_tensor()
        if rank != 0:
            continue
        if name in by_crop:
            exact = piece.exact[name]
            assert exact.window is not None
            exact.parts.extend(_crop_rows((whole, 0), exact.shape, exact.window, dtype))
        else:
            _add(piece, name, (whole, 0), _shape(whole), dtype_name(values[source]), grid=grid, reduce=reduce,
                 dtype=dtype, measure=measure)


def combine(pieces: Sequence[Piece]) -> dict[str, np.ndarray]:
    """Rank 0: the snapshot's arrays from every rank's piece (in rank order)."""
    first = pieces[0]
    out: dict[str, np.ndarray] = {}
    meta: dict[str, dict[str, Any]] = {}
    for name in first.order:
        if name in first.reduced:
            blocks, kind, _ = first.reduced[name]
            total = Partial.empty(blocks.grid)
            found = [p.reduced[name][2] for p in pieces if name in p.reduced]
            for part in found:  # shards come in rank order, i.e. row order, so ties keep the first
                total.merge(part)
            for stat, arr in total.stats().items():
                out[f"{name}::{stat}"] = arr
            meta[name] = blocks.describe(kind)
            continue
        exact = first.exact[name]
        parts = sorted((part for p in pieces if name in p.exact for part in p.exact[name].parts), key=lambda x: x[0])
        mat = np.concatenate([a for _, a in parts], axis=0)
        if exact.window is None:
            out[name] = mat.reshape(exact.shape)
        else:
            out[name] = mat
            (r0, r1), (c0, c1) = exact.window
            meta[name] = {"kind": "crop", "of": exact.of, "rows": [r0, r1], "cols": [c0, c1],
                          "shape": list(exact.shape)}
    if meta:
        out[META_KEY] = metadata_array(meta)
    return out


def measures(pieces: Sequence[Piece]) -> dict[str, DeviceMeasure]:
    """Rank 0: every reduced layer's training-metric measure, merged over the ranks' shards."""
    out: dict[str, DeviceMeasure] = {}
    failed: set[str] = set()
    for piece in pieces:
        for name, m in piece.measures.items():
            if m is None:
                failed.add(name)
            elif name in out:
                out[name].merge(m)
            else:
                out[name] = m
    return {k: v for k, v in out.items() if k not in failed}


def gather(obj: Any, rank: int, size: int) -> list[Any] | None:
    """Gather one picklable object from every rank to rank 0 (``None`` elsewhere)."""
    import torch.distributed as dist

    found: list[Any] | None = [None] * size if rank == 0 else None
    dist.gather_object(obj, found, dst=0)
    return found


def agree(failure: str | None, size: int) -> list[str | None]:
    """Every rank's failure (or ``None``), known on every rank: whether all go on with the snapshot."""
    import torch.distributed as dist

    found: list[str | None] = [None] * size
    dist.all_gather_object(found, failure)
    return found
