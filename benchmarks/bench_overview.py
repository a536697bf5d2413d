"""The layers × steps overview at 150 × 200, and the ``--grid`` frame size and memory for 10 and 50 layers.

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_overview.py                      # writes OVERVIEW_RESULTS.md
    .venv/bin/python benchmarks/bench_overview.py --before /path/to/old/checkout --out /tmp/o.md
    .venv/bin/python benchmarks/bench_overview.py --smoke --out /tmp/o.md

1. Overview: per-layer statistics for 150 layers × 200 snapshots (the numbers
   ``stats.collect`` gives) are drawn to ``overview.png`` and ``overview.html`` in a fresh
   process; reported: wall time (imports included), picture size, HTML size. Target < 10 s.
2. ``--grid``: GPT-2-small-shaped layers (the embedding with a vocabulary cut to 6282 rows,
   wpe, and per block ``c_attn`` 768×2304, ``c_proj`` 768×768, ``c_fc`` 768×3072, ``mlp.c_proj``
   3072×768), 3 snapshots each, rendered by ``render-file --grid`` in a fresh process;
   reported: frame size, megapixels, GIF size, wall time and peak RSS (``ru_maxrss``), for 10
   and 50 layers, with this code and, with ``--before PATH``, with the code at ``PATH``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

_RUN = """
import resource, sys, time
t = time.perf_counter()
sys.argv = ["mlflow_weightviz", *sys.argv[1:]]
from mlflow_weightviz.cli import main
try:
    main()
except SystemExit as exc:
    code = exc.code
print("BENCH", time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, file=sys.stderr)
"""

_OVERVIEW = """
import json, sys, time
t = time.perf_counter()
import numpy as np
from pathlib import Path
from mlflow_weightviz.stats import StepStats
from mlflow_weightviz.outputs.overview import overview_data, write_overview
layers, steps, out = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
rng = np.random.default_rng(0)
parts = ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj", "ln_1", "ln_2"]
names = [f"transformer.h.{i // len(parts)}.{parts[i % len(parts)]}.weight" for i in range(layers)]
per_layer = {n: [StepStats(step=s * 10, norm=1.0, update_ratio=float(rng.lognormal(-6 + i % 3, 1)) if s else None,
                           drift=0.1, max_abs=1.0, rms=1.0, nonfinite=0.0) for s in range(steps)]
             for i, n in enumerate(names)}
made = time.perf_counter()
png, page = write_overview(overview_data(per_layer, "update_ratio"), out)
done = time.perf_counter()
from PIL import Image
with Image.open(png) as im:
    size = im.size
print(json.dumps({"total_s": done - t, "draw_s": done - made, "size": size, "png_bytes": png.stat().st_size,
                  "html_bytes": page.stat().st_size}))
"""

GPT2 = [("attn.c_attn", (768, 2304)), ("attn.c_proj", (768, 768)), ("mlp.c_fc", (768, 3072)),
        ("mlp.c_proj", (3072, 768))]


def gpt2_layers(count: int, scale: int) -> list[tuple[str, tuple[int, int]]]:
    names = [("transformer.wte.weight", (6282 // scale, 768 // scale)),
             ("transformer.wpe.weight", (1024 // scale, 768 // scale))]
    for block in range(12):
        names += [(f"transformer.h.{block}.{part}.weight", (r // scale, c // scale)) for part, (r, c) in GPT2]
    return names[:count]


def write_snapshots(folder: Path, layers: list[tuple[str, tuple[int, int]]], steps: int) -> None:
    """One ``step_<k>.npz`` per snapshot, written layer by layer so the benchmark never holds them all."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for step in range(steps):
        arrays = {name: rng.normal(0, 0.02, size=shape).astype(np.float32) for name, shape in layers}
        np.savez(folder / f"step_{step * 10}.npz", **arrays)  # type: ignore[arg-type]
        del arrays


