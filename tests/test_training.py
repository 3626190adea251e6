"""Every Table 3 model trains on tiny data; run directories, resume after interruption, locking, the config."""
import csv
import dataclasses
import fcntl
import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tf_keras as keras

import genre_tf  # noqa: F401
from genre_tf.config import dump_config, load_config
from genre_tf.evaluate.metrics import f1_scores
from genre_tf.files import read_json, write_json
from genre_tf.run_dir import (HISTORY, MONITOR, best_checkpoint, checkpoint_identity, checkpoint_record, read_history,
                              RunDirectoryInUse)
from genre_tf.train import callbacks, training
from genre_tf.train.training import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def csv_epochs(run_dir) -> list[int]:
    """The epoch column of history.csv as written, repeated rows included."""
    with open(os.path.join(run_dir, HISTORY), newline="") as handle:
        return [int(row["epoch"]) for row in csv.DictReader(handle)]


@pytest.fixture(scope="module")
def learnable_prepared(tmp_path_factory):
    """120 movies of one genre each, told apart by the plot (its cue word 16 times) and the poster's colour.

    small_prepared's plots hide their cue among 19 random words, which the tiny frozen BERT's 8 numbers do not
    keep (a logistic regression on them is at chance), so no tiny model could be told to beat a floor there.
    """
    from conftest import GENRES, image_bytes
    from genre_tf.config import PrepareConfig, ValidationRules
    from genre_tf.data.prepare import prepare

    root = tmp_path_factory.mktemp("learnable")
    (root / "raw").mkdir()
    cues = {"Drama": "family", "Comedy": "laugh", "Action": "fight", "Horror": "ghost"}
    colours = {"Drama": (90, 90, 90), "Comedy": (250, 220, 0), "Action": (250, 100, 0), "Horror": (5, 5, 5)}
    for index in range(120):
        genre = GENRES[index % len(GENRES)]
        plot = " ".join([cues[genre]] * 16)
        write_json(str(root / "raw" / f"tt{index:07d}.json"), {"plot": [plot], "genres": [genre]})
        (root / "raw" / f"tt{index:07d}.jpeg").write_bytes(image_bytes((48, 64), colours[genre]))
    prepare(PrepareConfig(catalogue=str(root / "raw"), out=str(root / "prepared"), name="learnable-test",
                          rules=ValidationRules(image_size=32), num_genres=4), progress=False)
    return str(root / "prepared")


def constant_floor(prepared_dir) -> float:
    """Dev weighted F1 of the better constant prediction: every genre, or the genres of most training movies."""
    from genre_tf.data.dataset import load_prepared, split_labels

    prepared = load_prepared(prepared_dir)
    train_labels, dev = (split_labels(prepared, name)["labels"] for name in ("train", "dev"))
    majority = np.tile(train_labels.mean(axis=0) > 0.5, (len(dev), 1))
    return max(f1_scores(dev, np.ones_like(dev))["weighted_f1"], f1_scores(dev, majority)["weighted_f1"])


