"""The embedded default data set: UCI hand-written digits, 1,797 8x8 images, 10 classes.

Small enough to ship inside the package (45 kB) and to train a ConvNet on in seconds, so
examples and tests run with no download. Values are 0..16 (counts of "on" pixels in 4x4
blocks), so ``to_float(x, scale=16)`` maps them to [0, 1]. Source and licence (CC BY 4.0,
E. Alpaydin and C. Kaynak): DIGITS_LICENSE.txt beside this file.

digits.npz holds two plain arrays (no pickle; loaded with allow_pickle=False), extracted
once from scikit-learn, which is not a dependency:

    d = sklearn.datasets.load_digits()
    np.savez_compressed("digits.npz", images=d.images.astype(np.uint8)[:, None],
                        labels=d.target.astype(np.uint8))

The train/test split is fixed and uses no random numbers, so it is the same with every
NumPy version: within each class, in the file's order, the last round(20%) of the
images are the test set (359 images), the rest the training set (1,438). The file's
order follows the writers, so the test images come mostly from other hands than the
training images of the same digit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DIGITS_FILE = Path(__file__).with_name("digits.npz")
DIGITS_CLASSES = tuple(str(d) for d in range(10))
DIGITS_SCALE = 16
TEST_FRACTION = 0.2


def read_digits(path=DIGITS_FILE):
    """All 1,797 images and labels: (x uint8 (1797, 1, 8, 8), y int64 (1797,))."""
    with np.load(path, allow_pickle=False) as f:
        x, y = f["images"], f["labels"].astype(np.int64)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (1, 8, 8) or y.shape != x.shape[:1]:
        raise ValueError(f"{path}: expected images uint8 (N, 1, 8, 8) and labels (N,), got "
                         f"{x.dtype} {x.shape} and {y.shape}")
    return x, y


def digits_test_mask(y, test_fraction=TEST_FRACTION):
    """True for the test images: per class, the last round(test_fraction * count) in order.

    >>> digits_test_mask(np.array([0, 0, 1, 0, 1, 0, 1, 0, 1, 1]), 0.4).astype(int)
    array([0, 0, 0, 0, 0, 1, 0, 1, 1, 1])
    """
    counts = np.bincount(y)                                   # (classes,)
    order = np.argsort(y, kind="stable")                      # grouped by class, file order
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty_like(y)
    rank[order] = np.arange(y.size) - np.repeat(starts, counts)  # index within its class
    n_test = np.rint(counts * test_fraction).astype(np.int64)
    return rank >= (counts - n_test)[y]


def load_digits():
    """The embedded digits: {"train": (x, y), "test": (x, y), "classes": ['0', .., '9']}.

    x is uint8 (N, 1, 8, 8) with values 0..16, y int64 in 0..9; 1,438 training and 359
    test images, split per class as the module docstring describes.

    >>> data = load_digits()
    >>> data["train"][0].shape, data["test"][0].shape
    ((1438, 1, 8, 8), (359, 1, 8, 8))
    """
    x, y = read_digits()
    test = digits_test_mask(y)
    return {"train": (x[~test], y[~test]), "test": (x[test], y[test]),
            "classes": list(DIGITS_CLASSES)}
