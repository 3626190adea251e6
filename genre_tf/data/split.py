"""Multi-label stratified splitting, the top-K genre vocabulary, and the paper's oversampling."""
from collections import Counter
from collections.abc import Sequence

import numpy as np
from iterstrat.ml_stratifiers import IterativeStratification

from genre_tf.data.readers import SPLIT_NAMES


def multi_hot(genre_lists: Sequence[Sequence[str]], genres: Sequence[str]) -> np.ndarray:
    """A [movies, genres] float32 0/1 matrix; genres outside the vocabulary are ignored."""
    index = {genre: column for column, genre in enumerate(genres)}
    labels = np.zeros((len(genre_lists), len(genres)), dtype=np.float32)
    for row, movie_genres in enumerate(genre_lists):
        for genre in movie_genres:
            if genre in index:
                labels[row, index[genre]] = 1.0
    return labels


def stratified_split(ids: Sequence[str], genre_lists: Sequence[Sequence[str]],
                     fractions: Sequence[float] = (0.6, 0.2, 0.2), seed: int = 0) -> dict[str, list[str]]:
    """Split ids into train/dev/test by iterative stratification (Sechidis et al. 2011), at random but reproducibly.

    The algorithm fills the parts in the order it is given the ids, so ids that follow time (IMDb's, database keys)
    fed in sorted order gave train the oldest movies and dev and test the newest. The ids are sorted (the input
    order does not matter) and then permuted by the seed: same ids and seed, same split; another seed, another.
    """
    _check_fractions(fractions)
    all_genres = sorted({genre for movie in genre_lists for genre in movie})
    labels = multi_hot(genre_lists, all_genres)
    random = np.random.RandomState(seed)
    order = np.argsort(np.asarray(ids, dtype=object).astype(str), kind="stable")
    order = order[random.permutation(len(order))]
    folds = IterativeStratification(labels[order].astype(bool), np.asarray(fractions), random)
    split = {name: [] for name in SPLIT_NAMES}
    for position, fold in zip(order, folds, strict=True):
        split[SPLIT_NAMES[fold]].append(ids[position])
    return {name: sorted(part) for name, part in split.items()}


def time_split(ids: Sequence[str], years: Sequence[int | None], fractions: Sequence[float] = (0.6, 0.2, 0.2),
               seed: int = 0) -> dict[str, list[str]]:
    """Split ids by release year: the oldest `fractions[0]` of the dated movies to train, the newest
    `fractions[2]` to test, to measure how a model ages. Movies of one year at a boundary are assigned in an
    order drawn from the seed; movies without a year go to train (they cannot be placed in time)."""
    _check_fractions(fractions)
    rank = np.empty(len(ids), np.int64)  # a tie-break drawn from the seed over the sorted ids: input order is moot
    rank[np.argsort(np.asarray(ids, dtype=object).astype(str), kind="stable")] = \
        np.random.RandomState(seed).permutation(len(ids))
    dated = sorted((i for i in range(len(ids)) if years[i] is not None), key=lambda i: (years[i], rank[i]))
    train_end = int(round(fractions[0] * len(dated)))
    dev_end = train_end + int(round(fractions[1] * len(dated)))
    parts = {"train": [*dated[:train_end], *(i for i in range(len(ids)) if years[i] is None)],
             "dev": dated[train_end:dev_end], "test": dated[dev_end:]}
    return {name: sorted(ids[i] for i in parts[name]) for name in SPLIT_NAMES}


def _check_fractions(fractions: Sequence[float]) -> None:
    if len(fractions) != 3 or abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) <= 0:
        raise ValueError(f"split fractions must be three positive numbers summing to 1, got {fractions}")


def year_summary(years: Sequence[int | None]) -> dict:
    """The release years of a set of movies: how many carry one, their median and range, the shares released
    before 1990 and from 2000 on (of the dated movies)."""
    dated = np.asarray([year for year in years if year is not None], dtype=np.int64)
    summary = {"movies": len(years), "dated": int(dated.size)}
    if dated.size:
        summary.update(median=float(np.median(dated)), first=int(dated.min()), last=int(dated.max()),
                       before_1990=round(float((dated < 1990).mean()), 4),
                       from_2000=round(float((dated >= 2000).mean()), 4))
    return summary


def year_table(summaries: dict[str, dict]) -> str:
    """The year summaries of the catalogue and each part, one line each, as prepare prints them."""
    lines = [f"{'years':<10}{'movies':>8}{'dated':>8}{'median':>8}{'range':>12}{'<1990':>8}{'>=2000':>8}"]
    for name, summary in summaries.items():
        if not summary.get("dated"):
            lines.append(f"{name:<10}{summary['movies']:>8}{0:>8}{'-':>8}")
            continue
        lines.append(f"{name:<10}{summary['movies']:>8}{summary['dated']:>8}{summary['median']:>8.0f}"
                     f"{summary['first']:>7}-{summary['last']:<4}{summary['before_1990']:>8.1%}"
                     f"{summary['from_2000']:>8.1%}")
    return "\n".join(lines)


def top_genres(genre_lists: Sequence[Sequence[str]], count: int) -> list[str]:
    """The `count` most frequent genres, most frequent first (ties broken by name)."""
    counts = Counter(genre for movie in genre_lists for genre in movie)
    return [genre for genre, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:count]]


def oversample_counts(labels: np.ndarray, num_rare: int = 6, added_fraction: float = 0.6,
                      seed: int = 0) -> np.ndarray:
    """How many times each training row is used when the `num_rare` rarest genres are oversampled.

    Adds round(added_fraction * rows) copies (the paper added ~30,000 to ~49,000), each drawn from
    the movies of whichever rare genre is currently least frequent, so the rare genres rise together.
    """
    rows, num_genres = labels.shape
    if not 0 < num_rare <= num_genres:
        raise ValueError(f"num_rare must be between 1 and {num_genres}, got {num_rare}")
    if added_fraction < 0:
        raise ValueError(f"added_fraction must be >= 0, got {added_fraction}")
    rng = np.random.default_rng(seed)
    counts = np.ones(rows, dtype=np.int64)
    frequency = labels.sum(axis=0)
    rare = [genre for genre in np.argsort(frequency, kind="stable")[:num_rare] if frequency[genre] > 0]
    members = {genre: np.flatnonzero(labels[:, genre]) for genre in rare}
    for _ in range(int(round(added_fraction * rows)) if rare else 0):
        genre = min(rare, key=lambda g: (frequency[g], g))
        row = rng.choice(members[genre])
        counts[row] += 1
        frequency += labels[row]
    return counts


def frequency_table(genres: Sequence[str], columns: dict[str, np.ndarray]) -> str:
    """The paper's Table 2: each genre's frequency (share of movies) in several label sets."""
    names = list(columns)
    lines = ["genre        " + "".join(f"{name:>14}" for name in names)]
    for column, genre in enumerate(genres):
        cells = "".join(f"{columns[name][:, column].mean() if len(columns[name]) else 0.0:>14.3f}"
                        for name in names)
        lines.append(f"{genre:<13}{cells}")
    lines.append("movies       " + "".join(f"{len(columns[name]):>14}" for name in names))
    return "\n".join(lines)
