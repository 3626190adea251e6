"""Bring a run trained by an older genre_tf up to date: compute its serving files once from its dataset.

    python -m genre_tf.train.migrate runs/my-run

Export reads a run directory alone; a run trained before training wrote serving/ (or whose serving
files belong to another checkpoint) needs this once.
"""
import argparse
import sys

import genre_tf  # noqa: F401  selects tf-keras before TensorFlow loads
from genre_tf.config import CommandLine


def main(argv=None) -> int:
    parser = CommandLine(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR")
    args = parser.parse_args(argv)
    from genre_tf import run_dir as runs
    from genre_tf.train.training import finalise_run

    try:
        for run_dir in args.runs:
            config = runs.load_config(run_dir)  # first: locking would create a folder that is not a run
            runs.refuse_dataset_overlap(run_dir, config.data)  # migrate writes into the run: never into a dataset
            runs.require_finished(run_dir, can_allow=False)  # a run training now, or stopped early, writes its own
            with runs.locked(run_dir):  # and no training starts meanwhile
                finalise_run(run_dir)
            print(f"{run_dir}: serving files written")
    except (ValueError, OSError, runs.RunDirectoryInUse) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
