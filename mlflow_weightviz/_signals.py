"""SIGTERM as an exception in the main thread, like Ctrl-C, with short sections it must not cut.

The command line turns SIGTERM into :class:`~mlflow_weightviz.errors.Terminated` (a
``KeyboardInterrupt``), so every ``finally`` and context manager runs and a stopped
render cleans up as after Ctrl-C. An exception can arrive between any two bytecodes,
though: inside :func:`shielded` (e.g. while a process pool starts a worker and records
it) the signal is held and raised when the section ends.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

from mlflow_weightviz.errors import Terminated

__all__ = ["shielded", "sigterm_raises"]

_depth = 0  # nesting of shielded() sections in the main thread
_pending = False  # a SIGTERM arrived inside one
_fired = False  # Terminated was raised: later SIGTERMs must not cut the clean-up short


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Until the block ends, SIGTERM raises :class:`~mlflow_weightviz.errors.Terminated` in the main thread.

    Only the first SIGTERM raises; later ones are ignored so they cannot cut the clean-up
    short (SIGKILL still stops the process at once). Outside the main thread, where
    signals cannot be handled, nothing changes.
    """
    global _pending, _fired
    if not _main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        global _pending, _fired
        if _fired:
            return
        if _depth:
            _pending = True
            return
        _fired = True
        raise Terminated

    _pending = _fired = False
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        _pending = _fired = False


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """Hold SIGTERM's :class:`~mlflow_weightviz.errors.Terminated` until the block ends."""
    global _depth, _pending, _fired
    if not _main_thread():
        yield
        return
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if not _depth and _pending and not _fired:
            _pending = False
            _fired = True
            raise Terminated
