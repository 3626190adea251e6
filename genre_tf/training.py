"""One training run: data and caches in, a run directory with checkpoints and TensorBoard logs out."""
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf
import tf_keras as keras

from genre_tf import demo
from genre_tf.config import TrainConfig, config_to_dict, dump_config, fine_tunes_text, uses_poster, uses_text
from genre_tf.dataset import PLOT, PLOT_EMBEDDING, POSTER_FEATURES, PreparedDataset, load_prepared, make_dataset
from genre_tf.encoders import (build_poster_encoder, build_text_encoder, describe_encoders, encoders_summary,
                               poster_encoder_identity, resolve_backbone, text_encoder_identity)
from genre_tf.features import load_or_compute
from genre_tf.losses import SoftF1Loss, WeightedBinaryCrossentropy, inverse_frequency_weights
from genre_tf.metrics import f1_scores
from genre_tf.files import cache_key, cache_root, read_json, write_json
from genre_tf.models import build_model
from genre_tf.split import frequency_table, multi_hot, oversample_counts

BEST = "best"


def demo_dataset(config: demo.DemoConfig | None = None) -> str:
    """The prepared synthetic demo catalogue, generated and prepared once into the cache."""
    config = config or demo.DemoConfig()
    from genre_tf.prepare import PrepareConfig, prepare
    from genre_tf.records import ValidationRules

    root = os.path.join(cache_root(), "demo", cache_key(json.dumps(dataclasses.asdict(config)), "v2"))
    prepared = os.path.join(root, "prepared")
    if not os.path.exists(prepared):
        print(f"generating the SYNTHETIC demo catalogue ({config.num_movies} movies) under {root}")
        csv_path = demo.write_demo_catalogue(os.path.join(root, "raw"), config)
        prepare(PrepareConfig(catalogue=csv_path, out=prepared, name=demo.DEMO_NAME,
                              rules=ValidationRules(image_size=config.poster_size)), progress=False)
    return prepared


def open_dataset(config: TrainConfig) -> PreparedDataset:
    """The prepared dataset a config names (the demo is prepared on first use)."""
    return load_prepared(demo_dataset() if config.data == "demo" else config.data)


def split_labels(prepared: PreparedDataset, split: str) -> dict[str, np.ndarray]:
    """Ids and multi-hot labels of one split, in the split's order."""
    genres_of = {movie["movie_id"]: movie["genres"] for movie in prepared.movies()}
    ids = prepared.split[split]
    return {"ids": ids, "labels": multi_hot([genres_of[i] for i in ids], prepared.genres)}


def default_run_dir(config: TrainConfig, prepared: PreparedDataset) -> str:
    """runs/<dataset>-<model>[-os][-N]: the first such folder that is not finished, so a rerun resumes."""
    base = os.path.join("runs", f"{prepared.name}-{config.model.kind}{'-os' if config.oversample else ''}")
    candidate, number = base, 1
    while os.path.exists(os.path.join(candidate, "final.json")):
        number += 1
        candidate = f"{base}-{number}"
    return candidate


def prepare_run_dir(config: TrainConfig, prepared: PreparedDataset) -> str:
    """Create (or reopen, to resume) the run directory; a reopened one must have the same config."""
    run_dir = config.run_dir or default_run_dir(config, prepared)
    config_path = os.path.join(run_dir, "config.json")
    resolved = dataclasses.replace(config, run_dir=run_dir)
    encoders = describe_encoders(config.model, config.text, config.poster)
    if os.path.exists(config_path):
        with open(config_path, encoding="utf-8") as handle:
            if json.load(handle) != config_to_dict(resolved):
                raise ValueError(f"{run_dir} holds a run with another config; choose another run_dir")
        recorded = read_json(os.path.join(run_dir, "encoders.json"))
        if recorded != encoders:
            raise ValueError(f"{run_dir} was trained with encoders {recorded}, but this machine resolves the same "
                             f"config to {encoders}; set poster.backbone explicitly or choose another run_dir")
        print(f"resuming the run in {run_dir}")
        return run_dir
    os.makedirs(run_dir, exist_ok=True)
    dump_config(resolved, config_path)
    write_json(os.path.join(run_dir, "encoders.json"), encoders)
    shutil.copy(os.path.join(prepared.path, "genres.txt"), os.path.join(run_dir, "genres.txt"))
    write_json(os.path.join(run_dir, "dataset.json"), {
        "path": os.path.abspath(prepared.path), "name": prepared.name, "fingerprint": prepared.fingerprint,
        "split": prepared.split})
    return run_dir


