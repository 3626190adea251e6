"""The five models of the paper's Table 3 as Keras functional models with named inputs."""
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras

from genre_tf.config import MODEL_KINDS, ModelConfig, fine_tunes_text, late_fusion, uses_poster, uses_text
from genre_tf.dataset import PLOT, PLOT_EMBEDDING, POSTER, POSTER_FEATURES
from genre_tf.layers import GenreCalibration, GenreMix

HEAD = "genre_head"  # the named sub-model after the encoders: feature inputs in, genre logits out
CALIBRATION = "genre_calibration"  # the head's last layer when model.calibration is not none


def _dense(units, config, name, activation="relu"):
    return keras.layers.Dense(units, activation=activation, kernel_initializer="glorot_uniform",
                              kernel_regularizer=keras.regularizers.L2(config.l2), name=name)


def _text_head(vector, config: ModelConfig):
    """Dropout and the two dense layers of section 4.3."""
    x = keras.layers.Dropout(config.dropout, name="text_dropout")(vector)
    for index, units in enumerate(config.text_units):
        x = _dense(units, config, f"text_dense_{index}")(x)
        x = keras.layers.Dropout(config.dropout, name=f"text_dense_{index}_dropout")(x)
    return x


def _encoded_input(encoder, name: str, feature_name: str, dim: int):
    """An encoder's raw input run through it, or (no encoder) a cached-feature input; returns (input, vector)."""
    if encoder is None:
        features = keras.Input(shape=(dim,), name=feature_name)
        return features, features
    raw = keras.Input(shape=encoder.input.shape[1:], dtype=encoder.input.dtype, name=name)
    return raw, encoder(raw)


def build_genre_head(config: ModelConfig, num_genres: int, text_dim: int = 384, poster_dim: int = 1280) -> keras.Model:
    """The layers after the encoders, as the named sub-model `genre_head`: plot_embedding and/or poster_features in,
    one logit per genre out. Serving runs this same sub-model behind its own encoders."""
    inputs, branches = {}, []
    if uses_text(config):
        inputs[PLOT_EMBEDDING] = keras.Input(shape=(text_dim,), name=PLOT_EMBEDDING)
        branches.append(_text_head(inputs[PLOT_EMBEDDING], config))
    if uses_poster(config):
        inputs[POSTER_FEATURES] = keras.Input(shape=(poster_dim,), name=POSTER_FEATURES)
        branches.append(inputs[POSTER_FEATURES])
    if late_fusion(config):
        text_logits = _dense(num_genres, config, "genre_logits", activation=None)(branches[0])
        poster_logits = _dense(num_genres, config, "poster_logits", activation=None)(branches[1])
        logits = GenreMix(num_genres, name="fusion_mix")([text_logits, poster_logits])
        return keras.Model(inputs, _calibrated(logits, config, num_genres), name=HEAD)
    if config.kind == "integrated":
        if config.branch_norm:
            # CNN features (ResNet50's ~30x) are larger than the text head's output; unnormalised they swamp it.
            branches = [keras.layers.LayerNormalization(name=f"{name}_norm")(branch)
                        for name, branch in zip(("text", "poster"), branches, strict=True)]
        x = keras.layers.Concatenate(name="concatenate")(branches)
        x = _dense(config.fusion_units, config, "fusion_dense")(x)
        x = keras.layers.Dropout(config.dropout, name="fusion_dropout")(x)
    else:
        x = branches[0]  # poster: features straight into the sigmoid layer (section 4.2)
    logits = _dense(num_genres, config, "genre_logits", activation=None)(x)
    return keras.Model(inputs, _calibrated(logits, config, num_genres), name=HEAD)


def _calibrated(logits, config: ModelConfig, num_genres: int):
    """The logits through the per-genre calibrator (identity until fitted on dev), or unchanged without one."""
    if config.calibration == "none":
        return logits
    return GenreCalibration(num_genres, name=CALIBRATION)(logits)


def build_model(config: ModelConfig, num_genres: int, text_dim: int = 384, poster_dim: int = 1280,
                text_encoder: keras.Model = None, poster_encoder: keras.Model = None,
                genre_frequency: Sequence[float] = None) -> keras.Model:
    """Build the Table 3 model `config.kind`: text_encoder and poster_encoder (when given), genre_head, sigmoid.

    Inputs are named as the tf.data keys. With an encoder given, the model reads the raw input
    (`plot` text, `poster` pixels) and runs the encoder inside; without one it reads cached features
    (`plot_embedding`, `poster_features`). Fine-tuning the text encoder needs it inside.
    """
    if config.kind not in MODEL_KINDS:
        raise ValueError(f"model.kind must be one of {MODEL_KINDS}, got {config.kind!r}")
    if config.kind == "most_common":
        return build_most_common(num_genres, genre_frequency)
    if fine_tunes_text(config) and text_encoder is None:
        raise ValueError(f"model {config.kind} fine-tunes the text encoder: pass text_encoder")
    inputs, features = [], {}
    for used, encoder, name, feature_name, dim in ((uses_text(config), text_encoder, PLOT, PLOT_EMBEDDING, text_dim),
                                                   (uses_poster(config), poster_encoder, POSTER, POSTER_FEATURES,
                                                    poster_dim)):
        if used:
            raw, features[feature_name] = _encoded_input(encoder, name, feature_name, dim)
            inputs.append(raw)
    head = build_genre_head(config, num_genres, **{key: int(features[name].shape[-1]) for key, name in (
        ("text_dim", PLOT_EMBEDDING), ("poster_dim", POSTER_FEATURES)) if name in features})
    probabilities = keras.layers.Activation("sigmoid", dtype="float32", name="probabilities")(head(features))
    return keras.Model(inputs, probabilities, name=config.kind)


def build_most_common(num_genres: int, genre_frequency: Sequence[float]) -> keras.Model:
    """Model 0: predict, for every movie, each genre present in more than half of training (section 4.1)."""
    if genre_frequency is None:
        raise ValueError("most_common needs the training genre frequencies")
    majority = (np.asarray(genre_frequency, dtype=np.float32) > 0.5).astype(np.float32)
    plot = keras.Input(shape=(), dtype=tf.string, name=PLOT)  # read only for the batch size
    constant = keras.layers.Lambda(
        lambda x: tf.zeros([tf.shape(x)[0], 1]) + tf.constant(majority[None, :]), name="probabilities")(plot)
    return keras.Model(plot, constant, name="most_common")
