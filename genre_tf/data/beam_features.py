"""Frozen features on Apache Beam: RunInference runs the text and poster encoders over a prepared dataset and publishes
their rows into the content-keyed store that the in-process path (features.py) reads, so training takes them as they
are. Movies whose content is already stored are skipped, so a rerun after a kill encodes only what is missing.
"""
import dataclasses
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence

import apache_beam as beam
import numpy as np
import tensorflow as tf
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.ml.inference.base import ModelHandler, PredictionResult, RunInference
from apache_beam.options.pipeline_options import PipelineOptions
from google.protobuf.message import DecodeError

from genre_tf.data.dataset import MOVIE_ID, PLOT, PreparedDataset
from genre_tf.data.features import PART_SIZE, FrozenEncoder, content_digest, stored_digests, write_part
from genre_tf.data.images import decode_poster
from genre_tf.data.readers import SPLIT_NAMES
from genre_tf.files import staging_folder

DEAD = "dead_letters"
NAMESPACE = "genre_tf.features"
# Several worker processes on this machine unless the command names its own: Beam's DirectRunner runs one by default.
DEFAULT_BEAM_ARGS = ("--direct_num_workers=2", "--direct_running_mode=multi_processing")
# Plots are batched with plots of similar length: the text encoder trims a batch to its longest plot (rounded up to 16
# tokens), so a batch of short plots skips the padding. Words, about 1.3 tokens each, stand for tokens; past about 96
# words every plot fills the default 128 tokens.
PLOT_WORD_BUCKETS = [24, 40, 56, 72, 96]
PROGRESS_SECONDS = 30


@dataclasses.dataclass(frozen=True)
class Content:
    """One plot or poster to encode, once for the movies of a shard that share it."""

    digest: str
    movies: tuple[str, ...]
    value: object  # the plot's text, the poster's PNG bytes, then its decoded pixels


def dead_letter(movies: Sequence[str], input_name: str, reason: str) -> dict:
    """A record set aside: the movies it names, the input that failed, and why."""
    return {"movies": list(movies), "input": input_name, "reason": reason}


def shard_records(path: str, input_name: str) -> Iterator:
    """(movie id, content bytes) of each record of a shard, or a dead letter (a dict) for a record that cannot be
    read, naming the shard and the record."""
    index = -1
    try:
        for index, record in enumerate(tf.data.TFRecordDataset(path).as_numpy_iterator()):
            try:
                feature = tf.train.Example.FromString(record).features.feature
                yield feature[MOVIE_ID].bytes_list.value[0].decode("utf-8"), feature[input_name].bytes_list.value[0]
            except (DecodeError, IndexError, UnicodeDecodeError) as error:
                reason = f"record {index} of {path} is not a prepared movie with a {input_name} ({error or 'empty'})"
                yield dead_letter([f"{path}#{index}"], input_name, reason)
    except tf.errors.OpError as error:  # a truncated or corrupted shard: its later records cannot be reached
        reason = f"{path} cannot be read after record {index}: {error.message.strip().splitlines()[0][:200]}"
        yield dead_letter([f"{path}#{index + 1}.."], input_name, reason)


def read_contents(path: str, input_name: str, stored: frozenset[str]) -> Iterator[Content]:
    """Each content of a shard that is not in the store, once, with the ids of the shard's movies that hold it (a
    plot as text), and the dead letters of its unreadable records.

    The shard is read twice, the first time for its digests alone, so that no more than one content at a time is
    held: a content shared by movies of two shards is encoded once in each (and stored twice, alike).
    """
    movies = {}
    for record in shard_records(path, input_name):
        if isinstance(record, dict):
            yield beam.pvalue.TaggedOutput(DEAD, record)
        elif record[1]:  # a text-only movie's empty poster: nothing to encode (training gives it the mean)
            movies.setdefault(content_digest(record[1]), []).append(record[0])
    for record in shard_records(path, input_name):
        digest = None if isinstance(record, dict) else content_digest(record[1])
        if digest in movies and digest not in stored:
            value = record[1].decode("utf-8") if input_name == PLOT else record[1]
            yield Content(digest, tuple(movies.pop(digest)), value)


def decode_content(content: Content, image_size: int) -> Iterator:
    """The poster decoded as training decodes it (images.decode_poster), or its dead letter."""
    try:
        pixels = decode_poster(tf.constant(content.value), image_size).numpy()
    except tf.errors.OpError as error:
        reason = f"poster could not be decoded: {error.message.strip().splitlines()[0][:200]}"
        yield beam.pvalue.TaggedOutput(DEAD, dead_letter(content.movies, "poster", reason))
        return
    yield dataclasses.replace(content, value=pixels)