# Settings under which every tiny model learns learnable_prepared: ImageNet poster features (random Lite0 weights
# give features of about 1e-13 at 32 px), a 64-unit text head ([16, 8] did not learn in 10 epochs) and lr 0.01.
LEARNS = ["poster.weights=imagenet", "model.text_units=[64]", "learning_rate=0.01", "patience=8"]
# Measured on learnable_prepared (floor 0.40: every genre): poster 0.75, text_frozen and text_finetuned 1.0,
# integrated 0.83 (0.92 without caches); a model that learned nothing scores at most the floor.
MARGIN = 0.25


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["most_common", "poster", "text_frozen", "text_finetuned", "integrated"])
def test_each_model_trains_and_leaves_a_complete_run_directory(tiny_config, learnable_prepared, kind):
    run_dir = train(tiny_config(kind, f"data={learnable_prepared}", *LEARNS, "epochs=8"))
    final = read_json(os.path.join(run_dir, "final.json"))
    history = read_history(run_dir)
    assert final["model"] == kind
    assert [row["epoch"] for row in history] == ([0] if kind == "most_common" else list(range(8)))
    best = max(history, key=lambda row: row[MONITOR])
    assert (final["best_dev_weighted_f1"], final["best_epoch"]) == (best[MONITOR], best["epoch"] + 1)
    assert Path(run_dir, "genres.txt").read_text() == Path(learnable_prepared, "genres.txt").read_text()
    assert os.listdir(os.path.join(run_dir, "logs", "dev"))  # per-genre dev F1 for TensorBoard
    assert checkpoint_record(run_dir) == {"epoch": best["epoch"], MONITOR: best[MONITOR]}
    if kind == "most_common":
        # the baseline predicts the genres of more than half of training: its score is the recorded baseline
        assert final["best_dev_weighted_f1"] == pytest.approx(final["most_common_dev_weighted_f1"])
        assert not os.path.exists(os.path.join(run_dir, "serving"))
        return
    floor = constant_floor(learnable_prepared)
    print(f"{kind}: best dev weighted F1 {final['best_dev_weighted_f1']:.3f}, floor {floor:.3f}")
    assert final["best_dev_weighted_f1"] >= floor + MARGIN
    serving = read_json(os.path.join(run_dir, "serving", "serving.json"))
    assert len(serving["thresholds"]) == 4 and len(serving["warmup_plots"]) == 4
    dims = {"poster": {"poster_features": 1280}, "text_frozen": {"plot_embedding": 8},
            "text_finetuned": {"plot_embedding": 8}, "integrated": {"plot_embedding": 8, "poster_features": 1280}}
    assert serving["feature_dims"] == dims[kind]
    assert {name: len(mean) for name, mean in serving["fallback_means"].items()} == dims[kind]
    assert Path(run_dir, "serving", "warmup_poster.png").read_bytes()[:4] == b"\x89PNG"  # as stored: lossless


def test_oversampling_writes_the_counts_and_trains(tiny_config, capsys):
    run_dir = train(tiny_config("poster", "oversample=true",
                                "oversample_genres=2", "oversample_fraction=0.5"))
    counts = read_json(os.path.join(run_dir, "oversampled_counts.json"))
    assert sum(counts.values()) == len(counts) + round(0.5 * len(counts))
    assert "train OS" in capsys.readouterr().out


