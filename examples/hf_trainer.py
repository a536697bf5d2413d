"""A Hugging Face ``Trainer`` recorded with ``mlflow_weightviz.TransformersCallback``.

The model is a tiny BERT built from a config (no download), trained for a few steps on
a synthetic in-memory task: is token 7 in the sequence? The callback records the
attention query matrix and the classifier before training and every 5 optimizer steps,
and renders their GIFs into the run when training ends.

Needs transformers and torch: ``pip install 'mlflow-weightviz[transformers]'``.
"""

import mlflow
import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

import mlflow_weightviz as wv

torch.manual_seed(0)
config = BertConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=32, max_position_embeddings=16, num_labels=2)
model = BertForSequenceClassification(config)

ids = torch.randint(8, 32, (128, 12))
ids[::2, 3] = 7  # half the rows contain token 7
dataset = [{"input_ids": row, "attention_mask": torch.ones(12, dtype=torch.long), "labels": int((row == 7).any())}
           for row in ids]

args = TrainingArguments(output_dir="hf-trainer-output", max_steps=20, per_device_train_batch_size=16,
                         learning_rate=5e-3, report_to="none", save_strategy="no", logging_strategy="no",
                         use_cpu=True, disable_tqdm=True, seed=0)
callback = wv.TransformersCallback(every_n_steps=5,
                                   layers=["*attention.self.query.weight", "classifier.weight"])

mlflow.set_experiment("weightviz-examples")
with mlflow.start_run(run_name="hf-trainer") as run:
    trainer = Trainer(model=model, args=args, train_dataset=dataset, callbacks=[callback])
    with callback:  # Trainer has no exception hook: this renders what was recorded even if train() fails
        trainer.train()

rec = callback.recorder
assert rec is not None
print(f"run_id: {run.info.run_id}")
print(f"snapshots: {rec.snapshots} in {rec.uploads} upload(s): {', '.join(rec.artifact_paths)}")
print(f"gifs: {', '.join(callback.result.artifact_paths) if callback.result else '(none)'}")
print(f"view: mlflow ui --backend-store-uri {mlflow.get_tracking_uri()}")
