"""prepare's options: the same dataclass, YAML file and key=value machinery as train.py."""
import json
import subprocess
import sys
import textwrap

import pytest

import genre_tf  # noqa: F401
from conftest import write_mmimdb
from genre_tf.config import PrepareConfig, ValidationRules, dump_config, load_config
from genre_tf.data.prepare import main as prepare_main, parse_args

OPTIONS = ["out=prep", "name=tiny", "columns.plot=Overview", "genres=[Drama, Comedy]", "genreless=drop",
           "fractions=[0.5, 0.25, 0.25]", "rules.genre_aliases={Science Fiction: Sci-Fi}", "rules.image_size=64"]


def test_key_value_options_and_a_yaml_file_give_the_same_config(tmp_path):
    (tmp_path / "prepare.yaml").write_text(textwrap.dedent("""\
        out: prep
        name: tiny
        columns: {plot: Overview}
        genres: [Drama, Comedy]
        genreless: drop
        fractions: [0.5, 0.25, 0.25]
        rules:
          genre_aliases: {Science Fiction: Sci-Fi}
          image_size: 64
        """))
    from_file = parse_args(["movies.csv", "--config", str(tmp_path / "prepare.yaml")])
    before = parse_args(OPTIONS[:3] + ["movies.csv"] + OPTIONS[3:])  # options before or after the catalogue
    assert from_file == before == parse_args(["movies.csv", *OPTIONS])
    assert (before.catalogue, before.out, before.columns.plot, before.genres) == ("movies.csv", "prep", "Overview",
                                                                                  ("Drama", "Comedy"))
    assert before.fractions == (0.5, 0.25, 0.25) and before.columns.title == "title"  # unset keys keep defaults
    assert before.rules == ValidationRules(image_size=64, genre_aliases=(("Science Fiction", "Sci-Fi"),))
    dump_config(before, str(tmp_path / "dumped.json"))  # aliases dumped as a list of pairs read back the same
    assert load_config(str(tmp_path / "dumped.json"), cls=PrepareConfig) == before


def test_plot_word_limits_can_be_given_in_either_order():
    for options in (["rules.max_plot_words=10", "rules.min_plot_words=5"],
                    ["rules.min_plot_words=600", "rules.max_plot_words=700"]):
        for ordered in (options, options[::-1]):  # one at a time, the first of each would fail against a default
            rules = load_config(overrides=["out=o", *ordered], cls=PrepareConfig, catalogue="c.csv").rules
            assert sorted(int(o.split("=")[1]) for o in options) == [rules.min_plot_words, rules.max_plot_words]
    with pytest.raises(ValueError, match=r"plot word limits must satisfy 1 <= min <= max, got 30..20"):
        load_config(overrides=["out=o", "rules.min_plot_words=30", "rules.max_plot_words=20"], cls=PrepareConfig,
                    catalogue="c.csv")


@pytest.mark.parametrize("argv, message", [
    (["--out", "d"], "error: --out is gone: options are key=value now, e.g. out=DIR"),
    (["--genre-alias", "A=B"], "e.g. 'rules.genre_aliases={Science Fiction: Sci-Fi}'"),
    (["--column=plot=Overview"], "e.g. columns.plot=Overview"),
    (["--image-size", "64"], "e.g. rules.image_size=260"),
    (["out=d", "nonsense=1"], "error: unknown option 'nonsense'; valid options: catalogue, out, name"),
    (["out=d", "seed=abc"], "error: seed must be int, got 'abc'"),
    (["out=d", "genres=Drama"], "error: genres must be a list of names, e.g. [Drama, Comedy], got 'Drama'"),
    (["out=d", "rules.genre_aliases=[a, b]"], "error: rules.genre_aliases must be a mapping of names"),
    (["out=d", "columns=x"], "error: columns is a section; set its keys (columns.id, columns.title, columns.plot"),
    (["out=d", "layout=tar"], "error: layout must be one of ('auto', 'csv', 'mmimdb', 'jsonl'), got 'tar'"),
    (["out=d", "num_genres=0"], "error: num_genres must be at least 1, got 0"),
    (["out=d", "rules.image_size=16"], "error: image size must be 32 to 1024 pixels, got 16"),
    (["other.csv", "out=d"], "error: expected one catalogue and key=value options, got ['movies.csv', 'other.csv']"),
])
def test_old_flags_and_bad_options_are_one_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        prepare_main(["movies.csv", *argv])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in error
    assert "Traceback" not in error and error.splitlines()[-1].startswith("python -m genre_tf.prepare: error: ")


