"""`watch`: render runs as they finish, against a real `mlflow server`."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

import mlflow_weightviz as wv
from mlflow_weightviz.automation import RunOutcome, WatchReport, parse_since, watch_experiment
from tests.conftest import MlflowServer, free_port
from tests.helpers import (
    artifact_files,
    log_folder,
    make_run,
    read_gif,
    training_series,
    with_overview,
    write_canonical,
)

pytestmark = pytest.mark.server

OPTS = wv.RenderOptions(max_frames=3, annotate=False)


def snapshot_run(uri: str, experiment: str, folder: Path, *, finished: bool = True, seed: int = 0,
                 end_time: float | None = None) -> str:
    from mlflow.tracking import MlflowClient

    run_id = make_run(uri, finished=False, experiment=experiment)
    write_canonical(folder / run_id, {"fc": training_series(4, (3, 4), seed=seed)}, [0, 1, 2, 3])
    log_folder(run_id, folder / run_id, uri=uri)
    if finished:
        MlflowClient(uri).set_terminated(run_id, "FINISHED",
                                         end_time=None if end_time is None else int(end_time * 1000))
    return run_id


def wait_until(check: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            msg = f"timed out waiting for {what}"
            raise AssertionError(msg)
        time.sleep(0.1)


def tags(uri: str, run_id: str) -> dict[str, str]:
    from mlflow.tracking import MlflowClient

    return dict(MlflowClient(uri).get_run(run_id).data.tags)


class WatchThread:
    """``watch_experiment`` in a background thread, stopped through its stop event."""

    def __init__(self, experiment: str, **kwargs: object) -> None:
        self.stop = threading.Event()
        self.outcomes: list[RunOutcome] = []
        self.errors: list[str] = []
        self.report: WatchReport | None = None

        def target() -> None:
            self.report = watch_experiment(experiment, OPTS, interval=0.5, stop=self.stop,
                                           on_outcome=self.outcomes.append, on_error=self.errors.append,
                                           **kwargs)  # type: ignore[arg-type]

        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()

    def rendered(self, run_id: str) -> bool:
        return any(o.run_id == run_id and o.status == "rendered" for o in self.outcomes)

    def finish(self) -> WatchReport:
        self.stop.set()
        self.thread.join(timeout=60)
        assert self.report is not None
        return self.report


@pytest.mark.slow
def test_watch_picks_up_a_run_that_finishes_while_it_runs(server_uri: str, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    exp = f"watch-{uuid.uuid4().hex[:8]}"
    earlier = snapshot_run(server_uri, exp, tmp_path, seed=1)
    training = snapshot_run(server_uri, exp, tmp_path, finished=False, seed=2)
    watcher = WatchThread(exp)
    try:
        wait_until(lambda: watcher.rendered(earlier), what="the finished run to be rendered")
        time.sleep(1.2)  # a couple more polls while the other run is still training
        assert artifact_files(training, "weightviz", uri=server_uri) == []
        MlflowClient(server_uri).set_terminated(training, "FINISHED")
        wait_until(lambda: watcher.rendered(training), what="the newly finished run to be rendered")
    finally:
        report = watcher.finish()
    assert report.polls >= 3
    assert [(o.run_id, o.status) for o in report.outcomes] == [(earlier, "rendered"), (training, "rendered")]
    for run_id in (earlier, training):
        assert artifact_files(run_id, "weightviz", uri=server_uri) == with_overview(["weightviz/fc.gif"])
        assert MlflowClient(server_uri).get_run(run_id).info.status == "FINISHED"


def test_since_limits_to_recently_finished_runs(server_uri: str, tmp_path: Path) -> None:
    exp = f"since-{uuid.uuid4().hex[:8]}"
    old = snapshot_run(server_uri, exp, tmp_path, seed=1, end_time=time.time() - 3 * 3600)
    new = snapshot_run(server_uri, exp, tmp_path, seed=2)

    recent = watch_experiment(exp, OPTS, once=True, since="2h")
    assert [(o.run_id, o.status) for o in recent.outcomes] == [(new, "rendered")]
    assert artifact_files(old, "weightviz", uri=server_uri) == []

    everything = watch_experiment(exp, OPTS, once=True)  # whenever they finished
    assert [(o.run_id, o.status) for o in everything.outcomes] == [(old, "rendered"), (new, "up_to_date")]


def test_parse_since() -> None:
    now = 1_700_000_000.0
    assert parse_since("2h", now=now) == now - 7200
    assert parse_since("1h30m", now=now) == now - 5400
    assert parse_since("7d", now=now) == now - 7 * 86400
    assert parse_since("90s", now=now) == now - 90
    assert parse_since("2024-05-01T12:00:00Z") == datetime(2024, 5, 1, 12, tzinfo=UTC).timestamp()
    assert parse_since("2024-05-01T14:00+02:00") == datetime(2024, 5, 1, 12, tzinfo=UTC).timestamp()
    assert parse_since("2024-05-01") == datetime(2024, 5, 1).timestamp()  # local midnight
    for bad in ("yesterday", "2h ago", "", "12"):
        with pytest.raises(wv.UsageError, match="--since must be"):
            parse_since(bad)


def test_parse_since_reads_the_z_suffix_without_python_311() -> None:
    # datetime.fromisoformat reads "Z" only from Python 3.11 on; parse_since must not depend on it.
    noon = datetime(2024, 5, 1, 12, tzinfo=UTC).timestamp()
    for text in ("2024-05-01T12:00:00Z", "2024-05-01T12:00Z", "2024-05-01 12:00:00z", " 2024-05-01T12:00:00Z "):
        assert parse_since(text) == noon, text
    assert parse_since("2024-05-01T12:00:00.250000Z") == noon + 0.25
    with pytest.raises(wv.UsageError, match="--since must be"):
        parse_since("Z")


class TcpRelay:
    """A TCP relay in front of the real server: ``down()`` makes the server unreachable, ``up()`` reachable.

    To the watcher this is exactly a server outage (connections refused, open ones cut),
    without restarting the session's server.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.conns: list[socket.socket] = []
        self.listener: socket.socket | None = None

    def up(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", self.port))  # SO_REUSEADDR: same port again
        self.listener.settimeout(0.2)
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def down(self) -> None:
        assert self.listener is not None
        self.listener.close()
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        self.conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while listener.fileno() != -1:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)


