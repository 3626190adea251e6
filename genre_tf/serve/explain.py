"""Why the exported model says what it says, by occlusion through its own serving_default signature.

- Plot words: each distinct word of the plot is deleted (every occurrence) and the movie re-scored; a word's
  weight for a genre is the probability it loses without that word. Deleting is what the served model really
  does without the word, so the ranking is faithful by construction. Only the plot's first MAX_WORDS distinct words
  are explained (a Chinese or Japanese character counts as a word): a movie costs at most MAX_SCORINGS scorings.
- Plot and poster: each input is replaced by what serving uses when it is missing (the training-mean embedding
  or features: an empty plot, an empty poster) and the movie re-scored; an input's contribution is the
  probability lost without it.
- Poster regions: a GRID x GRID grid of patches, each painted the poster's mean colour in turn; the heat map is the
  probability each genre loses with that patch hidden. The unoccluded reference is the same PNG re-encoding, so
  re-encoding itself moves nothing. The poster's size is read from its header first: one the model refuses is
  never decoded, and one larger than POSTER_SIDE is explained shrunk.

Nothing here is part of the SavedModel: the serving signature is unchanged, and any export can be explained.
"""
import io
import itertools
import re
import sys
import time
from collections.abc import Sequence

import numpy as np

from genre_tf.data.records import CJK
from genre_tf.limits import MAX_REQUEST_MOVIES

TOP_WORDS = 5
GRID = 6          # poster patches per side: 36 extra scorings of the poster per movie
MAX_WORDS = 128   # distinct words explained, the first ones of the plot: the model reads its first seq_length tokens
MAX_SCORINGS = 3 + MAX_WORDS + GRID * GRID  # per movie, whatever the plot's length: 167
POSTER_SIDE = 512  # the explained poster's longer side at most: the model sees 224 to 260 px, and 36 copies are made
_WORD_KEY = re.compile(r"[\W_]+", re.UNICODE)
# A word: one Chinese or Japanese character (those plots put no spaces between words), or a run of anything else
# but spaces (records.count_words counts the same way)
_PIECE = re.compile(f"[{CJK}]|[^\\s{CJK}]+")


def word_key(word: str) -> str:
    """A word as compared for deletion: lower case, punctuation stripped ('Ghost,' and 'ghost' are one word)."""
    return _WORD_KEY.sub("", word.lower())


def distinct_words(plot: str, limit: int = MAX_WORDS) -> list[str]:
    """The plot's first `limit` distinct word keys, in order of first appearance (punctuation alone skipped)."""
    keys = (word_key(match.group()) for match in _PIECE.finditer(plot))
    return list(itertools.islice(dict.fromkeys(key for key in keys if key), limit))


def without_word(plot: str, key: str) -> str:
    """The plot with every word whose key is `key` deleted."""
    return without_words(plot, {key})


def without_words(plot: str, keys) -> str:
    """The plot with every word whose key is one of `keys` deleted (spaces collapsed to one)."""
    keys = set(keys)
    kept = _PIECE.sub(lambda match: "" if word_key(match.group()) in keys else match.group(), plot)
    return " ".join(kept.split())


def score_movies(serving, plots: Sequence[str], posters: Sequence[bytes | None]) -> tuple[np.ndarray, np.ndarray]:
    """([movies, genres] probabilities, [movies, genres] predicted) from serving_default, in calls of at most
    MAX_REQUEST_MOVIES movies."""
    probabilities, predicted = [], []
    for start in range(0, len(plots), MAX_REQUEST_MOVIES):
        batch = [{"plot": plot, "poster": poster} for plot, poster in
                 zip(plots[start:start + MAX_REQUEST_MOVIES], posters[start:start + MAX_REQUEST_MOVIES], strict=True)]
        outputs = serving.score(batch)
        probabilities.append(outputs["probabilities"].numpy())
        predicted.append(outputs["predicted"].numpy())
    return np.concatenate(probabilities).astype(np.float64), np.concatenate(predicted)


def explainable_poster(poster: bytes) -> bytes:
    """The poster as the explanation shows it: PNG, its longer side at most POSTER_SIDE. Its size is read from the
    header first, so a poster the model refuses (over MAX_POSTER_PIXELS) is never decoded: PosterError names why."""
    from genre_tf.data.images import load_poster

    image = load_poster(poster, min_side=1)  # the size check comes before any pixel is decoded
    image.thumbnail((POSTER_SIDE, POSTER_SIDE))  # the model resizes to its own 224 to 260 px anyway
    return _png(np.asarray(image))


