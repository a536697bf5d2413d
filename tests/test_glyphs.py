"""The glyph composer (the renderer's fast path): it runs on the installed matplotlib, and its frames look
like matplotlib's own drawing of the same frame."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pytest

from mlflow_weightviz import _glyphs
from mlflow_weightviz.frames import HeatmapRenderer, format_value, text_is_dark
from tests.render_helpers import assert_composed, assert_same_ink, assert_same_look, make, roundtrip


def test_installed_matplotlib_is_supported() -> None:
    # Fails loudly when CI installs a matplotlib outside the declared range: every frame would then be drawn
    # by matplotlib's slow path, and the comparisons below would no longer test the composer.
    assert _glyphs.supported(matplotlib.__version__), (matplotlib.__version__, _glyphs.SUPPORTED)
    assert _glyphs.available(), "a private matplotlib name the composer calls is missing"


def test_plain_frame_is_composed(pair: list[HeatmapRenderer]) -> None:
    r = make((8, 12))
    pair.append(r)
    r.render(np.random.default_rng(0).uniform(0.0, 0.05, (8, 12)), "fc1.weight  ·  step 10  ·  frame 2/3")
    assert_composed(r)
    assert r._fast is not None
    assert r._fast.glyphs  # the values' glyphs came from the composer's atlas
    assert None not in r._fast.title_layouts.values()  # and so did the title's


@pytest.mark.parametrize(("version", "inside"), [
    ("3.11.0", True), ("3.11.2", True), ("3.11.0rc1", True), ("3.11.1.dev42+g1234abc", True),
    ("3.10.8", False), ("3.8.0", False), ("3.12.0", False), ("3.12.0rc1", False), ("4.0.0", False),
    ("2.11.0", False), ("unknown", False), ("", False),
])
def test_version_guard(version: str, inside: bool) -> None:
    assert _glyphs.supported(version) is inside
    # The installed matplotlib has the private names, so only the version decides here.
    assert _glyphs.available(version) is inside


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
    assert_composed(fast)
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
    assert_composed(fast)
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
        assert_composed(fast)
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
    assert_composed(fast)


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
    assert_composed(first)
    assert_composed(second)


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


def test_small_cells_without_grid_lines(pair: list[HeatmapRenderer], tmp_path: Path) -> None:
    grid = (40, 128)  # cells too small for grid lines, tick marks still drawn at the edges
    fast, ref = make(grid, annotate=None, fmt="{x:.3f}"), make(grid, annotate=None, fmt="{x:.3f}", reference=True)
    pair += [fast, ref]
    assert fast._grid_kw is None
    values = np.random.default_rng(5).uniform(0, 0.05, grid)
    values[3, 4] = np.nan
    assert_same_look(roundtrip(fast.render(values, "small"), tmp_path / "a.png"),
                     roundtrip(ref.render(values, "small"), tmp_path / "b.png"))
    assert_composed(fast)


@pytest.mark.parametrize(("grid", "kwargs"), [((6, 9), {}), ((16, 16), {"size": (1500, 1000), "fontsize": 10})])
def test_changed_boxes_hold_every_changed_pixel(grid: tuple[int, int], kwargs: dict[str, object],
                                                pair: list[HeatmapRenderer]) -> None:
    r = make(grid, **kwargs)  # type: ignore[arg-type]
    pair.append(r)
    rng = np.random.default_rng(6)
    before = r.render(rng.uniform(0, 0.05, grid), "step 1")
    assert_composed(r)
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


def _indices_match_the_exact_mapping(pair: list[HeatmapRenderer], kwargs: dict[str, object],
                                     frames: list[tuple[np.ndarray, str]],
                                     limits: list[tuple[float, float] | None] | None = None,
                                     drawn_in_rgb: tuple[int, ...] = ()) -> int:
    """Two renderers of the same frames: one composes them as palette indices, the other draws them in RGB,
    mapped exactly. Every composed index frame equals the mapping, and the GIF blocks are the same bytes.
    Frames in ``drawn_in_rgb`` are drawn in RGB by the composing renderer too (as a worker does when it
    starts mid-layer), and composing goes on after them. Returns how many frames were composed."""
    from mlflow_weightviz.encoders import FrameEncoder, build_palette

    fast, drawn = make(**kwargs), make(**kwargs)  # type: ignore[arg-type]
    pair += [fast, drawn]
    mapped = composed = None
    count = 0
    for k, (values, title) in enumerate(frames):
        lim = None if limits is None else limits[k]
        rgb = drawn.render(values, title, lim, copy=False)
        if mapped is None or composed is None:
            table = build_palette(rgb, drawn.palette_colors())
            mapped, composed = FrameEncoder(table), FrameEncoder(table)
        index = None
        if k not in drawn_in_rgb:
            index = fast.render_indices(values, title, lim, quantize=composed.quantize, previous=composed.previous)
        if index is None:
            block = composed.encode(fast.render(values, title, lim, copy=False), fast.changed_boxes)
        else:
            exact = mapped.quantize(rgb)
            assert np.array_equal(index, exact), (k, int((index != exact).sum()))
            block = composed.encode(None, fast.changed_boxes, index=index)
            count += 1
        assert block == mapped.encode(rgb, drawn.changed_boxes)
        assert np.array_equal(composed.previous, mapped.previous)  # type: ignore[arg-type]
    return count


@pytest.mark.slow
@pytest.mark.parametrize("grid", [(8, 12), (16, 16)])
def test_composed_indices_equal_the_exact_mapping_on_the_benchmark_frames(
        grid: tuple[int, int], pair: list[HeatmapRenderer]) -> None:
    """The original's look (1500x1000 px, 9 decimals, YlGn 0-0.05): texts overflow their cells at 16x16."""
    rng = np.random.default_rng(11)
    w = np.clip(np.abs(rng.normal(0.025, 0.01, grid)), 0, 0.05)
    frames = []
    for t in range(8):
        frames.append((w.copy(), f"weights  ·  step {t * 3}  ·  frame {t + 1}/8"))
        w = np.clip(w + rng.normal(0, 0.004, grid), 0, 0.06)  # a few cells above vmax
    frames[3][0][0, 0] = np.nan
    assert _indices_match_the_exact_mapping(pair, {"grid": grid, "size": (1500, 1000), "fontsize": 10}, frames,
                                            drawn_in_rgb=(5,)) == 6
    assert_composed(pair[0])


