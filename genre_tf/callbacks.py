"""Training's per-epoch work as Keras callbacks: whole-dev-set F1, the atomic best checkpoint, resume state."""
import csv
import glob
import os

import numpy as np
import tensorflow as tf
import tf_keras as keras

from genre_tf.files import atomic_path, read_json, write_json
from genre_tf.metrics import f1_scores

BEST = "best"
CHECKPOINT_RECORD = "checkpoint.json"  # inside checkpoints/best: the epoch and dev score the weights come from
HISTORY = "history.csv"                # CSVLogger: one row per finished epoch
MONITOR = "dev_weighted_f1"
DEV_SCORES = ("weighted_f1", "macro_f1", "micro_f1", "samples_f1")


def make_predictor(model: keras.Model):
    """A function from a (finite, ordered) dataset to the model's probabilities, computed locally.

    Every worker of a multi-worker run evaluates the whole dev set itself, so they take identical
    early-stopping decisions without a collective. The step is traced once per predictor.
    """
    step = tf.function(lambda inputs: model(inputs, training=False), reduce_retracing=True)
    return lambda dataset: np.concatenate([step(inputs).numpy() for inputs, _ in dataset])


def save_checkpoint(model: keras.Model, folder: str, record: dict) -> None:
    """Write the weights and their record (epoch, dev score) into a staging folder that replaces `folder` whole."""
    with atomic_path(folder) as staging:
        model.save_weights(os.path.join(staging, "weights"))
        write_json(os.path.join(staging, CHECKPOINT_RECORD), record)


def best_checkpoint(run_dir: str) -> str:
    """The best checkpoint's prefix (falling back to the previous one if a swap was interrupted)."""
    checkpoints = os.path.join(run_dir, "checkpoints")
    old = sorted(glob.glob(os.path.join(checkpoints, f".{BEST}.*.old")))  # atomic_path's name while it swaps
    for folder in (os.path.join(checkpoints, BEST), os.path.join(checkpoints, f"{BEST}.old"), *old):
        if os.path.exists(os.path.join(folder, "weights.index")):
            return os.path.join(folder, "weights")
    raise FileNotFoundError(f"{run_dir} has no checkpoint (checkpoints/{BEST}); train it first")


def checkpoint_record(run_dir: str) -> dict:
    """The best checkpoint's record: its epoch (0-based) and dev weighted F1; {} when there is none."""
    try:
        path = os.path.join(os.path.dirname(best_checkpoint(run_dir)), CHECKPOINT_RECORD)
    except FileNotFoundError:
        return {}
    return read_json(path) if os.path.exists(path) else {}


def load_best_weights(model: keras.Model, run_dir: str) -> None:
    """Load the best checkpoint into a model built from the run's config; a model that does not fit fails loudly."""
    checkpoint = best_checkpoint(run_dir)
    if not model.weights:
        return
    status = model.load_weights(checkpoint).expect_partial()  # the optimizer's slots are not needed
    try:
        status.assert_existing_objects_matched()
    except AssertionError as error:
        raise ValueError(f"{checkpoint} does not fit the model that {run_dir}/config.json builds "
                         f"(was it trained by another genre_tf version?): {str(error)[:300]}") from None


def read_history(run_dir: str) -> list[dict]:
    """The finished epochs' rows of history.csv, in epoch order; an epoch trained twice keeps its last row."""
    path = os.path.join(run_dir, HISTORY)
    if not os.path.exists(path):
        return []
    rows = {}
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            rows[int(row["epoch"])] = {"epoch": int(row["epoch"]), "loss": float(row.get("loss") or "nan"),
                                       **{f"dev_{name}": float(row[f"dev_{name}"]) for name in DEV_SCORES}}
    return [rows[epoch] for epoch in sorted(rows)]


def best_row(history: list[dict]) -> dict:
    """The first epoch with the highest dev weighted F1 (later ties do not count as improvements)."""
    return max(history, key=lambda row: row[MONITOR])


