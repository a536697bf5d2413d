"""log_snapshot and record(): conversion, step selection, chunked uploads, rendering at the end, failures."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import mlflow_weightviz as wv
from mlflow_weightviz.capture import recorder as recorder_module
from mlflow_weightviz.capture import to_numpy
from tests.helpers import artifact_files, make_run, read_gif, with_overview


def keras_module() -> Any:
    """Keras 3 on the torch backend (the backend must be chosen before Keras is first imported)."""
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = "torch"
    keras = pytest.importorskip("keras", reason="keras is not installed")
    if keras.backend.backend() != "torch":
        pytest.skip(f"keras was already imported with the {keras.backend.backend()} backend")
    return keras


def chunk_contents(run_id: str, path: str = "weights", uri: str | None = None) -> dict[int, dict[str, np.ndarray]]:
    """Every step's arrays in the run's chunk files, checking that no step appears twice."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    out: dict[int, dict[str, np.ndarray]] = {}
    for name in artifact_files(run_id, path, uri):
        local = client.download_artifacts(run_id, name)
        with np.load(local, allow_pickle=False) as z:
            steps = z["steps"]
            assert steps.ndim == 1
            assert steps.dtype.kind == "i"
            for i, step in enumerate(steps.tolist()):
                assert step not in out, f"step {step} is in two chunks"
                out[step] = {k: z[k][i] for k in z.files if k != "steps"}
    return out


@pytest.fixture(autouse=True)
def no_recorder_left_open() -> Iterator[None]:
    """A recorder left open would be closed at interpreter exit, against a store that is gone by then."""
    yield
    leftover = list(recorder_module._OPEN)
    for rec in leftover:
        rec.closed = True
        recorder_module._OPEN.discard(rec)
    assert not leftover, f"recorders left open: {leftover}"


