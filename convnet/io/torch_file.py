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
The functions are handed out wrapped and the markers are inert (``convnet.safe_pickle``):
a BUILD opcode on them is refused, so a file cannot change what a later load does. Before
unpickling, ``check_pickle`` walks the opcodes and refuses lengths past the end, runaway
memo indices and deeply nested tuples, on which the C unpickler would allocate gigabytes
or overflow its stack.

A tensor is the strided view  element[i, j, ...] = storage[offset + i*stride0 + j*stride1 ...]
of its storage, as in NumPy; we check that the view fits in the storage, then copy it into
a contiguous array. A view can declare far more elements than its storage holds (a zero
stride repeats an element: ``torch.zeros(1).expand(10**12)`` is a 4-byte storage), so
before any copy the sizes are capped: a view, and the views of a storage together, may
repeat it at most REPEAT_LIMIT times over, and the arrays together, like the storages
read, may hold at most ``max_bytes`` (``convnet.limits.MAX_ARRAY_BYTES``, 4 GiB).
The zip is checked before any member is read: stored or deflated members only, none
declaring more bytes than the archive holds, all of them together at most
``limits.MAX_COMPRESSION`` times the archive's size (a zip bomb), data.pkl at most
``limits.MAX_JSON_BYTES``. Members are read in chunks, never past their declared size.
bfloat16 and float8 (e4m3fn, e5m2), which NumPy has no type for, become float32, exactly
(bfloat16's 16 bits are the top half of a float32: a shift by 16), as .safetensors files'
are read.

>>> tensors = load_torch("resnet18.pth")          # doctest: +SKIP
>>> tensors["conv1.weight"].shape, tensors["conv1.weight"].dtype       # doctest: +SKIP
((64, 3, 7, 7), dtype('float32'))
"""

from __future__ import annotations

import io
import math
import pickle
import re
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

from convnet import limits
from convnet.io.weights import is_file, not_a_file, widen
from convnet.safe_pickle import Global, Inert, Refused, check_pickle, show

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
    "float8_e4m3fn": "u1", "float8_e5m2": "u1",
}
# Read as their bits and made float32, exactly (weights.widen): torch dtype -> its
# safetensors name.
WIDENED = {"bfloat16": "BF16", "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2"}
# The legacy typed-storage classes torch.save names for each dtype.
STORAGE_TYPES = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8",
    "BoolStorage": "bool", "ComplexDoubleStorage": "complex128",
    "ComplexFloatStorage": "complex64",
}
# The first pickle in a legacy (pre-1.6, non-zip) torch.save file is this magic number:
# its LONG1 opcode and bytes, after PROTO (2 bytes) and, from protocol 4 on, a FRAME (9).
LEGACY_MAGIC = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)[2:-1]
REPEAT_LIMIT = 16       # a view may hold at most this many times its storage's elements
VIEW_LIMIT = 64         # copies of one storage its plain views may make together
MAX_DIMS = 32           # dimensions of one tensor
MAX_BYTEORDER = 16      # bytes of the byteorder record ("little")
CHUNK = 1 << 20         # bytes per read of a zip member

_STORAGE_KEY = re.compile(r"[A-Za-z0-9_]+")
# torch's names of element types (float8_e4m3fnuz, qint8, complex32, bits16, uint4 ...):
# one not in RAW_DTYPES is named as a dtype convnet does not read, not as an unsafe name
_TORCH_DTYPE = re.compile(r"(float|bfloat|complex|q?u?int|bits)[0-9][0-9a-z_]*")


class _Default:
    """load_torch's default max_bytes: limits.MAX_ARRAY_BYTES, read when load_torch runs."""

    def __repr__(self):
        return "limits.MAX_ARRAY_BYTES"


MAX_BYTES = _Default()


class _StorageType(Inert):
    """What a storage class (torch.FloatStorage, ...) unpickles to: its element type."""

    __slots__ = ("name", "dtype")   # torch's name; a key of RAW_DTYPES ("uint8": untyped)

    def __repr__(self):
        return self.name


class _DType(Inert):
    """What a torch dtype (torch.uint16, ...) unpickles to."""

    __slots__ = ("name",)           # a key of RAW_DTYPES

    def __repr__(self):
        return f"torch.{self.name}"


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
            raise Refused(f"a tensor's storage is a {type(storage).__name__}, not a storage")
        if not (_is_count(offset) and _is_counts(size) and _is_counts(stride)
                and len(size) == len(stride)):
            raise Refused(f"bad tensor layout: offset {show(offset)}, size "
                          f"{show(size)}, stride {show(stride)} (expected non-negative "
                          f"int64s, equal lengths, at most {MAX_DIMS} dimensions)")
        if metadata is not None and not (
                type(metadata) is dict and set(metadata) <= {"conj", "neg"}
                and all(type(flag) is bool for flag in metadata.values())):
            raise Refused(f"unsupported tensor metadata {show(metadata)} "
                          "(only conj/neg flags)")
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride
        self.metadata = dict(metadata or {})    # a copy: the pickle keeps its own dict

    def __setstate__(self, state):      # pickle's BUILD opcode on a tensor: not in the format
        raise Refused("the pickle sets attributes on a tensor, which torch.save never does")


class _StateDict(dict):
    """collections.OrderedDict as unpickled: a dict that ignores torch's ``_metadata``."""

    def __setstate__(self, state):      # BUILD with {"_metadata": {...}} (module versions)
        pass


def _is_count(value):
    return type(value) is int and 0 <= value < 1 << 63      # as torch's own int64 counts


def _is_counts(values):
    return type(values) is tuple and len(values) <= MAX_DIMS and all(map(_is_count, values))


def _ordered_dict(*args):
    """OrderedDict() as torch.save's pickles call it: with no arguments, the items set
    after (SETITEMS). An argument would be copied, at every call: refused."""
    if args:
        raise Refused("the pickle calls OrderedDict with arguments, which torch.save never "
                      "does")
    return _StateDict()


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    return _Tensor(storage, storage_offset, size, stride, metadata)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       dtype, metadata=None):
    """Newer dtypes (uint16, ...): an untyped (byte) storage plus the dtype, retyped here."""
    if not (isinstance(storage, _Storage) and storage.dtype == "uint8"
            and isinstance(dtype, _DType)):
        raise Refused("_rebuild_tensor_v3 expects an untyped storage and a torch dtype")
    itemsize = np.dtype(RAW_DTYPES[dtype.name]).itemsize
    if storage.numel % itemsize:
        raise Refused(f"storage '{storage.record}' holds {storage.numel} bytes, "
                      f"not a whole number of {dtype.name} elements")
    typed = _Storage(storage.record, dtype.name, storage.numel // itemsize)
    return _Tensor(typed, storage_offset, size, stride, metadata)


def _rebuild_parameter(data, requires_grad, backward_hooks, state=None):
    """nn.Parameter -> the tensor it wraps (requires_grad, hooks and state are dropped)."""
    if not isinstance(data, _Tensor):
        raise Refused(f"a parameter wraps a {type(data).__name__}, not a tensor")
    return data


# Every global a checkpoint of tensors may name, and what the pickle gets instead: our
# functions wrapped (Global) and inert markers, none of which a BUILD opcode can change.
ALLOWED = {
    **{(module, name): Global(f"{module}.{name}", func) for module, name, func in [
        ("collections", "OrderedDict", _ordered_dict),
        ("torch._utils", "_rebuild_tensor_v2", _rebuild_tensor_v2),
        ("torch._utils", "_rebuild_tensor_v3", _rebuild_tensor_v3),
        ("torch._utils", "_rebuild_parameter", _rebuild_parameter),
        ("torch._utils", "_rebuild_parameter_with_state", _rebuild_parameter)]},
    ("torch.storage", "UntypedStorage"): _StorageType("torch.storage.UntypedStorage", "uint8"),
    **{("torch", name): _StorageType(f"torch.{name}", dtype)
       for name, dtype in STORAGE_TYPES.items()},
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
            if module == "torch" and _TORCH_DTYPE.fullmatch(name):
                raise Refused(f"tensors of dtype torch.{name:.80} are not read: convnet "
                              f"reads {', '.join(RAW_DTYPES)}; convert them (e.g. "
                              f"tensor.float()) before saving") from None
            if (module, name) == ("torch._utils", "_rebuild_qtensor"):
                raise Refused("quantized tensors are not read: convnet reads "
                              f"{', '.join(RAW_DTYPES)}; save the float model (e.g. "
                              "tensor.dequantize()) instead") from None
            raise Refused(f"refusing to load '{module:.80}.{name:.80}' from a PyTorch file: "
                          "only tensors and their containers are allowed") from None

    def persistent_load(self, pid):
        return self.archive.storage(pid)


class _Archive:
    """The zip of a torch.save file: checked member names and sizes, storage records, bytes."""

    def __init__(self, zf, size):
        self.zf = zf
        names = zf.namelist()
        pickles = [name for name in names if re.fullmatch(r"[^/]+/data\.pkl", name)]
        if not pickles:
            raise Refused("not a PyTorch checkpoint: the zip holds no <name>/data.pkl")
        self.prefix = pickles[0].split("/")[0]       # the archive's folder
        if self.prefix in (".", "..") or ":" in self.prefix or "\\" in self.prefix:
            raise Refused(f"unsafe archive folder name {show(self.prefix)}")
        for name in names:
            parts = name.split("/")
            if (parts[0] != self.prefix or len(parts) < 2 or "\\" in name
                    or any(part in ("", ".", "..") for part in parts)):
                raise Refused(f"zip member {show(name)} lies outside the archive folder "
                              f"'{self.prefix}/'; refusing an unsafe PyTorch file")
        if len(set(names)) != len(names):
            raise Refused("the zip holds two members with the same name")
        _check_members(zf.infolist(), size)
        byteorder = b"little"       # older files have no byteorder record
        if f"{self.prefix}/byteorder" in names:
            byteorder = bytes(self.member("byteorder", MAX_BYTEORDER)).strip()
        if byteorder != b"little":
            raise Refused(f"byte order {byteorder[:16].decode(errors='replace')!r} is not "
                          "supported (only little-endian files)")
        self.raw = {}       # record name -> 1-d array of raw storage elements

    def member(self, name, most):
        """Bytes of <prefix>/<name>, whose declared size may be at most ``most``.

        Read in chunks: zipfile stops at the declared size and checks the CRC at the end,
        so a deflated member cannot inflate past what it declared.
        """
        full = f"{self.prefix}/{name}"
        declared = self.zf.getinfo(full).file_size
        if declared > most:
            raise Refused(f"zip member '{full}' declares {declared:,} bytes, over the "
                          f"{most:,} it may hold")
        data = bytearray()
        try:
            with self.zf.open(full) as f:
                while chunk := f.read(CHUNK):
                    data += chunk
        except Exception as err:    # zipfile, zlib: a bad header, CRC or deflate stream
            raise Refused(f"cannot read zip member '{full}' ({type(err).__name__}: "
                          f"{str(err)[:200]})") from None
        return data

    def storage(self, pid):
        """persistent_load: ('storage', storage type, key, location, numel) -> _Storage."""
        if not (type(pid) is tuple and len(pid) == 5 and pid[0] == "storage"):
            kind = pid[0] if type(pid) is tuple and pid and type(pid[0]) is str else pid
            raise Refused(f"unsupported persistent record {show(kind)} "
                          "(only tensor storages are allowed)")
        _, storage_type, key, location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise Refused(f"storage type is a {type(storage_type).__name__}, "
                          "not a storage class")
        if not (type(key) is str and _STORAGE_KEY.fullmatch(key)):
            raise Refused(f"bad storage key {show(key)} (expected letters and digits)")
        if type(location) is not str or not _is_count(numel):
            raise Refused(f"bad storage record for key {show(key)}: location "
                          f"{show(location)}, numel {show(numel)}")
        record = f"{self.prefix}/data/{key}"
        try:
            size = self.zf.getinfo(record).file_size
        except KeyError:
            raise Refused(f"storage record '{record}' is missing from the zip") from None
        itemsize = np.dtype(RAW_DTYPES[storage_type.dtype]).itemsize
        if size != numel * itemsize:
            raise Refused(f"storage record '{record}' holds {size} bytes, but its {numel} "
                          f"{storage_type.dtype} elements need {numel * itemsize}")
        return _Storage(record, storage_type.dtype, numel)

    def array(self, tensor, key):
        """Copy a tensor record into a contiguous NumPy array, checking it fits its storage."""
        storage, size = tensor.storage, tensor.size
        raw_dtype = np.dtype(RAW_DTYPES[storage.dtype])
        if 0 in size:
            try:
                view = np.empty(size, raw_dtype)
            except ValueError:      # the other sizes multiply past what NumPy can index
                raise Refused(f"tensor {show(key)} declares the empty shape {size}, which NumPy "
                              "cannot represent") from None
        else:
            last = tensor.offset + sum((n - 1) * s for n, s in zip(size, tensor.stride))
            if last >= storage.numel:
                raise Refused(f"tensor {show(key)} reaches element {last} of storage "
                              f"'{storage.record}', which holds {storage.numel} elements")
            flat = self.read(storage)[tensor.offset:]    # (numel - offset,) raw elements
            # a size-1 dimension's stride is never used: 0 keeps a huge one from overflowing
            strides = [s * raw_dtype.itemsize if n > 1 else 0
                       for n, s in zip(size, tensor.stride)]
            view = np.lib.stride_tricks.as_strided(flat, shape=size, strides=strides,
                                                   writeable=False)
        out = _to_numpy(view, storage.dtype)
        flags = [flag for flag, bad in (("conj", out.dtype.kind != "c"),
                                        ("neg", out.dtype.kind == "b"))
                 if tensor.metadata.get(flag) and bad]
        if flags:                               # torch sets neither on these
            raise Refused(f"tensor {show(key)} of {out.dtype} carries the {flags[0]} flag, "
                          f"which torch sets only on "
                          f"{'complex' if flags[0] == 'conj' else 'numeric'} tensors")
        if tensor.metadata.get("conj"):         # a lazily conjugated complex tensor
            out = np.conj(out)
        if tensor.metadata.get("neg"):          # a lazily negated view (e.g. x.conj().imag)
            out = np.negative(out)
        return np.asarray(out)      # ufuncs on 0-d arrays return scalars

    def read(self, storage):
        """The storage's elements as a read-only 1-d array, read once per record."""
        raw_dtype = np.dtype(RAW_DTYPES[storage.dtype])
        nbytes = storage.numel * raw_dtype.itemsize
        if storage.record not in self.raw:
            data = self.member(storage.record[len(self.prefix) + 1:], nbytes)
            self.raw[storage.record] = np.frombuffer(data, np.uint8)
        flat = self.raw[storage.record]
        if flat.size != nbytes:
            raise Refused(f"storage record '{storage.record}' holds {flat.size} bytes, but "
                          f"{storage.numel} {storage.dtype} elements need {nbytes}")
        return flat.view(raw_dtype)


def _check_members(infos, size):
    """Refuse, before reading any member, sizes that the archive cannot back up.

    A stored member holds exactly its bytes; no member's compressed bytes can exceed the
    archive; the members together may inflate to at most limits.MAX_COMPRESSION times the
    archive (deflate can reach about 1000:1, torch.save stores without compressing).
    """
    total = 0
    for info in infos:
        name = show(info.filename)
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise Refused(f"zip member {name} uses compression method {info.compress_type} "
                          "(expected 0 = stored, as torch.save writes, or 8 = deflated)")
        if info.flag_bits & 0x1:
            raise Refused(f"zip member {name} is encrypted")
        if info.compress_size > size or (info.compress_type == zipfile.ZIP_STORED
                                         and info.file_size != info.compress_size):
            raise Refused(f"zip member {name} declares {info.file_size:,} bytes "
                          f"({info.compress_size:,} compressed) in an archive of {size:,} "
                          "bytes (expected compressed bytes that fit in the archive, and "
                          "equal sizes for a stored member)")
        total += info.file_size
    if total > limits.MAX_COMPRESSION * size:
        raise Refused(f"the zip members declare {total:,} bytes in all, over "
                      f"convnet.limits.MAX_COMPRESSION = {limits.MAX_COMPRESSION} times the "
                      f"archive's {size:,} bytes; refusing a zip bomb")


def _to_numpy(view, dtype):
    """Raw strided view -> contiguous native array of the final dtype (always a copy)."""
    if dtype in WIDENED:                # bfloat16's, float8's bits: float32, exactly
        return np.array(widen(view, WIDENED[dtype]), order="C")   # (a 0-d one stays 0-d)
    if dtype == "bool":                 # any nonzero byte is True
        return view.astype(bool, order="C")
    return view.astype(view.dtype.newbyteorder("="), order="C")


def _is_tensor_dict(obj):
    return (isinstance(obj, dict) and len(obj) > 0
            and all(type(k) is str and isinstance(v, _Tensor) for k, v in obj.items()))


def _flatten(obj, prefix, out, most, depth=0):
    """Collect the tensors of nested dicts/lists into out under dotted keys; skip scalars.

    Visits at most ``most`` items and returns how many it visited: a pickle can share one
    container many times over (three lists of 1,000 references to the next make a
    billion items from a few kilobytes), so the caller passes the pickle's size, which
    bounds the items of a tree that shares nothing.
    """
    if depth > limits.MAX_DEPTH:
        raise Refused(f"containers nested deeper than {limits.MAX_DEPTH} levels at "
                      f"{prefix[:80]!r} (convnet.limits.MAX_DEPTH)")
    items = obj.items() if isinstance(obj, dict) else enumerate(obj)
    visited = 0
    for k, value in items:
        visited += 1
        if not (type(k) is str or (type(k) is int and abs(k) < 1 << 63)):
            raise Refused(f"unsupported key {show(k)} under "
                          f"{prefix[:80] or 'the top level'!r} (expected a str or an int)")
        key = f"{prefix}.{k}" if prefix else str(k)
        if len(key) > limits.MAX_KEY_CHARS:   # one long string shared at every level
            raise Refused(f"a key of {len(key):,} characters under "
                          f"{prefix[:80] or 'the top level'!r}, over the cap of "
                          f"{limits.MAX_KEY_CHARS:,} (convnet.limits.MAX_KEY_CHARS)")
        if isinstance(value, _Tensor):
            if key in out:
                raise Refused(f"two tensors flatten to the same key {key[:80]!r}")
            out[key] = value
        elif isinstance(value, (dict, list, tuple)):
            visited += _flatten(value, key, out, most - visited, depth + 1)
        if visited > most:
            raise Refused(f"the containers hold more than {most:,} items, more than data.pkl "
                          "can describe without sharing containers over and over")
    return visited


def _state_dict(obj, most):
    """The checkpoint's tensors: the top dict, a wrapped state_dict, or everything flattened
    (visiting at most ``most`` items)."""
    if not isinstance(obj, dict):
        raise Refused(f"holds a {type(obj).__name__.lstrip('_')}, not a dict of tensors")
    if _is_tensor_dict(obj):
        return obj
    wrapped = [key for key in WRAPPER_KEYS if _is_tensor_dict(obj.get(key))]
    if len(wrapped) == 1:
        return obj[wrapped[0]]
    tensors = {}
    _flatten(obj, "", tensors, most)
    if not tensors:
        raise Refused("holds no tensors")
    return tensors


def _out_itemsize(dtype):
    """Bytes per element of the array we return (bfloat16 and float8 become float32)."""
    return 4 if dtype in WIDENED else np.dtype(RAW_DTYPES[dtype]).itemsize


def _check_sizes(tensors, max_bytes):
    """Refuse views that would materialise far more than the file holds, before any copy.

    Rule 1: a tensor may declare at most REPEAT_LIMIT times as many elements as its
    storage holds (more is only possible with zero or overlapping strides), and the
    tensors viewing one storage may repeat it together at most REPEAT_LIMIT times beyond
    one copy each (a tensor's repeats: its elements past the storage's). Any number of
    plain views share a storage (a block tied n times over is n views).
    The views of one storage may together hold at most VIEW_LIMIT times its bytes (a block
    tied 40 times over, 40) where they hold more than a MiB: each view is a copy.
    Rule 2: the returned arrays together may hold at most max_bytes (None: no cap).
    Rule 3: so may the storages read for them (a one-element view of a huge storage).
    """
    total, storages, repeated, viewed = 0, {}, {}, {}
    for key, tensor in tensors.items():
        storage = tensor.storage
        numel = math.prod(tensor.size)
        nbytes = numel * _out_itemsize(storage.dtype)
        shape = f"shape {tensor.size} ({numel} elements, {nbytes} bytes)"
        repeated[storage.record] = (repeated.get(storage.record, 0)
                                    + max(numel - storage.numel, 0))
        if max(numel, repeated[storage.record]) > REPEAT_LIMIT * storage.numel:
            raise Refused(f"tensor {show(key)} declares {shape} with strides {tensor.stride} over "
                          f"storage '{storage.record}' of {storage.numel} elements: it, or "
                          f"the views of that storage together, repeat it more than "
                          f"{REPEAT_LIMIT} times; refusing to materialise that (save "
                          "tensor.contiguous() instead)")
        viewed[storage.record] = viewed.get(storage.record, 0) + numel
        if viewed[storage.record] > VIEW_LIMIT * storage.numel and \
                viewed[storage.record] * _out_itemsize(storage.dtype) > 1 << 20:
            raise Refused(f"tensor {show(key)} brings the views of storage "
                          f"'{storage.record}' ({storage.numel} elements) to "
                          f"{viewed[storage.record]} elements, more than {VIEW_LIMIT} times "
                          f"it: each view would be a copy; refusing to materialise that")
        total += nbytes
        if max_bytes is not None and total > max_bytes:
            raise Refused(f"tensor {show(key)} declares {shape}, which brings the arrays to "
                          f"{total} bytes, over max_bytes={max_bytes}; pass a larger "
                          "max_bytes to load_torch if the file is trusted")
        if numel:
            storages[storage.record] = storage.numel * np.dtype(RAW_DTYPES[storage.dtype]).itemsize
    if max_bytes is not None and sum(storages.values()) > max_bytes:
        raise Refused(f"the tensors' storages hold {sum(storages.values())} bytes, over "
                      f"max_bytes={max_bytes}; pass a larger max_bytes to load_torch if the "
                      "file is trusted")


def _unpickle(archive):
    """(data.pkl's object, data.pkl's size): checked (check_pickle), then unpickled with
    only ALLOWED names."""
    data = bytes(archive.member("data.pkl", limits.MAX_JSON_BYTES))
    try:
        check_pickle(data)
    except Refused as err:
        raise Refused(f"data.pkl is not a valid PyTorch pickle: {err}") from None
    try:
        return _Unpickler(io.BytesIO(data), archive).load(), len(data)
    except Refused:
        raise
    except Exception as err:    # only our own functions ran: the pickle is malformed
        raise Refused(f"data.pkl is not a valid PyTorch pickle "
                      f"({type(err).__name__}: {str(err)[:200]})") from None


def _is_legacy(path):
    """A pre-1.6 torch.save file, from its first bytes alone: a pickle starting with the
    magic number, or an uncompressed tar (its "ustar" mark at byte 257; torch.save never
    compressed one). tarfile.is_tarfile would decompress and read whatever headers a
    compressed file declares: gigabytes from a file of a few hundred bytes."""
    try:
        with path.open("rb") as f:
            head = f.read(512)
    except OSError:
        return False
    size = len(LEGACY_MAGIC)
    return (head[:1] == pickle.PROTO and LEGACY_MAGIC in (head[2:2 + size], head[11:11 + size])
            or head[257:262] == b"ustar")


def load_torch(path, max_bytes=MAX_BYTES) -> dict[str, np.ndarray]:
    """Read a ``torch.save`` checkpoint's tensors as NumPy arrays, never running its pickle.

    Args:
        path: a file written by ``torch.save`` (zip format, PyTorch >= 1.6) holding a
            state_dict, or a dict that wraps one ({"epoch": 3, "state_dict": sd}, also under
            "model", "model_state_dict", ...), or nested dicts/lists of tensors and scalars.
        max_bytes: the most bytes the returned arrays may hold together, and the storages
            read for them; default ``convnet.limits.MAX_ARRAY_BYTES`` (4 GiB) as it is when
            load_torch runs; None for no cap. Checked from the declared shapes before
            anything is copied.

    Returns:
        {dotted key: array}, keys as stored ("features.0.weight"). A wrapper dict with
        exactly one state_dict under a known key gives that state_dict; otherwise every
        tensor in the nested containers, keyed by its path ("encoder.0.weight",
        "optimizer.state.0.exp_avg"); ints, floats and strings are skipped. Arrays are
        contiguous copies in the tensor's dtype (int64 0-d for ``num_batches_tracked``),
        except bfloat16 and float8, which become float32 exactly.

    Raises:
        ValueError naming the file: a global other than tensors and their containers
        (e.g. 'posix.system'), a BUILD on an admitted name, a malformed or runaway pickle
        (lengths past the end, tuples nested deeper than limits.MAX_DEPTH), a zip member
        outside the archive's folder, zip sizes the archive cannot back up (a zip bomb,
        limits.MAX_COMPRESSION), a storage of the wrong length or a view that does not
        fit in it, a view that repeats its storage more than REPEAT_LIMIT (16) times over
        (a zero stride), arrays or storages over max_bytes (the key, its declared shape
        and bytes are named), big-endian data, the legacy (pre-1.6) format, or a file
        that is not a PyTorch checkpoint, or no file at all.

    >>> sd = load_torch("lenet.pt")                 # doctest: +SKIP
    >>> model.load_state_dict(sd)                   # doctest: +SKIP
    """
    path = Path(path)
    if max_bytes is MAX_BYTES:
        max_bytes = limits.MAX_ARRAY_BYTES
    if max_bytes is not None and (type(max_bytes) is not int or max_bytes < 0):
        raise ValueError(f"load_torch: max_bytes must be a non-negative int or None, got "
                         f"{max_bytes!r}")
    if not is_file(path):
        raise ValueError(f"{path}: {not_a_file(path, 'PyTorch file')}")
    if not zipfile.is_zipfile(path):
        if _is_legacy(path):
            raise ValueError(f"{path}: legacy PyTorch format (before 1.6) is not supported; "
                             "re-save with torch.save in a current PyTorch")
        raise ValueError(f"{path}: not a PyTorch checkpoint (torch.save writes a zip archive)")
    try:
        try:
            zf = zipfile.ZipFile(path)
        except Exception as err:    # zipfile: BadZipFile, a name that is not UTF-8, ...
            raise Refused(f"not a readable zip archive ({type(err).__name__}: "
                          f"{str(err)[:200]})") from None
        with zf:
            archive = _Archive(zf, path.stat().st_size)
            tensors = _state_dict(*_unpickle(archive))
            _check_sizes(tensors, max_bytes)
            return {key: archive.array(tensor, key) for key, tensor in tensors.items()}
    except Refused as err:
        raise ValueError(f"{path}: {err}") from None
