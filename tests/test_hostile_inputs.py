"""Hostile inputs (issue #14), each built in a temporary folder: none crashes, vanishes, leaks or reads unbounded."""
import contextlib
import dataclasses
import io
import json
import os
import re
import socket
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import genre_tf  # noqa: F401
from conftest import answering_once, image_bytes, write_csv, write_mmimdb
from genre_tf.config import PrepareConfig, ValidationRules
from genre_tf.limits import MAX_CSV_RECORD_BYTES, MAX_POSTER_PIXELS
from genre_tf.data.images import decode_poster, load_poster
from genre_tf.data.poster_headers import poster_dimensions
from genre_tf.data.prepare import main as prepare_main, prepare, summarize_rejects, validate_all
from genre_tf.data.readers import read_catalogue
from genre_tf.data.records import RecordError, Reject, check_plot, count_words
from genre_tf.files import InputFileError, read_input_file

PLOT = " ".join(["word"] * 20)
RULES = ValidationRules(image_size=32)
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def rejected(records) -> tuple[dict, list]:
    """Validate records: ({id: reason} of the rejects, [ids kept])."""
    movies, rejects = validate_all(records, RULES, progress=False)
    return {r.movie_id: r.reason for r in rejects}, [m.movie_id for m in movies]


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A small PNG whose header declares width x height RGB pixels, with one short row of data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def run_bounded(code: str, timeout: float = 60) -> dict:
    """Run code in a child Python limited to 4 GB of address space and a timeout; its last stdout line is JSON."""
    # A regression that reads /dev/zero or waits on a FIFO then fails the test, not the machine or the suite.
    limit = "import resource; resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))\n"
    result = subprocess.run([sys.executable, "-c", limit + textwrap.dedent(code)], capture_output=True, text=True,
                            timeout=timeout, cwd=os.path.join(ROOT, "tests"),
                            env=dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")])))
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


# 1. Train/test leakage -------------------------------------------------------------------------------


def test_an_id_in_two_jsonl_files_is_refused_naming_the_id_and_files(tmp_path):
    (tmp_path / "img.jpg").write_bytes(image_bytes())
    for split, ids in (("train", ["a", "b", "leak"]), ("dev", ["c"]), ("test", ["d", "leak"])):
        lines = [json.dumps({"id": i, "text": PLOT, "image": "img.jpg", "label": ["Drama"]}) for i in ids]
        (tmp_path / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"1 id\(s\) listed more than once .*'leak' in train.jsonl:3 and test.jsonl:2"):
        read_catalogue(str(tmp_path))
    with pytest.raises(ValueError, match="'leak' in train.jsonl:3 and test.jsonl:2"):
        prepare(PrepareConfig(catalogue=str(tmp_path), out=str(tmp_path / "out"), rules=RULES), progress=False)
    assert not (tmp_path / "out").exists()


def test_an_id_twice_in_one_jsonl_file_is_a_rejected_duplicate_listed_once_in_the_split(tmp_path):
    (tmp_path / "img.jpg").write_bytes(image_bytes())
    for split, ids in (("train", ["a", "b", "a"]), ("dev", ["c"]), ("test", ["d"])):
        lines = [json.dumps({"id": i, "text": PLOT, "image": "img.jpg", "label": ["Drama"]}) for i in ids]
        (tmp_path / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    catalogue = read_catalogue(str(tmp_path))
    assert catalogue.split["train"] == ["a", "b"]
    reasons, kept = rejected(catalogue.records)
    assert kept == ["a", "b", "c", "d"] and reasons["a"].startswith("duplicate id (first seen at ")


def test_an_id_listed_twice_in_split_json_is_refused(tmp_path):
    folder = write_mmimdb(str(tmp_path / "mm"), count=50)
    ids = sorted(name[:-5] for name in os.listdir(folder) if name.endswith(".json"))
    split_path = os.path.join(folder, "split.json")
    for split, message in (({"train": ids[:40], "dev": ids[40:45], "test": ids[45:] + [ids[0]]},
                            rf"split.json: 1 id\(s\) .*'{ids[0]}' in train and test"),
                           ({"train": ids[:40] + [ids[1]], "dev": ids[40:45], "test": ids[45:]},
                            rf"split.json: 1 id\(s\) .*'{ids[1]}' in train and train")):
        with open(split_path, "w") as handle:
            json.dump(split, handle)
        with pytest.raises(ValueError, match=message):
            prepare(PrepareConfig(catalogue=folder, out=str(tmp_path / "out"), rules=RULES), progress=False)
        assert not (tmp_path / "out").exists()


# 2. Poster files: confined, regular, bounded -----------------------------------------------------------


def test_poster_paths_reaching_outside_the_catalogue_folder_are_refused(tmp_path):
    catalogue, outside = tmp_path / "catalogue", tmp_path / "outside"
    (catalogue / "posters").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(image_bytes())  # a valid poster: only its place is wrong
    (catalogue / "posters" / "ok.jpg").write_bytes(image_bytes())
    os.symlink(outside / "secret.jpg", catalogue / "link.jpg")
    os.symlink(catalogue / "posters" / "ok.jpg", catalogue / "inner_link.jpg")
    rows = [["absolute", "t", PLOT, "Drama", str(outside / "secret.jpg")],
            ["dotdot", "t", PLOT, "Drama", "../outside/secret.jpg"],
            ["symlink_out", "t", PLOT, "Drama", "link.jpg"],
            ["inside", "t", PLOT, "Drama", "posters/ok.jpg"],
            ["symlink_in", "t", PLOT, "Drama", "inner_link.jpg"],
            ["absolute_in", "t", PLOT, "Drama", str(catalogue / "posters" / "ok.jpg")]]
    csv_path = write_csv(catalogue / "movies.csv", rows, header=("id", "title", "plot", "genres", "poster"))
    reasons, kept = rejected(read_catalogue(str(csv_path)).records)
    assert kept == ["inside", "symlink_in", "absolute_in"]
    real = os.path.realpath(outside / "secret.jpg")
    assert reasons == {name: f"poster file outside its folder: {path} resolves to {real}, outside "
                             f"{os.path.realpath(catalogue)}"
                       for name, path in (("absolute", str(outside / "secret.jpg")),
                                          ("dotdot", str(catalogue / "../outside/secret.jpg")),
                                          ("symlink_out", str(catalogue / "link.jpg")))}
    # --poster-dir moves the root: the same catalogue read with the outside folder as its poster folder
    reasons, kept = rejected(read_catalogue(str(csv_path), poster_dir=str(outside)).records)
    assert kept == ["absolute", "dotdot"] and reasons["absolute_in"].startswith("poster file outside its folder")


def test_dev_zero_a_fifo_and_a_folder_are_refused_at_once(tmp_path):
    os.mkfifo(tmp_path / "fifo.jpg")  # nobody ever writes to it: opening it for reading would wait forever
    (tmp_path / "folder.jpg").mkdir()
    (tmp_path / "ok.jpg").write_bytes(image_bytes())
    rows = [["zero", "t", PLOT, "Drama", "/dev/zero"], ["fifo", "t", PLOT, "Drama", str(tmp_path / "fifo.jpg")],
            ["folder", "t", PLOT, "Drama", str(tmp_path / "folder.jpg")],
            ["ok", "t", PLOT, "Drama", str(tmp_path / "ok.jpg")]]
    csv_path = write_csv(tmp_path / "movies.csv", rows, header=("id", "title", "plot", "genres", "poster"))
    # The work is bounded, not the clock (shared CI cores): every byte read through os.read is counted, and a
    # FIFO waited on would hang the child until run_bounded's timeout.
    result = run_bounded(f"""
        import json, os, pathlib
        from genre_tf.config import ValidationRules
        from genre_tf.data.images import prepared_poster
        from genre_tf.data.prepare import validate_all
        from genre_tf.data.readers import read_catalogue
        records = read_catalogue({str(csv_path)!r}, poster_dir="/").records  # "/" lets /dev/zero past confinement
        prepared_poster(pathlib.Path({str(tmp_path / "ok.jpg")!r}).read_bytes(), 32)  # loads TensorFlow first
        read, real_read = [0], os.read

        def counted_read(descriptor, count):
            data = real_read(descriptor, count)
            read[0] += len(data)
            return data

        os.read = counted_read
        movies, rejects = validate_all(records, ValidationRules(image_size=32), progress=False)
        print(json.dumps({{"bytes_read": read[0], "kept": [m.movie_id for m in movies],
                          "reasons": {{r.movie_id: r.reason for r in rejects}}}}))
    """)
    ok_size = (tmp_path / "ok.jpg").stat().st_size
    assert result["kept"] == ["ok"] and result["bytes_read"] <= ok_size  # nothing of /dev/zero, the FIFO or folder
    assert result["reasons"] == {
        "zero": "poster file not a regular file: /dev/zero is a character device",
        "fifo": f"poster file not a regular file: {tmp_path / 'fifo.jpg'} is a FIFO (named pipe)",
        "folder": f"poster file not a regular file: {tmp_path / 'folder.jpg'} is a folder"}


def test_an_mmimdb_json_that_is_a_fifo_is_rejected_not_waited_on(tmp_path):
    folder = write_mmimdb(str(tmp_path / "mm"), count=3)
    os.mkfifo(os.path.join(folder, "tt9999999.json"))
    result = run_bounded(f"""
        import json
        from genre_tf.data.readers import read_catalogue
        records = read_catalogue({folder!r}).records
        print(json.dumps([[r.movie_id, getattr(r, "reason", "")] for r in records]))
    """)
    assert [movie_id for movie_id, _ in result] == ["tt0000000", "tt0000001", "tt0000002", "tt9999999"]
    assert result[3][1] == (f"unreadable JSON: JSON file not a regular file: {folder}/tt9999999.json "
                            "is a FIFO (named pipe)")


def test_poster_files_are_read_up_to_the_byte_limit_and_no_further(tmp_path):
    (tmp_path / "exact").write_bytes(b"x" * 100)
    (tmp_path / "over").write_bytes(b"x" * 101)
    assert read_input_file(str(tmp_path / "exact"), str(tmp_path), limit=100) == b"x" * 100
    with pytest.raises(InputFileError, match=r"^input file too large: .*over is larger than the limit of 100 bytes$"):
        read_input_file(str(tmp_path / "over"), str(tmp_path), limit=100)
    # The default limit, 20 MiB, in prepare: a sparse file one byte over it costs no disk.
    with open(tmp_path / "huge.jpg", "wb") as handle:
        handle.truncate(20 * 1024 * 1024 + 1)
    rows = [["huge", "t", PLOT, "Drama", "huge.jpg"]]
    csv_path = write_csv(tmp_path / "movies.csv", rows, header=("id", "title", "plot", "genres", "poster"))
    reasons, _ = rejected(read_catalogue(str(csv_path)).records)
    assert reasons == {"huge": f"poster file too large: {tmp_path / 'huge.jpg'} is larger than the limit of "
                               "20 MiB (20971520 bytes)"}


# 3. Transparent posters: prepare (Pillow) and decode_poster (TensorFlow) agree -------------------------


def half_transparent(mode: str = "RGBA", size: int = 48) -> Image.Image:
    """Left half fully transparent, right half a half-transparent red; square so decode_poster keeps its size."""
    image = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    image.paste((200, 30, 30, 128), (size // 2, 0, size, size))
    return image.convert(mode) if mode != "RGBA" else image


def palette_with_transparency(size: int = 48) -> Image.Image:
    image = Image.new("P", (size, size), 0)
    image.putpalette([0, 0, 255, 200, 30, 30] + [0] * 762)  # index 0 (blue) is the transparent one
    image.paste(1, (size // 2, 0, size, size))
    return image


def test_transparent_posters_decode_to_the_same_pixels_in_prepare_and_in_decode_poster():
    import tensorflow as tf

    posters = {"RGBA PNG": encoded(half_transparent(), "PNG"), "LA PNG": encoded(half_transparent("LA"), "PNG"),
               "palette PNG with tRNS": encoded(palette_with_transparency(), "PNG", transparency=0),
               "lossless RGBA WebP": encoded(half_transparent(), "WEBP", lossless=True),
               "GIF with transparency": encoded(palette_with_transparency(), "GIF", transparency=0),
               "32-bit BMP": encoded(half_transparent(), "BMP")}
    for name, data in posters.items():
        prepared = np.asarray(load_poster(data), dtype=int)
        served = decode_poster(tf.constant(data), 48).numpy().astype(int)
        assert prepared.shape == served.shape == (48, 48, 3), name
        assert np.abs(prepared - served).max() <= 1, name
    # PNG and WebP transparency becomes white; TensorFlow leaves a GIF's transparent pixels black, so prepare does too
    white_left = {"RGBA PNG", "LA PNG", "palette PNG with tRNS", "lossless RGBA WebP"}
    for name in white_left:
        assert np.asarray(load_poster(posters[name]))[0, 0].tolist() == [255, 255, 255], name
    assert np.asarray(load_poster(posters["GIF with transparency"]))[0, 0].tolist() == [0, 0, 0]
    assert np.asarray(load_poster(posters["RGBA PNG"]))[0, 40].tolist() == [227, 142, 142]  # 50% red over white


def test_a_transparent_png_poster_trains_as_it_is_served(tmp_path):
    import tensorflow as tf

    from genre_tf.data.dataset import load_prepared, make_dataset

    raw = tmp_path / "raw"
    raw.mkdir()
    data = encoded(half_transparent(size=64), "PNG")
    ids = [f"m{index:02d}" for index in range(34)]
    for movie_id in ids:
        (raw / f"{movie_id}.json").write_text(json.dumps({"plot": PLOT, "genres": ["Drama"]}))
        (raw / f"{movie_id}.png").write_bytes(data)
    (raw / "split.json").write_text(json.dumps({"train": ids[:32], "dev": ids[32:33], "test": ids[33:]}))
    prepare(PrepareConfig(catalogue=str(raw), out=str(tmp_path / "prep"), rules=ValidationRules(image_size=64),
                          num_genres=1), progress=False)
    batch, _ = next(iter(make_dataset(load_prepared(str(tmp_path / "prep")), "dev", 1, training=False,
                                      input_names=["poster"])))
    trained = batch["poster"][0].numpy().astype(int)  # the prepared PNG, decoded by tf.data
    served = decode_poster(tf.constant(data), 64).numpy().astype(int)  # the raw PNG, as the SavedModel decodes it
    assert served[0, 0].tolist() == [255, 255, 255] and served[0, 40].tolist() == [227, 142, 142]
    np.testing.assert_array_equal(trained, served)  # the JPEG prepare stored before blurred the edge by 2 levels


# 4. prepare refuses datasets that cannot train ---------------------------------------------------------


def test_prepare_refuses_settings_and_splits_that_cannot_train(tmp_path, capsys):
    raw = write_mmimdb(str(tmp_path / "raw"), count=60)
    out = str(tmp_path / "out")
    for num_genres in (0, -1):
        with pytest.raises(ValueError, match=f"num_genres must be at least 1, got {num_genres}"):
            prepare(PrepareConfig(catalogue=raw, out=out, rules=RULES, num_genres=num_genres), progress=False)
    for size in (100_000, 31, 1025):
        with pytest.raises(ValueError, match=f"image size must be 32 to 1024 pixels, got {size}"):
            ValidationRules(image_size=size)
    with pytest.raises(SystemExit):
        prepare_main([raw, f"out={out}", "rules.image_size=100000"])
    assert "image size must be 32 to 1024 pixels, got 100000" in capsys.readouterr().err
    ids = sorted(name[:-5] for name in os.listdir(raw) if name.endswith(".json"))
    for split, message in (({"train": ids[:50], "dev": [], "test": ids[50:]}, r"no dev movie"),
                           ({"train": [], "dev": ids[:30], "test": ids[30:]}, r"0 training movie\(s\)"),
                           ({"train": ids[:31], "dev": ids[31:40], "test": ids[40:]},
                            r"31 training movie\(s\), fewer than one batch of 32")):
        (tmp_path / "raw" / "split.json").write_text(json.dumps(split))
        with pytest.raises(ValueError, match=f"nothing written: {message}"):
            prepare(PrepareConfig(catalogue=raw, out=out, rules=RULES), progress=False)
    assert sorted(os.listdir(tmp_path)) == ["raw"]  # no output, no staging folder left behind


# 5. predict reads and predicts a CSV in batches ------------------------------------------------------


@pytest.fixture(scope="module")
def batch_echo_model(tmp_path_factory):
    """A SavedModel with genre_tf's serving signature that answers each movie with the size of its batch."""
    import tensorflow as tf

    class BatchEcho(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="plot"),
                                      tf.TensorSpec([None], tf.string, name="poster")])
        def serve(self, plot, poster):
            size = tf.shape(plot)[0]
            with_poster = tf.strings.length(poster) > 0
            return {"genres": tf.fill([size], tf.strings.as_string(size)), "probabilities": tf.fill([size, 2], 0.5),
                    "inputs_used": tf.where(with_poster, "plot+poster", "plot")}

    folder = tmp_path_factory.mktemp("batch_echo") / "1"
    module = BatchEcho()
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.serve})
    (folder / "assets.extra").mkdir(exist_ok=True)
    (folder / "assets.extra" / "export_info.json").write_text(json.dumps({"genres": ["A", "B"],
                                                                          "token_id_inputs": False}))
    return str(folder)


def test_predict_reads_and_predicts_a_csv_batch_by_batch(batch_echo_model, tmp_path):
    from genre_tf.serve.predict import predict, read_csv_movies

    (tmp_path / "p.jpg").write_bytes(image_bytes())
    rows = [[f"m{i}", "a ghost story", "p.jpg" if i in (0, 100) else ""] for i in range(150)]
    csv_path = write_csv(tmp_path / "movies.csv", rows, header=("id", "plot", "poster"))
    (tmp_path / "p.jpg").rename(tmp_path / "later.jpg")  # m100's poster appears only after the first batch
    results = predict(batch_echo_model, read_csv_movies(str(csv_path)), batch_size=64)
    first = [next(results) for _ in range(64)]
    (tmp_path / "later.jpg").rename(tmp_path / "p.jpg")
    rest = list(results)
    assert [r["movie"] for r in first + rest] == [f"m{i}" for i in range(150)]
    assert [r["genres"] for r in first + rest] == ["64"] * 128 + ["22"] * 22
    assert first[0]["inputs_used"] == "plot" and rest[100 - 64]["inputs_used"] == "plot+poster"


def test_predict_command_batches_resolves_posters_beside_the_csv_and_confines_them(batch_echo_model, tmp_path,
                                                                                     monkeypatch, capsys):
    from genre_tf.serve.predict import main

    (tmp_path / "data").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "data" / "p.jpg").write_bytes(image_bytes())
    (tmp_path / "elsewhere" / "p.jpg").write_bytes(image_bytes())
    rows = [["beside", "a ghost story", "p.jpg"], ["escape", "a ghost story", "../elsewhere/p.jpg"],
            ["zero", "a ghost story", "/dev/zero"]] + [[f"m{i}", "laugh", ""] for i in range(4)]
    csv_path = write_csv(tmp_path / "data" / "movies.csv", rows, header=("id", "plot", "poster"), encoding="utf-8-sig")
    monkeypatch.chdir(tmp_path / "elsewhere")  # a relative poster path is the CSV's, not the current folder's
    assert main(["--model", batch_echo_model, "--csv", str(csv_path), "--json", "--batch-size", "3"]) == 0
    captured = capsys.readouterr()
    results = [json.loads(line) for line in captured.out.splitlines()]
    assert [(r["movie"], r["inputs_used"], r["genres"]) for r in results] == [
        ("beside", "plot+poster", "3"), ("escape", "plot", "3"), ("zero", "plot", "3"),
        ("m0", "plot", "3"), ("m1", "plot", "3"), ("m2", "plot", "3"), ("m3", "plot", "1")]
    assert "escape: poster file outside its folder" in captured.err
    assert "zero: poster file outside its folder: /dev/zero" in captured.err
    assert main(["--model", batch_echo_model, "--csv", str(tmp_path)]) == 1
    assert f"error: {tmp_path} is a folder; --csv needs a CSV file" in capsys.readouterr().err


# 8. decode_poster reads the dimensions before decoding -----------------------------------------------


def test_decode_poster_reads_each_format_s_dimensions_from_its_header():
    import tensorflow as tf

    image = Image.new("RGB", (40, 50), (200, 30, 30))
    for fmt, options in (("JPEG", {}), ("PNG", {}), ("GIF", {}), ("BMP", {}), ("WEBP", {}),
                         ("WEBP", {"lossless": True}), ("WEBP", {"exif": b"Exif\0\0"})):  # VP8, VP8L, VP8X
        data = encoded(image.convert("RGBA") if options.get("exif") else image, fmt, **options)
        assert poster_dimensions(tf.constant(data)).numpy().tolist() == [40, 50, 2000], (fmt, options)
    frames = [Image.new("P", (40, 50), index) for index in range(3)]
    animated = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, optimize=False)
    assert poster_dimensions(tf.constant(animated)).numpy().tolist() == [40, 50, 3 * 2000]  # every frame is decoded


