"""Feature caches keyed by encoder and by each movie's own content: any split, a grown catalogue, another run."""
import glob
import io
import os
import struct
import zipfile

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from conftest import image_bytes, write_mmimdb
from genre_tf.config import PrepareConfig, ValidationRules
from genre_tf.data.dataset import PLOT, POSTER, load_prepared
from genre_tf.data.features import load_or_compute, read_store, store_folder, write_part
from genre_tf.data.prepare import prepare


def loaded(*args, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """load_or_compute's (ids, rows), the rows read from the store at once (later steps of a test change the store)."""
    ids, rows = load_or_compute(*args, **kwargs)
    return ids, np.asarray(rows)


def counting_poster_encoder(scale: float, encoded: tf.Variable):
    """A poster encoder (mean colour x scale) that counts the posters it is given."""
    poster = keras.Input((32, 32, 3), dtype=tf.uint8, name="poster")

    def encode(x):
        encoded.assign_add(tf.shape(x, out_type=tf.int64)[0])
        return tf.reduce_mean(tf.cast(x, tf.float32), [1, 2]) * scale
    return keras.Model(poster, keras.layers.Lambda(encode)(poster))


def counting_plot_encoder(encoded: tf.Variable):
    """A plot encoder (length and word count of the text) that counts the plots it is given."""
    def encode(plots, training=False):
        encoded.assign_add(tf.shape(plots, out_type=tf.int64)[0])
        return tf.stack([tf.cast(tf.strings.length(plots), tf.float32),
                         tf.cast(tf.strings.split(plots).row_lengths(), tf.float32)], axis=1)
    return encode


@pytest.fixture(scope="module")
def catalogues(tmp_path_factory):
    """One generated catalogue prepared with seeds 0 and 1, and the same catalogue grown by 12 movies."""
    root = tmp_path_factory.mktemp("content-keyed")
    write_mmimdb(str(root / "raw"), count=60, seed=3)
    write_mmimdb(str(root / "raw-grown"), count=72, seed=3)  # the same generator: its first 60 movies are those above
    for raw, count in (("raw", 60), ("raw-grown", 72)):
        for index in range(count):  # a poster of its own for every movie (write_mmimdb colours them by genre)
            with open(root / raw / f"tt{index:07d}.jpeg", "wb") as handle:
                handle.write(image_bytes((48, 64), (index * 3, 255 - index * 2, 40)))
    folders = {}
    for name, raw, seed in (("seed0", "raw", 0), ("seed1", "raw", 1), ("grown", "raw-grown", 0)):
        folders[name] = str(root / name)
        prepare(PrepareConfig(catalogue=str(root / raw), out=folders[name], rules=ValidationRules(image_size=32),
                              num_genres=4, seed=seed, min_train_movies=8), progress=False)
    return {name: load_prepared(folder) for name, folder in folders.items()}


def test_another_split_or_a_grown_catalogue_encodes_only_movies_never_encoded(catalogues):
    assert catalogues["seed0"].split != catalogues["seed1"].split  # another seed, another split
    for name, input_name, factory in (("poster_features", POSTER, lambda n: counting_poster_encoder(1.0, n)),
                                      ("plot_embedding", PLOT, counting_plot_encoder)):
        encoded, built = tf.Variable(0, dtype=tf.int64), []

        def build(factory=factory, encoded=encoded, built=built):
            built.append(1)
            return factory(encoded)

        first_ids, first = loaded(catalogues["seed0"], name, f"counting-{name}", build, input_name)
        assert int(encoded.numpy()) == 60 and len(built) == 1
        ids, again = loaded(catalogues["seed1"], name, f"counting-{name}", build, input_name)
        assert int(encoded.numpy()) == 60 and len(built) == 1  # zero encoder calls: every movie was cached
        row = {movie_id: index for index, movie_id in enumerate(first_ids)}
        np.testing.assert_array_equal(again, first[[row[i] for i in ids]])
        grown_ids, grown = loaded(catalogues["grown"], name, f"counting-{name}", build, input_name)
        assert int(encoded.numpy()) == 72 and len(built) == 2  # the 12 new movies only
        assert sorted(grown_ids) == sorted(f"tt{i:07d}" for i in range(72)) and grown.shape[0] == 72


def test_features_are_keyed_by_encoder_and_a_damaged_part_is_encoded_again(catalogues, capsys):
    prepared = catalogues["seed0"]
    encoded = tf.Variable(0, dtype=tf.int64)
    ids, once = loaded(prepared, "poster_features", "scale-1", lambda: counting_poster_encoder(1, encoded),
                                POSTER)
    _, twice = loaded(prepared, "poster_features", "scale-2", lambda: counting_poster_encoder(2, encoded),
                               POSTER)
    np.testing.assert_allclose(twice, 2 * once, rtol=1e-6)  # another encoder never reads the first one's rows
    assert int(encoded.numpy()) == 120
    parts = glob.glob(os.path.join(store_folder("poster_features", "scale-1"), "part-*.npz"))
    assert len(parts) == 1
    with open(parts[0], "r+b") as handle:
        handle.truncate(100)
    # through another split: the re-encoded part gets another name, and the damaged one must not haunt every load
    other_ids, again = loaded(catalogues["seed1"], "poster_features", "scale-1",
                                       lambda: counting_poster_encoder(1, encoded), POSTER)
    assert "is damaged" in capsys.readouterr().err and int(encoded.numpy()) == 180
    row = {movie_id: index for index, movie_id in enumerate(ids)}
    np.testing.assert_allclose(again, once[[row[i] for i in other_ids]], rtol=1e-6)
    _, third = loaded(prepared, "poster_features", "scale-1", lambda: counting_poster_encoder(1, encoded),
                               POSTER)
    assert "damaged" not in capsys.readouterr().err and int(encoded.numpy()) == 180  # set aside, read no more
    np.testing.assert_allclose(third, once, rtol=1e-6)
    assert os.path.exists(os.path.join(os.path.dirname(parts[0]), ".damaged-" + os.path.basename(parts[0])))
    # a part of another catalogue in the store: only this dataset's rows are read, in this dataset's order
    rng = np.random.default_rng(0)
    write_part(store_folder("poster_features", "scale-1"), [f"{i:032x}" for i in range(500)],
               rng.random((500, 3), dtype=np.float32))
    _, fourth = loaded(prepared, "poster_features", "scale-1", lambda: counting_poster_encoder(1, encoded),
                                POSTER)
    np.testing.assert_array_equal(fourth, third)
    assert int(encoded.numpy()) == 180
    # a half-written part (only the staging file) is never read
    staging = os.path.join(store_folder("poster_features", "scale-3"), ".part-x.123.tmp.npz")
    os.makedirs(os.path.dirname(staging))
    with open(staging, "wb") as handle:
        handle.write(b"half")
    loaded(prepared, "poster_features", "scale-3", lambda: counting_poster_encoder(3, encoded), POSTER)
    assert int(encoded.numpy()) == 240


def test_a_changed_plot_is_encoded_again_and_an_unchanged_one_is_not(catalogues, tmp_path):
    import json

    source = catalogues["seed0"]
    encoded = tf.Variable(0, dtype=tf.int64)
    ids, before = loaded(source, "plot_embedding", "edit", lambda: counting_plot_encoder(encoded), PLOT)
    raw = tmp_path / "raw"
    write_mmimdb(str(raw), count=60, seed=3)
    for index in range(60):  # the same posters as the fixture's, so only the plot differs
        with open(raw / f"tt{index:07d}.jpeg", "wb") as handle:
            handle.write(image_bytes((48, 64), (index * 3, 255 - index * 2, 40)))
    meta = json.loads((raw / "tt0000007.json").read_text())
    meta["plot"] = ["short.", meta["plot"][1] + " and one more twist"]
    (raw / "tt0000007.json").write_text(json.dumps(meta))
    prepare(PrepareConfig(catalogue=str(raw), out=str(tmp_path / "edited"), rules=ValidationRules(image_size=32),
                          num_genres=4, min_train_movies=8), progress=False)
    edited_ids, after = loaded(load_prepared(str(tmp_path / "edited")), "plot_embedding", "edit",
                                        lambda: counting_plot_encoder(encoded), PLOT)
    assert int(encoded.numpy()) == 61  # the 60 plots once, then the edited one alone
    row = {movie_id: index for index, movie_id in enumerate(ids)}
    changed = [i for i, movie_id in enumerate(edited_ids) if not np.array_equal(after[i], before[row[movie_id]])]
    assert [edited_ids[i] for i in changed] == ["tt0000007"]


def test_cached_features_reach_the_batches_of_the_ids_read(small_prepared):
    """make_dataset adds cached features to each batch after batching (held once, in the cache's array): every row is
    the cache's row of that batch's movie, checked against a dict lookup of the same ids in the same order."""
    from genre_tf.data.dataset import MOVIE_ID, PLOT_EMBEDDING, POSTER_FEATURES, make_dataset

    prepared = load_prepared(small_prepared)
    ids = [i for split in ("train", "dev", "test") for i in prepared.split[split]][::-1]
    rng = np.random.default_rng(0)
    folder = store_folder("poster_features", "batches")  # one cache read from a store's part, one an array
    write_part(folder, [f"{row:032x}" for row in range(len(ids))], rng.random((len(ids), 3), dtype=np.float32))
    stored, _ = read_store(folder, [f"{row:032x}" for row in range(len(ids))])
    caches = {PLOT_EMBEDDING: (ids, rng.random((len(ids), 6), dtype=np.float32)), POSTER_FEATURES: (ids, stored)}
    options = dict(training=True, seed=3, epochs=[1])
    with_ids = make_dataset(prepared, "train", 8, input_names=[MOVIE_ID], **options)
    with_features = make_dataset(prepared, "train", 8, input_names=[MOVIE_ID, PLOT_EMBEDDING, POSTER_FEATURES],
                                 feature_caches=caches, **options)
    row = {movie_id: index for index, movie_id in enumerate(ids)}
    batches = 0
    for (plain, labels), (inputs, same_labels) in zip(with_ids, with_features, strict=True):
        np.testing.assert_array_equal(inputs[MOVIE_ID].numpy(), plain[MOVIE_ID].numpy())
        np.testing.assert_array_equal(same_labels.numpy(), labels.numpy())
        rows = [row[movie_id.decode()] for movie_id in plain[MOVIE_ID].numpy()]
        for name, (_, values) in caches.items():
            np.testing.assert_array_equal(inputs[name].numpy(), np.asarray(values)[rows])
        assert set(inputs) == {MOVIE_ID, PLOT_EMBEDDING, POSTER_FEATURES}
        batches += 1
    assert batches == 73 // 8


def test_stored_rows_are_read_from_the_parts_in_any_order():
    """A dataset's rows are located in the parts (12 bytes a movie in memory) and read from disk when asked: in any
    order, repeated, by slice or mask, with the fill row for a movie without the input."""
    folder = store_folder("poster_features", "stored-rows")
    rng = np.random.default_rng(1)
    first, second = rng.random((5, 4), dtype=np.float32), rng.random((3, 4), dtype=np.float32)
    write_part(folder, [f"a{i}" for i in range(5)], first)
    write_part(folder, [f"b{i}" for i in range(3)], second)
    digests = ["b2", "a0", "", "a4", "b0", "a0", "missing"]
    rows, found = read_store(folder, digests)
    assert found == {"a0", "a4", "b0", "b2"} and rows.shape == (7, 4)
    assert rows.part.nbytes + rows.offsets.nbytes == 12 * 7
    rows.fill = np.full(4, -1.0, np.float32)
    expected = np.stack([second[2], first[0], rows.fill, first[4], second[0], first[0]])
    np.testing.assert_array_equal(rows[[0, 1, 2, 3, 4, 5]], expected)
    np.testing.assert_array_equal(rows[np.array([5, 0])], expected[[5, 0]])
    np.testing.assert_array_equal(rows[3], first[4])
    np.testing.assert_array_equal(rows[-4], first[4])
    np.testing.assert_array_equal(rows[1:6:2], expected[1:6:2])
    np.testing.assert_array_equal(rows[np.array([True, False, False, True, False, False, False])], expected[[0, 3]])
    assert rows[[]].shape == (0, 4)
    with pytest.raises(IndexError):
        rows[[7]]
    np.testing.assert_allclose(rows.mean([0, 1, 3]), expected[[0, 1, 3]].mean(axis=0), rtol=1e-6)
    rows.close()


def npy_bytes(array: np.ndarray, version=(1, 0)) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, version=version)
    return buffer.getvalue()


