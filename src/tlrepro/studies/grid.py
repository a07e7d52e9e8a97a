"""The learning-rate x epoch-budget grid (lin2024): every cell of a frozen backbone, with `repeats` seeds,
at the cost of one forward pass over the images.

The backbone is frozen, so its pooled features are computed once per side (and cached). Every head of the
grid, one per (seed, learning rate), then trains at once as one batched computation over those features:
stacked weights, one einsum per layer, each head with its own Adam state and learning rate, each seed
with its own initial weights and batch order. Heads share nothing, so this equals training them one by
one (tests/test_grid.py checks it against Keras). Validation and test probabilities are kept for every
epoch, so one run to the largest budget serves every budget: nothing in training depends on the total
epoch count. With early stopping, a cell's figures at budget b are those of the epoch whose weights Keras
would restore (the best validation epoch up to b or up to the stop), validation and test alike.

Cells are chosen on validation only (mean over seeds); test figures are read once for the chosen cell.
The seeds are head seeds: each varies only a head's initial weights and batch order, over fixed features
and a fixed split. Where the chosen cell leads the next one by less than that spread, `choice_note` says the
choice of cell is within noise. The module runs just over 400 lines: the batched trainer, the bookkeeping that
keeps it equal to Keras and the choice of cell are one mechanism, read together.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from tlrepro.core.config import EarlyStopping, HeadLayer, Row
from tlrepro.core.errors import UserError
from tlrepro.data.labels import predicted_positive
from tlrepro.modeling import compute, models, training
from tlrepro.modeling import frozen_cache as fc
from tlrepro.results import metrics
from tlrepro.studies.base import Study, card_for

ADAM = {"beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7}  # Keras's Adam defaults


def batch_orders(n: int, seeds: list[int], epochs: int) -> np.ndarray:
    """(epochs, seeds, n) permutations: seed s's shuffle of the training rows in each epoch."""
    return np.stack([np.stack([np.random.default_rng([s, e]).permutation(n) for s in seeds]) for e in range(epochs)])


def glorot(rng: np.random.Generator, fan_in: int, fan_out: int) -> np.ndarray:
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, (fan_in, fan_out)).astype("float32")


