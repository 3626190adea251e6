"""evaluate.py: metrics by hand, thresholds from dev only, every promised file, clear refusals."""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import f1_score

import genre_tf  # noqa: F401
from genre_tf.data.dataset import split_posters
from genre_tf.evaluate.evaluation import REPORT_FILES, compute_metrics, evaluate_run, predict_split, restore_run
from genre_tf.evaluate.metrics import tune_thresholds
from genre_tf.files import read_json
from genre_tf.train.training import train

from conftest import write_mmimdb


def hand_sets():
    dev = {"ids": ["d0", "d1", "d2", "d3"], "labels": np.array([[1, 0], [1, 1], [0, 0], [0, 1]]),
           "probabilities": np.array([[0.9, 0.6], [0.3, 0.7], [0.2, 0.1], [0.1, 0.8]])}
    test = {"ids": ["t0", "t1", "t2"], "labels": np.array([[1, 1], [0, 1], [1, 0]]),
            "probabilities": np.array([[0.25, 0.65], [0.22, 0.9], [0.1, 0.2]])}
    movies = {"t0": {"year": 1995}, "t1": {"year": 2001}, "t2": {"year": None},
              "d0": {"year": 1990}, "d1": {"year": 1991}, "d2": {"year": 1992}, "d3": {"year": 1993}}
    return dev, test, movies


def test_movie_details_hold_the_asked_movies_title_year_and_plot_excerpt():
    from types import SimpleNamespace

    from genre_tf.evaluate.evaluation import movie_details
    records = [{"movie_id": "a", "title": "A", "year": 1999, "plot": " ".join(f"w{i}" for i in range(45))},
               {"movie_id": "b", "title": "B", "plot": "short  plot"}, {"movie_id": "c", "plot": "not asked"}]
    details = movie_details(SimpleNamespace(movies=lambda: iter(records)), ["b", "a"])
    assert details == {"a": {"movie_id": "a", "title": "A", "year": 1999,
                             "plot_excerpt": " ".join(f"w{i}" for i in range(40)) + " ..."},
                       "b": {"movie_id": "b", "title": "B", "year": None, "plot_excerpt": "short plot"}}


def test_metrics_by_hand_with_thresholds_tuned_on_dev_only():
    dev, test, movies = hand_sets()
    metrics = compute_metrics(["A", "B"], dev, test, movies)
    # dev: A is separated by any threshold in (0.2, 0.3], B by (0.6, 0.7]: the first candidates win
    assert metrics["thresholds"] == [0.21, 0.61] and metrics["thresholds_from"] == "dev"
    assert metrics["thresholds"] != tune_thresholds(test["labels"], test["probabilities"]).tolist()
    tuned, half = metrics["splits"]["test"]["tuned"], metrics["splits"]["test"]["at_0.5"]
    # test, tuned: A predicted [1, 1, 0] -> F1 0.5; B predicted [1, 1, 0] -> F1 1; supports 2 and 2
    assert tuned["weighted_f1"] == pytest.approx(0.75) and tuned["macro_f1"] == pytest.approx(0.75)
    assert tuned["micro_f1"] == pytest.approx(6 / 8)
    assert half["weighted_f1"] == pytest.approx(0.5)  # A predicts nothing at 0.5
    predicted = (test["probabilities"] >= np.array([0.21, 0.61])).astype(int)
    assert tuned["weighted_f1"] == pytest.approx(f1_score(test["labels"], predicted, average="weighted"))
    assert tuned["samples_f1"] == pytest.approx(f1_score(test["labels"], predicted, average="samples"))
    combos = metrics["splits"]["test"]["distinct_combinations"]
    assert combos == {"truth": 3, "predicted_at_0.5": 2, "predicted_tuned": 2}
    years = {row["bucket"]: row["movies"] for row in metrics["splits"]["test"]["by_year"]}
    assert years == {"1990s": 1, "2000s": 1, "unknown": 1}
    genre_a = metrics["splits"]["test"]["per_genre"][0]
    assert (genre_a["precision"], genre_a["recall"], genre_a["support"]) == (0.5, 0.5, 2)
    assert genre_a["frequency_x_f1"] == pytest.approx(2 / 3 * 0.5)


