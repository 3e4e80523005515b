"""The machinery every fast convolution shares, kept out of the math: zero padding over
both cores, and per-thread scratch buffers for temporaries.

A fresh large NumPy array is mapped in anew and each of its 4 KiB pages faults on first
touch (a few microseconds each in a VM), so temporaries that never leave the function
making them (a padded input, an im2col matrix, a GEMM product) come from buffers kept per
thread between calls (``scratch``); ``release_scratch`` frees them.
"""

from __future__ import annotations

import threading
import weakref

import numpy as np

from convnet.functional.threads import split_parallel


def pad(x, padding, value=0, padded_shape=None, out=None):
    """Pad the two spatial axes of an NCHW array: (PH, PW) rows/columns of ``value`` (a
    number, or one per channel) before, and after up to ``padded_shape`` (HP, WP)
    (default: PH and PW after too).

    Writes the interior and the border once each, split over both cores, into ``out``
    when given (np.pad runs on one core and allocates its result).
    ``out`` is an optional flat buffer, as for im2col.
    """
    n, c, h, w = x.shape
    ph, pw = padding
    hp, wp = padded_shape if padded_shape is not None else (h + 2 * ph, w + 2 * pw)
    if (hp, wp) == (h, w):
        return x
    xp = buffer(out, n * c * hp * wp, x.dtype).reshape(n, c, hp, wp)
    # value: a number, or one per channel (C,): split with the data, a part its channels'
    values = np.broadcast_to(np.asarray(value, x.dtype).reshape(1, -1, 1, 1), (n, c, 1, 1))

    def fill(dst, src, v):
        dst[:, :, ph: ph + h, pw: pw + w] = src
        dst[:, :, :ph] = v
        dst[:, :, ph + h:] = v
        dst[:, :, ph: ph + h, :pw] = v
        dst[:, :, ph: ph + h, pw + w:] = v
    split_parallel(fill, xp, x, values)
    return xp


def buffer(out, size, dtype):
    """The first ``size`` values of the flat buffer ``out`` when it has that many of
    ``dtype``, else a new array: reusing memory saves the page faults of a fresh one."""
    if out is None or out.size < size or out.dtype != dtype:
        return np.empty(size, dtype=dtype)
    return out.reshape(-1)[:size]


# Temporaries that never leave the function making them (a padded input, an im2col
# matrix or Y, a GEMM product) come from buffers kept per thread between calls: a fresh
# large array is mapped in anew and each of its 4 KiB pages faults on first touch (a few
# microseconds each in a VM; docs/performance.md). One buffer
# per role, each at most SCRATCH_MAX_BYTES (a larger temporary is made afresh), so what
# is kept stays bounded; release_scratch() frees it.
SCRATCH_MAX_BYTES = 64 << 20
_scratch = weakref.WeakKeyDictionary()   # thread -> {role: buffer}, gone with the thread


def scratch(role, size, dtype):
    """A flat array of ``size`` values of ``dtype`` from this thread's kept buffer for
    ``role`` ("padded", "cols", "product", or Winograd's "winograd_v", "winograd_all",
    "winograd_dy", "winograd_dm"), grown when too small; a new array when it
    would exceed SCRATCH_MAX_BYTES. The next call for the same role overwrites it: use
    it only for a temporary that no caller sees."""
    dtype = np.dtype(dtype)
    nbytes = size * dtype.itemsize
    if nbytes > SCRATCH_MAX_BYTES:
        return np.empty(size, dtype=dtype)
    kept = _scratch.setdefault(threading.current_thread(), {})
    if role not in kept or kept[role].nbytes < nbytes:
        kept.pop(role, None)                            # freed before its successor
        kept[role] = np.empty(max(nbytes, 1), dtype=np.uint8)
    return kept[role][:nbytes].view(dtype)


_releases = []   # what else keeps memory between calls: a function each that frees it


def on_release(free):
    """Have release_scratch() also call free(): for an algorithm that keeps memory of its
    own between calls."""
    _releases.append(free)


def release_scratch():
    """Free every thread's scratch buffers (see scratch), and whatever else an algorithm
    keeps between calls (Winograd's transformed filters); call it when no convnet work
    is running."""
    while True:      # a thread's first scratch call meanwhile changes the dict: again
        try:
            buffers = list(_scratch.values())
            break
        except RuntimeError:
            continue
    for kept in buffers:
        kept.clear()
    for release in _releases:
        release()



def scale_bias_relu(z, scale, b, relu, rows=slice(None)):
    """z = max(0, z * scale + b) in place, z's rows being the output channels ``rows``:
    each step only when given (scale and b (K,) or None, relu a bool). How the fast
    algorithms finish a block of output (a batch norm folded into the output, the bias, a
    fused RELU) while it is in the cache."""
    if scale is not None:
        np.multiply(z, scale[rows, None], out=z)
    if b is not None:
        np.add(z, b[rows, None], out=z)
    if relu:
        np.maximum(z, 0, out=z)


def itemsize(*arrays):
    """The largest item size among the arrays: what a block's temporaries take per value."""
    return max(a.itemsize for a in arrays)
