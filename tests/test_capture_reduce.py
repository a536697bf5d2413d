"""Big layers are reduced to block statistics before they are copied; read back with numpy and checked."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

import mlflow_weightviz as wv
from mlflow_weightviz.capture import log_snapshot, reduce
from mlflow_weightviz.grid import to_grid
from mlflow_weightviz.options import Pool


def block_stats(w: np.ndarray, max_rows: int = 64, max_cols: int = 64) -> dict[str, np.ndarray]:
    """Block mean, max-abs and RMS computed independently with the renderer's own pooling."""
    w = np.asarray(w, dtype=np.float64)
    mean, _ = to_grid(w, max_rows=max_rows, max_cols=max_cols, pool=Pool.MEAN)
    peak, _ = to_grid(w, max_rows=max_rows, max_cols=max_cols, pool=Pool.MAXABS)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        squares, _ = to_grid(w * w, max_rows=max_rows, max_cols=max_cols, pool=Pool.MEAN)
    return {"mean": mean, "maxabs": peak, "rms": np.sqrt(squares)}


def assert_stats(found: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    for stat in reduce.STATS:
        assert found[stat].dtype == np.float32
        np.testing.assert_allclose(found[stat], expected[stat], rtol=2e-5, atol=1e-6, equal_nan=True, err_msg=stat)


def awkward(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Random float32 values with NaNs, an infinity, an all-NaN corner and a ±7 tie for the largest magnitude."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(shape).astype(np.float32)
    flat = a.reshape(-1)
    flat[rng.integers(0, a.size, 7)] = np.nan
    flat[1], flat[2] = 7.0, -7.0
    if a.size > 100:
        flat[-1] = np.inf
    mat = a.reshape(a.shape[0], -1) if a.ndim > 1 else a.reshape(1, -1)
    mat[-1:, -1:] = np.nan
    return a


SHAPES = [((130, 70), 64, 64), ((7, 5, 11), 3, 4), ((1000,), 8, 8), ((65, 65), 64, 64), ((200, 301), 64, 64),
          ((3, 3, 3, 3), 2, 2), ((129, 2), 64, 64),
          # wide blocks (36-48 columns), with a ragged last one
          ((90, 1601), 8, 64), ((60, 3072), 4, 64)]


@pytest.mark.parametrize(("shape", "max_rows", "max_cols"), SHAPES)
def test_numpy_and_torch_reductions_equal_the_renderers_block_pooling(shape: tuple[int, ...], max_rows: int,
                                                                       max_cols: int,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    a = awkward(shape)
    blocks = reduce.plan(a.shape, max_rows, max_cols)
    expected = block_stats(a, max_rows, max_cols)
    assert blocks.grid == expected["mean"].shape
    assert_stats(reduce.reduce_layer(a, blocks), expected)
    assert_stats(reduce.reduce_layer(torch.from_numpy(a), blocks), expected)
    bf16 = torch.from_numpy(a).to(torch.bfloat16)
    assert_stats(reduce.reduce_layer(bf16, blocks), block_stats(bf16.float().numpy(), max_rows, max_cols))
    # The accelerator path (block rows merged on the device, one small copy) run on the CPU.
    monkeypatch.setattr(reduce, "_on_host", lambda tensor: False)
    assert_stats(reduce.reduce_layer(bf16, blocks), block_stats(bf16.float().numpy(), max_rows, max_cols))
    # Small bands and cache slices: the same numbers.
    monkeypatch.setattr(reduce, "BAND_VALUES", 50)
    monkeypatch.setattr(reduce, "CACHE_VALUES", 20)
    assert_stats(reduce.reduce_layer(a, blocks), expected)
    assert_stats(reduce.reduce_layer(bf16, blocks), block_stats(bf16.float().numpy(), max_rows, max_cols))


@pytest.mark.parametrize("cut", [0, 1, 2, 3, 61, 64, 65, 67, 130])
def test_partials_of_row_shards_combine_into_the_whole(cut: int) -> None:
    import torch

    a = awkward((130, 70), seed=cut)
    blocks = reduce.plan(a.shape, 64, 64)
    for value in (a, torch.from_numpy(a)):
        first = reduce.partial_of(value[:cut], 0, blocks)
        first.merge(reduce.partial_of(value[cut:], cut, blocks))
        assert_stats(first.stats(), block_stats(a))


def test_ties_keep_the_first_value_in_row_major_order() -> None:
    a = np.zeros((4, 4), dtype=np.float32)
    a[0, 3], a[1, 0] = -2.0, 2.0  # in the same 2×4 block: -2 comes first in row-major order
    blocks = reduce.plan(a.shape, 2, 1)
    assert blocks.block == (2, 4)
    assert float(reduce.reduce_layer(a, blocks)["maxabs"][0, 0]) == -2.0
    assert float(reduce.reduce_layer(a[::-1].copy(), blocks)["maxabs"][1, 0]) == 2.0


def read_chunks(run_id: str) -> dict[int, dict[str, np.ndarray]]:
    """Every stored step's arrays, read back with numpy from the files logged to the run."""
    from mlflow.tracking import MlflowClient

    folder = Path(MlflowClient().download_artifacts(run_id, "weights"))
    steps: dict[int, dict[str, np.ndarray]] = {}
    for path in sorted(folder.glob("*.npz")):
        with np.load(path, allow_pickle=False) as z:
            meta = {"__weightviz__": z["__weightviz__"]} if "__weightviz__" in z.files else {}
            if "steps" in z.files:
                for i, step in enumerate(z["steps"].tolist()):
                    steps[step] = {k: z[k][i] for k in z.files if k not in ("steps", "__weightviz__")} | meta
            else:
                steps[int(path.stem.split("_")[1])] = {k: z[k] for k in z.files}
    return steps


def meta_of(arrays: dict[str, np.ndarray]) -> dict[str, dict[str, object]]:
    meta = arrays["__weightviz__"]
    assert meta.dtype == np.uint8
    assert meta.ndim == 1
    found = json.loads(meta.tobytes().decode())
    assert found["version"] == 1
    return dict(found["layers"])


def test_record_stores_big_layers_reduced_small_ones_exact_and_crops_exact() -> None:
    import mlflow
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(300, 200), torch.nn.Linear(60, 10))  # never run: shapes only
    full: dict[int, dict[str, np.ndarray]] = {}
    with mlflow.start_run() as run, wv.record(model, every=2, render=False,
                                              crops={"0.weight": (slice(10, 20), slice(-5, None))}) as rec:
        for step in range(5):
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.01 * torch.randn_like(p))
            if rec.step(step):
                full[step] = {n: p.detach().numpy().copy() for n, p in model.named_parameters()}
    stored = read_chunks(run.info.run_id)
    assert sorted(stored) == [0, 2, 4]
    for step, arrays in stored.items():
        assert set(arrays) == {"0.weight::mean", "0.weight::maxabs", "0.weight::rms", "1.weight",
                               "0.weight[10:20,295:300]", "__weightviz__"}
        assert_stats({s: arrays[f"0.weight::{s}"] for s in reduce.STATS}, block_stats(full[step]["0.weight"]))
        np.testing.assert_array_equal(arrays["1.weight"], full[step]["1.weight"])
        np.testing.assert_array_equal(arrays["0.weight[10:20,295:300]"], full[step]["0.weight"][10:20, 295:300])
        assert meta_of(arrays) == {
            "0.weight": {"kind": "reduced", "shape": [200, 300], "matrix": [200, 300], "block": [4, 5],
                         "grid": [50, 60], "dtype": "float32"},
            "0.weight[10:20,295:300]": {"kind": "crop", "of": "0.weight", "rows": [10, 20], "cols": [295, 300],
                                        "shape": [200, 300]}}
    # A reduced snapshot of a 60,000-value layer is 3 × 50 × 60 float32s.
    assert sum(a.nbytes for k, a in stored[0].items() if k.startswith("0.weight::")) == 3 * 50 * 60 * 4


def test_recording_leaves_the_parameters_storage_resizable() -> None:
    """Reading goes through DLPack views: Tensor.numpy() would mark the storage not resizable for good
    (FSDP1 frees gathered parameters by resizing their storage to 0, which then fails)."""
    import mlflow
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(300, 200), torch.nn.Linear(60, 10))  # reduced, and exact
    with mlflow.start_run(), wv.record(model, every=1, render=False,
                                       crops={"0.weight": (slice(0, 4), slice(0, 4))}) as rec:
        assert rec.step(0)
    assert rec.failures == 0
    for name, p in model.named_parameters():
        assert p.untyped_storage().resizable(), name
    p = torch.zeros(3)
    p.numpy()
    assert not p.untyped_storage().resizable()  # what the check would catch


