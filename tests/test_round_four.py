"""Issue 37, hostile inputs and faults round four: folders written into their own input, unbounded explanations,
reports that overclaim, reruns that lose files, and command lines that answer nonsense with a traceback."""
import json
import os

import pytest
from conftest import answering_once

import genre_tf  # noqa: F401


def fake_run(folder) -> str:
    """A folder that looks like a finished run (config.json, encoders.json, final.json), nothing trained."""
    from genre_tf.config import TrainConfig, dump_config

    os.makedirs(folder / "checkpoints", exist_ok=True)
    dump_config(TrainConfig(data=str(folder.parent / "no-data")), str(folder / "config.json"))
    for name in ("encoders.json", "final.json"):
        (folder / name).write_text("{}")
    return str(folder)


def fake_prepared(folder) -> str:
    """A folder that looks like a prepared dataset (split.json, movies.jsonl)."""
    os.makedirs(folder, exist_ok=True)
    (folder / "split.json").write_text('{"train": [], "dev": [], "test": []}')
    (folder / "movies.jsonl").write_text("")
    return str(folder)


def files_under(folder) -> list[str]:
    return sorted(os.path.join(root, name) for root, _, names in os.walk(folder) for name in names)


def test_every_tool_that_writes_a_folder_refuses_its_own_input_and_a_prepared_dataset(tmp_path, capsys):
    from genre_tf.config import PrepareConfig
    from genre_tf.data.prepare import prepare
    from genre_tf.serve.batch_predict import prepare_output
    from genre_tf.train import migrate, recalibrate

    run, data = fake_run(tmp_path / "run"), fake_prepared(tmp_path / "data")
    before = files_under(tmp_path)
    # recalibrate into one of the run's own folders recursed copying into itself; into the run itself was accepted
    for out, where in ((f"{run}/checkpoints/deep", "is inside"), (f"{run}/new", "is inside"),
                       (f"{data}/rc", "is inside")):
        assert recalibrate.main([run, "platt", out]) == 1
        error = capsys.readouterr().err
        assert len(error.splitlines()) == 1 and f"NEW_RUN={out} {where}" in error, error
        assert ("its own input RUN=" in error) == (data not in out) and ("prepared dataset" in error) == (data in out)
    # migrate writes serving files into its run: never when that run lies inside a prepared dataset
    inner = fake_run(tmp_path / "data" / "run")
    assert migrate.main([inner]) == 1
    assert f"run_dir={inner} is inside the prepared dataset {data}" in capsys.readouterr().err
    with pytest.raises(ValueError, match=f"out={data}/again is inside the prepared dataset"):
        prepare(PrepareConfig(catalogue=str(tmp_path / "raw.csv"), out=f"{data}/again"), progress=False)
    models = tmp_path / "models"
    models.mkdir()
    for output, reason in ((f"{models}/scored", "its own input --model="), (f"{data}/scored", "prepared dataset")):
        with pytest.raises(ValueError, match=reason):
            prepare_output(output, str(models))
    assert files_under(tmp_path) == sorted(before + files_under(tmp_path / "data" / "run"))  # nothing else written


def test_recalibrate_and_migrate_suggest_no_option_they_lack_and_name_a_missing_run(tmp_path, capsys):
    from genre_tf.train import migrate, recalibrate

    run = fake_run(tmp_path / "run")
    os.remove(os.path.join(run, "final.json"))
    assert recalibrate.main([run, "platt", str(tmp_path / "new")]) == 1
    error = capsys.readouterr().err
    assert "is unfinished" in error and "--allow-unfinished" not in error
    assert migrate.main([run]) == 1
    error = capsys.readouterr().err
    assert "is unfinished" in error and "--allow-unfinished" not in error
    assert recalibrate.main([str(tmp_path / "missing"), "platt", str(tmp_path / "new")]) == 1
    error = capsys.readouterr().err
    assert "does not exist" in error and "unfinished" not in error and not (tmp_path / "new").exists()