def test_decode_poster_refuses_huge_declared_dimensions_and_tiny_posters_before_decoding():
    import tensorflow as tf

    gif = bytearray(encoded(Image.new("P", (8000, 8000), 1), "GIF"))  # 64 megapixels in 48 KB
    gif[6:10] = struct.pack("<HH", 40, 40)  # a small canvas that the frame overflows
    cases = {"poster too large": [png_header(30_000, 40_000), png_header(2 ** 32 - 1, 2 ** 32 - 1), bytes(gif)],
             "poster too small": [encoded(Image.new("RGB", (1, 1)), "PNG"),
                                  encoded(Image.new("RGB", (31, 400)), "JPEG")],
             "poster is not JPEG, PNG, GIF, BMP or WebP": [b"", b"plain text"]}
    for message, posters in cases.items():
        for data in posters:
            with pytest.raises(tf.errors.InvalidArgumentError, match=message):
                decode_poster(tf.constant(data), 32)
    # The serving graph maps decode_poster with ignore_errors: a refused poster counts as no poster.
    good = image_bytes((40, 60))
    posters = tf.data.Dataset.from_tensor_slices([good] + [data for group in cases.values() for data in group])
    decoded = list(posters.map(lambda data: decode_poster(data, 32)).ignore_errors())
    assert len(decoded) == 1 and decoded[0].shape == (32, 32, 3)
    # prepare's Pillow path applies the same limits
    limit = MAX_POSTER_PIXELS
    with pytest.raises(ValueError, match=rf"^poster too large: 7000x6000 = 42000000 pixels \(max {limit}\)$"):
        load_poster(png_header(7000, 6000))
    with pytest.raises(ValueError, match=rf"^poster too large: more than 80000000 pixels \(max {limit}\)$"):
        load_poster(png_header(30_000, 40_000))
    with pytest.raises(ValueError, match=r"^poster too small: 1x1 \(min side 32\)$"):
        load_poster(encoded(Image.new("RGB", (1, 1)), "PNG"))


