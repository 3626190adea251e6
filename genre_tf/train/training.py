"""One training run: data and caches in; a run directory with checkpoints, history, logs and serving files out."""
import csv
import dataclasses
import glob
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf
import tf_keras as keras

from genre_tf import run_dir as runs
from genre_tf.config import (TrainConfig, config_to_dict, fine_tunes_text, late_fusion, training_length, uses_poster,
                             uses_text)
from genre_tf.data.dataset import (PLOT, PLOT_EMBEDDING, PLOT_MASK, PLOT_STATES, POSTER, POSTER_FEATURES,
                                   PreparedDataset, make_dataset, raw_examples, split_labels)
from genre_tf.data.demo import DEMO_NAME, open_prepared
from genre_tf.data.features import mean_features
from genre_tf.data.split import frequency_table, oversample_counts
from genre_tf.evaluate.baselines import degenerate_genres
from genre_tf.evaluate.metrics import f1_scores, tune_thresholds, unseen_genres
from genre_tf.files import write_json
from genre_tf.nets.encoders import describe_encoders, encoders_summary, resolve_backbone
from genre_tf.nets.models import HEAD, TEXT_TOP, TopLayersModel
from genre_tf.nets.network import (build_network, cached_dims, feature_caches, load_best_weights, make_predictor,
                                   restore_trained)
from genre_tf.run_dir import (BEST, DEV_SCORES, FINAL, HISTORY, MONITOR, RunDirectoryInUse, best_row, read_history,
                              stored_dev_probabilities, write_out_of_fold)
from genre_tf.train.calibrator import calibrate_run
from genre_tf.train.callbacks import (BestCheckpoint, DevF1, EpochSeededDropout, ResumeProgress, StopOnNonFiniteLoss,
                                      backup_epoch, save_checkpoint)
from genre_tf.train.fusion import branch_logits, copy_branch_weights, fit_mix
from genre_tf.train.losses import (AsymmetricLoss, SoftF1Loss, SoftF1PlusCrossentropy, WeightedBinaryCrossentropy,
                                   inverse_frequency_weights)

__all__ = ["RunDirectoryInUse", "train", "build_for_training", "finalise_run"]

WARMUP_EXAMPLES = 4
MEAN_SAMPLE = 1024  # training movies averaged for the missing-input fallbacks


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


def make_loss(config: TrainConfig, train_labels: np.ndarray) -> keras.losses.Loss:
    """The configured loss; weighted_bce weights positives by inverse training frequency."""
    if config.loss == "soft_f1":
        return SoftF1Loss()
    if config.loss == "weighted_bce":
        return WeightedBinaryCrossentropy(inverse_frequency_weights(train_labels))
    if config.loss == "soft_f1_bce":
        return SoftF1PlusCrossentropy()
    if config.loss == "asl":
        return AsymmetricLoss()
    return WeightedBinaryCrossentropy(None, name="bce")


def training_labels(config: TrainConfig, prepared: PreparedDataset) -> dict[str, np.ndarray]:
    """Ids and labels of the training movies the model learns from: every one for a text model, those with a poster
    for a model that reads posters (a text-only movie would teach it the mean poster, not a poster)."""
    train = split_labels(prepared, "train")
    if not uses_poster(config.model):
        return train
    wanted = set(prepared.ids_with_poster("train"))
    rows = [row for row, movie_id in enumerate(train["ids"]) if movie_id in wanted]
    return {"ids": [train["ids"][row] for row in rows], "labels": train["labels"][rows]}


def refuse_raw_posters_without_poster(config: TrainConfig, prepared: PreparedDataset) -> None:
    """Refuse a model that reads decoded posters (not cached features) on a dataset with text-only movies: no image
    stands for the mean training poster that serving and cached features give a movie without one."""
    raw_posters = config.poster.fine_tune_last_stage or not config.feature_cache
    if uses_poster(config.model) and raw_posters and prepared.text_only_movies:
        raise ValueError(f"{prepared.path} holds {prepared.text_only_movies} text-only movie(s) (no poster), and this "
                         "model reads decoded posters (poster.fine_tune_last_stage=true or feature_cache=false); use "
                         "cached poster features (the default), or a dataset prepared with rules.require_poster=true")


