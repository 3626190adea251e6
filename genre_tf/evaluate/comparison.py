"""Table 3 with its uncertainty: seed means and spreads, 95% intervals, paired differences with the best row and floor.

Rows follow genre_tf.evaluate.baselines' row schema. A model row also carries, in memory only, `predictions`: its test
predictions with dev-tuned thresholds, [seeds, movies, genres], and where known its test `probabilities` (same
shape) for the weighted average precision. `group_seeds` folds the runs of one model that
differ only in their seed into one row; `add_uncertainty` then adds

    "spread":     {metric: {mean, sd, min, max, seeds}}       # over seeds, test scores with tuned thresholds
    "intervals":  {metric: {value, low, high}}                # bootstrap over test movies, of the seed mean
    "vs_best":    {metric: {value, low, high, excludes_zero}} # paired: this row minus the best model row
    "vs_floor":   {metric: {value, low, high, excludes_zero}} # paired: this row minus the best floor for that metric
    "calibration": {ece, brier, log_loss: {value, low, high}} # rows with probabilities (genre_tf.evaluate.calibration)

and floors get "intervals". The best row is the model row with the highest mean test weighted F1.
"""
from collections.abc import Sequence

import numpy as np

from genre_tf.evaluate.baselines import METRICS
from genre_tf.evaluate.calibration import SCORES, calibration_intervals
from genre_tf.evaluate.uncertainty import (RESAMPLES, bootstrap_intervals, format_interval, paired_difference,
                                           seed_spread)

SHOWN = ("weighted_f1", "macro_f1")  # the metrics whose paired differences the markdown shows


def constant_predictions(floor: dict, genres: Sequence[str], movies: int, metric: str) -> np.ndarray:
    """A floor's constant prediction for one metric (its `sets` entry) as a [movies, genres] 0/1 array."""
    members = set(floor["sets"][metric])
    return np.tile(np.array([int(g in members) for g in genres], np.int32), (movies, 1))


def group_seeds(rows: Sequence[dict], key=lambda row: (row["model"], row.get("oversampled"))) -> list[dict]:
    """One row per model: the seeds' runs (same key) folded together, test scores as seed means, in first-seen order."""
    groups: dict = {}
    for row in rows:
        groups.setdefault(key(row), []).append(row)
    folded = []
    for members in groups.values():
        first = dict(members[0])
        first["seed_rows"] = members
        for name in ("predictions", "probabilities"):
            if all(name in m for m in members):
                first[name] = np.concatenate([m[name] for m in members])
        for split in ("dev", "test"):
            first[split] = {setting: {metric: float(np.mean([m[split][setting][metric] for m in members]))
                                      for metric in METRICS} for setting in ("at_0.5", "tuned")}
        if all("seconds" in m for m in members):
            first["seconds"] = float(np.mean([m["seconds"] for m in members]))
        folded.append(first)
    return folded


def best_model_row(rows: Sequence[dict]) -> dict:
    """The model row (not a floor) with the highest mean test weighted F1 (tuned thresholds)."""
    models = [row for row in rows if row.get("kind") != "floor" and "predictions" in row]
    if not models:
        raise ValueError("no model rows to compare")
    return max(models, key=lambda row: row["test"]["tuned"]["weighted_f1"])


def add_uncertainty(rows: Sequence[dict], floors: Sequence[dict], labels: np.ndarray, genres: Sequence[str],
                    resamples: int = RESAMPLES) -> dict:
    """Intervals, seed spreads and paired differences on every row (see the module doc); returns the best row."""
    labels = np.asarray(labels)
    floor_predictions = {}
    for metric in METRICS:
        best_floor = max(floors, key=lambda floor: floor["test"]["tuned"][metric])
        floor_predictions[metric] = constant_predictions(best_floor, genres, len(labels), metric)
    for floor in floors:
        floor["intervals"] = {metric: bootstrap_intervals(
            labels, constant_predictions(floor, genres, len(labels), metric), resamples)[metric] for metric in METRICS}
    best = best_model_row(rows)
    for row in rows:
        stack = row["predictions"]
        scores = [[s["test"]["tuned"][m] for s in row.get("seed_rows", [row])] for m in METRICS]
        row["spread"] = {metric: seed_spread(values) for metric, values in zip(METRICS, scores, strict=True)}
        intervals = bootstrap_intervals(labels, stack, resamples)
        row["intervals"] = {metric: intervals[metric] for metric in METRICS}
        row["per_genre_intervals"] = dict(zip(genres, intervals["per_genre_f1"], strict=True))
        if "probabilities" in row:  # ranking, independent of thresholds: weighted average precision, seed mean
            row["weighted_ap"] = float(np.mean([weighted_average_precision(labels, p) for p in row["probabilities"]]))
            scores = calibration_intervals(labels, row["probabilities"], resamples)
            row["calibration"] = {name: scores[name] for name in SCORES}
        row["vs_floor"] = {metric: paired_difference(labels, stack, floor_predictions[metric], resamples,
                                                     metrics=(metric,))[metric] for metric in METRICS}
        if row is not best:
            difference = paired_difference(labels, stack, best["predictions"], resamples)
            row["vs_best"] = {metric: difference[metric] for metric in METRICS}
    return best


