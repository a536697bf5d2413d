"""The Snapshot value type and safe decoding of every snapshot format.

A snapshot is one layer's weights at one training step. Files are only opened when a
snapshot is loaded, and memory-mapped where the format allows, so a folder of thousands
of snapshots or one huge matrix costs little until it is drawn.

Formats, detected from the extension and then from the first bytes:

* ``.npy``: one array; a step number in the file name makes it one step, otherwise an
  array of 3 or more dims is a stack of steps along axis 0.
* ``.npz`` and ``.safetensors``: one array per layer. With a 1-D ``steps`` array it is a
  chunk holding many steps (each layer stacked along axis 0); otherwise it is one step
  named by the file name, or a stack of steps when the name has no number.
* ``.pt``/``.pth``/``.ckpt``: torch state dicts, loaded with ``weights_only=True``.
* Python pickles (a list of 2-D arrays, as the original script used), only with
  ``allow_pickle=True`` because unpickling can run arbitrary code.
"""

from __future__ import annotations

import functools
import json
import os
import pickle
import re
import struct
import warnings
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import numpy as np

from mlflow_weightviz.errors import (
    MissingDependencyError,
    PickleNotAllowedError,
    SnapshotFormatError,
    SnapshotsNotFoundError,
    WeightvizError,
)
from mlflow_weightviz.options import WeightvizWarning

__all__ = ["Snapshot", "group_layers", "read_snapshots", "step_from_name"]

#: The key that marks a file as a chunk of many steps.
STEPS_KEY = "steps"

_NPY_EXT = {".npy"}
_NPZ_EXT = {".npz"}
_SAFETENSORS_EXT = {".safetensors"}
_TORCH_EXT = {".pt", ".pth", ".ckpt", ".bin"}
_PICKLE_EXT = {".pkl", ".pickle", ".obj", ".p"}
_INT_RE = re.compile(r"\d+")
_KIND_NAMES = {"npy": ".npy", "npz": ".npz", "safetensors": ".safetensors", "torch": "torch", "pickle": "pickle"}

Loader = Callable[[], np.ndarray]


@dataclass(frozen=True)
class Snapshot:
    """One layer's weights at one step; the array is read only by :meth:`load`."""

    layer: str
    step: int
    origin: str
    loader: Loader = field(repr=False, compare=False)

    def load(self) -> np.ndarray:
        """Read the array (often a read-only memory map)."""
        try:
            return np.asarray(self.loader())
        except WeightvizError:
            raise
        except Exception as exc:  # any decoder failure becomes our own error
            msg = f"cannot read {self.origin}: {_describe(exc)}"
            raise SnapshotFormatError(msg) from exc


def step_from_name(name: str) -> int | None:
    """The last integer in a file name without its extension: ``w5_step10.npy`` → 10."""
    found = _INT_RE.findall(Path(name).stem if "." in name else name)
    return int(found[-1]) if found else None


# --------------------------------------------------------------------------- reading


def read_snapshots(path: str | os.PathLike[str], *, allow_pickle: bool = False,
                   root_name: str | None = None) -> list[Snapshot]:
    """Find every snapshot in a file or folder.

    Args:
        path: A snapshot file or a folder of them (searched recursively).
        allow_pickle: Read Python pickles. Unpickling runs code from the file, so only
            allow it for files you trust.
        root_name: Layer name for loose single-array files at the top of a folder;
            defaults to the folder's name.

    Returns:
        The snapshots, in no particular order (see :func:`group_layers`).

    Raises:
        SnapshotsNotFoundError: The path does not exist or holds no snapshot.
        SnapshotFormatError: A file cannot be read safely.
        PickleNotAllowedError: A pickle was found and ``allow_pickle`` is false.
    """
    root = Path(path)
    if root.is_file():
        # A file keeps its own stem as layer name, also when root_name is just its file name.
        name = root.stem if root_name in (None, root.name) else root_name
        snaps = _read_file(root, rel_dir="", root_name=name,
                           allow_pickle=allow_pickle, strict=True)
    elif root.is_dir():
        snaps = []
        name = root_name or root.name
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            rel_dir = Path(dirpath).relative_to(root).as_posix()
            rel_dir = "" if rel_dir == "." else rel_dir
            for fname in sorted(filenames):
                if fname.startswith((".", "latest_")):
                    continue  # hidden files; mlflow's latest_* checkpoints repeat an epoch
                snaps.extend(_read_file(Path(dirpath, fname), rel_dir=rel_dir, root_name=name,
                                        allow_pickle=allow_pickle, strict=False))
    else:
        msg = f"no snapshot file or folder at {root}"
        raise SnapshotsNotFoundError(msg)
    if not snaps:
        msg = f"no weight snapshots found in {root} (expected .npz, .npy, .safetensors or .pt files)"
        raise SnapshotsNotFoundError(msg)
    return snaps


