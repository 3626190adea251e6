"""Compute a model's frozen features on Apache Beam, into the store that training reads.

    python -m genre_tf.features DATA [--config FILE.yaml] [key=value ...] [beam options]
    python -m genre_tf.features prepared/movies --config configs/fast.yaml --direct_num_workers=4
    python -m genre_tf.features prepared/movies --runner=PortableRunner --job_endpoint=localhost:8099 \\
        --environment_type=LOOPBACK

DATA (or data=DATA) is a prepared dataset (or demo); key=value are train.py's options, and the frozen encoders of
the model they describe (model.kind, text.model, poster.backbone, poster.image_size, poster.flip_average, ...) run
over every movie whose plot or poster is not yet in the feature store. Training with the same options then reads
every feature from the store. Each movie that cannot be encoded is a dead letter (movies, input, reason) in
--dead-letters. Every --option this command does not know is a Beam pipeline option (give them as --flag=value); the
default runs the DirectRunner with 2 worker processes (--direct_num_workers=2 --direct_running_mode=multi_processing).
"""
import argparse
import os
import re
import sys

import genre_tf  # noqa: F401  selects tf-keras before TensorFlow loads
from genre_tf.config import CommandLine, TrainConfig, load_config, valid_keys

_OPTION = re.compile(r"[A-Za-z_][\w.]*=")  # key=value; anything else is the dataset
DEAD_LETTERS_SHOWN = 20  # on the terminal; the file holds them all


def parse_args(argv=None) -> tuple[TrainConfig, argparse.Namespace, list[str]]:
    """The training config, this command's own options and Beam's options of a command line."""
    parser = CommandLine(prog="python -m genre_tf.features", description=__doc__,
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         epilog="options (key=value, as train.py's):\n  " + "\n  ".join(valid_keys()))
    parser.add_argument("--config", default="", help="a YAML or JSON file of options, as train.py's")
    parser.add_argument("--dead-letters", default="features-dead-letters.jsonl",
                        help="JSON lines of the movies not encoded and why (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="contents per encoder call")
    parser.add_argument("--part-size", type=int, default=0, help="movies per published part (default 2048)")
    parser.add_argument("arguments", nargs="*", metavar="DATA key=value")
    args, beam_args = parser.parse_known_intermixed_args(argv)
    options = [arg for arg in args.arguments if _OPTION.match(arg) and not os.path.exists(arg)]
    datasets = [arg for arg in args.arguments if arg not in options]
    if len(datasets) > 1 or not datasets and not any(option.startswith("data=") for option in options):
        parser.error(f"expected one prepared dataset (DATA or data=DATA) and key=value options, got "
                     f"{datasets or 'no dataset'} (give Beam options as --flag=value)")
    if args.batch_size < 1 or args.part_size < 0:
        parser.error("--batch-size must be at least 1 and --part-size at least 0")
    try:
        config = load_config(args.config, options, **({"data": datasets[0]} if datasets else {}))
    except (ValueError, OSError) as error:
        parser.error(str(error))
    return config, args, beam_args


def main(argv=None) -> int:
    """`python -m genre_tf.features`: 0 when the job ran (dead letters or not); 2 for a usage error, 1 for one while
    working."""
    config, args, beam_args = parse_args(argv)
    from genre_tf.data.beam_features import compute_features
    from genre_tf.data.demo import open_prepared
    from genre_tf.data.features import PART_SIZE
    from genre_tf.nets.network import fetch_encoder_files, frozen_encoders

    encoders = frozen_encoders(config)
    if not encoders:
        print(f"error: model.kind={config.model.kind} reads no frozen features (a fine-tuned encoder, or none): "
              "nothing to compute", file=sys.stderr)
        return 1
    try:
        prepared = open_prepared(config.data)
        fetch_encoder_files(config)
        summary = compute_features(prepared, encoders, args.dead_letters, beam_args, args.batch_size,
                                   args.part_size or PART_SIZE)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for encoder in encoders:
        counts = summary[encoder.name]
        print(f"{encoder.name}: {counts['encoded']} contents encoded, {counts['published']} published into "
              f"{counts['store']} ({counts['stored_before']} were there before)")
    for letter in summary["dead_letters"][:DEAD_LETTERS_SHOWN]:
        print(f"dead letter: {', '.join(letter['movies'])} ({letter['input']}): {letter['reason']}", file=sys.stderr)
    print(f"{len(summary['dead_letters'])} dead letters in {args.dead_letters}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