def weighted_average_precision(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Average precision per genre, weighted by its support (scikit-learn), over genres present in `labels`."""
    from sklearn.metrics import average_precision_score

    present = labels.sum(0) > 0
    return float(average_precision_score(labels[:, present], probabilities[:, present], average="weighted"))


def without_arrays(rows: Sequence[dict]) -> list[dict]:
    """The rows as JSON-ready dicts: predictions dropped, seed rows kept as their run and scores."""
    clean = []
    for row in rows:
        row = {k: v for k, v in row.items() if k not in ("predictions", "probabilities")}
        if "seed_rows" in row:
            row["seed_rows"] = [{k: v for k, v in s.items() if k in ("run_dir", "seed", "test", "seconds")}
                                for s in row["seed_rows"]]
        clean.append(row)
    return clean


def _difference(cell: dict | None) -> str:
    if cell is None:
        return "best"
    text = format_interval(cell, signed=True)
    return f"**{text}**" if cell["excludes_zero"] else text


def _spread(row: dict) -> str:
    spread = row.get("spread", {}).get("weighted_f1")
    if not spread or spread["seeds"] < 2:
        return "1 seed"
    if spread["seeds"] <= 3:
        return f"{spread['seeds']} seeds, {spread['min']:.3f}-{spread['max']:.3f}"
    return f"{spread['seeds']} seeds, sd {spread['sd']:.3f}"


def uncertainty_lines(rows: Sequence[dict], best: dict) -> list[str]:
    """The table as markdown: each score with its 95% interval, seeds, and the paired differences."""
    timed = any("seconds" in row for row in rows)
    lines = ["| model | OS | weighted F1 (95% CI) | macro F1 (95% CI) | micro F1 (95% CI) | weighted AP | "
             "seeds (weighted F1) | vs best row: weighted / macro | vs best floor: weighted / macro |"
             + (" time |" if timed else ""), "| --- " * (10 if timed else 9) + "|"]
    for row in rows:
        oversampled = {True: "yes", False: "no"}.get(row.get("oversampled"), "-")
        cells = [format_interval(row["intervals"][m]) for m in ("weighted_f1", "macro_f1", "micro_f1")]
        cells.append(f"{row['weighted_ap']:.3f}" if "weighted_ap" in row else "-")
        if row.get("kind") == "floor":
            compare = ["-", "-", "-"]
        else:
            compare = [_spread(row), " / ".join(_difference(row.get("vs_best", {}).get(m)) for m in SHOWN),
                       " / ".join(_difference(row["vs_floor"][m]) for m in SHOWN)]
        time = (f" {row['seconds']:.0f} s |" if "seconds" in row else " - |") if timed else ""
        lines.append(f"| {row['model']} | {oversampled} | " + " | ".join(cells + compare) + " |" + time)
    resamples = best["intervals"]["weighted_f1"]
    return lines + ["", f"Test split, per-genre thresholds tuned on dev. A model row with several seeds shows the mean "
                    "over seeds; its interval is the percentile bootstrap over test movies of that mean "
                    f"({RESAMPLES} resamples, fixed seed). Differences are paired: both rows scored on the same "
                    f"resampled movies. **Bold**: the 95% interval excludes 0, a real difference at this size. Best "
                    f"row: {best['model']}{' (OS)' if best.get('oversampled') else ''}, weighted F1 "
                    f"{format_interval(resamples)}."]


def calibration_table_lines(rows: Sequence[dict]) -> list[str]:
    """The rows' calibration on test as markdown: ECE, Brier and log loss, each with its 95% interval."""
    rows = [row for row in rows if "calibration" in row]
    if not rows:
        return []
    lines = ["| model | OS | seeds | ECE (95% CI) | Brier (95% CI) | log loss (95% CI) | weighted AP |",
             "| --- " * 7 + "|"]
    for row in rows:
        oversampled = {True: "yes", False: "no"}.get(row.get("oversampled"), "-")
        cells = [format_interval(row["calibration"][name], digits=4) for name in SCORES]
        seeds = row.get("spread", {}).get("weighted_f1", {}).get("seeds", 1)
        lines.append(f"| {row['model']} | {oversampled} | {seeds} | " + " | ".join(cells)
                     + f" | {row.get('weighted_ap', float('nan')):.3f} |")
    return lines + ["", "Calibration on the test split, lower is better: expected calibration error over equal-mass "
                    "bins, Brier score and log loss of the probabilities, pooled over genres; with several seeds "
                    "the mean of their scores, its interval a percentile bootstrap over test movies."]
