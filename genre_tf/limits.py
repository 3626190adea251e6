"""Every limit genre_tf puts on its inputs, in one place: prepare, training, predict, batch scoring and the
SavedModel's signatures refuse what is over them (one record, or a request whole) with the limit named.

Constants only, importing nothing, so every module of every stage may read them.
"""

# A movie's inputs
MAX_PLOT_BYTES = 65_536               # UTF-8 bytes of one plot; the paper's 545-word plots take about 4 KB
MAX_POSTER_BYTES = 20 * 1024 * 1024   # a poster file larger than this is refused without reading it all
MAX_POSTER_PIXELS = 40_000_000        # width x height (x frames); decoding more would cost gigabytes for one poster
MIN_POSTER_SIDE = 32                  # a smaller poster carries no usable picture
MAX_METADATA_BYTES = 16 * 1024 * 1024  # one MM-IMDb <id>.json or split.json; real ones are a few KB
MAX_GENRE_CHARS = 64                  # one genre name; the longest real ones take about 20
MAX_CSV_RECORD_BYTES = 1 << 20        # one CSV row of prepare, predict and batch_predict: a plot, an id, a path

# Requests, batches and sizes
MAX_REQUEST_MOVIES = 512              # movies in one SavedModel call or one predict batch
MAX_BATCH_SIZE = 65_536               # a training batch; larger ones exhaust memory long before this
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 32, 1024  # the side of the square posters prepare writes and models read
MAX_CONFIG_CHARS = 1_000_000          # a config file; a real one is a few hundred characters
MAX_CONFIG_DEPTH = 16                # lists and mappings inside one another in a config; real ones nest 3 deep


PLOT_TOO_LONG = f"plot too long (max {MAX_PLOT_BYTES} bytes, the limit of prepare and of the served model)"


def oversized_plot(plot: str) -> str | None:
    """Why a plot is refused for its size (the one message prepare, predict and batch scoring give), or None."""
    size = len(plot.encode("utf-8", "surrogateescape"))
    if size > MAX_PLOT_BYTES:
        return f"plot too long: {size} bytes (max {MAX_PLOT_BYTES} bytes, the limit of prepare and of the served model)"
    return None
