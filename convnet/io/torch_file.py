"""Read PyTorch checkpoints into NumPy arrays, without torch and without letting pickle run code.

``torch.save`` (PyTorch 1.6 and later) writes a zip archive whose members all sit in one
folder, named after the file:
    <name>/data.pkl         the object tree as a pickle; tensors point at storages by key
    <name>/data/<key>       one raw storage per key: numel elements, little-endian
    <name>/byteorder        "little" (absent in older files, which were little-endian)
    <name>/version, <name>/.data/serialization_id, ...   bookkeeping we do not need

A pickle is a small program: its GLOBAL opcodes name any importable function and its
REDUCE opcodes call them, so the standard unpickler (and torch's loader without
weights_only) can run ``os.system`` from a stranger's file. Here the unpickler's
``find_class`` admits only the names a checkpoint of tensors uses, each mapped to a small
function of ours, and refuses every other name before anything is called:
    collections.OrderedDict                 -> a dict (a state_dict's own type)
    torch._utils._rebuild_tensor_v2 (_v3)   -> a tensor record: storage, offset, size, stride
    torch._utils._rebuild_parameter(_with_state) -> the tensor inside an nn.Parameter
    torch.FloatStorage, torch.BFloat16Storage, ..., torch.storage.UntypedStorage,
    torch.uint16 and the other dtypes       -> markers naming an element type
A tensor is the strided view  element[i, j, ...] = storage[offset + i*stride0 + j*stride1 ...]
of its storage, as in NumPy; we check that the view fits in the storage, then copy it into
a contiguous array. A view can declare far more elements than its storage holds (a zero
stride repeats an element: ``torch.zeros(1).expand(10**12)`` is a 4-byte storage), so
before any copy the sizes are capped: a view may repeat its storage at most REPEAT_LIMIT
times over, and all the arrays together may hold at most ``max_bytes`` (4 GiB).
bfloat16 (no NumPy dtype) becomes float32: its 16 bits are the top half of a float32, so
widening is a shift by 16 and exact.

>>> tensors = load_torch("resnet18.pth")          # doctest: +SKIP
>>> tensors["conv1.weight"].shape, tensors["conv1.weight"].dtype       # doctest: +SKIP
((64, 3, 7, 7), dtype('float32'))
"""

from __future__ import annotations

import io
import math
import pickle
import re
import tarfile
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = ["load_torch"]

# Where a checkpoint keeps its state_dict under a wrapper dict ({"epoch": 3, "model": ...}).
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network",
                "weights", "params")

# Element types: torch dtype name -> little-endian NumPy dtype of the raw storage elements
# (bfloat16 is read as its 16 bits, bool as bytes; both are converted after the copy).
RAW_DTYPES = {
    "float64": "<f8", "float32": "<f4", "float16": "<f2", "bfloat16": "<u2",
    "int64": "<i8", "int32": "<i4", "int16": "<i2", "int8": "i1",
    "uint64": "<u8", "uint32": "<u4", "uint16": "<u2", "uint8": "u1", "bool": "u1",
    "complex128": "<c16", "complex64": "<c8",
}
# The legacy typed-storage classes torch.save names for each dtype.
STORAGE_TYPES = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8",
    "BoolStorage": "bool", "ComplexDoubleStorage": "complex128",
    "ComplexFloatStorage": "complex64",
}
# The first pickle in a legacy (pre-1.6, non-zip) torch.save file is this magic number.
LEGACY_MAGIC = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
MAX_DEPTH = 64          # nesting of dicts/lists we follow when flattening a checkpoint
MAX_BYTES = 4 * 1024**3  # default cap on the bytes of all the arrays load_torch returns
REPEAT_LIMIT = 16       # a view may hold at most this many times its storage's elements

_STORAGE_KEY = re.compile(r"[A-Za-z0-9_]+")


class _Refused(Exception):
    """A problem with the file; load_torch re-raises it as ValueError naming the file."""


