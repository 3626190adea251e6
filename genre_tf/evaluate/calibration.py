"""Whether a probability of 0.7 means "right 7 times in 10": calibration scores with bootstrap intervals, the
reliability diagram, and the per-genre calibrators (temperature, Platt) fitted on dev.

Scores (numpy only), per genre and pooled over every (movie, genre) pair:

- expected calibration error (ECE) over equal-mass bins: sort the probabilities, cut them into BINS groups of
  (nearly) equal size, and average |mean probability - observed frequency| over the groups, weighted by size;
- Brier score: the mean squared difference between probability and 0/1 truth;
- log loss: the mean binary cross-entropy, probabilities clipped to [EPS, 1 - EPS] as scikit-learn does.

Intervals reuse uncertainty.py's resample counts (a resample is how often each movie is drawn): each score is
a ratio of per-movie sums, so all resamples cost one matrix product. The bins are cut once on the whole set and
kept in every resample. Several seeds are scored as the mean of their scores inside each resample.

A calibrator maps a genre's logit z to a * z + b before the sigmoid: temperature scaling fits a alone (b = 0, a
= 1 / T), Platt scaling fits both, each by maximum likelihood on dev. Both are monotone, so they leave each genre's
ranking (ROC, average precision) and, with thresholds retuned on the calibrated scale, its F1 unchanged; they change
what the number means. The dev probabilities that thresholds are tuned on are cross-fitted: each dev movie is scored
by a calibrator fitted on the other folds, as late fusion does (genre_tf.train.fusion).
"""
from collections.abc import Sequence

import numpy as np

from genre_tf.config import CALIBRATIONS as METHODS
from genre_tf.evaluate.uncertainty import LEVEL, RESAMPLES, SEED, format_interval, interval, resampled

BINS = 10                       # equal-mass bins: about 77 test movies per genre bin on real movies
EPS = np.finfo(np.float64).eps  # scikit-learn's log-loss clipping
SCORES = ("ece", "brier", "log_loss")
FOLDS = 5
MAX_SCALE = 100.0               # a slope beyond this turns a logit into a step; temperature is searched below it
MIN_SCALE = 1e-3                # the search's floor: the likelihood of a genre the logits rank backwards ends here
MIN_SPREAD = 0.1                # calibrated dev logits closer than this (std) are one probability to the thresholds


def equal_mass_bins(probabilities: np.ndarray, bins: int = BINS) -> np.ndarray:
    """The bin (0..bins-1) of each probability: ranks cut into `bins` groups of nearly equal size."""
    values = np.asarray(probabilities, np.float64).ravel()
    order = np.argsort(values, kind="stable")
    assignment = np.empty(len(values), np.int64)
    for index, members in enumerate(np.array_split(order, min(bins, max(len(values), 1)))):
        assignment[members] = index
    return assignment.reshape(np.shape(probabilities))


def _as_stack(probabilities) -> np.ndarray:
    stack = np.asarray(probabilities, np.float64)
    return stack[None] if stack.ndim == 2 else stack


def _per_movie_terms(labels: np.ndarray, probabilities: np.ndarray, bins: int) -> dict[str, np.ndarray]:
    """Per-movie sums whose resampled ratios give every score: {name: [movies, k]} (k genres, bins or 1)."""
    truth = np.asarray(labels, np.float64)
    clipped = np.clip(probabilities, EPS, 1 - EPS)
    terms = {"brier": (probabilities - truth) ** 2,
             "log_loss": -(truth * np.log(clipped) + (1 - truth) * np.log(1 - clipped))}
    gap = probabilities - truth
    genres = truth.shape[1]
    per_genre_bins = np.stack([equal_mass_bins(probabilities[:, g], bins) for g in range(genres)], axis=1)
    one_hot = per_genre_bins[:, :, None] == np.arange(bins)                       # [movies, genres, bins]
    terms["ece_genre"] = (gap[:, :, None] * one_hot).reshape(len(truth), -1)      # [movies, genres * bins]
    pooled_bins = equal_mass_bins(probabilities, bins)                           # bins over every pair at once
    terms["ece_pooled"] = np.stack([(gap * (pooled_bins == b)).sum(1) for b in range(bins)], axis=1)
    return terms


