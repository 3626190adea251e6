"""Floors, classic reference models and lifts, checked against scikit-learn and values computed by hand."""
import itertools
import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import f1_score

from genre_tf.evaluate.baselines import (METRICS, best_constant_sets, best_floor, colour_histogram_logistic,
                                         colour_histograms, constant_floors, degenerate_genres, lift_rows,
                                         score_probabilities, tfidf_logistic)
from genre_tf.evaluate.metrics import tune_thresholds

GENRES = ["A", "B", "C"]
TRAIN = np.array([[1, 0, 0], [1, 1, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 1]])
DEV = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0], [0, 1, 1]])
TEST = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [1, 0, 1], [0, 0, 0]])  # the last movie has no genre


def sklearn_scores(labels, predicted) -> dict:
    """evaluate/metrics.py counts an empty per-genre F1 as 0 but a movie with no true and no predicted genre as 1."""
    scores = {f"{average}_f1": f1_score(labels, predicted, average=average, zero_division=0)
              for average in ("weighted", "macro", "micro")}
    scores["samples_f1"] = f1_score(labels, predicted, average="samples", zero_division=1)
    return scores


def constant(labels, names) -> np.ndarray:
    return np.tile([int(genre in names) for genre in GENRES], (len(labels), 1))


def test_floors_match_sklearn_and_a_hand_computation():
    rows = {row["model"]: row for row in constant_floors(TRAIN, DEV, TEST, GENRES)}
    assert list(rows) == ["floor: every genre", "floor: most common genre", "floor: best constant set (dev)"]
    for row in rows.values():
        assert row["kind"] == "floor" and row["thresholds"] is None and row["degenerate"] == []
        for split, labels in (("dev", DEV), ("test", TEST)):
            assert row[split]["at_0.5"] == row[split]["tuned"]
            for metric in METRICS:
                expected = sklearn_scores(labels, constant(labels, row["sets"][metric]))[metric]
                assert row[split]["tuned"][metric] == pytest.approx(expected, abs=1e-12), (row["model"], split, metric)
    assert rows["floor: most common genre"]["sets"]["weighted_f1"] == ["A"]  # A: 4 of 6 train movies
    every = rows["floor: every genre"]["test"]["tuned"]
    # test supports A=3, B=2, C=1 of N=5; predicting a genre for all gives F1 = 2s / (s + N): 6/8, 4/7, 2/6
    assert every["weighted_f1"] == pytest.approx((3 * 6 / 8 + 2 * 4 / 7 + 1 * 2 / 6) / 6)  # 0.62103
    assert every["macro_f1"] == pytest.approx((6 / 8 + 4 / 7 + 2 / 6) / 3)  # 0.55159
    assert every["micro_f1"] == pytest.approx(12 / 21)  # tp=6, fp=9, fn=0
    # per movie 2|y| / (|y| + 3): 2/4, 4/5, 2/4, 4/5 and 0 for the genreless movie
    assert every["samples_f1"] == pytest.approx((0.5 + 0.8 + 0.5 + 0.8 + 0.0) / 5)  # 0.52
    assert best_floor(list(rows.values()), "weighted_f1") == pytest.approx(
        max(row["test"]["tuned"]["weighted_f1"] for row in rows.values()))


def test_best_constant_set_is_what_brute_force_finds():
    best = constant_floors(TRAIN, DEV, TEST, GENRES)[2]
    subsets = [set(s) for size in (1, 2, 3) for s in itertools.combinations(GENRES, size)]
    for metric in METRICS:
        scored = [(sklearn_scores(DEV, constant(DEV, s))[metric], s) for s in subsets]
        top = max(score for score, _ in scored)
        winners = [s for score, s in scored if score == pytest.approx(top, abs=1e-12)]
        assert set(best["sets"][metric]) in winners, metric
        assert best["dev"]["tuned"][metric] == pytest.approx(top, abs=1e-12)
        # ties go to the smallest set, so the chosen set is never larger than a winner
        assert len(best["sets"][metric]) == min(len(s) for s in winners)


def test_greedy_search_above_twelve_genres_finds_the_optimum_where_it_is_known():
    rng = np.random.default_rng(3)
    frequencies = np.linspace(0.6, 0.02, 13)
    frequencies[7] = 0.0  # no dev support: adding it can only tie, so it must be left out
    dev = (rng.random((300, 13)) < frequencies).astype(np.int32)
    sets = best_constant_sets(dev)
    # closed forms for a constant set S over N movies with supports s and T = sum(s):
    # micro = 2 sum_S s / (|S| N + T); weighted = sum_S s * 2s / (s + N) / T
    masks = (np.arange(1, 2 ** 13)[:, None] >> np.arange(13)) & 1
    support, n, total = dev.sum(0).astype(float), len(dev), dev.sum()
    micro = 2 * masks @ support / (masks.sum(1) * n + total)
    weighted = masks @ (support * 2 * support / (support + n)) / total
    chosen = {metric: np.isin(np.arange(13), sets[metric]).astype(int) for metric in ("micro_f1", "weighted_f1")}
    assert 2 * chosen["micro_f1"] @ support / (chosen["micro_f1"].sum() * n + total) == pytest.approx(micro.max())
    assert chosen["weighted_f1"] @ (support * 2 * support / (support + n)) / total == pytest.approx(weighted.max())
    assert sets["weighted_f1"] == tuple(i for i in range(13) if i != 7)


