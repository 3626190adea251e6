"""Training's calibration step: fit a finished run's per-genre calibrator on dev and keep it in the best checkpoint.

The calibrator (genre_tf.nets.layers.GenreCalibration, the genre_head's last layer) is the identity while the network
trains. Once the best weights are loaded, it is fitted on the dev logits (evaluate/calibration.py) and
saved into the best checkpoint, so evaluation, batch prediction and the SavedModel all see calibrated probabilities.
The cross-fitted dev probabilities are kept beside it (run_dir.CALIBRATED_OUT_OF_FOLD): thresholds are tuned on them.
"""
import os

import numpy as np
import tf_keras as keras

from genre_tf.config import TrainConfig
from genre_tf.data.dataset import PreparedDataset, make_dataset, split_labels
from genre_tf.evaluate.calibration import calibration_intervals, fit_calibrators
from genre_tf.nets.models import CALIBRATION, HEAD
from genre_tf.nets.network import make_predictor
from genre_tf.run_dir import (BEST, CALIBRATED_OUT_OF_FOLD, checkpoint_record, stored_dev_probabilities,
                              write_out_of_fold)
from genre_tf.train.callbacks import save_checkpoint
from genre_tf.train.fusion import to_logits


def plain_dev_logits(model: keras.Model, config: TrainConfig, prepared: PreparedDataset, caches: dict,
                     run_dir: str, ids) -> np.ndarray:
    """The uncalibrated dev logits to fit on: late fusion's out-of-fold mix (fitted on dev too), else the model's."""
    mixed = stored_dev_probabilities(run_dir, ids, calibrated=False)
    if mixed is not None:
        return to_logits(mixed)
    dev = make_dataset(prepared, "dev", 64, training=False, input_names=list(model.input_names),
                       image_size=config.poster.image_size, feature_caches=caches)
    return make_predictor(keras.Model(model.inputs, model.get_layer("probabilities").input))(dev).astype(np.float64)


def calibrate_run(run_dir: str, model: keras.Model, config: TrainConfig, prepared: PreparedDataset,
                  caches: dict) -> None:
    """Fit the calibrator of a model holding its best weights, save it into the best checkpoint, and write the
    cross-fitted dev probabilities. Refitting (a resumed run) starts again from the plain logits."""
    method = config.model.calibration
    if method == "none" or config.model.kind == "most_common":
        return
    layer = model.get_layer(HEAD).get_layer(CALIBRATION)
    genres = len(prepared.genres)
    layer.set_weights([np.ones(genres, np.float32), np.zeros(genres, np.float32)])
    labels = split_labels(prepared, "dev")
    logits = plain_dev_logits(model, config, prepared, caches, run_dir, labels["ids"])
    scale, bias, out_of_fold = fit_calibrators(logits, labels["labels"], method, config.seed)
    layer.set_weights([scale.astype(np.float32), bias.astype(np.float32)])
    record = dict(checkpoint_record(run_dir), calibration=method)
    save_checkpoint(model, os.path.join(run_dir, "checkpoints", BEST), record)
    write_out_of_fold(run_dir, labels["ids"], out_of_fold, CALIBRATED_OUT_OF_FOLD)
    before = calibration_intervals(labels["labels"], 1 / (1 + np.exp(-logits)), resamples=1)
    after = calibration_intervals(labels["labels"], out_of_fold, resamples=1)
    print(f"calibration ({method}, fitted on dev): dev ECE {before['ece']['value']:.4f} -> "
          f"{after['ece']['value']:.4f} (cross-fitted), log loss {before['log_loss']['value']:.4f} -> "
          f"{after['log_loss']['value']:.4f}; per-genre scale {np.round(scale, 2).tolist()}")
