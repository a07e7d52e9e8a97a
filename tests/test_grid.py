"""The parallel grid heads against Keras, cell by cell; epoch budgets; early stopping's evaluated epoch."""

from __future__ import annotations

import keras
import numpy as np
import pandas as pd
import pytest

from tlrepro.core.config import EarlyStopping, HeadLayer
from tlrepro.core.errors import UserError
from tlrepro.studies import grid

HEAD = [HeadLayer(dense=6, activation="relu"), HeadLayer(dense=1, activation="sigmoid")]


def data(n: int, d: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n).astype("float64")
    x = (rng.normal(size=(n, d)) + y[:, None] * 0.8).astype("float32")
    return x, y


def keras_cell(x, y, x_val, seed: int, lr: float, epochs: int, batch: int) -> tuple[list, list[np.ndarray]]:
    """One head trained the ordinary way: Keras Dense layers, Keras Adam, the same init and batch order."""
    model = keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dense(6, activation="relu"),
                              keras.layers.Dense(1, activation="sigmoid")])
    fan_in = x.shape[1]
    for i, layer in enumerate(model.layers):
        units = layer.units
        layer.set_weights([grid.glorot(np.random.default_rng([seed, i]), fan_in, units), np.zeros(units, "float32")])
        fan_in = units
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="binary_crossentropy")
    orders = grid.batch_orders(len(y), [seed], epochs)
    val = []
    for epoch in range(epochs):
        for start in range(0, len(y), batch):
            idx = orders[epoch][0, start : start + batch]
            model.train_on_batch(x[idx], y[idx].astype("float32"))
        val.append(model.predict(x_val, verbose=0).ravel())
    return model.get_weights(), val


def test_parallel_heads_equal_separate_keras_runs():
    x, y = data(37)
    x_val, y_val = data(11, seed=1)
    seeds, rates = [3, 4], [1e-3, 5e-2, 1e-2]
    heads = grid.ParallelHeads(HEAD, x.shape[1], seeds, rates)
    run = grid.train_grid(heads, x, y, x_val, y_val, x_val, epochs=4, batch_size=8)
    assert run.val_probs.shape == (4, 2, 3, 11)
    for i, seed in enumerate(seeds):
        for j, lr in enumerate(rates):
            weights, val = keras_cell(x, y, x_val, seed, lr, epochs=4, batch=8)
            for ours, theirs in zip(heads.weights_of(i, j), weights, strict=True):
                np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)
            for epoch in range(4):  # one run to 4 epochs equals runs of 1, 2, 3 and 4 epochs
                np.testing.assert_allclose(run.val_probs[epoch, i, j], val[epoch], atol=1e-5)


