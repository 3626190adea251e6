"""Feature caches: poster features and frozen plot embeddings, computed once per encoder and movie content.

A cache is a folder per encoder identity holding parts (`part-*.npz`: content digests and features). A movie's row
is found by the sha256 of its own plot text or poster bytes, never by its dataset or split, so re-preparing a
catalogue with another split, growing it, or training another run on it encodes only what was never encoded.
"""
import glob
import hashlib
import os
import sys
import zipfile

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from genre_tf.data.dataset import MOVIE_ID, PLOT, POSTER, PreparedDataset, make_dataset
from genre_tf.data.images import decode_poster
from genre_tf.data.readers import SPLIT_NAMES
from genre_tf.files import atomic_path, cache_root

PART_SIZE = 2048  # movies per part: a killed run loses at most this many encodings


def store_folder(name: str, key: str) -> str:
    """The cache folder of `name` (poster_features, plot_embedding) for the encoder identified by `key`: under the
    cache root, so a prepared dataset is never written after prepare (it may sit on a shared read-only disk)."""
    return os.path.join(cache_root(), "features", f"{name}-{key}")


def content_digest(content: bytes) -> str:
    """The key of one movie's input in a cache: the sha256 of its plot's UTF-8 text or its poster's bytes."""
    return hashlib.sha256(content).hexdigest()[:32]


def movie_digests(prepared: PreparedDataset, input_name: str) -> tuple[list[str], list[str]]:
    """(movie ids, content digests) of every movie, split by split in split order, streamed from the shards."""
    spec = {MOVIE_ID: tf.io.FixedLenFeature([], tf.string), input_name: tf.io.FixedLenFeature([], tf.string)}
    ids, digests = [], []
    for split in SPLIT_NAMES:
        records = tf.data.TFRecordDataset(prepared.shards(split)).map(
            lambda record: tf.io.parse_single_example(record, spec), num_parallel_calls=tf.data.AUTOTUNE)
        for example in records.as_numpy_iterator():
            ids.append(example[MOVIE_ID].decode("utf-8"))
            digests.append(content_digest(example[input_name]))
    return ids, digests


