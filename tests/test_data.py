"""Data package: IDX, Fashion-MNIST (real Debian files and a local download), CIFAR in both
forms with a restricted unpickler, image folders, the embedded digits, transforms, batching.

Every reader is checked on small files generated here, and every malformed file (bad magic
number, truncated or padded data, counts that disagree, labels out of range, wrong record
size, a pickle that would run code) must raise a ValueError that names the file.
"""

import functools
import gzip
import hashlib
import http.server
import io
import os
import pickle
import re
import struct
import sys
import threading
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convnet.data import DATASETS, DataSplits, load_dataset, untrained_classes
from convnet.data.cifar import (
    CIFAR10_CLASSES,
    CifarUnpickler,
    load_cifar10,
    load_cifar100,
    read_cifar_pickle,
)
from convnet.data.digits import (
    DIGITS_CLASSES,
    digits_test_mask,
    load_digits,
    read_digits,
)
from convnet.data.files import download, search_dirs
from convnet.data.folder import decode_image, load_image_folder, read_headers
from convnet.data.idx import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_MD5,
    load_fashion_mnist,
    load_idx_dataset,
    load_mnist,
    read_idx,
    read_idx_header,
)
from convnet.data.loader import batches, train_val_split
from convnet.data.transforms import Normalize, random_crop, random_flip, resize, to_float
from tests.utils import peak_bytes, traced

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
IDX_NAMES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def raises_naming(path, match):
    """pytest.raises(ValueError) whose message names ``path`` and matches ``match``."""
    return pytest.raises(ValueError, match=re.escape(str(path)) + ".*" + match)


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory, monkeypatch):
    """No test sees the real ~/.cache/convnet or a $CONVNET_DATA from the environment."""
    monkeypatch.setenv("HOME", str(tmp_path_factory.mktemp("home")))
    monkeypatch.delenv("CONVNET_DATA", raising=False)


# -- IDX -----------------------------------------------------------------------------------
def idx_bytes(arr, magic=None, extra=b"", cut=0):
    """IDX encoding of a uint8 array: magic, big-endian sizes, data (+ extra, - cut bytes)."""
    magic = magic if magic is not None else 0x800 | arr.ndim
    head = struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data = head + arr.astype(np.uint8).tobytes() + extra
    return data[: len(data) - cut]


def write_idx(path, arr, gz=False, **kw):
    raw = idx_bytes(arr, **kw)
    Path(path).write_bytes(gzip.compress(raw, mtime=0) if gz else raw)
    return Path(path)


def make_idx_dir(directory, rng, n=(7, 3), hw=(5, 4), gz=False, num_classes=10):
    """The four standard IDX files with random images and labels; returns the arrays."""
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for (split, (img_name, lab_name)), count in zip(IDX_NAMES.items(), n, strict=True):
        x = rng.integers(0, 256, size=(count, *hw), dtype=np.uint8)
        y = rng.integers(0, num_classes, size=count, dtype=np.uint8)
        suffix = ".gz" if gz else ""
        write_idx(directory / (img_name + suffix), x, gz=gz)
        write_idx(directory / (lab_name + suffix), y, gz=gz)
        out[split] = (x, y)
    return out


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trip(tmp_path, seed, gz):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=tuple(rng.integers(1, 9, size=3)), dtype=np.uint8)
    labels = rng.integers(0, 256, size=int(rng.integers(1, 50)), dtype=np.uint8)
    for name, arr in (("img", images), ("lab", labels)):
        path = write_idx(tmp_path / name, arr, gz=gz)
        out = read_idx(path)
        assert out.dtype == np.uint8 and out.shape == arr.shape
        np.testing.assert_array_equal(out, arr)
        assert out.flags.writeable
        header = read_idx_header(path)
        assert header.dims == arr.shape and header.gzipped == gz
        assert header.kind == ("images" if arr.ndim == 3 else "labels")


def test_gzip_detected_by_magic_bytes_not_by_name(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    plain_named_gz = write_idx(tmp_path / "a-idx3-ubyte.gz", arr, gz=False)
    gz_named_plain = write_idx(tmp_path / "b-idx3-ubyte", arr, gz=True)
    assert gz_named_plain.read_bytes()[:2] == b"\x1f\x8b"
    np.testing.assert_array_equal(read_idx(plain_named_gz), arr)
    np.testing.assert_array_equal(read_idx(gz_named_plain), arr)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("magic, match", [
    (0x00000804, r"bad IDX magic number 0x00000804 \(uint8 data with 4 dimensions"),
    (0x00000D03, r"0x00000d03 \(data type 0x0d = float: only 0x08"),
    (0x08030000, r"bad IDX magic number 0x08030000: expected 0x00000803"),
    (0x00000802, r"uint8 data with 2 dimensions: expected 3 for images, 1 for labels"),
])
def test_idx_bad_magic(tmp_path, gz, magic, match):
    path = write_idx(tmp_path / "bad", np.zeros((2, 2, 2), np.uint8), gz=gz, magic=magic)
    with raises_naming(path, match):
        read_idx(path)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_truncated_and_too_long(tmp_path, gz):
    arr = np.ones((3, 4, 5), np.uint8)          # header 16 bytes + 60 data bytes = 76
    what = "decompressed file" if gz else "file"
    short = write_idx(tmp_path / "short", arr, gz=gz, cut=7)
    with raises_naming(short, f"truncated: .*3 x 4 x 5 = 60 bytes .* 76 bytes in all, "
                              f"but the {what} has 69 bytes"):
        read_idx(short)
    long = write_idx(tmp_path / "long", arr, gz=gz, extra=b"xyz")
    with raises_naming(long, f"too long: .*76 bytes in all, but the {what} has 79 bytes"):
        read_idx(long)
    labels = write_idx(tmp_path / "labels", np.ones(9, np.uint8), gz=gz, cut=1)
    with raises_naming(labels, "truncated: .*labels of 9 = 9 bytes"):
        read_idx(labels)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("raw, match", [
    (b"\x00\x00", "too short for an IDX file"),
    (b"\x00\x00\x08\x03\x00\x00\x00\x05\x00\x00", r"truncated IDX header: images need 3"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x00", r"zero size: \(0,\)"),
])
def test_idx_bad_header(tmp_path, gz, raw, match):
    path = tmp_path / "h"
    path.write_bytes(gzip.compress(raw) if gz else raw)
    with raises_naming(path, match):
        read_idx(path)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dims, match", [
    ((2**32 - 1, 2**16, 2**16), r"the IDX header's images of 4294967295 x 65536 x 65536 bytes "
                                r"= 18,446,744,069,414,584,320 is over the cap of "
                                r"2,147,483,648 \(convnet.limits.MAX_DATA_BYTES\)"),
    ((2**20, 28, 28), None),    # 822 MB: under the cap, but not in a 100-byte file
])
def test_idx_huge_header_fails_before_allocating(tmp_path, gz, dims, match):
    """A 100-byte file whose header promises gigabytes fails at once, small."""
    raw = struct.pack(">IIII", 0x803, *dims) + bytes(100)
    path = tmp_path / "huge"
    path.write_bytes(gzip.compress(raw) if gz else raw)
    if match is None:
        match = "over convnet.limits.MAX_COMPRESSION = 100 times" if gz else "truncated"
    with raises_naming(path, match):
        read_idx(path)
    peak = peak_bytes(lambda: pytest.raises(ValueError, read_idx, path))
    assert peak < 8 << 20, f"peak {peak} bytes"


def test_idx_gzip_bomb_is_refused_before_inflating(tmp_path, monkeypatch):
    """A header that honestly promises what a small gzip file inflates to (zeros compress
    about 1000:1) is refused by the compression ratio, before any data is decompressed;
    a raised cap lets the same file load."""
    raw = struct.pack(">IIII", 0x803, 3000, 100, 100) + bytes(3000 * 100 * 100)   # 30 MB
    path = tmp_path / "bomb-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(raw, compresslevel=9))
    assert path.stat().st_size < 100_000
    peak = peak_bytes(lambda: pytest.raises(ValueError, read_idx, path))
    with raises_naming(path, r"images of 3000 x 100 x 100, 30,000,016 bytes decompressed, "
                             r"over convnet.limits.MAX_COMPRESSION = 100 times the gzip "
                             r"file's \d+(,\d+)? bytes; refusing to inflate it"):
        read_idx(path)
    assert peak < 8 << 20, f"peak {peak} bytes"
    monkeypatch.setattr("convnet.limits.MAX_COMPRESSION", 2000)    # read when read_idx runs
    assert read_idx(path).shape == (3000, 100, 100)
    monkeypatch.setattr("convnet.limits.MAX_DATA_BYTES", 29_999_999)
    with raises_naming(path, "over the cap of 29,999,999"):
        read_idx_header(path)


def test_idx_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(f"{tmp_path / 'none'}: cannot open")):
        read_idx(tmp_path / "none")
    with pytest.raises(IsADirectoryError, match=re.escape(f"{tmp_path}: cannot open")):
        read_idx_header(tmp_path)


def test_idx_corrupt_gzip(tmp_path):
    good = gzip.compress(idx_bytes(np.arange(200, dtype=np.uint8)), mtime=0)
    path = tmp_path / "corrupt.gz"
    path.write_bytes(good[:12] + bytes(b ^ 0x55 for b in good[12:]))
    with raises_naming(path, "corrupt gzip data"):
        read_idx(path)


def test_read_idx_kind(tmp_path):
    path = write_idx(tmp_path / "labels", np.arange(4, dtype=np.uint8))
    assert read_idx(path, kind="labels").shape == (4,)
    with raises_naming(path, r"expected an IDX images file \(magic 0x00000803\), got labels"):
        read_idx(path, kind="images")


@pytest.mark.parametrize("gz", [False, True])
def test_load_idx_dataset(tmp_path, gz):
    rng = np.random.default_rng(1)
    data = make_idx_dir(tmp_path, rng, gz=gz)
    sfx = ".gz" if gz else ""
    x, y = load_idx_dataset(tmp_path / (IDX_NAMES["train"][0] + sfx),
                            tmp_path / (IDX_NAMES["train"][1] + sfx))
    assert x.shape == (7, 1, 5, 4) and x.dtype == np.uint8 and y.dtype == np.int64
    np.testing.assert_array_equal(x[:, 0], data["train"][0])
    np.testing.assert_array_equal(y, data["train"][1])


def test_idx_splits_of_two_sizes_are_refused(tmp_path):
    """Test images of 5x3 beside training images of 5x4 had trained and reported a test
    accuracy without a word (the default net pools adaptively)."""
    make_idx_dir(tmp_path, np.random.default_rng(2))
    write_idx(tmp_path / IDX_NAMES["test"][0], np.zeros((3, 5, 3), np.uint8))
    with raises_naming(tmp_path / IDX_NAMES["test"][0], "images of 5x3 pixels, but .*"
                       "holds 5x4: the splits of one data set must have one size"):
        load_dataset(str(tmp_path))


def test_load_idx_dataset_errors(tmp_path):
    images = write_idx(tmp_path / "images", np.zeros((4, 3, 3), np.uint8))
    labels3 = write_idx(tmp_path / "labels3", np.zeros(3, np.uint8))
    with raises_naming(labels3, f"has 3 labels but {re.escape(str(images))} has 4 images"):
        load_idx_dataset(images, labels3)
    bad = write_idx(tmp_path / "bad_labels", np.array([1, 9, 10, 12], np.uint8))
    with raises_naming(bad, r"label 10 at index 2 is out of range \[0, 10\) \(2 labels"):
        load_idx_dataset(images, bad)
    with raises_naming(images, "expected an IDX labels file"):
        load_idx_dataset(images, images)
    good = write_idx(tmp_path / "labels4", np.array([0, 1, 2, 3], np.uint8))
    with raises_naming(good, r"label 3 at index 3 is out of range \[0, 3\)"):
        load_idx_dataset(images, good, num_classes=3)


# -- Fashion-MNIST -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fashion():
    """The real files from the Debian package dataset-fashion-mnist (CI installs it)."""
    assert FASHION_DIR.is_dir(), "apt-get install dataset-fashion-mnist"
    return load_fashion_mnist(root=FASHION_DIR)


