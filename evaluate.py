"""Evaluate trained runs: metrics on dev and test, dev-tuned thresholds, pictures, report.md.

    python evaluate.py runs/synthetic-demo-integrated
    python evaluate.py runs/*/ --table        # Table 3 across runs on one split: 95% intervals, paired differences

Writes report.md, metrics.json and PNGs (co-occurrence, per-genre F1, F1 by decade, PR curves) into
each run directory, and images and PR curves into its TensorBoard logs.
"""
import argparse
import os
import sys

import genre_tf  # noqa: F401  selects tf-keras before TensorFlow loads
from genre_tf.config import CommandLine


def main(argv=None) -> int:
    parser = CommandLine(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR")
    parser.add_argument("--table", action="store_true",
                        help="print Table 3 across the runs (reusing each run's metrics.json when present): each "
                             "row's 95%% interval and its paired difference with the best row and the best floor; "
                             "runs that differ only in seed form one row (mean and spread)")
    parser.add_argument("--allow-unfinished", action="store_true",
                        help="evaluate a run that is still training or stopped before its end (its best "
                             "checkpoint so far); refused otherwise")
    args = parser.parse_args(argv)
    import tensorflow as tf

    from genre_tf.evaluate.evaluation import PREDICTIONS, comparison_table, evaluate_run, read_json
    from genre_tf.run_dir import RunDirectoryInUse

    all_metrics = []
    try:
        for run_dir in args.runs:
            existing = os.path.join(run_dir, "metrics.json")
            if args.table and os.path.exists(existing) and os.path.exists(os.path.join(run_dir, PREDICTIONS)):
                all_metrics.append(read_json(existing))
                continue
            metrics = evaluate_run(run_dir, allow_unfinished=args.allow_unfinished)
            all_metrics.append(metrics)
            test = metrics["splits"]["test"]
            print(f"{run_dir}: test weighted F1 {test['at_0.5']['weighted_f1']:.4f} at 0.5, "
                  f"{test['tuned']['weighted_f1']:.4f} with dev-tuned thresholds; "
                  f"report: {os.path.join(run_dir, 'report.md')}")
        if args.table:
            print(comparison_table(args.runs, all_metrics))
    except (ValueError, OSError, tf.errors.OpError, RunDirectoryInUse) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
