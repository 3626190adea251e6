"""Predict genres with an exported model (no training code involved).

    python -m genre_tf.predict --model models/genre_tf --plot "A detective ..." --poster poster.jpg
    python -m genre_tf.predict --model models/genre_tf --csv movies.csv   # columns: plot, poster (a path; optional)
    python -m genre_tf.predict --model models/genre_tf --plot "..." --poster p.jpg --explain --explain-dir heat/

Prints each movie's predicted genres (thresholds tuned on dev, inside the model) and every genre's
probability. A poster that is missing, refused or undecodable is reported, and the plot alone is used.
CSV poster paths are relative to the CSV's folder (or --poster-dir) and must stay inside it, as in
prepare. A CSV is read and predicted --batch-size rows at a time, each batch printed when it is done.
"""
import argparse
import itertools
import json
import os
import sys
from collections.abc import Iterable, Iterator

from genre_tf.limits import MAX_REQUEST_MOVIES, oversized_plot
from genre_tf.data.csv_records import read_records
from genre_tf.data.records import has_words
from genre_tf.files import InputFileError, InputFileNotFoundError, read_poster_file
from genre_tf.config import CommandLine

READ_COLUMNS = ("id", "title", "plot", "poster")
PREDICT_BATCH = 64  # rows per call of the model: memory stays that of one batch, whatever the CSV's length


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def load_movie(label: str, plot: str | None, poster_path: str | None, root: str) -> dict:
    """One movie to predict: label, plot, poster path and poster bytes (None when absent or refused)."""
    poster = None
    if poster_path:
        try:
            poster = read_poster_file(poster_path, root)
        except InputFileNotFoundError:
            _warn(f"{label}: poster {poster_path} not found; predicting from the plot")
        except InputFileError as error:
            _warn(f"{label}: {error}; predicting from the plot")
    plot = plot or ""
    if reason := oversized_plot(plot):
        _warn(f"{label}: {reason}; not used")
        plot = ""
    return {"label": label, "plot": plot, "poster_path": poster_path or "", "poster": poster}


def read_csv_movies(path: str, poster_dir: str = "", unread: list | None = None) -> Iterator[dict]:
    """The movies of a CSV (a 'plot' column, optionally 'poster', 'id', 'title'), read row by row.

    A row that cannot be read is warned about and appended to `unread` (its source and reason), not predicted.
    """
    for row in read_csv_rows(path, poster_dir):
        if row.get("error"):
            _warn(f"{row['source']}: {row['error']}; not predicted")
            if unread is not None:
                unread.append((row["source"], row["error"]))
            continue
        yield load_movie(row["label"], row["plot"], row["poster_path"], row["root"])


def read_csv_rows(path: str, poster_dir: str = "") -> Iterator[dict]:
    """A predict CSV's rows: label, plot (None in a row short of the plot column), poster path (or None), root,
    source (file:line), and for a row that cannot be read (genre_tf.data.csv_records' limits) the error instead."""
    if not os.path.isfile(path):
        raise ValueError(f"{path} is {'a folder' if os.path.isdir(path) else 'not a regular file'}; "
                         "--csv needs a CSV file")
    root = poster_dir or os.path.dirname(os.path.abspath(path))
    with open(path, "rb") as handle:
        records = read_records(handle)
        header = list(_header(path, next(records, None)))
        count = 0
        for record in records:
            count += 1
            source = f"{path}:{record.line}"
            if record.error:
                yield {"label": f"{path} line {record.line}", "source": source, "error": record.error,
                       "plot": None, "root": root, "poster_path": None}
                continue
            # a short row lacks the last columns; extra fields are ignored
            row = dict(zip(header, record.fields, strict=False))
            poster = (row.get("poster") or "").strip()
            yield {"label": row.get("id") or row.get("title") or f"{path} line {record.line}", "plot": row.get("plot"),
                   "root": root, "source": source, "poster_path": os.path.join(root, poster) if poster else None}
    if not count:
        raise ValueError(f"{path} has no movies (a header line, then one row per movie)")


