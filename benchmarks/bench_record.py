"""Peak memory of recording snapshots during training: ``record()`` against the original script's approach.

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_record.py                       # 100 vs 2,000 steps, writes RECORD_RESULTS.md
    .venv/bin/python benchmarks/bench_record.py --steps 100 500 --out /tmp/r.md

Each measurement is a fresh Python process (``--child``), so its peak RSS (``ru_maxrss``)
is its own. A model with a 256×128 and a 128×64 float32 matrix (160 KiB per snapshot) is
"trained" (its weights nudged in place) and snapshotted at every step:

* ``record``: ``mlflow_weightviz.record(model, every=1, render=False)`` into an MLflow run
  on a local sqlite store: snapshots go to a local disk buffer and are logged as chunk files.
* ``in-RAM list``: the original script's approach, every snapshot kept in a Python list
  and pickled at the end (``animation_data.obj``).

Reported: peak RSS, and its growth over the same process just before training (after
imports, store and model set-up). Rendering is not included (``render=False``): it reads
the chunks back memory-mapped, one layer at a time, and is measured by ``benchmarks/run.py``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SHAPES = {"fc1.weight": (256, 128), "fc2.weight": (128, 64)}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def child(approach: str, steps: int, workdir: Path) -> dict[str, Any]:
    import os
    import pickle

    import numpy as np

    os.chdir(workdir)
    rng = np.random.default_rng(0)
    weights = {name: rng.normal(0, 0.1, size=shape).astype(np.float32) for name, shape in SHAPES.items()}
    noise = {name: rng.normal(0, 1e-3, size=shape).astype(np.float32) for name, shape in SHAPES.items()}

    def train_step(step: int) -> None:
        for name, w in weights.items():
            w += noise[name] * ((step % 7) - 3)  # in place, like an optimizer

    uploads = 0
    if approach == "record":
        import mlflow

        import mlflow_weightviz as wv

        mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
        with mlflow.start_run():
            baseline = peak_rss_mb()
            start = time.perf_counter()
            with wv.record(weights, every=1, render=False) as rec:
                for step in range(steps):
                    train_step(step)
                    rec.step(step)
            seconds = time.perf_counter() - start
            uploads = rec.uploads
    else:
        baseline = peak_rss_mb()
        start = time.perf_counter()
        frames = []
        for step in range(steps):
            train_step(step)
            frames.append({name: w.copy() for name, w in weights.items()})
        with open("animation_data.obj", "wb") as fh:
            pickle.dump(frames, fh)
        seconds = time.perf_counter() - start
    peak = peak_rss_mb()
    return {"approach": approach, "steps": steps, "baseline_mb": baseline, "peak_mb": peak,
            "growth_mb": peak - baseline, "seconds": seconds, "uploads": uploads}


def measure(approach: str, steps: int) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="weightviz-bench-record-"))
    try:
        proc = subprocess.run([sys.executable, __file__, "--child", approach, "--steps", str(steps),
                               "--workdir", str(workdir)], capture_output=True, text=True, check=False)
        if proc.returncode:
            msg = f"{approach} {steps} failed:\n{proc.stderr[-3000:]}"
            raise RuntimeError(msg)
        return dict(json.loads(proc.stdout.strip().splitlines()[-1]))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def report(rows: list[dict[str, Any]], steps: list[int]) -> str:
    snapshot_kib = sum(r * c for r, c in SHAPES.values()) * 4 / 1024
    lines = [
        "# Recording during training: peak memory",
        "",
        f"`benchmarks/bench_record.py`, {platform.python_version()} on {platform.machine()}, "
        f"{snapshot_kib:.0f} KiB per snapshot, a snapshot at every step, each measurement in its own process.",
        "",
        "| approach | steps | peak RSS (MB) | growth during training (MB) | uploads | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['approach']} | {r['steps']:,} | {r['peak_mb']:.0f} | {r['growth_mb']:.1f} | "
                     f"{r['uploads'] or '-'} | {r['seconds']:.1f} |")
    lo, hi = min(steps), max(steps)
    by = {(r["approach"], r["steps"]): r for r in rows}
    lines.append("")
    for approach in ("record", "in-RAM list"):
        a, b = by[(approach, lo)], by[(approach, hi)]
        lines.append(f"- {approach}: {hi:,} steps vs {lo:,} steps: peak RSS ×{b['peak_mb'] / a['peak_mb']:.2f}, "
                     f"growth {a['growth_mb']:.1f} → {b['growth_mb']:.1f} MB "
                     f"(the snapshots themselves: {hi * snapshot_kib / 1024:.0f} MB)")
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--steps", type=int, nargs="+", default=[100, 2000])
    parser.add_argument("--out", type=Path, default=HERE / "RECORD_RESULTS.md")
    parser.add_argument("--child", choices=["record", "in-RAM list"], help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.steps[0], args.workdir)))
        return
    rows = []
    for steps in sorted(args.steps):
        for approach in ("record", "in-RAM list"):
            row = measure(approach, steps)
            print(f"{approach:12} {steps:6,} steps: peak {row['peak_mb']:.0f} MB, growth {row['growth_mb']:.1f} MB, "
                  f"{row['uploads']} uploads, {row['seconds']:.1f} s", flush=True)
            rows.append(row)
    text = report(rows, sorted(args.steps))
    args.out.write_text(text)
    print(text)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