@pytest.mark.parametrize("kill", ["after_backup", "before_backup"])
def test_a_resumed_run_continues_from_the_right_epoch_and_stops_early_on_time(tiny_config, monkeypatch, capsys,
                                                                               kill):
    # At a learning rate of 1e-12 the weights barely move, so dev F1 is the same every epoch: epoch 1 stays
    # the best and patience 2 ends the run after epoch 3, interrupted or not. A resumed run that forgot
    # EarlyStopping's and ModelCheckpoint's state would take epoch 3 as a new best and train to epoch 5.
    config = tiny_config("poster", "epochs=10", "patience=2", "learning_rate=1.0e-12")
    original = keras.callbacks.BackupAndRestore.on_epoch_end

    def killed_in_epoch_2(self, epoch, logs=None):
        if kill == "after_backup":
            original(self, epoch, logs)
        if epoch == 1:
            raise KeyboardInterrupt("simulated kill")
        original(self, epoch, logs)

    monkeypatch.setattr(keras.callbacks.BackupAndRestore, "on_epoch_end", killed_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(config)
    assert [row["epoch"] for row in read_history(config.run_dir)] == [0, 1]
    assert not os.path.exists(os.path.join(config.run_dir, "final.json"))
    monkeypatch.setattr(keras.callbacks.BackupAndRestore, "on_epoch_end", original)
    capsys.readouterr()
    train(config)
    resumed = capsys.readouterr().out
    history = read_history(config.run_dir)
    assert [row["epoch"] for row in history] == [0, 1, 2] and len({row[MONITOR] for row in history}) == 1
    if kill == "after_backup":  # epoch 2 was backed up: the resumed run starts at epoch 3
        assert csv_epochs(config.run_dir) == [0, 1, 2] and "epoch 2: loss" not in resumed
    else:  # killed before epoch 2's backup: it is trained again, and its first row is dropped (one row an epoch)
        assert csv_epochs(config.run_dir) == [0, 1, 2] and "epoch 2: loss" in resumed
    assert "epoch 1: loss" not in resumed and "epoch 3: loss" in resumed and "Epoch 3: early stopping" in resumed
    final = read_json(os.path.join(config.run_dir, "final.json"))
    assert (final["best_epoch"], final["best_dev_weighted_f1"]) == (1, history[0][MONITOR])
    assert checkpoint_record(config.run_dir)["epoch"] == 0  # epoch 3 did not overwrite the best checkpoint


def test_a_kill_while_saving_the_best_checkpoint_loses_no_evaluation(tiny_config, monkeypatch, capsys):
    from genre_tf.evaluate.evaluation import predict_split, restore_run

    config = tiny_config("poster", "epochs=3", "learning_rate=1.0e-12")  # epoch 1 stays the best (see above)

    save_weights = keras.Model.save_weights

    def killed_mid_write(self, filepath, **kwargs):
        if not filepath.startswith(os.path.join(str(config.run_dir), "checkpoints")):
            return save_weights(self, filepath, **kwargs)  # e.g. the random poster weights, saved once
        os.makedirs(os.path.dirname(filepath), exist_ok=True)
        Path(filepath + ".index").write_bytes(b"half an index")
        raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(keras.Model, "save_weights", killed_mid_write)
    with pytest.raises(KeyboardInterrupt):
        train(config)
    # The epoch's evaluation was recorded before the save began, and the half-written weights are not visible,
    # not even as a leftover staging folder (what a SIGKILL leaves behind, unlike this exception).
    assert [row["epoch"] for row in read_history(config.run_dir)] == [0]
    Path(config.run_dir, "checkpoints", ".best.999.tmp").mkdir()
    Path(config.run_dir, "checkpoints", ".best.999.tmp", "weights.index").write_bytes(b"half an index")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        best_checkpoint(config.run_dir)
    monkeypatch.undo()
    saves, original_save = [], callbacks.save_checkpoint

    def recorded_save(model, folder, record):
        saves.append(record)
        original_save(model, folder, record)

    monkeypatch.setattr(callbacks, "save_checkpoint", recorded_save)
    train(config)
    assert "the best checkpoint (epoch 1) was interrupted; saving it from the backup" in capsys.readouterr().out
    history = read_history(config.run_dir)
    assert [row["epoch"] for row in history] == [0, 1, 2]
    assert saves == [{"epoch": 0, MONITOR: history[0][MONITOR]}]  # the recovery, before epoch 2 trained
    dev = predict_split(restore_run(config.run_dir), "dev")  # the recovered weights score what was recorded
    assert f1_scores(dev["labels"], dev["probabilities"] >= 0.5)["weighted_f1"] == pytest.approx(history[0][MONITOR])


def test_a_kill_in_the_final_steps_trains_nothing_again(tiny_config, monkeypatch, capsys):
    config = tiny_config("poster")
    original = training.write_serving_files

    def killed(*args):
        raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(training, "write_serving_files", killed)
    with pytest.raises(KeyboardInterrupt):
        train(config)
    assert os.listdir(os.path.join(config.run_dir, "backup")) == []  # fit had ended and deleted its backup
    monkeypatch.setattr(training, "write_serving_files", original)
    capsys.readouterr()
    train(config)
    assert "only the final steps remain" in capsys.readouterr().out
    assert csv_epochs(config.run_dir) == [0, 1]  # no epoch trained again
    final = read_json(os.path.join(config.run_dir, "final.json"))
    assert final["best_epoch"] == checkpoint_record(config.run_dir)["epoch"] + 1
    serving = read_json(os.path.join(config.run_dir, "serving", "serving.json"))
    assert serving["checkpoint"]["epoch"] == final["best_epoch"] - 1


@pytest.mark.slow
def test_without_caches_encoders_run_inside_and_conv5_fine_tunes(tiny_config, small_prepared, learnable_prepared):
    from genre_tf.data.dataset import split_labels
    from genre_tf.data.demo import open_prepared
    from genre_tf.train.training import build_for_training

    config = tiny_config("integrated", f"data={learnable_prepared}", *LEARNS, "epochs=4",
                         "feature_cache=false", "model.fine_tune_text=false")
    features_dir = os.path.join(os.environ["GENRE_TF_CACHE"], "features")
    cached_before = sorted(glob.glob(os.path.join(features_dir, "**"), recursive=True))
    run_dir = train(config)
    best = read_json(os.path.join(run_dir, "final.json"))["best_dev_weighted_f1"]
    print(f"without caches: best dev weighted F1 {best:.3f}, floor {constant_floor(learnable_prepared):.3f}")
    assert best >= constant_floor(learnable_prepared) + MARGIN
    assert sorted(glob.glob(os.path.join(features_dir, "**"), recursive=True)) == cached_before

    tuned = tiny_config("poster",
                        "poster.fine_tune_last_stage=true")
    prepared = open_prepared(tuned.data)
    model = build_for_training(tuned, prepared, split_labels(prepared, "train")["labels"], {})
    assert model.input_names == ["poster"]
    backbone = model.get_layer("poster_encoder").get_layer("efficientnet_lite0")
    stem, last = backbone.get_layer("conv_stem").kernel, backbone.get_layer("blocks_15_project_conv").kernel
    before = stem.numpy().copy(), last.numpy().copy()
    posters = np.random.default_rng(0).integers(0, 255, (16, 32, 32, 3)).astype("uint8")
    model.fit(posters, np.eye(4, dtype="float32")[np.arange(16) % 4], batch_size=8, epochs=1, verbose=0)
    assert np.array_equal(stem.numpy(), before[0]) and not np.array_equal(last.numpy(), before[1])
    assert isinstance(model.get_layer("poster_encoder"), keras.Model)


def test_resume_refuses_a_different_config_and_a_finished_run_is_not_trained_again(tiny_config, capsys):
    config = tiny_config("most_common")
    train(config)
    history = Path(config.run_dir, HISTORY).read_text()
    assert train(config) == config.run_dir and "finished already" in capsys.readouterr().out
    assert Path(config.run_dir, HISTORY).read_text() == history
    changed = tiny_config("most_common", "seed=5")
    with pytest.raises(ValueError, match="another config"):
        train(changed)


@pytest.mark.slow
def test_a_second_training_on_the_same_run_directory_is_refused(tiny_config, small_prepared, tiny_overrides):
    config = tiny_config("most_common")
    os.makedirs(config.run_dir)
    with open(os.path.join(config.run_dir, ".lock"), "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a running train.py holds
        with pytest.raises(RunDirectoryInUse, match=f"{config.run_dir} is in use by another training"):
            train(config)
        second = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), f"data={small_prepared}",
                                 f"run_dir={config.run_dir}", "model.kind=most_common", *tiny_overrides],
                                capture_output=True, text=True, timeout=300)
        assert second.returncode == 1 and "Traceback" not in second.stderr
        assert f"error: {config.run_dir} is in use by another training" in second.stderr
        assert os.listdir(config.run_dir) == [".lock"]  # the refused trainings wrote nothing
    assert read_json(os.path.join(train(config), "final.json"))["model"] == "most_common"  # released: it runs


