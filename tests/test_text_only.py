"""Movies without posters: kept as text-only under rules.require_poster=false, extra_train, and training on them."""
import glob
import json
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
                                              rule="rules.require_poster=true: a movie without a poster is "
                                                   "rejected; extra_train's movies are kept without one")
    assert f"extra_train: 10 movie(s) of {extra} added to train only (2 of its records rejected" in printed
    with open(tmp_path / "more" / "rejects.csv", encoding="utf-8") as handle:
        rejects = handle.read()
    assert f"{extra}:6,TT0000007,duplicate id: also in the main catalogue ({main}/tt0000007.json)" in rejects
    assert f"{extra}:7,x5,plot too short: 2 words (min 15)" in rejects
    genres_of = {m["movie_id"]: m["genres"] for m in more.movies()}
    assert genres_of["x0"] == ["Horror", "Western"]  # spelled as the main catalogue spells it
    assert set(more.ids_with_poster("train")) == set(alone.split["train"])


@pytest.fixture(scope="module")
def text_only_prepared(tmp_path_factory):
    """80 generated movies, 16 of them without a poster, prepared at 32 px with rules.require_poster=false."""
    root = tmp_path_factory.mktemp("text_only")
    path = write_catalogue(root / "raw", 80, seed=2, without_poster=set(range(0, 80, 5)))
    prepare(PrepareConfig(catalogue=str(path), out=str(root / "prepared"), rules=KEEP, num_genres=4,
                          min_train_movies=8), progress=False)
    return str(root / "prepared")


@pytest.mark.slow
def test_poster_features_of_a_text_only_movie_are_the_mean_training_poster(text_only_prepared):
    import tensorflow as tf

    from genre_tf.data.dataset import load_prepared
    from genre_tf.data.features import load_or_compute, mean_features, store_folder

    prepared = load_prepared(text_only_prepared)

    def encoder():  # the mean colour of each poster
        return lambda images, training=False: tf.reduce_mean(tf.cast(images, tf.float32), axis=[1, 2])

    ids, features = load_or_compute(prepared, "poster_features", "text-only-test", encoder, "poster", image_size=32)
    with_poster = set(prepared.ids_with_poster("train")) | set(prepared.ids_with_poster("dev")) | set(
        prepared.ids_with_poster("test"))
    stored = [np.load(path)["digests"] for path in glob.glob(os.path.join(store_folder(
        "poster_features", "text-only-test"), "part-*.npz"))]
    assert len(with_poster) == sum(map(len, stored)) == 64  # only movies with a poster were encoded and stored
    row = {movie_id: index for index, movie_id in enumerate(ids.tolist())}
    mean = features[[row[i] for i in prepared.ids_with_poster("train")]].mean(axis=0, dtype=np.float64)
    for movie_id in set(ids.tolist()) - with_poster:
        np.testing.assert_allclose(features[row[movie_id]], mean, rtol=1e-6)
    np.testing.assert_allclose(mean_features(prepared, (ids, features), None, "poster"), mean, rtol=1e-6)
    assert not np.allclose(features[row["m0001"]], mean)


def test_a_poster_model_learns_from_movies_with_posters_and_a_text_model_from_every_movie(text_only_prepared,
                                                                                        make_tiny_config, tmp_path):
    from genre_tf.data.dataset import load_prepared
    from genre_tf.train.training import training_labels

    prepared = load_prepared(text_only_prepared)
    kinds = {kind: make_tiny_config(kind, f"data={text_only_prepared}", run_dir=tmp_path / kind)
             for kind in ("text_frozen", "poster", "integrated")}
    learned = {kind: training_labels(config, prepared)["ids"] for kind, config in kinds.items()}
    assert learned["text_frozen"] == prepared.split["train"]
    assert learned["poster"] == learned["integrated"] == prepared.ids_with_poster("train")
    assert len(learned["poster"]) < len(learned["text_frozen"])


def test_a_model_reading_decoded_posters_is_refused_on_text_only_movies(text_only_prepared, make_tiny_config,
                                                                       tmp_path):
    from genre_tf.train.training import train

    config = make_tiny_config("poster", f"data={text_only_prepared}", "feature_cache=false", run_dir=tmp_path / "p")
    with pytest.raises(ValueError, match=r"holds 16 text-only movie\(s\) \(no poster\), and this model reads decoded"):
        train(config)
    assert not os.path.exists(tmp_path / "p")


