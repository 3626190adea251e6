"""Stratified splitting and oversampling."""
import numpy as np

from genre_tf.data.readers import SPLIT_NAMES
from genre_tf.data.split import (multi_hot, oversample_counts, stratified_split, time_split, top_genres, year_summary,
                                 year_table)


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


def test_a_random_split_draws_every_part_from_the_whole_id_range():
    # Ids that follow time (IMDb's): fed in sorted order, iterative stratification gave train the whole first third.
    rng = np.random.default_rng(0)
    ids = [f"tt{i:07d}" for i in range(10_000)]  # a tenth of 1,000 ids: sampling moves a share about 1.5 points
    genres = [[g for g in "ABCDE" if rng.random() < 0.3] or ["A"] for _ in ids]
    split = stratified_split(ids, genres, seed=0)
    for name, fraction in zip(SPLIT_NAMES, (0.6, 0.2, 0.2), strict=True):
        positions = np.asarray([int(movie_id[2:]) for movie_id in split[name]])
        tenths = np.bincount(positions * 10 // len(ids), minlength=10) / (len(ids) / 10)
        assert np.abs(tenths - fraction).max() < 0.05, (name, tenths.round(3))
    shuffled = rng.permutation(len(ids))
    assert stratified_split([ids[i] for i in shuffled], [genres[i] for i in shuffled], seed=0) == split
    other = stratified_split(ids, genres, seed=1)
    assert other != split and len(set(other["test"]) & set(split["test"])) < 0.4 * len(split["test"])


def test_a_time_split_gives_train_the_oldest_years_and_test_the_newest():
    rng = np.random.default_rng(1)
    ids = [f"m{i}" for i in range(500)]
    years = [int(year) for year in rng.integers(1920, 2020, size=500)]
    years[:5] = [None] * 5  # undated movies cannot be placed in time: train
    split = time_split(ids, years, seed=0)
    year_of = dict(zip(ids, years, strict=True))
    dated = {name: [year_of[i] for i in split[name] if year_of[i] is not None] for name in SPLIT_NAMES}
    assert max(dated["train"]) <= min(dated["dev"]) and max(dated["dev"]) <= min(dated["test"])
    assert [len(dated[name]) for name in SPLIT_NAMES] == [297, 99, 99] and set(ids[:5]) <= set(split["train"])
    assert sorted(sum(split.values(), [])) == sorted(ids)
    assert time_split(list(reversed(ids)), list(reversed(years)), seed=0) == split


def test_year_summary_counts_the_dated_movies_and_the_old_and_new_shares():
    summary = year_summary([1950, 1985, 1995, 2000, 2010, None])
    assert summary == {"movies": 6, "dated": 5, "median": 1995.0, "first": 1950, "last": 2010,
                       "before_1990": 0.4, "from_2000": 0.4}
    table = year_table({"catalogue": summary, "test": year_summary([None])})
    assert "1950-2010" in table and "40.0%" in table and table.splitlines()[2].split() == ["test", "1", "0", "-"]


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