def test_reduce_false_keeps_everything_and_max_rows_sets_the_capture_grid() -> None:
    import mlflow
    import torch

    model = torch.nn.Linear(300, 200)
    with mlflow.start_run() as run, wv.record(model, render=False, reduce=False) as rec:
        rec.step(0)
    arrays = read_chunks(run.info.run_id)[0]
    assert set(arrays) == {"weight"}
    np.testing.assert_array_equal(arrays["weight"], model.weight.detach().numpy())
    with mlflow.start_run() as run, wv.record(model, render=False, max_rows=256, max_cols=16) as rec:
        assert rec.settings.options.max_rows == 256  # one keyword: the render's grid too
        rec.step(0)
    arrays = read_chunks(run.info.run_id)[0]
    assert meta_of(arrays)["weight"]["grid"] == [200, 16]
    assert_stats({s: arrays[f"weight::{s}"] for s in reduce.STATS},
                 block_stats(model.weight.detach().numpy(), 256, 16))


def test_bf16_and_fp16_models_record() -> None:
    import mlflow
    import torch

    for dtype in (torch.bfloat16, torch.float16):
        model = torch.nn.Sequential(torch.nn.Linear(130, 70), torch.nn.Linear(40, 3)).to(dtype)
        with mlflow.start_run() as run, wv.record(model, render=False) as rec:
            rec.step(0)
        arrays = read_chunks(run.info.run_id)[0]
        name = str(dtype).removeprefix("torch.")
        assert meta_of(arrays)["0.weight"]["dtype"] == name
        assert_stats({s: arrays[f"0.weight::{s}"] for s in reduce.STATS},
                     block_stats(model[0].weight.detach().float().numpy()))
        np.testing.assert_array_equal(arrays["1.weight"], model[1].weight.detach().float().numpy())


