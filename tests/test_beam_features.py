"""genre_tf.features: the Beam job fills the store training reads, resumes after a kill, and sets bad records aside."""
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

import genre_tf  # noqa: F401
from conftest import image_bytes, write_mmimdb
from genre_tf.config import PrepareConfig, ValidationRules
from genre_tf.data.beam_features import compute_features
from genre_tf.data.dataset import POSTER, load_prepared
from genre_tf.data import features
from genre_tf.data.features import read_part, store_parts
from genre_tf.data.prepare import prepare
from genre_tf.nets.network import feature_caches, frozen_encoders

MOVIES = 60
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IN_PROCESS = ["--direct_num_workers=1", "--direct_running_mode=in_memory"]


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory) -> str:
    """A prepared dataset of 60 generated movies, each with a poster and a plot of its own."""
    root = tmp_path_factory.mktemp("beam-features")
    write_mmimdb(str(root / "raw"), count=MOVIES, seed=5)
    for index in range(MOVIES):
        with open(root / "raw" / f"tt{index:07d}.jpeg", "wb") as handle:
            handle.write(image_bytes((48, 64), (index * 4, 255 - index * 3, 60)))
    prepare(PrepareConfig(catalogue=str(root / "raw"), out=str(root / "prepared"), rules=ValidationRules(image_size=32),
                          num_genres=4, min_train_movies=8), progress=False)
    return str(root / "prepared")


@pytest.fixture()
def config(make_tiny_config, catalogue, tmp_path):
    """The tiny integrated model's config on the catalogue: the tiny BERT and a random Lite0 at 32 px."""
    return make_tiny_config("integrated", f"data={catalogue}", run_dir=tmp_path / "run")


def store_rows(folder: str) -> dict[str, np.ndarray]:
    """Every row of a store by content digest."""
    rows = {}
    for path in store_parts(folder):
        digests, values = read_part(path)
        rows.update(zip(digests.tolist(), values, strict=True))
    return rows


def use_stores(monkeypatch, folder) -> None:
    """Feature stores under `folder` from now on; the rest of the cache (the random weights every process loads) stays
    where the worker processes find it."""
    monkeypatch.setattr(features, "store_folder", lambda name, key: os.path.join(folder, f"{name}-{key}"))


