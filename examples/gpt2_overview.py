"""A GPT-2-small-shaped model: which of its 50 weight matrices move, and when.

The model is built from ``transformers.GPT2Config`` (no download): 12 blocks of width
768, as GPT-2 small, with a smaller vocabulary so it trains on a CPU. It trains a few
steps on random tokens while ``record()`` snapshots its 50 two-dimensional weights. At
the end the run gets, in ``weightviz/``:

* ``grid.gif``: all 50 layers side by side, one frame per snapshot, within the
  ``--grid`` size budget (2048 px wide, about 4 megapixels), and ``grid-legend.json``
  with the full layer names;
* ``overview.png`` / ``overview.html``: one row per layer, one column per snapshot,
  coloured by the update ratio ‖W_t − W_s‖ / ‖W_s‖.

``--scale 8`` divides the width by 8 (a quick run; the tests use it); ``--save DIR``
copies the rendered files into ``DIR``. The snapshots are stored whole in float16
(``reduce=False``) so the update ratios can be computed from them.

Needs transformers and torch: ``pip install 'mlflow-weightviz[transformers]'``.
"""

import argparse
from pathlib import Path

import mlflow
import torch
from mlflow.tracking import MlflowClient
from transformers import GPT2Config, GPT2LMHeadModel

import mlflow_weightviz as wv

parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
parser.add_argument("--scale", type=int, default=1, help="divide the model's width by this (1: GPT-2 small's 768)")
parser.add_argument("--steps", type=int, default=16, help="training steps")
parser.add_argument("--every", type=int, default=3, help="snapshot every this many steps")
parser.add_argument("--save", type=Path, default=None, help="copy the rendered files into this folder")
args = parser.parse_args()

torch.manual_seed(0)
width = 768 // args.scale
vocab = 4096 // args.scale
config = GPT2Config(n_layer=12, n_embd=width, n_head=max(1, 12 // args.scale), n_positions=64, vocab_size=vocab,
                    bos_token_id=vocab - 1, eos_token_id=vocab - 1)
model = GPT2LMHeadModel(config)
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)

mlflow.set_experiment("weightviz-examples")
with mlflow.start_run(run_name="gpt2-overview") as run:
    # Every weight matrix (2-D parameter); the embedding is tied to the output head, so it is recorded once.
    with wv.record(model, every=args.every, reduce=False, dtype="float16", grid=True) as rec:
        for step in range(args.steps + 1):
            tokens = torch.randint(0, config.vocab_size, (4, 64))
            loss = model(tokens, labels=tokens).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            mlflow.log_metric("loss", loss.item(), step=step)
            rec.step(step)

print(f"run_id: {run.info.run_id}")
print(f"layers: {len({name for name, p in model.named_parameters() if p.ndim >= 2})}")
print(f"files: {', '.join(rec.result.artifact_paths) if rec.result else '(none)'}")
if args.save is not None:
    args.save.mkdir(parents=True, exist_ok=True)
    MlflowClient().download_artifacts(run.info.run_id, "weightviz", str(args.save))
    print(f"saved: {args.save / 'weightviz'}")
print(f"view: mlflow ui --backend-store-uri {mlflow.get_tracking_uri()}")
