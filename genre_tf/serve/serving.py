"""The exported model for TF Serving: raw plot text and poster bytes in, genre probabilities out.

The SavedModel holds the whole path (BERT preprocessing, poster decoding and the CNN's
preprocessing, the encoders and the trained head), the genre names and the thresholds tuned on dev.
A missing or undecodable poster is replaced by the mean training poster features, and an empty
plot by the mean training plot embedding, so every example gets a prediction; `inputs_used` says
which inputs it rests on.
"""
import dataclasses
import os
import re
import shutil
import time
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras

from genre_tf.config import TrainConfig, uses_poster, uses_text
from genre_tf.data.dataset import PLOT, PLOT_EMBEDDING, PLOT_STATES, POSTER, POSTER_FEATURES
from genre_tf.data.images import decode_posters
from genre_tf.limits import MAX_PLOT_BYTES, MAX_REQUEST_MOVIES, PLOT_TOO_LONG
from genre_tf.files import read_json, refuse_to_write_into, staging_folder, write_json, write_text
from genre_tf.nets.encoders import (CHUNK_ROWS, build_poster_encoder, build_text_encoder, for_inference,
                                    length_chunked, resolve_text_handles, token_id_encoder, tuned_text_encoder)
from genre_tf.nets.models import HEAD, TEXT_TOP
from genre_tf.nets.network import build_network, load_best_weights, open_run_dataset, precision_policy
from genre_tf.run_dir import genres as run_genres, load_config, read_serving_files, require_finished

FEATURES_SIGNATURE = "with_poster_features"
# RE2, as records.has_words: after removing the blank Hangul fillers, a plot without a letter or digit is no plot
FILLERS = "[\u115f\u1160\u3164\uffa0]"
WORDLESS = r"[^\p{L}\p{N}]*"
TOKEN_INPUTS = ("input_word_ids", "input_mask", "input_type_ids")
PREPROCESSOR = os.path.join("assets.extra", "text_preprocessor")  # token-id exports: relative to the version
# TF Serving's --batching_parameters_file, tuned for CPUs (export/README.md, "Running TF Serving"). With large-batch
# splitting, max_batch_size bounds a request (the signature's own limit) and max_execution_batch_size the batches run.
BATCHING_CONFIG = f"""max_batch_size {{ value: {MAX_REQUEST_MOVIES} }}
enable_large_batch_splitting {{ value: true }}
max_execution_batch_size {{ value: 32 }}
batch_timeout_micros {{ value: 5000 }}
num_batch_threads {{ value: 2 }}
max_enqueued_batches {{ value: 100 }}
"""


@dataclasses.dataclass
class ServingParts:
    """What the serving graph is made of, rebuilt from a run directory."""

    kind: str
    genres: list[str]
    thresholds: np.ndarray
    head: keras.Model                   # genre_head: plot_embedding and/or poster_features -> genre logits
    text_encoder: keras.Model | None  # plot -> plot_embedding (or token ids -> plot_embedding)
    poster_encoder: keras.Model | None  # uint8 poster -> poster_features
    text_mean: np.ndarray
    poster_mean: np.ndarray
    image_size: int
    seq_length: int
    token_ids: bool = False
    pooling: str = "mean"
    degenerate: list[dict] = dataclasses.field(default_factory=list)  # genres the thresholds predict for ~everyone


def check_dataset(run_dir: str) -> None:
    """Refuse a run whose dataset changed since training; one not on this machine cannot be checked, and is not."""
    recorded = read_json(os.path.join(run_dir, "dataset.json"))
    if recorded.get("path") and os.path.exists(recorded["path"]):
        open_run_dataset(run_dir)
    else:
        print(f"note: the dataset {run_dir} was trained on is not on this machine ({recorded.get('path')}); "
              "exporting from the run directory alone")


def restore_model(run_dir: str, config: TrainConfig, num_genres: int, record: dict) -> keras.Model:
    """The trained model rebuilt from config.json and the serving record, with the best checkpoint loaded."""
    cached = {name: record["feature_dims"][name] for name in record["model_inputs"]
              if name in (PLOT_EMBEDDING, POSTER_FEATURES)}
    if PLOT_STATES in record["model_inputs"]:  # text.fine_tune_layers: states as wide as the plot embedding
        cached[PLOT_STATES] = record["feature_dims"][PLOT_EMBEDDING]
    with precision_policy(config):
        model = build_network(config, num_genres, cached)
    load_best_weights(model, run_dir)
    return model


