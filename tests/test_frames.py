"""The heatmap renderer: the fast composed frames look like matplotlib's own drawing of the same frame."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mlflow_weightviz.frames import HeatmapRenderer, format_value, text_is_dark
from tests.helpers import NEGATIVE_ZERO


def make(grid: tuple[int, int], *, reference: bool = False, fmt: str = "{x:.9f}", vmin: float = 0.0,
         vmax: float = 0.05, cmap: str = "YlGn", annotate: bool | None = True,
         size: tuple[int, int] | None = None, fontsize: float | None = None) -> HeatmapRenderer:
    rows, cols = grid
    return HeatmapRenderer(grid, cmap=cmap, vmin=vmin, vmax=vmax, fmt=fmt, annotate=annotate,
                           row_labels=[f"embed_dim_{i}" for i in range(rows)],
                           col_labels=[f"orig_dim_{j}" for j in range(cols)],
                           title_sample="fc1.weight  ·  step 1000  ·  frame 100/100", size=size,
                           fontsize=fontsize, reference=reference)


@pytest.fixture
def pair() -> Iterator[list[HeatmapRenderer]]:
    made: list[HeatmapRenderer] = []
    yield made
    for r in made:
        r.close()


def roundtrip(frame: np.ndarray, path: Path) -> np.ndarray:
    """Write a frame as PNG and read it back, as a person's viewer would."""
    Image.fromarray(frame).save(path)
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(np.int16)


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


@pytest.mark.parametrize(("grid", "kwargs"), [
    ((8, 12), {}),
    ((8, 12), {"size": (1500, 1000), "fontsize": 10}),  # the original script's frame
    ((16, 16), {"size": (1500, 1000), "fontsize": 10}),  # texts wider than cells overlap, as in the original
])
def test_fast_frames_match_matplotlib(grid: tuple[int, int], kwargs: dict[str, object], pair: list[HeatmapRenderer],
                                      tmp_path: Path) -> None:
    fast, ref = make(grid, **kwargs), make(grid, reference=True, **kwargs)  # type: ignore[arg-type]
    pair += [fast, ref]
    rng = np.random.default_rng(1)
    for t in range(3):
        values = rng.uniform(0.0, 0.05, grid)
        title = f"fc1.weight  ·  step {t * 10}  ·  frame {t + 1}/3"
        a = roundtrip(fast.render(values, title), tmp_path / f"fast{t}.png")
        b = roundtrip(ref.render(values, title), tmp_path / f"ref{t}.png")
        assert_same_look(a, b)
        assert_same_ink(a, b)
    if "size" in kwargs:
        assert fast.size == (1500, 1000)
    assert fast._fast is not None
    assert None not in fast._fast.title_layouts.values()  # titles were composed from glyphs, not redrawn


def test_nan_inf_negative_and_diverging(pair: list[HeatmapRenderer], tmp_path: Path) -> None:
    grid = (5, 7)
    fast = make(grid, fmt="{x:.3f}", vmin=-1.0, vmax=1.0, cmap="RdBu_r")
    ref = make(grid, fmt="{x:.3f}", vmin=-1.0, vmax=1.0, cmap="RdBu_r", reference=True)
    pair += [fast, ref]
    values = np.linspace(-1, 1, 35).reshape(grid)
    values[0, 0], values[1, 1], values[2, 2] = np.nan, np.inf, -np.inf
    a = roundtrip(fast.render(values, "d"), tmp_path / "a.png")
    b = roundtrip(ref.render(values, "d"), tmp_path / "b.png")
    assert_same_look(a, b)
    assert [format_value("{x:.3f}", v) for v in (np.nan, np.inf, -np.inf)] == ["nan", "inf", "-inf"]


def test_per_frame_colour_scale_redraws_colorbar(pair: list[HeatmapRenderer], tmp_path: Path) -> None:
    grid = (4, 6)
    fast, ref = make(grid, fmt="{x:.2f}", vmin=0, vmax=1), make(grid, fmt="{x:.2f}", vmin=0, vmax=1, reference=True)
    pair += [fast, ref]
    rng = np.random.default_rng(2)
    frames = []
    for t, limits in enumerate([(0.0, 1.0), (0.0, 10.0), (-5.0, 5.0), (0.0, 1.0)]):
        values = rng.uniform(limits[0], limits[1], grid)
        a = roundtrip(fast.render(values, f"t{t}", limits), tmp_path / f"a{t}.png")
        b = roundtrip(ref.render(values, f"t{t}", limits), tmp_path / f"b{t}.png")
        assert_same_look(a, b)
        frames.append(a)
    assert not np.array_equal(frames[0], frames[1])


