"""genre_tf.bench.table3: Table 3 has every row, and every figure is a measurement."""

import dataclasses
import os

import numpy as np
import pytest

import genre_tf  # noqa: F401
from genre_tf.bench.table3 import KINDS, table3, table3_markdown


def test_table3_has_floors_classic_rows_and_every_model(small_prepared, tiny_overrides, tmp_path):
    from sklearn.metrics import f1_score

    from genre_tf.data.dataset import split_plots, load_prepared, split_labels
    from genre_tf.evaluate.baselines import METRICS, score_probabilities, tfidf_logistic
    from genre_tf.files import read_json

    table = table3(small_prepared, [*tiny_overrides, "epochs=1", "oversample_genres=2", "integrated:model.fusion=late"],
                   runs_root=str(tmp_path))
    deep = [row for row in table["rows"] if row["kind"] == "deep"]
    assert [(row["model"], row["oversampled"]) for row in deep] == [
        (kind, oversample) for kind in KINDS for oversample in (False, True)]
    test_movies = len(load_prepared(small_prepared).split["test"])
    assert table["dataset"] == "small-test" and table["test_movies"] == test_movies > 0
    assert [row["model"] for row in table["floors"]] == [
        "floor: every genre", "floor: most common genre", "floor: best constant set (dev)"]
    # the floors are what scikit-learn computes for constant predictions on the same test split
    labels = split_labels(load_prepared(small_prepared), "test")["labels"]
    everything = table["floors"][0]["test"]["tuned"]
    for average in ("weighted", "macro", "micro", "samples"):
        expected = f1_score(labels, np.ones_like(labels), average=average, zero_division=0)
        assert everything[f"{average}_f1"] == pytest.approx(expected, abs=1e-9)
    best = {m: max(floor["test"]["tuned"][m] for floor in table["floors"]) for m in METRICS}
    for row in table["rows"]:
        assert row["lift"] == pytest.approx({m: row["test"]["tuned"][m] - best[m] for m in METRICS})
        assert all(0.0 <= row["test"][key][m] <= 1.0 for key in ("at_0.5", "tuned") for m in METRICS)
    # the classic plot row is TF-IDF + logistic regression fitted on this split's train plots, in split order
    prepared = load_prepared(small_prepared)
    plots = {split: split_plots(prepared, split) for split in ("train", "dev", "test")}
    truth = {split: split_labels(prepared, split)["labels"] for split in ("train", "dev", "test")}
    dev, test = tfidf_logistic(plots["train"], truth["train"], plots["dev"], truth["dev"], plots["test"])
    tfidf = next(row for row in table["rows"] if row["model"].startswith("classic: TF-IDF"))
    assert tfidf["test"] == score_probabilities("x", truth["dev"], dev, truth["test"], test)["test"]
    assert tfidf["test"]["tuned"] != table["floors"][0]["test"]["tuned"]
    for row in deep:
        assert row["seconds"] > 0 or row["model"] == "most_common"  # it trains nothing: 0.0 s after rounding
        assert sorted(row["per_genre_f1_tuned"]) == sorted(table["genres"])
    baseline = [row for row in deep if row["model"] == "most_common"]
    assert baseline[0]["test"]["at_0.5"] == baseline[1]["test"]["at_0.5"]  # oversampling cannot move it
    markdown = table3_markdown(table)
    # intervals and scores (5 models and the average), per genre (5 models), calibration (5 models and the average)
    assert markdown.count("| no |") == 23 and markdown.count("| yes |") == 23
    # the integrated row is late fusion over this table's own text_frozen and poster runs of the same setting
    integrated = read_json(os.path.join(tmp_path, "integrated-os", "config.json"))["model"]
    assert (integrated["text_run"], integrated["poster_run"]) == (
        os.path.join(tmp_path, "text_frozen-os"), os.path.join(tmp_path, "poster-os"))
    # the untuned average reference: 0.7 x text_frozen + 0.3 x poster probabilities, tuned on dev like any row
    text, poster = (np.load(os.path.join(tmp_path, name, "predictions.npz")) for name in ("text_frozen", "poster"))
    mixed = {s: 0.7 * text[f"{s}_probabilities"] + 0.3 * poster[f"{s}_probabilities"] for s in ("dev", "test")}
    average = next(row for row in table["rows"] if row["model"].startswith("average") and not row["oversampled"])
    expected = score_probabilities("x", text["dev_labels"], mixed["dev"], text["test_labels"], mixed["test"])
    assert average["test"]["tuned"] == pytest.approx(expected["test"]["tuned"])
    best = max(table["rows"], key=lambda row: row["test"]["tuned"]["weighted_f1"])
    assert (table["best"]["model"], table["best"]["oversampled"]) == (best["model"], best.get("oversampled"))
    for row in table["rows"]:  # each row: an interval around its score, a paired difference with the best
        interval = row["intervals"]["weighted_f1"]
        assert interval["low"] <= row["test"]["tuned"]["weighted_f1"] == pytest.approx(interval["value"])
        assert row["vs_floor"]["weighted_f1"]["value"] == pytest.approx(row["lift"]["weighted_f1"])
        if row is not best:
            gap = row["test"]["tuned"]["weighted_f1"] - best["test"]["tuned"]["weighted_f1"]
            assert row["vs_best"]["weighted_f1"]["value"] == pytest.approx(gap)
    assert "| best / best |" in markdown and "(95% CI)" in markdown
    assert "| floor: every genre | - |" in markdown and "| integrated | 0.429 | 0.453 |" in markdown
    assert "nan" not in markdown and "TODO" not in markdown and "small-test" in markdown


