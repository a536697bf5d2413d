"""Property-based tests (issue 5, item 2): random bytes and random arrays only ever raise the project's own errors."""

from __future__ import annotations

import io
import math
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mlflow_weightviz.errors import SnapshotError, WeightvizError
from mlflow_weightviz.grid import to_grid
from mlflow_weightviz.options import Pool, RenderOptions, WeightvizWarning
from mlflow_weightviz.pipeline import render_layers
from mlflow_weightviz.snapshots import Snapshot, group_layers, read_snapshots
from tests.helpers import read_gif

# The autouse embedded-store fixture is per test, not per example; no example touches it.
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
SLOW_FUZZ = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

EXTENSIONS = [".npy", ".npz", ".safetensors", ".pt", ".pth", ".ckpt", ".bin", ".pkl", ".obj", ""]
MAGIC = [b"", b"\x93NUMPY\x01\x00", b"\x93NUMPY\x02\x00", b"PK\x03\x04", b"\x80\x04", b"\x80\x02",
         b"\x10\x00\x00\x00\x00\x00\x00\x00{"]


def read_everything(path: Path) -> int:
    """Read every snapshot in ``path`` and put it on the display grid; returns how many there were."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WeightvizWarning)  # duplicate steps are fine here
        layers = group_layers(read_snapshots(path))
    count = 0
    for snaps in layers.values():
        for snap in snaps:
            to_grid(snap.load(), max_rows=8, max_cols=8)
            count += 1
    return count


def only_our_errors(data: bytes, name: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        try:
            read_everything(path)
        except WeightvizError:
            pass


@FUZZ
@given(magic=st.sampled_from(MAGIC), body=st.binary(max_size=400), ext=st.sampled_from(EXTENSIONS))
def test_random_bytes_with_any_extension(magic: bytes, body: bytes, ext: str) -> None:
    only_our_errors(magic + body, f"step_3{ext}")


def valid_files() -> dict[str, bytes]:
    """One small, valid file of every format, to be damaged by the test."""
    import torch
    from safetensors.numpy import save as save_safetensors

    w = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    out: dict[str, bytes] = {}
    buf = io.BytesIO()
    np.save(buf, w)
    out["step_1.npy"] = buf.getvalue()
    for name, saver in (("stored.npz", np.savez), ("compressed.npz", np.savez_compressed)):
        buf = io.BytesIO()
        saver(buf, fc1=np.stack([w, w * 2]), bias=np.ones((2, 3)), steps=np.array([0, 7]))
        out[name] = buf.getvalue()
    out["step_2.safetensors"] = save_safetensors({"fc1": w, "bias": np.ones(3, np.int32)})
    buf = io.BytesIO()
    torch.save({"state_dict": {"fc1": torch.from_numpy(w), "bias": torch.ones(3)}}, buf)
    out["step_3.pt"] = buf.getvalue()
    return out


@pytest.fixture(scope="module")
def originals() -> dict[str, bytes]:
    pytest.importorskip("torch")
    files = valid_files()
    with tempfile.TemporaryDirectory() as tmp:  # the originals themselves read cleanly
        for name, data in files.items():
            (Path(tmp) / name).write_bytes(data)
            assert read_everything(Path(tmp) / name) >= 1, name
    return files


@FUZZ
@given(data=st.data())
def test_damaged_valid_files(originals: dict[str, bytes], data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(sorted(originals)))
    blob = bytearray(originals[name])
    kind = data.draw(st.sampled_from(["truncate", "flip", "overwrite", "extend"]))
    at = data.draw(st.integers(0, len(blob) - 1))
    if kind == "truncate":
        del blob[at:]
    elif kind == "flip":
        for pos in data.draw(st.lists(st.integers(0, len(blob) - 1), min_size=1, max_size=8)):
            blob[pos] ^= data.draw(st.integers(1, 255))
    elif kind == "overwrite":
        chunk = data.draw(st.binary(min_size=1, max_size=64))
        blob[at:at + len(chunk)] = chunk
    else:
        blob[at:at] = data.draw(st.binary(min_size=1, max_size=64))
    only_our_errors(bytes(blob), name)


@FUZZ
@given(header=st.dictionaries(st.text(max_size=8), st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(
        ["dtype", "shape", "data_offsets", "x"]), inner, max_size=4), max_leaves=12), max_size=3),
    payload=st.binary(max_size=64))
def test_random_safetensors_headers(header: dict[str, object], payload: bytes) -> None:
    import json

    text = json.dumps(header).encode()
    only_our_errors(len(text).to_bytes(8, "little") + text + payload, "step_1.safetensors")


@FUZZ
@given(members=st.lists(st.tuples(st.text("abcxyz_.-/0123456789", min_size=1, max_size=10).filter(
    lambda n: not n.endswith("/")), st.binary(max_size=200)), max_size=4, unique_by=lambda m: m[0]),
       compress=st.booleans())
def test_random_zip_archives_as_npz(members: list[tuple[str, bytes]], compress: bool) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as zf:
        for name, data in members:
            zf.writestr(name + ".npy", b"\x93NUMPY\x01\x00" + data)
    only_our_errors(buf.getvalue(), "step_4.npz")


DTYPES = st.sampled_from(["bool", "int8", "uint8", "int32", "int64", "uint64", "float16", "float32", "float64",
                          "complex64", "complex128"])


@FUZZ
@given(arr=hnp.arrays(DTYPES, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=7)),
       max_rows=st.integers(1, 9), max_cols=st.integers(1, 9), pool=st.sampled_from(list(Pool)))
def test_to_grid_on_random_arrays(arr: np.ndarray, max_rows: int, max_cols: int, pool: Pool) -> None:
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            grid, info = to_grid(arr, max_rows=max_rows, max_cols=max_cols, pool=pool)
    except SnapshotError:
        assert arr.size == 0
        return
    assert grid.dtype == np.float64
    assert grid.shape == info.grid
    assert grid.shape[0] <= max_rows
    assert grid.shape[1] <= max_cols
    with np.errstate(over="ignore", invalid="ignore"):
        values = np.abs(arr) if arr.dtype.kind == "c" else arr
        flat = np.asarray(values, dtype=np.float64).ravel()
    finite = flat[np.isfinite(flat)]
    shown = grid[np.isfinite(grid)]
    if finite.size and shown.size:  # a pooled cell never leaves the range of the values it stands for
        lo, hi = float(finite.min()), float(finite.max())  # Python floats: no overflow warnings
        slack = 1e-9 * max(1.0, abs(lo), abs(hi))
        if pool is Pool.RMS and info.pooled:  # a block's RMS lies between 0 and its largest magnitude
            lo, hi = 0.0, max(abs(lo), abs(hi))
        assert float(shown.min()) >= lo - slack
        assert float(shown.max()) <= hi + slack


FRAME_SHAPES = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=5)


@SLOW_FUZZ
@given(shape=FRAME_SHAPES, dtype=DTYPES, frames=st.integers(1, 3), data=st.data(),
       annotate=st.sampled_from([None, True, False]), scale=st.sampled_from(["global", "frame"]),
       view=st.sampled_from(["weights", "delta-init", "delta-step"]))
def test_random_arrays_through_the_whole_frame_pipeline(shape: tuple[int, ...], dtype: str, frames: int,
                                                         data: st.DataObject, annotate: bool | None, scale: str,
                                                         view: str) -> None:
    arrays = [data.draw(hnp.arrays(dtype, shape)) for _ in range(frames)]
    snaps = [Snapshot("layer", i, f"fuzz[{i}]", lambda a=a: a) for i, a in enumerate(arrays)]
    options = RenderOptions(annotate=annotate, scale=scale, view=view, max_rows=6, max_cols=6)  # type: ignore[arg-type]
    with tempfile.TemporaryDirectory() as tmp, np.errstate(over="ignore", invalid="ignore"):
        # Every drawn array has at least one value, so no error is legitimate here.
        (result,) = render_layers({"layer": snaps}, options, Path(tmp))
        gif = read_gif(Path(tmp) / result.file_name)
        assert 1 <= gif.n_frames <= frames  # identical consecutive frames may merge
        assert result.frames == frames
        assert math.prod(result.grid) >= 1
