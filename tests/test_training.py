"""The cached frozen path against the plain path, the per-image feature store, augmented views, determinism,
and epoch budgets (32x32 images, TinyDenseNet: Keras's DenseNet with one layer per block, random weights)."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tlrepro.core.config import RowSettings, resolve_row
from tlrepro.data.labels import BINARY_CLASSES, encode
from tlrepro.modeling import frozen_cache as fc
from tlrepro.modeling import models, training

SIZE = 32
HEAD = [{"pool": "avg"}, {"dense": 8, "activation": "relu"}, {"dropout": 0.2}, {"dense": 1, "activation": "sigmoid"}]
# TinyDenseNet's last 9 layers start at conv5_block1_0_bn: one tensor (pool4's output) crosses the cut; its last 7
# start inside the dense layer, where the block's input and the layer's own path both cross.
WHOLE_LAYER, INSIDE_LAYER = 9, 7


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """24 tiny images whose brightness depends on the class, on train/val/test sides."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(24):
        label = "malignant" if i % 2 else "benign"
        pixels = (rng.random((40, 40, 3)) * (255 if i % 2 else 120)).astype("uint8")
        path = folder / f"{i}.png"
        Image.fromarray(pixels).save(path)
        rows.append((str(path), label, ("train", "train", "val", "test")[i % 4], f"sha{i}", "identity"))
    return pd.DataFrame(rows, columns=["path", "label", "side", "sha256", "view"])


@pytest.fixture()
def split_frame(images, tmp_path, monkeypatch):
    """The images, with a feature store of this test's own."""
    monkeypatch.setenv("TLREPRO_FEATURE_CACHE", str(tmp_path / "cache"))
    return images


def row(**settings):
    base = {"backbone": "TinyDenseNet", "weights": "random", "image_size": SIZE, "batch_size": 4, "head": HEAD,
            "learning_rate": 1e-3, "epochs": 2}
    return resolve_row("r", RowSettings(), RowSettings(**{**base, **settings}))


def classifier(trainable=0, seed=3, **settings):
    clf = models.build_classifier(row(trainable_layers=trainable, **settings), classes=BINARY_CLASSES, seed=seed)
    models.set_trainable(clf, trainable)
    return clf


def fit(clf, frame, *, epochs=2, seed=3, **kwargs):
    train, val = frame[frame["side"] == "train"], frame[frame["side"] == "val"]
    return training.train(clf, train, val, train_labels=encode(train["label"], BINARY_CLASSES),
                          val_labels=encode(val["label"], BINARY_CLASSES), epochs=epochs, seed=seed, **kwargs)


@pytest.mark.parametrize("trainable", [0, WHOLE_LAYER, INSIDE_LAYER])
def test_cached_and_plain_paths_predict_the_same(split_frame, trainable):
    clf = classifier(trainable)
    assert fc.split_frozen(clf) is not None
    fit(clf, split_frame)
    cached, _ = training.predict(clf, split_frame, use_cache=True)
    plain, _ = training.predict(clf, split_frame, use_cache=False)
    np.testing.assert_allclose(cached, plain, atol=1e-5)


def test_skip_tensors_crossing_the_cut_are_cached():
    """Cutting a DenseNet inside a dense layer must carry the block's input (the concatenation's other input)."""
    crossings = {trainable: len(fc.split_frozen(classifier(trainable)).crossing_shapes)
                 for trainable in (WHOLE_LAYER, INSIDE_LAYER)}
    assert crossings == {WHOLE_LAYER: 1, INSIDE_LAYER: 2}


def test_cached_training_matches_plain_training(split_frame):
    """Same seed, no dropout: fitting the trainable part on cached outputs = fitting the whole model."""
    head = [{"pool": "avg"}, {"dense": 4, "activation": "relu"}, {"dense": 1, "activation": "sigmoid"}]
    results = {}
    for use_cache in (True, False):
        training.seed_everything(5)
        clf = classifier(0, seed=5, head=head, learning_rate=1e-2)
        result = fit(clf, split_frame, epochs=3, seed=5, use_cache=use_cache)
        assert result.cached is use_cache
        results[use_cache] = (result.history, training.predict(clf, split_frame, use_cache=False)[0])
    pd.testing.assert_frame_equal(results[True][0], results[False][0], atol=1e-4, check_exact=False)
    np.testing.assert_allclose(results[True][1], results[False][1], atol=1e-4)


def test_frozen_outputs_are_computed_once_then_read_from_cache(split_frame):
    clf = classifier(0)
    frozen = fc.split_frozen(clf)
    first, hit1 = fc.extract(frozen, split_frame, classifier=clf, batch_size=8)
    second, hit2 = fc.extract(frozen, split_frame, classifier=clf, batch_size=8)
    assert (hit1, hit2) == (False, True)
    np.testing.assert_array_equal(first[0], second[0])


