"""A poster spool: prepared posters wait on disk between validation and the shard writer, not in memory."""
import os
import tempfile
from typing import NamedTuple


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
