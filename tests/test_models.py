"""Backbone registry, preprocessing, heads, augmentation streams, freeze policies and saving (tiny, random weights)."""

import keras
import numpy as np
import pytest

from tlrepro.core.config import RowSettings, resolve_row
from tlrepro.core.errors import UserError
from tlrepro.data.labels import BINARY_CLASSES
from tlrepro.modeling import backbones, models

HEAD = [{"pool": "avg"}, {"dense": 4, "activation": "relu"}, {"dropout": 0.2}, {"dense": 1, "activation": "sigmoid"}]


def row(**settings):
    base = {"backbone": "MobileNetV2", "weights": "random", "image_size": 32, "batch_size": 4, "head": HEAD,
            "learning_rate": 1e-3, "epochs": 1}
    return resolve_row("r", RowSettings(), RowSettings(**{**base, **settings}))


def build(**settings):
    return models.build_classifier(row(**settings), classes=BINARY_CLASSES, seed=1)


def test_registry_matches_the_schema():
    models.check_registry()


@pytest.mark.parametrize("name", sorted(models.BACKBONES))
def test_every_backbone_builds_and_predicts_probabilities(name):
    clf = build(backbone=name)
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    probs = clf.model.predict(images, verbose=0)
    assert probs.shape == (2, 1) and np.all((probs >= 0) & (probs <= 1))


def test_preprocessing_modes_match_keras_reference():
    x = np.random.default_rng(0).uniform(0, 255, (2, 4, 4, 3)).astype("float32")
    for mode in ("tf", "caffe", "torch"):
        ours = keras.ops.convert_to_numpy(models.ImageNetPreprocessing(mode)(x))
        ref = keras.applications.imagenet_utils.preprocess_input(x.copy(), mode=mode)
        np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(models.ImageNetPreprocessing("unit")(x)), x / 255, rtol=1e-6)


def test_head_from_spec_has_the_layers_asked_for():
    r = row(head=[{"pool": "max"}, {"batch_norm": True}, {"dropout": 0.4}, {"dense": 1, "activation": "sigmoid"}])
    kinds = [type(layer).__name__ for layer in models.build_head(r.head).layers]
    assert kinds == ["GlobalMaxPooling2D", "BatchNormalization", "Dropout", "Dense"]


def test_head_units_must_match_the_classes():
    with pytest.raises(UserError, match="3 classes"):
        models.build_classifier(row(), classes=("a", "b", "c"), seed=0)
    three = models.build_classifier(row(head=[{"pool": "avg"}, {"dense": 3, "activation": "softmax"}]),
                                    classes=("a", "b", "c"), seed=0)
    assert three.model.output_shape == (None, 3)


def test_augmentation_layers_draw_independently():
    """Each layer has its own seed stream: seeded alike, a rotation and a zoom would move together."""
    r = row(augmentation={"flip": "horizontal", "rotation": 0.2, "zoom": 0.2})
    aug = models.build_augmentation(r.augmentation, seed=3)
    seeds = [layer.seed for layer in aug.layers]
    assert len(set(seeds)) == 3
    rotation, zoom = aug.layers[1], aug.layers[2]
    angles, zooms = [], []
    for _ in range(400):
        angles.append(float(keras.ops.convert_to_numpy(rotation.get_random_transformation(
            np.zeros((1, 8, 8, 3), "float32"), training=True)["angle"]).ravel()[0]))
        zooms.append(float(keras.ops.convert_to_numpy(zoom.get_random_transformation(
            np.zeros((1, 8, 8, 3), "float32"), training=True)["height_zoom"]).ravel()[0]))
    assert abs(np.corrcoef(angles, zooms)[0, 1]) < 0.15
    same = models.build_augmentation(r.augmentation, seed=3)
    assert [layer.seed for layer in same.layers] == seeds  # and the same settings give the same streams