def build_for_training(config: TrainConfig, prepared: PreparedDataset, train_labels: np.ndarray,
                       caches: dict[str, tuple]) -> keras.Model:
    """The compiled model (inside the active distribution strategy's scope)."""
    model = build_network(config, len(prepared.genres), cached_dims(caches), train_labels.mean(axis=0))
    if config.model.kind != "most_common":
        model.compile(optimizer=keras.optimizers.Adam(config.learning_rate),
                      loss=make_loss(config, train_labels), jit_compile=config.xla)
    if isinstance(model, TopLayersModel):
        model.top_optimizer = keras.optimizers.Adam(config.text.fine_tune_learning_rate)
    return model


def epochs_to_run(config: TrainConfig, history: list[dict]) -> int:
    """fit's `epochs` (config's training_length), or one past the last epoch when early stopping had already ended
    the run."""
    epochs, patience = training_length(config)
    if history and history[-1]["epoch"] - best_row(history)["epoch"] >= patience:
        return history[-1]["epoch"] + 1
    return epochs


def epoch_callbacks(config: TrainConfig, model: keras.Model, run_dir: str, shared_run_dir: str,
                    dev_f1: DevF1) -> list[keras.callbacks.Callback]:
    """The per-epoch work, in order: dev F1, the CSV row, the backup, the best checkpoint, early stopping, logs.

    The CSV row precedes the backup and the backup the checkpoint, so a kill anywhere loses no finished
    epoch's evaluation: a repeated row is superseded, an interrupted checkpoint is saved on resume.
    """
    checkpoint = BestCheckpoint(run_dir)
    early_stopping = keras.callbacks.EarlyStopping(monitor=MONITOR, mode="max", patience=training_length(config)[1],
                                                   verbose=1)
    learning_rate = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: logs.update(
        learning_rate=float(keras.backend.get_value(model.optimizer.learning_rate))))
    # BackupAndRestore sends non-chief workers' writes to temporary folders itself.
    return [StopOnNonFiniteLoss(), EpochSeededDropout(config.seed), dev_f1, learning_rate,
            keras.callbacks.CSVLogger(os.path.join(run_dir, HISTORY), append=True),
            keras.callbacks.BackupAndRestore(os.path.join(shared_run_dir, "backup")), checkpoint, early_stopping,
            ResumeProgress(shared_run_dir, run_dir, early_stopping, checkpoint),
            keras.callbacks.TensorBoard(os.path.join(run_dir, "logs"), profile_batch=0)]


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
    write_json(os.path.join(run_dir, "oversampled_counts.json"), repeat, indent=None)
    return repeat


def fit_model(config: TrainConfig, model: keras.Model, prepared: PreparedDataset, run_dir: str,
              shared_run_dir: str, dev_f1: DevF1, global_batch: int, common: dict) -> None:
    """model.fit over the training split with the per-epoch callbacks; resumes from the backup if there is one."""
    train = training_labels(config, prepared)
    repeat = train_repeat_counts(config, prepared, train, run_dir)
    # Only small cached features are kept in memory; decoded posters and plots are re-read.
    only_features = set(common["input_names"]) <= {PLOT_EMBEDDING, POSTER_FEATURES}
    log_hparams(config, run_dir)
    history = read_history(shared_run_dir)
    epochs = epochs_to_run(config, history)
    if history and history[-1]["epoch"] == epochs - 1 and not has_backup(shared_run_dir):
        # fit ended (it deletes its backup then) and the kill came in the final steps: a new fit would start over.
        print("every epoch was trained before the interruption; only the final steps remain")
        return
    # The epochs fit will run: BackupAndRestore resumes after the epoch its backup holds.
    remaining = range(backup_epoch(os.path.join(shared_run_dir, "backup")) + 1, epochs)
    train_dataset = make_dataset(prepared, "train", global_batch, training=True, repeat_counts=repeat,
                                 cache=only_features, seed=config.seed, epochs=remaining,
                                 with_poster_only=uses_poster(config.model) and prepared.text_only_movies > 0,
                                 **common)
    steps = (sum(repeat.values()) if repeat else len(train["ids"])) // global_batch
    # A known length gives the progress bar its total from the first step, also in a resumed run.
    train_dataset = train_dataset.apply(tf.data.experimental.assert_cardinality(steps * max(len(remaining), 1)))
    model.fit(train_dataset, epochs=epochs, steps_per_epoch=steps,
              callbacks=epoch_callbacks(config, model, run_dir, shared_run_dir, dev_f1),
              verbose=1 if sys.stdout.isatty() else 2)


