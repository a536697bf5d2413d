"""`batch --scheduler`: the same work on a real Dask cluster (a LocalCluster of worker processes)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import mlflow_weightviz as wv
from mlflow_weightviz.automation import render_experiment
from tests.helpers import (
    artifact_files,
    log_folder,
    make_run,
    run_cli,
    training_series,
    with_overview,
    write_canonical,
)

pytestmark = [pytest.mark.server, pytest.mark.slow]

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """Two single-threaded worker processes on this machine; yields the scheduler address."""
    with distributed.LocalCluster(processes=True, n_workers=2, threads_per_worker=1, dashboard_address=None,
                                  host="127.0.0.1") as lc:
        yield str(lc.scheduler_address)


def snapshot_run(uri: str, experiment: str, folder: Path, seed: int) -> str:
    run_id = make_run(uri, experiment=experiment)
    write_canonical(folder / run_id, {"fc": training_series(3, (3, 4), seed=seed)}, [0, 1, 2])
    log_folder(run_id, folder / run_id, uri=uri)
    return run_id


def test_batch_on_a_local_cluster(cluster: str, server_uri: str, tmp_path: Path) -> None:
    exp = f"dask-{uuid.uuid4().hex[:8]}"
    good = {snapshot_run(server_uri, exp, tmp_path, seed=i) for i in range(3)}
    broken = make_run(server_uri, experiment=exp)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "step_1.npy").write_bytes(b"\x93NUMPY truncated")
    log_folder(broken, tmp_path / "bad", uri=server_uri)
    seen: list[tuple[int, int]] = []

    report = render_experiment(exp, wv.RenderOptions(max_frames=3), scheduler=cluster,
                               progress=lambda done, total: seen.append((done, total)))

    by_run = {o.run_id: o for o in report.outcomes}
    assert {r for r, o in by_run.items() if o.status == "rendered"} == good
    assert by_run[broken].status == "failed"
    assert "step_1.npy" in by_run[broken].reason
    assert by_run[broken].exit_code == 3
    assert seen[-1] == (4, 4)
    for run_id in good:
        assert artifact_files(run_id, "weightviz", uri=server_uri) == with_overview(["weightviz/fc.gif"])
    assert artifact_files(broken, "weightviz", uri=server_uri) == []


def test_cli_scheduler_from_the_environment(cluster: str, server_uri: str, tmp_path: Path) -> None:
    exp = f"dask-cli-{uuid.uuid4().hex[:8]}"
    runs = [snapshot_run(server_uri, exp, tmp_path, seed=i) for i in range(2)]
    env = {"MLFLOW_TRACKING_URI": server_uri, "DASK_SCHEDULER_ADDRESS": cluster}

    first = run_cli("batch", "-e", exp, "--max-frames", "3", env=env)
    assert first.code == 0, first.stderr
    assert first.stdout.strip().splitlines()[-1] == "batch: 2 rendered"
    again = run_cli("batch", "-e", exp, "--max-frames", "3", env=env)
    assert again.stdout.strip().splitlines()[-1] == "batch: 2 up to date"
    for run_id in runs:
        assert artifact_files(run_id, "weightviz", uri=server_uri) == with_overview(["weightviz/fc.gif"])

    both = run_cli("batch", "-e", exp, "--workers", "2", env=env)
    assert both.code == 2
    assert both.stderr.strip() == ("error: give --workers (local processes) or --scheduler (a Dask cluster), "
                                   "not both")


def test_unreachable_scheduler_is_one_clear_line(server_uri: str) -> None:
    exp = f"dask-down-{uuid.uuid4().hex[:8]}"
    make_run(server_uri, experiment=exp)
    res = run_cli("batch", "-e", exp, "--scheduler", "tcp://127.0.0.1:9", env={
        "MLFLOW_TRACKING_URI": server_uri, "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "2s"})
    assert res.code == 2
    assert res.stderr.startswith("error: cannot connect to the Dask scheduler at 'tcp://127.0.0.1:9'")
    assert len(res.stderr.strip().splitlines()) == 1


def test_without_dask_installed_names_the_extra(server_uri: str) -> None:
    exp = f"dask-missing-{uuid.uuid4().hex[:8]}"
    make_run(server_uri, experiment=exp)
    # Hide distributed from this one process, as if the extra were not installed.
    code = ("import sys; sys.modules['distributed'] = None; sys.argv[0] = 'mlflow-weightviz'; "
            "from mlflow_weightviz.cli import main; main()")
    proc = subprocess.run([sys.executable, "-c", code, "batch", "-e", exp, "--scheduler", "tcp://127.0.0.1:9"],
                          capture_output=True, text=True, env={**os.environ, "MLFLOW_TRACKING_URI": server_uri},
                          timeout=120, check=False)
    assert proc.returncode == 7
    assert proc.stderr.strip() == ("error: --scheduler needs Dask distributed: "
                                   "pip install 'mlflow-weightviz[dask]'")