def group_layers(snapshots: Iterable[Snapshot], layers: Iterable[str] = ()) -> dict[str, list[Snapshot]]:
    """Group snapshots by layer in step order, keeping the layers that match ``layers``.

    ``layers`` holds names or shell-style globs; empty keeps every layer. When two
    snapshots share a layer and step, the one from the later file wins and a warning says so.
    """
    by_layer: dict[str, dict[int, Snapshot]] = {}
    duplicates = 0
    for snap in sorted(snapshots, key=lambda s: (s.layer, s.origin)):
        steps = by_layer.setdefault(snap.layer, {})
        duplicates += snap.step in steps
        steps[snap.step] = snap
    if duplicates:
        warnings.warn(f"{duplicates} snapshot(s) repeat a step of their layer; the later file wins",
                      WeightvizWarning, stacklevel=2)
    wanted = list(layers)
    selected = {name: [s[k] for k in sorted(s)] for name, s in sorted(by_layer.items())
                if not wanted or any(name == w or fnmatchcase(name, w) for w in wanted)}
    if wanted and not selected:
        msg = f"no layer matches {', '.join(wanted)}; the layers are: {', '.join(by_layer)}"
        raise SnapshotsNotFoundError(msg)
    return selected


# ------------------------------------------------------------------------ one file


@dataclass(frozen=True)
class _Ref:
    """One array inside a file: its header, and how to read it."""

    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    read: Loader


def _read_file(path: Path, *, rel_dir: str, root_name: str, allow_pickle: bool,
               strict: bool) -> list[Snapshot]:
    kind = _detect(path)
    origin = path.name if not rel_dir else f"{rel_dir}/{path.name}"
    if kind is None:
        if strict:
            msg = f"{path.name}: not a snapshot format (expected .npz, .npy, .safetensors, .pt or a pickle)"
            raise SnapshotFormatError(msg)
        return []
    if path.stat().st_size == 0:
        msg = f"{origin}: the file is empty (0 bytes); expected a {_KIND_NAMES[kind]} file"
        raise SnapshotFormatError(msg)
    step = step_from_name(path.name)
    if step is None and kind == "torch":  # mlflow autolog: checkpoints/epoch_3/checkpoint.pth
        for part in reversed(Path(rel_dir).parts):
            step = step_from_name(part + ".x")
            if step is not None:
                break
    try:
        if kind == "npy":
            layer = rel_dir or root_name
            return _arrange({layer: _npy_ref(path)}, step=step, origin=origin, stack_first=strict)
        if kind == "npz":
            try:
                refs = _npz_refs(path)
            except zipfile.BadZipFile as exc:
                msg = f"{origin}: not a readable .npz (zip) archive, perhaps truncated ({_describe(exc)})"
                raise SnapshotFormatError(msg) from exc
            # Named on its own, (T, N, M) arrays are a stack even with digits in the name
            # (data_8x12.npz); a step_10.npz of 4-D conv kernels stays one step.
            stacks = step is None or all(len(r.shape) == 3 for k, r in refs.items() if k != STEPS_KEY)
            return _arrange(refs, step=step, origin=origin, stack_first=strict and stacks)
        if kind == "safetensors":
            return _arrange(_safetensors_refs(path), step=step, origin=origin)
        if kind == "torch":
            return _arrange(_torch_refs(path), step=step, origin=origin)
        return _read_pickle(path, allow_pickle=allow_pickle, layer=Path(path.name).stem, origin=origin)
    except WeightvizError:
        raise
    except Exception as exc:  # decoder errors of every library become one of ours
        msg = f"cannot read {origin}: {_describe(exc)}"
        raise SnapshotFormatError(msg) from exc


def _detect(path: Path) -> str | None:
    ext = path.suffix.lower()
    for kind, exts in (("npy", _NPY_EXT), ("npz", _NPZ_EXT), ("safetensors", _SAFETENSORS_EXT),
                       ("torch", _TORCH_EXT), ("pickle", _PICKLE_EXT)):
        if ext in exts:
            return kind
    with path.open("rb") as fh:
        head = fh.read(16)
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except zipfile.BadZipFile:
            return None
        if any(n.endswith("data.pkl") for n in names):
            return "torch"
        return "npz" if names and all(n.endswith(".npy") for n in names) else None
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return "pickle"
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    return None