@pytest.mark.slow
def test_late_fusion_trains_each_branch_on_its_movies_and_mixes_a_text_only_movie_as_serving_does(
        text_only_prepared, make_tiny_config, tmp_path, monkeypatch):
    import tf_keras as keras

    from genre_tf.data.dataset import load_prepared, make_dataset, split_labels
    from genre_tf.nets.network import restore_trained
    from genre_tf.run_dir import OUT_OF_FOLD
    from genre_tf.train import training
    from genre_tf.train.fusion import branch_logits

    fed = {}  # training examples each branch's fit was given, counted from the dataset itself
    original = training.make_dataset

    def counting(prepared, split, batch_size, **options):
        dataset = original(prepared, split, batch_size, **options)
        if options.get("training"):
            fed[bool(options.get("with_poster_only"))] = sum(int(labels.shape[0]) for _, labels in dataset)
        return dataset

    monkeypatch.setattr(training, "make_dataset", counting)
    config = make_tiny_config("integrated", f"data={text_only_prepared}", "model.fusion=late", "epochs=2",
                              run_dir=tmp_path / "late")
    run_dir = training.train(config)
    prepared = load_prepared(text_only_prepared)
    batches = {False: len(prepared.split["train"]) // 8, True: len(prepared.ids_with_poster("train")) // 8}
    assert fed == {with_poster: 2 * count * 8 for with_poster, count in batches.items()}  # 2 epochs of full batches
    assert batches[False] > batches[True]  # the text branch learned from the text-only movies too

    _, _, model, caches = restore_trained(str(run_dir))
    mix = [w.numpy() for w in model.get_layer("genre_head").get_layer("fusion_mix").weights]
    _, _, text_model, text_caches = restore_trained(os.path.join(run_dir, "branches", "text_frozen"))
    _, _, poster_model, poster_caches = restore_trained(os.path.join(run_dir, "branches", "poster"))
    test = make_dataset(prepared, "test", 64, training=False, input_names=list(text_model.input_names),
                        feature_caches=text_caches)
    text_logits = branch_logits(text_model, test)
    # the poster branch sees a text-only movie as serving does: the mean poster features of the training movies
    ids, features = poster_caches["poster_features"]
    row = {movie_id: index for index, movie_id in enumerate(ids.tolist())}
    mean = features[[row[i] for i in prepared.ids_with_poster("train")]].mean(axis=0)
    inputs = np.stack([features[row[i]] for i in prepared.split["test"]])
    text_only = [index for index, i in enumerate(prepared.split["test"]) if i not in prepared.ids_with_poster("test")]
    assert text_only
    inputs[text_only] = mean
    head = keras.Model(poster_model.inputs, poster_model.get_layer("probabilities").input)
    poster_logits = head.predict(inputs, verbose=0)
    mixed = model.predict(make_dataset(prepared, "test", 64, training=False, input_names=list(model.input_names),
                                       feature_caches=caches), verbose=0)
    expected = 1 / (1 + np.exp(-(mix[0] * text_logits + mix[1] * poster_logits + mix[2])))
    np.testing.assert_allclose(mixed, expected, atol=1e-5)
    # the mix was fitted on every dev movie, text-only ones included; so are its out-of-fold dev probabilities
    stored = np.load(os.path.join(run_dir, OUT_OF_FOLD))
    assert stored["ids"].tolist() == split_labels(prepared, "dev")["ids"]
    assert set(prepared.split["dev"]) - set(prepared.ids_with_poster("dev"))
    assert np.isfinite(stored["probabilities"]).all()
    assert json.loads((tmp_path / "late" / "serving" / "serving.json").read_text())["fallback_means"][
        "poster_features"] == pytest.approx(mean.tolist(), abs=1e-6)


def test_the_report_says_where_the_text_only_movies_are_and_what_poster_models_saw():
    from genre_tf.evaluate.evaluation import text_only_lines

    assert text_only_lines({"text_only": {"movies": 0}}) == []
    record = {"movies": 12, "train": 10, "dev": 1, "test": 1}
    assert text_only_lines({"text_only": record, "extra_train": 9}) == [
        "", "Text-only movies (no poster): train 10, dev 1, test 1, 9 of them added to train by extra_train. Models "
            "that read posters trained on the movies that have one and were scored on every movie, a text-only one "
            "with the mean training poster features, as the SavedModel serves it."]


@pytest.mark.slow
def test_the_beam_features_job_encodes_the_posters_there_are_and_names_no_text_only_movie(
        text_only_prepared, make_tiny_config, tmp_path, monkeypatch):
    from genre_tf.data import features
    from genre_tf.data.beam_features import compute_features
    from genre_tf.data.dataset import load_prepared
    from genre_tf.nets.network import frozen_encoders

    monkeypatch.setattr(features, "store_folder", lambda name, key: os.path.join(tmp_path, f"{name}-{key}"))
    config = make_tiny_config("integrated", f"data={text_only_prepared}", run_dir=tmp_path / "run")
    summary = compute_features(load_prepared(text_only_prepared), frozen_encoders(config), str(tmp_path / "dead.jsonl"),
                               ["--direct_num_workers=1", "--direct_running_mode=in_memory"])
    assert summary["dead_letters"] == []  # an empty poster is no error: training gives it the mean
    assert summary["poster_features"]["encoded"] == 64 and summary["plot_embedding"]["encoded"] == 80