class _StorageType(NamedTuple):
    """What a storage class (torch.FloatStorage, ...) unpickles to: its element type."""
    dtype: str          # torch dtype name, a key of RAW_DTYPES; "uint8" for UntypedStorage


class _DType(NamedTuple):
    """What a torch dtype (torch.uint16, ...) unpickles to."""
    name: str


class _Storage(NamedTuple):
    """A storage record in the zip: member name, element type and element count."""
    record: str
    dtype: str
    numel: int


class _Tensor:
    """A tensor as the pickle describes it; made into an array only if it is returned."""

    __slots__ = ("storage", "offset", "size", "stride", "metadata")

    def __init__(self, storage, offset, size, stride, metadata=None):
        if not isinstance(storage, _Storage):
            raise _Refused(f"a tensor's storage is a {type(storage).__name__}, not a storage")
        if not (_is_count(offset) and _is_counts(size) and _is_counts(stride)
                and len(size) == len(stride)):
            raise _Refused(f"bad tensor layout: offset {offset!r:.40}, size {size!r:.80}, "
                           f"stride {stride!r:.80} (expected non-negative ints, equal lengths)")
        if metadata is not None and not (
                isinstance(metadata, dict) and set(metadata) <= {"conj", "neg"}
                and all(isinstance(flag, bool) for flag in metadata.values())):
            raise _Refused(f"unsupported tensor metadata {metadata!r:.80} (only conj/neg flags)")
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride
        self.metadata = metadata or {}

    def __setstate__(self, state):      # pickle's BUILD opcode on a tensor: not in the format
        raise _Refused("the pickle sets attributes on a tensor, which torch.save never does")


class _StateDict(dict):
    """collections.OrderedDict as unpickled: a dict that ignores torch's ``_metadata``."""

    def __setstate__(self, state):      # BUILD with {"_metadata": {...}} (module versions)
        pass


def _is_count(value):
    return type(value) is int and value >= 0


def _is_counts(values):
    return type(values) is tuple and all(_is_count(v) for v in values)


def _ordered_dict(*args):
    return _StateDict(*args)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    return _Tensor(storage, storage_offset, size, stride, metadata)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       dtype, metadata=None):
    """Newer dtypes (uint16, ...): an untyped (byte) storage plus the dtype, retyped here."""
    if not (isinstance(storage, _Storage) and storage.dtype == "uint8"
            and isinstance(dtype, _DType)):
        raise _Refused("_rebuild_tensor_v3 expects an untyped storage and a torch dtype")
    itemsize = np.dtype(RAW_DTYPES[dtype.name]).itemsize
    if storage.numel % itemsize:
        raise _Refused(f"storage '{storage.record}' holds {storage.numel} bytes, "
                       f"not a whole number of {dtype.name} elements")
    typed = _Storage(storage.record, dtype.name, storage.numel // itemsize)
    return _Tensor(typed, storage_offset, size, stride, metadata)


def _rebuild_parameter(data, requires_grad, backward_hooks, state=None):
    """nn.Parameter -> the tensor it wraps (requires_grad, hooks and state are dropped)."""
    if not isinstance(data, _Tensor):
        raise _Refused(f"a parameter wraps a {type(data).__name__}, not a tensor")
    return data


# Every global a checkpoint of tensors may name, and what we give the pickle instead.
ALLOWED = {
    ("collections", "OrderedDict"): _ordered_dict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "UntypedStorage"): _StorageType("uint8"),
    **{("torch", name): _StorageType(dtype) for name, dtype in STORAGE_TYPES.items()},
    **{("torch", name): _DType(name) for name in RAW_DTYPES},
}


class _Unpickler(pickle.Unpickler):
    """pickle.Unpickler that resolves only ALLOWED names and reads storages from the zip."""

    def __init__(self, file, archive):
        super().__init__(file)
        self.archive = archive

    def find_class(self, module, name):
        try:
            return ALLOWED[module, name]
        except KeyError:
            raise _Refused(f"refusing to load '{module}.{name}' from a PyTorch file: "
                           "only tensors and their containers are allowed") from None

    def persistent_load(self, pid):
        return self.archive.storage(pid)


