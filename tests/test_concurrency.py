"""Claims: concurrent renders of one run against a real `mlflow server` never render it twice.

The claim logic itself is unit-tested with a fake clock in test_claims.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

import mlflow_weightviz as wv
from mlflow_weightviz.automation.claims import TAG_CLAIM
from tests.conftest import MlflowServer
from tests.helpers import (
    artifact_files,
    log_folder,
    make_run,
    read_gif,
    training_series,
    with_overview,
    write_canonical,
)

pytestmark = [pytest.mark.server, pytest.mark.slow]


def snapshot_run(uri: str, folder: Path, steps: int = 4) -> str:
    run_id = make_run(uri, experiment=f"claims-{uuid.uuid4().hex[:6]}")
    write_canonical(folder / run_id, {"fc": training_series(steps, (3, 4)), "b": training_series(steps, (4,))},
                    list(range(steps)))
    log_folder(run_id, folder / run_id, uri=uri)
    return run_id


def run_tags(uri: str, run_id: str) -> dict[str, str]:
    from mlflow.tracking import MlflowClient

    return dict(MlflowClient(uri).get_run(run_id).data.tags)


def test_concurrent_render_processes_render_once(server_uri: str, mlflow_server: MlflowServer,
                                                 tmp_path: Path) -> None:
    run_id = snapshot_run(server_uri, tmp_path)
    env = dict(os.environ, MLFLOW_TRACKING_URI=server_uri)
    cmd = [sys.executable, "-m", "mlflow_weightviz", "render", run_id, "--max-frames", "3"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(3)]
    results = [(p.wait(timeout=120), *p.communicate()) for p in procs]

    assert [code for code, _, _ in results] == [0, 0, 0], results
    outs = [out for _, out, _ in results]
    rendered = [o for o in outs if "fc: 3 frames" in o]
    assert len(rendered) == 1, outs
    for other in (o for o in outs if o not in rendered):
        assert "is being rendered by another process" in other or "is up to date" in other, other
    assert artifact_files(run_id, "weightviz", uri=server_uri) == with_overview(["weightviz/b.gif", "weightviz/fc.gif"])
    log = mlflow_server.log.read_text()
    for name in ("fc.gif", "b.gif"):  # the server saw each GIF uploaded once
        assert len(re.findall(rf'"PUT [^"]*{run_id}/artifacts/weightviz/{re.escape(name)}', log)) == 1
    tags = run_tags(server_uri, run_id)
    assert TAG_CLAIM not in tags
    assert tags["weightviz.layers"] == '["b", "fc"]'
    assert tags["weightviz.frames"] == "6"
    # The tags describe the GIFs that are there: a re-render with the same options has nothing to do.
    assert wv.render_run(run_id, wv.RenderOptions(max_frames=3)).status == "up_to_date"


def test_foreign_claim_blocks_render_until_it_expires(server_uri: str, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(server_uri)
    run_id = snapshot_run(server_uri, tmp_path)
    foreign = f"other-host/123/abc:{time.time() + 300:.3f}"
    client.set_tag(run_id, TAG_CLAIM, foreign)

    result = wv.render_run(run_id, wv.RenderOptions(max_frames=2))

    assert result.status == "claimed"
    assert result.claimed_by is not None
    assert result.claimed_by.startswith("other-host/123/abc")
    assert artifact_files(run_id, "weightviz", uri=server_uri) == []
    assert run_tags(server_uri, run_id)[TAG_CLAIM] == foreign  # someone else's claim is left alone

    client.set_tag(run_id, TAG_CLAIM, f"crashed-host/9/dead:{time.time() - 1:.3f}")  # lease ran out
    assert wv.render_run(run_id, wv.RenderOptions(max_frames=2)).status == "rendered"
    assert TAG_CLAIM not in run_tags(server_uri, run_id)


def test_claim_lost_before_publishing_logs_nothing(server_uri: str, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(server_uri)
    run_id = snapshot_run(server_uri, tmp_path)
    thief = f"thief/1/x:{time.time() + 300:.3f}"

    def steal(done: int, total: int) -> None:
        if done == 1:  # mid-render, another renderer overwrites the claim
            client.set_tag(run_id, TAG_CLAIM, thief)

    result = wv.render_run(run_id, wv.RenderOptions(max_frames=3), progress=steal)

    assert result.status == "claimed"
    assert result.claimed_by is not None
    assert "thief/1/x" in result.claimed_by
    assert artifact_files(run_id, "weightviz", uri=server_uri) == []
    tags = run_tags(server_uri, run_id)
    assert tags[TAG_CLAIM] == thief
    assert "weightviz.fingerprint" not in tags


def test_local_only_render_needs_no_claim(server_uri: str, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    run_id = snapshot_run(server_uri, tmp_path)
    MlflowClient(server_uri).set_tag(run_id, TAG_CLAIM, f"busy/1/z:{time.time() + 300:.3f}")
    result = wv.render_run(run_id, wv.RenderOptions(max_frames=2, layers=("fc",)), log=False,
                           out=tmp_path / "fc.gif")
    assert result.status == "rendered"
    assert read_gif(tmp_path / "fc.gif").n_frames == 2