def make_texts(rng, count, genre_count=5):
    """Plots where cue words reveal genres 0-3; genre 4 ("Western") is only ever seen outside train."""
    cues = [["family", "tears"], ["laugh", "joke"], ["fight", "chase"], ["ghost", "scream"], ["cowboy", "saloon"]]
    noise = ["the", "a", "city", "night", "story", "man", "woman", "house", "road", "day", "time", "year"]
    labels = (rng.random((count, genre_count)) < [0.45, 0.35, 0.3, 0.25, 0.2]).astype(np.int32)
    texts = []
    for row in labels:
        words = list(rng.choice(noise, size=12))
        for genre in np.flatnonzero(row):
            words += [word for word in cues[genre] if rng.random() < 0.8]
        texts.append(" ".join(rng.permutation(words)))
    return texts, labels


def test_tfidf_logistic_beats_the_best_floor_and_survives_a_genre_absent_from_train():
    rng = np.random.default_rng(0)
    (train_x, train_y), (dev_x, dev_y), (test_x, test_y) = (make_texts(rng, n) for n in (240, 80, 80))
    train_y[:, 4] = 0
    report = {}
    dev_p, test_p = tfidf_logistic(train_x, train_y, dev_x, dev_y, test_x, report=report)
    assert dev_p.dtype == np.float32 and dev_p.shape == dev_y.shape and test_p.shape == test_y.shape
    assert np.all(dev_p[:, 4] == 0) and np.all(test_p[:, 4] == 0)
    assert report["C"] in (0.5, 2.0, 8.0) and set(report["dev_macro_f1_by_C"]) == {0.5, 2.0, 8.0}
    names = ["Drama", "Comedy", "Action", "Horror", "Western"]
    floors = constant_floors(train_y, dev_y, test_y, names)
    row = score_probabilities("tfidf", dev_y, dev_p, test_y, test_p, genres=names)
    # genres 0-3 are near perfect while Western scores 0: test macro F1 0.75 against 0.48 for the best floor,
    # weighted 0.81 against 0.50 (margin 0.2 asserted)
    assert row["test"]["tuned"]["macro_f1"] > best_floor(floors, "macro_f1") + 0.2
    assert row["test"]["tuned"]["weighted_f1"] > best_floor(floors, "weighted_f1") + 0.2


def make_posters(rng, count):
    """8x8 posters whose dominant colour (75% of pixels) reveals the first genre; a second genre has no cue."""
    colours = np.array([[220, 30, 30], [30, 200, 40], [30, 40, 220]])
    first = rng.integers(0, 3, count)
    labels = np.zeros((count, 3), np.int32)
    labels[np.arange(count), first] = 1
    labels[rng.random((count, 3)) < 0.15] = 1
    images = rng.integers(0, 256, (count, 8, 8, 3))
    cue = rng.random((count, 8, 8)) < 0.75
    images[cue] = np.clip(colours[first][:, None, None, :] + rng.integers(-25, 26, (count, 8, 8, 3)), 0, 255)[cue]
    return images.astype(np.uint8), labels


def test_colour_histogram_logistic_beats_the_best_floor():
    rng = np.random.default_rng(1)
    (train_x, train_y), (dev_x, dev_y), (test_x, test_y) = (make_posters(rng, n) for n in (240, 80, 80))
    dev_p, test_p = colour_histogram_logistic(train_x, train_y, dev_x, dev_y, test_x)
    assert dev_p.dtype == np.float32 and test_p.shape == test_y.shape
    floors = constant_floors(train_y, dev_y, test_y, ["red", "green", "blue"])
    row = score_probabilities("colour", dev_y, dev_p, test_y, test_p, genres=["red", "green", "blue"])
    # the colour cue finds each first genre: 0.85 test macro F1 against 0.57 for the best floor (margin 0.2 asserted)
    assert row["test"]["tuned"]["macro_f1"] > best_floor(floors, "macro_f1") + 0.2


def test_colour_histograms_match_numpy_histogramdd():
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (5, 7, 9, 3), dtype=np.uint8)
    for bins in (3, 4):
        result = colour_histograms(images, bins=bins, chunk=2)
        edges = [np.linspace(0, 256, bins + 1)] * 3
        for image, row in zip(images, result, strict=True):
            expected, _ = np.histogramdd(image.reshape(-1, 3), bins=edges)
            np.testing.assert_allclose(row, expected.ravel() / 63, atol=1e-6)
    red = np.zeros((1, 4, 4, 3), np.uint8)
    red[..., 0] = 255
    assert np.flatnonzero(colour_histograms(red, bins=4)[0]).tolist() == [3 * 16]  # r bin 3, g 0, b 0