@pytest.fixture
def spy_uploads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every MlflowClient.log_artifact call, calling the real method through."""
    from mlflow.tracking import MlflowClient

    calls: list[str] = []
    real = MlflowClient.log_artifact

    def spy(self: Any, run_id: str, local_path: str, artifact_path: str | None = None) -> None:
        calls.append(f"{artifact_path}/{Path(local_path).name}")
        real(self, run_id, local_path, artifact_path)

    monkeypatch.setattr(MlflowClient, "log_artifact", spy)
    return calls


def mlp() -> Any:
    torch = pytest.importorskip("torch", reason="torch is not installed")
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))


def train_steps(model: Any, steps: int, on_step: Callable[[int], object], fail_at: int | None = None) -> None:
    import torch

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(steps):
        if step == fail_at:
            msg = "training blew up"
            raise RuntimeError(msg)
        loss = model(torch.randn(8, 5)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        on_step(step)


# --------------------------------------------------------------------------- log_snapshot


@pytest.mark.slow
def test_to_numpy_converts_real_torch_and_keras_tensors() -> None:
    torch = pytest.importorskip("torch", reason="torch is not installed")
    keras = keras_module()
    param = torch.nn.Parameter(torch.arange(6, dtype=torch.float32).reshape(2, 3))  # requires grad
    np.testing.assert_array_equal(to_numpy(param), np.arange(6).reshape(2, 3))
    bf16 = torch.tensor([[0.5, -2.0]], dtype=torch.bfloat16)
    assert to_numpy(bf16).dtype == np.float32
    np.testing.assert_array_equal(to_numpy(bf16), [[0.5, -2.0]])
    var = keras.Variable(np.full((3, 2), 0.25, dtype="float32"))
    np.testing.assert_array_equal(to_numpy(var), np.full((3, 2), 0.25))
    assert "torch" not in type(to_numpy(var)).__module__


def test_log_snapshot_float16_halves_the_stored_size_and_reads_back() -> None:
    torch = pytest.importorskip("torch", reason="torch is not installed")
    from mlflow.tracking import MlflowClient

    run_id = make_run()
    w = torch.nn.Parameter(torch.randn(64, 64))
    assert wv.log_snapshot({"fc": w}, 0, run_id=run_id) == "weights/step_0.npz"
    assert wv.log_snapshot({"fc": w}, 1, run_id=run_id, dtype="float16") == "weights/step_1.npz"
    sizes = {f.path: f.file_size for f in MlflowClient().list_artifacts(run_id, "weights")}
    assert sizes["weights/step_1.npz"] < 0.52 * sizes["weights/step_0.npz"]
    snaps = wv.read_snapshots(MlflowClient().download_artifacts(run_id, "weights"))
    by_step = {s.step: s.load() for s in snaps}
    assert by_step[1].dtype == np.float16
    np.testing.assert_allclose(by_step[1], w.detach().numpy(), rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(by_step[0], w.detach().numpy())


def test_log_snapshot_keras_variable_to_active_run() -> None:
    import mlflow

    keras = keras_module()
    var = keras.Variable(np.eye(3, dtype="float32") * 2)
    with mlflow.start_run() as run:
        wv.log_snapshot({"dense/kernel": var}, 7)
    layers = wv.inspect_run(run.info.run_id)
    assert [(r.layer, r.shape, r.first_step, r.max) for r in layers] == [("dense/kernel", (3, 3), 7, 2.0)]


# ------------------------------------------------------------------------------- record()


def test_record_takes_exactly_the_steps_divisible_by_every() -> None:
    import mlflow

    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 4))
    bias = np.zeros(4)  # 1-D: not recorded by default
    expected = {}
    with mlflow.start_run() as run, wv.record({"w": w, "bias": bias}, every=10, render=False) as rec:
        for step in range(56):
            w += rng.normal(size=w.shape)  # updated in place, so the mapping sees it
            taken = rec.step(step)
            assert taken == (step % 10 == 0)
            if taken:
                expected[step] = w.copy()
        assert rec.step(55) is False
    contents = chunk_contents(run.info.run_id)
    assert sorted(contents) == [0, 10, 20, 30, 40, 50]
    for step, arrays in contents.items():
        assert list(arrays) == ["w"]
        np.testing.assert_array_equal(arrays["w"], expected[step])
    assert (rec.snapshots, rec.last_step, rec.result) == (6, 50, None)
    assert artifact_files(run.info.run_id) == ["weights/chunk_0-50.npz"]


def test_record_torch_module_layer_globs_and_dtype() -> None:
    import mlflow

    model = mlp()
    with mlflow.start_run() as run:
        with wv.record(model, layers="*", dtype="float16", render=False) as rec:
            rec.step(0)
    arrays = chunk_contents(run.info.run_id)[0]
    assert sorted(arrays) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    assert {a.dtype for a in arrays.values()} == {np.dtype("float16")}
    np.testing.assert_allclose(arrays["2.weight"], model[2].weight.detach().numpy(), atol=1e-3)

    with mlflow.start_run() as run2, wv.record(model, layers=["0.*"], render=False) as rec2:
        rec2.step(0)
    assert sorted(chunk_contents(run2.info.run_id)[0]) == ["0.bias", "0.weight"]


def test_record_keras_model_by_variable_path() -> None:
    import mlflow

    keras = keras_module()
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="hidden")])
    with mlflow.start_run() as run, wv.record(model, render=False) as rec:
        rec.step(0)
    arrays = chunk_contents(run.info.run_id)[0]
    assert list(arrays) == ["sequential/hidden/kernel"]
    np.testing.assert_array_equal(arrays["sequential/hidden/kernel"], model.layers[0].kernel.value.detach().numpy())


def test_record_torch_on_real_server_renders_gifs_at_the_end(server_uri: str) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    model = mlp()
    with mlflow.start_run() as run:
        with wv.record(model, every=5, max_frames=3) as rec:
            train_steps(model, 21, rec.step)
            assert artifact_files(run.info.run_id, "weightviz", server_uri) == []  # not before the end
        assert MlflowClient().get_run(run.info.run_id).info.status == "RUNNING"  # record leaves status alone
    run_id = run.info.run_id
    assert sorted(chunk_contents(run_id, uri=server_uri)) == [0, 5, 10, 15, 20]
    assert artifact_files(run_id, "weightviz", server_uri) == with_overview(["weightviz/0.weight.gif",
                                                                             "weightviz/2.weight.gif"])
    assert rec.result is not None
    assert rec.result.status == "rendered"
    local = MlflowClient().download_artifacts(run_id, "weightviz/2.weight.gif")
    assert read_gif(Path(local)).n_frames == 3


def test_exception_mid_training_still_leaves_snapshots_and_gifs(server_uri: str) -> None:
    import mlflow

    model = mlp()
    with mlflow.start_run() as run:
        rec = wv.record(model, every=4, max_frames=2, layers="2.weight")
        with pytest.raises(RuntimeError, match="training blew up"), rec:
            train_steps(model, 100, rec.step, fail_at=11)
    run_id = run.info.run_id
    assert sorted(chunk_contents(run_id, uri=server_uri)) == [0, 4, 8]
    assert artifact_files(run_id, "weightviz", server_uri) == with_overview(["weightviz/2.weight.gif"])
    assert rec.result is not None
    assert rec.result.layers[0].frames == 2


def test_uploads_stay_bounded_for_1000_steps_every_step(server_uri: str, spy_uploads: list[str]) -> None:
    import mlflow

    w = np.zeros((4, 4), dtype=np.float32)
    with mlflow.start_run() as run, wv.record({"w": w}, every=1, render=False) as rec:
        for step in range(1000):
            w[step % 4, (step // 4) % 4] = step
            rec.step(step)
    files = artifact_files(run.info.run_id, "weights", server_uri)
    assert len(spy_uploads) == len(files) == rec.uploads
    assert len(files) <= 12  # 50, 50, 50, 50, 100 x4, 200 x2 snapshots
    contents = chunk_contents(run.info.run_id, uri=server_uri)
    assert sorted(contents) == list(range(1000))
    assert contents[999]["w"].max() == 999

    with mlflow.start_run() as run2, wv.record({"w": w}, render=False, max_uploads=3, chunk_steps=10) as rec2:
        for step in range(1000):
            rec2.step(step)
    assert len(artifact_files(run2.info.run_id, "weights", server_uri)) == rec2.uploads == 3
    assert sorted(chunk_contents(run2.info.run_id, uri=server_uri)) == list(range(1000))


def test_explicit_run_id_of_a_finished_run_stays_finished() -> None:
    from mlflow.tracking import MlflowClient

    run_id = make_run(finished=True)
    with wv.record(lambda: np.arange(12.0).reshape(3, 4), run_id=run_id, max_frames=2) as rec:
        rec.step(0)
        rec.step(1)
    assert MlflowClient().get_run(run_id).info.status == "FINISHED"
    assert artifact_files(run_id, "weightviz") == with_overview(["weightviz/weights.gif"])


def test_bad_settings_fail_fast_before_training() -> None:
    import mlflow

    model = mlp()
    with pytest.raises(wv.UsageError, match="needs an active run"):
        wv.record(model)
    with mlflow.start_run():
        with pytest.raises(wv.UsageError, match="unknown render option.*frame_mss"):
            wv.record(model, frame_mss=100)
        with pytest.raises(wv.UsageError, match="unknown colormap 'nope'"):
            wv.record(model, cmap="nope")
        with pytest.raises(wv.UsageError, match="max_frames must be at least 2"):
            wv.record(model, max_frames=1)
        with pytest.raises(wv.UsageError, match="every must be an integer of at least 1"):
            wv.record(model, every=0)
        with pytest.raises(wv.UsageError, match="dtype must be"):
            wv.record(model, dtype="object")
        with pytest.raises(wv.UsageError, match="source must be"):
            wv.record(42)
    with pytest.raises(wv.RunNotFoundError):
        wv.record(model, run_id="0" * 32)


def test_bad_steps_and_unmatched_layers_are_reported() -> None:
    import mlflow

    model = mlp()
    with mlflow.start_run():
        # A model's layers are known when record() is called, so a selection matching none fails then.
        with pytest.raises(wv.UsageError, match=r"no layer matches \*\.kernel; the layers are: 0.weight, 0.bias"):
            wv.record(model, layers="*.kernel", render=False)
    with mlflow.start_run(), wv.record(lambda: dict(model.named_parameters()), layers="*.kernel",
                                       render=False) as rec:
        # A callable's layers are only known while training: then it is a warning, and training goes on.
        with pytest.warns(wv.WeightvizWarning, match=r"no layer matches \*\.kernel; the layers are: 0.weight"):
            assert rec.step(0) is False
        assert rec.step(1) is False  # warned once only
        assert rec.failures == 2
        with pytest.raises(wv.UsageError, match="step must be an integer"):
            rec.step(1.5)  # type: ignore[arg-type]
        with pytest.raises(wv.UsageError, match="must not be negative"):
            rec.step(-1)
    with mlflow.start_run(), wv.record(model, render=False) as rec2:
        assert rec2.step(np.int64(4)) is True
        with pytest.warns(wv.WeightvizWarning, match="step 3 is not after the latest snapshot"):
            assert rec2.step(3) is False
    with pytest.raises(wv.UsageError, match="closed"):
        rec2.step(5)


def _block_artifact_folder(run_id: str) -> None:
    """Make logging under weights/ fail for real: a plain file where the folder should be."""
    from urllib.parse import urlparse

    from mlflow.tracking import MlflowClient

    root = Path(urlparse(MlflowClient().get_run(run_id).info.artifact_uri).path)
    root.mkdir(parents=True, exist_ok=True)
    (root / "weights").write_text("not a folder")


def test_failed_uploads_keep_training_going_and_keep_the_snapshots(tmp_path: Path) -> None:
    import mlflow

    w = np.ones((2, 3))
    with mlflow.start_run() as run:
        _block_artifact_folder(run.info.run_id)
        rec = wv.record({"w": w}, chunk_steps=2, buffer_dir=tmp_path / "buf")

        def train() -> None:
            for step in range(5):
                w[...] *= 2
                rec.step(step)

        with pytest.warns(wv.WeightvizWarning, match="could not log snapshots yet, will retry"):
            train()
        with pytest.raises(wv.OutputError, match="kept in") as err:
            rec.close()
    kept = Path(str(err.value).split("kept in ")[1].split(":")[0])
    assert kept.is_relative_to(tmp_path / "buf")
    snaps = wv.read_snapshots(kept)
    assert sorted(s.step for s in snaps) == [0, 1, 2, 3, 4]
    assert {s.step: float(s.load()[0, 0]) for s in snaps} == {0: 2.0, 1: 4.0, 2: 8.0, 3: 16.0, 4: 32.0}


def test_flush_failure_while_training_fails_lets_the_training_error_through(tmp_path: Path) -> None:
    import mlflow

    with mlflow.start_run() as run:
        _block_artifact_folder(run.info.run_id)
        rec = wv.record({"w": np.ones((2, 2))}, buffer_dir=tmp_path / "buf")  # not $TMPDIR: the test keeps nothing

        def train() -> None:
            with rec:
                rec.step(0)
                msg = "the real problem"
                raise KeyError(msg)

        with pytest.warns(wv.WeightvizWarning, match="could not finish: .*kept in"), \
                pytest.raises(KeyError, match="the real problem"):
            train()


@pytest.mark.slow
def test_unclosed_recorder_is_flushed_and_rendered_when_python_exits(tmp_path: Path, server_uri: str) -> None:
    """A callback's fit() that raises never closes its recorder; the exit hook does."""
    uri = server_uri
    script = textwrap.dedent("""
        import mlflow, numpy as np, mlflow_weightviz as wv
        run = mlflow.start_run()
        print(run.info.run_id, flush=True)
        rec = wv.record({"w": np.arange(6.0).reshape(2, 3)}, max_frames=2)
        rec.step(0)
        rec.step(1)
        raise RuntimeError("training died")
    """)
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=120, check=False)
    assert proc.returncode == 1, proc.stderr
    assert "training died" in proc.stderr
    run_id = proc.stdout.split()[0]
    assert sorted(chunk_contents(run_id, uri=uri)) == [0, 1]
    assert artifact_files(run_id, "weightviz", uri) == with_overview(["weightviz/w.gif"])


def test_buffer_folders_are_removed_or_hold_only_the_unsent_chunks(tmp_path: Path) -> None:
    import mlflow

    buf = tmp_path / "buffers"
    with mlflow.start_run():
        rec = wv.record({"kernel": np.ones((3, 2))}, buffer_dir=buf, chunk_steps=1, render=False)
        for step in range(3):
            rec.step(step)
        rec.close()
    assert list(buf.iterdir()) == []  # everything logged: no buffer folder, not even empty out/ or unsent/
    with mlflow.start_run() as run:
        _block_artifact_folder(run.info.run_id)
        rec = wv.record({"kernel": np.ones((3, 2))}, buffer_dir=buf, render=False)
        rec.step(0)
        with pytest.raises(wv.OutputError, match="kept in"):
            rec.close()
    (kept,) = buf.iterdir()
    assert [p.name for p in kept.iterdir()] == ["unsent"]  # the staging folder out/ is gone
    assert [p.name for p in (kept / "unsent").iterdir()] == ["chunk_0-0.npz"]
