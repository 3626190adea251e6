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


@functools.cache
def short_digest(path: str) -> str:
    """The first 16 hex digits of a file's sha256, computed once per process."""
    return sha256_of(path)[:16]


@contextlib.contextmanager
def atomic_path(path: str):
    """Yield a staging path beside `path` (same suffix); it replaces `path` only if the block succeeds.

    Readers therefore see the old file or the new one, never a half-written one. Works for files and
    for folders (a folder is swapped by renaming; the old one is removed afterwards).
    """
    parent = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(parent, exist_ok=True)
    base, suffix = os.path.splitext(os.path.basename(path))
    staging = os.path.join(parent, f".{base}.{os.getpid()}.tmp{suffix}")
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
