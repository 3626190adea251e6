"""The exported model for TF Serving: raw plot text and poster bytes in, genre probabilities out.

The SavedModel holds the whole path (BERT preprocessing, poster decoding and the CNN's
preprocessing, the encoders and the trained head), the genre names and the thresholds tuned on dev.
A missing or undecodable poster is replaced by the mean training poster features, and an empty
plot by the mean training plot embedding, so every example gets a prediction; `inputs_used` says
which inputs it rests on.
"""
import dataclasses
import json
import os
import shutil
import time
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras

from genre_tf.dataset import MOVIE_ID, PLOT, PLOT_EMBEDDING, POSTER, POSTER_FEATURES, make_dataset, raw_examples
from genre_tf.encoders import build_poster_encoder, build_text_encoder, token_id_encoder
from genre_tf.images import decode_poster
from genre_tf.metrics import tune_thresholds
from genre_tf.baselines import degenerate_genres
from genre_tf.config import uses_poster, uses_text
from genre_tf.files import read_json
from genre_tf.models import build_model

FEATURES_SIGNATURE = "with_poster_features"
TOKEN_INPUTS = ("input_word_ids", "input_mask", "input_type_ids")
MEAN_SAMPLE = 1024  # training movies averaged for the missing-input fallbacks


@dataclasses.dataclass
class ServingParts:
    """What the serving graph is made of, taken from a restored run."""

    kind: str
    genres: list[str]
    thresholds: np.ndarray
    head: keras.Model                   # cached-feature inputs (plot_embedding, poster_features) -> probabilities
    text_encoder: keras.Model | None  # plot -> plot_embedding (or token ids -> plot_embedding)
    poster_encoder: keras.Model | None  # uint8 poster -> poster_features
    text_mean: np.ndarray
    poster_mean: np.ndarray
    image_size: int
    seq_length: int
    token_ids: bool = False
    degenerate: list[dict] = dataclasses.field(default_factory=list)  # genres the thresholds predict for ~everyone


def head_of(model: keras.Model, config, num_genres: int, text_dim: int, poster_dim: int) -> keras.Model:
    """The trained model's layers after the encoders, as a model over cached-feature inputs."""
    # The same layers over cached-feature inputs: a fine-tuned text head is the frozen one's architecture.
    kind = "text_frozen" if config.model.kind == "text_finetuned" else config.model.kind
    head = build_model(dataclasses.replace(config.model, kind=kind, fine_tune_text=False), num_genres,
                       text_dim=text_dim, poster_dim=poster_dim)
    for layer in head.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return head