def test_help_lists_every_key_with_its_default_and_imports_no_tensorflow():
    result = subprocess.run([sys.executable, "-m", "genre_tf.prepare", "--help"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0
    for line in ("rules.genre_aliases=[]", "rules.image_size=260", "columns.plot=plot", "fractions=[0.6, 0.2, 0.2]",
                 "genreless=keep", "out="):
        assert f"\n  {line}\n" in result.stdout
    check = ("import sys, genre_tf.config, genre_tf.data.prepare; genre_tf.data.prepare.build_parser().format_help(); "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf_keras')))")
    modules = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert modules.returncode == 0 and modules.stdout.strip() == "[]", modules.stderr


def test_a_prepare_run_through_the_command_line_writes_its_options(tmp_path, capsys):
    raw = write_mmimdb(str(tmp_path / "raw"), count=60)
    out = tmp_path / "prep"
    argv = [f"out={out}", "name=tiny", raw, "rules.genre_aliases={horror: Thriller}", "rules.image_size=32",
            "num_genres=4", "fractions=[0.7, 0.15, 0.15]"]
    assert prepare_main(argv) == 0, capsys.readouterr().err
    metadata = json.loads((out / "dataset.json").read_text())
    assert metadata["name"] == "tiny" and metadata["image_size"] == 32
    assert "Thriller" in metadata["genres"] and "Horror" not in metadata["genres"]  # the alias merged the genre
    assert metadata["config"]["rules"] == {"min_plot_words": 15, "max_plot_words": 545, "image_size": 32,
                                           "genre_aliases": [["horror", "Thriller"]], "min_poster_side": 32,
                                           "require_poster": True}
    assert metadata["config"]["fractions"] == [0.7, 0.15, 0.15]
    assert metadata["counts"]["train"] > 40  # the split followed 70% (stratified, so not exactly 42), not 60%
    (tmp_path / "resolved.json").write_text(json.dumps(metadata["config"]))  # the run can be repeated from it
    assert load_config(str(tmp_path / "resolved.json"), cls=PrepareConfig) == parse_args(argv)


def test_a_catalogue_whose_name_looks_like_an_option_is_still_the_catalogue(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "year=2020.csv").write_text("id,plot,genres,poster\n")
    config = parse_args(["year=2020.csv", "out=prepared", "num_genres=3"])
    assert (config.catalogue, config.out, config.num_genres) == ("year=2020.csv", "prepared", 3)


def test_the_text_model_defaults_to_mpnet_and_old_runs_keep_minilm():
    from genre_tf.config import config_from_dict, config_to_dict, load_config

    assert load_config(overrides=["data=prepared/x"]).text.model == "mpnet"
    assert load_config().text.model == "minilm"  # the demo preset: the small encoder, minutes on a CPU
    assert load_config(overrides=["text.model=mpnet"]).text.model == "mpnet"  # a user's choice beats the preset
    saved = config_to_dict(load_config(overrides=["data=prepared/x"]))
    del saved["text"]["model"]  # a run's config.json written before text.model existed
    assert config_from_dict(saved).text.model == "minilm"
    with pytest.raises(ValueError, match="text.model must be one of"):
        load_config(overrides=["text.model=bert-large"])
    # an old poster run still matches its command (it never read text.model); an old text run does not
    from genre_tf.config import comparable_config

    for kind, same in (("poster", True), ("text_frozen", False)):
        command = load_config(overrides=["data=prepared/x", f"model.kind={kind}"])
        saved = config_to_dict(command)
        del saved["text"]["model"]
        assert (comparable_config(config_from_dict(saved)) == comparable_config(command)) is same


def test_train_reads_key_value_options_before_and_after_config(tmp_path, capsys):
    import train

    (tmp_path / "fast.yaml").write_text("text:\n  model: minilm\n")
    with pytest.raises(SystemExit) as stopped:  # the option after --config is read (it was "unrecognized")
        train.main(["epochs=3", "--config", str(tmp_path / "fast.yaml"), "model.kind=nonsense"])
    error = capsys.readouterr().err
    assert stopped.value.code == 2 and "unrecognized arguments" not in error and "nonsense" in error