def has_backup(run_dir: str) -> bool:
    """Whether BackupAndRestore left a backup to resume from (it deletes it when fit ends)."""
    return bool(glob.glob(os.path.join(run_dir, "backup", "**", "*.index"), recursive=True))


def evaluate_constant_model(model: keras.Model, run_dir: str, dev_f1: DevF1) -> None:
    """most_common learns nothing: one dev evaluation, its history row and its (empty) checkpoint."""
    callbacks = keras.callbacks.CallbackList(
        [dev_f1, keras.callbacks.CSVLogger(os.path.join(run_dir, HISTORY), append=True), BestCheckpoint(run_dir)],
        model=model)
    callbacks.on_train_begin()
    callbacks.on_epoch_begin(0)
    callbacks.on_epoch_end(0, {})
    callbacks.on_train_end()


def run_training(config: TrainConfig, strategy, prepared: PreparedDataset, run_dir: str,
                 shared_run_dir: str) -> tuple[keras.Model, dict, float]:
    """Build the model and train it, writing into run_dir; returns the model, its caches and the seconds taken."""
    print(f"dataset {prepared.name} ({'SYNTHETIC' if prepared.name == DEMO_NAME else 'catalogue'}), "
          f"model {config.model.kind}, run directory {run_dir}")
    print(f"encoders: {encoders_summary(describe_encoders(config.model, config.text, config.poster))}")
    caches = feature_caches(config, prepared) if config.feature_cache else {}
    with strategy.scope():
        model = build_for_training(config, prepared, training_labels(config, prepared)["labels"], caches)
    common = dict(input_names=list(model.input_names), image_size=config.poster.image_size, feature_caches=caches)
    global_batch = config.batch_size * strategy.num_replicas_in_sync
    dev_f1 = DevF1(make_dataset(prepared, "dev", global_batch, training=False, **common),
                   split_labels(prepared, "dev")["labels"], prepared.genres, os.path.join(run_dir, "logs", "dev"))
    started = time.time()
    if config.model.kind == "most_common":
        evaluate_constant_model(model, run_dir, dev_f1)
    elif late_fusion(config.model):
        fit_late_fusion(config, model, prepared, run_dir)
    else:
        fit_model(config, model, prepared, run_dir, shared_run_dir, dev_f1, global_batch, common)
    return model, caches, time.time() - started


def check_given_branch(kind: str, given: str) -> None:
    """A late-fusion branch run named by model.text_run or model.poster_run must be a finished run."""
    if given and not os.path.exists(os.path.join(given, FINAL)):
        raise ValueError(f"model.{'poster' if kind == 'poster' else 'text'}_run={given} is not a finished run "
                         f"({FINAL} missing); train it first or leave the option empty")


def branch_run(config: TrainConfig, kind: str, given: str, run_dir: str) -> str:
    """A finished single-branch run for late fusion: the one given, or one trained in run_dir/branches/KIND."""
    if given:
        check_given_branch(kind, given)
        return given
    model = dataclasses.replace(config.model, kind=kind, text_run="", poster_run="")
    print(f"\nlate fusion: training the {kind} branch")
    return train(dataclasses.replace(config, model=model, run_dir=os.path.join(run_dir, "branches", kind)))


