"""Drawing and encoding frames in worker processes (``RenderOptions.workers``).

The main process prepares each layer into a memory-mapped stack on disk (see
:mod:`mlflow_weightviz.grid`) and describes it as a :class:`LayerJob`: the stack's path,
the renderer's arguments, and every frame's title and colour scale.

With at least as many layers as workers, each worker writes whole layers' GIFs
(:meth:`FramePool.write_layers`) with the single-process loop itself, so no renderer is
built twice. Otherwise workers take contiguous chunks of frames; each builds its own
renderer once per layer, reads its frames from the stack by index, and returns finished
GIF image blocks (quantized to the shared palette, cropped to the changed rectangle,
LZW-compressed). The main process only writes the blocks in order, so:

* frames keep their order and the GIF is byte for byte the single-process one: every
  worker derives the same palette from frame 0, and a chunk is diffed against the frame
  before it, which the worker draws again when it does not have it;
* memory stays flat: only a bounded number of chunks are in flight, and what comes back
  is compressed.

Workers are forked directly when the parent has no other threads (Linux), else started
by the ``forkserver`` (which preloads numpy, Pillow and matplotlib) or ``spawn``, so they
never inherit a parent's threads; the worker functions are top-level functions.
"""

from __future__ import annotations

import math
import multiprocessing
import sys
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import numpy as np

__all__ = ["EncodedFrame", "FramePool", "GifSpec", "LayerJob", "encode_range", "write_layer"]

_PRELOAD = ("numpy", "PIL.Image", "PIL.GifImagePlugin", "matplotlib.figure", "matplotlib.backends.backend_agg",
            "mlflow_weightviz.frames", "mlflow_weightviz.encoders", "mlflow_weightviz.parallel")

#: Frames per task at most: large enough to amortise a task, small enough to balance workers.
MAX_CHUNK = 16


@dataclass(frozen=True)
class LayerJob:
    """One layer to draw: where its frames are and how to draw each of them.

    Attributes:
        key: Unique within one render; workers keep a renderer per key.
        stack_path: A ``.npy`` file of shape (frames, rows, cols) with the values to draw.
        renderer: Keyword arguments of :class:`~mlflow_weightviz.frames.HeatmapRenderer`
            (``grid`` included); plain values, so they pickle.
        titles: Every frame's title.
        limits: Every frame's colour scale ``(vmin, vmax)``.
    """

    key: str
    stack_path: str
    renderer: Mapping[str, Any]
    titles: tuple[str, ...]
    limits: tuple[tuple[float, float], ...]

    @property
    def frames(self) -> int:
        """The number of frames."""
        return len(self.titles)


@dataclass(frozen=True)
class EncodedFrame:
    """One frame as a GIF image block, in order.

    Attributes:
        job: The layer it belongs to.
        index: Its place in the layer, from 0.
        block: The image block, or ``None`` when the frame equals the one before.
        palette: The GIF's (256, 3) uint8 colour table, given with frame 0 only.
        size: The frame size ``(width, height)`` in pixels.
    """

    job: LayerJob
    index: int
    block: bytes | None
    palette: np.ndarray | None
    size: tuple[int, int]


@dataclass(frozen=True)
class _Task:
    key: str
    stack_path: str
    renderer: Mapping[str, Any]
    first: tuple[str, tuple[float, float]]
    start: int
    stop: int
    titles: tuple[str, ...]  # frames max(0, start - 1) .. stop - 1
    limits: tuple[tuple[float, float], ...]


