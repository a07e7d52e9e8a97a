"""SE blocks inserted into DenseNet121: weights kept, identity at init, live, serializable, clear errors.

Everything runs on 32x32 inputs (the smallest DenseNet accepts) with random weights (weights=None).
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from tlrepro.modeling.blocks import SqueezeExcitation, count_squeeze_excitation, insert_squeeze_excitation

SHAPE = (32, 32, 3)


@pytest.fixture(scope="module")
def backbone() -> keras.Model:
    keras.utils.set_random_seed(0)
    return keras.applications.DenseNet121(include_top=False, weights=None, input_shape=SHAPE)


@pytest.fixture(scope="module")
def rewritten(backbone: keras.Model) -> keras.Model:
    return insert_squeeze_excitation(backbone)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).uniform(0.0, 1.0, (2, *SHAPE)).astype("float32")


def predict(model: keras.Model, x: np.ndarray) -> np.ndarray:
    return keras.ops.convert_to_numpy(model(x, training=False))


def test_keeps_every_layer_and_its_weights(backbone: keras.Model, rewritten: keras.Model) -> None:
    assert rewritten.input_shape == backbone.input_shape
    assert rewritten.output_shape == backbone.output_shape
    for layer in backbone.layers:
        copy = rewritten.get_layer(layer.name)
        assert copy is not layer, "the backbone passed in must stay untouched"
        assert type(copy) is type(layer)
        for ours, theirs in zip(copy.get_weights(), layer.get_weights(), strict=True):
            np.testing.assert_array_equal(ours, theirs, err_msg=layer.name)
    se_names = {layer.name for layer in rewritten.layers if isinstance(layer, SqueezeExcitation)}
    assert {"conv2_block1_se", "conv3_block12_se", "conv5_block16_se", "pool2_se", "pool4_se"} <= se_names
    assert len(rewritten.layers) == len(backbone.layers) + 61


def test_se_sits_between_the_dense_layer_conv_and_its_concat(rewritten: keras.Model) -> None:
    se = rewritten.get_layer("conv2_block1_se")
    assert se.input._keras_history.operation.name == "conv2_block1_2_conv"
    concat_inputs = rewritten.get_layer("conv2_block1_concat").input
    assert [t._keras_history.operation.name for t in concat_inputs] == ["pool1", "conv2_block1_se"]
    assert rewritten.get_layer("pool3_se").input._keras_history.operation.name == "pool3_pool"


@pytest.mark.parametrize(
    ("dense_layers", "transitions", "expected"), [(True, True, 61), (True, False, 58), (False, True, 3)]
)
def test_counts(backbone: keras.Model, rewritten: keras.Model, dense_layers, transitions, expected) -> None:
    model = (
        rewritten
        if dense_layers and transitions
        else insert_squeeze_excitation(backbone, dense_layers=dense_layers, transitions=transitions)
    )
    assert count_squeeze_excitation(model) == expected
    wrapper = keras.Sequential([keras.Input(SHAPE), model])
    assert count_squeeze_excitation(wrapper) == expected, "nested models are searched too"


def test_identity_at_initialisation(
    backbone: keras.Model, rewritten: keras.Model, images: np.ndarray
) -> None:
    np.testing.assert_allclose(predict(rewritten, images), predict(backbone, images), atol=1e-5)


@pytest.mark.parametrize("block", ["conv2_block1_se", "pool4_se"])
def test_perturbed_block_changes_the_output(rewritten: keras.Model, images: np.ndarray, block: str) -> None:
    kernel = rewritten.get_layer(block).excite.kernel
    before = predict(rewritten, images)
    kernel.assign(np.random.default_rng(1).normal(0.0, 1.0, kernel.shape).astype("float32"))
    try:
        after = predict(rewritten, images)
    finally:
        kernel.assign(np.zeros(kernel.shape, "float32"))
    # the unperturbed rewrite matches exactly, so any visible change is the block at work
    assert np.abs(after - before).max() > 1e-6


def test_gradients_reach_the_zero_initialised_kernel() -> None:
    se = SqueezeExcitation(reduction=2)
    x = tf.random.stateless_normal((2, 4, 4, 8), seed=(1, 2))
    with tf.GradientTape() as tape:
        y = se(x)
        loss = tf.reduce_sum(y * tf.range(8, dtype="float32"))
    np.testing.assert_allclose(y.numpy(), x.numpy())
    assert se.squeeze.units == 4
    assert np.abs(tape.gradient(loss, se.excite.kernel).numpy()).max() > 0


def test_saves_and_loads_safely(rewritten: keras.Model, images: np.ndarray, tmp_path: Path) -> None:
    kernel = rewritten.get_layer("pool3_se").excite.kernel
    kernel.assign(np.random.default_rng(2).normal(0.0, 0.1, kernel.shape).astype("float32"))
    try:
        rewritten.save(tmp_path / "m.keras")
        expected = predict(rewritten, images)
    finally:
        kernel.assign(np.zeros(kernel.shape, "float32"))
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    np.testing.assert_allclose(predict(loaded, images), expected, atol=1e-6)
    assert count_squeeze_excitation(loaded) == 61
    for model in (rewritten, loaded):
        assert not any(isinstance(layer, keras.layers.Lambda) for layer in model.layers)


def test_rejects_a_backbone_that_is_not_a_densenet() -> None:
    mobilenet = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=SHAPE, alpha=0.35)
    with pytest.raises(ValueError, match=r"no layer named like conv\{b\}_block\{i\}_2_conv.*DenseNet"):
        insert_squeeze_excitation(mobilenet)


def test_rejects_nothing_to_insert_and_double_insertion(
    backbone: keras.Model, rewritten: keras.Model
) -> None:
    with pytest.raises(ValueError, match="nothing to insert"):
        insert_squeeze_excitation(backbone, dense_layers=False, transitions=False)
    with pytest.raises(ValueError, match="inserted twice"):
        insert_squeeze_excitation(rewritten)


def test_reduction_beyond_the_channel_count_keeps_one_unit(backbone: keras.Model, images: np.ndarray) -> None:
    model = insert_squeeze_excitation(backbone, reduction=10_000, dense_layers=False, name="tiny_se")
    assert model.name == "tiny_se"
    blocks = [layer for layer in model.layers if isinstance(layer, SqueezeExcitation)]
    assert [block.squeeze.units for block in blocks] == [1, 1, 1]
    np.testing.assert_allclose(predict(model, images), predict(backbone, images), atol=1e-5)
    with pytest.raises(ValueError, match="reduction must be >= 1"):
        SqueezeExcitation(reduction=0)
