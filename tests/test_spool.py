"""prepare keeps validated movies (posters and records) in disk spools, not in memory, and writes byte-identical
files."""
import dataclasses
import gc
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import genre_tf  # noqa: F401
import genre_tf.data.prepare as prepare_module
from conftest import image_bytes, write_csv
from genre_tf.config import PrepareConfig, ValidationRules
from genre_tf.data.prepare import map_in_order, prepare, validate_all, write_prepared
from genre_tf.data.readers import read_catalogue
from genre_tf.data.records import Movie, RawMovie
from genre_tf.data.spool import MovieSpool, PosterSpool, SpooledMovie, SpooledPoster

RULES = ValidationRules(image_size=32)


def test_the_spool_gives_back_each_poster_it_was_given(tmp_path):
    posters = [b"first", b"", b"\x89PNG" + bytes(range(256)) * 3, b"last"]
    with PosterSpool(str(tmp_path)) as spool:
        places = [spool.put(data) for data in posters]
        assert places[:2] == [SpooledPoster(0, 5), SpooledPoster(5, 0)]
        assert [spool.get(place) for place in reversed(places)] == posters[::-1]
        assert spool.get(b"given bytes") == b"given bytes"
    assert os.listdir(tmp_path) == []  # the spool file has no name: nothing is left behind


def test_the_movie_spool_keeps_only_the_small_fields_and_gives_back_every_record_as_it_was(tmp_path):
    movies = [Movie("tt1", "Amélie \udc80 東京", "a plot\nwith \"quotes\" and \\", ("Drama", "Comedy"), b"\x89PNG1",
                    2001, "fr", "c.csv:2"),
              Movie("tt2", "", "text only", ("Drama",), b"", None, "", "c.csv:3", no_poster="empty poster cell")]
    with MovieSpool(str(tmp_path)) as spool:
        kept = [spool.put(movie) for movie in movies]
        assert [field.name for field in dataclasses.fields(SpooledMovie)] == [
            "movie_id", "genres", "year", "source", "no_poster", "record"]  # no plot, title, language or poster
        assert not hasattr(kept[0], "__dict__")  # slots: about 100 bytes a movie, not a dict's few hundred
        assert [(k.movie_id, k.genres, k.year, k.has_poster) for k in kept] == [
            ("tt1", ("Drama", "Comedy"), 2001, True), ("tt2", ("Drama",), None, False)]
        back = [spool.movie(k) for k in reversed(kept)][::-1]
        assert back[0] == dataclasses.replace(movies[0], poster_png=SpooledPoster(0, 5))
        assert spool.get(back[0].poster_png) == b"\x89PNG1" and back[1] == movies[1]
        # the genres come from what is kept: unify_spellings respells them there, not in the spool
        assert spool.movie(dataclasses.replace(kept[1], genres=("Sci-Fi",))).genres == ("Sci-Fi",)
    assert os.listdir(tmp_path) == []


def test_validation_reads_records_only_a_bounded_window_ahead():
    taken = []

    def items():
        for number in range(100):
            taken.append(number)
            yield number

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = []
        for position, result in enumerate(map_in_order(pool, lambda n: n * n, items(), ahead=4)):
            assert len(taken) == min(position + 4, 100)  # Executor.map would have read all 100 first
            results.append(result)
    assert results == [n * n for n in range(100)]


def write_catalogue(folder, count: int) -> str:
    """A CSV of `count` movies with small PNG posters, two genres alternating, some non-ASCII titles."""
    rng = np.random.default_rng(0)
    rows = []
    for index in range(count):
        name = f"p{index}.png"
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (folder / name).write_bytes(image_bytes((40 + index, 48), colour, fmt="PNG"))
        rows.append([f"m{index}", f"Título {index} 東京", " ".join(["word"] * (15 + index)),
                     "Drama, Comedy" if index % 2 else "Drama", name, str(1950 + index), "es"])
    return str(write_csv(folder / "c.csv", rows))


def test_spooled_prepare_writes_the_same_files_as_in_memory(tmp_path):
    records = read_catalogue(write_catalogue(tmp_path, 24)).records
    in_memory, _ = validate_all(records, RULES, progress=False)
    ids = [movie.movie_id for movie in in_memory]
    split = {"train": ids[:16], "dev": ids[16:20], "test": ids[20:]}
    config = PrepareConfig(catalogue=str(tmp_path / "c.csv"), out="unused", rules=RULES, shard_size=5)
    vocabulary = {"rule": "test"}
    for name in ("memory", "spool"):
        os.makedirs(tmp_path / name)
    with MovieSpool(str(tmp_path / "spool-dir")) as spool:
        spooled, _ = validate_all(records, RULES, progress=False, spool=spool)  # the records are read again
        assert all(isinstance(movie, SpooledMovie) for movie in spooled)
        assert [spool.get(spool.movie(movie).poster_png) for movie in spooled] == [m.poster_png for m in in_memory]
        written = {name: write_prepared(movies, split, ["Drama", "Comedy"], [], config, str(tmp_path / name),
                                        vocabulary, *extra)
                   for name, movies, extra in (("memory", in_memory, ()), ("spool", spooled, (spool,)))}
    assert written["memory"]["fingerprint"] == written["spool"]["fingerprint"]
    assert written["spool"]["shards"]["train"] == [f"train-0000{i}-of-00004.tfrecord" for i in range(4)]
    files = [name for names in written["spool"]["shards"].values() for name in names] + ["movies.jsonl"]
    for name in files:
        assert (tmp_path / "spool" / name).read_bytes() == (tmp_path / "memory" / name).read_bytes()
    assert '"title": "Título 3 東京"' in (tmp_path / "spool" / "movies.jsonl").read_text(encoding="utf-8")


def test_prepare_holds_no_validated_record_while_it_writes(tmp_path, monkeypatch):
    """The bound on prepare's memory: when the shards are written, no Movie or RawMovie is alive, only one small
    SpooledMovie a movie (before, every validated Movie with its plot, and every raw record, was)."""
    seen = {}

    def counting(movies, *args, **kwargs):
        gc.collect()
        seen.update(alive=Counter(type(o).__name__ for o in gc.get_objects() if isinstance(o, (Movie, RawMovie))),
                    kinds={type(movie) for movie in movies}, movies=len(movies))
        return write_prepared(movies, *args, **kwargs)

    monkeypatch.setattr(prepare_module, "write_prepared", counting)
    config = PrepareConfig(catalogue=write_catalogue(tmp_path, 40), out=str(tmp_path / "out"), rules=RULES,
                           min_train_movies=8)
    metadata = prepare(config, progress=False)
    assert seen == {"alive": Counter(), "kinds": {SpooledMovie}, "movies": 40}
    assert sum(metadata["counts"][name] for name in ("train", "dev", "test")) == 40