def serving_parts(run_dir: str, config: TrainConfig, record: dict, token_ids: bool = False) -> ServingParts:
    """Encoders (the checkpoint's when trained inside the model, else pretrained from the config), head,
    dev-tuned thresholds and fallback means, from the run directory alone."""
    genres = run_genres(run_dir)
    model = restore_model(run_dir, config, len(genres), record)
    means = {name: np.asarray(values, np.float32) for name, values in record["fallback_means"].items()}
    text_encoder = poster_encoder = None
    with precision_policy(config):
        if PLOT_STATES in model.input_names:
            text_encoder = tuned_text_encoder(config.text, model.get_layer(TEXT_TOP))
        elif uses_text(config.model):
            text_encoder = model.get_layer("text_encoder") if PLOT in model.input_names else build_text_encoder(
                config.text)
        if uses_poster(config.model):
            poster_encoder = for_inference(model.get_layer("poster_encoder") if POSTER in model.input_names
                                           else build_poster_encoder(config.poster))
        if token_ids and text_encoder is not None:
            text_encoder = token_id_encoder(text_encoder, config.text)
    empty = np.zeros(0, np.float32)
    return ServingParts(config.model.kind, genres, np.asarray(record["thresholds"]), model.get_layer(HEAD),
                        text_encoder, poster_encoder, means.get(PLOT_EMBEDDING, empty),
                        means.get(POSTER_FEATURES, empty), config.poster.image_size, config.text.seq_length,
                        token_ids, config.text.pooling, record["degenerate_genres"])


class GenreModel(tf.Module):
    """The tf.Module saved for TF Serving; its signatures are the serving contract."""

    def __init__(self, parts: ServingParts, chunk_rows: int = CHUNK_ROWS):
        super().__init__(name="genre_tf")
        self.head, self.text_encoder, self.poster_encoder = parts.head, parts.text_encoder, parts.poster_encoder
        # Plots padded to their neighbours' length, not the request's longest (the same embeddings, less work);
        # chunk_rows=0 pads every plot to the request's longest, as exports did before (bench speed compares).
        chunked = chunk_rows and isinstance(parts.text_encoder, keras.Model)
        self.embed_plots = length_chunked(parts.text_encoder, parts.pooling, chunk_rows) if chunked else (
            parts.text_encoder)
        self.genre_names = tf.constant(parts.genres)
        self.thresholds = tf.constant(parts.thresholds, tf.float32)
        self.text_mean = tf.constant(parts.text_mean, tf.float32)
        self.poster_mean = tf.constant(parts.poster_mean, tf.float32)
        self.image_size, self.token_ids = parts.image_size, parts.token_ids
        self.poster_dim = int(parts.head.get_layer(POSTER_FEATURES).output.shape[-1]) if parts.poster_encoder else 1

    def _text(self, text_inputs):
        """(plot_embedding, has_plot) from a plot string tensor or a dict of token ids."""
        if self.token_ids:
            has_plot = tf.reduce_sum(tf.cast(text_inputs["input_mask"], tf.int32), axis=1) > 2  # beyond [CLS] [SEP]
        else:  # nothing but spaces, control and format characters (NUL, zero-width spaces, BOMs): no plot
            # bytes that are not UTF-8 become U+FFFD first: RE2 would take them for characters of a plot
            readable = tf.strings.unicode_transcode(text_inputs, "UTF-8", "UTF-8", errors="replace")
            has_plot = ~tf.strings.regex_full_match(tf.strings.regex_replace(readable, FILLERS, ""), WORDLESS)
        if self.text_encoder is None:
            return None, has_plot
        embedding = self.embed_plots(text_inputs)
        return tf.where(has_plot[:, None], embedding, self.text_mean[None]), has_plot

    def _predict(self, text_inputs, poster_features, has_poster):
        embedding, has_plot = self._text(text_inputs)
        features = {}
        if embedding is not None:
            features[PLOT_EMBEDDING] = embedding
        if self.poster_encoder is not None:
            features[POSTER_FEATURES] = tf.where(has_poster[:, None], poster_features, self.poster_mean[None])
        probabilities = tf.debugging.assert_all_finite(  # an answer of NaN is no answer: refuse it
            tf.sigmoid(tf.cast(self.head(features, training=False), tf.float32)),
            "the model computed a non-finite probability (NaN or Inf)")
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

    def _checked(self, text_inputs, poster, poster_name: str):
        """(text_inputs, poster), once the request is checked: one poster row per plot (broadcasting would mix up
        or drop movies), at most MAX_REQUEST_MOVIES movies, plots of at most MAX_PLOT_BYTES bytes (prepare's limit)."""
        plots = text_inputs[TOKEN_INPUTS[0]] if self.token_ids else text_inputs
        checks = [tf.debugging.assert_equal(tf.shape(plots)[0], tf.shape(poster)[0],
                                            message=f"plot and {poster_name} batches must have the same length"),
                  tf.debugging.assert_less_equal(tf.shape(plots)[0], MAX_REQUEST_MOVIES,
                                                 message=f"a request holds at most {MAX_REQUEST_MOVIES} movies"),
                  tf.debugging.assert_positive(tf.shape(plots)[0], message="a request holds at least 1 movie")]
        if not self.token_ids:
            checks.append(tf.debugging.assert_less_equal(
                tf.strings.length(plots), MAX_PLOT_BYTES, message=PLOT_TOO_LONG))
        with tf.control_dependencies(checks):  # before any op reads the inputs: a refused request costs nothing
            return tf.nest.map_structure(tf.identity, (text_inputs, poster))

    def serve(self, text_inputs, poster):
        text_inputs, poster = self._checked(text_inputs, poster, POSTER)
        if self.poster_encoder is None:
            return self._predict(text_inputs, None, tf.zeros(tf.shape(poster), tf.bool))
        images, ok = decode_posters(poster, self.image_size)
        return self._predict(text_inputs, self.poster_encoder(images, training=False), ok)

    def serve_features(self, text_inputs, poster_features):
        text_inputs, poster_features = self._checked(text_inputs, poster_features, POSTER_FEATURES)
        poster_features = tf.debugging.assert_all_finite(  # NaN or Inf would answer about 0.5 for every genre
            poster_features, "poster_features must be finite numbers (no NaN or Inf)")
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


