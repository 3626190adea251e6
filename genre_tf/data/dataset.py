"""The prepared dataset on disk (TFRecord shards + metadata) and the tf.data pipelines that read it."""
import dataclasses
import functools
import hashlib
import itertools
import json
import os
import sys
from collections.abc import Iterable, Sequence

import numpy as np
import tensorflow as tf

from genre_tf.data.images import decode_poster
from genre_tf.data.split import multi_hot
from genre_tf.files import file_digest

# Format 2 stores each poster as a PNG of decode_poster's pixels; format 1 (no "format" key) stored a JPEG
# resized and re-encoded by Pillow, whose pixels differ from what the SavedModel computes for the same file.
DATASET_FORMAT = 2
POSTER_STORAGE = "PNG of images.decode_poster's pixels at image_size"
_WARNED_OLD_FORMAT: set[str] = set()
_WARNED_ID_ORDER: set[str] = set()

# Keys of the dicts the pipelines yield; they are also the model's input names.
MOVIE_ID, PLOT, POSTER, POSTER_FEATURES, PLOT_EMBEDDING = (
    "movie_id", "plot", "poster", "poster_features", "plot_embedding")
# text.fine_tune_layers: the cached hidden states below the trained layers, and their mask (one cache, two inputs)
PLOT_STATES, PLOT_MASK = "plot_states", "plot_mask"
_PARSE_SPEC = {
    MOVIE_ID: tf.io.FixedLenFeature([], tf.string),
    PLOT: tf.io.FixedLenFeature([], tf.string),
    POSTER: tf.io.FixedLenFeature([], tf.string),
    "year": tf.io.FixedLenFeature([], tf.int64, default_value=0),
}