def test_watch_survives_a_server_outage(mlflow_server: MlflowServer, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # Fail fast while the server is down, as the CLI does.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    relay = TcpRelay(mlflow_server.port)
    relay.up()
    try:
        exp = f"outage-{uuid.uuid4().hex[:8]}"
        first = snapshot_run(relay.url, exp, tmp_path, seed=1)
        watcher = WatchThread(exp, tracking_uri=relay.url)
        try:
            wait_until(lambda: watcher.rendered(first), what="the first run to be rendered")
            relay.down()
            wait_until(lambda: len(watcher.errors) >= 2, what="failed polls to be reported")
            relay.up()
            second = snapshot_run(relay.url, exp, tmp_path, seed=2)
            wait_until(lambda: watcher.rendered(second), what="a run to be rendered after the outage")
        finally:
            report = watcher.finish()
    finally:
        relay.down()
    assert report.errors >= 2
    assert all("the tracking server cannot be reached" in e and "trying again in 0.5 s" in e
               for e in watcher.errors), watcher.errors
    assert all("\n" not in e for e in watcher.errors)
    assert [o.status for o in report.outcomes] == ["rendered", "rendered"]


# ------------------------------------------------------------ watch as a process


class WatchProcess:
    """The real `mlflow-weightviz watch` in a subprocess, its stderr read line by line."""

    def __init__(self, uri: str, *args: str) -> None:
        env = dict(os.environ, MLFLOW_TRACKING_URI=uri, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "mlflow_weightviz", "watch", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.err_lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.err_lines.append(line)

    def saw(self, text: str) -> bool:
        return any(text in line for line in self.err_lines)

    def wait(self, timeout: float = 60) -> tuple[int, str, str]:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        assert self.proc.stdout is not None
        return code, self.proc.stdout.read(), "".join(self.err_lines)


def test_sigterm_abandons_the_current_render_cleanly(server_uri: str, tmp_path: Path) -> None:
    exp = f"sigterm-{uuid.uuid4().hex[:8]}"
    run_id = make_run(server_uri, experiment=exp)
    folder = tmp_path / "long"
    folder.mkdir()
    steps = 4000  # long enough that SIGTERM arrives mid-render
    np.savez(folder / f"chunk_0-{steps - 1}.npz", fc=np.random.default_rng(0).normal(size=(steps, 2, 2)),
             steps=np.arange(steps))
    log_folder(run_id, folder, uri=server_uri)
    watcher = WatchProcess(server_uri, "-e", exp, "--interval", "60")
    wait_until(lambda: watcher.saw(f"looking at run {run_id}"), what="the watcher to start rendering")
    time.sleep(0.5)
    started = time.monotonic()
    watcher.proc.send_signal(signal.SIGTERM)
    code, out, err = watcher.wait()

    assert code == 0, err
    assert time.monotonic() - started < 20
    assert "Traceback" not in err
    assert "watch stopped by SIGTERM after 1 poll(s): 1 abandoned" in err
    assert f"abandoned {run_id}" in out
    assert artifact_files(run_id, "weightviz", uri=server_uri) == []  # nothing half-published
    run_tags = tags(server_uri, run_id)
    assert "weightviz.claim" not in run_tags
    assert "weightviz.fingerprint" not in run_tags


def test_sigint_while_idle_stops_at_once(server_uri: str, tmp_path: Path) -> None:
    exp = f"idle-{uuid.uuid4().hex[:8]}"
    run_id = snapshot_run(server_uri, exp, tmp_path)
    watcher = WatchProcess(server_uri, "-e", exp, "--interval", "300", "--max-frames", "2")
    wait_until(lambda: "weightviz.fingerprint" in tags(server_uri, run_id), what="the first poll's render")
    time.sleep(1.0)  # the poll is over; the watcher waits for the next one
    started = time.monotonic()
    watcher.proc.send_signal(signal.SIGINT)
    code, out, err = watcher.wait(timeout=30)
    assert code == 0, err
    assert time.monotonic() - started < 10
    assert f"rendered {run_id}" in out
    assert "watch stopped by SIGINT after 1 poll(s): 1 rendered" in err


@pytest.mark.slow
def test_two_watchers_never_render_a_run_twice(server_uri: str, mlflow_server: MlflowServer,
                                               tmp_path: Path) -> None:
    exp = f"pair-{uuid.uuid4().hex[:8]}"
    runs = [snapshot_run(server_uri, exp, tmp_path, seed=i) for i in range(4)]
    args = ("-e", exp, "--once", "--max-frames", "3", "--no-annotate")
    watchers = [WatchProcess(server_uri, *args) for _ in range(2)]
    results = [w.wait(timeout=180) for w in watchers]

    assert [code for code, _, _ in results] == [0, 0], results
    rendered = [m for _, out, _ in results for m in re.findall(r"^rendered (\w+) ", out, re.MULTILINE)]
    assert sorted(rendered) == sorted(runs), results  # every run exactly once across both watchers
    assert all(rendered.count(r) == 1 for r in runs)
    log = mlflow_server.log.read_text()
    for run_id in runs:
        uploads = re.findall(rf'"PUT [^"]*{run_id}/artifacts/weightviz/fc\.gif', log)
        assert len(uploads) == 1, (run_id, uploads)  # the server saw exactly one upload
        assert artifact_files(run_id, "weightviz", uri=server_uri) == with_overview(["weightviz/fc.gif"])
        assert "weightviz.claim" not in tags(server_uri, run_id)


def test_watch_gif_is_complete(server_uri: str, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    exp = f"complete-{uuid.uuid4().hex[:8]}"
    run_id = snapshot_run(server_uri, exp, tmp_path)
    report = watch_experiment(exp, OPTS, once=True)
    assert [o.frames for o in report.outcomes] == [3]
    (tmp_path / "dl").mkdir()
    local = MlflowClient(server_uri).download_artifacts(run_id, "weightviz/fc.gif", str(tmp_path / "dl"))
    assert read_gif(Path(local)).n_frames == 3
    assert tags(server_uri, run_id)["weightviz.frames"] == "3"
