"""Helpers shared by the renderer tests: build renderers, read frames back, compare them with matplotlib's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from mlflow_weightviz.frames import HeatmapRenderer


def make(grid: tuple[int, int], *, reference: bool = False, fmt: str = "{x:.9f}", vmin: float = 0.0,
         vmax: float = 0.05, cmap: str = "YlGn", annotate: bool | None = True,
         size: tuple[int, int] | None = None, fontsize: float | None = None) -> HeatmapRenderer:
    rows, cols = grid
    return HeatmapRenderer(grid, cmap=cmap, vmin=vmin, vmax=vmax, fmt=fmt, annotate=annotate,
                           row_labels=[f"embed_dim_{i}" for i in range(rows)],
                           col_labels=[f"orig_dim_{j}" for j in range(cols)],
                           title_sample="fc1.weight  ·  step 1000  ·  frame 100/100", size=size,
                           fontsize=fontsize, reference=reference)


def roundtrip(frame: np.ndarray, path: Path) -> np.ndarray:
    """Write a frame as PNG and read it back, as a person's viewer would."""
    Image.fromarray(frame).save(path)
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(np.int16)


def assert_composed(renderer: HeatmapRenderer) -> None:
    """The renderer drew its frames on the fast path (the glyph composer), not with matplotlib's drawing."""
    assert not renderer.reference, "the fast path fell back to matplotlib's drawing"
    assert renderer._fast is not None, "no frame was composed"


def assert_same_look(fast: np.ndarray, ref: np.ndarray) -> None:
    assert fast.shape == ref.shape
    diff = np.abs(fast - ref)
    # Agg and the numpy composition round 8-bit blends differently by a level or two;
    # anything larger would be a misplaced glyph, grid line or a wrong colour.
    assert diff.mean() < 0.1, diff.mean()
    assert diff.max() <= 6, np.argwhere(diff.max(axis=2) > 6)[:10]


def assert_same_ink(a: np.ndarray, b: np.ndarray) -> None:
    """Every clearly dark pixel (glyph, label) of one frame is dark in the other: texts sit in the same places."""
    for one, other in ((a, b), (b, a)):
        dark = one.sum(axis=2) < 3 * 70
        assert dark.sum() > 0
        assert (other.sum(axis=2)[dark] < 3 * 110).all()
