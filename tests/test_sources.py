"""Where snapshots come from: a local path, or a run's artifacts in a real MLflow store."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from mlflow_weightviz.errors import SnapshotsNotFoundError, UsageError, WeightvizError
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


def test_run_source_fetches_only_the_files_under_its_path(tmp_path: Path) -> None:
    run_id = make_run()
    write_canonical(tmp_path / "w", {"fc1": training_series(2)}, [0, 1])
    log_folder(run_id, tmp_path / "w", "weights")
    log_folder(run_id, tmp_path / "w", "weights_old")  # a sibling sharing the prefix
    log_folder(run_id, tmp_path / "w", "weightviz")
    work = tmp_path / "fetched"  # (tmp_path / "work" holds the store)
    local = RunSource(MlflowClient(), run_id, "weights/").fetch(work)
    assert local == work / "source" / "weights"
    assert sorted(p.relative_to(work).as_posix() for p in work.rglob("*") if p.is_file()) == [
        "source/weights/step_0.npz", "source/weights/step_1.npz"]
    one = RunSource(MlflowClient(), run_id, "weights_old/step_1.npz").fetch(tmp_path / "one")
    assert one.read_bytes() == (tmp_path / "w" / "step_1.npz").read_bytes()
    assert [p.name for p in (tmp_path / "one").rglob("*") if p.is_file()] == ["step_1.npz"]


def test_a_failed_download_names_the_file_and_leaves_no_files(tmp_path: Path) -> None:
    run_id = make_run()
    write_canonical(tmp_path / "w", {"fc1": training_series(40)}, list(range(40)))
    log_folder(run_id, tmp_path / "w", "weights")
    store = Path(MlflowClient().get_run(run_id).info.artifact_uri.removeprefix("file://")) / "weights"
    os.mkfifo(store / "step_7.npz.part")  # listed like a file; copying it fails (shutil refuses named pipes)
    src = RunSource(MlflowClient(), run_id, "weights")
    failure = r"downloading 'weights' of run \w+: weights/step_7\.npz\.part: .*named pipe"
    with pytest.raises(WeightvizError, match=failure):
        src.fetch(tmp_path / "fetched")
    assert not (tmp_path / "fetched" / "source").exists()  # nothing half downloaded is left to be read


def test_after_a_failed_download_the_files_not_started_are_skipped() -> None:
    from mlflow_weightviz._tracking import _FailFastPool, _Skipped

    ran: list[int] = []

    def download(remote_file_path: str, local_path: str) -> None:
        ran.append(int(remote_file_path))
        if remote_file_path == "0":
            msg = "connection refused"
            raise OSError(msg)

    pool = _FailFastPool(1)  # one thread: the files run in order
    try:
        futures = [pool.submit(download, remote_file_path=str(i), local_path="-") for i in range(10)]
        errors = [f.exception() for f in futures]
    finally:
        pool.shutdown()
    assert ran == [0]
    assert isinstance(errors[0], OSError)
    assert all(isinstance(e, _Skipped) for e in errors[1:])
    assert pool.failure is not None
    assert pool.failure[0] == "0"
    assert pool.failure[1] is errors[0]