def _bytes(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def serialize_example(movie_id: str, plot: str, poster_png: bytes, labels: np.ndarray,
                      year: int | None) -> bytes:
    """One prepared movie as a serialized tf.train.Example, in protobuf's deterministic form (map keys sorted).

    The dataset fingerprint hashes these bytes: protobuf's default map order changed between versions 6 and 7,
    which gave the same records other bytes, another fingerprint and recomputed feature caches.
    """
    feature = {
        MOVIE_ID: _bytes(movie_id.encode("utf-8")),
        PLOT: _bytes(plot.encode("utf-8")),
        POSTER: _bytes(poster_png),
        "labels": tf.train.Feature(float_list=tf.train.FloatList(value=labels.tolist())),
        "year": tf.train.Feature(int64_list=tf.train.Int64List(value=[year or 0])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(deterministic=True)


def write_shards(examples: Iterable[bytes], directory: str, split: str, shard_size: int,
                 count: int | None = None) -> list[str]:
    """Write serialized examples into `split-00000-of-0000N.tfrecord` shards; returns the file names.

    Given their `count`, the examples may be a generator, consumed one at a time.
    """
    if count is None:
        examples = list(examples)
        count = len(examples)
    num_shards = max(1, -(-count // shard_size))
    examples, names = iter(examples), []
    for shard in range(num_shards):
        name = f"{split}-{shard:05d}-of-{num_shards:05d}.tfrecord"
        with tf.io.TFRecordWriter(os.path.join(directory, name)) as writer:
            for example in itertools.islice(examples, shard_size):
                writer.write(example)
        names.append(name)
    return names


@dataclasses.dataclass(frozen=True)
class PreparedDataset:
    """A prepared dataset folder, as `genre_tf.data.prepare` wrote it."""

    path: str
    genres: list[str]
    split: dict[str, list[str]]
    metadata: dict

    @property
    def name(self) -> str:
        return self.metadata.get("name", os.path.basename(self.path))

    @property
    def image_size(self) -> int:
        return int(self.metadata["image_size"])

    @property
    def fingerprint(self) -> str:
        return self.metadata["fingerprint"]

    @property
    def split_record(self) -> dict:
        """How prepare drew the split and the years of each part (dataset.json's "split"); folders prepared
        before 2026-12-07 say only that their split followed the order of the ids."""
        return self.metadata.get("split", {"method": "id order", "detail": "prepared before 2026-12-07: unless the "
                                           "catalogue carried a split, dev and test were drawn in id order"})

    def shards(self, split: str) -> list[str]:
        return [os.path.join(self.path, name) for name in self.metadata["shards"][split]]

    def movies(self) -> Iterable[dict]:
        """The validated records (id, title, plot, genres, year, language, split, has_poster), in file order, read one
        at a time (a large catalogue's plots are not held at once)."""
        with open(os.path.join(self.path, "movies.jsonl"), encoding="utf-8") as handle:
            for line in handle:
                yield json.loads(line)

    @property
    def text_only_movies(self) -> int:
        """How many movies have no poster (kept by rules.require_poster=false or extra_train)."""
        return int(self.metadata.get("text_only", {}).get("movies", 0))

    def ids_with_poster(self, split: str) -> list[str]:
        """The ids of a split's movies that have a poster, in split order."""
        if not self.text_only_movies:
            return list(self.split[split])
        text_only = {movie["movie_id"] for movie in self.movies() if not movie.get("has_poster", True)}
        return [movie_id for movie_id in self.split[split] if movie_id not in text_only]


def load_prepared(path: str) -> PreparedDataset:
    """Open a prepared dataset folder, with a clear error when it is not one."""
    metadata_path = os.path.join(path, "dataset.json")
    if not os.path.exists(metadata_path):
        raise FileNotFoundError(f"{path} is not a prepared dataset (no dataset.json); "
                                "run `python -m genre_tf.prepare CATALOGUE out=DIR` first")
    with open(metadata_path, encoding="utf-8") as handle:
        metadata = json.load(handle)
    check_format(path, metadata.get("format", 1))
    check_split_method(path, metadata)
    with open(os.path.join(path, "genres.txt"), encoding="utf-8") as handle:
        genres = [line.strip() for line in handle if line.strip()]
    with open(os.path.join(path, "split.json"), encoding="utf-8") as handle:
        split = json.load(handle)
    return PreparedDataset(path=path, genres=genres, split=split, metadata=metadata)


def check_format(path: str, version: int) -> None:
    """Refuse a dataset of a newer format; warn (once) that one of an older format trains on other pixels."""
    if version > DATASET_FORMAT:
        raise ValueError(f"{path} is a prepared dataset of format {version}, newer than this genre_tf reads "
                         f"({DATASET_FORMAT}); update genre_tf or re-run `python -m genre_tf.prepare`")
    if version < DATASET_FORMAT and path not in _WARNED_OLD_FORMAT:
        # Still readable (its JPEGs decode), and its feature caches match its own pixels, so it is not refused.
        _WARNED_OLD_FORMAT.add(path)
        print(f"warning: {path} was prepared before dataset format {DATASET_FORMAT}: its posters are JPEGs "
              "resized by Pillow, a few grey levels away from what the SavedModel computes for the same file. "
              "Remove it and re-run `python -m genre_tf.prepare` to train on the pixels serving sees.",
              file=sys.stderr)


def check_split_method(path: str, metadata: dict) -> None:
    """Warn (once) that a folder prepared before 2026-12-07 drew dev and test in id order: with ids that follow
    time (IMDb's), they hold almost only the newest movies. Still readable; runs on it stay comparable."""
    if "split" in metadata or path in _WARNED_ID_ORDER:
        return
    _WARNED_ID_ORDER.add(path)
    catalogue = metadata.get("catalogue") or "CATALOGUE"
    size = metadata.get("config", {}).get("rules", {}).get("image_size")  # the folder's own options, kept
    options = "".join(f" {key}={value}" for key, value in (("name", metadata.get("name")), ("rules.image_size", size))
                      if value)
    print(f"warning: {path} was prepared before 2026-12-07: unless its catalogue carried a split, dev and test were "
          f"drawn in id order (mostly the newest ids); for a random split: python -m genre_tf.prepare {catalogue} "
          f"out=NEW_DIR{options}", file=sys.stderr)


DIGESTED = ("movies.jsonl", "genres.txt", "split.json")  # with the shards: every file a run reads labels or inputs from


def file_digests(directory: str, shards: dict[str, list[str]]) -> dict[str, str]:
    """sha256 of each file a prepared dataset is read from, so a run can tell when one was changed since."""
    names = [*DIGESTED, *(name for split in shards.values() for name in split)]
    return {name: file_digest(os.path.join(directory, name)) for name in names}


def changed_files(prepared: PreparedDataset, recorded: dict[str, list[str]]) -> list[str]:
    """What differs from the recorded digests (each file's, from one record or more), one phrase per file
    ('movies.jsonl was changed')."""
    changes = []
    for name, digests in recorded.items():
        path = os.path.join(prepared.path, name)
        if not os.path.exists(path):
            changes.append(f"{name} is missing")
        elif set(digests) != {file_digest(path)}:
            changes.append(f"{name} was changed")
    return changes


def split_labels(prepared: PreparedDataset, split: str) -> dict[str, np.ndarray]:
    """Ids and multi-hot labels of one split, in the split's order."""
    ids = prepared.split[split]
    wanted = set(ids)
    genres_of = {movie["movie_id"]: movie["genres"] for movie in prepared.movies() if movie["movie_id"] in wanted}
    return {"ids": ids, "labels": multi_hot([genres_of[i] for i in ids], prepared.genres)}


def raw_examples(prepared: PreparedDataset, split: str, limit: int | None = None):
    """(plot texts, poster bytes as stored) of a split, in split order: what a serving client sends.

    The posters are encoded images the SavedModel reads (PNG since dataset format 2, JPEG before) and
    decodes to the pixels training sees.
    """
    spec = {PLOT: _PARSE_SPEC[PLOT], POSTER: _PARSE_SPEC[POSTER]}
    records = tf.data.TFRecordDataset(prepared.shards(split)).take(-1 if limit is None else limit)
    parsed = [tf.io.parse_single_example(record, spec) for record in records]
    return [p[PLOT].numpy().decode("utf-8") for p in parsed], [p[POSTER].numpy() for p in parsed]


def split_plots(prepared: PreparedDataset, split: str) -> list[str]:
    """Every plot of a split, in split order (for classic models)."""
    wanted = set(prepared.split[split])
    plot_of = {movie["movie_id"]: movie["plot"] for movie in prepared.movies() if movie["movie_id"] in wanted}
    return [plot_of[movie_id] for movie_id in prepared.split[split]]


def split_posters(prepared: PreparedDataset, split: str, image_size: int, batch_size: int = 64) -> np.ndarray:
    """Every poster of a split decoded to uint8 [movies, size, size, 3], in split order (for classic models)."""
    dataset = make_dataset(prepared, split, batch_size, training=False, input_names=[POSTER], image_size=image_size)
    batches = [inputs[POSTER].numpy() for inputs, _ in dataset]
    return np.concatenate(batches) if batches else np.zeros((0, image_size, image_size, 3), np.uint8)


CACHE_ROW = "_cache_id"  # the movie_id a batch carries until its cached features are added (add_cached_features)


_ROW_INDEXES: dict[str, tf.lookup.StaticHashTable] = {}
ROW_INDEXES_KEPT = 8


def row_index(ids: Sequence[str]) -> tf.lookup.StaticHashTable:
    """A movie_id -> row table over a cache's ids, built once per list of ids and shared by every dataset that reads
    it (the plot and poster caches of a dataset have the same ids): a table per dataset would hold a copy of every
    id for as long as the process runs."""
    def build():
        return tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
            tf.constant(list(ids)), tf.range(len(ids), dtype=tf.int64)), default_value=-1, name="cache_row_index")
    if not tf.executing_eagerly():  # a table made inside a graph cannot serve a later one
        return build()
    key = hashlib.sha256("\n".join(ids).encode()).hexdigest()
    if key not in _ROW_INDEXES:
        if len(_ROW_INDEXES) >= ROW_INDEXES_KEPT:
            _ROW_INDEXES.pop(next(iter(_ROW_INDEXES)))
        _ROW_INDEXES[key] = build()
    return _ROW_INDEXES[key]


def make_lookup(ids: Sequence[str], values, name: str):
    """A function mapping a batch of movie_id tensors to {input name: their rows} of a feature cache.

    The rows are gathered after batching, never held again as a graph constant, in a dataset's cache or in the shuffle
    buffer (those see ids and labels alone): a store's rows (data/features.StoredRows) are read from disk batch by
    batch, an array's are indexed. A cache of hidden states (data/states.StoredStates) reads each batch's rows from
    disk, padded to the batch's longest plot, as two inputs: plot_states and plot_mask.
    """
    table = row_index(ids)
    if name == PLOT_STATES:
        def read_states(movie_ids):
            rows = table.lookup(movie_ids)
            tf.debugging.assert_non_negative(rows, message=f"movie_id missing from the {name} cache")
            states, mask = tf.numpy_function(values.batch, [rows], [tf.float32, tf.int32], stateful=False)
            return {PLOT_STATES: tf.ensure_shape(states, [None, None, values.shape[1]]),
                    PLOT_MASK: tf.ensure_shape(mask, [None, None])}
        return read_states
    if isinstance(values, np.ndarray | list):
        values = np.asarray(values, np.float32)

    def lookup(movie_ids):
        rows = table.lookup(movie_ids)
        tf.debugging.assert_non_negative(rows, message=f"movie_id missing from the {name} cache")
        features = tf.numpy_function(lambda index: values[index], [rows], tf.float32, stateful=False)
        return {name: tf.ensure_shape(features, [None, values.shape[1]])}

    return lookup


def cache_inputs(name: str) -> tuple[str, ...]:
    """The model inputs a feature cache named `name` provides."""
    return (PLOT_STATES, PLOT_MASK) if name == PLOT_STATES else (name,)


def add_cached_features(lookups: dict, input_names: Sequence[str]):
    """A map over batches that puts each cached input wanted in place of the batch's movie ids."""
    def add(inputs, labels):
        inputs = dict(inputs)
        movie_ids = inputs.pop(CACHE_ROW)
        for name, lookup in lookups.items():
            if set(cache_inputs(name)) & set(input_names):
                inputs.update(lookup(movie_ids))
        return inputs, labels
    return add


def has_poster(serialized) -> tf.Tensor:
    """Whether a serialized example holds a poster (a text-only movie's is empty)."""
    return tf.strings.length(tf.io.parse_single_example(serialized, {POSTER: _PARSE_SPEC[POSTER]})[POSTER]) > 0


def epoch_examples(files: list[str], parse, cache: bool, repeated: bool, buffer: int, seed: int, keep=None):
    """A function from an epoch number to that epoch's shuffled training examples (those `keep` accepts, if given),
    deterministically."""
    def read(file_order):
        dataset = tf.data.TFRecordDataset(file_order, num_parallel_reads=tf.data.AUTOTUNE)
        dataset = dataset if keep is None else dataset.filter(keep)
        return dataset.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def repeat(dataset):
        if not repeated:
            return dataset
        return dataset.flat_map(lambda inputs, labels: tf.data.Dataset.from_tensors(
            ({k: v for k, v in inputs.items() if k != "_repeat"}, labels)).repeat(inputs["_repeat"]))

    cached = read(tf.data.Dataset.from_tensor_slices(files)).cache() if cache else None

    def one_epoch(epoch):
        epoch_seed = (seed * 1_000_003 + epoch) % 2**31
        if cached is not None:
            dataset = cached
        else:
            dataset = read(tf.data.Dataset.from_tensor_slices(files).shuffle(len(files), seed=epoch_seed))
        return repeat(dataset).shuffle(buffer, seed=epoch_seed)
    return one_epoch


def make_dataset(prepared: PreparedDataset, split: str, batch_size: int, *, training: bool,
                 input_names: Sequence[str], image_size: int | None = None,
                 feature_caches: dict[str, tuple] | None = None,
                 repeat_counts: dict[str, int] | None = None, cache: bool = False,
                 seed: int = 0, epochs: Sequence[int] | None = None, with_poster_only: bool = False) -> tf.data.Dataset:
    """Batches of ({input_name: tensor}, multi-hot labels) for one split.

    feature_caches maps an input name (poster_features, plot_embedding) to (ids, rows: a store's or an array); those
    inputs are looked up by movie_id instead of being computed. repeat_counts oversamples training
    rows. Training shuffles and drops the last partial batch (soft-F1 is computed over a batch); its dataset
    holds the given epochs (default: one) one after the other, each in the order of (seed, epoch).
    with_poster_only leaves text-only movies out; otherwise a text-only movie's poster is a blank image.
    """
    num_genres = len(prepared.genres)
    spec = dict(_PARSE_SPEC, labels=tf.io.FixedLenFeature([num_genres], tf.float32))
    lookups = {name: make_lookup(ids, values, name) for name, (ids, values) in (feature_caches or {}).items()}
    image_size = image_size or prepared.image_size
    provided = {key for name in lookups for key in cache_inputs(name)}
    unknown = set(input_names) - {MOVIE_ID, PLOT, POSTER, "year", *provided}
    if unknown:
        raise ValueError(f"the dataset cannot provide inputs {sorted(unknown)}; caches given: {sorted(lookups)}")

    repeat_table = None if repeat_counts is None else tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(list(repeat_counts)),
                                            tf.constant(list(repeat_counts.values()), tf.int64)), default_value=1)

    def parse(serialized):
        example = tf.io.parse_single_example(serialized, spec)
        inputs = {name: example[name] for name in input_names if name in example and name != POSTER}
        if lookups:
            inputs[CACHE_ROW] = example[MOVIE_ID]
        if POSTER in input_names:
            inputs[POSTER] = tf.cond(tf.strings.length(example[POSTER]) > 0,
                                     lambda: decode_poster(example[POSTER], image_size),
                                     lambda: tf.zeros([image_size, image_size, 3], tf.uint8))  # serving's blank
        if repeat_table is not None:
            inputs["_repeat"] = repeat_table.lookup(example[MOVIE_ID])
        return inputs, example["labels"]
    files = prepared.shards(split)
    keep = has_poster if with_poster_only else None
    if not training:
        dataset = tf.data.TFRecordDataset(tf.data.Dataset.from_tensor_slices(files))
        dataset = dataset if keep is None else dataset.filter(keep)
        dataset = dataset.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        dataset = (dataset.cache() if cache else dataset).batch(batch_size)
    else:
        size = sum(repeat_counts.values()) if repeat_counts else len(prepared.split[split])
        one_epoch = epoch_examples(files, parse, cache, repeat_counts is not None, min(size, 20_000), seed, keep)
        # Each epoch's order follows from (seed, epoch) alone, so a run resumed at epoch k reads what an
        # uninterrupted run reads there (a shuffle with reshuffle_each_iteration would start over).
        batches = [one_epoch(epoch).batch(batch_size, drop_remainder=True) for epoch in (epochs or range(1))]
        dataset = functools.reduce(tf.data.Dataset.concatenate, batches)
    if lookups:
        dataset = dataset.map(add_cached_features(lookups, input_names), num_parallel_calls=tf.data.AUTOTUNE,
                              deterministic=True)
    dataset = dataset.prefetch(tf.data.AUTOTUNE)
    # Multi-worker training shards by batch: a split may have fewer files than there are workers.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)
