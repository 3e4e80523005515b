"""Data for training: IDX, CIFAR, image folders, the embedded digits, transforms, batching.

Every loader returns uint8 images (N, C, H, W) and int64 labels (N,); ``to_float(x,
scale)`` turns them into float32 in [0, 1]. ``load_dataset`` picks a loader by name or
recognizes a directory, and returns a ``DataSplits``, resized to ``image_size`` if given.

>>> data = load_dataset("digits")
>>> data.train[0].shape, data.scale, data.classes[:3]
((1438, 1, 8, 8), 16, ['0', '1', '2'])
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from convnet import limits
from convnet.data.cifar import find_cifar, load_cifar10, load_cifar100
from convnet.data.digits import DIGITS_SCALE, load_digits
from convnet.data.folder import (
    GRAY_MODES,
    check_each_file_once,
    decode_files,
    load_image_folder,
    loose_images,
    nfc,
    read_headers,
    relabeled,
    scan_image_folder,
    skipped,
)
from convnet.data.idx import (
    FASHION_MNIST_CLASSES,
    MNIST_CLASSES,
    find_idx_dir,
    holds_fashion_mnist,
    load_fashion_mnist,
    load_idx_dataset,
    load_idx_splits,
    load_mnist,
    read_idx,
)
from convnet.data.loader import batches, train_val_split
from convnet.data.transforms import (
    Normalize,
    random_crop,
    random_flip,
    resize,
    to_channels,
    to_float,
)
from convnet.functional.conv import pair

DATASETS = ("digits", "fashion-mnist", "mnist", "cifar10", "cifar100", "cifar100-coarse")


@dataclass
class DataSplits:
    """A data set's splits: (x uint8 (N, C, H, W), y int64 (N,)) pairs and class names.

    scale is the largest pixel value (255, or 16 for the digits): ``to_float(x,
    data.scale)`` maps pixels to [0, 1]. val holds a val/ folder's images when the data
    set has one (otherwise training holds out part of train). notes says what loading
    decided for the user (a resize, a channel mode, a split), one sentence each. kind
    names the data set by its name in DATASETS when it is one, named or recognized by its
    files in a folder (CIFAR-10's batches in cifar-10-batches-py/, IDX files of 10
    classes as mnist); None for an image folder and other files. Training takes the
    defaults of kind where it has its own, else the defaults for any other data.
    """

    train: tuple
    test: tuple
    classes: list
    name: str
    scale: int = 255
    val: tuple | None = None
    notes: list = field(default_factory=list)
    resized: bool = False
    # One image folder (its test split drawn from it, or with all_images read whole):
    # that folder's files, {"files": count, "sha256": of their sorted relative paths}; the
    # same seed draws the same test images only from the same files (files_fingerprint).
    drawn_from: dict | None = None
    kind: str | None = None

    @property
    def num_classes(self):
        return len(self.classes)

    @property
    def input_shape(self):
        """Per-sample (C, H, W), the shape a model's first layer sees."""
        return tuple(self.train[0].shape[1:])

    @property
    def channels(self):
        """The images' Pillow mode: "L" for one channel, "RGB" for three."""
        return "L" if self.input_shape[0] == 1 else "RGB"

    def __repr__(self):
        sizes = ", ".join(f"{k}={v[0].shape[0]}" for k, v in
                          (("train", self.train), ("val", self.val), ("test", self.test))
                          if v is not None)
        return (f"DataSplits({self.name!r}: {sizes}, input {self.input_shape}, "
                f"{self.num_classes} classes, scale {self.scale})")


def takes_root(name):
    """Whether data set ``name`` has files of its own to look for (root, --data-root): the
    named ones but the embedded digits; a folder is read where it is."""
    return str(name).lower() in DATASETS[1:]


