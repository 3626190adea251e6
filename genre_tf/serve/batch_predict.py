"""Batch scoring on Apache Beam: RunInference over an exported SavedModel, one JSON line per movie.

    python -m genre_tf.batch_predict --model models/genre_tf --input movies.csv --output scored/
    python -m genre_tf.batch_predict --model models/genre_tf --input movies.csv --output scored/ \\
        --direct_num_workers=2 --direct_running_mode=multi_processing

The CSV is read as `python -m genre_tf.predict --csv` reads it (a 'plot' column, optionally 'poster', 'id',
'title'; poster paths inside the CSV's folder or --poster-dir, through the same bounded reader). Each worker
loads the export once and runs its serving_default signature on batches, so the tokeniser, poster decoder,
thresholds and fallbacks are the served model's own. OUT/predictions.jsonl holds predict's --json rows;
OUT/dead_letters.jsonl holds each row that could not be scored as given (movie, source, reason), and the
others go on. Every option this command does not know is a Beam pipeline option (--runner, --direct_num_workers,
a Flink, Spark or Dataflow runner's flags).
"""
import argparse
import dataclasses
import functools
import json
import os
import shutil
import sys
from collections.abc import Iterator, Sequence

import apache_beam as beam
from apache_beam.ml.inference.base import ModelHandler, PredictionResult, RunInference
from apache_beam.options.pipeline_options import PipelineOptions

from genre_tf.limits import MAX_REQUEST_MOVIES, oversized_plot
from genre_tf.data.beam_features import WorkerProgress
from genre_tf.data.records import has_words
from genre_tf.files import InputFileError, read_poster_file, refuse_to_write_into, staging_folder
from genre_tf.serve.predict import PREDICT_BATCH, export_info, latest_version, load_serving, read_csv_rows
from genre_tf.config import CommandLine

DEAD = "dead_letters"
# Encoded poster bytes in one model call (a real poster takes well under its 0.5 MiB share of a batch of 32). A
# batch holds several copies of its posters' bytes (Beam's list, the request tensor, the decoder's gather) while
# their pixels are decoded one at a time: 8 noise JPEGs of 30 MP (15.8 MiB each) in one batch peaked at 2.17 GB of
# RSS against 1.43 GB for one alone, 1.49 GB in batches this budget cuts.
BATCH_POSTER_BYTES = 16 * 2**20
PREDICTIONS_FILE, DEAD_LETTERS_FILE = "predictions.jsonl", "dead_letters.jsonl"


@dataclasses.dataclass(frozen=True)
class BatchPredictConfig:
    """What to score and where the results go; Beam's own options travel separately."""

    model: str = ""          # an export's version folder
    input: str = ""          # a predict CSV
    output: str = ""         # a folder: predictions.jsonl and dead_letters.jsonl
    poster_dir: str = ""     # poster paths are relative to (and inside) this folder; default the CSV's
    batch_size: int = PREDICT_BATCH  # movies per serving_default call, as predict's --batch-size
    digits: int = 4          # probabilities rounded as predict prints them; negative: unrounded float32


def dead_letter(row: dict, reason: str) -> dict:
    """A row set aside: its label, its file and line, and why."""
    return {"movie": row["label"], "source": row["source"], "reason": reason}


def load_row(row: dict, inputs: Sequence[str] = ("plot", "poster")) -> Iterator:
    """A CSV row with its poster bytes read (bounded, inside its root), or its dead letter.

    A row is judged by the inputs the model takes alone: a text model never reads posters, a poster model never
    sends plots.
    """
    if row.get("error"):
        yield beam.pvalue.TaggedOutput(DEAD, dead_letter(row, row["error"]))
        return
    if row["plot"] is None:
        yield beam.pvalue.TaggedOutput(DEAD, dead_letter(row, "the row has fewer fields than the header (no plot)"))
        return
    plot = row["plot"] if "plot" in inputs else ""
    if reason := oversized_plot(plot):
        yield beam.pvalue.TaggedOutput(DEAD, dead_letter(row, reason))
        return
    poster = None
    if row["poster_path"] and "poster" in inputs:
        try:
            poster = read_poster_file(row["poster_path"], row["root"])
        except InputFileError as error:
            yield beam.pvalue.TaggedOutput(DEAD, dead_letter(row, str(error)))
            return
    if poster is None and not has_words(plot):
        reason = ("neither a plot nor a poster" if len(inputs) == 2
                  else f"no {inputs[0]} (the only input this model takes)")
        yield beam.pvalue.TaggedOutput(DEAD, dead_letter(row, reason))
        return
    yield {"label": row["label"], "source": row["source"], "plot": plot, "poster": poster,
           "poster_path": row["poster_path"] or ""}


