"""A map of the catalogue: the test movies in TensorBoard's projector, placed by the genre head's last hidden layer.

evaluate.py writes RUN/logs/projector for the test split's first PROJECTOR_MOVIES movies: the embedding (a checkpoint
variable), metadata.tsv (title, year, true and predicted genres, one row per movie) and sprite.png (the posters as
thumbnails), tied together by projector_config.pbtxt. `tensorboard --logdir RUN/logs` shows it under Projector.
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
PROJECTOR_MOVIES = 10_000  # at most: a 4,800-pixel sprite, and as many points as the browser's t-SNE handles


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


def write_projector(run, test: dict, thresholds: Sequence[float], movies: dict[str, dict]) -> str:
    """Write the projector of the test split's first PROJECTOR_MOVIES movies into RUN/logs/projector; returns that
    folder. (The split is shuffled, so the first ones are a random sample.)"""
    folder = os.path.join(run.run_dir, "logs", PROJECTOR)
    os.makedirs(folder, exist_ok=True)
    count, batch = min(len(test["ids"]), PROJECTOR_MOVIES), 64
    inputs = make_dataset(run.prepared, "test", batch, training=False, input_names=list(run.model.input_names),
                          image_size=run.config.poster.image_size, feature_caches=run.caches)
    vectors = make_predictor(hidden_model(run.model))(inputs.take(-(-count // batch)))[:count].astype(np.float32)
    posters = make_dataset(run.prepared, "test", batch, training=False, input_names=[POSTER], image_size=THUMBNAIL)
    predicted = test["probabilities"][:count] >= np.asarray(thresholds)
    with open(os.path.join(folder, "metadata.tsv"), "w", encoding="utf-8") as handle:
        handle.write("\n".join(metadata_rows(test["ids"][:count], test["labels"][:count], predicted, movies,
                                              run.prepared.genres)) + "\n")
    Image.fromarray(sprite((inputs[POSTER].numpy() for inputs, _ in posters), count)).save(
        os.path.join(folder, "sprite.png"))
    return _save_embedding(folder, vectors, len(test["ids"]))


def _save_embedding(folder: str, vectors: np.ndarray, movies: int) -> str:
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
        shown = f"{len(vectors)} test movies" + (f" (the first of {movies})" if movies > len(vectors) else "")
        tf.summary.text("projector/about", f"{shown}, {vectors.shape[1]} dimensions: the genre head's last hidden "
                        "layer. Open the Projector tab.")
    return folder
