"""`batch`: render a whole experiment against a real `mlflow server`."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

import mlflow_weightviz as wv
from mlflow_weightviz.automation import render_experiment
from tests.conftest import MlflowServer
from tests.helpers import (
    artifact_files,
    log_folder,
    make_run,
    read_gif,
    run_cli,
    training_series,
    with_overview,
    write_canonical,
)

pytestmark = pytest.mark.server

OPTS = ["--max-frames", "3", "--no-annotate"]


def snapshot_run(uri: str, experiment: str, folder: Path, *, status: str | None = "FINISHED", seed: int = 0,
                 steps: int = 4) -> str:
    """A run with a tiny canonical snapshot series; ``status=None`` leaves it RUNNING."""
    from mlflow.tracking import MlflowClient

    run_id = make_run(uri, finished=False, experiment=experiment)
    write_canonical(folder / run_id, {"fc": training_series(steps, (3, 4), seed=seed)}, list(range(steps)))
    log_folder(run_id, folder / run_id, uri=uri)
    if status is not None:
        MlflowClient(uri).set_terminated(run_id, status)
    return run_id


def broken_run(uri: str, experiment: str, folder: Path) -> str:
    run_id = make_run(uri, experiment=experiment)
    bad = folder / f"bad-{run_id}"
    bad.mkdir(parents=True)
    (bad / "step_0.npz").write_bytes(b"PK\x03\x04 this is not a zip archive")
    log_folder(run_id, bad, uri=uri)
    return run_id


def stored_gifs(server: MlflowServer, run_id: str) -> dict[str, int]:
    """The GIF files of a run in the server's artifact store, with their modification times."""
    return {str(p.relative_to(server.root)): p.stat().st_mtime_ns
            for p in (server.root / "artifacts").rglob("*.gif") if run_id in p.parts}


def tags(uri: str, run_id: str) -> dict[str, str]:
    from mlflow.tracking import MlflowClient

    return dict(MlflowClient(uri).get_run(run_id).data.tags)


def status(uri: str, run_id: str) -> str:
    from mlflow.tracking import MlflowClient

    return str(MlflowClient(uri).get_run(run_id).info.status)


@pytest.mark.slow
def test_batch_mixed_experiment_then_rerun_does_nothing(server_uri: str, mlflow_server: MlflowServer,
                                                        tmp_path: Path) -> None:
    exp = f"mixed-{uuid.uuid4().hex[:8]}"
    done = snapshot_run(server_uri, exp, tmp_path, seed=1)
    assert wv.render_run(done, wv.RenderOptions(max_frames=3, annotate=False)).status == "rendered"
    before = stored_gifs(mlflow_server, done)
    fresh = snapshot_run(server_uri, exp, tmp_path, seed=2)
    killed = snapshot_run(server_uri, exp, tmp_path, status="KILLED", seed=3)
    empty = make_run(server_uri, experiment=exp)
    broken = broken_run(server_uri, exp, tmp_path)
    running = snapshot_run(server_uri, exp, tmp_path, status=None, seed=4)

    res = run_cli("batch", "--experiment", exp, "--workers", "2", *OPTS, env={"MLFLOW_TRACKING_URI": server_uri})

    assert res.code == 1, res.stderr
    assert "Traceback" not in res.stderr
    assert res.stdout.strip().splitlines()[-1] == (
        "batch: 2 rendered, 1 up to date, 1 no snapshots, 1 running (skipped), 1 failed")
    assert re.search(r"│ rendered\s+│\s+2 │", res.stdout)
    failed_table = res.stdout.split("failed runs", 1)[1]
    assert broken in failed_table
    assert "step_0.npz" in failed_table
    for run_id in (fresh, killed):
        assert artifact_files(run_id, "weightviz", uri=server_uri) == with_overview(["weightviz/fc.gif"])
        assert tags(server_uri, run_id)["weightviz.status"] == "rendered"
    for run_id in (empty, broken, running):
        assert artifact_files(run_id, "weightviz", uri=server_uri) == []
        assert "weightviz.fingerprint" not in tags(server_uri, run_id)
    # No command ever changes a run's status, and no claim is left behind.
    assert [status(server_uri, r) for r in (done, fresh, killed, empty, broken, running)] == [
        "FINISHED", "FINISHED", "KILLED", "FINISHED", "FINISHED", "RUNNING"]
    assert all("weightviz.claim" not in tags(server_uri, r) for r in (done, fresh, killed, broken))
    assert stored_gifs(mlflow_server, done) == before

    fresh_gifs = stored_gifs(mlflow_server, fresh)
    fresh_tags = tags(server_uri, fresh)
    again = run_cli("batch", "--experiment", exp, *OPTS, env={"MLFLOW_TRACKING_URI": server_uri})
    assert again.code == 1, again.stderr
    assert again.stdout.strip().splitlines()[-1] == (
        "batch: 3 up to date, 1 no snapshots, 1 running (skipped), 1 failed")
    assert stored_gifs(mlflow_server, fresh) == fresh_gifs  # not uploaded again
    assert tags(server_uri, fresh) == fresh_tags