def test_fashion_mnist_real_files(fashion):
    (xtr, ytr), (xte, yte) = fashion["train"], fashion["test"]
    assert xtr.shape == (60000, 1, 28, 28) and xte.shape == (10000, 1, 28, 28)
    assert xtr.dtype == xte.dtype == np.uint8 and ytr.dtype == yte.dtype == np.int64
    # Fashion-MNIST is balanced: 6,000 training and 1,000 test images of each class.
    np.testing.assert_array_equal(np.bincount(ytr, minlength=10), np.full(10, 6000))
    np.testing.assert_array_equal(np.bincount(yte, minlength=10), np.full(10, 1000))
    assert xtr.min() == 0 and xtr.max() == 255
    assert fashion["classes"] == list(FASHION_MNIST_CLASSES) and len(fashion["classes"]) == 10
    for name in ("train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        header = read_idx_header(FASHION_DIR / name)
        assert header.gzipped and header.dims[0] in (60000, 10000)


def test_fashion_mnists_files_in_a_folder_of_any_name_are_fashion_mnist(tmp_path, fashion):
    """The published files, gzipped or not, in a folder not named for them: they had been
    read as MNIST's (classes "0".."9", MNIST's net and recipe)."""
    import gzip
    import shutil

    from convnet.data.idx import holds_fashion_mnist
    for name in FASHION_DIR.iterdir():
        shutil.copy(name, tmp_path / name.name)
        with gzip.open(name) as f:
            (tmp_path / "plain").mkdir(exist_ok=True)
            (tmp_path / "plain" / name.name.removesuffix(".gz")).write_bytes(f.read())
    for folder in (tmp_path, tmp_path / "plain"):
        splits = load_dataset(folder)
        assert splits.kind == "fashion-mnist" and splits.classes == list(FASHION_MNIST_CLASSES)
        assert len(splits.test[1]) == 10_000
    mnist_like = tmp_path / "other"
    make_idx_dir(mnist_like, np.random.default_rng(3), n=(20, 10), hw=(4, 4))
    assert not holds_fashion_mnist(mnist_like)
    assert load_dataset(mnist_like).kind == "mnist"


def test_idx_files_take_the_class_names_a_model_records(tmp_path, fashion):
    """A model trained on Fashion-MNIST's files in a folder of another name before they
    were known by their bytes records the classes "0".."9": eval on that folder had been
    refused ("trained on the classes ['0', ...] but ... has ['T-shirt/top', ...]")."""
    from convnet.models import from_notation
    from convnet.train.inference import evaluation_data
    for name in FASHION_DIR.iterdir():
        (tmp_path / name.name).symlink_to(name)
    model = from_notation("INPUT 28x28x1 -> POOL F28 -> FC 10")
    model.info = {"classes": [str(i) for i in range(10)], "mean": [0.3], "std": [0.3]}
    x, y, classes, _ = evaluation_data(model, str(tmp_path))
    assert classes == model.info["classes"] and len(y) == 10_000
    assert load_dataset(tmp_path).classes == list(FASHION_MNIST_CLASSES)   # its own names
    # other names are not taken: a model of other classes is still refused
    assert load_dataset(tmp_path, classes=list("abcdefghij")).classes == list(
        FASHION_MNIST_CLASSES)
    letters = from_notation("INPUT 28x28x1 -> POOL F28 -> FC 10")
    letters.info = {"classes": list("abcdefghij"), "mean": [0.3], "std": [0.3]}
    with pytest.raises(ValueError, match=r"trained on the classes \['a', 'b', "):
        evaluation_data(letters, str(tmp_path))


def test_fashion_mnist_search_order(tmp_path, monkeypatch, fashion):
    env = tmp_path / "env"
    make_idx_dir(env / "fashion-mnist", np.random.default_rng(2), n=(5, 2), hw=(3, 3))
    monkeypatch.setenv("CONVNET_DATA", str(env))
    dirs = search_dirs("fashion-mnist")
    assert dirs[0] == env / "fashion-mnist"
    assert dirs[1:] == [Path("/usr/share/datasets/fashion-mnist"),
                        Path(os.environ["HOME"]) / ".cache/convnet/fashion-mnist"]
    assert load_fashion_mnist()["train"][0].shape == (5, 1, 3, 3)     # $CONVNET_DATA first
    (env / "fashion-mnist" / IDX_NAMES["test"][1]).unlink()            # incomplete: skipped
    assert load_fashion_mnist()["train"][0].shape == (60000, 1, 28, 28)
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        load_fashion_mnist(root=env / "fashion-mnist")                  # root: only root
    make_idx_dir(env / "fashion-mnist", np.random.default_rng(2), n=(4, 2), hw=(3, 3))
    assert load_fashion_mnist(root=env)["train"][0].shape == (4, 1, 3, 3)   # or root/<name>
    monkeypatch.setenv("HOME", str(env))
    assert load_fashion_mnist(root="~")["train"][0].shape == (4, 1, 3, 3)   # ~ expanded


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_dir(tmp_path):
    """A directory served on 127.0.0.1 by http.server in a thread; yields (dir, base_url)."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,),
                              daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{server.server_address[1]}/data"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_torchvisions_folders_of_idx_files_are_found(tmp_path):
    """torchvision downloads into root/FashionMNIST/raw/: --data root/FashionMNIST had
    been "only one class folder ('raw')", and --data fashion-mnist --data-root root
    "not found"."""
    make_idx_dir(tmp_path / "FashionMNIST" / "raw", np.random.default_rng(2))
    make_idx_dir(tmp_path / "other" / "MNIST" / "raw", np.random.default_rng(3))
    by_folder = load_dataset(str(tmp_path / "FashionMNIST"))
    assert by_folder.classes == list(FASHION_MNIST_CLASSES)
    assert by_folder.name == "FashionMNIST"
    by_name = load_dataset("fashion-mnist", root=tmp_path)
    np.testing.assert_array_equal(by_name.train[0], by_folder.train[0])
    assert load_dataset("mnist", root=tmp_path / "other").train[0].shape[0] == 7


def test_fashion_mnist_download(tmp_path, http_dir):
    served, base = http_dir
    data = make_idx_dir(served / "data", np.random.default_rng(3), n=(6, 4), hw=(4, 4), gz=True)
    checksums = {p.name: hashlib.md5(p.read_bytes()).hexdigest()
                 for p in (served / "data").iterdir()}
    assert set(checksums) == set(FASHION_MNIST_MD5)
    root = tmp_path / "fm"
    out = load_fashion_mnist(root=root, download=True, base_url=base, checksums=checksums)
    for split in ("train", "test"):
        np.testing.assert_array_equal(out[split][0][:, 0], data[split][0])
        np.testing.assert_array_equal(out[split][1], data[split][1])
    assert sorted(p.name for p in root.iterdir()) == sorted(checksums)
    # A second call finds the files and downloads nothing (the server is not needed).
    out2 = load_fashion_mnist(root=root, download=True, base_url="http://127.0.0.1:9/",
                              checksums={})
    np.testing.assert_array_equal(out2["train"][0], out["train"][0])


def test_download_checksum_mismatch_leaves_nothing(tmp_path, http_dir):
    served, base = http_dir
    make_idx_dir(served / "data", np.random.default_rng(4), gz=True)
    checksums = {name: hashlib.md5(b"something else").hexdigest() for name in FASHION_MNIST_MD5}
    root = tmp_path / "fm"
    with pytest.raises(ValueError, match=r"checksum mismatch: expected MD5 "
                                         + checksums["train-images-idx3-ubyte.gz"]):
        load_fashion_mnist(root=root, download=True, base_url=base, checksums=checksums)
    assert list(root.iterdir()) == []
    with pytest.raises(OSError, match=r"/missing.gz: the download failed \(HTTP 404 .*\); "
                                      r"nothing was saved to .*missing.gz: check the network"):
        download(base + "/missing.gz", root / "missing.gz", "0" * 32)   # 404: nothing saved
    assert list(root.iterdir()) == []
    with pytest.raises(OSError, match=r"http://127.0.0.1:9/x.gz: the download failed \("):
        download("http://127.0.0.1:9/x.gz", root / "x.gz", "0" * 32)   # nothing listening
    assert list(root.iterdir()) == []
    with pytest.raises(FileNotFoundError, match=r"convnet train --download; download=True"):
        load_fashion_mnist(root=root)


def test_mnist_from_root(tmp_path):
    data = make_idx_dir(tmp_path / "mnist", np.random.default_rng(5), gz=True)
    out = load_mnist(root=tmp_path / "mnist")
    np.testing.assert_array_equal(out["test"][1], data["test"][1])
    assert out["classes"] == [str(d) for d in range(10)]
    np.testing.assert_array_equal(load_mnist(root=tmp_path)["test"][1], data["test"][1])
    with pytest.raises(FileNotFoundError, match="MNIST not found"):       # root/mnist too
        load_mnist(root=tmp_path / "mnist" / "elsewhere")


# -- CIFAR ---------------------------------------------------------------------------------
class Py2Pickler(pickle._Pickler):
    """Writes str and bytes as Python 2 did (BINSTRING), like the 2009 CIFAR files."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj):
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        n = len(raw)
        self.write((pickle.SHORT_BINSTRING + bytes([n]) if n < 256
                    else pickle.BINSTRING + struct.pack("<i", n)) + raw)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str


def dump_pickle(path, obj, py2):
    if not py2:
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=2)
        return
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    # The real files name NumPy's reconstruct function by its 2009 module.
    Path(path).write_bytes(buf.getvalue().replace(b"cnumpy._core.multiarray\n",
                                                  b"cnumpy.core.multiarray\n"))


def cifar_batch(rng, n, version):
    x = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    if version == 10:
        return x, {"labels": rng.integers(0, 10, size=n)}
    return x, {"coarse_labels": rng.integers(0, 20, size=n),
               "fine_labels": rng.integers(0, 100, size=n)}


def write_cifar(directory, version, form, rng, n=3, py2=True):
    """Small CIFAR files in the published layout; returns {split: (x, labels dict)}."""
    directory.mkdir(parents=True, exist_ok=True)
    if version == 10:
        names = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    else:
        names = {"train": ["train"], "test": ["test"]}
    out = {}
    for split, files in names.items():
        parts = []
        for name in files:
            x, labels = cifar_batch(rng, n, version)
            parts.append((x, labels))
            if form == "binary":
                keys = ["labels"] if version == 10 else ["coarse_labels", "fine_labels"]
                cols = [labels[k][:, None].astype(np.uint8) for k in keys]
                rec = np.concatenate([*cols, x.reshape(n, -1)], axis=1)
                (directory / (name + ".bin")).write_bytes(rec.tobytes())
            else:
                batch = {b"data": x.reshape(n, -1), b"batch_label": b"batch " + name.encode(),
                         b"filenames": [f"img_{i}.png".encode() for i in range(n)]}
                batch.update({k.encode(): [int(v) for v in labels[k]] for k in labels})
                dump_pickle(directory / name, batch, py2)
        out[split] = (np.concatenate([p[0] for p in parts]),
                      {k: np.concatenate([p[1][k] for p in parts]) for k in parts[0][1]})
    classes = {10: {"label_names": [f"c{i}" for i in range(10)]},
               100: {"fine_label_names": [f"f{i}" for i in range(100)],
                     "coarse_label_names": [f"k{i}" for i in range(20)]}}[version]
    if form == "binary":
        for key, names_ in classes.items():
            txt = "batches.meta.txt" if version == 10 else key.replace("_label_names",
                                                                        "_label_names.txt")
            (directory / txt).write_text("\n".join(names_) + "\n\n")
    else:
        meta = {k.encode(): [s.encode() for s in v] for k, v in classes.items()}
        dump_pickle(directory / ("batches.meta" if version == 10 else "meta"), meta, py2)
    return out


def test_a_named_data_sets_files_in_a_folder_train_with_its_defaults(tmp_path):
    """CIFAR-10's batches given as a folder (cifar-10-batches-py/) are CIFAR-10: training
    takes its defaults (its tuned net, optimizer and batch) and says so, where it took an
    image folder's generic ones; IDX files are Fashion-MNIST or MNIST as their folder
    says, and EMNIST's letters no named set."""
    from convnet.train.loop import TrainConfig, train
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder, 10, "python", np.random.default_rng(2), n=4)
    splits = load_dataset(folder)
    assert (splits.kind, splits.name) == ("cifar10", "cifar-10-batches-py")
    assert load_dataset("digits").kind == "digits"
    lines = []
    result = train(TrainConfig(data=str(folder), epochs=1, val_fraction=0.2,
                               out=str(tmp_path / "run")), log=lines.append, progress=False)
    text = "\n".join(lines)
    assert "cifar-10-batches-py is in cifar10's format: cifar10's defaults apply" in text
    assert "; momentum lr=" in text                       # image folders' default: adam
    assert result.model[0].out_channels == 64            # cifar10's net: CONV 64 first
    images = np.zeros((3, 28, 28), np.uint8)
    for name, labels, kind in (("my-fashion", [0, 1, 9], "fashion-mnist"),
                               ("digits-idx", [0, 1, 9], "mnist"),
                               ("letters", [0, 1, 25], None)):
        (tmp_path / name).mkdir()
        for prefix in ("train", "t10k"):
            write_idx(tmp_path / name / f"{prefix}-images-idx3-ubyte", images)
            write_idx(tmp_path / name / f"{prefix}-labels-idx1-ubyte",
                      np.array(labels, np.uint8))
        assert load_dataset(tmp_path / name).kind == kind, name


def test_an_image_folder_named_like_a_data_set_takes_the_defaults_for_other_data(tmp_path):
    """A folder of photos called cifar10 (or mnist, digits) had trained with that data
    set's recipe (momentum and weight decay for cifar10), without a word: the defaults
    come from what the files are, not from the folder's name."""
    from convnet.train.loop import TrainConfig, train
    rng = np.random.default_rng(3)
    for name in ("a", "b"):
        for i in range(10):
            save_image(tmp_path / "cifar10" / name / f"{i}.png",
                       rng.integers(0, 255, (8, 8, 3), dtype=np.uint8))
    lines = []
    train(TrainConfig(data=str(tmp_path / "cifar10"), epochs=1, out=str(tmp_path / "run"),
                      model="INPUT 8x8x3 -> POOL F4 -> FC 2"), log=lines.append,
          progress=False)
    text = "\n".join(lines)
    assert ("the folder cifar10 does not hold the cifar10 data set's files: the defaults "
            "for any other data apply") in text
    assert "; adam lr=" in text and "momentum" not in text


def test_a_drawn_split_names_every_unreadable_image_at_once(tmp_path):
    """Held-out and kept images are decoded together: every truncated file is named in
    one error, whichever part it would have fallen in."""
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        for i in range(20):
            save_image(tmp_path / name / f"{i:02}.png",
                       rng.integers(0, 255, (16, 16), dtype=np.uint8))
    bad = [tmp_path / name / f"{i:02}.png" for name in ("a", "b") for i in range(0, 20, 4)]
    for path in bad:
        path.write_bytes(path.read_bytes()[:150])
    with pytest.raises(ValueError, match=f"{len(bad)} of 40 files are not images") as err:
        load_dataset(tmp_path)
    assert all(str(path) in str(err.value) for path in bad[:3])


def test_a_resumed_run_keeps_the_defaults_it_began_with(tmp_path):
    """A run resumes with the defaults it began with, as its checkpoint records them: one
    begun on Fashion-MNIST's files in a folder before their defaults applied (recorded by
    the folder's name) keeps the shifts of an image folder's recipe, where Fashion-MNIST's
    has none."""
    from convnet.train.checkpoint import load_checkpoint, save_checkpoint
    from convnet.train.loop import TrainConfig, train
    rng = np.random.default_rng(0)
    folder = tmp_path / "my-fashion"
    folder.mkdir()
    for prefix, n in (("train", 100), ("t10k", 10)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte",
                  rng.integers(0, 255, (n, 28, 28), dtype=np.uint8))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", np.arange(n, dtype=np.uint8) % 10)
    out = tmp_path / "run"
    lines = []
    train(TrainConfig(data=str(folder), epochs=1, batch_size=8, out=str(out),
                      model="INPUT 28x28x1 -> POOL F4 -> FC 10"), log=lines.append,
          progress=False)
    assert "my-fashion is in fashion-mnist's format" in "\n".join(lines)
    assert "augmentation: flips, label smoothing 0.1, flip TTA" in "\n".join(lines)
    path = out / "checkpoint.safetensors"
    model_state, optim, state = load_checkpoint(path)
    assert state["info"]["defaults"] == "fashion-mnist"
    for recorded, shown in (
            ("fashion-mnist", "augmentation: flips, label smoothing 0.1, flip TTA"),
            (None, "augmentation: shifts of up to 1/8 of each side and flips, label "
                   "smoothing 0.1")):
        if recorded is None:                       # a checkpoint of before "defaults"
            del state["info"]["defaults"]
        state["config"]["translate"] = None        # the default shifts: each recipe's own
        state["config"]["epochs"] += 1
        save_checkpoint(path, model_state, optim, state)
        lines.clear()
        train(TrainConfig(out=str(out)), resume=True, log=lines.append, progress=False)
        text = "\n".join(lines)
        assert shown in text and "format" not in text, text
        model_state, optim, state = load_checkpoint(path)


CIFAR_DIRS = {(10, "binary"): "cifar-10-batches-bin", (10, "python"): "cifar-10-batches-py",
              (100, "binary"): "cifar-100-binary", (100, "python"): "cifar-100-python"}


@pytest.mark.parametrize("py2", [True, False])
@pytest.mark.parametrize("form", ["binary", "python"])
@pytest.mark.parametrize("parent", [True, False])
def test_cifar10_both_forms(tmp_path, form, parent, py2):
    if form == "binary" and not py2:
        return  # binary files have no pickle flavour: one case is enough
    extracted = tmp_path / CIFAR_DIRS[(10, form)]
    data = write_cifar(extracted, 10, form, np.random.default_rng(6), py2=py2)
    out = load_cifar10(tmp_path if parent else extracted)
    for split, n in (("train", 15), ("test", 3)):
        x, y = out[split]
        assert x.shape == (n, 3, 32, 32) and x.dtype == np.uint8 and y.dtype == np.int64
        np.testing.assert_array_equal(x, data[split][0])
        np.testing.assert_array_equal(y, data[split][1]["labels"])
    assert out["classes"] == [f"c{i}" for i in range(10)]


@pytest.mark.parametrize("py2", [True, False])
@pytest.mark.parametrize("form", ["binary", "python"])
@pytest.mark.parametrize("label, count", [("fine", 100), ("coarse", 20)])
def test_cifar100_both_forms(tmp_path, form, label, count, py2):
    extracted = tmp_path / CIFAR_DIRS[(100, form)]
    data = write_cifar(extracted, 100, form, np.random.default_rng(7), n=5, py2=py2)
    out = load_cifar100(tmp_path, label=label)
    for split in ("train", "test"):
        np.testing.assert_array_equal(out[split][0], data[split][0])
        np.testing.assert_array_equal(out[split][1], data[split][1][f"{label}_labels"])
    prefix = "f" if label == "fine" else "k"
    assert out["classes"] == [f"{prefix}{i}" for i in range(count)]
    with pytest.raises(ValueError, match="label must be 'fine' or 'coarse'"):
        load_cifar100(tmp_path, label="superclass")
    name = "cifar100" if label == "fine" else "cifar100-coarse"    # the CLI's --data names
    splits = load_dataset(name, root=tmp_path)
    assert splits.name == name and splits.classes == out["classes"]
    np.testing.assert_array_equal(splits.test[1], out["test"][1])


def test_cifar_binary_preferred_and_default_names(tmp_path):
    binary = write_cifar(tmp_path, 10, "binary", np.random.default_rng(8))
    write_cifar(tmp_path, 10, "python", np.random.default_rng(9))
    (tmp_path / "batches.meta.txt").unlink()
    out = load_cifar10(tmp_path)
    np.testing.assert_array_equal(out["test"][0], binary["test"][0])
    assert out["classes"] == list(CIFAR10_CLASSES)