def feature_caches(config: TrainConfig, prepared: PreparedDataset) -> dict[str, tuple]:
    """The cached inputs this model reads: poster features and, for a frozen encoder, plot embeddings."""
    caches = {}
    if uses_poster(config.model) and not config.poster.fine_tune_last_stage:
        key = cache_key(poster_encoder_identity(config.poster), prepared.fingerprint)
        caches[POSTER_FEATURES] = load_or_compute(
            prepared, POSTER_FEATURES, key, lambda: build_poster_encoder(config.poster), "poster",
            image_size=config.poster.image_size)
    if uses_text(config.model) and not fine_tunes_text(config.model):
        key = cache_key(text_encoder_identity(config.text), prepared.fingerprint)
        caches[PLOT_EMBEDDING] = load_or_compute(
            prepared, PLOT_EMBEDDING, key, lambda: build_text_encoder(config.text), PLOT)
    return caches


def make_strategy(name: str) -> tf.distribute.Strategy:
    """TensorFlow's own distribution: Mirrored across local GPUs, MultiWorkerMirrored across machines.

    multi_worker reads the cluster from TF_CONFIG and must be created before any other TensorFlow op.
    """
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "mirrored" or (name == "auto" and len(tf.config.list_physical_devices("GPU")) > 1):
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process owns the run directory: always, except for non-chief multi-worker tasks."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    if "chief" in resolver.cluster_spec().as_dict():
        return resolver.task_type == "chief"
    return resolver.task_type == "worker" and resolver.task_id == 0


def make_predictor(model: keras.Model):
    """A function from a (finite, ordered) dataset to the model's probabilities, computed locally.

    Every worker of a multi-worker run evaluates the whole dev set itself, so they take identical
    early-stopping decisions without a collective. The step is traced once per predictor.
    """
    step = tf.function(lambda inputs: model(inputs, training=False), reduce_retracing=True)
    return lambda dataset: np.concatenate([step(inputs).numpy() for inputs, _ in dataset])


def make_loss(config: TrainConfig, train_labels: np.ndarray) -> keras.losses.Loss:
    """The configured loss; weighted_bce weights positives by inverse training frequency."""
    if config.loss == "soft_f1":
        return SoftF1Loss()
    if config.loss == "weighted_bce":
        return WeightedBinaryCrossentropy(inverse_frequency_weights(train_labels))
    return WeightedBinaryCrossentropy(None, name="bce")


def save_best(model: keras.Model, run_dir: str) -> None:
    """Replace checkpoints/best without ever leaving it missing or half-written."""
    checkpoints = os.path.join(run_dir, "checkpoints")
    staging, final, old = (os.path.join(checkpoints, name) for name in (f"{BEST}.new", BEST, f"{BEST}.old"))
    shutil.rmtree(staging, ignore_errors=True)
    model.save_weights(os.path.join(staging, "weights"))
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(final):
        os.rename(final, old)
    os.rename(staging, final)
    shutil.rmtree(old, ignore_errors=True)


def best_checkpoint(run_dir: str) -> str:
    """The best checkpoint's prefix (falling back to the previous one if a swap was interrupted)."""
    for name in (BEST, f"{BEST}.old"):
        folder = os.path.join(run_dir, "checkpoints", name)
        if os.path.exists(os.path.join(folder, "weights.index")):
            return os.path.join(folder, "weights")
    raise FileNotFoundError(f"{run_dir} has no checkpoint (checkpoints/{BEST}); train it first")


