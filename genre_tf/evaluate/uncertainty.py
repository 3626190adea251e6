"""How sure a score is: bootstrap intervals over the evaluated movies, and paired differences between models.

numpy only. A resample draws the movies with replacement; every F1 is then recomputed from per-genre counts, so
1,000s of resamples of an 800-movie test split take milliseconds. Resamples are drawn and scored in chunks (CHUNK_CELLS
resample x movie counts, or CHUNK_ROWS resamples where that is more), never all at once (320 MB at 20,000 movies),
with the same draws. The scores follow genre_tf.evaluate.metrics.f1_scores (scikit-learn's definitions, with the same
zero-division choices), and the tests check them against it.

A paired difference scores two models on the *same* resample, so what both get right or wrong together
cancels out; that is why it can tell two close models apart where their separate intervals overlap. Models
trained with several seeds are scored as the mean over seeds inside each resample: the interval is then the
test-set uncertainty of the seed mean.
"""
from collections.abc import Callable, Sequence

import numpy as np

from genre_tf.evaluate.baselines import METRICS
RESAMPLES = 2000
LEVEL = 0.95
SEED = 0
CHUNK_CELLS = 2_000_000  # resample x movie counts made at once (16 MB of float64), and at least
CHUNK_ROWS = 256  # resamples: OpenBLAS multiplies [rows, 20,000] by [20,000, 150] 10x slower per row under ~200 rows


def _check_sizes(movies: int, resamples: int) -> None:
    if movies < 1 or resamples < 1:
        raise ValueError(f"need at least one movie and one resample, got {movies} and {resamples}")


