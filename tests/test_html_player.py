"""The interactive HTML player: its stored data read back, and the page driven in headless chromium."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlflow_weightviz.frames import format_value
from mlflow_weightviz.options import WeightvizWarning
from mlflow_weightviz.outputs.html_player import js_format_spec, read_player, write_player
from tests.browser import cell_point, launch


def walk(frames: int, shape: tuple[int, int], seed: int = 0, step: float = 0.002) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.1, size=shape)
    out = np.empty((frames, *shape))
    for i in range(frames):
        out[i] = w
        w = w + rng.normal(0, step, size=shape)
    return out


@pytest.fixture
def values() -> np.ndarray:
    stack = walk(6, (5, 7))
    stack[2, 1, 3] = np.nan
    stack[3, 0, 0] = np.inf
    stack[4, 4, 6] = -np.inf
    return stack


def test_values_read_back_exactly_as_float32(tmp_path: Path, values: np.ndarray) -> None:
    steps = [0, 10, 20, 30, 40, 50]
    path = write_player(tmp_path / "p.html", values, steps=steps, name="fc1", cmap="RdBu_r", fmt="{x:.3f}",
                        titles=[f"t{s}" for s in steps])
    meta, back = read_player(path)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, values.astype(np.float32))  # NaN and ±inf included
    assert meta["steps"] == steps
    assert meta["titles"] == [f"t{s}" for s in steps]
    assert meta["cmapName"] == "RdBu_r"
    assert (meta["rows"], meta["cols"]) == (5, 7)


def test_200_frames_of_64x64_stay_small(tmp_path: Path) -> None:
    stack = walk(200, (64, 64))
    path = write_player(tmp_path / "big.html", stack, steps=list(range(0, 2000, 10)), cmap="RdBu_r")
    size = path.stat().st_size
    raw_base64 = 200 * 64 * 64 * 4 * 4 / 3
    assert size < 0.9 * raw_base64  # compressed below plain base64 float32 (4.4 MB)
    assert size < 4 * 2**20
    _, back = read_player(path)
    np.testing.assert_array_equal(back, stack.astype(np.float32))


def test_warns_when_over_the_preview_limit(tmp_path: Path) -> None:
    with pytest.warns(WeightvizWarning, match="preview limit"):
        write_player(tmp_path / "p.html", walk(20, (16, 16)), steps=list(range(20)), size_limit=10_000)
    assert (tmp_path / "p.html").stat().st_size > 10_000


def test_rejects_a_stack_that_is_not_3d(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"must be 3D with shape \(frames, rows, cols\)"):
        write_player(tmp_path / "p.html", np.zeros((4, 4)), steps=[0])
    assert not (tmp_path / "p.html").exists()


def test_labels_cannot_break_out_of_the_script(tmp_path: Path) -> None:
    path = write_player(tmp_path / "p.html", walk(2, (1, 2)), steps=[0, 1], name="</script><b>x",
                        row_labels=["r"], col_labels=["</script>", "<!--"])
    text = path.read_text()
    assert text.count("</script>") == 3  # data, metadata and player script only
    meta, _ = read_player(path)
    assert meta["colLabels"] == ["</script>", "<!--"]


# ----------------------------------------------------------------- in the browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    yield from launch()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    page = browser.new_page(viewport={"width": 1100, "height": 800})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    page.close()
    assert errors == []


def open_player(page: Any, path: Path) -> None:
    page.goto(path.as_uri())
    page.wait_for_selector("#wv[data-ready='1']", timeout=20_000)


def test_player_page_steps_hovers_and_plays(tmp_path: Path, page: Any, values: np.ndarray,
                                            output_dir: Path) -> None:
    import matplotlib as mpl

    steps = [0, 10, 20, 30, 40, 50]
    path = write_player(tmp_path / "p.html", values, steps=steps, name="fc1", cmap="RdBu_r", fmt="{x:.4f}",
                        vmin=-0.3, vmax=0.3, row_labels=[f"emb_{i}" for i in range(5)],
                        col_labels=[f"in_{j}" for j in range(7)], frame_ms=50, hold_last_ms=50)
    open_player(page, path)
    root = page.locator("#wv")
    assert root.get_attribute("data-frame") == "0"
    assert page.locator("#stepinfo").text_content() == "step 0  ·  frame 1/6"
    assert page.locator("#slider").get_attribute("max") == "5"
    assert page.locator("#legend").evaluate("l => [+l.dataset.lo, +l.dataset.hi]") == [-0.3, 0.3]

    # keyboard: arrows, End, Home
    page.locator("#heat").click(position={"x": 1, "y": 1})
    page.keyboard.press("ArrowRight")
    assert root.get_attribute("data-step") == "10"
    page.keyboard.press("End")
    assert root.get_attribute("data-frame") == "5"
    page.keyboard.press("Home")
    assert root.get_attribute("data-frame") == "0"

    # slider
    page.locator("#slider").fill("2")
    assert root.get_attribute("data-step") == "20"
    assert page.locator("#title").text_content() == "fc1  ·  step 20"

    # hover: labels and the stored value, formatted like the GIF
    x, y = cell_point(page, 3, 5)
    page.mouse.move(x, y)
    tip = page.locator("#tip")
    expected = float(np.float32(values[2, 3, 5]))
    assert tip.text_content().splitlines() == [
        "row emb_3  ·  col in_5", f"step 20:  {format_value('{x:.4f}', expected)}",
        f"stored value (float32): {tip.get_attribute('data-value')}"]
    assert np.float32(float(tip.get_attribute("data-value"))) == np.float32(values[2, 3, 5])

    # the colour comes from matplotlib's colormap through the same normalisation
    cell = float(page.locator("#heat").get_attribute("data-cell"))
    left, top = (float(page.locator("#heat").get_attribute(f"data-{k}")) for k in ("left", "top"))
    px = page.locator("#heat").evaluate(
        "(c, [x, y]) => Array.from(c.getContext('2d').getImageData(x, y, 1, 1).data)",
        [int(left + 5 * cell + 4), int(top + 3 * cell + 4)])
    rgba = mpl.colormaps["RdBu_r"](mpl.colors.Normalize(-0.3, 0.3)(expected))
    assert px[:3] == [round(c * 255) for c in rgba[:3]]

    # a NaN cell reads nan and is grey
    x, y = cell_point(page, 1, 3)
    page.mouse.move(x, y)
    assert "step 20:  nan" in tip.text_content()
    px = page.locator("#heat").evaluate(
        "(c, [x, y]) => Array.from(c.getContext('2d').getImageData(x, y, 1, 1).data)",
        [int(left + 3 * cell + 4), int(top + 1 * cell + 4)])
    assert px[:3] == [128, 128, 128]
    page.screenshot(path=str(output_dir / "html-player-file.png"))

    # play advances the frames, pause stops them
    page.locator("#play").click()
    page.wait_for_function("document.getElementById('wv').dataset.frame !== '2'", timeout=5_000)
    page.locator("#play").click()
    assert root.get_attribute("data-playing") == "0"
    stopped = root.get_attribute("data-frame")
    page.wait_for_timeout(200)
    assert root.get_attribute("data-frame") == stopped


FORMATS = ["{x:.3f}", "{x:.2e}", "{x:.4g}", "{x:g}", "{x:+.1f}", "{x:.1%}", "{x:8.3f}", "{x:08.3f}",
           "w={x:.2f}!", "{x:,.1f}", "{x:.3E}", "{x: .2f}", "{x:.0f}", "{x:.6f}"]


def test_player_formats_values_like_python(tmp_path: Path, page: Any) -> None:
    path = write_player(tmp_path / "p.html", walk(1, (2, 2)), steps=[0])
    open_player(page, path)
    rng = np.random.default_rng(3)
    numbers = [0.0, -0.0, 1.0, -1.0, 0.5, 1.5, 2.5, -0.125, 0.375, 123456.789, -98765.4321, 1e-7, -3.2e-5,
               0.00012345, 7.1e12, -0.004, -0.0049999, -0.4, -0.00049, -1e-300]
    # Halves and eighths are exact ties: Python rounds them to even. Small negatives round to an unsigned zero.
    numbers += [float(v) for v in rng.normal(0, 0.2, 20)] + [float(v) for v in rng.normal(0, 1e4, 5)]
    numbers += [float("nan"), float("inf"), float("-inf")]
    cases = [(x, fmt) for fmt in FORMATS for x in numbers]
    got = page.evaluate("cases => cases.map(([x, spec]) => window.weightviz.format(x, spec))",
                        [[x if np.isfinite(x) else None, js_format_spec(fmt)] for x, fmt in cases
                         if np.isfinite(x)])
    expected = [format_value(fmt, x) for x, fmt in cases if np.isfinite(x)]
    mismatches = [(fmt, x, g, e) for (x, fmt), g, e in zip([c for c in cases if np.isfinite(c[0])], got, expected,
                                                           strict=True) if g != e]
    assert mismatches == []
    specials = page.evaluate("() => [NaN, Infinity, -Infinity].map(x => window.weightviz.format(x))")
    assert specials == ["nan", "inf", "-inf"]


def test_hover_names_the_block_of_a_pooled_cell(tmp_path: Path, page: Any) -> None:
    path = write_player(tmp_path / "p.html", walk(2, (3, 3)), steps=[5, 6], block=(4, 4), matrix=(10, 9),
                        row_labels=["r0", "r4", "r8"], col_labels=["c0", "c4", "c8"], note="pooled 10×9 → 3×3")
    open_player(page, path)
    page.mouse.move(*cell_point(page, 2, 1))
    assert page.locator("#tip").text_content().splitlines()[0] == "row r8 (8–9)  ·  col c4 (4–7)"
    assert "pooled 10×9 → 3×3" in page.locator("#note").text_content()
