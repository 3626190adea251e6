"""decode_posters, the serving graph's poster decoder: never fails, flags what it could not decode."""
import io
import zlib

import genre_tf  # noqa: F401  selects tf-keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from genre_tf.data.images import decode_poster, decode_posters
from genre_tf.data.poster_headers import poster_dimensions


def encoded(fmt: str, size=(40, 50), mode="RGB", seed=0, **options) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], len(mode)), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels.squeeze(), mode).save(buffer, fmt, **options)
    return buffer.getvalue()


def corrupt_png_data(data: bytes) -> bytes:
    """The PNG with its image data replaced by bytes that are not a zlib stream (chunk CRC still right)."""
    start = data.index(b"IDAT") - 4
    length = int.from_bytes(data[start:start + 4], "big")
    garbage = bytes(range(256))[:length] * (length // 256 + 1)
    chunk = b"IDAT" + garbage[:length]
    return data[:start + 4] + chunk + zlib.crc32(chunk).to_bytes(4, "big") + data[start + 12 + length:]


def test_a_batch_of_good_and_bad_posters_decodes_the_good_ones_exactly():
    good = [encoded("JPEG", seed=1), encoded("PNG", mode="RGBA", seed=2), encoded("GIF", seed=3),
            encoded("BMP", seed=4), encoded("WEBP", seed=5)]
    jpeg = encoded("JPEG", size=(200, 300), seed=6)
    bad = {"truncated JPEG body": jpeg[:len(jpeg) // 2], "PNG with a broken zlib stream": corrupt_png_data(good[1]),
           "empty": b"", "not an image": b"plain text, not a poster", "JPEG without a frame": b"\xff\xd8\xff\xd9",
           "declared 50000 x 50000": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + (50000).to_bytes(4, "big") * 2,
           "tiny": encoded("PNG", size=(8, 8))}
    for name, data in bad.items():
        if name.startswith(("truncated", "PNG with")):  # headers that pass: only the decoder can tell
            assert poster_dimensions(tf.constant(data)).numpy()[2] > 0, name
            with pytest.raises(tf.errors.InvalidArgumentError):
                decode_poster(tf.constant(data), 32)
    posters = [good[0], *bad.values(), *good[1:]]
    images, decoded = tf.function(lambda p: decode_posters(p, 32))(tf.constant(posters))
    assert decoded.numpy().tolist() == [True] + [False] * len(bad) + [True] * 4
    for index, data in enumerate(posters):
        expected = decode_poster(tf.constant(data), 32).numpy() if decoded[index] else np.zeros((32, 32, 3))
        np.testing.assert_array_equal(images[index].numpy(), expected)


def test_an_empty_batch_and_an_all_bad_batch():
    images, decoded = decode_posters(tf.constant([], tf.string), 16)
    assert images.shape == (0, 16, 16, 3) and decoded.shape == (0,)
    images, decoded = decode_posters(tf.constant([b"", b"GIF89a"]), 16)
    assert decoded.numpy().tolist() == [False, False] and not images.numpy().any()


@pytest.mark.parametrize("progressive", [False, True])
def test_jpeg_dimensions_come_from_the_frame_header_as_libjpeg_reads_it(progressive):
    data = encoded("JPEG", size=(37, 51), progressive=progressive)
    padded = data[:2] + b"\xff\xfe\x00\x05abc" + b"\x00\x13" + data[2:]  # a comment, then two stray bytes
    for poster in (data, padded):
        assert poster_dimensions(tf.constant(poster)).numpy().tolist() == [37, 51, 37 * 51]
        assert tf.image.extract_jpeg_shape(poster).numpy().tolist() == [51, 37, 3]


def test_a_jpeg_built_to_stall_the_header_walk_is_refused_quickly():
    import time

    jpeg = encoded("JPEG")
    stray = jpeg[:20] + b"\x00" * 2_000_000 + jpeg[20:]  # 2 MB of stray bytes after the JFIF segment
    tiny_segments = jpeg[:2] + b"\xff\xe0\x00\x02" * 200_000 + jpeg[2:]  # 200,000 empty segments
    decode = tf.function(lambda p: decode_posters(p, 32))
    decode(tf.constant([jpeg]))  # traced before the clock starts
    started = time.perf_counter()
    _, decoded = decode(tf.constant([stray, tiny_segments, jpeg]))
    # each walked byte by byte took 60 s and more before; the margin is for shared, loaded CI cores
    assert time.perf_counter() - started < 40
    # Stray bytes are skipped as libjpeg skips them (it decodes this file, with a warning); more
    # markers than any real JPEG has is no poster.
    assert decoded.numpy().tolist() == [True, False, True]
    assert poster_dimensions(tf.constant(stray)).numpy().tolist() == [40, 50, 2000]
