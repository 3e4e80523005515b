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
``posix.system``, is refused before it is called.

When both forms are present the binary one is used (no pickle at all).
"""

from __future__ import annotations

import codecs
import os
import pickle
from pathlib import Path

import numpy as np

from convnet.data.files import DATA_ENV, cache_dir

try:  # NumPy >= 2 writes numpy._core; the CIFAR files (2009) name numpy.core
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - NumPy 1.x
    from numpy.core.multiarray import _reconstruct

IMAGE_BYTES = 3 * 32 * 32
MAX_PICKLE_BYTES = 512 << 20  # the largest real file (cifar-100 train) is ~160 MB
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


def _latin1_encode(text, encoding="latin1"):
    """_codecs.encode as Python 3 protocol-2 pickles use it for bytes, latin-1 only."""
    if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"refusing _codecs.encode({type(text).__name__}, "
                                     f"{encoding!r}): only str to latin-1 bytes is allowed")
    return text.encode("latin1")


class _NdarrayName:
    """What 'numpy.ndarray' means inside a CIFAR pickle: the argument of _reconstruct and
    nothing else (not callable, so a pickle cannot call np.ndarray(huge_shape))."""

    def __repr__(self):
        return "numpy.ndarray"


NDARRAY = _NdarrayName()


def _array_reconstruct(subtype, shape, dtype):
    """NumPy's _reconstruct for plain ndarrays only, always with the (0,) shape that array
    pickles use (BUILD then sets the real shape from data that is really in the file)."""
    if subtype is not NDARRAY:
        raise pickle.UnpicklingError(f"refusing to reconstruct {subtype!r}: only numpy.ndarray")
    return _reconstruct(np.ndarray, (0,), dtype)


class UnsafePickleError(ValueError):
    """A pickle asked for an import that CIFAR files never need; nothing was called."""


class CifarUnpickler(pickle.Unpickler):
    """An Unpickler that builds only what CIFAR files hold: arrays, dicts, lists, bytes, str, int.

    Built-in containers and scalars come from opcodes and need no import. Every import
    a pickle asks for goes through ``find_class``, which admits NumPy's array
    reconstruction (``numpy.core.multiarray._reconstruct`` as the 2009 files name it,
    ``numpy._core.multiarray._reconstruct`` as NumPy 2 writes it, for plain ndarrays
    only; ``numpy.ndarray``; ``numpy.dtype``) and ``_codecs.encode`` restricted to
    latin-1 (how Python 3 writes bytes at protocol 2), and refuses everything else by
    name with a ValueError.

    >>> with open("cifar-10-batches-py/test_batch", "rb") as f:      # doctest: +SKIP
    ...     batch = CifarUnpickler(f, "test_batch").load()
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _array_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _array_reconstruct,
        ("numpy", "ndarray"): NDARRAY,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }

    def __init__(self, file, name):
        super().__init__(file, encoding="bytes")
        self.name = name

    def find_class(self, module, name):
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self.name}: refusing to load '{module}.{name}' from a pickle: "
                "CIFAR files hold only arrays, dicts, lists, bytes, str and int") from None


def read_cifar_pickle(path):
    """Load one CIFAR Python-form file through CifarUnpickler; keys come back as str.

    >>> read_cifar_pickle("cifar-10-batches-py/test_batch")["data"].shape  # doctest: +SKIP
    (10000, 3072)
    """
    size = os.path.getsize(path)
    if size > MAX_PICKLE_BYTES:
        raise ValueError(f"{path}: {size} bytes is too large for a CIFAR pickle "
                         f"(at most {MAX_PICKLE_BYTES})")
    with open(path, "rb") as f:
        try:
            obj = CifarUnpickler(f, str(path)).load()
        except UnsafePickleError:
            raise
        except Exception as err:  # UnpicklingError, EOFError, TypeError from a bad stream
            raise ValueError(f"{path}: not a readable CIFAR pickle: "
                             f"{type(err).__name__}: {err}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict in a CIFAR pickle, got {type(obj).__name__}")
    return {_text(k): v for k, v in obj.items()}


def _text(value):
    return value.decode("latin1") if isinstance(value, bytes) else value


def _labels(batch, key, path, count, num_classes):
    """batch[key] as int64 (count,), checked against [0, num_classes)."""
    if key not in batch:
        raise ValueError(f"{path}: no '{key}' entry (found {sorted(map(str, batch))})")
    raw = batch[key]
    try:
        y = np.asarray(raw)
    except (TypeError, ValueError, OverflowError):
        y = np.empty(0)
    if y.shape != (count,) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{path}: '{key}' must be {count} integers (one per image), got "
                         f"{type(raw).__name__} of shape {y.shape} and dtype {y.dtype}")
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
        got = (f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray)
               else type(data).__name__)
        raise ValueError(f"{path}: 'data' must be a uint8 array (n, {IMAGE_BYTES}), got {got}")
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
    size = os.path.getsize(path)
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
    lines = [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines()]
    names = [ln for ln in lines if ln]
    if len(names) != count:
        raise ValueError(f"{path}: expected {count} class names, one a line, got {len(names)}")
    return names


def _names_meta(path, key, count):
    names = read_cifar_pickle(path).get(key)
    if not isinstance(names, list) or len(names) != count:
        raise ValueError(f"{path}: '{key}' must be a list of {count} class names, got "
                         f"{type(names).__name__} of length {len(names or [])}")
    return [_text(n) for n in names]


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