class Gadget:
    """Unpickling this runs a shell command (the classic pickle attack)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class EvalGadget:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return eval, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.mark.parametrize("where", ["top", "labels", "data"])
@pytest.mark.parametrize("gadget, name", [(Gadget, "posix.system"),
                                          (EvalGadget, "__builtin__.eval")])
def test_cifar_pickle_refuses_code(tmp_path, where, gadget, name):
    directory = tmp_path / "cifar-10-batches-py"
    write_cifar(directory, 10, "python", np.random.default_rng(10))
    marker = tmp_path / "pwned"
    evil = gadget(marker)
    batch = {b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 1, 2]}
    if where == "top":
        batch = evil
    elif where == "labels":
        batch[b"labels"] = [0, evil, 2]
    else:
        batch[b"data"] = [evil]
    with open(directory / "data_batch_3", "wb") as f:
        pickle.dump(batch, f, protocol=2)
    message = (f"{directory / 'data_batch_3'}: refusing to load '{name}' from a pickle: CIFAR "
               "files hold only arrays, dicts, lists, bytes, str and int")
    with pytest.raises(ValueError, match=re.escape(message)):
        load_cifar10(tmp_path)
    assert not marker.exists()


def test_cifar_unpickler_allows_only_array_names(tmp_path):
    loader = CifarUnpickler(io.BytesIO(b""), "f")
    assert repr(loader.find_class("numpy", "ndarray")) == "numpy.ndarray"
    # the admitted names are stand-ins of ours: nothing NumPy-internal reaches the pickle
    for module, name in [*CifarUnpickler.ALLOWED, ("_codecs", "encode")]:
        admitted = loader.find_class(module, name)
        assert repr(admitted) == f"{module}.{name}"
        assert type(admitted).__module__ != "numpy" and admitted is not np.dtype
        with pytest.raises(ValueError, match="the pickle sets state on"):
            admitted.__setstate__({"__defaults__": ("base64",)})    # what BUILD calls
        with pytest.raises(ValueError, match="the pickle sets an attribute on"):
            admitted.func = print
    assert not isinstance(loader.find_class("numpy", "dtype")("u1", False, True), np.dtype)
    for module, name in [("numpy", "load"), ("builtins", "getattr"), ("os", "system"),
                         ("subprocess", "Popen"), ("numpy.core.multiarray", "scalar"),
                         ("copyreg", "_reconstructor"), ("__builtin__", "eval")]:
        with pytest.raises(ValueError, match=re.escape(f"f: refusing to load '{module}.{name}'")):
            loader.find_class(module, name)
    # _codecs.encode is admitted for str -> latin-1 bytes only.
    sneaky = (b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x06\x00\x00\x00base64\x86R.")
    path = tmp_path / "codec"
    path.write_bytes(sneaky)
    with raises_naming(path, "only str to latin-1 bytes is allowed"):
        read_cifar_pickle(path)


def shared_array_pickle(copies, size=4096):
    """A CIFAR-style pickle: {'junk': [copies arrays]}, every array record built on one
    shared raw bytes object of ``size`` bytes (uint8, shape (size,))."""
    p = bytearray(b"\x80\x02cnumpy.core.multiarray\n_reconstruct\nq\x00cnumpy\nndarray\nq\x01"
                  b"K\x00\x85q\x02C\x01bq\x03cnumpy\ndtype\nq\x04C\x02u1q\x05"
                  b"h\x04h\x05\x89\x88\x87Rq\x06"
                  b"(K\x03C\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb")
    p += b"B" + size.to_bytes(4, "little") + bytes(size) + b"q\x07"
    p += b"J" + size.to_bytes(4, "little") + b"\x85q\x08}X\x04\x00\x00\x00junk]("
    p += b"h\x00h\x01h\x02h\x03\x87R(K\x01h\x08h\x06\x89h\x07tb" * copies
    return bytes(p + b"es.")


def encode_pickle(copies, size=4096):
    """{'junk': [...]} calling the admitted _codecs.encode ``copies`` times on one shared
    str of ``size`` characters."""
    text = b"X" + size.to_bytes(4, "little") + b"a" * size
    return (b"\x80\x02c_codecs\nencode\nq\x000" + text + b"q\x010X\x06\x00\x00\x00latin1q\x020"
            + b"}X\x04\x00\x00\x00junk](" + b"h\x00h\x01h\x02\x86R" * copies + b"es.")


@pytest.mark.parametrize("make", [shared_array_pickle, encode_pickle])
def test_cifar_pickles_make_no_more_bytes_than_they_hold(tmp_path, make):
    """Shared data copied again and again (2,500 arrays on one 1 MB string made 2.5 GB
    from a 1 MB file): arrays, and encoded strings, may make what the file holds."""
    path = tmp_path / "batch"
    path.write_bytes(make(1))
    assert read_cifar_pickle(path)                       # once: within the file's bytes
    path.write_bytes(make(2))
    with raises_naming(path, "more than the file holds: it copies shared data"):
        read_cifar_pickle(path)


def test_cifar_unpickler_array_reconstruction_is_bounded(tmp_path):
    """_reconstruct builds plain ndarrays only, and never at the shape a pickle asks for."""
    recon = b"\x80\x02cnumpy.core.multiarray\n_reconstruct\n"
    not_array = tmp_path / "dtype"
    not_array.write_bytes(recon + b"cnumpy\ndtype\nK\x00\x85U\x01b\x87R.")
    with raises_naming(not_array, "refusing to reconstruct .*only numpy.ndarray"):
        read_cifar_pickle(not_array)
    called = tmp_path / "called"   # numpy.ndarray((2^31 - 1,)): only _reconstruct may use it
    called.write_bytes(b"\x80\x02cnumpy\nndarray\nJ\xff\xff\xff\x7f\x85R.")
    with raises_naming(called, "not a readable CIFAR pickle: TypeError"):
        read_cifar_pickle(called)
    huge = tmp_path / "huge"       # asks for a (2^31 - 1, 2^16) array: 128 TiB
    huge.write_bytes(recon + b"cnumpy\nndarray\nJ\xff\xff\xff\x7fJ\x00\x00\x01\x00\x86"
                     b"U\x01b\x87R.")
    tracemalloc.start()
    try:
        with raises_naming(huge, r"bad numpy array state <never set>: expected \(1, shape"):
            read_cifar_pickle(huge)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"peak {peak} bytes"


PLAIN_CODES = ("b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8")


@pytest.mark.parametrize("py2", [True, False])
def test_cifar_pickle_arrays_of_every_plain_dtype(tmp_path, py2):
    """Real NumPy arrays pickled at protocol 2, as Python 2 wrote the CIFAR files and as
    Python 3 writes them, come back equal: every plain dtype in both byte orders, Fortran
    order, 0-d and empty arrays."""
    rng = np.random.default_rng(3)
    arrays = {}
    for code in PLAIN_CODES:
        a = (rng.standard_normal((3, 4)) * 50).astype(code)
        arrays[code] = a
        if a.itemsize > 1:
            arrays[">" + code] = a.astype(a.dtype.newbyteorder(">"))
    arrays["fortran"] = np.asfortranarray(rng.integers(0, 256, (3, 5), dtype=np.uint8))
    arrays["scalar"] = np.array(3.5, np.float32)
    arrays["empty"] = np.zeros((0, 3072), np.uint8)
    arrays["shared"] = [arrays["u1"], arrays["u1"]]   # memoized: one record, one array
    path = tmp_path / "arrays"
    dump_pickle(path, {key.encode(): value for key, value in arrays.items()}, py2)
    loaded = read_cifar_pickle(path)
    assert list(loaded) == list(arrays)
    for key, want in arrays.items():
        pairs = zip(loaded[key], want) if key == "shared" else [(loaded[key], want)]
        for got, a in pairs:
            assert got.dtype == a.dtype and got.shape == a.shape, key
            np.testing.assert_array_equal(got, a)
            assert got.flags.writeable
    assert loaded["shared"][0] is loaded["shared"][1]


class Reduce:
    """Pickles as func(*args), then BUILD with state when given: a hand-made pickle."""

    def __init__(self, func, *args, state=None):
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        return (self.func, self.args) + (() if self.state is None else (self.state,))


def array_pickle(shape, dtype, raw, version=1, fortran=False):
    """An ndarray pickled by hand, as NumPy does it: _reconstruct(...), then BUILD."""
    from numpy._core.multiarray import _reconstruct
    return Reduce(_reconstruct, np.ndarray, (0,), b"b",
                  state=(version, shape, dtype, fortran, raw))


def dtype_pickle(*args, state=(3, "|", None, None, None, -1, -1, 0)):
    return Reduce(np.dtype, *args, state=state)


U1 = dtype_pickle("u1", False, True)
NOT_PLAIN = [np.array([1, "a", None], dtype=object), np.zeros(2, [("x", "<f4"), ("y", "u1")]),
             np.zeros(2, [("x", "<f4", (3,))]), np.array(["ab", "c"]), np.array([b"ab"]),
             np.array(["2020-01-01"], dtype="M8[D]"), np.zeros(2, np.complex64),
             np.zeros(2, np.longdouble), np.zeros(2, "V4")]


def test_cifar_pickles_of_protocol_5_load(tmp_path):
    """Python 3.14 pickles at protocol 5 by default, where NumPy writes each array as
    _frombuffer(bytes, dtype, shape, order): a re-saved CIFAR batch had been refused."""
    rng = np.random.default_rng(5)
    arrays = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
              "fortran": np.asfortranarray(rng.standard_normal((3, 5)).astype(np.float32)),
              "turned": rng.integers(0, 9, (2, 3, 4), dtype=np.int16).transpose(1, 0, 2),
              "labels": [0, 1, 2, 3]}
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps(arrays, protocol=5))
    loaded = read_cifar_pickle(path)
    for key, want in arrays.items():
        np.testing.assert_array_equal(loaded[key], want)
        assert np.asarray(loaded[key]).dtype == np.asarray(want).dtype


@pytest.mark.parametrize("args, match", [
    ((b"\0\0", U1, (2,), "K", (1,)), r"axis order \(1,\) is not an order of the 1 axes"),
    ((b"\0\0", U1, (2,), "K", None), r"refusing numpy _frombuffer of a bytes in order 'K'"),
    ((b"\0\0", U1, (2,), "A"), r"in order 'A'"),
    (([0, 0], U1, (2,), "C"), r"of a list in order 'C'"),
    ((b"\0\0", U1, (3,), "C"), r"needs 3 bytes, but its data holds 2"),
    ((b"\0\0", dtype_pickle("O8", False, True), (2,), "C"), r"refusing numpy.dtype\('O8'"),
])
def test_cifar_pickle_frombuffer_records_are_checked(tmp_path, args, match):
    from numpy._core.numeric import _frombuffer
    path = tmp_path / "crafted"
    path.write_bytes(pickle.dumps(Reduce(_frombuffer, *args), protocol=5))
    with raises_naming(path, match):
        read_cifar_pickle(path)


def test_cifar_pickle_frombuffer_of_one_shared_buffer_is_not_copied_again(tmp_path):
    """One bytearray handed to _frombuffer 200 times: each call had copied it while the
    pickle loaded, before the array budget could refuse (a 1 MB file, 200 MB)."""
    from numpy._core.numeric import _frombuffer
    buf = bytearray(1_000_000)
    path = tmp_path / "shared"
    path.write_bytes(pickle.dumps([Reduce(_frombuffer, buf, np.dtype("u1"), (len(buf),), "C")
                                   for _ in range(200)], protocol=5))
    assert path.stat().st_size < 1_100_000
    tracemalloc.start()
    try:
        with raises_naming(path, "more than the file holds: it copies shared data"):
            read_cifar_pickle(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"peak {peak:,} bytes"


@pytest.mark.parametrize("array", NOT_PLAIN, ids=lambda a: a.dtype.str)
def test_cifar_pickle_refuses_other_dtypes(tmp_path, array):
    """Object, structured, subarray, string, datetime, complex dtypes: refused before NumPy
    sees the array (an object array given a short list crashes NumPy)."""
    path = tmp_path / "batch"
    dump_pickle(path, {b"data": array, b"labels": [0]}, py2=False)
    with raises_naming(path, r"refusing numpy.dtype\('.*expected a plain numeric dtype"):
        read_cifar_pickle(path)


@pytest.mark.parametrize("obj, match", [
    # the issue's crash: an object array of 10 given a list of 1 (a segfault in NumPy)
    (array_pickle((10,), dtype_pickle("O8", False, True, state=(3, "|", None, None, None,
                                                                  -1, -1, 63)), [1]),
     r"refusing numpy.dtype\('O8'"),
    # BUILD that would turn a uint8 dtype into an object or structured one
    (array_pickle((1,), dtype_pickle("u1", False, True, state=(3, "|", None, None, None,
                                                                  -1, -1, 63)), [1]),
     r"with state \(3, '\|', None, None, None, -1, -1, 63\)"),
    (array_pickle((1,), dtype_pickle("u1", False, True, state=(
        3, "|", None, ("x",), {"x": (np.dtype("u1"), 0)}, 1, 1, 0)), b"\0"),
     "expected a plain numeric dtype"),
    (array_pickle((1,), dtype_pickle("u1", False, True, state=(
        3, "|", (np.dtype("u1"), (4,)), None, None, 4, 1, 0)), b"\0"),
     "expected a plain numeric dtype"),
    (array_pickle((2,), U1, [1, 2]), r"data a list \(expected"),
    (array_pickle((2, -1), U1, b"\0\0"), r"shape \(2, -1\)"),
    (array_pickle((2, 2.0), U1, b"\0\0"), r"shape \(2, 2.0\)"),
    (array_pickle((5,), U1, b"\0\0"), r"shape \(5,\) and dtype uint8 needs 5 bytes, but "
                                      r"its data holds 2"),
    (array_pickle((2**40, 2**40), U1, b""), r"bytes in an array 1,208,925,819,614,629,174,706,"
                                           r"176 is over the cap"),
    (array_pickle((0, 2**62), U1, b""), "is over the cap"),
    (array_pickle((2,), U1, b"\0\0", version=2), r"bad numpy array state \(2,"),
    (array_pickle((2,), "u1", b"\0\0"), r"bad numpy array state"),
    (array_pickle((1,) * 40, U1, b"\0"), "expected at most 32 non-negative int64s"),
    (array_pickle((10**5000,), U1, b"\0"), r"shape \(<a 16610-bit int>,\)"),
    ({b"x": U1}, "a numpy.dtype where CIFAR pickles hold only"),
    ({b"x": {1, 2}}, "refusing to load '__builtin__.set'"),      # protocol 2: set([1, 2])
    ({(1, 2): 3}, "a dict key of type tuple"),
])
def test_cifar_pickle_array_records_are_checked(tmp_path, obj, match):
    path = tmp_path / "crafted"
    dump_pickle(path, obj, py2=False)
    with raises_naming(path, match):
        read_cifar_pickle(path)


def test_cifar_pickle_build_twice_and_deep_nesting(tmp_path):
    path = tmp_path / "twice"      # BUILD on the same array record twice
    data = pickle.dumps(array_pickle((1,), U1, b"\0"), protocol=2)
    path.write_bytes(data[:-1] + b"(K\x01K\x01\x85h\x0e\x89C\x01\x01tb.")
    with raises_naming(path, "sets a numpy array's state twice"):
        read_cifar_pickle(path)
    for name, body in [("lists", b"]" * 100_000 + b"a" * 99_999),
                       ("tuples", b"N" + b"\x85" * 100_000)]:
        path = tmp_path / name
        path.write_bytes(b"\x80\x02" + body + b".")
        with raises_naming(path, "nested deeper than 32 levels"):
            read_cifar_pickle(path)


def test_images_beside_the_class_folders_are_named_as_not_read(tmp_path):
    """Images loose in the data folder (or in train/ of a split layout) had been dropped
    without a word."""
    rng = np.random.default_rng(24)
    for root in ("one", "split/train", "split/test"):
        for cls in ("a", "b"):
            for i in range(5):
                save_image(tmp_path / root / cls / f"{i}.png",
                           rng.integers(0, 256, (4, 4), dtype=np.uint8))
    for name in ("z.png", "y.png", "x.png", "w.jpg"):
        save_image(tmp_path / "one" / name, rng.integers(0, 256, (4, 4), dtype=np.uint8))
    save_image(tmp_path / "split" / "train" / "stray.png", np.zeros((4, 4), np.uint8))
    (tmp_path / "one" / "notes.txt").write_text("not an image")
    (tmp_path / "one" / ".DS_Store").write_text("")
    notes = load_dataset(tmp_path / "one", test_fraction=0.2).notes
    assert f"4 image file(s) in {tmp_path / 'one'}, beside its class folders, have no class " \
           f"and are not read ('w.jpg', 'x.png', 'y.png', ...): move them into a class " \
           f"folder" in notes, notes
    notes = load_dataset(tmp_path / "split").notes
    assert [n for n in notes if "beside its class folders" in n] == [
        f"1 image file(s) in {tmp_path / 'split' / 'train'}, beside its class folders, have "
        f"no class and are not read ('stray.png'): move them into a class folder"]


def test_the_data_apis_check_their_arguments():
    """read_idx's kind had raised a bare StopIteration; load_dataset's test_fraction 1.5
    had been named as train_val_split's val_fraction; Normalize took NaN statistics (every
    output NaN); a signed 16-bit image was told to be saved as 16 bits."""
    from PIL import Image

    from convnet.data.folder import _eight_bit
    from convnet.data.transforms import Normalize
    with pytest.raises(ValueError, match="read_idx: kind must be None or one of 'images', "
                                         "'labels', got 'image'"):
        read_idx("any", kind="image")
    for fraction in (1.5, 0, -0.1, True, "0.1", None):
        with pytest.raises(ValueError, match=r"load_dataset: test_fraction must be a number "
                                             r"in \(0, 1\)"):
            load_dataset("digits", test_fraction=fraction)
    for mean, std in (([0.5], [np.nan]), ([np.inf], [1.0]), ([0.5], [0.0])):
        with pytest.raises(ValueError, match="of finite numbers with std > 0"):
            Normalize(mean, std)
    signed = Image.fromarray(np.array([[-5, 3], [7, 9]], np.int32))
    with pytest.raises(ValueError, match=r"s.tif: I image with signed values \(a signed-"
                                         r"integer image\), which convnet does not read "
                                         r"\(-5..9 in rows 0..1\); save it as unsigned 8 or "
                                         r"16 bits"):
        _eight_bit(Image, signed, "s.tif")


def test_cifar_labels_as_arrays_and_huge_ints(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    write_cifar(d, 10, "python", np.random.default_rng(12))
    dump_pickle(d / "data_batch_1", {b"data": np.zeros((3, 3072), np.uint8),
                                     b"labels": np.array([1, 2, 3], np.uint8)}, py2=True)
    assert load_cifar10(d)["train"][1][:3].tolist() == [1, 2, 3]
    dump_pickle(d / "data_batch_1", {b"data": np.zeros((3, 3072), np.uint8),
                                     b"labels": [0, 10**5000, 1]}, py2=False)
    with raises_naming(d / "data_batch_1", "'labels' must be 3 integers .*got list of length 3"):
        load_cifar10(d)


@pytest.mark.parametrize("version", [10, 100])
def test_cifar_class_name_files(tmp_path, version):
    d = tmp_path / CIFAR_DIRS[(version, "binary")]
    write_cifar(d, version, "binary", np.random.default_rng(13))
    names = d / ("batches.meta.txt" if version == 10 else "fine_label_names.txt")
    names.write_bytes(b"plane\ncar\xff\n" + b"x\n" * 98)
    load = functools.partial(load_cifar10 if version == 10 else load_cifar100, d)
    with raises_naming(names, "class names must be UTF-8 text: byte 0xff at offset 9 is not"):
        load()
    names.write_bytes(b"x" * (1 << 20) + b"\n")
    with raises_naming(names, "1,048,577 bytes is too large for a file of"):
        load()
    d = tmp_path / "py" / CIFAR_DIRS[(version, "python")]
    write_cifar(d, version, "python", np.random.default_rng(14))
    load = functools.partial(load_cifar10 if version == 10 else load_cifar100, d)
    meta = d / ("batches.meta" if version == 10 else "meta")
    key = b"label_names" if version == 10 else b"fine_label_names"
    dump_pickle(meta, {key: [b"a"] * (version - 1) + [7]}, py2=True)
    with raises_naming(meta, "must be a list of .* class names \\(bytes or str\\)"):
        load()


@pytest.mark.parametrize("form, bad, match", [
    ("python", "cat\nfake", r"class name 0 must be printable text .* got 'cat\\nfake'"),
    ("python", "", r"class name 0 must be printable text .* got ''"),
    ("python", "c1", r"the class name 'c1' is given twice"),
    ("binary", "a\x1b[31mred", r"class name 0 must be printable text .* got 'a\\x1b\[31mred'"),
    ("binary", "c1", r"the class name 'c1' is given twice"),
])
def test_cifar_class_names_are_printable_and_each_once(tmp_path, form, bad, match):
    """A class name with a line break or a terminal escape, an empty one or one given
    twice had trained, and then eval and predict refused the model's record (or printed
    "cat" for three classes): the names file is refused, named, before training. (A
    text file's line breaks end its names, and its blank lines are skipped.)"""
    d = tmp_path / CIFAR_DIRS[(10, form)]
    write_cifar(d, 10, form, np.random.default_rng(5))
    names = [bad] + [f"c{i}" for i in range(1, 10)]
    if form == "binary":
        path = d / "batches.meta.txt"
        path.write_text("\n".join(names))
    else:
        path = d / "batches.meta"
        dump_pickle(path, {b"label_names": [n.encode() for n in names]}, py2=True)
    with raises_naming(path, match):
        load_cifar10(d)


def test_an_empty_test_split_is_refused_and_untrained_classes_are_noted(tmp_path):
    """A CIFAR test batch of 0 images had trained and reported "test accuracy 0.0000 (0
    images)"; an IDX folder with one stray label 255 had made 256 classes without a word."""
    d = tmp_path / CIFAR_DIRS[(10, "python")]
    write_cifar(d, 10, "python", np.random.default_rng(6))
    dump_pickle(d / "test_batch", {b"data": np.zeros((0, 3072), np.uint8), b"labels": []},
                py2=True)
    with pytest.raises(ValueError, match=re.escape(str(d)) + ": its test split holds no images"):
        load_dataset(d)
    images = np.zeros((12, 6, 6), np.uint8)
    folder = tmp_path / "idx"
    folder.mkdir()
    for prefix, labels in (("train", list(range(10)) + [255, 3]), ("t10k", [0] * 12)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", np.array(labels, np.uint8))
    splits = load_dataset(folder)
    assert len(splits.classes) == 256
    assert untrained_classes(splits.train[1], splits) == (
        "245 of the 256 classes have no training images (10, 11, 12, 13, 14, 15, 16, 17, "
        "...): the model's outputs for them are never trained (IDX files name no classes: "
        "they count up to the largest label)")
    digits = load_dataset("digits")
    assert untrained_classes(digits.train[1], digits) is None
    assert untrained_classes(digits.train[1][digits.train[1] != 4], digits).startswith(
        "1 of the 10 classes has no training images (4): ")


@pytest.mark.parametrize("form", ["binary", "python"])
def test_cifar_malformed_files(tmp_path, form):
    rng = np.random.default_rng(11)

    def fresh(name):
        directory = tmp_path / name / CIFAR_DIRS[(10, form)]
        write_cifar(directory, 10, form, rng)
        return directory

    d = fresh("incomplete")
    (d / ("data_batch_4" + (".bin" if form == "binary" else ""))).unlink()
    with pytest.raises(FileNotFoundError, match="incomplete: missing data_batch_4"):
        load_cifar10(d)
    if form == "binary":
        d = fresh("size")
        path = d / "data_batch_2.bin"
        path.write_bytes(path.read_bytes()[:-5])
        with raises_naming(path, r"9214 bytes is not a whole number of 3073-byte records "
                                 r"\(1 label byte\(s\) \+ 3072 pixels\): 2 records and 3068"):
            load_cifar10(d)
        d = fresh("label")
        path = d / "test_batch.bin"
        raw = bytearray(path.read_bytes())
        raw[3073] = 10
        path.write_bytes(bytes(raw))
        with raises_naming(path, r"label 10 at record 1 is out of range \[0, 10\)"):
            load_cifar10(d)
        d = tmp_path / "c100" / "cifar-100-binary"
        write_cifar(d, 100, "binary", rng)
        path = d / "train.bin"
        raw = bytearray(path.read_bytes())
        raw[3074 * 2 + 1] = 100                                        # fine label of record 2
        path.write_bytes(bytes(raw))
        with raises_naming(path, r"fine label 100 at record 2 is out of range \[0, 100\)"):
            load_cifar100(d)
        return
    cases = {
        "labels_short": ({b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 1]},
                         r"'labels' must be 3 integers \(one per image: a list of ints or an "
                         r"integer array\), got list of length 2"),
        "labels_tuple": ({b"data": np.zeros((3, 3072), np.uint8), b"labels": (0, 1, 2)},
                         r"a list of ints or an integer array\), got tuple of length 3$"),
        "labels_bool": ({b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, True, 2]},
                        r"got list of length 3: item 1 is bool$"),
        "label_range": ({b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 12, 1]},
                        r"labels 12 at record 1 is out of range \[0, 10\)"),
        "negative": ({b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, -1, 1]},
                     r"labels -1 at record 1 is out of range"),
        "no_labels": ({b"data": np.zeros((3, 3072), np.uint8)}, r"no 'labels' entry"),
        "data_dtype": ({b"data": np.zeros((3, 3072), np.float32), b"labels": [0, 1, 2]},
                       r"'data' must be a uint8 array \(n, 3072\), got float32"),
        "data_shape": ({b"data": np.zeros((3, 3071), np.uint8), b"labels": [0, 1, 2]},
                       r"got uint8 array of shape \(3, 3071\)"),
        "not_dict": ([1, 2, 3], "expected a dict in a CIFAR pickle, got list"),
    }
    for key, (obj, match) in cases.items():
        d = fresh(key)
        dump_pickle(d / "data_batch_5", obj, py2=True)
        with raises_naming(d / "data_batch_5", match):
            load_cifar10(d)
    d = fresh("truncated")
    path = d / "test_batch"
    path.write_bytes(path.read_bytes()[:500])
    with raises_naming(path, "not a readable CIFAR pickle"):
        load_cifar10(d)
    d = fresh("meta")
    dump_pickle(d / "batches.meta", {b"label_names": [b"a", b"b"]}, py2=True)
    with raises_naming(d / "batches.meta", "'label_names' must be a list of 10 class names"):
        load_cifar10(d)