class _LayerState:
    """What a worker keeps for the layer it is drawing: renderer, stack, palette, last frame."""

    def __init__(self, task: _Task) -> None:
        from mlflow_weightviz.encoders import Quantizer, build_palette
        from mlflow_weightviz.frames import HeatmapRenderer

        kwargs = dict(task.renderer)
        grid = tuple(kwargs.pop("grid"))
        self.renderer = HeatmapRenderer((int(grid[0]), int(grid[1])), **kwargs)
        self.stack = np.load(task.stack_path, mmap_mode="r")
        first = self.renderer.render(np.asarray(self.stack[0]), task.first[0], task.first[1], copy=False)
        self.table = build_palette(first, self.renderer.palette_colors())
        self.quantize = Quantizer(self.table)
        self.size = self.renderer.size
        self.last: tuple[int, np.ndarray] | None = None

    def index(self, i: int, title: str, limits: tuple[float, float], previous: np.ndarray | None) -> np.ndarray:
        """Frame ``i`` as palette indices; ``previous`` (frame ``i - 1``) spares mapping unchanged pixels."""
        rgb = self.renderer.render(np.asarray(self.stack[i]), title, limits, copy=False)
        changed = self.renderer.changed_boxes
        if previous is None or changed is None:
            return self.quantize(rgb)
        index = previous.copy()
        for y0, y1, x0, x1 in changed:
            if y1 > y0 and x1 > x0:
                index[y0:y1, x0:x1] = self.quantize(np.ascontiguousarray(rgb[y0:y1, x0:x1]))
        return index

    def close(self) -> None:
        self.renderer.close()
        del self.stack


_STATES: dict[str, _LayerState] = {}


def _run_task(task: _Task) -> tuple[np.ndarray | None, tuple[int, int], list[bytes | None]]:
    """Worker side: draw, quantize, diff and compress frames ``start .. stop - 1`` of a layer."""
    from mlflow_weightviz.encoders import changed_box, encode_image

    state = _STATES.get(task.key)
    if state is None:
        while len(_STATES) >= 2:  # a layer boundary may interleave two layers; keep no more
            _STATES.pop(next(iter(_STATES))).close()
        state = _STATES[task.key] = _LayerState(task)
    offset = max(0, task.start - 1)
    previous: np.ndarray | None = None
    if task.start > 0:
        if state.last is not None and state.last[0] == task.start - 1:
            previous = state.last[1]
        else:
            previous = state.index(task.start - 1, task.titles[0], task.limits[0], None)
    blocks: list[bytes | None] = []
    for i in range(task.start, task.stop):
        index = state.index(i, task.titles[i - offset], task.limits[i - offset], previous)
        box = changed_box(previous, index)
        blocks.append(None if box is None else encode_image(index, box, previous))
        previous = index
    if previous is not None:
        state.last = (task.stop - 1, previous)
    return (state.table if task.start == 0 else None), state.size, blocks


def _tasks(job: LayerJob, start: int, stop: int) -> _Task:
    lo = max(0, start - 1)
    return _Task(job.key, job.stack_path, job.renderer, (job.titles[0], job.limits[0]), start, stop,
                 job.titles[lo:stop], job.limits[lo:stop])


@dataclass(frozen=True)
class GifSpec:
    """How a worker writes a whole layer's GIF: the file and the encoder's settings."""

    path: str
    frame_ms: int
    hold_last_ms: int | None
    loop: int | None


def write_layer(job: LayerJob, gif: GifSpec) -> int:
    """Draw every frame of a layer and write its GIF to ``gif.path``; returns the frame count.

    This is the single-process loop itself (one renderer, frames streamed into
    :class:`~mlflow_weightviz.encoders.GifEncoder`), so the bytes are the same wherever it runs.
    """
    from mlflow_weightviz.encoders import GifEncoder
    from mlflow_weightviz.frames import HeatmapRenderer

    kwargs = dict(job.renderer)
    grid = tuple(kwargs.pop("grid"))
    renderer = HeatmapRenderer((int(grid[0]), int(grid[1])), **kwargs)
    stack = np.load(job.stack_path, mmap_mode="r")
    try:
        with open(gif.path, "wb") as fh, GifEncoder(fh, frame_ms=gif.frame_ms, hold_last_ms=gif.hold_last_ms,
                                                    loop=gif.loop, palette_colors=renderer.palette_colors()) as enc:
            for i in range(job.frames):
                frame = renderer.render(np.asarray(stack[i]), job.titles[i], job.limits[i], copy=False)
                enc.add_frame(frame, renderer.changed_boxes)
    finally:
        renderer.close()
        del stack
    return job.frames


