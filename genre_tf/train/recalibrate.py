"""Give a finished run another calibrator without retraining it: the same network, a new run directory.

    python -m genre_tf.train.recalibrate runs/real-movies-integrated platt runs/real-movies-integrated-platt

The copy holds the run's files with `model.calibration` set to the method, the network's weights copied layer by
layer into the model that config builds, and the calibrator fitted on dev as training's last step does
(genre_tf.train.calibrator), thresholds retuned on its cross-fitted dev probabilities. Comparing the two runs then
measures the calibrator alone: the network is the same one. Runs trained before the option existed work too.
"""
import argparse
import dataclasses
import os
import shutil
import sys

import genre_tf  # noqa: F401  selects tf-keras before TensorFlow loads
from genre_tf.config import CALIBRATIONS, CommandLine
from genre_tf.files import refuse_to_write_into


def copy_weights(target, source) -> None:
    """Every weighted layer of source into the target's layer of the same name (genre_head's layers one by one);
    the target's calibrator stays the identity."""
    from genre_tf.nets.models import CALIBRATION, HEAD

    for layer in target.layers:
        if layer.name == HEAD:
            copy_weights(layer, source.get_layer(HEAD))
        elif layer.weights and layer.name != CALIBRATION:
            layer.set_weights(source.get_layer(layer.name).get_weights())


def recalibrate(run_dir: str, method: str, out_dir: str) -> str:
    """A copy of a finished run in out_dir with model.calibration=method, calibrated on dev; returns out_dir."""
    from genre_tf import run_dir as runs
    from genre_tf.config import dump_config
    from genre_tf.data.dataset import split_labels
    from genre_tf.nets.network import build_network, cached_dims, precision_policy, restore_trained
    from genre_tf.train.callbacks import save_checkpoint
    from genre_tf.train.training import finalise_run

    if method not in CALIBRATIONS:
        raise ValueError(f"calibration must be one of {CALIBRATIONS}, got {method!r}")
    if os.path.exists(out_dir):
        raise ValueError(f"{out_dir} exists already; name a new folder for the recalibrated run")
    refuse_to_write_into(out_dir, "NEW_RUN", {"RUN": run_dir})  # before the copy: into its own source it recurses
    runs.require_finished(run_dir, can_allow=False)
    config, prepared, source, caches = restore_trained(run_dir)
    if config.model.kind == "most_common":
        raise ValueError("the most-common-class baseline has no probabilities to calibrate")
    config = dataclasses.replace(config, run_dir=os.path.abspath(out_dir),
                                 model=dataclasses.replace(config.model, calibration=method))
    stale = (runs.CALIBRATED_OUT_OF_FOLD, runs.LOCK, runs.EVALUATION_LOCK, "metrics.json", "report.md",
             "predictions.npz", "logs")
    shutil.copytree(run_dir, out_dir, ignore=shutil.ignore_patterns(*stale))
    dump_config(config, os.path.join(out_dir, "config.json"))
    with precision_policy(config):
        target = build_network(config, len(prepared.genres), cached_dims(caches),
                               split_labels(prepared, "train")["labels"].mean(axis=0))
    copy_weights(target, source)
    record = dict(runs.checkpoint_record(run_dir), recalibrated_from=os.path.abspath(run_dir))
    save_checkpoint(target, os.path.join(out_dir, "checkpoints", runs.BEST), record)
    finalise_run(out_dir)  # fits the calibrator and rewrites the serving files, as training's last step
    return out_dir


def main(argv=None) -> int:
    parser = CommandLine(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", metavar="RUN")
    parser.add_argument("method", choices=CALIBRATIONS)
    parser.add_argument("out_dir", metavar="NEW_RUN")
    args = parser.parse_args(argv)
    try:
        print(f"recalibrated run: {recalibrate(args.run_dir, args.method, args.out_dir)}")
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
