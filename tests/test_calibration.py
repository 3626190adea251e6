"""Calibration: scores against scikit-learn and by hand, their bootstrap, the calibrators, and a calibrated run."""
import os

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss, log_loss

import genre_tf  # noqa: F401
from genre_tf.evaluate.calibration import (calibration_intervals, equal_mass_bins, fit_calibrators, fit_scaling,
                                           reliability_points, resampled_calibration)
from genre_tf.evaluate.uncertainty import resample_counts, resample_indices


def sigmoid(values):
    return 1 / (1 + np.exp(-values))


def calibrated_set(seed, movies=4000, genres=3, sharpen=1.0, shift=0.0):
    """Probabilities whose truth is drawn from them (calibrated); sharpen > 1 makes them overconfident."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, (movies, genres))
    labels = (rng.random((movies, genres)) < sigmoid(logits)).astype(int)
    return labels, sigmoid(sharpen * logits + shift), logits


def hand_ece(labels, probabilities, bins):
    """ECE written out: for each bin, |sum of probabilities - sum of truths| / all pairs."""
    total = 0.0
    for b in range(bins.max() + 1):
        total += abs(probabilities[bins == b].sum() - labels[bins == b].sum())
    return total / labels.size


def test_equal_mass_bins_are_ranks_cut_into_equal_groups():
    values = np.array([0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6, 0.0])
    np.testing.assert_array_equal(equal_mass_bins(values, bins=5), [4, 0, 2, 1, 3, 1, 4, 2, 3, 0])
    assert np.bincount(equal_mass_bins(np.random.default_rng(0).random(103), 10)).tolist() == [11, 11, 11] + [10] * 7


def test_scores_equal_scikit_learn_and_a_hand_ece_on_every_explicit_resample():
    labels, probabilities, _ = calibrated_set(1, movies=40, sharpen=2.0)
    probabilities[0, 0] = 0.0  # a confident miss is clipped as scikit-learn clips it, not infinite
    labels[0, 0] = 1
    indices = resample_indices(len(labels), resamples=30, seed=3)
    scores = resampled_calibration(labels, probabilities, resample_counts(indices, len(labels)), bins=4)
    pooled_bins = equal_mass_bins(probabilities, 4)  # cut once on the whole set, kept in every resample
    for row, chosen in enumerate(indices):
        y, p = labels[chosen], probabilities[chosen]
        for g in range(3):
            assert scores["brier_per_genre"][row, g] == pytest.approx(brier_score_loss(y[:, g], p[:, g]))
            assert scores["log_loss_per_genre"][row, g] == pytest.approx(log_loss(y[:, g], p[:, g], labels=[0, 1]))
            genre_bins = equal_mass_bins(probabilities[:, g], 4)[chosen]
            assert scores["ece_per_genre"][row, g] == pytest.approx(hand_ece(y[:, g], p[:, g], genre_bins))
        assert scores["brier"][row] == pytest.approx(np.mean((p - y) ** 2))
        assert scores["ece"][row] == pytest.approx(hand_ece(y, p, pooled_bins[chosen]))


def test_calibrated_probabilities_score_low_and_overconfident_ones_high():
    labels, calibrated, _ = calibrated_set(2)
    _, overconfident, _ = calibrated_set(2, sharpen=3.0)
    good, bad = calibration_intervals(labels, calibrated, resamples=200), calibration_intervals(
        labels, overconfident, resamples=200)
    assert good["ece"]["value"] < 0.02 < 0.08 < bad["ece"]["value"]
    assert good["ece"]["low"] <= good["ece"]["value"] <= good["ece"]["high"] < bad["ece"]["low"]
    assert good["log_loss"]["high"] < bad["log_loss"]["low"] and good["brier"]["value"] < bad["brier"]["value"]
    assert len(good["ece_per_genre"]) == 3 and good["bins"] == 10
    # two seeds: the mean of their scores
    both = calibration_intervals(labels, np.stack([calibrated, overconfident]), resamples=50)
    assert both["brier"]["value"] == pytest.approx((good["brier"]["value"] + bad["brier"]["value"]) / 2)


def test_reliability_points_count_every_pair_and_follow_the_diagonal_when_calibrated():
    labels, calibrated, _ = calibrated_set(3)
    points = reliability_points(labels, calibrated)
    assert sum(points["count"]) == labels.size and len(points["count"]) == 10
    np.testing.assert_allclose(points["observed"], points["predicted"], atol=0.04)
    assert points["predicted"] == sorted(points["predicted"])


def test_temperature_and_platt_recover_the_distortion():
    labels, _, logits = calibrated_set(4, movies=20000, genres=1)
    scale, bias = fit_scaling(3.0 * logits[:, 0], labels[:, 0], "temperature")
    assert scale == pytest.approx(1 / 3, rel=0.05) and bias == 0.0
    scale, bias = fit_scaling(2.0 * logits[:, 0] - 1.0, labels[:, 0], "platt")  # z' = 2z - 1: a = 1/2, b = 1/2
    assert scale == pytest.approx(0.5, rel=0.05) and bias == pytest.approx(0.5, abs=0.06)
    assert fit_scaling(logits[:, 0], np.zeros(len(logits)), "platt") == (1.0, 0.0)  # one class: left alone
    with pytest.raises(ValueError, match="calibration must be one of"):
        fit_scaling(logits[:, 0], labels[:, 0], "isotonic")


def test_cross_fitted_dev_probabilities_come_from_other_folds_and_mend_overconfidence():
    labels, _, logits = calibrated_set(5, movies=1500)
    overconfident = sigmoid(3.0 * logits)
    labels[:, 2] = 0
    labels[0, 2] = 1  # one positive: too few to fit, the genre keeps its logits
    scale, bias, out_of_fold = fit_calibrators(3.0 * logits, labels, "platt")
    np.testing.assert_allclose(scale[:2], 1 / 3, rtol=0.2)  # 1,500 movies: sampling noise
    assert (scale[2], bias[2]) == (1.0, 0.0)
    np.testing.assert_allclose(out_of_fold[:, 2], sigmoid(3.0 * logits[:, 2]))
    in_sample = sigmoid(scale * 3.0 * logits + bias)
    assert not np.allclose(out_of_fold[:, :2], in_sample[:, :2]) and np.allclose(out_of_fold, in_sample, atol=0.05)
    before = calibration_intervals(labels[:, :2], overconfident[:, :2], resamples=1)["ece"]["value"]
    after = calibration_intervals(labels[:, :2], out_of_fold[:, :2], resamples=1)["ece"]["value"]
    assert after < before / 3
    none = fit_calibrators(logits, labels, "none")
    np.testing.assert_array_equal(none[0], 1.0)
    np.testing.assert_allclose(none[2], sigmoid(logits))


def test_a_genre_the_logits_do_not_rank_keeps_its_ranking_instead_of_one_probability():
    # a weak model: genre 0 ranked well, genre 1 not at all, genre 2 backwards (dev says so, training did not)
    rng = np.random.default_rng(7)
    logits = rng.normal(0, 2, (600, 3))
    chance = np.stack([sigmoid(logits[:, 0]), np.full(600, 0.15), sigmoid(1.5 - 0.3 * logits[:, 2])], axis=1)
    labels = (rng.random((600, 3)) < chance).astype(int)
    scale, bias, out_of_fold = fit_calibrators(logits, labels, "platt")
    assert scale[0] == pytest.approx(0.914, abs=1e-3)  # a genre with a ranking is fitted as before
    # the maximum-likelihood slopes of genres 1 and 2 are the 1e-3 floor: one probability (within 0.03) for every
    # movie, predicted for all of them. They keep the network's slope; the bias alone meets the base rate
    np.testing.assert_array_equal(scale[1:], [1.0, 1.0])
    np.testing.assert_allclose(sigmoid(logits[:, 1:] + bias[1:]).mean(0), labels[:, 1:].mean(0), atol=1e-5)
    assert (out_of_fold.max(0) - out_of_fold.min(0) > 0.9).all()
    for genre in (1, 2):
        in_sample = sigmoid(scale[genre] * logits[:, genre] + bias[genre])
        np.testing.assert_array_equal(np.argsort(in_sample, kind="stable"), np.argsort(logits[:, genre], kind="stable"))
    # temperature keeps such a genre's logits as they are (its slope of 0.04 left them 0.08 apart)
    assert fit_scaling(logits[:, 1], labels[:, 1], "temperature") == (1.0, 0.0)
    assert fit_scaling(logits[:, 0], labels[:, 0], "temperature")[0] == pytest.approx(0.920, abs=1e-3)


@pytest.mark.slow
def test_a_platt_run_serves_calibrated_probabilities_and_tunes_on_the_cross_fitted_ones(tiny_config):
    import json

    from genre_tf.data.dataset import make_dataset, split_labels
    from genre_tf.evaluate.metrics import tune_thresholds
    from genre_tf.files import read_json
    from genre_tf.nets.models import CALIBRATION, HEAD
    from genre_tf.nets.network import restore_trained
    from genre_tf.run_dir import CALIBRATED_OUT_OF_FOLD, checkpoint_record, load_config
    from genre_tf.train.training import finalise_run, train

    run_dir = train(tiny_config("text_frozen", "model.calibration=platt", "epochs=3"))
    config, prepared, model, caches = restore_trained(run_dir)
    scale, bias = model.get_layer(HEAD).get_layer(CALIBRATION).get_weights()
    assert not (np.allclose(scale, 1) and np.allclose(bias, 0)) and (scale > 0).all()
    assert checkpoint_record(run_dir)["calibration"] == "platt"
    dev = make_dataset(prepared, "dev", 64, training=False, input_names=list(model.input_names), image_size=32,
                       feature_caches=caches)
    probabilities = model.predict(dev, verbose=0).astype(np.float64)
    logits = np.log(probabilities) - np.log1p(-probabilities)
    labels = split_labels(prepared, "dev")
    stored = np.load(os.path.join(run_dir, CALIBRATED_OUT_OF_FOLD))
    assert stored["ids"].tolist() == labels["ids"] and stored["probabilities"].shape == probabilities.shape
    # the layer is fitted on all of dev: its in-sample probabilities equal Platt on the plain logits
    _, _, refit = fit_calibrators((logits - bias) / scale, labels["labels"], "platt")
    np.testing.assert_allclose(stored["probabilities"], refit, atol=1e-4)
    serving = read_json(os.path.join(run_dir, "serving", "serving.json"))
    assert serving["thresholds"] == tune_thresholds(labels["labels"], stored["probabilities"]).tolist()
    # the SavedModel serves the calibrated probabilities and predicts at the thresholds tuned on them
    import tensorflow as tf

    from genre_tf.serve.serving import export_run

    version = export_run(run_dir, str(os.path.join(run_dir, "models")))
    movies = {movie["movie_id"]: movie for movie in prepared.movies()}
    serve = tf.saved_model.load(version).signatures["serving_default"]
    served = serve(plot=tf.constant([movies[i]["plot"] for i in labels["ids"]]),
                   poster=tf.constant([b""] * len(labels["ids"])))
    np.testing.assert_allclose(served["probabilities"].numpy(), probabilities, atol=1e-4)
    np.testing.assert_array_equal(served["predicted"].numpy(), probabilities >= np.asarray(serving["thresholds"]))
    finalise_run(run_dir)  # refitting starts from the plain logits: the same calibrator, not one on top of it
    _, _, again, _ = restore_trained(run_dir)
    np.testing.assert_allclose(again.get_layer(HEAD).get_layer(CALIBRATION).get_weights()[0], scale, rtol=1e-4)
    # a run from before the option (no model.calibration in config.json) loads as none
    path = os.path.join(run_dir, "config.json")
    tree = read_json(path)
    del tree["model"]["calibration"]
    with open(path, "w") as handle:
        json.dump(tree, handle)
    assert load_config(run_dir).model.calibration == "none" and config.model.calibration == "platt"


@pytest.mark.slow
def test_recalibrate_gives_a_finished_run_a_calibrator_on_the_same_network(tiny_config, tmp_path, capsys):
    from genre_tf.data.dataset import make_dataset
    from genre_tf.evaluate.evaluation import evaluate_run
    from genre_tf.nets.models import CALIBRATION, HEAD
    from genre_tf.nets.network import restore_trained
    from genre_tf.run_dir import load_config
    from genre_tf.train.recalibrate import main
    from genre_tf.train.training import train

    plain_dir = train(tiny_config("text_frozen", "epochs=3"))  # the tiny poster model's scores are all tied
    out = str(tmp_path / "text-temperature")
    assert main([plain_dir, "temperature", out]) == 0
    assert load_config(out).model.calibration == "temperature" and load_config(plain_dir).model.calibration == "none"
    _, prepared, plain, caches = restore_trained(plain_dir)
    _, _, calibrated, _ = restore_trained(out)
    scale, bias = calibrated.get_layer(HEAD).get_layer(CALIBRATION).get_weights()
    assert (bias == 0).all() and not np.allclose(scale, 1)
    test = make_dataset(prepared, "test", 64, training=False, input_names=list(plain.input_names), image_size=32,
                        feature_caches=caches)
    p = plain.predict(test, verbose=0).astype(np.float64)
    np.testing.assert_allclose(calibrated.predict(test, verbose=0), sigmoid(scale * np.log(p / (1 - p))), atol=1e-5)
    before, after = evaluate_run(plain_dir), evaluate_run(out)
    for name in ("roc_auc", "pr_auc"):  # a monotone map per genre: the ranking is the network's, up to the ties
        # float32 sigmoids make or break (a tie between 2 of these 25 test movies moves an AUC by about 0.003)
        assert [g[name] for g in after["splits"]["test"]["per_genre"]] == pytest.approx(
            [g[name] for g in before["splits"]["test"]["per_genre"]], abs=0.01)
    assert main([plain_dir, "platt", out]) == 1 and "exists already" in capsys.readouterr().err
