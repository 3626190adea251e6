"""Stratified splitting and oversampling."""
import numpy as np

from genre_tf.data.split import multi_hot, oversample_counts, stratified_split, top_genres


def catalogue(n=1000, seed=0):
    rng = np.random.default_rng(seed)
    rates = {"Drama": 0.55, "Comedy": 0.34, "Horror": 0.12, "Sci-Fi": 0.06}
    genres = [[g for g, r in rates.items() if rng.random() < r] or ["Drama"] for _ in range(n)]
    return [f"m{i}" for i in range(n)], genres


def test_split_is_60_20_20_stratified_and_deterministic():
    ids, genres = catalogue()
    split = stratified_split(ids, genres, seed=7)
    assert sorted(sum(split.values(), [])) == sorted(ids)
    sizes = [len(split[s]) for s in ("train", "dev", "test")]
    np.testing.assert_allclose(sizes, [600, 200, 200], atol=10)  # label balance can move a few rows
    by_id = dict(zip(ids, genres, strict=True))
    overall = multi_hot(genres, ["Drama", "Comedy", "Horror", "Sci-Fi"]).mean(0)
    for part in split.values():
        share = multi_hot([by_id[i] for i in part], ["Drama", "Comedy", "Horror", "Sci-Fi"]).mean(0)
        np.testing.assert_allclose(share, overall, atol=0.015)
    assert stratified_split(ids, genres, seed=7) == split
    assert stratified_split(ids, genres, seed=8) != split


def test_top_genres_orders_by_frequency_then_name():
    assert top_genres([["B", "A"], ["A"], ["C", "B"], ["D"]], 3) == ["A", "B", "C"]


def test_oversampling_adds_the_requested_copies_of_rare_genres_only():
    ids, genres = catalogue(600)
    labels = multi_hot(genres, ["Drama", "Comedy", "Horror", "Sci-Fi"])
    counts = oversample_counts(labels, num_rare=2, added_fraction=0.5, seed=0)
    assert counts.min() == 1 and counts.sum() == 600 + 300
    copied = counts > 1
    assert labels[copied][:, 2:].sum(1).min() >= 1  # every copy carries Horror or Sci-Fi
    before, after = labels.mean(0), np.repeat(labels, counts, axis=0).mean(0)
    assert after[2] > before[2] and after[3] > 2 * before[3]
    np.testing.assert_array_equal(oversample_counts(labels, 2, 0.5, seed=0), counts)