class _Archive:
    """The zip of a torch.save file: checked member names, storage records, their bytes."""

    def __init__(self, zf):
        self.zf = zf
        names = zf.namelist()
        pickles = [name for name in names if re.fullmatch(r"[^/]+/data\.pkl", name)]
        if not pickles:
            raise _Refused("not a PyTorch checkpoint: the zip holds no <name>/data.pkl")
        self.prefix = pickles[0].split("/")[0]       # the archive's folder
        if self.prefix in (".", "..") or ":" in self.prefix or "\\" in self.prefix:
            raise _Refused(f"unsafe archive folder name {self.prefix!r}")
        for name in names:
            parts = name.split("/")
            if (parts[0] != self.prefix or len(parts) < 2 or "\\" in name
                    or any(part in ("", ".", "..") for part in parts)):
                raise _Refused(f"zip member {name!r} lies outside the archive folder "
                               f"'{self.prefix}/'; refusing an unsafe PyTorch file")
        if len(set(names)) != len(names):
            raise _Refused("the zip holds two members with the same name")
        byteorder = b"little"       # older files have no byteorder record
        if f"{self.prefix}/byteorder" in names:
            byteorder = self.member("byteorder").strip()
        if byteorder != b"little":
            raise _Refused(f"byte order {byteorder[:16].decode(errors='replace')!r} is not "
                           "supported (only little-endian files)")
        self.raw = {}       # record name -> 1-d array of raw storage elements

    def member(self, name):
        """Bytes of <prefix>/<name>."""
        try:
            return self.zf.read(f"{self.prefix}/{name}")
        except (zipfile.BadZipFile, NotImplementedError, RuntimeError) as err:
            raise _Refused(f"cannot read zip member '{self.prefix}/{name}' ({err})") from None

    def storage(self, pid):
        """persistent_load: ('storage', storage type, key, location, numel) -> _Storage."""
        if not (type(pid) is tuple and len(pid) == 5 and pid[0] == "storage"):
            kind = pid[0] if type(pid) is tuple and pid and type(pid[0]) is str else pid
            raise _Refused(f"unsupported persistent record {str(kind)[:40]!r} "
                           "(only tensor storages are allowed)")
        _, storage_type, key, location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise _Refused(f"storage type is a {type(storage_type).__name__}, not a storage class")
        if not (type(key) is str and _STORAGE_KEY.fullmatch(key)):
            raise _Refused(f"bad storage key {str(key)[:40]!r} (expected letters and digits)")
        if type(location) is not str or not _is_count(numel):
            raise _Refused(f"bad storage record for key {key!r}")
        record = f"{self.prefix}/data/{key}"
        try:
            size = self.zf.getinfo(record).file_size
        except KeyError:
            raise _Refused(f"storage record '{record}' is missing from the zip") from None
        itemsize = np.dtype(RAW_DTYPES[storage_type.dtype]).itemsize
        if size != numel * itemsize:
            raise _Refused(f"storage record '{record}' holds {size} bytes, but its {numel} "
                           f"{storage_type.dtype} elements need {numel * itemsize}")
        return _Storage(record, storage_type.dtype, numel)

    def array(self, tensor, key):
        """Copy a tensor record into a contiguous NumPy array, checking it fits its storage."""
        storage, size = tensor.storage, tensor.size
        raw_dtype = np.dtype(RAW_DTYPES[storage.dtype])
        if 0 in size:
            view = np.empty(size, raw_dtype)
        else:
            last = tensor.offset + sum((n - 1) * s for n, s in zip(size, tensor.stride))
            if last >= storage.numel:
                raise _Refused(f"tensor {key!r} reaches element {last} of storage "
                               f"'{storage.record}', which holds {storage.numel} elements")
            flat = self.read(storage)[tensor.offset:]    # (numel - offset,) raw elements
            view = np.lib.stride_tricks.as_strided(
                flat, shape=size, strides=[s * raw_dtype.itemsize for s in tensor.stride],
                writeable=False)
        out = _to_numpy(view, storage.dtype)
        if tensor.metadata.get("conj"):         # a lazily conjugated complex tensor
            out = np.conj(out)
        if tensor.metadata.get("neg"):          # a lazily negated view (e.g. x.conj().imag)
            out = np.negative(out)
        return np.asarray(out)      # ufuncs on 0-d arrays return scalars

    def read(self, storage):
        """The storage's elements as a read-only 1-d array, read once per record."""
        if storage.record not in self.raw:
            data = self.member(storage.record[len(self.prefix) + 1:])
            self.raw[storage.record] = np.frombuffer(data, np.uint8)
        flat = self.raw[storage.record]
        raw_dtype = np.dtype(RAW_DTYPES[storage.dtype])
        if flat.size != storage.numel * raw_dtype.itemsize:
            raise _Refused(f"storage record '{storage.record}' holds {flat.size} bytes, but "
                           f"{storage.numel} {storage.dtype} elements need "
                           f"{storage.numel * raw_dtype.itemsize}")
        return flat.view(raw_dtype)


