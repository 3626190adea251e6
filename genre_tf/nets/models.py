"""The five models of the paper's Table 3 as Keras functional models with named inputs."""
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras

from genre_tf.config import MODEL_KINDS, ModelConfig, fine_tunes_text, late_fusion, uses_poster, uses_text
from genre_tf.data.dataset import PLOT, PLOT_EMBEDDING, POSTER, POSTER_FEATURES
from genre_tf.nets.layers import GenreCalibration, GenreMix, ModalityDropout

HEAD = "genre_head"  # the named sub-model after the encoders: feature inputs in, genre logits out
CALIBRATION = "genre_calibration"  # the head's last layer when model.calibration is not none


def dropout(rate: float, name: str) -> keras.layers.Dropout:
    """Dropout drawing from a tf.random.Generator, which training reseeds each epoch (callbacks.EpochSeededDropout)."""
    return keras.layers.Dropout(rate, name=name, force_generator=True)


def _dense(units, config, name, activation="relu"):
    return keras.layers.Dense(units, activation=activation, kernel_initializer="glorot_uniform",
                              kernel_regularizer=keras.regularizers.L2(config.l2), name=name)


def _text_head(vector, config: ModelConfig):
    """Dropout and the two dense layers of section 4.3."""
    x = dropout(config.dropout, "text_dropout")(vector)
    for index, units in enumerate(config.text_units):
        x = _dense(units, config, f"text_dense_{index}")(x)
        x = dropout(config.dropout, f"text_dense_{index}_dropout")(x)
    return x


def _encoded_input(encoder, name: str, feature_name: str, dim: int):
    """An encoder's raw input run through it, or (no encoder) a cached-feature input; returns (input, vector)."""
    if encoder is None:
        features = keras.Input(shape=(dim,), name=feature_name)
        return [features], features
    if isinstance(encoder.input, dict):  # text_top: the cached hidden states and their mask
        raw = {key: keras.Input(shape=value.shape[1:], dtype=value.dtype, name=key)
               for key, value in encoder.input.items()}
        return list(raw.values()), encoder(raw)
    raw = keras.Input(shape=encoder.input.shape[1:], dtype=encoder.input.dtype, name=name)
    return [raw], encoder(raw)


def build_genre_head(config: ModelConfig, num_genres: int, text_dim: int = 384, poster_dim: int = 1280) -> keras.Model:
    """The layers after the encoders, as the named sub-model `genre_head`: plot_embedding and/or poster_features in,
    one logit per genre out (through the per-genre calibrator, when there is one). Serving runs this same sub-model
    behind its own encoders.

    With model.heads = N > 1 it holds N heads (`genre_head_0`...), each trained on its own loss by HeadEnsemble,
    and returns the logit of their mean probability: an ensemble that runs the encoders once.
    """
    if config.heads > 1:
        members = [keras.Model(*_head_layers(config, num_genres, text_dim, poster_dim), name=f"{HEAD}_{index}")
                   for index in range(config.heads)]
        inputs = {name: keras.Input(shape=tensor.shape[1:], name=name) for name, tensor in members[0].input.items()}
        logits = MeanProbabilityLogits(name="ensemble_mean")([member(inputs) for member in members])
    else:
        inputs, logits = _head_layers(config, num_genres, text_dim, poster_dim)
    return keras.Model(inputs, _calibrated(logits, config, num_genres), name=HEAD)


def _head_layers(config: ModelConfig, num_genres: int, text_dim: int, poster_dim: int):
    """One head's (inputs, logits): the text head, the poster features, their fusion, the genre logits."""
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
        return inputs, GenreMix(num_genres, name="fusion_mix")([text_logits, poster_logits])
    if config.kind == "integrated":
        if config.branch_norm:
            # CNN features (ResNet50's ~30x) are larger than the text head's output; unnormalised they swamp it.
            branches = [keras.layers.LayerNormalization(name=f"{branch_name}_norm")(branch)
                        for branch_name, branch in zip(("text", "poster"), branches, strict=True)]
        if config.modality_dropout:
            branches = ModalityDropout(config.modality_dropout, name="modality_dropout")(branches)
        x = keras.layers.Concatenate(name="concatenate")(branches)
        x = _dense(config.fusion_units, config, "fusion_dense")(x)
        x = dropout(config.dropout, "fusion_dropout")(x)
    else:
        x = branches[0]  # poster: features straight into the sigmoid layer (section 4.2)
    return inputs, _dense(num_genres, config, "genre_logits", activation=None)(x)


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
            inputs.extend(raw)
    head = build_genre_head(config, num_genres, **{key: int(features[name].shape[-1]) for key, name in (
        ("text_dim", PLOT_EMBEDDING), ("poster_dim", POSTER_FEATURES)) if name in features})
    probabilities = keras.layers.Activation("sigmoid", dtype="float32", name="probabilities")(head(features))
    model_class = HeadEnsemble if config.heads > 1 else keras.Model
    if text_encoder is not None and text_encoder.name == TEXT_TOP:
        model_class = TopLayersModel
    return model_class(inputs, probabilities, name=config.kind)


