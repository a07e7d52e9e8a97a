"""The cached frozen path against the plain path, determinism, and epoch budgets (tiny, random weights)."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tlrepro import features, models, training

SIZE = 32
HEAD = [{"pool": "avg"}, {"dense": 8, "activation": "relu"}, {"dropout": 0.2}, {"dense": 1, "activation": "sigmoid"}]


@pytest.fixture()
def split_frame(tmp_path, monkeypatch):
    """24 tiny images whose brightness depends on the class, split train/val/test."""
    monkeypatch.setenv("TLREPRO_FEATURE_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    rows = []
    for i in range(24):
        label = "malignant" if i % 2 else "benign"
        pixels = (rng.random((40, 40, 3)) * (255 if i % 2 else 120)).astype("uint8")
        path = tmp_path / f"{i}.png"
        Image.fromarray(pixels).save(path)
        rows.append((str(path), label, ("train", "train", "val", "test")[i % 4], f"sha{i}"))
    return pd.DataFrame(rows, columns=["path", "label", "split", "sha256"])


def _classifier(trainable, augmentation=None, backbone="MobileNetV2"):
    clf = models.build_classifier(backbone, image_size=SIZE, weights="random", head=HEAD, seed=3,
                                  augmentation=augmentation)
    models.set_trainable(clf, trainable)
    return clf


@pytest.mark.parametrize("trainable", [0, 12, 14])
def test_cached_and_plain_paths_predict_the_same(split_frame, trainable):
    clf = _classifier(trainable)
    frozen = features.split_frozen(clf)
    assert frozen is not None
    training.train(clf, split_frame, learning_rate=1e-3, epochs=2, batch_size=4, seed=3)
    cached, _ = training.predict(clf, split_frame, batch_size=4, use_cache=True)
    plain, _ = training.predict(clf, split_frame, batch_size=4, use_cache=False)
    np.testing.assert_allclose(cached, plain, atol=1e-5)


def test_skip_tensors_crossing_the_cut_are_cached():
    """Cutting MobileNetV2 inside a residual block must carry the block's skip input across."""
    clf = _classifier(0)
    crossings = {}
    for trainable in (12, 13, 14):  # 13 and 14 cut inside MobileNetV2's block_15
        models.set_trainable(clf, trainable)
        crossings[trainable] = len(features.split_frozen(clf).crossing_shapes)
    assert crossings == {12: 1, 13: 2, 14: 2}


def test_cached_training_matches_plain_training(split_frame):
    """Same seed, no dropout: fitting the trainable part on cached outputs = fitting the whole model."""
    head = [{"pool": "avg"}, {"dense": 4, "activation": "relu"}, {"dense": 1, "activation": "sigmoid"}]
    results = {}
    for use_cache in (True, False):
        training.seed_everything(5)
        clf = models.build_classifier("MobileNetV2", image_size=SIZE, weights="random", head=head, seed=5)
        models.set_trainable(clf, 0)
        result = training.train(clf, split_frame, learning_rate=1e-2, epochs=3, batch_size=4, seed=5,
                                use_cache=use_cache)
        assert result.cached is use_cache
        results[use_cache] = (result.history, training.predict(clf, split_frame, batch_size=4, use_cache=False)[0])
    pd.testing.assert_frame_equal(results[True][0], results[False][0], atol=1e-4, check_exact=False)
    np.testing.assert_allclose(results[True][1], results[False][1], atol=1e-4)


def test_frozen_outputs_are_computed_once_then_read_from_cache(split_frame):
    clf = _classifier(0)
    frozen = features.split_frozen(clf)
    first, hit1 = features.extract(frozen, split_frame, classifier=clf, batch_size=8)
    second, hit2 = features.extract(frozen, split_frame, classifier=clf, batch_size=8)
    assert (hit1, hit2) == (False, True)
    np.testing.assert_array_equal(first[0], second[0])


def test_augmentation_trains_on_images_but_validates_on_cached_outputs(split_frame):
    """Augmentation before the cut forbids caching the training inputs, not the validation ones."""
    histories = []
    for use_cache in (True, False):
        training.seed_everything(3)
        clf = _classifier(12, augmentation={"flip": "horizontal", "rotation": 0.1})
        assert features.split_frozen(clf) is None
        result = training.train(clf, split_frame, learning_rate=1e-3, epochs=2, batch_size=4, seed=3,
                                use_cache=use_cache)
        assert not result.cached
        histories.append(result.history)
    pd.testing.assert_frame_equal(histories[0], histories[1], atol=1e-5, check_exact=False)


def test_same_seed_gives_identical_history(split_frame):
    histories = []
    for _ in range(2):
        training.seed_everything(7)
        clf = _classifier(12)
        histories.append(training.train(clf, split_frame, learning_rate=1e-3, epochs=2, batch_size=4, seed=7).history)
    pd.testing.assert_frame_equal(histories[0], histories[1], check_exact=True)


def test_one_run_to_the_largest_budget_equals_separate_runs(split_frame):
    """lin2024's shortcut: nothing in training depends on the total epoch count."""
    budgets = [1, 3, 4]

    def run(epochs, snapshot_at=()):
        training.seed_everything(11)
        clf = _classifier(0)
        result = training.train(clf, split_frame, learning_rate=1e-2, epochs=epochs, batch_size=4, seed=11,
                                budgets=list(snapshot_at))
        return clf, result

    _, long_run = run(max(budgets), budgets)
    for budget in budgets:
        clf, separate = run(budget)
        trainer_weights = features.split_frozen(clf).trainer.get_weights()
        for a, b in zip(long_run.snapshots[budget], trainer_weights, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-6)
        np.testing.assert_allclose(long_run.history["val_accuracy"].iloc[budget - 1],
                                   separate.history["val_accuracy"].iloc[-1], atol=1e-6)