def _searched(key, root, folder):
    """Whether ``folder`` is one of the folders the named data set ``key`` is looked for
    in (with --data-root, or CONVNET_DATA, set to the folder above it)."""
    from convnet.data import cifar
    from convnet.data.files import search_dirs
    if key == "digits":
        return False
    here = Path(str(folder)).resolve()
    try:
        if key.startswith("cifar"):   # its own list: root and the extracted sub-folders
            dirs = cifar._candidates(root, cifar.CIFAR10_DIRS if key == "cifar10"
                                     else cifar.CIFAR100_DIRS)
        else:
            dirs = search_dirs(key, root)
        return any(d.resolve() == here for d in dirs)
    except (OSError, ValueError):
        return False


def load_dataset(name_or_path, root=None, download=False, image_size=None, channels=None,
                 seed=0, test_fraction=0.1, check_classes=None, test_only=False,
                 all_images=False, classes=None):
    """Load a data set by name, or recognize what a directory holds.

    Args:
        name_or_path: "digits" (embedded, no files needed), "fashion-mnist", "mnist",
            "cifar10", "cifar100" (its 100 fine classes), "cifar100-coarse" (its 20
            superclasses), or a directory. A directory is recognized as, in order: the
            four standard IDX files (plain or .gz; Fashion-MNIST's classes for its
            published files, or in a folder whose name says fashion; else classes
            "0".."9", or up to the largest label);
            CIFAR-10 or CIFAR-100 files in either published form, there or in the
            extracted sub-folder; an image folder: root/<class>/<image>, or
            root/train/<class> and root/test/<class> (and root/val/<class>) for given
            splits, with no other folder beside them. Names win over same-named
            directories: write "./digits" for a folder called digits.
        root: where the named data set's files are (see each loader for the search).
        download: fetch missing files (Fashion-MNIST only).
        image_size: resize every image (train and test) to (H, W), or to H x H for an
            int; bilinear, through Pillow (the ``images`` extra). Image folders are resized
            as they are decoded, every other data set afterwards with ``resize``; the pixel
            scale is unchanged (digits stay within 0..16).
        channels: 1 or 3 to convert every image to grayscale or RGB; None keeps a data
            set's own (an image folder is grayscale when every image is, RGB otherwise).
        seed, test_fraction: an image folder without train/ and test/ sub-folders is
            split here: test_fraction of each class's images (stratified), drawn with
            ``seed``, become the test set.
        classes: the class names to label an image folder's images by (a trained
            model's, in its order): each class folder must be one of them, and a folder
            may hold only some (new photos of two of a model's ten classes); the data's
            classes are then these. IDX files, which name no classes, take them where
            they are the labels' numbers ("0", "1", ...: a model's record of such files
            from before Fashion-MNIST's were known by their bytes). None: the folder's
            own class folders, sorted; IDX files' names as above.
        check_classes: called with the list of class names as soon as it is known,
            before any image is resized or converted (an image folder's, before any is
            decoded); it raises to refuse the data set.
        test_only: return the test images alone (train empty, no val), for an
            evaluation that needs nothing else: an image folder's other images are not
            decoded (a drawn test split is drawn from the files' labels), so its notes
            cannot say which test images are copies of training ones; other data sets
            are read whole, and their other splits dropped before any resize.
        all_images: every image of the data as the test split (train empty, no val): an
            image folder is not split, split folders' and named sets' splits are joined
            (train, val, test, in that order); for scoring images a model never trained
            on. The notes then say nothing about splits.

    Unless ``image_size`` is given, an image folder of mixed sizes is resized to the
    median height and width of its images, and images larger than AUTO_MAX_SIDE (128)
    pixels a side are scaled down to that (aspect ratio kept); ``notes`` says so.

    >>> load_dataset("cifar10", root="~/data")                        # doctest: +SKIP
    DataSplits('cifar10': train=50000, test=10000, input (3, 32, 32), 10 classes, scale 255)
    >>> load_dataset("digits", image_size=28).input_shape
    (1, 28, 28)
    """
    key = str(name_or_path).lower()
    if not key.strip():                  # Path("") would be the current directory
        raise ValueError(f"load_dataset: expected a data set name (digits, fashion-mnist, "
                         f"mnist, cifar10, cifar100, cifar100-coarse) or a folder, got "
                         f"{name_or_path!r}")
    if image_size is not None:
        image_size = pair(image_size, "image_size", "load_dataset")
        for side in image_size:
            limits.check_count(side, "MAX_IMAGE_SIDE", "image side", "load_dataset")
    if channels not in (None, 1, 3):
        raise ValueError(f"load_dataset: channels must be 1, 3 or None, got {channels!r}")
    if download and key != "fashion-mnist":
        raise ValueError(f"load_dataset: download=True is supported for 'fashion-mnist' "
                         f"only (the CLI's --download), got {name_or_path!r}"
                         + ("; put the files in place and pass root (--data-root)"
                            if takes_root(key) else ""))
    if root is not None and not takes_root(key):
        raise ValueError(f"load_dataset: root (--data-root) is where a named data set's files "
                         f"are ({', '.join(DATASETS[1:])}); {name_or_path!r} has none: "
                         + ("the digits are embedded" if key == "digits" else
                            "a folder is read where it is"))
    if isinstance(test_fraction, bool) or not isinstance(
            test_fraction, (int, float, np.integer, np.floating)) or not (
            0 < test_fraction < 1):
        raise ValueError(f"load_dataset: test_fraction must be a number in (0, 1), got "
                         f"{test_fraction!r:.40}")
    check_classes = check_classes or (lambda classes: None)
    if key in DATASETS and Path(str(name_or_path)).is_dir() and not _searched(key, root,
                                                                           name_or_path):
        warnings.warn(f"{name_or_path} is the named data set; a folder {name_or_path} is "
                      f"here too, not read: give --data ./{name_or_path} to read it",
                      stacklevel=2)
    if key == "digits":
        splits = _splits(load_digits(), "digits", DIGITS_SCALE, kind=key)
    elif key == "fashion-mnist":
        splits = _splits(load_fashion_mnist(root, download=download), key, kind=key)
    elif key == "mnist":
        splits = _splits(load_mnist(root), key, kind=key)
    elif key == "cifar10":
        splits = _splits(load_cifar10(root), key, kind=key)
    elif key == "cifar100":
        splits = _splits(load_cifar100(root), key, kind=key)
    elif key == "cifar100-coarse":
        splits = _splits(load_cifar100(root, label="coarse"), key, kind=key)
    else:
        path = Path(name_or_path).expanduser()
        if path.exists() and not path.is_dir():
            raise ValueError(f"load_dataset: {path} is a file: expected a data set name "
                             f"({', '.join(DATASETS)}) or a folder of data")
        if not path.is_dir():
            raise ValueError(f"load_dataset: unknown data set {str(name_or_path)!r}: no folder "
                             f"{path.absolute()} is there, and it is not one of "
                             f"{', '.join(DATASETS)}")
        splits = _load_directory(path, image_size, channels, seed, test_fraction,
                                 check_classes, test_only, all_images, classes)
    check_classes(list(splits.classes))
    if all_images:      # before the splits are resized or converted
        parts = [p for p in (splits.train, splits.val, splits.test) if p is not None]
        x, y = (np.concatenate([p[i] for p in parts]) for i in (0, 1))
        splits = replace(splits, train=(x[:0], y[:0]), val=None, test=(x, y))
    _check_filled(splits, name_or_path, test_only or all_images)
    if test_only:       # before the other splits are resized or converted
        x = splits.test[0]
        splits = replace(splits, train=(x[:0], np.empty(0, np.int64)), val=None)
    return _converted(splits, image_size, channels)


