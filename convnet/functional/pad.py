"""Padding an image volume on its own, before a convolution that pads nothing: PyTorch's
``padding_mode`` for CONV layers, and the uneven zero padding of ``padding="same"``.

A CONV layer pads with zeros inside its own im2col (convnet.functional.conv). PyTorch's
other modes fill the border from the volume itself, as ``F.pad`` does before an unpadded
convolution; each maps to one of np.pad's modes:

    zeros      0 0 | a b c d | 0 0       np.pad "constant"
    reflect    c b | a b c d | c b       np.pad "reflect" (the edge is not repeated)
    replicate  a a | a b c d | d d       np.pad "edge"
    circular   c d | a b c d | a b       np.pad "wrap"

The backward pass sums each border value's gradient into the input value it was read
from; zeros drop theirs.

Notation: x is (N, C, H, W); pads are (top, bottom, left, right).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

# PyTorch's padding_mode -> np.pad's mode
MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


class PadCache(NamedTuple):
    x_shape: tuple        # (N, C, H, W) of the input
    pads: tuple           # (top, bottom, left, right)
    mode: str             # a key of MODES


def check_pads(x_shape, pads, mode, where="pad2d"):
    """PyTorch's limits on a mode's padding for an input of x_shape (N, C, H, W):
    reflect pads less than the side (no value is reflected twice), circular at most the
    side (no value wraps twice); zeros and replicate take any padding."""
    top, bottom, left, right = pads
    for axis, size, before, after in (("H", x_shape[2], top, bottom),
                                      ("W", x_shape[3], left, right)):
        most = {"reflect": size - 1, "circular": size}.get(mode)
        if most is not None and max(before, after) > most:
            rule = "less than" if mode == "reflect" else "at most"
            raise ValueError(f"{where}: padding_mode={mode!r} pads {rule} the input's side, "
                             f"got padding {before}, {after} for {axis}={size} in volume "
                             f"{tuple(x_shape[1:])}")


def pad2d_forward(x, pads, mode="zeros"):
    """x (N, C, H, W) padded by pads (top, bottom, left, right) in ``mode`` (a PyTorch
    padding_mode, see MODES): (N, C, top + H + bottom, left + W + right), a new array,
    and a cache for pad2d_backward. check_pads first for a mode's limits.

    >>> pad2d_forward(np.arange(4.0).reshape(1, 1, 1, 4), (0, 0, 2, 2), "reflect")[0]
    array([[[[2., 1., 0., 1., 2., 3., 2., 1.]]]])
    """
    top, bottom, left, right = pads
    out = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), mode=MODES[mode])
    return out, PadCache(x.shape, tuple(pads), mode)


def pad2d_backward(dout, cache):
    """dx (N, C, H, W): dout's interior plus, for each border row and column, its
    gradient added onto the input row or column it copies (nothing for zeros)."""
    _, _, h, w = cache.x_shape
    top, bottom, left, right = cache.pads
    dx = _fold(dout, 3, w, left, right, cache.mode)
    return _fold(dx, 2, h, top, bottom, cache.mode)


def _fold(d, axis, size, before, after, mode):
    """The gradient along one padded axis of d summed back onto its ``size`` inputs."""
    def at(index):                           # d[..., index] along axis
        return (slice(None),) * axis + (index,)

    out = d[at(slice(before, before + size))].copy()
    if mode != "zeros":
        source = np.pad(np.arange(size), (before, after), mode=MODES[mode])   # read from
        for i in (*range(before), *range(before + size, before + size + after)):
            out[at(source[i])] += d[at(i)]
    return out