class Tensor:
    """What serving_default's outputs offer explain: .numpy()."""

    def __init__(self, value):
        self.value = value

    def numpy(self):
        return self.value


class CountingServing:
    """A stand-in for predict.load_serving's Serving: 'ghost' in the plot raises Horror, a poster raises Comedy;
    it counts the movies scored and keeps the largest poster side it was sent."""
    genres = ["Horror", "Comedy"]

    def __init__(self):
        self.scored, self.largest_side, self.posters = 0, 0, 0

    def score(self, batch):
        from PIL import Image
        import io
        import numpy as np

        self.scored += len(batch)
        probabilities = []
        for movie in batch:
            if movie["poster"]:
                self.posters += 1
                with Image.open(io.BytesIO(movie["poster"])) as image:
                    self.largest_side = max(self.largest_side, *image.size)
            probabilities.append([0.9 if "ghost" in movie["plot"].split() else 0.1, 0.8 if movie["poster"] else 0.2])
        probabilities = np.asarray(probabilities, np.float32)
        return {"probabilities": Tensor(probabilities), "predicted": Tensor(probabilities > 0.5)}


def test_explaining_a_huge_plot_costs_a_fixed_number_of_scorings_and_cjk_words_are_characters():
    from genre_tf.serve.explain import MAX_SCORINGS, MAX_WORDS, distinct_words, explain_movie, without_word

    plot = "the ghost " + " ".join(f"w{index}" for index in range(9520))  # 9,522 distinct words
    serving = CountingServing()
    explanation = explain_movie(serving, plot, None)
    assert serving.scored == explanation["model_calls"] == 3 + MAX_WORDS <= MAX_SCORINGS == 167  # was 9,525
    horror = explanation["genres"][0]
    assert horror["genre"] == "Horror" and horror["top_words"][0] == {"word": "ghost", "drop": 0.8}
    # a Chinese or Japanese plot is one word per character, not one giant word
    assert distinct_words("東京で、猫が走る。") == ["東", "京", "で", "猫", "が", "走", "る"]
    assert without_word("東京で、猫が走る。", "猫") == "東京で、が走る。"
    assert without_word("The ghost, the GHOST and a cat.", "ghost") == "The the and a cat."


def test_explain_decodes_no_poster_the_model_refuses_and_shrinks_large_ones(tmp_path, monkeypatch, capsys):
    import io

    from PIL import Image

    from genre_tf.serve import predict
    from genre_tf.serve.explain import MAX_SCORINGS, POSTER_SIDE
    from test_hostile_inputs import png_header

    serving = CountingServing()
    monkeypatch.setattr(predict, "load_serving", lambda model_dir: serving)
    model = tmp_path / "model"
    model.mkdir()
    (model / "saved_model.pb").write_bytes(b"")
    (tmp_path / "huge.png").write_bytes(png_header(10_000, 10_000))  # 100 megapixels declared: numpy MemoryError
    assert predict.main(["--model", str(model), "--plot", "a ghost story", "--poster", str(tmp_path / "huge.png"),
                         "--explain", "--json", "--explain-dir", str(tmp_path / "heat")]) == 0
    out, error = capsys.readouterr()
    explanation = json.loads(out)
    assert "could not be used (poster too large" in error and "explained from the plot" in error
    assert serving.posters == 0 and explanation["genres"][0]["poster_contribution"] is None
    assert os.listdir(tmp_path / "heat") == []  # no heat map, not a 0-byte one
    buffer = io.BytesIO()
    Image.new("RGB", (2000, 3000), (40, 40, 40)).save(buffer, format="PNG")  # 6 megapixels: explained shrunk
    (tmp_path / "large.png").write_bytes(buffer.getvalue())
    assert predict.main(["--model", str(model), "--plot", "a ghost story", "--poster", str(tmp_path / "large.png"),
                         "--explain", "--json", "--explain-dir", str(tmp_path / "heat")]) == 0
    explanation = json.loads(capsys.readouterr().out)
    assert serving.largest_side == POSTER_SIDE and serving.scored <= 2 * MAX_SCORINGS
    comedy = next(genre for genre in explanation["genres"] if genre["genre"] == "Comedy")
    assert comedy["poster_contribution"] == pytest.approx(0.6)
    assert os.path.getsize(explanation["poster_heat_map"]) > 1000


