"""The distilled student: its layers taken from the teacher, its training towards the teacher's embeddings, its
resume, and the TF-Hub pair it is written as."""
import dataclasses

import numpy as np
import pytest
import tensorflow as tf

import genre_tf  # noqa: F401
from genre_tf.config import TextEncoderConfig
from genre_tf.nets.bert import BertShape, build_bert_encoder
from genre_tf.train import distill

SHAPE = BertShape(vocab_size=40, hidden_size=16, num_layers=4, num_heads=2, intermediate_size=32, max_positions=40,
                  type_vocab_size=0, position_offset=2, relative_buckets=8)


def test_a_student_keeps_evenly_spaced_layers_from_the_first():
    assert distill.kept_layers(12, 6) == [0, 2, 4, 6, 8, 10]  # sentence-transformers' choice for 6 of 12
    assert distill.kept_layers(12, 4) == [0, 3, 6, 9]
    assert distill.kept_layers(12, 12) == list(range(12))
    with pytest.raises(ValueError, match="1 to 12"):
        distill.kept_layers(12, 0)


def token_rows(lengths, seed=0, width=24):
    """Right-padded (words, mask) of the given lengths, as tokenize returns them."""
    rng = np.random.default_rng(seed)
    mask = (np.arange(width)[None, :] < np.asarray(lengths)[:, None]).astype(np.int32)
    return (rng.integers(4, SHAPE.vocab_size, size=mask.shape) * mask + (1 - mask)).astype(np.int32), mask


@pytest.fixture(scope="module")
def teacher():
    tf.keras.utils.set_random_seed(3)
    return build_bert_encoder(SHAPE)


@pytest.mark.slow
def test_a_student_of_every_layer_is_the_teacher_and_a_smaller_one_holds_its_kept_blocks(teacher):
    words, mask = token_rows([3, 17, 9, 24, 1])
    expected = distill.embed(teacher, words, mask)
    whole = distill.build_student(teacher, SHAPE, 4)
    np.testing.assert_allclose(distill.embed(whole, words, mask), expected, atol=1e-5)
    half = distill.build_student(teacher, SHAPE, 2)
    for index, kept in enumerate([0, 2]):
        for mine, theirs in zip(half.get_layer(f"transformer_{index}").get_weights(),
                                teacher.get_layer(f"transformer_{kept}").get_weights(), strict=True):
            assert np.array_equal(mine, theirs)
    assert np.array_equal(half.get_layer("relative_position_bias").get_weights()[0],
                          teacher.get_layer("relative_position_bias").get_weights()[0])
    # batched by length, padded to each batch's longest: the same vectors as each plot alone
    alone = np.concatenate([distill.embed(teacher, words[row:row + 1], mask[row:row + 1]) for row in range(5)])
    np.testing.assert_allclose(alone, expected, atol=1e-5)


@pytest.mark.slow
def test_training_brings_the_student_closer_to_the_teacher_and_resumes_where_it_stopped(teacher, tmp_path):
    words, mask = token_rows(np.random.default_rng(1).integers(2, 25, 96), seed=1)
    dev_words, dev_mask = token_rows(np.random.default_rng(2).integers(2, 25, 32), seed=2)
    targets, dev_targets = distill.embed(teacher, words, mask), distill.embed(teacher, dev_words, dev_mask)
    config = distill.DistillConfig(layers=1, epochs=3, batch_size=16, learning_rate=3e-3)

    def trained(checkpoints="", report=lambda line: None):
        tf.keras.utils.set_random_seed(0)
        student = distill.build_student(teacher, SHAPE, config.layers)
        losses, seconds = distill.train_student(student, words, mask, targets, config, checkpoints, report,
                                                save_every=2)  # 6 batches an epoch: saved after 2 and 4 of them
        assert len(losses) == config.epochs and seconds > 0
        return student, losses

    before = distill.fidelity(distill.embed(distill.build_student(teacher, SHAPE, 1), dev_words, dev_mask),
                              dev_targets)
    student, losses = trained()
    after = distill.fidelity(distill.embed(student, dev_words, dev_mask), dev_targets)
    assert after["mse"] < 0.5 * before["mse"] and after["cosine"] > before["cosine"]  # on plots it never saw
    assert losses[-1] < losses[0]

    class Killed(Exception):
        pass

    def kill_in_epoch_three(line):
        if line.startswith("epoch 3/3"):
            raise Killed(line)

    checkpoints = str(tmp_path / "checkpoints")
    with pytest.raises(Killed):
        trained(checkpoints, kill_in_epoch_three)
    lines = []
    resumed, resumed_losses = trained(checkpoints, lines.append)
    assert lines[0].startswith("resuming after epoch 2, batch 4 of the next")  # killed after epoch 3's last batch
    assert {line.split(":")[0] for line in lines[1:]} == {"epoch 3/3"}  # only batches 5 and 6 of epoch 3 ran again
    np.testing.assert_allclose(resumed_losses, losses, rtol=1e-5)  # epochs 1-2 from the checkpoint, 3 run again
    for mine, theirs in zip(resumed.get_weights(), student.get_weights(), strict=True):
        np.testing.assert_allclose(mine, theirs, atol=1e-6)