@pytest.mark.parametrize("seed", range(6))
def test_composed_indices_equal_the_exact_mapping_on_random_small_cases(
        seed: int, pair: list[HeatmapRenderer]) -> None:
    rng = np.random.default_rng(100 + seed)
    grid = (int(rng.integers(1, 9)), int(rng.integers(1, 11)))
    cmap = ["YlGn", "RdBu_r", "viridis"][seed % 3]
    fmt = ["{x:.9f}", "{x:.3f}", "{x:+.2e}", "{x:.1f}"][seed % 4]
    size = None if seed % 2 else (int(rng.integers(300, 900)) * 2, int(rng.integers(200, 600)) * 2)
    kwargs = {"grid": grid, "cmap": cmap, "fmt": fmt, "vmin": -0.05, "vmax": 0.05, "size": size,
              "annotate": seed != 5}
    frames = []
    for t in range(6):
        values = rng.uniform(-0.07, 0.07, grid)
        values.ravel()[rng.integers(0, values.size)] = [np.nan, np.inf, -np.inf, 0.0, 1e9, -1e9][t]
        frames.append((values, f"layer {seed}  ·  step {t * 13}"))
    limits: list[tuple[float, float] | None] = [None, None, (-0.1, 0.1), None, None, None]
    # The first frame and the one with a new colour scale are drawn and mapped whole; the rest are composed.
    assert _indices_match_the_exact_mapping(pair, kwargs, frames, limits, drawn_in_rgb=(4,) if seed % 2 else ()) \
        == (3 if seed % 2 else 4)


@pytest.mark.parametrize("cmap", ["YlGn", "RdBu_r", "tab10"])
def test_cell_colour_entries_equal_matplotlibs_norm_and_colormap(cmap: str, pair: list[HeatmapRenderer]) -> None:
    # The composer picks each cell's colour from tables of the colormap's entries (without matplotlib's
    # masked-array calls): the colour and the text colour must be those matplotlib gives, at every edge.
    r = make((4, 6), cmap=cmap, vmin=-0.05, vmax=0.05)
    pair.append(r)
    r.render(np.zeros((4, 6)), "step 0")
    c = r._fast
    assert c is not None
    rng = np.random.default_rng(7)
    lo, hi = -0.05, 0.05
    edges = [lo, hi, np.nextafter(hi, -np.inf), np.nextafter(lo, -np.inf), np.nextafter(hi, np.inf), 0.0, -0.0,
             1e300, -1e300, np.nan, np.inf, -np.inf, lo + (hi - lo) * 0.5, lo + (hi - lo) / 256 * 3]
    for limits in [(lo, hi), (0.0, 1e-9), (-1e6, 1e-6)]:
        r._fast._set_limits(limits)
        for _ in range(5):
            values = rng.uniform(limits[0] - 0.01, limits[1] + 0.01, 24)
            values[:len(edges)] = rng.permutation(np.array(edges) * (limits[1] - limits[0]) / (hi - lo))
            values[:3] = [limits[0], limits[1], np.nan]
            entry = c._entries_of(values.reshape(4, 6))
            assert entry is not None
            normed = r._norm(np.ma.masked_invalid(values.reshape(4, 6)))
            np.testing.assert_array_equal(c.cmap_bytes[entry], r._cmap(normed, bytes=True)[..., :3].reshape(-1, 3))
            np.testing.assert_array_equal(c.cmap_dark[entry], r._text_dark(normed))
    # Scales this route does not cover leave it to matplotlib's own calls.
    for norm in (matplotlib.colors.Normalize(0.0, 0.0), matplotlib.colors.PowerNorm(0.5, 0.0, 1.0),
                 matplotlib.colors.Normalize(0.0, 1.0, clip=True)):
        r._norm = norm
        assert c._entries_of(np.zeros((4, 6))) is None


