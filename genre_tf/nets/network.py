"""The network a config describes: encoders and feature caches around models.build_model, built or restored."""
import functools
import os

import numpy as np
import tensorflow as tf
import tf_keras as keras

from genre_tf import run_dir as runs
from genre_tf.config import PosterEncoderConfig, TrainConfig, fine_tunes_text, uses_poster, uses_text
from genre_tf.data.dataset import (PLOT, PLOT_EMBEDDING, PLOT_STATES, POSTER, POSTER_FEATURES, PreparedDataset,
                                   split_labels)
from genre_tf.data.demo import prepared_demo
from genre_tf.data.features import FrozenEncoder, load_or_compute
from genre_tf.data.states import load_or_compute_states
from genre_tf.files import cache_key, read_json
from genre_tf.nets.encoders import (build_poster_encoder, build_states_encoder, build_text_encoder, build_text_top,
                                    for_inference, load_backbone, plot_states_identity, poster_encoder_identity,
                                    resolve_text_handles, text_encoder_identity)
from genre_tf.nets.models import build_model
from genre_tf.nets.precision import keras_policy

def make_predictor(model: keras.Model):
    """A function from a (finite, ordered) dataset to the model's probabilities, computed locally.

    Every worker of a multi-worker run evaluates the whole dev set itself, so they take identical
    early-stopping decisions without a collective. The step is traced once per predictor.
    """
    step = tf.function(lambda inputs: model(inputs, training=False), reduce_retracing=True)
    return lambda dataset: np.concatenate([step(inputs).numpy() for inputs, _ in dataset])


def load_best_weights(model: keras.Model, run_dir: str) -> None:
    """Load the best checkpoint into a model built from the run's config; a model that does not fit fails loudly."""
    checkpoint = runs.best_checkpoint(run_dir)
    if not model.weights:
        return
    try:
        status = model.load_weights(checkpoint).expect_partial()  # the optimizer's slots are not needed
    except (tf.errors.OpError, ValueError, IndexError) as error:  # truncated (IndexError) or bit-flipped (crc)
        reason = (getattr(error, "message", None) or str(error)).strip().splitlines()[0][:200]
        raise ValueError(f"{checkpoint} is damaged and cannot be read ({reason}); retrain the run, or restore "
                         "its checkpoints folder from a copy") from None
    try:
        status.assert_existing_objects_matched()
    except AssertionError as error:
        raise ValueError(f"{checkpoint} does not fit the model that {run_dir}/config.json builds "
                         f"(was it trained by another genre_tf version?): {str(error)[:300]}") from None


def precision_policy(config: TrainConfig):
    """Build layers under the run's float policy (mixed_float16 or float32), then give the global one back."""
    return keras_policy("float16" if config.mixed_precision else "float32")


def build_frozen_poster_encoder(config: PosterEncoderConfig):
    """The poster encoder that computes stored poster features (BatchNorms folded)."""
    return for_inference(build_poster_encoder(config))


def frozen_encoders(config: TrainConfig) -> list[FrozenEncoder]:
    """The frozen encoders whose stored outputs this model reads: the poster backbone unless its last stage is
    trained, the text encoder unless it is fine-tuned. Each store is keyed by the encoder alone (each movie's row by
    its own content), so every dataset and split, and the Beam features job, share one store per encoder."""
    encoders = []
    if uses_poster(config.model) and not config.poster.fine_tune_last_stage:
        encoders.append(FrozenEncoder(POSTER_FEATURES, cache_key(poster_encoder_identity(config.poster)), POSTER,
                                      functools.partial(build_frozen_poster_encoder, config.poster),
                                      config.poster.image_size))
    if uses_text(config.model) and not fine_tunes_text(config.model) and not config.text.fine_tune_layers:
        encoders.append(FrozenEncoder(PLOT_EMBEDDING, cache_key(text_encoder_identity(config.text)), PLOT,
                                      functools.partial(build_text_encoder, config.text)))
    return encoders