def encode_range(job: LayerJob, start: int = 0, stop: int | None = None) -> list[EncodedFrame]:
    """Encode frames ``start .. stop - 1`` of a layer in this process, exactly as a worker does."""
    stop = job.frames if stop is None else stop
    try:
        table, size, blocks = _run_task(_tasks(job, start, stop))
    finally:
        state = _STATES.pop(job.key, None)
        if state is not None:
            state.close()
    return [EncodedFrame(job, start + k, block, table if start + k == 0 else None, size)
            for k, block in enumerate(blocks)]


class FramePool:
    """Worker processes that turn :class:`LayerJob` frames into GIF image blocks, in order.

    Use it as a context manager; the workers stop at the end::

        with FramePool(2) as pool:
            for frame in pool.frames(jobs):
                ...  # frame.index, frame.block, frame.palette (with frame 0)

    Args:
        workers: Number of processes.
        chunk: Frames per task; by default up to 8, fewer for short layers so every
            worker gets some.
    """

    def __init__(self, workers: int, *, chunk: int | None = None) -> None:
        methods = multiprocessing.get_all_start_methods()
        context: Any = multiprocessing.get_context("spawn")
        if "fork" in methods and threading.active_count() == 1 and sys.platform == "linux":
            # A single-threaded parent forks safely, and its workers start at once with
            # everything already imported.
            context = multiprocessing.get_context("fork")
        elif "forkserver" in methods:
            context = multiprocessing.get_context("forkserver")
            # The server imports these once; every worker forked from it starts with them loaded.
            context.set_forkserver_preload(list(_PRELOAD))
        self.workers = workers
        self.chunk = chunk
        self._pool = ProcessPoolExecutor(max_workers=workers, mp_context=context)
        self._ahead = 2 * workers  # chunks in flight: keeps workers busy, bounds memory

    def __enter__(self) -> FramePool:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def peak_rss_mb(self) -> list[float]:
        """Each live worker's peak resident memory in MiB (Linux; empty elsewhere)."""
        out = []
        for pid in list(getattr(self._pool, "_processes", {}) or {}):
            try:
                with open(f"/proc/{pid}/status", encoding="ascii") as fh:
                    for line in fh:
                        if line.startswith("VmHWM:"):
                            out.append(int(line.split()[1]) / 1024)
            except OSError:
                continue
        return out

    def close(self) -> None:
        """Stop the workers, dropping work not started yet."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _chunk(self, frames: int) -> int:
        if self.chunk is not None:
            return max(1, self.chunk)
        return max(1, min(MAX_CHUNK, math.ceil(frames / (2 * self.workers))))

    def write_layers(self, jobs: Iterable[tuple[LayerJob, GifSpec]]) -> Iterator[LayerJob]:
        """Give each worker whole layers to write (:func:`write_layer`); yields each job when its GIF is done.

        Used when there are at least as many layers as workers: no renderer is built twice
        and nothing but the file name crosses between processes. ``jobs`` is read lazily,
        at most one layer per worker ahead; jobs come back in the order given.
        """
        pending: deque[tuple[LayerJob, Future[int]]] = deque()
        todo = iter(jobs)

        def refill() -> None:
            while len(pending) < self.workers:
                item = next(todo, None)
                if item is None:
                    return
                pending.append((item[0], self._pool.submit(write_layer, item[0], item[1])))

        refill()
        while pending:
            job, future = pending.popleft()
            future.result()
            refill()
            yield job

    def frames(self, jobs: Iterable[LayerJob]) -> Iterator[EncodedFrame]:
        """Every frame of every job, in order. ``jobs`` is read lazily, a layer ahead of the writer."""
        pending: deque[tuple[LayerJob, int, Future[Any]]] = deque()

        def tasks() -> Iterator[tuple[LayerJob, int, int]]:
            for job in jobs:
                size = self._chunk(job.frames)
                for start in range(0, job.frames, size):
                    yield job, start, min(job.frames, start + size)

        todo = tasks()

        def refill() -> None:
            while len(pending) < self._ahead:
                item = next(todo, None)
                if item is None:
                    return
                job, start, stop = item
                pending.append((job, start, self._pool.submit(_run_task, _tasks(job, start, stop))))

        refill()
        while pending:
            job, start, future = pending.popleft()
            table, size, blocks = future.result()
            refill()
            for k, block in enumerate(blocks):
                yield EncodedFrame(job, start + k, block, table if start + k == 0 else None, size)
