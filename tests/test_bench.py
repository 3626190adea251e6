"""genre_tf.bench: Table 3 has every row, and every figure is a measurement."""
import math

import genre_tf  # noqa: F401
from genre_tf.bench import KINDS, table3, table3_markdown, training_throughput


def test_table3_has_every_model_with_and_without_oversampling(small_prepared, tiny_overrides, tmp_path):
    table = table3(small_prepared, [*tiny_overrides, "epochs=1", "oversample_genres=2"], runs_root=str(tmp_path))
    assert [(row["model"], row["oversampled"]) for row in table["rows"]] == [
        (kind, oversample) for kind in KINDS for oversample in (False, True)]
    assert table["dataset"] == "small-test" and table["test_movies"] == 25
    for row in table["rows"]:
        scores = [row[k] for k in ("weighted_f1_at_0.5", "weighted_f1_tuned", "macro_f1_tuned", "micro_f1_tuned")]
        assert all(isinstance(s, float) and 0.0 <= s <= 1.0 for s in scores) and row["seconds"] > 0
        assert sorted(row["per_genre_f1_tuned"]) == sorted(table["genres"])
    baseline = [row for row in table["rows"] if row["model"] == "most_common"]
    assert baseline[0]["weighted_f1_at_0.5"] == baseline[1]["weighted_f1_at_0.5"]  # oversampling cannot move it
    markdown = table3_markdown(table)
    assert markdown.count("| no |") == 10 and markdown.count("| yes |") == 10  # Table 3 and per-genre rows
    assert "nan" not in markdown and "TODO" not in markdown and "small-test" in markdown


def test_training_throughput_is_measured(make_tiny_config, tmp_path):
    figures = training_throughput(make_tiny_config("integrated", "model.fine_tune_text=false", run_dir=tmp_path),
                                  steps=2, warmup=1, min_seconds=0.1)
    assert all(math.isfinite(v) and v > 0 for v in figures.values())
    assert set(figures) == {"train_examples_per_s", "pipeline_examples_per_s"}


def test_table3_reuses_finished_rows_with_the_same_options(small_prepared, tiny_overrides, tmp_path, capsys):
    options = [*tiny_overrides, "oversample_genres=2"]
    first = table3(small_prepared, options, runs_root=str(tmp_path), kinds=["most_common"])
    assert "reusing" not in capsys.readouterr().out
    again = table3(small_prepared, options, runs_root=str(tmp_path), kinds=["most_common"])
    assert capsys.readouterr().out.count("reusing the finished run") == 2
    assert [row["weighted_f1_at_0.5"] for row in again["rows"]] == [row["weighted_f1_at_0.5"] for row in first["rows"]]
