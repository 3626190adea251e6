"""Late fusion: the per-genre mix finds the informative branch, is honest on dev, and is the served model."""
import os

import numpy as np
import pytest

import genre_tf  # noqa: F401
from genre_tf.nets.layers import GenreMix
from genre_tf.run_dir import OUT_OF_FOLD
from genre_tf.train.fusion import fit_mix, to_logits


def complementary_logits(movies=400, seed=0):
    """Genre 0 is seen only by the text branch, genre 1 only by the poster branch; genre 2 by both, weakly."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((movies, 3)) < 0.3).astype(int)
    noise = rng.normal(size=(2, movies, 3))
    signal = 2.0 * (2 * labels - 1)
    text = noise[0] + signal * np.array([1.0, 0.0, 0.5])
    poster = noise[1] + signal * np.array([0.0, 1.0, 0.5])
    return labels, text, poster


def test_the_mix_weights_each_genre_by_the_branch_that_sees_it():
    from sklearn.metrics import average_precision_score

    labels, text, poster = complementary_logits()
    weights, out_of_fold = fit_mix(text, poster, labels)
    assert weights[0, 0] > 1.0 and abs(weights[1, 0]) < 0.3      # genre 0: text
    assert weights[1, 1] > 1.0 and abs(weights[0, 1]) < 0.3      # genre 1: poster
    assert weights[0, 2] > 0.4 and weights[1, 2] > 0.4           # genre 2: both
    ap = {name: average_precision_score(labels[:, 2], scores[:, 2]) for name, scores in
          (("text", text), ("poster", poster), ("mix", out_of_fold))}
    assert ap["mix"] > max(ap["text"], ap["poster"]) + 0.03      # two weak views beat either alone
    # out of fold: each movie's probability comes from a mix fitted without it, so it differs from in-sample
    in_sample = 1 / (1 + np.exp(-(weights[0] * text + weights[1] * poster + weights[2])))
    assert not np.allclose(in_sample, out_of_fold) and np.abs(in_sample - out_of_fold).max() < 0.2


def test_a_genre_too_rare_on_dev_keeps_the_text_branch():
    labels, text, poster = complementary_logits(movies=50)
    labels[:, 1] = 0
    labels[0, 1] = 1                          # one positive: no two folds can both hold one
    weights, out_of_fold = fit_mix(text, poster, labels)
    assert weights[:, 1].tolist() == [1.0, 0.0, 0.0]
    np.testing.assert_allclose(out_of_fold[:, 1], 1 / (1 + np.exp(-text[:, 1])))
    assert np.isfinite(to_logits(np.array([0.0, 1.0]))).all()


def test_genre_mix_layer_round_trips_its_config_and_weights(tmp_path):
    import tf_keras as keras

    text, poster = keras.Input((3,), name="t"), keras.Input((3,), name="p")
    model = keras.Model([text, poster], GenreMix(3, name="fusion_mix")([text, poster]))
    model.get_layer("fusion_mix").set_weights([np.array([1.0, 0.0, 2.0]), np.array([0.0, 1.0, 1.0]),
                                               np.array([0.5, 0.0, -1.0])])
    inputs = [np.array([[1.0, 2.0, 3.0]]), np.array([[4.0, 5.0, 6.0]])]
    np.testing.assert_allclose(model.predict(inputs, verbose=0), [[1.5, 5.0, 11.0]])
    model.save(str(tmp_path / "mix.keras"))
    again = keras.models.load_model(str(tmp_path / "mix.keras"))
    np.testing.assert_allclose(again.predict(inputs, verbose=0), [[1.5, 5.0, 11.0]])
    assert again.get_layer("fusion_mix").get_config()["num_genres"] == 3


def test_the_integrated_run_is_its_branches_mixed_and_tunes_on_out_of_fold_dev(tiny_config):
    from genre_tf.data.dataset import make_dataset, split_labels
    from genre_tf.evaluate.metrics import tune_thresholds
    from genre_tf.files import read_json
    from genre_tf.nets.network import restore_trained
    from genre_tf.train.fusion import branch_logits
    from genre_tf.train.training import train

    run_dir = train(tiny_config("integrated", "model.fusion=late", "epochs=3"))
    branches = {kind: os.path.join(run_dir, "branches", kind) for kind in ("text_frozen", "poster")}
    assert all(os.path.exists(os.path.join(b, "final.json")) for b in branches.values())
    _, prepared, model, caches = restore_trained(run_dir)
    weights = [w.numpy() for w in model.get_layer("genre_head").get_layer("fusion_mix").weights]

    def test_logits(branch_dir):
        _, _, branch, branch_caches = restore_trained(branch_dir)
        dev = make_dataset(prepared, "test", 64, training=False, input_names=list(branch.input_names),
                           image_size=32, feature_caches=branch_caches)
        return branch_logits(branch, dev)

    text, poster = test_logits(branches["text_frozen"]), test_logits(branches["poster"])
    test = make_dataset(prepared, "test", 64, training=False, input_names=list(model.input_names), image_size=32,
                        feature_caches=caches)
    mixed = model.predict(test, verbose=0)
    expected = 1 / (1 + np.exp(-(weights[0] * text + weights[1] * poster + weights[2])))
    np.testing.assert_allclose(mixed, expected, atol=1e-5)
    # the served thresholds are tuned on the out-of-fold dev probabilities, not on the in-sample ones
    stored = np.load(os.path.join(run_dir, OUT_OF_FOLD))
    dev_labels = split_labels(prepared, "dev")
    assert stored["ids"].tolist() == dev_labels["ids"]
    serving = read_json(os.path.join(run_dir, "serving", "serving.json"))
    assert serving["thresholds"] == tune_thresholds(dev_labels["labels"], stored["probabilities"]).tolist()
    # a branch run from elsewhere is reused, not retrained; one of another kind is refused
    reused = train(tiny_config("integrated", "model.fusion=late", "epochs=3", "seed=1", f"run_dir={run_dir}-2",
                               f"model.text_run={branches['text_frozen']}", f"model.poster_run={branches['poster']}"))
    assert not os.path.exists(os.path.join(reused, "branches"))
    with pytest.raises(ValueError, match="is a poster run"):
        train(tiny_config("integrated", "model.fusion=late", "seed=2", f"run_dir={run_dir}-3",
                          f"model.text_run={branches['poster']}", f"model.poster_run={branches['poster']}"))