def test_a_dataset_name_cannot_place_the_run_outside_runs(small_prepared, tiny_overrides, tmp_path, monkeypatch):
    data = tmp_path / "work" / "data"
    shutil.copytree(small_prepared, data, ignore=shutil.ignore_patterns("features"))
    metadata = read_json(data / "dataset.json")
    write_json(str(data / "dataset.json"), dict(metadata, name="../../evil"))
    monkeypatch.chdir(tmp_path / "work")
    run_dir = train(load_config(overrides=[f"data={data}", "model.kind=most_common", *tiny_overrides]))
    assert run_dir == os.path.join("runs", "_.._evil-most_common")
    assert os.path.exists(tmp_path / "work" / run_dir / "final.json")
    assert sorted(os.listdir(tmp_path)) == ["work"] and sorted(os.listdir(tmp_path / "work")) == ["data", "runs"]


def test_train_py_names_a_missing_dataset_in_one_line(tmp_path, capsys):
    import train as train_script

    assert train_script.main([f"data={tmp_path / 'missing'}"]) == 1
    error = capsys.readouterr().err
    assert error.strip() == (f"error: {tmp_path / 'missing'} is not a prepared dataset (no dataset.json); "
                             "run `python -m genre_tf.prepare CATALOGUE out=DIR` first")


def test_config_round_trips_through_a_file(tmp_path):
    config = load_config(overrides=["model.kind=poster", "model.text_units=[64, 32]", "oversample=true",
                                    "text.pooling=pooled"])
    dump_config(config, str(tmp_path / "config.json"))
    assert load_config(str(tmp_path / "config.json")) == config
    (tmp_path / "c.yaml").write_text("model:\n  kind: text_frozen\nepochs: 3\n")
    loaded = load_config(str(tmp_path / "c.yaml"), ["epochs=4"])
    assert (loaded.model.kind, loaded.epochs, loaded.text.seq_length) == ("text_frozen", 4, 64)  # demo preset


