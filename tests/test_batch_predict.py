"""genre_tf.serve.batch_predict: Beam RunInference on the DirectRunner gives predict's rows and sets bad rows aside."""
import json
import os
import re

import numpy as np
import pytest

import genre_tf  # noqa: F401
from genre_tf.serve.batch_predict import main
from genre_tf.serve.predict import load_serving, predict, read_csv_movies
from genre_tf.serve.serving import export_run
from genre_tf.train.training import train

from conftest import image_bytes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOOD = [("m1", "a ghost in the dark night", (200, 30, 30)), ("m2", "laugh with the family", (30, 200, 30)),
        ("m3", "the hero will fight in the city", (30, 30, 200)), ("m4", "a love story", None),
        ("m5", "", (90, 90, 90))]  # m4: no poster (plot alone); m5: no plot (poster alone)


@pytest.fixture(scope="module")
def tiny_export(make_tiny_config, tmp_path_factory):
    """An integrated model (frozen tiny BERT + Lite0 at 32 px) trained one epoch and exported."""
    root = tmp_path_factory.mktemp("batch_export")
    run_dir = train(make_tiny_config("integrated", "epochs=1", run_dir=root / "run"))
    return export_run(run_dir, str(root / "models"))


def write_catalogue(folder) -> tuple[str, str]:
    """A predict CSV of GOOD rows and three bad ones; returns it and a CSV of the good rows alone."""
    os.makedirs(folder / "posters")
    lines, good_lines = ["id,plot,poster"], ["id,plot,poster"]
    for movie, plot, colour in GOOD:
        poster = f"posters/{movie}.png" if colour else ""
        if colour:
            (folder / poster).write_bytes(image_bytes((40, 56), colour, fmt="PNG"))
        lines.append(f"{movie},{plot},{poster}")
        good_lines.append(lines[-1])
    (folder / "posters" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    lines += ["broken-poster,a ghost in the night,posters/broken.jpg", "missing-poster,a love story,posters/none.jpg",
              "short-row"]
    (folder / "movies.csv").write_text("\n".join(lines) + "\n")
    (folder / "good.csv").write_text("\n".join(good_lines) + "\n")
    return str(folder / "movies.csv"), str(folder / "good.csv")


def read_lines(path: str) -> dict[str, dict]:
    with open(path, encoding="utf-8") as handle:
        return {row["movie"]: row for row in map(json.loads, handle)}


@pytest.mark.parametrize("beam_args", [[], ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]],
                         ids=["in_process", "two_worker_processes"])
def test_batch_predict_equals_predict_and_sets_bad_rows_aside(tiny_export, tmp_path, monkeypatch, beam_args, capfd):
    monkeypatch.setenv("PYTHONPATH", ROOT)  # worker processes import genre_tf to unpickle the model handler
    monkeypatch.setattr("genre_tf.data.beam_features.PROGRESS_SECONDS", 0)  # a progress line every batch
    csv_path, good_csv = write_catalogue(tmp_path)
    out = tmp_path / "out"
    assert main(["--model", tiny_export, "--input", csv_path, "--output", str(out), "--digits", "-1",
                 "--batch-size", "2", *beam_args]) == 0
    dead = read_lines(out / "dead_letters.jsonl")
    assert sorted(dead) == ["broken-poster", "missing-poster", "short-row"]
    assert "posters/broken.jpg could not be decoded" in dead["broken-poster"]["reason"]
    assert "poster file not found" in dead["missing-poster"]["reason"]
    assert "fewer fields than the header" in dead["short-row"]["reason"]
    assert dead["short-row"]["source"] == f"{csv_path}:9"
    if not beam_args:  # long work shows progress: each batch of 2 counted, up to the 6 movies the model scored
        progress = re.findall(r"batch_predict: (\d+) movies scored by worker \d+ \(", capfd.readouterr().err)
        assert progress == ["2", "4", "6"]  # the 5 good ones and broken-poster (scored, then set aside by to_row)
    rows = read_lines(out / "predictions.jsonl")
    # predict on the same rows, in its own batches of 64: the same genres and inputs, and (rounded as predict
    # rounds) the same probabilities
    expected = {row["movie"]: row for row in predict(tiny_export, read_csv_movies(good_csv))}
    assert sorted(rows) == sorted(expected) == [m for m, _, _ in GOOD]
    assert {m: r["inputs_used"] for m, r in rows.items()} == {"m1": "plot+poster", "m2": "plot+poster",
                                                              "m3": "plot+poster", "m4": "plot", "m5": "poster"}
    for movie, row in rows.items():
        assert (row["genres"], row["inputs_used"]) == (expected[movie]["genres"], expected[movie]["inputs_used"])
        genres = list(expected[movie]["probabilities"])
        rounded = np.float32([row["probabilities"][g] for g in genres]).round(4).tolist()
        assert np.abs(np.subtract(rounded, [expected[movie]["probabilities"][g] for g in genres])).max() <= 1e-6
    # unrounded: serving_default called once on all good movies, outside Beam
    movies = list(read_csv_movies(good_csv))
    direct = load_serving(tiny_export).score(movies)["probabilities"].numpy()
    ours = np.array([[rows[m["label"]]["probabilities"][g] for g in genres] for m in movies])
    assert np.abs(ours - direct).max() <= 1e-6


