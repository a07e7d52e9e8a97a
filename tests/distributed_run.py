"""Run by tests/test_compute.py in a fresh process (devices and strategies are fixed at TensorFlow's start):
train a tiny model on generated images under one `compute` setting and print its predictions as JSON.

The backbone is frozen: features are extracted (sharded over the replicas) and the head trains on them. A
trainable BatchNormalization would see each replica's share of the batch, so its statistics (and the result)
would legitimately differ from one device's; the head has none.

    python distributed_run.py STRATEGY IMAGES_FOLDER [LOGICAL_CPUS]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd


def main() -> None:
    strategy, folder = sys.argv[1], Path(sys.argv[2])
    logical = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    import tensorflow as tf

    if logical > 1:  # before anything initialises the devices
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * logical)
    from tlrepro.core.config import Compute, RowSettings, resolve_row
    from tlrepro.data.labels import BINARY_CLASSES, encode
    from tlrepro.modeling import compute, models, training

    plan = compute.activate(Compute(strategy=strategy, mixed_precision="off", jit_compile="off"))
    frame = pd.read_csv(folder / "frame.csv", dtype=str)
    row = resolve_row("r", RowSettings(), RowSettings(
        backbone="TinyCNN", weights="random", image_size=32, batch_size=8, learning_rate=1e-1, epochs=10,
        trainable_layers=0, head=[{"pool": "avg"}, {"dense": 8, "activation": "relu"}, {"dense": 1, "activation": "sigmoid"}]))
    training.seed_everything(7)
    with plan.scope():
        clf = models.build_classifier(row, classes=BINARY_CLASSES, seed=7)
        models.set_trainable(clf, row.trainable_layers)
        train, val = frame[frame["side"] == "train"], frame[frame["side"] == "val"]
        result = training.train(clf, train, val, train_labels=encode(train["label"], BINARY_CLASSES),
                                val_labels=encode(val["label"], BINARY_CLASSES), epochs=10, seed=7, log=False)
        probs, _ = training.predict(clf, frame)
    print(json.dumps({"replicas": plan.replicas, "strategy": plan.name, "path": result.path,
                      "val_accuracy": float(result.history["val_accuracy"].iloc[-1]),
                      "probs": np.asarray(probs).round(6).tolist()}))


if __name__ == "__main__":
    main()