@pytest.mark.parametrize("option, message", [
    ("model.kind=bert", "model.kind must be one of"), ("epochs=abc", "epochs must be int"),
    ("model.dropout=1.5", "dropout must be in"), ("batch_size=1", "batch_size must be 2 to 65536"),
    ("nonsense=1", "unknown option 'nonsense'"), ("text.pooling=max", "pooling must be"),
])
def test_bad_options_give_clear_errors(option, message, capsys):
    import train as train_script

    with pytest.raises(SystemExit):
        train_script.main([option])
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_two_workers_on_localhost_train_one_model(tiny_config, small_prepared, tiny_hub_bert):
    from genre_tf.train.multiworker import run_workers

    config = tiny_config("text_frozen")
    encoder, preprocessor = tiny_hub_bert
    overrides = [f"data={small_prepared}", f"run_dir={config.run_dir}", "model.kind=text_frozen",
                 "model.text_units=[16, 8]", f"text.encoder={encoder}", f"text.preprocessor={preprocessor}",
                 "text.seq_length=128", "batch_size=8", "epochs=2", "learning_rate=0.001"]
    assert run_workers(overrides, workers=2, timeout=300) == [0, 0]
    final = read_json(os.path.join(config.run_dir, "final.json"))
    assert (final["replicas"], final["global_batch"]) == (2, 16)
    assert [row["epoch"] for row in read_history(config.run_dir)] == [0, 1]
    assert os.path.exists(best_checkpoint(config.run_dir) + ".index")
    assert read_json(os.path.join(config.run_dir, "serving", "serving.json"))["feature_dims"] == {"plot_embedding": 8}


def test_exponent_floats_without_a_dot_are_floats():
    config = load_config(overrides=["learning_rate=1e-5", "model.dropout=0.25"])
    assert config.learning_rate == 1e-5 and config.model.dropout == 0.25
    with pytest.raises(ValueError, match="learning_rate must be float, got 'fast'"):
        load_config(overrides=["learning_rate=fast"])


def test_a_run_from_before_the_precision_options_is_still_the_same_run(tiny_config, capsys):
    config = tiny_config("poster")
    run_dir = train(config)
    recorded = read_json(os.path.join(run_dir, "config.json"))
    assert "precision" not in read_json(os.path.join(run_dir, "encoders.json"))["poster"]  # float32 is not written
    for section in ("text", "poster"):
        del recorded[section]["precision"]  # as config.json was written before text/poster.precision existed
    write_json(os.path.join(run_dir, "config.json"), recorded)
    capsys.readouterr()
    assert train(config) == run_dir and "is finished already" in capsys.readouterr().out
    with pytest.raises(ValueError, match="holds a run with another config"):
        train(tiny_config("poster", "poster.precision=bfloat16"))


@pytest.mark.slow
def test_a_training_run_never_writes_into_its_prepared_dataset(make_tiny_config, small_prepared, tmp_path):
    from genre_tf.files import sha256_of

    def digests(folder):
        return {os.path.relpath(os.path.join(root, name), folder): sha256_of(os.path.join(root, name))
                for root, _, names in os.walk(folder) for name in names}

    data = tmp_path / "data"
    shutil.copytree(small_prepared, data, ignore=shutil.ignore_patterns("features"))  # as prepare wrote it
    before = digests(data)
    train(make_tiny_config("integrated", "epochs=1", f"data={data}", run_dir=tmp_path / "run"))  # with feature caches
    assert digests(data) == before


def test_a_run_directory_is_never_a_prepared_dataset_nor_inside_one(small_prepared, tiny_overrides, tmp_path, capsys):
    import train as train_script
    from genre_tf.config import PrepareConfig
    from genre_tf.data.prepare import prepare
    from genre_tf.files import sha256_of

    data = tmp_path / "data"
    shutil.copytree(small_prepared, data, ignore=shutil.ignore_patterns("features"))
    before = {name: sha256_of(str(data / name)) for name in os.listdir(data) if (data / name).is_file()}
    options = [f"data={data}", "model.kind=most_common", *tiny_overrides]
    for run_dir, where in ((data, "is"), (data / "runs" / "x", "is inside")):
        assert train_script.main([*options, f"run_dir={run_dir}"]) == 1
        error = capsys.readouterr().err
        assert error.startswith(f"error: run_dir={run_dir} {where} the prepared dataset")
        assert len(error.splitlines()) == 1
    assert train_script.main([*options, f"run_dir={tmp_path}"]) == 1  # a run directory that holds the dataset
    assert f"run_dir={tmp_path} holds the prepared dataset {data}" in capsys.readouterr().err
    assert {name: sha256_of(str(data / name)) for name in before} == before and not (data / "runs").exists()
    assert not (tmp_path / "config.json").exists()
    run_dir = train(load_config(overrides=[*options, f"run_dir={tmp_path / 'run'}"]))
    with pytest.raises(ValueError, match=f"out={run_dir}/prepared is inside the training run {run_dir}"):
        prepare(PrepareConfig(catalogue=str(tmp_path / "raw"), out=f"{run_dir}/prepared"), progress=False)


