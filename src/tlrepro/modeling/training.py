"""Training: seeding, compiling from a row, callbacks from a row, fitting on images or on cached features.

`train` is the one entry point: it runs the frozen part of the network once and fits only the trainable
part whenever that gives the same results as the plain path (nothing random before the cut), computes K
augmented views once when the row asks for `augmentation_views`, and fits the whole model on images
otherwise (validation then still runs on cached frozen outputs: it is never augmented).
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from dvclive import Live
from dvclive.keras import DVCLiveCallback

from tlrepro.core import paths, progress
from tlrepro.core.config import Row
from tlrepro.data.labels import predicted_positive
from tlrepro.data.tfdata import array_dataset, fit_orders, image_dataset
from tlrepro.modeling import compute
from tlrepro.modeling import frozen_cache as fc
from tlrepro.modeling.models import Classifier


def seed_everything(seed: int) -> None:
    """One seed for Python, NumPy and TensorFlow, with deterministic ops: same params, same metrics."""
    keras.utils.set_random_seed(int(seed))
    tf.config.experimental.enable_op_determinism()


def is_binary_output(model: keras.Model) -> bool:
    return int(model.output_shape[-1]) == 1


def optimizer_of(row: Row, learning_rate: float | None = None) -> keras.optimizers.Optimizer:
    rate = float(learning_rate if learning_rate is not None else row.learning_rate)
    if row.optimizer == "sgd":
        return keras.optimizers.SGD(rate, momentum=row.momentum)
    return keras.optimizers.Adam(rate)


def _correct_at_half(y_true: Any, y_pred: Any) -> Any:
    ops = keras.ops
    y_true = ops.reshape(ops.convert_to_tensor(y_true), (-1,))
    y_pred = ops.reshape(ops.convert_to_tensor(y_pred), (-1,))
    return ops.cast(ops.equal(ops.greater_equal(y_pred, 0.5), ops.greater_equal(y_true, 0.5)), "float32")


@keras.saving.register_keras_serializable(package="tlrepro")
class BinaryAccuracy(keras.metrics.MeanMetricWrapper):
    """Keras's binary accuracy under the project's threshold rule (`labels.predicted_positive`: P >= 0.5;
    Keras's own metric counts P > 0.5), so the val_accuracy early stopping reads is the reports' accuracy."""

    def __init__(self, name: str = "accuracy", dtype: Any = None) -> None:
        super().__init__(_correct_at_half, name=name, dtype=dtype)
        self._direction = "up"  # maximised: callbacks with mode "auto" (EarlyStopping) read this, as for Keras's own

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype}


# model -> (what it was compiled with, its optimizer's starting values)
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def compile_model(model: keras.Model, row: Row, learning_rate: float | None = None) -> None:
    """The row's optimizer with binary or sparse categorical cross-entropy. Call again after changing what
    is trainable.

    A model compiled before with the same optimizer settings and trainable layers keeps its compiled (and
    traced) training functions, and its optimizer is reset to the state a new one starts from: the next fit is
    the same as after a fresh compile, without tracing the training step again (seconds per fit).
    """
    optimizer = optimizer_of(row, learning_rate)
    jit = compute.current().jit_compile
    settings = {k: v for k, v in optimizer.get_config().items() if k != "name"}  # Keras numbers each new one's name
    compiled_for = (type(optimizer).__name__, repr(sorted(settings.items())), jit,
                    tuple(layer.trainable for layer in model._flatten_layers()))
    previous = _COMPILED.get(model)
    if previous is not None and previous[0] == compiled_for:
        for variable, start in zip(model.optimizer.variables, previous[1], strict=True):
            variable.assign(start)
        return
    if is_binary_output(model):
        loss, metric = "binary_crossentropy", BinaryAccuracy(name="accuracy")
    else:
        loss, metric = "sparse_categorical_crossentropy", keras.metrics.SparseCategoricalAccuracy(name="accuracy")
    model.compile(optimizer=optimizer, loss=loss, metrics=[metric], jit_compile=jit)
    with compute.current().scope():  # the optimizer's variables now, to start every later fit from
        model.optimizer.build(model.trainable_variables)
    _COMPILED[model] = (compiled_for, [np.array(keras.ops.convert_to_numpy(v)) for v in model.optimizer.variables])


def chosen_on_validation(row: Row) -> list[str]:
    """What a row's training lets its validation images choose (so figures on them are optimistic)."""
    return ([f"early-stopping epoch ({row.early_stopping.monitor})"] if row.early_stopping else []) + (
        ["learning-rate schedule"] if row.reduce_lr else [])


def targets(labels: np.ndarray, model: keras.Model) -> np.ndarray:
    """Class indices as the loss wants them: float 0/1 for a sigmoid output, int for softmax."""
    return labels.astype("float32") if is_binary_output(model) else labels.astype("int32")


def callbacks_of(row: Row) -> list[keras.callbacks.Callback]:
    made: list[keras.callbacks.Callback] = []
    if row.early_stopping:
        made.append(keras.callbacks.EarlyStopping(**row.early_stopping.model_dump()))
    if row.reduce_lr:
        made.append(keras.callbacks.ReduceLROnPlateau(**row.reduce_lr.model_dump()))
    return made


class StageLive(Live):
    """DVCLive for one fit inside a DVC stage: its folder (per-epoch TSVs under plots/metrics/{train,eval}/, the
    last epoch in metrics.json, no timestamps) and nothing else, whoever runs it (dvc repro, dvc exp run, a test).

    The stage's own dvc.yaml declares the folder, so DVCLive writes no dvc.yaml, saves no experiment, opens no
    DVC repository (inside `dvc exp run` its end() would `git add` untracked files under its folder: the staging
    folder's) and posts nothing to Studio."""

    def __init__(self, directory: Path | str) -> None:
        super().__init__(dir=str(directory), dvcyaml=None, save_dvc_exp=False, report=None)

    def _init_dvc(self) -> None:  # no repository: see the class docstring
        pass

    def _init_studio(self) -> None:
        self._studio_events_to_skip = {"start", "data", "done"}

    def post_data_to_studio(self) -> None:
        pass


def log_folder(study: str, *parts: str) -> Path:
    """A fit's DVCLive folder: reports/training/<study>/<parts>, e.g. [<protocol>/]<row>[/fold<k>] (staged while
    `tlrepro run` runs; empty parts are left out)."""
    return paths.study_output(f"{paths.study_outputs(study)['training']}/" + "/".join(p for p in parts if p))


class EpochLog(keras.callbacks.Callback):
    """One short line per epoch (at most ~12 lines per fit) in the notebook, and every epoch in the terminal.

    DVCLive writes every epoch's figures to files; this line is what a person reads while the notebook runs (the
    notebook keeps it; the HTML report leaves it out: curves and tables show it there)."""

    def __init__(self, name: str, epochs: int) -> None:
        super().__init__()
        self.name, self.epochs = name, epochs
        self.every = max(1, int(np.ceil(epochs / 12)))

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        line = progress.epoch_line(self.name, epoch + 1, self.epochs, logs)
        progress.to_terminal(line)
        if (epoch + 1) % self.every == 0 or epoch + 1 == self.epochs:
            print(line, flush=True)


class CachedValidation(keras.callbacks.Callback):
    """Validation on cached frozen outputs for a model that trains on images (it augments).

    Validation images are not augmented, so the frozen part's outputs on them never change: compute
    them once and run only the trainable part each epoch. Sets val_loss/val_accuracy in the logs
    before EarlyStopping and History read them (keep this callback first).
    """

    def __init__(self, trainer: keras.Model, inputs: list[np.ndarray], labels: np.ndarray, batch_size: int) -> None:
        super().__init__()
        self.trainer, self.labels, self.batch_size = trainer, labels, batch_size
        self.inputs = fc.trainer_inputs(inputs)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        probs = self.trainer.predict(self.inputs, batch_size=self.batch_size, verbose=0)
        if logs is not None:
            loss, accuracy = loss_and_accuracy(self.labels, probs)
            logs["val_loss"], logs["val_accuracy"] = loss, accuracy


def loss_and_accuracy(labels: np.ndarray, probs: np.ndarray) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of predicted probabilities (one column: P(class 1))."""
    probs = np.asarray(probs, dtype="float64")
    eps = 1e-7
    if probs.ndim == 1 or probs.shape[-1] == 1:
        p = np.clip(probs.ravel(), eps, 1 - eps)
        y = labels.astype("float64")
        accuracy = np.mean(predicted_positive(probs.ravel(), 0.5) == y.astype(bool))
        return float(np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p)))), float(accuracy)
    p = np.clip(probs[np.arange(len(labels)), labels.astype(int)], eps, 1.0)
    return float(np.mean(-np.log(p))), float(np.mean(probs.argmax(axis=1) == labels))


class Snapshots(keras.callbacks.Callback):
    """Keeps the weights at given epoch counts: one run to the largest budget serves every budget."""

    def __init__(self, budgets: list[int]) -> None:
        super().__init__()
        self.budgets = {int(b) for b in budgets}
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
    path: str  # "cached features", "cached augmented views (K)" or "images"
    feature_seconds: float = 0.0  # time spent computing (not loading) frozen outputs
    cut: str | None = None
    best_epoch: int | None = None  # 1-based epoch whose weights the model holds after training
    snapshots: dict[int, list[np.ndarray]] = field(default_factory=dict)

    @property
    def epochs_run(self) -> int:
        return len(self.history)

    @property
    def cached(self) -> bool:
        return self.path != "images"


def train(classifier: Classifier, train_frame: pd.DataFrame, val_frame: pd.DataFrame, *,
          train_labels: np.ndarray, val_labels: np.ndarray, epochs: int, seed: int,
          learning_rate: float | None = None, name: str = "train", use_cache: bool = True,
          budgets: list[int] | None = None, log: bool = True, live: Path | str | None = None,
          views_seed: int | None = None) -> TrainResult:
    """Fit the classifier on `train_frame`, validating on `val_frame` (may be empty); with `live`, DVCLive
    writes every epoch's figures into that folder (StageLive).

    The classifier's trainable layers must already be set (models.set_trainable).
    """
    row = classifier.row
    batch = row.batch_size
    callbacks = [*callbacks_of(row), *([EpochLog(name, epochs)] if log else [])]
    snapshots = Snapshots(budgets or [])
    callbacks.append(snapshots)
    has_val = len(val_frame) > 0
    frozen = fc.split_frozen(classifier) if use_cache else None
    started = time.perf_counter()
    computed = False
    # under a distribution strategy the batch orders are laid out explicitly, the same as on one device
    explicit = epochs if compute.current().distributed else None
    steps = int(np.ceil(len(train_frame) / batch)) if explicit else None
    if frozen is not None:
        model = frozen.trainer
        y_train, y_val = targets(train_labels, model), targets(val_labels, model)
        if row.augmentation_views:
            # `views_seed`: head seeds share the study seed's augmented views (and so its cached features)
            views, hit = fc.extract_views(frozen, train_frame, classifier=classifier, views=row.augmentation_views,
                                          seed=seed if views_seed is None else views_seed, batch_size=batch)
            computed |= not hit
            train_ds, steps = _cycle_views(views, y_train, batch, seed, explicit)
            path = f"cached augmented views ({row.augmentation_views})"
        else:
            x_train, hit = fc.extract(frozen, train_frame, classifier=classifier, batch_size=batch,
                                      description=f"{name}: frozen outputs, train")
            computed |= not hit
            train_ds = array_dataset(x_train, y_train, batch, shuffle=True, seed=seed,
                                     orders=fit_orders(len(y_train), seed, explicit) if explicit else None)
            path = "cached features"
        val_ds = None
        if has_val:
            x_val, hit = fc.extract(frozen, val_frame, classifier=classifier, batch_size=batch,
                                    description=f"{name}: frozen outputs, val")
            computed |= not hit
            val_ds = array_dataset(x_val, y_val, batch)
    else:
        model = classifier.model
        y_train, y_val = targets(train_labels, model), targets(val_labels, model)
        train_ds = image_dataset(train_frame, classifier.image_size, batch, labels=y_train, shuffle=True, seed=seed,
                                 epochs=explicit)
        val_ds = image_dataset(val_frame, classifier.image_size, batch, labels=y_val) if has_val else None
        inference = fc.split_frozen(classifier, inference=True) if use_cache and has_val else None
        if inference is not None:  # augmentation in training only: validate on cached frozen outputs
            x_val, hit = fc.extract(inference, val_frame, classifier=classifier, batch_size=batch,
                                    description=f"{name}: frozen outputs, val")
            computed |= not hit
            callbacks.insert(0, CachedValidation(inference.trainer, x_val, y_val, batch))
            val_ds = None
        path = "images"
    feature_seconds = time.perf_counter() - started if computed else 0.0

    if live is not None:  # last: it logs what CachedValidation and ReduceLROnPlateau put in the logs
        callbacks.append(DVCLiveCallback(live=StageLive(live)))
    compile_model(model, row, learning_rate)
    tf.random.set_seed(seed)  # same shuffles and dropout masks whatever ran before
    started = time.perf_counter()
    history = model.fit(train_ds, validation_data=val_ds, epochs=epochs, steps_per_epoch=steps,
                        callbacks=callbacks, verbose=0, shuffle=False)  # the datasets shuffle themselves, seeded
    seconds = time.perf_counter() - started
    stopper = next((c for c in callbacks if isinstance(c, keras.callbacks.EarlyStopping)), None)
    frame = history_frame(history)
    best = (stopper.best_epoch + 1) if stopper is not None and stopper.restore_best_weights else len(frame)
    return TrainResult(frame, seconds, path, feature_seconds, frozen.cut if frozen else None, best, snapshots.weights)


def _cycle_views(views: list[list[np.ndarray]], labels: np.ndarray, batch: int, seed: int,
                 epochs: int | None = None) -> tuple[tf.data.Dataset, int]:
    """Epoch e trains on view e mod K (each view reshuffled): (an endless dataset, steps per epoch); with
    `epochs`, the same batches laid out explicitly for that many epochs (distributed training)."""
    steps = int(np.ceil(len(labels) / batch))
    if epochs:  # one iterator runs through the cycle: view k's pass j is its shuffle's iteration j + 1
        orders = [fit_orders(len(labels), seed + k, -(-epochs // len(views)), stride=1) for k in range(len(views))]
        parts = [array_dataset(views[e % len(views)], labels, batch, orders=orders[e % len(views)][e // len(views)][None])
                 for e in range(epochs)]
        for part in parts[1:]:
            parts[0] = parts[0].concatenate(part)
        return parts[0], steps
    datasets = [array_dataset(v, labels, batch, shuffle=True, seed=seed + k) for k, v in enumerate(views)]
    cycle = datasets[0]
    for ds in datasets[1:]:
        cycle = cycle.concatenate(ds)
    return cycle.repeat(), steps


def predict(classifier: Classifier, frame: pd.DataFrame, *, batch_size: int | None = None,
            use_cache: bool = True) -> tuple[np.ndarray, float]:
    """Class probabilities per row of `frame` (binary: P(class 1) as one column), and the seconds it took.

    With use_cache the frozen part's outputs are reused from (or written to) the cache.
    """
    batch = batch_size or classifier.row.batch_size
    frozen = fc.split_frozen(classifier, inference=True) if use_cache else None
    started = time.perf_counter()
    if frozen is not None:
        x, _ = fc.extract(frozen, frame, classifier=classifier, batch_size=batch, description="predict")
        probs = frozen.trainer.predict(fc.trainer_inputs(x), batch_size=batch, verbose=0)
    else:
        probs = classifier.model.predict(image_dataset(frame, classifier.image_size, batch), verbose=0)
    probs = np.asarray(probs, dtype="float64")
    return (probs.ravel() if probs.shape[-1] == 1 else probs), time.perf_counter() - started


# Cached and end-to-end probabilities differ by float32 rounding only (batch composition, fused kernels).
CACHE_TOLERANCE = 1e-3


def check_end_to_end(classifier: Classifier, frame: pd.DataFrame, probs: np.ndarray, *, images: int = 8,
                     where: str = "") -> float:
    """The largest |difference| between `probs` (predicted from cached frozen outputs) and the whole model run on
    the first `images` rows' image files: the figures are computed from the cache, and this check ties them to the
    model that is saved. Raises RuntimeError above CACHE_TOLERANCE (a bug in the cut or the cache, never the data)."""
    sample = frame.iloc[:images]
    if sample.empty:
        return 0.0
    direct = np.asarray(classifier.model.predict(image_dataset(sample, classifier.image_size, len(sample)), verbose=0),
                        dtype="float64")
    direct = direct.ravel() if direct.shape[-1] == 1 else direct
    gap = float(np.max(np.abs(direct - np.asarray(probs)[:len(sample)])))
    if not gap <= CACHE_TOLERANCE:
        raise RuntimeError(f"{where}: the cached path's probabilities differ from the whole model's by {gap:.2g} "
                           f"(over {CACHE_TOLERANCE:g}) on {len(sample)} images: the frozen cut or the feature cache "
                           f"is wrong. Delete the feature cache (TLREPRO_FEATURE_CACHE or data/features) and rerun; "
                           f"if it persists, report it with the row's settings.")
    return gap
