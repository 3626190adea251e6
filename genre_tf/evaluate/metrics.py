"""Multi-label metrics over a whole evaluated set: the paper's weighted F1 (eq. 2) and the usual others."""
from collections.abc import Sequence

import numpy as np

EPSILON = 1e-16  # the paper's perturbation in equation 1


def f1_scores(labels: np.ndarray, predicted: np.ndarray) -> dict[str, object]:
    """Per-genre precision/recall/F1 and the weighted (paper), macro, micro and samples F1."""
    if labels.shape != predicted.shape or labels.ndim != 2:
        raise ValueError(f"labels {labels.shape} and predictions {predicted.shape} must be equal [movies, genres]")
    if len(labels) == 0:
        raise ValueError("cannot score an empty set")
    from sklearn.metrics import f1_score, precision_recall_fscore_support

    labels, predicted = labels.astype(np.int32), predicted.astype(np.int32)
    # zero_division=0: a genre never predicted and never present scores 0, as equation 1's epsilon gives
    precision, recall, f1, support = precision_recall_fscore_support(labels, predicted, average=None,
                                                                     zero_division=0)
    weighted = float((support * f1).sum() / support.sum()) if support.sum() else 0.0

    def average(kind: str, zero_division: float = 0.0) -> float:
        return float(f1_score(labels, predicted, average=kind, zero_division=zero_division))

    # samples: a movie with no true and no predicted genre is right, so it scores 1
    return {"weighted_f1": weighted, "macro_f1": float(f1.mean()), "micro_f1": average("micro"),
            "samples_f1": average("samples", 1.0), "f1": f1.astype(np.float64), "precision": precision,
            "recall": recall, "support": support, "frequency": support / len(labels)}


def predict_labels(probabilities: np.ndarray, thresholds) -> np.ndarray:
    """0/1 predictions at a scalar threshold or one threshold per genre."""
    return (probabilities >= np.asarray(thresholds, dtype=probabilities.dtype)).astype(np.int32)


NEVER_THRESHOLD = 2.0  # a sigmoid never reaches it: the threshold of a genre that has no positive dev movie


def unseen_genres(genres: Sequence[str], thresholds) -> list[str]:
    """The genres whose threshold never fires (no positive dev movie to tune it on)."""
    return [genre for genre, threshold in zip(genres, thresholds, strict=True) if threshold > 1]


def tune_thresholds(labels: np.ndarray, probabilities: np.ndarray,
                    candidates: Sequence[float] = tuple(np.round(np.arange(0.02, 0.99, 0.01), 2))) -> np.ndarray:
    """Per-genre thresholds maximising each genre's F1 on the given (dev) set (Lipton et al. 2014).

    A genre with no positive movie there has no F1 to maximise (every threshold scores 0, and the lowest would
    predict it for every movie): it gets NEVER_THRESHOLD, above any probability, and is never predicted.
    """
    thresholds = np.full(labels.shape[1], 0.5)
    for genre in range(labels.shape[1]):
        truth = labels[:, genre].astype(bool)
        if not truth.any():
            thresholds[genre] = NEVER_THRESHOLD
            continue
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
