"""Bootstrap intervals and paired differences: hand cases, and a brute force over explicit resamples."""
import numpy as np
import pytest

from genre_tf.evaluate.baselines import METRICS
from genre_tf.evaluate.metrics import f1_scores
from genre_tf.evaluate.uncertainty import (bootstrap_intervals, format_interval, paired_difference, resample_counts,
                                           resample_indices, resampled, resampled_scores, seed_spread)


def random_set(seed, movies=30, genres=4):
    rng = np.random.default_rng(seed)
    labels = (rng.random((movies, genres)) < 0.35).astype(int)
    predicted = (rng.random((movies, genres)) < 0.35).astype(int)
    labels[0], predicted[0] = 0, 0           # a movie with nothing true and nothing predicted: samples F1 of 1
    predicted[:, -1] = 0                     # a genre never predicted: F1 0, not a division by zero
    return labels, predicted


def test_resampled_scores_equal_scikit_learn_on_every_explicit_resample():
    labels, predicted = random_set(1)
    indices = resample_indices(len(labels), resamples=60, seed=5)
    scores = resampled_scores(labels, predicted, resample_counts(indices, len(labels)))
    for row, chosen in enumerate(indices):
        expected = f1_scores(labels[chosen], predicted[chosen])
        for metric in METRICS:
            assert scores[metric][row] == pytest.approx(expected[metric], abs=1e-12)
        np.testing.assert_allclose(scores["f1"][row], expected["f1"], atol=1e-12)


def test_resamples_drawn_in_chunks_are_the_one_draw_of_resample_indices():
    labels, predicted = random_set(3)
    chunks = []

    def score(counts):
        chunks.append(len(counts))
        return {"counts": counts, **resampled_scores(labels, predicted, counts)}

    chunked = resampled(score, len(labels), resamples=700, seed=4, chunk_cells=1)  # 256 resamples a chunk at least
    assert chunks == [256, 256, 188]
    whole = resample_counts(resample_indices(len(labels), 700, 4), len(labels))
    np.testing.assert_array_equal(chunked["counts"], whole)
    np.testing.assert_array_equal(chunked["weighted_f1"], resampled_scores(labels, predicted, whole)["weighted_f1"])
    with pytest.raises(ValueError, match="at least one movie"):
        resampled(score, 0)


def test_interval_is_the_percentile_of_a_brute_force_bootstrap():
    labels, predicted = random_set(2, movies=25)
    result = bootstrap_intervals(labels, predicted, resamples=300, seed=7)
    brute = [f1_scores(labels[chosen], predicted[chosen])["weighted_f1"]
             for chosen in resample_indices(len(labels), 300, 7)]
    assert result["weighted_f1"]["low"] == pytest.approx(np.quantile(brute, 0.025))
    assert result["weighted_f1"]["high"] == pytest.approx(np.quantile(brute, 0.975))
    assert result["weighted_f1"]["value"] == pytest.approx(f1_scores(labels, predicted)["weighted_f1"])
    assert result["weighted_f1"]["low"] < result["weighted_f1"]["value"] < result["weighted_f1"]["high"]
    assert len(result["per_genre_f1"]) == 4 and result["per_genre_f1"][-1] == {"value": 0, "low": 0, "high": 0}
    assert bootstrap_intervals(labels, predicted, resamples=300, seed=7) == result  # fixed seed: repeatable


def test_perfect_predictions_have_a_zero_width_interval_and_more_movies_a_narrower_one():
    labels, _ = random_set(3)
    exact = bootstrap_intervals(labels, labels)
    assert all(exact[m] == {"value": 1.0, "low": 1.0, "high": 1.0} for m in METRICS)
    small, predicted = random_set(4, movies=50)
    large = np.tile(small, (16, 1)), np.tile(predicted, (16, 1))  # the same scores on 16x the movies
    width = {n: r["weighted_f1"]["high"] - r["weighted_f1"]["low"]
             for n, r in ((50, bootstrap_intervals(small, predicted)), (800, bootstrap_intervals(*large)))}
    assert width[800] < width[50] / 3  # the width shrinks as 1/sqrt(movies): /4 here