# 10. BOM and CJK -------------------------------------------------------------------------------------


def test_a_csv_with_a_byte_order_mark_reads_its_first_column(tmp_path):
    from genre_tf.serve.predict import read_csv_movies

    (tmp_path / "p.jpg").write_bytes(image_bytes())
    path = write_csv(tmp_path / "bom.csv", [["m1", "t", PLOT, "Drama", "p.jpg"]],
                     header=("id", "title", "plot", "genres", "poster"), encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbfid,")
    assert rejected(read_catalogue(str(path)).records) == ({}, ["m1"])
    assert [m["label"] for m in read_csv_movies(str(path))] == ["m1"]


def test_chinese_and_japanese_plots_count_one_word_per_character():
    rules = ValidationRules()
    chinese = "一个年轻的侦探在雨夜的城市里追查一桩离奇的失踪案。"  # 24 characters and a full stop
    assert count_words(chinese) == 24 and count_words("東京で、猫が走る。") == 7
    english = "A ghost haunts a family, again."
    assert count_words(english) == 6 == len(english.split())
    assert check_plot(chinese, rules) == chinese
    with pytest.raises(RecordError, match=r"plot too short: 7 words \(min 15\)"):
        check_plot("東京で、猫が走る。", rules)


# 12. Config files ------------------------------------------------------------------------------------


def test_damaged_and_empty_config_files_are_named_clearly(tmp_path):
    from genre_tf.config import load_config

    cases = {"truncated.json": ('{"epochs": 3, "model": {"kind": "pos',
                                r"is not valid YAML or JSON at line 1, column 37: .* \(the file looks truncated\)"),
             "empty.yaml": ("", "is empty; give options, or leave out --config"),
             "comments.yaml": ("# epochs: 3\n", "holds no options"),
             "list.yaml": ("- epochs\n", "must hold a mapping of options, not a list")}
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=f"^config file {tmp_path / name} {message}"):
            load_config(str(tmp_path / name))
    with pytest.raises(ValueError, match="^config file /dev/zero is larger than 1000000 characters"):
        load_config("/dev/zero")