def test_table3_reuses_finished_rows_with_the_same_options(small_prepared, tiny_overrides, tmp_path, capsys):
    options = [*tiny_overrides, "oversample_genres=2"]
    first = table3(small_prepared, options, runs_root=str(tmp_path), kinds=["most_common"])
    assert "reusing" not in capsys.readouterr().out
    again = table3(small_prepared, options, runs_root=str(tmp_path), kinds=["most_common"])
    assert capsys.readouterr().out.count("reusing the finished run") == 2
    assert [row["test"] for row in again["rows"]] == [row["test"] for row in first["rows"]]


def test_kind_prefixed_options_apply_to_their_model_only():
    from genre_tf.bench.table3 import for_kind

    options = ["epochs=3", "text_finetuned:learning_rate=1e-5", "poster:epochs=9", "text.encoder=https://tfhub.dev/x"]
    assert for_kind(options, "poster") == ["epochs=3", "epochs=9", "text.encoder=https://tfhub.dev/x"]
    assert for_kind(options, "text_finetuned") == ["epochs=3", "learning_rate=1e-5", "text.encoder=https://tfhub.dev/x"]
    with pytest.raises(ValueError, match="'txt' is not a model kind"):
        for_kind(["txt:epochs=1"], "poster")


def test_seeds_fold_into_one_row_with_their_mean_and_range(small_prepared, tiny_overrides, tmp_path):
    from genre_tf.bench.table3 import seed_counts

    assert seed_counts(["3", "text_finetuned=1"]) == {**dict.fromkeys(KINDS, 3), "text_finetuned": 1}
    assert seed_counts(["3", "text_finetuned=0"])["text_finetuned"] == 0  # a kind left out of the table
    with pytest.raises(ValueError, match="every model out"):
        seed_counts([f"{kind}=0" for kind in KINDS])
    for bad in ("0", "poster=x", "txt=2"):
        with pytest.raises(ValueError, match="--seeds"):
            seed_counts([bad])
    table = table3(small_prepared, [*tiny_overrides, "epochs=2", "oversample_genres=2"], runs_root=str(tmp_path),
                   kinds=["text_frozen"], seeds={"text_frozen": 2})
    assert sorted(os.listdir(tmp_path)) == [
        "text_frozen", "text_frozen-os", "text_frozen-os-seed1", "text_frozen-seed1"]
    text = next(row for row in table["rows"] if row["model"] == "text_frozen" and not row["oversampled"])
    scores = [seed["test"]["tuned"]["weighted_f1"] for seed in text["seed_rows"]]
    assert [seed["seed"] for seed in text["seed_rows"]] == [0, 1]
    probabilities = [np.load(os.path.join(seed["run_dir"], "predictions.npz"))["test_probabilities"]
                     for seed in text["seed_rows"]]
    assert np.abs(probabilities[0] - probabilities[1]).max() > 1e-4  # two trainings, not one run twice
    assert text["test"]["tuned"]["weighted_f1"] == pytest.approx(np.mean(scores))
    assert text["spread"]["weighted_f1"] == pytest.approx(
        {"mean": np.mean(scores), "sd": np.std(scores, ddof=1), "min": min(scores), "max": max(scores), "seeds": 2})
    assert f"2 seeds, {min(scores):.3f}-{max(scores):.3f}" in table3_markdown(table)


def test_scale_steps_measure_beam_features_per_worker_count_into_empty_stores_and_growth_is_measured(tmp_path):
    from genre_tf.bench import scale

    config = scale.ScaleConfig(sizes=(10, 100), root=str(tmp_path), config="configs/fast.yaml", workers=(1, 2))
    steps = scale.step_commands(config, 10, str(tmp_path / "10"))
    assert list(steps) == ["generate", "prepare", "features_1_worker", "features_2_workers", "train_epoch", "evaluate",
                           "export", "batch_predict"]
    one, two = steps["features_1_worker"], steps["features_2_workers"]
    assert "--direct_num_workers=1" in one[0] and "--direct_num_workers=2" in two[0]
    assert (one[2], two[2]) == (str(tmp_path / "10" / "cache-1"), str(tmp_path / "10" / "cache-2"))
    for name in ("train_epoch", "evaluate", "export", "batch_predict"):  # what the 2-worker job stored
        assert steps[name][2] == two[2]
    preset = os.path.join(scale.ROOT, "configs", "fast.yaml")
    for name in ("features_1_worker", "train_epoch"):  # the same encoders, at the benchmark's sizes
        command = steps[name][0]
        assert command[command.index("--config") + 1] == preset
        assert "text.seq_length=64" in command and "poster.image_size=96" in command
    assert "--config" not in scale.model_options(dataclasses.replace(config, config=""))  # the default encoders
    # growth from the smallest size to the largest, measured: 10 -> 100 movies
    point = lambda movies, seconds, peak: {"movies": movies, "disk_mb": 1.0, "steps": {  # noqa: E731
        "train_epoch": {"seconds": seconds, "peak_rss_mb": peak, "movies_per_second": movies / seconds}}}
    report = {"points": [point(10, 2.0, 800.0), point(100, 10.0, 880.0)]}
    report["growth"] = scale.growth(report["points"])
    assert report["growth"]["train_epoch"] == {"ms_per_movie": [200.0, 100.0], "peak_ratio": 1.1,
                                               "kb_per_added_movie": round(80 * 1024 / 90, 2),
                                               "ms_per_movie_ratio": 0.5}
    table = scale.scale_markdown(report)
    assert "| train_epoch | 200.00 | 100.00 | 0.50 | 1.10 | 910.2 |" in table and "projected" not in table


def test_in_turns_needs_speed_and_two_runs(capsys):
    from genre_tf.bench.table3 import main

    for argv in (["speed", "--serving-only", "--in-turns", "--serve-run", "a"], ["table3", "--in-turns"]):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 2 and "--in-turns times two or more runs" in capsys.readouterr().err
