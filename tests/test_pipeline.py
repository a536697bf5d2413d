"""The public API end to end against real MLflow: every format, selection, re-rendering, tags, GIFs read back."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

import mlflow_weightviz as wv
from mlflow_weightviz.errors import PickleNotAllowedError, UsageError
from tests.helpers import (
    artifact_files,
    gif_blocks,
    log_folder,
    make_run,
    read_gif,
    training_series,
    with_overview,
    write_canonical,
)

GREY = (128, 128, 128)  # frames.NAN_COLOR, the colour of NaN and inf cells


def assert_one_global_palette(path: Path) -> None:
    has_global, local = gif_blocks(path.read_bytes())
    assert has_global
    assert local, "no image in the GIF"
    assert not any(local), f"{sum(local)} of {len(local)} frames carry their own palette"
    gif = read_gif(path)
    assert gif.palettes[0]
    assert all(f.shape == gif.frames[0].shape for f in gif.frames)


def tags_of(run_id: str, uri: str | None = None) -> dict[str, str]:
    return {k: v for k, v in MlflowClient(uri).get_run(run_id).data.tags.items() if k.startswith("weightviz.")}


# ------------------------------------------------------------------------------------------- formats


def test_log_snapshot_layout_with_chunk_files(tmp_path: Path) -> None:
    run_id = make_run(finished=False)
    fc1, fc2 = training_series(14, (4, 5), seed=1), training_series(14, (3,), seed=2)
    for step in range(6):  # one file per step, written by the project's own API
        wv.log_snapshot({"fc1": fc1[step], "fc2.bias": fc2[step]}, step * 10, run_id=run_id)
    chunk = tmp_path / "chunk_60-130.npz"  # the recorder's batches: many steps in one file
    np.savez(chunk, fc1=np.stack(fc1[6:]), **{"fc2.bias": np.stack(fc2[6:])}, steps=np.arange(60, 140, 10))
    MlflowClient().log_artifact(run_id, str(chunk), "weights")
    result = wv.render_run(run_id, output_dir=tmp_path / "gifs")
    by_layer = {r.layer: r for r in result.layers}
    assert by_layer["fc1"].steps == tuple(range(0, 140, 10))
    assert by_layer["fc2.bias"].grid == (1, 3)
    assert artifact_files(run_id, "weightviz") == with_overview(["weightviz/fc1.gif", "weightviz/fc2.bias.gif"])
    assert read_gif(tmp_path / "gifs" / "fc1.gif").n_frames == 14
    assert MlflowClient().get_run(run_id).info.status == "RUNNING"  # rendering never ends a run


def test_per_step_npy_folder_in_numeric_order_with_per_layer_subfolders(tmp_path: Path) -> None:
    run_id = make_run()
    steps = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 25, 100]  # 14 unpadded step numbers
    for layer, shape in (("fc1", (3, 4)), ("fc2", (2, 3))):
        (tmp_path / "w" / layer).mkdir(parents=True)
        for s in steps:
            np.save(tmp_path / "w" / layer / f"step_{s}.npy", np.full(shape, float(s)))
    log_folder(run_id, tmp_path / "w")
    result = wv.render_run(run_id, output_dir=tmp_path / "gifs")
    assert [(r.layer, r.steps) for r in result.layers] == [("fc1", tuple(steps)), ("fc2", tuple(steps))]
    assert read_gif(tmp_path / "gifs" / "fc2.gif").n_frames == len(steps)


def test_stacked_npy_and_npz_with_steps(tmp_path: Path) -> None:
    run_id = make_run()
    folder = tmp_path / "w"
    folder.mkdir()
    np.save(folder / "embedding.npy", np.stack(training_series(5, (3, 6))))
    np.savez(folder / "model.npz", a=np.stack(training_series(4, (2, 2))), b=np.stack(training_series(4, (5,))),
             steps=np.array([0, 50, 100, 150]))
    log_folder(run_id, folder)
    single = wv.render_run(run_id, source="weights/embedding.npy", artifact_path="single")
    assert [(r.layer, r.frames, r.shape) for r in single.layers] == [("embedding", 5, (3, 6))]
    npz = wv.render_run(run_id, source="weights/model.npz", artifact_path="npz")
    assert [(r.layer, r.steps) for r in npz.layers] == [("a", (0, 50, 100, 150)), ("b", (0, 50, 100, 150))]
    assert artifact_files(run_id, "npz") == with_overview(["npz/a.gif", "npz/b.gif"], "npz")


def test_pickle_needs_allow_pickle_and_nothing_is_logged_without_it(tmp_path: Path) -> None:
    run_id = make_run()
    frames = [f.astype(np.float32) for f in training_series(6, (3, 4))]
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "animation_data.obj").write_bytes(pickle.dumps(frames))
    log_folder(run_id, tmp_path / "w")
    with pytest.raises(PickleNotAllowedError, match="allow-pickle"):
        wv.render_run(run_id)
    assert artifact_files(run_id, "weightviz") == []
    assert tags_of(run_id) == {}
    result = wv.render_run(run_id, wv.RenderOptions(), allow_pickle=True)
    assert [(r.layer, r.frames) for r in result.layers] == [("animation_data", 6)]


def test_safetensors_incl_bf16_and_torch_state_dicts_on_the_real_server(server_uri: str, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    run_id = make_run(server_uri)
    folder = tmp_path / "w"
    (folder / "st").mkdir(parents=True)
    (folder / "pt").mkdir()
    for step in (1, 2, 10):
        save_file({"emb": torch.randn(4, 6).to(torch.bfloat16), "head": torch.randn(2, 6)},
                  str(folder / "st" / f"step_{step}.safetensors"))
        torch.save({"conv.weight": torch.randn(4, 2, 3, 3), "conv.bias": torch.randn(4)},
                   folder / "pt" / f"step_{step}.pt")
    log_folder(run_id, folder, uri=server_uri)
    st = wv.render_run(run_id, source="weights/st", artifact_path="st", tracking_uri=server_uri)
    assert [(r.layer, r.steps) for r in st.layers] == [("emb", (1, 2, 10)), ("head", (1, 2, 10))]
    pt = wv.render_run(run_id, source="weights/pt", artifact_path="pt", tracking_uri=server_uri,
                       output_dir=tmp_path / "gifs")
    by_layer = {r.layer: r for r in pt.layers}
    assert by_layer["conv.weight"].grid == (4, 18)  # a conv kernel (4, 2, 3, 3) is shown as 4 × 18
    assert by_layer["conv.bias"].grid == (1, 4)
    assert read_gif(tmp_path / "gifs" / "conv.weight.gif").n_frames == 3
    assert artifact_files(run_id, "pt", uri=server_uri) == with_overview(["pt/conv.bias.gif", "pt/conv.weight.gif"],
                                                                         "pt")
    assert MlflowClient(server_uri).get_run(run_id).info.status == "FINISHED"


AUTOLOG_SCRIPT = textwrap.dedent("""
    import warnings
    warnings.simplefilter("ignore")
    import lightning as L
    import mlflow
    import mlflow.pytorch
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(4, 3), nn.Linear(3, 1)

        def loss(self, batch):
            x, y = batch
            return nn.functional.mse_loss(self.fc2(torch.relu(self.fc1(x))), y)

        def training_step(self, batch, i):
            loss = self.loss(batch)
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch, i):
            self.log("val_loss", self.loss(batch))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    torch.manual_seed(0)
    mlflow.pytorch.autolog(checkpoint=True, checkpoint_save_best_only=False, log_models=False)
    data = DataLoader(TensorDataset(torch.randn(32, 4), torch.randn(32, 1)), batch_size=8)
    trainer = L.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    with mlflow.start_run() as run:
        trainer.fit(Tiny(), data, data)
    print(run.info.run_id)
