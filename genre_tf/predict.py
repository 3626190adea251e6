"""Predict genres with an exported model (no training code involved).

    python -m genre_tf.predict --model models/genre_tf --plot "A detective ..." --poster poster.jpg
    python -m genre_tf.predict --model models/genre_tf --csv movies.csv   # columns: plot, poster (a path; optional)

Prints each movie's predicted genres (thresholds tuned on dev, inside the model) and every genre's
probability. A poster that is missing or cannot be decoded is reported, and the plot alone is used.
"""
import argparse
import csv
import json
import os
import sys
from typing import List, Optional, Tuple


def read_inputs(args) -> List[Tuple[str, str, Optional[bytes]]]:
    """(label, plot, poster bytes or None) for each movie asked about."""
    def poster_bytes(path: str) -> Optional[bytes]:
        if not path:
            return None
        if not os.path.exists(path):
            print(f"warning: poster {path} not found; predicting from the plot", file=sys.stderr)
            return None
        with open(path, "rb") as handle:
            return handle.read()

    if args.csv:
        with open(args.csv, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        if rows and "plot" not in rows[0]:
            raise ValueError(f"{args.csv} needs a 'plot' column (and optionally 'poster')")
        return [(row.get("id") or row.get("title") or f"row {index + 2}", row["plot"],
                 poster_bytes(row.get("poster", ""))) for index, row in enumerate(rows)]
    return [("movie", args.plot, poster_bytes(args.poster))]


def predict(model_dir: str, movies: List[Tuple[str, str, Optional[bytes]]]) -> List[dict]:
    """Run serving_default on the movies; returns one dict per movie."""
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  registers the tokenizer ops the export uses

    with open(os.path.join(model_dir, "assets.extra", "export_info.json"), encoding="utf-8") as handle:
        info = json.load(handle)
    signature = tf.saved_model.load(model_dir).signatures["serving_default"]
    plots = tf.constant([plot for _, plot, _ in movies])
    posters = tf.constant([poster or b"" for _, _, poster in movies])
    if info["token_id_inputs"]:
        import tensorflow_hub as hub

        outputs = signature(**hub.load(info["text_preprocessor_handle"])(plots), poster=posters)
    else:
        outputs = signature(plot=plots, poster=posters)
    return [{"movie": label, "genres": outputs["genres"][i].numpy().decode("utf-8"),
             "inputs_used": outputs["inputs_used"][i].numpy().decode("utf-8"),
             "probabilities": dict(zip(info["genres"], outputs["probabilities"][i].numpy().round(4).tolist()))}
            for i, (label, _, _) in enumerate(movies)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="MODEL_BASE (latest version) or a version folder")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--plot")
    source.add_argument("--csv")
    parser.add_argument("--poster", default="")
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of text")
    args = parser.parse_args(argv)
    from genre_tf.serving import latest_version

    try:
        results = predict(latest_version(args.model), read_inputs(args))
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for result in results:
        if args.json:
            print(json.dumps(result))
            continue
        ranked = sorted(result["probabilities"].items(), key=lambda item: -item[1])
        print(f"{result['movie']}: {result['genres'] or '(no genre above its threshold)'}  "
              f"[from {result['inputs_used']}]\n  " + "  ".join(f"{g} {p:.3f}" for g, p in ranked))
    return 0


if __name__ == "__main__":
    sys.exit(main())