def _header(path: str, record) -> tuple[str, ...]:
    """The header record's column names, refused when unreadable, without 'plot', or naming a read column twice."""
    if record is None:
        raise ValueError(f"{path} has no movies (a header line, then one row per movie)")
    if record.error:
        raise ValueError(f"{path}: unreadable CSV header at line {record.line}: {record.error}")
    header = record.fields
    if "plot" not in header:
        raise ValueError(f"{path} needs a 'plot' column (and optionally 'poster'); it has {list(header[:20])}")
    repeated = sorted({name for name in READ_COLUMNS if header.count(name) > 1})
    if repeated:
        raise ValueError(f"{path}: column(s) {repeated} appear more than once in the header; which one is "
                         "meant is ambiguous")
    return header


def read_inputs(args, unread: list | None = None) -> Iterator[dict]:
    """The movies asked about on the command line: one --plot (and --poster), or the rows of --csv."""
    if args.csv:
        return read_csv_movies(args.csv, args.poster_dir, unread)
    # A poster named on the command line is the user's own choice of file: its folder is its root.
    root = os.path.dirname(os.path.realpath(args.poster)) if args.poster else ""
    return iter([load_movie("movie", args.plot, args.poster, root)])


def predict(model_dir: str, movies: Iterable[dict], batch_size: int = PREDICT_BATCH) -> Iterator[dict]:
    """Run serving_default on the movies, batch_size at a time; yields one dict per movie, warns of unused inputs."""
    if not 1 <= batch_size <= MAX_REQUEST_MOVIES:
        raise ValueError(f"batch size must be 1 to {MAX_REQUEST_MOVIES} (the model's limit), got {batch_size}")
    serving = load_serving(model_dir)
    movies = iter(movies)
    while batch := list(itertools.islice(movies, batch_size)):
        yield from _results(batch, serving.score(batch), serving.genres, serving.inputs)


class Serving:
    """An export's serving_default signature, its genres and, for a token-id export, the tokenizer it needs."""

    def __init__(self, signature, genres: list[str], tokenize=None, inputs: tuple[str, ...] = ("plot", "poster")):
        self.signature, self.genres, self.tokenize, self.inputs = signature, genres, tokenize, inputs

    def score(self, batch: list[dict]) -> dict:
        """serving_default's outputs (tensors) for movies with 'plot' and 'poster' (bytes or None)."""
        import tensorflow as tf

        plots = tf.constant([m["plot"] for m in batch])
        posters = tf.constant([m["poster"] or b"" for m in batch])
        text = self.tokenize(plots) if self.tokenize is not None else {"plot": plots}
        try:
            return self.signature(**text, poster=posters)
        except tf.errors.InvalidArgumentError as error:  # a refused request: the model's one-line reason
            raise ValueError(f"the model refused the request: {error.message.strip().splitlines()[0][:300]}") from None


def export_info(model_dir: str) -> dict:
    """An export's assets.extra/export_info.json, with `inputs` (what the model reads) also for older exports."""
    info_path = os.path.join(model_dir, "assets.extra", "export_info.json")
    if not os.path.exists(info_path):
        raise FileNotFoundError(f"{model_dir} is not a genre_tf export (no assets.extra/export_info.json)")
    with open(info_path, encoding="utf-8") as handle:
        info = json.load(handle)
    if "inputs" not in info:  # exported before the field existed: the model kind says it
        kind = info.get("model", "integrated")
        info["inputs"] = [name for name, used in (("plot", kind != "poster"),
                                                  ("poster", kind in ("poster", "integrated"))) if used]
    return info


def load_serving(model_dir: str) -> Serving:
    """Load an export (a version folder) for predict and batch_predict alike."""
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  registers the tokenizer ops the export uses

    info = export_info(model_dir)
    signature = tf.saved_model.load(model_dir).signatures["serving_default"]
    tokenize = None
    if info["token_id_inputs"]:
        import tensorflow_hub as hub

        # exports store the preprocessor inside the model folder, relative to it
        tokenize = hub.load(os.path.join(model_dir, info["text_preprocessor_handle"]))
    return Serving(signature, info["genres"], tokenize, tuple(info["inputs"]))


