"""Losses: the paper's modified macro soft-F1 (equations 3-4), (weighted) binary cross-entropy, their sum, and the
asymmetric loss for multi-label classification (ASL)."""
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras


@keras.utils.register_keras_serializable("genre_tf")
class SoftF1Loss(keras.losses.Loss):
    """1 - 0.5 softF1(positives) - 0.5 softF1(negatives) per genre over the batch, averaged over genres.

    Soft counts use probabilities instead of 0/1 predictions, so the loss is differentiable. It is a
    batch statistic: under a distribution strategy each replica computes it on its own slice.
    """

    def __init__(self, epsilon: float = 1e-16, name: str = "soft_f1", **kwargs):
        kwargs.setdefault("reduction", keras.losses.Reduction.SUM_OVER_BATCH_SIZE)
        super().__init__(name=name, **kwargs)
        self.epsilon = epsilon

    def call(self, y_true, y_pred):
        y_true = tf.cast(y_true, tf.float32)
        y_pred = tf.cast(y_pred, tf.float32)  # float32 even under mixed precision
        true_positive = tf.reduce_sum(y_pred * y_true, axis=0)
        false_positive = tf.reduce_sum(y_pred * (1 - y_true), axis=0)
        false_negative = tf.reduce_sum((1 - y_pred) * y_true, axis=0)
        true_negative = tf.reduce_sum((1 - y_pred) * (1 - y_true), axis=0)
        f1_positive = 2 * true_positive / (2 * true_positive + false_negative + false_positive + self.epsilon)
        f1_negative = 2 * true_negative / (2 * true_negative + false_negative + false_positive + self.epsilon)
        per_genre = 1 - 0.5 * f1_positive - 0.5 * f1_negative
        # Keras reduces the returned vector by its mean; one value per genre gives equation 4 exactly.
        return per_genre

    def get_config(self):
        return dict(super().get_config(), epsilon=self.epsilon)


@keras.utils.register_keras_serializable("genre_tf")
class WeightedBinaryCrossentropy(keras.losses.Loss):
    """Binary cross-entropy with each genre's positives weighted (e.g. by inverse frequency, as MMBT)."""

    def __init__(self, positive_weights: Sequence[float] | None = None, name: str = "weighted_bce", **kwargs):
        super().__init__(name=name, **kwargs)
        self.positive_weights = None if positive_weights is None else [float(w) for w in positive_weights]

    def call(self, y_true, y_pred):
        y_true = tf.cast(y_true, tf.float32)
        y_pred = tf.clip_by_value(tf.cast(y_pred, tf.float32), 1e-7, 1 - 1e-7)
        weights = 1.0 if self.positive_weights is None else tf.constant(self.positive_weights)
        loss = -(weights * y_true * tf.math.log(y_pred) + (1 - y_true) * tf.math.log(1 - y_pred))
        return tf.reduce_mean(loss, axis=-1)

    def get_config(self):
        return dict(super().get_config(), positive_weights=self.positive_weights)


@keras.utils.register_keras_serializable("genre_tf")
class SoftF1PlusCrossentropy(keras.losses.Loss):
    """Soft-F1 plus binary cross-entropy: soft-F1 decides at a threshold, cross-entropy keeps scores ranked and
    probability-like."""

    def __init__(self, name: str = "soft_f1_bce", **kwargs):
        super().__init__(name=name, **kwargs)
        self.soft_f1, self.crossentropy = SoftF1Loss(), WeightedBinaryCrossentropy(None)

    def call(self, y_true, y_pred):
        # soft-F1 is a batch statistic (one value per genre); add it to every movie's cross-entropy
        return self.crossentropy.call(y_true, y_pred) + tf.reduce_mean(self.soft_f1.call(y_true, y_pred))


@keras.utils.register_keras_serializable("genre_tf")
class AsymmetricLoss(keras.losses.Loss):
    """ASL (Ridnik et al., ICCV 2021): cross-entropy whose easy negatives are down-weighted by p**gamma_negative
    after shifting their probability down by `clip`, so the many absent genres do not drown the few present."""

    def __init__(self, gamma_positive: float = 0.0, gamma_negative: float = 4.0, clip: float = 0.05,
                 name: str = "asl", **kwargs):
        super().__init__(name=name, **kwargs)
        self.gamma_positive, self.gamma_negative, self.clip = gamma_positive, gamma_negative, clip

    def call(self, y_true, y_pred):
        y_true = tf.cast(y_true, tf.float32)
        p = tf.clip_by_value(tf.cast(y_pred, tf.float32), 1e-7, 1 - 1e-7)
        shifted = tf.maximum(p - self.clip, 0.0)
        positive = y_true * (1 - p) ** self.gamma_positive * tf.math.log(p)
        negative = (1 - y_true) * shifted ** self.gamma_negative * tf.math.log(1 - shifted + 1e-7)
        return -tf.reduce_mean(positive + negative, axis=-1)

    def get_config(self):
        return dict(super().get_config(), gamma_positive=self.gamma_positive, gamma_negative=self.gamma_negative,
                    clip=self.clip)


def inverse_frequency_weights(labels) -> list:
    """Per-genre positive weights (negatives / positives), clipped to [1, 100]."""
    positives = np.maximum(labels.sum(axis=0), 1.0)
    return np.clip((len(labels) - positives) / positives, 1.0, 100.0).tolist()
