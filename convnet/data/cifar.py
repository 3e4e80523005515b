"""CIFAR-10 and CIFAR-100 in both published forms, binary and Python (pickle).

Binary form (cifar-10-batches-bin, cifar-100-binary): fixed-size records, one image each,

    CIFAR-10:  1 label byte             + 3072 pixel bytes = 3073 bytes a record
    CIFAR-100: 1 coarse + 1 fine label  + 3072 pixel bytes = 3074 bytes a record

files data_batch_1.bin .. data_batch_5.bin and test_batch.bin (CIFAR-10), train.bin and
test.bin (CIFAR-100); class names in batches.meta.txt, coarse_label_names.txt and
fine_label_names.txt, one a line. The 3072 pixel bytes are the red, green and blue 32x32
planes row-major, i.e. already one (3, 32, 32) CHW image.

Python form (cifar-10-batches-py, cifar-100-python): Python-2 pickles (protocol 2) of dicts
{b'data': uint8 array (n, 3072), b'labels' or b'fine_labels'/b'coarse_labels': list of int,
...}, with meta files batches.meta / meta. A pickle can run any code while it loads, so
these are read by ``CifarUnpickler``, which builds dicts, lists, bytes, str and ints (those
need no import) and admits by name only what NumPy arrays need; anything else, such as
``posix.system``, is refused before it is called. Nothing NumPy-internal reaches the
pickle either: the admitted names give records of ours (``convnet.safe_pickle``), and an
array is made only after its record is checked (a plain numeric dtype, a shape within
limits.MAX_DATA_BYTES, exactly the bytes it needs). An array pickles as

    _reconstruct(numpy.ndarray, (0,), b'b')                     -> an empty array record
    BUILD (1, shape, dtype, is_fortran, raw bytes)              -> its shape and data
    dtype = numpy.dtype('u1', False, True)                      -> a dtype record
            BUILD (3, '|', None, None, None, -1, -1, 0)          -> its byte order

When both forms are present the binary one is used (no pickle at all). Every file's size
is checked against the caps (limits.MAX_DATA_BYTES for the images, MAX_PICKLE_BYTES for a
pickle, MAX_NAMES_BYTES for a class-name file) before it is read.
"""

from __future__ import annotations

import io
import math
import os
import pickle
from pathlib import Path

import numpy as np

from convnet import limits
from convnet.data.files import CHUNK, DATA_ENV, cache_dir
from convnet.data.preprocess import MAX_NAME
from convnet.safe_pickle import Global, Inert, Refused, check_pickle, show

