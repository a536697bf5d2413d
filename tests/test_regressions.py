"""Regression tests for defects found in review, each named after what must hold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import mlflow_weightviz as wv
from mlflow_weightviz.grid import prepare_layer
from mlflow_weightviz.snapshots import Snapshot, group_layers, read_snapshots
from tests.helpers import (
    artifact_files,
    assert_one_line_error,
    log_folder,
    make_run,
    read_gif,
    run_cli,
    training_series,
    write_canonical,
)


@pytest.mark.slow
def test_an_up_to_date_run_still_writes_the_local_copies_asked_for(tmp_path: Path) -> None:
    run_id = make_run()
    write_canonical(tmp_path / "w", {"fc1": training_series(3)}, [0, 1, 2])
    log_folder(run_id, tmp_path / "w")
    assert wv.render_run(run_id).status == "rendered"
    before = artifact_files(run_id, "weightviz")
    again = wv.render_run(run_id, output_dir=tmp_path / "copies")
    assert again.status == "up_to_date"
    assert read_gif(tmp_path / "copies" / "fc1.gif").n_frames == 3
    assert artifact_files(run_id, "weightviz") == before


def test_a_one_sided_vmin_beyond_the_data_keeps_the_scale_the_right_way_round(tmp_path: Path) -> None:
    snaps = [Snapshot("l", i, f"a[{i}]", lambda v=v: np.full((2, 2), v)) for i, v in enumerate((0.0, 0.5))]
    low = prepare_layer("l", snaps, wv.RenderOptions(vmin=5.0), tmp_path)
    assert low.vmin == 5.0
    assert low.vmax > low.vmin
    high = prepare_layer("l", snaps, wv.RenderOptions(vmax=-1.0), tmp_path)
    assert high.vmax == -1.0
    assert high.vmin < high.vmax


def test_a_digit_in_a_folder_name_is_not_a_step_for_a_stacked_array(tmp_path: Path) -> None:
    (tmp_path / "w" / "fc1").mkdir(parents=True)
    np.save(tmp_path / "w" / "fc1" / "stack.npy", np.zeros((5, 3, 4), np.float32))
    layers = group_layers(read_snapshots(tmp_path / "w"))
    assert [s.step for s in layers["fc1"]] == [0, 1, 2, 3, 4]
    assert layers["fc1"][0].load().shape == (3, 4)


def test_a_step_file_named_on_its_own_is_one_step_not_a_stack(tmp_path: Path) -> None:
    path = tmp_path / "step_10.npz"
    np.savez(path, conv1=np.zeros((8, 3, 3, 3)), conv2=np.zeros((8, 8, 3, 3)))
    layers = group_layers(read_snapshots(path))
    assert {name: [s.step for s in snaps] for name, snaps in layers.items()} == {"conv1": [10], "conv2": [10]}


def test_a_format_pattern_that_fails_on_a_number_is_a_usage_error(tmp_path: Path) -> None:
    np.save(tmp_path / "w.npy", np.zeros((2, 3, 3)))
    for fmt in ("{x[0]}", "{x.foo}"):
        cli = run_cli("render-file", "w.npy", "--fmt", fmt, cwd=tmp_path)
        assert_one_line_error(cli, 2, "fmt must be a format pattern")


def test_out_takes_the_extension_of_the_format_written(tmp_path: Path) -> None:
    np.save(tmp_path / "w.npy", np.stack(training_series(3)))
    wv.render_file(tmp_path / "w.npy", wv.RenderOptions(formats=("html",)), out=tmp_path / "fc1.gif")
    assert (tmp_path / "fc1.html").read_text().lstrip().lower().startswith("<!doctype html")
    assert not (tmp_path / "fc1.gif").exists()


def test_a_stacked_npz_named_on_its_own_is_a_stack_even_with_digits_in_its_name(tmp_path: Path) -> None:
    path = tmp_path / "data_8x12_300_0.npz"
    np.savez(path, weights=np.zeros((4, 8, 12), np.float32))
    layers = group_layers(read_snapshots(path))
    assert [s.step for s in layers["weights"]] == [0, 1, 2, 3]