def refuse_non_finite_weights(run_dir: str, parts: ServingParts) -> None:
    """A checkpoint with NaN or Inf weights would answer NaN for every movie: refuse to export it."""
    for model in (parts.head, parts.text_encoder, parts.poster_encoder):
        if model is not None and not all(np.isfinite(weight).all() for weight in model.get_weights()):
            raise ValueError(f"{run_dir}'s best checkpoint holds non-finite weights (NaN or Inf) in {model.name}; "
                             "retrain the run with a lower learning_rate")


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
               version: int | None = None, allow_unfinished: bool = False, precision: str = "",
               chunk_rows: int = CHUNK_ROWS) -> str:
    """Export a trained run as MODEL_BASE/<version>/, from its run directory alone, staged beside it and renamed.

    A run still training or stopped early is refused unless allowed; so is one whose dataset, when it is on
    this machine, has changed since training. `precision` (float32 or bfloat16) sets the encoders' compute dtype
    in the export whatever the run trained with; empty keeps the run's. `chunk_rows`: GenreModel's.
    """
    if version is not None and version < 1:
        raise ValueError(f"version must be a positive integer (TF Serving loads folders 1, 2, ...), got {version}")
    config = computing_in(load_config(run_dir), precision)
    if config.model.kind == "most_common":
        raise ValueError("the most-common-class baseline has nothing to export; it predicts the same genres always")
    require_finished(run_dir, allow_unfinished)
    check_dataset(run_dir)
    record, warmup_poster = read_serving_files(run_dir)
    parts = serving_parts(run_dir, config, record, token_ids=token_ids)
    refuse_non_finite_weights(run_dir, parts)
    module = GenreModel(parts, chunk_rows)
    signatures = module.signatures(parts.seq_length)
    refuse_to_write_into(model_base, "--out", {})  # inside its run is fine: export reads only what it names
    version = version or next_version(model_base)
    final = os.path.join(model_base, str(version))
    if os.path.exists(final):
        raise FileExistsError(f"{final} exists; TF Serving versions are immutable, choose another version")
    staging = staging_folder(model_base, f"staging-{version}")  # TF Serving ignores names that are not integers
    started = time.time()
    try:
        with _without_keras_traces():
            tf.saved_model.save(module, staging, signatures=signatures)
        info = write_extras(staging, run_dir, config, parts, (record["warmup_plots"], warmup_poster), model_name)
        try:
            os.rename(staging, final)  # a plain rename, not atomic_path's swap: an existing version is never replaced
        except OSError:
            if not os.path.exists(final):
                raise
            raise FileExistsError(f"{final} was written by another export meanwhile; TF Serving versions are "
                                  "immutable, so this export is dropped: run it again for the next version") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not os.path.exists(os.path.join(model_base, "batching.config")):  # never overwrite a tuned one
        write_text(os.path.join(model_base, "batching.config"), BATCHING_CONFIG)
    print(f"exported {parts.kind} to {final} in {time.time() - started:.0f} s; ops stock TensorFlow lacks: "
          f"{', '.join(info['non_stock_ops']) or 'none'}")
    return final