def read_store(folder: str) -> dict[str, np.ndarray]:
    """Every cached feature row of a store, by content digest; a damaged part is skipped (its rows are encoded
    again) with a warning naming it."""
    rows = {}
    for path in sorted(glob.glob(os.path.join(folder, "part-*.npz"))):
        try:
            with np.load(path, allow_pickle=False) as part:
                digests, features = part["digests"], part["features"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
            print(f"warning: {path} is damaged and is ignored ({str(error)[:120]}); its movies are encoded again",
                  file=sys.stderr)
            continue
        rows.update(zip(digests.tolist(), features, strict=False))
    return rows


def write_part(folder: str, digests: list[str], features: np.ndarray) -> None:
    """Publish one part atomically: readers see it whole or not at all, and two writers never share a name
    unless they wrote the same movies."""
    name = hashlib.sha256("\n".join(digests).encode()).hexdigest()[:16]
    with atomic_path(os.path.join(folder, f"part-{name}.npz")) as staging:
        np.savez(staging, digests=np.asarray(digests), features=features.astype(np.float32))


def _missing_batches(prepared: PreparedDataset, input_name: str, missing: dict[str, str], batch_size: int,
                     image_size: int):
    """(digests, encoder inputs) batches of the movies whose content is not cached (`missing`: id -> digest).

    Plots come shortest first: the text encoder trims each batch to its longest plot, so batches of similar
    lengths skip most of the padding (about half the tokens of real plots). Posters stream from the shards.
    """
    if input_name == PLOT:
        plots = {}
        for movie in prepared.movies():
            digest = missing.get(movie["movie_id"])
            if digest is not None:
                plots.setdefault(digest, movie["plot"])  # two movies with one plot are encoded once
        order = sorted(plots, key=lambda digest: len(plots[digest]))
        for start in range(0, len(order), batch_size):
            chosen = order[start:start + batch_size]
            yield chosen, tf.constant([plots[digest] for digest in chosen])
        return
    table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
        tf.constant(list(missing)), tf.constant(list(missing.values()))), default_value="")
    spec = {MOVIE_ID: tf.io.FixedLenFeature([], tf.string), POSTER: tf.io.FixedLenFeature([], tf.string)}
    files = [path for split in SPLIT_NAMES for path in prepared.shards(split)]
    dataset = (tf.data.TFRecordDataset(files)
               .map(lambda record: tf.io.parse_single_example(record, spec), num_parallel_calls=tf.data.AUTOTUNE)
               .map(lambda example: (table.lookup(example[MOVIE_ID]), example[POSTER]))
               .filter(lambda digest, poster: tf.strings.length(digest) > 0)
               .map(lambda digest, poster: (digest, decode_poster(poster, image_size)),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
               .batch(batch_size).prefetch(tf.data.AUTOTUNE))
    seen = set()
    for digests, posters in dataset:
        digests, keep = [digest.decode("ascii") for digest in digests.numpy()], []
        for index, digest in enumerate(digests):  # two movies with one poster are encoded once
            if digest not in seen:
                seen.add(digest)
                keep.append(index)
        if keep:
            yield [digests[i] for i in keep], tf.gather(posters, keep)


def encode_missing(prepared: PreparedDataset, folder: str, encoder, input_name: str, missing: dict[str, str],
                   batch_size: int, image_size: int) -> dict[str, np.ndarray]:
    """Encode the missing movies, publishing a part every PART_SIZE movies; returns their rows by digest."""
    predict = tf.function(lambda x: encoder(x, training=False))
    rows, pending = {}, []
    with tqdm(total=len(set(missing.values())), desc=f"encoding {input_name}", unit="movie", mininterval=2.0) as bar:
        for digests, values in _missing_batches(prepared, input_name, missing, batch_size, image_size):
            batch = predict(values).numpy().astype(np.float32)
            rows.update(zip(digests, batch, strict=False))
            pending.extend(digests)
            bar.update(len(digests))
            if len(pending) >= PART_SIZE:
                write_part(folder, pending, np.stack([rows[d] for d in pending]))
                pending = []
    if pending:
        write_part(folder, pending, np.stack([rows[d] for d in pending]))
    return rows


def load_or_compute(prepared: PreparedDataset, name: str, key: str, encoder_factory, input_name: str,
                    batch_size: int = 32, image_size: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(movie ids, float32 features) of every movie of the dataset, split by split, for the encoder identified by
    `key`: cached rows are reused by content, and only movies never encoded are run through the encoder."""
    folder = store_folder(name, key)
    ids, digests = movie_digests(prepared, input_name)
    rows = read_store(folder)
    missing = {movie_id: digest for movie_id, digest in zip(ids, digests, strict=False) if digest not in rows}
    if missing:
        reused = len(ids) - len(missing)
        print(f"{name}: {reused} of {len(ids)} movies from the cache {folder}, {len(missing)} to encode",
              file=sys.stderr)
        rows.update(encode_missing(prepared, folder, encoder_factory(), input_name, missing, batch_size,
                                   image_size or prepared.image_size))
    if not ids:
        return np.asarray(ids), np.zeros((0, 0), np.float32)
    return np.asarray(ids), np.stack([rows[digest] for digest in digests]).astype(np.float32, copy=False)


def mean_features(prepared: PreparedDataset, cache: tuple | None, encoder, input_name: str, image_size: int = 0,
                  limit: int = 1024, batch_size: int = 32) -> np.ndarray:
    """The mean encoder output over the first `limit` training movies: from the cache (ids, features) when there is
    one, else by running `encoder` over them."""
    ids = prepared.split["train"][:limit]
    if cache is not None:
        cached_ids, values = cache
        row = {movie_id: index for index, movie_id in enumerate(cached_ids)}
        return values[[row[i] for i in ids]].mean(axis=0).astype(np.float32)
    dataset = make_dataset(prepared, "train", batch_size, training=False, input_names=[MOVIE_ID, input_name],
                           image_size=image_size or None).take(-(-len(ids) // batch_size))
    step = tf.function(lambda x: encoder(x, training=False))
    return np.concatenate([step(inputs[input_name]).numpy() for inputs, _ in dataset]).mean(axis=0)