def plot_words(content: Content) -> int:
    """A plot's length in words, standing for its length in tokens when batching."""
    return len(content.value.split())


class WorkerProgress:
    """A line on stderr every PROGRESS_SECONDS from each worker process of a RunInference step: what it has done and
    how fast. Its clock starts at the first count, in the process that counts (a handler is built by the driver and
    unpickled in each worker)."""

    def __init__(self, label: str, verb: str):
        self.label, self.verb, self.state = label, verb, None

    def add(self, count: int) -> None:
        now = time.monotonic()
        started, done, shown = self.state or (now, 0, now)
        done += count
        if now - shown >= PROGRESS_SECONDS:
            rate = done / max(now - started, 1e-6)
            print(f"{self.label}: {done} {self.verb} by worker {os.getpid()} ({rate:.1f} a second)", file=sys.stderr,
                  flush=True)
            shown = now
        self.state = (started, done, shown)


class FrozenEncoderHandler(ModelHandler):
    """RunInference's handle on a frozen encoder: built once per worker process, called per batch of contents."""

    def __init__(self, encoder: FrozenEncoder, batch_size: int):
        plots = encoder.input_name == PLOT
        # Fixed batches of the in-process path's size; plots bucketed by length (PLOT_WORD_BUCKETS)
        super().__init__(min_batch_size=batch_size, max_batch_size=batch_size,
                         batch_length_fn=plot_words if plots else None,
                         batch_bucket_boundaries=PLOT_WORD_BUCKETS if plots else None)
        self.encoder = encoder
        self.encoded = Metrics.counter(NAMESPACE, f"encoded_{encoder.name}")
        self.progress = WorkerProgress(encoder.name, "encoded")

    def load_model(self):
        model = self.encoder.build()
        return tf.function(lambda x: model(x, training=False), reduce_retracing=True)

    def run_inference(self, batch: Sequence[Content], model, inference_args=None) -> list[PredictionResult]:
        values = [content.value for content in batch]
        rows = model(tf.constant(values) if self.encoder.input_name == PLOT else np.stack(values))
        self.encoded.inc(len(batch))
        self.progress.add(len(batch))
        return [PredictionResult(content, row) for content, row in zip(batch, rows.numpy().astype(np.float32),
                                                                       strict=True)]

    def get_metrics_namespace(self) -> str:
        return NAMESPACE


def finite_row(result: PredictionResult, input_name: str) -> Iterator:
    """(digest, features) of an encoded content, or a dead letter when the encoder gave NaN or Inf."""
    if not np.all(np.isfinite(result.inference)):
        reason = "the encoder gave non-finite features (NaN or Inf); they are not stored"
        yield beam.pvalue.TaggedOutput(DEAD, dead_letter(result.example.movies, input_name, reason))
        return
    yield result.example.digest, result.inference


def failed_batch(failure: tuple, input_name: str) -> Iterator[dict]:
    """A dead letter for every content of a batch the encoder raised on."""
    batch, error = failure
    reason = f"the encoder failed on its batch of {len(batch)}: {type(error).__name__}: {str(error)[:200]}"
    for content in batch:
        yield dead_letter(content.movies, input_name, reason)


class PublishParts(beam.DoFn):
    """Publish encoded rows into the store, a part (features.write_part: atomic, named by its digests) every
    `part_size` rows and at the end of a bundle, so a killed job keeps every part it finished."""

    def __init__(self, name: str, folder: str, part_size: int):
        # the folder is resolved where the job starts: a worker elsewhere may have another cache root
        self.name, self.folder, self.part_size = name, folder, part_size
        self.published = Metrics.counter(NAMESPACE, f"published_{name}")

    def start_bundle(self):
        self.pending = []

    def process(self, row: tuple[str, np.ndarray]):
        self.pending.append(row)
        if len(self.pending) >= self.part_size:
            self.publish()

    def finish_bundle(self):
        if self.pending:
            self.publish()

    def publish(self):
        digests, rows = zip(*self.pending, strict=True)
        write_part(self.folder, list(digests), np.stack(rows))
        self.published.inc(len(digests))
        print(f"{self.name}: published a part of {len(digests)} movies in {self.folder}",
              file=sys.stderr, flush=True)
        self.pending = []