def test_log_snapshot_reduces_too(tmp_path: Path) -> None:
    import mlflow

    w = awkward((500, 90))
    small = np.arange(6.0).reshape(2, 3)
    with mlflow.start_run() as run:
        path = log_snapshot({"big": w, "small": small}, 7, crops={"big": (slice(0, 3), slice(0, 4))})
        log_snapshot({"big": w}, 8, reduce=False)
        log_snapshot({"big": w}, 9, max_rows=600, max_cols=100)
    assert path == "weights/step_7.npz"
    stored = read_chunks(run.info.run_id)
    arrays = stored[7]
    assert_stats({s: arrays[f"big::{s}"] for s in reduce.STATS}, block_stats(w))
    np.testing.assert_array_equal(arrays["small"], small)
    np.testing.assert_array_equal(arrays["big[0:3,0:4]"], w[:3, :4])
    assert meta_of(arrays)["big"]["block"] == [8, 2]
    np.testing.assert_array_equal(stored[8]["big"], w)
    assert set(stored[9]) == {"big"}  # within the grid: exact, no metadata
    with mlflow.start_run(), pytest.raises(wv.UsageError, match="may not be called"):
        log_snapshot({"a::mean": small}, 0)


def test_bad_crops_fail_when_recording_starts() -> None:
    import mlflow
    import torch

    model = torch.nn.Linear(300, 200)
    with mlflow.start_run():
        for crops, message in [({"weight": (slice(0, 9, 2), slice(0, 3))}, "step 1"),
                               ({"weight": slice(0, 3)}, "two slices"),
                               ({"weight": (slice(0, 3), slice("a", 3))}, "integers"),
                               ({"nope": (slice(0, 3), slice(0, 3))}, "no layer 'nope'"),
                               ([1], "must map")]:
            with pytest.raises(wv.UsageError, match=message):
                wv.record(model, crops=crops, render=False)  # type: ignore[arg-type]


