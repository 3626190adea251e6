"""One poster pipeline: a poster file gives the same pixels through prepare + tf.data as through the SavedModel."""
import csv
import hashlib
import io
import json
import pathlib

import genre_tf  # noqa: F401  selects tf-keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from conftest import write_csv
from genre_tf.config import PrepareConfig, ValidationRules
from genre_tf.data.dataset import DATASET_FORMAT, MOVIE_ID, POSTER, load_prepared, make_dataset, raw_examples
from genre_tf.data.images import decode_poster, decode_posters
from genre_tf.data.prepare import prepare
from genre_tf.data.readers import SPLIT_NAMES

PLOT = "a family story told over one long night in the dark city where the hero learns to love and laugh again"
WIDTH, HEIGHT = 150, 240  # portrait, as posters are: 32 px shrinks both sides, 224 px stretches one


def photo(seed: int, mode: str = "RGB") -> Image.Image:
    """Gradients plus noise: real detail, which JPEG's chroma subsampling and a second resize both change."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    channels = [255 * x / WIDTH, 255 * y / HEIGHT, 127 + 120 * np.sin((x + y) / 9.0), 255 * (x + y < 200) + 90]
    pixels = np.stack(channels[:len(mode)], -1) + rng.normal(0, 40, (HEIGHT, WIDTH, len(mode)))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8).squeeze(), mode)


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def animated_gif() -> bytes:
    """Two frames; the second, inverted, must be ignored in prepare and serving alike."""
    first = photo(5).quantize(64)
    second = Image.fromarray(255 - np.asarray(photo(5))).quantize(64)
    return encoded(first, "GIF", save_all=True, append_images=[second], duration=100, loop=0)


def posters() -> dict[str, bytes]:
    """One poster file per format the SavedModel reads, with transparency where the format has it."""
    palette = photo(3).quantize(64)
    return {"jpeg": encoded(photo(1), "JPEG", quality=90),
            "progressive.jpeg": encoded(photo(2), "JPEG", quality=75, progressive=True),
            "rgba.png": encoded(photo(3, "RGBA"), "PNG"),  # alpha composited on white
            "grey.png": encoded(photo(4, "L"), "PNG"),
            "gif": encoded(palette, "GIF", transparency=0),  # transparent pixels black, as TensorFlow leaves them
            "animated.gif": animated_gif(),
            "bmp": encoded(photo(6), "BMP"),
            "webp": encoded(photo(7), "WEBP", quality=80),
            "rgba.webp": encoded(photo(8, "RGBA"), "WEBP", lossless=True)}


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    """A CSV catalogue of one movie per poster file, plus a TIFF poster that Pillow reads and TensorFlow cannot."""
    folder = tmp_path_factory.mktemp("formats")
    files, rows = dict(posters(), tif=encoded(photo(9), "TIFF")), []
    for index, (name, data) in enumerate(files.items()):
        (folder / f"poster.{name}").write_bytes(data)
        rows.append((name, f"M{index}", PLOT, "Drama|Comedy" if index % 2 else "Drama", f"poster.{name}", 2000, "en"))
    return write_csv(str(folder / "movies.csv"), rows)


def prepared_at(catalogue: str, tmp_path_factory, size: int) -> str:
    out = str(tmp_path_factory.mktemp(f"prepared{size}") / "prep")
    prepare(PrepareConfig(catalogue=catalogue, out=out, rules=ValidationRules(image_size=size),
                          min_train_movies=1), progress=False)
    return out


def training_pixels(path: str) -> dict[str, np.ndarray]:
    """uint8 pixels of every prepared poster as tf.data yields them for training, by movie id."""
    prepared, pixels = load_prepared(path), {}
    for split in SPLIT_NAMES:
        for inputs, _ in make_dataset(prepared, split, 16, training=False, input_names=[MOVIE_ID, POSTER]):
            pixels.update(zip((i.decode() for i in inputs[MOVIE_ID].numpy()), inputs[POSTER].numpy(), strict=True))
    return pixels


def serving_pixels(files: dict[str, bytes], size: int) -> dict[str, np.ndarray]:
    """uint8 pixels of the raw poster files as the SavedModel's decoder computes them, by movie id."""
    images, decoded = tf.function(lambda batch: decode_posters(batch, size))(tf.constant(list(files.values())))
    assert decoded.numpy().all()
    return dict(zip(files, images.numpy(), strict=True))


