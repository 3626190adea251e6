"""Movies without posters: kept as text-only under rules.require_poster=false, extra_train, and training on them."""
import os

import numpy as np
import pytest

import genre_tf  # noqa: F401
from conftest import image_bytes, plot_for, random_genres, write_csv, write_mmimdb
from genre_tf.config import PrepareConfig, ValidationRules
from genre_tf.data.prepare import prepare, validate_all
from genre_tf.data.readers import read_catalogue
from test_hostile_inputs import png_header

PLOT = " ".join(["word"] * 20)
KEEP = ValidationRules(image_size=32, require_poster=False)
REQUIRE = ValidationRules(image_size=32)


def validated(csv_path, rules, **read):
    """({id: why it has no poster} of kept movies, {id: reason} of rejected ones)."""
    movies, rejects = validate_all(read_catalogue(str(csv_path), require_poster=rules.require_poster, **read).records,
                                   rules, progress=False)
    return {m.movie_id: m.no_poster for m in movies}, {r.movie_id: r.reason for r in rejects}


def test_a_missing_poster_is_kept_text_only_and_a_bad_one_refused_as_before(tmp_path):
    catalogue, outside = tmp_path / "catalogue", tmp_path / "outside"
    catalogue.mkdir()
    outside.mkdir()
    (catalogue / "good.jpg").write_bytes(image_bytes())
    (catalogue / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    (catalogue / "bomb.png").write_bytes(png_header(30_000, 40_000))
    (outside / "secret.jpg").write_bytes(image_bytes())
    rows = [["good", "t", PLOT, "Drama", "good.jpg"], ["empty", "t", PLOT, "Drama", "  "],
            ["gone", "t", PLOT, "Drama", "nowhere.jpg"], ["corrupt", "t", PLOT, "Drama", "corrupt.jpg"],
            ["bomb", "t", PLOT, "Drama", "bomb.png"], ["escape", "t", PLOT, "Drama", "../outside/secret.jpg"],
            ["escape_gone", "t", PLOT, "Drama", "../outside/nowhere.jpg"]]
    path = write_csv(catalogue / "movies.csv", rows, header=("id", "title", "plot", "genres", "poster"))
    kept, rejected = validated(path, KEEP)
    assert kept == {"good": "", "empty": "empty poster cell", "gone": f"poster file not found: {catalogue}/nowhere.jpg"}
    hostile = {"corrupt": "poster does not decode", "bomb": "poster too large: more than 80000000 pixels",
               "escape": "poster file outside its folder", "escape_gone": "poster file outside its folder"}
    assert {i: reason[:len(hostile[i])] for i, reason in rejected.items()} == hostile, rejected
    # required (the default): the missing ones are rejected with their reason, the hostile ones exactly as above
    kept_required, rejected_required = validated(path, REQUIRE)
    assert kept_required == {"good": ""}
    assert rejected_required == dict(rejected, empty="empty poster cell", gone=kept["gone"])


def test_a_catalogue_without_a_poster_column_is_refused_unless_posters_are_optional(tmp_path):
    path = write_csv(tmp_path / "plots.csv", [["a", "t", PLOT, "Drama"], ["b", "t", PLOT, "Comedy"]],
                     header=("id", "title", "plot", "genres"))
    with pytest.raises(ValueError, match=r"missing column\(s\) \['poster'\].*rules.require_poster=false"):
        read_catalogue(str(path))
    kept, rejected = validated(path, KEEP)
    assert kept == {"a": "no poster column", "b": "no poster column"} and rejected == {}


def write_catalogue(folder, count, seed=0, without_poster=(), start=0):
    """A CSV catalogue of generated movies (ids m0000...); rows in `without_poster` have an empty poster cell."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    rows = []
    for index in range(start, start + count):
        genres = random_genres(rng)
        poster = ""
        if index not in without_poster:
            poster = f"p{index}.png"
            colour = tuple(int(c) for c in rng.integers(0, 255, 3))
            (folder / poster).write_bytes(image_bytes((40, 48), colour, fmt="PNG"))
        rows.append([f"m{index:04d}", f"M{index}", plot_for(genres, rng), "|".join(genres), poster, 1990 + index % 30])
    return write_csv(folder / "movies.csv", rows, header=("id", "title", "plot", "genres", "poster", "year"))


def test_prepare_counts_and_names_text_only_movies_or_rejects_them(tmp_path, capsys):
    from genre_tf.data.dataset import load_prepared

    path = write_catalogue(tmp_path / "raw", 60, without_poster={3, 17, 40})
    options = dict(catalogue=str(path), num_genres=4, min_train_movies=8)
    prepare(PrepareConfig(out=str(tmp_path / "kept"), rules=KEEP, **options), progress=False)
    printed = capsys.readouterr().out
    prepared = load_prepared(str(tmp_path / "kept"))
    part_of = {i: name for name, ids in prepared.split.items() for i in ids}
    text_only = prepared.metadata["text_only"]
    assert text_only["movies"] == 3 and sum(text_only[name] for name in ("train", "dev", "test")) == 3
    assert sorted(set(prepared.split["train"]) - set(prepared.ids_with_poster("train"))) == sorted(
        i for i in ("m0003", "m0017", "m0040") if part_of[i] == "train")
    with open(tmp_path / "kept" / "text_only.csv", encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    assert lines == ["source,movie_id,why"] + [f"{path}:{n + 2},m{n:04d},{part_of[f'm{n:04d}']}: empty poster cell"
                                              for n in (3, 17, 40)]
    assert "kept 3 text-only movie(s), without a poster" in printed and f"{path}:5 [m0003]" in printed
    assert {m["movie_id"] for m in prepared.movies() if not m["has_poster"]} == {"m0003", "m0017", "m0040"}
    assert prepared.metadata["counts"]["rejected"] == 0
    # the default rejects them, naming each
    prepare(PrepareConfig(out=str(tmp_path / "required"), rules=REQUIRE, **options), progress=False)
    required = load_prepared(str(tmp_path / "required"))
    assert required.metadata["text_only"]["movies"] == 0 and required.metadata["counts"]["rejected"] == 3
    with open(tmp_path / "required" / "rejects.csv", encoding="utf-8") as handle:
        assert handle.read().splitlines()[1:] == [f"{path}:{n + 2},m{n:04d},empty poster cell" for n in (3, 17, 40)]


def test_extra_train_adds_to_train_only_and_leaves_dev_test_and_genres_as_they_were(tmp_path, capsys):
    from genre_tf.data.dataset import load_prepared

    main = write_mmimdb(str(tmp_path / "main"), count=60, seed=4)
    rng = np.random.default_rng(5)
    rows = [[f"x{index}", "t", plot_for(["Horror"], rng), "horror|Western", 2000] for index in range(12)]
    rows[4][0] = "TT0000007"  # the main catalogue's tt0000007, spelled otherwise
    rows[5][2] = "too short"
    extra = write_csv(tmp_path / "extra.csv", rows, header=("id", "title", "plot", "genres", "year"))
    options = dict(catalogue=main, rules=REQUIRE, num_genres=3, min_train_movies=8)
    prepare(PrepareConfig(out=str(tmp_path / "alone"), **options), progress=False)
    prepare(PrepareConfig(out=str(tmp_path / "more"), extra_train=str(extra), **options), progress=False)
    printed = capsys.readouterr().out
    alone, more = load_prepared(str(tmp_path / "alone")), load_prepared(str(tmp_path / "more"))
    added = [f"x{index}" for index in range(12) if index not in (4, 5)]
    assert more.split["dev"] == alone.split["dev"] and more.split["test"] == alone.split["test"]
    assert more.split["train"] == alone.split["train"] + added and more.genres == alone.genres
    for name in (*alone.metadata["shards"]["dev"], *alone.metadata["shards"]["test"]):
        assert more.metadata["files"][name] == alone.metadata["files"][name]  # the same bytes
    assert more.metadata["extra_train"]["ids"] == added and more.metadata["extra_train"]["rejected"] == 2
    assert "(the main catalogue's, before extra_train's movies joined it)" in more.metadata["vocabulary"]["rule"]
    assert more.metadata["text_only"] == dict(movies=10, train=10, dev=0, test=0, report="text_only.csv",
                                              rule="rules.require_poster=true: none, a movie without a poster is "
                                                   "rejected; extra_train's movies may lack posters")
    assert f"extra_train: 10 movie(s) of {extra} added to train only (2 of its records rejected" in printed
    with open(tmp_path / "more" / "rejects.csv", encoding="utf-8") as handle:
        rejects = handle.read()
    assert f"{extra}:6,TT0000007,duplicate id: also in the main catalogue ({main}/tt0000007.json)" in rejects
    assert f"{extra}:7,x5,plot too short: 2 words (min 15)" in rejects
    genres_of = {m["movie_id"]: m["genres"] for m in more.movies()}
    assert genres_of["x0"] == ["Horror", "Western"]  # spelled as the main catalogue spells it
    assert set(more.ids_with_poster("train")) == set(alone.split["train"])
