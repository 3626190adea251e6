"""Posters: the one bounded poster-file reader, Pillow checks, and one TF decoder for prepare, training and serving."""
import functools
import io
import os
import stat
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from genre_tf.config import MIN_POSTER_SIDE

MAX_POSTER_BYTES = 20 * 1024 * 1024  # a poster file larger than this is refused without reading it all
MAX_POSTER_PIXELS = 40_000_000        # width x height; decoding more would cost gigabytes for one poster
MAX_JPEG_MARKERS = 1024                # markers walked before a JPEG's frame header; real ones have dozens
MAX_BATCH = 2 ** 31 - 1               # a batch size no request reaches: one tf.data batch holds a whole request

# Pillow's own decompression-bomb guard (an error at twice the limit, when a file is opened) uses the same limit.
Image.MAX_IMAGE_PIXELS = MAX_POSTER_PIXELS

_FILE_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
               (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"))


class PosterError(ValueError):
    """A poster that cannot be used, with the reason in its message."""


class InputFileError(ValueError):
    """An input file refused by read_input_file, with the reason in its message."""


class InputFileNotFoundError(InputFileError):
    """An input path that names no file."""


def _file_kind(mode: int) -> str:
    return next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")


def read_poster_file(path: str, root: str, limit: int = MAX_POSTER_BYTES) -> bytes:
    """A poster file's bytes (see read_input_file): used by prepare and predict alike."""
    return read_input_file(path, root, limit, "poster")


def read_input_file(path: str, root: str, limit: int, what: str = "input") -> bytes:
    """A regular file's bytes, refused (InputFileError) if outside `root` (symlinks resolved) or over `limit` bytes."""
    real, real_root = os.path.realpath(path), os.path.realpath(root)
    if os.path.commonpath([real, real_root]) != real_root:
        raise InputFileError(f"{what} file outside its folder: {path} resolves to {real}, outside {real_root}")
    try:
        info = os.stat(real)  # before opening: opening a device or a FIFO can block or have effects
        if not stat.S_ISREG(info.st_mode):
            raise InputFileError(f"{what} file not a regular file: {path} is {_file_kind(info.st_mode)}")
        # O_NONBLOCK: should the file have become a FIFO since the stat, open() cannot wait for a writer.
        descriptor = os.open(real, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise InputFileNotFoundError(f"{what} file not found: {path}") from None
    except OSError as error:
        raise InputFileError(f"{what} file unreadable: {path}: {error.strerror}") from None
    try:
        data = _read_at_most(descriptor, limit)
    except OSError as error:
        raise InputFileError(f"{what} file unreadable: {path}: {error.strerror}") from None
    finally:
        os.close(descriptor)
    if data is None:
        size = f"{limit // 2 ** 20} MiB ({limit} bytes)" if limit % 2 ** 20 == 0 else f"{limit} bytes"
        raise InputFileError(f"{what} file too large: {path} is larger than the limit of {size}")
    return data


def _read_at_most(descriptor: int, limit: int) -> bytes | None:
    """The whole regular file open at `descriptor`, or None when it holds more than `limit` bytes."""
    info = os.fstat(descriptor)
    if not stat.S_ISREG(info.st_mode):
        raise OSError(0, f"it became {_file_kind(info.st_mode)} while being opened")
    if info.st_size > limit:
        return None
    chunks, size = [], 0
    while size <= limit:  # the file can grow while it is read: read at most limit + 1 bytes
        chunk = os.read(descriptor, limit + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return None if size > limit else b"".join(chunks)


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
    import tensorflow as tf

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
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
    def png(poster_bytes):
        # zlib level 1: a 224 px poster encodes in 6 ms, not 13 ms, and takes 88 KiB, not 86 KiB.
        return tf.io.encode_png(decode_poster(poster_bytes, image_size), compression=1)
    return png


_JPEG, _PNG, _GIF, _BMP, _WEBP = range(1, 6)
_MAGIC = ((_JPEG, 0, b"\xff\xd8\xff"), (_PNG, 0, b"\x89PNG"), (_GIF, 0, b"GIF8"), (_BMP, 0, b"BM"), (_WEBP, 8, b"WEBP"))


def _header(poster_bytes):
    """(format code, the first 32 bytes as int64): 0 for an unknown format; short inputs are zero-padded."""
    import tensorflow as tf

    padded = tf.strings.join([tf.strings.substr(poster_bytes, 0, 32), "\0" * 32])
    head = tf.cast(tf.io.decode_raw(tf.strings.substr(padded, 0, 32), tf.uint8), tf.int64)
    code = tf.constant(0)
    for fmt, position, magic in reversed(_MAGIC):
        code = tf.where(tf.reduce_all(tf.equal(head[position:position + len(magic)], list(magic))), fmt, code)
    return code, head


def poster_dimensions(poster_bytes):
    """int64 [width, height, pixels decoding allocates] from the headers alone; zeros for an unknown format."""
    fmt, head = _header(poster_bytes)
    return _dimensions(poster_bytes, fmt, head)


def _dimensions(poster_bytes, fmt, head):
    """poster_dimensions for a poster whose format and first bytes _header has read: only its format's ops run."""
    import tensorflow as tf

    def little(position, size):
        return sum(head[position + i] * 256 ** i for i in range(size))

    def big(position, size):
        return sum(head[position + i] * 256 ** (size - 1 - i) for i in range(size))

    def jpeg():
        return tf.concat([_jpeg_frame(poster_bytes), [0]], 0)

    def gif():
        # TensorFlow decodes every frame, and a frame may be larger than the canvas the header declares.
        width, height, frame_pixels = tf.unstack(_gif_frames(poster_bytes))
        return tf.stack([tf.maximum(width, little(6, 2)), tf.maximum(height, little(8, 2)), frame_pixels])

    def bmp():
        height = little(22, 4)  # negative (two's complement) in a top-down bitmap
        return tf.stack([little(18, 4), tf.where(height >= 2 ** 31, 2 ** 32 - height, height), 0])

    def webp():
        chunk, lossless = big(12, 4) - 0x56503800, little(21, 4)  # 0x20, 0x4C, 0x58: "VP8 ", "VP8L", "VP8X"
        sizes = {0x20: [little(26, 2) % 2 ** 14, little(28, 2) % 2 ** 14],
                 0x4C: [lossless % 2 ** 14 + 1, lossless // 2 ** 14 % 2 ** 14 + 1],  # 14 bits each, minus one
                 0x58: [little(24, 3) + 1, little(27, 3) + 1]}
        size = tf.zeros([2], tf.int64)
        for code, width_height in sizes.items():
            size = tf.where(tf.equal(chunk, code), tf.stack(width_height), size)
        return tf.concat([size, [0]], 0)

    size = tf.switch_case(fmt, [lambda: tf.zeros([3], tf.int64), jpeg,
                                lambda: tf.stack([big(16, 4), big(20, 4), 0]), gif, bmp, webp])
    size = tf.minimum(size, 2 ** 31)  # a declared 2**32 x 2**32 would overflow int64 when multiplied
    return tf.stack([size[0], size[1], tf.maximum(size[0] * size[1], size[2])])


def _jpeg_frame(poster_bytes):
    """int64 [width, height] of a JPEG's first frame header, walking its markers as libjpeg does; zeros if none.

    Unlike tf.image.extract_jpeg_shape it never fails, so the serving graph can check every poster
    before any is decoded.
    """
    import tensorflow as tf

    bytes_ = tf.cast(tf.io.decode_raw(poster_bytes, tf.uint8), tf.int64)
    data = tf.concat([bytes_, tf.zeros([16], tf.int64)], 0)
    length = tf.cast(tf.strings.length(poster_bytes), tf.int64)
    marks = tf.concat([tf.where(tf.equal(bytes_, 0xFF))[:, 0], [length]], 0)  # where each 0xFF is, then the end

    def step(position, size):  # every step moves forward: the walk ends
        window = tf.gather(data, tf.minimum(position, length) + tf.range(9, dtype=tf.int64))
        marker = tf.where(tf.equal(window[0], 0xFF), window[1], -1)  # -1: stray bytes, skipped as libjpeg does
        frame = (marker >= 0xC0) & (marker <= 0xCF) & (marker != 0xC4) & (marker != 0xC8) & (marker != 0xCC)
        standalone = ((marker >= 0xD0) & (marker <= 0xD8)) | tf.equal(marker, 0x01)
        no_frame = tf.equal(marker, 0xDA) | tf.equal(marker, 0xD9)  # a scan or the end before any frame header
        next_mark = tf.gather(marks, tf.searchsorted(marks, tf.reshape(position + 1, [1]))[0])  # skips a stray run
        following = tf.where(marker < 0, next_mark,
                             tf.where(tf.equal(marker, 0xFF) | tf.equal(marker, 0), position + 1,
                                      tf.where(standalone, position + 2, position + 2 + window[2] * 256 + window[3])))
        size = tf.where(frame, tf.stack([window[7] * 256 + window[8], window[5] * 256 + window[6]]), size)
        return tf.where(frame | no_frame, length, following), size

    def walk():
        # A real JPEG has a few dozen segments before its frame header; a file of tiny segments meant to
        # stall the walk stops after MAX_JPEG_MARKERS with no size, so it is refused as no poster.
        return tf.while_loop(lambda position, _: position < length, step,
                             (tf.constant(2, tf.int64), tf.zeros([2], tf.int64)),
                             maximum_iterations=MAX_JPEG_MARKERS)[1]

    return tf.function(walk)() if tf.executing_eagerly() else walk()


def _gif_frames(poster_bytes):
    """int64 [largest right edge, largest bottom edge, summed area] of a GIF's frames, walking its blocks."""
    import tensorflow as tf

    data = tf.concat([tf.cast(tf.io.decode_raw(poster_bytes, tf.uint8), tf.int64), tf.zeros([16], tf.int64)], 0)
    length = tf.cast(tf.strings.length(poster_bytes), tf.int64)
    palette = tf.where(data[10] >= 128, 3 * tf.bitwise.left_shift(tf.constant(2, tf.int64), data[10] % 8), 0)

    def step(position, in_sub_blocks, right, bottom, area):  # every step moves forward: the walk ends
        window = tf.gather(data, tf.minimum(position, length) + tf.range(10, dtype=tf.int64))
        image, extension = tf.equal(window[0], 0x2C), tf.equal(window[0], 0x21)
        frame = image & ~in_sub_blocks
        local = tf.where(window[9] >= 128, 3 * tf.bitwise.left_shift(tf.constant(2, tf.int64), window[9] % 8), 0)
        left, top, width, height = (window[i] + 256 * window[i + 1] for i in (1, 3, 5, 7))
        after_block = tf.where(image, position + 11 + local, tf.where(extension, position + 2, length))
        return (tf.where(in_sub_blocks, position + 1 + window[0], after_block),
                tf.where(in_sub_blocks, window[0] > 0, image | extension),
                tf.maximum(right, tf.where(frame, left + width, 0)),
                tf.maximum(bottom, tf.where(frame, top + height, 0)),
                area + tf.where(frame, width * height, 0))

    def walk(start):
        zero = tf.constant(0, tf.int64)
        _, _, right, bottom, area = tf.while_loop(lambda position, *_: position < length, step,
                                                  (start, tf.constant(False), zero, zero, zero))
        return tf.stack([right, bottom, area])

    # Run eagerly, the loop would dispatch op by op, a hundred times slower than as a graph.
    return tf.function(walk)(13 + palette) if tf.executing_eagerly() else walk(13 + palette)


def _check_dimensions(size):
    """An op failing (InvalidArgumentError) for an unknown format, a short side or too many pixels."""
    import tensorflow as tf

    known = tf.debugging.Assert(size[2] > 0, ["poster is not JPEG, PNG, GIF, BMP or WebP"])
    with tf.control_dependencies([known]):
        return tf.group(
            tf.debugging.Assert(size[2] <= MAX_POSTER_PIXELS,
                                ["poster too large: width, height, pixels", size, f"(max {MAX_POSTER_PIXELS})"]),
            tf.debugging.Assert(tf.reduce_min(size[:2]) >= MIN_POSTER_SIDE,
                                ["poster too small: width, height", size[:2], f"(min side {MIN_POSTER_SIDE})"]))


def _composite_on_white(rgba):
    """uint8 RGB from uint8 RGBA, over a white background."""
    import tensorflow as tf

    values = tf.cast(rgba, tf.float32)
    alpha = values[..., 3:] / 255.0
    return tf.cast(tf.round(values[..., :3] * alpha + 255.0 * (1.0 - alpha)), tf.uint8)


def _decode_rgb(poster_bytes, fmt):
    """uint8 [height, width, 3]: PNG and WebP transparency composited on white, as load_poster does."""
    import tensorflow as tf

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
    image = tf.cond(tf.equal(fmt, _PNG), on_white(4), lambda: tf.cond(tf.equal(fmt, _WEBP), on_white(0), opaque))
    image.set_shape([None, None, 3])
    return image


def decode_poster(poster_bytes, image_size: int):
    """Decode one encoded poster (a scalar string tensor) into uint8 [image_size, image_size, 3].

    The decoder of prepare (prepared_poster) and of the tf.data training pipeline, which reads the
    prepared PNG back unchanged at the prepared size; decode_posters gives the same pixels in serving. A
    poster whose header declares too many pixels or too small a side fails (InvalidArgumentError)
    before it is decoded.
    """
    import tensorflow as tf

    fmt, head = _header(poster_bytes)
    with tf.control_dependencies([_check_dimensions(_dimensions(poster_bytes, fmt, head))]):
        return _decode_resized(tf.identity(poster_bytes), fmt, image_size)


def _decode_resized(poster_bytes, fmt, image_size: int):
    """The one decode and resize of every poster: prepare (via decode_poster), training's tf.data, the SavedModel."""
    import tensorflow as tf

    image = tf.image.resize(_decode_rgb(poster_bytes, fmt), [image_size, image_size], method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def acceptable_size(dimensions):
    """Whether poster_dimensions' [..., width, height, pixels] is a known format within the limits."""
    import tensorflow as tf

    return ((dimensions[..., 2] > 0) & (dimensions[..., 2] <= MAX_POSTER_PIXELS)
            & (tf.reduce_min(dimensions[..., :2], axis=-1) >= MIN_POSTER_SIDE))


def decode_posters(posters, image_size: int):
    """uint8 [batch, image_size, image_size, 3] and a decoded flag per poster, the serving graph's decoder.

    It never fails: a poster of unknown format, outside the limits (read from its header first) or
    that does not decode gives zeros and False. Its pixels are decode_poster's.
    """
    import tensorflow as tf

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
        lambda item: tf.cond(item[1], lambda: _decode_resized(item[0], _header(item[0])[0], image_size),
                             lambda: blank),
        (posters, decoded), fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.uint8))
    return images, decoded
