"""A map of the catalogue: the test movies in TensorBoard's projector, placed by the genre head's last hidden layer.

evaluate.py writes RUN/logs/projector: the embedding (a checkpoint variable), metadata.tsv (title, year, true and
predicted genres, one row per movie) and sprite.png (the posters as thumbnails), tied together by
projector_config.pbtxt. `tensorboard --logdir RUN/logs` shows it under Projector.
"""
import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras

from genre_tf.data.dataset import POSTER, make_dataset
from genre_tf.nets.models import HEAD
from genre_tf.nets.network import make_predictor

PROJECTOR = "projector"   # under RUN/logs
THUMBNAIL = 48            # sprite cell side in pixels: 1,023 movies make a 1,536-pixel sprite (the limit is 8,192)


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


def sprite(thumbnails: np.ndarray) -> np.ndarray:
    """The thumbnails [movies, side, side, 3] tiled row by row into one square uint8 image."""
    count, side = len(thumbnails), thumbnails.shape[1]
    columns = int(np.ceil(np.sqrt(count)))
    canvas = np.full((columns * side, columns * side, 3), 255, np.uint8)
    for index, image in enumerate(thumbnails):
        row, column = divmod(index, columns)
        canvas[row * side:(row + 1) * side, column * side:(column + 1) * side] = image
    return canvas


def write_projector(run, test: dict, thresholds: Sequence[float], movies: dict[str, dict]) -> str:
    """Write the test movies' projector into RUN/logs/projector; returns that folder."""
    folder = os.path.join(run.run_dir, "logs", PROJECTOR)
    os.makedirs(folder, exist_ok=True)
    inputs = make_dataset(run.prepared, "test", 64, training=False, input_names=list(run.model.input_names),
                          image_size=run.config.poster.image_size, feature_caches=run.caches)
    vectors = make_predictor(hidden_model(run.model))(inputs).astype(np.float32)
    posters = make_dataset(run.prepared, "test", 64, training=False, input_names=[POSTER], image_size=THUMBNAIL)
    thumbnails = np.concatenate([batch[POSTER].numpy() for batch, _ in posters]).clip(0, 255).round()
    predicted = test["probabilities"] >= np.asarray(thresholds)
    with open(os.path.join(folder, "metadata.tsv"), "w", encoding="utf-8") as handle:
        handle.write("\n".join(metadata_rows(test["ids"], test["labels"], predicted, movies, run.prepared.genres))
                     + "\n")
    with open(os.path.join(folder, "sprite.png"), "wb") as handle:
        handle.write(tf.io.encode_png(sprite(thumbnails.astype(np.uint8))).numpy())
    return _save_embedding(folder, vectors)


def _save_embedding(folder: str, vectors: np.ndarray) -> str:
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
        tf.summary.text("projector/about", f"{len(vectors)} test movies, {vectors.shape[1]} dimensions: the genre "
                        "head's last hidden layer. Open the Projector tab.")
    return folder