IMAGE_BYTES = 3 * 32 * 32
MAX_PICKLE_BYTES = 512 << 20  # the largest real file (cifar-100 train) is ~160 MB
MAX_NAMES_BYTES = 1 << 20     # a class-name file (batches.meta.txt, meta): real ones ~2 KB
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
CIFAR10_DIRS = ("cifar-10-batches-bin", "cifar-10-batches-py")
CIFAR100_DIRS = ("cifar-100-binary", "cifar-100-python")
CIFAR10_FILES = {
    "binary": {"train": [f"data_batch_{i}.bin" for i in range(1, 6)],
               "test": ["test_batch.bin"]},
    "python": {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
}
CIFAR100_FILES = {
    "binary": {"train": ["train.bin"], "test": ["test.bin"]},
    "python": {"train": ["train"], "test": ["test"]},
}
CIFAR100_LABELS = {"coarse": 20, "fine": 100}
# The dtypes an array in a CIFAR pickle may have: bool, integers, floats (NumPy's codes).
PLAIN_DTYPES = ("b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8")
LATIN1 = ("latin1", "latin-1", "latin_1", "iso-8859-1", "iso8859-1")
MAX_NDIM = 32


class _Budget:
    """Bytes one load may make of one kind (encoded strings, or arrays): as many as the
    file holds. Each string or array of a real file has its own bytes in it; one shared
    string could otherwise be copied again and again (a 1 MB file made 2.5 GB)."""

    def __init__(self, limit, what):
        self.left, self.limit, self.what = limit, limit, what

    def spend(self, nbytes):
        self.left -= nbytes
        if self.left < 0:
            raise Refused(f"the pickle makes more than {self.limit:,} bytes of {self.what}, "
                          "more than the file holds: it copies shared data")


def _latin1_encode(text, encoding, budget):
    """_codecs.encode as Python 3 protocol-2 pickles use it for bytes, latin-1 only; the
    bytes made are spent from ``budget``."""
    if type(text) is not str or type(encoding) is not str or encoding.lower() not in LATIN1:
        raise Refused(f"refusing _codecs.encode({type(text).__name__}, "
                      f"{show(encoding)}): only str to latin-1 bytes is allowed")
    budget.spend(len(text))
    return text.encode("latin1")


def _empty_bytes(*args):
    """bytes() as Python 3 writes b'' at protocol 2; only with no arguments (bytes(n) would
    allocate n bytes)."""
    if args:
        raise Refused(f"refusing bytes{show(args)}: only bytes() is allowed")
    return b""


class _Marker(Inert):
    """A name a pickle may pass but not call or change (numpy.ndarray)."""

    __slots__ = ("name",)

    def __repr__(self):
        return self.name


NDARRAY = _Marker("numpy.ndarray")
_UNSET = _Marker("<never set>")   # the state of a record before its BUILD


class _DTypeRecord:
    """numpy.dtype(code, align, copy) as a pickle calls it, then its BUILD state; checked
    and made a NumPy dtype only by ``dtype()``, so no NumPy object meets the pickle."""

    __slots__ = ("args", "state")
    __hash__ = None

    def __init__(self, *args):
        self.args, self.state = args, _UNSET

    def __setstate__(self, state):      # BUILD: dtype.__setstate__ would change the dtype
        if self.state is not _UNSET:
            raise Refused("the pickle sets a numpy.dtype's state twice")
        self.state = state

    def __repr__(self):
        return "numpy.dtype"

    def dtype(self, where):
        """The plain numeric dtype (PLAIN_DTYPES) that the record describes, or ValueError."""
        args, state = self.args, self.state
        code = _text(args[0]) if args and type(args[0]) in (bytes, str) else None
        order = _text(state[1]) if type(state) is tuple and len(state) == 8 else None
        if not (len(args) == 3 and code in PLAIN_DTYPES
                and all(type(flag) in (bool, int) for flag in args[1:])
                and order in ("<", ">", "|", "=")
                and state[0] == 3 and state[2:] == (None, None, None, -1, -1, 0)):
            raise ValueError(f"{where}: refusing numpy.dtype{show(args)} with state "
                             f"{show(state)}: expected a plain numeric dtype "
                             f"({', '.join(PLAIN_DTYPES)}) with state (3, byte order, None, "
                             "None, None, -1, -1, 0)")
        dtype = np.dtype(code)
        return dtype.newbyteorder(order) if order in "<>" else dtype


class _ArrayRecord:
    """An array as a pickle builds it, _reconstruct(...) then BUILD (version, shape, dtype,
    is_fortran, raw bytes); checked and made an ndarray only by ``array()``."""

    __slots__ = ("state", "axes")
    __hash__ = None

    def __init__(self, axes=None):
        self.state, self.axes = _UNSET, axes   # axes: a transpose after (_frombuffer's)

    def __setstate__(self, state):      # BUILD: ndarray.__setstate__ trusts what it is given
        if self.state is not _UNSET:
            raise Refused("the pickle sets a numpy array's state twice")
        self.state = state

    def __repr__(self):
        return "numpy.ndarray"

    def array(self, where):
        """A new writable ndarray from the checked state, or ValueError naming ``where``."""
        state = self.state
        if not (type(state) is tuple and len(state) == 5 and state[0] == 1
                and isinstance(state[2], _DTypeRecord)):
            raise ValueError(f"{where}: bad numpy array state {show(state)}: expected "
                             "(1, shape, dtype, is_fortran, data)")
        _, shape, dtype, fortran, raw = state
        dtype = dtype.dtype(where)
        if type(raw) is str and (not raw or max(raw) <= "\xff"):     # text of latin-1 bytes
            raw = raw.encode("latin1")
        if not (type(shape) is tuple and len(shape) <= MAX_NDIM
                and all(type(n) is int and 0 <= n < 1 << 63 for n in shape)
                and type(fortran) in (bool, int) and type(raw) in (bytes, bytearray)):
            raise ValueError(f"{where}: bad numpy array state: shape {show(shape)}, "
                             f"is_fortran {show(fortran)}, data a {type(raw).__name__} "
                             f"(expected at most {MAX_NDIM} non-negative int64s, a bool, "
                             "bytes)")
        # sizes of 0 count as 1 here, so that every shape that passes is one NumPy can index
        limits.check_count(math.prod(max(n, 1) for n in shape) * dtype.itemsize,
                           "MAX_DATA_BYTES", "bytes in an array", where)
        nbytes = math.prod(shape) * dtype.itemsize
        if len(raw) != nbytes:
            raise ValueError(f"{where}: a numpy array of shape {shape} and dtype {dtype} "
                             f"needs {nbytes} bytes, but its data holds {len(raw)}")
        flat = np.frombuffer(raw, dtype)
        if dtype.kind == "b":       # any nonzero byte is True, as NumPy's own casts make it
            flat = flat.view(np.uint8).astype(bool)
        array = flat.reshape(shape, order="F" if fortran else "C")
        if self.axes is not None:
            if sorted(self.axes) != list(range(len(shape))):
                raise ValueError(f"{where}: numpy array axis order {show(self.axes)} is not "
                                 f"an order of the {len(shape)} axes of shape {shape}")
            array = array.transpose(self.axes)
        return array.copy(order="K")


def _reconstruct(subtype, shape, dtype):
    """NumPy's _reconstruct for plain ndarrays only: an empty array record, whatever shape
    the pickle asks for (BUILD then gives the real shape with data that is in the file)."""
    if subtype is not NDARRAY:
        raise Refused(f"refusing to reconstruct {show(subtype)}: only numpy.ndarray")
    return _ArrayRecord()


def _frombuffer(buf, dtype, shape, order, axis_order=None):
    """NumPy's _frombuffer, as pickle protocol 5 (Python 3.14's default) writes an array:
    an array record of the buffer's bytes, checked by ``_ArrayRecord.array`` as one from
    _reconstruct is."""
    axes = axis_order if order == "K" else None
    if type(buf) not in (bytes, bytearray) or order not in ("C", "F", "K") or (
            order == "K" and not (type(axes) in (tuple, list)
                                  and all(type(a) is int for a in axes))):
        raise Refused(f"refusing numpy _frombuffer of a {type(buf).__name__} in order "
                      f"{show(order)} (axis order {show(axis_order)}): only bytes in order "
                      f"C, F or K with a list of axes")
    record = _ArrayRecord(tuple(axes) if axes is not None else None)
    record.state = (1, shape, dtype, order == "F", buf)   # not copied: one bytearray a
    return record                      # pickle hands over many times would be copied as often


class UnsafePickleError(ValueError):
    """A pickle asked for an import that CIFAR files never need; nothing was called."""


_SCALARS = (bytes, str, int, float, bool, type(None))


def _resolve(obj, where, memo, budget, depth=0):
    """The unpickled tree with every array record checked and made an ndarray, its bytes
    spent from ``budget`` (a _Budget).

    Only dicts (bytes or str keys), lists, tuples, bytes, str, numbers and None may hold
    them, nested at most limits.MAX_DEPTH deep; memo (id -> result) keeps shared objects
    shared and a cycle runs into the depth cap.
    """
    if type(obj) in _SCALARS:
        return obj
    if id(obj) in memo:
        return memo[id(obj)]
    if depth > limits.MAX_DEPTH:
        raise ValueError(f"{where}: containers nested deeper than {limits.MAX_DEPTH} levels "
                         "(convnet.limits.MAX_DEPTH)")
    if type(obj) is _ArrayRecord:
        out = obj.array(where)
        try:
            budget.spend(out.nbytes)
        except Refused as err:
            raise ValueError(f"{where}: {err}") from None
    elif type(obj) is dict:
        bad = [k for k in obj if type(k) not in (bytes, str)]
        if bad:
            raise ValueError(f"{where}: a dict key of type {type(bad[0]).__name__}; CIFAR "
                             "pickles have bytes or str keys")
        out = {k: _resolve(v, where, memo, budget, depth + 1) for k, v in obj.items()}
    elif type(obj) in (list, tuple):
        out = type(obj)(_resolve(v, where, memo, budget, depth + 1) for v in obj)
    else:
        what = repr(obj) if isinstance(obj, (Inert, _DTypeRecord)) else type(obj).__name__
        raise ValueError(f"{where}: a {what} where CIFAR pickles hold only arrays, dicts, "
                         "lists, bytes, str and numbers")
    memo[id(obj)] = out
    return out


class CifarUnpickler(pickle.Unpickler):
    """An Unpickler that builds only what CIFAR files hold: arrays, dicts, lists, bytes, str, int.

    Built-in containers and scalars come from opcodes and need no import. Every import
    a pickle asks for goes through ``find_class``, which admits NumPy's array
    reconstruction (``numpy.core.multiarray._reconstruct`` as the 2009 files name it,
    ``numpy._core.multiarray._reconstruct`` as NumPy 2 writes it, ``_frombuffer`` as it
    writes pickle protocol 5), ``numpy.ndarray``,
    ``numpy.dtype``, ``_codecs.encode`` restricted to latin-1 and ``bytes()`` (how Python 3
    writes bytes and b'' at protocol 2), each as an inert object of ours, and refuses
    everything else by name with a ValueError. ``load`` checks the opcodes first
    (``check_pickle``), and returns the object with each array record checked and made an
    ndarray: plain numeric dtypes only (no object, structured or string dtypes), exactly
    the bytes its shape needs. The whole file is read when the unpickler is made (at
    most max_bytes, default MAX_PICKLE_BYTES).

    >>> with open("cifar-10-batches-py/test_batch", "rb") as f:      # doctest: +SKIP
    ...     batch = CifarUnpickler(f, "test_batch").load()
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"):
            Global("numpy.core.multiarray._reconstruct", _reconstruct),
        ("numpy._core.multiarray", "_reconstruct"):
            Global("numpy._core.multiarray._reconstruct", _reconstruct),
        ("numpy._core.numeric", "_frombuffer"):
            Global("numpy._core.numeric._frombuffer", _frombuffer),
        ("numpy.core.numeric", "_frombuffer"):
            Global("numpy.core.numeric._frombuffer", _frombuffer),
        ("numpy", "ndarray"): NDARRAY,
        ("numpy", "dtype"): Global("numpy.dtype", _DTypeRecord),
        ("__builtin__", "bytes"): Global("__builtin__.bytes", _empty_bytes),
        ("builtins", "bytes"): Global("builtins.bytes", _empty_bytes),
    }

    def __init__(self, file, name, max_bytes=None):
        self.name = name
        most = MAX_PICKLE_BYTES if max_bytes is None else max_bytes
        chunks, size = [], 0
        while size <= most and (chunk := file.read(CHUNK)):
            chunks.append(chunk)
            size += len(chunk)
        if size > most:
            raise ValueError(f"{name}: more than {most:,} bytes is too large for a CIFAR "
                             "pickle (convnet.data.cifar.MAX_PICKLE_BYTES)")
        self.data = b"".join(chunks)
        super().__init__(io.BytesIO(self.data), encoding="bytes")
        encoded = _Budget(len(self.data), "encoded strings")
        self._encode = Global("_codecs.encode",
                             lambda text, encoding: _latin1_encode(text, encoding, encoded))

    def find_class(self, module, name):
        if (module, name) == ("_codecs", "encode"):     # this load's, with its budget
            return self._encode
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self.name}: refusing to load '{module:.80}.{name:.80}' from a pickle: "
                "CIFAR files hold only arrays, dicts, lists, bytes, str and int") from None

    def load(self):
        """The pickle's object, its arrays checked and made (ValueError naming the file)."""
        try:
            check_pickle(self.data)
            obj = super().load()
        except UnsafePickleError:
            raise
        except Refused as err:
            raise ValueError(f"{self.name}: not a readable CIFAR pickle: {err}") from None
        except Exception as err:    # UnpicklingError, EOFError, TypeError from a bad stream
            raise ValueError(f"{self.name}: not a readable CIFAR pickle: "
                             f"{type(err).__name__}: {str(err)[:200]}") from None
        return _resolve(obj, self.name, {}, _Budget(len(self.data), "arrays"))


def read_cifar_pickle(path, max_bytes=None):
    """Load one CIFAR Python-form file through CifarUnpickler; keys come back as str.

    max_bytes: the largest file accepted (default MAX_PICKLE_BYTES), checked first.

    >>> read_cifar_pickle("cifar-10-batches-py/test_batch")["data"].shape  # doctest: +SKIP
    (10000, 3072)
    """
    most = MAX_PICKLE_BYTES if max_bytes is None else max_bytes
    size = os.path.getsize(path)
    if size > most:
        raise ValueError(f"{path}: {size} bytes is too large for a CIFAR pickle "
                         f"(at most {most})")
    with open(path, "rb") as f:
        obj = CifarUnpickler(f, str(path), most).load()
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict in a CIFAR pickle, got {type(obj).__name__}")
    return {_text(k): v for k, v in obj.items()}


def _text(value):
    return value.decode("latin1") if isinstance(value, bytes) else value


def _describe(value):
    """A file value in a message: its type, and its dtype and shape or its length."""
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array of shape {value.shape}"
    if type(value) in (list, tuple, bytes, str):
        return f"{type(value).__name__} of length {len(value)}"
    return type(value).__name__


def _labels(batch, key, path, count, num_classes):
    """batch[key] (a list of ints or an integer array) as int64 (count,), in [0, num_classes)."""
    if key not in batch:
        raise ValueError(f"{path}: no '{key}' entry (found {show(sorted(batch))})")
    raw, y = batch[key], None
    if isinstance(raw, np.ndarray) and raw.dtype.kind in "iu":
        y = raw
    elif type(raw) is list and all(type(v) is int for v in raw):
        try:
            y = np.array(raw, dtype=np.int64)
        except OverflowError:       # a label past int64: out of range in any case
            y = None
    if y is None or y.shape != (count,):
        odd = (next((f"item {i} is {type(v).__name__}" for i, v in enumerate(raw)
                     if type(v) is not int), None) if type(raw) is list else
               None)
        raise ValueError(f"{path}: '{key}' must be {count} integers (one per image: a list "
                         f"of ints or an integer array), got {_describe(raw)}"
                         + (f": {odd}" if odd and y is None else ""))
    return _check_range(y.astype(np.int64), path, key, num_classes)


def _check_range(y, path, what, num_classes):
    bad = np.flatnonzero((y < 0) | (y >= num_classes))
    if bad.size:
        raise ValueError(f"{path}: {what} {y[bad[0]]} at record {bad[0]} is out of range "
                         f"[0, {num_classes}) ({bad.size} out of range in all)")
    return y


def read_cifar_python(path, label_keys):
    """One Python-form batch -> (x uint8 (n, 3, 32, 32), {key: y int64 (n,)}).

    label_keys: {"labels": 10} for CIFAR-10, {"fine_labels": 100, "coarse_labels": 20}.
    """
    batch = read_cifar_pickle(path)
    data = batch.get("data")
    if (not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2
            or data.shape[1] != IMAGE_BYTES):
        raise ValueError(f"{path}: 'data' must be a uint8 array (n, {IMAGE_BYTES}), got "
                         f"{_describe(data)}")
    count = data.shape[0]
    labels = {key: _labels(batch, key, path, count, k) for key, k in label_keys.items()}
    return data.reshape(count, 3, 32, 32), labels


def read_cifar_binary(path, label_bytes, num_classes):
    """One binary-form file -> (x uint8 (n, 3, 32, 32), labels int64 (n, label_bytes)).

    Records are label_bytes + 3072 bytes; the file size must be a whole, non-zero number
    of records (checked before reading). num_classes: one bound per label byte, e.g.
    (20, 100) for CIFAR-100's coarse and fine labels.
    """
    record = label_bytes + IMAGE_BYTES
    size = limits.check_count(os.path.getsize(path), "MAX_DATA_BYTES", "bytes", path)
    if size == 0 or size % record:
        raise ValueError(f"{path}: {size} bytes is not a whole number of {record}-byte "
                         f"records ({label_bytes} label byte(s) + {IMAGE_BYTES} pixels): "
                         f"{size // record} records and {size % record} bytes left over")
    raw = np.fromfile(path, dtype=np.uint8).reshape(-1, record)     # (n, record)
    labels = raw[:, :label_bytes].astype(np.int64)                  # (n, label_bytes)
    names = ("label",) if label_bytes == 1 else ("coarse label", "fine label")
    for j, (what, bound) in enumerate(zip(names, num_classes, strict=True)):
        _check_range(labels[:, j], path, what, bound)
    x = raw[:, label_bytes:].reshape(-1, 3, 32, 32)
    return np.ascontiguousarray(x), labels


def _candidates(root, subdirs):
    """Directories that may hold the files: root itself and its extracted sub-folders."""
    if root is not None:
        parents = [Path(root)]
    else:
        parents = ([Path(os.environ[DATA_ENV])] if os.environ.get(DATA_ENV) else [])
        parents.append(cache_dir())
    return [d for p in parents for d in (p, *(p / s for s in subdirs))]


def find_cifar(root, version, required=True):
    """(directory, form) of the CIFAR-10 or -100 files under root: the extracted directory
    itself or its parent. form is "binary" or "python" (binary first when both exist).

    A directory counts once it holds the test file of a form; then every other file of
    that form must be there too. Nothing found: FileNotFoundError, or None when not
    ``required``.
    """
    subdirs, files = ((CIFAR10_DIRS, CIFAR10_FILES) if version == 10
                      else (CIFAR100_DIRS, CIFAR100_FILES))
    dirs = _candidates(root, subdirs)
    for d in dirs:
        for form in ("binary", "python"):
            names = files[form]["train"] + files[form]["test"]
            if (d / files[form]["test"][0]).is_file():
                missing = [n for n in names if not (d / n).is_file()]
                if missing:
                    raise FileNotFoundError(f"{d}: CIFAR-{version} {form} files incomplete: "
                                            f"missing {', '.join(missing)}")
                return d, form
    if not required:
        return None
    raise FileNotFoundError(
        f"CIFAR-{version} not found in {', '.join(map(str, dirs))}: expected the extracted "
        f"{' or '.join(subdirs)} directory (or its parent)")


def _names_txt(path, count):
    """count class names from a UTF-8 text file, one a line (blank lines skipped)."""
    size = os.path.getsize(path)
    if size > MAX_NAMES_BYTES:
        raise ValueError(f"{path}: {size:,} bytes is too large for a file of {count} class "
                         f"names (at most {MAX_NAMES_BYTES:,})")
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: class names must be UTF-8 text: byte "
                         f"0x{raw[err.start]:02x} at offset {err.start} is not") from None
    names = [ln for ln in (ln.strip() for ln in text.splitlines()) if ln]
    if len(names) != count:
        raise ValueError(f"{path}: expected {count} class names, one a line, got {len(names)}")
    return _checked_names(names, path)


