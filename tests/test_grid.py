"""From arrays to the display grid: reshaping, pooling, colour scale and number format."""

from __future__ import annotations

import functools
import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from mlflow_weightviz.errors import ShapeMismatchError, SnapshotError
from mlflow_weightviz.grid import choose_format, finite_range, format_value, prepare_layer, sample_indices, to_grid
from mlflow_weightviz.options import Pool, RenderOptions, Scale, View
from mlflow_weightviz.snapshots import Snapshot
from tests.helpers import NEGATIVE_ZERO, training_series


def snaps(arrays: list[np.ndarray], name: str = "w") -> list[Snapshot]:
    return [Snapshot(name, i, f"mem[{i}]", functools.partial(lambda a: a, a)) for i, a in enumerate(arrays)]


def prepared(tmp_path: Path, arrays: list[np.ndarray], **options: object):  # type: ignore[no-untyped-def]
    return prepare_layer("w", snaps(arrays), RenderOptions(**options), tmp_path)  # type: ignore[arg-type]


def test_a_bias_becomes_one_row_and_a_conv_kernel_is_reshaped() -> None:
    bias, info = to_grid(np.arange(5, dtype=np.float32), max_rows=64, max_cols=64)
    assert bias.shape == (1, 5)
    assert info.matrix == (1, 5)
    assert "shape 5 shown as 1×5" in info.note()
    kernel = np.arange(8 * 3 * 3 * 3).reshape(8, 3, 3, 3)
    grid, info = to_grid(kernel, max_rows=64, max_cols=64)
    assert grid.shape == (8, 27)
    np.testing.assert_array_equal(grid, kernel.reshape(8, 27))
    assert info.note() == "shape 8×3×3×3 shown as 8×27"
    assert not info.pooled


def test_a_large_matrix_is_mean_pooled_and_the_note_says_so() -> None:
    rng = np.random.default_rng(0)
    big = rng.normal(size=(200, 300))
    grid, info = to_grid(big, max_rows=64, max_cols=64)
    assert info.block == (4, 5)
    assert grid.shape == (50, 60) == info.grid
    assert grid[7, 11] == pytest.approx(big[28:32, 55:60].mean())
    assert info.note() == "pooled 200×300 → 50×60 (mean of 4×5 blocks)"


def test_ragged_edge_blocks_average_only_real_values() -> None:
    m = np.arange(10 * 7, dtype=np.float64).reshape(10, 7)
    grid, info = to_grid(m, max_rows=3, max_cols=2)
    assert info.block == (4, 4)
    assert grid.shape == (3, 2)
    assert grid[2, 1] == pytest.approx(m[8:10, 4:7].mean())


def test_maxabs_pooling_keeps_the_sign_of_the_largest_magnitude() -> None:
    m = np.zeros((4, 4))
    m[0, 1], m[1, 0] = -9.0, 5.0
    m[2, 2], m[3, 3] = 3.0, -1.0
    grid, _ = to_grid(m, max_rows=2, max_cols=2, pool=Pool.MAXABS)
    np.testing.assert_array_equal(grid, [[-9.0, 0.0], [0.0, 3.0]])


def test_nan_in_a_pooled_block_is_skipped_and_an_all_nan_block_stays_nan() -> None:
    m = np.ones((4, 4))
    m[0, 0] = np.nan
    m[2:, 2:] = np.nan
    grid, _ = to_grid(m, max_rows=2, max_cols=2)
    assert grid[0, 0] == 1.0
    assert math.isnan(grid[1, 1])


def test_complex_values_are_drawn_by_magnitude_and_ints_and_bools_become_floats() -> None:
    grid, _ = to_grid(np.array([[3 + 4j, -1j]]), max_rows=8, max_cols=8)
    np.testing.assert_array_equal(grid, [[5.0, 1.0]])
    assert to_grid(np.array([[True, False]]), max_rows=8, max_cols=8)[0].dtype == np.float64
    assert to_grid(np.array([[2**40, -3]], dtype=np.int64), max_rows=8, max_cols=8)[0][0, 0] == 2.0**40


def test_empty_arrays_are_refused_with_their_shape() -> None:
    with pytest.raises(SnapshotError, match=r"at least one value; this one has shape \(0, 5\)"):
        to_grid(np.zeros((0, 5)), max_rows=8, max_cols=8)


def test_memory_mapped_input_is_pooled_in_bands(tmp_path: Path) -> None:
    m = np.random.default_rng(1).normal(size=(1000, 300)).astype(np.float32)
    np.save(tmp_path / "m.npy", m)
    mapped = np.load(tmp_path / "m.npy", mmap_mode="r")
    grid, info = to_grid(mapped, max_rows=10, max_cols=10)
    expected, _ = to_grid(m, max_rows=10, max_cols=10)
    np.testing.assert_allclose(grid, expected)
    assert info.grid == (10, 10)
    assert finite_range(mapped) == (float(m.min()), float(m.max()))


