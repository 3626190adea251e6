"""genre_tf's own Keras layers: the per-genre mix of late fusion (genre_tf/train/fusion.py fits it), the per-genre
calibrator (genre_tf/evaluate/calibration.py fits it) and modality dropout."""
import tensorflow as tf
import tf_keras as keras


@keras.utils.register_keras_serializable(package="genre_tf")
class GenreMix(keras.layers.Layer):
    """Per genre, a weighted sum of the text and poster logits plus a bias (a 2-input logistic regression)."""

    def __init__(self, num_genres: int, **kwargs):
        super().__init__(**kwargs)
        self.num_genres = num_genres

    def build(self, input_shape):
        def weight(name, value):
            return self.add_weight(name=name, shape=(self.num_genres,), initializer=keras.initializers.Constant(value))
        # Until fitted: the mean of the two logits.
        self.text_weight = weight("text_weight", 0.5)
        self.poster_weight = weight("poster_weight", 0.5)
        self.bias = weight("bias", 0.0)
        super().build(input_shape)

    def call(self, inputs):
        text_logits, poster_logits = inputs
        return self.text_weight * text_logits + self.poster_weight * poster_logits + self.bias

    def get_config(self):
        return {**super().get_config(), "num_genres": self.num_genres}


@keras.utils.register_keras_serializable(package="genre_tf")
class GenreCalibration(keras.layers.Layer):
    """Per genre, a * logit + b: temperature (b = 0) or Platt scaling, fitted on dev after training, never trained."""

    def __init__(self, num_genres: int, **kwargs):
        super().__init__(**kwargs)
        self.num_genres = num_genres

    def build(self, input_shape):
        # Until fitted: the identity, so training and its checkpoints see plain logits.
        self.scale = self.add_weight(name="scale", shape=(self.num_genres,), trainable=False,
                                     initializer=keras.initializers.Ones())
        self.bias = self.add_weight(name="bias", shape=(self.num_genres,), trainable=False,
                                    initializer=keras.initializers.Zeros())
        super().build(input_shape)

    def call(self, logits):
        return self.scale * logits + self.bias

    def get_config(self):
        return {**super().get_config(), "num_genres": self.num_genres}


@keras.utils.register_keras_serializable(package="genre_tf")
class ModalityDropout(keras.layers.Layer):
    """While training, zero one whole branch of some movies: the poster features of a `rate` fraction, the text
    features of another `rate` fraction (never both of one movie). The identity at inference."""

    def __init__(self, rate: float, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.rate, self.seed = rate, seed

    def call(self, inputs, training=None):
        text, poster = inputs
        if not training or self.rate <= 0:
            return [text, poster]
        draw = tf.random.uniform([tf.shape(text)[0], 1], seed=self.seed)
        keep_text = tf.cast(draw >= self.rate, text.dtype)
        keep_poster = tf.cast((draw < 1 - self.rate), poster.dtype)
        return [text * keep_text, poster * keep_poster]

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}
