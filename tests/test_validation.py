"""Validate before working: bad numbers, paths, run ids and --since are usage errors before anything is done."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

import mlflow_weightviz as wv
from mlflow_weightviz.automation import parse_since, render_experiment, watch_experiment
from tests.helpers import (
    artifact_files,
    assert_one_line_error,
    log_folder,
    make_run,
    run_cli,
    training_series,
    write_canonical,
)


@pytest.mark.parametrize("flat", [
    {"fps": math.nan}, {"fps": math.inf}, {"fps": -3.0}, {"fps": 1e-4},
    {"frame_ms": -40}, {"frame_ms": 10**7}, {"frame_ms": math.nan},
    {"hold_last_ms": 700_000}, {"hold_last_ms": math.inf}, {"hold_last_ms": -10},
    {"vmin": math.nan}, {"vmax": -math.inf}, {"vmin": math.inf, "vmax": math.inf},
    {"dpi": 3}, {"dpi": 19}, {"dpi": 5000}, {"dpi": math.nan},
    {"max_rows": 0}, {"max_cols": 100_000}, {"max_rows": math.nan},
])
def test_nan_and_out_of_range_numbers_are_usage_errors(flat: dict[str, float]) -> None:
    with pytest.raises(wv.UsageError, match="must be"):
        wv.RenderOptions(**flat)


def test_numbers_at_the_ends_of_their_ranges_are_accepted() -> None:
    options = wv.RenderOptions(dpi=20, max_rows=512, max_cols=1, hold_last_ms=655_350, vmin=-1e30, vmax=1e30)
    assert (options.dpi, options.max_rows, options.hold_last_ms) == (20, 512, 655_350)
    assert wv.RenderOptions(fps=0.002).frame_ms == 500_000
    assert wv.RenderOptions(dpi=600, frame_ms=655_350).frame_ms == 655_350


@pytest.mark.parametrize("path", ["../up", "/root/abs", ".", "x//y", "", "a/./b", "a/..", "c\\d", "tab\there"])
def test_bad_artifact_paths_are_refused_before_any_work(tmp_path: Path, path: str) -> None:
    run_id = make_run()
    write_canonical(tmp_path / "w", {"k": training_series(2, (2, 3))}, [0, 1])
    log_folder(run_id, tmp_path / "w")
    with pytest.raises(wv.UsageError, match="--artifact-path must be a relative artifact folder"):
        wv.render_run(run_id, artifact_path=path)
    with pytest.raises(wv.UsageError, match="--source must be a relative artifact folder"):
        wv.render_run(run_id, source=path)
    with pytest.raises(wv.UsageError, match="--artifact-path must be"):
        render_experiment("tests", artifact_path=path)
    with pytest.raises(wv.UsageError, match="--source must be"):
        watch_experiment("tests", source=path, once=True)
    assert artifact_files(run_id) == ["weights/step_0.npz", "weights/step_1.npz"]
    assert [k for k in MlflowClient().get_run(run_id).data.tags if k.startswith("weightviz.")] == []


def test_a_bad_artifact_path_leaves_an_up_to_date_run_up_to_date(tmp_path: Path) -> None:
    run_id = make_run()
    write_canonical(tmp_path / "w", {"k": training_series(2, (2, 3))}, [0, 1])
    log_folder(run_id, tmp_path / "w")
    assert wv.render_run(run_id, artifact_path="gifs/").status == "rendered"  # a trailing slash is fine
    before = MlflowClient().get_run(run_id).data.tags
    cli = run_cli("render", run_id, "--artifact-path", "gifs/../../elsewhere", "--force", cwd=tmp_path)
    assert_one_line_error(cli, 2, "--artifact-path must be a relative artifact folder", "gifs/../../elsewhere")
    assert MlflowClient().get_run(run_id).data.tags == before
    assert wv.render_run(run_id, artifact_path="gifs").status == "up_to_date"


@pytest.mark.parametrize("interval", [math.nan, math.inf, 0.0, -5.0, 0.01, 1e9])
def test_watch_interval_out_of_range(interval: float) -> None:
    with pytest.raises(wv.UsageError, match="--interval must be from 0.1 to 604800 seconds"):
        watch_experiment("tests", interval=interval, once=True)


@pytest.mark.parametrize("since", ["8000-01-01", "2400-06-30T10:00", "123456789012345678901234567890d",
                                   "1969-06-01T00:00:00Z"])
def test_since_outside_what_the_store_holds_is_a_usage_error(since: str) -> None:
    with pytest.raises(wv.UsageError, match="--since must lie between 1970-01-01 and now"):
        parse_since(since)
    with pytest.raises(wv.UsageError, match="--since must"):
        watch_experiment("tests", since=since, once=True)


def test_since_as_a_datetime_is_checked_too() -> None:
    with pytest.raises(wv.UsageError, match="--since must lie between"):
        watch_experiment("tests", since=datetime(7777, 1, 1, tzinfo=UTC), once=True)


def test_malformed_run_id_is_exit_4_and_a_refused_source_exit_2(tmp_path: Path) -> None:
    run_id = make_run()
    assert_one_line_error(run_cli("render", "zz-not/a-run", cwd=tmp_path), 4, "zz-not/a-run")
    with pytest.raises(wv.RunNotFoundError):
        wv.render_run("###")
    cli = run_cli("render", run_id, "--source", "w/../../../etc", cwd=tmp_path)
    assert_one_line_error(cli, 2, "--source must be a relative artifact folder")


@pytest.mark.parametrize(("args", "fragment"), [
    (["--fps", "-inf"], "fps must be a finite number"),
    (["--dpi", "2"], "dpi must be from 20 to 600; got 2"),
    (["--hold-last-ms", "999999"], "hold_last_ms must be from 0 to 655350"),
    (["--vmax", "nan"], "vmax must be a finite number"),
])
def test_cli_bad_numbers_are_exit_2(tmp_path: Path, args: list[str], fragment: str) -> None:
    import numpy as np

    np.save(tmp_path / "w.npy", np.stack(training_series(2, (3, 2))))
    assert_one_line_error(run_cli("render-file", "w.npy", *args, cwd=tmp_path), 2, fragment)


def test_cli_watch_interval_nan_and_since_far_future_are_exit_2(tmp_path: Path) -> None:
    make_run()
    assert_one_line_error(run_cli("watch", "-e", "tests", "--interval", "NaN", cwd=tmp_path, timeout=60), 2,
                          "--interval must be from 0.1")
    assert_one_line_error(run_cli("watch", "-e", "tests", "--once", "--since", "5000-02-02", cwd=tmp_path,
                                  timeout=60), 2, "--since must lie between")
