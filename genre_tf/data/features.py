"""Feature caches: poster features and frozen plot embeddings, computed once per encoder and movie content.

A cache is a folder per encoder identity holding parts (`part-*.npz`: content digests and features). A movie's row
is found by the sha256 of its own plot text or poster bytes, never by its dataset or split, so re-preparing a
catalogue with another split, growing it, or training another run on it encodes only what was never encoded.
The Beam job (beam_features.py, `python -m genre_tf.features`) fills the same stores through write_part. Training
locates its movies' rows in the parts (the features array is stored uncompressed) and reads them batch by batch
(StoredRows), so its memory does not grow with the catalogue's features.
"""
import dataclasses
import glob
import hashlib
import os
import struct
import sys
import zipfile
from collections.abc import Callable

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from genre_tf.data.dataset import MOVIE_ID, PLOT, POSTER, PreparedDataset, make_dataset
from genre_tf.data.images import decode_poster
from genre_tf.data.readers import SPLIT_NAMES
from genre_tf.files import atomic_path, cache_root

PART_SIZE = 2048  # movies per part: a killed run loses at most this many encodings


@dataclasses.dataclass(frozen=True)
class FrozenEncoder:
    """A frozen encoder whose outputs are stored: its store (name, identity key), the input it reads, the poster size
    it reads, and how to build it (a picklable function, so each Beam worker builds its own)."""

    name: str                   # poster_features | plot_embedding
    key: str                    # the cache_key of the encoder's identity
    input_name: str             # plot | poster
    build: Callable[[], object]
    image_size: int = 0         # posters only: the size they are decoded at

    @property
    def folder(self) -> str:
        return store_folder(self.name, self.key)


def store_folder(name: str, key: str) -> str:
    """The cache folder of `name` (poster_features, plot_embedding) for the encoder identified by `key`: under the
    cache root, so a prepared dataset is never written after prepare (it may sit on a shared read-only disk)."""
    return os.path.join(cache_root(), "features", f"{name}-{key}")


def content_digest(content: bytes) -> str:
    """The key of one movie's input in a cache: the sha256 of its plot's UTF-8 text or its poster's bytes."""
    return hashlib.sha256(content).hexdigest()[:32]


def movie_digests(prepared: PreparedDataset, input_name: str) -> tuple[list[str], list[str]]:
    """(movie ids, content digests) of every movie, split by split in split order, streamed from the shards; a
    text-only movie's poster, which has no bytes to hash, has the digest ""."""
    spec = {MOVIE_ID: tf.io.FixedLenFeature([], tf.string), input_name: tf.io.FixedLenFeature([], tf.string)}
    ids, digests = [], []
    for split in SPLIT_NAMES:
        records = tf.data.TFRecordDataset(prepared.shards(split)).map(
            lambda record: tf.io.parse_single_example(record, spec), num_parallel_calls=tf.data.AUTOTUNE)
        for example in records.as_numpy_iterator():
            ids.append(example[MOVIE_ID].decode("utf-8"))
            digests.append(content_digest(example[input_name]) if example[input_name] else "")
    return ids, digests


class DamagedPart(ValueError):
    """A part of a feature store that cannot be read whole."""


def check_digests(digests: np.ndarray) -> None:
    """A part's content digests must be a 1-D text array (ValueError otherwise)."""
    if digests.ndim != 1 or digests.dtype.kind != "U":
        raise ValueError(f"digests of shape {digests.shape} and type {digests.dtype}")


def pread_exactly(handle, size: int, offset: int) -> bytes:
    """`size` bytes of an open file from `offset` (os.pread: no shared position, safe from any thread); OSError when
    the file ends first, as when it was cut after it was checked."""
    raw = os.pread(handle.fileno(), size, offset)
    if len(raw) != size:
        raise OSError(f"{handle.name} is shorter than when it was checked")
    return raw