# 13. Smaller items -------------------------------------------------------------------------------------


def test_rejects_summary_says_where_the_rest_are_and_only_when_they_were_written(tmp_path):
    rejects = [Reject(f"c.csv:{n}", f"m{n}", "empty plot") for n in range(12)]
    assert summarize_rejects(rejects).endswith("... 2 more in rejects.csv")
    assert summarize_rejects(rejects, report=None).endswith(
        "... 2 more not shown (no rejects.csv is written when prepare stops)")
    rows = [[f"m{n}", "t", "", "Drama", "p.jpg"] for n in range(12)]
    csv_path = write_csv(tmp_path / "c.csv", rows, header=("id", "title", "plot", "genres", "poster"))
    with pytest.raises(ValueError, match="no valid movie") as error:
        prepare(PrepareConfig(catalogue=str(csv_path), out=str(tmp_path / "out")), progress=False)
    assert "more in rejects.csv" not in str(error.value) and "2 more not shown" in str(error.value)


def test_a_missing_column_error_names_the_real_option(tmp_path):
    path = write_csv(tmp_path / "m.csv", [["1", "t", "Drama", "p.jpg"]], header=("id", "title", "genres", "poster"))
    with pytest.raises(ValueError, match=r"Map columns with columns.FIELD=HEADER \(e.g. columns.plot=Overview\)"):
        read_catalogue(str(path))


def test_mmimdb_languages_given_as_one_string_stay_one_language(tmp_path):
    folder = write_mmimdb(str(tmp_path / "mm"), count=2)
    meta = json.loads((tmp_path / "mm" / "tt0000000.json").read_text())
    (tmp_path / "mm" / "tt0000000.json").write_text(json.dumps(dict(meta, languages="English")))
    (tmp_path / "mm" / "tt0000001.json").write_text(json.dumps(dict(meta, languages=["English", "French"])))
    assert [r.language for r in read_catalogue(folder).records] == ["English", "English, French"]


def test_prepared_folders_follow_the_umask_and_stale_staging_folders_are_removed(tmp_path):
    raw = write_mmimdb(str(tmp_path / "raw"), count=60)
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    dead = tmp_path / f".prepare-{int(child.stdout)}-0badc0de@{host}"  # a killed prepare's leftover
    alive = tmp_path / f".prepare-{os.getppid()}-0badc0de@{host}"  # a prepare still running
    for folder in (dead, alive):
        folder.mkdir()
    previous = os.umask(0o022)
    try:
        prepare(PrepareConfig(catalogue=raw, out=str(tmp_path / "out"), rules=RULES), progress=False)
    finally:
        os.umask(previous)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "out" / "rejects.csv").stat().st_mode & 0o777 == 0o644
    assert sorted(os.listdir(tmp_path)) == [alive.name, "out", "raw"]


def test_a_layout_that_does_not_fit_the_path_is_a_one_line_error(tmp_path, capsys):
    csv_path = write_csv(tmp_path / "c.csv", [["m1", "t", PLOT, "Drama", "p.jpg"]])
    assert prepare_main([str(csv_path), f"out={tmp_path / 'out'}", "layout=mmimdb"]) == 1
    assert capsys.readouterr().err == (f"error: {csv_path} is a file; the mmimdb layout reads a folder of <id>.json "
                                       "and <id>.jpeg\n")
    assert prepare_main([str(tmp_path), f"out={tmp_path / 'out'}", "layout=csv"]) == 1
    assert capsys.readouterr().err == f"error: {tmp_path} is a folder; the csv layout reads a CSV file\n"


def test_a_csv_row_over_the_limits_or_with_an_open_quote_is_rejected_and_the_rest_kept(tmp_path):
    """prepare reads CSV with predict's bounded reader: a row over 1 MiB, or whose quote never closes, is refused
    on its own line and every other row is kept (Python's csv swallowed the file after an open quote)."""
    (tmp_path / "p.jpg").write_bytes(image_bytes())
    rows = [["m1", "t", PLOT, "Drama", "p.jpg"], ["m2", "t", "x" * 200_000, "Drama", "p.jpg"],
            ["m3", "t", PLOT, "Drama", "p.jpg"], ["m4", "t", "y" * (MAX_CSV_RECORD_BYTES + 1), "Drama", "p.jpg"],
            ["m5", "t", PLOT, "Drama", "p.jpg"]]
    csv_path = write_csv(tmp_path / "c.csv", rows, header=("id", "title", "plot", "genres", "poster"))
    with open(csv_path, "a", encoding="utf-8") as handle:
        handle.write(f'm6,t,"an open quote, {PLOT},Drama,p.jpg\nm7,t,{PLOT},Drama,p.jpg\n')
    records = read_catalogue(str(csv_path)).records
    reasons, kept = rejected(records)
    assert kept == ["m1", "m3", "m5", "m7"]
    assert [(r.source, r.reason) for r in records if isinstance(r, Reject)] == [
        (f"{csv_path}:5", f"unreadable CSV row: the row is longer than {MAX_CSV_RECORD_BYTES} bytes (the CSV "
                          "reader's limit)"),
        (f"{csv_path}:7", "unreadable CSV row: a quoted field is never closed (the file ends inside it)")]
    assert reasons["m2"].startswith("plot too long: 200000 bytes (max 65536 bytes")


