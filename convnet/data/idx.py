"""IDX files (MNIST, Fashion-MNIST), plain or gzipped, read with every size checked first.

The IDX format (LeCun's MNIST page): a 4-byte magic number ``0x00 0x00 TYPE NDIM``, then
NDIM big-endian uint32 sizes, then the data, row-major. MNIST-style sets use two kinds:

    0x00000803  images: uint8 (TYPE 0x08), 3 dims (N, H, W)
    0x00000801  labels: uint8 (TYPE 0x08), 1 dim (N,)

A file is gzipped when it starts with the gzip magic bytes 1f 8b, whatever its name.
The header is read and checked before the data: a file must hold exactly
header + N*H*W bytes (after decompression), so a truncated or padded file is an error
naming the file, and no buffer is sized from a header the data does not back up. The
bytes a header promises may be at most ``limits.MAX_DATA_BYTES`` (2 GiB), and for a
gzipped file at most ``limits.MAX_COMPRESSION`` (100) times the file's size, checked
before anything is decompressed: real IDX files compress 2 to 5 times, and deflate can
reach 1000 to 1, so a 3.5 MB file could otherwise inflate to 3.5 GB before it fails.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from convnet import limits
from convnet.data.files import CHUNK, download, find_file, search_dirs

IDX_KINDS = {0x00000803: "images", 0x00000801: "labels"}
IDX_NDIM = {"images": 3, "labels": 1}
IDX_TYPES = {0x08: "unsigned byte", 0x09: "signed byte", 0x0B: "short", 0x0C: "int",
             0x0D: "float", 0x0E: "double"}
GZIP_MAGIC = b"\x1f\x8b"
MAX_TRAILING = 64 * CHUNK  # extra decompressed bytes counted before saying "more than"

IDX_SPLITS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")
MNIST_CLASSES = tuple(str(d) for d in range(10))
# zalandoresearch/fashion-mnist: the repository's data/fashion (same files as the S3 mirror
# http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/) and the README's MD5s.
FASHION_MNIST_URL = ("https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/"
                     "master/data/fashion/")
FASHION_MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}

# The test labels' bytes, uncompressed (10,008): what tells Fashion-MNIST's files from
# MNIST's in a folder of any name, gzipped or not.
FASHION_MNIST_TEST_LABELS_SHA256 = (
    "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34")


def holds_fashion_mnist(directory):
    """Whether the IDX files in ``directory`` are Fashion-MNIST's: its test labels file
    (plain or .gz) holds exactly the published bytes."""
    path = find_file(directory, IDX_SPLITS["test"][1])
    if path is None:
        return False
    f, _, _ = _open(path)
    with f:
        data = _read(f, 10_009, path)
    return len(data) == 10_008 and hashlib.sha256(data).hexdigest() == (
        FASHION_MNIST_TEST_LABELS_SHA256)


class IdxHeader(NamedTuple):
    kind: str          # "images" or "labels"
    dims: tuple        # (N, H, W) or (N,)
    offset: int        # header size in bytes: 4 + 4 * ndim
    gzipped: bool

    @property
    def count(self):
        """Data bytes the header promises (one byte per uint8 value)."""
        return math.prod(self.dims)


def _open(path):
    """Open plain or gzip by the first two bytes; returns (binary stream, gzipped, file size)."""
    try:
        with open(path, "rb") as f:
            gzipped = f.read(2) == GZIP_MAGIC
            size = os.fstat(f.fileno()).st_size
        return (gzip.open(path, "rb") if gzipped else open(path, "rb")), gzipped, size
    except OSError as err:      # FileNotFoundError, IsADirectoryError, PermissionError
        raise type(err)(f"{path}: cannot open the IDX file: {err.strerror or err}") from None


def _read(f, n, path):
    """f.read(n) with a broken gzip stream reported as a ValueError naming the file."""
    try:
        return f.read(n)
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(f"{path}: corrupt gzip data: {err}") from None


def _parse_header(f, path, gzipped, size):
    """The checked header of an open IDX file of ``size`` bytes on disk (see the module
    docstring); only the header has been read, or decompressed, when it returns."""
    what = "decompressed file" if gzipped else "file"
    magic_bytes = _read(f, 4, path)
    if len(magic_bytes) < 4:
        raise ValueError(f"{path}: too short for an IDX file: the {what} has "
                         f"{len(magic_bytes)} bytes, the magic number alone needs 4")
    magic = int.from_bytes(magic_bytes, "big")
    if magic not in IDX_KINDS:
        type_byte, ndim = magic_bytes[2], magic_bytes[3]
        hint = ""
        if magic_bytes[:2] == b"\0\0" and type_byte != 0x08 and type_byte in IDX_TYPES:
            hint = (f" (data type 0x{type_byte:02x} = {IDX_TYPES[type_byte]}: only 0x08 = "
                    f"unsigned byte is supported)")
        elif magic_bytes[:2] == b"\0\0" and type_byte == 0x08:
            hint = f" (uint8 data with {ndim} dimensions: expected 3 for images, 1 for labels)"
        raise ValueError(f"{path}: bad IDX magic number 0x{magic:08x}{hint}: expected "
                         "0x00000803 (uint8 images, 3 dims) or 0x00000801 (uint8 labels, 1 dim)")
    kind = IDX_KINDS[magic]
    ndim = IDX_NDIM[kind]
    raw = _read(f, 4 * ndim, path)
    if len(raw) < 4 * ndim:
        raise ValueError(f"{path}: truncated IDX header: {kind} need {ndim} sizes "
                         f"({4 + 4 * ndim} header bytes), the {what} has {4 + len(raw)}")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4"))
    if 0 in dims:
        raise ValueError(f"{path}: IDX {kind} header has a zero size: {dims}")
    header = IdxHeader(kind, dims, 4 + 4 * ndim, gzipped)
    sizes = " x ".join(map(str, dims))
    limits.check_count(header.count, "MAX_DATA_BYTES",
                       f"the IDX header's {kind} of {sizes} bytes =", path)
    promised = header.offset + header.count
    if gzipped and promised > limits.MAX_COMPRESSION * size:
        raise ValueError(f"{path}: the IDX header promises {kind} of {sizes}, {promised:,} "
                         f"bytes decompressed, over convnet.limits.MAX_COMPRESSION = "
                         f"{limits.MAX_COMPRESSION} times the gzip file's {size:,} bytes; "
                         "refusing to inflate it")
    return header


def read_idx_header(path):
    """Magic number and sizes of an IDX file, checked; reads only the header.

    >>> read_idx_header("t10k-images-idx3-ubyte.gz")          # doctest: +SKIP
    IdxHeader(kind='images', dims=(10000, 28, 28), offset=16, gzipped=True)
    """
    stream, gzipped, size = _open(path)
    with stream as f:
        return _parse_header(f, path, gzipped, size)


def read_idx(path, kind=None):
    """Read a uint8 IDX file (plain or gzipped) into an array of the header's shape.

    Args:
        path: file name; gzip is detected by its magic bytes 1f 8b, not by the name.
        kind: "images" or "labels" to insist on that magic number (None accepts both).

    Returns a writable uint8 array: (N, H, W) for images, (N,) for labels. Raises
    ValueError naming the file for a bad magic number, an unsupported data type, a size
    that disagrees with the header (size must be 4 + 4*ndim + N*H*W bytes), a header that
    promises more than limits.MAX_DATA_BYTES, or more than limits.MAX_COMPRESSION times a
    gzipped file's size, or corrupt gzip data; OSError naming the file when it cannot be
    opened.

    >>> read_idx("train-labels-idx1-ubyte.gz").shape            # doctest: +SKIP
    (60000,)
    """
    if kind not in (None, *IDX_KINDS.values()):
        raise ValueError(f"read_idx: kind must be None or one of "
                         f"{', '.join(map(repr, IDX_KINDS.values()))}, got {kind!r:.80}")
    path = Path(path)
    stream, gzipped, size = _open(path)
    with stream as f:
        header = _parse_header(f, path, gzipped, size)
        if kind is not None and header.kind != kind:
            raise ValueError(f"{path}: expected an IDX {kind} file (magic 0x{_magic(kind):08x}),"
                             f" got {header.kind} (magic 0x{_magic(header.kind):08x})")
        expected = header.offset + header.count
        if gzipped:
            data = _read_gzip_data(f, path, header)
        else:
            if size != expected:
                raise ValueError(_size_message(path, header, expected, size, "file"))
            data = np.fromfile(f, dtype=np.uint8, count=header.count)
    return data.reshape(header.dims)


def _magic(kind):
    return next(m for m, k in IDX_KINDS.items() if k == kind)


def _size_message(path, header, expected, actual, what, more=False):
    problem = "truncated" if actual < expected else "too long"
    have = f"more than {actual}" if more else str(actual)
    sizes = " x ".join(str(d) for d in header.dims)
    return (f"{path}: {problem}: the IDX header promises {header.kind} of {sizes} = "
            f"{header.count} bytes after a {header.offset}-byte header, {expected} bytes in "
            f"all, but the {what} has {have} bytes")


def _read_gzip_data(f, path, header):
    """Stream exactly header.count decompressed bytes, then check that the stream ends.

    The buffer grows with the data actually decompressed, so a header that promises
    more than the file holds fails at the real size, not after a huge allocation.
    """
    expected = header.offset + header.count
    buf = bytearray()
    while len(buf) < header.count:
        chunk = _read(f, min(CHUNK, header.count - len(buf)), path)
        if not chunk:
            raise ValueError(_size_message(path, header, expected, header.offset + len(buf),
                                           "decompressed file"))
        buf += chunk
    extra = 0
    while extra <= MAX_TRAILING:
        chunk = _read(f, CHUNK, path)
        if not chunk:
            break
        extra += len(chunk)
    if extra:
        raise ValueError(_size_message(path, header, expected, expected + extra,
                                       "decompressed file", more=extra > MAX_TRAILING))
    return np.frombuffer(buf, dtype=np.uint8)


def load_idx_dataset(images_path, labels_path, num_classes=10):
    """An images file and its labels file -> (x uint8 (N, 1, H, W), y int64 (N,)).

    Both headers are checked (kinds, matching N) before any data is read; labels must
    lie in [0, num_classes).

    >>> x, y = load_idx_dataset("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
    ...                                                           # doctest: +SKIP
    >>> x.shape, y.shape                                          # doctest: +SKIP
    ((10000, 1, 28, 28), (10000,))
    """
    himg, hlab = read_idx_header(images_path), read_idx_header(labels_path)
    for path, header, kind in ((images_path, himg, "images"), (labels_path, hlab, "labels")):
        if header.kind != kind:
            raise ValueError(f"{path}: expected an IDX {kind} file (magic "
                             f"0x{_magic(kind):08x}), got {header.kind} "
                             f"(magic 0x{_magic(header.kind):08x})")
    if himg.dims[0] != hlab.dims[0]:
        raise ValueError(f"{labels_path}: has {hlab.dims[0]} labels but {images_path} has "
                         f"{himg.dims[0]} images: the counts must match")
    y = read_idx(labels_path, kind="labels").astype(np.int64)
    bad = np.flatnonzero(y >= num_classes)
    if bad.size:
        raise ValueError(f"{labels_path}: label {y[bad[0]]} at index {bad[0]} is out of range "
                         f"[0, {num_classes}) ({bad.size} labels out of range in all)")
    x = read_idx(images_path, kind="images")
    return x[:, None], y                                # (N, 1, H, W), (N,)


def find_idx_dir(dirs):
    """The first directory holding all four standard IDX files (plain or .gz), else None."""
    for d in dirs:
        if all(find_file(d, name) for pair in IDX_SPLITS.values() for name in pair):
            return d
    return None


def load_idx_splits(directory, num_classes=10):
    """{"train": (x, y), "test": (x, y)} from the four standard IDX names in a directory;
    the two image files must hold images of one size."""
    splits, files = {}, {}
    for split, (images, labels) in IDX_SPLITS.items():
        paths = [find_file(directory, name) for name in (images, labels)]
        missing = [n for n, p in zip((images, labels), paths, strict=True) if p is None]
        if missing:
            raise FileNotFoundError(f"{directory}: missing {', '.join(missing)} (or .gz)")
        splits[split] = load_idx_dataset(*paths, num_classes=num_classes)
        files[split] = paths[0]
    train, test = (splits[k][0].shape[2:] for k in ("train", "test"))
    if train != test:
        raise ValueError(f"{files['test']}: images of {test[0]}x{test[1]} pixels, but "
                         f"{files['train']} holds {train[0]}x{train[1]}: the splits of one "
                         f"data set must have one size")
    return splits


def load_fashion_mnist(root=None, download=False, base_url=FASHION_MNIST_URL,
                       checksums=None):
    """Fashion-MNIST (Zalando, 70,000 28x28 grayscale images of 10 clothing classes).

    Args:
        root: a directory with the four IDX files (plain or .gz). When given, only it is
            searched (and downloaded into); otherwise $CONVNET_DATA/fashion-mnist,
            /usr/share/datasets/fashion-mnist (``apt-get install dataset-fashion-mnist``)
            and ~/.cache/convnet/fashion-mnist, in that order.
        download: fetch the missing .gz files from ``base_url`` when no directory has
            all four, checking ``checksums`` (file name -> MD5; default: the published
            MD5s in FASHION_MNIST_MD5).

    Returns {"train": (x, y), "test": (x, y), "classes": [...]}: x uint8
    (60000 or 10000, 1, 28, 28), y int64 in 0..9.

    >>> data = load_fashion_mnist()                                  # doctest: +SKIP
    >>> data["train"][0].shape, data["classes"][9]                   # doctest: +SKIP
    ((60000, 1, 28, 28), 'Ankle boot')
    """
    dirs = search_dirs("fashion-mnist", root)
    found = find_idx_dir(dirs)
    if found is None and download:     # into root itself, when given
        found = _download_idx(dirs[0] if root is not None else dirs[-1], base_url,
                              checksums or FASHION_MNIST_MD5)
    if found is None:
        raise FileNotFoundError(
            "Fashion-MNIST not found: no directory among " + ", ".join(map(str, dirs)) +
            " holds train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte"
            " and t10k-labels-idx1-ubyte (or .gz). Install the Debian package "
            "dataset-fashion-mnist, or download it (convnet train --download; "
            "download=True)")
    return {**load_idx_splits(found), "classes": list(FASHION_MNIST_CLASSES)}


def _download_idx(directory, base_url, checksums):
    base_url = base_url if base_url.endswith("/") else base_url + "/"
    for pair in IDX_SPLITS.values():
        for name in pair:
            if find_file(directory, name) is None:
                download(base_url + name + ".gz", Path(directory) / (name + ".gz"),
                         checksums[name + ".gz"])
    return directory


def load_mnist(root=None):
    """MNIST from the four standard IDX files: same search as Fashion-MNIST under "mnist".

    No download (only Fashion-MNIST has one here): put the files in $CONVNET_DATA/mnist
    or pass ``root``. Returns the same dict as load_fashion_mnist,
    with classes '0'..'9'.
    """
    dirs = search_dirs("mnist", root)
    found = find_idx_dir(dirs)
    if found is None:
        raise FileNotFoundError("MNIST not found: no directory among " +
                                ", ".join(map(str, dirs)) + " holds the four IDX files "
                                "train-images-idx3-ubyte ... t10k-labels-idx1-ubyte (or .gz)")
    return {**load_idx_splits(found), "classes": list(MNIST_CLASSES)}