def _names_meta(path, key, count):
    """count class names from a meta pickle's list under key (bytes or str)."""
    names = read_cifar_pickle(path, MAX_NAMES_BYTES).get(key)
    if not (type(names) is list and len(names) == count
            and all(type(n) in (bytes, str) for n in names)):
        raise ValueError(f"{path}: '{key}' must be a list of {count} class names (bytes or "
                         f"str), got {_describe(names)}")
    return _checked_names([_text(n) for n in names], path)


def _checked_names(names, path):
    """The class names of a names file, each printable text of 1 to MAX_NAME characters
    and each once (a model file records them, and predict prints them), or a ValueError
    naming the file and the name."""
    seen = set()
    for i, name in enumerate(names):
        if not name.strip() or not name.isprintable() or len(name) > MAX_NAME:
            raise ValueError(f"{path}: class name {i} must be printable text of 1 to "
                             f"{MAX_NAME} characters (no control characters or line "
                             f"breaks), got {name!r:.80}")
        if name in seen:
            raise ValueError(f"{path}: the class name {name!r:.80} is given twice: each "
                             f"class needs a name of its own")
        seen.add(name)
    return names


def _check_total(directory, names, version):
    """The files of a split set, together, within limits.MAX_DATA_BYTES, before any is read."""
    total = sum(os.path.getsize(directory / name) for name in names)
    limits.check_count(total, "MAX_DATA_BYTES", f"bytes in the CIFAR-{version} files",
                       directory)