def read_part(path: str, width: int | None = None, features: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """One part's (digests, [rows, width] float32 features, or None when not wanted); DamagedPart when it cannot be
    read whole or its arrays disagree (features of another width than `width`, when given)."""
    try:
        with np.load(path, allow_pickle=False) as part:
            digests = part["digests"]
            values = part["features"] if features else None
        check_digests(digests)
        if values is not None and (values.ndim != 2 or len(digests) != len(values) or (
                width is not None and values.shape[1] != width)):
            raise ValueError(f"{len(digests)} digests for features of shape {values.shape}")
    except (OSError, ValueError, KeyError, EOFError, RuntimeError, TypeError, zipfile.BadZipFile) as error:
        raise DamagedPart(str(error)) from None
    return digests, values


def store_parts(folder: str) -> list[str]:
    """The published parts of a store, in name order (staging files and set-aside parts start with a dot)."""
    return sorted(glob.glob(os.path.join(folder, "part-*.npz")))


def stored_digests(folder: str) -> set[str]:
    """Every content digest a store holds, read from the parts' digest arrays alone (a damaged part is set aside)."""
    found = set()
    for path in store_parts(folder):
        try:
            digests, _ = read_part(path, features=False)
        except DamagedPart as error:
            set_aside(path, error)
            continue
        found.update(digests.tolist())
    return found


@dataclasses.dataclass
class StoredRows:
    """A dataset's cached features (in dataset order), read from the store's parts row by row (os.pread): memory holds
    where each movie's row is (12 bytes a movie), never the rows, so training's memory does not grow with the
    catalogue. Indexing (`rows[index]`) reads the rows asked for; `np.asarray(rows)` reads them all. The parts are
    opened when they are checked, so the file read is the file checked, even if another process sets it aside."""

    parts: list               # open binary files, one a part
    part: np.ndarray          # [movies] int32, the part holding each movie's row; -1: the `fill` row
    offsets: np.ndarray       # [movies] int64, where the row starts in that part's file
    width: int
    fill: np.ndarray | None = None  # the row of movies without the input (a text-only movie's poster)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.part), self.width

    def __len__(self) -> int:
        return len(self.part)

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, slice):
            return self.read(np.arange(*index.indices(len(self))))
        rows = np.asarray(index)
        if rows.ndim == 0:
            return self.read(rows.reshape(1))[0]
        return self.read(np.flatnonzero(rows) if rows.dtype == bool else rows)

    def read(self, rows: np.ndarray) -> np.ndarray:
        """The [len(rows), width] float32 rows at the (1-D, possibly negative) positions `rows`."""
        rows = np.asarray(rows, np.int64)
        rows = np.where(rows < 0, rows + len(self), rows)
        if rows.ndim != 1 or (len(rows) and (rows.min() < 0 or rows.max() >= len(self))):
            raise IndexError(f"rows {rows.tolist()[:8]} are not 1-D positions below {len(self)}")
        values = np.empty((len(rows), self.width), np.float32)
        size = self.width * 4
        for out, row in enumerate(rows.tolist()):
            part = int(self.part[row])
            if part < 0:
                if self.fill is None:
                    raise ValueError(f"row {row} has no stored features and no fill row")
                values[out] = self.fill
                continue
            values[out] = np.frombuffer(pread_exactly(self.parts[part], size, int(self.offsets[row])), "<f4")
        return values

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        values = self[:]
        return values if dtype is None else values.astype(dtype)

    def mean(self, rows, chunk: int = 512) -> np.ndarray:
        """The mean row over `rows`, read `chunk` rows at a time."""
        rows = np.asarray(rows, np.int64)
        total = np.zeros(self.width, np.float64)
        for start in range(0, len(rows), chunk):
            total += self.read(rows[start:start + chunk]).sum(axis=0, dtype=np.float64)
        return (total / max(len(rows), 1)).astype(np.float32)

    def close(self) -> None:
        for handle in self.parts:
            handle.close()


NPY_VERSIONS = ((1, 0), (2, 0), (3, 0))


def open_part(path: str, width: int | None):
    """(the open part, its digests, the byte offset of row 0 of its [movies, width] float32 features, width).

    Everything is checked through the handle that will be read: the digests (1-D text), the features member
    (uncompressed, its size exactly its .npy header and rows, its CRC), the .npy header (a known version, 2-D
    float32, one row a digest, `width` wide when given) and the zip's local header. DamagedPart otherwise."""
    handle = open(path, "rb")  # noqa: SIM115  kept open for the rows, closed here if the part is refused
    try:
        with zipfile.ZipFile(handle) as archive:
            with archive.open("digests.npy") as member:
                digests = np.lib.format.read_array(member, allow_pickle=False)
            check_digests(digests)
            info = archive.getinfo("features.npy")
            if info.compress_type != zipfile.ZIP_STORED:
                raise ValueError("its features are compressed")
            with archive.open(info) as member:
                version = np.lib.format.read_magic(member)
                if version not in NPY_VERSIONS:
                    raise ValueError(f"features in .npy format {version}")
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, fortran, dtype = read_header(member)
                header = member.tell()
                if (len(shape) != 2 or fortran or dtype != np.dtype("<f4") or shape[0] != len(digests)
                        or shape[1] <= 0 or (width is not None and shape[1] != width)):
                    raise ValueError(f"{len(digests)} digests for features of shape {shape}, {dtype}")
                if not info.file_size == info.compress_size == header + shape[0] * shape[1] * 4:
                    raise ValueError(f"a features member of {info.file_size} bytes for shape {shape}")
                while member.read(1 << 20):  # to the end: zipfile checks the CRC there
                    pass
        local = os.pread(handle.fileno(), 30, info.header_offset)
        signature, *_, name_length, extra_length = struct.unpack("<4s5H3I2H", local)
        if signature != b"PK\x03\x04":
            raise ValueError("no local header where the zip says")
        start = info.header_offset + 30 + name_length + extra_length + header
        if start + shape[0] * shape[1] * 4 > os.fstat(handle.fileno()).st_size:
            raise ValueError("shorter than its features")
    except (OSError, ValueError, KeyError, EOFError, RuntimeError, TypeError, struct.error,
            zipfile.BadZipFile) as error:
        handle.close()
        raise DamagedPart(str(error)) from None
    return handle, digests, start, int(shape[1])