def _train_mean(run, encoder: keras.Model, cache_name: str, input_name: str) -> np.ndarray:
    """The mean of an encoder's output over (up to MEAN_SAMPLE) training movies."""
    ids = run.prepared.split["train"][:MEAN_SAMPLE]
    if cache_name in run.caches:
        cached_ids, values = run.caches[cache_name]
        row = {movie_id: index for index, movie_id in enumerate(cached_ids)}
        return values[[row[i] for i in ids]].mean(axis=0).astype(np.float32)
    dataset = make_dataset(run.prepared, "train", 32, training=False, input_names=[MOVIE_ID, input_name],
                           image_size=run.config.poster.image_size).take(-(-len(ids) // 32))
    step = tf.function(lambda x: encoder(x, training=False))
    return np.concatenate([step(inputs[input_name]).numpy() for inputs, _ in dataset]).mean(axis=0)


def serving_parts(run, token_ids: bool = False) -> ServingParts:
    """Encoders (the trained ones when fine-tuned), head, dev-tuned thresholds and fallback means."""
    from genre_tf.evaluation import predict_split

    config = run.config
    if config.model.kind == "most_common":
        raise ValueError("the most-common-class baseline has nothing to export; it predicts the same genres always")
    dev = predict_split(run, "dev")
    text_encoder = poster_encoder = None
    text_mean, poster_mean = np.zeros(0, np.float32), np.zeros(0, np.float32)
    names = [layer.name for layer in run.model.layers]
    if uses_text(config.model):
        text_encoder = run.model.get_layer("text_encoder") if "text_encoder" in names else build_text_encoder(
            config.text)
        text_mean = _train_mean(run, text_encoder, PLOT_EMBEDDING, PLOT)
    if uses_poster(config.model):
        poster_encoder = (run.model.get_layer("poster_encoder") if "poster_encoder" in names
                          else build_poster_encoder(config.poster))
        poster_mean = _train_mean(run, poster_encoder, POSTER_FEATURES, POSTER)
    head = head_of(run.model, config, len(run.prepared.genres), text_dim=len(text_mean) or 384,
                   poster_dim=len(poster_mean) or 1)
    if token_ids and text_encoder is not None:
        text_encoder = token_id_encoder(text_encoder, config.text)
    thresholds = tune_thresholds(dev["labels"], dev["probabilities"])
    return ServingParts(config.model.kind, list(run.prepared.genres), thresholds, head, text_encoder, poster_encoder,
                        text_mean, poster_mean, config.poster.image_size, config.text.seq_length, token_ids,
                        degenerate_genres(dev["probabilities"], thresholds, run.prepared.genres))


class GenreModel(tf.Module):
    """The tf.Module saved for TF Serving; its signatures are the serving contract."""

    def __init__(self, parts: ServingParts):
        super().__init__(name="genre_tf")
        self.head, self.text_encoder, self.poster_encoder = parts.head, parts.text_encoder, parts.poster_encoder
        self.genre_names = tf.constant(parts.genres)
        self.thresholds = tf.constant(parts.thresholds, tf.float32)
        self.text_mean = tf.constant(parts.text_mean, tf.float32)
        self.poster_mean = tf.constant(parts.poster_mean, tf.float32)
        self.image_size, self.token_ids = parts.image_size, parts.token_ids
        self.poster_dim = int(parts.head.get_layer(POSTER_FEATURES).output.shape[-1]) if parts.poster_encoder else 1

    def decode_posters(self, poster):
        """uint8 [batch, size, size, 3] and a decoded flag; undecodable or empty bytes give zeros and False."""
        size = self.image_size
        count = tf.shape(poster)[0]
        decoded = (tf.data.Dataset.from_tensor_slices((tf.range(count), poster))
                   .map(lambda index, data: (index, decode_poster(data, size))).ignore_errors())
        images = tf.zeros([count, size, size, 3], tf.uint8)
        ok = tf.zeros([count], tf.bool)
        for index, image in decoded:
            images = tf.tensor_scatter_nd_update(images, [[index]], image[None])
            ok = tf.tensor_scatter_nd_update(ok, [[index]], [True])
        return images, ok

    def _text(self, text_inputs):
        """(plot_embedding, has_plot) from a plot string tensor or a dict of token ids."""
        if self.token_ids:
            has_plot = tf.reduce_sum(tf.cast(text_inputs["input_mask"], tf.int32), axis=1) > 2  # beyond [CLS] [SEP]
        else:
            has_plot = tf.strings.length(tf.strings.strip(text_inputs)) > 0
        if self.text_encoder is None:
            return None, has_plot
        embedding = self.text_encoder(text_inputs, training=False)
        return tf.where(has_plot[:, None], embedding, self.text_mean[None]), has_plot

    def _predict(self, text_inputs, poster_features, has_poster):
        embedding, has_plot = self._text(text_inputs)
        features = {}
        if embedding is not None:
            features[PLOT_EMBEDDING] = embedding
        if self.poster_encoder is not None:
            features[POSTER_FEATURES] = tf.where(has_poster[:, None], poster_features, self.poster_mean[None])
        probabilities = self.head(features, training=False)
        predicted = probabilities >= self.thresholds
        batch = tf.shape(probabilities)[0]
        names = tf.ragged.boolean_mask(tf.broadcast_to(self.genre_names, tf.shape(predicted)), predicted)
        used_plot = has_plot & (self.text_encoder is not None)
        used_poster = has_poster & (self.poster_encoder is not None)
        inputs_used = tf.where(used_plot & used_poster, "plot+poster",
                               tf.where(used_plot, "plot", tf.where(used_poster, "poster", "none")))
        return {"probabilities": probabilities, "predicted": predicted,
                "genres": tf.strings.reduce_join(names, axis=1, separator=", "),
                "inputs_used": tf.reshape(inputs_used, [batch])}

    def serve(self, text_inputs, poster):
        if self.poster_encoder is None:
            return self._predict(text_inputs, None, tf.zeros(tf.shape(poster), tf.bool))
        images, ok = self.decode_posters(poster)
        return self._predict(text_inputs, self.poster_encoder(images, training=False), ok)

    def serve_features(self, text_inputs, poster_features):
        has_poster = tf.reduce_any(tf.not_equal(poster_features, 0.0), axis=1)  # all zeros: no poster
        return self._predict(text_inputs, poster_features, has_poster)

    def signatures(self, seq_length: int) -> dict[str, tf.types.experimental.ConcreteFunction]:
        """serving_default (text + poster bytes) and with_poster_features (text + CNN features)."""
        poster = tf.TensorSpec([None], tf.string, name=POSTER)
        features = tf.TensorSpec([None, self.poster_dim], tf.float32, name=POSTER_FEATURES)
        if self.token_ids:
            specs = [tf.TensorSpec([None, seq_length], tf.int32, name=name) for name in TOKEN_INPUTS]

            def default(input_word_ids, input_mask, input_type_ids, poster):
                ids = dict(zip(TOKEN_INPUTS, (input_word_ids, input_mask, input_type_ids), strict=True))
                return self.serve(ids, poster)

            def with_features(input_word_ids, input_mask, input_type_ids, poster_features):
                ids = dict(zip(TOKEN_INPUTS, (input_word_ids, input_mask, input_type_ids), strict=True))
                return self.serve_features(ids,
                                           poster_features)
        else:
            specs = [tf.TensorSpec([None], tf.string, name=PLOT)]

            def default(plot, poster):
                return self.serve(plot, poster)

            def with_features(plot, poster_features):
                return self.serve_features(plot, poster_features)
        self.serve_default = tf.function(default, input_signature=[*specs, poster])
        self.serve_with_features = tf.function(with_features, input_signature=[*specs, features])
        return {"serving_default": self.serve_default.get_concrete_function(),
                FEATURES_SIGNATURE: self.serve_with_features.get_concrete_function()}


def non_stock_ops(export_dir: str) -> list[str]:
    """Op types in the SavedModel's graphs that stock TensorFlow does not register (e.g. tensorflow-text's)."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(export_dir, "saved_model.pb"), "rb") as handle:
        saved_model.ParseFromString(handle.read())
    ops, functions = set(), set()
    for meta_graph in saved_model.meta_graphs:
        graph = meta_graph.graph_def
        ops.update(node.op for node in graph.node)
        for function in graph.library.function:
            functions.add(function.signature.name)
            ops.update(node.op for node in function.node_def)
    return sorted(op for op in ops - functions if not hasattr(tf.raw_ops, op))


def warmup_requests(seq_length: int, token_ids: bool, model_name: str, poster_bytes: bytes,
                    plots: Sequence[str]) -> list[bytes]:
    """Serialized PredictionLogs for assets.extra/tf_serving_warmup_requests (batch sizes 1 and all)."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    logs = []
    for count in (1, len(plots)):
        request = predict_pb2.PredictRequest(
            model_spec=model_pb2.ModelSpec(name=model_name, signature_name="serving_default"))
        if token_ids:
            ids = np.zeros([count, seq_length], np.int32)
            ids[:, :2] = 1
            for name in TOKEN_INPUTS:
                request.inputs[name].CopyFrom(tf.make_tensor_proto(ids))
        else:
            request.inputs[PLOT].CopyFrom(tf.make_tensor_proto(list(plots[:count]), dtype=tf.string))
        request.inputs[POSTER].CopyFrom(tf.make_tensor_proto([poster_bytes] * count, dtype=tf.string))
        logs.append(prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request)).SerializeToString())
    return logs