def restore_branch(config: TrainConfig, prepared: PreparedDataset, kind: str, given: str, run_dir: str):
    """A branch run's model, checked to be of `kind`, on this dataset and split, with this run's encoders."""
    branch_dir = branch_run(config, kind, given, run_dir)
    branch, branch_prepared, model, caches = restore_trained(branch_dir)
    section = "poster" if kind == "poster" else "text"
    if branch.model.kind != kind:
        raise ValueError(f"{branch_dir} is a {branch.model.kind} run; late fusion needs a {kind} run there")
    if branch.model.heads != 1:
        raise ValueError(f"{branch_dir} has model.heads={branch.model.heads}; late fusion mixes single-head branches")
    if (branch_prepared.fingerprint, branch_prepared.split) != (prepared.fingerprint, prepared.split):
        raise ValueError(f"{branch_dir} was trained on other data or another split than {prepared.path}")
    if config_to_dict(getattr(branch, section)) != config_to_dict(getattr(config, section)):
        raise ValueError(f"{branch_dir} has other {section} encoder options than this run; they must be equal")
    dev = make_dataset(prepared, "dev", 64, training=False, input_names=list(model.input_names),
                       image_size=config.poster.image_size, feature_caches=caches)
    return model, branch_logits(model, dev)


def fit_late_fusion(config: TrainConfig, model: keras.Model, prepared: PreparedDataset, run_dir: str) -> None:
    """The integrated model by late fusion (genre_tf.train.fusion): branches trained alone, their logits mixed on dev.

    Writes the mixed model as the best checkpoint, its out-of-fold dev scores as the one history row, and the
    out-of-fold dev probabilities that thresholds are tuned on.
    """
    text_kind = "text_finetuned" if config.model.fine_tune_text else "text_frozen"
    text_model, text_logits = restore_branch(config, prepared, text_kind, config.model.text_run, run_dir)
    poster_model, poster_logits = restore_branch(config, prepared, "poster", config.model.poster_run, run_dir)
    dev = split_labels(prepared, "dev")
    weights, out_of_fold = fit_mix(text_logits, poster_logits, dev["labels"], config.seed)
    copy_branch_weights(model, text_model, poster_model)
    model.get_layer(HEAD).get_layer("fusion_mix").set_weights(list(weights))
    write_out_of_fold(run_dir, dev["ids"], out_of_fold)
    scores = f1_scores(dev["labels"], out_of_fold >= 0.5)
    row = {"epoch": 0, "loss": "", **{f"dev_{name}": scores[name] for name in DEV_SCORES}}
    with open(os.path.join(run_dir, HISTORY), "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        writer.writeheader()
        writer.writerow(row)
    save_checkpoint(model, os.path.join(run_dir, "checkpoints", BEST), {"epoch": 0, MONITOR: scores["weighted_f1"]})
    print(f"late fusion: dev weighted F1 {scores['weighted_f1']:.4f} (out-of-fold); per-genre weights text "
          f"{np.round(weights[0], 2).tolist()}, poster {np.round(weights[1], 2).tolist()}")


def train_as_worker(config: TrainConfig, strategy, prepared: PreparedDataset, shared_run_dir: str) -> str:
    """A non-chief multi-worker task: the same training and callbacks (saving may involve collectives), written
    into a scratch folder, since the chief owns the run directory."""
    if not os.path.exists(os.path.join(shared_run_dir, FINAL)):
        scratch = tempfile.mkdtemp(prefix="genre_tf_worker_")
        try:
            run_training(config, strategy, prepared, scratch, shared_run_dir)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return shared_run_dir


def train(config: TrainConfig) -> str:
    """Train one model as configured; returns its run directory (resumable if interrupted)."""
    strategy = make_strategy(config.distribute)  # first: multi-worker must precede other ops
    keras.utils.set_random_seed(config.seed)
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    config = runs.with_absolute_data(config)  # the run reads the same data from any folder
    prepared = open_prepared(config.data)
    global_batch = config.batch_size * strategy.num_replicas_in_sync
    learned = len(training_labels(config, prepared)["ids"])
    if config.model.kind != "most_common" and learned < global_batch:
        # before the run directory exists: a corrected command must not meet "another config" there
        with_poster = " with a poster" if learned < len(prepared.split["train"]) else ""
        raise ValueError(f"batch_size={config.batch_size} (x {strategy.num_replicas_in_sync} replicas) is larger "
                         f"than the {learned} training movies{with_poster} of {prepared.path}: "
                         "training drops the last partial batch, so no step would run; lower batch_size")
    refuse_raw_posters_without_poster(config, prepared)
    if late_fusion(config.model):  # before the run directory exists, as every refusal that can be
        check_given_branch("text", config.model.text_run)
        check_given_branch("poster", config.model.poster_run)
    run_dir = config.run_dir or runs.default_run_dir(config, prepared.name)
    runs.refuse_dataset_overlap(run_dir, prepared.path)
    if not is_chief(strategy):
        return train_as_worker(config, strategy, prepared, run_dir)
    try:
        return train_as_chief(config, strategy, prepared, run_dir)
    except RunDirectoryInUse:
        raise  # the folder is another training's
    except Exception:
        runs.remove_if_empty(run_dir)
        raise


def train_as_chief(config: TrainConfig, strategy, prepared: PreparedDataset, run_dir: str) -> str:
    """Create (or reopen) the run directory under its lock, train, and write the serving files and final.json."""
    with runs.locked(run_dir):
        try:
            return train_locked(config, strategy, prepared, run_dir)
        except Exception:
            runs.discard_untrained(run_dir)  # a refusal before the first epoch must not block the corrected command
            raise


def train_locked(config: TrainConfig, strategy, prepared: PreparedDataset, run_dir: str) -> str:
    """train's work once this process holds the run directory's lock."""
    runs.create(run_dir, dataclasses.replace(config, run_dir=run_dir), prepared,
                describe_encoders(config.model, config.text, config.poster))
    if os.path.exists(os.path.join(run_dir, FINAL)):
        print(f"{run_dir} is finished already ({FINAL}); nothing to train")
        return run_dir
    if read_history(run_dir):
        print(f"resuming the run in {run_dir}")
    model, caches, seconds = run_training(config, strategy, prepared, run_dir, run_dir)
    if config.model.kind != "most_common":
        load_best_weights(model, run_dir)
        calibrate_run(run_dir, model, config, prepared, caches)
        write_serving_files(run_dir, model, config, prepared, caches)
    write_json(os.path.join(run_dir, FINAL), final_summary(config, strategy, prepared, run_dir, seconds), indent=2)
    return run_dir


def final_summary(config: TrainConfig, strategy, prepared: PreparedDataset, run_dir: str, seconds: float) -> dict:
    """final.json: the best dev epoch and score, beside the most-common-class baseline and the training time."""
    best = best_row(read_history(run_dir))
    return {"model": config.model.kind, "dataset": prepared.name, "seconds": round(seconds, 1),
            "replicas": strategy.num_replicas_in_sync,
            "global_batch": config.batch_size * strategy.num_replicas_in_sync,
            "best_dev_weighted_f1": best[MONITOR], "best_epoch": best["epoch"] + 1,
            "most_common_dev_weighted_f1": most_common_score(split_labels(prepared, "train")["labels"],
                                                             split_labels(prepared, "dev")["labels"])}


def most_common_score(train_labels: np.ndarray, dev_labels: np.ndarray) -> float:
    """Dev weighted F1 of the most-common-class baseline (section 4.1), for comparison in every run."""
    majority = (train_labels.mean(axis=0) > 0.5).astype(np.int32)
    return f1_scores(dev_labels, np.tile(majority, (len(dev_labels), 1)))["weighted_f1"]


def fallback_means(model: keras.Model, config: TrainConfig, prepared: PreparedDataset,
                   caches: dict[str, tuple]) -> dict[str, np.ndarray]:
    """Mean plot embedding and poster features over training movies: what serving uses for a missing input."""
    means = {}
    if PLOT_STATES in caches:  # the fine-tuned top layers' pooled vectors, as serving computes them
        means[PLOT_EMBEDDING] = top_layers_mean(model.get_layer(TEXT_TOP), prepared, caches[PLOT_STATES])
    elif uses_text(config.model):
        encoder = None if PLOT_EMBEDDING in caches else model.get_layer("text_encoder")
        means[PLOT_EMBEDDING] = mean_features(prepared, caches.get(PLOT_EMBEDDING), encoder, PLOT, limit=MEAN_SAMPLE)
    if uses_poster(config.model):
        encoder = None if POSTER_FEATURES in caches else model.get_layer("poster_encoder")
        means[POSTER_FEATURES] = mean_features(prepared, caches.get(POSTER_FEATURES), encoder, POSTER,
                                               image_size=config.poster.image_size, limit=MEAN_SAMPLE)
    return means


def top_layers_mean(top: keras.Model, prepared: PreparedDataset, cache: tuple) -> np.ndarray:
    """The mean plot embedding of the first MEAN_SAMPLE training movies through the fine-tuned top layers."""
    dataset = make_dataset(prepared, "train", 32, training=False, input_names=[PLOT_STATES, PLOT_MASK],
                           feature_caches={PLOT_STATES: cache})
    step = tf.function(lambda inputs: top(inputs, training=False), reduce_retracing=True)
    batches = dataset.take(-(-min(MEAN_SAMPLE, len(prepared.split["train"])) // 32))
    return np.concatenate([step(inputs).numpy() for inputs, _ in batches])[:MEAN_SAMPLE].mean(axis=0)


def write_serving_files(run_dir: str, model: keras.Model, config: TrainConfig, prepared: PreparedDataset,
                        caches: dict[str, tuple]) -> None:
    """Save what the export needs besides the checkpoint into run_dir/serving, so it never opens the dataset.

    `model` must hold the best checkpoint's weights; thresholds are tuned on its dev probabilities.
    """
    labels = split_labels(prepared, "dev")
    probabilities = stored_dev_probabilities(run_dir, labels["ids"])  # out-of-fold, where fitted on dev
    if probabilities is None:
        probabilities = make_predictor(model)(make_dataset(prepared, "dev", 64, training=False,
                                                            input_names=list(model.input_names),
                                                            image_size=config.poster.image_size, feature_caches=caches))
    thresholds = tune_thresholds(labels["labels"], probabilities)
    unseen = unseen_genres(prepared.genres, thresholds)
    if unseen:
        print(f"warning: {', '.join(unseen)} had no positive movie on dev; no threshold can be tuned for them, so "
              "the model never predicts them (threshold above any probability)", file=sys.stderr)
    means = fallback_means(model, config, prepared, caches)
    plots, posters = raw_examples(prepared, "train", limit=WARMUP_EXAMPLES)
    posters = [poster for poster in posters if poster] or [b""]  # a text-only movie's empty poster warms nothing
    record = {"genres": prepared.genres, "thresholds": thresholds.tolist(), "thresholds_from": "dev",
              "degenerate_genres": degenerate_genres(probabilities, thresholds, prepared.genres),
              "model_inputs": list(model.input_names), "feature_dims": {k: len(v) for k, v in means.items()},
              "fallback_means": {name: mean.tolist() for name, mean in means.items()},
              "fallback_means_of": f"the first {MEAN_SAMPLE} training movies", "warmup_plots": plots}
    runs.write_serving_files(run_dir, record, posters[0])


def finalise_run(run_dir: str) -> None:
    """Training's last step again, from the dataset: the serving files of a run trained before they were written."""
    config, prepared, model, caches = restore_trained(run_dir)
    if config.model.kind == "most_common":
        raise ValueError("the most-common-class baseline has nothing to serve; it predicts the same genres always")
    calibrate_run(run_dir, model, config, prepared, caches)
    write_serving_files(run_dir, model, config, prepared, caches)
