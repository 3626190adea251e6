"""Multi-label metrics over a whole evaluated set: the paper's weighted F1 (eq. 2) and the usual others."""
from collections.abc import Sequence

import numpy as np

EPSILON = 1e-16  # the paper's perturbation in equation 1


def per_genre_counts(labels: np.ndarray, predicted: np.ndarray) -> dict[str, np.ndarray]:
    """True positives, false positives, false negatives and support per genre (0/1 arrays in)."""
    labels, predicted = labels.astype(bool), predicted.astype(bool)
    return {"tp": (labels & predicted).sum(0), "fp": (~labels & predicted).sum(0),
            "fn": (labels & ~predicted).sum(0), "support": labels.sum(0)}


def f1_scores(labels: np.ndarray, predicted: np.ndarray) -> dict[str, object]:
    """Per-genre precision/recall/F1 and the weighted (paper), macro, micro and samples F1."""
    if labels.shape != predicted.shape or labels.ndim != 2:
        raise ValueError(f"labels {labels.shape} and predictions {predicted.shape} must be equal [movies, genres]")
    if len(labels) == 0:
        raise ValueError("cannot score an empty set")
    c = per_genre_counts(labels, predicted)
    tp, fp, fn, support = (c[k].astype(np.float64) for k in ("tp", "fp", "fn", "support"))
    f1 = 2 * tp / (2 * tp + fn + fp + EPSILON)
    precision = tp / np.maximum(tp + fp, 1)
    recall = tp / np.maximum(tp + fn, 1)
    weighted = float((support * f1).sum() / max(support.sum(), EPSILON))
    micro = float(2 * tp.sum() / max(2 * tp.sum() + fn.sum() + fp.sum(), EPSILON))
    lab, pred = labels.astype(bool), predicted.astype(bool)
    denominator = lab.sum(1) + pred.sum(1)
    samples = np.where(denominator > 0, 2 * (lab & pred).sum(1) / np.maximum(denominator, 1), 1.0)
    return {"weighted_f1": weighted, "macro_f1": float(f1.mean()), "micro_f1": micro,
            "samples_f1": float(samples.mean()), "f1": f1, "precision": precision, "recall": recall,
            "support": c["support"], "frequency": support / len(labels)}


def predict_labels(probabilities: np.ndarray, thresholds) -> np.ndarray:
    """0/1 predictions at a scalar threshold or one threshold per genre."""
    return (probabilities >= np.asarray(thresholds, dtype=probabilities.dtype)).astype(np.int32)


def tune_thresholds(labels: np.ndarray, probabilities: np.ndarray,
                    candidates: Sequence[float] = tuple(np.round(np.arange(0.02, 0.99, 0.01), 2))) -> np.ndarray:
    """Per-genre thresholds maximising each genre's F1 on the given (dev) set (Lipton et al. 2014)."""
    thresholds = np.full(labels.shape[1], 0.5)
    for genre in range(labels.shape[1]):
        truth = labels[:, genre].astype(bool)
        best = -1.0
        for threshold in candidates:
            predicted = probabilities[:, genre] >= threshold
            tp = (truth & predicted).sum()
            f1 = 2 * tp / (2 * tp + (truth & ~predicted).sum() + (~truth & predicted).sum() + EPSILON)
            if f1 > best + 1e-12:
                best, thresholds[genre] = f1, threshold
    return thresholds


def ranking_scores(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, np.ndarray]:
    """Per-genre ROC-AUC and PR-AUC (average precision); NaN where a genre has one class only."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    roc, pr = [], []
    for genre in range(labels.shape[1]):
        truth = labels[:, genre]
        if truth.min() == truth.max():
            roc.append(np.nan)
            pr.append(np.nan)
        else:
            roc.append(roc_auc_score(truth, probabilities[:, genre]))
            pr.append(average_precision_score(truth, probabilities[:, genre]))
    return {"roc_auc": np.asarray(roc), "pr_auc": np.asarray(pr)}


def distinct_combinations(predicted: np.ndarray) -> int:
    """How many distinct genre combinations (rows) appear."""
    return len({tuple(row) for row in np.asarray(predicted, dtype=np.int8)})