@pytest.mark.slow
def test_gif_colours_differ_from_matplotlib_no_more_than_the_rgb_path(pair: list[HeatmapRenderer]) -> None:
    """The frames as the GIF shows them (palette colours of the composed indices), against matplotlib's own
    drawing: no further from it than the exact mapping of the RGB frames, white stays white, and a colour
    in the palette is shown as itself (no 6-bit banding)."""
    from mlflow_weightviz.encoders import FrameEncoder, build_palette, encode_next

    grid = (8, 12)
    fast, ref = make(grid, size=(1500, 1000), fontsize=10), make(grid, size=(1500, 1000), fontsize=10, reference=True)
    pair += [fast, ref]
    in_rgb = make(grid, size=(1500, 1000), fontsize=10)  # today's path: frames drawn in RGB, mapped exactly
    pair.append(in_rgb)
    rng = np.random.default_rng(12)
    encoder = None
    for t in range(3):
        values = rng.uniform(0, 0.05, grid)
        rgb = in_rgb.render(values, f"step {t}", copy=False)
        if encoder is None:
            encoder = FrameEncoder(build_palette(rgb, in_rgb.palette_colors()))
        encoder, _ = encode_next(fast, encoder, values, f"step {t}", None)
        today = encoder.quantize(rgb)
        shown = encoder.table[encoder.previous].astype(np.int16)  # type: ignore[index]
        drawn = ref.render(values, f"step {t}").astype(np.int16)
        error = np.abs(shown - drawn).max(axis=2)
        today_error = np.abs(encoder.table[today].astype(np.int16) - drawn).max(axis=2)
        assert error.mean() <= today_error.mean()
        assert error.max() <= today_error.max()
        white = (drawn == 255).all(axis=2)
        assert white.any()
        assert (shown[white] == 255).all()  # white stays white (a 6-bit map gives 252)
        # Exact: a composed colour that is in the palette is shown as itself.
        composed = rgb.astype(np.int16)
        in_palette = (encoder.table[today].astype(np.int16) == composed).all(axis=2)
        assert (shown[in_palette] == composed[in_palette]).all()
        assert error.mean() < 1.0, error.mean()


def test_outlier_texts_wider_than_their_cells_are_blended_in_turn(pair: list[HeatmapRenderer], tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """An outlier's text ('-1000000000.000') overlaps its neighbours' although the layout expected texts to fit:
    the texts are then drawn column by column, so a pixel two texts ink is blended twice in matplotlib's order."""
    grid = (3, 4)
    fast, ref = make(grid, fmt="{x:.3f}", vmin=-0.05, vmax=0.05), make(grid, fmt="{x:.3f}", vmin=-0.05, vmax=0.05,
                                                                       reference=True)
    pair += [fast, ref]
    values = np.random.default_rng(3).uniform(-0.05, 0.05, grid)
    values[1, 1], values[1, 2] = -1e9, 1e9
    b = roundtrip(ref.render(values, "outliers"), tmp_path / "ref.png")
    a = roundtrip(fast.render(values, "outliers"), tmp_path / "fast.png")
    assert_composed(fast)
    assert_same_look(a, b)
    # The check sees the difference: drawing even then odd glyphs of every text at once (the passes for texts
    # that fit their cells), each pass blended at once, is off.
    monkeypatch.setattr(_glyphs, "_in_turn", lambda at: [slice(None)])
    monkeypatch.setattr(fast, "_cell", 10**6)  # every text "fits"
    fast._fast.started = False  # type: ignore[union-attr]
    c = roundtrip(fast.render(values, "outliers"), tmp_path / "overwritten.png")
    assert np.abs(c.astype(np.int16) - b).max() > 6