def test_a_catalogue_whose_header_is_not_text_is_one_short_error(tmp_path):
    """Random bytes, or a header with a byte that is not UTF-8, are refused in one line naming the file; a header
    that lacks columns is shown bounded, however long the file's first line is."""
    garbage = tmp_path / "garbage.csv"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"id,ti\xfftle,plot,genres,poster\nm1,t,plot,Drama,p.jpg\n")
    for path in (garbage, latin):
        with pytest.raises(ValueError, match=f"{path}:1: the header (is not UTF-8 text|cannot be read)"):
            read_catalogue(str(path))
    wide = tmp_path / "wide.csv"
    wide.write_text(",".join(f"column{i}" * 20 for i in range(2000)) + "\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['id', 'plot', 'genres', 'poster'\]") as error:
        read_catalogue(str(wide))
    assert len(str(error.value)) < 3000


# 14. Issue #23: aliases, huge option values, mismatched serving batches, repeated CSV columns ----------


def write_billion_laughs(path, levels: int = 9):
    """A YAML file of a few hundred bytes whose nested aliases expand to 9**levels strings as model.text_units."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{level}: &l{level} [{', '.join([f'*l{level - 1}'] * 9)}]" for level in range(1, levels)]
    path.write_text("\n".join(lines + [f"model:\n  text_units: *l{levels - 1}"]) + "\n")
    return path


def test_a_billion_laughs_config_is_refused_at_its_first_alias(tmp_path):
    path = write_billion_laughs(tmp_path / "laughs.yaml")
    assert len(path.read_bytes()) < 600
    # In a bounded child: a regression expanding 9**9 strings must fail this test, not exhaust the machine.
    result = run_bounded(f"""
        import contextlib, io, json, time
        import train
        from genre_tf.config import load_config
        from genre_tf.data.prepare import main as prepare_main
        start = time.perf_counter()
        try:
            load_config({str(path)!r})
            message = "loaded"
        except ValueError as error:
            message = str(error)
        exits = []
        for main, argv in ((train.main, ["--config", {str(path)!r}]),
                           (prepare_main, ["--config", {str(path)!r}, "c.csv", "out=o"])):
            stderr = io.StringIO()
            with contextlib.redirect_stderr(stderr):
                try:
                    main(argv)
                except SystemExit as stop:
                    exits.append([stop.code, stderr.getvalue()])
        print(json.dumps({{"message": message, "exits": exits, "seconds": time.perf_counter() - start}}))
    """)
    assert result["message"] == (f"config file {path} uses a YAML alias (*name) at line 2, column 10; aliases are "
                                 "not allowed, write each value out in full")
    assert len(result["message"]) < 300 and result["seconds"] < 10
    assert [code for code, _ in result["exits"]] == [2, 2]
    for _, stderr in result["exits"]:
        assert result["message"] in stderr and len(stderr) < 2000  # argparse's usage line, then the message


@pytest.mark.slow  # 4 s of processes starting TensorFlow
def test_a_huge_option_value_is_quoted_short_in_its_error(tmp_path):
    from genre_tf.config import load_config

    path = tmp_path / "units.yaml"
    path.write_text(json.dumps({"model": {"text_units": [str(n) for n in range(100_000)]}}))
    with pytest.raises(ValueError) as error:
        load_config(str(path))
    assert str(error.value) == "model.text_units must be a list of integers, got ['0', '1', '2', '3', '4', '5', ...]"
    for overrides, start in ((["model.kind=" + "x" * 100_000], "model.kind must be one of"),
                             (["epochs=" + "9" * 100_000 + "x"], "epochs must be int, got '999"),
                             (["x" * 100_000 + "=1"], "unknown option 'xxx")):
        with pytest.raises(ValueError) as error:
            load_config(overrides=overrides)
        assert str(error.value).startswith(start) and "..." in str(error.value)
        assert len(str(error.value).split("; valid options")[0]) < 200


@pytest.fixture(scope="module")
def late_fusion_export(tmp_path_factory):
    """genre_tf's serving module over a tiny late-fusion head and stand-in encoders, saved and loaded again."""
    import tensorflow as tf
    from genre_tf.config import ModelConfig
    from genre_tf.nets.models import build_genre_head
    from genre_tf.serve.serving import GenreModel, ServingParts

    class Encoder(tf.Module):
        """A stand-in encoder without weights: plot lengths one-hot, or a poster's mean colour."""

        def __call__(self, inputs, training=False):
            if inputs.dtype == tf.string:
                return tf.one_hot(tf.strings.length(inputs) % 4, 4)
            return tf.reduce_mean(tf.cast(inputs, tf.float32), axis=[1, 2]) / 255

    head = build_genre_head(ModelConfig(text_units=(4,), fusion="late"), 2, text_dim=4, poster_dim=3)  # late fusion
    parts = ServingParts("integrated", ["A", "B"], np.full(2, 0.5), head, Encoder(), Encoder(),
                         np.zeros(4, np.float32), np.zeros(3, np.float32), image_size=32, seq_length=8)
    module = GenreModel(parts)
    folder = str(tmp_path_factory.mktemp("late_fusion") / "1")
    tf.saved_model.save(module, folder, signatures=module.signatures(parts.seq_length))
    return tf.saved_model.load(folder).signatures


def test_serving_refuses_plot_and_poster_batches_of_different_lengths(late_fusion_export):
    import tensorflow as tf

    plots = tf.constant(["a ghost story", "a family laughs", ""])
    with pytest.raises(tf.errors.InvalidArgumentError, match="plot and poster batches must have the same length"):
        late_fusion_export["serving_default"](plot=plots, poster=tf.constant([image_bytes()]))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match="plot and poster_features batches must have the same length"):
        late_fusion_export["with_poster_features"](plot=plots, poster_features=tf.ones([1, 3]))
    served = late_fusion_export["serving_default"](plot=plots, poster=tf.constant([image_bytes(), b"", b"??"]))
    assert served["probabilities"].shape == (3, 2)
    assert served["inputs_used"].numpy().tolist() == [b"plot+poster", b"plot", b"none"]


def test_a_csv_naming_a_column_twice_is_refused_naming_it(tmp_path, capsys):
    rows = [["m1", "t", PLOT, "Drama", "p.jpg", "a short plot"]]
    csv_path = write_csv(tmp_path / "c.csv", rows, header=("id", "title", "plot", "genres", "poster", "plot"))
    with pytest.raises(ValueError, match=r"c.csv: column\(s\) \['plot'\] appear more than once in the header"):
        read_catalogue(str(csv_path))
    assert prepare_main([str(csv_path), f"out={tmp_path / 'out'}"]) == 1
    assert capsys.readouterr().err.startswith(f"error: {csv_path}: column(s) ['plot'] appear more than once")
    assert sorted(os.listdir(tmp_path)) == ["c.csv"]
    # a repeated column the reader never reads is harmless, as before
    path = write_csv(tmp_path / "notes.csv", [["m1", "t", PLOT, "Drama", "p.jpg", "", ""]],
                     header=("id", "title", "plot", "genres", "poster", "notes", "notes"))
    assert [r.movie_id for r in read_catalogue(str(path)).records] == ["m1"]


