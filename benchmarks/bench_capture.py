"""What recording costs a real model: bytes and time per snapshot, and training-step overhead, against a naive copy.

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_capture.py                  # writes benchmarks/CAPTURE_RESULTS.md
    .venv/bin/python benchmarks/bench_capture.py --out /tmp/c.md --reps 3

Two models, on the CPU, in one process:

* **GPT-2 small**, ``GPT2LMHeadModel(GPT2Config())`` (124M parameters, built from the
  config: nothing is downloaded);
* **a 50M-parameter MLP**: 8 ``Linear(2560, 2560)`` layers (52.5M parameters).

For each:

* **naive**: a full copy of the state dict on the host,
  ``{k: v.detach().to("cpu", copy=True).numpy() for k, v in model.state_dict().items()}``, then
  ``np.savez`` to a local file: the bytes of that file and its time (median of ``--reps``).
  The copy is what a snapshot of a model that keeps training needs (on a GPU ``.cpu()``
  is that copy; on the CPU ``.numpy()`` alone would share the live parameters);
* **record**: ``mlflow_weightviz.record(model, layers="*", render=False)`` into a local
  sqlite MLflow store: the time of ``rec.step()`` on a snapshot step (median of ``--reps``)
  and the bytes stored per snapshot (the logged chunk files' size over the snapshots in them);
* **training-step overhead** at every=1, 10 and 100: real optimizer steps (SGD, random
  inputs) are timed without recording, then with ``rec.step()`` at every=1 for ``--steps``
  steps (measured). At every=10 and 100 the overhead per step is computed from the two
  measured costs, ``(snapshot + (every - 1) × skipped call) / every``, where "skipped call"
  is the measured time of ``rec.step()`` on a step that takes no snapshot; the naive copy's
  is ``naive / every``. That extrapolation is stated in the report.

Times are wall-clock on this machine (2 cores, shared with other work): read the ratios.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def gpt2() -> tuple[Any, Any]:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config())
    tokens = torch.randint(0, model.config.vocab_size, (1, 32))

    def loss() -> Any:
        return model(tokens, labels=tokens).loss

    return model, loss


def mlp() -> tuple[Any, Any]:
    import torch

    torch.manual_seed(0)
    layers: list[Any] = []
    for _ in range(8):
        layers += [torch.nn.Linear(2560, 2560), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers[:-1])
    x = torch.randn(16, 2560)

    def loss() -> Any:
        return model(x).pow(2).mean()

    return model, loss


def naive_copy(model: Any, path: Path) -> tuple[float, int]:
    start = time.perf_counter()
    arrays = {k: v.detach().to("cpu", copy=True).numpy() for k, v in model.state_dict().items()}
    np.savez(path, **arrays)  # type: ignore[arg-type]
    seconds = time.perf_counter() - start
    size = path.stat().st_size
    path.unlink()
    return seconds, size


def train_step(model: Any, loss: Any, opt: Any) -> None:
    opt.zero_grad()
    loss().backward()
    opt.step()


def measure(name: str, build: Any, reps: int, steps: int, work: Path) -> dict[str, Any]:
    import mlflow
    import torch
    from mlflow.tracking import MlflowClient

    import mlflow_weightviz as wv

    model, loss = build()
    params = sum(p.numel() for p in model.parameters())
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    print(f"{name}: {params / 1e6:.1f}M parameters", flush=True)

    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    train_step(model, loss, opt)  # warm up
    # The naive copy and rec.step() alternate, each right after a training step (as in training:
    # the weights were just written, and the metrics logger has had a step to do its work).
    naive: list[tuple[float, int]] = []
    snap = []
    with mlflow.start_run(run_name=f"bench-{name}") as run, \
            wv.record(model, every=1, layers="*", render=False, chunk_steps=reps + 1000) as rec:
        for i in range(reps + 1):
            train_step(model, loss, opt)
            copied = naive_copy(model, work / "naive.npz")
            train_step(model, loss, opt)
            start = time.perf_counter()
            rec.step(i)
            if i:  # the first snapshot also makes the sketch's sign tables
                snap.append(time.perf_counter() - start)
                naive.append(copied)
    naive_s = statistics.median(s for s, _ in naive)
    naive_bytes = naive[0][1]
    files = MlflowClient().list_artifacts(run.info.run_id, "weights")
    stored = sum(int(f.file_size or 0) for f in files)
    per_snapshot = stored / rec.snapshots
    snap_s = statistics.median(snap)

    # Training steps: without recording, then with rec.step() at every=1.
    base = []
    for _ in range(max(3, steps // 4)):
        start = time.perf_counter()
        train_step(model, loss, opt)
        base.append(time.perf_counter() - start)
    with mlflow.start_run(run_name=f"bench-{name}-train"), \
            wv.record(model, every=1, layers="*", render=False) as rec:
        timed = []
        for step in range(steps):
            start = time.perf_counter()
            train_step(model, loss, opt)
            rec.step(step)
            timed.append(time.perf_counter() - start)
    # The training metrics' cost: rec.step() with metrics against metrics=False, alternating, in one process.
    costs: dict[bool, list[float]] = {True: [], False: []}
    with mlflow.start_run(run_name=f"bench-{name}-metrics"):
        recs = {m: wv.record(model, every=1, layers="*", render=False, metrics=m, artifact_path=f"weights-{int(m)}",
                             chunk_steps=reps + 1000) for m in (True, False)}
        try:
            for i in range(reps + 1):
                for m in ((True, False) if i % 2 == 0 else (False, True)):
                    train_step(model, loss, opt)
                    start = time.perf_counter()
                    recs[m].step(i)
                    if i:  # the first snapshot also makes the sign tables
                        costs[m].append(time.perf_counter() - start)
        finally:
            for r in recs.values():
                r.close()
    with mlflow.start_run(run_name=f"bench-{name}-skip"), \
            wv.record(model, every=1_000_000, layers="*", render=False) as rec:
        rec.step(0)
        skipped = []
        for step in range(1, 201):
            start = time.perf_counter()
            rec.step(step)
            skipped.append(time.perf_counter() - start)
    base_s = statistics.median(base)
    every1 = statistics.median(timed) - base_s
    skip_s = statistics.median(skipped)
    overhead = {1: every1}
    for every in (10, 100):
        overhead[every] = (snap_s + (every - 1) * skip_s) / every
    del model, opt
    return {"name": name, "params": params, "param_bytes": param_bytes, "naive_s": naive_s,
            "naive_bytes": naive_bytes, "snap_s": snap_s, "snapshot_bytes": per_snapshot, "base_s": base_s,
            "skip_s": skip_s, "overhead": overhead, "steps": steps, "reps": reps,
            "metrics_on_s": statistics.median(costs[True]), "metrics_off_s": statistics.median(costs[False])}


def report(rows: list[dict[str, Any]]) -> str:
    lines = ["# Capture cost: `record()` against a naive full `state_dict()` copy → numpy → `np.savez`", "",
             f"Run on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, Python {platform.python_version()}, "
             f"{os.cpu_count()} CPUs (shared with other work; wall-clock times, read the ratios). "
             "Produced by `benchmarks/bench_capture.py` in one run; every layer recorded (`layers=\"*\"`), "
             "default 64×64 grid, CPU.", "",
             "## Per snapshot", "",
             "| model | parameters | parameter bytes | naive bytes | record bytes | bytes ratio | naive ms | "
             "record ms (rec.step) | time ratio |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['params'] / 1e6:.1f}M | {r['param_bytes'] / 2**20:.1f} MiB | "
            f"{r['naive_bytes'] / 2**20:.1f} MiB | {r['snapshot_bytes'] / 2**10:.1f} KiB | "
            f"{r['snapshot_bytes'] / r['param_bytes']:.3%} of parameters | {r['naive_s'] * 1e3:.0f} | "
            f"{r['snap_s'] * 1e3:.0f} | {r['snap_s'] / r['naive_s']:.2f}× naive |")
    lines += ["", "Times are medians over the repetitions given by `--reps`. The naive copy and `rec.step()` "
              "alternate, each right after a training step; the first snapshot (which also makes the sketch's "
              "sign tables) is not counted.", "",
              "## Training-step overhead", "",
              "| model | training step (no recording) | every | record: overhead per step | naive: overhead per step "
              "| record / naive |", "|---|---|---|---|---|---|"]
    for r in rows:
        for every, over in r["overhead"].items():
            naive = r["naive_s"] / every
            lines.append(f"| {r['name']} | {r['base_s'] * 1e3:.0f} ms | {every} | {over * 1e3:.1f} ms "
                         f"({over / r['base_s']:.1%}) | {naive * 1e3:.1f} ms ({naive / r['base_s']:.1%}) | "
                         f"{over / naive:.2f} |")
    steps = rows[0]["steps"]
    lines += ["", f"every=1 is measured: {steps} real SGD steps with `rec.step()` after each, minus the median "
              "step without recording (so it carries the noise of two medians). every=10 and every=100 are "
              "computed from measured costs, not run for hundreds of steps: (one snapshot + (every − 1) × "
              "one `rec.step()` call that takes no snapshot) / every; the naive copy's is its time / every. "
              + "Measured `rec.step()` on a step without a snapshot: "
              + ", ".join(f"{r['name']} {r['skip_s'] * 1e6:.1f} µs" for r in rows) + ".", "",
              "## Cost of the training metrics", "",
              "| model | rec.step() with metrics | with `metrics=False` | ratio | `metrics=False` vs naive |",
              "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['metrics_on_s'] * 1e3:.0f} ms | {r['metrics_off_s'] * 1e3:.0f} ms | "
                     f"{r['metrics_on_s'] / r['metrics_off_s']:.2f}× | {r['metrics_off_s'] / r['naive_s']:.2f}× |")
    lines += ["", "Snapshot steps only, one process, the two recorders alternating after a training step each; "
              "medians over `--reps` (see docs/capture.md, Training metrics).", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "CAPTURE_RESULTS.md")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    import warnings

    import mlflow

    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory(prefix="bench-capture-") as tmp:
        work = Path(tmp)
        mlflow.set_tracking_uri(f"sqlite:///{work / 'mlflow.db'}")
        os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
        rows = [measure("50M MLP", mlp, args.reps, args.steps, work),
                measure("GPT-2 small", gpt2, args.reps, args.steps, work)]
    text = report(rows)
    args.out.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