class ParallelHeads:
    """Heads of dense layers for S seeds x L learning rates, trained together with Adam.

    Head (s, l) starts from seed s's initial weights (the same for every learning rate) and trains with
    learning rate l on seed s's batch order. The heads of one seed see the same batches, so their first
    layers are stored side by side, (S, D, L*H): one wide matrix product per seed instead of L narrow ones.
    A whole epoch is one XLA-compiled loop; the last, short batch is padded with zero-weight rows, which
    leaves its gradient equal to the short batch's.
    """

    def __init__(self, head: list[HeadLayer], in_dim: int, seeds: list[int], learning_rates: list[float]):
        if any(layer.kind != "dense" for layer in head):
            raise UserError("the grid trains heads of dense layers over cached pooled features: put pooling "
                            "first and only dense layers after it (no dropout or batch_norm in grid heads).")
        if head[-1].dense != 1 or head[-1].activation != "sigmoid":
            raise UserError("the grid's heads end in {dense: 1, activation: sigmoid} (binary studies).")
        self.head, self.seeds = head, list(seeds)
        self.rates = np.asarray(learning_rates, dtype="float32")
        n_seeds, n_rates = len(seeds), len(learning_rates)
        self.units = [layer.dense for layer in head]
        self.activations = [layer.activation for layer in head]
        self.variables: list[tf.Variable] = []
        fan_in = in_dim
        for i, units in enumerate(self.units):
            kernels = np.stack([glorot(np.random.default_rng([seed, i]), fan_in, units) for seed in seeds])
            if i == 0:  # (S, D, L*H): the L heads of a seed side by side
                w = np.tile(kernels, (1, 1, n_rates))
                b = np.zeros((n_seeds, n_rates * units), "float32")
            else:  # (S, L, H_in, H_out)
                w = np.repeat(kernels[:, None], n_rates, axis=1)
                b = np.zeros((n_seeds, n_rates, units), "float32")
            self.variables += [tf.Variable(w, name=f"w{i}"), tf.Variable(b, name=f"b{i}")]
            fan_in = units
        self.m = [tf.Variable(tf.zeros_like(v)) for v in self.variables]
        self.v = [tf.Variable(tf.zeros_like(v)) for v in self.variables]
        self.step = tf.Variable(0.0)
        self.active = tf.Variable(np.ones((n_seeds, n_rates), "float32"))  # 0 once a cell stopped early
        self._epoch = tf.function(self._epoch_impl, jit_compile=True, reduce_retracing=True)
        self._forward = tf.function(self.forward, jit_compile=True, reduce_retracing=True)

    @staticmethod
    def _act(h: tf.Tensor, activation: str | None) -> tf.Tensor:
        return tf.nn.relu(h) if activation == "relu" else tf.sigmoid(h) if activation == "sigmoid" else h

    def forward(self, x: tf.Tensor) -> tf.Tensor:
        """x (S, B, D) -> P(malignant) (S, L, B)."""
        n_seeds, n_rates = len(self.seeds), len(self.rates)
        h = self._act(tf.matmul(x, self.variables[0]) + self.variables[1][:, None, :], self.activations[0])
        h = tf.transpose(tf.reshape(h, (n_seeds, -1, n_rates, self.units[0])), (0, 2, 1, 3))  # S, L, B, H
        for i in range(1, len(self.units)):
            w, b = self.variables[2 * i], self.variables[2 * i + 1]
            h = self._act(tf.einsum("slbi,slio->slbo", h, w) + b[:, :, None, :], self.activations[i])
        return h[..., 0]

    def _scales(self, alpha: tf.Tensor) -> list[tf.Tensor]:
        """Per-weight learning-rate factors (from the (S, L) alpha) shaped like each variable."""
        wide = tf.repeat(alpha, self.units[0], axis=1)  # S, L*H
        out = [wide[:, None, :], wide]
        for _ in self.units[1:]:
            out += [alpha[:, :, None, None], alpha[:, :, None]]
        return out

    def _epoch_impl(self, x: tf.Tensor, y: tf.Tensor, index: tf.Tensor, weight: tf.Tensor) -> tf.Tensor:
        """One epoch: `index`/`weight` (steps, S, B) give each step's rows per seed and their weights."""
        b1, b2, eps = ADAM["beta_1"], ADAM["beta_2"], ADAM["epsilon"]
        rates = tf.constant(self.rates)[None, :]
        for i in tf.range(tf.shape(index)[0]):
            xb, yb, wb = tf.gather(x, index[i]), tf.gather(y, index[i]), weight[i]
            with tf.GradientTape() as tape:
                p = tf.clip_by_value(self.forward(xb), 1e-7, 1 - 1e-7)
                per_row = -(yb[:, None] * tf.math.log(p) + (1 - yb[:, None]) * tf.math.log(1 - p))  # S, L, B
                # each head's mean loss over its real rows; heads share no weights, so the sum's gradient
                # gives every head its own loss's gradient
                losses = tf.reduce_sum(per_row * wb[:, None, :], -1) / tf.reduce_sum(wb, -1)[:, None]
                total = tf.reduce_sum(losses)
            grads = tape.gradient(total, self.variables)
            self.step.assign_add(1.0)
            alpha = rates * tf.sqrt(1 - b2 ** self.step) / (1 - b1 ** self.step) * self.active
            for var, grad, m, v, scale in zip(self.variables, grads, self.m, self.v, self._scales(alpha), strict=True):
                m.assign_add((grad - m) * (1 - b1))
                v.assign_add((tf.square(grad) - v) * (1 - b2))
                var.assign_sub(m * scale / (tf.sqrt(v) + eps))
        return self.step

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Probabilities of every head on the same rows x (N, D): (S, L, N)."""
        stacked = tf.repeat(tf.convert_to_tensor(x[None]), len(self.seeds), axis=0)
        return self._forward(stacked).numpy().astype("float64")

    def weights_of(self, seed_index: int, rate_index: int, values: list[np.ndarray] | None = None
                   ) -> list[np.ndarray]:
        """Head (s, l)'s weights in Keras Dense order (kernel, bias per dense layer), now or in a snapshot."""
        values = values if values is not None else [v.numpy() for v in self.variables]
        h = self.units[0]
        first = slice(rate_index * h, (rate_index + 1) * h)
        out = [values[0][seed_index][:, first], values[1][seed_index][first]]
        out += [v[seed_index, rate_index] for v in values[2:]]
        return out