@pytest.mark.parametrize(("count", "k"), [(10, 2), (10, 3), (100, 7), (5, 5), (5, 9), (1000, 64)])
def test_sampling_keeps_first_and_last_and_k_frames(count: int, k: int) -> None:
    idx = sample_indices(count, k)
    assert idx[0] == 0
    assert idx[-1] == count - 1
    assert len(idx) == min(count, k)
    assert idx == sorted(set(idx))


def test_global_scale_spans_every_frame_and_is_centred_for_signed_layers(tmp_path: Path) -> None:
    layer = prepared(tmp_path, [np.array([[0.0, 1.0]]), np.array([[-3.0, 0.5]])])
    assert layer.diverging
    assert (layer.vmin, layer.vmax) == (-3.0, 3.0)
    assert layer.limits(0) == layer.limits(1) == (-3.0, 3.0)
    assert layer.stack().shape == (2, 1, 2)


def test_positive_layers_get_a_sequential_scale_from_min_to_max(tmp_path: Path) -> None:
    layer = prepared(tmp_path, [np.array([[0.1, 0.2]]), np.array([[0.4, 0.3]])])
    assert not layer.diverging
    assert (layer.vmin, layer.vmax) == pytest.approx((0.1, 0.4))


def test_frame_scale_and_fixed_limits(tmp_path: Path) -> None:
    frames = [np.array([[1.0, 2.0]]), np.array([[10.0, 20.0]])]
    per_frame = prepared(tmp_path, frames, scale=Scale.FRAME)
    assert per_frame.limits(0) == (1.0, 2.0)
    assert per_frame.limits(1) == (10.0, 20.0)
    fixed = prepared(tmp_path, frames, vmin=0.0, vmax=5.0)
    assert fixed.limits(1) == (0.0, 5.0)


def test_nan_and_inf_never_break_the_colour_scale(tmp_path: Path) -> None:
    layer = prepared(tmp_path, [np.array([[np.nan, 1.0], [np.inf, -np.inf]]), np.array([[2.0, 3.0], [1.5, 1.0]])])
    assert (layer.vmin, layer.vmax) == (1.0, 3.0)
    stack = layer.stack()
    assert math.isnan(stack[0, 0, 0])
    assert stack[0, 1, 0] == np.inf


@pytest.mark.parametrize(("frames", "lo", "hi"), [
    ([np.full((2, 2), 7.0)], 6.3, 7.7),                     # constant: widened around the value
    ([np.zeros((2, 2))], -1.0, 1.0),                        # all zero
    ([np.full((2, 2), np.nan)], 0.0, 1.0),                  # nothing finite: a default scale
    ([np.array([[1e30, -1e30]])], -1e30, 1e30),             # huge values stay finite
])
def test_degenerate_layers_still_get_a_usable_scale(tmp_path: Path, frames: list[np.ndarray], lo: float,
                                                      hi: float) -> None:
    layer = prepared(tmp_path, frames)
    assert layer.vmin < layer.vmax
    assert (layer.vmin, layer.vmax) == pytest.approx((lo, hi))
    assert layer.fmt.format(x=layer.vmax)  # the chosen format works on the range


def test_delta_views_start_at_zero_and_are_diverging(tmp_path: Path) -> None:
    frames = [np.array([[1.0, 2.0]]), np.array([[1.5, 1.0]]), np.array([[2.0, 1.0]])]
    init = prepared(tmp_path, frames, view=View.DELTA_INIT)
    np.testing.assert_allclose(init.stack()[:, 0, :], [[0, 0], [0.5, -1], [1, -1]])
    step = prepared(tmp_path, frames, view=View.DELTA_STEP)
    np.testing.assert_allclose(step.stack()[:, 0, :], [[0, 0], [0.5, -1], [0.5, 0]])
    assert init.diverging
    assert step.diverging


