"""The recorder's on-disk buffer (capture/chunks.py): raw segments written out as canonical chunk files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import mlflow_weightviz as wv
from mlflow_weightviz.capture import chunks
from mlflow_weightviz.capture.chunks import Layout, Segment

# Shared with test_capture: reading chunks back, and the autouse check that recorders get closed.
from tests.test_capture import chunk_contents, no_recorder_left_open  # noqa: F401


def segment_of(tmp_path: Path, snapshots: list[tuple[int, dict[str, np.ndarray]]]) -> Segment:
    seg = Segment(tmp_path / "segment.raw", Layout.of(snapshots[0][1]))
    for step, arrays in snapshots:
        seg.append(step, arrays)
    return seg


def test_chunk_file_holds_every_record_with_its_step_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chunks, "_COPY_BLOCK", 7)  # copy each member in many small slices
    rng = np.random.default_rng(0)
    snapshots = [(step, {"w": rng.normal(size=(3, 4)), "i": np.arange(5, dtype=">i2") * step})
                 for step in (0, 10, 30)]
    seg = segment_of(tmp_path, snapshots)
    assert (seg.count, seg.first, seg.last, seg.chunk_name) == (3, 0, 30, "chunk_0-30.npz")
    path = seg.write_chunk(tmp_path / seg.chunk_name)
    with np.load(path, allow_pickle=False) as z:
        assert sorted(z.files) == ["i", "steps", "w"]
        assert z["steps"].dtype == np.dtype("<i8")
        assert z["steps"].tolist() == [0, 10, 30]
        for row, (_, arrays) in enumerate(snapshots):
            for name, value in arrays.items():
                assert z[name].dtype == value.dtype
                np.testing.assert_array_equal(z[name][row], value)
    seg.discard()
    assert not seg.path.exists()


def test_failed_append_cuts_the_record_back(tmp_path: Path) -> None:
    class Exploding:
        """An array-like whose conversion fails halfway through writing a record."""

        def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
            raise KeyboardInterrupt

    good = {"a": np.ones((2, 2)), "b": np.zeros(3)}
    seg = segment_of(tmp_path, [(0, good)])
    with pytest.raises(KeyboardInterrupt):
        seg.append(1, {"a": np.full((2, 2), 2.0), "b": Exploding()})  # type: ignore[dict-item]
    assert seg.path.stat().st_size == seg.record_bytes  # the half-written record is gone
    seg.append(2, {"a": np.full((2, 2), 3.0), "b": np.ones(3)})
    with np.load(seg.write_chunk(tmp_path / "out.npz"), allow_pickle=False) as z:
        assert z["steps"].tolist() == [0, 2]
        np.testing.assert_array_equal(z["a"][1], np.full((2, 2), 3.0))
    seg.discard()


def test_layout_tells_apart_names_dtypes_and_shapes() -> None:
    base = {"w": np.zeros((2, 3), np.float32)}
    layout = Layout.of(base)
    assert layout.matches({"w": np.ones((2, 3), np.float32)})
    assert not layout.matches({"v": np.zeros((2, 3), np.float32)})
    assert not layout.matches({"w": np.zeros((2, 3), np.float64)})
    assert not layout.matches({"w": np.zeros((3, 2), np.float32)})
    assert layout.sizes() == [24]


def test_chunks_keep_every_dtype_layout_and_shape_exactly() -> None:
    import mlflow

    arrays = {"complex": np.array([[1 + 2j, 3 - 1j]]), "flags": np.array([[True, False]]),
              "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)), "big_endian": np.arange(4, dtype=">i4"),
              "empty": np.zeros((0, 3)), "scalar": np.float32(3)}
    with mlflow.start_run() as run, wv.record(arrays, layers="*", render=False) as rec:
        rec.step(0)
        arrays["fortran"] += 1
        rec.step(1)
    contents = chunk_contents(run.info.run_id)
    for name, value in arrays.items():
        got = contents[1][name]
        assert got.dtype == np.asarray(value).dtype
        np.testing.assert_array_equal(got, value)
    np.testing.assert_array_equal(contents[0]["fortran"], np.arange(6.0).reshape(2, 3))
