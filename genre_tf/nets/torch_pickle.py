"""Read PyTorch's legacy (non-zip) .pth state dicts into numpy, without torch and without running pickled code."""
import collections
import math
import os
import pickle
import struct

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
DEFAULT_MAX_BYTES = 512 * 1024 * 1024

# Little-endian on disk whatever the machine; the loader converts to native order at the end.
STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
}


# Immutable stand-ins: a pickle's BUILD opcode can set attributes on any object it can reach, so none of
# these may have any (a namedtuple has no __dict__ and refuses setattr).
_StorageType = collections.namedtuple("_StorageType", "name dtype")
_Storage = collections.namedtuple("_Storage", "key dtype numel")
_Tensor = collections.namedtuple("_Tensor", "storage offset size stride")


def _is_index(value):
    return type(value) is int and value >= 0


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, *_):
    # Replaces torch._utils._rebuild_tensor_v2: a deferred tensor whose data is read after the pickles.
    if not isinstance(storage, _Storage) or not isinstance(size, tuple) or not isinstance(stride, tuple):
        raise ValueError(f"bad tensor arguments: {type(storage).__name__}, size {size!r}, stride {stride!r}")
    if not all(map(_is_index, (storage_offset, *size, *stride))) or len(size) != len(stride):
        raise ValueError(f"bad tensor geometry: offset {storage_offset!r}, size {size!r}, stride {stride!r}")
    return _Tensor(storage, storage_offset, size, stride)


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    **{("torch", name): _StorageType(name, dtype) for name, dtype in STORAGE_DTYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the few globals a state dict needs, so a malicious file cannot call anything."""

    def __init__(self, file):
        super().__init__(file)
        self.storages = {}
        self.data = {}

    def find_class(self, module, name):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise ValueError(f"not a plain state dict, refuses global {module}.{name}") from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise ValueError(f"unsupported persistent id {pid!r}")
        _, storage_type, key, _location, numel, *view = pid
        if not isinstance(storage_type, _StorageType) or not isinstance(key, str) or not _is_index(numel):
            raise ValueError(f"malformed storage reference {pid!r}")
        if view and view[0] is not None:
            raise ValueError("storage views (view_metadata) are not supported")
        storage = self.storages.setdefault(key, _Storage(key, storage_type.dtype, numel))
        if storage != (key, storage_type.dtype, numel):
            raise ValueError(f"storage {key} is declared twice with different types or sizes")
        return storage


def _read_exact(handle, count, what):
    data = handle.read(count)
    if len(data) != count:
        raise ValueError(f"file is truncated while reading {what} ({len(data)} of {count} bytes)")
    return data


def _read_storages(handle, unpickler, file_size):
    """Read the storage records that follow the pickles, in the order of the pickled key list."""
    keys = unpickler.load()
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys) or len(set(keys)) != len(keys):
        raise ValueError("the storage key list is malformed")
    missing = set(unpickler.storages) - set(keys)
    if missing:
        raise ValueError(f"storages {sorted(missing)[:5]} have no data")
    for key in keys:
        storage = unpickler.storages.get(key)
        if storage is None:
            raise ValueError(f"storage key {key} in the key list is not used by any tensor")
        (numel,) = struct.unpack("<q", _read_exact(handle, 8, f"the size of storage {key}"))
        left = file_size - handle.tell()
        # Checked before reading so that a forged count cannot make us allocate more than the file holds.
        if numel != storage.numel or numel * storage.dtype.itemsize > left:
            raise ValueError(f"storage {key} claims {numel} elements (the pickle says {storage.numel}, "
                             f"{left} bytes are left in the file)")
        data = _read_exact(handle, numel * storage.dtype.itemsize, f"storage {key}")
        unpickler.data[key] = np.frombuffer(data, dtype=storage.dtype)


def _materialise(tensor, data, name):
    """A contiguous native-endian copy of a (possibly strided) tensor view of one storage."""
    storage, native = tensor.storage, tensor.storage.dtype.newbyteorder("=")
    if 0 in tensor.size:
        return np.zeros(tensor.size, dtype=native)
    last = tensor.offset + sum((n - 1) * s for n, s in zip(tensor.size, tensor.stride, strict=True))
    # as_strided reads raw memory, so every element it can touch must lie inside the storage.
    if last >= storage.numel:
        raise ValueError(f"tensor {name} reaches element {last} of a {storage.numel}-element storage")
    # Zero or overlapping strides repeat elements: a few bytes of storage could claim gigabytes once copied.
    # A weight never holds more elements than the storage it is a view of, whose bytes the file holds.
    if math.prod(tensor.size) > storage.numel:
        raise ValueError(f"tensor {name} claims {math.prod(tensor.size)} elements, more than its "
                         f"{storage.numel}-element storage (zero or overlapping strides)")
    span = data[storage.key][tensor.offset:last + 1].copy()
    strides = [s * storage.dtype.itemsize for s in tensor.stride]
    view = np.lib.stride_tricks.as_strided(span, shape=tensor.size, strides=strides, writeable=False)
    return np.array(view, dtype=native, order="C")


def _load(handle, file_size):
    """The five parts of a legacy file, in order: magic, protocol, sys_info, state dict, storages."""
    if handle.read(2) == b"PK":
        raise ValueError("a zip-format torch file; only the legacy (non-zip) format is supported")
    handle.seek(0)
    unpickler = _RestrictedUnpickler(handle)
    magic = unpickler.load()
    if magic != LEGACY_MAGIC:
        raise ValueError(f"not a legacy torch file (magic number {magic!r})")
    protocol = unpickler.load()
    if protocol != LEGACY_PROTOCOL:
        raise ValueError(f"unsupported torch protocol version {protocol!r}")
    unpickler.load()  # sys_info: endianness and C type sizes, which the on-disk format fixes anyway
    state = unpickler.load()
    if not isinstance(state, dict) or not all(isinstance(v, _Tensor) for v in state.values()):
        raise ValueError("the pickled object is not a dict of tensors")
    _read_storages(handle, unpickler, file_size)
    return collections.OrderedDict((str(k), _materialise(v, unpickler.data, k)) for k, v in state.items())


def load_torch_state_dict(path, max_bytes=DEFAULT_MAX_BYTES) -> "collections.OrderedDict[str, np.ndarray]":
    """Load a legacy-format torch state dict as an OrderedDict of numpy arrays, refusing anything but tensors."""
    path = os.fspath(path)
    file_size = os.path.getsize(path)
    if file_size > max_bytes:
        raise ValueError(f"{path}: {file_size} bytes is over the limit of {max_bytes} bytes")
    with open(path, "rb") as handle:
        try:
            return _load(handle, file_size)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
        except (pickle.UnpicklingError, EOFError, struct.error, TypeError, AttributeError, IndexError) as error:
            raise ValueError(f"{path}: not a readable torch state dict ({type(error).__name__}: {error})") from None