def test_shape_change_names_expected_and_received_shapes_and_leaves_no_file(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with pytest.raises(ShapeMismatchError, match=r"shape of step 0, \(2, 3\); step 1 has shape \(3, 2\)"):
        prepared(scratch, [np.zeros((2, 3)), np.zeros((3, 2))])
    assert list(scratch.iterdir()) == []


def test_max_frames_samples_the_stack(tmp_path: Path) -> None:
    layer = prepared(tmp_path, [np.full((1, 1), float(i)) for i in range(20)], max_frames=4)
    assert layer.steps == (0, 6, 13, 19)
    assert layer.total_snapshots == 20
    assert layer.stack()[:, 0, 0].tolist() == [0.0, 6.0, 13.0, 19.0]


def test_format_shows_the_change_between_frames() -> None:
    stack = np.array([[[0.5000, 0.2500]], [[0.5003, 0.2497]]])
    fmt = choose_format(stack, 0.0, 0.6)
    assert fmt.format(x=0.5) != fmt.format(x=0.5003)
    assert choose_format(np.array([[[1e30]], [[-1e30]]]), -1e30, 1e30).endswith("e}")
    assert choose_format(np.zeros((1, 2, 2)), -1.0, 1.0) == "{x:.3f}"


def significant_digits(text: str) -> int:
    mantissa = text.lower().split("e")[0].lstrip("-+ 0.")
    return sum(c.isdigit() for c in mantissa)


def test_format_shows_two_significant_digits_of_the_typical_value(tmp_path: Path) -> None:
    # Values around 0.003 with one 0.5 outlier: the change and the largest value alone gave 2 decimals ("0.00").
    rng = np.random.default_rng(4)
    base = rng.normal(0, 0.003, size=(12, 9))
    base[0, 0] = 0.5
    layer = prepared(tmp_path, [base + i * 0.01 * (base > 0.4) for i in range(4)])
    typical = float(np.median(np.abs(base)))
    assert significant_digits(format_value(layer.fmt, typical)) >= 2, (layer.fmt, typical)
    assert layer.fmt == "{x:.4f}"
    for scale in (3e-4, 0.02, 0.3, 4.0, 70.0, 900.0):
        stack = np.stack([rng.normal(0, scale, (12, 9)) for _ in range(3)])
        fmt = choose_format(stack, float(stack.min()), float(stack.max()))
        typical = float(np.median(np.abs(stack)))
        assert significant_digits(format_value(fmt, typical)) >= 2, (scale, fmt, typical)


def test_format_value_never_writes_a_negative_zero() -> None:
    assert format_value("{x:.2f}", -0.001) == "0.00"
    assert format_value("{x:.2f}", -0.0) == "0.00"
    assert format_value("{x:.2f}", -0.01) == "-0.01"
    assert format_value("{x:+.2f}", -0.001) == "+0.00"
    assert format_value("{x:.0f}", -0.4) == "0"
    assert format_value("{x:.1%}", -1e-5) == "0.0%"
    assert format_value("{x:08.3f}", -1e-4) == "0000.000"
    assert format_value("{x:.2e}", -1e-300) == "-1.00e-300"
    assert format_value("w={x:.2f}!", -0.004) == "w=0.00!"
    formats = ["{x:.3f}", "{x:.2e}", "{x:.4g}", "{x:g}", "{x:+.1f}", "{x:.1%}", "{x:8.3f}", "{x:08.3f}",
               "w={x:.2f}!", "{x:,.1f}", "{x:.3E}", "{x: .2f}", "{x:.0f}", "{x:.6f}", "{x}"]
    values = [-0.0, -1e-300, -5e-324, -0.0049, -0.0004, -0.04, -0.4] + list(-np.geomspace(1e-12, 1, 50))
    for fmt in formats:
        for v in values:
            text = format_value(fmt, float(v))
            assert not NEGATIVE_ZERO.search(text), (fmt, v, text)
            if float(v) < 0 and float(text.strip("w=!%").replace(",", "")) != 0:
                assert "-" in text, (fmt, v, text)  # only a zero loses its sign


@pytest.mark.parametrize("view", list(View))
@pytest.mark.parametrize("case", ["training", "walk", "demo", "small-signed", "linspace"])
def test_no_annotation_of_typical_inputs_reads_minus_zero(tmp_path: Path, case: str, view: View) -> None:
    """Every cell text the GIF would show for the test suite's usual inputs, in every view."""
    rng = np.random.default_rng(5)
    if case == "training":
        arrays = training_series(steps=6, shape=(8, 12))
    elif case == "walk":
        arrays = [rng.normal(0, 0.1, (5, 7)) + rng.normal(0, 0.002, (5, 7)) * i for i in range(6)]
    elif case == "demo":
        from mlflow_weightviz.demo import train_tiny_mlp

        arrays = [w[layer] for step, w, _ in train_tiny_mlp(40) if step % 10 == 0 for layer in ["fc1.bias"]]
    elif case == "small-signed":  # the 12×9 layer at 2 decimals
        arrays = [rng.normal(0.2, 0.15, (12, 9)) * (i + 1) / 4 for i in range(4)]
    else:
        arrays = [np.linspace(-1, 1, 35).reshape(5, 7) * (1 + i / 10) for i in range(3)]
    layer = prepared(tmp_path, arrays, view=view)
    texts = {format_value(layer.fmt, v) for v in layer.stack().ravel().tolist()}
    assert [t for t in texts if NEGATIVE_ZERO.search(t)] == []


def test_scale_and_format_survive_values_near_the_float64_limit(tmp_path: Path) -> None:
    top = float(np.finfo(np.float64).max)
    layer = prepared(tmp_path, [np.zeros((2, 2)), np.full((2, 2), 1e308), np.full((2, 2), top)])
    assert 0.0 <= layer.vmin < layer.vmax <= 1e300  # the colorbar's tick arithmetic overflows beyond
    assert layer.fmt.format(x=top) == "1.8e+308"
    assert choose_format(np.array([[[5e-324]], [[0.0]]]), 0.0, 5e-324).endswith("e}")


def test_signalling_nan_is_read_as_nan_without_a_warning() -> None:
    snan = np.array([0x7FA00000, 0x3F800000], dtype=np.uint32).view(np.float32).reshape(1, 2)
    grid, _ = to_grid(snan, max_rows=4, max_cols=4)  # filterwarnings=error would raise on a warning
    assert math.isnan(grid[0, 0])
    assert grid[0, 1] == 1.0


def test_a_one_sided_vmin_beyond_the_data_keeps_the_scale_the_right_way_round(tmp_path: Path) -> None:
    snaps = [Snapshot("l", i, f"a[{i}]", lambda v=v: np.full((2, 2), v)) for i, v in enumerate((0.0, 0.5))]
    low = prepare_layer("l", snaps, RenderOptions(vmin=5.0), tmp_path)
    assert low.vmin == 5.0
    assert low.vmax > low.vmin
    high = prepare_layer("l", snaps, RenderOptions(vmax=-1.0), tmp_path)
    assert high.vmax == -1.0
    assert high.vmin < high.vmax


def _pooled_by_padding(a: np.ndarray, br: int, bc: int, pool: Pool) -> np.ndarray:
    """The straightforward way: pad ragged edges with NaN, reshape into blocks, reduce."""
    rows, cols = a.shape
    padded = np.pad(a, ((0, -rows % br), (0, -cols % bc)), constant_values=np.nan)
    blocks = padded.reshape(padded.shape[0] // br, br, padded.shape[1] // bc, bc).swapaxes(1, 2)
    tiles = blocks.reshape(blocks.shape[0], blocks.shape[1], br * bc)
    with warnings.catch_warnings(), np.errstate(invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks
        if pool is Pool.MEAN:
            return np.asarray(np.nanmean(tiles, axis=2))
        return np.asarray(np.sqrt(np.nanmean(np.square(tiles), axis=2)))


@pytest.mark.parametrize("pool", [Pool.MEAN, Pool.RMS])
def test_pooling_ragged_blocks_gives_the_bits_of_padding_and_reshaping(pool: Pool) -> None:
    rng = np.random.default_rng(3)
    for rows, cols, max_rows, max_cols in ((31, 33, 8, 5), (16, 33, 16, 4), (31, 12, 4, 12), (7, 5, 2, 2)):
        a = rng.normal(size=(rows, cols)) * 1e-3
        a[rng.random(a.shape) < 0.2] = np.nan
        grid, info = to_grid(a, max_rows=max_rows, max_cols=max_cols, pool=pool)
        assert grid.tobytes() == _pooled_by_padding(a, *info.block, pool).tobytes()


def test_pooling_a_huge_band_holds_few_copies_of_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tracemalloc

    from mlflow_weightviz import grid as grid_module

    band = 4 * 1024 * 1024
    monkeypatch.setattr(grid_module, "_BAND_BYTES", band)
    m = np.lib.format.open_memmap(tmp_path / "m.npy", mode="w+", dtype=np.float32, shape=(4000, 1001))
    m[:] = np.random.default_rng(0).normal(size=m.shape).astype(np.float32)
    m.flush()
    del m
    mapped = np.load(tmp_path / "m.npy", mmap_mode="r")
    tracemalloc.start()
    try:
        grid, _ = to_grid(mapped, max_rows=40, max_cols=30, pool=Pool.RMS)  # ragged columns: 1001 = 30 x 34 - 19
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert grid.shape == (40, 30)
    # A band is read as float64 (2 x band), tiled once and reduced once (nanmean copies it): about
    # 3 float64 copies; padding, squaring out of place or two bands alive at once would make it 5 or more.
    assert peak < 4 * 2 * band, f"peak {peak / 2**20:.0f} MiB for float64 bands of {2 * band / 2**20:.0f} MiB"
