"""Honest floors and classic reference models, scored like the deep models (numpy + scikit-learn, no TensorFlow).

Weighted F1 rewards predicting frequent genres for everyone, so every results table shows constant floors and
classic models on the same split, and each model's lift over the best floor.

Row schema (every function below that returns rows uses it; all values are JSON-serialisable):

    {"model": str,                          # e.g. "floor: every genre", "tfidf + logistic regression"
     "kind": str,                           # "floor" for constant floors, "classic" (default) or the caller's label
     "dev":  {"at_0.5": SCORES, "tuned": SCORES},
     "test": {"at_0.5": SCORES, "tuned": SCORES},
     "thresholds": [float per genre] | None,          # tuned on dev; None for floors
     "degenerate": [{"genre", "threshold", "share_predicted"}],   # always [] for floors
     "sets": {metric: [genre names]} | None,          # floors only: the constant set behind each metric
     "lift": {metric: float}}               # added by lift_rows to non-floor rows only

    SCORES = {"weighted_f1": float, "macro_f1": float, "micro_f1": float, "samples_f1": float}

"tuned" means per-genre thresholds tuned on dev (metrics.tune_thresholds) and applied unchanged to test;
"at_0.5" means one threshold of 0.5. Floors do not depend on thresholds, so their two entries hold the same numbers.
In "floor: best constant set (dev)" each metric has its own set (chosen on dev, scored on test), listed in "sets".
For weighted and macro F1 that set is every genre present on dev (each included genre adds a positive F1).
lift_rows compares with the best floor per metric on test, a choice that favours the floors.
"""
import itertools
import logging
from collections.abc import Sequence

import numpy as np

from genre_tf.evaluate.metrics import f1_scores, predict_labels, tune_thresholds

METRICS = ("weighted_f1", "macro_f1", "micro_f1", "samples_f1")
EXHAUSTIVE_MAX_GENRES = 12  # 4095 constant sets: ~3 s on 5,000 dev movies; greedy forward selection above
C_GRID = (0.5, 2.0, 8.0)
_TIE = 1e-12  # improvements smaller than this are ties, so the earlier candidate (smaller set, smaller C) is kept

log = logging.getLogger(__name__)


def _check_labels(labels, name: str, genres: int | None = None) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"{name} must be a 2-d [movies, genres] array, got shape {labels.shape}")
    if len(labels) == 0:
        raise ValueError(f"{name} is empty: every split needs at least one movie")
    if genres is not None and labels.shape[1] != genres:
        raise ValueError(f"{name} has {labels.shape[1]} genres, expected {genres}")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"{name} must hold 0/1 values only")
    return labels.astype(np.int32)