def test_a_refused_run_leaves_nothing_that_blocks_the_corrected_command(tiny_config, tmp_path, monkeypatch,
                                                                       make_tiny_config):
    typo = tmp_path / "text_rnu"
    late = ("model.fusion=late", f"model.text_run={typo}", f"model.poster_run={typo}")
    config = tiny_config("integrated", *late)
    with pytest.raises(ValueError, match="is not a finished run"):
        train(config)
    assert not os.path.exists(config.run_dir)  # it did not exist before
    os.makedirs(config.run_dir)
    Path(config.run_dir, "notes.txt").write_text("mine")  # a folder the user made keeps what the user put there
    with pytest.raises(ValueError, match="is not a finished run"):
        train(config)
    assert os.listdir(config.run_dir) == ["notes.txt"]
    # the default run folder: the corrected command (here another model in the same folder) is not refused
    monkeypatch.chdir(tmp_path)
    default = make_tiny_config("integrated", *late, run_dir="")
    with pytest.raises(ValueError, match="is not a finished run"):
        train(default)
    assert not os.path.exists(os.path.join("runs", "small-test-integrated", "config.json"))
    corrected = make_tiny_config("integrated", "model.fusion=late", "model.kind=most_common", run_dir="")
    run_dir = train(dataclasses.replace(corrected, run_dir=os.path.join("runs", "small-test-integrated")))
    assert read_json(os.path.join(run_dir, "final.json"))["model"] == "most_common"
    # refused after the run folder was written (a finished run, but of the wrong kind): it is removed again
    wrong_kind = make_tiny_config("integrated", "model.fusion=late", f"model.text_run={run_dir}",
                                  f"model.poster_run={run_dir}", run_dir=tmp_path / "late")
    with pytest.raises(ValueError, match="is a most_common run; late fusion needs a text_frozen run"):
        train(wrong_kind)
    assert not (tmp_path / "late").exists()


@pytest.mark.slow
def test_a_resumed_run_trains_as_the_uninterrupted_run_did(make_tiny_config, tmp_path, monkeypatch):
    # Dropout and the data order are random; a resumed run must draw what the uninterrupted run drew at each
    # epoch, so both runs give the same loss epoch by epoch (and the same dev scores).
    options = ("epochs=4", "patience=10", "model.dropout=0.5")
    whole = train(make_tiny_config("text_frozen", *options, run_dir=tmp_path / "whole"))
    config = make_tiny_config("text_frozen", *options, run_dir=tmp_path / "resumed")
    original = keras.callbacks.BackupAndRestore.on_epoch_end

    def killed_after_epoch_2(self, epoch, logs=None):
        original(self, epoch, logs)
        if epoch == 1:
            raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(keras.callbacks.BackupAndRestore, "on_epoch_end", killed_after_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(config)
    monkeypatch.setattr(keras.callbacks.BackupAndRestore, "on_epoch_end", original)
    train(config)
    expected, resumed = read_history(whole), read_history(config.run_dir)
    assert [row["epoch"] for row in resumed] == [0, 1, 2, 3]
    assert len({row["loss"] for row in expected}) == 4  # the model does learn: every epoch's loss differs
    for ours, theirs in zip(resumed, expected, strict=True):
        assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-5, abs=1e-6)
        assert ours[MONITOR] == pytest.approx(theirs[MONITOR], abs=1e-6)