class DevF1(keras.callbacks.Callback):
    """Each epoch: F1 over the whole dev set into `logs` (dev_weighted_f1, ...) and per-genre F1 into TensorBoard."""

    def __init__(self, dev_dataset, dev_labels: np.ndarray, genres: list[str], log_dir: str):
        super().__init__()
        self.dev_dataset, self.dev_labels, self.genres = dev_dataset, dev_labels, genres
        self.writer = tf.summary.create_file_writer(log_dir)
        self.predict = None

    def on_epoch_end(self, epoch, logs=None):
        logs = {} if logs is None else logs
        if self.predict is None:
            self.predict = make_predictor(self.model)
        scores = f1_scores(self.dev_labels, self.predict(self.dev_dataset) >= 0.5)
        logs.update({f"dev_{name}": scores[name] for name in DEV_SCORES})
        with self.writer.as_default(step=epoch):
            for genre, value in zip(self.genres, scores["f1"], strict=True):
                tf.summary.scalar(f"dev_genre_f1/{genre}", value)
        self.writer.flush()
        print(f"epoch {epoch + 1}: loss {float(logs.get('loss', np.nan)):.4f}  dev weighted F1 "
              f"{scores['weighted_f1']:.4f}", flush=True)


class BestCheckpoint(keras.callbacks.ModelCheckpoint):
    """Keras' ModelCheckpoint on dev weighted F1, whose save replaces checkpoints/best atomically.

    ModelCheckpoint writes weights.index and weights.data-* in place, so a kill mid-save would leave a
    mismatched pair; its save hook is replaced by save_checkpoint, which also records the epoch.
    """

    def __init__(self, run_dir: str):
        super().__init__(os.path.join(run_dir, "checkpoints", BEST, "weights"), monitor=MONITOR, mode="max",
                         save_best_only=True, save_weights_only=True, verbose=1)

    def _save_handler(self, filepath):
        save_checkpoint(self.model, os.path.dirname(filepath), {"epoch": self._current_epoch, MONITOR: self.best})


class ResumeProgress(keras.callbacks.Callback):
    """On resume, give EarlyStopping and ModelCheckpoint the state of the epochs already trained.

    BackupAndRestore restores weights, optimizer and epoch, but the other callbacks' on_train_begin
    resets their best score and patience count. Without this, a resumed run overwrites the best
    checkpoint with its first epoch and waits `patience` epochs anew. The history is read from the
    shared run directory, so every worker of a multi-worker run takes the same decisions.
    """

    def __init__(self, shared_run_dir: str, run_dir: str, early_stopping, checkpoint: BestCheckpoint):
        super().__init__()
        self.shared_run_dir, self.run_dir = shared_run_dir, run_dir
        self.early_stopping, self.checkpoint = early_stopping, checkpoint
        self.first_epoch = None

    def on_train_begin(self, logs=None):
        self.first_epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        if self.first_epoch is None:
            self.first_epoch = epoch
            self.restore(epoch)

    def on_train_end(self, logs=None):
        if self.first_epoch is None:  # every epoch was trained before the kill: only the checkpoint may be missing
            self.restore(self.params["epochs"])

    def restore(self, next_epoch: int) -> None:
        """Set the callbacks' state from the epochs before `next_epoch`, whose weights BackupAndRestore restored."""
        history = [row for row in read_history(self.shared_run_dir) if row["epoch"] < next_epoch]
        if not history:
            return
        best = best_row(history)
        self.early_stopping.best, self.early_stopping.best_epoch = best[MONITOR], best["epoch"]
        self.early_stopping.wait = next_epoch - 1 - best["epoch"]
        self.checkpoint.best = best[MONITOR]
        if best["epoch"] == next_epoch - 1 and checkpoint_record(self.shared_run_dir).get("epoch") != best["epoch"]:
            # Killed while saving the best checkpoint: the backup holds that epoch's weights.
            print(f"the best checkpoint (epoch {best['epoch'] + 1}) was interrupted; saving it from the backup")
            save_checkpoint(self.model, os.path.join(self.run_dir, "checkpoints", BEST),
                            {"epoch": best["epoch"], MONITOR: best[MONITOR]})
