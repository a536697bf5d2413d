"""The real command line in a subprocess: reports, exit codes, one-line errors, nothing logged on failure."""

from __future__ import annotations

import pickle
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import free_port
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


def assert_nothing_logged(run_id: str) -> None:
    assert artifact_files(run_id, "weightviz") == []
    tags = MlflowClient().get_run(run_id).data.tags
    assert [k for k in tags if k.startswith("weightviz.")] == []
    assert MlflowClient().get_run(run_id).info.status == "FINISHED"


def corrupt_file(folder: Path) -> None:
    write_canonical(folder, {"fc1": training_series(2)}, [0, 1])
    np.save(folder / "step_2.npy", np.zeros((4, 6)))
    data = (folder / "step_2.npy").read_bytes()
    (folder / "step_2.npy").write_bytes(data[: len(data) // 2])


def shapes_change(folder: Path) -> None:
    folder.mkdir(parents=True)
    np.save(folder / "step_1.npy", np.zeros((4, 6)))
    np.save(folder / "step_2.npy", np.zeros((6, 4)))


def a_pickle(folder: Path) -> None:
    folder.mkdir(parents=True)
    (folder / "animation_data.obj").write_bytes(pickle.dumps(training_series(3)))


def canonical(folder: Path) -> None:
    write_canonical(folder, {"fc1": training_series(3), "fc2": training_series(3, (2, 5))}, [0, 1, 2])


@pytest.mark.slow
@pytest.mark.parametrize(("writer", "args", "code", "fragments"), [
    (canonical, ["--source", "nothing/here"], 3, ["no snapshot artifacts at 'nothing/here'", "--source"]),
    (corrupt_file, [], 3, ["step_2.npy", "truncated"]),
    (shapes_change, [], 3, ["changes shape", "(4, 6)", "(6, 4)"]),
    (a_pickle, [], 3, ["--allow-pickle", "arbitrary code"]),
    (canonical, ["--out", "one.gif"], 2, ["--out writes one GIF but 2 layers were found (fc1, fc2)"]),
], ids=["no-snapshots", "unreadable-file", "shape-change", "pickle-without-flag", "out-with-layers"])
def test_render_errors_are_one_line_with_an_exit_code_and_log_nothing(
        tmp_path: Path, writer: Callable[[Path], None], args: list[str], code: int, fragments: list[str]) -> None:
    run_id = make_run()
    writer(tmp_path / "w")
    log_folder(run_id, tmp_path / "w")
    cli = run_cli("render", run_id, *args, cwd=tmp_path)
    assert_one_line_error(cli, code, *fragments)
    assert cli.stdout == ""
    assert_nothing_logged(run_id)
    assert not (tmp_path / "one.gif").exists()


@pytest.mark.slow
def test_unknown_run(tmp_path: Path) -> None:
    make_run()  # the store exists and answers
    assert_one_line_error(run_cli("render", "0123456789abcdef0123456789abcdef"), 4,
                          "0123456789abcdef0123456789abcdef", "not found")


@pytest.mark.parametrize(("args", "fragment"), [
    (["--vmin", "2", "--vmax", "1"], "vmin must be below vmax; got vmin=2.0 and vmax=1.0"),
    (["--cmap", "no-such-map"], "unknown colormap 'no-such-map'"),
    (["--fmt", "{y}"], "fmt must be a format pattern using {x}"),
    (["--max-frames", "1"], "max_frames must be at least 2"),
    (["--out", "a.gif", "--output-dir", "gifs"], "give either --out (one layer) or --output-dir, not both"),
])
def test_bad_option_values_are_usage_errors(tmp_path: Path, args: list[str], fragment: str) -> None:
    np.save(tmp_path / "w.npy", np.stack(training_series(2)))
    assert_one_line_error(run_cli("render-file", "w.npy", *args, cwd=tmp_path), 2, fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.npy", "work"]


def test_unreachable_server_fails_fast_with_one_line() -> None:
    port = free_port()  # nothing listens there
    cli = run_cli("render", "0123456789abcdef0123456789abcdef", "--tracking-uri", f"http://127.0.0.1:{port}",
                  timeout=120)
    assert_one_line_error(cli, 5, "the tracking server cannot be reached", f"127.0.0.1:{port}")


@pytest.mark.slow
def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    run_id = make_run()
    corrupt_file(tmp_path / "w")
    log_folder(run_id, tmp_path / "w")
    cli = run_cli("render", run_id, "--debug")
    assert cli.code != 0
    assert "Traceback (most recent call last)" in cli.stderr
    assert "SnapshotFormatError" in cli.stderr
    assert_nothing_logged(run_id)


@pytest.mark.slow
def test_render_reports_then_is_up_to_date_then_force_and_no_log(tmp_path: Path) -> None:
    run_id = make_run()
    canonical(tmp_path / "w")
    log_folder(run_id, tmp_path / "w")
    first = run_cli("render", run_id, "--quiet")
    assert first.code == 0, first.stderr
    assert first.stdout.splitlines() == ["fc1: 3 frames, grid 4×6 → weightviz/fc1.gif",
                                         "fc2: 3 frames, grid 2×5 → weightviz/fc2.gif",
                                         "also: overview.html, overview.png"]
    assert first.stderr == ""
    again = run_cli("render", run_id)
    assert again.code == 0
    assert "is up to date" in again.stdout
    assert "--force" in again.stdout
    forced = run_cli("render", run_id, "--force", "--layer", "fc2", "--output-dir", str(tmp_path / "gifs"))
    assert forced.code == 0, forced.stderr
    assert forced.stdout.strip().splitlines() == [
        f"fc2: 3 frames, grid 2×5 → weightviz/fc2.gif, {tmp_path / 'gifs' / 'fc2.gif'}",
        "also: overview.html, overview.png"]
    assert (tmp_path / "gifs" / "overview.png").is_file()  # the local copies get the overview too
    local = run_cli("render", run_id, "--no-log", "--layer", "fc1", "--out", str(tmp_path / "fc1.gif"))
    assert local.code == 0, local.stderr
    assert read_gif(tmp_path / "fc1.gif").n_frames == 3
    assert MlflowClient().get_run(run_id).data.tags["weightviz.layers"] == '["fc2"]'  # --no-log left tags alone
    assert MlflowClient().get_run(run_id).info.status == "FINISHED"


@pytest.mark.slow
def test_inspect_prints_a_table_of_layers(tmp_path: Path) -> None:
    run_id = make_run()
    write_canonical(tmp_path / "w", {"fc1": [np.full((4, 6), -0.5), np.full((4, 6), 0.25)]}, [10, 200])
    log_folder(run_id, tmp_path / "w")
    cli = run_cli("inspect", run_id)
    assert cli.code == 0, cli.stderr
    row = next(line for line in cli.stdout.splitlines() if "fc1" in line)
    assert [c.strip() for c in row.split("│")[1:-1]] == [
        "fc1", "4×6", "float64", "2", "10", "200", "-0.5", "0.25"]
    assert artifact_files(run_id, "weightviz") == []  # inspect never writes


def test_render_file_on_a_pickled_list_needs_the_flag(tmp_path: Path) -> None:
    frames = [f.astype(np.float32) for f in training_series(17, (5, 7))]
    with (tmp_path / "animation_data.pkl").open("wb") as fh:
        pickle.dump(frames, fh)  # ../shared/bench/make_data.py's format: a list of 2-D float32 arrays
    refused = run_cli("render-file", "animation_data.pkl", cwd=tmp_path)
    assert_one_line_error(refused, 3, "--allow-pickle", "arbitrary code")
    assert list(tmp_path.glob("*.gif")) == []
    cli = run_cli("render-file", "animation_data.pkl", "--allow-pickle", "--out", "training_weights.gif",
                  cwd=tmp_path)
    assert cli.code == 0, cli.stderr
    assert read_gif(tmp_path / "training_weights.gif").n_frames == 17


def test_frame_ms_under_20_is_raised_with_a_warning_line(tmp_path: Path) -> None:
    np.save(tmp_path / "w.npy", np.stack(training_series(4, (2, 3))))
    cli = run_cli("render-file", "w.npy", "--frame-ms", "5", "--hold-last-ms", "0", "--max-frames", "3",
                  "--out", "w.gif", cwd=tmp_path)
    assert cli.code == 0, cli.stderr
    assert cli.stderr.strip().splitlines() == [
        "warning: frame delay 5 ms raised to 20 ms: browsers play GIF delays of 10 ms or less as 100 ms"]
    gif = read_gif(tmp_path / "w.gif")
    assert gif.durations == [20, 20, 20]


def test_console_script_and_python_m_agree() -> None:
    script = Path(sys.executable).parent / "mlflow-weightviz"
    if not script.exists():
        pytest.skip("the package is not installed with its console script in this environment")
    import subprocess

    from mlflow_weightviz import __version__

    out = subprocess.run([str(script), "--version"], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == f"mlflow-weightviz {__version__}"
    assert run_cli("--version").stdout == out.stdout


def test_command_environment_is_restored_and_a_crash_is_exit_70(monkeypatch: pytest.MonkeyPatch) -> None:
    import logging
    import os

    import typer

    from mlflow_weightviz import cli
    from mlflow_weightviz._tracking import HTTP_DEFAULTS

    keys = [*HTTP_DEFAULTS, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "MLFLOW_LOGGING_LEVEL"]
    for key in keys:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "7")  # the user's own value is kept
    level = logging.getLogger("mlflow").level
    seen: list[dict[str, str | int]] = []

    def command() -> None:
        with cli._errors(debug=False):
            seen.append({**{k: os.environ.get(k, "") for k in keys}, "level": logging.getLogger("mlflow").level})
            msg = "boom"
            raise RuntimeError(msg)

    for _ in range(2):  # twice in one process, as a test or a notebook would
        with pytest.raises(typer.Exit) as crash:
            command()
        assert crash.value.exit_code == 70
        assert seen[-1]["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == HTTP_DEFAULTS["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
        assert seen[-1]["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"
        assert seen[-1]["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"
        assert seen[-1]["level"] == logging.WARNING
        assert [k for k in keys if k in os.environ] == ["MLFLOW_HTTP_REQUEST_TIMEOUT"]
        assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"
        assert logging.getLogger("mlflow").level == level


def test_cli_in_process_leaves_no_environment_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from typer.testing import CliRunner

    from mlflow_weightviz.cli import app

    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
    before = dict(os.environ)
    result = CliRunner().invoke(app, ["render-file", str(tmp_path / "missing.npz")])
    assert result.exit_code == 3, result.output
    assert dict(os.environ) == before


def test_a_format_pattern_that_fails_on_a_number_is_a_usage_error(tmp_path: Path) -> None:
    np.save(tmp_path / "w.npy", np.zeros((2, 3, 3)))
    for fmt in ("{x[0]}", "{x.foo}"):
        cli = run_cli("render-file", "w.npy", "--fmt", fmt, cwd=tmp_path)
        assert_one_line_error(cli, 2, "fmt must be a format pattern")


@pytest.mark.parametrize(("size", "fragment"), [
    ("1500", "size must be WIDTHxHEIGHT in pixels, such as 1500x1000; got '1500'"),
    ("0x100", "size must be from 32 to 16384 pixels a side; got 0x100"),
    ("-5x100", "size must be from 32 to 16384 pixels a side; got -5x100"),
    ("20000x100", "size must be from 32 to 16384 pixels a side; got 20000x100"),
    ("axb", "size must be WIDTHxHEIGHT in pixels"),
    ("40x40", "size 40x40 is too small for a 4x6 grid"),
])
def test_size_out_of_range_is_a_usage_error(tmp_path: Path, size: str, fragment: str) -> None:
    np.save(tmp_path / "w.npy", np.stack(training_series(2)))
    cli = run_cli("render-file", "w.npy", "--size", size, "--out", "w.gif", cwd=tmp_path)
    assert_one_line_error(cli, 2, fragment)
    assert not (tmp_path / "w.gif").exists()


def test_size_gives_the_original_look_from_the_command_line(tmp_path: Path) -> None:
    """The original script's frame: 1500x1000 px, 9 decimals, YlGn 0-0.05, its labels."""
    np.save(tmp_path / "w.npy", np.stack([np.abs(f) * 0.01 for f in training_series(3, (8, 12))]))
    cli = run_cli("render-file", "w.npy", "--size", "1500x1000", "--fmt", "{x:.9f}", "--cmap", "YlGn",
                  "--vmin", "0", "--vmax", "0.05", "--row-label", "embed_dim_", "--col-label", "orig_dim_",
                  "--out", "w.gif", cwd=tmp_path)
    assert cli.code == 0, cli.stderr
    gif = read_gif(tmp_path / "w.gif")
    assert gif.size == (1500, 1000)
    assert gif.n_frames == 3
    odd = run_cli("render-file", "w.npy", "--size", "301x200", "--out", "odd.gif", cwd=tmp_path)
    assert odd.code == 0, odd.stderr
    assert read_gif(tmp_path / "odd.gif").size == (301, 200)
    mp4 = run_cli("render-file", "w.npy", "--size", "301x200", "--format", "mp4", "--output-dir", "v", cwd=tmp_path)
    assert_one_line_error(mp4, 2, "an MP4 (H.264) needs even frame sides; got size 301x200")