class DevEvaluation(keras.callbacks.Callback):
    """Each epoch: weighted/macro/micro and per-genre F1 over the whole dev set, best checkpoint, early stop."""

    def __init__(self, dev_dataset, dev_labels, genres, run_dir, patience):
        super().__init__()
        self.dev_dataset, self.dev_labels, self.genres = dev_dataset, dev_labels, genres
        self.run_dir, self.patience = run_dir, patience
        self.predict = None
        self.state_path = os.path.join(run_dir, "training_state.json")
        self.state = {"best_weighted_f1": -1.0, "best_epoch": -1, "history": []}
        if os.path.exists(self.state_path):
            with open(self.state_path, encoding="utf-8") as handle:
                self.state = json.load(handle)
        self.writer = tf.summary.create_file_writer(os.path.join(run_dir, "logs", "dev"))

    def on_epoch_end(self, epoch, logs=None):
        if self.predict is None:
            self.predict = make_predictor(self.model)
        probabilities = self.predict(self.dev_dataset)
        scores = f1_scores(self.dev_labels, probabilities >= 0.5)
        optimizer = self.model.optimizer
        with self.writer.as_default(step=epoch):
            for name in ("weighted_f1", "macro_f1", "micro_f1", "samples_f1"):
                tf.summary.scalar(f"dev/{name}", scores[name])
            for genre, value in zip(self.genres, scores["f1"], strict=True):
                tf.summary.scalar(f"dev_genre_f1/{genre}", value)
            if optimizer is not None:
                tf.summary.scalar("learning_rate", float(keras.backend.get_value(optimizer.learning_rate)))
        self.writer.flush()
        improved = scores["weighted_f1"] > self.state["best_weighted_f1"]
        if improved:
            self.state.update(best_weighted_f1=scores["weighted_f1"], best_epoch=epoch)
            save_best(self.model, self.run_dir)
        self.state["history"].append({"epoch": epoch, "loss": float((logs or {}).get("loss", np.nan)),
                                      "dev_weighted_f1": scores["weighted_f1"], "dev_macro_f1": scores["macro_f1"],
                                      "dev_micro_f1": scores["micro_f1"]})
        print(f"epoch {epoch + 1}: loss {self.state['history'][-1]['loss']:.4f}  dev weighted F1 "
              f"{scores['weighted_f1']:.4f}{'  (best, saved)' if improved else ''}", flush=True)
        staging = f"{self.state_path}.tmp"
        with open(staging, "w", encoding="utf-8") as handle:
            json.dump(self.state, handle, indent=1)
        os.replace(staging, self.state_path)
        if epoch - self.state["best_epoch"] >= self.patience:
            print(f"early stop: no dev improvement in {self.patience} epochs")
            self.model.stop_training = True


def log_hparams(config: TrainConfig, run_dir: str) -> None:
    """Record the run's hyperparameters for TensorBoard's HParams dashboard."""
    from tensorboard.plugins.hparams import api as hp

    flat = {"model": config.model.kind, "loss": config.loss, "learning_rate": config.learning_rate,
            "batch_size": config.batch_size, "dropout": config.model.dropout, "l2": config.model.l2,
            "oversample": config.oversample, "fine_tune_text": fine_tunes_text(config.model),
            "seq_length": config.text.seq_length, "poster_backbone": resolve_backbone(config.poster),
            "poster_weights": config.poster.weights}
    with tf.summary.create_file_writer(os.path.join(run_dir, "logs", "hparams")).as_default():
        hp.hparams(flat, trial_id=os.path.basename(os.path.normpath(run_dir)))


def train_repeat_counts(config: TrainConfig, prepared: PreparedDataset, train: dict, run_dir: str) -> dict | None:
    """Oversampling as copies per training id; prints the paper's Table 2 before and after."""
    if not config.oversample:
        return None
    counts = oversample_counts(train["labels"], config.oversample_genres, config.oversample_fraction, config.seed)
    print(frequency_table(prepared.genres, {"train": train["labels"],
                                            "train OS": np.repeat(train["labels"], counts, axis=0)}))
    repeat = {movie_id: int(n) for movie_id, n in zip(train["ids"], counts, strict=True)}
    with open(os.path.join(run_dir, "oversampled_counts.json"), "w", encoding="utf-8") as handle:
        json.dump(repeat, handle)
    return repeat


