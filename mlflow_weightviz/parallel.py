"""Drawing and encoding frames in worker processes (``workers=N``).

The main process prepares each layer into a memory-mapped stack on disk (see
:mod:`mlflow_weightviz.grid`) and describes it as a :class:`LayerJob`: the stack's path,
the renderer's arguments, and every frame's title and colour scale.

Workers only produce frames: each task is a contiguous range of a layer's frames (a
whole layer while there are at least as many layers left as workers, so no renderer is
built twice), and comes back as finished GIF image blocks (quantized to the shared
palette, cropped to the changed rectangle, LZW-compressed) and, when an MP4 or step
images want the pictures, their palette indices. The main process sends them through
the one frame loop to every writer (:mod:`mlflow_weightviz.pipeline`), so:

* frames keep their order and the GIF is byte for byte the single-process one: every
  worker derives the same palette from frame 0, and a chunk is diffed against the frame
  before it, which the worker draws again when it does not have it;
* memory stays flat: only a bounded number of tasks are in flight, and what comes back
  is compressed.

Workers are forked directly when the parent has no other threads (Linux), else started
by the ``forkserver`` (which preloads numpy, Pillow and matplotlib; a render starts it with
:func:`prestart` before its own preparation, so the imports overlap that) or ``spawn``, so
they never inherit a parent's threads; the worker functions are top-level functions.
"""

from __future__ import annotations

import math
import multiprocessing
import signal
import sys
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from mlflow_weightviz._signals import shielded

if TYPE_CHECKING:
    from mlflow_weightviz.encoders import FrameEncoder
    from mlflow_weightviz.frames import HeatmapRenderer

__all__ = ["EncodedFrame", "FramePool", "LayerJob", "build_renderer", "encode_range", "prestart"]

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
            (``grid`` included); plain values, so they pickle (see :func:`build_renderer`).
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


def build_renderer(spec: Mapping[str, Any]) -> HeatmapRenderer:
    """The heatmap renderer of a :attr:`LayerJob.renderer` spec (``grid`` and keyword arguments): the one builder."""
    from mlflow_weightviz.frames import HeatmapRenderer

    kwargs = dict(spec)
    rows, cols = tuple(kwargs.pop("grid"))
    return HeatmapRenderer((int(rows), int(cols)), **kwargs)


@dataclass(frozen=True)
class EncodedFrame:
    """One frame as a GIF image block, in order.

    Attributes:
        job: The layer it belongs to.
        index: Its place in the layer, from 0.
        block: The image block, or ``None`` when the frame equals the one before.
        palette: The GIF's (256, 3) uint8 colour table, given with frame 0 only.
        size: The frame size ``(width, height)`` in pixels.
        indices: The frame's (H, W) palette indices, when they were asked for.
    """

    job: LayerJob
    index: int
    block: bytes | None
    palette: np.ndarray | None
    size: tuple[int, int]
    indices: np.ndarray | None = None


@dataclass(frozen=True)
class _Task:
    key: str
    stack_path: str
    renderer: Mapping[str, Any]
    first: tuple[str, tuple[float, float]]
    start: int
    stop: int
    total: int
    titles: tuple[str, ...]  # frames max(0, start - 1) .. stop - 1
    limits: tuple[tuple[float, float], ...]
    indices: bool


