"""Squeeze-and-excitation (SE) blocks inserted into a Keras DenseNet backbone.

Wang et al. (2024), "Breast Cancer Image Classification Method Based on Deep Transfer Learning", put SE
modules "in the DenseNet network's dense block sub-modules and behind the transition layers". Keras ships
DenseNet121/169/201 as plain functional graphs, so we rebuild the graph layer by layer and call an SE layer:

- on the output of every dense layer's 3x3 conv (`conv{b}_block{i}_2_conv`), before it is concatenated
  onto the block's running feature map (58 blocks in DenseNet121), and
- on every transition layer's pooling output (`pool2_pool`, `pool3_pool`, `pool4_pool`).

Each SE block starts as an exact identity, so the rewritten network computes what the pretrained one did
until training moves the new weights. Layers are copied with their weights: the backbone passed in is left
untouched and can still serve as the baseline. Channels-last only (the Keras default).
"""

from __future__ import annotations

import re

import keras
from keras import layers, ops

DENSE_LAYER_CONV = re.compile(r"^(conv\d+_block\d+)_2_conv$")
TRANSITION_POOL = re.compile(r"^(pool\d+)_pool$")


@keras.saving.register_keras_serializable(package="tlrepro")
class SqueezeExcitation(layers.Layer):
    """Channel attention: x * gate(z), z = Dense(C)(relu(Dense(C // reduction)(mean over H, W of x))).

    The gate is 2 * sigmoid(z) and the second Dense starts at zero kernel and bias, so the block is an exact
    identity at initialisation (gate = 1), yet gradients still reach the second kernel through the first
    Dense's activations. The usual gate sigmoid(z) would halve every feature map of a pretrained network.
    """

    def __init__(self, reduction: int = 16, **kwargs):
        super().__init__(**kwargs)
        if reduction < 1:
            raise ValueError(f"reduction must be >= 1, got {reduction}")
        self.reduction = reduction

    def build(self, input_shape: tuple) -> None:
        channels = int(input_shape[-1])
        self.squeeze = layers.Dense(
            max(1, channels // self.reduction), activation="relu", name="squeeze", dtype=self.dtype_policy
        )
        self.excite = layers.Dense(
            channels,
            kernel_initializer="zeros",
            bias_initializer="zeros",
            name="excite",
            dtype=self.dtype_policy,
        )
        pooled = (input_shape[0], 1, 1, channels)
        self.squeeze.build(pooled)
        self.excite.build(self.squeeze.compute_output_shape(pooled))

    def call(self, x):
        z = self.excite(self.squeeze(ops.mean(x, axis=(1, 2), keepdims=True)))
        return x * (2.0 * ops.sigmoid(z))

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "reduction": self.reduction}


def _se_name(layer_name: str, dense_layers: bool, transitions: bool) -> str | None:
    """The SE block to put after `layer_name` (e.g. conv2_block1_se, pool2_se), or None."""
    for wanted, pattern in ((dense_layers, DENSE_LAYER_CONV), (transitions, TRANSITION_POOL)):
        match = pattern.match(layer_name) if wanted else None
        if match:
            return f"{match.group(1)}_se"
    return None