def test_dry_run_changes_nothing(server_uri: str, tmp_path: Path) -> None:
    exp = f"dry-{uuid.uuid4().hex[:8]}"
    runs = [snapshot_run(server_uri, exp, tmp_path, seed=i) for i in range(2)]
    before = {r: tags(server_uri, r) for r in runs}

    res = run_cli("batch", "-e", exp, "--dry-run", *OPTS, env={"MLFLOW_TRACKING_URI": server_uri})

    assert res.code == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "dry run: 2 would render"
    for r in runs:
        assert re.search(rf"{r}\s+│.*│ would render", res.stdout)
        assert artifact_files(r, "weightviz", uri=server_uri) == []
        assert tags(server_uri, r) == before[r]


def test_pages_through_search_results_and_max_runs(server_uri: str, tmp_path: Path) -> None:
    exp = f"pages-{uuid.uuid4().hex[:8]}"
    runs = {snapshot_run(server_uri, exp, tmp_path, seed=i, steps=2) for i in range(5)}
    report = render_experiment(exp, dry_run=True, page_size=2)
    assert {o.run_id for o in report.outcomes} == runs
    assert report.counts()["would_render"] == 5
    limited = render_experiment(exp, dry_run=True, page_size=2, max_runs=3)
    assert len(limited.outcomes) == 3


def test_include_running_renders_without_touching_status(server_uri: str, tmp_path: Path) -> None:
    exp = f"running-{uuid.uuid4().hex[:8]}"
    running = snapshot_run(server_uri, exp, tmp_path, status=None)
    skipped = render_experiment(exp, wv.RenderOptions(max_frames=3))
    assert [(o.run_id, o.status) for o in skipped.outcomes] == [(running, "running")]

    report = render_experiment(exp, wv.RenderOptions(max_frames=3), include_running=True)

    assert [(o.run_id, o.status, o.frames) for o in report.outcomes] == [(running, "rendered", 3)], report
    assert status(server_uri, running) == "RUNNING"
    from mlflow.tracking import MlflowClient

    (tmp_path / "copy").mkdir()
    local = MlflowClient(server_uri).download_artifacts(running, "weightviz/fc.gif", str(tmp_path / "copy"))
    assert read_gif(Path(local)).n_frames == 3


def test_filter_selects_runs(server_uri: str, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    exp = f"filter-{uuid.uuid4().hex[:8]}"
    a, b = (snapshot_run(server_uri, exp, tmp_path, seed=i, steps=2) for i in range(2))
    MlflowClient(server_uri).set_tag(a, "team", "vision")
    report = render_experiment(exp, dry_run=True, filter_string="tags.team = 'vision'")
    assert [o.run_id for o in report.outcomes] == [a]
    assert b not in {o.run_id for o in report.outcomes}


def test_bad_input_is_one_clear_line(server_uri: str) -> None:
    res = run_cli("batch", "-e", "no-such-experiment-anywhere", env={"MLFLOW_TRACKING_URI": server_uri})
    assert res.code == 4
    assert res.stderr.strip() == "error: no experiment named or with id 'no-such-experiment-anywhere'"
    exp = f"bad-{uuid.uuid4().hex[:8]}"
    make_run(server_uri, experiment=exp)
    with pytest.raises(wv.UsageError, match="bad run filter"):
        render_experiment(exp, filter_string="params.x === 1")
    with pytest.raises(wv.UsageError, match="not both"):
        render_experiment(exp, workers=2, scheduler="tcp://127.0.0.1:1")
    with pytest.raises(wv.UsageError, match="at least 1"):
        render_experiment(exp, workers=0)


def test_stop_request_starts_no_new_run(server_uri: str, tmp_path: Path) -> None:
    import threading

    exp = f"stop-{uuid.uuid4().hex[:8]}"
    runs = {snapshot_run(server_uri, exp, tmp_path, seed=i, steps=2) for i in range(3)}
    stop = threading.Event()

    def progress(done: int, total: int) -> None:
        if done >= 1:  # as a signal handler would, once the first run is done
            stop.set()

    report = render_experiment(exp, wv.RenderOptions(max_frames=2), progress=progress, stop=stop)

    assert report.interrupted
    assert sorted(o.status for o in report.outcomes) == ["cancelled", "cancelled", "rendered"]
    assert {o.run_id for o in report.outcomes} == runs
    for o in report.outcomes:
        expected = with_overview(["weightviz/fc.gif"]) if o.status == "rendered" else []
        assert artifact_files(o.run_id, "weightviz", uri=server_uri) == expected