class _LayerState:
    """What a worker keeps for the layer it is drawing: renderer, stack, and the encoder (palette, last frame).

    The palette comes from frame 0, as in one process. The worker that draws frame 0
    builds it from that very drawing (and returns it with the frame); a worker that
    starts a layer mid-way draws frame 0 once for it.
    """

    def __init__(self, task: _Task) -> None:
        self.renderer = build_renderer(task.renderer)
        self.stack = np.load(task.stack_path, mmap_mode="r")
        self.encoder: FrameEncoder | None = None
        self.last = -1  # the frame the encoder holds as the previous one
        if task.start > 0:
            first = self.draw(0, task.first[0], task.first[1])
            # Frame 0 mapped as the previous frame: the frame before this chunk is then composed from it.
            self.palette_from(first).reset(first)
            self.last = 0
        self.size = self.renderer.size

    def palette_from(self, first: np.ndarray) -> FrameEncoder:
        """The encoder, with the palette of ``first`` (frame 0 as drawn)."""
        from mlflow_weightviz.encoders import FrameEncoder, build_palette

        self.encoder = FrameEncoder(build_palette(first, self.renderer.palette_colors()))
        return self.encoder

    def draw(self, i: int, title: str, limits: tuple[float, float]) -> np.ndarray:
        return self.renderer.render(np.asarray(self.stack[i]), title, limits, copy=False)

    def seek(self, encoder: FrameEncoder, i: int, title: str, limits: tuple[float, float]) -> None:
        """Make frame ``i`` the encoder's previous frame without encoding it (a chunk starting after a gap).

        Composed as palette indices from the frame this worker drew last (a few ms), else (a
        new colour scale) drawn in RGB and mapped whole.
        """
        index = self.renderer.render_indices(np.asarray(self.stack[i]), title, limits, quantize=encoder.quantize,
                                             previous=encoder.previous)
        if index is None:
            encoder.reset(self.draw(i, title, limits))
        else:
            encoder.previous = index

    def close(self) -> None:
        self.renderer.close()
        del self.stack


_STATES: dict[str, _LayerState] = {}

_Result = tuple[np.ndarray | None, tuple[int, int], list[bytes | None], list[np.ndarray] | None]


def _run_task(task: _Task) -> _Result:
    """Worker side: draw, quantize, diff and compress frames ``start .. stop - 1`` of a layer."""
    from mlflow_weightviz.encoders import encode_next

    state = _STATES.get(task.key)
    if state is None:
        while len(_STATES) >= 2:  # a layer boundary may interleave two layers; keep no more
            _STATES.pop(next(iter(_STATES))).close()
        state = _STATES[task.key] = _LayerState(task)
    offset = max(0, task.start - 1)
    encoder = state.encoder
    if encoder is None:
        assert task.start == 0
    elif task.start == 0:
        encoder.previous = None
    elif state.last != task.start - 1:  # draw the frame before again, to diff against it
        state.seek(encoder, task.start - 1, task.titles[0], task.limits[0])
    blocks: list[bytes | None] = []
    indices: list[np.ndarray] | None = [] if task.indices else None
    for i in range(task.start, task.stop):
        # Frame 0 makes the palette from its drawing, as in one process.
        encoder, block = encode_next(state.renderer, encoder, np.asarray(state.stack[i]), task.titles[i - offset],
                                     task.limits[i - offset])
        state.encoder = encoder
        blocks.append(block)
        if indices is not None:
            assert encoder.previous is not None
            indices.append(encoder.previous)
    state.last = task.stop - 1
    assert encoder is not None
    table, size = (encoder.table if task.start == 0 else None), state.size
    if task.stop == task.total:  # nothing more of this layer comes to this worker
        _STATES.pop(task.key).close()
    return table, size, blocks, indices


def _tasks(job: LayerJob, start: int, stop: int, indices: bool = False) -> _Task:
    lo = max(0, start - 1)
    return _Task(job.key, job.stack_path, job.renderer, (job.titles[0], job.limits[0]), start, stop, job.frames,
                 job.titles[lo:stop], job.limits[lo:stop], indices)


def _encoded(job: LayerJob, start: int, result: _Result) -> Iterator[EncodedFrame]:
    table, size, blocks, indices = result
    for k, block in enumerate(blocks):
        yield EncodedFrame(job, start + k, block, table if start + k == 0 else None, size,
                           None if indices is None else indices[k])