@pytest.fixture()
def trained_run(tiny_config):
    return train(tiny_config("poster", "epochs=3"))


def test_evaluate_writes_every_file_and_tunes_on_dev(trained_run, monkeypatch, tmp_path):
    metrics = evaluate_run(trained_run)
    for name in REPORT_FILES:
        path = os.path.join(trained_run, name)
        assert os.path.getsize(path) > 0
        if name.endswith(".png"):
            with Image.open(path) as image:
                image.verify()
                assert image.format == "PNG" and min(image.size) > 100
    run = restore_run(trained_run)
    dev = predict_split(run, "dev")
    assert metrics["thresholds"] == tune_thresholds(dev["labels"], dev["probabilities"]).tolist()
    # one source: the thresholds the export serves, tuned when training ended
    assert metrics["thresholds"] == read_json(os.path.join(trained_run, "serving", "serving.json"))["thresholds"]
    assert read_json(os.path.join(trained_run, "metrics.json"))["splits"]["test"]["movies"] == len(
        run.prepared.split["test"])
    report = Path(os.path.join(trained_run, "report.md")).read_text()
    assert "tuned on the **dev** split" in report and "![co-occurrence](cooccurrence.png)" in report
    # which movies test holds: the split's method and test's years beside the catalogue's (small_prepared: 1990-2019)
    years = metrics["dataset"]["split"]["years"]
    assert metrics["dataset"]["split"]["method"] == "random" and years["catalogue"]["first"] == 1990
    assert read_json(os.path.join(trained_run, "dataset.json"))["split_method"]["method"] == "random"  # the run's
    assert (f"Split: random (stratified, seed 0). Test's years: median {years['test']['median']:.0f}, 0% released "
            f"before 1990, {years['test']['from_2000']:.0%} from 2000 on; the catalogue's: median "
            f"{years['catalogue']['median']:.0f}") in report
    assert len(metrics["examples"]) == 6 and metrics["examples"] == evaluate_run(trained_run)["examples"]
    plots = {movie["movie_id"]: movie["plot"].split() for movie in run.prepared.movies()}
    for example in metrics["examples"]:  # the first 40 words, and " ..." when there are more
        words = plots[example["movie_id"]]
        assert example["plot_excerpt"] == " ".join(words[:40]) + (" ..." if len(words) > 40 else "")
    # intervals: around the score itself, from a bootstrap of this test split, in metrics.json and the report
    test = metrics["splits"]["test"]
    for key in ("at_0.5", "tuned"):
        for name, interval in test["intervals"][key].items():
            assert interval["value"] == pytest.approx(test[key][name])
            assert interval["low"] <= interval["value"] <= interval["high"]
    for genre in test["per_genre"]:
        assert genre["f1_interval"][0] <= genre["f1"] <= genre["f1_interval"][1]
    assert metrics["intervals_method"]["resamples"] >= 1000
    interval = test["intervals"]["tuned"]["weighted_f1"]
    assert 0 < interval["low"] < interval["high"] < 1  # 25 test movies: a wide interval
    assert f"{interval['value']:.3f} ({interval['low']:.3f}-{interval['high']:.3f})" in report
    assert "95% percentile bootstrap interval" in report and "F1 (95% CI)" in report
    stored = np.load(os.path.join(trained_run, "predictions.npz"))
    test_split = predict_split(run, "test")
    np.testing.assert_allclose(stored["test_probabilities"], test_split["probabilities"], atol=1e-6)
    assert stored["test_ids"].tolist() == list(test_split["ids"]) and stored["dev_labels"].shape == dev["labels"].shape
    assert os.listdir(os.path.join(trained_run, "logs", "evaluation"))
    # calibration: the scores of these very test probabilities, with intervals, in metrics.json and the report
    from genre_tf.evaluate.calibration import calibration_intervals

    expected = calibration_intervals(test_split["labels"], stored["test_probabilities"])
    for name in ("ece", "brier", "log_loss"):
        stored_score = test["calibration"][name]
        assert stored_score["value"] == pytest.approx(expected[name]["value"], abs=1e-6)
        assert stored_score["low"] <= stored_score["value"] <= stored_score["high"]
        assert f"{stored_score['value']:.4f} ({stored_score['low']:.4f}-{stored_score['high']:.4f})" in report
    assert len(test["calibration"]["ece_per_genre"]) == len(run.prepared.genres)
    assert "![reliability diagram](reliability.png)" in report and "equal-mass bins" in report
    # the projector: one point per test movie, placed by the head's last hidden layer (for the poster model, the
    # poster features themselves), with its metadata row and its poster in the sprite
    folder = os.path.join(trained_run, "logs", "projector")
    rows = Path(os.path.join(folder, "metadata.tsv")).read_text().splitlines()
    assert rows[0] == "title\tyear\ttrue genres\tpredicted genres" and len(rows) == len(test_split["ids"]) + 1
    assert "projector_config.pbtxt" in os.listdir(folder)
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(folder))  # else TensorBoard skips it
    import tensorflow as tf
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(folder))
    vectors = reader.get_tensor("embedding/.ATTRIBUTES/VARIABLE_VALUE")
    ids, features = run.caches["poster_features"]
    row_of = {movie_id: index for index, movie_id in enumerate(ids)}
    np.testing.assert_allclose(vectors, features[[row_of[i] for i in test_split["ids"]]], atol=1e-6)
    with Image.open(os.path.join(folder, "sprite.png")) as sprite:
        side = int(np.ceil(np.sqrt(len(rows) - 1))) * 48
        assert sprite.size == (side, side)
        full_sprite = np.asarray(sprite.convert("RGB"))
    # a larger test split shows PROJECTOR_MOVIES of its movies drawn at random: the same points, rows and thumbnails
    import dataclasses

    from genre_tf.evaluate import projector
    monkeypatch.setattr(projector, "PROJECTOR_MOVIES", 5)
    chosen = projector.projected_rows(len(test_split["ids"]), 5)
    assert len(chosen) == 5 and chosen.tolist() != list(range(5)) and (np.diff(chosen) > 0).all()
    capped = projector.write_projector(dataclasses.replace(run, run_dir=str(tmp_path)), test_split,
                                       metrics["thresholds"], {i: {"title": i} for i in test_split["ids"]})
    assert [row.split("\t")[0] for row in Path(capped, "metadata.tsv").read_text().splitlines()[1:]] == [
        test_split["ids"][row] for row in chosen]
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(capped))
    np.testing.assert_allclose(reader.get_tensor("embedding/.ATTRIBUTES/VARIABLE_VALUE"), vectors[chosen])
    with Image.open(os.path.join(capped, "sprite.png")) as sprite:
        small = np.asarray(sprite.convert("RGB"))
    columns = int(np.ceil(np.sqrt(len(rows) - 1)))
    assert small.shape == (3 * 48, 3 * 48, 3) and (small[2 * 48:, 2 * 48:] == 255).all()  # 5 of a 3 x 3 grid

    def cell(index, columns):
        top, left = index // columns * 48, index % columns * 48
        return np.s_[top:top + 48, left:left + 48]

    for index, row in enumerate(chosen):
        np.testing.assert_array_equal(small[cell(index, 3)], full_sprite[cell(row, columns)])
    thumbnails = split_posters(run.prepared, "test", 48)  # the sprite's cells are the test posters, in split order
    for row in range(len(thumbnails)):
        np.testing.assert_array_equal(full_sprite[cell(row, columns)], np.clip(np.round(thumbnails[row]), 0, 255))


