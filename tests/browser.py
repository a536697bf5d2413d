"""Headless Debian chromium driven by Playwright, for the tests that look at pages in a real browser."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


def chromium_path() -> str | None:
    if Path(CHROMIUM).exists():
        return CHROMIUM
    return shutil.which("chromium")


def launch() -> Iterator[Any]:
    """Yield a Playwright browser on Debian's chromium; skip, saying why, where it cannot be had."""
    executable = chromium_path()
    if executable is None:
        pytest.skip("Debian chromium is not installed (scripts/test.sh installs it with apt-get when run as root)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[test]')")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


def cell_point(page_or_frame: Any, row: int, col: int) -> tuple[float, float]:
    """Page coordinates of the centre of a player's cell, from the canvas geometry it publishes."""
    heat = page_or_frame.locator("#heat")
    box = heat.bounding_box()
    geometry = heat.evaluate("c => [c.width, c.height, +c.dataset.left, +c.dataset.top, +c.dataset.cell]")
    width, height, left, top, cell = geometry
    sx, sy = box["width"] / width, box["height"] / height
    return box["x"] + (left + (col + 0.5) * cell) * sx, box["y"] + (top + (row + 0.5) * cell) * sy
