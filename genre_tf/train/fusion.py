"""Late fusion: the integrated model as a trained text branch and a trained poster branch, mixed per genre on dev.

Training the two branches jointly lets the head lean on the text branch: on the training movies the (fine-tuned)
text branch is nearly always right, so the poster barely moves the loss. Here each branch is trained alone
(a text_finetuned or text_frozen run, and a poster run), and a per-genre logistic regression over their two
logits, `mix_g = a_g * text_logit_g + b_g * poster_logit_g + c_g`, is fitted on dev, movies neither branch saw.
Its dev probabilities for threshold tuning are out-of-fold (each dev movie scored by a mix fitted without it),
so dev stays honest; test is never looked at.

The result is one Keras model with the integrated model's named inputs: the text branch (encoder inside when
fine-tuned), the poster branch, the `GenreMix` layer (genre_tf/nets/layers.py) inside its genre_head, and the
sigmoid. It is saved as the run's best checkpoint and served like any other.
"""

import numpy as np
import tf_keras as keras

from genre_tf.nets.models import CALIBRATION, HEAD, TEXT_TOP
from genre_tf.nets.network import make_predictor

FOLDS = 5
LOGIT_CLIP = 1e-6


def to_logits(probabilities: np.ndarray) -> np.ndarray:
    """The logits of probabilities, clipped so that a saturated sigmoid stays finite."""
    p = np.clip(np.asarray(probabilities, np.float64), LOGIT_CLIP, 1 - LOGIT_CLIP)
    return np.log(p / (1 - p))


def fit_mix(text_logits: np.ndarray, poster_logits: np.ndarray, labels: np.ndarray,
            seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-genre logistic regressions over (text logit, poster logit) on dev.

    Returns (weights [3, genres]: text weight, poster weight, bias; out-of-fold dev probabilities). A genre with
    too few dev positives for cross-fitting keeps the text branch alone (weights 1, 0, 0).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    weights = np.tile(np.array([[1.0], [0.0], [0.0]]), (1, labels.shape[1]))
    out_of_fold = 1 / (1 + np.exp(-text_logits))
    for genre in range(labels.shape[1]):
        column = labels[:, genre]
        folds = min(FOLDS, int(column.sum()), int(len(column) - column.sum()))
        if folds < 2:
            continue
        inputs = np.stack([text_logits[:, genre], poster_logits[:, genre]], axis=1)
        mix = LogisticRegression()
        split = StratifiedKFold(folds, shuffle=True, random_state=seed)
        out_of_fold[:, genre] = cross_val_predict(mix, inputs, column, cv=split, method="predict_proba")[:, 1]
        mix.fit(inputs, column)
        weights[:, genre] = [*mix.coef_[0], mix.intercept_[0]]
    return weights, out_of_fold


def branch_logits(model: keras.Model, dataset) -> np.ndarray:
    """A trained single-branch model's pre-sigmoid outputs (its genre_head's logits) over a dataset."""
    logits = make_predictor(keras.Model(model.inputs, model.get_layer("probabilities").input))(dataset)
    head = model.get_layer(HEAD)
    if CALIBRATION in {layer.name for layer in head.layers}:  # the mix is fitted on the plain logits it will see
        scale, bias = head.get_layer(CALIBRATION).get_weights()
        logits = (logits - bias) / scale
    return logits.astype(np.float64)


def copy_branch_weights(target: keras.Model, text_model: keras.Model, poster_model: keras.Model) -> None:
    """The text branch's head layers (text_dense_*, genre_logits) and the poster branch's genre_logits (as
    poster_logits) into the target's genre_head, and any encoder trained inside a branch into the target."""
    head, text_head, poster_head = (model.get_layer(HEAD) for model in (target, text_model, poster_model))
    for layer in head.layers:
        if layer.weights and layer.name not in ("poster_logits", "fusion_mix", CALIBRATION):
            layer.set_weights(text_head.get_layer(layer.name).get_weights())
    head.get_layer("poster_logits").set_weights(poster_head.get_layer("genre_logits").get_weights())
    for name, source in (("text_encoder", text_model), (TEXT_TOP, text_model), ("poster_encoder", poster_model)):
        if name in {layer.name for layer in target.layers} and name in {layer.name for layer in source.layers}:
            target.get_layer(name).set_weights(source.get_layer(name).get_weights())