def npy_header(shape: tuple) -> bytes:
    """A .npy 1.0 header claiming float32 of `shape`, with no data after it."""
    text = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape!r}, }}"
    text += " " * (63 - len(text)) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode()


def zip_part(path, digests: bytes, features: bytes, compression=zipfile.ZIP_STORED) -> None:
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for name, data in (("digests.npy", digests), ("features.npy", features)):
            with archive.open(name, "w", force_zip64=True) as member:
                member.write(data)


def flipped(data: bytes, at: int, mask: int = 0xFF) -> bytes:
    data = bytearray(data)
    data[at] ^= mask
    return bytes(data)


ONE_ROW = np.arange(4, dtype=np.float32)[None]
LYING_PARTS = {  # what a damaged or hostile part may hold: each is set aside, never read, never a crash
    "negative width": lambda path: zip_part(path, npy_bytes(np.array(["x"])), npy_header((1, -1))),
    "zero width": lambda path: zip_part(path, npy_bytes(np.array(["x"])), npy_header((1, 0))),
    "header without rows": lambda path: zip_part(path, npy_bytes(np.array(["x" * 40] * 3)), npy_header((3, 4))),
    "compressed": lambda path: zip_part(path, npy_bytes(np.array(["x"])), npy_bytes(ONE_ROW), zipfile.ZIP_DEFLATED),
    "unknown .npy version": lambda path: zip_part(path, npy_bytes(np.array(["x"])),
                                                  flipped(npy_bytes(ONE_ROW), 6, 0x0F)),
    "0-d digests": lambda path: zip_part(path, npy_bytes(np.array("x")), npy_bytes(ONE_ROW)),
    "2-d digests": lambda path: zip_part(path, npy_bytes(np.array([["x", "y"]])), npy_bytes(ONE_ROW)),
    "float digests": lambda path: zip_part(path, npy_bytes(np.zeros(1)), npy_bytes(ONE_ROW)),
}