def test_the_sprite_places_the_chosen_rows_of_every_batch_in_order():
    from genre_tf.evaluate.projector import rows_of_batches, sprite
    images = np.arange(7)[:, None, None, None] * np.ones((7, 2, 2, 3)) * 10.2   # image i is filled with 10.2 i
    batches = [images[:3], images[3:6], images[6:]]
    picked = list(rows_of_batches(batches, np.array([1, 2, 4, 6])))
    assert [len(batch) for batch in picked] == [2, 1, 1]
    canvas = sprite(iter(picked), 4)
    assert canvas.shape == (4, 4, 4) and (canvas[..., 3] == 255).all()  # 2 x 2 cells of 2 pixels, opaque
    assert [canvas[r, c, 0] for r, c in ((0, 0), (0, 2), (2, 0), (2, 2))] == [10, 20, 41, 61]  # rounded
    assert sprite(iter([images]), 3)[2:, 2:, :3].tolist() == np.full((2, 2, 3), 255).tolist()  # 3 of 4 cells: white


def test_table_across_runs_and_refusal_of_another_split(trained_run, tiny_config, capsys):
    import evaluate

    other = train(tiny_config("most_common"))
    assert evaluate.main([trained_run, other, "--table"]) == 0
    table = capsys.readouterr().out
    assert "| poster (poster) | no |" in table and "| most_common (most_common) | no |" in table
    assert "| best / best |" in table and "paired" in table and "95%" in table
    ece = read_json(os.path.join(trained_run, "metrics.json"))["splits"]["test"]["calibration"]["ece"]
    assert f"| poster (poster) | no | 1 | {ece['value']:.4f} (" in table and "| ECE (95% CI) |" in table
    # a second seed of the poster model is folded into the poster row: the mean of the two, with their range
    seed_1 = train(tiny_config("poster", "epochs=3", "seed=1", f"run_dir={trained_run}-seed1"))
    scores = [evaluate_run(run)["splits"]["test"]["tuned"]["weighted_f1"] for run in (trained_run, seed_1)]
    assert evaluate.main([trained_run, seed_1, other, "--table"]) == 0
    table = capsys.readouterr().out
    row = next(line for line in table.splitlines() if line.startswith("| poster (poster, poster-seed1)"))
    assert f"{np.mean(scores):.3f} (" in row and f"2 seeds, {min(scores):.3f}-{max(scores):.3f}" in row
    moved = trained_run + "-elsewhere"
    shutil.copytree(trained_run, moved)
    metrics = read_json(os.path.join(moved, "metrics.json"))
    metrics["split_digest"] = "another split"
    Path(os.path.join(moved, "metrics.json")).write_text(json.dumps(metrics))
    assert evaluate.main([trained_run, moved, "--table"]) == 1
    assert "do not compare" in capsys.readouterr().err
    del metrics["floors"]
    metrics["split_digest"] = read_json(os.path.join(trained_run, "metrics.json"))["split_digest"]
    Path(os.path.join(moved, "metrics.json")).write_text(json.dumps(metrics))
    assert evaluate.main([trained_run, moved, "--table"]) == 1
    assert "evaluated by an older genre_tf (no floors or intervals in metrics.json)" in capsys.readouterr().err
    with open(os.path.join(moved, "metrics.json"), "w") as handle:
        handle.write('{"splits": ')
    assert evaluate.main([trained_run, moved, "--table"]) == 1
    assert f"{os.path.join(moved, 'metrics.json')} is damaged" in capsys.readouterr().err