def occluded_posters(poster: bytes, grid: int = GRID) -> tuple[bytes, list[bytes]]:
    """(the poster re-encoded as PNG, grid*grid PNGs each with one patch painted the poster's mean colour)."""
    from PIL import Image

    with Image.open(io.BytesIO(explainable_poster(poster))) as opened:
        image = opened.convert("RGB")
    pixels = np.asarray(image)
    fill = pixels.reshape(-1, 3).mean(0).round().astype(np.uint8)
    rows, columns = np.linspace(0, pixels.shape[0], grid + 1).round().astype(int), np.linspace(
        0, pixels.shape[1], grid + 1).round().astype(int)
    variants = []
    for i in range(grid):
        for j in range(grid):
            hidden = pixels.copy()
            hidden[rows[i]:rows[i + 1], columns[j]:columns[j + 1]] = fill
            variants.append(_png(hidden))
    return _png(pixels), variants


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def explain_movie(serving, plot: str, poster: bytes | None, top_words: int = TOP_WORDS, grid: int = GRID) -> dict:
    """One movie's explanation: probabilities, the predicted genres, per predicted genre its top words and the
    contributions of plot and poster, and (with a decodable poster) the [grid, grid, genres] poster heat map."""
    from genre_tf.data.images import PosterError

    started = time.perf_counter()
    try:
        reference_poster, variants = occluded_posters(poster, grid) if poster and grid else (poster, [])
        refused = None
    except PosterError as error:  # the model would not read it either: the plot alone is explained
        poster, reference_poster, variants, refused = None, None, [], str(error)
    words = distinct_words(plot)
    plots = [plot, "", plot, *(without_word(plot, key) for key in words), *[plot] * len(variants)]
    posters = [reference_poster, reference_poster, None, *[reference_poster] * len(words), *variants]
    scores, predicted_flags = score_movies(serving, plots, posters)
    full, no_plot, no_poster = scores[0], scores[1], scores[2]
    word_drops = full - scores[3:3 + len(words)]                                 # [words, genres]
    heat = (full - scores[3 + len(words):]).reshape(grid, grid, -1) if variants else None
    predicted = np.flatnonzero(predicted_flags[0]).tolist()  # the served thresholds, inside the model
    genres = []
    for g in predicted or [int(np.argmax(full))]:  # nothing predicted: explain the most probable genre
        order = np.argsort(-word_drops[:, g], kind="stable")[:top_words]
        genres.append({"genre": serving.genres[g], "probability": round(float(full[g]), 4),
                       "predicted": g in predicted,
                       "top_words": [{"word": words[k], "drop": round(float(word_drops[k, g]), 4)} for k in order],
                       "plot_contribution": round(float(full[g] - no_plot[g]), 4),
                       "poster_contribution": round(float(full[g] - no_poster[g]), 4) if poster else None})
    return {"probabilities": dict(zip(serving.genres, np.round(full, 4).tolist(), strict=True)), "genres": genres,
            "poster_heat": heat, "explained_poster": reference_poster if variants else None, "poster_refused": refused,
            "model_calls": len(plots), "seconds": round(time.perf_counter() - started, 3)}


def format_explanation(label: str, explanation: dict) -> str:
    """The explanation as text: per genre, its probability, plot and poster shares and the words that raised it."""
    lines = [f"{label}: explained by deleting each of its first {MAX_WORDS} distinct words and each input "
             f"({explanation['model_calls']} scorings, {explanation['seconds']:.2f} s)"]
    for genre in explanation["genres"]:
        poster = ("no poster" if genre["poster_contribution"] is None
                  else f"poster {genre['poster_contribution']:+.3f}")
        words = ", ".join(f"{w['word']} {w['drop']:+.3f}" for w in genre["top_words"]) or "(no words)"
        lines.append(f"  {genre['genre']} {genre['probability']:.3f}"
                     f"{'' if genre['predicted'] else ' (most probable, under its threshold)'}: "
                     f"plot {genre['plot_contribution']:+.3f}, {poster}; words that raised it most: {words}")
    return "\n".join(lines)


