"""In-graph poster header parsers: a poster's format and declared size, read from its bytes before any decoding.

Decoding allocates width x height (x frames, for a GIF) pixels, so the size must be known first: a
200-byte PNG can declare 2^31 x 2^31 pixels. The parsers are TensorFlow ops, so the SavedModel runs them.
"""
import tensorflow as tf

from genre_tf.limits import MAX_POSTER_PIXELS, MIN_POSTER_SIDE

MAX_JPEG_MARKERS = 1024                # markers walked before a JPEG's frame header; real ones have dozens

JPEG, PNG, GIF, BMP, WEBP = range(1, 6)  # format codes; 0: unknown
_MAGIC = ((JPEG, 0, b"\xff\xd8\xff"), (PNG, 0, b"\x89PNG"), (GIF, 0, b"GIF8"), (BMP, 0, b"BM"), (WEBP, 8, b"WEBP"))


def read_header(poster_bytes):
    """(format code, the first 32 bytes as int64): 0 for an unknown format; short inputs are zero-padded."""
    padded = tf.strings.join([tf.strings.substr(poster_bytes, 0, 32), "\0" * 32])
    head = tf.cast(tf.io.decode_raw(tf.strings.substr(padded, 0, 32), tf.uint8), tf.int64)
    code = tf.constant(0)
    for fmt, position, magic in reversed(_MAGIC):
        code = tf.where(tf.reduce_all(tf.equal(head[position:position + len(magic)], list(magic))), fmt, code)
    return code, head


def poster_dimensions(poster_bytes):
    """int64 [width, height, pixels decoding allocates] from the headers alone; zeros for an unknown format."""
    fmt, head = read_header(poster_bytes)
    return declared_dimensions(poster_bytes, fmt, head)


def declared_dimensions(poster_bytes, fmt, head):
    """poster_dimensions for a poster whose format and first bytes read_header has read: only its format's ops run."""
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


def check_dimensions(size):
    """An op failing (InvalidArgumentError) for an unknown format, a short side or too many pixels."""
    known = tf.debugging.Assert(size[2] > 0, ["poster is not JPEG, PNG, GIF, BMP or WebP"])
    with tf.control_dependencies([known]):
        return tf.group(
            tf.debugging.Assert(size[2] <= MAX_POSTER_PIXELS,
                                ["poster too large: width, height, pixels", size, f"(max {MAX_POSTER_PIXELS})"]),
            tf.debugging.Assert(tf.reduce_min(size[:2]) >= MIN_POSTER_SIDE,
                                ["poster too small: width, height", size[:2], f"(min side {MIN_POSTER_SIDE})"]))


def acceptable_size(dimensions):
    """Whether poster_dimensions' [..., width, height, pixels] is a known format within the limits."""
    return ((dimensions[..., 2] > 0) & (dimensions[..., 2] <= MAX_POSTER_PIXELS)
            & (tf.reduce_min(dimensions[..., :2], axis=-1) >= MIN_POSTER_SIDE))