def encode_range(job: LayerJob, start: int = 0, stop: int | None = None, *,
                 indices: bool = False) -> list[EncodedFrame]:
    """Encode frames ``start .. stop - 1`` of a layer in this process, exactly as a worker does."""
    stop = job.frames if stop is None else stop
    try:
        result = _run_task(_tasks(job, start, stop, indices))
    finally:
        state = _STATES.pop(job.key, None)
        if state is not None:
            state.close()
    return list(_encoded(job, start, result))


def _worker_signals() -> None:
    # A forked worker inherits the CLI's SIGTERM handler, which raises; a worker should just end.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _context() -> Any:
    """How workers start: forked from a single-threaded parent (Linux), else by the forkserver, else spawned."""
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1 and sys.platform == "linux":
        # A single-threaded parent forks safely, and its workers start at once with
        # everything already imported.
        return multiprocessing.get_context("fork")
    if "forkserver" in methods:
        context = multiprocessing.get_context("forkserver")
        # The server imports these once; every worker forked from it starts with them loaded.
        context.set_forkserver_preload(list(_PRELOAD))
        return context
    return multiprocessing.get_context("spawn")


def prestart() -> None:
    """Start the forkserver now when workers will come from it, so its imports overlap the caller's own work.

    Otherwise the server starts at the first task and its imports (about a second) come
    before any frame. Nothing happens when workers are forked directly or spawned.
    """
    if _context().get_start_method() == "forkserver":
        from multiprocessing import forkserver

        with shielded():  # never leave the server half started
            forkserver.ensure_running()


class FramePool:
    """Worker processes that turn :class:`LayerJob` frames into GIF image blocks, in order.

    Use it as a context manager; the workers stop at the end::

        with FramePool(2) as pool:
            for frame in pool.frames(jobs):
                ...  # frame.index, frame.block, frame.palette (with frame 0)

    Args:
        workers: Number of processes.
        chunk: Frames per task; by default up to :data:`MAX_CHUNK`, fewer for short layers so every
            worker gets some.
    """

    def __init__(self, workers: int, *, chunk: int | None = None) -> None:
        self.workers = workers
        self.chunk = chunk
        with shielded():
            self._pool = ProcessPoolExecutor(max_workers=workers, mp_context=_context(), initializer=_worker_signals)
        self._ahead = 2 * workers  # chunks in flight: keeps workers busy, bounds memory

    def __enter__(self) -> FramePool:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        with shielded():
            if isinstance(exc, KeyboardInterrupt):  # Ctrl-C or SIGTERM: stop the workers now, not after their chunk
                self.terminate()
            self.close()

    def terminate(self) -> None:
        """Stop the worker processes at once (their frames are dropped)."""
        for process in list((getattr(self._pool, "_processes", None) or {}).values()):
            if process.is_alive():
                process.terminate()

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

    def frames(self, jobs: Iterable[LayerJob], *, whole: int = 0, indices: bool = False) -> Iterator[EncodedFrame]:
        """Every frame of every job, in order. ``jobs`` is read lazily, a few tasks ahead of the caller.

        Args:
            jobs: The layers.
            whole: The first ``whole`` jobs go to the workers one whole layer per task
                (nothing but the blocks crosses back, and no renderer is built twice).
            indices: Also return each frame's palette indices (for MP4 and step images).
        """
        pending: deque[tuple[LayerJob, int, Future[_Result]]] = deque()

        def tasks() -> Iterator[tuple[LayerJob, int, int]]:
            for n, job in enumerate(jobs):
                size = job.frames if n < whole else self._chunk(job.frames)
                for start in range(0, job.frames, size):
                    yield job, start, min(job.frames, start + size)

        todo = tasks()

        def refill() -> None:
            while len(pending) < self._ahead:
                item = next(todo, None)
                if item is None:
                    return
                job, start, stop = item
                with shielded():  # submit may start a worker: never leave one half started
                    future = self._pool.submit(_run_task, _tasks(job, start, stop, indices))
                pending.append((job, start, future))

        refill()
        while pending:
            job, start, future = pending.popleft()
            result = future.result()
            refill()
            yield from _encoded(job, start, result)