def _check_filled(splits, where, test_only=False):
    """Refuse a data set whose test split (or, unless test_only, training split) holds no
    image: a test accuracy of 0 images says nothing."""
    for part, split in ((splits.test, "test"), (None if test_only else splits.train, "training")):
        if part is not None and len(part[1]) == 0:
            raise ValueError(f"{where}: its {split} split holds no images")


def untrained_classes(y_train, splits):
    """A note naming the classes of ``splits`` that no label in y_train has (a stray
    label 255 among the digits of an IDX folder makes 256 classes; EMNIST's letters
    leave label 0 unused), or None: a model trained on y_train never trains its outputs
    for them."""
    counts = np.bincount(y_train, minlength=len(splits.classes))
    empty = np.flatnonzero(counts == 0)
    if not empty.size:
        return None
    shown = ", ".join(str(splits.classes[i]) for i in empty[:8]) + (
        ", ..." if empty.size > 8 else "")
    inferred = splits.kind is None and splits.classes[0] == "0"     # IDX: labels only
    return (f"{empty.size} of the {len(splits.classes)} classes "
            f"{'has' if empty.size == 1 else 'have'} no training images "
            f"({shown}): the model's {'output' if empty.size == 1 else 'outputs'} for "
            f"{'it is' if empty.size == 1 else 'them are'} never trained"
            + (" (IDX files name no classes: they count up to the largest label)"
               if inferred else ""))