def test_cache_follows_weight_values_not_names(split_frame):
    """A backbone trained by one row and frozen by the next (start_from) must miss the cache: its features are
    those of a direct forward pass through the trained weights."""
    clf = classifier(INSIDE_LAYER)
    frozen = fc.split_frozen(clf)
    before, _ = fc.extract(frozen, split_frame, classifier=clf, batch_size=8)
    fit(clf, split_frame, epochs=2)  # trains the last layers of the backbone in place
    models.set_trainable(clf, 0)  # then freeze all of it, as a `start_from` row would
    frozen_after = fc.split_frozen(clf)
    after, hit = fc.extract(frozen_after, split_frame, classifier=clf, batch_size=8)
    assert not hit, "changed weights must not reuse features cached for the old ones"
    direct = frozen_after.extractor.predict(np.stack([np.asarray(Image.open(p).convert("RGB").resize(
        (SIZE, SIZE), Image.Resampling.BILINEAR), dtype="float32") for p in split_frame["path"]]), verbose=0)
    np.testing.assert_allclose(after[0], direct, atol=1e-4)
    layer = next(w for w in clf.backbone.weights if "kernel" in w.path)  # weights changed in place
    layer.assign(layer.numpy() * 1.01)
    assert not fc.extract(fc.split_frozen(clf), split_frame, classifier=clf, batch_size=8)[1]
    assert before[0].shape[0] == after[0].shape[0]


def test_damaged_cache_file_is_recomputed(split_frame, tmp_path):
    clf = classifier(0)
    frozen = fc.split_frozen(clf)
    first, _ = fc.extract(frozen, split_frame, classifier=clf, batch_size=8)
    (entry,) = list((tmp_path / "cache").rglob("*.x0.npy"))
    entry.write_bytes(entry.read_bytes()[:100])  # truncated, as after a crash or a full disk
    again, hit = fc.extract(frozen, split_frame, classifier=clf, batch_size=8)
    assert not hit
    np.testing.assert_allclose(again[0], first[0], atol=1e-6)


def test_augmentation_trains_on_images_but_validates_on_cached_outputs(split_frame):
    histories = []
    for use_cache in (True, False):
        training.seed_everything(3)
        clf = classifier(WHOLE_LAYER, augmentation={"flip": "horizontal", "rotation": 0.1})
        assert fc.split_frozen(clf) is None
        result = fit(clf, split_frame, use_cache=use_cache)
        assert not result.cached
        histories.append(result.history)
    pd.testing.assert_frame_equal(histories[0], histories[1], atol=1e-5, check_exact=False)


def test_augmentation_views_are_computed_once_and_cycled(split_frame):
    """augmentation_views: K augmented views' features once, then training cycles through them."""
    clf = classifier(0, augmentation={"flip": "horizontal", "rotation": 0.2}, augmentation_views=2)
    result = fit(clf, split_frame, epochs=3)
    assert result.path == "cached augmented views (2)" and result.epochs_run == 3
    frozen = fc.split_frozen(clf)
    views, hit = fc.extract_views(frozen, split_frame[split_frame["side"] == "train"], classifier=clf, views=2,
                                  seed=3, batch_size=4)
    assert hit, "the views were cached by the training run"
    assert not np.allclose(views[0][0], views[1][0], rtol=1e-3, atol=0)  # two different augmentations
    plain, _ = fc.extract(frozen, split_frame[split_frame["side"] == "train"], classifier=clf, batch_size=4)
    assert not np.allclose(views[0][0], plain[0], rtol=1e-3, atol=0)  # and not the unaugmented features


def test_same_seed_gives_identical_history(split_frame):
    histories = []
    for _ in range(2):
        training.seed_everything(7)
        histories.append(fit(classifier(WHOLE_LAYER), split_frame, seed=7).history)
    pd.testing.assert_frame_equal(histories[0], histories[1], check_exact=True)


def test_a_second_fit_of_one_model_keeps_its_traced_step_and_trains_as_a_new_model_would(split_frame):
    """compile_model keeps a model's compiled functions when nothing it compiles with changed, and resets the
    optimizer (its steps, learning rate and moments) as a fresh compile would: same history, no second trace."""
    training.seed_everything(7)
    clf = classifier(WHOLE_LAYER, reduce_lr={"monitor": "val_loss", "factor": 0.5, "patience": 0})
    start = [np.array(v) for v in clf.model.variables]  # random-seed states included
    training.seed_everything(7)  # as base.run_row does: the build's draws from the global generators do not count
    first = fit(clf, split_frame, seed=7, epochs=3)
    trainer = fc.split_frozen(clf)
    assert trainer is fc.split_frozen(clf, inference=True)  # one trainer per classifier: traced once
    step = trainer.trainer.train_function
    for variable, value in zip(clf.model.variables, start, strict=True):
        variable.assign(value)
    training.seed_everything(7)
    second = fit(clf, split_frame, seed=7, epochs=3)
    assert trainer.trainer.train_function is step and int(trainer.trainer.optimizer.iterations) > 0
    pd.testing.assert_frame_equal(first.history, second.history, check_exact=True)
    assert first.history["learning_rate"].iloc[-1] < 1e-3  # the schedule moved, and the second fit began at 1e-3


def test_early_stopping_reports_the_restored_epoch(split_frame):
    clf = classifier(0, early_stopping={"monitor": "val_loss", "patience": 1}, learning_rate=0.5)
    result = fit(clf, split_frame, epochs=8)
    best = int(result.history["val_loss"].idxmin()) + 1
    assert result.best_epoch == best and result.epochs_run <= 8


