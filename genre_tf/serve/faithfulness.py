"""Are the explanations faithful? Deleting each explained genre's top words against as many random words, on a CSV.

    python -m genre_tf.serve.faithfulness --model models/genre_tf --csv test.csv --limit 40 --words 3

Prints one JSON line: the mean probability lost by each deletion, their mean paired difference, how often the
top words lost more, the number of (movie, genre) pairs and the seconds taken (genre_tf.serve.explain.faithfulness).
"""
import argparse
import itertools
import json
import sys
import time

from genre_tf.serve.explain import MAX_WORDS, faithfulness
from genre_tf.serve.predict import latest_version, load_serving, read_csv_movies
from genre_tf.config import CommandLine


def main(argv=None) -> int:
    parser = CommandLine(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="MODEL_BASE (latest version) or a version folder")
    parser.add_argument("--csv", required=True, help="columns: plot, optionally poster (a path), id, title")
    parser.add_argument("--poster-dir", default="")
    parser.add_argument("--limit", type=int, default=100, help="movies to explain (the first ones of the CSV)")
    parser.add_argument("--words", type=int, default=3)
    args = parser.parse_args(argv)
    if args.limit < 1:
        parser.error(f"--limit must be at least 1 movie, got {args.limit}")
    if not 1 <= args.words < MAX_WORDS:  # a plot needs more distinct words than that to be compared
        parser.error(f"--words must be 1 to {MAX_WORDS - 1} (explanations rank the first {MAX_WORDS} distinct words), "
                     f"got {args.words}")
    try:
        started = time.perf_counter()
        movies = itertools.islice(read_csv_movies(args.csv, args.poster_dir), args.limit)
        result = faithfulness(load_serving(latest_version(args.model)), movies, args.words)
        print(json.dumps(dict(result, seconds=round(time.perf_counter() - started, 1)), allow_nan=False))
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
