"""Data for training: IDX, CIFAR, image folders, the embedded digits, transforms, batching.

Every loader returns uint8 images (N, C, H, W) and int64 labels (N,); ``to_float(x,
scale)`` turns them into float32 in [0, 1]. ``load_dataset`` picks a loader by name or
recognizes a directory, and returns a ``DataSplits``, resized to ``image_size`` if given.

>>> data = load_dataset("digits")
>>> data.train[0].shape, data.scale, data.classes[:3]
((1438, 1, 8, 8), 16, ['0', '1', '2'])
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from convnet.data.cifar import find_cifar, load_cifar10, load_cifar100
from convnet.data.digits import DIGITS_SCALE, load_digits
from convnet.data.folder import load_image_folder
from convnet.data.idx import (
    FASHION_MNIST_CLASSES,
    MNIST_CLASSES,
    find_idx_dir,
    load_fashion_mnist,
    load_idx_dataset,
    load_idx_splits,
    load_mnist,
    read_idx,
)
from convnet.data.loader import batches, train_val_split
from convnet.data.transforms import Normalize, random_crop, random_flip, resize, to_float
from convnet.functional.conv import pair

DATASETS = ("digits", "fashion-mnist", "mnist", "cifar10", "cifar100")


@dataclass
class DataSplits:
    """A data set's splits: (x uint8 (N, C, H, W), y int64 (N,)) pairs and class names.

    test is None for a single image folder. scale is the largest pixel value (255, or 16
    for the digits): ``to_float(x, data.scale)`` maps pixels to [0, 1].
    """

    train: tuple
    test: tuple | None
    classes: list
    name: str
    scale: int = 255

    @property
    def num_classes(self):
        return len(self.classes)

    @property
    def input_shape(self):
        """Per-sample (C, H, W), the shape a model's first layer sees."""
        return tuple(self.train[0].shape[1:])

    def __repr__(self):
        sizes = ", ".join(f"{k}={v[0].shape[0]}" for k, v in
                          (("train", self.train), ("test", self.test)) if v is not None)
        return (f"DataSplits({self.name!r}: {sizes}, input {self.input_shape}, "
                f"{self.num_classes} classes, scale {self.scale})")


def load_dataset(name_or_path, root=None, download=False, image_size=None):
    """Load a data set by name, or recognize what a directory holds.

    Args:
        name_or_path: "digits" (embedded, no files needed), "fashion-mnist", "mnist",
            "cifar10", "cifar100", or a directory. A directory is recognized as, in
            order: the four standard IDX files (plain or .gz); CIFAR-10 or CIFAR-100
            files in either published form, there or in the extracted sub-folder; an
            image folder (root/<class>/<image>, or root/train/<class> and
            root/test/<class> for two splits). Names win over same-named directories:
            write "./digits" for a folder called digits.
        root: where the named data set's files are (see each loader for the search).
        download: fetch missing files (Fashion-MNIST only).
        image_size: resize every image (train and test) to (H, W), or to H x H for an
            int; bilinear, through Pillow (the ``images`` extra). Image folders are resized
            as they are decoded, every other data set afterwards with ``resize``; the pixel
            scale is unchanged (digits stay within 0..16).

    >>> load_dataset("cifar10", root="~/data")                        # doctest: +SKIP
    DataSplits('cifar10': train=50000, test=10000, input (3, 32, 32), 10 classes, scale 255)
    >>> load_dataset("digits", image_size=28).input_shape
    (1, 28, 28)
    """
    key = str(name_or_path).lower()
    if image_size is not None:
        image_size = pair(image_size, "image_size", "load_dataset")
    if download and key not in ("fashion-mnist", "digits"):
        raise ValueError(f"load_dataset: download=True is supported for 'fashion-mnist' only, "
                         f"got {name_or_path!r}; put the files in place and pass root")
    if key == "digits":
        splits = _splits(load_digits(), "digits", DIGITS_SCALE)
    elif key == "fashion-mnist":
        splits = _splits(load_fashion_mnist(root, download=download), key)
    elif key == "mnist":
        splits = _splits(load_mnist(root), key)
    elif key == "cifar10":
        splits = _splits(load_cifar10(root), key)
    elif key == "cifar100":
        splits = _splits(load_cifar100(root), key)
    else:
        path = Path(name_or_path).expanduser()
        if not path.is_dir():
            raise ValueError(f"load_dataset: unknown data set {str(name_or_path)!r}: expected "
                             f"one of {', '.join(DATASETS)}, or a directory path")
        splits = _load_directory(path, image_size)
    return _resized(splits, image_size)


def _resized(splits, image_size):
    """splits with every image resized to image_size=(H, W); as is where they already are."""
    if image_size is None or splits.input_shape[1:] == image_size:
        return splits
    test = None if splits.test is None else (resize(splits.test[0], image_size),
                                             splits.test[1])
    return DataSplits((resize(splits.train[0], image_size), splits.train[1]), test,
                      splits.classes, splits.name, splits.scale)


def _splits(data, name, scale=255):
    return DataSplits(train=data["train"], test=data["test"], classes=data["classes"],
                      name=name, scale=scale)


def _load_directory(path, image_size):
    if find_idx_dir([path]) is not None:
        classes = FASHION_MNIST_CLASSES if "fashion" in path.name.lower() else MNIST_CLASSES
        return _splits({**load_idx_splits(path), "classes": list(classes)}, path.name)
    if find_cifar(path, 10, required=False):
        return _splits(load_cifar10(path), path.name)
    if find_cifar(path, 100, required=False):
        return _splits(load_cifar100(path), path.name)
    subdirs = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if not subdirs:
        raise ValueError(f"{path}: no data set recognized: expected the four IDX files "
                         "(train-images-idx3-ubyte ...), CIFAR batch files, or one "
                         "sub-folder of images per class")
    if {p.name for p in subdirs} == {"train", "test"}:
        xtr, ytr, classes = load_image_folder(path / "train", size=image_size)
        xte, yte, test_classes = load_image_folder(path / "test", size=image_size)
        if test_classes != classes:
            raise ValueError(f"{path}: train and test class folders differ: {classes} vs "
                             f"{test_classes}")
        if xte.shape[1:] != xtr.shape[1:]:
            raise ValueError(f"{path}: train images are {xtr.shape[1:]} (C, H, W) but test "
                             f"images are {xte.shape[1:]}; pass image_size=(H, W)")
        return DataSplits((xtr, ytr), (xte, yte), classes, path.name)
    x, y, classes = load_image_folder(path, size=image_size)
    return DataSplits((x, y), None, classes, path.name)


__all__ = [
    "DATASETS", "DataSplits", "load_dataset", "load_digits", "load_fashion_mnist",
    "load_mnist", "load_cifar10", "load_cifar100", "load_image_folder", "load_idx_dataset",
    "read_idx", "to_float", "Normalize", "random_crop", "random_flip", "resize",
    "train_val_split", "batches",
]
