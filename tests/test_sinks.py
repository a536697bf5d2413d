"""Sinks: local copies, a run's artifacts and tags on a real embedded MLflow store, and the claim guard."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from mlflow_weightviz.automation.claims import TAG_CLAIM, claim_run
from mlflow_weightviz.errors import ClaimLostError
from mlflow_weightviz.sinks import LocalSink, RunSink, Sink
from mlflow_weightviz.tags import PENDING_TAGS, TAG_FINGERPRINT, TAG_STATUS
from tests.helpers import artifact_files, make_run


class StillClock:
    """A clock that never moves and never waits (claims settle at once)."""

    def time(self) -> float:
        return 1_900_000_000.0

    def monotonic(self) -> float:
        return 0.0

    def sleep(self, seconds: float) -> None:
        pass

    def wait(self, event: threading.Event, seconds: float) -> bool:
        event.wait()
        return True


def client():  # type: ignore[no-untyped-def]
    from mlflow.tracking import MlflowClient

    return MlflowClient()


def tags_of(run_id: str) -> dict[str, str]:
    return dict(client().get_run(run_id).data.tags)


def staged_files(folder: Path, *names: str) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in names:
        (folder / name).write_bytes(f"content of {name}".encode())
        out[name] = folder / name
    return out


def test_both_sinks_are_sinks() -> None:
    sinks: list[Sink] = [LocalSink(output_dir=Path()), RunSink(client(), "run")]
    assert all(callable(s.deliver) for s in sinks)


# ---------------------------------------------------------------------------- local


def test_local_sink_copies_into_a_folder_and_runs_then(tmp_path: Path) -> None:
    staged = staged_files(tmp_path / "staging", "fc.gif", "b.gif")
    out = tmp_path / "out"
    out.mkdir()
    called: list[bool] = []
    written = LocalSink(output_dir=out).deliver({"fc": staged["fc.gif"], "b": staged["b.gif"]},
                                                 {"weightviz.status": "rendered"}, then=lambda: called.append(True))
    assert written == {"fc": out / "fc.gif", "b": out / "b.gif"}
    assert (out / "fc.gif").read_bytes() == b"content of fc.gif"
    assert called == [True]
    assert sorted(p.name for p in out.iterdir()) == ["b.gif", "fc.gif"]  # no temporary files left


def test_local_sink_out_follows_the_format_extension(tmp_path: Path) -> None:
    staged = staged_files(tmp_path / "staging", "fc.html")
    written = LocalSink(out=tmp_path / "mine.gif").deliver({"fc": staged["fc.html"]})
    assert written == {"fc": tmp_path / "mine.html"}
    assert (tmp_path / "mine.html").read_bytes() == b"content of fc.html"
    assert not (tmp_path / "mine.gif").exists()


def test_local_sink_without_a_target_writes_nothing(tmp_path: Path) -> None:
    staged = staged_files(tmp_path / "staging", "fc.gif")
    assert LocalSink().deliver(staged) == {}


# ------------------------------------------------------------------------------ run


def test_run_sink_logs_files_then_runs_then_sets_tags_last(tmp_path: Path) -> None:
    run_id = make_run()
    staged = staged_files(tmp_path / "staging", "fc.gif", "fc.html")
    sink = RunSink(client(), run_id, "weightviz")
    seen_during_then: dict[str, str] = {}

    def then() -> None:  # files are there, final tags are not yet
        assert artifact_files(run_id, "weightviz") == ["weightviz/fc.gif", "weightviz/fc.html"]
        seen_during_then.update(tags_of(run_id))

    paths = sink.deliver(staged, {TAG_STATUS: "rendered", TAG_FINGERPRINT: "f" * 32}, then=then)

    assert paths == {"fc.gif": "weightviz/fc.gif", "fc.html": "weightviz/fc.html"}
    assert {k: seen_during_then[k] for k in PENDING_TAGS} == PENDING_TAGS
    final = tags_of(run_id)
    assert final[TAG_STATUS] == "rendered"
    assert final[TAG_FINGERPRINT] == "f" * 32
    assert client().get_run(run_id).info.status == "FINISHED"
    local = client().download_artifacts(run_id, "weightviz/fc.html", str(tmp_path / "back"))
    assert Path(local).read_bytes() == b"content of fc.html"


def test_run_sink_logs_only_the_staged_files_of_a_shared_folder(tmp_path: Path) -> None:
    run_id = make_run()
    staged = staged_files(tmp_path / "staging", "fc.gif", "other.gif")
    paths = RunSink(client(), run_id, "weightviz").deliver({"fc": staged["fc.gif"]}, {TAG_STATUS: "rendered"})
    assert paths == {"fc": "weightviz/fc.gif"}
    assert artifact_files(run_id, "weightviz") == ["weightviz/fc.gif"]


def test_run_sink_truncates_long_tag_values() -> None:
    run_id = make_run()
    RunSink(client(), run_id).set_tags({"weightviz.layers": "x" * 6000})
    value = tags_of(run_id)["weightviz.layers"]
    assert len(value) == 5000
    assert value.endswith("...")


# ----------------------------------------------------------------------- the guard


def test_guarded_run_sink_publishes_while_the_claim_is_held(tmp_path: Path) -> None:
    run_id = make_run()
    staged = staged_files(tmp_path / "staging", "fc.gif")
    with claim_run(client(), run_id, settle_s=0, clock=StillClock()) as claim:
        assert claim.held
        paths = claim.guard(RunSink(client(), run_id)).deliver(staged, {TAG_STATUS: "rendered"})
    assert dict(paths) == {"fc.gif": "weightviz/fc.gif"}
    assert artifact_files(run_id, "weightviz") == ["weightviz/fc.gif"]
    assert tags_of(run_id)[TAG_STATUS] == "rendered"
    assert TAG_CLAIM not in tags_of(run_id)


def test_guarded_run_sink_logs_nothing_once_the_claim_is_lost(tmp_path: Path) -> None:
    run_id = make_run()
    staged = staged_files(tmp_path / "staging", "fc.gif")
    thief = "thief/1/x:1900000300.000"
    with claim_run(client(), run_id, settle_s=0, clock=StillClock()) as claim:
        client().set_tag(run_id, TAG_CLAIM, thief)
        with pytest.raises(ClaimLostError, match="claim lost to thief/1/x"):
            claim.guard(RunSink(client(), run_id)).deliver(staged, {TAG_STATUS: "rendered"})
    assert artifact_files(run_id, "weightviz") == []
    tags = tags_of(run_id)
    assert TAG_STATUS not in tags  # not even the pending tags: the guard stops before the sink starts
    assert tags[TAG_CLAIM] == thief


def test_unique_names_never_collide_even_with_hash_lookalikes() -> None:
    import hashlib

    from mlflow_weightviz.sinks import image_key, unique_names

    def h(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()[:8]

    # Names shaped like every fallback the others could get, in both orders and both cases.
    layers = ["dec-2", "-dec-2", f"dec-2-{h('-dec-2')}", f"dec-2-{h('dec-2')}", "DEC-2", f"DEC-2-{h('DEC-2')}",
              "dec 2", "dec_2"]
    for order in (layers, layers[::-1]):
        names = unique_names(order)
        assert set(names) == set(order)
        assert len({n.lower() for n in names.values()}) == len(order), names
        assert len({image_key(n).lower() for n in names.values()}) == len(order)
        assert names[order[0]] == order[0]  # a safe name keeps it when no other took it first


@pytest.mark.parametrize("names", [
    [f"层{i:04d}.投影" for i in range(600)],  # escaped to \\uXXXX: longer as JSON than as text
    ["x" * 9000, "y"],
    ["a", "b"],
])
def test_layers_tag_is_always_valid_json_within_the_limit(names: list[str]) -> None:
    import json

    from mlflow_weightviz.tags import TAG_VALUE_LIMIT, layers_tag

    value, cut = layers_tag(names)
    assert len(value) <= TAG_VALUE_LIMIT
    parsed = json.loads(value)
    if not cut:
        assert parsed == names
        return
    assert parsed["count"] == len(names)
    assert parsed["truncated"] is True
    assert parsed["file"] == "layers.json"
    assert parsed["layers"] == names[:len(parsed["layers"])]
    more = json.dumps({**parsed, "layers": names[:len(parsed["layers"]) + 1]})
    assert len(more) > TAG_VALUE_LIMIT  # as many names as fit
