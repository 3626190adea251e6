"""The soft-F1 loss and the evaluation metrics against values computed by hand."""
import numpy as np
import pytest

import genre_tf  # noqa: F401
import tf_keras as keras
from genre_tf.evaluate.metrics import f1_scores, predict_labels, tune_thresholds
from genre_tf.train.losses import AsymmetricLoss, SoftF1Loss, SoftF1PlusCrossentropy, WeightedBinaryCrossentropy

Y = np.array([[1, 0], [0, 1], [1, 1]], np.float32)
P = np.array([[0.9, 0.2], [0.3, 0.6], [0.5, 0.5]], np.float32)


def test_soft_f1_matches_equations_3_and_4_by_hand():
    # genre 0: tp=1.4 fp=0.3 fn=0.6 tn=0.7 -> F1+ = 2.8/3.7, F1- = 1.4/2.3
    # genre 1: tp=1.1 fp=0.2 fn=0.9 tn=0.8 -> F1+ = 2.2/3.3, F1- = 1.6/2.7
    expected = np.mean([1 - 0.5 * 2.8 / 3.7 - 0.5 * 1.4 / 2.3, 1 - 0.5 * 2.2 / 3.3 - 0.5 * 1.6 / 2.7])
    assert float(SoftF1Loss()(Y, P)) == pytest.approx(expected, rel=1e-6)
    assert float(SoftF1Loss()(Y, Y)) == pytest.approx(0.0, abs=1e-6)
    assert float(SoftF1Loss()(Y, 1 - Y)) == pytest.approx(1.0, abs=1e-6)


def test_losses_round_trip_their_config():
    loss = SoftF1Loss(epsilon=1e-7)
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(restored, SoftF1Loss) and restored.epsilon == 1e-7
    weighted = WeightedBinaryCrossentropy([2.0, 3.0])
    assert keras.losses.deserialize(keras.losses.serialize(weighted)).positive_weights == [2.0, 3.0]
    # weight 1 everywhere equals plain binary cross-entropy
    np.testing.assert_allclose(WeightedBinaryCrossentropy([1.0, 1.0])(Y, P),
                               keras.losses.binary_crossentropy(Y, P).numpy().mean(), rtol=1e-5)


def test_asymmetric_loss_is_its_formula_and_spares_easy_negatives():
    # Ridnik et al.'s ASL with gamma+ 0, gamma- 4, clip 0.05, written out per entry and averaged over genres
    y, p = np.asarray(Y, np.float64), np.asarray(P, np.float64)
    shifted = np.maximum(p - 0.05, 0)
    by_hand = -(y * np.log(p) + (1 - y) * shifted ** 4 * np.log(1 - shifted + 1e-7)).mean(axis=1).mean()
    assert float(AsymmetricLoss()(Y, P)) == pytest.approx(by_hand, rel=1e-5)
    # an easy negative (p = 0.04, under the clip) costs nothing; cross-entropy would still charge it
    assert float(AsymmetricLoss()([[0.0]], [[0.04]])) == pytest.approx(0.0, abs=1e-6)
    restored = keras.losses.deserialize(keras.losses.serialize(AsymmetricLoss(gamma_negative=2.0, clip=0.1)))
    assert (restored.gamma_negative, restored.clip) == (2.0, 0.1)


def test_soft_f1_plus_crossentropy_is_the_sum_of_both():
    crossentropy = keras.losses.binary_crossentropy(Y, P).numpy().mean()
    assert float(SoftF1PlusCrossentropy()(Y, P)) == pytest.approx(float(SoftF1Loss()(Y, P)) + crossentropy, rel=1e-5)
    assert isinstance(keras.losses.deserialize(keras.losses.serialize(SoftF1PlusCrossentropy())),
                      SoftF1PlusCrossentropy)


def test_soft_f1_falls_on_a_learnable_toy_problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 4)).astype("float32")
    y = np.stack([x[:, 0] > 0, x[:, 1] + x[:, 2] > 0.5], axis=1).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.layers.Dense(2, activation="sigmoid")])
    model.compile(keras.optimizers.Adam(0.05), SoftF1Loss())
    history = model.fit(x, y, batch_size=64, epochs=15, verbose=0).history["loss"]
    assert history[-1] < 0.6 * history[0]


def test_weighted_f1_is_equation_2_and_agrees_with_scikit_learn():
    from sklearn.metrics import f1_score

    labels = np.array([[1, 0, 1], [1, 1, 0], [0, 1, 0], [1, 0, 0]])
    predicted = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 1], [0, 0, 0]])
    scores = f1_scores(labels, predicted)
    # per genre: F1 = 2tp / (2tp + fn + fp): 4/(4+1), 2/(2+1), 0/(0+1+1); supports 3, 2, 1
    np.testing.assert_allclose(scores["f1"], [0.8, 2 / 3, 0.0])
    assert scores["weighted_f1"] == pytest.approx((3 * 0.8 + 2 * 2 / 3 + 0) / 6)
    for average in ("weighted", "macro", "micro", "samples"):
        assert scores[f"{average}_f1"] == pytest.approx(f1_score(labels, predicted, average=average, zero_division=0))


def test_thresholds_maximise_each_genres_f1():
    labels = np.array([[1], [1], [0], [0]])
    probabilities = np.array([[0.3], [0.25], [0.2], [0.1]])
    threshold = tune_thresholds(labels, probabilities)
    assert 0.2 < threshold[0] <= 0.25
    np.testing.assert_array_equal(predict_labels(probabilities, threshold), labels)


def test_a_genre_without_a_positive_dev_movie_is_never_predicted():
    from genre_tf.evaluate.evaluation import unseen_lines
    from genre_tf.evaluate.metrics import NEVER_THRESHOLD, predict_labels, unseen_genres

    labels = np.array([[1, 0], [0, 0], [1, 0], [0, 0]])
    probabilities = np.array([[0.9, 0.3], [0.2, 1.0], [0.8, 0.99], [0.1, 0.05]], np.float32)
    thresholds = tune_thresholds(labels, probabilities)
    assert thresholds.tolist() == [0.21, NEVER_THRESHOLD]  # before: 0.02, which predicted B for every movie
    assert predict_labels(np.ones((3, 2), np.float32), thresholds)[:, 1].tolist() == [0, 0, 0]
    assert unseen_genres(["A", "B"], thresholds) == ["B"]
    assert unseen_lines(["B"]) == ["", "Genres never predicted: B had no positive movie on dev, so no threshold could "
                                       "be tuned for them; their threshold is 2, above any probability."]