def _to_numpy(view, dtype):
    """Raw strided view -> contiguous native array of the final dtype (always a copy)."""
    if dtype == "bfloat16":             # bfloat16 bits are the high half of a float32
        return (view.astype(np.uint32, order="C") << 16).view(np.float32)
    if dtype == "bool":                 # any nonzero byte is True
        return view.astype(bool, order="C")
    return view.astype(view.dtype.newbyteorder("="), order="C")


def _is_tensor_dict(obj):
    return (isinstance(obj, dict) and len(obj) > 0
            and all(type(k) is str and isinstance(v, _Tensor) for k, v in obj.items()))


def _flatten(obj, prefix, out, depth=0):
    """Collect the tensors of nested dicts/lists into out under dotted keys; skip scalars."""
    if depth > MAX_DEPTH:
        raise _Refused(f"containers nested deeper than {MAX_DEPTH} levels at {prefix!r}")
    if isinstance(obj, dict):
        items = obj.items()
    else:
        items = enumerate(obj)
    for k, value in items:
        if type(k) not in (str, int):
            raise _Refused(f"unsupported key {k!r} under {prefix or 'the top level'!r}")
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(value, _Tensor):
            if key in out:
                raise _Refused(f"two tensors flatten to the same key {key!r}")
            out[key] = value
        elif isinstance(value, (dict, list, tuple)):
            _flatten(value, key, out, depth + 1)


def _state_dict(obj):
    """The checkpoint's tensors: the top dict, a wrapped state_dict, or everything flattened."""
    if not isinstance(obj, dict):
        raise _Refused(f"holds a {type(obj).__name__.lstrip('_')}, not a dict of tensors")
    if _is_tensor_dict(obj):
        return obj
    wrapped = [key for key in WRAPPER_KEYS if _is_tensor_dict(obj.get(key))]
    if len(wrapped) == 1:
        return obj[wrapped[0]]
    tensors = {}
    _flatten(obj, "", tensors)
    if not tensors:
        raise _Refused("holds no tensors")
    return tensors


def _out_itemsize(dtype):
    """Bytes per element of the array we return (bfloat16 becomes float32)."""
    return 4 if dtype == "bfloat16" else np.dtype(RAW_DTYPES[dtype]).itemsize


