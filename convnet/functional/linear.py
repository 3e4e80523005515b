"""The fully-connected (FC) layer's math and the flatten that feeds it.

The notes: "neurons in a fully connected layer have full connections to all activations
in the previous layer ... computed with a matrix multiplication followed by a bias
offset". With PyTorch's layout, weight is (out_features, in_features), so

    out = x @ W.T + b          x: (N, in_features), out: (N, out_features)

An image volume reaches an FC layer through flatten, which stretches each sample's
(C, H, W) volume into one row in C-major order (channel, then row, then column),
exactly as ``torch.flatten`` does, so FC weights move between the two unchanged.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from convnet.functional.threads import matmul


class LinearCache(NamedTuple):
    x: np.ndarray         # (N, in_features), needed for dw
    w: np.ndarray         # (out_features, in_features), needed for dx


def linear_forward(x, w, b=None):
    """FC layer: out = x @ W.T + b, one dot product per neuron and sample.

    x: (N, in_features); w: (out_features, in_features); b: (out_features,) or None.
    Returns out (N, out_features) and a cache for linear_backward.

    >>> x = np.ones((2, 3)); w = np.ones((4, 3)); b = np.arange(4.0)
    >>> linear_forward(x, w, b)[0]
    array([[3., 4., 5., 6.],
           [3., 4., 5., 6.]])
    """
    out = matmul(x, w.T)                            # (N, out_features)
    if b is not None:
        out += b
    return out, LinearCache(x, w)


def linear_backward(dout, cache):
    """Gradients of linear_forward: returns (dx, dw, db).

    dx = dout @ W (N, in); dw = dout.T @ x (out, in); db = dout summed over N (out,).
    """
    x, w = cache
    dx = matmul(dout, w)
    dw = matmul(dout.T, x)
    db = dout.sum(axis=0)
    return dx, dw, db


class FlattenCache(NamedTuple):
    x_shape: tuple        # the input shape, to reshape the gradient back


def flatten_forward(x, start_dim=1, end_dim=None):
    """Merge axes start_dim..end_dim (default: the last) into one, in C order
    (torch.flatten's order).

    x: (N, C, H, W) with start_dim=1 gives (N, C*H*W): row n holds sample n's channel 0
    (row by row), then channel 1, and so on. A view when x is contiguous, else a copy.
    start_dim and end_dim are axes counted from 0, start_dim <= end_dim.

    >>> flatten_forward(np.zeros((2, 512, 7, 7)))[0].shape
    (2, 25088)
    >>> flatten_forward(np.zeros((2, 512, 7, 7)), 1, 2)[0].shape
    (2, 3584, 7)
    """
    end = x.ndim if end_dim is None else end_dim + 1
    out = x.reshape(*x.shape[:start_dim], math.prod(x.shape[start_dim:end]), *x.shape[end:])
    return out, FlattenCache(x.shape)


def flatten_backward(dout, cache):
    """dx: dout reshaped back to the input's shape (flatten moves no numbers)."""
    return dout.reshape(cache.x_shape)
