"""Batch throughput: 40 small runs rendered inline (1 worker), by 2 local worker processes, and on a
2-worker Dask LocalCluster, against a real `mlflow server` on this machine; plus the per-frame cost
that sizes a real deployment.

Usage: .venv/bin/python benchmarks/bench_batch.py [--runs 40] [--out benchmarks/BATCH_RESULTS.md]

Every configuration re-renders the same runs (``force=True``), so each does the same work:
search, claim, download, draw, encode, upload, tag. Times are wall-clock on this machine (2 cores,
shared); read the ratios, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "benchmarks" / ".work" / "batch"
sys.path.insert(0, str(REPO))

LAYERS = 2
FRAMES = 20
SHAPE = (8, 8)
# Sizing target from the issue: 10,000 runs × 5 layers × 200 frames within one hour.
TARGET_RUNS, TARGET_LAYERS, TARGET_FRAMES, TARGET_S = 10_000, 5, 200, 3600


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    env.pop("MLFLOW_TRACKING_URI", None)
    log = (root / "server.log").open("ab")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                             "--artifacts-destination", str(root / "artifacts"), "--workers", "2"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.3)
    proc.kill()
    msg = "mlflow server did not start"
    raise RuntimeError(msg)


def make_runs(uri: str, n: int) -> str:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp_id = client.create_experiment(f"bench-batch-{int(time.time())}")
    rng = np.random.default_rng(0)
    for i in range(n):
        run_id = client.create_run(exp_id, run_name=f"run-{i}").info.run_id
        folder = WORK / "snapshots" / run_id
        folder.mkdir(parents=True)
        stack = {f"layer{k}": rng.normal(0, 0.1, size=(FRAMES, *SHAPE)).astype("float32") for k in range(LAYERS)}
        np.savez(folder / f"chunk_0-{FRAMES - 1}.npz", steps=np.arange(FRAMES), **stack)
        client.log_artifacts(run_id, str(folder), "weights")
        client.set_terminated(run_id, "FINISHED")
    return exp_id


def timed_batch(exp_id: str, uri: str, **kwargs: object) -> tuple[float, list[float], dict[str, int]]:
    from mlflow_weightviz.automation import render_experiment

    start = time.perf_counter()
    report = render_experiment(exp_id, force=True, tracking_uri=uri, **kwargs)  # type: ignore[arg-type]
    elapsed = time.perf_counter() - start
    counts = report.counts()
    if counts["rendered"] != len(report.outcomes):
        msg = f"not every run was rendered: {counts} {[o.reason for o in report.failed][:3]}"
        raise RuntimeError(msg)
    return elapsed, [o.seconds for o in report.outcomes], counts


def per_frame_ms(shape: tuple[int, int], frames: int = 60) -> float:
    """In-process ms per frame of one layer (draw + encode), median of three renders."""
    import mlflow_weightviz as wv

    folder = WORK / f"frame-{shape[0]}x{shape[1]}"
    folder.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(1).normal(0, 0.1, size=(frames, *shape)).astype("float32")
    np.savez(folder / f"chunk_0-{frames - 1}.npz", steps=np.arange(frames), w=data)
    times = []
    for _ in range(3):
        t = time.perf_counter()
        wv.render_file(folder, out=WORK / "frame.gif")
        times.append(time.perf_counter() - t)
    return statistics.median(times) / frames * 1000


def commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "BATCH_RESULTS.md")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import logging

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    server, uri = start_server(WORK)
    try:
        exp_id = make_runs(uri, args.runs)
        print(f"{args.runs} runs × {LAYERS} layers × {FRAMES} frames of {SHAPE[0]}×{SHAPE[1]} on {uri}")
        rows = []
        for label, kwargs in (("1 worker (in process)", {"workers": 1}), ("2 local worker processes", {"workers": 2})):
            elapsed, per_run, _ = timed_batch(exp_id, uri, **kwargs)
            rows.append((label, elapsed, statistics.median(per_run)))
            print(f"{label}: {elapsed:.1f} s")
        from distributed import LocalCluster

        t = time.perf_counter()
        with LocalCluster(processes=True, n_workers=2, threads_per_worker=1, dashboard_address=None,
                          host="127.0.0.1") as cluster:
            cluster_start = time.perf_counter() - t
            elapsed, per_run, _ = timed_batch(exp_id, uri, scheduler=cluster.scheduler_address)
        rows.append(("Dask LocalCluster, 2 workers", elapsed, statistics.median(per_run)))
        print(f"dask: {elapsed:.1f} s (+{cluster_start:.1f} s to start the cluster)")
    finally:
        server.terminate()
        server.wait(timeout=30)

    small_ms = per_frame_ms(SHAPE)
    big_ms = per_frame_ms((64, 64))
    print(f"per frame: {small_ms:.1f} ms ({SHAPE[0]}×{SHAPE[1]}), {big_ms:.1f} ms (64×64)")
    base = rows[0][1]
    run_s = rows[0][2]
    overhead_s = max(0.0, run_s - LAYERS * FRAMES * small_ms / 1000)
    frames_per_run = TARGET_LAYERS * TARGET_FRAMES
    run_cost_s = overhead_s + frames_per_run * big_ms / 1000
    total_s = TARGET_RUNS * run_cost_s
    workers = int(np.ceil(total_s / TARGET_S))

    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Batch throughput",
        "",
        f"Measured {when} at commit `{commit()}` by `benchmarks/bench_batch.py` on {os.cpu_count()} shared cores "
        f"({platform.python_implementation()} {platform.python_version()}), against a real `mlflow server` "
        "(sqlite backend, proxied artifacts, 2 server workers) on the same machine. Load average before / after: "
        f"{load_before:.1f} / {os.getloadavg()[0]:.1f} (other work shares these cores).",
        "",
        f"Work: {args.runs} runs, each {LAYERS} layers × {FRAMES} frames of {SHAPE[0]}×{SHAPE[1]} (annotated), "
        "re-rendered with `force=True` in every configuration: search, claim (0.5 s settle), download, draw, "
        "encode, upload, tags.",
        "",
        "| configuration | wall time | runs/minute | vs 1 worker | median s per run |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, elapsed, med in rows:
        lines.append(f"| {label} | {elapsed:.1f} s | {args.runs / elapsed * 60:.1f} | {base / elapsed:.2f}× "
                     f"| {med:.2f} |")
    lines += [
        "",
        f"The Dask cluster took {cluster_start:.1f} s to start, not counted above (a real cluster is already up). "
        "The 2-process pool's start-up (spawned interpreters importing mlflow) is counted.",
        "",
        "## Per-frame cost and the sizing it gives",
        "",
        "| layer grid | ms per frame (draw + encode, in process, median of 3) |",
        "|---|---:|",
        f"| {SHAPE[0]}×{SHAPE[1]} (annotated) | {small_ms:.1f} |",
        f"| 64×64 (the default largest grid) | {big_ms:.1f} |",
        "",
        f"Per-run overhead besides drawing (1-worker median run time minus its frames): {overhead_s:.2f} s.",
        f"A run of {TARGET_LAYERS} layers × {TARGET_FRAMES} frames at the 64×64 cost: {overhead_s:.2f} + "
        f"{frames_per_run} × {big_ms / 1000:.4f} = {run_cost_s:.1f} s on one core.",
        f"{TARGET_RUNS:,} such runs: {total_s / 3600:.1f} core-hours, so **{workers} single-core workers** "
        "finish them within an hour, if the tracking server and artifact store keep up "
        f"({TARGET_RUNS / TARGET_S:.1f} runs/s, {TARGET_RUNS * TARGET_LAYERS:,} GIF uploads).",
        "",
    ]
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