# Round two (issue 23): the run directory, limits, names, invisible plots, tracebacks ---------------------


@pytest.fixture(scope="module")
def finished_poster_run(tmp_path_factory, small_prepared, make_tiny_config):
    """A finished tiny poster run on its own copy of the small dataset (copied: tests edit it)."""
    import shutil

    from genre_tf.train.training import train

    root = tmp_path_factory.mktemp("finished")
    data = str(root / "prepared")
    shutil.copytree(small_prepared, data)
    config = make_tiny_config("poster", "epochs=1", run_dir=root / "run")
    return train(dataclasses.replace(config, data=data))


def copied_run(run_dir: str, tmp_path, with_data: bool = False) -> str:
    """A copy of a run (and, if asked, of its dataset, which the copy's dataset.json then names)."""
    import shutil

    copy = str(tmp_path / "run")
    shutil.copytree(run_dir, copy)
    if with_data:
        record = json.loads(Path(copy, "dataset.json").read_text())
        shutil.copytree(record["path"], tmp_path / "data")
        record["path"] = str(tmp_path / "data")
        with open(os.path.join(copy, "dataset.json"), "w") as handle:
            json.dump(record, handle)
    return copy


def test_evaluate_and_export_refuse_a_dataset_changed_since_training_naming_what_changed(finished_poster_run,
                                                                                          tmp_path, capsys):
    import evaluate
    from genre_tf.run_dir import DatasetChanged, open_dataset
    from genre_tf.serve.serving import check_dataset

    run = copied_run(finished_poster_run, tmp_path, with_data=True)
    assert open_dataset(run).path == str(tmp_path / "data")  # unchanged: accepted
    movies = (tmp_path / "data" / "movies.jsonl").read_text().splitlines()
    first = json.loads(movies[0])
    movies[0] = json.dumps(dict(first, genres=["Horror"] if first["genres"] != ["Horror"] else ["Drama"]))
    (tmp_path / "data" / "movies.jsonl").write_text("\n".join(movies) + "\n")  # one movie relabelled
    for check in (open_dataset, check_dataset):
        with pytest.raises(DatasetChanged, match=r"is not the one .* was trained on: movies.jsonl was changed"):
            check(run)
    assert evaluate.main([run]) == 1
    error = capsys.readouterr().err
    assert "movies.jsonl was changed" in error and len(error.splitlines()) == 1
    assert not os.path.exists(os.path.join(run, "report.md"))


def test_an_unfinished_or_locked_run_is_refused_unless_allowed_and_then_names_its_epoch(finished_poster_run,
                                                                                       tmp_path, capsys):
    import subprocess

    from genre_tf.evaluate.evaluation import evaluate_run
    from genre_tf.run_dir import RunUnfinished
    from genre_tf.serve.serving import export_run

    run = copied_run(finished_poster_run, tmp_path)
    # a training holds the lock (another process, as in real life)
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)",
                               os.path.join(run, ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        for call in (lambda: evaluate_run(run), lambda: export_run(run, str(tmp_path / "models"))):
            with pytest.raises(RunUnfinished, match="is being trained now .* best checkpoint so far is epoch 1"):
                call()
    finally:
        holder.kill()
        holder.wait()
    assert not os.path.exists(tmp_path / "models") and not os.path.exists(os.path.join(run, "report.md"))
    os.remove(os.path.join(run, "final.json"))  # stopped before its end
    with pytest.raises(RunUnfinished, match="is unfinished .*--allow-unfinished"):
        evaluate_run(run)
    capsys.readouterr()
    export_run(run, str(tmp_path / "models"), allow_unfinished=True)
    assert "using its best checkpoint so far (epoch 1)" in capsys.readouterr().out


@pytest.mark.parametrize("damage", ["truncated", "bit_flipped"])
def test_a_damaged_checkpoint_is_a_one_line_error_in_evaluate_and_export(finished_poster_run, tmp_path, capsys,
                                                                          damage):
    import glob

    import evaluate
    from export import export_savedmodel

    run = copied_run(finished_poster_run, tmp_path)
    data = glob.glob(os.path.join(run, "checkpoints", "best", "weights.data-*"))[0]
    content = bytearray(Path(data).read_bytes())
    if damage == "truncated":
        content = content[:len(content) // 2]
    else:  # a bit flipped in every 256 bytes: in every tensor (one in an optimizer slot alone is never read)
        for position in range(0, len(content), 256):
            content[position] ^= 0x10
    Path(data).write_bytes(bytes(content))
    assert evaluate.main([run]) == 1
    assert export_savedmodel.main(["--run", run, "--out", str(tmp_path / "models")]) == 1
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 2 and all("is damaged and cannot be read" in line for line in errors), errors


def test_export_reports_a_full_disk_and_a_version_taken_meanwhile_in_one_line(finished_poster_run, tmp_path,
                                                                             monkeypatch, capsys):
    import errno

    import tensorflow as tf
    from export import export_savedmodel

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tf.saved_model, "save", full_disk)
    assert export_savedmodel.main(["--run", finished_poster_run, "--out", str(tmp_path / "a")]) == 1
    assert capsys.readouterr().err.strip() == "error: [Errno 28] No space left on device"
    monkeypatch.undo()
    original = tf.saved_model.save

    def racing(module, staging, **kwargs):  # another export takes version 1 while this one saves
        os.makedirs(tmp_path / "b" / "1" / "variables")
        original(module, staging, **kwargs)

    monkeypatch.setattr(tf.saved_model, "save", racing)
    assert export_savedmodel.main(["--run", finished_poster_run, "--out", str(tmp_path / "b")]) == 1
    error = capsys.readouterr().err
    assert error == f"error: {tmp_path / 'b' / '1'} was written by another export meanwhile; TF Serving versions " \
                    "are immutable, so this export is dropped: run it again for the next version\n"
    assert os.listdir(tmp_path / "b" / "1") == ["variables"]  # the other export's version is untouched


def test_a_relative_data_path_is_resolved_when_the_run_is_created(small_prepared, make_tiny_config, tmp_path,
                                                                  monkeypatch):
    from genre_tf.evaluate.evaluation import evaluate_run
    from genre_tf.run_dir import load_config
    from genre_tf.train.training import train

    monkeypatch.chdir(os.path.dirname(small_prepared))
    config = make_tiny_config("most_common", run_dir=tmp_path / "run")
    run = train(dataclasses.replace(config, data=os.path.basename(small_prepared)))
    assert load_config(run).data == small_prepared
    monkeypatch.chdir(tmp_path)  # evaluate from another folder
    assert evaluate_run(run)["dataset"]["path"] == small_prepared


def test_a_failure_before_the_first_backup_leaves_one_history_row_per_epoch(tiny_config, monkeypatch):
    import errno

    import tf_keras as keras
    from genre_tf.train.training import train

    config = tiny_config("poster", "epochs=2", "patience=5")
    original = keras.callbacks.BackupAndRestore.on_epoch_end

    def disk_full(self, epoch, logs=None):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(keras.callbacks.BackupAndRestore, "on_epoch_end", disk_full)
    with pytest.raises(OSError):
        train(config)
    history = Path(config.run_dir, "history.csv")
    assert [line.split(",")[0] for line in history.read_text().splitlines()[1:]] == ["0"]
    monkeypatch.setattr(keras.callbacks.BackupAndRestore, "on_epoch_end", original)
    train(config)
    assert [line.split(",")[0] for line in history.read_text().splitlines()[1:]] == ["0", "1"]


def test_a_python_tag_in_an_option_is_a_one_line_usage_error(capsys):
    import train as train_script

    with pytest.raises(SystemExit) as exit_info:
        train_script.main(["epochs=!!python/object/apply:os.system ['echo hacked']"])
    out, error = capsys.readouterr()
    assert exit_info.value.code == 2 and "epochs: the value" in error and "is not a plain YAML value" in error
    assert "Traceback" not in error and "hacked" not in out  # refused, never constructed


def test_serving_refuses_requests_over_the_documented_limits(late_fusion_export):
    import tensorflow as tf
    from genre_tf.limits import MAX_PLOT_BYTES, MAX_REQUEST_MOVIES

    serve = late_fusion_export["serving_default"]
    assert serve(plot=tf.constant(["x" * MAX_PLOT_BYTES]), poster=tf.constant([b""]))["probabilities"].shape == (1, 2)
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(f"plot too long (max {MAX_PLOT_BYTES} bytes")):
        serve(plot=tf.constant(["x" * (MAX_PLOT_BYTES + 1)]), poster=tf.constant([b""]))
    many = MAX_REQUEST_MOVIES + 1
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"a request holds at most {MAX_REQUEST_MOVIES} movies"):
        serve(plot=tf.constant(["a plot"] * many), poster=tf.constant([b""] * many))