def _check_pair(labels, probabilities, name: str, genres: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    labels = _check_labels(labels, f"{name} labels", genres)
    probabilities = np.asarray(probabilities, dtype=np.float32)
    if probabilities.shape != labels.shape:
        raise ValueError(f"{name} probabilities {probabilities.shape} and labels {labels.shape} must have one shape")
    if not np.isfinite(probabilities).all():
        raise ValueError(f"{name} probabilities contain NaN or infinity")
    return labels, probabilities


def _summary(labels: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    scores = f1_scores(labels, predicted)
    return {metric: float(scores[metric]) for metric in METRICS}


def _constant(labels: np.ndarray, members: Sequence[int]) -> np.ndarray:
    mask = np.zeros(labels.shape[1], np.int32)
    mask[list(members)] = 1
    return np.broadcast_to(mask, labels.shape)


def _exhaustive_sets(dev: np.ndarray) -> dict[str, tuple[int, ...]]:
    """Every non-empty set, smallest first, so ties go to the smaller set; one pass serves all metrics."""
    best = {metric: (-1.0, ()) for metric in METRICS}
    for size in range(1, dev.shape[1] + 1):
        for members in itertools.combinations(range(dev.shape[1]), size):
            scores = _summary(dev, _constant(dev, members))
            for metric in METRICS:
                if scores[metric] > best[metric][0] + _TIE:
                    best[metric] = (scores[metric], members)
    return {metric: best[metric][1] for metric in METRICS}


def _greedy_set(dev: np.ndarray, metric: str) -> tuple[int, ...]:
    """Forward selection run to the full set, keeping the best prefix, so a flat step does not end the search."""
    chosen: list[int] = []
    best_score, best_set = -1.0, ()
    while len(chosen) < dev.shape[1]:
        step_score, step_genre = -1.0, -1
        for genre in range(dev.shape[1]):
            if genre not in chosen:
                score = _summary(dev, _constant(dev, chosen + [genre]))[metric]
                if score > step_score + _TIE:
                    step_score, step_genre = score, genre
        chosen.append(step_genre)
        if step_score > best_score + _TIE:
            best_score, best_set = step_score, tuple(sorted(chosen))
    return best_set


def best_constant_sets(dev_labels: np.ndarray) -> dict[str, tuple[int, ...]]:
    """For each metric, the genre indices of the constant set that maximises it on dev."""
    dev = _check_labels(dev_labels, "dev labels")
    if dev.shape[1] <= EXHAUSTIVE_MAX_GENRES:
        return _exhaustive_sets(dev)
    return {metric: _greedy_set(dev, metric) for metric in METRICS}


def _floor_row(name: str, dev: np.ndarray, test: np.ndarray, sets: dict[str, Sequence[int]],
               genres: Sequence[str]) -> dict:
    row = {"model": name, "kind": "floor", "dev": {}, "test": {}, "thresholds": None, "degenerate": [],
           "sets": {metric: [genres[i] for i in sets[metric]] for metric in METRICS}}
    for split, labels in (("dev", dev), ("test", test)):
        scores = {metric: _summary(labels, _constant(labels, sets[metric]))[metric] for metric in METRICS}
        row[split] = {"at_0.5": scores, "tuned": dict(scores)}
    return row


def constant_floors(train_labels, dev_labels, test_labels, genres: Sequence[str]) -> list[dict]:
    """The three constant floors (every genre, most common genre, best constant set on dev), scored on dev and test."""
    genres = list(genres)
    train = _check_labels(train_labels, "train labels", len(genres))
    dev = _check_labels(dev_labels, "dev labels", len(genres))
    test = _check_labels(test_labels, "test labels", len(genres))
    everything = tuple(range(len(genres)))
    most_common = (int(np.argmax(train.sum(0))),)  # argmax: ties go to the genre listed first
    return [_floor_row("floor: every genre", dev, test, dict.fromkeys(METRICS, everything), genres),
            _floor_row("floor: most common genre", dev, test, dict.fromkeys(METRICS, most_common), genres),
            _floor_row("floor: best constant set (dev)", dev, test, best_constant_sets(dev), genres)]


def best_floor(rows: Sequence[dict], metric: str, split: str = "test") -> float:
    """The highest score among the floor rows for one metric and split."""
    if metric not in METRICS or split not in ("dev", "test"):
        raise ValueError(f"unknown metric {metric!r} or split {split!r}; metrics are {METRICS}, splits dev and test")
    scores = [row[split]["tuned"][metric] for row in rows if row.get("kind") == "floor"]
    if not scores:
        raise ValueError("no floor rows given: build them with constant_floors")
    return max(scores)


def degenerate_genres(dev_probabilities, thresholds, genres: Sequence[str], share: float = 0.9) -> list[dict]:
    """Genres whose tuned threshold predicts them for at least `share` of dev movies: no better than "always"."""
    probabilities = np.asarray(dev_probabilities, dtype=np.float32)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if probabilities.ndim != 2 or len(probabilities) == 0:
        raise ValueError(f"dev probabilities must be a non-empty [movies, genres] array, got {probabilities.shape}")
    if thresholds.shape != (probabilities.shape[1],) or len(genres) != probabilities.shape[1]:
        raise ValueError(f"{probabilities.shape[1]} genres in the probabilities, {thresholds.shape} thresholds "
                         f"and {len(genres)} genre names: they must agree")
    shares = predict_labels(probabilities, thresholds).mean(0)
    return [{"genre": genres[i], "threshold": float(thresholds[i]), "share_predicted": float(shares[i])}
            for i in range(len(genres)) if shares[i] >= share]


def score_probabilities(name: str, dev_labels, dev_probabilities, test_labels, test_probabilities,
                        kind: str = "classic", *, genres: Sequence[str] | None = None, share: float = 0.9) -> dict:
    """One row for a model's probabilities: scores at 0.5 and at thresholds tuned on dev, applied unchanged to test."""
    dev, dev_p = _check_pair(dev_labels, dev_probabilities, "dev")
    test, test_p = _check_pair(test_labels, test_probabilities, "test", dev.shape[1])
    genres = [str(i) for i in range(dev.shape[1])] if genres is None else list(genres)
    if len(genres) != dev.shape[1]:
        raise ValueError(f"{len(genres)} genre names for {dev.shape[1]} genres")
    thresholds = tune_thresholds(dev, dev_p)
    row = {"model": name, "kind": kind, "thresholds": [float(t) for t in thresholds], "sets": None,
           "degenerate": degenerate_genres(dev_p, thresholds, genres, share)}
    for split, labels, probabilities in (("dev", dev, dev_p), ("test", test, test_p)):
        row[split] = {"at_0.5": _summary(labels, predict_labels(probabilities, 0.5)),
                      "tuned": _summary(labels, predict_labels(probabilities, thresholds))}
    return row


def lift_rows(rows: Sequence[dict], floors: Sequence[dict], metrics: Sequence[str] = METRICS,
              key: str = "tuned") -> Sequence[dict]:
    """Add row["lift"][metric] = test score minus the best floor's test score to every non-floor row."""
    if key not in ("tuned", "at_0.5"):
        raise ValueError(f"key must be 'tuned' or 'at_0.5', got {key!r}")
    # the best floor is picked per metric on test: generous to the floor, so a positive lift is not flattered
    floor_scores = {metric: best_floor(floors, metric, "test") for metric in metrics}
    for row in rows:
        if row.get("kind") != "floor":
            row["lift"] = {metric: float(row["test"][key][metric] - floor_scores[metric]) for metric in metrics}
    return rows


def _fit_genres(features_train, labels: np.ndarray, features_eval: Sequence, c: float) -> list[np.ndarray]:
    """One logistic regression per genre; a genre with one class in train gets that class as a constant."""
    from sklearn.linear_model import LogisticRegression

    outputs = [np.zeros((features.shape[0], labels.shape[1]), np.float32) for features in features_eval]
    for genre in range(labels.shape[1]):
        column = labels[:, genre]
        if column.min() == column.max():
            for output in outputs:
                output[:, genre] = float(column[0])
            continue
        model = LogisticRegression(C=c, max_iter=2000).fit(features_train, column)
        for output, features in zip(outputs, features_eval, strict=True):
            output[:, genre] = model.predict_proba(features)[:, 1]
    return outputs


def _select_c(train_x, train_labels, dev_x, dev_labels, test_x, grid: Sequence[float],
              report: dict | None) -> tuple[np.ndarray, np.ndarray]:
    """Choose C by dev macro F1 at dev-tuned thresholds; test is only predicted, never looked at."""
    best = None
    by_c = {}
    for c in grid:
        dev_p, test_p = _fit_genres(train_x, train_labels, (dev_x, test_x), c)
        by_c[float(c)] = _summary(dev_labels, predict_labels(dev_p, tune_thresholds(dev_labels, dev_p)))["macro_f1"]
        if best is None or by_c[float(c)] > best[0] + _TIE:
            best = (by_c[float(c)], float(c), dev_p, test_p)
    log.info("chose C=%s by dev macro F1 %s", best[1], by_c)
    if report is not None:
        report.update(C=best[1], dev_macro_f1_by_C=by_c)
    return best[2], best[3]


def _check_inputs(train, train_labels, dev, dev_labels, test, what: str) -> tuple[np.ndarray, np.ndarray]:
    train_labels = _check_labels(train_labels, "train labels")
    dev_labels = _check_labels(dev_labels, "dev labels", train_labels.shape[1])
    for split, items, labels in (("train", train, train_labels), ("dev", dev, dev_labels)):
        if len(items) != len(labels):
            raise ValueError(f"{len(items)} {split} {what} but {len(labels)} {split} label rows")
    if len(test) == 0:
        raise ValueError(f"no test {what}: every split needs at least one movie")
    return train_labels, dev_labels


def tfidf_logistic(train_texts: Sequence[str], train_labels, dev_texts: Sequence[str], dev_labels,
                   test_texts: Sequence[str], grid: Sequence[float] = C_GRID, max_features: int = 200_000,
                   report: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """TF-IDF word 1-2 grams + one-vs-rest logistic regression; returns dev and test probabilities (float32).

    `report`, when given, receives the chosen C and the dev macro F1 of every C tried.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer

    train_labels, dev_labels = _check_inputs(train_texts, train_labels, dev_texts, dev_labels, test_texts, "texts")
    # \w+ rather than the default \w\w+ keeps one-letter words and runs of CJK characters; no English stop list
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2, token_pattern=r"(?u)\b\w+\b",
                                 max_features=max_features, dtype=np.float32)
    train_x = vectorizer.fit_transform(list(train_texts))
    dev_x, test_x = vectorizer.transform(list(dev_texts)), vectorizer.transform(list(test_texts))
    return _select_c(train_x, train_labels, dev_x, dev_labels, test_x, grid, report)


def _check_images(images, name: str) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 [N, H, W, 3], got {images.dtype} {images.shape}")
    if len(images) == 0:
        raise ValueError(f"{name} is empty: every split needs at least one movie")
    return images


def colour_histograms(images, bins: int = 4, chunk: int = 256) -> np.ndarray:
    """Joint RGB histograms [N, bins**3] of uint8 [N, H, W, 3] images, each row summing to 1."""
    images = _check_images(images, "images")
    if not 1 <= bins <= 256:
        raise ValueError(f"bins must be between 1 and 256, got {bins}")
    pixels = images.shape[1] * images.shape[2]
    result = np.zeros((len(images), bins ** 3), np.float32)
    for start in range(0, len(images), chunk):  # chunks bound the int64 bin-index array for large posters
        part = (images[start:start + chunk].reshape(-1, pixels, 3).astype(np.int64) * bins) >> 8
        index = (part[..., 0] * bins + part[..., 1]) * bins + part[..., 2]
        index += np.arange(len(part))[:, None] * bins ** 3
        counts = np.bincount(index.ravel(), minlength=len(part) * bins ** 3)
        result[start:start + len(part)] = counts.reshape(len(part), bins ** 3) / pixels
    return result


def _colour_features(images: np.ndarray, bins: int, chunk: int = 256) -> np.ndarray:
    """sqrt histograms, brightness and saturation mean/std, mean R, G, B; chunked to bound float memory."""
    parts = []
    for start in range(0, len(images), chunk):
        block = images[start:start + chunk]
        # sqrt (Hellinger) keeps a large flat background bin from dominating the other bins
        histograms = np.sqrt(colour_histograms(block, bins))
        pixels = block.reshape(len(block), -1, 3)  # stays uint8 where it can: float copies dominate the time
        brightness = pixels.sum(-1, dtype=np.float32) / 765.0
        high = pixels.max(-1).astype(np.float32)
        saturation = (high - pixels.min(-1)) / np.maximum(high, 1.0)  # HSV saturation; 0 for black pixels
        stats = np.stack([brightness.mean(1), brightness.std(1), saturation.mean(1), saturation.std(1)], 1)
        parts.append(np.concatenate([histograms, stats, pixels.mean(1, dtype=np.float32) / 255.0], axis=1))
    return np.concatenate(parts).astype(np.float32)


def colour_histogram_logistic(train_images, train_labels, dev_images, dev_labels, test_images, bins: int = 4,
                              grid: Sequence[float] = C_GRID,
                              report: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Colour histogram + brightness/saturation statistics, standardised, + one-vs-rest logistic regression.

    Returns dev and test probabilities (float32); `report`, when given, receives the chosen C as in tfidf_logistic.
    """
    from sklearn.preprocessing import StandardScaler

    train_images, dev_images, test_images = (_check_images(images, f"{split} images") for split, images in
                                             (("train", train_images), ("dev", dev_images), ("test", test_images)))
    train_labels, dev_labels = _check_inputs(train_images, train_labels, dev_images, dev_labels, test_images,
                                             "images")
    scaler = StandardScaler().fit(_colour_features(train_images, bins))
    train_x, dev_x, test_x = (scaler.transform(_colour_features(images, bins))
                              for images in (train_images, dev_images, test_images))
    return _select_c(train_x, train_labels, dev_x, dev_labels, test_x, grid, report)
