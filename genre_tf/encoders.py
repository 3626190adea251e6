"""The paper's two branches: a TF-Hub BERT text encoder and a ResNet50 poster encoder."""
import dataclasses
import functools
import hashlib
import os

import tensorflow as tf
import tensorflow_hub as hub
import tensorflow_text  # noqa: F401  must be imported before a BERT preprocessor SavedModel loads
import tf_keras as keras

from genre_tf.dataset import PLOT, PLOT_EMBEDDING, POSTER, POSTER_FEATURES
from genre_tf.minilm import WEIGHTS_SHA256, cache_root, minilm_handles, sha256_of

RESNET50_NOTOP = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
RESNET50_URL = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/" + RESNET50_NOTOP


@dataclasses.dataclass
class TextEncoderConfig:
    """A TF-Hub BERT encoder and its preprocessor; empty handles mean the offline all-MiniLM-L6-v2."""

    encoder: str = ""            # TF-Hub URL or local SavedModel folder
    preprocessor: str = ""       # the matching preprocessor (URL or folder)
    seq_length: int = 128        # tokens per plot, [CLS] and [SEP] included (the paper's 128)
    pooling: str = "mean"        # mean (masked mean of sequence_output) | pooled (pooled_output)


@dataclasses.dataclass
class PosterEncoderConfig:
    """ResNet50 without its top, average-pooled to 2048-d features, as in the paper."""

    weights: str = "imagenet"    # imagenet | random | imagenet_or_random (demo only) | path to a .h5 file
    image_size: int = 224
    fine_tune_last_stage: bool = False  # train conv5 jointly (the paper's proposed next step)
    seed: int = 0                # for random weights, which are saved once so every process sees the same


def resolve_text_handles(config: TextEncoderConfig):
    """(encoder, preprocessor) handles: the configured ones, or the offline MiniLM conversion."""
    if bool(config.encoder) != bool(config.preprocessor):
        raise ValueError("give both text.encoder and text.preprocessor, or neither (offline MiniLM)")
    if config.encoder:
        for handle in (config.encoder, config.preprocessor):
            if "://" not in handle and not os.path.exists(os.path.join(handle, "saved_model.pb")):
                raise FileNotFoundError(f"text handle {handle!r} is neither a URL nor a SavedModel folder")
        return config.encoder, config.preprocessor
    return minilm_handles(config.seq_length)


def text_encoder_identity(config: TextEncoderConfig) -> str:
    """A string that changes whenever the plot embeddings would: part of the feature cache key."""
    if not config.encoder:
        return f"minilm-{WEIGHTS_SHA256[:16]}-seq{config.seq_length}-{config.pooling}"
    identity = config.encoder
    if os.path.isdir(config.encoder):
        identity = sha256_of(os.path.join(config.encoder, "variables", "variables.data-00000-of-00001"))
    return f"{identity}-{config.preprocessor}-seq{config.seq_length}-{config.pooling}"


def build_text_encoder(config: TextEncoderConfig, trainable: bool = False) -> keras.Model:
    """plot (string) -> plot_embedding: the preprocessor, the encoder and the chosen pooling."""
    if config.pooling not in ("mean", "pooled"):
        raise ValueError(f"text.pooling must be 'mean' or 'pooled', got {config.pooling!r}")
    encoder_handle, preprocessor_handle = resolve_text_handles(config)
    plot = keras.Input(shape=(), dtype=tf.string, name=PLOT)
    if config.encoder and config.seq_length != 128:
        # TF-Hub preprocessors pack 128 tokens by default; other lengths go through bert_pack_inputs.
        loaded = hub.load(preprocessor_handle)
        tokens = hub.KerasLayer(loaded.tokenize, name="tokenize")(plot)
        ids = hub.KerasLayer(loaded.bert_pack_inputs, arguments=dict(seq_length=config.seq_length),
                             name="preprocessor")([tokens])
    else:
        ids = hub.KerasLayer(preprocessor_handle, name="preprocessor")(plot)
    encoder = hub.KerasLayer(encoder_handle, trainable=trainable, name="bert_encoder")
    return keras.Model(plot, pool_encoder_outputs(encoder(ids), ids["input_mask"], config.pooling),
                       name="text_encoder")


def pool_encoder_outputs(outputs, input_mask, pooling: str):
    """The plot vector from a TF-Hub BERT's outputs: pooled_output, or the masked mean of sequence_output."""
    if pooling == "pooled":
        vector = outputs["pooled_output"]
    else:
        mask = tf.cast(input_mask, outputs["sequence_output"].dtype)[:, :, None]
        vector = tf.reduce_sum(outputs["sequence_output"] * mask, axis=1) / tf.maximum(
            tf.reduce_sum(mask, axis=1), 1.0)
    return keras.layers.Activation("linear", dtype="float32", name=PLOT_EMBEDDING)(vector)