def test_prepare_and_predict_apply_the_same_plot_limit(batch_echo_model, tmp_path, capsys):
    from genre_tf.limits import MAX_PLOT_BYTES, MAX_REQUEST_MOVIES
    from genre_tf.serve.predict import main, predict

    long_plot = "word " * (MAX_PLOT_BYTES // 5) + "word"  # 13,108 words, 65,539 bytes
    with pytest.raises(RecordError, match=f"plot too long: {len(long_plot)} bytes"):
        check_plot(long_plot, ValidationRules(max_plot_words=10**9))
    write_csv(tmp_path / "m.csv", [["long", "t", "x" * (MAX_PLOT_BYTES + 1), "", "", "", ""]])
    assert main(["--model", batch_echo_model, "--csv", str(tmp_path / "m.csv"), "--json"]) == 0
    assert f"long: plot too long: {MAX_PLOT_BYTES + 1} bytes (max {MAX_PLOT_BYTES} bytes" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", batch_echo_model, "--plot", "p", "--batch-size", str(MAX_REQUEST_MOVIES + 1)])
    assert exit_info.value.code == 2
    with pytest.raises(ValueError, match="batch size must be 1 to"):
        next(predict(batch_echo_model, [], MAX_REQUEST_MOVIES + 1))


INVISIBLE = ["\u200b\u200b", "\x00\x00\x00", "\u3000\u3000", "\ufeff \u2060", "\u200d\n\t",
             # no letter or digit: Hangul fillers, a blank braille cell, a lone combining mark, a variation
             # selector, punctuation
             "\u3164 \u3164", "\u2800 \u2800", "\u0301", "\ufe0f \ufe0f", ". . . !"]


def test_a_plot_of_invisible_characters_is_no_plot_in_prepare_and_in_serving(late_fusion_export):
    import tensorflow as tf

    for plot in INVISIBLE:
        with pytest.raises(RecordError, match="empty plot"):
            check_plot(plot, RULES)
    assert check_plot("a\u200b " + PLOT + "\x00", RULES) == "a " + PLOT  # invisible characters dropped
    assert check_plot("Come\u0301die " + PLOT, RULES).startswith("Com\u00e9die ")  # NFC
    served = late_fusion_export["serving_default"](plot=tf.constant(INVISIBLE + ["a plot"]),
                                                   poster=tf.constant([b""] * (len(INVISIBLE) + 1)))
    assert served["inputs_used"].numpy().tolist() == [b"none"] * len(INVISIBLE) + [b"plot"]


def test_genre_names_merge_across_unicode_forms_and_case_and_refuse_separators_and_markup(tmp_path):
    from genre_tf.data.records import parse_genres

    assert parse_genres(["Com\u00e9die", "come\u0301die", "COMÉDIE "]) == ("Com\u00e9die",)
    for bad in (["Sci|Fi"], ["<script>alert(1)</script>"], ["Action, Adventure"], ["Dra\x00ma"], ["**bold**"],
                ["[link](http://e)"], ["x" * 65], ["..."], ["\u200b\u3164"]):
        with pytest.raises(RecordError, match="genre names may not hold|is not a genre name|blank genre"):
            parse_genres(bad)
    assert parse_genres(["Action & Adventure"]) == ("Action & Adventure",)
    rows = [[f"m{i}", "t", PLOT, "Com\u00e9die" if i % 2 else "Come\u0301die", "p.png", "", ""] for i in range(80)]
    (tmp_path / "p.png").write_bytes(image_bytes(fmt="PNG"))
    write_csv(tmp_path / "c.csv", rows)
    prepare(PrepareConfig(catalogue=str(tmp_path / "c.csv"), out=str(tmp_path / "out"),
                          rules=RULES, num_genres=1), progress=False)
    assert (tmp_path / "out" / "genres.txt").read_text(encoding="utf-8") == "Com\u00e9die\n"


@pytest.mark.slow  # 4 s of GIF frames
def test_a_long_animated_gif_is_judged_alike_by_prepare_and_serving(tmp_path):
    import tensorflow as tf
    from genre_tf.data.images import decode_posters

    frames = [Image.new("RGB", (700, 700), (10 * i % 256, 80, 160)) for i in range(90)]  # 44 M pixels in all
    long_gif = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:])
    short_gif = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:3])
    (tmp_path / "long.gif").write_bytes(long_gif)
    (tmp_path / "short.gif").write_bytes(short_gif)
    records = read_catalogue(str(write_csv(tmp_path / "c.csv", [["long", "t", PLOT, "Drama", "long.gif", "", ""],
                                                                 ["short", "t", PLOT, "Drama", "short.gif", "", ""]]))
                             ).records
    reasons, kept = rejected(records)
    assert kept == ["short"] and "poster too large" in reasons["long"] and "44100000" in reasons["long"]
    _, ok = decode_posters(tf.constant([long_gif, short_gif]), 32)
    assert ok.numpy().tolist() == [False, True]  # the same rule: every frame's pixels count, as both decode them


@pytest.mark.parametrize("answer", [b"\xff\xfe\x00garbage", b"[" * 200_000, b'{"predictions": [{"scores": [0.5]}]}',
                                    b'{"outputs": 1}', b" " * (17 * 2**20)])
def test_the_client_refuses_a_wrong_answer_in_one_line_and_exits_1(answer, capsys):
    from export import client

    with answering_once(200, answer) as url:
        assert client.main(["--rest", url, "--plot", "a ghost story"]) == 1
    out, error = capsys.readouterr()
    assert out == "" and error.startswith(f"error: {url} answered, but the answer is ") and len(error.splitlines()) == 1
    assert len(error) < 400