def encode_into_store(pipeline: beam.Pipeline, shards: list[str], encoder: FrozenEncoder, stored: frozenset[str],
                      batch_size: int, part_size: int) -> list:
    """One encoder's branch of the pipeline: read the contents it lacks, encode them, publish parts; returns its
    dead-letter collections."""
    label = encoder.name
    # Only the shards' paths are spread over the workers: each worker reads, decodes, encodes and publishes its
    # shards in one fused stage, so no runner holds the posters between stages (a group-by-key of the contents had
    # peaked at 3.5 GB on the 5,230 real movies)
    read = (pipeline
            | f"{label}: shards" >> beam.Create(shards)
            | f"{label}: spread" >> beam.Reshuffle()
            | f"{label}: read" >> beam.FlatMap(read_contents, encoder.input_name, stored).with_outputs(
                DEAD, main="new"))
    contents, dead = read.new, [read[DEAD]]
    if encoder.input_name != PLOT:
        decoded = contents | f"{label}: decode" >> beam.FlatMap(decode_content, encoder.image_size).with_outputs(
            DEAD, main="pixels")
        contents, dead = decoded.pixels, dead + [decoded[DEAD]]
    encoded, failed = (contents | f"{label}: encode" >> RunInference(
        FrozenEncoderHandler(encoder, batch_size)).with_exception_handling())
    rows = encoded | f"{label}: finite" >> beam.FlatMap(finite_row, encoder.input_name).with_outputs(DEAD, main="rows")
    _ = rows.rows | f"{label}: publish" >> beam.ParDo(PublishParts(label, encoder.folder, part_size))
    failures = failed.failed_inferences | f"{label}: failed" >> beam.FlatMap(failed_batch, encoder.input_name)
    return dead + [rows[DEAD], failures]


def beam_options(beam_args: Sequence[str]) -> PipelineOptions:
    """Beam's options from the command line, with DEFAULT_BEAM_ARGS for the direct_* options it does not set."""
    given = {arg.split("=", 1)[0] for arg in beam_args}
    defaults = [arg for arg in DEFAULT_BEAM_ARGS if arg.split("=", 1)[0] not in given]
    return PipelineOptions([*defaults, *beam_args])


def counters(result) -> dict[str, int]:
    """The job's counters (encoded_NAME, published_NAME), summed over the workers."""
    found = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]
    totals = {}
    for counter in found:
        totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + counter.committed
    return totals


def compute_features(prepared: PreparedDataset, encoders: Sequence[FrozenEncoder], dead_letters: str,
                     beam_args: Sequence[str] = (), batch_size: int = 32, part_size: int = PART_SIZE) -> dict:
    """Run the job to completion over every split of `prepared`; returns what each encoder found stored, encoded
    and published, and the dead letters (written to `dead_letters`, JSON lines, replaced whole)."""
    shards = [path for split in SPLIT_NAMES for path in prepared.shards(split)]
    summary = {}
    pipeline = beam.Pipeline(options=beam_options(beam_args))
    dead = []
    for encoder in encoders:
        stored = frozenset(stored_digests(encoder.folder))
        summary[encoder.name] = {"store": encoder.folder, "stored_before": len(stored)}
        print(f"{encoder.name}: {len(stored)} contents already in {encoder.folder}; encoding the movies of "
              f"{prepared.name} that are not", file=sys.stderr)
        dead += encode_into_store(pipeline, shards, encoder, stored, batch_size, part_size)
    parent = os.path.dirname(os.path.abspath(dead_letters))
    staging = staging_folder(parent, "features")
    try:
        _ = (tuple(dead) | "dead letters" >> beam.Flatten()
             | "json" >> beam.Map(json.dumps, ensure_ascii=False)
             | "write" >> beam.io.WriteToText(os.path.join(staging, "dead"), file_name_suffix=".jsonl",
                                              shard_name_template=""))
        result = pipeline.run()
        result.wait_until_finish()
        os.replace(os.path.join(staging, "dead.jsonl"), dead_letters)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    totals = counters(result)
    for encoder in encoders:
        summary[encoder.name].update(encoded=totals.get(f"encoded_{encoder.name}", 0),
                                     published=totals.get(f"published_{encoder.name}", 0))
    with open(dead_letters, encoding="utf-8") as handle:
        summary["dead_letters"] = [json.loads(line) for line in handle]
    return summary
