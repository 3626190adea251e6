"""Posters: Pillow's checks, and the one TensorFlow decoder of prepare, training and serving."""
import functools
import io
import warnings

import numpy as np
import tensorflow as tf
from PIL import Image, UnidentifiedImageError

from genre_tf.limits import MAX_POSTER_PIXELS, MIN_POSTER_SIDE
from genre_tf.data.poster_headers import (PNG, WEBP, acceptable_size, check_dimensions, declared_dimensions,
                                          poster_dimensions, read_header)

MAX_BATCH = 2 ** 31 - 1               # a batch size no request reaches: one tf.data batch holds a whole request

# Pillow's own decompression-bomb guard (an error at twice the limit, when a file is opened) uses the same limit.
Image.MAX_IMAGE_PIXELS = MAX_POSTER_PIXELS


class PosterError(ValueError):
    """A poster that cannot be used, with the reason in its message."""


def check_poster_size(width: int, height: int, min_side: int = MIN_POSTER_SIDE) -> None:
    """Raise PosterError when a poster's declared size is above the pixel limit or below the minimum side."""
    if width * height > MAX_POSTER_PIXELS:
        raise PosterError(f"poster too large: {width}x{height} = {width * height} pixels (max {MAX_POSTER_PIXELS})")
    if min(width, height) < min_side:
        raise PosterError(f"poster too small: {width}x{height} (min side {min_side})")


def load_poster(data: bytes, min_side: int = MIN_POSTER_SIDE) -> Image.Image:
    """Decode poster bytes (JPEG, PNG, GIF, BMP, WebP, ...) into an RGB image, or raise PosterError naming why."""
    if not data:
        raise PosterError("poster file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Pillow warns above MAX_IMAGE_PIXELS; check_poster_size refuses those, naming the size.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            check_poster_size(*image.size, min_side)  # from the header, before any pixel is decoded
            image.load()  # Image.open is lazy: truncated files only fail here.
    except PosterError:
        raise
    except Image.DecompressionBombError:  # raised by Image.open above twice MAX_IMAGE_PIXELS
        raise PosterError(f"poster too large: more than {2 * MAX_POSTER_PIXELS} pixels "
                          f"(max {MAX_POSTER_PIXELS})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise PosterError(f"poster does not decode: {error}") from None
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """An RGB image with the pixels decode_poster gives for the same file, so training and serving agree."""
    if image.format == "GIF" and "transparency" in image.info:
        # TensorFlow's GIF decoder leaves transparent pixels black and gives no alpha to composite.
        return _composite(image, (0, 0, 0, 255))
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        # An alpha channel, or PNG transparency (tRNS), is composited on white, as decode_poster does.
        return _composite(image, (255, 255, 255, 255))
    if image.mode.startswith("I;16"):
        # 16-bit greyscale: TensorFlow keeps the high byte, where Pillow's convert would clip at 255.
        return Image.fromarray((np.asarray(image) >> 8).astype(np.uint8), "L").convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def _composite(image: Image.Image, background: tuple) -> Image.Image:
    rgba = image.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, background), rgba).convert("RGB")


def prepared_poster(data: bytes, image_size: int) -> bytes:
    """The poster prepare stores: decode_poster's pixels for `data`, lossless as PNG, or PosterError.

    The SavedModel resizes raw posters with decode_poster too, so a prepared poster holds exactly the
    pixels serving computes for the same file (Pillow's resize and JPEG re-encoding were off by a mean of
    2 to 12 grey levels on the posters of tests/test_poster_pipeline.py).
    """
    try:
        return _prepared_png(image_size)(tf.constant(data)).numpy()
    except tf.errors.OpError as error:
        reason = _op_error_reason(error.message)
        raise PosterError(f"poster does not decode in TensorFlow, so serving could not read it: {reason}") from None


def _op_error_reason(message: str) -> str:
    """The reason in a graph execution error, without the traceback before it and the node names after it."""
    reason = message.split("\n\n")[-1].split("\n\t")[0].strip().removeprefix("assertion failed: ")
    return reason.replace("] [", " ").strip("[]")


@functools.lru_cache(maxsize=4)
def _prepared_png(image_size: int):
    """prepared_poster's graph for one size, traced once: eagerly, each JPEG header walk would trace anew."""
    @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
    def png(poster_bytes):
        # zlib level 1: a 224 px poster encodes in 6 ms, not 13 ms, and takes 88 KiB, not 86 KiB.
        return tf.io.encode_png(decode_poster(poster_bytes, image_size), compression=1)
    return png


