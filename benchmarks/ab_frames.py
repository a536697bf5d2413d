"""Frame by frame, in one process: this checkout's glyph composer against another revision's.

    .venv/bin/python benchmarks/ab_frames.py REV [--grid 16x16] [--frames 150] [--rounds 2]

Both renderers draw the same frames at the original's look (1500×1000 px, 9 decimals,
YlGn 0–0.05), in turn, frame by frame, so both see the machine at the same moments; the
indices of every frame must be identical. Only ``mlflow_weightviz/_glyphs.py`` is taken
from ``REV`` (the rest of the package is this checkout's), so this compares changes to the
composer. Prints the median ms per frame of each, after the first ten frames.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))


def frames(rows: int, cols: int, n: int) -> np.ndarray:
    """The benchmark's series (``run.py``'s ``data``): weights drifting towards a target, with noise."""
    rng = np.random.default_rng(0)
    w = np.clip(np.abs(rng.normal(0.025, 0.01, (rows, cols))), 0, 0.05)
    target = rng.uniform(0, 0.05, (rows, cols))
    out = np.empty((n, rows, cols))
    for t in range(n):
        out[t] = w
        w = np.clip(w - 0.05 * ((w - target) + rng.normal(0, 0.004, w.shape)), 0, 0.05)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("rev", help="the git revision to compare against")
    p.add_argument("--grid", default="16x16")
    p.add_argument("--frames", type=int, default=150)
    p.add_argument("--rounds", type=int, default=2, help="repeat the whole comparison this many times")
    args = p.parse_args()

    from run import renderer_kwargs

    import mlflow_weightviz
    import mlflow_weightviz._glyphs as current
    from mlflow_weightviz.encoders import encode_next
    from mlflow_weightviz.frames import HeatmapRenderer

    source = subprocess.run(["git", "show", f"{args.rev}:mlflow_weightviz/_glyphs.py"], cwd=HERE.parent,
                            capture_output=True, text=True, check=True).stdout
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "glyphs_before.py"
        path.write_text(source, encoding="utf-8")
        spec = importlib.util.spec_from_file_location("mlflow_weightviz._glyphs_before", path)
        assert spec is not None
        assert spec.loader is not None
        before = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = before
        spec.loader.exec_module(before)

    rows, cols = (int(x) for x in args.grid.split("x"))
    stack = frames(rows, cols, args.frames)
    titles = [f"weights  ·  step {i}  ·  frame {i + 1}/{args.frames}" for i in range(args.frames)]

    def start(module: Any) -> tuple[Any, Any]:
        # The renderer makes its composer with the first frame: draw that with the module in place.
        sys.modules["mlflow_weightviz._glyphs"] = module
        mlflow_weightviz._glyphs = module
        try:
            r = HeatmapRenderer(**renderer_kwargs((rows, cols), original=True))
            encoder, _ = encode_next(r, None, stack[0], titles[0], (0.0, 0.05))
        finally:
            sys.modules["mlflow_weightviz._glyphs"] = current
            mlflow_weightviz._glyphs = current
        assert type(r._fast).__module__ == module.__name__, "the composer is not the one asked for"
        return r, encoder

    for _ in range(args.rounds):
        made: dict[str, Any] = {}
        encoders: dict[str, Any] = {}
        for k, module in (("before", before), ("now", current)):
            made[k], encoders[k] = start(module)
        times: dict[str, list[float]] = {k: [] for k in made}
        for i in range(1, args.frames):
            for k in (["before", "now"] if i % 2 else ["now", "before"]):
                t0 = time.perf_counter()
                encoders[k], _ = encode_next(made[k], encoders[k], stack[i], titles[i], (0.0, 0.05))
                times[k].append(time.perf_counter() - t0)
            if not np.array_equal(encoders["before"].previous, encoders["now"].previous):
                sys.exit(f"frame {i}: the indices differ")
        b, n = (float(np.median(times[k][10:])) * 1e3 for k in ("before", "now"))
        print(f"{args.grid}: {args.rev} {b:.2f} ms/frame, now {n:.2f} ms/frame ({n / b:.2f}x); indices identical")


if __name__ == "__main__":
    main()