def _map_splits(splits, fn):
    """splits with fn applied to the images of every split."""
    def one(part):
        return None if part is None else (fn(part[0]), part[1])
    return replace(splits, train=one(splits.train), val=one(splits.val),
                   test=one(splits.test))


def _converted(splits, image_size, channels):
    """splits resized to image_size=(H, W) and converted to ``channels``, where needed:
    first checked against limits.MAX_DATA_BYTES, as every decoded data set is."""
    c, h, w = splits.input_shape
    (h2, w2), c2 = image_size or (h, w), channels or c
    if (h2, w2, c2) != (h, w, c):
        parts = [p[0] for p in (splits.train, splits.val, splits.test) if p is not None]
        limits.check_count(sum(len(x) for x in parts) * c2 * h2 * w2 * parts[0].itemsize,
                           "MAX_DATA_BYTES",
                           f"size of {splits.name} resized to {c2}x{h2}x{w2} (bytes)",
                           "load_dataset")
    # Fewer channels are made before the resize, more after it: no step holds more than
    # the larger of the data as it was and as it ends.
    if channels is not None and channels < c:
        splits = _channels_converted(splits, c, channels)
    if image_size is not None and (h, w) != image_size:
        splits = _map_splits(splits, lambda x: resize(x, image_size))
        splits.resized = True
        splits.notes.append(f"resized the images from {w}x{h} to {image_size[1]}x"
                            f"{image_size[0]} (W x H, bilinear)")
    if channels is not None and channels > c:
        splits = _channels_converted(splits, c, channels)
    return splits


def _channels_converted(splits, c, channels):
    splits = _map_splits(splits, lambda x: to_channels(x, channels))
    splits.notes.append(f"converted the images from {c} to {channels} channel(s) "
                        f"({'RGB' if channels == 3 else 'grayscale'})")
    return splits


def _splits(data, name, scale=255, kind=None):
    return DataSplits(train=data["train"], test=data["test"], classes=data["classes"],
                      name=name, scale=scale, kind=kind)


AUTO_MAX_SIDE = 128   # image folders: larger images are scaled down unless image_size says
SPLIT_FOLDERS = {"train": ("train", "training"), "val": ("val", "valid", "validation"),
                 "test": ("test", "testing")}


def split_of(name):
    """The split a folder's name stands for ('train', 'val' or 'test'), or None: any case,
    with or without a "_set" ending (train/, Train/, training_set/, Test Set/ ...)."""
    base = re.sub(r"[ _-]?set$", "", name.lower())
    return next((split for split, names in SPLIT_FOLDERS.items() if base in names), None)


def _holds_class_folders(folder):
    """Whether ``folder`` looks like a split folder: it holds folders, and fewer files
    than folders (a stray preview.png or labels.txt beside its class folders), where a
    class folder holds its images, and maybe folders of more (those skipped() aside)."""
    folders = files = 0
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_dir():
                folders += not skipped(entry.name, True)
            else:
                files += not skipped(entry.name)
    return folders > 0 and folders > files