def _composite_on_white(rgba):
    """uint8 RGB from uint8 RGBA, over a white background."""
    values = tf.cast(rgba, tf.float32)
    alpha = values[..., 3:] / 255.0
    return tf.cast(tf.round(values[..., :3] * alpha + 255.0 * (1.0 - alpha)), tf.uint8)


def _decode_rgb(poster_bytes, fmt):
    """uint8 [height, width, 3]: PNG and WebP transparency composited on white, as load_poster does."""
    def on_white(channels: int):
        def decode():
            image = tf.io.decode_image(poster_bytes, channels=channels, expand_animations=False)
            return tf.cond(tf.shape(image)[-1] == 4, lambda: _composite_on_white(image), lambda: image[..., :3])
        return decode

    def opaque():
        # JPEG has no alpha; GIF cannot be decoded with 4 channels; a BMP's fourth byte is unused
        # padding in most files, and Pillow ignores it too.
        return tf.io.decode_image(poster_bytes, channels=3, expand_animations=False)

    # PNG gives 4 channels for any colour type (tRNS included); WebP only as many as the file has.
    image = tf.cond(tf.equal(fmt, PNG), on_white(4), lambda: tf.cond(tf.equal(fmt, WEBP), on_white(0), opaque))
    image.set_shape([None, None, 3])
    return image


def decode_poster(poster_bytes, image_size: int):
    """Decode one encoded poster (a scalar string tensor) into uint8 [image_size, image_size, 3].

    The decoder of prepare (prepared_poster) and of the tf.data training pipeline, which reads the
    prepared PNG back unchanged at the prepared size; decode_posters gives the same pixels in serving. A
    poster whose header declares too many pixels or too small a side fails (InvalidArgumentError)
    before it is decoded.
    """
    fmt, head = read_header(poster_bytes)
    with tf.control_dependencies([check_dimensions(declared_dimensions(poster_bytes, fmt, head))]):
        return _decode_resized(tf.identity(poster_bytes), fmt, image_size)


def _decode_resized(poster_bytes, fmt, image_size: int):
    """The one decode and resize of every poster: prepare (via decode_poster), training's tf.data, the SavedModel."""
    image = tf.image.resize(_decode_rgb(poster_bytes, fmt), [image_size, image_size], method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def decode_posters(posters, image_size: int):
    """uint8 [batch, image_size, image_size, 3] and a decoded flag per poster, the serving graph's decoder.

    It never fails: a poster of unknown format, outside the limits (read from its header first) or
    that does not decode gives zeros and False. Its pixels are decode_poster's.
    """
    dimensions = tf.map_fn(poster_dimensions, posters, fn_output_signature=tf.TensorSpec([3], tf.int64))
    candidates = tf.where(acceptable_size(dimensions))[:, 0]
    # tf.data's ignore_errors is TensorFlow's only way past a failing op. A dataset made per call
    # instantiates its functions per call, so only the bare decoder runs inside it (to find the posters
    # that decode), and no reduce function: that alone cost 5 ms a request. Decoding proper runs after.
    options = tf.data.Options()
    options.experimental_optimization.apply_default_optimizations = False
    options.autotune.enabled = False
    decodes = (tf.data.Dataset.from_tensor_slices((candidates, tf.gather(posters, candidates)))
               .map(lambda index, data: (index, tf.shape(tf.raw_ops.DecodeImage(contents=data, channels=0,
                                                                                   expand_animations=False))))
               .ignore_errors())
    first = tf.data.Dataset.from_tensors((tf.constant(-1, tf.int64), tf.zeros([3], tf.int32)))  # never empty
    decoded_indices, _ = first.concatenate(decodes).batch(MAX_BATCH).with_options(options).get_single_element()
    decoded = tf.reduce_any(tf.equal(tf.range(tf.size(posters, out_type=tf.int64))[:, None],
                                     decoded_indices[None, :]), axis=1)
    blank = tf.zeros([image_size, image_size, 3], tf.uint8)
    images = tf.map_fn(
        lambda item: tf.cond(item[1], lambda: _decode_resized(item[0], read_header(item[0])[0], image_size),
                             lambda: blank),
        (posters, decoded), fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.uint8))
    return images, decoded