def test_paired_difference_by_hand_and_by_brute_force():
    labels = np.array([[1], [1], [0], [1], [0], [1]])
    right = labels.copy()
    one_miss = labels.copy()
    one_miss[0] = 0                          # recall 3/4: F1 = 2*3 / (2*3 + 1) = 6/7
    difference = paired_difference(labels, right, one_miss, resamples=500, seed=1)
    assert difference["weighted_f1"]["value"] == pytest.approx(1 - 6 / 7)
    # the second model is never better on any resample, and worse whenever movie 0 is drawn
    assert difference["weighted_f1"]["low"] >= 0 and difference["weighted_f1"]["high"] > 0
    same = paired_difference(labels, one_miss, one_miss)
    assert all(same[m] == {"value": 0, "low": 0, "high": 0, "excludes_zero": False} for m in METRICS)

    labels, a = random_set(6, movies=40)
    _, b = random_set(7, movies=40)
    result = paired_difference(labels, a, b, resamples=200, seed=3)
    brute = [f1_scores(labels[c], a[c])["macro_f1"] - f1_scores(labels[c], b[c])["macro_f1"]
             for c in resample_indices(40, 200, 3)]
    assert result["macro_f1"]["low"] == pytest.approx(np.quantile(brute, 0.025))
    assert result["macro_f1"]["high"] == pytest.approx(np.quantile(brute, 0.975))
    assert result["macro_f1"]["excludes_zero"] == (result["macro_f1"]["low"] > 0 or result["macro_f1"]["high"] < 0)


def test_a_real_gap_is_found_that_separate_intervals_miss():
    # B is A with 8 of 400 movies' first genre flipped to wrong: the gap is small but consistent
    rng = np.random.default_rng(0)
    labels = (rng.random((400, 3)) < 0.4).astype(int)
    a = np.where(rng.random((400, 3)) < 0.8, labels, 1 - labels)
    b = a.copy()
    hit = np.flatnonzero(a[:, 0] == labels[:, 0])[:8]
    b[hit, 0] = 1 - labels[hit, 0]
    separate = [bootstrap_intervals(labels, p)["weighted_f1"] for p in (a, b)]
    assert separate[0]["low"] < separate[1]["high"]                   # the separate intervals overlap
    assert paired_difference(labels, a, b)["weighted_f1"]["excludes_zero"]  # the paired one sees the gap


def test_several_seeds_are_scored_as_their_mean_inside_each_resample():
    labels, a = random_set(8)
    _, b = random_set(9)
    counts = resample_counts(resample_indices(len(labels), 40, 2), len(labels))
    both = resampled_scores(labels, [a, b], counts)
    for metric in METRICS:
        expected = (resampled_scores(labels, a, counts)[metric] + resampled_scores(labels, b, counts)[metric]) / 2
        np.testing.assert_allclose(both[metric], expected)
    assert bootstrap_intervals(labels, np.stack([a, b]))["macro_f1"]["value"] == pytest.approx(
        (f1_scores(labels, a)["macro_f1"] + f1_scores(labels, b)["macro_f1"]) / 2)


def test_seed_spread_and_formatting():
    assert seed_spread([0.6, 0.62, 0.64]) == pytest.approx({"mean": 0.62, "sd": 0.02, "min": 0.6, "max": 0.64,
                                                             "seeds": 3})
    assert seed_spread([0.5])["sd"] == 0.0
    assert format_interval({"value": 0.6512, "low": 0.626, "high": 0.6761}) == "0.651 (0.626-0.676)"
    assert format_interval({"value": 0.019, "low": 0.009, "high": 0.029}, signed=True) == "+0.019 (+0.009 to +0.029)"
    with pytest.raises(ValueError, match="must agree"):
        resampled_scores(np.zeros((3, 2)), np.zeros((4, 2)), np.ones((1, 3)))