def _check_layout(path, splits):
    """Refuse a folder that mixes split folders with class folders ({split or None:
    [names]}), or whose folders look like splits by other names (seg_train/, seg_test/,
    seg_pred/: two kinds of split named, by at least half of the folders): read as class
    folders, they would have trained a classifier of splits. A folder named for a split
    that holds images is a class (CIFAR-100, PASCAL VOC and COCO have one called train)."""
    named = {split: [name for name in names if _holds_class_folders(path / name)]
             for split, names in splits.items() if split is not None}
    named = {split: names for split, names in named.items() if names}
    if named and None in splits:
        shown = ", ".join(splits[None][:5]) + (" ..." if len(splits[None]) > 5 else "")
        raise ValueError(f"{path}: split folders ({', '.join(sum(named.values(), []))}) "
                         f"beside other folders ({shown}): a data folder holds either "
                         f"split folders (train/, test/, val/, each with one folder per "
                         f"class) or class folders; move the others out")
    if named:
        return
    kinds = {split: name for name in splits.get(None, []) for split, words in
             SPLIT_FOLDERS.items() for word in words
             if re.search(rf"(^|[^a-z]){word}([^a-z]|$)", name.lower())
             and _holds_class_folders(path / name)}
    if len(kinds) > 1 and 2 * len(set(kinds.values())) >= len(splits.get(None, [])):
        shown = ", ".join(f"{name}/ as {split}/" for split, name in sorted(kinds.items()))
        raise ValueError(f"{path}: its folders look like splits, not classes: rename "
                         f"{shown} (each with one folder per class), or give a folder "
                         f"of class folders")


def _load_directory(path, image_size, channels, seed, test_fraction, check_classes,
                    test_only=False, all_images=False, classes=None):
    found = find_idx_dir([path, path / "raw"])   # torchvision's FashionMNIST/ holds raw/
    if found is not None:
        # torchvision keeps the files in FashionMNIST/raw/: the folder above names them
        named = found.parent if found.name.lower() in ("raw", "processed") else found
        if "fashion" in named.name.lower() or holds_fashion_mnist(found):
            splits = _splits({**load_idx_splits(found),
                              "classes": list(FASHION_MNIST_CLASSES)},
                             named.name, kind="fashion-mnist")
        else:   # IDX files name no classes: MNIST's digits, or as many labels as the
            #     files use (EMNIST's letters: 26, labels are bytes)
            data = load_idx_splits(found, num_classes=256)
            count = max(len(MNIST_CLASSES), 1 + max(int(y.max(initial=0)) for _, y in
                                                      data.values()))
            splits = _splits({**data, "classes": [str(i) for i in range(count)]},
                             named.name, kind="mnist" if count == len(MNIST_CLASSES) else None)
        index_names = [str(i) for i in range(len(splits.classes))]
        if classes is not None and list(classes) == index_names:   # a model that recorded
            splits.classes = index_names    # IDX labels by their numbers (before the
        return splits                       # files were known by their bytes)
    if find_cifar(path, 10, required=False):
        return _splits(load_cifar10(path), path.name, kind="cifar10")
    if find_cifar(path, 100, required=False):
        return _splits(load_cifar100(path), path.name, kind="cifar100")
    subdirs = {p.name: p for p in path.iterdir() if p.is_dir() and not skipped(p.name, True)}
    if not subdirs:
        raise ValueError(f"{path}: no data set recognized: expected the four IDX files "
                         "(train-images-idx3-ubyte ...), CIFAR batch files, or one "
                         "sub-folder of images per class")
    by_split = {}
    for name in sorted(subdirs):
        by_split.setdefault(split_of(name), []).append(name)
    _check_layout(path, by_split)
    if None not in by_split and "train" in by_split:    # every folder is a split
        folders = ", ".join(sorted(subdirs))
        twice = [names for names in by_split.values() if len(names) > 1]
        if twice:
            raise ValueError(f"{path}: split folders ({folders}): {' and '.join(twice[0])} "
                             f"are the same split; keep one")
        if "test" not in by_split:
            raise ValueError(f"{path}: split folders ({folders}) but no test/: add one, or "
                             f"put the class folders straight in {path} (a test split is "
                             f"then drawn from them)")
        parts = {split: subdirs[names[0]] for split, names in by_split.items()}
        return _load_folders(path, parts, image_size, channels, check_classes,
                             test_only=test_only and not all_images, joined=all_images,
                             known=classes)
    splits = _load_folders(path, {"train": path}, image_size, channels, check_classes,
                           hold_out=None if all_images else (test_fraction, seed),
                           test_only=test_only and not all_images, known=classes)
    unlabeled = [name for split in ("val", "test") for name in by_split.get(split, [])]
    if unlabeled:      # a class by its images; said, in case they are unlabeled ones
        splits.notes.append(
            f"class {' and '.join(unlabeled)} {'is' if len(unlabeled) == 1 else 'are'} "
            f"named like a split folder but {'holds' if len(unlabeled) == 1 else 'hold'} "
            f"images: read as a class; if they are images without labels, move them out")
    return splits