def test_predict_csv_explain_warns_of_an_undecodable_poster_and_explains_every_row(tmp_path, monkeypatch, capsys):
    from genre_tf.serve import predict

    from conftest import image_bytes, write_csv

    monkeypatch.setattr(predict, "load_serving", lambda model_dir: CountingServing())
    model = tmp_path / "model"
    model.mkdir()
    (model / "saved_model.pb").write_bytes(b"")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8not a jpeg at all")
    (tmp_path / "fine.jpg").write_bytes(image_bytes((48, 64)))
    csv_path = write_csv(str(tmp_path / "movies.csv"), [("m1", "One", "a ghost story", "", "broken.jpg", 2000, "en"),
                                                          ("m2", "Two", "a love story", "", "fine.jpg", 2000, "en")])
    assert predict.main(["--model", str(model), "--csv", csv_path, "--explain", "--json"]) == 0
    out, error = capsys.readouterr()
    first, second = (json.loads(line) for line in out.splitlines())  # was: the first poster stopped the file
    assert "warning: m1: poster " in error and "broken.jpg could not be used (poster does not decode" in error
    assert first["genres"][0]["genre"] == "Horror" and first["genres"][0]["poster_contribution"] is None
    assert second["genres"][0] == {**second["genres"][0], "genre": "Comedy", "poster_contribution": 0.6}


def test_a_batch_rerun_that_cannot_publish_leaves_the_last_run_s_two_files_as_they_were(tmp_path, monkeypatch):
    from genre_tf.serve import batch_predict
    from genre_tf.serve.batch_predict import DEAD_LETTERS_FILE, PREDICTIONS_FILE, publish

    def rerun(output):
        staging = tmp_path / "staging"
        staging.mkdir(exist_ok=True)
        (staging / PREDICTIONS_FILE).write_text("new predictions\n")
        (staging / DEAD_LETTERS_FILE).write_text("new dead letters\n")
        publish(str(staging), str(output))

    output = tmp_path / "scored"
    output.mkdir()
    (output / PREDICTIONS_FILE).write_text("old predictions\n")
    (output / DEAD_LETTERS_FILE).write_text("old dead letters\n")
    real_replace = os.replace

    def failing_replace(source, target):  # the new dead letters cannot take the old one's place
        if str(target) == str(output / DEAD_LETTERS_FILE) and "staging" in str(source) and "previous" not in source:
            raise PermissionError(13, "Permission denied", target)
        real_replace(source, target)

    monkeypatch.setattr(batch_predict.os, "replace", failing_replace)
    with pytest.raises(PermissionError):
        rerun(output)
    monkeypatch.undo()
    assert (output / PREDICTIONS_FILE).read_text() == "old predictions\n"  # was deleted
    assert (output / DEAD_LETTERS_FILE).read_text() == "old dead letters\n"
    os.remove(output / DEAD_LETTERS_FILE)
    (output / DEAD_LETTERS_FILE).mkdir()  # not a file: refused before anything moves
    (output / DEAD_LETTERS_FILE / "keep").write_text("x")
    with pytest.raises(ValueError, match="dead_letters.jsonl is not a regular file"):
        rerun(output)
    assert (output / PREDICTIONS_FILE).read_text() == "old predictions\n"
    (tmp_path / "fresh").mkdir()
    rerun(tmp_path / "fresh")
    assert (tmp_path / "fresh" / PREDICTIONS_FILE).read_text() == "new predictions\n"


