"""Files genre_tf writes: the cache folder, content digests and atomic (stage-then-rename) writes."""
import contextlib
import functools
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import stat

from genre_tf.limits import MAX_POSTER_BYTES

_FILE_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
               (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"))


class InputFileError(ValueError):
    """An input file refused by read_input_file, with the reason in its message."""


class InputFileNotFoundError(InputFileError):
    """An input path that names no file."""


def _file_kind(mode: int) -> str:
    return next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")


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


def read_poster_file(path: str, root: str, limit: int = MAX_POSTER_BYTES) -> bytes:
    """A poster file's bytes (see read_input_file): prepare, predict and batch_predict read posters with it."""
    return read_input_file(path, root, limit, "poster")


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


def cache_root() -> str:
    """Where genre_tf keeps converted models and feature caches ($GENRE_TF_CACHE, else ~/.cache/genre_tf)."""
    default = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "genre_tf")
    return os.environ.get("GENRE_TF_CACHE", default)


def sha256_of(path: str) -> str:
    """The sha256 of a file's contents, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_digest(path: str) -> str:
    """sha256_of a file, computed once per process while its size, modification time and inode stay the same:
    evaluating or exporting many runs of one dataset reads its shards once. (A file rewritten in place with the
    same size and a forged mtime passes unseen; this check catches accidents, not intent.)"""
    status = os.stat(path)
    return _digest_of(os.path.realpath(path), status.st_size, status.st_mtime_ns, status.st_ino, status.st_dev)


@functools.lru_cache(maxsize=4096)
def _digest_of(path: str, *_stat) -> str:
    return sha256_of(path)


def short_digest(path: str) -> str:
    """The first 16 hex digits of a file's sha256 (file_digest: computed once per process while unchanged)."""
    return file_digest(path)[:16]


@contextlib.contextmanager
def atomic_path(path: str):
    """Yield a staging path beside `path` (same suffix); it replaces `path` only if the block succeeds.

    Readers therefore see the old file or the new one, never a half-written one. Works for files and
    for folders (a folder is swapped by renaming; the old one is removed afterwards).
    """
    parent = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(parent, exist_ok=True)
    base, suffix = os.path.splitext(os.path.basename(path))
    # unique to this call: two writers of one path (threads, or Beam workers of two hosts sharing a disk) never
    # write into one staging file
    staging = os.path.join(parent, f".{base}.{os.getpid()}-{secrets.token_hex(4)}.tmp{suffix}")
    try:
        yield staging
        if os.path.isdir(staging) and os.path.isdir(path):
            old = os.path.join(parent, f".{base}.{os.getpid()}.old")
            os.rename(path, old)
            os.rename(staging, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, path)
    finally:
        if os.path.isdir(staging):
            shutil.rmtree(staging, ignore_errors=True)
        elif os.path.exists(staging):
            os.remove(staging)


def write_text(path: str, text: str) -> None:
    """Write a UTF-8 text file atomically."""
    with atomic_path(path) as staging, open(staging, "w", encoding="utf-8") as handle:
        handle.write(text)


def write_json(path: str, value, indent: int = 1) -> None:
    """Write a JSON file atomically."""
    write_text(path, json.dumps(value, indent=indent, ensure_ascii=False) + "\n")


def staging_folder(parent: str, prefix: str) -> str:
    """A fresh hidden folder under `parent` to build a folder in before renaming it into place.

    It is named by this process (.PREFIX-PID-RANDOM@HOST), so folders left by killed processes of this
    host are recognised and removed here. Its mode is 0o777 less the umask, like any folder the user
    creates (mkdtemp's 0o700 would carry over to the renamed result).
    """
    host = socket.gethostname()
    os.makedirs(parent, exist_ok=True)
    pattern = re.compile(rf"\.{re.escape(prefix)}-(\d+)-[0-9a-f]+@(.+)")
    for name in os.listdir(parent):
        match = pattern.fullmatch(name)
        if match and match.group(2) == host and not _process_alive(int(match.group(1))):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
    staging = os.path.join(parent, f".{prefix}-{os.getpid()}-{secrets.token_hex(4)}@{host}")
    os.mkdir(staging)
    return staging


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


PREPARED_MARKERS = ("split.json", "movies.jsonl")   # what prepare writes and a run directory never holds
RUN_MARKERS = ("config.json", "encoders.json")      # what a run directory holds and prepare never writes


def is_prepared_folder(folder: str) -> bool:
    """Whether a folder is a prepared dataset (prepare's output)."""
    return all(os.path.isfile(os.path.join(folder, name)) for name in PREPARED_MARKERS)


def is_run_folder(folder: str) -> bool:
    """Whether a folder is a training run directory."""
    return all(os.path.isfile(os.path.join(folder, name)) for name in RUN_MARKERS)


def enclosing(path: str, is_kind) -> str | None:
    """The nearest of `path` and its parent folders for which is_kind(folder) holds, or None."""
    folder = os.path.realpath(path)
    while True:
        if is_kind(folder):
            return folder
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent


def is_within(path: str, folder: str) -> bool:
    """Whether `path` is `folder` or lies below it, symlinks resolved."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([path, folder]) == folder


def refuse_to_write_into(out: str, option: str, inputs: dict[str, str]) -> None:
    """The one guard of every tool that writes a folder: ValueError when `out` is or lies inside a prepared dataset
    (a run or a rerun of prepare would mix their files) or one of its own inputs ({option: path}: a copy into its
    own source recurses)."""
    holder = enclosing(out, is_prepared_folder)
    if holder:
        raise ValueError(f"{option}={out} {_is_or_inside(out, holder)} the prepared dataset {holder}; a prepared "
                         f"dataset holds only what prepare wrote: choose a folder outside it")
    for name, path in inputs.items():
        if path and os.path.exists(path) and is_within(out, path):
            raise ValueError(f"{option}={out} {_is_or_inside(out, path)} its own input {name}={path}; writing there "
                             f"would change what is being read: choose a folder outside {path}")


def _is_or_inside(path: str, folder: str) -> str:
    return "is" if os.path.realpath(path) == os.path.realpath(folder) else "is inside"


def cache_key(*parts: str) -> str:
    """A short stable hash of the parts that identify a cached computation."""
    return hashlib.sha256("|".join(parts).encode("utf-8")).hexdigest()[:16]


def read_json(path: str):
    """A JSON file, with an error naming the file when it is damaged."""
    with open(path, encoding="utf-8") as handle:
        try:
            return json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is damaged (not JSON: {error}); rerun the step that writes it") from None
