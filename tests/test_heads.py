"""The genre head's options: an ensemble of heads trained alone inside one model, and modality dropout."""
import numpy as np
import pytest
import tensorflow as tf

import genre_tf  # noqa: F401
import tf_keras as keras
from genre_tf.config import ModelConfig
from genre_tf.data.dataset import PLOT_EMBEDDING, POSTER_FEATURES
from genre_tf.nets.layers import ModalityDropout
from genre_tf.nets.models import HEAD, HeadEnsemble, build_model
from genre_tf.train.losses import SoftF1Loss


def tiny(heads: int, **options) -> keras.Model:
    keras.utils.set_random_seed(0)
    config = ModelConfig(**{"kind": "integrated", "fusion": "concat", "heads": heads, "dropout": 0.0, "l2": 0.0,
                            "text_units": (8,), "fusion_units": 8, **options})
    return build_model(config, num_genres=3, text_dim=6, poster_dim=5)


def batch(movies=16, seed=0):
    rng = np.random.default_rng(seed)
    x = {PLOT_EMBEDDING: rng.normal(size=(movies, 6)).astype("float32"),
         POSTER_FEATURES: rng.normal(size=(movies, 5)).astype("float32")}
    return x, (rng.random((movies, 3)) < 0.4).astype("float32")


def test_the_ensemble_predicts_the_mean_of_its_heads_probabilities():
    model = tiny(3)
    assert isinstance(model, HeadEnsemble)
    x, _ = batch()
    members = [layer for layer in model.get_layer(HEAD).layers if layer.name.startswith(f"{HEAD}_")]
    assert [m.name for m in members] == ["genre_head_0", "genre_head_1", "genre_head_2"]
    probabilities = [tf.sigmoid(m(x)).numpy() for m in members]
    assert min(np.abs(probabilities[0] - p).max() for p in probabilities[1:]) > 1e-3  # initialised apart
    np.testing.assert_allclose(model(x).numpy(), np.mean(probabilities, axis=0), atol=1e-6)
    # serving applies a sigmoid to the genre head: that gives the same mean
    np.testing.assert_allclose(tf.sigmoid(model.get_layer(HEAD)(x)).numpy(), np.mean(probabilities, axis=0),
                               atol=1e-6)


@pytest.mark.parametrize("l2", [0.0, 0.01])
def test_each_head_learns_from_its_own_loss_only(l2):
    """One SGD step moves head 0 by minus the gradient of head 0's own soft-F1 and L2 terms, as if it were trained
    alone, and not by the gradient of the mean's loss."""
    model = tiny(2, l2=l2)
    model.compile(keras.optimizers.SGD(1.0), SoftF1Loss())
    x, y = batch()
    head = model.get_layer(HEAD).get_layer("genre_head_0")
    before = [w.numpy() for w in head.trainable_weights]
    with tf.GradientTape() as tape:
        own = SoftF1Loss()(y, tf.sigmoid(head(x))) + tf.add_n(head.losses or [0.0])
    own_gradients = tape.gradient(own, head.trainable_weights)
    with tf.GradientTape() as tape:
        mean = SoftF1Loss()(y, model(x))
    mean_gradients = tape.gradient(mean, head.trainable_weights)
    model.train_on_batch(x, y)
    for old, weight, gradient in zip(before, head.trainable_weights, own_gradients, strict=True):
        np.testing.assert_allclose(weight.numpy(), old - gradient.numpy(), atol=1e-6)
    assert max(np.abs(g.numpy() - o.numpy()).max() for g, o in zip(own_gradients, mean_gradients,
                                                                   strict=True)) > 1e-4


@pytest.mark.slow  # 5 s of training: the fast tier stays under 2 minutes
def test_an_ensemble_fits_a_toy_problem_and_round_trips_its_weights(tmp_path):
    model = tiny(3)
    model.compile(keras.optimizers.Adam(0.01), SoftF1Loss())
    x, _ = batch(256)
    y = np.stack([x[PLOT_EMBEDDING][:, 0] > 0, x[POSTER_FEATURES][:, 1] > 0, x[PLOT_EMBEDDING][:, 2] > 0.5],
                 axis=1).astype("float32")
    losses = model.fit(x, y, batch_size=64, epochs=20, verbose=0).history["loss"]
    assert losses[-1] < 0.6 * losses[0]
    model.save_weights(str(tmp_path / "weights"))
    restored = tiny(3)
    restored.load_weights(str(tmp_path / "weights"))
    np.testing.assert_allclose(restored(x).numpy(), model(x).numpy(), atol=1e-6)


def test_modality_dropout_blanks_one_branch_of_some_movies_and_only_while_training():
    layer = ModalityDropout(0.25, seed=1)
    text, poster = tf.ones([4000, 3]), tf.ones([4000, 2])
    same = layer([text, poster], training=False)
    assert all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(same, (text, poster), strict=True))
    kept_text, kept_poster = (part.numpy()[:, 0] > 0 for part in layer([text, poster], training=True))
    assert abs((~kept_text).mean() - 0.25) < 0.03 and abs((~kept_poster).mean() - 0.25) < 0.03
    assert (kept_text | kept_poster).all()  # never both branches of one movie
    model = tiny(1, modality_dropout=0.25)
    assert "modality_dropout" in [layer.name for layer in model.get_layer(HEAD).layers]


@pytest.mark.parametrize("options, message", [({"heads": 0}, "model.heads must be 1 to 16"),
                                              ({"heads": 2, "kind": "most_common"}, "needs a trained head"),
                                              ({"modality_dropout": 0.5}, "modality_dropout must be in")])
def test_head_options_are_checked(options, message):
    from genre_tf.config import load_config

    with pytest.raises(ValueError, match=message):
        load_config(overrides=[f"model.{key}={value}" for key, value in options.items()])


def test_the_projector_places_an_ensemble_by_its_heads_hidden_layers_side_by_side():
    from genre_tf.evaluate.projector import hidden_model

    model = tiny(2)
    x, _ = batch()
    members = [model.get_layer(HEAD).get_layer(f"{HEAD}_{index}") for index in range(2)]
    expected = [keras.Model(m.inputs, m.get_layer("genre_logits").input)(x).numpy() for m in members]
    np.testing.assert_allclose(hidden_model(model)(x).numpy(), np.concatenate(expected, axis=1), atol=1e-6)
    single = tiny(1)
    head = single.get_layer(HEAD)
    np.testing.assert_allclose(hidden_model(single)(x).numpy(),
                               keras.Model(head.inputs, head.get_layer("genre_logits").input)(x).numpy(), atol=1e-6)