def test_cifar_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-bin or cifar-10-batches-py"):
        load_cifar10(tmp_path)


# -- image folders -------------------------------------------------------------------------
def save_image(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_image_folder_rgb_and_gray(tmp_path):
    rng = np.random.default_rng(12)
    expected = []
    for k, cls in enumerate(["zebra", "ant", "cat"]):
        for i in range(k + 1):
            arr = rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)      # (H, W, C)
            save_image(tmp_path / cls / f"{i}.png", arr)
            expected.append((cls, i, arr))
    (tmp_path / "cat" / ".hidden").write_text("ignored")
    x, y, classes = load_image_folder(tmp_path)
    assert classes == ["ant", "cat", "zebra"]
    assert x.shape == (6, 3, 5, 7) and x.dtype == np.uint8 and y.dtype == np.int64
    order = sorted(expected, key=lambda e: (classes.index(e[0]), e[1]))
    np.testing.assert_array_equal(y, [classes.index(e[0]) for e in order])
    np.testing.assert_array_equal(x, np.stack([e[2].transpose(2, 0, 1) for e in order]))
    xg, _, _ = load_image_folder(tmp_path, grayscale=True)
    assert xg.shape == (6, 1, 5, 7)
    rgb = x.astype(np.float64)
    luma = (299 * rgb[:, 0] + 587 * rgb[:, 1] + 114 * rgb[:, 2]) / 1000      # ITU-R 601-2
    assert np.abs(xg[:, 0] - luma).max() <= 1