def next_version(model_base: str) -> int:
    """One more than the largest integer version folder under model_base (1 for a new base)."""
    versions = [int(name) for name in os.listdir(model_base) if name.isdigit()] if os.path.isdir(model_base) else []
    return max(versions, default=0) + 1


def _without_keras_traces():
    """Skip tracing every Keras layer's call for reviving Keras objects: serving needs only the
    signatures, and this makes saving about 2.5x faster. A no-op context if tf-keras moves it."""
    import contextlib

    try:
        from tf_keras.src.saving.legacy.saved_model import utils
    except ImportError:
        return contextlib.nullcontext()
    return utils.keras_option_scope(save_traces=False, in_tf_saved_model_scope=True)


def export_run(run_dir: str, model_base: str, *, token_ids: bool = False, model_name: str = "genre_tf",
               version: int | None = None) -> str:
    """Export a trained run as MODEL_BASE/<version>/, written beside it first and renamed into place."""
    from genre_tf.evaluation import restore_run

    run = restore_run(run_dir)
    parts = serving_parts(run, token_ids=token_ids)
    module = GenreModel(parts)
    signatures = module.signatures(parts.seq_length)
    version = version or next_version(model_base)
    final = os.path.join(model_base, str(version))
    if os.path.exists(final):
        raise FileExistsError(f"{final} exists; TF Serving versions are immutable, choose another version")
    os.makedirs(model_base, exist_ok=True)
    staging = os.path.join(model_base, f".staging-{version}-{os.getpid()}")  # TF Serving ignores non-integers
    shutil.rmtree(staging, ignore_errors=True)
    started = time.time()
    try:
        with _without_keras_traces():
            tf.saved_model.save(module, staging, signatures=signatures)
        extra = os.path.join(staging, "assets.extra")
        os.makedirs(extra, exist_ok=True)
        plots, posters = raw_examples(run.prepared, "train", limit=4)
        with tf.io.TFRecordWriter(os.path.join(extra, "tf_serving_warmup_requests")) as writer:
            for record in warmup_requests(parts.seq_length, token_ids, model_name, posters[0], plots):
                writer.write(record)
        info = {"model": parts.kind, "genres": parts.genres, "thresholds": parts.thresholds.tolist(),
                "thresholds_from": "dev", "degenerate_genres": parts.degenerate,
                "run_dir": os.path.abspath(run_dir), "dataset": run.prepared.name,
                "token_id_inputs": token_ids, "text_preprocessor_handle": text_preprocessor_handle(run.config),
                "seq_length": parts.seq_length, "image_size": parts.image_size,
                "encoders": read_json(os.path.join(run_dir, "encoders.json")),
                "signatures": ["serving_default", FEATURES_SIGNATURE], "non_stock_ops": non_stock_ops(staging)}
        with open(os.path.join(extra, "export_info.json"), "w", encoding="utf-8") as handle:
            json.dump(info, handle, indent=1)
        os.rename(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"exported {parts.kind} to {final} in {time.time() - started:.0f} s; ops stock TensorFlow lacks: "
          f"{', '.join(info['non_stock_ops']) or 'none'}")
    return final


def text_preprocessor_handle(config) -> str:
    """The preprocessor a token-id client runs (empty for poster-only models)."""
    from genre_tf.encoders import resolve_text_handles

    return resolve_text_handles(config.text)[1] if uses_text(config.model) else ""


def latest_version(model_base: str) -> str:
    """MODEL_BASE/<largest integer version>, or model_base itself if it is a SavedModel folder."""
    if os.path.exists(os.path.join(model_base, "saved_model.pb")):
        return model_base
    versions = [int(name) for name in os.listdir(model_base) if name.isdigit()] if os.path.isdir(model_base) else []
    if not versions:
        raise FileNotFoundError(f"{model_base} holds no exported version (MODEL_BASE/<integer>/saved_model.pb)")
    return os.path.join(model_base, str(max(versions)))
