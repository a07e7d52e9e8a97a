"""Backbone registry, preprocessing, heads, freeze policies and saving (tiny sizes, random weights)."""

import keras
import numpy as np
import pytest

from tlrepro import models
from tlrepro.errors import UserError

HEAD = [{"pool": "avg"}, {"dense": 4, "activation": "relu"}, {"dropout": 0.2}, {"dense": 1, "activation": "sigmoid"}]


@pytest.mark.parametrize("name", sorted(models.BACKBONES))
def test_every_backbone_builds_and_predicts_probabilities(name):
    size = 32
    clf = models.build_classifier(name, image_size=size, weights="random", head=HEAD, seed=1)
    images = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype("float32")
    probs = clf.model.predict(images, verbose=0)
    assert probs.shape == (2, 1)
    assert np.all((probs >= 0) & (probs <= 1))


def test_preprocessing_modes_match_keras_reference():
    x = np.random.default_rng(0).uniform(0, 255, (2, 4, 4, 3)).astype("float32")
    for mode in ("tf", "caffe", "torch"):
        ours = keras.ops.convert_to_numpy(models.ImageNetPreprocessing(mode)(x))
        ref = keras.applications.imagenet_utils.preprocess_input(x.copy(), mode=mode)
        np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(models.ImageNetPreprocessing("unit")(x)), x / 255, rtol=1e-6)


def test_head_from_spec_has_the_layers_asked_for():
    head = models.build_head([{"pool": "max"}, {"batch_norm": True}, {"dropout": 0.4}, {"dense": 1, "activation": "sigmoid"}])
    kinds = [type(layer).__name__ for layer in head.layers]
    assert kinds == ["GlobalMaxPooling2D", "BatchNormalization", "Dropout", "Dense"]
    assert head.layers[2].rate == pytest.approx(0.4)


def test_bad_specs_give_clear_errors():
    with pytest.raises(UserError, match="head layer 0"):
        models.build_head([{"conv": 3}])
    with pytest.raises(UserError, match="Unknown backbone"):
        models.build_classifier("AlexNet", image_size=32, weights="random", head=HEAD)
    with pytest.raises(UserError, match="weights"):
        models.build_classifier("MobileNetV2", image_size=32, weights="pretrained", head=HEAD)
    with pytest.raises(UserError, match="augmentation"):
        models.build_augmentation({"cutmix": 1}, seed=0)


def test_missing_weights_file_names_both_ways(monkeypatch, tmp_path):
    monkeypatch.setenv("IMAGENET_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(UserError) as err:
        models.build_classifier("VGG16", image_size=32, weights="imagenet", head=HEAD)
    message = str(err.value)
    assert "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert "IMAGENET_WEIGHTS_DIR" in message and "random" in message


@pytest.mark.parametrize("policy, expected_trainable", [(0, 0), (10, 10), ("all", None)])
def test_freeze_policies(policy, expected_trainable):
    clf = models.build_classifier("MobileNetV2", image_size=32, weights="random", head=HEAD)
    models.set_trainable(clf, policy)
    flags = [layer.trainable for layer in clf.backbone.layers]
    if expected_trainable is None:
        assert all(flags)
    else:
        assert sum(flags) == expected_trainable
        assert flags[len(flags) - expected_trainable :] == [True] * expected_trainable
    assert all(layer.trainable for layer in clf.head.layers)
    # the head is always trainable; a frozen backbone contributes no trainable weights
    head_weights = sum(int(np.prod(w.shape)) for w in clf.head.trainable_weights)
    if policy == 0:
        assert models.trainable_count(clf.model) == head_weights


def test_frozen_batchnorm_stays_in_inference_mode():
    clf = models.build_classifier("MobileNetV2", image_size=32, weights="random", head=HEAD)
    models.set_trainable(clf, 0)
    bn = next(layer for layer in clf.backbone.layers if isinstance(layer, keras.layers.BatchNormalization))
    before = [np.array(w) for w in bn.weights]
    clf.model.compile(optimizer="adam", loss="binary_crossentropy")
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    clf.model.fit(x, np.array([0, 1, 0, 1], "float32"), epochs=1, verbose=0)
    for a, b in zip(before, bn.weights, strict=True):
        np.testing.assert_array_equal(a, np.array(b))  # moving statistics untouched


def test_saved_model_loads_in_safe_mode(tmp_path):
    clf = models.build_classifier("VGG16", image_size=32, weights="random", head=HEAD,
                                  augmentation={"flip": "horizontal", "rotation": 0.1})
    path = tmp_path / "model.keras"
    clf.model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), clf.model.predict(x, verbose=0), atol=1e-6)
    assert not any(type(layer).__name__ == "Lambda" for layer in loaded._flatten_layers())