@pytest.mark.slow
def test_a_non_finite_loss_stops_training_at_once_and_keeps_the_last_finite_checkpoint(
        small_prepared, tiny_overrides, tmp_path, monkeypatch, capsys):
    import tensorflow as tf

    import train as train_script
    from genre_tf.serve.serving import export_run

    options = [f"data={small_prepared}", f"run_dir={tmp_path / 'run'}", "model.kind=poster", *tiny_overrides,
               "epochs=3", "patience=5"]
    config = load_config(overrides=options)
    poisoned = tf.Variable(False)
    make_loss, epoch_callbacks = training.make_loss, training.epoch_callbacks

    def nan_from_epoch_2(config, train_labels):
        loss = make_loss(config, train_labels)
        return lambda labels, probabilities: tf.where(poisoned, np.nan, loss(labels, probabilities))

    def poisoning_epoch_2(*args):
        return [keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: poisoned.assign(epoch == 1)),
                *epoch_callbacks(*args)]

    monkeypatch.setattr(training, "make_loss", nan_from_epoch_2)
    monkeypatch.setattr(training, "epoch_callbacks", poisoning_epoch_2)
    assert train_script.main(options) == 1
    error = capsys.readouterr().err  # feature caching's progress bars, then the one-line error
    assert error.splitlines()[-1].startswith("error: the training loss became nan at step 1 of epoch 2 "
                                             "(learning_rate=0.001); training stopped")
    assert "Traceback" not in error
    assert [row["epoch"] for row in read_history(config.run_dir)] == [0]
    assert checkpoint_record(config.run_dir)["epoch"] == 0
    assert not os.path.exists(os.path.join(config.run_dir, "final.json"))
    monkeypatch.undo()
    run_dir = train(config)  # the same command again: it resumes from the last finite epoch and finishes
    assert [row["epoch"] for row in read_history(run_dir)] == [0, 1, 2]
    # a checkpoint of NaN weights (as training before this kept one) is never exported
    from genre_tf.nets.network import restore_trained
    from genre_tf.train.callbacks import save_checkpoint

    _, _, model, _ = restore_trained(run_dir)
    model.set_weights([np.full_like(weight, np.nan) for weight in model.get_weights()])
    save_checkpoint(model, os.path.join(run_dir, "checkpoints", "best"), checkpoint_record(run_dir))
    serving = read_json(os.path.join(run_dir, "serving", "serving.json"))
    write_json(os.path.join(run_dir, "serving", "serving.json"), dict(serving, checkpoint=checkpoint_identity(run_dir)))
    with pytest.raises(ValueError, match="best checkpoint holds non-finite weights"):
        export_run(run_dir, os.path.join(config.run_dir, "models"))



@pytest.mark.parametrize("option, message", [
    ("learning_rate=inf", "learning_rate must be a finite number > 0, got inf"),
    ("learning_rate=.nan", "learning_rate must be a finite number > 0, got nan"),
    ("poster.image_size=20000", "poster.image_size must be 32 to 1024 pixels, got 20000"),
    ("text.seq_length=100000", "text.seq_length must be in [8, 512]"),
])
def test_option_bounds_are_checked_before_a_run_folder_exists(option, message, tmp_path, monkeypatch, capsys):
    import train as train_script

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        train_script.main([option, "run_dir=run"])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in error and "Traceback" not in error
    assert os.listdir(tmp_path) == []


def test_a_preprocessor_without_tokenize_refuses_another_seq_length_in_one_line(small_prepared, tiny_hub_bert,
                                                                                 tmp_path, capsys):
    import tensorflow as tf

    import train as train_script

    class PackOnly(tf.Module):
        """A preprocessor that only packs 128 tokens (no tokenize, no bert_pack_inputs)."""

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def __call__(self, plot):
            ids = tf.zeros([tf.shape(plot)[0], 128], tf.int32)
            return {"input_word_ids": ids, "input_mask": ids, "input_type_ids": ids}

    tf.saved_model.save(PackOnly(), str(tmp_path / "pack_only"))
    run_dir = tmp_path / "run"
    assert train_script.main([f"data={small_prepared}", f"run_dir={run_dir}", "model.kind=text_frozen",
                              f"text.encoder={tiny_hub_bert[0]}", f"text.preprocessor={tmp_path / 'pack_only'}",
                              "text.seq_length=64", "batch_size=8", "epochs=1"]) == 1
    error = capsys.readouterr().err
    assert error.splitlines()[-1] == (f"error: text.seq_length=64 needs a preprocessor with TF-Hub's tokenize and "
                                      f"bert_pack_inputs, and {tmp_path / 'pack_only'} has no tokenize or "
                                      "bert_pack_inputs; use text.seq_length=128 (what it packs) or another "
                                      "text.preprocessor")
    assert "Traceback" not in error and not run_dir.exists()  # nothing left to block the corrected command
