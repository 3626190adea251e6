"""A BERT encoder (and MPNet, BERT with a relative position bias) and preprocessor in TF-Hub's BERT format."""
import dataclasses
import math

import tensorflow as tf
import tensorflow_text as tf_text  # noqa: F401  registers the ops a preprocessor needs
import tf_keras as keras

from genre_tf.config import mean_layers


@dataclasses.dataclass(frozen=True)
class BertShape:
    """The dimensions of a BERT encoder (MiniLM-L6: 30522 / 384 / 6 / 12 / 1536).

    MPNet is the same network with no token types, positions counted from 2 and one relative position bias
    shared by every layer (`relative_buckets` > 0).
    """

    vocab_size: int = 30522
    hidden_size: int = 384
    num_layers: int = 6
    num_heads: int = 12
    intermediate_size: int = 1536
    max_positions: int = 512
    type_vocab_size: int = 2          # 0: no token-type embeddings (MPNet)
    layer_norm_epsilon: float = 1e-12
    position_offset: int = 0          # the first token's position id (MPNet: padding index 1 plus one)
    relative_buckets: int = 0         # T5-style relative position buckets (MPNet: 32); 0 = none
    relative_max_distance: int = 128


@keras.utils.register_keras_serializable("genre_tf")
class TransformerBlock(keras.layers.Layer):
    """One post-layer-norm BERT block: self-attention and a GELU feed-forward network."""

    def __init__(self, hidden_size, num_heads, intermediate_size, layer_norm_epsilon=1e-12, **kwargs):
        super().__init__(**kwargs)
        self.hidden_size, self.num_heads = hidden_size, num_heads
        self.intermediate_size, self.layer_norm_epsilon = intermediate_size, layer_norm_epsilon
        self.query, self.key, self.value, self.attention_output = (
            keras.layers.Dense(hidden_size, name=name) for name in ("query", "key", "value", "attention_output"))
        self.attention_norm = keras.layers.LayerNormalization(epsilon=layer_norm_epsilon, name="attention_norm")
        # exact (erf) GELU, BERT's "gelu"
        self.intermediate = keras.layers.Dense(intermediate_size, activation=keras.activations.gelu,
                                               name="intermediate")
        self.output_dense = keras.layers.Dense(hidden_size, name="output")
        self.output_norm = keras.layers.LayerNormalization(epsilon=layer_norm_epsilon, name="output_norm")

    def _heads(self, x):
        batch, length = tf.shape(x)[0], tf.shape(x)[1]
        x = tf.reshape(x, [batch, length, self.num_heads, self.hidden_size // self.num_heads])
        return tf.transpose(x, [0, 2, 1, 3])

    def call(self, hidden, mask, position_bias=None):
        query, key, value = (self._heads(layer(hidden)) for layer in (self.query, self.key, self.value))
        scale = 1.0 / math.sqrt(self.hidden_size // self.num_heads)
        scores = tf.matmul(query, key, transpose_b=True) * scale
        if position_bias is not None:  # [1, heads, length, length]
            scores += tf.cast(position_bias, scores.dtype)
        scores += (1.0 - tf.cast(mask[:, None, None, :], scores.dtype)) * -1e9
        context = tf.matmul(tf.nn.softmax(scores, axis=-1), value)
        context = tf.reshape(tf.transpose(context, [0, 2, 1, 3]), tf.shape(hidden))
        hidden = self.attention_norm(hidden + self.attention_output(context))
        return self.output_norm(hidden + self.output_dense(self.intermediate(hidden)))

    def get_config(self):
        return dict(super().get_config(), hidden_size=self.hidden_size, num_heads=self.num_heads,
                    intermediate_size=self.intermediate_size, layer_norm_epsilon=self.layer_norm_epsilon)


@keras.utils.register_keras_serializable("genre_tf")
class BertEmbeddings(keras.layers.Layer):
    """Word + position (+ token-type, when type_vocab_size > 0) embeddings, layer-normalised."""

    def __init__(self, vocab_size, hidden_size, max_positions, type_vocab_size, layer_norm_epsilon=1e-12,
                 position_offset=0, **kwargs):
        super().__init__(**kwargs)
        self.config_values = dict(vocab_size=vocab_size, hidden_size=hidden_size, max_positions=max_positions,
                                  type_vocab_size=type_vocab_size, layer_norm_epsilon=layer_norm_epsilon,
                                  position_offset=position_offset)
        self.position_offset = position_offset
        self.word = keras.layers.Embedding(vocab_size, hidden_size, name="word_embeddings")
        self.position = keras.layers.Embedding(max_positions, hidden_size, name="position_embeddings")
        self.token_type = (keras.layers.Embedding(type_vocab_size, hidden_size, name="type_embeddings")
                           if type_vocab_size else None)
        self.norm = keras.layers.LayerNormalization(epsilon=layer_norm_epsilon, name="embeddings_norm")

    def call(self, word_ids, type_ids):
        positions = tf.range(tf.shape(word_ids)[1])[None, :] + self.position_offset
        embeddings = self.word(word_ids) + self.position(positions)
        if self.token_type is not None:
            embeddings += self.token_type(type_ids)
        return self.norm(embeddings)

    def get_config(self):
        return dict(super().get_config(), **self.config_values)


def relative_position_buckets(length, num_buckets: int = 32, max_distance: int = 128):
    """[length, length] bucket of key position minus query position, as T5 and MPNet bucket it: half the buckets
    for each direction, exact up to a quarter of them, then logarithmic up to max_distance."""
    positions = tf.range(length)
    distance = positions[:, None] - positions[None, :]  # query - key: MPNet's n = -(key - query)
    half = num_buckets // 2
    exact = half // 2
    bucket = tf.cast(distance < 0, tf.int32) * half
    distance = tf.abs(distance)
    scaled = tf.math.log(tf.cast(tf.maximum(distance, 1), tf.float32) / exact) / math.log(max_distance / exact)
    large = tf.minimum(exact + tf.cast(scaled * (half - exact), tf.int32), half - 1)
    return bucket + tf.where(distance < exact, distance, large)


@keras.utils.register_keras_serializable("genre_tf")
class RelativePositionBias(keras.layers.Layer):
    """MPNet's attention bias: one learnt value per head and relative-position bucket, [1, heads, length, length]."""

    def __init__(self, num_buckets, num_heads, max_distance=128, **kwargs):
        super().__init__(**kwargs)
        self.num_buckets, self.num_heads, self.max_distance = num_buckets, num_heads, max_distance
        self.bias = keras.layers.Embedding(num_buckets, num_heads, name="relative_attention_bias")

    def call(self, word_ids):
        buckets = relative_position_buckets(tf.shape(word_ids)[1], self.num_buckets, self.max_distance)
        return tf.transpose(self.bias(buckets), [2, 0, 1])[None]

    def get_config(self):
        return dict(super().get_config(), num_buckets=self.num_buckets, num_heads=self.num_heads,
                    max_distance=self.max_distance)


STATES_CUT = "states_cut"  # the layer that rounds the hidden states below fine-tuned top layers to float16


def round_to_float16(hidden):
    """Hidden states as a float16 cache stores them (and back to their dtype): the top layers see the same values in
    training, from the cache, and in serving, from the bottom layers."""
    return tf.cast(tf.cast(hidden, tf.float16), hidden.dtype)


def build_bert_encoder(shape: BertShape = BertShape(), name: str = "bert_encoder",
                       cut: int | None = None) -> keras.Model:
    """A BERT (or MPNet) encoder with TF-Hub's interface: a dict of int32 ids in, pooled/sequence outputs out.

    `cut` rounds the hidden states after that many layers (0: the embeddings) to float16 (layer `states_cut`), as
    text.fine_tune_layers caches them: the layers above are trained on the rounded states, and serve on them.
    """
    inputs = {key: keras.Input(shape=(None,), dtype=tf.int32, name=key)
              for key in ("input_word_ids", "input_mask", "input_type_ids")}
    hidden = BertEmbeddings(shape.vocab_size, shape.hidden_size, shape.max_positions, shape.type_vocab_size,
                            shape.layer_norm_epsilon, shape.position_offset, name="embeddings")(
        inputs["input_word_ids"], inputs["input_type_ids"])
    position_bias = None
    if shape.relative_buckets:
        position_bias = RelativePositionBias(shape.relative_buckets, shape.num_heads, shape.relative_max_distance,
                                             name="relative_position_bias")(inputs["input_word_ids"])
    if cut == 0:
        hidden = keras.layers.Lambda(round_to_float16, name=STATES_CUT)(hidden)
    encoder_outputs = []
    for index in range(shape.num_layers):
        hidden = TransformerBlock(shape.hidden_size, shape.num_heads, shape.intermediate_size,
                                  shape.layer_norm_epsilon, name=f"transformer_{index}")(
            hidden, inputs["input_mask"], position_bias)
        if index + 1 == cut:
            hidden = keras.layers.Lambda(round_to_float16, name=STATES_CUT)(hidden)
        encoder_outputs.append(hidden)
    first_token = keras.layers.Lambda(lambda x: x[:, 0, :], name="first_token")(hidden)
    pooled = keras.layers.Dense(shape.hidden_size, activation="tanh", name="pooler")(first_token)
    outputs = {"pooled_output": pooled, "sequence_output": hidden, "default": pooled,
               "encoder_outputs": encoder_outputs}
    return keras.Model(inputs, outputs, name=name)


def states_model(encoder: keras.Model) -> keras.Model:
    """The layers of an encoder built with `cut` below the cut: token ids in, the rounded hidden states out."""
    return keras.Model(encoder.input, encoder.get_layer(STATES_CUT).output, name="bottom_layers")


def top_layers(encoder: keras.Model, layers: int, pooling: str, states_name: str, mask_name: str) -> keras.Model:
    """The top `layers` blocks of an encoder (the same layer objects: training them trains the encoder's) and the
    pooling, as a model from the hidden states below them and their mask to the plot vector. MPNet's relative
    position bias, shared by every layer, stays frozen."""
    width = encoder.output["sequence_output"].shape[-1]
    states = keras.Input(shape=(None, width), name=states_name)
    mask = keras.Input(shape=(None,), dtype=tf.int32, name=mask_name)
    blocks = [layer for layer in encoder.layers if isinstance(layer, TransformerBlock)]
    position_bias = None
    if any(isinstance(layer, RelativePositionBias) for layer in encoder.layers):
        bias = encoder.get_layer("relative_position_bias")
        bias.trainable = False
        position_bias = bias(mask)  # it reads the length alone
    hiddens = [states]
    for block in blocks[len(blocks) - layers:]:
        hiddens.append(block(hiddens[-1], mask, position_bias))
    if pooling == "pooled":
        first = keras.layers.Lambda(lambda x: x[:, 0, :], name="first_token")(hiddens[-1])
        vector = encoder.get_layer("pooler")(first)
    elif mean_layers(pooling) == 1:
        vector = MaskedMean(name="masked_mean")(hiddens[-1], mask)
    else:  # mean_last_N: as pooled_vector averages the encoder's last N outputs (the states are layer 12 - k's)
        vector = keras.layers.Average(name="mean_of_layers")(
            [MaskedMean(name=f"masked_mean_{index}")(hidden, mask)
             for index, hidden in enumerate(hiddens[-mean_layers(pooling):])])
    return keras.Model({states_name: states, mask_name: mask}, vector, name="text_top")


@keras.utils.register_keras_serializable("genre_tf")
class MaskedMean(keras.layers.Layer):
    """The mean of the hidden states over the real tokens (mask 1), summed in float32."""

    def call(self, hidden, mask):
        return masked_mean(hidden, mask)


def masked_mean(hidden, mask):
    """The mean of hidden states [batch, tokens, width] over the tokens whose mask is 1, summed in float32 (a bfloat16
    encoder's 8-bit mantissa would lose most of a 128-token sum)."""
    mask = tf.cast(mask, tf.float32)[:, :, None]
    return tf.reduce_sum(tf.cast(hidden, tf.float32) * mask, axis=1) / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)


@dataclasses.dataclass(frozen=True)
class SpecialTokens:
    """The tokens a preprocessor wraps a text in and pads with (BERT's; MPNet: <s>, </s>, <pad>)."""

    first: str = "[CLS]"
    last: str = "[SEP]"
    padding: str = "[PAD]"


BERT_TOKENS = SpecialTokens()
MPNET_TOKENS = SpecialTokens("<s>", "</s>", "<pad>")


class BertPreprocessor(tf.Module):
    """TF-Hub's BERT preprocessor interface: strings in, input_word_ids/mask/type_ids out."""

    def __init__(self, vocab_path: str, seq_length: int = 128, lower_case: bool = True,
                 special: SpecialTokens = BERT_TOKENS):
        super().__init__(name="bert_preprocessor")
        self.vocab_file = tf.saved_model.Asset(vocab_path)
        with open(vocab_path, encoding="utf-8") as handle:
            vocab = [line.rstrip("\n") for line in handle]
        self.cls_id, self.sep_id = vocab.index(special.first), vocab.index(special.last)
        self.pad_id = vocab.index(special.padding)
        self.seq_length = seq_length
        self.table = tf.lookup.StaticVocabularyTable(
            tf.lookup.TextFileInitializer(self.vocab_file, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
                                          tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER), num_oov_buckets=1)
        self.tokenizer = tf_text.BertTokenizer(self.table, token_out_type=tf.int64, lower_case=lower_case,
                                               unknown_token="[UNK]")

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def __call__(self, text):
        tokens = self.tokenizer.tokenize(text).merge_dims(-2, -1)
        tokens = tokens[:, : self.seq_length - 2]
        ids, type_ids = tf_text.combine_segments([tokens], self.cls_id, self.sep_id)
        word_ids, mask = tf_text.pad_model_inputs(ids, self.seq_length, pad_value=self.pad_id)
        type_ids, _ = tf_text.pad_model_inputs(type_ids, self.seq_length)
        return {"input_word_ids": tf.cast(word_ids, tf.int32), "input_mask": tf.cast(mask, tf.int32),
                "input_type_ids": tf.cast(type_ids, tf.int32)}


def save_hub_encoder(encoder: keras.Model, path: str) -> None:
    """Save an encoder as a reusable SavedModel that hub.KerasLayer can fine-tune."""
    tf.saved_model.save(encoder, path)


def save_hub_preprocessor(vocab_path: str, path: str, seq_length: int = 128, lower_case: bool = True,
                          special: SpecialTokens = BERT_TOKENS) -> None:
    """Save a BertPreprocessor for `vocab_path` as a SavedModel that hub.KerasLayer loads."""
    tf.saved_model.save(BertPreprocessor(vocab_path, seq_length, lower_case, special), path)