def resampled_calibration(labels: np.ndarray, probabilities, counts: np.ndarray, bins: int = BINS) -> dict:
    """Every score in every resample: {score: [resamples]} pooled, and {score}_per_genre: [resamples, genres].

    `counts` weights each movie per resample (a row of ones is the whole set); several seeds' probabilities
    ([seeds, movies, genres]) are scored as the mean of their scores.
    """
    return _scores(_seed_terms(labels, probabilities, bins, counts.shape[1]), counts, bins)


def _seed_terms(labels: np.ndarray, probabilities, bins: int, movies: int) -> list[dict[str, np.ndarray]]:
    """Each seed's _per_movie_terms, once the labels, probabilities and the resamples' movies agree."""
    truth = np.asarray(labels, np.float64)
    stack = _as_stack(probabilities)
    if stack.shape[1:] != truth.shape or movies != len(truth):
        raise ValueError(f"labels {truth.shape}, probabilities {stack.shape[1:]} and counts over {movies} "
                         "movies must agree")
    return [_per_movie_terms(truth, seed_probabilities, bins) for seed_probabilities in stack]


def _scores(per_seed_terms: list[dict[str, np.ndarray]], counts: np.ndarray, bins: int) -> dict:
    """resampled_calibration from each seed's _per_movie_terms, computed once for every chunk of resamples."""
    movies = counts.sum(1)
    totals: dict[str, np.ndarray] = {}
    for terms in per_seed_terms:
        genres = terms["brier"].shape[1]
        scores = {}
        for name in ("brier", "log_loss"):
            per_genre = counts @ terms[name] / movies[:, None]
            scores[name], scores[f"{name}_per_genre"] = per_genre.mean(1), per_genre
        scores["ece_per_genre"] = np.abs(counts @ terms["ece_genre"]).reshape(len(counts), genres, bins).sum(2) \
            / movies[:, None]
        scores["ece"] = np.abs(counts @ terms["ece_pooled"]).sum(1) / (movies * genres)
        for name, value in scores.items():
            totals[name] = totals.get(name, 0.0) + value
    return {name: total / len(per_seed_terms) for name, total in totals.items()}


def calibration_intervals(labels: np.ndarray, probabilities, resamples: int = RESAMPLES, seed: int = SEED,
                          level: float = LEVEL, bins: int = BINS) -> dict:
    """{ece, brier, log_loss: {value, low, high}} pooled over genres, and each "{score}_per_genre": [...]."""
    truth = np.asarray(labels)
    terms = _seed_terms(truth, probabilities, bins, len(truth))  # computed once, for the whole set and each chunk
    full = _scores(terms, np.ones((1, len(truth))), bins)
    scores = resampled(lambda counts: _scores(terms, counts, bins), len(truth), resamples, seed)
    result = {name: interval(full[name][0], scores[name], level) for name in SCORES}
    for name in SCORES:
        result[f"{name}_per_genre"] = [interval(full[f"{name}_per_genre"][0, g], scores[f"{name}_per_genre"][:, g],
                                                 level) for g in range(truth.shape[1])]
    result.update(bins=bins, binning="equal mass", resamples=resamples, level=level, seed=seed, movies=len(truth))
    return result


def reliability_points(labels: np.ndarray, probabilities: np.ndarray, bins: int = BINS) -> dict:
    """Per equal-mass bin: mean predicted probability, observed frequency and count ({predicted, observed, count})."""
    truth, values = np.asarray(labels, np.float64).ravel(), np.asarray(probabilities, np.float64).ravel()
    assignment = equal_mass_bins(values, bins)
    points = {"predicted": [], "observed": [], "count": []}
    for b in range(assignment.max() + 1 if len(values) else 0):
        members = assignment == b
        points["predicted"].append(float(values[members].mean()))
        points["observed"].append(float(truth[members].mean()))
        points["count"].append(int(members.sum()))
    return points


