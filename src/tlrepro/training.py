"""Training: seeding, compiling, callbacks from a spec, and fitting on images or on cached features.

`train` is the one entry point a notebook needs: it uses the cached frozen path whenever that gives
the same results as the plain path (no augmentation before the cut), and the plain path otherwise.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from tlrepro import features as feats
from tlrepro.errors import UserError
from tlrepro.models import Classifier
from tlrepro.tfdata import feature_dataset, image_dataset, labels_of


def seed_everything(seed: int) -> None:
    """One seed for Python, NumPy and TensorFlow, with deterministic ops: same params, same metrics."""
    keras.utils.set_random_seed(int(seed))
    tf.config.experimental.enable_op_determinism()


def compile_binary(model: keras.Model, learning_rate: float) -> None:
    """Adam + binary cross-entropy. Call again after changing what is trainable."""
    model.compile(
        optimizer=keras.optimizers.Adam(float(learning_rate)),
        loss="binary_crossentropy",
        metrics=[keras.metrics.BinaryAccuracy(name="accuracy")],
    )


def callbacks_from_spec(config: dict[str, Any]) -> list[keras.callbacks.Callback]:
    """EarlyStopping / ReduceLROnPlateau from a study config's `early_stopping` / `reduce_lr` sections."""
    made: list[keras.callbacks.Callback] = []
    if spec := config.get("early_stopping"):
        made.append(keras.callbacks.EarlyStopping(**spec))
    if spec := config.get("reduce_lr"):
        made.append(keras.callbacks.ReduceLROnPlateau(**spec))
    return made


class EpochLog(keras.callbacks.Callback):
    """One short line per epoch (at most ~12 lines per fit), so notebooks are not flooded."""

    def __init__(self, name: str, epochs: int) -> None:
        super().__init__()
        self.name, self.epochs = name, epochs
        self.every = max(1, int(np.ceil(epochs / 12)))

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if (epoch + 1) % self.every and epoch + 1 != self.epochs:
            return
        shown = ", ".join(f"{k} {v:.4f}" for k, v in (logs or {}).items() if k != "learning_rate")
        print(f"[{self.name}] epoch {epoch + 1}/{self.epochs}: {shown}", flush=True)


class CachedValidation(keras.callbacks.Callback):
    """Validation on cached frozen outputs for a model that augments in training.

    Validation images are not augmented, so the frozen part's outputs on them never change: compute
    them once and run only the trainable part each epoch. Sets val_loss/val_accuracy in the logs
    before EarlyStopping and History read them (keep this callback first).
    """

    def __init__(self, trainer: keras.Model, inputs: list[np.ndarray], labels: np.ndarray, batch_size: int) -> None:
        super().__init__()
        self.trainer, self.labels, self.batch_size = trainer, labels, batch_size
        self.inputs = inputs if len(inputs) > 1 else inputs[0]

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        probs = self.trainer.predict(self.inputs, batch_size=self.batch_size, verbose=0).ravel()
        loss = keras.losses.binary_crossentropy(self.labels[:, None], probs[:, None])
        if logs is not None:
            logs["val_loss"] = float(np.mean(keras.ops.convert_to_numpy(loss)))
            logs["val_accuracy"] = float(np.mean((probs >= 0.5) == (self.labels >= 0.5)))


class Snapshots(keras.callbacks.Callback):
    """Keeps the weights at given epoch counts: one run to the largest budget serves every budget."""

    def __init__(self, budgets: list[int]) -> None:
        super().__init__()
        self.budgets = set(int(b) for b in budgets)
        self.weights: dict[int, list[np.ndarray]] = {}

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if epoch + 1 in self.budgets:
            self.weights[epoch + 1] = [np.array(w) for w in self.model.get_weights()]


def history_frame(history: keras.callbacks.History) -> pd.DataFrame:
    frame = pd.DataFrame(history.history)
    frame = frame[sorted(frame.columns)]  # fixed column order, however the logs were filled
    frame.insert(0, "epoch", np.arange(1, len(frame) + 1))
    return frame


@dataclass
class TrainResult:
    history: pd.DataFrame
    seconds: float
    cached: bool  # trained on cached frozen outputs
    feature_seconds: float = 0.0  # time spent computing (not loading) frozen outputs
    cut: str | None = None
    snapshots: dict[int, list[np.ndarray]] = field(default_factory=dict)