def test_image_folder_sizes(tmp_path):
    rng = np.random.default_rng(13)
    save_image(tmp_path / "a" / "1.png", rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
    save_image(tmp_path / "a" / "2.png", rng.integers(0, 256, (6, 6), dtype=np.uint8))
    save_image(tmp_path / "b" / "1.png", rng.integers(0, 256, (9, 4, 3), dtype=np.uint8))
    with raises_naming(tmp_path / "b" / "1.png", r"image is 9x4 \(HxW\) but .*1.png is 6x6"):
        load_image_folder(tmp_path)
    x, y, _ = load_image_folder(tmp_path, size=(3, 5))
    assert x.shape == (3, 3, 3, 5)
    np.testing.assert_array_equal(y, [0, 0, 1])
    assert load_image_folder(tmp_path, size=4)[0].shape == (3, 3, 4, 4)
    with pytest.raises(ValueError, match="size must be a positive int or an"):
        load_image_folder(tmp_path, size=(0, 3))


def test_image_folder_unreadable(tmp_path):
    rng = np.random.default_rng(14)
    save_image(tmp_path / "a" / "1.png", rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
    notes = tmp_path / "a" / "notes.txt"
    notes.write_text("not an image")
    with raises_naming(notes, "unreadable image"):
        load_image_folder(tmp_path)
    notes.unlink()
    big = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    save_image(tmp_path / "b" / "2.png", big)
    trunc = tmp_path / "b" / "2.png"
    trunc.write_bytes(trunc.read_bytes()[:200])
    with raises_naming(trunc, "unreadable image"):
        load_image_folder(tmp_path)
    with pytest.raises(ValueError, match="no class sub-folders"):
        load_image_folder(tmp_path / "a")
    (tmp_path / "empty").mkdir()
    trunc.unlink()
    with raises_naming(tmp_path / "b", "holds no image files"):
        load_image_folder(tmp_path)


@pytest.mark.parametrize("side", [9, 12])   # 81 px: warning (> 64); 144 px: error (> 128)
def test_image_folder_decompression_bomb_guard(tmp_path, monkeypatch, side):
    save_image(tmp_path / "a" / "bomb.png", np.zeros((side, side, 3), np.uint8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # the guard must not depend on the caller's filters
        with raises_naming(tmp_path / "a" / "bomb.png", "possible decompression bomb"):
            load_image_folder(tmp_path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert load_image_folder(tmp_path)[0].shape == (1, 3, side, side)


def test_an_image_whose_plugin_raises_anything_is_named(tmp_path, monkeypatch):
    """Pillow's DDS plugin raises NotImplementedError for pixel-format flags 0; it had
    escaped as a traceback without the file's name (DDS is not read by default)."""
    from convnet.data import folder
    monkeypatch.setattr(folder, "FORMATS", (*folder.FORMATS, "DDS"))
    save_image(tmp_path / "a" / "1.png", np.zeros((4, 4, 3), np.uint8))
    odd = tmp_path / "a" / "odd.dds"
    odd.write_bytes(b"DDS " + (124).to_bytes(4, "little") + bytes(120))
    with raises_naming(odd, "unreadable image: NotImplementedError"):
        load_image_folder(tmp_path)


def test_only_common_image_formats_are_opened(tmp_path):
    """Pillow opens a file by what it holds, whatever its name: an EPS file named .png had
    reached Pillow's Ghostscript call (an error only where Ghostscript is missing)."""
    eps = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n"
           b"newpath 0 0 moveto 8 8 lineto stroke\nshowpage\n")
    save_image(tmp_path / "a" / "1.png", np.zeros((4, 4, 3), np.uint8))
    save_image(tmp_path / "b" / "1.png", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "a" / "ps.png").write_bytes(eps)
    with raises_naming(tmp_path / "a" / "ps.png",
                       r"unreadable image: not a file of a format convnet reads \(AVIF, BMP"):
        load_image_folder(tmp_path)
    (tmp_path / "a" / "ps.png").unlink()
    (tmp_path / "a" / "inner").mkdir()           # inner folders: the formats' extensions
    (tmp_path / "a" / "inner" / "ps.eps").write_bytes(eps)
    assert load_image_folder(tmp_path)[0].shape == (2, 3, 4, 4)


@pytest.mark.parametrize("size", [(100_000, 1), (1, 100_000)])
def test_an_image_strip_over_the_side_cap_is_refused_from_its_header(tmp_path, size):
    """A 78 KB PNG of 80,000,000 x 1 pixels (under Pillow's bomb limit) took 1.7 GB to
    resize; a side over the cap is refused before anything is decoded. A wide panorama
    passes."""
    path = tmp_path / "a" / "strip.png"
    path.parent.mkdir()
    Image.new("L", size).save(path)
    for call in (lambda: read_headers([path]), lambda: decode_image(path, "RGB", (8, 8)),
                 lambda: load_image_folder(tmp_path, size=8)):
        with raises_naming(path, "MAX_SOURCE_SIDE"):
            call()
    path.unlink()
    Image.new("L", (20_000, 2)).save(tmp_path / "a" / "panorama.png")
    assert load_image_folder(tmp_path, size=8)[0].shape == (1, 3, 8, 8)


def half_bright(h, w, side):
    """An (H, W) image whose ``side`` half ("left", "top") is 255 and the rest 0."""
    arr = np.zeros((h, w), np.uint8)
    if side == "left":
        arr[:, : w // 2] = 255
    else:
        arr[: h // 2] = 255
    return arr


def test_an_image_is_read_turned_as_its_exif_orientation_says(tmp_path):
    """A phone photo taken upright is stored turned, with EXIF orientation 6: it is read
    as shown (its size as shown too), in a folder as by predict; the folder says so."""
    stored = half_bright(16, 24, "top")             # 24 wide, 16 high, bright on top
    exif = Image.Exif()
    exif[0x0112] = 6                                # shown turned 90 degrees clockwise
    path = tmp_path / "a" / "photo.jpg"
    path.parent.mkdir()
    Image.fromarray(stored).save(path, exif=exif, quality=95)
    save_image(tmp_path / "b" / "plain.png", half_bright(24, 16, "left"))
    [header] = read_headers([path])
    assert (header.height, header.width, header.orientation) == (24, 16, 6)
    arr, header = decode_image(path, "L")
    assert arr.shape == (24, 16, 1) and header.orientation == 6
    # turned clockwise, the stored top half is now the right half
    assert arr[:, 8:].mean() > 200 and arr[:, :8].mean() < 50, arr[..., 0]
    x, _, _ = load_image_folder(tmp_path, grayscale=True)
    assert x.shape == (2, 1, 24, 16)           # the same size as the upright image
    assert "turned as its EXIF orientation says" in header.describe()


def test_transparent_pixels_are_read_over_white(tmp_path):
    """Icons exported with a transparent background (stored as (0, 0, 0, 0)) had read as
    black squares; RGBA, LA and palette images with transparency are read over white."""
    rgba = np.zeros((6, 6, 4), np.uint8)
    rgba[2:4, 2:4] = (200, 0, 0, 255)               # an opaque red dot, transparent around
    save_image(tmp_path / "a" / "rgba.png", rgba)
    la = np.zeros((6, 6, 2), np.uint8)
    la[2:4, 2:4] = (50, 255)
    Image.fromarray(la, "LA").save(tmp_path / "a" / "la.png")
    palette = Image.fromarray(np.where(np.arange(36).reshape(6, 6) % 2, 1, 0).astype(np.uint8),
                              "P")
    palette.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    palette.save(tmp_path / "a" / "p.png", transparency=0)
    expected = {"rgba.png": (255, 200), "la.png": (255, 50), "p.png": (255, 10)}
    for name, (around, inside) in expected.items():
        arr, header = decode_image(tmp_path / "a" / name, "RGB")
        assert header.alpha and "transparent pixels over white" in header.describe()
        assert arr[0, 0, 0] == around, name
        assert arr[2, 2, 0] == inside if name != "p.png" else arr[0, 1, 0] == inside, name
    opaque, header = decode_image(tmp_path / "a" / "rgba.png", "RGB")
    rgba[..., 3] = 255
    save_image(tmp_path / "b" / "opaque.png", rgba)
    arr, header = decode_image(tmp_path / "b" / "opaque.png", "RGB")
    assert header.alpha and np.array_equal(arr, rgba[..., :3])   # opaque: unchanged


def test_a_sixteen_bit_transparent_value_is_read_over_white(tmp_path):
    """A 16-bit gray PNG's tRNS value had been dropped in the conversion to 8 bits, while
    the header said "transparent pixels over white"."""
    (tmp_path / "a").mkdir()
    Image.fromarray(np.array([[0, 257, 32768, 65535]], dtype=np.uint16)).save(
        tmp_path / "a" / "t.png", transparency=257)
    arr, header = decode_image(tmp_path / "a" / "t.png", "L")
    assert header.alpha and arr.ravel().tolist() == [0, 255, 128, 255]


@pytest.mark.parametrize("transparency", [None, 40000])
def test_a_large_sixteen_bit_image_is_scaled_in_strips_of_little_memory(tmp_path, transparency):
    """2,200 rows of 1,024 (several strips): every value as v * 255 / 65535 rounded, with
    NumPy's memory at the peak within 4 MB of the result's (whole-image uint32
    temporaries and a copy of the 16-bit image had taken about 10 bytes a pixel)."""
    from convnet.data.folder import _eight_bit
    pixels = np.random.default_rng(0).integers(0, 65536, (2200, 1024), dtype=np.uint16)
    pixels[-1, -1] = 40000
    options = {} if transparency is None else {"transparency": transparency}
    Image.fromarray(pixels).save(tmp_path / "big.png", **options)
    with Image.open(tmp_path / "big.png") as im:
        im.load()
        tracemalloc.start()
        try:
            scaled = _eight_bit(Image, im, tmp_path / "big.png")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    out = np.asarray(scaled)
    gray = out[..., 0] if transparency else out
    assert np.array_equal(gray, (pixels.astype(np.uint32) * 255 + 32767) // 65535)
    if transparency:
        assert np.array_equal(out[..., 1], np.where(pixels == transparency, 0, 255))
        assert out[-1, -1, 1] == 0
    assert peak < out.nbytes + (4 << 20), f"{peak:,} bytes at the peak"


def test_a_32_bit_integer_image_is_named(tmp_path):
    (tmp_path / "a").mkdir()
    Image.fromarray(np.array([[0, 70000]], dtype=np.int32)).save(tmp_path / "a" / "i.tif")
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "a" / "i.tif")) +
                       r": 32-bit integer images are not supported; save it with 8 or 16 "
                       r"bits per channel"):
        decode_image(tmp_path / "a" / "i.tif", "L")


@pytest.mark.parametrize("suffix", ["png", "tif", "jpg"])
def test_a_turned_image_has_its_shown_size_in_every_format(tmp_path, suffix):
    """Stored 30 wide and 20 tall, shown turned (EXIF orientation 6): 20 wide and 30 tall
    in its header and its pixels. Pillow's TIFF reader gives the turned size at open, and
    it had been turned a second time in the header (portraits squashed into landscape)."""
    from convnet.data.folder import read_headers
    pixels = np.zeros((20, 30, 3), np.uint8)
    pixels[0, 0] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(tmp_path / f"r.{suffix}", exif=exif)
    header, = read_headers([tmp_path / f"r.{suffix}"])
    arr, _ = decode_image(tmp_path / f"r.{suffix}", "RGB")
    assert (header.orientation, header.height, header.width) == (6, 30, 20)
    assert arr.shape == (30, 20, 3) and arr[0, 19, 0] > 200 and arr[29, 0, 0] < 50


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_an_uncompressed_turned_tiff_is_read_right_or_refused_by_name(tmp_path, dtype):
    """Pillow 13 gives such a TIFF's turned size at open but reads its pixels with rows
    and columns mixed up (the header and the pixels had disagreed, and a folder of them
    was squashed): the pixels come out as a photo viewer shows them, or the file is
    named with what to do."""
    from convnet.data.folder import read_headers
    pixels = (np.arange(20 * 30) % 251).astype(dtype).reshape(20, 30)
    Image.fromarray(pixels).save(tmp_path / "u.tif", tiffinfo={0x0112: 6})
    header, = read_headers([tmp_path / "u.tif"])
    assert (header.height, header.width) == (30, 20)
    try:
        arr, _ = decode_image(tmp_path / "u.tif", "L")
    except ValueError as err:
        assert str(err).startswith(f"{tmp_path / 'u.tif'}: Pillow ") and \
            "uncompressed TIFF, turned by its EXIF orientation (6), with its rows and " \
            "columns mixed up; save it compressed" in str(err)
    else:
        scaled = pixels if dtype == np.uint8 else (pixels.astype(np.uint32) * 255 + 32767) \
            // 65535
        np.testing.assert_array_equal(arr[:, :, 0], np.rot90(scaled, 3))


def test_a_sixteen_bit_image_is_turned_as_its_exif_orientation_says(tmp_path):
    """The 8-bit copy of a 16-bit image has no EXIF: turned after it, it was not turned."""
    (tmp_path / "a").mkdir()
    pixels = np.zeros((4, 8), np.uint16)
    pixels[0, 0] = 65535
    exif = Image.Exif()
    exif[0x0112] = 6                                   # turned 90 degrees clockwise
    Image.fromarray(pixels).save(tmp_path / "a" / "r.png", exif=exif)
    arr, header = decode_image(tmp_path / "a" / "r.png", "L")
    assert header.orientation == 6 and arr.shape == (8, 4, 1)
    assert np.argwhere(arr[:, :, 0] == 255).tolist() == [[0, 3]]


def test_an_image_that_cannot_be_converted_is_named(tmp_path):
    """Pillow's conversion errors had come out with no file named."""
    (tmp_path / "a").mkdir()
    Image.new("LAB", (4, 4)).save(tmp_path / "a" / "lab.tif")
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "a" / "lab.tif")) +
                       ": cannot read the image as L: ValueError: conversion from LAB"):
        decode_image(tmp_path / "a" / "lab.tif", "L")


def test_a_folder_says_what_reading_its_images_did(tmp_path):
    """EXIF orientation, transparency and frames are said once for the data set."""
    for i in range(10):
        save_image(tmp_path / "a" / f"{i}.png", np.full((8, 8), 20 * i, np.uint8))
        save_image(tmp_path / "b" / f"{i}.png", np.full((8, 8), 255 - 20 * i, np.uint8))
    rgba = np.full((8, 8, 4), 128, np.uint8)
    save_image(tmp_path / "a" / "alpha.png", rgba)
    frames = [Image.fromarray(np.full((8, 8), v, np.uint8)) for v in (10, 200)]
    frames[0].save(tmp_path / "b" / "anim.gif", save_all=True, append_images=frames[1:])
    splits = load_dataset(tmp_path)
    text = "\n".join(splits.notes)
    assert "1 of the 22 images have transparency: read over a white background" in text
    assert "1 of the 22 images have several frames (animated, or pages): each gives its " \
           "first" in text
    assert "EXIF" not in text


def test_images_in_folders_inside_a_class_folder_are_read(tmp_path):
    """As torchvision's ImageFolder and Keras read a class folder: every image below it,
    hidden and system files and folders left out, a link back up read once."""
    rng = np.random.default_rng(15)
    for rel in ("a/1.png", "a/2019/summer/2.png", "a/2019/3.png", "b/1.png"):
        save_image(tmp_path / rel, rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
    for rel in ("a/.hidden/4.png", "a/__MACOSX/._1.png", "__MACOSX/a/x.png",
                "a/@eaDir/1.png/thumb.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"not an image")
    for rel in ("a/Thumbs.db", "b/desktop.ini", "a/2019/.DS_Store"):
        (tmp_path / rel).write_bytes(b"junk")
    (tmp_path / "a" / "2019" / "loop").symlink_to(tmp_path / "a", target_is_directory=True)
    x, y, classes = load_image_folder(tmp_path)
    assert classes == ["a", "b"]
    assert x.shape == (4, 3, 4, 4) and list(y) == [0, 0, 0, 1]


def test_one_file_reached_twice_is_refused(tmp_path):
    """A class folder linked back at the data folder had read every other class's images
    again under its own name; a hard link in both train/ and test/ had put one image in
    both splits."""
    rng = np.random.default_rng(17)
    for rel in ("cats/1.png", "cats/2.png", "dogs/1.png", "dogs/2.png"):
        save_image(tmp_path / "one" / rel, rng.integers(0, 256, (4, 4), dtype=np.uint8))
    (tmp_path / "one" / "all").symlink_to(tmp_path / "one", target_is_directory=True)
    for load in (load_dataset, load_image_folder):
        with pytest.raises(ValueError, match=r"one/all/cats/1.png and .*one/cats/1.png are "
                                             r"one file \(through a link\): each image must "
                                             r"be in the data once; remove the link"):
            load(tmp_path / "one")
    (tmp_path / "one" / "all").unlink()
    assert load_image_folder(tmp_path / "one")[0].shape == (4, 3, 4, 4)
    two = tmp_path / "two"
    for split in ("train", "test"):
        for rel in ("cats/1.png", "dogs/1.png"):
            save_image(two / split / rel, rng.integers(0, 256, (4, 4), dtype=np.uint8))
    (two / "test" / "cats" / "1.png").unlink()
    os.link(two / "train" / "cats" / "1.png", two / "test" / "cats" / "1.png")
    with pytest.raises(ValueError, match=r"test/cats/1.png and .*train/cats/1.png are one "
                                         r"file"):
        load_dataset(two)


def test_every_unreadable_file_is_named_at_once(tmp_path):
    rng = np.random.default_rng(16)
    for i in range(3):
        save_image(tmp_path / "a" / f"{i}.png", rng.integers(0, 256, (4, 4), dtype=np.uint8))
        save_image(tmp_path / "b" / f"{i}.png", rng.integers(0, 256, (4, 4), dtype=np.uint8))
    (tmp_path / "a" / "empty.jpg").write_bytes(b"")
    (tmp_path / "b" / "notes.txt").write_text("not an image")
    (tmp_path / "b" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(ValueError) as err:
        load_dataset(tmp_path)
    text = str(err.value)
    assert text.startswith("3 of 9 files are not images convnet can read (remove or fix "
                           "them): "), text
    assert f"{tmp_path / 'a' / 'empty.jpg'}: unreadable image: the file is empty (0 bytes)" \
        in text
    assert f"{tmp_path / 'b' / 'notes.txt'}: unreadable image" in text
    assert f"{tmp_path / 'b' / 'gone.png'}: unreadable image: FileNotFoundError" in text
    # data that shows up only when decoded (a truncated file) is collected too
    for rel in ("a/empty.jpg", "b/notes.txt", "b/gone.png"):
        (tmp_path / rel).unlink()
    for i in (1, 2):
        path = tmp_path / "a" / f"big{i}.png"
        save_image(path, rng.integers(0, 256, (40, 40), dtype=np.uint8))
        path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ValueError, match=r"2 of 8 files are not images .*big1.png: "
                                         r"unreadable image.*big2.png: unreadable image"):
        load_image_folder(tmp_path, size=4)


def test_class_names_typed_on_one_system_and_copied_from_another_match(tmp_path):
    """macOS stores "café" decomposed (e + combining accent): train/ and test/ made on two
    systems had been refused with two lists that look the same."""
    import unicodedata
    rng = np.random.default_rng(17)
    for split, form in (("train", "NFC"), ("test", "NFD")):
        for name in ("café", "thé"):
            for i in range(3):
                save_image(tmp_path / split / unicodedata.normalize(form, name) / f"{i}.png",
                           rng.integers(0, 256, (4, 4), dtype=np.uint8))
    splits = load_dataset(tmp_path)
    assert splits.classes == ["café", "thé"] and len(splits.test[1]) == 6


def test_eval_matches_class_names_and_file_order_in_either_unicode_form(tmp_path):
    """A model trained on a Mac's folder (decomposed names) had refused the same folder
    copied to Linux ("trained on ['café', 'thé'] but ... has ['café', 'thé']"), and the
    files of a class sorted by their bytes could come in another order, and so another
    held-out split, in the other form."""
    import unicodedata

    from convnet.models import from_notation
    from convnet.train.inference import evaluation_data
    for form in ("NFC", "NFD"):
        for name in ("café", "thé"):
            for i, first in enumerate("éeëfàaçcÉEbd"):
                save_image(tmp_path / form / unicodedata.normalize(form, name) /
                           f"{unicodedata.normalize(form, first)}{i}.png",
                           np.full((4, 4), 10 * i, np.uint8))
    model = from_notation("INPUT 4x4x1 -> FC 2")
    model.info = {"classes": [unicodedata.normalize("NFD", c) for c in ("café", "thé")]}
    x_nfc = evaluation_data(model, tmp_path / "NFC")[0]
    x_nfd = evaluation_data(model, tmp_path / "NFD")[0]
    np.testing.assert_array_equal(x_nfc, x_nfd)
    files = [load_image_folder(tmp_path / form)[0][:, 0, 0, 0].tolist()
             for form in ("NFC", "NFD")]
    assert files[0] == files[1]


def test_test_images_identical_to_training_images_are_said(tmp_path, monkeypatch):
    """A test/ folder holding copies of training images measures nothing new; nor does a
    photo saved twice in one folder whose split puts one copy on each side."""
    rng = np.random.default_rng(18)
    images = rng.integers(0, 256, (24, 6, 6), dtype=np.uint8)
    for i, arr in enumerate(images):
        save_image(tmp_path / "two" / "train" / "ab"[i % 2] / f"{i}.png", arr)
    for i in (0, 1, 2, 3):     # 3 copies and one new image
        arr = images[i] if i < 3 else rng.integers(0, 256, (6, 6), dtype=np.uint8)
        save_image(tmp_path / "two" / "test" / "ab"[i % 2] / f"{i}.png", arr)
    notes = load_dataset(tmp_path / "two").notes
    assert "3 of the 4 test images are identical to training images: their accuracy is " \
           "not that on new images; remove the copies" in notes, notes
    for i, arr in enumerate(images):
        save_image(tmp_path / "one" / "ab"[i % 2] / f"{i}.png", arr)
        save_image(tmp_path / "one" / "ab"[i % 2] / f"{i}-copy.png", arr)
    splits = load_dataset(tmp_path / "one", test_fraction=0.25)
    same = [n for n in splits.notes if "identical to training images" in n]
    x_train = splits.train[0].reshape(len(splits.train[0]), -1)
    x_test = splits.test[0].reshape(len(splits.test[0]), -1)
    expected = sum(any((t == r).all() for r in x_train) for t in x_test)   # the naive count
    assert expected > 0 and same == [f"{expected} of the {len(x_test)} test images are "
                                     f"identical to training images: their accuracy is not "
                                     f"that on new images; remove the copies"], splits.notes
    # fingerprints only find candidates: images are compared whole, so equal fingerprints
    # of different images count nothing
    monkeypatch.setattr("convnet.data.fingerprints", lambda x: np.zeros(len(x), np.uint64))
    assert same == [n for n in load_dataset(tmp_path / "one", test_fraction=0.25).notes
                    if "identical to training images" in n]


def test_a_drawn_split_holds_no_copy_of_the_images(tmp_path):
    """A test split drawn from one folder had been indexed out of the decoded images
    (x[kept], x[held]: a second copy), and the look for copies of training images sorted
    copies of both: 4x the data at its peak."""
    rng = np.random.default_rng(23)
    for i in range(48):
        save_image(tmp_path / "ab"[i % 2] / f"{i}.png",
                   rng.integers(0, 256, (128, 128, 3), dtype=np.uint8))
    splits, peak = traced(lambda: load_dataset(tmp_path, test_fraction=0.25))
    final = splits.train[0].nbytes + splits.test[0].nbytes
    assert splits.test[0].shape == (12, 3, 128, 128) and peak < 1.6 * final, peak / final


def test_a_class_too_small_to_hold_out_a_test_image_is_named(tmp_path):
    rng = np.random.default_rng(19)
    for cls, count in (("many", 20), ("few", 3)):
        for i in range(count):
            save_image(tmp_path / cls / f"{i}.png", rng.integers(0, 256, (4, 4), dtype=np.uint8))
    notes = load_dataset(tmp_path).notes
    assert "1 class(es) too small for 10% to hold out an image, not tested: 'few' (3 " \
           "images)" in notes, notes


def test_folders_as_they_come_from_other_systems(tmp_path):
    """From a review of the first version of the above: a __MACOSX/ beside train/ and
    test/ (the split had been lost: 'train' and 'test' became the classes); a GIF whose
    later frames are damaged (counting frames had raised IndexError); annotations in a
    folder beside the photos (not images: left alone); a class folder nested deeper than
    Python's recursion (no RecursionError); the first file unreadable (named with the
    others); accented names whose two Unicode forms sort apart."""
    import io
    import unicodedata
    rng = np.random.default_rng(20)

    def image(path):
        save_image(path, rng.integers(0, 256, (4, 4), dtype=np.uint8))
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            for i in range(3):
                image(tmp_path / "mac" / split / cls / f"{i}.png")
    image(tmp_path / "mac" / "__MACOSX" / "train" / "cat" / "._0.png")
    splits = load_dataset(tmp_path / "mac")
    assert splits.classes == ["cat", "dog"] and len(splits.test[1]) == 6

    frames = [Image.fromarray(np.full((8, 8), v, np.uint8)) for v in (0, 100, 200)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    gif = tmp_path / "gif" / "a" / "anim.gif"
    gif.parent.mkdir(parents=True)
    gif.write_bytes(buffer.getvalue()[:124])           # the first frame whole, then cut
    assert read_headers([gif])[0].frames == 1 and decode_image(gif, "L")[0].shape == (8, 8, 1)

    for cls in ("a", "b"):
        image(tmp_path / "notes" / cls / "0.png")
    (tmp_path / "notes" / "a" / "annotations").mkdir()
    (tmp_path / "notes" / "a" / "annotations" / "0.xml").write_text("<box/>")
    assert load_image_folder(tmp_path / "notes")[0].shape == (2, 3, 4, 4)

    deep = tmp_path / "deep" / "a"
    image(tmp_path / "deep" / "b" / "0.png")
    image(deep / "0.png")
    os.makedirs(deep / os.path.join(*["d"] * 40))
    with raises_naming(deep, r"folders nest more than 32 deep in the class folder"):
        load_image_folder(tmp_path / "deep")

    for name in ("0.png", "1.png"):
        image(tmp_path / "first" / "a" / name)
        image(tmp_path / "first" / "b" / name)
    for rel in ("a/0.png", "b/1.png"):
        (tmp_path / "first" / rel).write_bytes(b"junk")
    with pytest.raises(ValueError, match=r"^2 of 4 files .*a/0.png.*b/1.png"):
        load_image_folder(tmp_path / "first")

    for split, form in (("train", "NFC"), ("test", "NFD")):
        for name in ("éclair", "flan"):
            for i in range(3):
                image(tmp_path / "nfc" / split / unicodedata.normalize(form, name) / f"{i}.png")
    splits = load_dataset(tmp_path / "nfc")
    assert [unicodedata.normalize("NFC", c) for c in splits.classes] == ["flan", "éclair"]
    assert sorted(np.bincount(splits.test[1]).tolist()) == [3, 3]


def test_predict_says_what_reading_each_image_did(tmp_path):
    from convnet.train.inference import load_images
    rgba = np.zeros((6, 6, 4), np.uint8)
    save_image(tmp_path / "icon.png", rgba)
    save_image(tmp_path / "plain.png", np.zeros((4, 4), np.uint8))
    x, notes = load_images([tmp_path / "icon.png", tmp_path / "plain.png"], (1, 4, 4))
    assert notes == [f"{tmp_path / 'icon.png'}: 6x6 RGBA (transparent pixels over white), "
                     f"converted to 4x4 L (bilinear), the model's input"]
    assert (x[0] == 255).all() and (x[1] == 0).all()
    save_image(tmp_path / "rgb.png", np.zeros((4, 4, 3), np.uint8))     # mode only
    _, notes = load_images([tmp_path / "rgb.png"], (1, 4, 4))
    assert notes == [f"{tmp_path / 'rgb.png'}: 4x4 RGB, converted to 4x4 L, the model's "
                     f"input"]


def test_predict_names_the_first_ten_converted_images_and_counts_the_rest(tmp_path):
    """400 photos had made 400 lines of notes."""
    from convnet.train.inference import MAX_IMAGE_NOTES, load_images
    paths = []
    for i in range(MAX_IMAGE_NOTES + 5):
        paths.append(tmp_path / f"{i}.png")
        save_image(paths[-1], np.zeros((6, 6), np.uint8))
    _, notes = load_images(paths, (1, 4, 4))
    assert len(notes) == MAX_IMAGE_NOTES + 1
    assert notes[-1] == "... and 5 more images converted to 4x4 L, the model's input"


def test_predict_names_a_folder_given_as_an_image(tmp_path):
    (tmp_path / "pics").mkdir()
    with raises_naming(tmp_path / "pics", r"a folder, not an image file: give the images "
                                          r"in it \(such as .*pics/\*\)"):
        decode_image(tmp_path / "pics", "L")


def test_image_folder_without_pillow(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match="needs Pillow .*pip install Pillow"):
        load_image_folder(tmp_path)


# -- digits --------------------------------------------------------------------------------
def test_digits_file():
    x, y = read_digits()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == np.uint8 and y.dtype == np.int64
    assert x.min() == 0 and x.max() == 16
    # scikit-learn's documented class counts for load_digits().
    np.testing.assert_array_equal(np.bincount(y), [178, 182, 177, 183, 181, 182, 181, 179,
                                                   174, 180])
    with np.load(Path(__file__).parents[1] / "convnet/data/digits.npz",
                 allow_pickle=False) as f:
        assert sorted(f.files) == ["images", "labels"]
    assert (Path(__file__).parents[1] / "convnet/data/DIGITS_LICENSE.txt").is_file()


def test_digits_split_is_fixed_and_stratified():
    data = load_digits()
    (xtr, ytr), (xte, yte) = data["train"], data["test"]
    x, y = read_digits()
    assert len(ytr) + len(yte) == 1797 and data["classes"] == list(DIGITS_CLASSES)
    counts = np.bincount(y)
    np.testing.assert_array_equal(np.bincount(yte), np.rint(counts * 0.2))
    mask = digits_test_mask(y)
    np.testing.assert_array_equal(xte, x[mask])
    np.testing.assert_array_equal(xtr, x[~mask])
    for k in range(10):   # the test images are the last ones of each class, in file order
        idx = np.flatnonzero(y == k)
        assert mask[idx].tolist() == sorted(mask[idx].tolist())
    np.testing.assert_array_equal(load_digits()["test"][0], xte)


# -- transforms ----------------------------------------------------------------------------
def test_to_float():
    x = np.array([[0, 8, 16]], dtype=np.uint8)
    out = to_float(x, 16)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[0, 0.5, 1]])
    assert to_float(x, 16, dtype=np.float64).dtype == np.float64
    assert to_float(np.array([255], np.uint8))[0] == 1
    with pytest.raises(ValueError, match="integer array"):
        to_float(out, 16)
    with pytest.raises(ValueError, match="scale must be a positive"):
        to_float(x, 0)


def test_normalize_fit_takes_the_data_in_blocks(monkeypatch):
    """fit made two float64 copies of the whole training set (at --image-size 512, 80%
    of a 7 GB peak): now blocks of FIT_VALUES values, with the same statistics."""
    x = np.random.default_rng(0).normal(100, 3, size=(300, 3, 16, 16)).astype(np.float32)
    x64 = x.astype(np.float64)
    monkeypatch.setattr(Normalize, "FIT_VALUES", 7 * 3 * 16 * 16)      # blocks of 7
    mean, std = Normalize().fit(x)
    np.testing.assert_allclose(mean, x64.mean(axis=(0, 2, 3)), rtol=1e-14)
    np.testing.assert_allclose(std, x64.std(axis=(0, 2, 3)), rtol=1e-12)
    monkeypatch.undo()
    peak = traced(Normalize().fit, np.zeros((64, 3, 256, 256), np.float32))[1]
    assert peak < 3 * Normalize.FIT_VALUES * 8, peak          # the set is 100 MB in float64


@pytest.mark.parametrize("seed", range(4))
def test_normalize(seed):
    rng = np.random.default_rng(seed)
    c = int(rng.integers(1, 4))
    x = rng.normal(3, 2, size=(8, c, 5, 4)).astype(np.float32)
    x[:, 0] = 7                                                       # constant channel
    norm = Normalize()
    mean, std = norm.fit(x)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(mean, x64.mean(axis=(0, 2, 3)))
    expected_std = x64.std(axis=(0, 2, 3))
    expected_std[0] = 1
    np.testing.assert_allclose(std, expected_std)
    out = norm(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    if c > 1:
        np.testing.assert_allclose(out[:, 1:].std(axis=(0, 2, 3)), 1, rtol=1e-5)
    given = Normalize(mean.tolist(), std.tolist())
    np.testing.assert_allclose(given(x.astype(np.float64)), norm(x), rtol=1e-5, atol=1e-6)
    assert norm.get_config()["mean"] == mean.tolist()
    with pytest.raises(ValueError, match=f"statistics are for {c} channels, got {c + 1}"):
        norm(np.zeros((1, c + 1, 2, 2), np.float32))
    with pytest.raises(ValueError, match="convert first with to_float"):
        norm(np.zeros((1, c, 2, 2), np.uint8))
    with pytest.raises(ValueError, match="call fit"):
        Normalize()(x)


def crop_reference(x, padding, dy, dx, oh, ow):
    """One sample at a time: the loop the vectorized crop must agree with."""
    xp = np.pad(x, ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2))
    return np.stack([xp[i, :, dy[i]:dy[i] + oh, dx[i]:dx[i] + ow] for i in range(len(x))])


@pytest.mark.parametrize("seed", range(20))
def test_random_crop_matches_loop(seed):
    rng = np.random.default_rng(seed)
    n, c, h, w = (int(v) for v in rng.integers(1, 7, size=4))
    padding = (int(rng.integers(0, 4)), int(rng.integers(0, 4)))
    size = None if seed % 2 else (int(rng.integers(1, h + 1)), int(rng.integers(1, w + 1)))
    x = rng.integers(0, 256, size=(n, c, h, w), dtype=np.uint8)
    oh, ow = (h, w) if size is None else size
    out = random_crop(x, padding, np.random.default_rng(seed + 100), size=size)
    draw = np.random.default_rng(seed + 100)
    dy = draw.integers(0, h + 2 * padding[0] - oh + 1, size=n)
    dx = draw.integers(0, w + 2 * padding[1] - ow + 1, size=n)
    assert out.shape == (n, c, oh, ow) and out.dtype == x.dtype
    np.testing.assert_array_equal(out, crop_reference(x, padding, dy, dx, oh, ow))


def test_random_crop_covers_all_offsets_and_checks_args():
    x = np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3).repeat(400, axis=0)
    out = random_crop(x, 1, np.random.default_rng(0))
    corners = {tuple(o[0].ravel()) for o in out}
    assert len(corners) == 9                   # every one of the (2P+1)^2 offsets is used
    with pytest.raises(ValueError, match="rng must be an np.random.Generator"):
        random_crop(x, 1, rng=None)
    with pytest.raises(ValueError, match="larger than the padded input"):
        random_crop(x, 1, np.random.default_rng(0), size=(6, 3))
    with pytest.raises(ValueError, match=r"4-D \(N, C, H, W\)"):
        random_crop(x[0], 1, np.random.default_rng(0))


def test_random_crop_fills_each_channel_as_asked():
    """fill: a number or one per channel, as torchvision's RandomCrop(fill=)."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((30, 3, 4, 5)).astype(np.float32)
    fill = np.array([-1.5, 2.0, 0.25])
    out = random_crop(x, 2, np.random.default_rng(9), fill=fill)
    draw = np.random.default_rng(9)
    dy, dx = draw.integers(0, 5, size=30), draw.integers(0, 5, size=30)
    xp = np.stack([np.pad(x[:, ch], ((0, 0), (2, 2), (2, 2)), constant_values=fill[ch])
                   for ch in range(3)], axis=1)
    np.testing.assert_array_equal(out, crop_reference(xp, (0, 0), dy, dx, 4, 5))
    assert (out == np.float32(-1.5)).any() and out.dtype == np.float32
    scalar = random_crop(x, 2, np.random.default_rng(9), fill=7)
    np.testing.assert_array_equal(scalar == 7, crop_reference(np.ones_like(x), (2, 2), dy, dx,
                                                               4, 5) == 0)
    with pytest.raises(ValueError, match=r"fill must be a number or one per channel \(3\), "
                       r"got shape \(2,\)"):
        random_crop(x, 1, rng, fill=[1, 2])
    # One large image: the padding's work split between threads by channel had failed to
    # broadcast the per-channel fill ("could not broadcast ... (3,1,1) into (1,2,...)").
    one = rng.standard_normal((1, 3, 300, 300)).astype(np.float32)
    out = random_crop(one, 100, np.random.default_rng(1), fill=fill)
    draw = np.random.default_rng(1)
    dy, dx = draw.integers(0, 201, size=1), draw.integers(0, 201, size=1)
    xp = np.stack([np.pad(one[:, ch], ((0, 0), (100, 100), (100, 100)),
                          constant_values=fill[ch]) for ch in range(3)], axis=1)
    np.testing.assert_array_equal(out, crop_reference(xp, (0, 0), dy, dx, 300, 300))


def test_random_flip():
    rng = np.random.default_rng(15)
    x = rng.integers(0, 256, size=(300, 2, 3, 4), dtype=np.uint8)
    out = random_flip(x, np.random.default_rng(1))
    flipped = np.random.default_rng(1).random(300) < 0.5
    np.testing.assert_array_equal(out[flipped], x[flipped][..., ::-1])
    np.testing.assert_array_equal(out[~flipped], x[~flipped])
    assert 100 < flipped.sum() < 200
    np.testing.assert_array_equal(random_flip(x, rng, p=0), x)
    np.testing.assert_array_equal(random_flip(x, rng, p=1), x[..., ::-1])
    with pytest.raises(ValueError, match="p must be a probability"):
        random_flip(x, rng, p=1.5)


# -- resize --------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64])
@pytest.mark.parametrize("size, out_hw", [(28, (28, 28)), ((5, 12), (5, 12)), ([3, 2], (3, 2)),
                                          ((7, 6), (7, 6)), (np.int64(4), (4, 4))])
def test_resize_shapes_and_dtypes(dtype, size, out_hw):
    rng = np.random.default_rng(30)
    x = (rng.integers(0, 256, (3, 2, 7, 6)) if dtype == np.uint8
         else rng.random((3, 2, 7, 6))).astype(dtype)
    out = resize(x, size)
    assert out.shape == (3, 2, *out_hw) and out.dtype == dtype
    assert out is not x and not np.shares_memory(out, x)
    if out_hw == (7, 6):
        np.testing.assert_array_equal(out, x)                 # same size: an exact copy
    assert resize(x[:0], size).shape == (0, 2, *out_hw)


@pytest.mark.parametrize("dtype, value", [(np.uint8, 0), (np.uint8, 16), (np.uint8, 255),
                                          (np.float32, -1.5), (np.float64, 0.3)])
@pytest.mark.parametrize("size", [(28, 28), (3, 2), (9, 13)])
def test_resize_keeps_a_constant_image_constant(dtype, value, size):
    x = np.full((2, 3, 8, 8), value, dtype=dtype)
    np.testing.assert_allclose(resize(x, size), np.full((2, 3, *size), value, dtype=dtype),
                               rtol=1e-6)


def test_resize_upscaled_values_lie_between_the_corners():
    x = np.array([[10, 200], [60, 120]], dtype=np.uint8).reshape(1, 1, 2, 2)
    out = resize(x, (8, 8))[0, 0]                              # (8, 8)
    assert out.min() >= 10 and out.max() <= 200
    # Half-pixel centres: the outer 2x2 blocks of the 8x8 grid sit on or beyond the input
    # pixel centres, so they repeat the corner values; the middle is a blend.
    np.testing.assert_array_equal(out[:2, :2], 10)
    np.testing.assert_array_equal(out[-2:, -2:], 120)
    np.testing.assert_array_equal(out[:2, -2:], 200)
    np.testing.assert_array_equal(out[-2:, :2], 60)
    assert 10 < out[3, 3] < 200 and len(np.unique(out)) > 10
    # One row by hand: centres at -0.25, 0.25, 0.75, 1.25 of [0, 4] -> 0, 1, 3, 4.
    row = np.array([0, 4], dtype=np.uint8).reshape(1, 1, 1, 2)
    np.testing.assert_array_equal(resize(row, (1, 4))[0, 0, 0], [0, 1, 3, 4])
    np.testing.assert_allclose(resize(row.astype(np.float64), (1, 4))[0, 0, 0], [0, 1, 3, 4])


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("size", [(28, 28), (17, 9), (3, 4), (5, 20)])
def test_resize_matches_torch_bilinear(seed, size):
    """Pillow's bilinear = torch's interpolate(align_corners=False), antialiased to shrink."""
    import torch
    import torch.nn.functional as F

    x = np.random.default_rng(seed).random((2, 3, 8, 11)).astype(np.float32)
    shrink = size[0] < 8 or size[1] < 11
    ref = F.interpolate(torch.from_numpy(x), size=size, mode="bilinear", align_corners=False,
                        antialias=shrink).numpy()
    np.testing.assert_allclose(resize(x, size), ref, atol=2e-6)


def test_resize_digits_keeps_the_pixel_scale():
    data = load_dataset("digits", image_size=28)
    (xtr, ytr), (xte, yte) = data.train, data.test
    assert xtr.shape == (1438, 1, 28, 28) and xte.shape == (359, 1, 28, 28)
    assert xtr.dtype == np.uint8 and data.scale == 16 and data.input_shape == (1, 28, 28)
    assert xtr.min() == 0 and xtr.max() == 16 and xte.max() <= 16
    assert len(np.unique(xtr)) == 17                         # every level 0..16 is used
    small = load_dataset("digits")
    np.testing.assert_array_equal(ytr, small.train[1])
    np.testing.assert_array_equal(yte, small.test[1])
    np.testing.assert_array_equal(xtr, resize(small.train[0], 28))
    # The mean brightness survives the 8x8 -> 28x28 upscaling within a rounding step.
    assert abs(to_float(xtr, 16).mean() - to_float(small.train[0], 16).mean()) < 0.5 / 16
    assert load_dataset("digits", image_size=(8, 8)).train[0].shape == (1438, 1, 8, 8)
    assert load_dataset("digits", image_size=[4, 6]).input_shape == (1, 4, 6)


def test_load_dataset_resizes_idx_and_cifar_directories(tmp_path):
    rng = np.random.default_rng(31)
    idx = make_idx_dir(tmp_path / "idx", rng, hw=(5, 4))
    data = load_dataset(tmp_path / "idx", image_size=(10, 8))
    assert data.train[0].shape == (7, 1, 10, 8) and data.test[0].shape == (3, 1, 10, 8)
    np.testing.assert_array_equal(data.train[0], resize(idx["train"][0][:, None], (10, 8)))
    np.testing.assert_array_equal(data.test[1], idx["test"][1])
    write_cifar(tmp_path / "c10" / "cifar-10-batches-bin", 10, "binary", rng)
    c10 = load_dataset(tmp_path / "c10", image_size=16)
    assert c10.train[0].shape == (15, 3, 16, 16) and c10.test[0].shape[1:] == (3, 16, 16)
    assert c10.scale == 255


def test_an_idx_folders_classes_follow_its_labels(tmp_path):
    """IDX files name no classes: a folder named for Fashion-MNIST gets its names, any
    other the labels' own, "0".."9" or up to the largest (EMNIST's 26 letters had been
    refused as out of range [0, 10))."""
    rng = np.random.default_rng(32)
    letters = make_idx_dir(tmp_path / "letters", rng, n=(60, 20), num_classes=26)
    data = load_dataset(tmp_path / "letters")
    top = max(int(y.max()) for _, y in letters.values())
    assert top >= 10 and data.classes == [str(i) for i in range(top + 1)]
    np.testing.assert_array_equal(data.train[1], letters["train"][1])
    make_idx_dir(tmp_path / "few", rng, num_classes=3)
    assert load_dataset(tmp_path / "few").classes == [str(i) for i in range(10)]
    make_idx_dir(tmp_path / "my-fashion", rng, num_classes=26)
    with pytest.raises(ValueError, match=r"out of range \[0, 10\)"):
        load_dataset(tmp_path / "my-fashion")
    make_idx_dir(tmp_path / "my-fashion", rng)
    assert load_dataset(tmp_path / "my-fashion").classes[-1] == "Ankle boot"


@pytest.mark.parametrize("size", [0, -3, (28,), (2, 3, 4), (28, 0), 2.5, "28", True, None])
def test_resize_bad_sizes(size):
    x = np.zeros((1, 1, 4, 4), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"resize: size must be a positive int or a pair"):
        resize(x, size)


@pytest.mark.parametrize("size", [0, (28, -1), "28x28", (1, 2, 3)])
def test_load_dataset_bad_image_size(size):
    with pytest.raises(ValueError, match=r"load_dataset: image_size must be a positive int"):
        load_dataset("digits", image_size=size)


def test_resize_bad_arrays(monkeypatch):
    with pytest.raises(ValueError, match=r"resize: expected a 4-D \(N, C, H, W\) array, got "
                                         r"shape \(4, 4\)"):
        resize(np.zeros((4, 4), dtype=np.uint8), 8)
    with pytest.raises(ValueError, match="resize: x must be uint8, float32 or float64, got "
                                         "dtype int64"):
        resize(np.zeros((1, 1, 4, 4), dtype=np.int64), 8)
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match=r"resize needs Pillow, the 'images' extra: "
                                          r"pip install 'convnet\[images\]'"):
        resize(np.zeros((1, 1, 4, 4), dtype=np.uint8), 8)


# -- splitting and batching ----------------------------------------------------------------
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("stratify", [True, False])
def test_train_val_split(seed, stratify):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 5, size=int(rng.integers(20, 200)))
    x = np.arange(y.size)[:, None] * np.ones((1, 3))                   # row i holds i
    (xt, yt), (xv, yv) = train_val_split(x, y, 0.25, np.random.default_rng(seed), stratify)
    ids = np.concatenate([xt[:, 0], xv[:, 0]]).astype(int)
    np.testing.assert_array_equal(np.sort(ids), np.arange(y.size))     # a partition
    np.testing.assert_array_equal(y[xt[:, 0].astype(int)], yt)
    assert np.all(np.diff(xt[:, 0]) > 0) and np.all(np.diff(xv[:, 0]) > 0)  # order kept
    if stratify:
        np.testing.assert_array_equal(np.bincount(yv, minlength=5),
                                      np.rint(np.bincount(y, minlength=5) * 0.25))
    else:
        assert len(yv) == round(0.25 * y.size)
    again = train_val_split(x, y, 0.25, np.random.default_rng(seed), stratify)
    np.testing.assert_array_equal(again[1][0], xv)                     # seeded: reproducible


def test_train_val_split_is_random_within_class():
    y = np.zeros(100, dtype=np.int64)
    x = np.arange(100)[:, None]
    picks = [train_val_split(x, y, 0.1, np.random.default_rng(s))[1][0] for s in range(2)]
    assert picks[0].shape == picks[1].shape == (10, 1)
    assert not np.array_equal(picks[0], picks[1])          # other seed, other samples
    assert picks[0].max() > 10                             # not simply the first ones
    with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 1\)"):
        train_val_split(y[:, None], y, 1.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="same N"):
        train_val_split(y[:5, None], y, 0.1, np.random.default_rng(0))


@pytest.mark.parametrize("n, bs, drop_last", [(10, 3, False), (10, 3, True), (9, 3, True),
                                               (1, 4, False), (7, 7, False)])
def test_batches(n, bs, drop_last):
    x = np.arange(n)[:, None, None, None] * np.ones((1, 1, 2, 2), np.float32)
    y = np.arange(n)
    got = list(batches(x, y, bs, np.random.default_rng(0), drop_last=drop_last))
    expected = n // bs if drop_last else -(-n // bs)
    assert len(got) == expected
    assert all(len(yb) == bs for yb in (b[1] for b in got[:-1]))
    seen = np.concatenate([yb for _, yb in got]) if got else np.array([], int)
    for xb, yb in got:
        np.testing.assert_array_equal(xb[:, 0, 0, 0], yb)             # pairs stay together
    assert len(set(seen.tolist())) == len(seen)
    if not drop_last:
        np.testing.assert_array_equal(np.sort(seen), y)
    plain = np.concatenate([yb for _, yb in batches(x, y, bs, shuffle=False)])
    np.testing.assert_array_equal(plain, y)


def test_batches_shuffle_needs_generator():
    x, y = np.zeros((50, 1)), np.arange(50)
    with pytest.raises(ValueError, match=r"shuffle=True needs rng=np.random.default_rng"):
        batches(x, y, 2)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        batches(x, y, 0, shuffle=False)
    rng = np.random.default_rng(0)
    first = np.concatenate([b[1] for b in batches(x, y, 2, rng)])
    second = np.concatenate([b[1] for b in batches(x, y, 2, rng)])
    np.testing.assert_array_equal(np.sort(first), y)
    assert not np.array_equal(first, y)                    # shuffled
    assert not np.array_equal(first, second)               # a new order every epoch


# -- load_dataset --------------------------------------------------------------------------
def test_load_dataset_names(tmp_path, fashion):
    digits = load_dataset("digits")
    assert isinstance(digits, DataSplits) and digits.scale == 16
    assert digits.input_shape == (1, 8, 8) and digits.num_classes == 10
    assert "train=1438, test=359" in repr(digits)
    fm = load_dataset("fashion-mnist", root=FASHION_DIR)
    assert fm.train[0].shape == fashion["train"][0].shape and fm.scale == 255
    assert fm.classes[0] == "T-shirt/top"
    write_cifar(tmp_path / "cifar-100-python", 100, "python", np.random.default_rng(16))
    c100 = load_dataset("CIFAR100", root=tmp_path)
    assert c100.num_classes == 100 and c100.input_shape == (3, 32, 32)
    write_cifar(tmp_path / "cifar-10-batches-bin", 10, "binary", np.random.default_rng(17))
    assert load_dataset("cifar10", root=tmp_path).train[0].shape == (15, 3, 32, 32)
    with pytest.raises(ValueError, match="unknown data set 'imagenet': no folder .*imagenet "
                                         "is there, and it is not one of "
                                         + ", ".join(DATASETS)):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="download=True is supported for 'fashion-mnist'"):
        load_dataset("cifar10", download=True)
    # The digits are embedded and a folder is read where it is: a root or a download for
    # them had been ignored without a word (a forgotten --data fashion-mnist).
    with pytest.raises(ValueError, match=r"supported for 'fashion-mnist' only \(the CLI's "
                                         r"--download\), got 'digits'$"):
        load_dataset("digits", download=True)
    with pytest.raises(ValueError, match=r"root \(--data-root\) is where a named data set's "
                                         r"files are \(fashion-mnist, mnist, cifar10, cifar100, "
                                         r"cifar100-coarse\); 'digits' has none: the digits are "
                                         r"embedded"):
        load_dataset("digits", root=tmp_path)
    with pytest.raises(ValueError, match="has none: a folder is read where it is"):
        load_dataset(str(tmp_path), root=tmp_path)
    with pytest.raises(ValueError, match=r"supported for 'fashion-mnist' only \(the CLI's "
                                         r"--download\), got '[^']*'$"):   # no --data-root
        load_dataset(str(tmp_path), download=True)                     # advice for a folder


def test_load_dataset_directories(tmp_path):
    rng = np.random.default_rng(18)
    idx = make_idx_dir(tmp_path / "my-fashion", rng, gz=True)
    data = load_dataset(tmp_path / "my-fashion")
    np.testing.assert_array_equal(data.test[1], idx["test"][1])
    assert data.classes == list(FASHION_MNIST_CLASSES) and data.name == "my-fashion"
    make_idx_dir(tmp_path / "FashionMNIST" / "raw", rng, gz=False)    # torchvision's layout
    data = load_dataset(tmp_path / "FashionMNIST" / "raw")
    assert data.classes == list(FASHION_MNIST_CLASSES) and data.name == "FashionMNIST"
    write_cifar(tmp_path / "c10" / "cifar-10-batches-py", 10, "python", rng)
    assert load_dataset(str(tmp_path / "c10")).num_classes == 10
    for split in ("train", "test"):
        for cls in ("a", "b"):
            save_image(tmp_path / "pets" / split / cls / "0.png",
                       rng.integers(0, 256, (4, 6, 3), dtype=np.uint8))
    pets = load_dataset(tmp_path / "pets")
    assert pets.classes == ["a", "b"] and pets.test[0].shape == (2, 3, 4, 6)
    with raises_naming(tmp_path / "pets" / "train", "too few to hold out 10% of each class"):
        load_dataset(tmp_path / "pets" / "train", image_size=(2, 3))
    for i in range(1, 10):      # one folder of 10 images a class: 10% held out for testing
        for cls in ("a", "b"):
            save_image(tmp_path / "pets" / "train" / cls / f"{i}.png",
                       rng.integers(0, 256, (4, 6, 3), dtype=np.uint8))
    flat = load_dataset(tmp_path / "pets" / "train", image_size=(2, 3))
    assert flat.test[0].shape == (2, 3, 2, 3) and flat.train[0].shape == (18, 3, 2, 3)
    (tmp_path / "nothing").mkdir()
    with raises_naming(tmp_path / "nothing", "no data set recognized"):
        load_dataset(tmp_path / "nothing")


def test_resizing_a_data_set_is_checked_against_the_data_cap_first():
    # 1,797 digits at 2000x2000 would take 7.2 GB as uint8: refused before resizing
    with pytest.raises(ValueError, match=r"digits resized to 1x2000x2000 \(bytes\) "
                                         r"7,188,000,000 is over the cap.*MAX_DATA_BYTES"):
        load_dataset("digits", image_size=2000)
    assert load_dataset("digits", image_size=28, channels=3).input_shape == (3, 28, 28)


def test_a_class_folder_name_with_control_characters_is_refused(tmp_path):
    from PIL import Image
    for name in ("cat", "dog\n99%"):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.new("L", (8, 8), 40 * i).save(tmp_path / name / f"{i}.png")
    with pytest.raises(ValueError, match="printable text"):
        load_dataset(tmp_path)


def test_split_folders_without_a_test_folder_are_named(tmp_path):
    from PIL import Image
    for split in ("train", "val"):
        for name in ("cat", "dog"):
            (tmp_path / split / name).mkdir(parents=True)
            Image.new("L", (8, 8)).save(tmp_path / split / name / "0.png")
    with pytest.raises(ValueError, match=r"split folders \(train, val\) but no test/"):
        load_dataset(tmp_path)


@pytest.mark.parametrize("train, test", [("Train", "Test"), ("training", "testing"),
                                         ("training_set", "test_set"), ("TRAIN", "Test Set")])
def test_split_folders_are_found_in_any_case_and_kaggles_names(tmp_path, train, test):
    """Train/ and Test/, MNIST-as-PNG's training/ and testing/, Kaggle's training_set/ and
    test_set/: split folders, where they had been two classes named for the splits."""
    from PIL import Image
    for split, count in ((train, 4), (test, 2)):
        for name in ("cat", "dog"):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(count):
                Image.new("L", (8, 8), 30 * i).save(tmp_path / split / name / f"{i}.png")
    data = load_dataset(tmp_path)
    assert data.classes == ["cat", "dog"]
    assert len(data.train[1]) == 8 and len(data.test[1]) == 4


def test_the_training_images_decide_the_size_and_the_channels(tmp_path):
    """A test/ folder of larger colour images had resized the 8x8 gray training images
    to 16x16 and read them as RGB: the training images decide, the others follow."""
    from PIL import Image
    for split, size, mode in (("train", 8, "L"), ("test", 16, "RGB")):
        for name in ("cat", "dog"):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(3 if split == "train" else 1):
                Image.new(mode, (size, size)).save(tmp_path / split / name / f"{i}.png")
    data = load_dataset(tmp_path)
    assert data.input_shape == (1, 8, 8) and data.test[0].shape == (2, 1, 8, 8)
    assert "resized the images to 8x8 (W x H, bilinear)" in data.notes
    assert "0 of the 8 images are grayscale" not in " ".join(data.notes)
    # the colour ones are what reading changes (it had said "6 of the 8 images are
    # grayscale: all are read as grayscale", as if those were converted)
    assert "2 of the 8 images are in colour: all are read as grayscale" in data.notes


@pytest.mark.parametrize("folders, message", [
    (("train", "test", "extra"), r"split folders \(test, train\) beside other folders "
                                 r"\(extra\): a data folder holds either split folders"),
    (("cat", "dog", "test"), r"split folders \(test\) beside other folders \(cat, dog\)"),
    (("seg_train", "seg_test", "seg_pred"), r"its folders look like splits, not classes: "
                                            r"rename seg_test/ as test/, seg_train/ as train/")])
@pytest.mark.parametrize("stray", [False, True])
def test_split_folders_beside_others_are_refused(tmp_path, folders, message, stray):
    """A folder beside train/ and test/ had made every folder a class (a classifier of
    the splits), silently; so had Intel's seg_train/, seg_test/ and seg_pred/. A stray
    image beside a split's class folders (a preview.png) leaves it a split."""
    from PIL import Image
    for folder in folders:
        for name in ("cat", "dog"):
            (tmp_path / folder / name).mkdir(parents=True)
            for i in range(3):
                Image.new("L", (8, 8), 40 * i).save(tmp_path / folder / name / f"{i}.png")
        if stray:
            Image.new("L", (8, 8)).save(tmp_path / folder / "preview.png")
    with pytest.raises(ValueError, match=message):
        load_dataset(tmp_path)


