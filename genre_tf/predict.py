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


def read_inputs(args) -> list[dict]:
    """One dict per movie asked about: label, plot, poster path and poster bytes (None when absent)."""
    def movie(label: str, plot: str | None, poster_path: str | None) -> dict:
        poster = None
        if poster_path:
            if os.path.exists(poster_path):
                with open(poster_path, "rb") as handle:
                    poster = handle.read()
            else:
                print(f"warning: {label}: poster {poster_path} not found; predicting from the plot", file=sys.stderr)
        return {"label": label, "plot": plot or "", "poster_path": poster_path or "", "poster": poster}

    if not args.csv:
        return [movie("movie", args.plot, args.poster)]
    try:
        with open(args.csv, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except UnicodeDecodeError as error:
        raise ValueError(f"{args.csv} is not UTF-8 text ({error.reason} at byte {error.start})") from None
    if not rows:
        raise ValueError(f"{args.csv} has no movies (a header line, then one row per movie)")
    if "plot" not in rows[0]:
        raise ValueError(f"{args.csv} needs a 'plot' column (and optionally 'poster'); it has {list(rows[0])}")
    return [movie(row.get("id") or row.get("title") or f"{args.csv} line {index + 2}", row["plot"], row.get("poster"))
            for index, row in enumerate(rows)]


def predict(model_dir: str, movies: list[dict]) -> list[dict]:
    """Run serving_default on the movies; returns one dict per movie and warns about unused inputs."""
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  registers the tokenizer ops the export uses

    info_path = os.path.join(model_dir, "assets.extra", "export_info.json")
    if not os.path.exists(info_path):
        raise FileNotFoundError(f"{model_dir} is not a genre_tf export (no assets.extra/export_info.json)")
    with open(info_path, encoding="utf-8") as handle:
        info = json.load(handle)
    signature = tf.saved_model.load(model_dir).signatures["serving_default"]
    plots = tf.constant([m["plot"] for m in movies])
    posters = tf.constant([m["poster"] or b"" for m in movies])
    if info["token_id_inputs"]:
        import tensorflow_hub as hub

        outputs = signature(**hub.load(info["text_preprocessor_handle"])(plots), poster=posters)
    else:
        outputs = signature(plot=plots, poster=posters)
    results = []
    for i, m in enumerate(movies):
        used = outputs["inputs_used"][i].numpy().decode("utf-8")
        if m["poster"] is not None and "poster" not in used:
            print(f"warning: {m['label']}: poster {m['poster_path']} could not be decoded; predicted from "
                  f"{used if used != 'none' else 'neither input'}", file=sys.stderr)
        if not m["plot"].strip():
            print(f"warning: {m['label']}: empty plot; predicted from {used if used != 'none' else 'neither input'}",
                  file=sys.stderr)
        results.append({"movie": m["label"], "genres": outputs["genres"][i].numpy().decode("utf-8"),
                        "inputs_used": used,
                        "probabilities": dict(zip(info["genres"], outputs["probabilities"][i].numpy().round(4).tolist(),
                                                  strict=True))})
    return results


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