def computing_in(config: TrainConfig, precision: str) -> TrainConfig:
    """The run's config with its encoders computing in `precision` over the same float32 weights (the poster's
    always; the text's when it is an offline conversion with no fine-tuned layers, as text.precision allows); empty
    changes nothing."""
    if not precision:
        return config
    if precision not in ("float32", "bfloat16"):
        raise ValueError(f"the export precision must be float32 or bfloat16, got {precision!r}")
    keep = config.text.encoder or config.text.fine_tune_layers
    text = config.text if keep else dataclasses.replace(config.text, precision=precision)
    return dataclasses.replace(config, text=text, poster=dataclasses.replace(config.poster, precision=precision))


def write_extras(version_dir: str, run_dir: str, config: TrainConfig, parts: ServingParts,
                 warmup: tuple[list[str], bytes], model_name: str) -> dict:
    """assets.extra: TF Serving's warm-up requests, export_info.json and, for token ids, the text preprocessor."""
    extra = os.path.join(version_dir, "assets.extra")
    os.makedirs(extra, exist_ok=True)
    plots, poster = warmup
    with tf.io.TFRecordWriter(os.path.join(extra, "tf_serving_warmup_requests")) as writer:
        for request in warmup_requests(parts.seq_length, parts.token_ids, model_name, poster, plots):
            writer.write(request)
    preprocessor = ""
    if parts.token_ids and uses_text(config.model):
        import tensorflow_hub as hub

        # A copy inside the version, named relative to it: the model folder works on any machine.
        shutil.copytree(hub.resolve(resolve_text_handles(config.text)[1]), os.path.join(version_dir, PREPROCESSOR))
        preprocessor = PREPROCESSOR
    info = {"model": parts.kind, "genres": parts.genres, "thresholds": parts.thresholds.tolist(),
            "thresholds_from": "dev", "degenerate_genres": parts.degenerate,
            "run": os.path.basename(os.path.normpath(run_dir)),
            "dataset": read_json(os.path.join(run_dir, "dataset.json"))["name"],
            "token_id_inputs": parts.token_ids, "text_preprocessor_handle": preprocessor,
            "inputs": [name for name, encoder in ((PLOT, parts.text_encoder), (POSTER, parts.poster_encoder))
                       if encoder is not None],
            "seq_length": parts.seq_length, "image_size": parts.image_size,
            "encoders": without_machine_paths(read_json(os.path.join(run_dir, "encoders.json"))),
            "precision": {"text": config.text.precision, "poster": config.poster.precision},
            "signatures": ["serving_default", FEATURES_SIGNATURE], "non_stock_ops": non_stock_ops(version_dir)}
    write_json(os.path.join(extra, "export_info.json"), info)
    return info


def without_machine_paths(value):
    """The record with every absolute local path cut to its last component (URLs are kept whole)."""
    if isinstance(value, dict):
        return {key: without_machine_paths(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_machine_paths(item) for item in value]
    if isinstance(value, str):
        return re.sub(r"(?<![\w:/.])/[^\s,;()]+", lambda match: os.path.basename(match.group().rstrip("/")), value)
    return value
