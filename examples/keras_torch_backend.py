"""Keras 3 on the torch backend, recorded with ``mlflow_weightviz.KerasCallback``.

The callback records the kernels (variables with 2 or more dims, named by their Keras
path such as ``sequential/hidden/kernel``) before training and after every epoch, and
renders the GIFs into the run when ``fit`` ends.

Needs Keras 3 and torch: ``pip install 'mlflow-weightviz[keras,torch]'``.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")  # must be set before Keras is imported

import keras
import mlflow
import numpy as np

import mlflow_weightviz as wv

rng = np.random.default_rng(0)
x = rng.normal(size=(256, 8)).astype("float32")
y = (x[:, :3].sum(axis=1) > 0).astype("int64")

keras.utils.set_random_seed(0)
model = keras.Sequential([
    keras.Input((8,)),
    keras.layers.Dense(6, activation="tanh", name="hidden"),
    keras.layers.Dense(2, activation="softmax", name="output"),
])
model.compile(optimizer=keras.optimizers.SGD(0.2), loss="sparse_categorical_crossentropy")

mlflow.set_experiment("weightviz-examples")
with mlflow.start_run(run_name="keras-torch-backend") as run:
    callback = wv.KerasCallback(every_n_epochs=1)
    model.fit(x, y, epochs=8, batch_size=32, verbose=0, callbacks=[callback])

rec = callback.recorder
assert rec is not None
print(f"run_id: {run.info.run_id}")
print(f"snapshots: {rec.snapshots} in {rec.uploads} upload(s): {', '.join(rec.artifact_paths)}")
print(f"gifs: {', '.join(callback.result.artifact_paths) if callback.result else '(none)'}")
print(f"view: mlflow ui --backend-store-uri {mlflow.get_tracking_uri()}")