def heatmap_png(poster: bytes, heat: np.ndarray, genre_names: Sequence[str], explained: Sequence[str]) -> bytes:
    """The poster beside one heat map per explained genre: red where hiding a patch lowers the genre most."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    with Image.open(io.BytesIO(poster)) as opened:
        image = np.asarray(opened.convert("RGB"))
    figure, axes = plt.subplots(1, len(explained) + 1, figsize=(3 * (len(explained) + 1), 4.2), squeeze=False)
    axes[0, 0].imshow(image)
    axes[0, 0].set_title("poster", fontsize=9)
    limit = max(float(np.abs(heat).max()), 1e-6)
    for axis, name in zip(axes[0, 1:], explained, strict=True):
        axis.imshow(image, alpha=0.55)
        shown = axis.imshow(heat[:, :, list(genre_names).index(name)], cmap="RdBu_r", vmin=-limit, vmax=limit,
                            alpha=0.6, extent=(0, image.shape[1], image.shape[0], 0), interpolation="nearest")
        axis.set_title(f"{name}: probability lost\nwhen each patch is hidden", fontsize=9)
        figure.colorbar(shown, ax=axis, fraction=0.05)
    for axis in axes.flat:
        axis.axis("off")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()


def explain_movies(serving, movies, explain_dir: str = "", as_json: bool = False):
    """`predict --explain`: yields each movie's explanation as text (or a JSON line), and with explain_dir writes
    its poster heat map as <explain_dir>/<movie>.png. `serving`: predict.load_serving's (explain never imports
    predict, which imports it)."""
    import json
    import os

    if explain_dir:
        os.makedirs(explain_dir, exist_ok=True)
    for index, movie in enumerate(movies):
        explanation = explain_movie(serving, movie["plot"], movie["poster"])
        heat, shown = explanation.pop("poster_heat"), explanation.pop("explained_poster")
        if explanation["poster_refused"]:  # as plain predict does: warn, and the plot alone answers
            print(f"warning: {movie['label']}: poster {movie.get('poster_path') or ''} could not be used "
                  f"({explanation['poster_refused']}); explained from the plot", file=sys.stderr)
        if explain_dir and heat is not None:
            name = re.sub(r"[^\w.-]+", "_", str(movie["label"]))[:80].strip("._") or f"movie-{index}"
            path = os.path.join(explain_dir, f"{index:04d}-{name}.png")
            picture = heatmap_png(shown, heat, serving.genres, [genre["genre"] for genre in explanation["genres"]])
            with open(path, "wb") as handle:  # drawn first: a failure leaves no empty file
                handle.write(picture)
            explanation["poster_heat_map"] = path
        yield (json.dumps({"movie": movie["label"], **explanation}) if as_json
               else format_explanation(movie["label"], explanation))


def faithfulness(serving, movies, words: int = 3, seed: int = 0) -> dict:
    """Is the ranking faithful? For each movie's explained genres: the probability lost by deleting its top `words`
    words, against deleting as many words drawn at random from the same plot (plots with more distinct words only).

    Returns the mean of each drop, the mean paired difference, how often the top words lost more, and the count.
    """
    rng = np.random.default_rng(seed)
    top_drops, random_drops = [], []
    for movie in movies:
        keys = distinct_words(movie["plot"])
        if len(keys) <= words:
            continue
        explanation = explain_movie(serving, movie["plot"], movie["poster"], top_words=words, grid=0)
        plots, genres = [movie["plot"]], []
        for genre in explanation["genres"]:
            chosen = [w["word"] for w in genre["top_words"]]
            drawn = list(rng.choice(keys, size=words, replace=False))
            plots += [without_words(movie["plot"], chosen), without_words(movie["plot"], drawn)]
            genres.append(serving.genres.index(genre["genre"]))
        scores, _ = score_movies(serving, plots, [movie["poster"]] * len(plots))
        for index, genre in enumerate(genres):
            top_drops.append(scores[0, genre] - scores[1 + 2 * index, genre])
            random_drops.append(scores[0, genre] - scores[2 + 2 * index, genre])
    if not top_drops:  # a mean of nothing is NaN, which is not JSON and not an answer
        raise ValueError(f"no movie has more than {words} distinct plot words: nothing to compare")
    top, drawn = np.asarray(top_drops), np.asarray(random_drops)
    return {"words": words, "cases": len(top), "top_words_drop": float(top.mean()),
            "random_words_drop": float(drawn.mean()), "difference": float((top - drawn).mean()),
            "top_lost_more": float((top > drawn).mean())}