def read_store(folder: str, digests: list[str]) -> tuple[StoredRows, set[str]]:
    """Where each wanted content's row is in the store (for `digests`, one a dataset row; "" for none), and the
    digests found. The rows are not loaded: a store shared by many catalogues costs this dataset's row locations,
    and only the parts holding them stay open. A damaged part is set aside with a warning naming it (its movies are
    encoded again, once)."""
    positions = {}
    for row, digest in enumerate(digests):
        if digest:
            positions.setdefault(digest, []).append(row)
    part, offsets = np.full(len(digests), -1, np.int32), np.zeros(len(digests), np.int64)
    parts, width, found = [], None, set()
    for path in store_parts(folder):
        try:
            handle, stored, start, width = open_part(path, width)
        except DamagedPart as error:
            set_aside(path, error)
            continue
        wanted = False
        for row, digest in enumerate(stored.tolist()):
            if digest in positions and digest not in found:
                part[positions[digest]] = len(parts)
                offsets[positions[digest]] = start + row * width * 4
                found.add(digest)
                wanted = True
        if wanted:
            parts.append(handle)
        else:
            handle.close()
    return StoredRows(parts, part, offsets, width or 0), found


def set_aside(path: str, error: Exception) -> None:
    """Rename a damaged part out of the store's way (`.damaged-part-*.npz`, never read), so its warning is given
    once and its movies, encoded again, are not reported damaged on every later load."""
    aside = os.path.join(os.path.dirname(path), f".damaged-{os.path.basename(path)}")
    try:
        os.replace(path, aside)
        where = f"moved to {aside}"
    except OSError:  # a read-only cache: the warning repeats, the rows are still right
        where = "left in place"
    print(f"warning: {path} is damaged ({str(error)[:120]}), {where}; its movies are encoded again", file=sys.stderr)


def write_part(folder: str, digests: list[str], features: np.ndarray) -> None:
    """Publish one part atomically: readers see it whole or not at all, and two writers never share a name
    unless they wrote the same movies."""
    name = hashlib.sha256("\n".join(digests).encode()).hexdigest()[:16]
    with atomic_path(os.path.join(folder, f"part-{name}.npz")) as staging:
        np.savez(staging, digests=np.asarray(digests), features=features.astype(np.float32))


