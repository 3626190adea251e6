"""Readers, validation and every rejection reason; the prepared dataset round trip through tf.data."""
import dataclasses
import json
import os

import numpy as np
import pytest

import genre_tf  # noqa: F401
from genre_tf.files import read_json
from conftest import image_bytes, write_csv, write_mmimdb
from genre_tf.config import PrepareConfig, ValidationRules
from genre_tf.data.images import PosterError, load_poster
from genre_tf.data.prepare import prepare, validate_all
from genre_tf.data.readers import read_catalogue

PLOT = " ".join(["word"] * 20)
RULES = ValidationRules(image_size=32)


def reasons(tmp_path, rows, encoding="utf-8"):
    """Validate CSV rows; returns ({id: reason}, kept ids)."""
    csv_path = write_csv(tmp_path / "c.csv", rows, encoding=encoding)
    movies, rejects = validate_all(read_catalogue(str(csv_path)).records, RULES, progress=False)
    return {r.movie_id: r.reason for r in rejects}, [m.movie_id for m in movies]


def poster(tmp_path, name, data):
    (tmp_path / name).write_bytes(data)
    return name


def test_each_bad_record_is_named_with_its_reason_and_valid_ones_kept(tmp_path):
    png = image_bytes(fmt="PNG")
    cmyk = image_bytes(mode="CMYK", colour=(0, 255, 255, 0))
    rows = [
        ["good", "t", PLOT, "Drama, Comedy", poster(tmp_path, "good.jpg", image_bytes()), "1999", "en"],
        ["corrupt", "t", PLOT, "Drama", poster(tmp_path, "c.jpg", b"\xff\xd8\xff\xe0garbage"), "", ""],
        ["truncated", "t", PLOT, "Drama", poster(tmp_path, "t.png", png[: len(png) // 2]), "", ""],
        ["empty_file", "t", PLOT, "Drama", poster(tmp_path, "e.jpg", b""), "", ""],
        ["cmyk", "t", PLOT, "Horror|Drama", poster(tmp_path, "k.jpg", cmyk), "", ""],
        ["tiny", "t", PLOT, "Drama", poster(tmp_path, "one.png", image_bytes((1, 1), fmt="PNG")), "", ""],
        ["empty_plot", "t", "   ", "Drama", "good.jpg", "", ""],
        ["long_plot", "t", " ".join(["w"] * 10_000), "Drama", "good.jpg", "", ""],
        ["unknown", "t", PLOT, "Drama, Dramedy", "good.jpg", "", ""],
        ["blank_genre", "t", PLOT, "Drama,,Comedy", "good.jpg", "", ""],
        ["missing_file", "t", PLOT, "Drama", "nowhere.jpg", "", ""],
        ["good", "t", PLOT, "Drama", "good.jpg", "", ""],
    ]
    rejected, kept = reasons(tmp_path, rows)
    assert kept == ["good", "cmyk", "unknown"]  # any genre name is valid: catalogues bring their own
    assert rejected["corrupt"].startswith("poster does not decode")
    assert rejected["truncated"].startswith("poster does not decode")
    assert rejected["empty_file"] == "poster file is empty (0 bytes)"
    assert rejected["tiny"] == "poster too small: 1x1 (min side 32)"
    assert rejected["empty_plot"] == "empty plot"
    assert rejected["long_plot"] == "plot too long: 10000 words (max 545)"
    assert rejected["blank_genre"] == "blank genre in 'Drama,,Comedy'"
    assert rejected["missing_file"].startswith("poster file not found")
    assert rejected["good"].startswith("duplicate id (first seen at ")


def test_non_utf8_row_is_rejected_and_the_others_kept(tmp_path):
    poster(tmp_path, "p.jpg", image_bytes())
    path = tmp_path / "latin1.csv"
    text = f"id,title,plot,genres,poster\nok,t,{PLOT},Drama,p.jpg\nbad,Caf\xe9,{PLOT},Drama,p.jpg\n"
    path.write_bytes(text.encode("latin-1"))
    movies, rejects = validate_all(read_catalogue(str(path)).records, RULES, progress=False)
    assert [m.movie_id for m in movies] == ["ok"]
    assert rejects[0].source.endswith("latin1.csv:3") and "not valid UTF-8" in rejects[0].reason


def test_missing_column_names_the_file_and_column(tmp_path):
    path = write_csv(tmp_path / "m.csv", [["1", "t", "Drama", "p.jpg"]], header=("id", "title", "genres", "poster"))
    with pytest.raises(ValueError, match=r"m.csv: missing column\(s\) \['plot'\]"):
        read_catalogue(str(path))


def test_posters_of_every_mode_become_rgb():
    for data in (image_bytes(mode="CMYK", colour=(0, 0, 0, 0)), image_bytes(mode="L"),
                 image_bytes(fmt="PNG", mode="RGBA", colour=(0, 0, 0, 0)), image_bytes(fmt="GIF"),
                 image_bytes(fmt="BMP"), image_bytes(fmt="WEBP")):
        image = load_poster(data)
        assert image.mode == "RGB" and image.size == (40, 60)
    # a fully transparent RGBA poster is composited on white, not black
    assert load_poster(image_bytes(fmt="PNG", mode="RGBA", colour=(0, 0, 0, 0))).getpixel((0, 0)) == (255, 255, 255)
    with pytest.raises(PosterError):
        load_poster(b"not an image")


def test_mmimdb_reader_takes_the_longest_plot_and_the_split_file(tmp_path):
    folder = write_mmimdb(str(tmp_path / "mm"), count=6)
    with open(os.path.join(folder, "split.json"), "w") as handle:
        json.dump({"train": ["tt0000000", "tt0000001", "tt0000002", "tt0000003"], "dev": ["tt0000004"],
                   "test": ["tt0000005"]}, handle)
    (tmp_path / "mm" / "broken.json").write_text("{not json")
    catalogue = read_catalogue(folder)
    assert catalogue.split["dev"] == ["tt0000004"]
    raw = [r for r in catalogue.records if getattr(r, "movie_id", "") == "tt0000000"][0]
    assert len(raw.plot.split()) == 20
    assert any(getattr(r, "reason", "").startswith("unreadable JSON") for r in catalogue.records)


def test_split_file_ids_without_a_record_are_reported(tmp_path):
    folder = write_mmimdb(str(tmp_path / "mm"), count=50)
    ids = sorted(name[:-5] for name in os.listdir(folder) if name.endswith(".json"))
    with open(os.path.join(folder, "split.json"), "w") as handle:
        json.dump({"train": ids[:40] + ["tt_ghost"], "dev": ids[40:45], "test": ids[45:]}, handle)
    prepare(PrepareConfig(catalogue=folder, out=str(tmp_path / "prep"), rules=RULES, num_genres=3), progress=False)
    rejects = (tmp_path / "prep" / "rejects.csv").read_text().splitlines()
    assert rejects[1:] == ["split (train),tt_ghost,listed in the split but no record has this id"]
    assert read_json(tmp_path / "prep" / "split.json")["train"] == ids[:40]


def test_jsonl_folder_defines_the_split(tmp_path):
    (tmp_path / "img.jpg").write_bytes(image_bytes())
    for split, ids in (("train", ["a", "b"]), ("dev", ["c"]), ("test", ["d"])):
        lines = [json.dumps({"id": i, "text": PLOT, "image": "img.jpg", "label": ["Drama"]}) for i in ids]
        (tmp_path / f"{split}.jsonl").write_text("\n".join(lines + ["{bad json"]) + "\n")
    catalogue = read_catalogue(str(tmp_path))
    assert catalogue.split == {"train": ["a", "b"], "dev": ["c"], "test": ["d"]}
    movies, rejects = validate_all(catalogue.records, RULES, progress=False)
    assert len(movies) == 4 and len(rejects) == 3 and "train.jsonl:3" in rejects[0].source


def test_prepare_records_and_prints_the_split_and_a_time_split_trains_on_the_oldest(tmp_path, capsys):
    from genre_tf.data.dataset import load_prepared

    raw = write_mmimdb(str(tmp_path / "raw"), count=100, seed=3)  # years 1990-2019, 40 before 2000
    for method in ("random", "time"):
        prepare(PrepareConfig(catalogue=raw, out=str(tmp_path / method), rules=RULES, num_genres=3, split=method,
                              min_train_movies=8), progress=False)
        record = load_prepared(str(tmp_path / method)).split_record
        assert record["method"] == method and record["seed"] == 0
        assert record["years"]["catalogue"] == {"movies": 100, "dated": 100, "median": 2003.0, "first": 1990,
                                                "last": 2019, "before_1990": 0.0, "from_2000": 0.6}
        printed = capsys.readouterr().out
        assert f"split: {method}, seed 0" in printed and "catalogue      100     100    2003   1990-2019" in printed
    years = record["years"]
    assert years["train"]["last"] <= years["dev"]["first"] and years["dev"]["last"] <= years["test"]["first"]
    assert years["test"]["last"] == 2019 and years["train"]["first"] == 1990


def test_a_time_split_needs_years_and_names_the_undated_movies(tmp_path, capsys):
    raw = write_mmimdb(str(tmp_path / "raw"), count=40, seed=3)
    for index in range(40):  # no year at all, then 4 of 40 without one
        path = os.path.join(raw, f"tt{index:07d}.json")
        meta = read_json(path)
        meta.pop("year")
        with open(path, "w") as handle:
            json.dump(meta, handle)
    with pytest.raises(ValueError, match="split=time needs release years, and none of the 40 valid movies"):
        prepare(PrepareConfig(catalogue=raw, out=str(tmp_path / "none"), rules=RULES, num_genres=3, split="time",
                              min_train_movies=8), progress=False)
    raw = write_mmimdb(str(tmp_path / "raw2"), count=40, seed=3)
    for index in range(4):
        path = os.path.join(raw, f"tt{index:07d}.json")
        meta = read_json(path)
        meta.pop("year")
        with open(path, "w") as handle:
            json.dump(meta, handle)
    prepare(PrepareConfig(catalogue=raw, out=str(tmp_path / "some"), rules=RULES, num_genres=3, split="time",
                          min_train_movies=8), progress=False)
    assert "split=time: 4 of 40 movies have no year and go to train" in capsys.readouterr().err


def test_a_folder_prepared_in_id_order_loads_with_a_warning_naming_the_command(tmp_path, capsys):
    from genre_tf.data.dataset import load_prepared

    raw = write_mmimdb(str(tmp_path / "raw"), count=40, seed=3)
    out = str(tmp_path / "old")
    prepare(PrepareConfig(catalogue=raw, out=out, rules=RULES, num_genres=3, min_train_movies=8), progress=False)
    metadata = read_json(os.path.join(out, "dataset.json"))
    del metadata["split"]  # as genre_tf wrote it before 2026-12-07
    with open(os.path.join(out, "dataset.json"), "w") as handle:
        json.dump(metadata, handle)
    capsys.readouterr()
    prepared = load_prepared(out)
    load_prepared(out)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "id order" in line]
    command = f"python -m genre_tf.prepare {os.path.abspath(raw)} out=NEW_DIR name=raw rules.image_size=32"
    assert len(warnings) == 1 and command in warnings[0]  # the folder's own options, kept
    assert prepared.split_record["method"] == "id order" and sum(map(len, prepared.split.values())) == 40


def test_prepare_then_tf_data_round_trip(tmp_path):
    from genre_tf.data.dataset import load_prepared, make_dataset

    raw = write_mmimdb(str(tmp_path / "raw"), count=300, seed=3)
    (tmp_path / "raw" / "tt9999999.json").write_text(json.dumps({"plot": ["x"], "genres": ["Drama"]}))
    prepare(PrepareConfig(catalogue=raw, out=str(tmp_path / "prep"), rules=ValidationRules(image_size=32),
                          num_genres=3, genreless="drop"), progress=False)
    prepared = load_prepared(str(tmp_path / "prep"))
    rejects = (tmp_path / "prep" / "rejects.csv").read_text()
    assert "tt9999999" in rejects and "plot too short: 1 words (min 15)" in rejects
    kept = sum(len(ids) for ids in prepared.split.values())
    dropped = rejects.count("is among the 3 kept")
    assert kept + dropped == 300 and len(prepared.genres) == 3
    dataset = make_dataset(prepared, "dev", 16, training=False, input_names=["movie_id", "plot", "poster"])
    ids, labels = [], []
    for inputs, batch_labels in dataset:
        assert inputs["poster"].dtype.name == "uint8" and inputs["poster"].shape[1:] == (32, 32, 3)
        ids += [i.decode() for i in inputs["movie_id"].numpy()]
        labels.append(batch_labels.numpy())
    assert ids == prepared.split["dev"]
    genres_of = {m["movie_id"]: m["genres"] for m in prepared.movies()}
    expected = [[float(g in genres_of[i]) for g in prepared.genres] for i in ids]
    np.testing.assert_array_equal(np.concatenate(labels), expected)
    train = make_dataset(prepared, "train", 16, training=True, input_names=["plot"])
    sizes = [len(batch[1]) for batch in train]
    assert set(sizes) == {16} and len(sizes) == len(prepared.split["train"]) // 16


def test_prepare_refuses_an_existing_output_and_leaves_nothing_half_written(tmp_path, monkeypatch):
    import genre_tf.data.dataset
    import genre_tf.data.prepare

    raw = write_mmimdb(str(tmp_path / "raw"), count=40)
    config = PrepareConfig(catalogue=raw, out=str(tmp_path / "out"), rules=ValidationRules(image_size=32),
                           min_train_movies=8)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("someone else's")
    with pytest.raises(FileExistsError):
        prepare(config, progress=False)
    assert os.listdir(tmp_path / "out") == ["mine.txt"]
    assert (tmp_path / "out" / "mine.txt").read_text() == "someone else's"
    (tmp_path / "out" / "mine.txt").unlink()
    (tmp_path / "out").rmdir()

    def leftovers():
        return [name for name in os.listdir(tmp_path) if name.startswith(".prepare-")]

    # 1. A write fails once the staging folder holds files: no output, no staging folder.
    write_shards, staged = genre_tf.data.dataset.write_shards, []

    def fail_on_the_second_split(examples, directory, *args, **kwargs):
        staged.append(sorted(os.listdir(directory)))
        if len(staged) == 2:
            raise OSError(28, "No space left on device")
        return write_shards(examples, directory, *args, **kwargs)

    monkeypatch.setattr(genre_tf.data.dataset, "write_shards", fail_on_the_second_split)
    with pytest.raises(OSError, match="No space left"):
        prepare(config, progress=False)
    assert {"movies.jsonl", "split.json", "rejects.csv"} <= set(staged[1]) and any(".tfrecord" in n for n in staged[1])
    assert not os.path.exists(config.out) and leftovers() == []
    monkeypatch.setattr(genre_tf.data.dataset, "write_shards", write_shards)

    # 2. The output appears while prepare writes (another prepare, a user): it is neither replaced nor merged into.
    write_prepared = genre_tf.data.prepare.write_prepared

    def someone_else_creates_out(*args, **kwargs):
        metadata = write_prepared(*args, **kwargs)
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "theirs.txt").write_text("theirs")
        return metadata

    monkeypatch.setattr(genre_tf.data.prepare, "write_prepared", someone_else_creates_out)
    with pytest.raises(OSError):
        prepare(config, progress=False)
    assert os.listdir(tmp_path / "out") == ["theirs.txt"] and leftovers() == []
    monkeypatch.setattr(genre_tf.data.prepare, "write_prepared", write_prepared)

    # 3. Nothing in the way: the whole folder appears.
    (tmp_path / "out" / "theirs.txt").unlink()
    (tmp_path / "out").rmdir()
    prepare(config, progress=False)
    assert {"dataset.json", "movies.jsonl", "split.json", "genres.txt", "rejects.csv"} <= set(os.listdir(config.out))
    assert leftovers() == []


def test_open_vocabulary_keeps_every_genre_name_and_merges_case_and_aliases(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    train = ["Drama|Children", " drama |Comedy", "DRAMA, Science  Fiction", "comedy;Sci-Fi", "Children", "Film-Noir",
             "Drama|Comedy", "Comedy", "Drama", "Sci-fi"]
    for movie_id, genres in [(f"m{i}", g) for i, g in enumerate(train)] + [("d0", "Drama"), ("t0", "Comedy")]:
        (raw / f"{movie_id}.json").write_text(json.dumps({"plot": PLOT, "genres": genres}))
        (raw / f"{movie_id}.jpeg").write_bytes(image_bytes())
    (raw / "split.json").write_text(json.dumps({"train": [f"m{i}" for i in range(10)], "dev": ["d0"], "test": ["t0"]}))
    # A deliberately tiny catalogue: min_train_movies lowered from one batch (32) to let it through.
    config = PrepareConfig(catalogue=str(raw), out=str(tmp_path / "prep"), num_genres=3, min_train_movies=5,
                           rules=ValidationRules(image_size=32, genre_aliases=(("science fiction", "Sci-Fi"),)))
    metadata = prepare(config, progress=False)
    from genre_tf.data.dataset import load_prepared

    prepared = load_prepared(str(tmp_path / "prep"))
    assert metadata["counts"]["rejected"] == 0  # no movie is lost for a genre name
    # Drama 5 (any case), Comedy 4, Sci-Fi 3 (alias merged, the majority spelling wins), Children 2, Film-Noir 1
    assert prepared.genres == ["Drama", "Comedy", "Sci-Fi"]
    vocabulary = metadata["vocabulary"]
    assert vocabulary["train_genre_counts"] == {"Drama": 5, "Comedy": 4, "Sci-Fi": 3, "Children": 2, "Film-Noir": 1}
    assert vocabulary["with_other_genres_too"] == 1 and vocabulary["with_none_of_the_genres"] == 2
    labels = {m["movie_id"]: m["genres"] for m in prepared.movies()}
    assert labels["m1"] == ["Drama", "Comedy"] and labels["m3"] == ["Comedy", "Sci-Fi"] and labels["m4"] == ["Children"]

    closed = dataclasses.replace(config, out=str(tmp_path / "closed"), genres=("children", "drama"), genreless="drop")
    metadata = prepare(closed, progress=False)
    assert metadata["genres"] == ["Children", "Drama"]  # the catalogue's spelling, in the order given
    rejects = (tmp_path / "closed" / "rejects.csv").read_text()
    # m3, m5, m7, m9 and t0 carry neither Children nor Drama
    assert rejects.count("is among the 2 kept") == 5 and metadata["counts"]["train"] == 6
    with pytest.raises(ValueError, match=r"genres names \['Western'\], which no training movie has"):
        prepare(dataclasses.replace(config, out=str(tmp_path / "w"), genres=("Western",)), progress=False)


def test_prepare_reads_each_file_once_and_a_dataset_check_rehashes_only_what_changed(tmp_path, monkeypatch):
    """Prepare hashes every shard once (its fingerprint is made of their digests); checking a run's dataset again in
    the same process reads nothing unchanged, and still sees a shard that was rewritten since."""
    import shutil

    from genre_tf import files
    from genre_tf.data.dataset import changed_files, load_prepared

    write_mmimdb(tmp_path / "mm", count=60)
    hashed = []
    real = files.sha256_of
    monkeypatch.setattr(files, "sha256_of", lambda path: hashed.append(os.path.basename(path)) or real(path))
    out = tmp_path / "prepared"
    prepare(PrepareConfig(catalogue=str(tmp_path / "mm"), out=str(out), shard_size=20,
                          rules=ValidationRules(image_size=32)), progress=False)
    metadata = read_json(str(out / "dataset.json"))
    shards = [name for split in metadata["shards"].values() for name in split]
    assert len(shards) >= 3 and sorted(hashed) == sorted([*shards, "movies.jsonl", "genres.txt", "split.json"])

    copy = tmp_path / "copy"  # a fresh path: nothing of it is known to this process yet
    shutil.copytree(out, copy)
    prepared = load_prepared(str(copy))
    recorded = {name: [digest] for name, digest in metadata["files"].items()}
    hashed.clear()
    assert changed_files(prepared, recorded) == [] and changed_files(prepared, recorded) == []
    assert sorted(hashed) == sorted(metadata["files"])  # the second check read nothing
    shard = copy / shards[0]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1
    shard.write_bytes(bytes(data))
    os.utime(shard, ns=(1, 1))  # a new mtime, as any rewrite gives
    hashed.clear()
    assert changed_files(prepared, recorded) == [f"{shards[0]} was changed"] and hashed == [shards[0]]
