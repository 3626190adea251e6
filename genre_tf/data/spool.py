"""Spools: validated movies (posters and records) wait on disk between validation and the shard writer, not in
memory."""
import dataclasses
import json
import os
import sys
import tempfile
from typing import NamedTuple

from genre_tf.data.records import Movie


class SpooledPoster(NamedTuple):
    """Where one poster's bytes lie in the spool file."""

    offset: int
    length: int


class PosterSpool:
    """An anonymous temporary file of poster bytes: `put` appends, `get` reads back.

    prepare must see every movie before it can split them, and a 224 px PNG takes about 84 KiB: held in
    memory, posters made its peak grow by that much a movie. The file has no name, so it disappears when
    closed or when the process dies, and it lies beside the output (the disk the shards will take anyway).
    """

    def __init__(self, directory: str):
        os.makedirs(directory, exist_ok=True)
        self._file = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115  the spool owns it until close()
        self._size = 0

    def put(self, data: bytes) -> SpooledPoster:
        """Append a poster; returns where it lies."""
        self._file.write(data)
        where = SpooledPoster(self._size, len(data))
        self._size += len(data)
        return where

    def get(self, poster: SpooledPoster | bytes) -> bytes:
        """A spooled poster's bytes (bytes given are returned as they are)."""
        if isinstance(poster, bytes):
            return poster
        self._file.flush()
        return os.pread(self._file.fileno(), poster.length, poster.offset)

    def close(self) -> None:
        """Drop the file and its contents."""
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


@dataclasses.dataclass(frozen=True, slots=True)
class SpooledMovie:
    """What prepare holds of a validated movie until its shards are written: what the split, the genre vocabulary
    and the reports need. Its plot, title, language and poster wait in a MovieSpool, at `record`."""

    movie_id: str
    genres: tuple
    year: int | None
    source: str
    no_poster: str
    record: SpooledPoster

    @property
    def has_poster(self) -> bool:
        return not self.no_poster


class MovieSpool:
    """Validated movies on disk: each poster in one anonymous file (a PosterSpool), each record as a line of JSON
    in another.

    prepare must see every movie before it can split them; held in memory, the validated records (plots above
    all) made its peak grow by about 3.4 KB a movie. What it keeps of each is a SpooledMovie.
    """

    def __init__(self, directory: str):
        self.posters = PosterSpool(directory)
        self._records = PosterSpool(directory)

    def put(self, movie: Movie) -> SpooledMovie:
        """Spool a movie's poster and record; returns what prepare keeps of it."""
        row = {field.name: getattr(movie, field.name) for field in dataclasses.fields(Movie)
               if field.name not in ("genres", "poster_png")}  # its genres stay in memory: unify_spellings respells
        row["poster"] = self.posters.put(movie.poster_png) if movie.has_poster else None
        # ASCII JSON gives back every string as it was, unpaired surrogates included, and holds no line break
        where = self._records.put(json.dumps(row).encode("ascii") + b"\n")
        # one string object for each genre name, not one a movie
        genres = tuple(sys.intern(genre) for genre in movie.genres)
        return SpooledMovie(movie.movie_id, genres, movie.year, movie.source, movie.no_poster, where)

    def movie(self, kept: SpooledMovie) -> Movie:
        """The movie as validated, with the genres `kept` holds; its poster_png says where its poster lies."""
        row = json.loads(self._records.get(kept.record))
        poster = row.pop("poster")
        return Movie(**row, genres=kept.genres, poster_png=SpooledPoster(*poster) if poster else b"")

    def get(self, poster: SpooledPoster | bytes) -> bytes:
        """A spooled poster's bytes (bytes given are returned as they are)."""
        return self.posters.get(poster)

    def close(self) -> None:
        """Drop both files and their contents."""
        self.posters.close()
        self._records.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
