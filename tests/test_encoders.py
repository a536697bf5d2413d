"""The streaming GIF encoder: read the written GIF back with Pillow."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mlflow_weightviz.encoders import (
    TRANSPARENT,
    FrameEncoder,
    GifEncoder,
    Quantizer,
    build_palette,
    changed_box,
    encode_image,
    frames_to_gif,
)
from tests.helpers import gif_blocks, read_gif


def heat_frames(count: int, size: tuple[int, int] = (48, 64), seed: int = 0) -> list[np.ndarray]:
    """Frames made of a few flat colours with a moving block, like heatmap cells changing."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, (6, 3), dtype=np.uint8)
    out = []
    for t in range(count):
        frame = np.empty((*size, 3), np.uint8)
        frame[:] = colours[0]
        frame[-1, :6] = colours  # every colour is in the first frame, so in the palette
        frame[8:20, 4 + 2 * t:16 + 2 * t] = colours[1 + t % 5]
        out.append(frame)
    return out


def test_gif_reads_back_with_shared_palette_and_delays(tmp_path: Path) -> None:
    frames = heat_frames(5)
    frames.insert(3, frames[2].copy())  # an identical frame is merged into the one before
    path = frames_to_gif(frames, tmp_path / "a.gif", frame_ms=100, hold_last_ms=700, loop=0)
    gif = read_gif(path)
    assert gif.n_frames == 5
    assert gif.durations == [100, 100, 200, 100, 700]
    assert gif.loop == 0
    assert gif_blocks(path.read_bytes()) == (True, [False] * 5)  # one global palette for every frame
    for got, want in zip(gif.frames, [f for i, f in enumerate(frames) if i != 3], strict=True):
        assert np.array_equal(got, want)  # few colours: exact after quantizing


def test_decoded_frames_are_the_palette_mapping(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (30, 40, 3), dtype=np.uint8) for _ in range(3)]
    path = frames_to_gif(frames, tmp_path / "n.gif", palette_colors=np.array([[0, 0, 0], [255, 255, 255]], np.uint8))
    table = build_palette(frames[0], np.array([[0, 0, 0], [255, 255, 255]], np.uint8))
    assert {(0, 0, 0), (255, 255, 255)} <= {tuple(c) for c in table.tolist()}
    quantize = Quantizer(table)
    for got, frame in zip(read_gif(path).frames, frames, strict=True):
        index = quantize(frame)
        assert not (index == TRANSPARENT).any()  # the transparent slot is never a pixel's colour
        assert np.array_equal(got, table[index])


def test_only_the_changed_rectangle_is_written(tmp_path: Path) -> None:
    a = np.zeros((40, 50), np.uint8)
    b = a.copy()
    b[5:9, 10:13] = 7
    assert changed_box(None, a) == (0, 0, 50, 40)
    assert changed_box(a, a) is None
    assert changed_box(a, b) == (10, 5, 13, 9)
    with Image.open(io.BytesIO(b"GIF89a" + bytes(7) + encode_image(b, (10, 5, 13, 9)) + b";")) as im:
        assert im.tile[0][1][:2] == (10, 5)
    # Inside the rectangle, unchanged pixels are the transparent index: the block shrinks.
    noisy = np.random.default_rng(0).integers(0, 200, (40, 50), dtype=np.uint8)
    moved = noisy.copy()
    moved[2, 3], moved[30, 40] = 201, 202
    box = changed_box(noisy, moved)
    assert box == (3, 2, 41, 31)
    assert len(encode_image(moved, box, noisy)) < len(encode_image(moved, box)) / 4
    frames = heat_frames(4)
    path = frames_to_gif(frames, tmp_path / "d.gif")
    with Image.open(path) as im:
        im.seek(2)
        assert im.tile[0][1][2] - im.tile[0][1][0] < 64  # the second and later frames are cropped


def test_blocks_give_the_same_bytes_as_frames() -> None:
    frames = heat_frames(6)
    whole = io.BytesIO()
    with GifEncoder(whole, frame_ms=60, palette_colors=None) as gif:
        for f in frames:
            gif.add_frame(f)
    parts = io.BytesIO()
    table = build_palette(frames[0])
    encoder = FrameEncoder(table)
    with GifEncoder(parts, frame_ms=60) as gif:
        gif.start(table, (64, 48))
        for f in frames:
            gif.add_block(encoder.encode(f))
    assert whole.getvalue() == parts.getvalue()


def test_pillow_images_accepted_and_bad_frames_refused(tmp_path: Path) -> None:
    frames = [Image.fromarray(f) for f in heat_frames(2)]
    assert read_gif(frames_to_gif(frames, tmp_path / "p.gif")).n_frames == 2
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        frames_to_gif([np.zeros((4, 4), np.uint8)], tmp_path / "bad.gif")
    with pytest.raises(ValueError, match="every frame must be 64×48 px; got 10×10"):
        frames_to_gif([heat_frames(1)[0], np.zeros((10, 10, 3), np.uint8)], tmp_path / "bad2.gif")
    with pytest.raises(ValueError, match="at least one frame"):
        frames_to_gif([], tmp_path / "none.gif")
    assert not list(tmp_path.glob("bad*"))
    assert not list(tmp_path.glob("none*"))


def test_changed_boxes_give_the_same_bytes(tmp_path: Path) -> None:
    frames = heat_frames(5)
    boxes = [(8, 20, 4 + 2 * t - 2, 16 + 2 * t) for t in range(5)]  # where each frame differs from the last
    plain, hinted = io.BytesIO(), io.BytesIO()
    with GifEncoder(plain) as a, GifEncoder(hinted) as b:
        for t, f in enumerate(frames):
            a.add_frame(f)
            b.add_frame(f, None if t == 0 else [boxes[t]])
    assert plain.getvalue() == hinted.getvalue()


def test_changed_box_within_a_known_box_is_the_same_box() -> None:
    rng = np.random.default_rng(4)
    before = rng.integers(0, 255, (60, 80), dtype=np.uint8)
    after = before.copy()
    after[12:30, 7:41] = rng.integers(0, 255, (18, 34), dtype=np.uint8)
    whole = changed_box(before, after)
    assert whole is not None
    assert changed_box(before, after, (10, 35, 5, 50)) == whole
    assert changed_box(before, after, (0, 0, 0, 0)) is None  # told nothing changed anywhere
    assert changed_box(before, before, (10, 35, 5, 50)) is None


def test_quantizer_finds_the_exact_nearest_colour_lowest_index_first() -> None:
    """New colours are matched with one float32 product (|c|² - 2c·p + |p|²): the same answer as integer
    distances, ties to the lowest index, and the transparent slot never chosen."""
    rng = np.random.default_rng(7)
    table = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    table[10] = table[3]  # a tie: index 3 must win
    table[TRANSPARENT] = table[0]
    table[20] = (255, 255, 255)
    quantize = Quantizer(table)
    colours = np.vstack([rng.integers(0, 256, (50_000, 3)), table[:TRANSPARENT], [[255, 255, 255], [0, 0, 0]]])
    got = quantize(colours.astype(np.uint8)[:, None, :])[:, 0]
    distance = ((colours[:, None, :].astype(np.int64) - table[None, :TRANSPARENT].astype(np.int64)) ** 2).sum(axis=2)
    assert np.array_equal(got, distance.argmin(axis=1))
    assert got[50_000 + 10] == 3
    assert got[-2] == 20
    assert TRANSPARENT not in got
    assert np.array_equal(quantize(colours.astype(np.uint8)[:, None, :])[:, 0], got)  # remembered, same answer
