"""The heatmap renderer: its layout, its checks, and matplotlib's drawing where the composer does not apply."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mlflow_weightviz.frames import HeatmapRenderer
from tests.helpers import NEGATIVE_ZERO
from tests.render_helpers import assert_same_look, make, roundtrip


@pytest.fixture
def pair() -> Iterator[list[HeatmapRenderer]]:
    made: list[HeatmapRenderer] = []
    yield made
    for r in made:
        r.close()


def test_wrong_shape_is_refused(pair: list[HeatmapRenderer]) -> None:
    r = make((2, 3))
    pair.append(r)
    with pytest.raises(ValueError, match=r"grid shape \(2, 3\); got shape \(3, 2\)"):
        r.render(np.zeros((3, 2)), "t")


def test_math_text_formats_use_matplotlib_drawing(pair: list[HeatmapRenderer], tmp_path: Path) -> None:
    # '$' makes matplotlib parse mathtext, which the glyph composition does not do: such a format is drawn
    # by matplotlib itself, and still looks like the reference.
    fast, ref = make((2, 2), fmt="${x:.2f}$"), make((2, 2), fmt="${x:.2f}$", reference=True)
    pair += [fast, ref]
    assert fast.reference
    values = np.array([[0.01, 0.02], [0.03, 0.04]])
    assert_same_look(roundtrip(fast.render(values, "m"), tmp_path / "a.png"),
                     roundtrip(ref.render(values, "m"), tmp_path / "b.png"))



def test_small_negative_values_never_read_minus_zero(pair: list[HeatmapRenderer]) -> None:
    # The 12×9 layer at 2 decimals: tiny negatives next to zeros. Flipping the tiny ones to positive
    # keeps every colour (with this scale ±0.0007 fall in one colormap entry), so a frame may differ only if
    # a text does, and the texts must not: both read "0.00".
    grid = (12, 9)
    rng = np.random.default_rng(6)
    values = rng.uniform(0.05, 0.6, grid)
    tiny = rng.random(grid) < 0.3
    values[tiny] = -rng.uniform(1e-4, 7e-4, int(tiny.sum()))
    values[0, :3] = [-0.2, -0.05, 0.0]  # real negatives keep their sign
    tiny[0, :3] = False
    flipped = np.where(tiny, -values, values)
    for reference in (False, True):
        r = make(grid, fmt="{x:.2f}", vmin=-0.3, vmax=0.7, cmap="RdBu_r", reference=reference)
        pair.append(r)
        assert r.reference is reference
        frame = r.render(values, "w")
        if reference:  # matplotlib's own texts, as drawn
            texts = [t.get_text() for t in r._texts]
            assert texts[:3] == ["-0.20", "-0.05", "0.00"]
            assert [t for t in texts if NEGATIVE_ZERO.search(t)] == []
            assert {texts[k] for k in np.flatnonzero(tiny)} == {"0.00"}
        assert np.array_equal(frame, r.render(flipped, "w"))
    assert NEGATIVE_ZERO.search(f"{-0.001:.2f}")  # what the cells used to read


def test_gifs_of_small_negative_values_show_no_minus_zero(tmp_path: Path) -> None:
    """Through render_file, the GIF's path: the automatic format, the fast renderer, the encoder."""
    from mlflow_weightviz.options import RenderOptions
    from mlflow_weightviz.pipeline import render_file
    from tests.helpers import read_gif

    rng = np.random.default_rng(7)
    base = rng.uniform(0.05, 0.6, (12, 9))
    tiny = rng.random((12, 9)) < 0.3
    base[tiny] = -rng.uniform(1e-4, 7e-4, int(tiny.sum()))  # unchanged between frames
    steps = [base + 0.02 * i * ~tiny for i in range(3)]
    gifs = []
    for name, arrays in (("signed", steps), ("flipped", [np.where(tiny, -a, a) for a in steps])):
        folder = tmp_path / name
        folder.mkdir()
        for i, a in enumerate(arrays):
            np.savez(folder / f"step_{i}.npz", w=a)
        result = render_file(folder, RenderOptions(vmin=-0.3, vmax=0.7, annotate=True), output_dir=tmp_path / name)
        gifs.append(read_gif(tmp_path / name / result.layers[0].file_name).frames)
    assert len(gifs[0]) == 3
    for a, b in zip(*gifs, strict=True):
        assert np.array_equal(a, b)
