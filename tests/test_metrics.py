"""Training diagnostics as MLflow metrics: logged by `render` from the snapshots, checked against numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

import mlflow_weightviz as wv
from mlflow_weightviz.stats import metric_key
from tests.helpers import make_run, run_cli

STATS = ("norm", "update_ratio", "drift", "max_abs")


def reference(series: list[np.ndarray]) -> dict[str, dict[int, float]]:
    """The four metrics of one layer, computed independently with numpy, by position in the series."""
    out: dict[str, dict[int, float]] = {s: {} for s in STATS}
    w0 = series[0].astype(np.float64)
    for i, w in enumerate(series):
        w = w.astype(np.float64)
        out["norm"][i] = float(np.linalg.norm(w))
        out["max_abs"][i] = float(np.abs(w).max())
        out["drift"][i] = float(np.linalg.norm(w - w0) / np.linalg.norm(w0))
        if i:
            prev = series[i - 1].astype(np.float64)
            out["update_ratio"][i] = float(np.linalg.norm(w - prev) / np.linalg.norm(prev))
    return out


def history(client: MlflowClient, run_id: str, layer: str, stat: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, metric_key(layer, stat))}


def logged_run(steps: list[int], layers: dict[str, list[np.ndarray]], *, finished: bool = True) -> str:
    run_id = make_run(finished=False)
    for i, step in enumerate(steps):
        wv.log_snapshot({name: series[i] for name, series in layers.items()}, step, run_id=run_id)
    if finished:
        MlflowClient().set_terminated(run_id, "FINISHED")
    return run_id


def drifting(rng: np.random.Generator, shape: tuple[int, ...], n: int, lr: float) -> list[np.ndarray]:
    w = rng.normal(0, 0.1, size=shape).astype(np.float32)
    out = []
    for _ in range(n):
        out.append(w.copy())
        w = (w - lr * rng.normal(size=shape)).astype(np.float32)
    return out


def test_render_logs_the_four_metrics_step_by_step() -> None:
    rng = np.random.default_rng(0)
    steps = [0, 5, 10, 15, 20]
    layers = {"fc1.weight": drifting(rng, (8, 12), 5, 1e-2), "enc/attn:q": drifting(rng, (6, 4), 5, 1e-3)}
    run_id = logged_run(steps, layers)
    cli = run_cli("render", run_id, "--metrics", "--quiet")
    assert cli.code == 0, cli.stderr
    client = MlflowClient()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    for layer, series in layers.items():
        want = reference(series)
        for stat in STATS:
            got = history(client, run_id, layer, stat)
            expect = {steps[i]: v for i, v in want[stat].items()}
            assert sorted(got) == sorted(expect), (layer, stat)
            for step, value in expect.items():
                assert got[step] == pytest.approx(value, rel=1e-6, abs=1e-12), (layer, stat, step)
    # Layer names become valid keys as for step images: ':' is not allowed.
    assert "weightviz/enc/attn_q/norm" in run.data.metrics
    assert 0 not in history(client, run_id, "fc1.weight", "update_ratio")  # none for the first snapshot
    assert history(client, run_id, "fc1.weight", "nonfinite") == dict.fromkeys(steps, 0.0)
    assert set(history(client, run_id, "fc1.weight", "rms")) == set(steps)


def test_metrics_cover_every_snapshot_not_only_the_frames_drawn() -> None:
    rng = np.random.default_rng(1)
    steps = list(range(0, 60, 5))
    run_id = logged_run(steps, {"w": drifting(rng, (5, 5), len(steps), 1e-2)})
    wv.render_run(run_id, wv.RenderOptions(max_frames=3))  # on by default
    assert sorted(history(MlflowClient(), run_id, "w", "norm")) == steps


def test_rerender_logs_no_duplicates_and_finished_stays_finished() -> None:
    rng = np.random.default_rng(2)
    steps = [0, 10, 20]
    run_id = logged_run(steps, {"w": drifting(rng, (4, 4), 3, 1e-2)})
    client = MlflowClient()
    wv.render_run(run_id)
    before = {stat: client.get_metric_history(run_id, metric_key("w", stat)) for stat in STATS}
    assert [len(v) for v in before.values()] == [3, 2, 3, 3]
    cli = run_cli("render", run_id, "--force", "--quiet")
    assert cli.code == 0, cli.stderr
    after = {stat: client.get_metric_history(run_id, metric_key("w", stat)) for stat in STATS}
    assert {k: len(v) for k, v in after.items()} == {k: len(v) for k, v in before.items()}
    assert client.get_run(run_id).info.status == "FINISHED"
    # A new snapshot then adds only its own step.
    wv.log_snapshot({"w": np.ones((4, 4), np.float32)}, 30, run_id=run_id)
    wv.render_run(run_id)
    assert sorted(history(client, run_id, "w", "norm")) == [0, 10, 20, 30]
    assert len(client.get_metric_history(run_id, metric_key("w", "norm"))) == 4
    assert client.get_run(run_id).info.status == "FINISHED"


def test_no_metrics_logs_none_and_keeps_the_old_fingerprint() -> None:
    rng = np.random.default_rng(3)
    run_id = logged_run([0, 1], {"w": drifting(rng, (4, 4), 2, 1e-2)})
    cli = run_cli("render", run_id, "--no-metrics", "--quiet")
    assert cli.code == 0, cli.stderr
    assert not [k for k in MlflowClient().get_run(run_id).data.metrics if k.startswith("weightviz/")]
    # The default options hash as before metrics existed; only --no-metrics adds a field.
    assert "metrics" not in wv.RenderOptions().fingerprint_fields()
    assert wv.RenderOptions(metrics=False).fingerprint_fields()["metrics"] is False
    # Turning them on is a change: the next render logs them.
    wv.render_run(run_id)
    assert sorted(history(MlflowClient(), run_id, "w", "norm")) == [0, 1]


def test_python_api_switch() -> None:
    rng = np.random.default_rng(4)
    run_id = logged_run([0, 1, 2], {"w": drifting(rng, (3, 3), 3, 1e-2)})
    wv.render_run(run_id, wv.RenderOptions(metrics=False))
    assert metric_key("w", "norm") not in MlflowClient().get_run(run_id).data.metrics
    wv.render_run(run_id, force=True)
    assert sorted(history(MlflowClient(), run_id, "w", "drift")) == [0, 1, 2]


def test_nan_and_inf_in_snapshots() -> None:
    a = np.arange(1, 17, dtype=np.float32).reshape(4, 4)
    b = a.copy()
    b[0, 0] = np.nan
    b[1, 1] = np.inf
    c = np.full((4, 4), np.nan, np.float32)
    run_id = logged_run([0, 1, 2], {"w": [a, b, c]})
    wv.render_run(run_id)
    client = MlflowClient()
    norm = history(client, run_id, "w", "norm")
    finite_b = np.where(np.isfinite(b), b, 0.0).astype(np.float64)
    assert norm[1] == pytest.approx(float(np.linalg.norm(finite_b)))
    assert norm[2] == 0.0
    assert history(client, run_id, "w", "nonfinite") == {0: 0.0, 1: pytest.approx(2 / 16), 2: 1.0}
    # Over the entries finite in both: (b - a) is 0 there.
    assert history(client, run_id, "w", "update_ratio")[1] == pytest.approx(0.0)
    # All-NaN step: no finite entry in both, so the ratio's denominator is 0 and nothing is logged.
    assert 2 not in history(client, run_id, "w", "update_ratio")
    assert 2 not in history(client, run_id, "w", "drift")
    values = [m.value for s in ("norm", "max_abs", "rms", "nonfinite")
              for m in client.get_metric_history(run_id, metric_key("w", s))]
    assert all(math.isfinite(v) for v in values)


def test_no_log_and_render_file_log_no_metrics(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(5)
    run_id = logged_run([0, 1], {"w": drifting(rng, (3, 3), 2, 1e-2)})
    cli = run_cli("render", run_id, "--no-log", "--output-dir", str(tmp_path / "o"), "--quiet")
    assert cli.code == 0, cli.stderr
    assert not MlflowClient().get_run(run_id).data.metrics


@pytest.mark.slow
def test_many_layers_go_in_batches_of_at_most_1000() -> None:
    # 30 layers × 40 steps × 6 statistics ≈ 7000 metrics: several log_batch calls.
    rng = np.random.default_rng(6)
    steps = list(range(40))
    layers = {f"l{i:02d}": drifting(rng, (2, 2), len(steps), 1e-2) for i in range(30)}
    run_id = logged_run(steps, layers)
    wv.render_run(run_id, wv.RenderOptions(layers=("l0*",), metrics=False))
    wv.render_run(run_id, wv.RenderOptions(layers=("l0*",)))  # metrics on, 10 layers
    client = MlflowClient()
    metrics = client.get_run(run_id).data.metrics
    assert metric_key("l09", "norm") in metrics
    assert metric_key("l10", "norm") not in metrics
    assert len(client.get_metric_history(run_id, metric_key("l05", "rms"))) == 40


# ---------------------------------------------------------------------------- while training


class Net:
    """A small torch model: ``0.weight`` (48×256) is bigger than the 64×64 grid, so reduced; ``2.weight`` is whole."""

    def __init__(self) -> None:
        import torch

        torch.manual_seed(0)
        self.model = torch.nn.Sequential(torch.nn.Linear(256, 48), torch.nn.ReLU(), torch.nn.Linear(48, 10))
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-2)
        self.x = torch.randn(64, 256)
        self.y = torch.randint(0, 10, (64,))

    def train_step(self) -> None:
        import torch

        self.opt.zero_grad()
        torch.nn.functional.cross_entropy(self.model(self.x), self.y).backward()
        self.opt.step()

    def weights(self) -> dict[str, np.ndarray]:
        return {k: v.detach().numpy().copy() for k, v in self.model.named_parameters() if v.ndim >= 2}


def test_record_logs_metrics_during_training_readable_within_15_s() -> None:
    import time

    import mlflow

    net = Net()
    client = MlflowClient()
    key = metric_key("0.weight", "norm")
    seen: dict[int, dict[str, np.ndarray]] = {}
    waited = None
    with mlflow.start_run() as run, wv.record(net.model, every=5, render=False) as rec:
        run_id = run.info.run_id
        for step in range(40):
            net.train_step()
            if rec.step(step):
                seen[step] = net.weights()
            if step >= 10 and waited is None:
                # Training goes on between polls; the step-10 norm must show up within 15 s.
                start = time.monotonic()
                while time.monotonic() - start < 15:
                    if any(m.step == 10 for m in client.get_metric_history(run_id, key)):
                        waited = time.monotonic() - start
                        break
                    net.train_step()
                    time.sleep(0.05)
                assert waited is not None, "the step-10 norm was not readable within 15 s"
                assert client.get_run(run_id).info.status == "RUNNING"
    norm10 = {m.step: m.value for m in client.get_metric_history(run_id, key)}[10]
    assert norm10 == pytest.approx(float(np.linalg.norm(seen[10]["0.weight"].astype(np.float64))), rel=1e-6)
    steps = sorted(seen)
    for layer in ("0.weight", "2.weight"):
        want = reference([seen[s][layer] for s in steps])
        got = {stat: history(client, run_id, layer, stat) for stat in STATS}
        assert sorted(got["norm"]) == steps
        for i, step in enumerate(steps):
            assert got["norm"][step] == pytest.approx(want["norm"][i], rel=1e-5)
            assert got["max_abs"][step] == pytest.approx(want["max_abs"][i], rel=1e-6)
        # 2.weight is exact (copied whole); 0.weight (reduced on the device) is a sketch estimate.
        rel = 1e-5 if layer == "2.weight" else 0.15
        for stat in ("update_ratio", "drift"):
            assert sorted(got[stat]) == (steps[1:] if stat == "update_ratio" else steps)
            for i, step in enumerate(steps[1:], 1):
                assert got[stat][step] == pytest.approx(want[stat][i], rel=rel), (layer, stat, step)


def test_render_after_record_logs_nothing_twice_and_adds_no_metrics_for_reduced_layers() -> None:
    import mlflow

    net = Net()
    client = MlflowClient()
    with mlflow.start_run() as run, wv.record(net.model, every=2) as rec:
        for step in range(9):
            net.train_step()
            rec.step(step)
    run_id = run.info.run_id
    assert rec.result is not None  # rendered at the end
    for layer in ("0.weight", "2.weight"):
        for stat in ("norm", "update_ratio", "drift", "max_abs", "rms", "nonfinite"):
            steps = [m.step for m in client.get_metric_history(run_id, metric_key(layer, stat))]
            assert sorted(steps) == ([2, 4, 6, 8] if stat == "update_ratio" else [0, 2, 4, 6, 8]), (layer, stat)
    wv.render_run(run_id, force=True)
    assert len(client.get_metric_history(run_id, metric_key("0.weight", "drift"))) == 5
    assert client.get_run(run_id).info.status == "FINISHED"


def test_record_metrics_off_and_nonfinite_weights() -> None:
    import mlflow
    import torch

    w = torch.zeros(4, 4)
    big = torch.ones(80, 80)
    with mlflow.start_run() as run, wv.record({"w": w, "big": big}, render=False, metrics=False) as rec:
        rec.step(0)
    assert not MlflowClient().get_run(run.info.run_id).data.metrics
    with mlflow.start_run() as run, wv.record({"w": w, "big": big}, render=False) as rec:
        rec.step(0)  # all zero: no drift (0/0), norm 0
        w[0, 0], big[0, 0], big[1, 1] = float("nan"), float("inf"), float("nan")
        w[1, 1] = 2.0
        rec.step(1)
    client = MlflowClient()
    run_id = run.info.run_id
    assert history(client, run_id, "w", "norm") == {0: 0.0, 1: 2.0}
    assert history(client, run_id, "w", "nonfinite") == {0: 0.0, 1: 1 / 16}
    assert history(client, run_id, "w", "update_ratio") == {}  # ‖W_0‖ = 0
    assert history(client, run_id, "big", "norm")[1] == pytest.approx(math.sqrt(6400 - 2))
    assert history(client, run_id, "big", "nonfinite")[1] == pytest.approx(2 / 6400)
    assert history(client, run_id, "big", "max_abs")[1] == 1.0
    assert history(client, run_id, "big", "update_ratio")[1] == pytest.approx(math.sqrt(2) / 80, rel=0.5)


def test_a_failing_server_warns_and_training_goes_on() -> None:
    from mlflow_weightviz.capture._live import MetricLog

    class Broken:
        def log_batch(self, *args: object, **kwargs: object) -> None:
            msg = "server gone"
            raise ConnectionError(msg)

    log = MetricLog(Broken(), "run")  # type: ignore[arg-type]
    log.put([("weightviz/w/norm", 1.0, 0)])
    with pytest.warns(wv.WeightvizWarning, match="server gone"):
        log.close(timeout=10)


@pytest.mark.parametrize("kind", ["adam", "rank1", "rank16", "tall"])
def test_sketch_estimates_the_update_norm(kind: str) -> None:
    """The reduced path's ‖S(W_t) − S(W_s)‖ against the exact ‖W_t − W_s‖ (figures in docs/capture.md)."""
    import torch

    from mlflow_weightviz.capture._live import measure_device

    torch.manual_seed(1)
    if kind == "adam":
        lin = torch.nn.Linear(1024, 1024, bias=False)
        opt = torch.optim.Adam(lin.parameters(), lr=1e-3)
        x, t = torch.randn(128, 1024), torch.randn(128, 1024)
        w0 = lin.weight.detach().clone()
        for _ in range(5):
            opt.zero_grad()
            ((lin(x) - t) ** 2).mean().backward()
            opt.step()
        w1, bound = lin.weight.detach().clone(), 0.03
    elif kind == "tall":
        w0 = torch.randn(6000, 300) * 0.02
        w1, bound = w0 + 1e-4 * torch.randn_like(w0), 0.03
    else:
        r = 1 if kind == "rank1" else 16
        w0 = torch.randn(1024, 1024) * 0.02
        w1, bound = w0 + 1e-4 * torch.randn(1024, r) @ torch.randn(r, 1024), 0.12 if r == 1 else 0.05
    est = float(np.linalg.norm(measure_device(w1).sketch - measure_device(w0).sketch))
    exact = float(torch.linalg.vector_norm(w1.double() - w0.double()))
    assert abs(est / exact - 1) < bound
    # The sketch is linear and the same for numpy arrays: S(W) from numpy agrees.
    np_sketch = measure_device(w1.numpy()).sketch
    assert np.allclose(np_sketch, measure_device(w1).sketch, rtol=1e-3, atol=1e-5)
    # The torch path (forced for a CPU tensor with a dtype numpy has not) computes the same sketch.
    if kind != "adam":
        from mlflow_weightviz.capture import reduce

        blocks = reduce.plan(tuple(w1.shape), 64, 64)
        forced = reduce._torch_partial(w1.double(), 0, blocks, sketch=True).sketch
        assert forced is not None
        assert np.allclose(forced, measure_device(w1.double().numpy()).sketch, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("nonfinite", [False, True])
def test_device_measure_comes_exact_from_the_reduction_and_shards_add_up(nonfinite: bool) -> None:
    """norm, max |w| and the finite count from the block reduction (numpy and torch paths) match stats.py's rules."""
    import torch

    from mlflow_weightviz.capture import reduce
    from mlflow_weightviz.capture._live import exact_stats, measure_device

    w = np.random.default_rng(3).standard_normal((300, 130)).astype(np.float32)
    if nonfinite:
        w[5, 7], w[200, 3], w[9, 100] = np.nan, np.inf, -np.inf
    blocks = reduce.plan(w.shape, 64, 64)
    want = exact_stats(0, w, None, None)
    t = torch.from_numpy(w)
    for value, partial in ((w, reduce.partial_of(w, 0, blocks, sketch=True)),
                           (t, reduce._torch_partial(t, 0, blocks, sketch=True))):
        m = measure_device(value, blocks, partial=partial)
        assert math.sqrt(m.squares) == pytest.approx(want.norm, rel=1e-6)
        assert m.max_abs == want.max_abs
        assert 1 - m.finite / m.total == pytest.approx(want.nonfinite)
        assert np.isfinite(m.sketch).all()
    # Row shards (cut inside a block row) add up to the whole layer's measure, sketch included.
    whole = measure_device(w, blocks)
    shards = measure_device(w[:103], blocks)
    shards.merge(measure_device(w[103:], blocks, row0=103))
    assert np.allclose(shards.sketch, whole.sketch, rtol=1e-6, atol=1e-6)
    assert shards.squares == pytest.approx(whole.squares, rel=1e-9)
    assert (shards.finite, shards.total, shards.max_abs) == (whole.finite, whole.total, whole.max_abs)


def test_long_layer_names_get_valid_distinct_keys() -> None:
    long_a, long_b = "blocks.attn.q" * 30 + "a", "blocks.attn.q" * 30 + "b"
    keys = {metric_key(n, "update_ratio") for n in (long_a, long_b)}
    assert len(keys) == 2
    assert all(len(k) <= 250 and k.endswith("/update_ratio") for k in keys)
    assert metric_key("fc1.weight", "norm") == "weightviz/fc1.weight/norm"
