"""Training's per-epoch work as Keras callbacks: whole-dev-set F1, the atomic best checkpoint, resume state."""
import os

import numpy as np
import tensorflow as tf
import tf_keras as keras

from genre_tf.evaluate.metrics import f1_scores
from genre_tf.files import atomic_path, write_json
from genre_tf.nets.network import make_predictor
from genre_tf.run_dir import (BEST, CHECKPOINT_RECORD, DEV_SCORES, MONITOR, best_row,
                              checkpoint_record, forget_epochs_from, read_history)



def save_checkpoint(model: keras.Model, folder: str, record: dict) -> None:
    """Write the weights and their record (epoch, dev score) into a staging folder that replaces `folder` whole."""
    with atomic_path(folder) as staging:
        model.save_weights(os.path.join(staging, "weights"))
        write_json(os.path.join(staging, CHECKPOINT_RECORD), record)



def backup_epoch(backup_dir: str) -> int:
    """The last epoch BackupAndRestore's backup holds (-1 without one): fit resumes at the epoch after it."""
    latest = tf.train.latest_checkpoint(os.path.join(backup_dir, "chief"))
    if latest is None:
        return -1
    return int(tf.train.load_checkpoint(latest).get_tensor("ckpt_saved_epoch/.ATTRIBUTES/VARIABLE_VALUE"))


class EpochSeededDropout(keras.callbacks.Callback):
    """Reseed every dropout layer's generator at each epoch's start from (seed, epoch, layer).

    A backup holds weights, optimizer and epoch, but no random state: Keras' default dropout draws from
    stateful ops that start over when a resumed run traces its step again, so it would drop other units
    than the uninterrupted run. With this, epoch k's masks are the same whether or not the run was resumed.
    """

    def __init__(self, seed: int):
        super().__init__()
        self.seed = seed

    def on_epoch_begin(self, epoch, logs=None):
        layers = [layer for layer in self.model._flatten_layers() if isinstance(layer, keras.layers.Dropout)]
        for index, layer in enumerate(layers):
            generator = layer._random_generator  # tf-keras' RandomGenerator; the layer built it with force_generator
            with self.model.distribute_strategy.scope():
                generator._maybe_init()
            if generator._generator is None:
                raise ValueError(f"dropout layer {layer.name} has no seedable generator (build it with "
                                 "force_generator=True)")
            generator._generator.reset_from_seed((self.seed * 1_000_003 + epoch) * 1_009 + index)


class NonFiniteLoss(ValueError):
    """The training loss became NaN or infinite: the weights are lost from that step on."""


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stop training at the first batch whose loss is not finite, before any epoch end saves such weights.

    Keras' TerminateOnNaN only ends fit, as if training had finished; the run would then be written up and
    exported with NaN weights. This raises, so the run keeps its last finite checkpoint and backup.
    """

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(float(loss)):
            learning_rate = float(keras.backend.get_value(self.model.optimizer.learning_rate))
            kept = ("the last finite checkpoint and backup are kept" if self.epoch else
                    "no epoch had finished, so the run is not kept")
            raise NonFiniteLoss(f"the training loss became {float(loss)} at step {batch + 1} of epoch "
                                f"{self.epoch + 1} (learning_rate={learning_rate:g}); training stopped, {kept}: "
                                "lower learning_rate, then rerun")

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch


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


class BestCheckpoint(keras.callbacks.Callback):
    """Save the weights of each epoch that improves dev weighted F1, replacing checkpoints/best atomically.

    Not Keras' ModelCheckpoint: it writes weights.index and weights.data-* in place, so a kill mid-save
    would leave a mismatched pair, and changing how it saves means overriding its private methods.
    save_checkpoint stages the folder and also records the epoch and score.
    """

    def __init__(self, run_dir: str):
        super().__init__()
        self.folder = os.path.join(run_dir, "checkpoints", BEST)
        self.best = -np.inf  # ResumeProgress sets it from history.csv when a run resumes

    def on_epoch_end(self, epoch, logs=None):
        score = (logs or {}).get(MONITOR)
        if score is None or not score > self.best:
            return
        print(f"\nEpoch {epoch + 1}: {MONITOR} improved from {self.best:.5f} to {score:.5f}, saving the weights "
              f"to {self.folder}", flush=True)
        self.best = score
        save_checkpoint(self.model, self.folder, {"epoch": epoch, MONITOR: score})


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
        forget_epochs_from(self.run_dir, next_epoch)  # killed after an epoch's row but before its backup
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