TEXT_TOP = "text_top"  # the text encoder's fine-tuned top layers and pooling (text.fine_tune_layers)


class TopLayersModel(keras.Model):
    """A model whose text encoder's top layers (text_top) learn at their own, smaller rate: `top_optimizer`, set
    before training, updates them; the compiled optimizer updates the rest."""

    top_optimizer = None

    def train_step(self, data):
        x, y = data[0], data[1]
        with tf.GradientTape() as tape:
            predictions = self(x, training=True)
            loss = self.compiled_loss(y, predictions, regularization_losses=self.losses)
        top = self.get_layer(TEXT_TOP).trainable_variables
        in_top = {variable.ref() for variable in top}
        rest = [variable for variable in self.trainable_variables if variable.ref() not in in_top]
        gradients = tape.gradient(loss, top + rest)
        self.top_optimizer.apply_gradients(zip(gradients[:len(top)], top, strict=True))
        self.optimizer.apply_gradients(zip(gradients[len(top):], rest, strict=True))
        self.compiled_metrics.update_state(y, predictions)
        return {metric.name: metric.result() for metric in self.metrics}


@keras.utils.register_keras_serializable("genre_tf")
class MeanProbabilityLogits(keras.layers.Layer):
    """The logit of the mean of several heads' probabilities, so that a sigmoid after it gives that mean."""

    def call(self, logits):
        mean = tf.reduce_mean(tf.sigmoid(tf.stack([tf.cast(x, tf.float32) for x in logits])), axis=0)
        mean = tf.clip_by_value(mean, 1e-7, 1 - 1e-7)
        return tf.math.log(mean) - tf.math.log1p(-mean)


class HeadEnsemble(keras.Model):
    """A model whose genre_head holds several heads: each is trained on the loss of its own probabilities (not of
    their mean, which would train one wide head), while predicting, evaluating and serving use the mean."""

    def train_step(self, data):
        x, y = data[0], data[1]
        head = self.get_layer(HEAD)
        members = [layer for layer in head.layers if layer.name.startswith(f"{HEAD}_")]
        with tf.GradientTape() as tape:
            features = self._head_inputs(x)
            losses = [self.compiled_loss(y, tf.sigmoid(tf.cast(member(features, training=True), tf.float32)),
                                         regularization_losses=None) for member in members]
            # The sum: head i's gradient is its own loss's plus its own L2 term's, as if it were trained alone.
            loss = tf.add_n(losses) + tf.add_n(self.losses) if self.losses else tf.add_n(losses)
        self.optimizer.minimize(loss, self.trainable_variables, tape=tape)
        return {metric.name: metric.result() for metric in self.metrics}

    def _head_inputs(self, x: dict) -> dict:
        """The genre head's inputs for a batch: cached features as given, raw inputs through their encoders."""
        features = {name: x[name] for name in (PLOT_EMBEDDING, POSTER_FEATURES) if name in x}
        for raw, encoder, feature in ((PLOT, "text_encoder", PLOT_EMBEDDING), (POSTER, "poster_encoder",
                                                                             POSTER_FEATURES)):
            if raw in x:
                features[feature] = self.get_layer(encoder)(x[raw], training=True)
        return features


def build_most_common(num_genres: int, genre_frequency: Sequence[float]) -> keras.Model:
    """Model 0: predict, for every movie, each genre present in more than half of training (section 4.1)."""
    if genre_frequency is None:
        raise ValueError("most_common needs the training genre frequencies")
    majority = (np.asarray(genre_frequency, dtype=np.float32) > 0.5).astype(np.float32)
    plot = keras.Input(shape=(), dtype=tf.string, name=PLOT)  # read only for the batch size
    constant = keras.layers.Lambda(
        lambda x: tf.zeros([tf.shape(x)[0], 1]) + tf.constant(majority[None, :]), name="probabilities")(plot)
    return keras.Model(plot, constant, name="most_common")