@pytest.mark.slow  # 4 s: the fast tier stays under 2 minutes
# 5,000 levels take PyYAML past Python's recursion limit as the issue's 100,000 did, in a twentieth of the time
@pytest.mark.parametrize("deep", ["[" * 5_000 + "]" * 5_000, "{a: " * 5_000 + "1" + "}" * 5_000,
                                  "[" * 17 + "1" + "]" * 17])
def test_a_config_nested_too_deep_is_refused_in_one_line(deep, tmp_path, capsys):
    import train as train_script

    (tmp_path / "deep.yaml").write_text(f"epochs: {deep}\n")
    for argv in (["--config", str(tmp_path / "deep.yaml")], [f"model.text_units={deep}"]):
        with pytest.raises(SystemExit) as exit_info:  # was a 2,998-line RecursionError
            train_script.main(argv)
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert exit_info.value.code == 2 and "nested deeper than 16 levels" in error, error


@pytest.mark.parametrize("options", [("model.kind=integrated", "model.fusion=concat", "model.text_run=runs/t"),
                                     ("model.kind=poster", "model.poster_run=runs/p"),
                                     ("model.kind=text_frozen", "model.text_run=runs/t")])
def test_branch_runs_for_a_model_that_would_ignore_them_are_refused(options):
    from genre_tf.config import load_config

    with pytest.raises(ValueError, match="apply to model.kind=integrated with model.fusion=late"):  # was ignored
        load_config(overrides=list(options))
    assert load_config(overrides=["model.kind=integrated", "model.fusion=late", "model.text_run=runs/t"])