def _arrange(refs: Mapping[str, _Ref], *, step: int | None, origin: str,
             stack_first: bool = False) -> list[Snapshot]:
    """Turn a file's arrays into snapshots: a chunk of steps, one step, or a stack.

    Arrays of 3 or more dims sharing their first dim are a stack of steps when the file
    name has no step number, or when the file was named on its own (``stack_first``):
    ``fc1.npy`` of shape (T, N, M) is then T steps, not one step numbered 1.
    """
    if not refs:
        return []
    steps_ref = refs.get(STEPS_KEY)
    arrays = {k: r for k, r in refs.items() if k != STEPS_KEY}
    if steps_ref is not None and len(steps_ref.shape) == 1:
        steps = np.asarray(steps_ref.read())
        if steps.dtype.kind not in "iu":
            msg = f"{origin}: the 'steps' array must hold integers; it holds {steps.dtype}"
            raise SnapshotFormatError(msg)
        return _stacked(arrays, [int(s) for s in steps], origin)
    if (step is None or stack_first) and arrays and all(len(r.shape) >= 3 for r in arrays.values()) \
            and len({r.shape[0] for r in arrays.values()}) == 1:
        return _stacked(arrays, list(range(next(iter(arrays.values())).shape[0])), origin)
    return [Snapshot(name, step or 0, f"{origin}[{name}]", ref.read) for name, ref in arrays.items()]


def _stacked(arrays: Mapping[str, _Ref], steps: list[int], origin: str) -> list[Snapshot]:
    if not steps:
        shapes = ", ".join(f"{name} {ref.shape}" for name, ref in arrays.items())
        msg = f"{origin}: expected a stack of at least one snapshot along axis 0; got none ({shapes})"
        raise SnapshotFormatError(msg)
    out = []
    for name, ref in arrays.items():
        if not ref.shape or ref.shape[0] != len(steps):
            msg = (f"{origin}: layer {name!r} must be stacked with one entry per step, "
                   f"shape ({len(steps)}, ...); it has shape {ref.shape}")
            raise SnapshotFormatError(msg)
        for i, step in enumerate(steps):
            out.append(Snapshot(name, step, f"{origin}[{name}][{i}]", functools.partial(_take, ref.read, i)))
    return out


def _take(read: Loader, index: int) -> np.ndarray:
    return np.asarray(read()[index])


def _check_dtype(dtype: np.dtype[Any], where: str) -> None:
    if dtype.hasobject:
        msg = (f"{where}: expected a numeric array; got an object array (dtype {dtype}), "
               "which only pickle could read, and .npy/.npz are never unpickled")
        raise SnapshotFormatError(msg)
    if dtype.kind not in "biufc":
        msg = f"{where}: expected a numeric array (bool, integer, float or complex); got dtype {dtype}"
        raise SnapshotFormatError(msg)


# ----------------------------------------------------------------------- .npy / .npz


def _npy_ref(path: Path) -> _Ref:
    arr = _load_npy(path)
    return _Ref(arr.shape, arr.dtype, functools.partial(_load_npy, path))


def _load_npy(path: Path) -> np.ndarray:
    if path.stat().st_size == 0:
        msg = f"{path.name}: the file is empty"
        raise SnapshotFormatError(msg)
    with path.open("rb") as fh:
        version = np.lib.format.read_magic(fh)
        shape, fortran, dtype = _read_npy_header(fh, version)
        _check_dtype(dtype, path.name)
        offset = fh.tell()
    _check_size(path, offset, shape, dtype)
    if not int(np.prod(shape)):
        return np.empty(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape,
                     order="F" if fortran else "C")


def _read_npy_header(fh: Any, version: tuple[int, int]) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fh)
    return np.lib.format.read_array_header_2_0(fh)


def _check_size(path: Path, offset: int, shape: tuple[int, ...], dtype: np.dtype[Any]) -> None:
    need = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    have = path.stat().st_size
    if have < need:
        msg = f"{path.name}: the file is truncated ({have} of {need} bytes)"
        raise SnapshotFormatError(msg)


