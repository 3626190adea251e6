"""FLOP counts against hand counts: tiny CNN, tiny BERT, the real heads and ResNet50's published figure."""
import dataclasses

import genre_tf  # noqa: F401  selects tf-keras
import pytest
import tf_keras as keras

from genre_tf.bench.flops import Flops, model_flops
from genre_tf.config import ModelConfig
from genre_tf.nets.bert import BertShape, build_bert_encoder
from genre_tf.nets.models import build_model


def test_tiny_cnn_matches_a_hand_count():
    pixels = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(pixels)                  # 8x8x4 outputs
    x = keras.layers.DepthwiseConv2D(3, strides=2, padding="same", name="depthwise")(x)  # 4x4x4
    x = keras.layers.Conv2D(6, 1, groups=2, name="grouped")(x)                          # 4x4x6, 2 inputs each
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(5, name="dense")(x)
    model = keras.Model(pixels, outputs)
    for name in ("conv", "depthwise", "grouped"):
        model.get_layer(name).trainable = False
    conv, depthwise, grouped, dense = 2 * 3 * 3 * 3 * 4 * 64, 2 * 3 * 3 * 4 * 16, 2 * 2 * 6 * 16, 2 * 6 * 5
    flops = model_flops(model)
    assert flops == Flops(conv + depthwise + grouped + dense, dense)
    assert flops.train_step == conv + depthwise + grouped + 3 * dense


def test_tiny_bert_matches_a_hand_count():
    shape = BertShape(vocab_size=50, hidden_size=8, num_layers=2, num_heads=2, intermediate_size=16,
                      max_positions=16)
    tokens = 6
    projections = 2 * tokens * (4 * 8 * 8 + 2 * 8 * 16)  # query, key, value, output; two feed-forward layers
    attention = 2 * (2 * tokens * tokens * 8)            # scores and the weighted sum
    pooler = 2 * 8 * 8                                   # applied at [CLS] only
    expected = shape.num_layers * (projections + attention) + pooler
    assert model_flops(build_bert_encoder(shape), seq_length=tokens) == Flops(expected, expected)
    # Attention grows with the square of the length, the projections linearly.
    doubled = shape.num_layers * (2 * projections + 4 * attention) + pooler
    assert model_flops(build_bert_encoder(shape), seq_length=2 * tokens).forward == doubled


def test_integrated_head_over_cached_features():
    config = ModelConfig(kind="integrated", text_units=(16, 32), fusion_units=8, fine_tune_text=False,
                         fusion="concat")
    model = build_model(config, num_genres=3, text_dim=12, poster_dim=20)
    expected = 2 * (12 * 16 + 16 * 32 + (32 + 20) * 8 + 8 * 3)  # the LayerNorms and dropouts add no matmul
    assert model_flops(model) == Flops(expected, expected)
    # late fusion: each branch's own logits; the per-genre mix is elementwise, no matmul
    late = build_model(dataclasses.replace(config, fusion="late"), num_genres=3, text_dim=12, poster_dim=20)
    expected = 2 * (12 * 16 + 16 * 32 + 32 * 3 + 20 * 3)
    assert model_flops(late) == Flops(expected, expected)


def test_resnet50_matches_its_papers_count():
    """He et al. (2016), Table 1: ResNet-50 is 3.8 x 10^9 multiply-adds at 224 px (without its 1000-way top)."""
    network = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(224, 224, 3))
    network.trainable = False
    flops = model_flops(network)
    assert flops.forward / 2 == pytest.approx(3.8e9, rel=0.02)
    assert flops.trained_forward == 0 and flops.train_step == flops.forward


def test_unknown_spatial_size_is_refused():
    pixels = keras.Input((None, None, 3))
    model = keras.Model(pixels, keras.layers.Conv2D(2, 3)(pixels))
    with pytest.raises(ValueError, match="a dimension is unknown"):
        model_flops(model)


def test_a_nested_model_called_twice_counts_twice():
    """Flip averaging runs the poster backbone on the poster and on its mirror: both calls cost."""
    import tf_keras as keras

    inner_input = keras.Input((4,))
    inner = keras.Model(inner_input, keras.layers.Dense(5, name="dense")(inner_input), name="inner")
    x = keras.Input((4,))
    once = keras.Model(x, inner(x))
    twice = keras.Model(x, keras.layers.Average()([inner(x), inner(x * 2.0)]))
    assert model_flops(once).forward == 2 * 4 * 5
    assert model_flops(twice).forward == 2 * model_flops(once).forward