@dataclass
class GridRun:
    """Per epoch and head: validation accuracy/loss and the validation and test probabilities (NaN for epochs
    not recorded: without early stopping only the budgets' epochs are)."""

    val_accuracy: np.ndarray  # (E, S, L)
    val_loss: np.ndarray  # (E, S, L)
    val_probs: np.ndarray  # (E, S, L, Nval)
    test_probs: np.ndarray  # (E, S, L, Ntest)
    stopped: np.ndarray  # (S, L) epochs run per head (1-based)
    seconds: float
    snapshots: dict[int, list[np.ndarray]] = field(default_factory=dict)  # recorded epoch -> the heads' weights


def _losses(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p), axis=-1)


def _epoch_batches(order: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(steps, S, B) row indices and weights for one epoch of per-seed orders (S, N): the last batch padded."""
    n_seeds, n = order.shape
    steps = int(np.ceil(n / batch_size))
    pad = steps * batch_size - n
    index = np.concatenate([order, order[:, :pad]], axis=1)
    weight = np.concatenate([np.ones((n_seeds, n), "float32"), np.zeros((n_seeds, pad), "float32")], axis=1)
    shape = (n_seeds, steps, batch_size)
    return index.reshape(shape).transpose(1, 0, 2), weight.reshape(shape).transpose(1, 0, 2)


def train_grid(heads: ParallelHeads, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray,
               y_val: np.ndarray, x_test: np.ndarray, *, epochs: int, batch_size: int,
               early_stopping: EarlyStopping | None = None, record: set[int] | None = None) -> GridRun:
    """Train every head for `epochs` epochs; after the (1-based) epochs in `record` (every epoch when None
    or with early stopping, which needs them) keep validation and test probabilities, and (without early
    stopping) the heads' weights, so the chosen cell's model needs no second training."""
    started = time.perf_counter()
    orders = batch_orders(len(y_train), heads.seeds, epochs)
    x_all = tf.convert_to_tensor(x_train)
    y_all = tf.convert_to_tensor(y_train.astype("float32"))
    shape = (len(heads.seeds), len(heads.rates))
    nan = np.full(shape, np.nan)
    val_acc, val_loss, val_probs, test_probs = [], [], [], []
    best = np.full(shape, np.inf)
    wait = np.zeros(shape, int)
    stopped = np.full(shape, epochs)
    sign = -1.0 if early_stopping and early_stopping.monitor == "val_accuracy" else 1.0
    snapshots: dict[int, list[np.ndarray]] = {}
    for epoch in range(epochs):
        index, weight = _epoch_batches(orders[epoch], batch_size)
        heads._epoch(x_all, y_all, tf.constant(index), tf.constant(weight))
        if early_stopping is None and record is not None and epoch + 1 not in record:
            val_acc.append(nan), val_loss.append(nan)
            val_probs.append(np.full((*shape, len(y_val)), np.nan)), test_probs.append(np.full((*shape, len(x_test)), np.nan))
            continue
        pv = heads.predict(x_val)
        acc = (predicted_positive(pv, 0.5) == y_val.astype(bool)).mean(axis=-1)
        loss = _losses(y_val.astype("float64"), pv)
        val_acc.append(acc), val_loss.append(loss), val_probs.append(pv), test_probs.append(heads.predict(x_test))
        if early_stopping is None and record is not None:
            snapshots[epoch + 1] = [v.numpy() for v in heads.variables]
        if early_stopping is not None:
            value = sign * (acc if early_stopping.monitor == "val_accuracy" else loss)
            running = stopped == epochs
            improved = value < best - early_stopping.min_delta
            best = np.where(running & improved, value, best)
            wait = np.where(running, np.where(improved, 0, wait + 1), wait)
            stop_now = running & (wait >= early_stopping.patience) & (epoch > 0)
            stopped = np.where(stop_now, epoch + 1, stopped)
            heads.active.assign(np.where(stopped == epochs, 1.0, 0.0).astype("float32"))
    return GridRun(np.stack(val_acc), np.stack(val_loss), np.stack(val_probs), np.stack(test_probs), stopped,
                   time.perf_counter() - started, snapshots)


def log_epochs(folder: Any, run: GridRun, learning_rates: list[float]) -> None:
    """Through DVCLive (training.StageLive), every recorded epoch's validation accuracy and loss per learning rate,
    mean over the head seeds (metrics lr_<rate>/eval/accuracy and /loss; step = epoch - 1, as DVCLive's Keras
    callback counts). Without early stopping only the budgets' epochs are recorded, so only those are logged."""
    live = training.StageLive(folder)
    for epoch in range(len(run.val_accuracy)):
        if np.isnan(run.val_accuracy[epoch]).all():
            continue
        live.step = epoch
        for j, rate in enumerate(learning_rates):
            live.log_metric(f"lr_{float(rate):g}/eval/accuracy", float(np.mean(run.val_accuracy[epoch][:, j])))
            live.log_metric(f"lr_{float(rate):g}/eval/loss", float(np.mean(run.val_loss[epoch][:, j])))
    live.end()


def evaluated_epoch(run: GridRun, budget: int, early_stopping: EarlyStopping | None) -> np.ndarray:
    """(S, L) 0-based epoch whose weights a head holds after training to `budget` epochs: the budget's last
    epoch, or with early stopping (restore_best_weights) the best monitored epoch up to the budget/stop."""
    n_seeds, n_rates = run.stopped.shape
    last = np.minimum(run.stopped, budget) - 1
    if early_stopping is None or not early_stopping.restore_best_weights:
        return last
    monitored = run.val_accuracy if early_stopping.monitor == "val_accuracy" else -run.val_loss
    out = np.zeros((n_seeds, n_rates), int)
    for i in range(n_seeds):
        for j in range(n_rates):
            out[i, j] = int(np.argmax(monitored[: last[i, j] + 1, i, j]))  # first best, as Keras's `>`
    return out


@dataclass
class BackboneGrid:
    """One backbone's grid, its chosen cell, and that cell's figures."""

    row: Row
    cells: pd.DataFrame  # learning_rate, epochs, seed, evaluated_epoch, val_accuracy, val_loss
    best: dict[str, Any]  # learning_rate, epochs, mean val accuracy, evaluated epoch (primary seed)
    test_metrics: dict[str, Any]  # primary seed, with bootstrap CIs
    seed_test: list[dict[str, Any]]  # every seed's test figures at the chosen cell
    val_probs: np.ndarray  # primary seed at the chosen cell
    test_probs: np.ndarray
    feature_seconds: float
    head_seconds: float
    clean_metrics: dict[str, Any] | None = None  # without the test images that match a training image
    classifier: models.Classifier | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def run_backbone(study: Study, name: str) -> BackboneGrid:
    """Features once per side, then every head of the grid at once; the chosen cell's model is rebuilt."""
    row = study.row(name)
    grid = study.settings.grid
    seeds = [study.seed + r for r in range(study.settings.repeats)]
    with compute.current().scope():  # the features are sharded over the strategy's replicas
        classifier = models.build_classifier(row, classes=study.classes, seed=study.seed)
    models.set_trainable(classifier, 0)
    frozen = fc.split_frozen(classifier)
    if frozen is None or len(frozen.crossing_shapes) != 1 or len(frozen.crossing_shapes[0]) != 1:
        raise UserError(f"row `{name}`: the grid needs a frozen backbone followed by pooling (pooled features).")
    parts = {side: study.part(side) for side in ("train", "val", "test")}
    started = time.perf_counter()
    feats = {side: fc.extract(frozen, frame, classifier=classifier, batch_size=row.batch_size,
                              description=f"{name}: features, {side}")[0][0] for side, frame in parts.items()}
    feature_seconds = time.perf_counter() - started
    y = {side: study.labels(frame).astype("float64") for side, frame in parts.items()}
    budgets = sorted({study.epochs(row, e) for e in grid.epochs})
    head_layers = [layer for layer in row.head if layer.pool is None]
    heads = ParallelHeads(head_layers, feats["train"].shape[1], seeds, grid.learning_rates)
    run = train_grid(heads, feats["train"], y["train"], feats["val"], y["val"], feats["test"],
                     epochs=max(budgets), batch_size=row.batch_size, early_stopping=row.early_stopping,
                     record=set(budgets))
    log_epochs(training.log_folder(study.id, name), run, grid.learning_rates)

    records = []
    for budget in budgets:
        chosen = evaluated_epoch(run, budget, row.early_stopping)
        for i, seed in enumerate(seeds):
            for j, lr in enumerate(grid.learning_rates):
                e = chosen[i, j]
                records.append({"backbone": name, "learning_rate": float(lr), "epochs": budget, "seed": seed,
                                "evaluated_epoch": int(e) + 1, "val_accuracy": float(run.val_accuracy[e, i, j]),
                                "val_loss": float(run.val_loss[e, i, j])})
    cells = pd.DataFrame(records)
    top = ranked(cells).iloc[0]
    lr_index = list(map(float, grid.learning_rates)).index(float(top["learning_rate"]))
    budget = int(top["epochs"])
    chosen = evaluated_epoch(run, budget, row.early_stopping)
    seed_test = []
    for i in range(len(seeds)):
        probs = run.test_probs[chosen[i, lr_index], i, lr_index]
        seed_test.append(metrics.binary_metrics(y["test"], probs))
    primary_epoch = int(chosen[0, lr_index])
    test_probs = run.test_probs[primary_epoch, 0, lr_index]
    best = {"learning_rate": float(top["learning_rate"]), "epochs": budget,
            "mean_val_accuracy": float(top["val_accuracy"]), "evaluated_epoch": primary_epoch + 1,
            "val_accuracy": float(run.val_accuracy[primary_epoch, 0, lr_index]), **margin(cells, top)}
    result = BackboneGrid(row, cells, best, study.evaluate(parts["test"], test_probs), seed_test,
                          run.val_probs[primary_epoch, 0, lr_index], test_probs, feature_seconds, run.seconds,
                          clean_metrics=study.evaluate_clean(parts["test"], test_probs))
    if primary_epoch + 1 in run.snapshots:  # the weights were kept at that epoch: set them
        weights = heads.weights_of(0, lr_index, run.snapshots[primary_epoch + 1])
    else:  # early stopping chose the epoch: replay that one head
        weights = replay(row, heads.head, feats, y, seeds[0], float(top["learning_rate"]), primary_epoch + 1)
    dense = [layer for layer in frozen.trainer.layers if isinstance(layer, keras.layers.Dense)]
    for layer, kernel, bias in zip(dense, weights[::2], weights[1::2], strict=True):
        layer.set_weights([kernel, bias])
    result.classifier = classifier
    return result


def ranked(cells: pd.DataFrame) -> pd.DataFrame:
    """The grid's cells, best first: mean validation accuracy over seeds (with its sd over seeds), ties to the
    lower mean validation loss, then to fewer epochs."""
    grouped = cells.groupby(["learning_rate", "epochs"])
    stats = grouped[["val_accuracy", "val_loss"]].mean().join(grouped["val_accuracy"].std().rename("val_accuracy_sd"))
    return stats.reset_index().sort_values(["val_accuracy", "val_loss", "epochs"], ascending=[False, True, True])


def margin(cells: pd.DataFrame, top: pd.Series) -> dict[str, Any]:
    """How far the chosen cell leads the next best cell that trains different heads (under early stopping a
    larger budget can hold the very same weights), against the head-seed spread of the two (the larger sd of
    their validation accuracy over seeds): `within_noise` when the lead is no larger than that spread."""
    heads = cells.groupby(["learning_rate", "epochs"])["evaluated_epoch"].apply(tuple)
    chosen = (float(top["learning_rate"]), int(top["epochs"]))
    order = ranked(cells)
    others = order[[(lr, e) != chosen and (lr != chosen[0] or heads[(lr, e)] != heads[chosen])
                    for lr, e in zip(order["learning_rate"], order["epochs"], strict=True)]]
    if others.empty:
        return {"runner_up": None}
    second = others.iloc[0]
    lead = float(top["val_accuracy"] - second["val_accuracy"])
    sd = max(float(order.set_index(["learning_rate", "epochs"]).loc[chosen, "val_accuracy_sd"]),
             float(second["val_accuracy_sd"]))
    return {"runner_up": {"learning_rate": float(second["learning_rate"]), "epochs": int(second["epochs"]),
                          "mean_val_accuracy": float(second["val_accuracy"])},
            "lead": lead, "seed_sd": None if np.isnan(sd) else sd, "within_noise": None if np.isnan(sd) else lead <= sd}


def _epochs(n: int) -> str:
    return f"{n} epoch{'' if n == 1 else 's'}"


def choice_note(name: str, best: dict[str, Any]) -> str:
    """One sentence on how clearly the grid chose a backbone's cell, against the head-seed spread."""
    chosen = (f"{name}: the chosen cell (learning rate {best['learning_rate']:g}, {_epochs(best['epochs'])}, mean "
              f"validation accuracy {best['mean_val_accuracy']:.4f})")
    second = best.get("runner_up")
    if not second:
        return f"{chosen} is the grid's only cell."
    runner_up = f"(learning rate {second['learning_rate']:g}, {_epochs(second['epochs'])}, {second['mean_val_accuracy']:.4f})"
    if round(best["lead"], 4) == 0:  # a tie at the printed precision: say how it was broken, not "leads by 0.0000"
        return (f"{chosen} ties with the next {runner_up}; the tie goes to the lower validation loss, then fewer "
                f"epochs: the choice of cell is within noise.")
    lead = f"{chosen} leads the next {runner_up} by {best['lead']:.4f}"
    if best.get("within_noise") is None:
        return f"{lead}; with one head seed per cell there is no spread to judge that lead against."
    if best["within_noise"]:
        return (f"{lead}, inside the head-seed spread (sd {best['seed_sd']:.4f} over head seeds): the choice of cell "
                f"is within noise.")
    return f"{lead}, more than the head-seed spread (sd {best['seed_sd']:.4f} over head seeds)."


def replay(row: Row, head: list[HeadLayer], feats: dict[str, np.ndarray], y: dict[str, np.ndarray], seed: int,
           lr: float, epochs: int) -> list[np.ndarray]:
    """One head trained alone for `epochs` epochs: the same initial weights and batch order as in the grid,
    so the same weights."""
    single = ParallelHeads(head, feats["train"].shape[1], [seed], [lr])
    train_grid(single, feats["train"], y["train"], feats["val"][:1], y["val"][:1], feats["test"][:1],
               epochs=epochs, batch_size=row.batch_size, record=set())
    return single.weights_of(0, 0)


def run(study: Study, *, save: bool = True) -> dict[str, BackboneGrid]:
    """Every row (backbone) of the grid study; the chosen cells' models saved with cards."""
    out = {}
    for row in study.rows:
        grid = run_backbone(study, row.name)
        print(f"{row.name}: features {grid.feature_seconds:.1f} s, {len(grid.cells)} cell-seeds trained in "
              f"{grid.head_seconds:.1f} s; best lr {grid.best['learning_rate']:g} at {grid.best['epochs']} epochs "
              f"(mean val accuracy {grid.best['mean_val_accuracy']:.4f})", flush=True)
        if save:
            from tlrepro.modeling import cards

            card = card_for(study, row, protocol=study.primary, seed=study.seed, result=None,
                            figures=grid.test_metrics, train_frame=study.part("train"))
            card["training"].update(grid.best)
            card["validation"] = {"accuracy": float(grid.best["val_accuracy"]),
                                  "epoch": int(grid.best["evaluated_epoch"])}
            cards.save(grid.classifier.model, study.model_path(row.name, study.primary), card)
        out[row.name] = grid
    return out


def spread(grid: BackboneGrid, metric: str) -> dict[str, Any] | None:
    values = [m[metric] for m in grid.seed_test if m.get(metric) is not None]
    return metrics.seed_spread(values) if len(values) > 1 else None