@pytest.mark.parametrize("damage", [*LYING_PARTS, "bit flip in a row", "encrypted flag", "cut short"])
def test_a_part_that_lies_is_set_aside_and_the_others_are_read(damage, capsys):
    """A part sorting first whose digests, features header, size, checksum or zip flags are wrong is set aside with
    its reason named, and it never becomes the reference width that would set good parts aside after it."""
    folder = store_folder("poster_features", f"lying-{damage.replace(' ', '-')}")
    os.makedirs(folder)
    good = np.random.default_rng(2).random((3, 4), dtype=np.float32)
    write_part(folder, ["g0", "g1", "g2"], good)
    liar = os.path.join(folder, "part-0000-liar.npz")
    if damage in LYING_PARTS:
        LYING_PARTS[damage](liar)
    else:
        zip_part(liar, npy_bytes(np.array(["x"] * 64)), npy_bytes(np.ones((64, 256), np.float32)))
        with open(liar, "rb") as handle:
            whole = handle.read()
        if damage == "bit flip in a row":
            whole = flipped(whole, whole.index(b"\x00\x00\x80\x3f") + 4000)
        elif damage == "encrypted flag":
            whole = flipped(whole, whole.rindex(b"PK\x01\x02") + 8, 0x01)
        else:
            whole = whole[:-40]
        with open(liar, "wb") as handle:
            handle.write(whole)
    rows, found = read_store(folder, ["g2", "x", "g0"])
    assert found == {"g0", "g2"} and rows.width == 4
    np.testing.assert_array_equal(rows[[0, 2]], good[[2, 0]])
    assert "part-0000-liar.npz is damaged" in capsys.readouterr().err
    assert not os.path.exists(liar)  # set aside: the next load does not read it again
    rows.close()


def test_rows_stay_readable_when_another_process_sets_their_part_aside_and_a_missing_fill_is_named():
    folder = store_folder("poster_features", "renamed")
    values = np.random.default_rng(3).random((2, 4), dtype=np.float32)
    write_part(folder, ["r0", "r1"], values)
    rows, _ = read_store(folder, ["r1", ""])
    (path,) = glob.glob(os.path.join(folder, "part-*.npz"))
    os.replace(path, os.path.join(folder, ".damaged-" + os.path.basename(path)))  # another process's set_aside
    np.testing.assert_array_equal(rows[0], values[1])  # the file checked is the file read
    with pytest.raises(ValueError, match="row 1 has no stored features and no fill row"):
        rows[1]
    rows.close()