def _npz_refs(path: Path) -> dict[str, _Ref]:
    refs = {}
    with zipfile.ZipFile(path) as zf, path.open("rb") as raw:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                msg = f"{path.name}: member {info.filename!r} is not a .npy array"
                raise SnapshotFormatError(msg)
            key = info.filename[: -len(".npy")]
            if info.compress_type == zipfile.ZIP_STORED:
                # np.savez stores arrays uncompressed: memory-map them in place.
                raw.seek(info.header_offset)
                local = raw.read(30)
                if local[:4] != b"PK\x03\x04":
                    msg = f"{path.name}: corrupt zip entry {info.filename!r}"
                    raise SnapshotFormatError(msg)
                name_len, extra_len = struct.unpack("<HH", local[26:30])
                raw.seek(info.header_offset + 30 + name_len + extra_len)
                version = np.lib.format.read_magic(raw)
                shape, fortran, dtype = _read_npy_header(raw, version)
                _check_dtype(dtype, f"{path.name}[{key}]")
                data_at = raw.tell()
                expected = data_at - info.header_offset - 30 - name_len - extra_len \
                    + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
                if info.file_size < expected:
                    msg = f"{path.name}: array {key!r} is truncated"
                    raise SnapshotFormatError(msg)
                refs[key] = _Ref(shape, dtype, functools.partial(
                    _npz_memmap, path, data_at, shape, dtype, fortran))
            else:
                with zf.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    shape, _, dtype = _read_npy_header(member, version)
                _check_dtype(dtype, f"{path.name}[{key}]")
                refs[key] = _Ref(shape, dtype, functools.partial(_npz_member, str(path), key))
    return refs


def _npz_memmap(path: Path, offset: int, shape: tuple[int, ...], dtype: np.dtype[Any],
                fortran: bool) -> np.ndarray:
    if not int(np.prod(shape)):
        return np.empty(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


@functools.lru_cache(maxsize=2)
def _npz_member(path: str, key: str) -> np.ndarray:
    # Compressed chunks are read whole; a tiny cache stops a chunk being inflated once per step.
    with np.load(path, allow_pickle=False) as z:
        arr = np.asarray(z[key])
    arr.setflags(write=False)
    return arr


# ----------------------------------------------------------------------- safetensors

_ST_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
              "I8": "i1", "U8": "u1", "U16": "<u2", "U32": "<u4", "U64": "<u8", "BOOL": "?",
              "BF16": "<u2"}


def _safetensors_refs(path: Path) -> dict[str, _Ref]:
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            msg = f"{path.name}: the file is empty or truncated"
            raise SnapshotFormatError(msg)
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, 100_000_000):
            msg = f"{path.name}: corrupt safetensors header (length {n})"
            raise SnapshotFormatError(msg)
        raw = fh.read(n)
    try:
        header = json.loads(raw)
    except ValueError as exc:  # UnicodeDecodeError is a ValueError too
        msg = f"{path.name}: corrupt safetensors header: expected JSON, got {raw[:20]!r}... ({_describe(exc)})"
        raise SnapshotFormatError(msg) from None
    if not isinstance(header, dict):
        msg = f"{path.name}: corrupt safetensors header"
        raise SnapshotFormatError(msg)
    refs = {}
    base = 8 + n
    for key, meta in header.items():
        if key == "__metadata__":
            continue
        try:
            kind, shape = meta["dtype"], tuple(int(d) for d in meta["shape"])
            begin, end = (int(x) for x in meta["data_offsets"])
            dtype = np.dtype(_ST_DTYPES[kind])
        except (KeyError, TypeError, ValueError):
            msg = f"{path.name}: unsupported or corrupt entry {key!r}"
            raise SnapshotFormatError(msg) from None
        count = int(np.prod(shape, dtype=np.int64))
        if any(d < 0 for d in shape) or end - begin != count * dtype.itemsize or not 0 <= begin <= end \
                or base + end > size:
            msg = (f"{path.name}: tensor {key!r} is truncated or its offsets are corrupt: {kind} {list(shape)} "
                   f"needs {count * dtype.itemsize} bytes, at data offsets [{begin}, {end}) of the "
                   f"{size - base} bytes the file holds")
            raise SnapshotFormatError(msg)
        shown = np.dtype("<f4") if kind == "BF16" else dtype
        refs[key] = _Ref(shape, shown, functools.partial(_st_read, path, base + begin, shape, dtype, kind == "BF16"))
    return refs