def test_batch_predict_refuses_a_csv_without_plots_in_one_line(tiny_export, tmp_path, capsys):
    (tmp_path / "noplot.csv").write_text("id,overview\nx,some text\n")
    (tmp_path / "empty.csv").write_text("id,plot,poster\n")
    for name, message in (("noplot.csv", "needs a 'plot' column"), ("empty.csv", "has no movies")):
        assert main(["--model", tiny_export, "--input", str(tmp_path / name), "--output", str(tmp_path / "o")]) == 1
        assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert main(["--model", str(tmp_path), "--input", str(tmp_path / "noplot.csv"), "--output", "o"]) == 1
    assert "holds no exported version" in capsys.readouterr().err


@pytest.fixture(scope="module")
def text_export(make_tiny_config, tmp_path_factory):
    """A text_frozen model (tiny BERT) trained one epoch and exported: it takes plots only."""
    root = tmp_path_factory.mktemp("batch_text_export")
    run_dir = train(make_tiny_config("text_frozen", "epochs=1", run_dir=root / "run"))
    return export_run(run_dir, str(root / "models"))


def test_a_text_model_judges_rows_by_their_plot_alone(text_export, tmp_path):
    csv_path, _ = write_catalogue(tmp_path)
    out = tmp_path / "out"
    assert main(["--model", text_export, "--input", csv_path, "--output", str(out)]) == 0
    rows, dead = read_lines(out / "predictions.jsonl"), read_lines(out / "dead_letters.jsonl")
    # posters that are broken or missing do not matter to a model that never reads posters
    assert sorted(rows) == ["broken-poster", "m1", "m2", "m3", "m4", "missing-poster"]
    assert {row["inputs_used"] for row in rows.values()} == {"plot"}
    assert {movie: row["reason"] for movie, row in dead.items()} == {
        "m5": "no plot (the only input this model takes)",
        "short-row": "the row has fewer fields than the header (no plot)"}
    expected = {row["movie"]: row for row in predict(text_export, read_csv_movies(csv_path)) if row["movie"] in rows}
    assert {m: r["genres"] for m, r in rows.items()} == {m: r["genres"] for m, r in expected.items()}


def test_every_row_is_scored_or_dead_lettered_once_whatever_its_size_or_quoting(text_export, tmp_path, capsys):
    from genre_tf.serve.predict import main as predict_main

    lines = ["id,plot,poster", "m1,a ghost in the dark night,", "m2," + "x" * 10_000_000 + ",",
             'm3,"a ghost story with a quote never closed,', "m4,the hero will fight in the city,",
             'm5,"a love story, told twice",', 'm6,"a plot ""quoted"" inside",']
    (tmp_path / "movies.csv").write_text("\n".join(lines) + "\n")
    csv_path, out = str(tmp_path / "movies.csv"), tmp_path / "out"
    assert main(["--model", text_export, "--input", csv_path, "--output", str(out)]) == 0
    assert sorted(read_lines(out / "predictions.jsonl")) == ["m1", "m4", "m5", "m6"]
    dead = {row["source"]: row["reason"] for row in read_lines(out / "dead_letters.jsonl").values()}
    assert dead == {f"{csv_path}:3": "the row is longer than 1048576 bytes (the CSV reader's limit)",
                    f"{csv_path}:4": "a quote inside a quoted field is followed by 'a', not by a comma or the line's "
                                     "end (an unterminated quote, or a quote not doubled)"}
    assert sorted(os.listdir(out)) == ["dead_letters.jsonl", "predictions.jsonl"]  # no beam-temp-* left
    capsys.readouterr()
    assert predict_main(["--model", text_export, "--csv", csv_path, "--json"]) == 1
    captured = capsys.readouterr()
    assert [json.loads(line)["movie"] for line in captured.out.splitlines()] == ["m1", "m4", "m5", "m6"]
    assert f"{csv_path}:3: the row is longer than" in captured.err and f"{csv_path}:4: a quote inside" in captured.err
    assert captured.err.splitlines()[-1].startswith(f"error: 2 row(s) of {csv_path} could not be read")


def test_an_unusable_output_is_refused_before_the_pipeline_and_a_failed_rerun_keeps_the_last_run(
        text_export, tmp_path, monkeypatch, capsys):
    from genre_tf.serve import batch_predict

    csv_path, _ = write_catalogue(tmp_path)
    (tmp_path / "a-file").write_text("mine")
    for output, message in ((tmp_path / "a-file", "is a file; give a folder (it is made if missing)"),
                            (tmp_path / "a-file" / "sub", "cannot be written: Not a directory")):
        assert main(["--model", text_export, "--input", csv_path, "--output", str(output)]) == 1
        error = capsys.readouterr().err
        assert error == f"error: --output {output} {message}\n"
    assert (tmp_path / "a-file").read_text() == "mine"
    out = tmp_path / "out"
    assert main(["--model", text_export, "--input", csv_path, "--output", str(out)]) == 0
    before = {name: (out / name).read_text() for name in os.listdir(out)}

    def broken(self, batch, model, inference_args=None):
        raise ValueError("the model broke mid-run")

    monkeypatch.setattr(batch_predict.GenreModelHandler, "run_inference", broken)
    (tmp_path / "other.csv").write_text("id,plot\nz1,a ghost in the dark night\n")
    assert main(["--model", text_export, "--input", str(tmp_path / "other.csv"), "--output", str(out)]) == 1
    assert "the model broke mid-run" in capsys.readouterr().err
    assert {name: (out / name).read_text() for name in os.listdir(out)} == before  # the last run, whole
    monkeypatch.undo()
    assert main(["--model", text_export, "--input", str(tmp_path / "other.csv"), "--output", str(out)]) == 0
    assert list(read_lines(out / "predictions.jsonl")) == ["z1"] and (out / "dead_letters.jsonl").read_text() == ""