def test_the_data_cap_holds_for_the_splits_together(tmp_path, monkeypatch):
    """MAX_DATA_BYTES caps one decoded data set: it had been checked per split folder, so
    train/, val/ and test/ could each take the whole cap."""
    from PIL import Image
    for split, count in (("train", 3), ("test", 2)):
        for name in ("cat", "dog"):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(count):
                Image.new("L", (8, 8), 40 * i).save(tmp_path / split / name / f"{i}.png")
    monkeypatch.setattr("convnet.limits.MAX_DATA_BYTES", 500)     # each split alone fits
    with pytest.raises(ValueError, match=re.escape(str(tmp_path)) + r": bytes of 10 images "
                                         r"of 8x8x1 .* 640 is over the cap of 500"):
        load_dataset(tmp_path)


@pytest.mark.parametrize("extra, refused", [
    (("train/0.png", "train/1.png", "train/2.png", "train/a/0.png", "train/b/0.png"),
     False),                         # a class "train" with images and folders of more
    (("test/cat/0.png", "test/cat/1.png"), True)])   # unlabeled images kept in test/x/
def test_a_split_named_folder_is_a_class_by_its_images(tmp_path, extra, refused):
    """Beside class folders, a folder named for a split is a class when it holds images
    (more files than folders), a split when it holds folders."""
    from PIL import Image
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        for i in range(4):
            Image.new("L", (8, 8), 40 * i).save(tmp_path / name / f"{i}.png")
    for i, file in enumerate(extra):
        (tmp_path / file).parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (8, 8), 30 * i).save(tmp_path / file)
    if refused:
        with pytest.raises(ValueError, match=r"split folders \(test\) beside other folders "
                                             r"\(cat, dog\)"):
            load_dataset(tmp_path)
    else:
        assert load_dataset(tmp_path, test_fraction=0.25).classes == ["cat", "dog", "train"]


