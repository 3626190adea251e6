"""text.fine_tune_layers: the encoder cut into cached bottom states and trained top layers, stored, trained, served."""
import dataclasses
import os
import re

import numpy as np
import pytest
import tensorflow as tf

import genre_tf  # noqa: F401
from genre_tf.config import load_config, training_length
from genre_tf.data import states as stored
from genre_tf.data.dataset import PLOT_MASK, PLOT_STATES, load_prepared, make_dataset, raw_examples
from genre_tf.nets.bert import BertShape, build_bert_encoder, states_model, top_layers
from genre_tf.nets.encoders import pooled_vector

WIDTH = 6


def random_ids(lengths, width=24, vocab=50, seed=0):
    """Right-padded token ids of the given lengths, as a preprocessor packs them."""
    rng = np.random.default_rng(seed)
    mask = (np.arange(width)[None, :] < np.asarray(lengths)[:, None]).astype(np.int32)
    words = rng.integers(3, vocab, size=mask.shape).astype(np.int32) * mask
    return {"input_word_ids": tf.constant(words), "input_mask": tf.constant(mask),
            "input_type_ids": tf.zeros_like(tf.constant(mask))}


# BERT (MiniLM) and MPNet's shared relative position bias, each with a pooling; mean_last_3 averages the cut states too
@pytest.mark.parametrize("relative_buckets, pooling", [(0, "pooled"), (8, "mean"), (8, "mean_last_3"),
                                                      (0, "mean_last_2")])
def test_the_top_layers_over_the_cut_states_are_the_whole_encoder(relative_buckets, pooling):
    shape = BertShape(vocab_size=50, hidden_size=16, num_layers=3, num_heads=2, intermediate_size=32,
                      max_positions=40, type_vocab_size=0 if relative_buckets else 2, relative_buckets=relative_buckets)
    tf.keras.utils.set_random_seed(1)
    encoder = build_bert_encoder(shape, cut=1)
    ids = random_ids([5, 24, 1, 13])
    outputs = encoder(ids)
    mask = ids["input_mask"].numpy()
    def mean(hidden):
        return (hidden.numpy() * mask[:, :, None]).sum(1) / mask.sum(1, keepdims=True)

    layers = [mean(hidden) for hidden in outputs["encoder_outputs"]]  # the cut (rounded) states' layer first
    expected = {"pooled": outputs["pooled_output"].numpy(), "mean": layers[-1],
                "mean_last_2": np.mean(layers[-2:], axis=0), "mean_last_3": np.mean(layers, axis=0)}[pooling]
    assert not np.allclose(expected, layers[-1], atol=1e-3) or pooling == "mean"
    assert not np.allclose(np.mean(layers[-2:], axis=0), np.mean(layers, axis=0), atol=1e-3)  # 2 and 3 differ
    # the served path (pooled_vector over the whole encoder) pools as the trained top does
    np.testing.assert_allclose(pooled_vector(outputs, ids["input_mask"], pooling), expected, atol=1e-5)
    states = states_model(encoder)(ids).numpy()
    assert np.array_equal(states, states.astype(np.float16).astype(np.float32))  # what a float16 store keeps exactly
    top = top_layers(encoder, 2, pooling, PLOT_STATES, PLOT_MASK)
    # each plot alone, trimmed to its own length, as the store gives it: the same vectors as the padded batch
    alone = np.concatenate([top({PLOT_STATES: states[row:row + 1, :length], PLOT_MASK: mask[row:row + 1, :length]})
                            for row, length in enumerate(mask.sum(1))])
    np.testing.assert_allclose(alone, expected, atol=1e-5)
    assert [layer.name for layer in top.layers if layer.trainable_weights] == ["transformer_1", "transformer_2"] + (
        ["pooler"] if pooling == "pooled" else [])  # MPNet's shared bias stays as the layers below learnt it
    assert all(top.get_layer(name) is encoder.get_layer(name) for name in ("transformer_1", "transformer_2"))


class WordStates:
    """A stand-in bottom encoder: plot -> (states [batch, tokens, WIDTH] made from its words, mask)."""

    def __call__(self, plots, training=False):
        words = tf.strings.split(plots)
        lengths = tf.minimum(words.row_lengths(), 20)
        codes = tf.strings.to_hash_bucket_fast(words, 997)[:, :20].to_tensor(shape=[None, 20])
        states = tf.cast(codes, tf.float32)[:, :, None] / 997.0 + tf.range(WIDTH, dtype=tf.float32) / 8.0
        mask = tf.sequence_mask(lengths, 20, dtype=tf.int32)
        return states * tf.cast(mask, tf.float32)[:, :, None], mask


def expected_states(plot: str) -> np.ndarray:
    hidden, mask = WordStates()(tf.constant([plot]))
    return hidden.numpy()[0, :mask.numpy().sum()].astype(np.float16).astype(np.float32)


