"""Feature caches: poster features and frozen plot embeddings, computed once per dataset and encoder."""
import os

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from genre_tf.data.dataset import MOVIE_ID, PLOT, PreparedDataset, make_dataset, split_plots
from genre_tf.data.readers import SPLIT_NAMES
from genre_tf.files import atomic_path, cache_root


def cache_path(prepared: PreparedDataset, name: str, key: str) -> str:
    """Where the cache of `name` for the encoder and dataset identified by `key` lives: under the cache root, so a
    prepared dataset is never written after prepare (it may sit on a shared read-only disk)."""
    return os.path.join(cache_root(), "features", f"{name}-{key}.npz")


def compute_features(prepared: PreparedDataset, encoder, input_name: str, batch_size: int = 32,
                     image_size: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Run `encoder` over every split of the dataset; returns (movie ids, float32 features).

    The features are written into one array allocated at the first batch: a list of batches joined at the
    end held every feature twice, 12 KB a movie of the step's peak (benchmarks/2026-12-01-scale.md).
    """
    ids, features = [], None
    total = sum(len(prepared.split[name]) for name in SPLIT_NAMES)
    predict = tf.function(lambda x: encoder(x, training=False))
    with tqdm(total=total, desc=f"encoding {input_name}", unit="movie", mininterval=2.0) as bar:
        for split in SPLIT_NAMES:
            if input_name == PLOT:
                batches = _plots_by_length(prepared, split, batch_size)
            else:
                batches = ((inputs[MOVIE_ID], inputs[input_name]) for inputs, _ in make_dataset(
                    prepared, split, batch_size, training=False, input_names=[MOVIE_ID, input_name],
                    image_size=image_size or None))
            for movie_ids, values in batches:
                batch = predict(values).numpy()
                if features is None:
                    features = np.empty((total, batch.shape[1]), np.float32)
                features[len(ids):len(ids) + len(batch)] = batch
                ids.extend(movie_id.decode("utf-8") for movie_id in movie_ids.numpy())
                bar.update(len(batch))
    return np.asarray(ids), features if features is not None else np.zeros((0, 0), np.float32)


def _plots_by_length(prepared: PreparedDataset, split: str, batch_size: int):
    """(movie ids, plots) batches of a split, shortest plots first: the text encoder trims each batch to its
    longest plot, so batches of similar lengths skip most of the padding (about half the tokens of real plots)."""
    movie_ids, plots = prepared.split[split], split_plots(prepared, split)
    order = sorted(range(len(plots)), key=lambda index: len(plots[index]))
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        yield tf.constant([movie_ids[i] for i in rows]), tf.constant([plots[i] for i in rows])


def load_or_compute(prepared: PreparedDataset, name: str, key: str, encoder_factory, input_name: str,
                    batch_size: int = 32, image_size: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The cached (ids, features) for this dataset and encoder, computing and saving them (atomically) if absent."""
    path = cache_path(prepared, name, key)
    if os.path.exists(path):
        with np.load(path) as cached:
            return cached["ids"], cached["features"]
    ids, features = compute_features(prepared, encoder_factory(), input_name, batch_size, image_size)
    with atomic_path(path) as staging:  # the staging name keeps .npz, so np.savez adds no second suffix
        np.savez(staging, ids=ids, features=features)
    return ids, features


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