@pytest.mark.parametrize("classes", [
    ("airport", "train_station", "test_tube", "zoo", "beach"),  # Places-like split words
    ("bus", "streetcar", "tank", "tractor", "train"),           # CIFAR-100's vehicles 2
    ("valid", "invalid"), ("train_set", "test_set", "x")])     # classes of images
def test_class_folders_named_like_a_split_are_classes(tmp_path, classes):
    """A class named for a split (CIFAR-100, PASCAL VOC and COCO have "train"), or for a
    split word (Places' train_station), holds images: a class, not a split folder."""
    from PIL import Image
    for name in classes:
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.new("L", (8, 8), 40 * i).save(tmp_path / name / f"{i}.png")
    data = load_dataset(tmp_path, test_fraction=0.34)
    assert data.classes == sorted(classes)
    unlabeled = [name for name in sorted(classes) if name in ("valid", "test_set")]
    said = [note for note in data.notes if "named like a split folder" in note]
    assert len(said) == bool(unlabeled)      # a test or val folder of images: said
    if unlabeled:
        assert said[0].startswith(f"class {unlabeled[0]} is named like a split folder but "
                                  f"holds images: read as a class; if they are images "
                                  f"without labels, move them out")


def test_two_folders_for_one_split_are_refused(tmp_path):
    from PIL import Image
    for split in ("train", "Training", "test"):
        for name in ("cat", "dog"):
            (tmp_path / split / name).mkdir(parents=True)
            Image.new("L", (8, 8)).save(tmp_path / split / name / "0.png")
    with pytest.raises(ValueError, match=r"split folders \(Training, test, train\): Training "
                                         r"and train are the same split; keep one"):
        load_dataset(tmp_path)