def run_grid(code: Path, snapshots: Path, out: Path) -> dict[str, object]:
    env = dict(os.environ, PYTHONPATH=str(code), MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false")
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run([sys.executable, "-c", _RUN, "render-file", str(snapshots), "--grid", "--out", str(out),
                           "--quiet"], capture_output=True, text=True, env=env, cwd=out.parent, timeout=3600,
                          check=False)
    line = next((x for x in proc.stderr.splitlines() if x.startswith("BENCH ")), None)
    if line is None or not out.is_file():
        msg = f"render failed with {code}:\n{proc.stderr[-3000:]}"
        raise RuntimeError(msg)
    _, seconds, rss = line.split()
    from PIL import Image

    with Image.open(out) as im:
        size = im.size
        frames = im.n_frames
    return {"size": list(size), "megapixels": size[0] * size[1] / 1e6, "frames": frames,
            "gif_bytes": out.stat().st_size, "seconds": float(seconds), "rss_mb": float(rss)}


def run_overview(layers: int, steps: int, out: Path) -> dict[str, object]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", _OVERVIEW, str(layers), str(steps), str(out)], capture_output=True,
                          text=True, env=env, timeout=600, check=False)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=HERE / "OVERVIEW_RESULTS.md")
    parser.add_argument("--before", type=Path, default=None, help="a checkout of the code before, for --grid")
    parser.add_argument("--smoke", action="store_true", help="small sizes: checks the benchmark runs, not speed")
    args = parser.parse_args()
    layers, steps = (30, 40) if args.smoke else (150, 200)
    counts, scale = ((4, 8), 8) if args.smoke else ((10, 50), 1)
    report: dict[str, object] = {"smoke": args.smoke, "python": platform.python_version(),
                                 "machine": platform.machine(), "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="bench-overview-") as tmp:
        work = Path(tmp)
        (work / "ov").mkdir()
        report["overview"] = {"layers": layers, "steps": steps, **run_overview(layers, steps, work / "ov")}
        grid: list[dict[str, object]] = []
        for count in counts:
            snaps = work / f"snaps{count}"
            write_snapshots(snaps, gpt2_layers(count, scale), 3)
            codes = {"this code": ROOT, **({"before": args.before} if args.before else {})}
            for label, code in codes.items():
                out = work / f"grid-{count}-{label.replace(' ', '_')}.gif"
                grid.append({"layers": count, "code": label, **run_grid(code, snaps, out)})
                out.unlink()
        report["grid"] = grid
    args.out.write_text(render(report), encoding="utf-8")
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    print(args.out.read_text(encoding="utf-8"))


def render(report: dict[str, object]) -> str:
    ov = report["overview"]
    assert isinstance(ov, dict)
    lines = ["# Overview and --grid budget benchmark" + (" (SMOKE: small sizes, not a result)" if report["smoke"]
                                                         else ""), "",
             f"Python {report['python']} on {report['machine']}, {report['cpus']} CPUs (shared).", "",
             f"## Overview: {ov['layers']} layers × {ov['steps']} snapshots", "",
             "| wall time (fresh process, imports included) | drawing | picture | PNG | HTML |",
             "|---|---|---|---|---|",
             f"| {ov['total_s']:.2f} s | {ov['draw_s']:.2f} s | {ov['size'][0]}×{ov['size'][1]} px | "
             f"{ov['png_bytes'] / 1024:.0f} KiB | {ov['html_bytes'] / 1024:.0f} KiB |", "",
             "## --grid: GPT-2-small-shaped layers, 3 snapshots", "",
             "| layers | code | frame | megapixels | GIF | wall time | peak RSS |", "|---|---|---|---|---|---|---|"]
    for row in report["grid"]:  # type: ignore[attr-defined]
        lines.append(f"| {row['layers']} | {row['code']} | {row['size'][0]}×{row['size'][1]} | "
                     f"{row['megapixels']:.1f} | {row['gif_bytes'] / 2**20:.1f} MiB | {row['seconds']:.1f} s | "
                     f"{row['rss_mb']:.0f} MB |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
