"""``--grid`` keeps its size budget: panels shrink and drop what cannot be read, full names go to a legend."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import mlflow_weightviz as wv
from mlflow_weightviz.grid import prepare_layer
from mlflow_weightviz.outputs.montage import _features
from mlflow_weightviz.snapshots import group_layers, read_snapshots
from tests.helpers import read_gif, run_cli, write_canonical

GPT2_PARTS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


def many_layers(folder: Path, count: int, shape: tuple[int, int] = (96, 80), steps: int = 3) -> list[str]:
    rng = np.random.default_rng(0)
    names = [f"transformer.h.{i // 4}.{GPT2_PARTS[i % 4]}.weight" for i in range(count)]
    series = {n: [rng.normal(0, 0.02 * (1 + i % 3), size=shape) for _ in range(steps)] for i, n in enumerate(names)}
    write_canonical(folder, series, list(range(0, 10 * steps, 10)))
    return names


@pytest.mark.slow
def test_fifty_layers_fit_the_default_budget(tmp_path: Path) -> None:
    names = many_layers(tmp_path / "w", 50)
    result = wv.render_file(tmp_path / "w", wv.RenderOptions(grid=True), out=tmp_path / "grid.gif")
    assert result.extras == ("grid-legend.json",)
    gif = read_gif(tmp_path / "grid.gif")
    width, height = gif.size
    assert width <= 2048, gif.size
    assert width * height <= 4_000_000, gif.size
    assert gif.n_frames == 3
    legend = json.loads((tmp_path / "grid-legend.json").read_text(encoding="utf-8"))
    assert legend["frame_size"] == [width, height]
    assert legend["mode"] == "compact"
    assert [p["layer"] for p in legend["panels"]] == names  # model order: h.2 before h.10, full names
    by_layer = {p["layer"]: p for p in legend["panels"]}
    label = by_layer["transformer.h.11.mlp.c_fc.weight"]["label"]
    assert label in ("h.11.mlp.c_fc", "transformer.h.11.mlp.c_fc.weight")
    for panel in legend["panels"]:  # every panel inside the frame, none overlapping the next in its row
        x, y, w, h = panel["box"]
        assert 0 <= x
        assert x + w <= width
        assert 0 <= y
        assert y + h <= height
    # panels differ between frames: the weights are drawn, not a blank page
    assert not np.array_equal(gif.frames[0], gif.frames[2])


def test_a_small_budget_drops_colorbars_for_one_shared_scale(tmp_path: Path) -> None:
    names = many_layers(tmp_path / "w", 12, shape=(24, 20), steps=2)
    wv.render_file(tmp_path / "w", wv.RenderOptions(grid=True, grid_max_width=400, grid_max_pixels=120_000),
                   output_dir=tmp_path / "o")
    gif = read_gif(tmp_path / "o" / "grid.gif")
    assert gif.size[0] <= 400
    assert gif.size[0] * gif.size[1] <= 120_000
    legend = json.loads((tmp_path / "o" / "grid-legend.json").read_text(encoding="utf-8"))
    assert legend["features"] == []  # too small for values, tick labels or colorbars
    assert list(legend["shared_scales"]) == ["RdBu_r"]  # one scale for the one kind of panel
    shared = legend["shared_scales"]["RdBu_r"]
    assert shared["layers"] == 12
    assert shared["min"] == -shared["max"]
    assert all(p["scale"] == [shared["min"], shared["max"]] for p in legend["panels"])
    # the labels are shortened in the middle to fit, the legend keeps the full names
    assert [p["layer"] for p in legend["panels"]] == names
    assert all(len(p["label"]) < len(p["layer"]) for p in legend["panels"])
    assert all(not p["label"].startswith("transformer.") for p in legend["panels"])


def test_panels_drop_values_then_tick_labels_then_colorbars(tmp_path: Path) -> None:
    write_canonical(tmp_path / "w", {"fc": [np.linspace(-1, 1, 48).reshape(6, 8)]}, [0])
    layers = group_layers(read_snapshots(tmp_path / "w"))
    prepared = prepare_layer("fc", layers["fc"], wv.RenderOptions(), tmp_path)
    seen = [_features(width, [prepared.info.grid], [prepared], None) for width in range(700, 40, -10)]
    order = list(dict.fromkeys(seen))
    assert order == [("annotations", "ticks", "colorbars"), ("ticks", "colorbars"), ("colorbars",), ()]
    assert _features(700, [prepared.info.grid], [prepared], False) == ("ticks", "colorbars")  # --no-annotate


def test_a_grid_that_fits_keeps_the_layers_own_heatmaps(tmp_path: Path) -> None:
    write_canonical(tmp_path / "w", {"a": [np.eye(4), np.eye(4) * 2], "b": [np.ones((3, 5)), np.ones((3, 5)) * 3]},
                    [0, 1])
    wv.render_file(tmp_path / "w", wv.RenderOptions(grid=True), output_dir=tmp_path / "o")
    legend = json.loads((tmp_path / "o" / "grid-legend.json").read_text(encoding="utf-8"))
    assert legend["mode"] == "full"
    assert legend["shared_scales"] == {}


def test_bad_budgets_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(wv.UsageError, match="grid_max_width must be a whole number of at least 320"):
        wv.RenderOptions(grid=True, grid_max_width=100)
    with pytest.raises(wv.UsageError, match="grid_max_pixels"):
        wv.RenderOptions(grid_max_pixels=0)
    write_canonical(tmp_path / "w", {"fc": [np.eye(3)]}, [0])
    cli = run_cli("render-file", str(tmp_path / "w"), "--grid", "--grid-max-width", "10", cwd=tmp_path)
    assert cli.code == 2
    assert "grid_max_width" in cli.stderr
    assert "Traceback" not in cli.stderr


def test_the_budget_changes_the_fingerprint_of_grid_renders_only() -> None:
    plain = wv.RenderOptions().fingerprint_fields()
    assert "grid_budget" not in plain
    assert wv.RenderOptions(grid_max_width=1000).fingerprint_fields() == plain  # no grid: the budget does nothing
    assert wv.RenderOptions(grid=True).fingerprint_fields()["grid_budget"] == [2048, 4_000_000]