def load_cifar10(root=None):
    """CIFAR-10: 50,000 + 10,000 32x32 colour images of 10 classes.

    Args:
        root: the extracted cifar-10-batches-bin or cifar-10-batches-py directory, or the
            directory that holds it. None: $CONVNET_DATA, then ~/.cache/convnet.

    Returns {"train": (x, y), "test": (x, y), "classes": [...]}: x uint8 (N, 3, 32, 32),
    y int64 in 0..9; class names from batches.meta(.txt) when present.

    >>> data = load_cifar10("~/data")                                  # doctest: +SKIP
    >>> data["train"][0].shape, data["classes"][:2]                    # doctest: +SKIP
    ((50000, 3, 32, 32), ['airplane', 'automobile'])
    """
    directory, form = find_cifar(_expand(root), 10)
    _check_total(directory, sum(CIFAR10_FILES[form].values(), []), 10)
    out = {}
    for split, names in CIFAR10_FILES[form].items():
        parts = []
        for name in names:
            if form == "binary":
                x, labels = read_cifar_binary(directory / name, 1, (10,))
                parts.append((x, labels[:, 0]))
            else:
                x, labels = read_cifar_python(directory / name, {"labels": 10})
                parts.append((x, labels["labels"]))
        out[split] = (np.concatenate([p[0] for p in parts]),
                      np.concatenate([p[1] for p in parts]))
    classes = list(CIFAR10_CLASSES)
    if form == "binary" and (directory / "batches.meta.txt").is_file():
        classes = _names_txt(directory / "batches.meta.txt", 10)
    elif form == "python" and (directory / "batches.meta").is_file():
        classes = _names_meta(directory / "batches.meta", "label_names", 10)
    return {**out, "classes": classes}


