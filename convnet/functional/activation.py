"""Elementwise activation functions (the notes' RELU layer and its relatives).

Each op works on an array of any shape and keeps its dtype. The caches hold only what the
backward pass needs, as in teenygrad's ``mlops.py``: ReLU, tanh and sigmoid keep their
output (their derivatives are functions of it), leaky ReLU keeps a boolean mask.

At the kinks the gradients follow PyTorch: ReLU passes 0 at x = 0, leaky ReLU passes
``negative_slope`` (the derivative from the left), ReLU6 passes 0 at x = 0 and x = 6.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from convnet.functional.threads import split_parallel


class ReluCache(NamedTuple):
    out: np.ndarray       # the output max(0, x); out != 0 is where gradient flows


def relu_forward(x, inplace=False):
    """RELU: max(0, x) elementwise, thresholding at zero.

    x: any shape. Returns out (same shape and dtype) and a cache holding only ``out``.
    With ``inplace=True`` the result is written into x itself and x is returned: no new
    activation array is allocated, and the caller's x now holds max(0, x).

    >>> relu_forward(np.array([-1.0, 0.0, 2.0]))[0]
    array([0., 0., 2.])
    """
    out = x if inplace else np.empty(x.shape, dtype=x.dtype)
    split_parallel(lambda a, b: np.maximum(a, 0, out=b), x, out)   # large x: both cores
    return out, ReluCache(out)


def relu_backward(dout, cache):
    """dx = dout where out > 0, else 0 (also 0 at x = 0, as in PyTorch), and dout where
    out is NaN (PyTorch's test is out <= 0 for the zeros; out != 0 is the same test on
    max(0, x))."""
    dx = np.empty(dout.shape, dtype=np.result_type(dout, cache.out))
    split_parallel(lambda d, o, g: np.multiply(d, o != 0, out=g), dout, cache.out, dx)
    return dx   # dout times a bool mask, written straight into dx


class Relu6Cache(NamedTuple):
    out: np.ndarray       # min(max(0, x), 6); gradient flows where 0 < out < 6


def relu6_forward(x, inplace=False):
    """ReLU6 (MobileNet's): min(max(0, x), 6) elementwise.

    x: any shape. Returns out (same shape and dtype) and a cache holding only ``out``;
    ``inplace=True`` writes the result into x, as relu_forward does.

    >>> relu6_forward(np.array([-1.0, 2.0, 7.0]))[0]
    array([0., 2., 6.])
    """
    out = x if inplace else np.empty(x.shape, dtype=x.dtype)
    split_parallel(lambda a, b: np.clip(a, 0, 6, out=b), x, out)
    return out, Relu6Cache(out)


def relu6_backward(dout, cache):
    """dx = dout where 0 < x < 6, else 0 (0 at x = 0 and x = 6, and for NaN, as PyTorch's
    vectorized hardtanh_backward; its scalar loop, for a few values, passes NaN's)."""
    dx = np.empty(dout.shape, dtype=np.result_type(dout, cache.out))
    split_parallel(lambda d, o, g: np.multiply(d, (o > 0) & (o < 6), out=g),
                   dout, cache.out, dx)
    return dx


class LeakyReluCache(NamedTuple):
    positive: np.ndarray  # bool mask x > 0, one byte per element
    negative_slope: float


def leaky_relu_forward(x, negative_slope=0.01, inplace=False):
    """Leaky ReLU: x for x > 0, negative_slope * x otherwise.

    x: any shape. Returns out (same shape and dtype) and a cache with the mask x > 0;
    ``inplace=True`` writes the result into x, as relu_forward does (the mask is taken
    first, so any slope works).

    >>> leaky_relu_forward(np.array([-2.0, 3.0]), 0.5)[0]
    array([-1.,  3.])
    """
    positive = x > 0
    if inplace:
        np.multiply(x, x.dtype.type(negative_slope), out=x, where=~positive)
        return x, LeakyReluCache(positive, negative_slope)
    out = np.where(positive, x, x * negative_slope).astype(x.dtype, copy=False)
    return out, LeakyReluCache(positive, negative_slope)


def leaky_relu_backward(dout, cache):
    """dx = dout where x > 0, else negative_slope * dout (at x = 0 too, as in PyTorch)."""
    dx = np.where(cache.positive, dout, dout * cache.negative_slope)
    return dx.astype(dout.dtype, copy=False)


class TanhCache(NamedTuple):
    out: np.ndarray       # tanh(x); the derivative is 1 - out**2


def tanh_forward(x):
    """tanh(x) elementwise; squashes to (-1, 1).

    >>> tanh_forward(np.array([0.0]))[0]
    array([0.])
    """
    out = np.tanh(x)
    return out, TanhCache(out)


def tanh_backward(dout, cache):
    """dx = dout * (1 - tanh(x)**2), as (1 - y)(1 + y): no cancellation when y ~ +-1."""
    y = cache.out
    return dout * ((1 - y) * (1 + y))


class SigmoidCache(NamedTuple):
    out: np.ndarray       # sigma(x); the derivative is out * (1 - out)


def sigmoid_forward(x):
    """sigma(x) = 1 / (1 + exp(-x)) elementwise, without overflow for large |x|.

    Uses z = exp(-|x|) <= 1: sigma(x) = 1 / (1 + z) for x >= 0 and z / (1 + z) for x < 0.

    >>> sigmoid_forward(np.array([0.0, -1000.0]))[0]
    array([0.5, 0. ])
    """
    z = np.exp(-np.abs(x))
    out = np.where(x >= 0, 1 / (1 + z), z / (1 + z)).astype(x.dtype, copy=False)
    return out, SigmoidCache(out)


def sigmoid_backward(dout, cache):
    """dx = dout * sigma(x) * (1 - sigma(x))."""
    return dout * cache.out * (1 - cache.out)