class GenreModelHandler(ModelHandler):
    """RunInference's handle on an export: loaded once per worker process, serving_default called per batch."""

    def __init__(self, model_dir: str, batch_size: int = PREDICT_BATCH):
        # Fixed batches of predict's size, not Beam's adaptive ones: the same calls of the model as predict makes,
        # unless their posters exceed BATCH_POSTER_BYTES (a movie weighs its share of the batch's byte budget)
        super().__init__(min_batch_size=batch_size, max_batch_size=batch_size,
                         element_size_fn=functools.partial(movie_weight, batch_size=batch_size))
        self.model_dir = model_dir
        self.progress = WorkerProgress("batch_predict", "movies scored")

    def load_model(self):
        return load_serving(self.model_dir)

    def run_inference(self, batch: Sequence[dict], model, inference_args=None) -> list[PredictionResult]:
        outputs = model.score(list(batch))
        probabilities = outputs["probabilities"].numpy()
        genres, used = outputs["genres"].numpy(), outputs["inputs_used"].numpy()
        self.progress.add(len(batch))
        return [PredictionResult(movie, {"probabilities": probabilities[i], "genres": genres[i].decode("utf-8"),
                                         "inputs_used": used[i].decode("utf-8"), "genre_names": model.genres})
                for i, movie in enumerate(batch)]

    def get_num_bytes(self, batch: Sequence[dict]) -> int:
        return sum(len(movie["plot"].encode("utf-8")) + len(movie["poster"] or b"") for movie in batch)

    def get_metrics_namespace(self) -> str:
        return "genre_tf"