def test_bad_runs_give_clear_errors_and_no_partial_report(trained_run, tiny_config, tmp_path):
    no_checkpoint = str(tmp_path / "no-checkpoint")
    shutil.copytree(trained_run, no_checkpoint)
    shutil.rmtree(os.path.join(no_checkpoint, "checkpoints"))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        evaluate_run(no_checkpoint)

    other_genres = str(tmp_path / "other-genres")
    shutil.copytree(trained_run, other_genres)
    with open(os.path.join(other_genres, "genres.txt"), "w") as handle:
        handle.write("Drama\nWestern\nMusical\nHorror\n")
    with pytest.raises(ValueError, match=r"its genres are \['Comedy'.* the run was trained on \['Drama', 'Western'"):
        evaluate_run(other_genres)
    for folder in (no_checkpoint, other_genres):
        assert not any(os.path.exists(os.path.join(folder, name)) for name in REPORT_FILES)


def test_a_damaged_or_empty_config_is_named_not_a_traceback(trained_run, tmp_path, capsys):
    import evaluate

    config = Path(trained_run, "config.json").read_text()
    for name, text, message in (("truncated", config[:len(config) // 2], "is damaged (not JSON"),
                                ("empty", "", "is damaged (not JSON"), ("no-options", "{}\n", "is empty"),
                                ("bad-option", config.replace('"epochs": 3', '"epochs": "three"'),
                                 "epochs must be int")):
        run_dir = str(tmp_path / name)
        shutil.copytree(trained_run, run_dir)
        Path(run_dir, "config.json").write_text(text)
        assert evaluate.main([run_dir]) == 1
        error = capsys.readouterr().err
        assert error.startswith(f"error: {os.path.join(run_dir, 'config.json')}") and message in error, error
        assert "Traceback" not in error and len(error.splitlines()) == 1
        assert not any(os.path.exists(os.path.join(run_dir, report)) for report in REPORT_FILES)


def test_an_empty_test_split_is_refused(tiny_config, tmp_path):
    from genre_tf.config import PrepareConfig, ValidationRules
    from genre_tf.data.prepare import prepare

    raw = write_mmimdb(str(tmp_path / "raw"), count=50, seed=3)
    ids = sorted(name[:-5] for name in os.listdir(raw) if name.endswith(".json"))
    Path(os.path.join(raw, "split.json")).write_text(json.dumps({"train": ids[:40], "dev": ids[40:], "test": []}))
    prepare(PrepareConfig(catalogue=raw, out=str(tmp_path / "prepared"), name="no-test",
                          rules=ValidationRules(image_size=32), num_genres=4), progress=False)
    run_dir = train(tiny_config("most_common", f"data={tmp_path / 'prepared'}"))
    with pytest.raises(ValueError, match="test split .* is empty"):
        evaluate_run(run_dir)
    assert not os.path.exists(os.path.join(run_dir, "report.md"))


def test_runs_on_two_preparations_of_one_catalogue_compare_only_with_the_same_movies_and_labels():
    from genre_tf.evaluate.evaluation import check_same_split

    def run(name, fingerprint, split="s1", genres=("Drama", "Comedy")):
        return {"run_dir": name, "dataset": {"name": "movies", "fingerprint": fingerprint}, "split_digest": split,
                "genres": list(genres)}

    labels = np.eye(2, dtype=np.float32)[[0, 1, 1]]
    predicted = {f"{split}_{key}": value for split in ("dev", "test")
                 for key, value in (("ids", np.array(["a", "b", "c"])), ("labels", labels))}
    relabelled = dict(predicted, test_labels=labels[:, ::-1])
    at_260, at_224 = run("default", "f260"), run("fast", "f224")  # posters prepared at two sizes, same catalogue
    check_same_split([at_260, at_224], [predicted, dict(predicted)])
    for other, other_predictions in ((at_224, relabelled), (run("fast", "f224", split="s2"), predicted),
                                     (run("fast", "f224", genres=("Drama", "Horror")), predicted)):
        with pytest.raises(ValueError, match="do not compare"):
            check_same_split([at_260, other], [predicted, other_predictions])
    with pytest.raises(ValueError, match="do not compare"):  # without predictions, the fingerprint decides
        check_same_split([at_260, at_224])