@pytest.mark.parametrize("size", [32, 224])
def test_every_format_trains_on_the_pixels_the_saved_model_computes(catalogue, tmp_path_factory, size):
    path = prepared_at(catalogue, tmp_path_factory, size)
    trained, served = training_pixels(path), serving_pixels(posters(), size)
    for name in served:
        assert trained[name].shape == served[name].shape == (size, size, 3), name
        difference = np.abs(trained[name].astype(int) - served[name].astype(int))
        # Measured: 0 in every format; Pillow's resize and JPEG re-encoding gave 25 to 127 (mean 1.7 to 11.9).
        assert difference.max() <= 1, (name, difference.max(), difference.mean())
    assert sorted(trained) == sorted(served)  # every format kept, the TIFF rejected
    # The animated GIF is its first frame: the inverted second frame would be about 100 levels away.
    first_frame = decode_poster(tf.constant(encoded(photo(5).quantize(64), "GIF")), size).numpy().astype(int)
    assert np.abs(trained["animated.gif"] - first_frame).mean() < 3
    # The transparent PNG is its pixels composited on white (rounded as TensorFlow rounds), then resized.
    rgba = np.asarray(photo(3, "RGBA"), np.float32)
    alpha = rgba[..., 3:] / 255.0
    on_white = np.round(rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    expected = decode_poster(tf.constant(encoded(Image.fromarray(on_white), "PNG")), size).numpy().astype(int)
    assert np.abs(trained["rgba.png"] - expected).max() <= 1
    with open(pathlib.Path(path) / "rejects.csv", newline="") as handle:
        reasons = {row["movie_id"]: row["reason"] for row in csv.DictReader(handle)}
    assert reasons == {"tif": "poster does not decode in TensorFlow, so serving could not read it: "
                              "poster is not JPEG, PNG, GIF, BMP or WebP"}


def test_the_prepared_folder_stores_png_under_a_new_format_and_fingerprint(catalogue, tmp_path_factory):
    path = prepared_at(catalogue, tmp_path_factory, 40)
    metadata = json.loads((pathlib.Path(path) / "dataset.json").read_text())
    assert metadata["format"] == DATASET_FORMAT == 2
    prepared = load_prepared(path)
    # The warm-up poster training writes is raw_examples' first: a PNG the SavedModel decodes to training's pixels.
    _, stored = raw_examples(prepared, "train")
    first = Image.open(io.BytesIO(stored[0]))
    assert (first.format, first.size, first.mode) == ("PNG", (40, 40), "RGB")
    trained = training_pixels(path)
    served = serving_pixels(dict(zip(prepared.split["train"], stored, strict=True)), 40)
    for movie_id, pixels in served.items():
        np.testing.assert_array_equal(pixels, trained[movie_id])
    # Format 1 hashed the examples alone; hashing the format too keeps feature caches of another format apart.
    examples = hashlib.sha256()
    for split in SPLIT_NAMES:
        for record in tf.data.TFRecordDataset(prepared.shards(split)):
            examples.update(record.numpy())
    assert prepared.fingerprint != examples.hexdigest()[:16]


def test_a_dataset_of_another_format_is_read_with_a_warning_or_refused(small_prepared, tmp_path, capsys):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(small_prepared, old)
    metadata = json.loads((old / "dataset.json").read_text())
    (old / "dataset.json").write_text(json.dumps({k: v for k, v in metadata.items() if k != "format"}))
    assert load_prepared(str(old)).fingerprint == metadata["fingerprint"]
    load_prepared(str(old))
    warning = capsys.readouterr().err
    assert warning.count("warning:") == 1  # once per folder, however often it is opened
    assert f"{old} was prepared before dataset format 2" in warning and "re-run `python -m genre_tf.prepare`" in warning
    (old / "dataset.json").write_text(json.dumps(dict(metadata, format=3)))
    with pytest.raises(ValueError, match="format 3, newer than this genre_tf reads"):
        load_prepared(str(old))