def test_a_checkpoint_folder_of_other_settings_or_data_is_refused(tmp_path):
    from types import SimpleNamespace

    folder, data = str(tmp_path / "out.checkpoints"), SimpleNamespace(path="data", fingerprint="abc")
    distill.claim_checkpoints(folder, data, distill.DistillConfig(epochs=1))
    distill.claim_checkpoints(folder, data, distill.DistillConfig(epochs=1))  # the same run resumes
    with pytest.raises(ValueError, match="other settings"):
        distill.claim_checkpoints(folder, data, distill.DistillConfig(epochs=2))
    with pytest.raises(ValueError, match="other settings"):  # the same folder prepared again, other movies
        distill.claim_checkpoints(folder, SimpleNamespace(path="data", fingerprint="def"),
                                  distill.DistillConfig(epochs=1))


def test_batches_cut_after_the_last_real_token_even_with_gaps():
    from genre_tf.nets.encoders import token_ends

    mask = np.array([[1, 1, 0, 0, 0, 0], [1, 0, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0], [0, 0, 0, 0, 0, 0]], np.int32)
    assert token_ends(mask).numpy().tolist() == [2, 4, 5, 0]  # where trim_padding and length_chunked cut too
    mask = mask[:3]
    words = np.arange(18, dtype=np.int32).reshape(3, 6) * mask
    assert [rows.tolist() for rows in distill.length_batches(mask, 2)] == [[0, 1], [2]]
    inputs = distill.batch_inputs(words, mask, np.array([0, 1]))
    assert inputs["input_word_ids"].numpy().tolist() == [[0, 1, 0, 0], [6, 0, 8, 9]]  # row 1's gap keeps 8 and 9


@pytest.mark.slow
def test_the_saved_student_is_a_hub_text_encoder_giving_its_embeddings(teacher, tmp_path):
    from genre_tf.nets.encoders import build_text_encoder

    vocab = ["<s>", "<pad>", "</s>", "[UNK]"] + [f"word{index}" for index in range(SHAPE.vocab_size - 4)]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    student = distill.build_student(teacher, SHAPE, 2)
    out = str(tmp_path / "student")
    distill.save_student(student, str(tmp_path / "vocab.txt"), out, distill.DistillConfig(layers=2),
                         {"kept_layers": [0, 2]})
    config = TextEncoderConfig(encoder=f"{out}/encoder", preprocessor=f"{out}/preprocessor", pooling="mean")
    plots = ["word3 word9 word1", "word20 word7 word7 word30 word2 word11 word5", "word0"]
    served = build_text_encoder(config)(tf.constant(plots)).numpy()
    words, mask = distill.tokenize(config.preprocessor, plots)
    assert words[0, :5].tolist() == [0, 7, 13, 5, 2] and mask.sum(1).tolist() == [5, 9, 3]  # <s> ... </s>
    np.testing.assert_allclose(served, distill.embed(student, words, mask), atol=1e-5)
    assert distill.read_record(out)["kept_layers"] == [0, 2]


def test_the_command_refuses_a_student_of_more_layers_or_a_folder_it_would_replace(tmp_path, capsys):
    assert distill.main([str(tmp_path / "data"), "--out", str(tmp_path / "s"), "--layers", "13"]) == 2
    assert "1 to 12" in capsys.readouterr().err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert distill.main([str(tmp_path / "data"), "--out", str(tmp_path / "mine")]) == 2
    assert "holds no student" in capsys.readouterr().err and (tmp_path / "mine" / "notes.txt").exists()
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / distill.STUDENT_FILE).write_text("{}")
    distill.check_out(str(tmp_path / "old"), str(tmp_path / "data"))  # an earlier student may be replaced
    (tmp_path / "data").mkdir()  # a folder that is no prepared dataset: named, nothing written
    assert distill.main([str(tmp_path / "data"), "--out", str(tmp_path / "new")]) == 1
    assert "is not a prepared dataset" in capsys.readouterr().err and not (tmp_path / "new").exists()
    assert dataclasses.asdict(distill.parse_args(["d", "--out", "o", "--learning-rate", "2e-4"])[2])[
        "learning_rate"] == 2e-4