def _load_folders(path, parts, image_size, channels, check_classes, hold_out=None,
                  test_only=False, joined=False, known=None):
    """Image folders {split: folder} -> DataSplits, one size and one channel mode for all.
    hold_out=(test_fraction, seed): parts is {"train": path}, and the test split is drawn
    from it (_draw_test) before anything is decoded. test_only: decode only the test
    images; train and val come back empty. joined: the splits are to be joined
    (all_images), so no note says which test images copy training ones. known: the
    class names to label by (load_dataset's classes), of which each split's class
    folders must be some."""
    scans = {split: scan_image_folder(folder) for split, folder in parts.items()}
    if known is not None:
        scans = {split: relabeled(scan, known, parts[split]) for split, scan in
                 scans.items()}
    classes = scans["train"][1]
    if len(classes) < 2 and known is None:
        raise ValueError(f"{parts['train']}: only one class folder ({classes[0]!r}); a "
                         f"classifier needs at least 2, one sub-folder per class")
    check_classes(list(classes))
    check_each_file_once(f for files, _ in scans.values() for f, _ in files)
    headers = read_headers([f for files, _ in scans.values() for f, _ in files])
    # The size and the channel mode come from the training images (a test folder of
    # larger images must not resize them); the notes count every image.
    starts = np.cumsum([0] + [len(files) for files, _ in scans.values()])
    train = list(scans).index("train")
    train_headers = headers[starts[train]: starts[train + 1]]
    notes = [f"{len(loose):,} image file(s) in {folder}, beside its class folders, have no "
             f"class and are not read ({', '.join(map(repr, loose[:3]))}"
             f"{', ...' if len(loose) > 3 else ''}): move them into a class folder"
             for folder, loose in ((f, loose_images(f)) for f in parts.values()) if loose]
    notes += [f"{count} of the {len(headers)} images {what}" for count, what in (
        (sum(h.orientation != 1 for h in headers),
         "are turned or flipped as their EXIF orientation says (as a photo viewer shows "
         "them)"),
        (sum(h.alpha for h in headers), "have transparency: read over a white background"),
        (sum(h.frames > 1 for h in headers),
         "have several frames (animated, or pages): each gives its first")) if count]
    size = image_size
    sizes = sorted({(h.height, h.width) for h in train_headers})
    if size is None and len(sizes) > 1:
        size = (int(np.median([h.height for h in train_headers])),
                int(np.median([h.width for h in train_headers])))
        heights, widths = [h for h, _ in sizes], [w for _, w in sizes]
        which = "training images" if len(scans) > 1 else "images"
        notes.append(f"the {which} come in {len(sizes)} sizes (W from "
                     f"{min(widths)} to {max(widths)}, H from {min(heights)} to "
                     f"{max(heights)}): resized to {size[1]}x{size[0]} (W x H), the median "
                     f"of each side (bilinear); --image-size HxW chooses another (this "
                     f"one is --image-size {size[0]}x{size[1]})")
    elif any((h.height, h.width) != tuple(size or sizes[0]) for h in headers):
        size = size or sizes[0]
        notes.append(f"resized the images to {size[1]}x{size[0]} (W x H, bilinear)")
    side = max(size or sizes[0])
    if image_size is None and side > AUTO_MAX_SIDE:
        h, w = size or sizes[0]
        size = (max(1, round(h * AUTO_MAX_SIDE / side)), max(1, round(w * AUTO_MAX_SIDE / side)))
        notes.append(f"the images are {w}x{h} (W x H): resized to {size[1]}x{size[0]}, at "
                     f"most {AUTO_MAX_SIDE} pixels a side, which trains in reasonable time "
                     f"on a CPU; --image-size HxW chooses another (this one is "
                     f"--image-size {size[0]}x{size[1]})")
    gray = sum(h.mode in GRAY_MODES for h in headers)
    if channels is None:
        channels = 1 if all(h.mode in GRAY_MODES for h in train_headers) else 3
    colour = len(headers) - gray
    if channels == 3 and gray:
        notes.append(f"{gray} of the {len(headers)} images are grayscale: all are read "
                     f"as RGB")
    elif channels == 1 and colour:
        notes.append("the images are in colour: all are read as grayscale" if not gray else
                     f"{colour} of the {len(headers)} images are in colour: all are read "
                     f"as grayscale")
    h, w = size or sizes[0]        # every split's images together, within the cap
    limits.check_count(len(headers) * channels * h * w, "MAX_DATA_BYTES",
                       f"bytes of {len(headers):,} images of {w}x{h}x{channels} "
                       f"(resize them smaller: --image-size)", path)
    if hold_out is None:
        loaded = {split: load_image_folder(parts[split], size=size, grayscale=channels == 1,
                                           classes=classes)[:2]
                  for split in (("test",) if test_only else parts)}
    else:     # the test split drawn from the labels; the images decoded in one call,
        files = scans["train"][0]    # which names every unreadable file
        y = np.array([k for _, k in files], dtype=np.int64)
        kept, held = _draw_test(y, classes, path, *hold_out, notes)
        if test_only:
            loaded = {"test": (decode_files([files[i][0] for i in held], size,
                                            channels == 1, path), y[held])}
        else:
            order = np.concatenate([kept, held])     # each split a part of one array
            x = decode_files([files[i][0] for i in order], size, channels == 1, path)
            loaded = {"train": (x[:len(kept)], y[kept]), "test": (x[len(kept):], y[held])}
            del x
    empty = (np.empty((0, channels, h, w), dtype=np.uint8), np.empty(0, dtype=np.int64))
    loaded.setdefault("train", empty)
    resized = size is not None and any((h.height, h.width) != tuple(size) for h in headers)
    for split in ("val", "test"):
        if split in loaded and not joined:
            notes += _seen(loaded[split][0], loaded["train"][0], split)
    # the files a test split is drawn from (or, a folder read whole, its files)
    drawn = files_fingerprint(parts["train"], scans["train"][0]) if list(parts) == [
        "train"] else None
    return DataSplits(loaded["train"], loaded.get("test"), classes, path.name,
                      val=loaded.get("val"), notes=notes, resized=resized,
                      drawn_from=drawn)


