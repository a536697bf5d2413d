"""The heatmap renderer: its layout, its checks, and matplotlib's drawing where the composer does not apply."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mlflow_weightviz.frames import HeatmapRenderer
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

