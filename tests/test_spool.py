"""prepare keeps validated posters in a disk spool, not in memory, and writes byte-identical shards."""
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import genre_tf  # noqa: F401
from conftest import image_bytes, write_csv
from genre_tf.config import PrepareConfig, ValidationRules
from genre_tf.data.prepare import map_in_order, validate_all, write_prepared
from genre_tf.data.readers import read_catalogue
from genre_tf.data.spool import PosterSpool, SpooledPoster

RULES = ValidationRules(image_size=32)


def test_the_spool_gives_back_each_poster_it_was_given(tmp_path):
    posters = [b"first", b"", b"\x89PNG" + bytes(range(256)) * 3, b"last"]
    with PosterSpool(str(tmp_path)) as spool:
        places = [spool.put(data) for data in posters]
        assert places[:2] == [SpooledPoster(0, 5), SpooledPoster(5, 0)]
        assert [spool.get(place) for place in reversed(places)] == posters[::-1]
        assert spool.get(b"given bytes") == b"given bytes"
    assert os.listdir(tmp_path) == []  # the spool file has no name: nothing is left behind


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


def test_spooled_prepare_writes_the_same_shards_as_in_memory(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for index in range(24):
        name = f"p{index}.png"
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (tmp_path / name).write_bytes(image_bytes((40 + index, 48), colour, fmt="PNG"))
        rows.append([f"m{index}", "t", " ".join(["word"] * (15 + index)), "Drama, Comedy" if index % 2 else "Drama",
                     name, "", ""])
    records = read_catalogue(str(write_csv(tmp_path / "c.csv", rows))).records
    in_memory, _ = validate_all(records, RULES, progress=False)
    ids = [movie.movie_id for movie in in_memory]
    split = {"train": ids[:16], "dev": ids[16:20], "test": ids[20:]}
    config = PrepareConfig(catalogue=str(tmp_path / "c.csv"), out="unused", rules=RULES, shard_size=5)
    vocabulary = {"rule": "test"}
    for name in ("memory", "spool"):
        os.makedirs(tmp_path / name)
    with PosterSpool(str(tmp_path / "spool-dir")) as spool:
        spooled, _ = validate_all(records, RULES, progress=False, spool=spool)
        assert all(isinstance(movie.poster_png, SpooledPoster) for movie in spooled)
        assert [spool.get(movie.poster_png) for movie in spooled] == [movie.poster_png for movie in in_memory]
        written = {name: write_prepared(movies, split, ["Drama", "Comedy"], [], config, str(tmp_path / name),
                                        vocabulary, *extra)
                   for name, movies, extra in (("memory", in_memory, ()), ("spool", spooled, (spool,)))}
    assert written["memory"]["fingerprint"] == written["spool"]["fingerprint"]
    assert written["spool"]["shards"]["train"] == [f"train-0000{i}-of-00004.tfrecord" for i in range(4)]
    for shard in (name for names in written["spool"]["shards"].values() for name in names):
        assert (tmp_path / "spool" / shard).read_bytes() == (tmp_path / "memory" / shard).read_bytes()
