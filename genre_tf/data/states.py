"""Hidden states below text.fine_tune_layers' trained layers: computed once per plot, kept on disk, read per batch.

A store is a folder per encoder and cut, beside the feature stores (features.py), and like them keyed by each plot's
content, so another split or a grown catalogue encodes only plots never encoded. It holds parts: `part-X.f16` (the
plots' hidden states in float16, [tokens, width] one plot after the other, padding left out) and `part-X.npz` (the
plots' digests, where each one's rows start and how many there are). A part's states are published before its
index, each atomically, so a reader sees a part whole or not at all. Training reads the rows of each batch's movies
alone (os.pread), so its memory does not grow with the catalogue.
"""
import dataclasses
import glob
import hashlib
import os
import sys
import zipfile

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from genre_tf.data.dataset import PLOT, PLOT_STATES, PreparedDataset
from genre_tf.data.features import (check_digests, missing_batches, movie_digests, pread_exactly, set_aside,
                                    store_folder)
from genre_tf.files import atomic_path

PART_MOVIES = 512  # plots per part (about 60 MB of MPNet states): a killed run loses at most this many encodings
BYTES = 2  # float16


@dataclasses.dataclass
class StoredStates:
    """The hidden states of a dataset's movies (in dataset order), read from a store's parts batch by batch."""

    files: list[str]          # the parts' states files
    part: np.ndarray          # [movies] the part (index into files) holding each movie's states
    starts: np.ndarray        # [movies] its first row there
    lengths: np.ndarray       # [movies] its tokens
    width: int
    _handles: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.lengths), self.width

    def batch(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(float32 states [batch, longest, width], int32 mask [batch, longest]) of the movies at `rows`, padded with
        zeros to the batch's longest plot."""
        rows = np.asarray(rows, np.int64)
        longest = max(int(self.lengths[rows].max()), 1) if len(rows) else 1
        states = np.zeros((len(rows), longest, self.width), np.float32)
        mask = np.zeros((len(rows), longest), np.int32)
        for index, row in enumerate(rows):
            length, path = int(self.lengths[row]), self.files[self.part[row]]
            handle = self._handles.get(path)
            if handle is None:
                handle = self._handles[path] = open(path, "rb")  # noqa: SIM115  kept open for the next batches
            raw = pread_exactly(handle, length * self.width * BYTES, int(self.starts[row]) * self.width * BYTES)
            states[index, :length] = np.frombuffer(raw, np.float16).reshape(length, self.width)
            mask[index, :length] = 1
        return states, mask


def part_paths(folder: str) -> list[tuple[str, str]]:
    """(index, states) paths of a store's published parts, in name order."""
    return [(index, index[:-len(".npz")] + ".f16") for index in sorted(glob.glob(os.path.join(folder, "part-*.npz")))]


def read_index(folder: str) -> tuple[dict[str, tuple[int, int, int]], list[str], int]:
    """(digest -> (part, start, length), the parts' states files, width) of a store; a part whose index cannot be read
    or whose states file is not as long as its index says is set aside (its plots are encoded again)."""
    found, files, width = {}, [], 0
    for index_path, states_path in part_paths(folder):
        try:
            with np.load(index_path, allow_pickle=False) as part:
                digests, starts, lengths, part_width = (part["digests"], part["starts"], part["lengths"],
                                                        int(part["width"]))
            # as write_states_part lays a part out: 1-D text digests, each plot's rows right after the one before
            check_digests(digests)
            if (lengths.shape != digests.shape or starts.shape != digests.shape or lengths.dtype.kind != "i"
                    or (lengths < 1).any() or not np.array_equal(starts, np.cumsum(lengths) - lengths)
                    or part_width <= 0 or (width and part_width != width)):
                raise ValueError(f"{digests.shape} digests, {starts.shape} starts, {lengths.shape} lengths not laid "
                                 f"out one after the other, width {part_width}")
            expected = int(lengths.sum()) * part_width * BYTES
            if not os.path.exists(states_path) or os.path.getsize(states_path) != expected:
                raise ValueError(f"{states_path} missing or not {expected} bytes long")
        except (OSError, ValueError, KeyError, EOFError, RuntimeError, TypeError, zipfile.BadZipFile) as error:
            set_aside(index_path, error)
            continue
        width = part_width
        files.append(states_path)
        for digest, start, length in zip(digests.tolist(), starts.tolist(), lengths.tolist(), strict=True):
            found.setdefault(digest, (len(files) - 1, start, length))
    return found, files, width


def write_states_part(folder: str, digests: list[str], states: list[np.ndarray]) -> None:
    """Publish one part: its states file, then its index (a reader looks at indexes alone)."""
    name = hashlib.sha256("\n".join(digests).encode()).hexdigest()[:16]
    lengths = np.asarray([len(rows) for rows in states], np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    with atomic_path(os.path.join(folder, f"part-{name}.f16")) as staging, open(staging, "wb") as handle:
        for rows in states:
            handle.write(np.ascontiguousarray(rows, np.float16).tobytes())
    with atomic_path(os.path.join(folder, f"part-{name}.npz")) as staging:
        np.savez(staging, digests=np.asarray(digests), starts=starts, lengths=lengths,
                 width=np.int64(states[0].shape[1]))


def encode_states(prepared: PreparedDataset, folder: str, encoder, missing: dict[str, str], batch_size: int) -> None:
    """Run the bottom layers over the missing plots (shortest first), publishing a part every PART_MOVIES plots."""
    predict = tf.function(lambda plots: encoder(plots, training=False))
    digests, states = [], []
    with tqdm(total=len(set(missing.values())), desc="encoding plot states", unit="movie", mininterval=2.0) as bar:
        for chosen, plots in missing_batches(prepared, PLOT, missing, batch_size, 0):
            hidden, mask = (value.numpy() for value in predict(plots))
            for row, digest in enumerate(chosen):
                digests.append(digest)
                states.append(hidden[row, :int(mask[row].sum())].astype(np.float16))  # rounded already: exact
            bar.update(len(chosen))
            if len(digests) >= PART_MOVIES:
                write_states_part(folder, digests, states)
                digests, states = [], []
    if digests:
        write_states_part(folder, digests, states)


def load_or_compute_states(prepared: PreparedDataset, key: str, encoder_factory,
                           batch_size: int = 32) -> tuple[np.ndarray, StoredStates]:
    """(movie ids, their StoredStates) of every movie of the dataset, split by split, for the bottom layers identified
    by `key`: stored plots are reused by content, and only plots never encoded are run through the layers."""
    folder = store_folder(PLOT_STATES, key)
    ids, digests = movie_digests(prepared, PLOT)
    found, _, _ = read_index(folder)
    missing = {movie_id: digest for movie_id, digest in zip(ids, digests, strict=True) if digest not in found}
    if missing:
        print(f"{PLOT_STATES}: {len(ids) - len(missing)} of {len(ids)} movies from the cache {folder}, "
              f"{len(missing)} to encode", file=sys.stderr)
        encode_states(prepared, folder, encoder_factory(), missing, batch_size)
    found, files, width = read_index(folder)
    lost = [movie_id for movie_id, digest in zip(ids, digests, strict=True) if digest not in found]
    if lost:  # another process set a part aside after this one wrote it
        raise RuntimeError(f"{PLOT_STATES}: {len(lost)} movies (first {lost[0]}) are missing from {folder} after "
                           "encoding them; run again")
    rows = np.asarray([found[digest] for digest in digests], np.int64).reshape(-1, 3)
    return np.asarray(ids), StoredStates(files, rows[:, 0], rows[:, 1], rows[:, 2], width)
