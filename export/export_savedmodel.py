"""Export a trained run as a SavedModel version for TF Serving.

    python export/export_savedmodel.py --run runs/synthetic-demo-integrated --out models/genre_tf
    python export/export_savedmodel.py --run RUN_DIR --out MODEL_BASE --token-ids   # tokenise client-side

Reads the run directory alone (config.json, genres.txt, the best checkpoint and serving/, written at
the end of training), and refuses a run that is unfinished or whose dataset has changed since (checked
when the dataset is on this machine). Runs trained before serving/ existed need
`python -m genre_tf.train.migrate RUN` once.
Writes MODEL_BASE/<next integer version>/ atomically (staged beside it, then renamed) and, if absent,
MODEL_BASE/batching.config. See export/README.md for serving it.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import genre_tf  # noqa: E402,F401  selects tf-keras before TensorFlow loads
from genre_tf.config import CommandLine


def positive_int(text: str) -> int:
    """argparse type for --version: TF Serving loads the integer folders 1, 2, ..."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer (TF Serving versions start at 1), got {value}")
    return value


def main(argv=None) -> int:
    parser = CommandLine(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a trained run directory")
    parser.add_argument("--out", required=True, help="MODEL_BASE: the folder TF Serving watches")
    parser.add_argument("--version", type=positive_int, default=None, help="default: one more than the latest")
    parser.add_argument("--model-name", default="genre_tf", help="the name in the warmup requests")
    parser.add_argument("--token-ids", action="store_true",
                        help="take BERT token ids instead of plot text (servers without tensorflow-text ops)")
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="",
                        help="the encoders' compute dtype in the export (default: the run's). bfloat16 serves faster "
                             "on CPUs with AVX512_BF16 or AMX; export/README.md gives its cost in accuracy")
    parser.add_argument("--allow-unfinished", action="store_true",
                        help="export a run that is still training or stopped before its end (its best checkpoint "
                             "so far); refused otherwise")
    args = parser.parse_args(argv)
    import tensorflow as tf

    from genre_tf.serve.serving import export_run

    try:
        export_run(args.run, args.out, token_ids=args.token_ids, model_name=args.model_name, version=args.version,
                   allow_unfinished=args.allow_unfinished, precision=args.precision)
    except (ValueError, OSError, tf.errors.OpError) as error:  # OSError: a full disk, a version taken meanwhile
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