def test_missing_weights_file_names_both_ways(monkeypatch, tmp_path):
    monkeypatch.setenv("IMAGENET_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(UserError) as err:
        build(backbone="VGG16", weights="imagenet")
    message = str(err.value)
    assert "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert "IMAGENET_WEIGHTS_DIR" in message and "random" in message


def test_corrupt_weights_file_names_the_file_and_backbone(monkeypatch, tmp_path):
    (tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5").write_bytes(b"\x89HDF\r\n garbage")
    monkeypatch.setenv("IMAGENET_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(UserError, match=r"Cannot load ImageNet weights for VGG16 from .*vgg16_weights.*damaged"):
        build(backbone="VGG16", weights="imagenet")


@pytest.mark.parametrize("policy, expected_trainable", [(0, 0), (10, 10), ("all", None)])
def test_freeze_policies(policy, expected_trainable):
    clf = build()
    models.set_trainable(clf, policy)
    flags = [layer.trainable for layer in clf.backbone.layers]
    if expected_trainable is None:
        assert all(flags)
    else:
        assert sum(flags) == expected_trainable
        assert flags[len(flags) - expected_trainable :] == [True] * expected_trainable
    assert all(layer.trainable for layer in clf.head.layers)
    if policy == 0:
        head_weights = sum(int(np.prod(w.shape)) for w in clf.head.trainable_weights)
        assert models.trainable_count(clf.model) == head_weights


def test_frozen_batchnorm_stays_in_inference_mode():
    clf = build()
    models.set_trainable(clf, 0)
    bn = next(layer for layer in clf.backbone.layers if isinstance(layer, keras.layers.BatchNormalization))
    before = [np.array(w) for w in bn.weights]
    clf.model.compile(optimizer="adam", loss="binary_crossentropy")
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    clf.model.fit(x, np.array([0, 1, 0, 1], "float32"), epochs=1, verbose=0)
    for a, b in zip(before, bn.weights, strict=True):
        np.testing.assert_array_equal(a, np.array(b))  # moving statistics untouched


def test_sarker_faithful_build_has_the_papers_layer_and_parameter_counts():
    """158 layers and 2,264,385 parameters: MobileNetV2 (224, no top; 154 layers with its input) and the head
    GlobalAveragePooling2D, BatchNormalization, Dropout(0.4), Dense(1, sigmoid). Weights do not change counts."""
    clf = models.build_classifier(
        row(image_size=224, head=[{"pool": "avg"}, {"batch_norm": True}, {"dropout": 0.4},
                                  {"dense": 1, "activation": "sigmoid"}]), classes=BINARY_CLASSES, seed=0)
    assert len(clf.backbone.layers) + len(clf.head.layers) == 158
    assert models.parameter_count(clf.model) == 2_264_385


def test_every_augmentation_layer_saves_and_loads_in_safe_mode(tmp_path):
    clf = build(augmentation={"brightness": 0.2, "flip": "horizontal", "rotation": 0.1, "shear": 0.01, "zoom": 0.2,
                              "translation": 0.1, "fill_mode": "nearest"})
    path = tmp_path / "m.keras"
    clf.model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), clf.model.predict(x, verbose=0), atol=1e-6)
    assert [type(layer).__name__ for layer in loaded.get_layer("augmentation").layers] == [
        "RandomBrightness", "RandomFlip", "RandomRotation", "RandomShear", "RandomZoom", "RandomTranslation"]


def test_in_model_augmentation_acts_in_training_only():
    """kumar2022's layers inside the model: random in training, absent at inference (the model is then the
    same function as without them)."""
    augmented = build(augmentation={"brightness": 0.2, "flip": "horizontal_and_vertical", "rotation": 0.2})
    plain = models.build_classifier(row(), classes=BINARY_CLASSES, seed=1)  # same seed: same backbone and head
    x = np.random.default_rng(3).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    infer = keras.ops.convert_to_numpy(augmented.model(x, training=False))
    np.testing.assert_allclose(infer, keras.ops.convert_to_numpy(augmented.model(x, training=False)), atol=0)
    np.testing.assert_allclose(infer, keras.ops.convert_to_numpy(plain.model(x, training=False)), atol=1e-6)
    aug = augmented.augmentation
    assert [type(layer).__name__ for layer in aug.layers] == ["RandomBrightness", "RandomFlip", "RandomRotation"]
    seen = keras.ops.convert_to_numpy(aug(x, training=True))
    assert not np.allclose(seen, x), "in training the images are changed"
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(aug(x, training=False)), x)


def test_smoke_test_backbones_refuse_imagenet_weights_and_take_se_blocks():
    for name in ("TinyCNN", "TinyDenseNet"):
        with pytest.raises(UserError, match=rf"{name} is a smoke-test backbone.*weights: random"):
            backbones.weights_location(name, 32)
    from tlrepro.modeling.blocks import count_squeeze_excitation, insert_squeeze_excitation

    dense = backbones.build_backbone("TinyDenseNet", 32, "random")
    assert "conv5_block1_0_bn" in [layer.name for layer in dense.layers]  # trainable_from targets exist
    assert count_squeeze_excitation(insert_squeeze_excitation(dense)) == 4 + 3  # 4 dense layers, 3 transitions
