"""Where snapshots come from: a local path, or a run's artifacts in a real MLflow store."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from mlflow_weightviz.errors import SnapshotsNotFoundError, UsageError
from mlflow_weightviz.sources import LocalSource, MetricHistory, RunSource
from tests.helpers import log_folder, make_run, training_series, write_canonical


def test_local_source_names_and_fetches_the_path_itself(tmp_path: Path) -> None:
    write_canonical(tmp_path / "snaps", {"fc1": training_series(2)}, [0, 5])
    folder = LocalSource(tmp_path / "snaps")
    assert folder.name == "snaps"
    assert folder.fetch(tmp_path / "work") == tmp_path / "snaps"
    one = LocalSource(tmp_path / "snaps" / "step_5.npz")
    assert one.name == "step_5"


def test_local_fingerprint_follows_content_changes(tmp_path: Path) -> None:
    write_canonical(tmp_path / "w", {"fc1": training_series(2)}, [0, 1])
    src = LocalSource(tmp_path / "w")
    first = src.fingerprint()
    assert src.fingerprint() == first  # stable while nothing changes
    target = tmp_path / "w" / "step_1.npz"
    np.savez(target, fc1=np.ones((4, 6)))
    stat = target.stat()
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # same size, new time
    assert src.fingerprint() != first
    (tmp_path / "w" / "step_2.npz").write_bytes(target.read_bytes())
    assert len({first, src.fingerprint()}) == 2


def test_a_missing_local_path_is_a_clear_error(tmp_path: Path) -> None:
    src = LocalSource(tmp_path / "nope")
    with pytest.raises(SnapshotsNotFoundError, match="no snapshot file or folder at"):
        src.fingerprint()
    with pytest.raises(SnapshotsNotFoundError, match="no snapshot file or folder at"):
        src.fetch(tmp_path)


def test_run_source_lists_recursively_and_downloads_the_files(tmp_path: Path) -> None:
    run_id = make_run()
    write_canonical(tmp_path / "w" / "fc1", {"fc1": training_series(3)}, [0, 1, 2])
    write_canonical(tmp_path / "w" / "fc2", {"fc2": training_series(2)}, [0, 1])
    log_folder(run_id, tmp_path / "w", "weights")
    src = RunSource(MlflowClient(), run_id, "weights")
    assert src.name == "weights"
    files = src.files()
    assert sorted(p for p, _ in files) == ["weights/fc1/step_0.npz", "weights/fc1/step_1.npz",
                                           "weights/fc1/step_2.npz", "weights/fc2/step_0.npz",
                                           "weights/fc2/step_1.npz"]
    assert all(size > 0 for _, size in files)
    local = src.fetch(tmp_path / "work")
    assert sorted(p.relative_to(local).as_posix() for p in local.rglob("*.npz")) == [
        "fc1/step_0.npz", "fc1/step_1.npz", "fc1/step_2.npz", "fc2/step_0.npz", "fc2/step_1.npz"]
    assert (local / "fc2" / "step_1.npz").read_bytes() == (tmp_path / "w" / "fc2" / "step_1.npz").read_bytes()


def test_run_source_fingerprint_changes_when_files_are_added(tmp_path: Path) -> None:
    run_id = make_run()
    write_canonical(tmp_path / "w", {"fc1": training_series(2)}, [0, 1])
    log_folder(run_id, tmp_path / "w")
    src = RunSource(MlflowClient(), run_id, "weights")
    first = src.fingerprint()
    assert src.fingerprint() == first
    write_canonical(tmp_path / "more", {"fc1": training_series(1)}, [7])
    log_folder(run_id, tmp_path / "more")
    assert src.fingerprint() != first


def test_a_run_without_snapshots_at_the_source_is_a_clear_error(tmp_path: Path) -> None:
    run_id = make_run()
    src = RunSource(MlflowClient(), run_id, "checkpoints")
    with pytest.raises(SnapshotsNotFoundError, match=rf"run {run_id} has no snapshot artifacts at 'checkpoints'"):
        src.fetch(tmp_path)


def test_metric_history_captions_take_the_latest_value_at_or_before_a_step() -> None:
    history = MetricHistory.from_points("loss", [(0, 1, 1.0), (10, 2, 0.5), (10, 3, 0.25), (30, 4, 0.125)])
    assert history.steps == (0, 10, 30)
    assert history.at(10) == (10, 0.25)  # the later of two values at one step
    assert history.caption(10) == "loss = 0.25"
    assert history.caption(20) == "loss = 0.25 (step 10)"
    assert MetricHistory.from_points("acc", [(5, 1, 0.9)]).caption(2) == "acc: not logged before step 2"


def test_metric_history_of_a_real_run_and_an_unknown_metric() -> None:
    client = MlflowClient()
    run_id = make_run(finished=False)
    for step, value in ((0, 2.0), (4, 1.0)):
        client.log_metric(run_id, "loss", value, step=step)
    src = RunSource(client, run_id)
    assert src.metric_history("loss").caption(5) == "loss = 1 (step 4)"
    with pytest.raises(UsageError, match=r"has no metric 'acc' for --caption-metric; its metrics: loss"):
        src.metric_history("acc")