def insert_squeeze_excitation(
    backbone: keras.Model,
    *,
    reduction: int = 16,
    dense_layers: bool = True,
    transitions: bool = True,
    name: str | None = None,
) -> keras.Model:
    """A new functional model computing `backbone` with SE blocks after its dense layers and transitions.

    Every layer of `backbone` appears in the result under its own name, as a copy carrying the same
    weights. Raises ValueError if no layer has a DenseNet name the chosen flags target.
    """
    if not isinstance(backbone, keras.Model) or not hasattr(backbone, "operations"):
        raise ValueError(f"expected a functional keras.Model, got {type(backbone).__name__}")
    if not (dense_layers or transitions):
        raise ValueError("nothing to insert: dense_layers and transitions are both False")
    targets = {
        op.name: se for op in backbone.operations if (se := _se_name(op.name, dense_layers, transitions))
    }
    if not targets:
        wanted = " or ".join(["conv{b}_block{i}_2_conv"] * dense_layers + ["pool{b}_pool"] * transitions)
        raise ValueError(
            f"model {backbone.name!r} has no layer named like {wanted}: insert_squeeze_excitation expects "
            "a keras.applications DenseNet (121, 169 or 201)"
        )
    clashes = sorted(set(targets.values()) & {op.name for op in backbone.operations})
    if clashes:
        raise ValueError(
            f"model {backbone.name!r} already has layers named {', '.join(clashes[:3])}, ...: "
            "were SE blocks inserted twice?"
        )

    # Old KerasTensor (by id) -> its counterpart in the new graph.
    new: dict[int, keras.KerasTensor] = {}
    for old in backbone.inputs:
        new[id(old)] = keras.Input(
            batch_shape=old.shape, dtype=old.dtype, sparse=old.sparse, name=old._keras_history.operation.name
        )

    def lookup(value):
        return new[id(value)] if isinstance(value, keras.KerasTensor) else value

    copies: dict[int, layers.Layer] = {}
    se_blocks: dict[str, SqueezeExcitation] = {}

    def rebuild(op, node) -> None:
        args = keras.tree.map_structure(lookup, node.arguments.args)
        kwargs = keras.tree.map_structure(lookup, node.arguments.kwargs)
        first_call = id(op) not in copies
        if first_call:
            copies[id(op)] = op.__class__.from_config(op.get_config())
        outputs = copies[id(op)](*args, **kwargs)
        if first_call:
            copies[id(op)].set_weights(op.get_weights())
        outputs = keras.tree.flatten(outputs)
        if op.name in targets:
            block = se_blocks.setdefault(op.name, SqueezeExcitation(reduction, name=targets[op.name]))
            outputs = [block(out) for out in outputs]
        for old, out in zip(node.output_tensors, outputs, strict=True):
            new[id(old)] = out

    # backbone.operations is in topological order; a node whose inputs are not ready yet (a shared layer
    # called again deeper in the graph) waits for a later pass. Nodes
    # from other graphs sharing these layers either never become ready or end up off the path to the outputs.
    pending = [
        (op, node)
        for op in backbone.operations
        if not isinstance(op, layers.InputLayer)
        for node in op._inbound_nodes
    ]
    progress = True
    while pending and progress:
        waiting = []
        for op, node in pending:
            if all(id(t) in new for t in node.input_tensors):
                rebuild(op, node)
            else:
                waiting.append((op, node))
        progress = len(waiting) < len(pending)
        pending = waiting

    inputs = keras.tree.map_structure(lookup, backbone.input)
    outputs = keras.tree.map_structure(lookup, backbone.output)
    return keras.Model(inputs, outputs, name=name or f"{backbone.name}_se")


def count_squeeze_excitation(model: keras.Model) -> int:
    """How many SqueezeExcitation layers `model` holds, nested models included."""
    return sum(
        1 if isinstance(layer, SqueezeExcitation) else count_squeeze_excitation(layer)
        for layer in model.layers
        if isinstance(layer, SqueezeExcitation | keras.Model)
    )


def se_parameters(channels: int, reduction: int) -> int:
    """Weights of one SqueezeExcitation block on `channels` channels: two dense layers with biases."""
    hidden = max(1, channels // reduction)
    return channels * hidden + hidden + hidden * channels + channels


# Where an SE block could sit in a DenseNet, by the layers whose output it recalibrates.
PLACEMENTS = {
    "after each dense layer's 3x3 conv (ours), and each transition": (DENSE_LAYER_CONV, TRANSITION_POOL),
    "after each dense layer's 1x1 bottleneck, and each transition": (re.compile(r"^(conv\d+_block\d+)_1_conv$"),
                                                                    TRANSITION_POOL),
    "after each dense block's output, and each transition": (None, TRANSITION_POOL),
    "after every concatenation inside the dense blocks, and each transition": (
        re.compile(r"^(conv\d+_block\d+)_concat$"), TRANSITION_POOL),
}


def placement_counts(backbone: keras.Model, reduction: int) -> dict[str, int]:
    """The SE weights each placement of PLACEMENTS would add to a plain DenseNet `backbone` (from its channels)."""
    channels = {layer.name: int(layer.output.shape[-1]) for layer in backbone.layers}
    block_ends: dict[str, str] = {}
    for name in channels:
        if match := re.match(r"^(conv\d+)_block\d+_concat$", name):
            block_ends[match.group(1)] = name  # the last concatenation of each block is its output
    out = {}
    for label, (inner, transition) in PLACEMENTS.items():
        names = ([n for n in channels if inner.match(n)] if inner is not None else list(block_ends.values()))
        names += [n for n in channels if transition.match(n)]
        out[label] = sum(se_parameters(channels[n], reduction) for n in names)
    return out