def test_a_capture_problem_mid_training_warns_once_and_training_goes_on() -> None:
    import mlflow

    calls = {"n": 0}

    def source() -> dict[str, np.ndarray]:
        calls["n"] += 1
        if calls["n"] in (2, 3):
            msg = "the parameter server is away"
            raise ConnectionError(msg)
        return {"w": np.full((3, 3), float(calls["n"]))}

    with mlflow.start_run() as run, wv.record(source, render=False) as rec:
        assert rec.step(0) is True
        with pytest.warns(wv.WeightvizWarning, match="could not take the snapshot of step 1: ConnectionError"):
            assert rec.step(1) is False
        assert rec.step(2) is False  # fails again, silently
        assert rec.step(3) is True
    assert rec.failures == 2
    assert sorted(read_chunks(run.info.run_id)) == [0, 3]


def test_a_full_disk_while_buffering_is_a_warning(tmp_path: Path) -> None:
    import mlflow

    with mlflow.start_run(), wv.record({"w": np.ones((2, 2))}, render=False, buffer_dir=tmp_path / "buf") as rec:
        rec.step(0)
        # The buffer folder vanishing is as real a write failure as a full disk.
        for child in (tmp_path / "buf").iterdir():
            for f in child.iterdir():
                f.unlink()
            os.rmdir(child)
        rec._segment = None  # the open raw file was deleted with its folder: a new one is needed
        with pytest.warns(wv.WeightvizWarning, match="cannot buffer the snapshot of step 1"):
            assert rec.step(1) is False


def test_callbacks_take_the_reduce_keywords() -> None:
    from mlflow_weightviz.capture.lightning import LightningCallback

    callback = LightningCallback(reduce=False, max_rows=8, max_cols=9,
                                 crops={"dense/kernel": (slice(0, 2), slice(0, 2))})
    settings = callback._settings
    assert settings.reduce is False
    assert settings.grid == (8, 9)
    assert settings.crops == (("dense/kernel", (0, 2), (0, 2)),)
    with pytest.raises(wv.UsageError, match="step 1"):
        LightningCallback(crops={"k": (slice(0, 4, 2), slice(0, 2))})


