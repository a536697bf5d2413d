"""Reduced snapshots, --pool rms, --rows/--cols, tick thinning, load_snapshots and fp16/bf16 sources (issue 11)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from mlflow_weightviz import LayerSnapshots, RenderOptions, UsageError, load_snapshots, render_file
from mlflow_weightviz.grid import prepare_layer, to_grid
from mlflow_weightviz.options import Pool
from mlflow_weightviz.pipeline import _renderer_kwargs, _title
from mlflow_weightviz.snapshots import Crop, Reduced, group_layers, read_snapshots
from tests.helpers import log_folder, make_run, read_gif, run_cli, training_series
from tests.reduced_files import block_stats, matrix, write_reduced

SHAPE = (130, 70)  # pooled at the default 64×64 grid: blocks of 3×2, a ragged last block row


def _series(shape: tuple[int, ...] = SHAPE, steps: int = 3, seed: int = 0) -> list[np.ndarray]:
    return [w.astype(np.float32) for w in training_series(steps, shape, seed)]


def _full_and_reduced(tmp_path: Path, *, nan: bool = False, nan_inside: bool = True) -> tuple[
        Path, Path, list[np.ndarray]]:
    frames = _series()
    if nan:
        frames[0][:3, :2] = np.nan  # one whole block
        if nan_inside:
            frames[0][5, 7] = np.nan
    full, reduced = tmp_path / "full", tmp_path / "reduced"
    full.mkdir()
    for i, w in enumerate(frames):
        np.savez(full / f"step_{i * 10}.npz", big=w, small=w[:4, :5])
        write_reduced(reduced / f"step_{i * 10}.npz", {"big": w, "small": w[:4, :5]})
    return full, reduced, frames


def test_reduced_layer_reads_as_one_layer_with_its_original_shape(tmp_path: Path) -> None:
    _, reduced, frames = _full_and_reduced(tmp_path)
    layers = group_layers(read_snapshots(reduced))
    assert sorted(layers) == ["big", "small"]
    meta = layers["big"][0].meta
    assert isinstance(meta, Reduced)
    assert (meta.shape, meta.matrix, meta.block, meta.grid) == (SHAPE, SHAPE, (3, 2), (44, 35))
    prepared = prepare_layer("big", layers["big"], RenderOptions(), tmp_path)
    assert prepared.info.note() == "pooled 130×70 → 44×35 (rms of 3×2 blocks)"
    assert not prepared.diverging  # RMS is never negative: a sequential colormap
    kwargs = _renderer_kwargs(prepared, RenderOptions())
    assert kwargs["cmap"] == "YlGn"
    assert kwargs["row_labels"][:3] == ["0", "3", "6"]
    assert kwargs["col_labels"][-1] == "68"
    assert "rms of 3×2 blocks" in _title(prepared, RenderOptions(), 0, 0)
    np.testing.assert_allclose(prepared.stack()[2], block_stats(frames[2])["rms"], rtol=1e-6)


@pytest.mark.parametrize("pool", ["mean", "maxabs", "rms"])
def test_load_snapshots_reduced_equals_full_and_independent_block_stats(tmp_path: Path, pool: str) -> None:
    full, reduced, frames = _full_and_reduced(tmp_path, nan=True)
    got = load_snapshots(reduced, pool=pool)
    ref = load_snapshots(full, pool=pool)
    assert isinstance(got["big"], LayerSnapshots)
    np.testing.assert_array_equal(got["big"].steps, [0, 10, 20])
    assert got["big"].values.shape == (3, 44, 35)
    expected = np.stack([block_stats(w)[pool] for w in frames])
    np.testing.assert_allclose(got["big"].values, expected, rtol=1e-6, equal_nan=True)
    np.testing.assert_allclose(ref["big"].values, expected, rtol=1e-6, equal_nan=True)
    assert np.isnan(got["big"].values[0, 0, 0])
    np.testing.assert_array_equal(got["small"].values, np.stack([w[:4, :5] for w in frames]))  # exact
    assert got["big"].info.shape == SHAPE
    assert got["big"].info.pool is Pool(pool)


@pytest.mark.parametrize("pool", ["mean", "maxabs", "rms"])
def test_a_smaller_grid_pools_stored_blocks_further_exactly(tmp_path: Path, pool: str) -> None:
    # A NaN inside a block is not counted by the stored layout: only whole-NaN blocks pool further exactly.
    full, reduced, frames = _full_and_reduced(tmp_path, nan=True, nan_inside=False)
    # 22 rows: blocks of 6 = 2 stored blocks; 35 columns: the stored 2 columns.
    got = load_snapshots(reduced, pool=pool, max_rows=22, max_cols=35)["big"]
    ref = load_snapshots(full, pool=pool, max_rows=22, max_cols=35)["big"]
    assert got.info.block == ref.info.block == (6, 2)
    # float32 statistics: a mean of means that nearly cancel keeps its absolute, not relative, precision
    np.testing.assert_allclose(got.values, ref.values, rtol=1e-5, atol=1e-8, equal_nan=True)
    np.testing.assert_allclose(got.values, np.stack([block_stats(w, 22, 35)[pool] for w in frames]),
                               rtol=1e-5, atol=1e-8, equal_nan=True)
    # 30 rows would need blocks of 5: the next whole number of stored blocks (6) is used, and said.
    odd = load_snapshots(reduced, pool=pool, max_rows=30)["big"]
    assert odd.info.block == (6, 2)
    assert odd.info.grid == (22, 35)
    np.testing.assert_allclose(odd.values, got.values, rtol=1e-6, equal_nan=True)
    # A larger grid shows the stored one.
    assert load_snapshots(reduced, pool=pool, max_rows=500, max_cols=500)["big"].values.shape == (3, 44, 35)


def test_chunk_with_a_crop_and_regions(tmp_path: Path) -> None:
    frames = _series()
    path = tmp_path / "weights" / "chunk_0-20.npz"
    write_reduced(path, {"big": frames, "bias": [w[0, :10] for w in frames]}, steps=[0, 10, 20],
                  crops={"big": (slice(40, 60), slice(10, 30))})
    layers = group_layers(read_snapshots(path.parent))
    assert sorted(layers) == ["bias", "big", "big[40:60,10:30]"]
    crop = layers["big[40:60,10:30]"][1]
    assert isinstance(crop.meta, Crop)
    assert crop.meta.of == "big"
    options = RenderOptions()
    prepared = prepare_layer("big[40:60,10:30]", layers["big[40:60,10:30]"], options, tmp_path)
    kwargs = _renderer_kwargs(prepared, options)
    assert kwargs["row_labels"][0] == "40"
    assert kwargs["col_labels"][:2] == ["10", "11"]
    assert prepared.info.note() == "rows 40:60, cols 10:30 of 130×70"
    np.testing.assert_array_equal(prepared.stack()[1], frames[1][40:60, 10:30])
    # A region of the reduced layer inside the stored crop is drawn from it, exactly.
    got = load_snapshots(path.parent, layers=["big"], rows=(45, 50), cols="12:20")["big"]
    np.testing.assert_array_equal(got.values, np.stack([w[45:50, 12:20] for w in frames]))
    assert got.info.origin == (45, 12)
    # Elsewhere it was not stored: the error says how to record it.
    with pytest.raises(UsageError, match=r"crops=\{'big': \(slice\(0, 8\), slice\(0, 70\)\)\}"):
        load_snapshots(path.parent, layers=["big"], rows=(0, 8))
    cli = run_cli("render-file", str(path.parent), "--layer", "big", "--rows", "0:8", "--output-dir",
                  str(tmp_path / "o"))
    assert cli.code == 2
    assert "record(..., crops=" in cli.stderr


def test_rows_cols_on_full_snapshots_are_exact_and_labelled(tmp_path: Path) -> None:
    full, _, frames = _full_and_reduced(tmp_path)
    got = load_snapshots(full, layers=["big"], rows=(100, 112), cols=(60, 70))["big"]
    np.testing.assert_array_equal(got.values, np.stack([w[100:112, 60:70] for w in frames]))
    assert got.info.note() == "rows 100:112, cols 60:70 of 130×70"
    out = tmp_path / "out"
    cli = run_cli("render-file", str(full), "--layer", "big", "--rows", "100:112", "--cols", "60:70",
                  "--output-dir", str(out))
    assert cli.code == 0, cli.stderr
    assert read_gif(out / "big.gif").n_frames == 3
    prepared = prepare_layer("big", group_layers(read_snapshots(full))["big"],
                             RenderOptions(rows=(100, 112), cols=slice(60, 70)), tmp_path)
    kwargs = _renderer_kwargs(prepared, RenderOptions())
    assert kwargs["row_labels"][0] == "100"
    assert kwargs["col_labels"][0] == "60"
    for bad in (("--rows", "5:5"), ("--rows", "0:131"), ("--cols", "x"), ("--cols", "-1:3")):
        cli = run_cli("render-file", str(full), "--layer", "big", *bad, "--output-dir", str(out))
        assert cli.code == 2, (bad, cli.stderr)


def test_region_of_a_memory_map_reads_only_its_rows(tmp_path: Path) -> None:
    w = np.lib.format.open_memmap(tmp_path / "w.npy", mode="w+", dtype=np.float32, shape=(4000, 300))
    w[:] = np.arange(300, dtype=np.float32)
    w[1000:1010] = 7.0
    del w
    snaps = read_snapshots(tmp_path / "w.npy")
    got = load_snapshots(tmp_path / "w.npy", rows=(1000, 1010), cols=(3, 9))
    np.testing.assert_array_equal(next(iter(got.values())).values[0], np.full((10, 6), 7.0))
    assert len(snaps) == 1


def test_pool_rms_on_full_snapshots_and_the_auto_default(tmp_path: Path) -> None:
    w = np.random.default_rng(3).normal(size=(100, 150))
    w[0, 0] = np.nan
    values, info = to_grid(w, max_rows=20, max_cols=30, pool=Pool.RMS)
    assert info.note() == "pooled 100×150 → 20×30 (rms of 5×5 blocks)"
    np.testing.assert_allclose(values, block_stats(w, 20, 30)["rms"], rtol=1e-6)
    assert to_grid(w, max_rows=20, max_cols=30, pool=None)[1].pool is Pool.RMS
    assert to_grid(w[:4, :4], max_rows=20, max_cols=30, pool=None)[1].pool is Pool.MEAN
    np.save(tmp_path / "w.npy", w)
    result = render_file(tmp_path / "w.npy", RenderOptions(pool="mean", max_rows=20, max_cols=30),
                         output_dir=tmp_path / "o")
    assert result.layers[0].grid == (20, 30)
    assert RenderOptions().look.pool is None
    fields = RenderOptions(pool="mean").fingerprint_fields()
    assert fields["pool"] == "mean"
    assert "rows" not in fields
    assert "cols" not in fields
    assert RenderOptions(rows="1:4").fingerprint_fields()["rows"] == [1, 4]


def test_tick_labels_never_overlap_and_the_fast_path_draws_the_same(tmp_path: Path) -> None:
    from mlflow_weightviz.frames import HeatmapRenderer

    def make(reference: bool) -> HeatmapRenderer:
        return HeatmapRenderer((30, 48), cmap="YlGn", vmin=0.0, vmax=1.0, fmt="{x:.2f}", annotate=False,
                               row_labels=[str(1000 + 36 * i) for i in range(30)],
                               col_labels=[str(1008 + 48 * j) for j in range(48)],
                               title_sample="c_attn.weight  ·  step 10  ·  frame 1/1", reference=reference)

    values = np.random.default_rng(0).random((30, 48))
    ref = make(True)
    ref_frame = ref.render(values, "c_attn.weight  ·  step 10  ·  frame 1/1")
    renderer = ref._canvas.get_renderer()
    for axis in (ref._ax.get_xticklabels(), ref._ax.get_yticklabels()):
        boxes = [t.get_window_extent(renderer) for t in axis if t.get_visible() and t.get_text()]
        assert len(boxes) > 3
        for a, b in zip(boxes, boxes[1:], strict=False):
            assert not a.overlaps(b), (a, b)
    fast = make(False)
    fast.render(values, "x")
    fast_frame = fast.render(values, "c_attn.weight  ·  step 10  ·  frame 1/1")
    assert [t.get_text() for t in fast._ax.get_xticklabels()] == [t.get_text() for t in ref._ax.get_xticklabels()]
    top = ref_frame.shape[0] // 5  # the labels' band: same pixels on both paths
    diff = np.abs(fast_frame[:top].astype(int) - ref_frame[:top].astype(int))
    assert diff.max() <= 6


@pytest.mark.parametrize("kind", ["fp16-npz", "fp16-torch", "bf16-torch", "bf16-safetensors"])
def test_half_precision_sources_render_and_load(tmp_path: Path, kind: str) -> None:
    import torch

    frames = _series((80, 40))
    folder = tmp_path / "w"
    folder.mkdir()
    dtype = torch.bfloat16 if kind.startswith("bf16") else torch.float16
    exact = [torch.from_numpy(w).to(dtype).float().numpy() for w in frames]
    for i, w in enumerate(frames):
        t = torch.from_numpy(w).to(dtype)
        if kind == "fp16-npz":
            np.savez(folder / f"step_{i}.npz", fc=w.astype(np.float16))
        elif kind.endswith("torch"):
            torch.save({"fc": t}, folder / f"step_{i}.pt")
        else:
            from safetensors.torch import save_file

            save_file({"fc": t.contiguous()}, str(folder / f"step_{i}.safetensors"))
    result = render_file(folder, RenderOptions(), output_dir=tmp_path / "o")
    assert result.layers[0].shape == (80, 40)
    assert read_gif(tmp_path / "o" / "fc.gif").n_frames == 3
    got = load_snapshots(folder, pool="mean", max_rows=80, max_cols=40)["fc"]
    np.testing.assert_array_equal(got.values, np.stack(exact))


def test_load_snapshots_from_an_mlflow_run(tmp_path: Path) -> None:
    _, reduced, frames = _full_and_reduced(tmp_path)
    run_id = make_run()
    log_folder(run_id, reduced)
    got = load_snapshots(run_id)
    assert sorted(got) == ["big", "small"]
    np.testing.assert_allclose(got["big"].values, np.stack([block_stats(w)["mean"] for w in frames]), rtol=1e-6)
    assert got["big"].dtype == "float32"
    assert got["small"].values.shape == (3, 4, 5)
    means = np.stack([np.nanmean(matrix(w)[0:3, 0:2]) for w in frames])
    np.testing.assert_allclose(got["big"].values[:, 0, 0], means, rtol=1e-6)
    assert math.isclose(float(got["big"].values[0, 43, 0]), float(np.mean(frames[0][129:130, 0:2])), rel_tol=1e-6)