def test_heads_of_one_seed_start_alike_and_seeds_differ():
    heads = grid.ParallelHeads(HEAD, 5, [1, 2], [1e-3, 1e-2])
    for a, b in zip(heads.weights_of(0, 0), heads.weights_of(0, 1), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(heads.weights_of(0, 0)[0], heads.weights_of(1, 0)[0])


def test_early_stopping_reads_validation_at_the_restored_epoch():
    x, y = data(40)
    x_val, y_val = data(20, seed=5)
    stop = EarlyStopping(monitor="val_loss", patience=1)
    heads = grid.ParallelHeads(HEAD, x.shape[1], [0], [0.5])  # a high rate: validation loss soon rises
    run = grid.train_grid(heads, x, y, x_val, y_val, x_val, epochs=12, batch_size=8, early_stopping=stop)
    for budget in (3, 12):
        epoch = grid.evaluated_epoch(run, budget, stop)[0, 0]
        ran = min(run.stopped[0, 0], budget)
        assert epoch == int(np.argmin(run.val_loss[:ran, 0, 0]))  # the best epoch Keras would restore
    assert run.stopped[0, 0] < 12, "the high learning rate should trigger early stopping"
    plain = grid.train_grid(grid.ParallelHeads(HEAD, x.shape[1], [0], [0.5]), x, y, x_val, y_val, x_val,
                            epochs=6, batch_size=8)
    assert np.array_equal(grid.evaluated_epoch(plain, 5, None), [[4]])  # without early stopping: the budget


def test_grid_heads_reject_layers_it_cannot_stack():
    with pytest.raises(UserError, match="dense layers"):
        grid.ParallelHeads([HeadLayer(dropout=0.2), *HEAD], 5, [0], [1e-3])


def test_kept_weights_equal_a_replay_of_the_one_head():
    """The chosen cell's model comes from the weights kept at its epoch; training that head alone again (the
    fallback with early stopping) gives the same weights."""
    x, y = data(30)
    x_val, y_val = data(9, seed=2)
    heads = grid.ParallelHeads(HEAD, x.shape[1], [7, 8], [1e-3, 1e-2])
    run = grid.train_grid(heads, x, y, x_val, y_val, x_val, epochs=4, batch_size=8, record={2, 4})
    assert set(run.snapshots) == {2, 4}
    feats, labels = {"train": x, "val": x_val, "test": x_val}, {"train": y, "val": y_val}
    row = type("Row", (), {"batch_size": 8})()
    for epoch in (2, 4):
        kept = heads.weights_of(1, 1, run.snapshots[epoch])
        again = grid.replay(row, HEAD, feats, labels, seed=8, lr=1e-2, epochs=epoch)
        for a, b in zip(kept, again, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5)
    assert np.isnan(run.val_accuracy[0]).all() and not np.isnan(run.val_accuracy[1]).any()  # only budgets recorded


def cells(values: dict[tuple[float, int], list[float]]) -> pd.DataFrame:
    """A grid's per-seed validation accuracies, as run_backbone records them (one evaluated epoch per budget)."""
    return pd.DataFrame([{"learning_rate": lr, "epochs": e, "seed": s, "evaluated_epoch": e, "val_accuracy": acc,
                          "val_loss": 1 - acc} for (lr, e), accs in values.items() for s, acc in enumerate(accs)])


def test_the_choice_of_cell_is_called_within_noise_when_the_lead_is_inside_the_head_seed_spread():
    close = cells({(1e-3, 10): [0.80, 0.84, 0.82], (1e-4, 10): [0.81, 0.80, 0.82], (1e-4, 20): [0.70, 0.71, 0.69]})
    top = grid.ranked(close).iloc[0]
    margin = grid.margin(close, top)
    assert margin["runner_up"] == {"learning_rate": 1e-4, "epochs": 10, "mean_val_accuracy": pytest.approx(0.81)}
    assert margin["lead"] == pytest.approx(0.01) and margin["seed_sd"] == pytest.approx(0.02)
    assert margin["within_noise"] is True
    note = grid.choice_note("VGG16", {"learning_rate": 1e-3, "epochs": 10, "mean_val_accuracy": 0.82, **margin})
    assert "inside the head-seed spread (sd 0.0200 over head seeds): the choice of cell is within noise" in note
    clear = cells({(1e-3, 10): [0.90, 0.91, 0.89], (1e-4, 10): [0.80, 0.81, 0.79]})
    top = grid.ranked(clear).iloc[0]
    margin = grid.margin(clear, top)
    assert margin["within_noise"] is False
    assert "more than the head-seed spread" in grid.choice_note("VGG16", {"learning_rate": 1e-3, "epochs": 10,
                                                                            "mean_val_accuracy": 0.9, **margin})


def test_a_tie_is_called_a_tie_not_a_lead_of_zero():
    """lin2024's ResNet50V2 on the mirror: two cells at 0.8034 printed 'leads the next ... by 0.0000'."""
    tied = cells({(1e-3, 100): [0.80, 0.81], (5e-4, 100): [0.81, 0.80]})
    top = grid.ranked(tied).iloc[0]
    note = grid.choice_note("ResNet50V2", {"learning_rate": float(top["learning_rate"]), "epochs": 100,
                                           "mean_val_accuracy": 0.805, **grid.margin(tied, top)})
    assert "ties with the next" in note and "lower validation loss, then fewer epochs" in note
    assert "leads" not in note and "0.0000" not in note


def test_a_larger_budget_holding_the_same_heads_is_not_the_runner_up():
    """Under early stopping, budgets past the stop restore the very same epoch: the same heads, not a rival."""
    same = cells({(1e-3, 10): [0.85, 0.86], (1e-3, 20): [0.85, 0.86], (1e-4, 10): [0.70, 0.72]})
    same.loc[same["epochs"] == 20, "evaluated_epoch"] = 10
    top = grid.ranked(same).iloc[0]
    assert (top["learning_rate"], top["epochs"]) == (1e-3, 10)
    assert grid.margin(same, top)["runner_up"]["learning_rate"] == 1e-4


def test_dvclive_logs_each_learning_rates_recorded_epochs_mean_over_seeds(tmp_path):
    x, y = data(30)
    x_val, y_val = data(10, seed=1)
    heads = grid.ParallelHeads(HEAD, x.shape[1], [3, 4], [1e-3, 5e-2])
    run = grid.train_grid(heads, x, y, x_val, y_val, x_val, epochs=3, batch_size=8, record={1, 3})
    grid.log_epochs(tmp_path / "live", run, [1e-3, 5e-2])
    logged = pd.read_csv(tmp_path / "live/plots/metrics/lr_0.05/eval/accuracy.tsv", sep="\t")
    assert list(logged.columns) == ["step", "accuracy"] and list(logged["step"]) == [0, 2]  # epochs 1 and 3 only
    np.testing.assert_allclose(logged["accuracy"], run.val_accuracy[[0, 2], :, 1].mean(axis=1))
    loss = pd.read_csv(tmp_path / "live/plots/metrics/lr_0.001/eval/loss.tsv", sep="\t")
    np.testing.assert_allclose(loss["loss"], run.val_loss[[0, 2], :, 0].mean(axis=1))
    assert sorted(p.name for p in (tmp_path / "live").iterdir()) == ["metrics.json", "plots"]  # no dvc.yaml, no report
