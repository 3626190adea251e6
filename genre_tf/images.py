"""Poster decoding: Pillow validation at prepare time, the TensorFlow decoder shared by training and serving."""
import io
import warnings

from PIL import Image, UnidentifiedImageError

# Pillow warns about, and refuses, decompression bombs; a poster never needs more than this.
Image.MAX_IMAGE_PIXELS = 64_000_000


class PosterError(ValueError):
    """A poster that cannot be used, with the reason in its message."""


def load_poster(data: bytes, min_side: int = 32) -> Image.Image:
    """Decode poster bytes (JPEG, PNG, GIF, BMP, WebP, ...) into an RGB image, or raise PosterError."""
    if not data:
        raise PosterError("poster file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.load()  # Image.open is lazy: truncated files only fail here.
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombWarning,
            Image.DecompressionBombError) as error:
        raise PosterError(f"poster does not decode: {error}") from None
    if min(image.size) < min_side:
        raise PosterError(f"poster too small: {image.size[0]}x{image.size[1]} (min side {min_side})")
    if image.mode != "RGB":
        # Palette and RGBA posters are composited on white so transparency does not turn black.
        if image.mode in ("P", "PA", "RGBA", "LA"):
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            image = Image.alpha_composite(background, rgba)
        image = image.convert("RGB")
    return image


def encode_poster(image: Image.Image, image_size: int, quality: int = 95) -> bytes:
    """Resize an RGB poster to image_size x image_size and encode it as JPEG for the prepared dataset."""
    resized = image.resize((image_size, image_size), Image.BILINEAR, reducing_gap=None)
    buffer = io.BytesIO()
    resized.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def decode_poster(poster_bytes, image_size: int):
    """Decode one encoded poster (a scalar string tensor) into uint8 [image_size, image_size, 3].

    The one decoder used by the tf.data pipeline and by the exported serving signature.
    """
    import tensorflow as tf

    image = tf.io.decode_image(poster_bytes, channels=3, expand_animations=False)
    image = tf.image.resize(image, [image_size, image_size], method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)
