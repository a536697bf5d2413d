"""Claims: one renderer per run at a time, on a tracking server that has no compare-and-set.

A renderer *claims* a run before rendering it by writing the run tag
``weightviz.claim = <owner>:<expires-at>`` (``owner`` is ``host/pid/random``,
``expires-at`` Unix seconds). MLflow's ``set_tag`` is last-writer-wins, so the claim is
checked, not trusted:

1. read the run; a claim of someone else that has not expired means *claimed*: stop;
2. write our claim;
3. wait a *settle* time (at least four times what our own write took), then read the
   tag again: if another renderer wrote after us, its value is there and we stop. Of two
   renderers that both saw no claim, both read back the later write, so exactly one goes on;
4. while rendering, a heartbeat thread renews the lease; just before logging the GIFs the
   claim is read once more and the render is abandoned if it is no longer ours;
5. after the GIFs and tags are logged the claim tag is deleted (only if still ours).

A renderer that crashes leaves its claim behind; it expires after the lease, so the run
is not blocked for ever, and at once for renderers on the same host, which can see that
the owning process is gone. The remaining window (a claimer stalled between its read and
its write for longer than the settle time) is covered by the backstop: artifact names
are fixed and the tags are set after the artifacts, so a second render overwrites the
same files with the same content and the tags stay consistent.

A claim that cannot be valid is not honoured: a tag that does not parse, an expiry that
is not a finite number, a same-host pid that no process can have, or an expiry more than
one lease (plus :data:`CLOCK_SKEW_S` of slack for clocks that disagree) in the future
counts as no claim, with a :class:`~mlflow_weightviz.options.WeightvizWarning` saying
so. Renderers sharing a store should therefore use the same lease.

The check for a dead owner on this host uses ``os.kill(pid, 0)``, which is POSIX-only;
the package declares POSIX in its metadata. Time comes from a :class:`Clock`, so the
logic can be tested without waiting.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import threading
import time
import uuid
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from mlflow_weightviz import _tracking
from mlflow_weightviz.errors import ClaimLostError, OutputError, UsageError, WeightvizError
from mlflow_weightviz.options import WeightvizWarning
from mlflow_weightviz.tags import TAG_CLAIM

if TYPE_CHECKING:
    from collections.abc import Callable

    from mlflow.tracking import MlflowClient

    from mlflow_weightviz.sinks import Sink

__all__ = ["CLOCK_SKEW_S", "MAX_LEASE_S", "MIN_LEASE_S", "SYSTEM_CLOCK", "TAG_CLAIM", "Claim", "ClaimInfo",
           "ClaimLostError", "Clock", "GuardedSink", "SystemClock", "claim_run", "honoured_claim", "lease_from_env",
           "parse_claim"]

#: Seconds a claim is valid without renewal; the heartbeat renews it every third of that.
DEFAULT_LEASE_S = 600.0
#: Shortest wait between writing a claim and reading it back.
DEFAULT_SETTLE_S = 0.5
LEASE_ENV = "MLFLOW_WEIGHTVIZ_CLAIM_LEASE"
SETTLE_ENV = "MLFLOW_WEIGHTVIZ_CLAIM_SETTLE"
_MAX_SETTLE_S = 10.0
#: The range ``MLFLOW_WEIGHTVIZ_CLAIM_LEASE`` must lie in: shorter leases beat the
#: server several times a second, longer ones block a crashed renderer's run for days.
MIN_LEASE_S = 5.0
MAX_LEASE_S = 86400.0
#: How far another host's clock may run ahead of ours: a claim that expires later than
#: now + lease + this cannot have been written by a renderer with the same lease.
CLOCK_SKEW_S = 60.0
#: Pids above this are not process ids on any POSIX system (Linux's pid_max is 2**22).
_MAX_PID = 2**31 - 1

_PROCESS_ID = uuid.uuid4().hex[:12]


class Clock(Protocol):
    """Where claims get the time and how they wait; tests pass a fake one."""

    def time(self) -> float:
        """Wall-clock Unix seconds (claims expire at a wall-clock time other hosts can read)."""
        ...

    def monotonic(self) -> float:
        """Seconds for measuring durations."""
        ...

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds``."""
        ...

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Wait until ``event`` is set or ``seconds`` pass; true when it was set."""
        ...


class SystemClock:
    """The real clock."""

    def time(self) -> float:
        """``time.time()``."""
        return time.time()

    def monotonic(self) -> float:
        """``time.monotonic()``."""
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        """``time.sleep(seconds)``."""
        time.sleep(seconds)

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """``event.wait(seconds)``."""
        return event.wait(seconds)


SYSTEM_CLOCK = SystemClock()


@dataclass(frozen=True)
class ClaimInfo:
    """A parsed ``weightviz.claim`` tag value."""

    owner: str
    expires_at: float

    def valid(self, now: float | None = None) -> bool:
        """Whether the lease has not run out and its owner may still be alive.

        A claim made on this host by a process that no longer exists is void at once, so
        a rerun after a crash does not wait out the lease.
        """
        if not math.isfinite(self.expires_at) or self.expires_at <= (time.time() if now is None else now):
            return False
        return not _dead_local_owner(self.owner)

    def problem(self, now: float, lease_s: float) -> str | None:
        """Why this claim cannot be valid, or ``None`` when it may be.

        Its expiry must be a finite time at most ``lease_s`` + :data:`CLOCK_SKEW_S` after
        ``now`` (a renderer writes now + its lease), and a pid of this host must be one a
        process can have.
        """
        if not math.isfinite(self.expires_at):
            return f"its expiry {self.expires_at} is not a time"
        if self.expires_at > now + lease_s + CLOCK_SKEW_S:
            return (f"it expires {self.expires_at - now:.0f} s from now, more than the lease of {lease_s:g} s "
                    f"(+{CLOCK_SKEW_S:g} s of clock skew)")
        host, _, rest = self.owner.partition("/")
        pid_text = rest.partition("/")[0]
        if host == socket.gethostname() and pid_text.isdigit() and not 0 < int(pid_text) <= _MAX_PID:
            return f"its pid {pid_text} is not a process id"
        return None

    def describe(self) -> str:
        """``owner (until HH:MM:SS UTC)`` for messages."""
        try:
            until = time.strftime("%H:%M:%S", time.gmtime(self.expires_at)) + " UTC"
        except (OverflowError, OSError, ValueError):  # not a time gmtime can show
            until = f"expiry {self.expires_at}"
        return f"{self.owner} (until {until})"


def _dead_local_owner(owner: str) -> bool:
    host, _, rest = owner.partition("/")
    pid_text = rest.partition("/")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    if not 0 < pid <= _MAX_PID:
        return True  # no process has it (and os.kill would overflow a C long)
    try:
        os.kill(pid, 0)  # signal 0: existence check only (POSIX; see the module docstring)
    except (ProcessLookupError, OverflowError):
        return True
    except PermissionError:
        return False  # alive, owned by another user
    return False


def parse_claim(value: str | None) -> ClaimInfo | None:
    """Parse ``<owner>:<expires-at>``; anything unreadable counts as no claim."""
    if not value or ":" not in value:
        return None
    owner, _, expires = value.rpartition(":")
    try:
        return ClaimInfo(owner, float(expires))
    except ValueError:
        return None


def honoured_claim(value: str | None, *, now: float, lease_s: float, run_id: str = "") -> ClaimInfo | None:
    """The claim in tag ``value`` if it holds the run now, else ``None``.

    A claim that cannot be valid (see :meth:`ClaimInfo.problem`, or a value that does not
    parse) counts as no claim, with a :class:`~mlflow_weightviz.options.WeightvizWarning`;
    an expired claim, or one of a process of this host that is gone, silently so.
    """
    if not value:
        return None
    where = f"run {run_id}: " if run_id else ""
    info = parse_claim(value)
    problem = "it does not read as <owner>:<expires-at>" if info is None else info.problem(now, lease_s)
    if problem is not None:
        shown = value if len(value) <= 80 else value[:77] + "..."
        warnings.warn(f"{where}ignoring the claim tag {TAG_CLAIM}={shown!r}: {problem}", WeightvizWarning,
                      stacklevel=2)
        return None
    assert info is not None
    return info if info.valid(now) else None


def lease_from_env() -> float:
    """The lease length: ``MLFLOW_WEIGHTVIZ_CLAIM_LEASE`` seconds, else 600.

    Raises:
        UsageError: The variable is set to anything but a number of seconds from
            :data:`MIN_LEASE_S` to :data:`MAX_LEASE_S`.
    """
    text = os.environ.get(LEASE_ENV, "").strip()
    if not text:
        return DEFAULT_LEASE_S
    try:
        lease = float(text)
    except ValueError:
        lease = math.nan
    if not MIN_LEASE_S <= lease <= MAX_LEASE_S:  # also false for nan
        msg = (f"{LEASE_ENV} must be a number of seconds from {MIN_LEASE_S:g} to {MAX_LEASE_S:g}; "
               f"got {text!r}")
        raise UsageError(msg)
    return lease


def _settle_from_env() -> float:
    text = os.environ.get(SETTLE_ENV, "").strip()
    if not text:
        return DEFAULT_SETTLE_S
    try:
        settle = float(text)
    except ValueError:
        settle = math.nan
    if not 0 <= settle <= _MAX_SETTLE_S:
        msg = f"{SETTLE_ENV} must be a number of seconds from 0 to {_MAX_SETTLE_S:g}; got {text!r}"
        raise UsageError(msg)
    return settle


def _check_lease(value: float) -> float:
    # The API may use short leases (tests do); the upper bound keeps the heartbeat's wait legal.
    if not 0 < value <= MAX_LEASE_S:
        msg = f"lease_s must be a number of seconds above 0 and at most {MAX_LEASE_S:g}; got {value}"
        raise UsageError(msg)
    return value


@dataclass
class Claim:
    """The outcome of trying to claim a run.

    Attributes:
        run_id: The run.
        held: Whether we hold the claim (always true when claiming was disabled).
        holder: The other renderer's claim when ``held`` is false.
        tags: The run's tags as read back after claiming; they show whether someone
            finished rendering the run while we were claiming it.
        client: The tracking client (``None`` when claiming was disabled).
        owner: Our claim's owner, ``host/pid/random``.
        lease_s: Lease length in seconds.
        clock: Where time comes from.
    """

    run_id: str
    held: bool
    holder: ClaimInfo | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    client: MlflowClient | None = None
    owner: str = ""
    lease_s: float = DEFAULT_LEASE_S
    clock: Clock = SYSTEM_CLOCK
    _lost: bool = False
    _stop: threading.Event = field(default_factory=threading.Event)

    def confirm(self) -> None:
        """Check, right before publishing, that the claim is still ours.

        Raises:
            ClaimLostError: Another renderer has taken the run over.
        """
        if self.client is None:
            return
        current = self._read()
        if self._lost or current is None or current.owner != self.owner:
            self._lost = True
            who = current.describe() if current else "nobody"
            msg = f"run {self.run_id}: claim lost to {who}"
            raise ClaimLostError(msg)

    def guard(self, sink: Sink) -> GuardedSink:
        """``sink``, calling :meth:`confirm` before it publishes anything."""
        return GuardedSink(sink, self)

    def renew(self) -> bool:
        """One heartbeat: extend the lease if the claim is still ours; false once it is lost.

        Raises:
            TrackingServerError: The server cannot be reached (the heartbeat tries again later).
            OutputError: The tag cannot be written.
        """
        current = self._read()
        if current is None or current.owner != self.owner:
            self._lost = True
            return False
        self._write()
        return True

    def _read(self) -> ClaimInfo | None:
        assert self.client is not None
        with _tracking.translate(f"reading the claim of run {self.run_id}"):
            tags = self.client.get_run(self.run_id).data.tags
        return parse_claim(tags.get(TAG_CLAIM))

    def _write(self) -> None:
        assert self.client is not None
        with _tracking.translate(f"claiming run {self.run_id}", writing=True):
            self.client.set_tag(self.run_id, TAG_CLAIM, f"{self.owner}:{self.clock.time() + self.lease_s:.3f}")

    def _heartbeat(self) -> None:
        # Renew the lease while the render runs; a failed renewal is retried at the next beat.
        while not self.clock.wait(self._stop, self.lease_s / 3):
            try:
                if not self.renew():
                    return
            except WeightvizError:
                continue

    def _release(self, *, written: bool = False) -> None:
        """Stop the heartbeat and delete the claim tag if it is ours (held, or ``written`` by us)."""
        self._stop.set()
        if self.client is None or not (self.held or written):
            return
        # Best effort: a claim we cannot delete simply expires.
        with contextlib.suppress(WeightvizError):
            current = self._read()
            if current is not None and current.owner == self.owner:
                with _tracking.translate(f"releasing the claim of run {self.run_id}", writing=True):
                    self.client.delete_tag(self.run_id, TAG_CLAIM)


@dataclass(frozen=True)
class GuardedSink:
    """Any sink, publishing only while the claim is still ours.

    Attributes:
        sink: The sink that publishes.
        claim: Confirmed right before ``sink`` is given anything.
    """

    sink: Sink
    claim: Claim

    def deliver(self, staged: Mapping[str, Path], tags: Mapping[str, str] | None = None,
                then: Callable[[], object] | None = None) -> Mapping[str, str | Path]:
        """Confirm the claim, then let the wrapped sink publish.

        Raises:
            ClaimLostError: Another renderer has taken the run over; nothing was published.
        """
        self.claim.confirm()
        return self.sink.deliver(staged, tags, then)


@contextlib.contextmanager
def claim_run(client: MlflowClient, run_id: str, *, enabled: bool = True, lease_s: float | None = None,
              settle_s: float | None = None, clock: Clock = SYSTEM_CLOCK) -> Iterator[Claim]:
    """Try to claim ``run_id`` for rendering; release the claim on exit.

    Args:
        client: The tracking client.
        run_id: The run to claim.
        enabled: ``False`` yields a held claim without touching the run (local-only renders).
        lease_s: Lease length, positive and finite; default ``MLFLOW_WEIGHTVIZ_CLAIM_LEASE``
            (5 to 86400 s) or 600 s.
        settle_s: Shortest wait before reading the claim back; default
            ``MLFLOW_WEIGHTVIZ_CLAIM_SETTLE`` (0 to 10 s) or 0.5 s.
        clock: Where time comes from and how to wait (tests pass a fake one).

    Yields:
        The claim; when ``claim.held`` is false another renderer has the run and nothing
        was written.

    Raises:
        UsageError: A bad lease or settle time (argument or environment variable).
        TrackingServerError: The server cannot be reached.
        OutputError: The claim tag cannot be written.
    """
    if not enabled:
        yield Claim(run_id, held=True, clock=clock)
        return
    lease = _check_lease(lease_s) if lease_s is not None else lease_from_env()
    settle = settle_s if settle_s is not None else _settle_from_env()
    owner = f"{socket.gethostname()}/{os.getpid()}/{_PROCESS_ID}-{uuid.uuid4().hex[:6]}"
    claim = Claim(run_id, held=False, client=client, owner=owner, lease_s=lease, clock=clock)
    with _tracking.translate(f"reading the claim of run {run_id}"):
        tag = client.get_run(run_id).data.tags.get(TAG_CLAIM)
    current = honoured_claim(tag, now=clock.time(), lease_s=lease, run_id=run_id)
    if current is not None:
        claim.holder = current
        yield claim
        return
    started = clock.monotonic()
    try:
        claim._write()
    except OutputError:
        # SQL stores insert a new tag with a unique key: of two first writes at the same
        # moment one is refused. The refused one lost the race if a rival claim is there.
        with _tracking.translate(f"reading the claim of run {run_id}"):
            tag = client.get_run(run_id).data.tags.get(TAG_CLAIM)
        current = honoured_claim(tag, now=clock.time(), lease_s=lease, run_id=run_id)
        if current is None:
            raise
        claim.holder = current
        yield claim
        return
    try:
        # Wait long enough for any rival who read "no claim" to have landed its write too.
        clock.sleep(min(_MAX_SETTLE_S, max(settle, 4 * (clock.monotonic() - started))))
        with _tracking.translate(f"reading the claim of run {run_id}"):
            run = client.get_run(run_id)
    except BaseException:
        claim._release(written=True)  # e.g. SIGTERM while settling: our write must not stay behind
        raise
    current = parse_claim(run.data.tags.get(TAG_CLAIM))
    claim.tags = dict(run.data.tags)
    if current is None or current.owner != owner:
        claim.holder = current
        yield claim
        return
    claim.held = True
    beat = threading.Thread(target=claim._heartbeat, name=f"weightviz-claim-{run_id[:8]}", daemon=True)
    try:
        beat.start()
        yield claim
    finally:
        claim._release()
        if beat.is_alive():
            beat.join(timeout=5)
