"""File sizes of the output formats: GIF vs MP4 for 500 frames, and the HTML player for 200 frames of 64×64.

Usage: python benchmarks/format_sizes.py  (about a minute; prints a Markdown table)

The weights follow a random walk (N(0, 0.1) start, N(0, 0.002) steps), like slowly
training weights. Sizes depend on the data; these are for this walk.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

import mlflow_weightviz as wv


def walk(frames: int, shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.1, size=shape)
    out = np.empty((frames, *shape), dtype=np.float32)
    for i in range(frames):
        out[i] = w
        w = w + rng.normal(0, 0.002, size=shape)
    return out


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for frames, shape, formats in [(500, (16, 16), ("gif", "mp4")), (500, (64, 64), ("gif", "mp4")),
                                       (200, (64, 64), ("gif", "html"))]:
            case = root / f"{frames}-{shape[0]}"
            case.mkdir()
            np.save(case / "fc.npy", walk(frames, shape))
            result = wv.render_file(case / "fc.npy", wv.RenderOptions(formats=formats, frame_ms=100),
                                    output_dir=case / "out")
            sizes = {f: (case / "out" / f).stat().st_size for f in result.layers[0].files}
            rows.append((f"{frames} frames of {shape[0]}×{shape[1]}", sizes))
    print("| case | file sizes |")
    print("|---|---|")
    for name, sizes in rows:
        print(f"| {name} | " + ", ".join(f"{Path(f).suffix[1:]}: {mib(n)}" for f, n in sizes.items()) + " |")


if __name__ == "__main__":
    main()