def load_cifar100(root=None, label="fine"):
    """CIFAR-100: 50,000 + 10,000 32x32 colour images, 100 fine classes in 20 coarse ones.

    Args:
        root: the extracted cifar-100-binary or cifar-100-python directory, or its parent.
        label: "fine" (100 classes) or "coarse" (20 superclasses).

    Returns {"train": (x, y), "test": (x, y), "classes": [...]} as load_cifar10; class
    names from meta / {label}_label_names.txt ('0'.. when that file is absent).

    >>> load_cifar100("~/data", label="coarse")["classes"][0]          # doctest: +SKIP
    'aquatic_mammals'
    """
    if label not in CIFAR100_LABELS:
        raise ValueError(f"load_cifar100: label must be 'fine' or 'coarse', got {label!r}")
    count = CIFAR100_LABELS[label]
    directory, form = find_cifar(_expand(root), 100)
    _check_total(directory, sum(CIFAR100_FILES[form].values(), []), 100)
    out = {}
    for split, (name,) in CIFAR100_FILES[form].items():
        if form == "binary":
            x, labels = read_cifar_binary(directory / name, 2, (20, 100))
            y = labels[:, 0 if label == "coarse" else 1]
        else:
            x, labels = read_cifar_python(directory / name,
                                          {"fine_labels": 100, "coarse_labels": 20})
            y = labels[f"{label}_labels"]
        out[split] = (x, y)
    classes = [str(i) for i in range(count)]
    if form == "binary" and (directory / f"{label}_label_names.txt").is_file():
        classes = _names_txt(directory / f"{label}_label_names.txt", count)
    elif form == "python" and (directory / "meta").is_file():
        classes = _names_meta(directory / "meta", f"{label}_label_names", count)
    return {**out, "classes": classes}


def _expand(root):
    return None if root is None else Path(root).expanduser()