def _st_read(path: Path, offset: int, shape: tuple[int, ...], dtype: np.dtype[Any], bf16: bool) -> np.ndarray:
    if not int(np.prod(shape)):
        return np.empty(shape, np.float32 if bf16 else dtype)
    arr = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
    if bf16:  # bfloat16 is the top half of a float32
        return (arr.astype(np.uint32) << 16).view(np.float32)
    return arr


# ----------------------------------------------------------------------------- torch


def _torch_refs(path: Path) -> dict[str, _Ref]:
    state = _torch_state(path)
    return {k: _Ref(tuple(t.shape), _torch_dtype(t), functools.partial(_torch_tensor, path, k))
            for k, t in state.items()}


def _torch_dtype(t: Any) -> np.dtype[Any]:
    # What _torch_tensor returns: floats as float32, everything else as numpy has it.
    if t.is_floating_point():
        return np.dtype("float32")
    if t.is_complex():
        return np.dtype("complex128") if str(t.dtype) == "torch.complex128" else np.dtype("complex64")
    return np.dtype("bool") if str(t.dtype) == "torch.bool" else np.dtype("int64")


def _torch_state(path: Path) -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        msg = f"{path.name} is a torch file; reading it needs torch: pip install 'mlflow-weightviz[torch]'"
        raise MissingDependencyError(msg) from None
    if path.stat().st_size == 0:
        msg = f"{path.name}: the file is empty"
        raise SnapshotFormatError(msg)
    try:
        # Only the zip format (torch >= 1.6) can be memory-mapped; older files are read whole.
        with warnings.catch_warnings():
            # torch's note about an unusual pickle protocol is noise here: the file is read
            # safely either way, or refused with our own error.
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        raise SnapshotFormatError(_torch_refusal(path.name, str(exc))) from None
    for key in ("state_dict", "model_state_dict"):  # Lightning / common checkpoint layouts
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    flat: dict[str, Any] = {}
    _flatten(obj, "", flat, torch.Tensor)
    return flat


def _torch_refusal(name: str, text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    refused = next((line for line in lines if "GLOBAL" in line), None)
    if refused is not None:
        return (f"{name}: refused by torch's safe loader (weights_only=True): expected only tensors and plain "
                f"containers; the file asks for other objects ({refused})")
    detail = next((line for line in lines if line.startswith("Unsupported")), lines[0] if lines else "")
    return f"{name}: not a readable torch file, perhaps corrupt or truncated ({detail})"


def _flatten(obj: Any, prefix: str, out: dict[str, Any], tensor_type: type) -> None:
    if isinstance(obj, tensor_type):
        if getattr(obj, "ndim", 0) >= 1 and prefix:
            out[prefix] = obj
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out, tensor_type)


def _torch_tensor(path: Path, key: str) -> np.ndarray:
    t = _torch_state(path)[key].detach()
    if t.is_complex():
        return np.asarray(t.numpy())
    return np.asarray(t.float().numpy() if t.is_floating_point() else t.numpy())


# ---------------------------------------------------------------------------- pickle


def _read_pickle(path: Path, *, allow_pickle: bool, layer: str, origin: str) -> list[Snapshot]:
    if not allow_pickle:
        msg = (f"{origin} is a Python pickle, and unpickling can run arbitrary code; "
               "pass --allow-pickle (API: allow_pickle=True) only if you trust this file")
        raise PickleNotAllowedError(msg)
    with path.open("rb") as fh:
        obj = pickle.load(fh)  # the user opted in with allow_pickle
    if isinstance(obj, np.ndarray) and obj.dtype != object:
        obj = list(obj) if obj.ndim >= 3 else [obj]
    if isinstance(obj, Mapping):
        items = [(str(k), v) for k, v in obj.items()]
    elif isinstance(obj, (list, tuple)):
        items = [(layer, obj)]
    else:
        msg = f"{origin}: expected a pickled list of 2-D arrays; got {type(obj).__name__}"
        raise SnapshotFormatError(msg)
    snaps = []
    for name, seq in items:
        frames = list(seq) if isinstance(seq, (list, tuple)) else [seq]
        for i, frame in enumerate(frames):
            arr = np.asarray(frame)
            _check_dtype(arr.dtype, f"{origin}[{i}]")
            snaps.append(Snapshot(name, i, f"{origin}[{i}]", functools.partial(_identity, arr)))
    return snaps


def _identity(arr: np.ndarray) -> np.ndarray:
    return arr


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
