"""The heatmap renderer: its layout, its checks, and matplotlib's drawing where the composer does not apply."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mlflow_weightviz.frames import HeatmapRenderer
from tests.helpers import NEGATIVE_ZERO
from tests.render_helpers import assert_composed, assert_same_look, make, roundtrip


def test_wrong_shape_is_refused(pair: list[HeatmapRenderer]) -> None:
    r = make((2, 3))
    pair.append(r)
    with pytest.raises(ValueError, match=r"grid shape \(2, 3\); got shape \(3, 2\)"):
        r.render(np.zeros((3, 2)), "t")


@pytest.mark.parametrize("fmt", ["${x:.2f}$", "\\$x={x:.3f}", "{x:.2f} $\\undefinedcmd{{", "{x:.1e}$$"])
def test_dollar_formats_are_literal_text_on_both_paths(pair: list[HeatmapRenderer], tmp_path: Path,
                                                       fmt: str) -> None:
    # A '$' in the value format is a dollar sign, never math text (even invalid math text draws), and the
    # glyph composition draws it like matplotlib does.
    fast, ref = make((2, 3), fmt=fmt), make((2, 3), fmt=fmt, reference=True)
    pair += [fast, ref]
    values = np.array([[0.01, 0.02, -0.03], [0.04, np.nan, 0.05]])
    a = roundtrip(fast.render(values, "m$\\alpha$"), tmp_path / "a.png")
    assert_composed(fast)
    assert_same_look(a, roundtrip(ref.render(values, "m$\\alpha$"), tmp_path / "b.png"))


def test_names_and_labels_are_literal_and_long_ones_keep_the_frame_size(pair: list[HeatmapRenderer],
                                                                         tmp_path: Path) -> None:
    def renderer(name: str, label: str, reference: bool = False) -> HeatmapRenderer:
        r = HeatmapRenderer((3, 2), cmap="RdBu_r", vmin=-1.0, vmax=1.0, fmt="{x:.2f}", annotate=True,
                            row_labels=[f"{label}{i}" for i in range(3)], col_labels=[f"{label}{j}" for j in range(2)],
                            title_sample=f"{name}  ·  step 10  ·  frame 2/2", reference=reference)
        pair.append(r)
        return r

    values = np.array([[0.5, -0.5], [0.1, 0.0], [-0.9, 0.9]])
    short = renderer("blk.w", "r").render(values, "blk.w  ·  step 10  ·  frame 2/2")
    for name, label in (("$\\oops{$", "$\\x_"), ("".join(f"enc.l{i}.attn." for i in range(400)), "lbl" * 900),
                        ("a$." * 2400, "\\$" * 50)):
        fast, ref = renderer(name, label), renderer(name, label, reference=True)
        title = f"{name}  ·  step 10  ·  frame 2/2"
        a = roundtrip(fast.render(values, title), tmp_path / "a.png")
        assert_composed(fast)
        assert_same_look(a, roundtrip(ref.render(values, title), tmp_path / "b.png"))
        width, height = fast.size
        assert width < 1400, fast.size  # titles and labels end in an ellipsis instead
        assert height < 400, fast.size
        if len(name) < 20:
            assert abs(width - short.shape[1]) < 60


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