def test_unannotated_large_grid(pair: list[HeatmapRenderer], tmp_path: Path) -> None:
    grid = (32, 48)
    fast, ref = make(grid, annotate=None, fmt="{x:.3f}"), make(grid, annotate=None, fmt="{x:.3f}", reference=True)
    pair += [fast, ref]
    assert not fast.annotated
    values = np.random.default_rng(3).uniform(0, 0.05, grid)
    assert_same_look(roundtrip(fast.render(values, "big"), tmp_path / "a.png"),
                     roundtrip(ref.render(values, "big"), tmp_path / "b.png"))


def test_frame_does_not_depend_on_the_frames_before(pair: list[HeatmapRenderer]) -> None:
    # Worker processes draw frames out of order; each frame must come out the same.
    grid = (3, 4)
    first, second = make(grid, fmt="{x:.4f}"), make(grid, fmt="{x:.4f}")
    pair += [first, second]
    rng = np.random.default_rng(4)
    a, b = rng.uniform(0, 0.05, grid), rng.uniform(0, 0.05, grid)
    first.render(a, "a", (0.0, 0.05))
    first.render(b, "b", (0.0, 0.2))
    again = first.render(a, "a", (0.0, 0.05))
    assert np.array_equal(again, second.render(a, "a", (0.0, 0.05)))


def test_text_colour_follows_cell_luminance(pair: list[HeatmapRenderer]) -> None:
    grid = (1, 2)
    r = make(grid, fmt="{x:.2f}", vmin=0, vmax=1, cmap="Greys")
    pair.append(r)
    frame = r.render(np.array([[0.0, 1.0]]), "t")  # a white cell and a black cell
    fast = r._fast
    assert fast is not None
    x_mid = int(fast.posx[0] + fast.posx[1]) // 2
    y0, y1 = fast.y0, fast.y1
    light_cell, dark_cell = frame[y0:y1, fast.x0:x_mid], frame[y0:y1, x_mid:fast.x1]
    assert (light_cell.sum(axis=2) < 200).sum() > 20  # dark text on the white cell
    assert (dark_cell.sum(axis=2) > 600).sum() > 20  # light text on the black cell
    assert list(text_is_dark(np.array([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 1.0]]))) == [True, False]


def test_wrong_shape_is_refused(pair: list[HeatmapRenderer]) -> None:
    r = make((2, 3))
    pair.append(r)
    with pytest.raises(ValueError, match=r"grid shape \(2, 3\); got shape \(3, 2\)"):
        r.render(np.zeros((3, 2)), "t")


def test_small_cells_without_grid_lines(pair: list[HeatmapRenderer], tmp_path: Path) -> None:
    grid = (40, 128)  # cells too small for grid lines, tick marks still drawn at the edges
    fast, ref = make(grid, annotate=None, fmt="{x:.3f}"), make(grid, annotate=None, fmt="{x:.3f}", reference=True)
    pair += [fast, ref]
    assert fast._grid_kw is None
    values = np.random.default_rng(5).uniform(0, 0.05, grid)
    values[3, 4] = np.nan
    assert_same_look(roundtrip(fast.render(values, "small"), tmp_path / "a.png"),
                     roundtrip(ref.render(values, "small"), tmp_path / "b.png"))


@pytest.mark.parametrize(("grid", "kwargs"), [((6, 9), {}), ((16, 16), {"size": (1500, 1000), "fontsize": 10})])
def test_changed_boxes_hold_every_changed_pixel(grid: tuple[int, int], kwargs: dict[str, object],
                                                pair: list[HeatmapRenderer]) -> None:
    r = make(grid, **kwargs)  # type: ignore[arg-type]
    pair.append(r)
    rng = np.random.default_rng(6)
    before = r.render(rng.uniform(0, 0.05, grid), "step 1")
    assert r.changed_boxes is None  # the first frame may differ anywhere
    for t in range(2, 4):
        after = r.render(rng.uniform(0, 0.05, grid), f"step {t * 7}")
        boxes = r.changed_boxes
        assert boxes is not None
        inside = np.zeros(before.shape[:2], dtype=bool)
        for y0, y1, x0, x1 in boxes:
            inside[y0:y1, x0:x1] = True
        differ = (before != after).any(axis=2)
        assert differ.any()
        assert not (differ & ~inside).any()
        before = after
    r.render(rng.uniform(0, 0.05, grid), "new scale", (0.0, 0.1))
    assert r.changed_boxes is None  # the colorbar was redrawn


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