def test_stored_states_are_read_back_by_content_batch_by_batch_and_a_damaged_part_is_encoded_again(
        small_prepared, monkeypatch, capsys):
    monkeypatch.setattr(stored, "PART_MOVIES", 50)
    written, write = [], stored.write_states_part
    monkeypatch.setattr(stored, "write_states_part", lambda folder, digests, states: (
        written.extend(digests), write(folder, digests, states)))
    prepared = load_prepared(small_prepared)
    plots = {movie["movie_id"]: movie["plot"] for movie in prepared.movies()}
    ids, states = stored.load_or_compute_states(prepared, "word-states", WordStates, batch_size=16)
    assert len(ids) == len(plots) == 120 and states.shape == (120, WIDTH)
    assert len(written) == len(set(plots.values()))  # each plot encoded once
    rows = np.array([3, 100, 7])
    batch, mask = states.batch(rows)
    lengths = [len(expected_states(plots[ids[row]])) for row in rows]
    assert batch.shape == (3, max(lengths), WIDTH) and mask.sum(1).tolist() == lengths
    for index, row in enumerate(rows):
        np.testing.assert_array_equal(batch[index, :lengths[index]], expected_states(plots[ids[row]]))
        assert not batch[index, lengths[index]:].any()  # padding is zeros, masked out

    # the dataset puts each batch's states and mask in place of its movie ids, padded to the batch's longest plot
    dataset = make_dataset(prepared, "dev", 8, training=False, input_names=[PLOT_STATES, PLOT_MASK],
                           feature_caches={PLOT_STATES: (ids, states)})
    inputs, _ = next(iter(dataset))
    first = list(ids).index(prepared.split["dev"][0])
    want, want_mask = states.batch(np.arange(first, first + 8))
    np.testing.assert_array_equal(inputs[PLOT_STATES].numpy(), want)
    np.testing.assert_array_equal(inputs[PLOT_MASK].numpy(), want_mask)

    written.clear()
    stored.load_or_compute_states(prepared, "word-states", lambda: pytest.fail("nothing is missing"))
    parts = stored.part_paths(stored.store_folder(PLOT_STATES, "word-states"))
    assert len(parts) == 2  # a part as soon as 50 plots are pending: batches of 16 make 64 and 56
    with np.load(parts[1][0]) as part:
        damaged = part["digests"].tolist()
    with open(parts[1][1], "r+b") as handle:  # a part cut short by a full disk
        handle.truncate(os.path.getsize(parts[1][1]) // 2)
    again_ids, again = stored.load_or_compute_states(prepared, "word-states", WordStates, batch_size=16)
    assert f"{parts[1][0]} is damaged" in capsys.readouterr().err
    assert sorted(written) == sorted(damaged)  # those plots alone are encoded again
    assert np.array_equal(again_ids, ids)
    for row in range(120):
        np.testing.assert_array_equal(again.batch([row])[0][0], expected_states(plots[ids[row]]))


@pytest.mark.parametrize("options, message", [
    (["text.model=mpnet", "text.fine_tune_layers=13"], "text.fine_tune_layers must be 0 to 12"),
    (["text.model=minilm", "text.fine_tune_layers=7"], "must be 0 to 6 (the layers of text.model=minilm)"),
    (["text.fine_tune_layers=2", "text.encoder=https://tfhub.dev/x", "text.preprocessor=https://tfhub.dev/y"],
     "a TF-Hub text.encoder cannot be cut"),
    (["text.fine_tune_layers=2", "model.kind=text_finetuned"], "train every layer already"),
    (["text.fine_tune_layers=2", "text.precision=bfloat16"], "trains in float32"),
    (["text.fine_tune_layers=2", "mixed_precision=true"], "and mixed_precision=false"),
    (["text.fine_tune_layers=2", "model.kind=text_frozen", "model.heads=3"], "leave model.heads=1"),
    (["text.fine_tune_layers=2", "text.fine_tune_learning_rate=0"], "must be a finite number > 0"),
    (["text.fine_tune_layers=2", "text.fine_tune_epochs=0"], "text.fine_tune_epochs and text.fine_tune_patience"),
    (["text.fine_tune_layers=2", "text.pooling=mean_last_4"], "at most mean_last_3"),
    (["text.model=minilm", "text.pooling=mean_last_7"], "averages more layers than text.model=minilm has"),
    (["text.pooling=mean_last_1"], "text.pooling must be mean, pooled or mean_last_N (N 2 to 99)"),
    (["text.pooling=mean_last_02"], "text.pooling must be mean, pooled or mean_last_N"),
    (["text.pooling=mean_last_٣"], "text.pooling must be mean, pooled or mean_last_N"),
])
def test_fine_tune_layers_refuses_what_it_cannot_train(options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        load_config(overrides=options)


def test_a_run_with_fine_tuned_top_layers_serves_what_evaluate_scores(make_tiny_config, small_prepared, tmp_path):
    """Late fusion over MiniLM with its last layer fine-tuned: the export carries the trained layer (not MiniLM's),
    and the SavedModel gives evaluate's test probabilities."""
    from genre_tf.evaluate.evaluation import predict_split, restore_run
    from genre_tf.nets.minilm import load_minilm_encoder
    from genre_tf.serve.serving import export_run
    from genre_tf.train.training import train

    run_dir = train(make_tiny_config("integrated", "model.fusion=late", "text.encoder=", "text.preprocessor=",
                                     "text.model=minilm", "text.seq_length=64", "text.fine_tune_layers=1",
                                     "text.fine_tune_learning_rate=0.001", "text.fine_tune_epochs=1", "epochs=2",
                                     run_dir=tmp_path / "run"))
    for branch, epochs in (("text_frozen", 1), ("poster", 2)):  # the text branch's length is text.fine_tune_epochs
        with open(os.path.join(run_dir, "branches", branch, "history.csv")) as handle:
            assert len(handle.read().splitlines()) == 1 + epochs
    run = restore_run(run_dir)
    trained = run.model.get_layer("text_top").get_layer("transformer_5").get_weights()
    pretrained = load_minilm_encoder().get_layer("transformer_5").get_weights()
    assert max(np.abs(a - b).max() for a, b in zip(trained, pretrained, strict=True)) > 1e-3
    expected = predict_split(run, "test")["probabilities"]
    serve = tf.saved_model.load(export_run(run_dir, str(tmp_path / "models"))).signatures["serving_default"]
    plots, posters = raw_examples(load_prepared(small_prepared), "test")
    served = serve(plot=tf.constant(plots), poster=tf.constant(posters))["probabilities"].numpy()
    assert np.abs(served - expected).max() < 1e-5
    # one plot at a time: each trimmed to its own length, as the stored states were
    alone = serve(plot=tf.constant(plots[:1]), poster=tf.constant(posters[:1]))["probabilities"].numpy()
    assert np.abs(alone - expected[:1]).max() < 1e-5


def test_the_fine_tune_preset_fine_tunes_the_top_two_layers_of_late_fusions_text_branch():
    config = load_config(os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "fine-tune.yaml"),
                         ["data=somewhere"])
    assert (config.text.fine_tune_layers, config.text.model, config.model.kind, config.model.fusion) == (
        2, "mpnet", "integrated", "late")
    # the measured budgets: the fine-tuned text branch 6 epochs with patience 3, the poster branch 60 and 10
    text_branch = dataclasses.replace(config, model=dataclasses.replace(config.model, kind="text_frozen"))
    poster_branch = dataclasses.replace(config, model=dataclasses.replace(config.model, kind="poster"))
    assert (training_length(text_branch), training_length(poster_branch)) == ((6, 3), (60, 10))


@pytest.mark.parametrize("lie", ["negative length", "overlapping starts", "zero width", "2-d digests", "no digests"])
def test_a_states_index_that_lies_is_set_aside_and_the_other_parts_are_read(lie, tmp_path, capsys):
    """An index whose lengths, starts, width or digests do not describe its states file as write_states_part lays
    one out is set aside with its reason, never read, and never sets the good part after it aside."""
    folder = str(tmp_path / "store")
    good = [np.full((3, 4), 1.0, np.float16), np.full((2, 4), 2.0, np.float16)]
    stored.write_states_part(folder, ["g0", "g1"], good)
    index = {"digests": np.array(["x0", "x1"]), "starts": np.array([0, 2]), "lengths": np.array([2, 2]),
             "width": np.int64(4)}
    index.update({"negative length": {"starts": np.array([0, 5]), "lengths": np.array([5, -1])},  # 4 rows in all
                  "overlapping starts": {"starts": np.array([0, 1])},
                  "zero width": {"width": np.int64(0)},
                  "2-d digests": {"digests": np.array([["x0", "x1"]])},
                  "no digests": {"digests": np.array([1.0, 2.0])}}[lie])
    np.savez(os.path.join(folder, "part-0000.npz"), **index)
    with open(os.path.join(folder, "part-0000.f16"), "wb") as handle:
        handle.write(np.ones((4, 4), np.float16).tobytes())
    found, files, width = stored.read_index(folder)
    assert set(found) == {"g0", "g1"} and width == 4 and len(files) == 1
    assert "part-0000.npz is damaged" in capsys.readouterr().err
    states = stored.StoredStates(files, *np.array([found["g1"], found["g0"]]).T, width)
    values, mask = states.batch(np.array([0, 1]))
    np.testing.assert_array_equal(values[0, :2], good[1])
    np.testing.assert_array_equal(values[1], good[0])
    assert mask.tolist() == [[1, 1, 0], [1, 1, 1]]


def test_states_cut_short_after_they_were_checked_are_named_not_misread(tmp_path):
    folder = str(tmp_path / "store")
    stored.write_states_part(folder, ["g0", "g1"], [np.ones((3, 4), np.float16), np.ones((2, 4), np.float16)])
    found, files, width = stored.read_index(folder)
    states = stored.StoredStates(files, *np.array([found["g0"], found["g1"]]).T, width)
    assert states.batch(np.array([1]))[1].tolist() == [[1, 1]]
    os.truncate(files[0], 4 * 4 * 2)  # another process cut it: g1's rows are gone
    with pytest.raises(OSError, match="part-.*f16 is shorter than when it was checked"):
        states.batch(np.array([1]))