def test_faithfulness_refuses_limits_that_leave_nothing_to_compare(tmp_path, monkeypatch, capsys):
    from genre_tf.serve import faithfulness

    from conftest import write_csv

    monkeypatch.setattr(faithfulness, "load_serving", lambda model_dir: CountingServing())
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "saved_model.pb").write_bytes(b"")
    csv_path = write_csv(str(tmp_path / "movies.csv"), [("m1", "One", "a ghost story", "", "", 2000, "en")])
    command = ["--model", str(tmp_path / "model"), "--csv", csv_path]
    for option in (["--limit", "0"], ["--words", "100000"], ["--words", "0"]):  # printed NaN and exited 0
        with pytest.raises(SystemExit) as exit_info:
            faithfulness.main(command + option)
        out, error = capsys.readouterr()
        assert exit_info.value.code == 2 and out == "" and "error: --" in error.splitlines()[-1]
    assert faithfulness.main(command + ["--words", "3"]) == 1  # a plot of 3 distinct words: nothing to compare
    out, error = capsys.readouterr()
    assert out == "" and error == "error: no movie has more than 3 distinct plot words: nothing to compare\n"
    assert faithfulness.main(command + ["--words", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["cases"] == 1


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Every command line of the project with arguments that make no sense; each must exit 2 with one error line.
NONSENSE = [
    *[["-m", module, "--no-such-option"] for module in (
        "genre_tf.prepare", "genre_tf.predict", "genre_tf.batch_predict", "genre_tf.features", "genre_tf.bench",
        "genre_tf.bench.scale",
        "genre_tf.data.prepare", "genre_tf.nets.minilm", "genre_tf.nets.mpnet", "genre_tf.serve.predict",
        "genre_tf.serve.batch_predict", "genre_tf.serve.faithfulness", "genre_tf.train.migrate",
        "genre_tf.train.multiworker", "genre_tf.train.recalibrate")],
    *[[script, "--no-such-option"] for script in ("train.py", "evaluate.py", "export/export_savedmodel.py",
                                                   "export/client.py")],
    ["-m", "genre_tf.bench", "table3", "--seeds", "0"], ["-m", "genre_tf.bench", "table3", "--seeds", "abc"],
    ["-m", "genre_tf.bench", "table3", "--data", "/nonexistent"],
    ["-m", "genre_tf.bench", "scale", "--sizes", "9", "9"],
    ["-m", "genre_tf.bench", "scale", "--scale-config", "no.yaml"],
    ["-m", "genre_tf.bench", "table3", "nokind:epochs=1"], ["-m", "genre_tf.bench", "table3", "epochs=0"],
    ["-m", "genre_tf.serve.faithfulness", "--model", "m", "--csv", "c", "--limit", "0"],
    ["-m", "genre_tf.serve.faithfulness", "--model", "m", "--csv", "c", "--words", "100000"],
    ["-m", "genre_tf.train.recalibrate", "run", "isotonic", "new"],
    ["-m", "genre_tf.predict", "--model", "m", "--plot", "p", "--batch-size", "0"],
    ["-m", "genre_tf.batch_predict", "--model", "m", "--input", "c", "--output", "o", "--batch-size", "-1"],
    ["train.py", "epochs=abc"], ["train.py", "model.kind=poster", "model.text_run=runs/x"],
    ["export/export_savedmodel.py", "--run", "r", "--out", "o", "--version", "0"],
    ["export/client.py", "--rest", "http://127.0.0.1:1", "--plot", "p", "--timeout", "inf"],
    ["export/client.py", "--rest", "http://[::1", "--plot", "p"],
    ["export/client.py", "--rest", "http://127.0.0.1:99999", "--plot", "p"],
]


@pytest.mark.slow  # 34 processes that import TensorFlow: about 10 s of the fast tier's 2 minutes
def test_every_command_answers_nonsense_arguments_with_exit_2_and_one_error_line(tmp_path):
    import subprocess
    import sys

    environment = dict(os.environ, PYTHONPATH=ROOT, GENRE_TF_CACHE=str(tmp_path / "cache"))
    running = [(argv, subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=environment, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)) for argv in NONSENSE]
    wrong = []
    for argv, process in running:
        out, error = process.communicate(timeout=300)
        errors = [line for line in error.splitlines() if "error:" in line]
        usage = [line for line in error.splitlines() if line.startswith("usage:")]  # argparse's block, left out
        if (process.returncode != 2 or "Traceback" in error or len(errors) != 1 or usage
                or errors[0] != error.splitlines()[-1]):
            wrong.append(f"{' '.join(argv)}: exit {process.returncode}, {error.splitlines()[-3:]}")
    assert not wrong, "\n".join(wrong)


def report_metrics(movies: int, supports: list[int], low: float = 1.0, high: float = 1.0) -> dict:
    """The parts of evaluation's metrics that the report's warning and interval note read."""
    return {"intervals_method": {"resamples": 2000, "seed": 0},
            "splits": {"test": {"movies": movies, "intervals": {"tuned": {"weighted_f1": {"low": low, "high": high}}},
                                "per_genre": [{"genre": f"G{i}", "support": s} for i, s in enumerate(supports)]}}}


def test_a_report_on_a_tiny_test_split_or_one_lacking_genres_says_so_and_claims_no_width():
    from genre_tf.evaluate.evaluation import interval_note, sample_size_lines

    one = report_metrics(1, [1, 0, 0, 1])  # prepare 'fractions=[0.78,0.2,0.02]': weighted F1 1.0000
    warning = "\n".join(sample_size_lines(one))
    assert "test split holds only 1 movie(s)**, under 30" in warning and "2 of 4 genres have no movie" in warning
    assert "(G1, G2)" in warning and "known to within" not in interval_note(one)  # was "known to within 0.000"
    assert "cannot be trusted" in interval_note(one)
    enough = report_metrics(400, [50, 60, 70, 80], low=0.41, high=0.47)
    assert sample_size_lines(enough) == []
    assert "On these 400 test movies, weighted F1 is known to within 0.060" in interval_note(enough)
    lacking = "\n".join(sample_size_lines(report_metrics(400, [50, 0, 70, 80])))
    assert "1 of 4 genres have no movie in the test split** (G1)" in lacking and "only" not in lacking


# The issue's rough edges

def test_a_second_evaluation_of_a_run_is_refused_in_one_line_while_the_first_writes(tmp_path, monkeypatch, capsys):
    import evaluate
    from genre_tf import run_dir as runs
    from genre_tf.evaluate import evaluation

    run, calls = fake_run(tmp_path / "run"), []

    def restore(run_dir):  # inside the first evaluation, while it holds the run: a second one starts
        if calls:
            raise ValueError("a second evaluation ran alongside the first")
        calls.append("first")
        calls.append(evaluate.main([run_dir]))
        raise ValueError("the first evaluation stops here")

    monkeypatch.setattr(evaluation, "restore_run", restore)
    assert evaluate.main([run]) == 1 and calls == ["first", 1]
    out, error = capsys.readouterr()
    assert out == "" and error.splitlines() == [
        f"error: {run} is being evaluated by another process (it holds {run}/.evaluation.lock); wait for that "
        "evaluation to finish", "error: the first evaluation stops here"]
    with runs.locked(run), runs.evaluation_locked(run):  # released; and a training does not block an evaluation
        pass


def genre_answer(rows: int = 1, probabilities: str = "[0.9, 0.1]", genres: str = "Drama") -> bytes:
    """A REST answer as genre_tf's SavedModel gives it, `rows` movies alike."""
    row = (f'{{"probabilities": {probabilities}, "predicted": [true, false], "genres": "{genres}", '
           '"inputs_used": "plot"}')
    return ('{"predictions": [' + ", ".join([row] * rows) + "]}").encode()


@pytest.mark.parametrize("answer, reason", [
    (genre_answer(rows=120_000), "holds 120000 movies for the 1 sent"),  # printed all 120,000, exit 0
    (genre_answer(rows=0), "is JSON but not genre_tf's outputs"),
    (genre_answer(probabilities="[NaN, 0.1]"), "movie 1 has the probability nan, not a number in [0, 1]"),
    (genre_answer(probabilities="[0.9, Infinity]"), "movie 1 has the probability inf, not a number in [0, 1]"),
    (genre_answer(probabilities="[1.5, 0.1]"), "movie 1 has the probability 1.5, not a number in [0, 1]"),
    (genre_answer(probabilities='[true, "0.1"]'), "movie 1 has the probability True, not a number in [0, 1]"),
    (genre_answer(probabilities="[0.9]"), "movie 1 has no true or false in 'predicted' for each probability"),
    (genre_answer(probabilities="[" + ", ".join(["0.5"] * 1001) + "]"), "has no list of 1 to 1000 probabilities")],
    ids=["120000-movies", "no-movie", "nan", "inf", "above-1", "not-numbers", "predicted-short", "1001-genres"])
def test_the_client_prints_only_the_movies_it_sent_and_refuses_impossible_probabilities(answer, reason, capsys):
    from export import client

    with answering_once(200, answer) as url:
        assert client.main(["--rest", url, "--plot", "a ghost story"]) == 1
    out, error = capsys.readouterr()
    assert out == "" and error.startswith(f"error: {url} answered, but the answer") and reason in error
    assert len(error.splitlines()) == 1 and len(error) < 400


def test_the_client_strips_the_servers_terminal_escapes_before_printing(capsys):
    from export import client

    escapes = "\\u001b[2J\\u001b]0;owned\\u0007Drama\\u202e"  # clear screen, set the title, reverse the text
    with answering_once(200, genre_answer(genres=escapes)) as url:
        assert client.main(["--rest", url, "--plot", "a ghost story"]) == 0
    out, error = capsys.readouterr()
    assert json.loads(out)["predictions"] == [{"probabilities": [0.9, 0.1], "predicted": [True, False],
                                               "genres": "[2J]0;ownedDrama", "inputs_used": "plot"}]
    assert error == "" and "\\u001b" not in out and "\\u202e" not in out
    with answering_once(500, b'{"error": "\x1b[2J\x1b]0;owned\x07model failed\r\x1b[1A"}') as url:
        assert client.main(["--rest", url, "--plot", "a ghost story"]) == 1
    out, error = capsys.readouterr()
    assert out == "" and error == f"error: TF Serving at {url} answered HTTP 500: {{\"error\": \"[2J]0;ownedmodel " \
        "failed [1A\"}\n"


def test_the_client_checks_a_grpc_answer_as_it_checks_a_rest_one():
    tf = pytest.importorskip("tensorflow")
    predict_pb2 = pytest.importorskip("tensorflow_serving.apis.predict_pb2")
    from export import client

    def response(probabilities):
        answer = predict_pb2.PredictResponse()
        answer.outputs["probabilities"].CopyFrom(tf.make_tensor_proto(probabilities, tf.float32))
        for name in ("predicted", "genres", "inputs_used"):
            answer.outputs[name].CopyFrom(tf.make_tensor_proto(["x"]))
        return answer

    client.check_grpc_answer(response([[0.9, 0.1]]), movies=1)
    with pytest.raises(client.BadAnswer, match=r"the shape \[3, 2\], not \[1, genres\]"):
        client.check_grpc_answer(response([[0.9, 0.1]] * 3), movies=1)
    with pytest.raises(client.BadAnswer, match=r"a probability that is not a number in \[0, 1\]"):
        client.check_grpc_answer(response([[float("nan"), 0.1]]), movies=1)


def test_prepare_stores_titles_as_it_stores_plots(tmp_path):
    from conftest import image_bytes, write_csv
    from genre_tf.config import PrepareConfig, ValidationRules
    from genre_tf.data.prepare import prepare

    plot = " ".join(["word"] * 20)
    titles = {"m0": "The\x00 Ring\u200b", "m1": "Come\u0301die\x1b[31m\ufeff", "m2": "  Plain\ttitle\r\n"}
    rows = [[f"m{i}", titles.get(f"m{i}", f"Movie {i}"), plot, "Drama", "p.png", "", "en\x00"] for i in range(80)]
    (tmp_path / "p.png").write_bytes(image_bytes(fmt="PNG"))
    write_csv(tmp_path / "c.csv", rows)
    prepare(PrepareConfig(catalogue=str(tmp_path / "c.csv"), out=str(tmp_path / "out"),
                          rules=ValidationRules(image_size=32), num_genres=1), progress=False)
    lines = (tmp_path / "out" / "movies.jsonl").read_text(encoding="utf-8").splitlines()
    movies = {movie["movie_id"]: movie for movie in map(json.loads, lines)}
    assert [movies[f"m{i}"]["title"] for i in range(3)] == ["The Ring", "Com\u00e9die[31m", "Plain title"]
    assert movies["m5"]["title"] == "Movie 5" and {movie.get("language") for movie in movies.values()} == {"en"}


def test_batch_scoring_cuts_a_batch_at_a_poster_byte_budget():
    from genre_tf.serve.batch_predict import BATCH_POSTER_BYTES, GenreModelHandler, movie_weight

    weigh = GenreModelHandler("unused", batch_size=32).batch_elements_kwargs()["element_size_fn"]
    share = BATCH_POSTER_BYTES // 32  # 0.5 MiB: a real poster weighs 1, and a batch holds 32 movies
    assert [weigh({"poster": poster}) for poster in (None, b"x" * share, b"x" * (share + 1))] == [1, 1, 2]
    assert weigh({"poster": b"x" * (16 * 2**20)}) == 32  # a 30-megapixel poster of 16 MiB is scored alone
    assert movie_weight({"poster": b"x" * (20 * 2**20)}, batch_size=1) == 1