def reliability_figure(genres: Sequence[str], labels: np.ndarray, probabilities: np.ndarray, title: str):
    """The reliability diagram: pooled (large, each bin's count written on it) and one small panel per genre."""
    import matplotlib.pyplot as plt

    columns = min(5, len(genres))
    rows = -(-len(genres) // columns)
    figure = plt.figure(figsize=(3.0 * columns + 5.5, max(3.0 * rows, 5.0)))
    grid = figure.add_gridspec(rows, columns + 2)
    panels = [(figure.add_subplot(grid[:, :2]), "all genres pooled", labels, probabilities, True)]
    panels += [(figure.add_subplot(grid[i // columns, 2 + i % columns]), genre, labels[:, i], probabilities[:, i],
                False) for i, genre in enumerate(genres)]
    for axis, name, truth, values, pooled in panels:
        points = reliability_points(truth, values)
        gaps = np.abs(np.subtract(points["predicted"], points["observed"]))
        ece = float(np.dot(gaps, points["count"]) / max(sum(points["count"]), 1))
        axis.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
        axis.plot(points["predicted"], points["observed"], marker="o", markersize=5 if pooled else 3)
        for x, y, count in zip(points["predicted"], points["observed"], points["count"], strict=True):
            axis.annotate(f"n={count}" if pooled else str(count), (x, y), textcoords="offset points",
                          xytext=(3, -9), fontsize=8 if pooled else 6, color="dimgrey")
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1)
        axis.set_title(f"{name} (ECE {ece:.3f})", fontsize=11 if pooled else 8)
        axis.tick_params(labelsize=7)
        if pooled:
            axis.set_xlabel("predicted probability (bin mean)")
            axis.set_ylabel("observed frequency of the genre")
    figure.suptitle(f"{title}: equal-mass bins of {BINS}; on the dashed line a probability p comes true p of the time; "
                    "n = movie-genre pairs (pooled) or movies in the bin")
    return figure


def _sigmoid(values: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(0.5 * values))  # no overflow warning for large logits


def _maximum_likelihood(z: np.ndarray, y: np.ndarray, method: str, log_scale: tuple) -> tuple[float, float]:
    """(a, b) minimising the log loss of sigmoid(a * z + b), log(a) kept within `log_scale` (b = 0 for temperature)."""
    from scipy.optimize import minimize

    def loss(params):
        a, b = np.exp(params[0]), params[1] if method == "platt" else 0.0
        s = a * z + b
        residual = _sigmoid(s) - y
        gradient = [np.mean(residual * z) * a] + ([np.mean(residual)] if method == "platt" else [])
        return np.mean(np.logaddexp(0, s) - y * s), np.array(gradient)

    start = np.full(2 if method == "platt" else 1, float(np.clip(0.0, *log_scale)))
    bounds = [log_scale] + ([(None, None)] if method == "platt" else [])
    found = minimize(loss, start, jac=True, method="L-BFGS-B", bounds=bounds)
    return float(np.exp(found.x[0])), float(found.x[1]) if method == "platt" else 0.0


def fit_scaling(logits: np.ndarray, labels: np.ndarray, method: str) -> tuple[float, float]:
    """(a, b) of one genre's calibrator sigmoid(a * z + b), by maximum likelihood; (1, 0) for `none` or one class.

    temperature fits a alone; platt fits a and b. The slope a is kept in (0, MAX_SCALE]: a calibrator must not
    reverse a genre's ranking. Nor may it flatten one: where a slope under 1 would leave the logits less than
    MIN_SPREAD apart, the genre keeps the network's slope (a = 1) and platt fits only its bias.
    """
    if method not in METHODS:
        raise ValueError(f"calibration must be one of {METHODS}, got {method!r}")
    z, y = np.asarray(logits, np.float64), np.asarray(labels, np.float64)
    if method == "none" or y.min() == y.max():
        return 1.0, 0.0
    a, b = _maximum_likelihood(z, y, method, (np.log(MIN_SCALE), np.log(MAX_SCALE)))
    if a >= 1 or a * z.std() >= MIN_SPREAD:  # a steeper slope cannot flatten the network's ranking
        return a, b
    # dev finds no ranking it can vouch for (a weak or reversed genre); one near-constant probability would be
    # predicted for every movie or none, so the network's own ranking is kept and only the base rate corrected
    return _maximum_likelihood(z, y, method, (0.0, 0.0))


def fit_calibrators(logits: np.ndarray, labels: np.ndarray, method: str,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-genre calibrators on dev: (scale [genres], bias [genres], cross-fitted dev probabilities [movies, genres]).

    The returned calibrators are fitted on all of dev (they go into the model); each movie's cross-fitted
    probability comes from a calibrator fitted without its fold, so thresholds tuned on them stay honest. A genre
    with fewer than 2 dev positives (or negatives) keeps its logits as they are.
    """
    from sklearn.model_selection import StratifiedKFold

    z, y = np.asarray(logits, np.float64), np.asarray(labels)
    scale, bias = np.ones(z.shape[1]), np.zeros(z.shape[1])
    out_of_fold = _sigmoid(z)
    for genre in range(z.shape[1]):
        column = y[:, genre]
        folds = min(FOLDS, int(column.sum()), int(len(column) - column.sum()))
        if folds < 2 or method == "none":
            continue
        for fit_rows, held_rows in StratifiedKFold(folds, shuffle=True, random_state=seed).split(z, column):
            a, b = fit_scaling(z[fit_rows, genre], column[fit_rows], method)
            out_of_fold[held_rows, genre] = _sigmoid(a * z[held_rows, genre] + b)
        scale[genre], bias[genre] = fit_scaling(z[:, genre], column, method)
    return scale, bias, out_of_fold


def calibration_lines(metrics: dict) -> list[str]:
    """The report's calibration section (markdown): pooled scores per split, then each genre's on test."""
    lines = ["## Calibration: does a probability of 0.7 come true 7 times in 10?", "",
             f"Expected calibration error (ECE: the mean gap between predicted probability and observed frequency "
             f"over {BINS} equal-mass bins; 0 is perfect), Brier score (mean squared error of the probabilities) "
             "and log loss (mean binary cross-entropy); lower is better for all three. In brackets: the 95% "
             "bootstrap interval over movies. Pooled: every (movie, genre) pair together.", "",
             "| split | ECE (95% CI) | Brier (95% CI) | log loss (95% CI) |", "| --- | --- | --- | --- |"]
    for name in ("dev", "test"):
        scores = metrics["splits"][name]["calibration"]
        lines.append(f"| {name} | " + " | ".join(format_interval(scores[s], 4) for s in SCORES) + " |")
    test = metrics["splits"]["test"]["calibration"]
    lines += ["", "| genre (test) | ECE (95% CI) | Brier (95% CI) | log loss (95% CI) |", "| --- | --- | --- | --- |"]
    for index, genre in enumerate(metrics["genres"]):
        cells = [format_interval(test[f"{s}_per_genre"][index], 4) for s in SCORES]
        lines.append(f"| {genre} | " + " | ".join(cells) + " |")
    return lines + ["", "![reliability diagram](reliability.png)", "",
                    "Reading the diagram: each dot is a bin of test predictions; across, their mean probability; up, "
                    "how often the genre was really there. Dots below the dashed diagonal: the model is overconfident "
                    "there (it says 0.8, the genre is there less often); above: underconfident. The numbers are how "
                    "many predictions fell in each bin."]

