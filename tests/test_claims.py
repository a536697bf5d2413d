"""Claims logic on a real embedded MLflow store, with a fake clock: no test waits for real time."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import pytest

from mlflow_weightviz.automation.claims import (
    TAG_CLAIM,
    ClaimInfo,
    ClaimLostError,
    claim_run,
    parse_claim,
)
from mlflow_weightviz.sinks import LocalSink
from tests.helpers import make_run


class FakeClock:
    """Time moves only when the code sleeps or the test calls :meth:`advance`."""

    def __init__(self, start: float = 1_900_000_000.0) -> None:
        self.now = start
        self.mono = 0.0
        self.sleeps: list[float] = []
        self._cond = threading.Condition()
        self._deadlines: list[float] = []
        self._entries = 0  # calls of wait(): the heartbeat is back waiting after a beat

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.mono

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        with self._cond:
            self.now += seconds
            self.mono += seconds

    def wait(self, event: threading.Event, seconds: float) -> bool:
        with self._cond:
            deadline = self.now + seconds
            self._deadlines.append(deadline)
            self._entries += 1
            self._cond.notify_all()
            # The short real timeout only notices event.set(), which does not notify us.
            while not event.is_set() and self.now < deadline:
                self._cond.wait(0.02)
            self._deadlines.remove(deadline)
        return event.is_set()

    def advance(self, seconds: float) -> None:
        """Move time on; when a heartbeat falls due, return after it ran and waits again."""
        with self._cond:
            before = self._entries
            self.now += seconds
            self.mono += seconds
            due = any(d <= self.now for d in self._deadlines)
            self._cond.notify_all()
            if due:
                assert self._cond.wait_for(lambda: self._entries > before, timeout=30), "heartbeat did not run"


def claim_tag(run_id: str) -> str | None:
    from mlflow.tracking import MlflowClient

    return MlflowClient().get_run(run_id).data.tags.get(TAG_CLAIM)


def client():  # type: ignore[no-untyped-def]
    from mlflow.tracking import MlflowClient

    return MlflowClient()


# ------------------------------------------------------------------ parsing, validity


def test_parse_claim() -> None:
    assert parse_claim("host/12/abc:1700000000.500") == ClaimInfo("host/12/abc", 1700000000.5)
    assert parse_claim("a:b:c/1/x:12") == ClaimInfo("a:b:c/1/x", 12.0)  # the owner may hold colons
    for bad in (None, "", "no-colon", "owner:not-a-number"):
        assert parse_claim(bad) is None


def test_claim_validity_follows_lease_and_local_owner() -> None:
    now = 1_000.0
    assert ClaimInfo("other-host/1/x", now + 1).valid(now)
    assert not ClaimInfo("other-host/1/x", now).valid(now)  # expired at that very second
    here = socket.gethostname()
    assert ClaimInfo(f"{here}/{os.getpid()}/x", now + 1).valid(now)  # ourselves: alive
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    dead_pid = int(done.stdout)
    assert not ClaimInfo(f"{here}/{dead_pid}/x", now + 1).valid(now)  # a process of this host that is gone
    assert ClaimInfo(f"elsewhere/{dead_pid}/x", now + 1).valid(now)  # another host's pids are not ours to check
    assert "until" in ClaimInfo("o/1/x", 0.0).describe()


# ------------------------------------------------------------------------ claim_run


def test_claim_is_written_settled_and_released() -> None:
    run_id = make_run()
    clock = FakeClock()
    with claim_run(client(), run_id, lease_s=60, settle_s=0.25, clock=clock) as claim:
        assert claim.held
        assert claim.holder is None
        info = parse_claim(claim_tag(run_id))
        assert info is not None
        assert info.owner == claim.owner
        assert info.owner.startswith(f"{socket.gethostname()}/{os.getpid()}/")
        assert info.expires_at == pytest.approx(clock.now - 0.25 + 60, abs=1e-3)  # written before the settle
        assert clock.sleeps == [0.25]  # the write took no (fake) time, so the shortest settle
        claim.confirm()
    assert claim_tag(run_id) is None


def test_settle_time_grows_with_the_write_time_up_to_a_cap() -> None:
    class SlowWrites(FakeClock):
        def monotonic(self) -> float:
            self.mono += 1.0  # every look at the stopwatch sees one more second: the write took 1 s
            return self.mono

    run_id = make_run()
    clock = SlowWrites()
    with claim_run(client(), run_id, settle_s=0.1, clock=clock) as claim:
        assert claim.held
    assert clock.sleeps == [4.0]  # four times the write
    clock = SlowWrites()
    with claim_run(client(), make_run(), settle_s=30.0, clock=clock):
        pass
    assert clock.sleeps == [10.0]  # never more than the cap


def test_foreign_valid_claim_blocks_and_is_left_alone() -> None:
    run_id = make_run()
    clock = FakeClock()
    foreign = f"other-host/123/abc:{clock.now + 300:.3f}"
    client().set_tag(run_id, TAG_CLAIM, foreign)
    with claim_run(client(), run_id, clock=clock) as claim:
        assert not claim.held
        assert claim.holder == parse_claim(foreign)
        assert clock.sleeps == []  # nothing written, nothing to settle
    assert claim_tag(run_id) == foreign


def test_expired_claim_is_taken_over() -> None:
    run_id = make_run()
    clock = FakeClock()
    client().set_tag(run_id, TAG_CLAIM, f"crashed-host/9/dead:{clock.now - 1:.3f}")
    with claim_run(client(), run_id, settle_s=0.1, clock=clock) as claim:
        assert claim.held
    assert claim_tag(run_id) is None


def test_rival_write_during_settle_wins() -> None:
    """A rival that read "no claim" before our write lands its write while we settle: it goes on, we stop."""
    run_id = make_run()
    rival = "rival-host/7/r"

    class RivalWrites(FakeClock):
        def sleep(self, seconds: float) -> None:
            client().set_tag(run_id, TAG_CLAIM, f"{rival}:{self.now + 600:.3f}")
            super().sleep(seconds)

    with claim_run(client(), run_id, settle_s=0.1, clock=RivalWrites()) as claim:
        assert not claim.held
        assert claim.holder is not None
        assert claim.holder.owner == rival
        assert claim.tags[TAG_CLAIM].startswith(rival)
    assert (claim_tag(run_id) or "").startswith(rival)  # the winner's claim is not ours to release


def test_racing_claimers_one_wins() -> None:
    """Three claimers all read "no claim", all write, and all read back after settling: exactly one goes on."""
    claimers = 3

    class Race(FakeClock):
        """Everyone reads before anyone writes; writes go one at a time; everyone writes before reading back."""

        def __init__(self) -> None:
            super().__init__()
            self.read = threading.Barrier(claimers, timeout=30)
            self.written = threading.Barrier(claimers, timeout=30)
            self.turn = threading.Lock()
            self.local = threading.local()

        def monotonic(self) -> float:
            if not getattr(self.local, "started", False):  # first call: right before the write
                self.local.started = True
                self.read.wait()
                self.turn.acquire()
            return super().monotonic()

        def sleep(self, seconds: float) -> None:  # right after the write
            self.turn.release()
            self.written.wait()

    for _ in range(3):
        run_id = make_run()
        clock = Race()
        held: list[bool] = []
        release = threading.Event()

        def claimer(run_id: str = run_id, clock: Race = clock, held: list[bool] = held,
                    release: threading.Event = release) -> None:
            with claim_run(client(), run_id, settle_s=0.1, clock=clock) as claim:
                held.append(claim.held)
                release.wait(30)  # hold it while the others read it back

        threads = [threading.Thread(target=claimer) for _ in range(claimers)]
        for t in threads:
            t.start()
        while len(held) < claimers and any(t.is_alive() for t in threads):
            threading.Event().wait(0.01)
        release.set()
        for t in threads:
            t.join(timeout=30)
        assert sorted(held) == [False, False, True]
        assert claim_tag(run_id) is None  # released


def test_lease_is_renewed_while_held() -> None:
    run_id = make_run()
    clock = FakeClock()
    with claim_run(client(), run_id, lease_s=0.9, settle_s=0.05, clock=clock) as claim:
        assert claim.held
        first = parse_claim(claim_tag(run_id))
        for _ in range(5):  # 1.5 s: longer than the lease, so only renewals keep it valid
            clock.advance(0.3)
        now = parse_claim(claim_tag(run_id))
        assert first is not None
        assert now is not None
        assert now.owner == first.owner == claim.owner
        assert now.expires_at > first.expires_at
        assert now.expires_at == pytest.approx(clock.now + 0.9, abs=1e-3)  # renewed at the last beat
        assert now.valid(clock.now)
        claim.confirm()
        client().set_tag(run_id, TAG_CLAIM, f"other/2/y:{clock.now + 60:.3f}")
        with pytest.raises(ClaimLostError, match="claim lost to other/2/y"):
            claim.confirm()
        assert not claim.renew()  # the heartbeat gives up on a claim that is no longer ours
    info = parse_claim(claim_tag(run_id))
    assert info is not None
    assert info.owner == "other/2/y"


def test_disabled_claim_touches_nothing() -> None:
    run_id = make_run()
    clock = FakeClock()
    with claim_run(client(), run_id, enabled=False, clock=clock) as claim:
        assert claim.held
        claim.confirm()  # no client: nothing to check
    assert claim_tag(run_id) is None
    assert clock.sleeps == []


# -------------------------------------------------------------------------- the guard


def test_guard_publishes_only_while_the_claim_is_ours(tmp_path: Path) -> None:
    run_id = make_run()
    staged = tmp_path / "staged.gif"
    staged.write_bytes(b"GIF89a")
    out = tmp_path / "out"
    out.mkdir()
    clock = FakeClock()
    with claim_run(client(), run_id, settle_s=0.05, clock=clock) as claim:
        guarded = claim.guard(LocalSink(output_dir=out))  # any sink, not only a run's
        assert dict(guarded.deliver({"fc": staged})) == {"fc": out / "staged.gif"}
        client().set_tag(run_id, TAG_CLAIM, f"thief/1/x:{clock.now + 300:.3f}")
        (out / "staged.gif").unlink()
        called: list[bool] = []
        with pytest.raises(ClaimLostError, match="thief/1/x"):
            guarded.deliver({"fc": staged}, then=lambda: called.append(True))
    assert not (out / "staged.gif").exists()
    assert called == []


# ------------------------------------------------------------------ impossible claims


def _impossible_claims(now: float, lease: float) -> list[str]:
    here = socket.gethostname()
    return [
        "rival/41/k:NaN",
        "rival/41/k:+Infinity",
        "rival/41/k:3e308000",  # overflows to inf
        f"{here}/{2**64 + 7}/k:{now + lease / 2:.3f}",  # a pid no process can have (and os.kill overflows)
        f"{here}/0/k:{now + lease / 2:.3f}",
        f"far-away/9/k:{now + lease + 7200:.3f}",  # written by nobody with this lease
        f"far-away/9/k:{now * 50:.3f}",
        "two words without a colon",
        "rival/41/k:soon",
    ]


@pytest.mark.parametrize("index", range(9))
def test_impossible_claims_count_as_no_claim_with_a_warning(index: int) -> None:
    from mlflow_weightviz.options import WeightvizWarning

    run_id = make_run()
    clock = FakeClock()
    value = _impossible_claims(clock.now, 120.0)[index]
    client().set_tag(run_id, TAG_CLAIM, value)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with claim_run(client(), run_id, lease_s=120, settle_s=0.1, clock=clock) as claim:
            held, owner, info = claim.held, claim.owner, parse_claim(claim_tag(run_id))
    assert [str(w.message) for w in caught if issubclass(w.category, WeightvizWarning)], value
    assert any("ignoring the claim tag weightviz.claim" in str(w.message) for w in caught)
    assert held, value
    assert info is not None
    assert info.owner == owner
    assert claim_tag(run_id) is None  # ours, released; the impossible one was overwritten


def test_a_claim_within_lease_plus_clock_skew_is_honoured() -> None:
    from mlflow_weightviz.automation.claims import CLOCK_SKEW_S

    run_id = make_run()
    clock = FakeClock()
    value = f"ahead/3/q:{clock.now + 45 + CLOCK_SKEW_S / 2:.3f}"  # a clock a little ahead of ours
    client().set_tag(run_id, TAG_CLAIM, value)
    with claim_run(client(), run_id, lease_s=45, settle_s=0.1, clock=clock) as claim:
        assert not claim.held
        assert claim.holder is not None
        assert claim.holder.owner == "ahead/3/q"
    assert claim_tag(run_id) == value


def test_describe_never_fails() -> None:
    for expires in (float("nan"), float("inf"), -float("inf"), 1e300):
        assert ClaimInfo("o/2/z", expires).describe().startswith("o/2/z (until ")


@pytest.mark.parametrize("value", ["0", "-30", "nan", "inf", "4.9", "86401", "1e12", "ten", "-inf"])
def test_lease_variable_out_of_range_is_a_usage_error(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow_weightviz import UsageError
    from mlflow_weightviz.automation.claims import LEASE_ENV, lease_from_env

    monkeypatch.setenv(LEASE_ENV, value)
    with pytest.raises(UsageError, match=f"{LEASE_ENV} must be a number of seconds from 5 to 86400"):
        lease_from_env()
    run_id = make_run()
    with pytest.raises(UsageError), claim_run(client(), run_id, clock=FakeClock()):
        pass
    assert claim_tag(run_id) is None  # nothing written


@pytest.mark.parametrize(("value", "lease"), [("", 600.0), ("5", 5.0), ("86400", 86400.0), (" 90.5 ", 90.5)])
def test_lease_variable_in_range(value: str, lease: float, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow_weightviz.automation.claims import LEASE_ENV, lease_from_env

    monkeypatch.setenv(LEASE_ENV, value)
    assert lease_from_env() == lease


@pytest.mark.parametrize("lease", [0.0, -2.0, float("nan"), float("inf"), 1e7])
def test_lease_argument_must_be_positive_and_finite(lease: float) -> None:
    from mlflow_weightviz import UsageError

    run_id = make_run()
    with pytest.raises(UsageError, match="lease_s must be"), claim_run(client(), run_id, lease_s=lease,
                                                                       clock=FakeClock()):
        pass
    assert claim_tag(run_id) is None


# ------------------------------------------------------------------ end to end: the CLI


def _logged_run(tmp_path: Path) -> str:
    from tests.helpers import log_folder, training_series, write_canonical

    run_id = make_run()
    write_canonical(tmp_path / "snaps", {"dense": training_series(3, (3, 5))}, [0, 4, 8])
    log_folder(run_id, tmp_path / "snaps")
    return run_id


def test_cli_renders_past_impossible_claims_and_batch_plans_past_them(tmp_path: Path) -> None:
    import time

    from tests.helpers import artifact_files, run_cli, with_overview

    run_id = _logged_run(tmp_path)
    here = socket.gethostname()
    for value in ("w/5/x:-NaN", f"{here}/{2**80}/x:{time.time() + 100:.0f}"):
        client().set_tag(run_id, TAG_CLAIM, value)
        plan = run_cli("batch", "-e", "tests", "--dry-run", "--force", cwd=tmp_path)
        assert plan.code == 0, plan.stderr
        assert "dry run: 1 would render" in plan.stdout
        assert "ignoring the claim tag" in plan.stderr
    client().set_tag(run_id, TAG_CLAIM, "otherhost/7/abc:5e11")  # far beyond now + lease
    cli = run_cli("render", run_id, "--force", cwd=tmp_path)
    assert cli.code == 0, cli.stderr
    assert "ignoring the claim tag weightviz.claim='otherhost/7/abc:5e11'" in cli.stderr
    assert artifact_files(run_id, "weightviz") == with_overview(["weightviz/dense.gif"])
    assert claim_tag(run_id) is None


@pytest.mark.parametrize("lease", ["-1", "inf"])
def test_cli_bad_lease_is_exit_2_and_touches_nothing(tmp_path: Path, lease: str) -> None:
    from tests.helpers import artifact_files, assert_one_line_error, run_cli

    run_id = _logged_run(tmp_path)
    cli = run_cli("render", run_id, cwd=tmp_path, env={"MLFLOW_WEIGHTVIZ_CLAIM_LEASE": lease})
    assert_one_line_error(cli, 2, "MLFLOW_WEIGHTVIZ_CLAIM_LEASE must be a number of seconds from 5 to 86400")
    assert artifact_files(run_id, "weightviz") == []
    assert [k for k in client().get_run(run_id).data.tags if k.startswith("weightviz.")] == []