def fetch_encoder_files(config: TrainConfig) -> None:
    """Make here, once, the files the frozen encoders load (the offline text encoder's TF-Hub conversion, random test
    weights): Beam's worker processes, building the encoders at once, then read them instead of each writing its own
    (random weights drawn in two processes need not agree)."""
    for encoder in frozen_encoders(config):
        if encoder.name == PLOT_EMBEDDING:
            resolve_text_handles(config.text)
        elif config.poster.weights == "random":
            load_backbone(config.poster)


def feature_caches(config: TrainConfig, prepared: PreparedDataset) -> dict[str, tuple]:
    """The cached inputs this model reads (ids, rows read from disk when asked) by input name, from the stores of its
    frozen encoders; movies never encoded are encoded here."""
    caches = {encoder.name: load_or_compute(prepared, encoder.name, encoder.key, encoder.build, encoder.input_name,
                                            image_size=encoder.image_size) for encoder in frozen_encoders(config)}
    if uses_text(config.model) and config.text.fine_tune_layers:
        caches[PLOT_STATES] = load_or_compute_states(prepared, cache_key(plot_states_identity(config.text)),
                                                     functools.partial(build_states_encoder, config.text))
    return caches


def cached_dims(caches: dict[str, tuple]) -> dict[str, int]:
    """The width of each cached feature input."""
    return {name: values.shape[1] for name, (_, values) in caches.items()}


def build_network(config: TrainConfig, num_genres: int, cached_dims: dict[str, int],
                  genre_frequency: np.ndarray | None = None) -> keras.Model:
    """The uncompiled model. Inputs in `cached_dims` (plot_embedding, poster_features) are cached features of that
    width; the other inputs are encoded inside: fine-tuned text, conv5 fine-tuning, or feature_cache=false. With
    plot_states there (text.fine_tune_layers), the encoder's top layers run inside on the cached states."""
    text_encoder = None
    if uses_text(config.model) and PLOT_STATES in cached_dims:
        text_encoder = build_text_top(config.text)
    elif uses_text(config.model) and PLOT_EMBEDDING not in cached_dims:
        text_encoder = build_text_encoder(config.text, trainable=fine_tunes_text(config.model))
    poster_encoder = (build_poster_encoder(config.poster)
                      if uses_poster(config.model) and POSTER_FEATURES not in cached_dims else None)
    return build_model(config.model, num_genres, text_dim=cached_dims.get(PLOT_EMBEDDING, 0),
                       poster_dim=cached_dims.get(POSTER_FEATURES, 0), text_encoder=text_encoder,
                       poster_encoder=poster_encoder, genre_frequency=genre_frequency)


def open_run_dataset(run_dir: str) -> PreparedDataset:
    """The prepared dataset a run trained on, refused if it changed since; the demo's is prepared again,
    identically, if the cache was emptied (the run directory itself does not know the demo)."""
    recorded = read_json(os.path.join(run_dir, "dataset.json")).get("path", "")
    if runs.load_config(run_dir).data == "demo" and not os.path.exists(recorded):
        prepared_demo()
    return runs.open_dataset(run_dir)


def restore_trained(run_dir: str) -> tuple[TrainConfig, PreparedDataset, keras.Model, dict]:
    """A run's config, its dataset (refused if changed since training), feature caches and best model."""
    config = runs.load_config(run_dir)
    runs.best_checkpoint(run_dir)  # before opening the dataset: a run without a checkpoint fails fast
    prepared = open_run_dataset(run_dir)
    caches = feature_caches(config, prepared) if config.feature_cache else {}
    with precision_policy(config):
        model = build_network(config, len(prepared.genres), cached_dims(caches),
                              split_labels(prepared, "train")["labels"].mean(axis=0))
    load_best_weights(model, run_dir)
    return config, prepared, model, caches