def data_folder(name_or_path):
    """The folder ``load_dataset`` reads a data set from: None for a data set named by
    its name (digits, fashion-mnist, ...) or no folder; else the path, ~ expanded."""
    if str(name_or_path).lower() in DATASETS or not str(name_or_path).strip():
        return None
    path = Path(name_or_path).expanduser()
    return path if path.is_dir() else None


def check_drawn_split(recorded, splits, data, who, hint=""):
    """Refuse splits whose test images were drawn from other files than ``recorded``
    (a model's or a run's info.split_files, or None: nothing to check): the same seed
    would hold out other images, some of them trained on. data: the data set as the user
    named it; who: the model or run, for the message; hint: ends the message."""
    now = splits.drawn_from
    if not recorded or not now or recorded == now:
        return
    change = (f"{now['files']:,} images where training had {recorded['files']:,}"
              if now["files"] != recorded["files"] else
              "other files (renamed, moved or replaced)")
    raise ValueError(f"{data} holds {change}: the test images {who} held out from it are "
                     f"drawn again from the files as they are, so they would differ, and "
                     f"some would be images it trained on; use the folder as it was, or "
                     f"train on train/ and test/ folders{hint}")


def files_fingerprint(root, files):
    """{"files": how many, "sha256": of their paths relative to root, in Unicode's
    composed form, sorted}: what a test split drawn from an image folder depends on."""
    names = sorted("/".join(nfc(part) for part in Path(f).relative_to(root).parts)
                   for f, _ in files)
    digest = hashlib.sha256("\n".join(names).encode("utf-8", "surrogateescape"))
    return {"files": len(names), "sha256": digest.hexdigest()}


