"""Every Table 3 model trains on tiny data; run directories, resume after interruption, the config."""
import os
from pathlib import Path

import numpy as np
import pytest

import genre_tf  # noqa: F401
from genre_tf.files import read_json
from genre_tf.config import dump_config, load_config
from genre_tf.training import DevEvaluation, best_checkpoint, train


@pytest.mark.parametrize("kind", ["most_common", "poster", "text_frozen", "text_finetuned", "integrated"])
def test_each_model_trains_and_leaves_a_complete_run_directory(tiny_config, small_prepared, kind):
    run_dir = train(tiny_config(kind))
    final = read_json(os.path.join(run_dir, "final.json"))
    state = read_json(os.path.join(run_dir, "training_state.json"))
    assert final["model"] == kind and 0.0 <= final["best_dev_weighted_f1"] <= 1.0
    assert len(state["history"]) == (1 if kind == "most_common" else 2)
    assert Path(run_dir, "genres.txt").read_text() == Path(small_prepared, "genres.txt").read_text()
    if kind == "most_common":
        # the baseline predicts the genres of more than half of training: its score is the recorded baseline
        assert final["best_dev_weighted_f1"] == pytest.approx(final["most_common_dev_weighted_f1"])
    else:
        assert os.path.exists(best_checkpoint(run_dir) + ".index")
        assert os.listdir(os.path.join(run_dir, "logs", "dev"))


def test_oversampling_writes_the_counts_and_trains(tiny_config, capsys):
    run_dir = train(tiny_config("poster", "oversample=true",
                                "oversample_genres=2", "oversample_fraction=0.5"))
    counts = read_json(os.path.join(run_dir, "oversampled_counts.json"))
    assert sum(counts.values()) == len(counts) + round(0.5 * len(counts))
    assert "train OS" in capsys.readouterr().out


def test_an_interrupted_run_resumes_where_it_stopped(tiny_config, monkeypatch):
    config = tiny_config("poster", "epochs=4")
    original = DevEvaluation.on_epoch_end

    def crash_after_second_epoch(self, epoch, logs=None):
        original(self, epoch, logs)
        if epoch == 1:
            raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(DevEvaluation, "on_epoch_end", crash_after_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(config)
    best_before = Path(best_checkpoint(config.run_dir) + ".index").read_bytes()
    assert not os.path.exists(os.path.join(config.run_dir, "final.json"))
    monkeypatch.setattr(DevEvaluation, "on_epoch_end", original)
    train(config)
    epochs = [row["epoch"] for row in read_json(os.path.join(config.run_dir, "training_state.json"))["history"]]
    assert epochs == [0, 1, 2, 3]  # epochs 0-1 were not trained again
    assert best_before and os.path.exists(best_checkpoint(config.run_dir) + ".index")


def test_without_caches_encoders_run_inside_and_conv5_fine_tunes(tiny_config, small_prepared):
    import tf_keras as keras

    from genre_tf.training import build_for_training, open_dataset, split_labels

    config = tiny_config("integrated",
                         "feature_cache=false", "model.fine_tune_text=false")
    features_dir = os.path.join(small_prepared, "features")
    cached_before = sorted(os.listdir(features_dir)) if os.path.exists(features_dir) else []
    run_dir = train(config)
    assert 0.0 <= read_json(os.path.join(run_dir, "final.json"))["best_dev_weighted_f1"] <= 1.0
    assert (sorted(os.listdir(features_dir)) if os.path.exists(features_dir) else []) == cached_before

    tuned = tiny_config("poster",
                        "poster.fine_tune_last_stage=true")
    prepared = open_dataset(tuned)
    model = build_for_training(tuned, prepared, split_labels(prepared, "train")["labels"], {})
    assert model.input_names == ["poster"]
    backbone = model.get_layer("poster_encoder").get_layer("efficientnet_lite0")
    stem, last = backbone.get_layer("conv_stem").kernel, backbone.get_layer("blocks_15_project_conv").kernel
    before = stem.numpy().copy(), last.numpy().copy()
    posters = np.random.default_rng(0).integers(0, 255, (16, 32, 32, 3)).astype("uint8")
    model.fit(posters, np.eye(4, dtype="float32")[np.arange(16) % 4], batch_size=8, epochs=1, verbose=0)
    assert np.array_equal(stem.numpy(), before[0]) and not np.array_equal(last.numpy(), before[1])
    assert isinstance(model.get_layer("poster_encoder"), keras.Model)


def test_resume_refuses_a_different_config(tiny_config):
    config = tiny_config("most_common")
    train(config)
    changed = tiny_config("most_common", "seed=5")
    with pytest.raises(ValueError, match="another config"):
        train(changed)


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
    ("model.dropout=1.5", "dropout must be in"), ("batch_size=1", "batch_size must be >= 2"),
    ("nonsense=1", "unknown option 'nonsense'"), ("text.pooling=max", "pooling must be"),
])
def test_bad_options_give_clear_errors(option, message, capsys):
    import train as train_script

    with pytest.raises(SystemExit):
        train_script.main([option])
    assert message in capsys.readouterr().err


def test_two_workers_on_localhost_train_one_model(tiny_config, small_prepared, tiny_hub_bert):
    from genre_tf.multiworker import run_workers

    config = tiny_config("text_frozen")
    encoder, preprocessor = tiny_hub_bert
    overrides = [f"data={small_prepared}", f"run_dir={config.run_dir}", "model.kind=text_frozen",
                 "model.text_units=[16, 8]", f"text.encoder={encoder}", f"text.preprocessor={preprocessor}",
                 "text.seq_length=128", "batch_size=8", "epochs=2", "learning_rate=0.001"]
    assert run_workers(overrides, workers=2, timeout=300) == [0, 0]
    final = read_json(os.path.join(config.run_dir, "final.json"))
    assert (final["replicas"], final["global_batch"]) == (2, 16)
    assert len(read_json(os.path.join(config.run_dir, "training_state.json"))["history"]) == 2
    assert os.path.exists(best_checkpoint(config.run_dir) + ".index")