def build_for_training(config: TrainConfig, prepared: PreparedDataset, train_labels: np.ndarray,
                       caches: dict[str, tuple]) -> keras.Model:
    """The compiled model (inside the active distribution strategy's scope).

    Inputs without a cache are encoded inside the model: fine-tuned text, conv5 fine-tuning, or
    feature_cache=false.
    """
    fine_tune = fine_tunes_text(config.model)
    text_encoder = (build_text_encoder(config.text, trainable=fine_tune)
                    if uses_text(config.model) and PLOT_EMBEDDING not in caches else None)
    poster_encoder = (build_poster_encoder(config.poster)
                      if uses_poster(config.model) and POSTER_FEATURES not in caches else None)
    text_dim = caches[PLOT_EMBEDDING][1].shape[1] if PLOT_EMBEDDING in caches else 0
    poster_dim = caches[POSTER_FEATURES][1].shape[1] if POSTER_FEATURES in caches else 0
    model = build_model(config.model, len(prepared.genres), text_dim=text_dim, poster_dim=poster_dim,
                        text_encoder=text_encoder, poster_encoder=poster_encoder,
                        genre_frequency=train_labels.mean(axis=0))
    if config.model.kind != "most_common":
        model.compile(optimizer=keras.optimizers.Adam(config.learning_rate),
                      loss=make_loss(config, train_labels), jit_compile=config.xla)
    return model


def train(config: TrainConfig) -> str:
    """Train one model as configured; returns its run directory (resumable if interrupted)."""
    strategy = make_strategy(config.distribute)  # first: multi-worker must precede other ops
    keras.utils.set_random_seed(config.seed)
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    prepared = open_dataset(config)
    chief = is_chief(strategy)
    # Non-chief workers run the same callbacks (saving may involve collectives) into a scratch folder.
    shared_run_dir = config.run_dir or default_run_dir(config, prepared)
    run_dir = (prepare_run_dir(dataclasses.replace(config, run_dir=shared_run_dir), prepared) if chief
               else tempfile.mkdtemp(prefix="genre_tf_worker_"))
    print(f"dataset {prepared.name} ({'SYNTHETIC' if prepared.name == demo.DEMO_NAME else 'catalogue'}), "
          f"model {config.model.kind}, run directory {run_dir}")
    print(f"encoders: {encoders_summary(describe_encoders(config.model, config.text, config.poster))}")
    train, dev = split_labels(prepared, "train"), split_labels(prepared, "dev")
    caches = feature_caches(config, prepared) if config.feature_cache else {}
    with strategy.scope():
        model = build_for_training(config, prepared, train["labels"], caches)
    input_names = list(model.input_names)
    common = dict(input_names=input_names, image_size=config.poster.image_size, feature_caches=caches)
    global_batch = config.batch_size * strategy.num_replicas_in_sync
    dev_dataset = make_dataset(prepared, "dev", global_batch, training=False, **common)
    callback = DevEvaluation(dev_dataset, dev["labels"], prepared.genres, run_dir, config.patience)
    started = time.time()
    if config.model.kind == "most_common":
        callback.set_model(model)
        callback.on_epoch_end(0)
    else:
        repeat = train_repeat_counts(config, prepared, train, run_dir)
        # Only small cached features are kept in memory; decoded posters and plots are re-read.
        only_features = set(input_names) <= {PLOT_EMBEDDING, POSTER_FEATURES}
        train_dataset = make_dataset(prepared, "train", global_batch, training=True, repeat_counts=repeat,
                                     cache=only_features, seed=config.seed, **common)
        log_hparams(config, run_dir)
        # BackupAndRestore sends non-chief workers' writes to temporary folders itself.
        callbacks = [keras.callbacks.BackupAndRestore(os.path.join(shared_run_dir, "backup")), callback,
                     keras.callbacks.TensorBoard(os.path.join(run_dir, "logs"), profile_batch=0)]
        model.fit(train_dataset, epochs=config.epochs, callbacks=callbacks,
                  verbose=1 if sys.stdout.isatty() else 2)
    summary = {"model": config.model.kind, "dataset": prepared.name, "seconds": round(time.time() - started, 1),
               "replicas": strategy.num_replicas_in_sync, "global_batch": global_batch,
               "best_dev_weighted_f1": callback.state["best_weighted_f1"],
               "best_epoch": callback.state["best_epoch"] + 1,
               "most_common_dev_weighted_f1": most_common_score(train["labels"], dev["labels"])}
    if not chief:
        shutil.rmtree(run_dir, ignore_errors=True)
        return shared_run_dir
    with open(os.path.join(run_dir, "final.json"), "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=2)
    return run_dir


def most_common_score(train_labels: np.ndarray, dev_labels: np.ndarray) -> float:
    """Dev weighted F1 of the most-common-class baseline (section 4.1), for comparison in every run."""
    majority = (train_labels.mean(axis=0) > 0.5).astype(np.int32)
    return f1_scores(dev_labels, np.tile(majority, (len(dev_labels), 1)))["weighted_f1"]