def token_id_encoder(text_encoder: keras.Model, config: TextEncoderConfig) -> keras.Model:
    """The same encoder without its preprocessor: BERT token ids in, plot_embedding out (shared weights)."""
    ids = {name: keras.Input(shape=(config.seq_length,), dtype=tf.int32, name=name)
           for name in ("input_word_ids", "input_mask", "input_type_ids")}
    outputs = text_encoder.get_layer("bert_encoder")(ids)
    return keras.Model(ids, pool_encoder_outputs(outputs, ids["input_mask"], config.pooling),
                       name="token_id_encoder")


def resnet50_weights_file(config: PosterEncoderConfig) -> str:
    """The weights file for ResNet50: an explicit path, the Keras cache, a download, or a clear error."""
    if config.weights not in ("imagenet", "imagenet_or_random"):
        if not os.path.exists(config.weights):
            raise FileNotFoundError(f"poster.weights file not found: {config.weights}")
        return config.weights
    cached = os.path.join(os.path.expanduser("~/.keras/models"), RESNET50_NOTOP)
    if os.path.exists(cached):
        return cached
    try:
        return keras.utils.get_file(RESNET50_NOTOP, RESNET50_URL, cache_subdir="models")
    except Exception as error:  # noqa: BLE001  any download failure means the same thing to the user
        raise RuntimeError(
            f"ResNet50 ImageNet weights are not at {cached} and could not be downloaded ({type(error).__name__}). "
            f"Download {RESNET50_URL} to that path, or set poster.weights=/path/to/{RESNET50_NOTOP}. "
            "Random weights (poster.weights=random) are for tests and the synthetic demo only.") from None


def poster_weights_choice(config: PosterEncoderConfig) -> str:
    """'random' or the weights file to load; the demo's imagenet_or_random falls back loudly (once)."""
    return _weights_choice(config.weights)


@functools.lru_cache(maxsize=None)
def _weights_choice(weights: str) -> str:
    if weights == "random":
        return "random"
    try:
        return resnet50_weights_file(PosterEncoderConfig(weights=weights))
    except RuntimeError as error:
        if weights != "imagenet_or_random":
            raise
        print(f"WARNING: {error}\nWARNING: the synthetic demo continues with RANDOM ResNet50 weights; "
              "poster scores are not representative of a pretrained encoder.")
        return "random"


def _random_resnet_file(config: PosterEncoderConfig) -> str:
    """Random weights are drawn once per seed and saved, so caches and exports agree across processes."""
    path = os.path.join(cache_root(), "resnet50", f"random-seed{config.seed}.h5")
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        keras.utils.set_random_seed(config.seed)
        model = keras.applications.ResNet50(include_top=False, weights=None, pooling="avg")
        staging = f"{path}.{os.getpid()}.tmp.h5"
        model.save_weights(staging)
        os.replace(staging, path)
    return path


def poster_encoder_identity(config: PosterEncoderConfig) -> str:
    """A string that changes whenever the poster features would: part of the feature cache key."""
    choice = poster_weights_choice(config)
    weights = f"random{config.seed}" if choice == "random" else _file_digest(choice)
    return f"resnet50-{weights}-{config.image_size}"


@functools.lru_cache(maxsize=None)
def _file_digest(path: str) -> str:
    return sha256_of(path)[:16]


def build_poster_encoder(config: PosterEncoderConfig, trainable: bool = False) -> keras.Model:
    """poster (uint8 [size, size, 3]) -> poster_features (2048-d): ResNet50 with its own preprocess_input."""
    choice = poster_weights_choice(config)
    poster = keras.Input(shape=(config.image_size, config.image_size, 3), dtype=tf.uint8, name=POSTER)
    pixels = keras.applications.resnet50.preprocess_input(tf.cast(poster, tf.float32))
    resnet = keras.applications.ResNet50(include_top=False, weights=None, pooling="avg",
                                         input_shape=(config.image_size, config.image_size, 3))
    resnet.load_weights(_random_resnet_file(config) if choice == "random" else choice)
    resnet.trainable = trainable or config.fine_tune_last_stage
    if config.fine_tune_last_stage and not trainable:
        for layer in resnet.layers:
            layer.trainable = layer.name.startswith("conv5_")
    # BatchNorm stays in inference mode even when fine-tuning, the usual practice for small batches.
    features = resnet(pixels, training=False)
    features = keras.layers.Activation("linear", dtype="float32", name=POSTER_FEATURES)(features)
    return keras.Model(poster, features, name="poster_encoder")


def cache_key(*parts: str) -> str:
    """A short stable hash of the parts that identify a cached computation."""
    return hashlib.sha256("|".join(parts).encode("utf-8")).hexdigest()[:16]