def test_score_probabilities_matches_sklearn_at_tuned_thresholds_and_at_half():
    rng = np.random.default_rng(4)
    dev_y, test_y = (rng.random((40, 3)) < 0.4).astype(np.int32), (rng.random((30, 3)) < 0.4).astype(np.int32)
    test_y[0] = 0  # a genreless movie, predicted nothing below: samples F1 counts it as 1
    dev_p = np.clip(dev_y * 0.5 + rng.random((40, 3)) * 0.6, 0, 1).astype(np.float32)
    test_p = np.clip(test_y * 0.5 + rng.random((30, 3)) * 0.6, 0, 1).astype(np.float32)
    test_p[0] = 0.0
    row = score_probabilities("m", dev_y, dev_p, test_y, test_p, genres=GENRES)
    thresholds = tune_thresholds(dev_y, dev_p)
    assert row["thresholds"] == pytest.approx(thresholds.tolist()) and row["sets"] is None
    for split, labels, probabilities in (("dev", dev_y, dev_p), ("test", test_y, test_p)):
        for key, cut in (("tuned", thresholds), ("at_0.5", 0.5)):
            expected = sklearn_scores(labels, (probabilities >= np.asarray(cut, np.float32)).astype(int))
            assert row[split][key] == pytest.approx(expected, abs=1e-12), (split, key)


def test_degenerate_genres_flags_always_on_genres_only():
    dev_y = np.array([[1, 1], [0, 0], [1, 0], [0, 1]] * 5)
    # genre 0 gets 0.3 for everyone: every threshold up to 0.3 predicts it for all (F1 2/3), so tuning picks 0.02;
    # genre 1 separates perfectly at 0.11 and is predicted for half the movies
    dev_p = np.stack([np.full(20, 0.3), dev_y[:, 1] * 0.8 + 0.1], 1).astype(np.float32)
    row = score_probabilities("m", dev_y, dev_p, dev_y, dev_p, genres=["Drama", "Comedy"])
    assert row["degenerate"] == [{"genre": "Drama", "threshold": pytest.approx(0.02), "share_predicted": 1.0}]
    assert row["thresholds"][1] == pytest.approx(0.11)
    assert degenerate_genres(dev_p, [0.02, 0.5], ["Drama", "Comedy"], share=0.5) == [
        {"genre": "Drama", "threshold": 0.02, "share_predicted": 1.0},
        {"genre": "Comedy", "threshold": 0.5, "share_predicted": 0.5}]


def test_lift_is_model_minus_best_floor():
    floors = constant_floors(TRAIN, DEV, TEST, GENRES)
    model = score_probabilities("m", DEV, DEV * 0.9, TEST, TEST * 0.9, genres=GENRES)
    rows = lift_rows([*floors, model], floors)
    assert all("lift" not in row for row in rows[:3])
    for metric in METRICS:
        floor = max(row["test"]["tuned"][metric] for row in floors)
        assert model["lift"][metric] == pytest.approx(model["test"]["tuned"][metric] - floor)
    # the model is perfect (dev thresholds 0.02 separate 0 from 0.9), so it scores 1 on every metric on test,
    # the genreless test movie included (nothing true, nothing predicted counts 1 in samples F1)
    assert model["test"]["tuned"] == dict.fromkeys(METRICS, 1.0)
    assert model["lift"]["micro_f1"] == pytest.approx(1 - 12 / 21)  # the best micro floor is every genre: 12/21
    lift_rows([model], floors, metrics=("weighted_f1",), key="at_0.5")
    assert model["lift"] == {"weighted_f1": pytest.approx(1 - best_floor(floors, "weighted_f1"))}


@pytest.mark.parametrize("call, message", [
    (lambda: constant_floors(TRAIN, DEV, TEST[:, :2], GENRES), "test labels has 2 genres"),
    (lambda: constant_floors(TRAIN, DEV[:0], TEST, GENRES), "dev labels is empty"),
    (lambda: constant_floors(TRAIN * 2, DEV, TEST, GENRES), "0/1 values"),
    (lambda: score_probabilities("m", DEV, DEV[:, :2], TEST, TEST), "must have one shape"),
    (lambda: score_probabilities("m", DEV, DEV, TEST, TEST, genres=["A"]), "1 genre names"),
    (lambda: score_probabilities("m", DEV, DEV * np.nan, TEST, TEST), "NaN"),
    (lambda: best_floor([], "weighted_f1"), "no floor rows"),
    (lambda: tfidf_logistic(["a b"] * 3, TRAIN, ["a"], DEV, ["a"]), "3 train texts but 6"),
    (lambda: colour_histograms(np.zeros((2, 4, 4), np.uint8)), "uint8 \\[N, H, W, 3\\]"),
])
def test_bad_shapes_raise_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_module_does_not_import_tensorflow():
    code = "import sys, genre_tf.evaluate.baselines; assert 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
