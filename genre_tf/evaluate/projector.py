"""A map of the catalogue: the test movies in TensorBoard's projector, placed by the genre head's last hidden layer.

evaluate.py writes RUN/logs/projector for the test movies (a random 10,000 of a larger split): the embedding (a
checkpoint variable), metadata.tsv (title, year, true and predicted genres, one row per movie) and sprite.png (the
posters as thumbnails), tied together by projector_config.pbtxt. `tensorboard --logdir RUN/logs` shows it under
Projector.
"""
import os
from collections.abc import Iterable, Sequence

import numpy as np
import tensorflow as tf
from PIL import Image
import tf_keras as keras

from genre_tf.data.dataset import POSTER, make_dataset
from genre_tf.nets.models import HEAD
from genre_tf.nets.network import make_predictor

PROJECTOR = "projector"   # under RUN/logs
THUMBNAIL = 48            # sprite cell side in pixels: 1,023 movies make a 1,536-pixel sprite (the limit is 8,192)
PROJECTOR_MOVIES = 10_000  # at most: a 4,800-pixel sprite (28,901 would pass 8,192), what the browser's t-SNE takes


def hidden_model(model: keras.Model) -> keras.Model:
    """The model from its inputs to the genre head's last hidden layer (the input of genre_logits; for the poster
    model, which has none, the poster features themselves; for an ensemble of heads, its heads' side by side)."""
    head = model.get_layer(HEAD)
    members = [layer for layer in head.layers if layer.name.startswith(f"{HEAD}_")] or [head]
    hidden = [keras.Model(member.inputs, member.get_layer("genre_logits").input)(head.input) for member in members]
    inner = keras.Model(head.inputs, hidden[0] if len(hidden) == 1 else keras.layers.Concatenate()(hidden),
                        name="genre_hidden")
    features = head.get_input_at(len(head.inbound_nodes) - 1)  # what the outer model feeds the head
    return keras.Model(model.inputs, inner(features))


def metadata_rows(ids: Sequence[str], labels: np.ndarray, predicted: np.ndarray, movies: dict[str, dict],
                  genres: Sequence[str]) -> list[str]:
    """metadata.tsv: a header, then title, year, true and predicted genres per movie (tabs and newlines removed)."""
    def clean(value) -> str:
        return " ".join(str(value).split()) or "-"

    rows = ["title\tyear\ttrue genres\tpredicted genres"]
    for index, movie_id in enumerate(ids):
        movie = movies[movie_id]
        true = ", ".join(g for g, on in zip(genres, labels[index], strict=True) if on) or "(none)"
        guess = ", ".join(g for g, on in zip(genres, predicted[index], strict=True) if on) or "(none)"
        rows.append("\t".join(clean(v) for v in (movie.get("title") or movie_id, movie.get("year") or "", true, guess)))
    return rows


def sprite(thumbnails: Iterable[np.ndarray], count: int) -> np.ndarray:
    """The first `count` thumbnails, given in batches [n, side, side, 3], tiled row by row into one square opaque
    RGBA uint8 image; each batch is placed as it comes, so memory holds the sprite, not every thumbnail besides it
    (and PIL writes RGBA without a copy)."""
    canvas, columns, placed = None, int(np.ceil(np.sqrt(count))), 0
    for batch in thumbnails:
        side = batch.shape[1]
        if canvas is None:
            canvas = np.full((columns * side, columns * side, 4), 255, np.uint8)
        for image in batch[:count - placed]:
            top, left = placed // columns * side, placed % columns * side
            canvas[top:top + side, left:left + side, :3] = np.clip(np.round(image), 0, 255)
            placed += 1
        if placed == count:
            break
    return canvas if canvas is not None else np.full((0, 0, 4), 255, np.uint8)


def projected_rows(movies: int, limit: int, seed: int = 0) -> np.ndarray:
    """The test rows the projector shows, in split order: every one, or `limit` drawn at random (fixed seed) from a
    larger split, whose order is by id (its first movies would be an IMDb catalogue's oldest)."""
    if movies <= limit:
        return np.arange(movies)
    return np.sort(np.random.default_rng(seed).choice(movies, limit, replace=False))


def rows_of_batches(batches: Iterable[np.ndarray], rows: np.ndarray) -> Iterable[np.ndarray]:
    """The rows at the sorted positions `rows` of a split given batch by batch, batch by batch."""
    start = 0
    for batch in batches:
        chosen = rows[(rows >= start) & (rows < start + len(batch))] - start
        start += len(batch)
        if len(chosen):
            yield batch[chosen]


def write_projector(run, test: dict, thresholds: Sequence[float], movies: dict[str, dict]) -> str:
    """Write the projector of the test movies (at most PROJECTOR_MOVIES, projected_rows) into RUN/logs/projector;
    returns that folder."""
    folder = os.path.join(run.run_dir, "logs", PROJECTOR)
    os.makedirs(folder, exist_ok=True)
    rows = projected_rows(len(test["ids"]), PROJECTOR_MOVIES)
    features = make_dataset(run.prepared, "test", 64, training=False, input_names=list(run.model.input_names),
                            image_size=run.config.poster.image_size, feature_caches=run.caches)
    vectors = make_predictor(hidden_model(run.model))(features)[rows].astype(np.float32)
    posters = make_dataset(run.prepared, "test", 64, training=False, input_names=[POSTER], image_size=THUMBNAIL)
    predicted = test["probabilities"][rows] >= np.asarray(thresholds)
    with open(os.path.join(folder, "metadata.tsv"), "w", encoding="utf-8") as handle:
        handle.write("\n".join(metadata_rows(np.asarray(test["ids"])[rows].tolist(), test["labels"][rows], predicted,
                                              movies, run.prepared.genres)) + "\n")
    thumbnails = rows_of_batches((batch[POSTER].numpy() for batch, _ in posters), rows)
    Image.fromarray(sprite(thumbnails, len(rows))).save(os.path.join(folder, "sprite.png"))
    return _save_embedding(folder, vectors, len(test["ids"]))


def _save_embedding(folder: str, vectors: np.ndarray, test_movies: int) -> str:
    from tensorboard.plugins import projector

    checkpoint = tf.train.Checkpoint(embedding=tf.Variable(vectors))
    checkpoint.save(os.path.join(folder, "embedding.ckpt"))
    config = projector.ProjectorConfig()
    embedding = config.embeddings.add()
    embedding.tensor_name = "embedding/.ATTRIBUTES/VARIABLE_VALUE"
    embedding.metadata_path = "metadata.tsv"
    embedding.sprite.image_path = "sprite.png"
    embedding.sprite.single_image_dim.extend([THUMBNAIL, THUMBNAIL])
    projector.visualize_embeddings(folder, config)
    # TensorBoard lists a subfolder as a run (and the projector looks for its config there) only if it holds events
    with tf.summary.create_file_writer(folder).as_default(step=0):
        shown = f"{len(vectors)} test movies" + (f" (a random sample of {test_movies})" if test_movies > len(vectors)
                                                 else "")
        tf.summary.text("projector/about", f"{shown}, {vectors.shape[1]} dimensions: the genre head's last hidden "
                        "layer. Open the Projector tab.")
    return folder