def _results(batch: list[dict], outputs: dict, genres: list[str], inputs: tuple[str, ...]) -> Iterator[dict]:
    for i, m in enumerate(batch):
        used = outputs["inputs_used"][i].numpy().decode("utf-8")
        if m["poster"] is not None and "poster" in inputs and "poster" not in used:
            _warn(f"{m['label']}: poster {m['poster_path']} could not be decoded; predicted from "
                  f"{used if used != 'none' else 'neither input'}")
        if not has_words(m["plot"]):
            _warn(f"{m['label']}: empty plot; predicted from {used if used != 'none' else 'neither input'}")
        yield {"movie": m["label"], "genres": outputs["genres"][i].numpy().decode("utf-8"), "inputs_used": used,
               "probabilities": dict(zip(genres, outputs["probabilities"][i].numpy().round(4).tolist(), strict=True))}


def main(argv=None) -> int:
    """`python -m genre_tf.predict`: 0 once every movie is printed; 2 for a usage error, 1 for one while working."""
    parser = CommandLine(prog="python -m genre_tf.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="MODEL_BASE (latest version) or a version folder")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--plot")
    source.add_argument("--csv")
    parser.add_argument("--poster", default="")
    parser.add_argument("--poster-dir", default="", help="CSV poster paths are relative to (and inside) this folder; "
                                                         "default: the CSV's folder")
    parser.add_argument("--batch-size", type=int, default=PREDICT_BATCH, help="CSV rows per model call")
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of text")
    parser.add_argument("--explain", action="store_true",
                        help="for each predicted genre, the plot words that raised it most and the shares of plot and "
                             "poster, by deleting each word and each input (genre_tf/serve/explain.py)")
    parser.add_argument("--explain-dir", default="", help="with --explain: write a poster occlusion heat map (PNG) "
                                                          "per movie into this folder")
    args = parser.parse_args(argv)
    if not 1 <= args.batch_size <= MAX_REQUEST_MOVIES:
        parser.error(f"--batch-size must be 1 to {MAX_REQUEST_MOVIES} (the model's limit), got {args.batch_size}")
    unread = []
    try:
        if args.explain or args.explain_dir:
            from genre_tf.serve.explain import explain_movies

            serving = load_serving(latest_version(args.model))
            for text in explain_movies(serving, read_inputs(args, unread), args.explain_dir, args.json):
                print(text, flush=True)
        else:
            for result in predict(latest_version(args.model), read_inputs(args, unread), args.batch_size):
                # allow_nan=False: NaN is not JSON; the model refuses to answer it, and this never prints it
                print(json.dumps(result, allow_nan=False) if args.json else format_result(result), flush=True)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if unread:  # every other row is printed; these were each warned about with their line and reason
        print(f"error: {len(unread)} row(s) of {args.csv} could not be read, the first at {unread[0][0]}: "
              f"{unread[0][1]}", file=sys.stderr)
        return 1
    return 0


def latest_version(model_base: str) -> str:
    """MODEL_BASE/<largest integer version>, or model_base itself if it is a SavedModel folder."""
    if os.path.exists(os.path.join(model_base, "saved_model.pb")):
        return model_base
    versions = [int(name) for name in os.listdir(model_base) if name.isdigit()] if os.path.isdir(model_base) else []
    if not versions:
        raise FileNotFoundError(f"{model_base} holds no exported version (MODEL_BASE/<integer>/saved_model.pb)")
    return os.path.join(model_base, str(max(versions)))


def format_result(result: dict) -> str:
    """A movie's predicted genres and every genre's probability, most probable first."""
    ranked = sorted(result["probabilities"].items(), key=lambda item: -item[1])
    return (f"{result['movie']}: {result['genres'] or '(no genre above its threshold)'}  "
            f"[from {result['inputs_used']}]\n  " + "  ".join(f"{g} {p:.3f}" for g, p in ranked))


if __name__ == "__main__":
    sys.exit(main())