def _check_sizes(tensors, max_bytes):
    """Refuse views that would materialise far more than the file holds, before any copy.

    Rule 1: a tensor may declare at most REPEAT_LIMIT times as many elements as its
    storage holds (more is only possible with zero or overlapping strides).
    Rule 2: the returned arrays together may hold at most max_bytes (None: no cap).
    """
    total = 0
    for key, tensor in tensors.items():
        numel = math.prod(tensor.size)
        nbytes = numel * _out_itemsize(tensor.storage.dtype)
        shape = f"shape {tensor.size} ({numel} elements, {nbytes} bytes)"
        if numel > REPEAT_LIMIT * tensor.storage.numel:
            raise _Refused(f"tensor {key!r} declares {shape} with strides {tensor.stride} over "
                           f"storage '{tensor.storage.record}' of {tensor.storage.numel} "
                           f"elements: more than {REPEAT_LIMIT} times its storage; refusing "
                           "to materialise it (save tensor.contiguous() instead)")
        total += nbytes
        if max_bytes is not None and total > max_bytes:
            raise _Refused(f"tensor {key!r} declares {shape}, which brings the arrays to "
                           f"{total} bytes, over max_bytes={max_bytes}; pass a larger "
                           "max_bytes to load_torch if the file is trusted")


def load_torch(path, max_bytes=MAX_BYTES) -> dict[str, np.ndarray]:
    """Read a ``torch.save`` checkpoint's tensors as NumPy arrays, never running its pickle.

    Args:
        path: a file written by ``torch.save`` (zip format, PyTorch >= 1.6) holding a
            state_dict, or a dict that wraps one ({"epoch": 3, "state_dict": sd}, also under
            "model", "model_state_dict", ...), or nested dicts/lists of tensors and scalars.
        max_bytes: the most bytes the returned arrays may hold together (default 4 GiB);
            None for no cap. Checked from the declared shapes before anything is copied.

    Returns:
        {dotted key: array}, keys as stored ("features.0.weight"). A wrapper dict with
        exactly one state_dict under a known key gives that state_dict; otherwise every
        tensor in the nested containers, keyed by its path ("encoder.0.weight",
        "optimizer.state.0.exp_avg"); ints, floats and strings are skipped. Arrays are
        contiguous copies in the tensor's dtype (int64 0-d for ``num_batches_tracked``),
        except bfloat16, which becomes float32 exactly.

    Raises:
        ValueError naming the file: a global other than tensors and their containers
        (e.g. 'posix.system'), a zip member outside the archive's folder, a storage of the
        wrong length or a view that does not fit in it, a view that repeats its storage
        more than REPEAT_LIMIT (16) times over (a zero stride), arrays that would hold
        more than max_bytes together (the key, its declared shape and bytes are named),
        big-endian data, the legacy (pre-1.6) format, or a file that is not a PyTorch
        checkpoint.

    >>> sd = load_torch("lenet.pt")                 # doctest: +SKIP
    >>> model.load_state_dict(sd)                   # doctest: +SKIP
    """
    path = Path(path)
    if max_bytes is not None and (type(max_bytes) is not int or max_bytes < 0):
        raise ValueError(f"load_torch: max_bytes must be a non-negative int or None, got "
                         f"{max_bytes!r}")
    if not path.is_file():
        raise ValueError(f"{path}: no such PyTorch file")
    if not zipfile.is_zipfile(path):
        with path.open("rb") as f:
            head = f.read(len(LEGACY_MAGIC))
        if head == LEGACY_MAGIC or tarfile.is_tarfile(path):
            raise ValueError(f"{path}: legacy PyTorch format (before 1.6) is not supported; "
                             "re-save with torch.save in a current PyTorch")
        raise ValueError(f"{path}: not a PyTorch checkpoint (torch.save writes a zip archive)")
    try:
        with zipfile.ZipFile(path) as zf:
            archive = _Archive(zf)
            unpickler = _Unpickler(io.BytesIO(archive.member("data.pkl")), archive)
            try:
                obj = unpickler.load()
            except _Refused:
                raise
            except Exception as err:    # only our own functions ran: the pickle is malformed
                raise _Refused(f"data.pkl is not a valid PyTorch pickle "
                               f"({type(err).__name__}: {err})") from None
            tensors = _state_dict(obj)
            _check_sizes(tensors, max_bytes)
            return {key: archive.array(tensor, key) for key, tensor in tensors.items()}
    except _Refused as err:
        raise ValueError(f"{path}: {err}") from None
    except zipfile.BadZipFile as err:
        raise ValueError(f"{path}: not a readable zip archive ({err})") from None