def test_a_predict_csv_naming_a_column_twice_is_refused_naming_it(batch_echo_model, tmp_path, capsys):
    from genre_tf.serve.predict import main

    write_csv(tmp_path / "m.csv", [["m1", PLOT, "short"]], header=("id", "plot", "plot"))
    assert main(["--model", batch_echo_model, "--csv", str(tmp_path / "m.csv")]) == 1
    error = capsys.readouterr().err
    assert "column(s) ['plot'] appear more than once" in error and len(error.splitlines()) == 1


def test_a_batch_larger_than_the_training_split_is_refused_before_the_run_folder_exists(tiny_config):
    from genre_tf.train.training import train

    from genre_tf.data.dataset import load_prepared

    config = tiny_config("poster", "batch_size=1000")
    movies = len(load_prepared(config.data).split["train"])
    with pytest.raises(ValueError, match=f"batch_size=1000 .* is larger than the {movies} training movies"):
        train(config)
    assert not os.path.exists(os.path.join(config.run_dir, "config.json"))  # the corrected command can use it
    with pytest.raises(ValueError, match="batch_size must be 2 to 65536"):
        tiny_config("poster", "batch_size=99999999999999999999")


def test_migrate_refuses_a_run_in_training_or_unfinished(finished_poster_run, tmp_path, capsys):
    from genre_tf.run_dir import locked
    from genre_tf.train import migrate

    run = copied_run(finished_poster_run, tmp_path)
    with locked(run):  # what a running train.py holds
        assert migrate.main([run]) == 1
    assert "is being trained now" in capsys.readouterr().err
    os.remove(os.path.join(run, "final.json"))
    assert migrate.main([run]) == 1
    error = capsys.readouterr().err
    assert "is unfinished" in error and len(error.splitlines()) == 1
    assert migrate.main([str(tmp_path / "nowhere")]) == 1 and not os.path.exists(tmp_path / "nowhere")


def test_a_damaged_or_emptied_files_record_does_not_hide_a_changed_dataset(finished_poster_run, tmp_path):
    from genre_tf.run_dir import DatasetChanged, open_dataset

    run = copied_run(finished_poster_run, tmp_path, with_data=True)
    movies = tmp_path / "data" / "movies.jsonl"
    movies.write_text(movies.read_text().replace('"Drama"', '"Horror"', 1))
    record_path = Path(run, "dataset.json")
    record = json.loads(record_path.read_text())
    record_path.write_text(json.dumps(dict(record, files={})))  # the run's record emptied: the dataset's own remains
    with pytest.raises(DatasetChanged, match="movies.jsonl was changed"):
        open_dataset(run)
    for damaged in (None, "movies.jsonl", {"../../etc/passwd": "0" * 64}):
        record_path.write_text(json.dumps(dict(record, files=damaged)))
        with pytest.raises(DatasetChanged, match="'files' record is not a mapping of file names"):
            open_dataset(run)


def test_a_tensorflow_error_while_training_is_one_line(monkeypatch, capsys):
    import tensorflow as tf
    import train as train_script
    from genre_tf.train import training

    def full_disk(config):
        raise tf.errors.ResourceExhaustedError(None, None, "backup/ckpt.data: No space left on device\n\tat ...")

    monkeypatch.setattr(training, "train", full_disk)
    assert train_script.main(["epochs=1"]) == 1
    error = capsys.readouterr().err
    assert error == "error: backup/ckpt.data: No space left on device; rerun the same command to resume\n"


def test_serving_refuses_non_finite_poster_features(late_fusion_export):
    import tensorflow as tf

    plots = tf.constant(["a ghost story", "a family laughs"])
    for bad in (np.nan, np.inf, -np.inf):
        features = tf.constant([[0.5, 0.5, 0.5], [0.2, bad, 0.1]], tf.float32)
        with pytest.raises(tf.errors.InvalidArgumentError, match="poster_features must be finite numbers"):
            late_fusion_export["with_poster_features"](plot=plots, poster_features=features)
    served = late_fusion_export["with_poster_features"](plot=plots, poster_features=tf.fill([2, 3], 0.5))
    assert np.isfinite(served["probabilities"].numpy()).all()


@contextlib.contextmanager
def raw_server(answer_chunks, pause: float = 0.0):
    """A local TCP server that reads one request and sends the chunks (pausing between them); yields its URL."""
    import socket
    import threading
    import time

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def serve():
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            for chunk in answer_chunks:
                try:
                    connection.sendall(chunk)
                except OSError:
                    return
                time.sleep(pause)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


def test_the_client_timeout_bounds_the_whole_request(capsys):
    import time

    from export import client

    trickle = [bytes([byte]) for byte in b"HTTP/1.0 200 OK\r\nContent-Length: 1000\r\n\r\n" + b" " * 1000]
    with raw_server(trickle, pause=0.2) as url:  # a byte every 0.2 s: each read is quick, the answer never ends
        started = time.monotonic()
        assert client.main(["--rest", url, "--plot", "a ghost story", "--timeout", "1.5"]) == 1
        seconds = time.monotonic() - started
    error = capsys.readouterr().err
    assert error == f"error: TF Serving at {url} sent no complete answer within --timeout 1.5 s\n"
    assert seconds < 1.5 + 10  # before: 200 s, the time the trickle takes; the margin is for a loaded machine


@pytest.mark.parametrize("answer", [
    [b"SSH-2.0-OpenSSH_9.6\r\n"],                                                    # not HTTP at all
    [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nnot a chunk\r\n"],  # malformed chunked body
    [b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(101)) + b"\r\n{}"],  # > 100 headers
], ids=["not_http", "bad_chunk", "many_headers"])
def test_the_client_turns_malformed_http_into_its_one_line_error(answer, capsys):
    from export import client

    with raw_server(answer) as url:
        assert client.main(["--rest", url, "--plot", "a ghost story", "--timeout", "20"]) == 1
    out, error = capsys.readouterr()
    assert out == "" and error.startswith(f"error: {url} answered, but the answer is not valid HTTP (")
    assert len(error.splitlines()) == 1 and "Traceback" not in error


def test_serving_refuses_an_empty_request_and_reads_invalid_utf8_as_no_plot(late_fusion_export):
    import tensorflow as tf

    for name, posters in (("serving_default", tf.constant([], tf.string)),
                          ("with_poster_features", tf.zeros([0, 3]))):
        inputs = {"poster" if name == "serving_default" else "poster_features": posters}
        with pytest.raises(tf.errors.InvalidArgumentError, match="a request holds at least 1 movie"):
            late_fusion_export[name](plot=tf.constant([], tf.string), **inputs)
    served = late_fusion_export["serving_default"](plot=tf.constant([b"\xff\xfe\xfd", b"\xc3", b"a ghost"]),
                                                   poster=tf.constant([b"", b"", b""]))
    assert served["inputs_used"].numpy().tolist() == [b"none", b"none", b"plot"]


def test_ids_differing_only_in_case_width_or_invisible_characters_are_one_movie(tmp_path):
    (tmp_path / "p.jpg").write_bytes(image_bytes())
    ids = ["tt0001", "TT0001", "ｔｔ０００１", "tt\u200b0001", "tt0002"]
    rows = [[movie_id, "t", PLOT, "Drama", "p.jpg"] for movie_id in ids]
    csv_path = write_csv(tmp_path / "c.csv", rows, header=("id", "title", "plot", "genres", "poster"))
    reasons, kept = rejected(read_catalogue(str(csv_path)).records)
    assert kept == ["tt0001", "tt0002"]  # before: all five kept, free to land on both sides of the split
    assert reasons == {movie_id: f"duplicate id (first seen at {csv_path}:2 as 'tt0001')" for movie_id in ids[1:4]}