@pytest.mark.slow
@pytest.mark.parametrize("beam_args", [IN_PROCESS, []], ids=["in_process", "two_worker_processes"])
def test_beam_features_are_the_in_process_ones_and_training_reads_them_unchanged(config, tmp_path, monkeypatch,
                                                                                 beam_args):
    monkeypatch.setenv("PYTHONPATH", ROOT)  # worker processes import genre_tf to unpickle the encoders
    prepared = load_prepared(config.data)
    use_stores(monkeypatch, tmp_path / "in-process")
    expected = feature_caches(config, prepared)
    use_stores(monkeypatch, tmp_path / "beam")
    summary = compute_features(prepared, frozen_encoders(config), str(tmp_path / "dead.jsonl"), beam_args)
    assert summary["dead_letters"] == []
    for encoder in frozen_encoders(config):
        assert summary[encoder.name]["encoded"] == summary[encoder.name]["published"] == MOVIES
    parts = {encoder.name: store_parts(encoder.folder) for encoder in frozen_encoders(config)}
    found = feature_caches(config, prepared)  # from the Beam job's store alone: nothing more is encoded
    assert {encoder.name: store_parts(encoder.folder) for encoder in frozen_encoders(config)} == parts
    for name, (ids, values) in expected.items():
        np.testing.assert_array_equal(found[name][0], ids)
        np.testing.assert_allclose(found[name][1], values, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_a_rerun_after_a_kill_encodes_only_the_missing_movies(config, tmp_path, monkeypatch):
    prepared = load_prepared(config.data)
    encoders = frozen_encoders(config)
    use_stores(monkeypatch, tmp_path / "whole")
    compute_features(prepared, encoders, str(tmp_path / "dead.jsonl"), IN_PROCESS, part_size=16)
    whole = {encoder.name: store_rows(encoder.folder) for encoder in encoders}
    whole_parts = {encoder.name: store_parts(encoder.folder) for encoder in encoders}
    # what a job killed midway leaves: the parts it published, and a part half written in its staging file
    killed = tmp_path / "killed"
    use_stores(monkeypatch, killed)
    kept = {}
    for index, encoder in enumerate(encoders):
        os.makedirs(encoder.folder)
        for path in whole_parts[encoder.name][:index + 2]:
            shutil.copy(path, encoder.folder)
        kept[encoder.name] = len(store_rows(encoder.folder))
        with open(os.path.join(encoder.folder, ".part-0123456789abcdef.4242.tmp.npz"), "wb") as handle:
            handle.write(b"half a part")
    assert min(kept.values()) > 0 and max(kept.values()) < MOVIES
    summary = compute_features(prepared, encoders, str(tmp_path / "dead.jsonl"), IN_PROCESS, part_size=16)
    for encoder in encoders:
        assert summary[encoder.name]["stored_before"] == kept[encoder.name]
        assert summary[encoder.name]["encoded"] == MOVIES - kept[encoder.name]  # only the missing movies
        rows = store_rows(encoder.folder)
        assert rows.keys() == whole[encoder.name].keys()
        for digest, row in whole[encoder.name].items():
            np.testing.assert_allclose(rows[digest], row, atol=1e-5, rtol=0)
    again = compute_features(prepared, encoders, str(tmp_path / "dead.jsonl"), IN_PROCESS)
    assert [again[encoder.name]["encoded"] for encoder in encoders] == [0, 0]


def break_one_poster(prepared_path: str, out: str) -> str:
    """A copy of a prepared dataset whose first training movie's poster is not an image; returns that movie's id."""
    shutil.copytree(prepared_path, out)
    shard = load_prepared(out).shards("train")[0]
    records = [tf.train.Example.FromString(record) for record in tf.data.TFRecordDataset(shard).as_numpy_iterator()]
    records[0].features.feature[POSTER].bytes_list.value[0] = b"\x89PNG\r\n\x1a\n but no image"
    with tf.io.TFRecordWriter(shard) as writer:
        for example in records:
            writer.write(example.SerializeToString())
    return records[0].features.feature["movie_id"].bytes_list.value[0].decode()


@pytest.mark.slow
def test_a_bad_record_is_a_dead_letter_with_its_reason_and_the_rest_are_kept(catalogue, tiny_overrides, tmp_path,
                                                                           monkeypatch, capsys):
    from genre_tf.features import main

    broken_id = break_one_poster(catalogue, str(tmp_path / "broken"))
    use_stores(monkeypatch, tmp_path / "stores")
    dead = str(tmp_path / "dead.jsonl")
    assert main([str(tmp_path / "broken"), *tiny_overrides, "model.kind=integrated", f"--dead-letters={dead}",
                 *IN_PROCESS]) == 0
    out, err = capsys.readouterr()
    assert f"poster_features: {MOVIES - 1} contents encoded, {MOVIES - 1} published" in out
    assert f"plot_embedding: {MOVIES} contents encoded, {MOVIES} published" in out
    assert f"dead letter: {broken_id} (poster): poster could not be decoded: " in err
    with open(dead, encoding="utf-8") as handle:
        [letter] = [json.loads(line) for line in handle]
    assert letter["movies"] == [broken_id] and letter["input"] == "poster"
    assert letter["reason"].startswith("poster could not be decoded: ")


def test_the_command_refuses_two_datasets_and_a_model_without_frozen_features(tmp_path, capsys):
    from genre_tf.features import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path), str(tmp_path / "other")])
    assert exit_info.value.code == 2 and "expected one prepared dataset" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["model.kind=poster"])  # no dataset at all: not the demo by default, as train.py's
    assert "got no dataset" in capsys.readouterr().err
    assert main([f"data={tmp_path}", "model.kind=most_common"]) == 1  # data= as train.py takes it
    capsys.readouterr()
    assert main([str(tmp_path), "model.kind=most_common"]) == 1
    assert "reads no frozen features" in capsys.readouterr().err


def test_writers_racing_on_one_store_never_leave_a_damaged_part(tmp_path):
    """Two jobs on one folder publish parts of the same movies (one name) and of others at once: every part reads
    whole, and no staging file is left."""
    from concurrent.futures import ThreadPoolExecutor

    from genre_tf.data.features import write_part

    rng = np.random.default_rng(0)
    rows = rng.random((64, 8), dtype=np.float32)
    digests = [f"{i:032x}" for i in range(64)]
    groups = [range(0, 32), range(0, 32), range(32, 64), range(16, 48)] * 4
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda group: write_part(str(tmp_path), [digests[i] for i in group], rows[list(group)]), groups))
    assert len(store_parts(str(tmp_path))) == 3 and sorted(os.listdir(tmp_path)) == sorted(
        os.path.basename(path) for path in store_parts(str(tmp_path)))
    np.testing.assert_array_equal(np.stack([store_rows(str(tmp_path))[d] for d in digests]), rows)


def test_non_finite_features_and_a_failed_batch_become_dead_letters_naming_their_movies():
    from apache_beam.ml.inference.base import PredictionResult

    from genre_tf.data.beam_features import Content, failed_batch, finite_row

    shared, alone = Content("d1", ("m1", "m2"), "a plot"), Content("d2", ("m3",), "another plot")
    [kept] = finite_row(PredictionResult(alone, np.ones(3, np.float32)), "plot")
    assert kept[0] == "d2"
    [tagged] = finite_row(PredictionResult(shared, np.array([0, np.nan, 1], np.float32)), "plot")
    assert tagged.value == {"movies": ["m1", "m2"], "input": "plot",
                            "reason": "the encoder gave non-finite features (NaN or Inf); they are not stored"}
    letters = list(failed_batch(([shared, alone], ValueError("out of memory")), "poster"))
    assert [letter["movies"] for letter in letters] == [["m1", "m2"], ["m3"]]
    assert letters[0]["reason"] == "the encoder failed on its batch of 2: ValueError: out of memory"