def missing_batches(prepared: PreparedDataset, input_name: str, missing: dict[str, str], batch_size: int,
                     image_size: int):
    """(digests, encoder inputs) batches of the movies whose content is not cached (`missing`: id -> digest).

    Plots come shortest first: the text encoder trims each batch to its longest plot, so batches of similar
    lengths skip most of the padding (about half the tokens of real plots). Posters stream from the shards.
    """
    if input_name == PLOT:
        plots = {}
        for movie in prepared.movies():
            digest = missing.get(movie["movie_id"])
            if digest is not None:
                plots.setdefault(digest, movie["plot"])  # two movies with one plot are encoded once
        order = sorted(plots, key=lambda digest: len(plots[digest]))
        for start in range(0, len(order), batch_size):
            chosen = order[start:start + batch_size]
            yield chosen, tf.constant([plots[digest] for digest in chosen])
        return
    table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
        tf.constant(list(missing)), tf.constant(list(missing.values()))), default_value="")
    spec = {MOVIE_ID: tf.io.FixedLenFeature([], tf.string), POSTER: tf.io.FixedLenFeature([], tf.string)}
    files = [path for split in SPLIT_NAMES for path in prepared.shards(split)]
    dataset = (tf.data.TFRecordDataset(files)
               .map(lambda record: tf.io.parse_single_example(record, spec), num_parallel_calls=tf.data.AUTOTUNE)
               .map(lambda example: (table.lookup(example[MOVIE_ID]), example[POSTER]))
               .filter(lambda digest, poster: tf.strings.length(digest) > 0)
               .map(lambda digest, poster: (digest, decode_poster(poster, image_size)),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
               .batch(batch_size).prefetch(tf.data.AUTOTUNE))
    seen = set()
    for digests, posters in dataset:
        digests, keep = [digest.decode("ascii") for digest in digests.numpy()], []
        for index, digest in enumerate(digests):  # two movies with one poster are encoded once
            if digest not in seen:
                seen.add(digest)
                keep.append(index)
        if keep:
            yield [digests[i] for i in keep], tf.gather(posters, keep)


def encode_missing(prepared: PreparedDataset, folder: str, encoder, input_name: str, missing: dict[str, str],
                   batch_size: int, image_size: int) -> None:
    """Encode the missing movies, publishing a part every PART_SIZE movies (only a part's rows are held)."""
    predict = tf.function(lambda x: encoder(x, training=False))
    digests, rows = [], []
    with tqdm(total=len(set(missing.values())), desc=f"encoding {input_name}", unit="movie", mininterval=2.0) as bar:
        for chosen, values in missing_batches(prepared, input_name, missing, batch_size, image_size):
            digests.extend(chosen)
            rows.append(predict(values).numpy().astype(np.float32))
            bar.update(len(chosen))
            if len(digests) >= PART_SIZE:
                write_part(folder, digests, np.concatenate(rows))
                digests, rows = [], []
    if digests:
        write_part(folder, digests, np.concatenate(rows))


def load_or_compute(prepared: PreparedDataset, name: str, key: str, encoder_factory, input_name: str,
                    batch_size: int = 32, image_size: int = 0) -> tuple[np.ndarray, StoredRows]:
    """(movie ids, their StoredRows) of every movie of the dataset, split by split, for the encoder identified by
    `key`: cached rows are reused by content, and only movies never encoded are run through the encoder."""
    folder = store_folder(name, key)
    ids, digests = movie_digests(prepared, input_name)
    absent = [row for row, digest in enumerate(digests) if not digest]  # text-only movies: nothing to encode
    rows, found = read_store(folder, digests)
    missing = {movie_id: digest for movie_id, digest in zip(ids, digests, strict=True)
               if digest and digest not in found}
    if missing:
        no_poster = f", {len(absent)} without a poster" if absent else ""
        print(f"{name}: {len(ids) - len(missing) - len(absent)} of {len(ids)} movies from the cache {folder}, "
              f"{len(missing)} to encode{no_poster}", file=sys.stderr)
        encode_missing(prepared, folder, encoder_factory(), input_name, missing, batch_size,
                       image_size or prepared.image_size)
        rows, found = read_store(folder, digests)
        lost = [movie_id for movie_id, digest in zip(ids, digests, strict=True) if digest and digest not in found]
        if lost:  # another process set a part aside after this one wrote it
            raise RuntimeError(f"{name}: {len(lost)} movies (first {lost[0]}) are missing from {folder} after "
                               "encoding them; run again")
    if absent:
        rows.fill = absent_poster_row(prepared, rows, absent)
    return np.asarray(ids), rows


def absent_poster_row(prepared: PreparedDataset, rows: StoredRows, absent: list[int]) -> np.ndarray:
    """The row of each text-only movie: the mean poster features of the training movies that have one, what the
    SavedModel uses for a missing poster, so dev, test and serving treat such a movie alike."""
    without = set(absent)
    train = [row for row in range(len(prepared.split["train"])) if row not in without]
    if not train:
        raise ValueError(f"no training movie of {prepared.path} has a poster: a model that reads posters cannot "
                         "learn from it; train a text model (model.kind=text_frozen) instead")
    return rows.mean(train)


def mean_features(prepared: PreparedDataset, cache: tuple | None, encoder, input_name: str, image_size: int = 0,
                  limit: int = 1024, batch_size: int = 32) -> np.ndarray:
    """The mean encoder output over the training movies (what serving uses for a missing input): over all of them from
    the cache (ids, features) when there is one, else over the first `limit` by running `encoder`. (The first ones
    in id order are the oldest films of an IMDb catalogue: 80% released before 1990 on the real movies.)"""
    train = prepared.ids_with_poster("train") if input_name == POSTER else prepared.split["train"]
    if cache is not None:
        cached_ids, values = cache
        row = {movie_id: index for index, movie_id in enumerate(cached_ids)}
        rows = [row[i] for i in train]
        return values.mean(rows) if isinstance(values, StoredRows) else values[rows].mean(axis=0).astype(np.float32)
    dataset = make_dataset(prepared, "train", batch_size, training=False, input_names=[MOVIE_ID, input_name],
                           image_size=image_size or None, with_poster_only=input_name == POSTER)
    dataset = dataset.take(-(-len(train[:limit]) // batch_size))
    step = tf.function(lambda x: encoder(x, training=False))
    return np.concatenate([step(inputs[input_name]).numpy() for inputs, _ in dataset]).mean(axis=0)