def test_one_threshold_rule_everywhere_a_probability_of_exactly_the_threshold_is_positive():
    """P(malignant) == 0.5 counts as malignant in the metrics, Keras's training accuracy (which early stopping
    reads), the cached validation, the predictor's labels and Grad-CAM's explained class alike."""
    from types import SimpleNamespace

    import keras
    import tensorflow as tf

    from tlrepro.modeling.explain import _class_scores
    from tlrepro.modeling.predict import Predictor
    from tlrepro.results import metrics

    y, p = np.array([1, 1, 0]), np.array([0.5, 0.5, 0.2])
    assert metrics.binary_metrics(y, p)["accuracy"] == 1.0
    assert training.loss_and_accuracy(y, p[:, None])[1] == 1.0
    row = resolve_row("t", RowSettings(), RowSettings(backbone="TinyCNN", weights="random", image_size=SIZE,
                                                       batch_size=4, learning_rate=1e-3, epochs=1, head=HEAD))
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, activation="sigmoid")])
    model.layers[0].set_weights([np.zeros((2, 1), "float32"), np.zeros(1, "float32")])  # P = 0.5 for every input
    training.compile_model(model, row)
    x, y_ones = np.zeros((2, 2), "float32"), np.ones(2, "float32")
    assert model.evaluate(x, y_ones, verbose=0, return_dict=True)["accuracy"] == 1.0
    stop = keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=1)  # mode "auto" must know: maximise
    model.fit(x, y_ones, validation_data=(x, y_ones), epochs=1, verbose=0, callbacks=[stop])
    assert stop.monitor_op is not None and stop.best == 1.0
    predictor = SimpleNamespace(classes=list(BINARY_CLASSES), threshold=0.5)
    assert Predictor.labels_of(predictor, np.array([[0.5], [0.49]])) == ["malignant", "benign"]
    assert _class_scores(tf.constant([[0.5]]), None, 0.5)[1].tolist() == [1]


def test_long_loops_show_progress_in_the_terminal_not_in_the_notebook(monkeypatch):
    """Inside a notebook kernel sys.stderr feeds the notebook and sys.__stderr__ is the terminal that ran
    `dvc repro`: the extraction bar must go to the terminal (issue 19: not only papermill's "cell N of M")."""
    import io
    import sys

    from tlrepro.core import progress

    notebook, terminal = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", notebook)
    monkeypatch.setattr(sys, "__stderr__", terminal)
    assert list(progress.bar(range(3), total=3, desc="VGG16 features", unit="batch")) == [0, 1, 2]
    progress.to_terminal("[VGG16] epoch 1/2: loss 0.5")
    assert "VGG16 features" in terminal.getvalue() and "3/3" in terminal.getvalue()
    assert "epoch 1/2" in terminal.getvalue() and notebook.getvalue() == ""


def live_files(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_dvclive_writes_every_epoch_of_a_fit_the_same_bytes_for_the_same_seed(split_frame, tmp_path):
    """`live`: DVCLive's folder per fit, per-epoch TSVs (step, value: no timestamp) and the last epoch in
    metrics.json; nothing else (no dvc.yaml, no report), and the same bytes when the same seed trains again."""
    results, folders = [], [tmp_path / "live" / "a", tmp_path / "live" / "b"]
    for folder in folders:
        training.seed_everything(7)
        results.append(fit(classifier(WHOLE_LAYER), split_frame, seed=7, epochs=3, live=folder))
    files = live_files(folders[0])
    assert files == live_files(folders[1])
    assert set(files) == {"metrics.json", "plots/metrics/train/loss.tsv", "plots/metrics/train/accuracy.tsv",
                          "plots/metrics/eval/loss.tsv", "plots/metrics/eval/accuracy.tsv"}
    history = results[0].history
    logged = pd.read_csv(folders[0] / "plots/metrics/eval/accuracy.tsv", sep="\t")
    assert list(logged.columns) == ["step", "accuracy"] and list(logged["step"]) == [0, 1, 2]
    np.testing.assert_allclose(logged["accuracy"], history["val_accuracy"])
    import json

    summary = json.loads(files["metrics.json"])
    assert summary == {"train": {"loss": pytest.approx(history["loss"].iloc[-1]),
                                 "accuracy": pytest.approx(history["accuracy"].iloc[-1])},
                       "eval": {"loss": pytest.approx(history["val_loss"].iloc[-1]),
                                "accuracy": pytest.approx(history["val_accuracy"].iloc[-1])}, "step": 2}


def test_dvclive_logs_the_cached_validation_of_a_model_that_trains_on_images(split_frame, tmp_path):
    clf = classifier(WHOLE_LAYER, augmentation={"flip": "horizontal"})
    result = fit(clf, split_frame, live=tmp_path / "live")
    assert not result.cached
    logged = pd.read_csv(tmp_path / "live/plots/metrics/eval/loss.tsv", sep="\t")
    np.testing.assert_allclose(logged["loss"], result.history["val_loss"])