def movie_weight(movie: dict, batch_size: int) -> int:
    """A movie's weight in a batch of `batch_size`: 1, or more when its poster takes more than its share of
    BATCH_POSTER_BYTES; at most the whole batch, so a movie is never refused a batch of its own."""
    share = BATCH_POSTER_BYTES // batch_size
    return min(batch_size, max(1, -(-len(movie["poster"] or b"") // share)))


def to_row(result: PredictionResult, digits: int = 4) -> Iterator:
    """predict's --json row for a scored movie, or a dead letter when its poster did not decode."""
    movie, inference = result.example, result.inference
    if movie["poster"] is not None and "poster" not in inference["inputs_used"]:
        reason = f"poster {movie['poster_path']} could not be decoded (the model used {inference['inputs_used']})"
        yield beam.pvalue.TaggedOutput(DEAD, {"movie": movie["label"], "source": movie["source"], "reason": reason})
        return
    probabilities = inference["probabilities"]
    # numpy's round on the float32 array, then tolist: the very numbers predict prints
    values = (probabilities.round(digits) if digits >= 0 else probabilities).tolist()
    yield {"movie": movie["label"], "genres": inference["genres"], "inputs_used": inference["inputs_used"],
           "probabilities": dict(zip(inference["genre_names"], values, strict=True))}


def build_pipeline(pipeline: beam.Pipeline, config: BatchPredictConfig, inputs: Sequence[str]) -> None:
    """Read rows, load posters, score in batches, and write predictions and dead letters."""
    rows = (pipeline
            | "Csv" >> beam.Create([config.input])
            | "ReadRows" >> beam.FlatMap(read_csv_rows, config.poster_dir)
            # one reader streams the CSV; the reshuffle spreads poster reading and scoring over the workers
            | "Spread" >> beam.Reshuffle()
            | "LoadPosters" >> beam.FlatMap(load_row, inputs).with_outputs(DEAD, main="movies"))
    scored = (rows.movies
              | "Score" >> RunInference(GenreModelHandler(config.model, config.batch_size))
              | "Format" >> beam.FlatMap(to_row, config.digits).with_outputs(DEAD, main="results"))
    write = {"predictions": (scored.results, PREDICTIONS_FILE),
             "dead letters": ((rows[DEAD], scored[DEAD]) | "AllDead" >> beam.Flatten(), DEAD_LETTERS_FILE)}
    for name, (collection, file_name) in write.items():
        stem = os.path.join(config.output, file_name.removesuffix(".jsonl"))
        (collection
         | f"Json {name}" >> beam.Map(json.dumps, ensure_ascii=False)
         | f"Write {name}" >> beam.io.WriteToText(stem, file_name_suffix=".jsonl", shard_name_template=""))


def prepare_output(output: str, model: str) -> str:
    """Check --output before the pipeline starts (a folder, or a path where one can be made) and make a staging
    folder inside it for this run; OSError names the problem in one line."""
    if os.path.exists(output) and not os.path.isdir(output):
        raise ValueError(f"--output {output} is a file; give a folder (it is made if missing)")
    refuse_to_write_into(output, "--output", {"--model": model})
    try:
        os.makedirs(output, exist_ok=True)
        return staging_folder(output, "batch_predict")
    except OSError as error:
        raise ValueError(f"--output {output} cannot be written: {error.strerror or error}") from None


def publish(staging: str, output: str) -> None:
    """Replace the previous run's two files by this run's, both or neither: the old ones are moved into staging
    first and moved back when a step fails, so a failed rerun leaves the last run's two files as they were."""
    for name in (PREDICTIONS_FILE, DEAD_LETTERS_FILE):
        path = os.path.join(output, name)
        if os.path.lexists(path) and not os.path.isfile(path) or os.path.islink(path):
            raise ValueError(f"{path} is not a regular file; move it away, then rerun")
    moved = []
    try:
        for name in (PREDICTIONS_FILE, DEAD_LETTERS_FILE):
            if os.path.exists(os.path.join(output, name)):
                os.replace(os.path.join(output, name), os.path.join(staging, f"previous-{name}"))
                moved.append(name)
        for name in (PREDICTIONS_FILE, DEAD_LETTERS_FILE):
            os.replace(os.path.join(staging, name), os.path.join(output, name))
    except OSError:
        for name in moved:
            os.replace(os.path.join(staging, f"previous-{name}"), os.path.join(output, name))
        raise


def batch_predict(config: BatchPredictConfig, beam_args: Sequence[str] = ()) -> dict:
    """Run the pipeline to completion; returns the two output paths and their line counts.

    The pipeline writes into a staging folder inside --output; only a run that completes replaces the files of
    the previous one, and a failed run leaves them (and no beam-temp-* folders) as they were.
    """
    next(iter(read_csv_rows(config.input, config.poster_dir)))  # a missing column or an empty CSV: fail now
    inputs = tuple(export_info(config.model)["inputs"])
    options = PipelineOptions(list(beam_args))
    staging = prepare_output(config.output, config.model)
    try:
        with beam.Pipeline(options=options) as pipeline:
            build_pipeline(pipeline, dataclasses.replace(config, output=staging), inputs)
        publish(staging, config.output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    summary = {}
    for key, name in (("predictions", PREDICTIONS_FILE), ("dead_letters", DEAD_LETTERS_FILE)):
        summary[key] = path = os.path.join(config.output, name)
        with open(path, encoding="utf-8") as handle:
            summary[f"{key}_count"] = sum(1 for _ in handle)
    return summary


def main(argv=None) -> int:
    """`python -m genre_tf.batch_predict`: 0 when the pipeline ran; 2 for a usage error, 1 for one while working."""
    parser = CommandLine(prog="python -m genre_tf.batch_predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="MODEL_BASE (latest version) or a version folder")
    parser.add_argument("--input", required=True, help="a CSV as predict --csv reads it")
    parser.add_argument("--output", required=True, help="a folder for predictions.jsonl and dead_letters.jsonl")
    parser.add_argument("--poster-dir", default="", help="poster paths are relative to (and inside) this folder")
    parser.add_argument("--batch-size", type=int, default=PREDICT_BATCH, help="movies per model call")
    parser.add_argument("--digits", type=int, default=4, help="decimals of the probabilities; -1: unrounded")
    args, beam_args = parser.parse_known_args(argv)
    if not 1 <= args.batch_size <= MAX_REQUEST_MOVIES:
        parser.error(f"--batch-size must be 1 to {MAX_REQUEST_MOVIES} (the model's limit), got {args.batch_size}")
    try:
        config = BatchPredictConfig(model=latest_version(args.model), input=args.input, output=args.output,
                                    poster_dir=args.poster_dir, batch_size=args.batch_size, digits=args.digits)
        summary = batch_predict(config, beam_args)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"scored {summary['predictions_count']} movies into {summary['predictions']}; "
          f"{summary['dead_letters_count']} dead letters in {summary['dead_letters']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