def train(
    classifier: Classifier,
    splits: pd.DataFrame,
    *,
    learning_rate: float,
    epochs: int,
    batch_size: int,
    seed: int,
    name: str = "train",
    config: dict[str, Any] | None = None,
    use_cache: bool = True,
    budgets: list[int] | None = None,
    log: bool = True,
) -> TrainResult:
    """Fit the classifier on split == 'train', validating on split == 'val'.

    The classifier's trainable layers must already be set (models.set_trainable). With use_cache and
    nothing random before the cut, the frozen part runs once per split (cached on disk) and only
    the trainable part is fitted; otherwise the whole model is fitted on images.
    """
    train_frame = splits[splits["split"] == "train"]
    val_frame = splits[splits["split"] == "val"]
    if train_frame.empty:
        raise UserError("The split file has no `train` rows: check the study's split parameters.")
    callbacks = [*callbacks_from_spec(config or {}), *([EpochLog(name, epochs)] if log else [])]
    snapshots = Snapshots(budgets or [])
    callbacks.append(snapshots)

    frozen = feats.split_frozen(classifier) if use_cache else None
    feature_seconds = 0.0
    if frozen is not None:
        started = time.perf_counter()
        x_train, hit_train = feats.extract(frozen, train_frame, classifier=classifier, batch_size=batch_size,
                                           description=f"{name}: frozen outputs, train")
        x_val, hit_val = (feats.extract(frozen, val_frame, classifier=classifier, batch_size=batch_size,
                                        description=f"{name}: frozen outputs, val") if len(val_frame) else ([], True))
        feature_seconds = 0.0 if (hit_train and hit_val) else time.perf_counter() - started
        model = frozen.trainer
        train_ds = feature_dataset(x_train, labels_of(train_frame), batch_size, shuffle=True, seed=seed)
        val_ds = feature_dataset(x_val, labels_of(val_frame), batch_size) if len(val_frame) else None
    else:
        model = classifier.model
        train_ds = image_dataset(train_frame, model.input_shape[1], batch_size, shuffle=True, seed=seed)
        val_ds = image_dataset(val_frame, model.input_shape[1], batch_size) if len(val_frame) else None
        inference = feats.split_frozen(classifier, inference=True) if use_cache and len(val_frame) else None
        if inference is not None:  # augmentation in training only: validate on cached frozen outputs
            started = time.perf_counter()
            x_val, hit = feats.extract(inference, val_frame, classifier=classifier, batch_size=batch_size,
                                       description=f"{name}: frozen outputs, val")
            feature_seconds = 0.0 if hit else time.perf_counter() - started
            callbacks.insert(0, CachedValidation(inference.trainer, x_val, labels_of(val_frame), batch_size))
            val_ds = None

    compile_binary(model, learning_rate)
    tf.random.set_seed(seed)  # same shuffles and dropout masks whatever ran before
    started = time.perf_counter()
    history = model.fit(train_ds, validation_data=val_ds, epochs=epochs, callbacks=callbacks, verbose=0,
                        shuffle=False)  # the dataset shuffles itself, seeded
    seconds = time.perf_counter() - started
    return TrainResult(history_frame(history), seconds, frozen is not None, feature_seconds,
                       frozen.cut if frozen else None, snapshots.weights)


def predict(
    classifier: Classifier, frame: pd.DataFrame, *, batch_size: int, use_cache: bool = True
) -> tuple[np.ndarray, float]:
    """P(malignant) per row of `frame`, and the seconds it took (frozen outputs reused when cached)."""
    frozen = feats.split_frozen(classifier, inference=True) if use_cache else None
    started = time.perf_counter()
    if frozen is not None:
        x, _ = feats.extract(frozen, frame, classifier=classifier, batch_size=batch_size, description="predict")
        inputs = x if len(x) > 1 else x[0]
        probs = frozen.trainer.predict(inputs, batch_size=batch_size, verbose=0)
    else:
        ds = image_dataset(frame, classifier.model.input_shape[1], batch_size, with_labels=False)
        probs = classifier.model.predict(ds, verbose=0)
    return np.asarray(probs, dtype="float64").ravel(), time.perf_counter() - started