def resample_indices(movies: int, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """[resamples, movies] row indices, each row a draw of `movies` movies with replacement (fixed seed)."""
    _check_sizes(movies, resamples)
    return np.random.default_rng(seed).integers(0, movies, size=(resamples, movies))


def resample_counts(indices: np.ndarray, movies: int) -> np.ndarray:
    """How many times each movie is drawn in each resample: [resamples, movies]."""
    counts = np.zeros((len(indices), movies), np.float64)
    np.add.at(counts, (np.arange(len(indices))[:, None], indices), 1.0)
    return counts


def resampled(score: Callable[[np.ndarray], dict[str, np.ndarray]], movies: int, resamples: int = RESAMPLES,
              seed: int = SEED, chunk_cells: int = CHUNK_CELLS) -> dict[str, np.ndarray]:
    """{name: [resamples, ...]}: score(counts) over every resample, its counts (resample_counts) made at most
    `chunk_cells` resample x movie counts at a time, or CHUNK_ROWS resamples where that is more.

    The draws are those of resample_indices(movies, resamples, seed): the generator fills rows in order, however
    many a call asks for.
    """
    _check_sizes(movies, resamples)
    generator, parts, chunk = np.random.default_rng(seed), [], max(CHUNK_ROWS, chunk_cells // movies)
    for start in range(0, resamples, chunk):
        counts = np.empty((min(chunk, resamples - start), movies), np.float64)
        for row in counts:  # one resample's indices at a time
            row[:] = np.bincount(generator.integers(0, movies, size=movies), minlength=movies)
        parts.append(score(counts))
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def _as_stack(predicted) -> np.ndarray:
    """[seeds, movies, genres] 0/1 predictions from one [movies, genres] array or a list of them."""
    stack = np.asarray(predicted)
    return (stack[None] if stack.ndim == 2 else stack).astype(np.float64)


def _safe_ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


def resampled_scores(labels: np.ndarray, predicted, counts: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric in every resample: {metric: [resamples]} and per-genre "f1": [resamples, genres].

    `counts` weights each movie per resample (resample_counts; a row of ones is the full set). With several
    seeds' predictions, each score is the mean over seeds.
    """
    truth = np.asarray(labels, np.float64)
    stack = _as_stack(predicted)
    if stack.shape[1:] != truth.shape or counts.shape[1] != len(truth):
        raise ValueError(f"labels {truth.shape}, predictions {stack.shape[1:]} and counts over {counts.shape[1]} "
                         "movies must agree")
    support = counts @ truth                                   # [resamples, genres]
    totals = {name: 0.0 for name in (*METRICS, "f1")}         # summed over seeds, divided once below
    for predictions in stack:
        tp, fp, fn = (counts @ (truth * predictions), counts @ ((1 - truth) * predictions),
                      counts @ (truth * (1 - predictions)))
        f1 = _safe_ratio(2 * tp, 2 * tp + fp + fn)
        micro_tp = tp.sum(1)
        # samples F1: a movie with no true and no predicted genre is right (scikit-learn's zero_division=1)
        sizes = truth.sum(1) + predictions.sum(1)
        per_movie = np.where(sizes > 0, _safe_ratio(2 * (truth * predictions).sum(1), sizes), 1.0)
        totals["f1"] = totals["f1"] + f1
        totals["weighted_f1"] = totals["weighted_f1"] + _safe_ratio((support * f1).sum(1), support.sum(1))
        totals["macro_f1"] = totals["macro_f1"] + f1.mean(1)
        totals["micro_f1"] = totals["micro_f1"] + _safe_ratio(2 * micro_tp, 2 * micro_tp + fp.sum(1) + fn.sum(1))
        totals["samples_f1"] = totals["samples_f1"] + counts @ per_movie / counts.sum(1)
    scores = {name: total / len(stack) for name, total in totals.items()}
    return scores


def interval(value: float, resampled: np.ndarray, level: float) -> dict[str, float]:
    low, high = np.quantile(resampled, [(1 - level) / 2, (1 + level) / 2])
    return {"value": float(value), "low": float(low), "high": float(high)}


def bootstrap_intervals(labels: np.ndarray, predicted, resamples: int = RESAMPLES, seed: int = SEED,
                        level: float = LEVEL) -> dict:
    """Percentile bootstrap intervals over movies: {metric: {value, low, high}} and "per_genre_f1": [...].

    `value` is the score on the whole set (the mean over seeds when several predictions are given).
    """
    truth = np.asarray(labels)
    full = resampled_scores(truth, predicted, np.ones((1, len(truth))))
    scores = resampled(lambda counts: resampled_scores(truth, predicted, counts), len(truth), resamples, seed)
    result = {name: interval(full[name][0], scores[name], level) for name in METRICS}
    result["per_genre_f1"] = [interval(full["f1"][0, g], scores["f1"][:, g], level)
                              for g in range(truth.shape[1])]
    result.update(resamples=resamples, level=level, seed=seed, movies=len(truth))
    return result


def paired_difference(labels: np.ndarray, predicted_a, predicted_b, resamples: int = RESAMPLES, seed: int = SEED,
                      level: float = LEVEL, metrics: Sequence[str] = METRICS) -> dict:
    """Score of A minus score of B on the same resampled movies: {metric: {value, low, high, excludes_zero}}.

    `excludes_zero` means the difference is real at this level: the whole interval lies on one side of 0.
    """
    truth = np.asarray(labels)

    def differences(counts: np.ndarray) -> dict[str, np.ndarray]:
        a, b = resampled_scores(truth, predicted_a, counts), resampled_scores(truth, predicted_b, counts)
        return {name: a[name] - b[name] for name in metrics}

    full, resampled_differences = differences(np.ones((1, len(truth)))), resampled(differences, len(truth),
                                                                                     resamples, seed)
    result = {}
    for name in metrics:
        row = interval(full[name][0], resampled_differences[name], level)
        result[name] = dict(row, excludes_zero=bool(row["low"] > 0 or row["high"] < 0))
    result.update(resamples=resamples, level=level, seed=seed, movies=len(truth))
    return result


def seed_spread(values: Sequence[float]) -> dict[str, float]:
    """Mean, standard deviation (ddof=1; 0 for one seed), min and max of one score over seeds."""
    values = np.asarray(values, np.float64)
    return {"mean": float(values.mean()), "sd": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            "min": float(values.min()), "max": float(values.max()), "seeds": len(values)}


def format_interval(interval: dict, digits: int = 3, signed: bool = False) -> str:
    """0.651 (0.626-0.676), or +0.019 (+0.009 to +0.029) for differences."""
    sign = "+" if signed else ""
    value, low, high = (f"{interval[k]:{sign}.{digits}f}" for k in ("value", "low", "high"))
    return f"{value} ({low} to {high})" if signed else f"{value} ({low}-{high})"