""")


@pytest.mark.slow
def test_real_pytorch_autolog_checkpoints_render_without_changing_training_code(tmp_path: Path) -> None:
    pytest.importorskip("lightning")
    script = tmp_path / "train.py"
    script.write_text(AUTOLOG_SCRIPT)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run_id = proc.stdout.split()[-1]
    files = artifact_files(run_id, "checkpoints")
    assert "checkpoints/epoch_2/checkpoint.pth" in files  # the layout autolog really writes
    result = wv.render_run(run_id, source="checkpoints")
    assert {r.layer: (r.steps, r.grid) for r in result.layers} == {
        "fc1.bias": ((0, 1, 2), (1, 3)), "fc1.weight": ((0, 1, 2), (3, 4)),
        "fc2.bias": ((0, 1, 2), (1, 1)), "fc2.weight": ((0, 1, 2), (1, 3))}
    assert MlflowClient().get_run(run_id).info.status == "FINISHED"
    assert "weightviz/fc1.weight.gif" in artifact_files(run_id, "weightviz")


# ------------------------------------------------------------------------------ options and re-runs


def test_layer_selection_by_names_and_globs(tmp_path: Path) -> None:
    run_id = make_run()
    write_canonical(tmp_path / "w", {n: training_series(3, (2, 2)) for n in ("enc.fc1", "enc.fc2", "dec.out")},
                    [0, 1, 2])
    log_folder(run_id, tmp_path / "w")
    result = wv.render_run(run_id, wv.RenderOptions(layers=("enc.*",)), artifact_path="glob")
    assert [r.layer for r in result.layers] == ["enc.fc1", "enc.fc2"]
    result = wv.render_run(run_id, wv.RenderOptions(layers=("dec.out", "enc.fc2")), artifact_path="names")
    assert artifact_files(run_id, "names") == with_overview(["names/dec.out.gif", "names/enc.fc2.gif"], "names")
    assert json.loads(tags_of(run_id)["weightviz.layers"]) == ["dec.out", "enc.fc2"]


def test_rerender_is_idempotent_force_renders_again_and_options_count(tmp_path: Path) -> None:
    run_id = make_run()
    write_canonical(tmp_path / "w", {"fc1": training_series(3)}, [0, 1, 2])
    log_folder(run_id, tmp_path / "w")
    first = wv.render_run(run_id)
    assert first.status == "rendered"
    tags = tags_of(run_id)
    again = wv.render_run(run_id)
    assert again.status == "up_to_date"
    assert again.fingerprint == first.fingerprint == tags["weightviz.fingerprint"]
    assert tags_of(run_id) == tags
    assert wv.render_run(run_id, force=True).status == "rendered"
    other = wv.render_run(run_id, wv.RenderOptions(cmap="viridis"))  # a different look is a different render
    assert other.status == "rendered"
    assert other.fingerprint != first.fingerprint
    write_canonical(tmp_path / "more", {"fc1": training_series(1)}, [3])  # new snapshots arrive
    log_folder(run_id, tmp_path / "more")
    newer = wv.render_run(run_id, wv.RenderOptions(cmap="viridis"))
    assert newer.status == "rendered"
    assert newer.layers[0].frames == 4
    assert artifact_files(run_id, "weightviz") == with_overview(["weightviz/fc1.gif"])


def test_no_log_writes_local_copies_only(tmp_path: Path) -> None:
    run_id = make_run()
    write_canonical(tmp_path / "w", {"a": training_series(2), "b": training_series(2)}, [0, 1])
    log_folder(run_id, tmp_path / "w")
    with pytest.raises(UsageError, match="--no-log needs somewhere to write"):
        wv.render_run(run_id, log=False)
    result = wv.render_run(run_id, log=False, output_dir=tmp_path / "local")
    assert sorted(p.name for p in (tmp_path / "local").iterdir()) == ["a.gif", "b.gif"]
    assert all(r.artifact_path is None for r in result.layers)
    assert artifact_files(run_id, "weightviz") == []
    assert tags_of(run_id) == {}
    assert wv.render_run(run_id, log=False, output_dir=tmp_path / "local").status == "rendered"  # never "up to date"


def test_finished_run_stays_finished_and_gets_tags(tmp_path: Path) -> None:
    run_id = make_run()
    before = MlflowClient().get_run(run_id).info
    write_canonical(tmp_path / "w", {"fc1": training_series(4), "fc2": training_series(4, (3, 3))}, [0, 5, 10, 15])
    log_folder(run_id, tmp_path / "w")
    result = wv.render_run(run_id)
    after = MlflowClient().get_run(run_id).info
    assert after.status == "FINISHED"
    assert after.end_time == before.end_time
    tags = tags_of(run_id)
    assert tags["weightviz.source"] == "weights"
    assert json.loads(tags["weightviz.layers"]) == ["fc1", "fc2"]
    assert tags["weightviz.frames"] == "8"
    assert tags["weightviz.fingerprint"] == result.fingerprint
    assert tags["weightviz.version"] == wv.__version__
    assert tags["weightviz.status"] == "rendered"
    assert tags["weightviz.artifact_path"] == "weightviz"


def test_out_with_several_layers_is_a_usage_error_and_logs_nothing(tmp_path: Path) -> None:
    run_id = make_run()
    write_canonical(tmp_path / "w", {"a": training_series(2), "b": training_series(2)}, [0, 1])
    log_folder(run_id, tmp_path / "w")
    with pytest.raises(UsageError, match=r"--out writes one GIF but 2 layers were found \(a, b\)"):
        wv.render_run(run_id, out=tmp_path / "x.gif")
    assert artifact_files(run_id, "weightviz") == []
    assert not (tmp_path / "x.gif").exists()
    wv.render_run(run_id, wv.RenderOptions(layers=("b",)), out=tmp_path / "x.gif")
    assert read_gif(tmp_path / "x.gif").n_frames == 2


# ----------------------------------------------------------------------------- the GIF, read back


def test_gif_frames_delays_hold_last_loop_and_one_palette(tmp_path: Path) -> None:
    np.save(tmp_path / "w.npy", np.stack(training_series(7, (5, 8))))
    options = wv.RenderOptions(frame_ms=120, hold_last_ms=1500, loop=3)
    wv.render_file(tmp_path / "w.npy", options, out=tmp_path / "w.gif")
    gif = read_gif(tmp_path / "w.gif")
    assert gif.n_frames == 7
    assert gif.durations == [120] * 6 + [1500]
    assert gif.loop == 3
    assert_one_global_palette(tmp_path / "w.gif")
    once = wv.render_file(tmp_path / "w.npy", wv.RenderOptions(loop=None, hold_last_ms=0), out=tmp_path / "once.gif")
    assert once.layers[0].frames == 7
    with Image.open(tmp_path / "once.gif") as im:
        assert "loop" not in im.info  # no NETSCAPE block: browsers play it once
    assert read_gif(tmp_path / "once.gif").durations == [200] * 7


def test_frame_delays_under_20ms_are_raised_with_a_warning(tmp_path: Path) -> None:
    np.save(tmp_path / "w.npy", np.stack(training_series(3, (2, 2))))
    with pytest.warns(wv.WeightvizWarning, match="raised to 20 ms"):
        options = wv.RenderOptions(frame_ms=5, hold_last_ms=0)
    wv.render_file(tmp_path / "w.npy", options, out=tmp_path / "w.gif")
    assert read_gif(tmp_path / "w.gif").durations == [20, 20, 20]
    with pytest.warns(wv.WeightvizWarning, match="raised to 20 ms"):
        assert wv.RenderOptions(fps=100).frame_ms == 20


def test_max_frames_keeps_the_first_and_last_snapshot(tmp_path: Path) -> None:
    folder = tmp_path / "w"
    folder.mkdir()
    for s in range(0, 300, 10):
        np.save(folder / f"step_{s}.npy", np.full((2, 3), s / 300))
    result = wv.render_file(folder, wv.RenderOptions(max_frames=5), out=tmp_path / "w.gif")
    (layer,) = result.layers
    assert layer.steps[0] == 0
    assert layer.steps[-1] == 290
    assert len(layer.steps) == layer.frames == 5
    assert read_gif(tmp_path / "w.gif").n_frames == 5


def test_nan_and_inf_cells_get_their_own_colour(tmp_path: Path) -> None:
    clean = np.linspace(-1, 1, 16).reshape(4, 4)
    broken = clean.copy()
    broken[0, 0], broken[1, 1], broken[2, 2] = np.nan, np.inf, -np.inf
    np.save(tmp_path / "clean.npy", np.stack([clean, clean * 0.9]))
    np.save(tmp_path / "broken.npy", np.stack([broken, broken * 0.9]))
    for name in ("clean", "broken"):
        wv.render_file(tmp_path / f"{name}.npy", out=tmp_path / f"{name}.gif")
    grey = {name: int((read_gif(tmp_path / f"{name}.gif").frames[0] == GREY).all(axis=2).sum())
            for name in ("clean", "broken")}
    assert grey["broken"] - grey["clean"] > 3 * 100  # three cells of at least 10×10 px


def test_bias_and_conv_kernels_are_drawn_as_2d(tmp_path: Path) -> None:
    np.savez(tmp_path / "model.npz", bias=np.stack(training_series(3, (7,))),
             kernel=np.stack(training_series(3, (6, 2, 3, 3))), steps=np.array([0, 1, 2]))
    result = wv.render_file(tmp_path / "model.npz", output_dir=tmp_path / "gifs")
    assert {r.layer: (r.shape, r.grid) for r in result.layers} == {
        "bias": ((7,), (1, 7)), "kernel": ((6, 2, 3, 3), (6, 18))}


def test_a_large_matrix_is_pooled_to_the_display_grid(tmp_path: Path) -> None:
    np.save(tmp_path / "big.npy", np.random.default_rng(0).normal(size=(2, 300, 500)).astype(np.float32))
    result = wv.render_file(tmp_path / "big.npy", out=tmp_path / "big.gif")
    (layer,) = result.layers
    assert layer.shape == (300, 500)
    assert layer.grid == (60, 63)  # blocks of 5 × 8
    small = wv.render_file(tmp_path / "big.npy", wv.RenderOptions(max_rows=10, max_cols=20, pool="maxabs"),
                           out=tmp_path / "small.gif")
    assert small.layers[0].grid == (10, 20)


def test_render_file_on_the_original_scripts_pickled_list(tmp_path: Path) -> None:
    # ../shared/bench/make_data.py's pickle format: a pickled list of 2-D float32 arrays.
    rng = np.random.default_rng(0)
    w = np.clip(np.abs(rng.normal(0.025, 0.01, size=(6, 9))), 0, 0.05).astype(np.float32)
    frames = [np.clip(w + rng.normal(0, 0.004, w.shape), 0, 0.05).astype(np.float32) for _ in range(23)]
    with (tmp_path / "animation_data.pkl").open("wb") as fh:
        pickle.dump([x for x in np.stack(frames)], fh)  # noqa: C416 -- exactly how make_data.py writes it
    result = wv.render_file(tmp_path / "animation_data.pkl", wv.RenderOptions(), allow_pickle=True,
                            out=tmp_path / "training_weights.gif")
    assert result.layers[0].frames == 23
    assert read_gif(tmp_path / "training_weights.gif").n_frames == 23


def moving_square(i: int) -> np.ndarray:
    frame = np.zeros((10, 12, 3), np.uint8)
    frame[:, :, 2] = np.linspace(0, 255, 12, dtype=np.uint8)  # every frame has the same colours
    frame[i:i + 3, i:i + 3] = (255, 255, 255)
    return frame


def test_frames_to_gif_needs_no_mlflow(tmp_path: Path) -> None:
    wv.frames_to_gif((moving_square(i) for i in range(4)), tmp_path / "f.gif", frame_ms=50, hold_last_ms=400)
    gif = read_gif(tmp_path / "f.gif")
    assert gif.n_frames == 4
    assert gif.durations == [50, 50, 50, 400]
    assert gif.size == (12, 10)
    for i, frame in enumerate(gif.frames):
        np.testing.assert_array_equal(frame, moving_square(i))
    assert_one_global_palette(tmp_path / "f.gif")


def test_frames_to_gif_keeps_frames_whose_colours_the_first_frame_lacks(tmp_path: Path) -> None:
    frames = [np.full((10, 12, 3), v, np.uint8) for v in (0, 80, 160, 240)]
    wv.frames_to_gif(frames, tmp_path / "f.gif", frame_ms=50, hold_last_ms=400)
    gif = read_gif(tmp_path / "f.gif")
    assert gif.n_frames == 4
    assert [int(f[0, 0, 0]) for f in gif.frames] == [0, 80, 160, 240]


@pytest.mark.slow
def test_frames_to_gif_from_a_one_pass_iterator_keeps_distinct_frames(tmp_path: Path) -> None:
    colours = [(0, 0, 0), (200, 30, 30), (30, 200, 30), (30, 30, 200)]
    wv.frames_to_gif((np.full((10, 12, 3), c, np.uint8) for c in colours), tmp_path / "f.gif", frame_ms=50)
    gif = read_gif(tmp_path / "f.gif")
    assert gif.n_frames == 4
    for frame, colour in zip(gif.frames, colours, strict=True):  # nearest cube colour: within one cube step
        assert np.abs(frame[0, 0].astype(int) - colour).max() <= 32


@pytest.mark.slow
def test_an_up_to_date_run_still_writes_the_local_copies_asked_for(tmp_path: Path) -> None:
    run_id = make_run()
    write_canonical(tmp_path / "w", {"fc1": training_series(3)}, [0, 1, 2])
    log_folder(run_id, tmp_path / "w")
    assert wv.render_run(run_id).status == "rendered"
    before = artifact_files(run_id, "weightviz")
    again = wv.render_run(run_id, output_dir=tmp_path / "copies")
    assert again.status == "up_to_date"
    assert read_gif(tmp_path / "copies" / "fc1.gif").n_frames == 3
    assert artifact_files(run_id, "weightviz") == before


def test_out_takes_the_extension_of_the_format_written(tmp_path: Path) -> None:
    np.save(tmp_path / "w.npy", np.stack(training_series(3)))
    wv.render_file(tmp_path / "w.npy", wv.RenderOptions(formats=("html",)), out=tmp_path / "fc1.gif")
    assert (tmp_path / "fc1.html").read_text().lstrip().lower().startswith("<!doctype html")
    assert not (tmp_path / "fc1.gif").exists()


# ------------------------------------------------------------------------ stale renders, long tags


@pytest.mark.parametrize(("shape", "dtype"), [((5, 3), np.float32), ((2, 7), np.float64)])
def test_snapshots_logged_again_with_new_values_of_the_same_size_are_rendered_again(
        tmp_path: Path, shape: tuple[int, int], dtype: type) -> None:
    from mlflow_weightviz.automation.batch import render_experiment

    run_id = make_run(experiment="relogged")
    series = [np.full(shape, 0.1 * (i + 1), dtype) for i in range(3)]
    write_canonical(tmp_path / "w", {"proj": series}, [0, 10, 20])
    log_folder(run_id, tmp_path / "w")
    first = wv.render_run(run_id, output_dir=tmp_path / "one")
    assert first.status == "rendered"
    assert wv.render_run(run_id).status == "up_to_date"
    # The same files again, same names and sizes, other values: the listing cannot tell.
    write_canonical(tmp_path / "w2", {"proj": [-s * 3 for s in series]}, [0, 10, 20])
    sizes = sorted(p.stat().st_size for p in (tmp_path / "w").rglob("*") if p.is_file())
    assert sizes == sorted(p.stat().st_size for p in (tmp_path / "w2").rglob("*") if p.is_file())
    log_folder(run_id, tmp_path / "w2")
    plan = render_experiment("relogged", dry_run=True)
    assert [o.status for o in plan.outcomes if o.run_id == run_id] == ["would_render"]
    second = wv.render_run(run_id, output_dir=tmp_path / "two")
    assert second.status == "rendered"
    assert second.fingerprint != first.fingerprint
    assert tags_of(run_id)["weightviz.fingerprint"] == second.fingerprint
    one, two = read_gif(tmp_path / "one" / "proj.gif"), read_gif(tmp_path / "two" / "proj.gif")
    assert not np.array_equal(one.frames[-1], two.frames[-1])
    assert wv.render_run(run_id).status == "up_to_date"  # and once rendered, it is up to date again
    plan = render_experiment("relogged", dry_run=True)
    assert [o.status for o in plan.outcomes if o.run_id == run_id] == ["up_to_date"]


@pytest.mark.parametrize(("count", "length"), [(130, 45), (9, 700)])
def test_the_layers_tag_stays_valid_json_and_the_full_list_is_logged(tmp_path: Path, count: int,
                                                                      length: int) -> None:
    names = [f"{i:03d}." + "blocks.attn.q" * (length // 13 + 1) for i in range(count)]
    names = [n[:length] for n in names]
    write_canonical(tmp_path / "w", {n: [np.eye(2) * s for s in range(2)] for n in names}, [0, 1])
    run_id = make_run()
    log_folder(run_id, tmp_path / "w")
    result = wv.render_run(run_id)
    assert result.status == "rendered"
    tag = tags_of(run_id)["weightviz.layers"]
    assert len(tag) <= 5000
    value = json.loads(tag)
    assert value["count"] == count
    assert value["truncated"] is True
    assert value["layers"]
    assert value["layers"] == sorted(names)[:len(value["layers"])]
    assert value["file"] == "layers.json"
    logged = MlflowClient().download_artifacts(run_id, "weightviz/layers.json", str(tmp_path / "dl"))
    assert sorted(json.loads(Path(logged).read_text(encoding="utf-8"))) == sorted(names)
    assert len([f for f in artifact_files(run_id, "weightviz") if f.endswith(".gif")]) == count
    assert wv.render_run(run_id).status == "up_to_date"
