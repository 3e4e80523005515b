"""Splitting and batching: hold out a validation set, then walk the data in minibatches.

Randomness comes from an explicit np.random.Generator, never NumPy's global state, so a
seed reproduces the same split and the same batch order.
"""

from __future__ import annotations

import numpy as np


def _check_xy(x, y, where):
    if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray):
        raise ValueError(f"{where}: x and y must be NumPy arrays, got {type(x).__name__} and "
                         f"{type(y).__name__}")
    if y.ndim != 1 or x.ndim < 1 or x.shape[0] != y.shape[0]:
        raise ValueError(f"{where}: expected x (N, ...) and y (N,) with the same N, got "
                         f"x {x.shape} and y {y.shape}")


def _check_rng(rng, where):
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"{where}: rng must be an np.random.Generator "
                         f"(e.g. np.random.default_rng(0)), got {type(rng).__name__}")


def train_val_split(x, y, val_fraction, rng, stratify=True):
    """Hold out a validation set: ((x_train, y_train), (x_val, y_val)).

    Args:
        x: (N, ...) samples; y: (N,) integer labels.
        val_fraction: share of the samples that go to validation, in [0, 1).
        rng: np.random.Generator that picks which samples are held out.
        stratify: True (default) holds out round(val_fraction * count) samples of every
            class, so both parts keep the class proportions; False holds out
            round(val_fraction * N) samples drawn uniformly at random.

    Both parts keep the original order of the samples (shuffling is the batcher's job).

    >>> (xt, yt), (xv, yv) = train_val_split(x, y, 0.1, np.random.default_rng(0))
    ...                                                               # doctest: +SKIP
    """
    where = "train_val_split"
    _check_xy(x, y, where)
    _check_rng(rng, where)
    if not 0 <= val_fraction < 1:
        raise ValueError(f"{where}: val_fraction must be in [0, 1), got {val_fraction!r}")
    n = y.shape[0]
    perm = rng.permutation(n)                                         # (N,)
    if stratify:
        if not np.issubdtype(y.dtype, np.integer) or (n and y.min() < 0):
            raise ValueError(f"{where}: stratify needs non-negative integer labels, got "
                             f"dtype {y.dtype}")
        labels = y[perm]
        order = perm[np.argsort(labels, kind="stable")]               # by class, random within
        counts = np.bincount(y)                                       # (classes,)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        rank = np.arange(n) - np.repeat(starts, counts)               # rank within class
        n_val = np.rint(counts * val_fraction).astype(np.int64)       # (classes,)
        val = np.zeros(n, dtype=bool)
        val[order[rank < n_val[y[order]]]] = True
    else:
        val = np.zeros(n, dtype=bool)
        val[perm[: int(round(val_fraction * n))]] = True
    return (x[~val], y[~val]), (x[val], y[val])


def batches(x, y, batch_size, rng=None, shuffle=True, drop_last=False):
    """Yield minibatches (xb, yb) of ``batch_size`` samples, one pass over the data.

    Args:
        x: (N, ...) samples; y: (N,) labels.
        batch_size: samples a batch; the last batch is smaller unless drop_last.
        rng: np.random.Generator for the order; required when shuffle is True.
        shuffle: a fresh random order each call (each epoch); False keeps x's order.

    The number of batches is ceil(N / B), or floor(N / B) with drop_last.

    >>> rng = np.random.default_rng(0)
    >>> for xb, yb in batches(x_train, y_train, 64, rng):            # doctest: +SKIP
    ...     loss = model.step(xb, yb)
    """
    where = "batches"
    _check_xy(x, y, where)
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) \
            or batch_size < 1:
        raise ValueError(f"{where}: batch_size must be a positive int, got {batch_size!r}")
    n = y.shape[0]
    if shuffle:
        if rng is None:
            raise ValueError(f"{where}: shuffle=True needs rng=np.random.default_rng(seed) "
                             "(no global random state), or pass shuffle=False")
        _check_rng(rng, where)
        order = rng.permutation(n)                                    # (N,)
    else:
        order = None
    stop = n - n % batch_size if drop_last else n
    return _batches(x, y, batch_size, order, stop)


def _batches(x, y, batch_size, order, stop):
    """The generator behind ``batches`` (kept apart so bad arguments fail at the call)."""
    for start in range(0, stop, batch_size):
        if order is None:
            yield x[start:start + batch_size], y[start:start + batch_size]
        else:
            idx = order[start:start + batch_size]                     # (B,)
            yield x[idx], y[idx]