def test_colour_data_in_gray_is_pillows_luma(tmp_path):
    """CIFAR read for a gray model (channels=1): uint8 times 587 had overflowed, so eval,
    train --from and report failed on every RGB data set in gray. The bytes are Pillow's
    "L" conversion of each image, as a photo given to predict gets."""
    from PIL import Image

    from convnet.data.transforms import to_channels
    rng = np.random.default_rng(21)
    written = write_cifar(tmp_path / "cifar-10-batches-py", 10, "python", rng)
    gray = load_dataset("cifar10", root=tmp_path, channels=1)
    x = written["test"][0]
    assert gray.test[0].shape == (len(x), 1, 32, 32) and gray.test[0].dtype == np.uint8
    pillow = np.stack([np.asarray(Image.fromarray(img.transpose(1, 2, 0)).convert("L"))
                       for img in x])[:, None]
    np.testing.assert_array_equal(gray.test[0], pillow)
    floats = to_channels(x.astype(np.float64) / 255, 1)
    assert floats.dtype == np.float64
    np.testing.assert_allclose(floats * 255, pillow, atol=0.51)


def test_colour_data_made_gray_and_larger_holds_no_large_temporaries(tmp_path, monkeypatch):
    """CIFAR at --channels 1 --image-size 96 had peaked at 13x its final size (all three
    channels resized, then whole-array int32 luma): the size cap checks the final array.
    Gray first, then resized; the luma in blocks gives the same bytes."""
    from convnet.data import transforms
    write_cifar(tmp_path / "cifar-10-batches-py", 10, "python", np.random.default_rng(5),
                n=100)
    data, peak = traced(lambda: load_dataset("cifar10", root=tmp_path, channels=1,
                                             image_size=(96, 96)))
    final = data.train[0].nbytes + data.test[0].nbytes
    assert data.train[0].shape == (500, 1, 96, 96) and peak < 2 * final, peak / final
    x = np.random.default_rng(6).integers(0, 256, (30, 3, 5, 4), dtype=np.uint8)
    wholes = [transforms.to_channels(x.astype(t), 1) for t in (np.uint8, np.uint16, float)]
    monkeypatch.setattr(transforms, "LUMA_BLOCK", 7 * 3 * 5 * 4)      # blocks of 7 images
    for t, whole in zip((np.uint8, np.uint16, float), wholes):
        blocked = transforms.to_channels(x.astype(t), 1)
        assert blocked.dtype == whole.dtype == t
        np.testing.assert_array_equal(blocked, whole)


def test_limit_takes_images_of_every_class_from_a_folder(tmp_path):
    """A folder's images come class by class: --limit 15 of three classes of 12 had
    trained on the first two only. It takes a seeded random subset."""
    from convnet.train.loop import prepare
    rng = np.random.default_rng(22)
    for cls in ("blue", "green", "red"):
        for i in range(12):
            save_image(tmp_path / "img" / cls / f"{i}.png",
                       rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
    splits = load_dataset(tmp_path / "img")
    (_, y_train), (_, y_val), _, _ = prepare(splits, 0.1, 15, 0, np.float32)
    assert len(y_train) + len(y_val) == 15
    assert set(np.concatenate([y_train, y_val]).tolist()) == {0, 1, 2}
    again = prepare(splits, 0.1, 15, 0, np.float32)[0][1]
    np.testing.assert_array_equal(again, y_train)          # seeded


@pytest.mark.parametrize("name", ["", "  "])
def test_an_empty_data_name_is_not_the_current_directory(name):
    with pytest.raises(ValueError, match="expected a data set name .* or a folder, got"):
        load_dataset(name)


@pytest.mark.parametrize("layout", ["split folders", "drawn"])
def test_eval_with_recorded_statistics_decodes_only_the_test_images(tmp_path, monkeypatch,
                                                                     layout):
    """A model that records its preprocessing needs only the test images: evaluation had
    decoded every training image too (minutes for a large folder). The test images are
    those a full load holds out (the same seed draws them from the files' labels),
    decoded and resized alike; a model without a record still reads the training images,
    for their statistics."""
    import convnet.data.folder as folder
    from convnet.models import from_notation
    from convnet.train.inference import evaluation_data
    for k, name in enumerate(("a", "b")):
        for i in range(20):
            image = np.full((6, 5), 11 * i + 7 * k, np.uint8)
            split = "" if layout == "drawn" else ("test" if i % 4 == 0 else "train")
            save_image(tmp_path / split / name / f"{i}.png", image)
    full = load_dataset(tmp_path, image_size=(4, 4), channels=1, seed=3, test_fraction=0.3)
    decoded = []
    real = folder._decode
    monkeypatch.setattr(folder, "_decode",
                        lambda Image, path, *a, **k: decoded.append(path) or real(
                            Image, path, *a, **k))
    model = from_notation("INPUT 4x4x1 -> FC 2")
    model.info = {"classes": ["a", "b"], "mean": [0.5], "std": [0.25], "split_seed": 3,
                  "test_fraction": 0.3}
    x, y, classes, notes = evaluation_data(model, tmp_path)
    assert len(decoded) == len(y) == len(full.test[1]) == (12 if layout == "drawn" else 10)
    np.testing.assert_array_equal(y, full.test[1])
    np.testing.assert_allclose(x, (full.test[0] / 255 - 0.5) / 0.25, atol=1e-6)
    assert not any("train" in Path(p).parts for p in decoded)
    decoded.clear()
    model.info = {"classes": ["a", "b"], "split_seed": 3, "test_fraction": 0.3}
    evaluation_data(model, tmp_path)
    assert len(decoded) == 40


def test_load_dataset_test_only_returns_the_test_split_alone():
    """test_only: the named data sets' test images as a full load has them (resized and
    converted), train empty with the same image shape, no val."""
    full = load_dataset("digits", image_size=10, channels=3)
    alone = load_dataset("digits", image_size=10, channels=3, test_only=True)
    np.testing.assert_array_equal(alone.test[0], full.test[0])
    np.testing.assert_array_equal(alone.test[1], full.test[1])
    assert alone.train[0].shape == (0, 3, 10, 10) and alone.train[1].shape == (0,)
    assert alone.val is None and alone.input_shape == (3, 10, 10)


def test_eval_checks_the_class_count_before_resizing_or_decoding(tmp_path, monkeypatch):
    """evaluation_data refuses a data set whose class count differs from the model's
    outputs before any image is resized (digits at a model's 64x64 input) or decoded (an
    image folder): it had resized every split first."""
    import convnet.data as data
    from convnet.models import from_notation
    from convnet.train.inference import evaluation_data

    def fail(*args, **kwargs):
        raise AssertionError("images were resized or decoded before the class check")
    monkeypatch.setattr(data, "resize", fail)
    monkeypatch.setattr(data, "load_image_folder", fail)
    monkeypatch.setattr(data, "decode_files", fail)
    model = from_notation("INPUT 64x64x1 -> POOL F64 -> FC 3")
    with pytest.raises(ValueError, match="the model has 3 outputs but digits has 10 classes"):
        evaluation_data(model, "digits", where="the model")
    for k in range(2):
        save_image(tmp_path / f"c{k}" / "0.png", np.full((4, 4), 9 * k, np.uint8))
    with pytest.raises(ValueError, match=f"has 3 outputs but {tmp_path} has 2 classes"):
        evaluation_data(model, str(tmp_path), where="the model")
    two = from_notation("INPUT 4x4x1 -> FC 2")
    two.info = {"classes": ["x", "y"]}
    with pytest.raises(ValueError, match=r"class folders \['c0', 'c1'\] are not among the "
                                         r"classes \['x', 'y'\]"):
        evaluation_data(two, str(tmp_path))
    ten = from_notation("INPUT 64x64x1 -> POOL F64 -> FC 10")
    ten.info = {"classes": list("abcdefghij")}
    with pytest.raises(ValueError, match=r"trained on the classes \['a', 'b', "):
        evaluation_data(ten, "digits")


def test_a_light_background_is_named_where_training_backgrounds_were_dark():
    """Fashion-MNIST's mean intensities span 0.06..0.60, so an inverted item (a product
    photo on white) passed the mean's check; its border, the background, was black in
    training: the warning comes from there, with the invert hint."""
    from convnet.data.preprocess import (
        border_means,
        border_range,
        brightness_range,
        brightness_warning,
        check_info,
    )
    rng = np.random.default_rng(3)
    x = np.zeros((200, 1, 12, 12), np.uint8)               # black background, centred items
    fill = rng.integers(10, 255, 200).astype(np.uint8)     # dark to light items
    x[:, :, 2:10, 2:10] = fill[:, None, None, None]
    info = check_info({"brightness": brightness_range(x, 255), "border": border_range(x, 255)},
                      "m.json")
    assert info["border"] == [0.0, 0.0] and info["brightness"][1] - info["brightness"][0] > 0.4
    inverted = 255 - x[np.argsort(fill)[-3:]]             # light items: dark on white
    warnings = brightness_warning(inverted, 255, info)
    assert [i for i, _ in warnings] == [0, 1, 2]
    assert warnings[0][1].startswith("its background (border) intensity 1.00 lies far "
                                     "outside the training images' 0.00..0.00")
    assert "light on dark, this one is the reverse: invert it" in warnings[0][1]
    assert brightness_warning(x[:50], 255, info) == []
    assert brightness_warning(inverted, 255, {"brightness": info["brightness"]}) == []
    np.testing.assert_allclose(border_means(np.arange(16, dtype=np.uint8).reshape(1, 1, 4, 4),
                                            1), [(0 + 1 + 2 + 3 + 12 + 13 + 14 + 15 + 4 + 7
                                                  + 8 + 11) / 12])
    with pytest.raises(ValueError, match=r"info.border must be \[low, high\]"):
        check_info({"border": [0.5, 0.2]}, "m.json")


@pytest.mark.parametrize("smoothing", [1, -0.1, "0.1", None, float("nan"), True])
def test_a_model_files_record_of_its_label_smoothing_is_checked(smoothing):
    from convnet.data.preprocess import check_info
    assert check_info({"label_smoothing": 0.1}, "m.json") == {"label_smoothing": 0.1}
    with pytest.raises(ValueError, match=r"^m.json: info.label_smoothing must be a number "):
        check_info({"label_smoothing": smoothing}, "m.json")


@pytest.mark.parametrize("optimizer", ["Adam", "lbfgs", 4, None, ["adam"]])
def test_a_model_files_record_of_its_optimizer_is_checked(optimizer):
    from convnet.data.preprocess import check_info
    assert check_info({"optimizer": "nesterov"}, "m.json") == {"optimizer": "nesterov"}
    with pytest.raises(ValueError, match=r"^m.json: info.optimizer must be one of sgd, "):
        check_info({"optimizer": optimizer}, "m.json")


@pytest.mark.parametrize("files", [[40, "0" * 64], {"files": 40}, {"files": True,
                                   "sha256": "0" * 64}, {"files": 0, "sha256": "0" * 64},
                                   {"files": 4, "sha256": "A" * 64},
                                   {"files": 4, "sha256": "0" * 64, "more": 1}])
def test_a_model_files_record_of_its_split_folder_is_checked(files):
    from convnet.data.preprocess import check_info
    assert check_info({"split_files": {"files": 4, "sha256": "0a" * 32}}, "m.json")
    with pytest.raises(ValueError, match=r"^m.json: info.split_files must be \{"):
        check_info({"split_files": files}, "m.json")


def test_border_means_count_each_pixel_once_on_narrow_images():
    from convnet.data.preprocess import border_means
    column = np.array([0, 255, 255, 255, 0], np.uint8).reshape(1, 1, 5, 1)
    np.testing.assert_allclose(border_means(column, 255), [0.6])     # had counted 0.75
    np.testing.assert_allclose(border_means(column.reshape(1, 1, 1, 5), 255), [0.6])
    np.testing.assert_allclose(border_means(np.full((2, 3, 1, 1), 51, np.uint8), 255),
                               [0.2, 0.2])
