"""Train a genre_tf model.  `python train.py` trains the integrated model on the embedded synthetic demo.

    python train.py [--config FILE.yaml] [key=value ...]
    python train.py data=prepared/mmimdb model.kind=text_finetuned oversample=true
"""
import argparse
import json
import os
import sys

import genre_tf  # noqa: F401  selects tf-keras before TensorFlow loads
from genre_tf.config import CommandLine


def main(argv=None) -> int:
    from genre_tf.config import load_config, valid_keys

    parser = CommandLine(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="options (key=value; defaults in genre_tf/config.py, the demo preset in DEMO_PRESET):\n  "
               + "\n  ".join(valid_keys()))
    parser.add_argument("--config", default="", help="a YAML or JSON file of options")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_intermixed_args(argv)  # --config anywhere: key=value before and after it
    try:
        config = load_config(args.config, args.overrides)
    except (ValueError, OSError) as error:
        parser.error(str(error))
    import tensorflow as tf

    from genre_tf.run_dir import RunDirectoryInUse
    from genre_tf.train.training import train

    try:
        run_dir = train(config)
    except (ValueError, OSError, RunDirectoryInUse) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except tf.errors.OpError as error:  # a full disk while saving, ...: TensorFlow's message without its trace
        print(f"error: {error.message.strip().splitlines()[0][:500]}; rerun the same command to resume",
              file=sys.stderr)
        return 1
    if not os.path.exists(os.path.join(run_dir, "final.json")):
        print(f"worker finished; the chief multi-worker task writes the results to {run_dir}")
        return 0
    with open(os.path.join(run_dir, "final.json"), encoding="utf-8") as handle:
        final = json.load(handle)
    print(f"\n{final['model']} on {final['dataset']}: dev weighted F1 {final['best_dev_weighted_f1']:.4f} "
          f"(epoch {final['best_epoch']}) vs most-common-class {final['most_common_dev_weighted_f1']:.4f}; "
          f"{final['seconds']:.0f} s; run directory {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