def fingerprints(x, block=1 << 16):
    """One uint64 per image of x (N, ...): its bytes times fixed random odd weights,
    summed modulo 2**64; equal images have equal fingerprints, and different ones almost
    never do. Made in blocks of about ``block`` values, so that no temporary is large."""
    flat = x.reshape(len(x), -1)
    weights = np.random.default_rng(0x5EE9).integers(0, 2**63, flat.shape[1],
                                                     dtype=np.uint64) * 2 + 1
    step = max(1, block // max(1, flat.shape[1]))
    return np.concatenate([(flat[s: s + step].astype(np.uint64) * weights).sum(axis=1)
                           for s in range(0, len(flat), step)] or [np.empty(0, np.uint64)])


def _seen(x, x_train, split):
    """A note (in a list) when images of ``split`` are identical to training images, as
    read (a photo copied into both folders, or twice into one): their accuracy is not
    the accuracy on new images. [] when none is."""
    same = 0
    if len(x) and len(x_train):     # images of equal fingerprints, then compared whole
        ours, theirs = fingerprints(x), fingerprints(x_train)
        for i in np.flatnonzero(np.isin(ours, theirs)):
            same += any(np.array_equal(x[i], x_train[j])
                        for j in np.flatnonzero(theirs == ours[i]))
    return [f"{same} of the {len(x)} {split} images {'is' if same == 1 else 'are'} "
            f"identical to training images: "
            f"their accuracy is not that on new images; remove the copies"] if same else []


def _draw_test(y, classes, path, test_fraction, seed, notes):
    """(kept, held): the indices of a single image folder's training and test images
    (labels y), a stratified test_fraction of each class held out with ``seed``; notes
    gets what was done."""
    (kept, _), (held, y_test) = train_val_split(
        np.arange(len(y)), y, test_fraction, np.random.default_rng([seed, 1 << 22]))
    kept_counts = np.bincount(y[kept], minlength=len(classes))[np.unique(y)]
    if len(y_test) == 0 or kept_counts.min(initial=1) == 0:
        present = len(np.unique(y))
        raise ValueError(f"{path}: {len(y)} images in {present} class"
                         f"{'es' if present != 1 else ''} are too "
                         f"few to hold out {test_fraction:.0%} of each class for testing; "
                         f"add images, or give train/ and test/ sub-folders")
    notes.append(f"split {path} ({len(y):,} images): {len(y_test):,} held out for "
                 f"testing ({test_fraction:.0%} of each class, seed {seed})")
    counts = np.bincount(y, minlength=len(classes))
    untested = [f"{classes[k]!r} ({counts[k]} image{'s' * bool(counts[k] != 1)})"
                for k in np.flatnonzero(np.bincount(y_test, minlength=len(counts)) == 0)]
    if untested:
        notes.append(f"{len(untested)} class(es) too small for {test_fraction:.0%} to "
                     f"hold out an image, not tested: {', '.join(untested[:10])}"
                     + (", ..." if len(untested) > 10 else ""))
    return kept, held


__all__ = [
    "DATASETS", "DataSplits", "load_dataset", "load_digits", "load_fashion_mnist",
    "load_mnist", "load_cifar10", "load_cifar100", "load_image_folder", "load_idx_dataset",
    "read_idx", "to_float", "to_channels", "Normalize", "random_crop", "random_flip",
    "resize", "train_val_split", "batches",
]
