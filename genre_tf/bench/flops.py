"""Analytical FLOP counts per example, read from a Keras model's own layer and weight shapes.

A multiply-add is 2 FLOPs. Only dense layers, convolutions and attention's two matmuls are counted:
they are what a matmul peak can be held against, and the elementwise rest (norms, activations,
softmax, pooling) is a few per cent of them in these models. Biases are left out. A training step
costs 3 forward passes of each trained layer (forward, then the gradients of its input and of its
weights) and 1 of each frozen layer in front of them, the usual convention; a trained first layer
needs no input gradient, so this slightly overcounts.
"""
import dataclasses
import math

import tf_keras as keras


@dataclasses.dataclass(frozen=True)
class Flops:
    """FLOPs per example of one model: forward, and one training step (frozen parts forward only)."""

    forward: int
    trained_forward: int  # the part of `forward` in layers with trainable weights

    @property
    def train_step(self) -> int:
        return self.forward + 2 * self.trained_forward

    def __add__(self, other: "Flops") -> "Flops":
        return Flops(self.forward + other.forward, self.trained_forward + other.trained_forward)


NONE = Flops(0, 0)


def _positions(shape) -> int:
    """How many positions a per-position layer (Dense on [batch, ..., units]) is applied at."""
    inner = shape[1:-1]
    if any(size is None for size in inner):
        raise ValueError(f"cannot count FLOPs of a layer with output shape {shape}: a dimension is unknown")
    return math.prod(inner)


def bert_flops(variables, seq_length: int) -> int:
    """Forward FLOPs of a BERT encoder for one sequence of `seq_length` tokens, from its variables.

    Every kernel is applied at every token except the pooler's (at [CLS] only); each layer adds the
    attention scores and the weighted sum, 2 * T^2 * hidden FLOPs each. Works for genre_tf's own
    encoder and TF-Hub's BERTs, whose kernels are named `.../query/kernel`, `.../pooler.../kernel`.
    """
    total, layers = 0, 0
    for variable in variables:
        name, shape = variable.name, variable.shape
        if "kernel" not in name or len(shape) < 2:
            continue
        weights = 2 * math.prod(shape)
        total += weights if "pooler" in name else weights * seq_length
        if "query" in name:
            layers += 1
            hidden = math.prod(shape[1:])
            total += 2 * 2 * seq_length * seq_length * hidden
    if layers == 0:
        raise ValueError("no attention query kernel among the encoder's variables; is it a BERT encoder?")
    return total


def layer_flops(layer, seq_length: int) -> int:
    """Forward FLOPs per example of one leaf layer (0 for layers without matmuls or convolutions)."""
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        height, width, channels, multiplier = layer.depthwise_kernel.shape
        return 2 * height * width * channels * multiplier * _positions(layer.output_shape)
    if isinstance(layer, keras.layers.Conv2D):  # kernel [h, w, in / groups, out]
        return 2 * math.prod(layer.kernel.shape) * _positions(layer.output_shape)
    if isinstance(layer, keras.layers.Dense):
        return 2 * math.prod(layer.kernel.shape) * _positions(layer.output_shape)
    if any("kernel" in v.name and "query" in v.name for v in layer.weights):  # a BERT (hub.KerasLayer or ours)
        return bert_flops(layer.weights, seq_length)
    return 0


def _calls_inside(model: keras.Model, layer) -> int:
    """How many times `model`'s graph calls a nested model (at least once)."""
    nodes = getattr(model, "_network_nodes", set())
    return max(1, sum(f"{layer.name}_ib-{index}" in nodes for index in range(len(layer._inbound_nodes))))


def model_flops(model: keras.Model, seq_length: int = 128) -> Flops:
    """Forward and training-step FLOPs per example of a Keras model, descending into nested models."""
    total = NONE
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            inner = model_flops(layer, seq_length)
            for _ in range(_calls_inside(model, layer)):  # flip averaging runs its backbone twice
                total += inner
            continue
        count = layer_flops(layer, seq_length)
        trained = count if layer.trainable and layer.trainable_weights else 0
        total += Flops(count, trained)
    return total