def test_threaded_reduction_equals_the_single_threaded_one(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(7)
    w = rng.normal(size=(1283, 1031)).astype(np.float32)  # ragged edge blocks on both axes
    w[5, 7] = -np.abs(w).max()  # a signed peak
    blocks = reduce.plan(w.shape, 64, 64)
    monkeypatch.setattr(reduce, "_THREADED_VALUES", 1)
    threaded = reduce.reduce_layer(w, blocks)
    monkeypatch.setattr(reduce, "_THREADED_VALUES", 1 << 62)
    single = reduce.reduce_layer(w, blocks)
    for stat in reduce.STATS:
        np.testing.assert_array_equal(threaded[stat], single[stat])
    want, _ = to_grid(w, max_rows=64, max_cols=64, pool=Pool.MEAN)
    np.testing.assert_allclose(threaded["mean"], want, rtol=1e-5, atol=1e-7)


def test_a_nan_in_one_group_of_block_rows_leaves_the_others_on_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(11)
    w = rng.normal(size=(640, 515)).astype(np.float32)  # 64×64 grid: blocks of 10×9, a ragged last column
    w[137, 200], w[3, 3], w[4, 5] = np.nan, 8.0, -8.0  # a NaN in one group; a ±tie in another
    blocks = reduce.plan(w.shape, 64, 64)
    monkeypatch.setattr(reduce, "CACHE_VALUES", 3 * 10 * 515)  # groups of 3 block rows
    monkeypatch.setattr(reduce, "_THREADED_VALUES", 1)
    found = reduce.partial_of(w, 0, blocks, sketch=True)
    assert_stats(found.stats(), block_stats(w))
    assert float(found.stats()["maxabs"][0, 0]) == 8.0  # the first in row-major order
    monkeypatch.setattr(reduce, "_THREADED_VALUES", 1 << 62)
    single = reduce.partial_of(w, 0, blocks, sketch=True)
    assert found.sketch is not None
    assert single.sketch is not None
    np.testing.assert_array_equal(found.sketch, single.sketch)


def test_short_and_narrow_blocks_go_in_pieces_with_the_same_statistics_and_sketch(
        monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(12)
    wide = rng.normal(size=(130, 9000)).astype(np.float32)  # blocks of 3 × 141: few rows, many columns
    tall = rng.normal(size=(7000, 40)).astype(np.float32)  # blocks of 110 × 1: one column
    tall[1234, 7] = np.nan  # a NaN in one piece
    calls: list[int] = []
    real = reduce._numpy_whole

    def spy(band: np.ndarray, *args: object) -> object:
        calls.append(band.shape[0])
        return real(band, *args)  # type: ignore[arg-type]

    for w in (wide, tall):
        blocks = reduce.plan(w.shape, 64, 64)
        whole = reduce.partial_of(w, 0, blocks, sketch=True)
        calls.clear()
        with monkeypatch.context() as m:
            m.setattr(reduce, "_PIECE_VALUES", 5000)
            m.setattr(reduce, "_numpy_whole", spy)
            pieces = reduce.partial_of(w, 0, blocks, sketch=True)
        assert len(calls) > 3  # the band did go in pieces, each of whole block rows
        assert all(n % blocks.block[0] == 0 for n in calls)
        for stat in reduce.STATS:
            np.testing.assert_array_equal(pieces.stats()[stat], whole.stats()[stat])
        assert pieces.sketch is not None
        assert whole.sketch is not None
        np.testing.assert_array_equal(pieces.sketch, whole.sketch)
        assert_stats(whole.stats(), block_stats(w))


def test_layers_reduced_side_by_side_equal_one_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    rng = np.random.default_rng(5)
    values = [rng.normal(size=(300, 257)).astype(np.float32), torch.from_numpy(rng.normal(size=(1100, 64))),
              rng.normal(size=(40,)).astype(np.float32), torch.ones(513, 70, dtype=torch.bfloat16),
              rng.normal(size=(2000, 700)).astype(np.float32)]
    items = [(v, reduce.plan(tuple(v.shape), 64, 64)) for v in values]
    monkeypatch.setattr(reduce, "_LAYER_THREADED_VALUES", 1000)
    monkeypatch.setattr(reduce, "_THREADED_VALUES", 1000)  # inside a layer too, where that is allowed
    monkeypatch.setattr(reduce, "CACHE_VALUES", 5000)
    threads: dict[tuple[int, ...], str] = {}  # shape of the layer → the thread that reduced it
    real = reduce.partial_of

    def spy(value: object, *args: object, **kw: object) -> reduce.Partial:
        import threading

        threads[tuple(getattr(value, "shape", ()))] = threading.current_thread().name
        return real(value, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(reduce, "partial_of", spy)
    together = reduce.partials_of(items, sketch=True)
    assert threads[(300, 257)].startswith("weightviz-reduce")  # the big numpy layers did go to the threads
    assert threads[(2000, 700)].startswith("weightviz-reduce")
    # torch's own reductions (bf16 on the CPU) stay on the caller's thread: its thread team is not shared.
    assert not threads[(513, 70)].startswith("weightviz-reduce")
    monkeypatch.setattr(reduce, "_LAYER_THREADED_VALUES", 1 << 62)
    for (value, blocks), found in zip(items, together, strict=True):
        alone = real(value, 0, blocks, sketch=True)
        for stat in reduce.STATS:
            np.testing.assert_array_equal(found.stats()[stat], alone.stats()[stat])
        assert found.sketch is not None
        assert alone.sketch is not None
        np.testing.assert_array_equal(found.sketch, alone.sketch)
