"""Activation layers: ReLU, ReLU6, LeakyReLU, Tanh, Sigmoid (the notes' RELU layer and kin).

They apply a fixed elementwise function ("RELU/POOL layers use a fixed function"), so they
have no parameters and no hyperparameters beyond a slope, accept an array of any shape,
leave the volume's size unchanged, and count 0 multiply-adds: by the summary's rule only
the products of CONV and FC layers count, not comparisons or exp().
"""

from __future__ import annotations

import numpy as np  # noqa: F401  (the doctests)

from convnet.functional import activation as A
from convnet.layers.base import Layer, check_array, check_dout, flag, real


def check_writeable(layer, x):
    """An inplace layer's input must be writeable; the error says what to pass."""
    if layer.inplace and not x.flags.writeable:
        raise ValueError(f"{layer.where}: inplace=True needs a writeable input, got a "
                         f"read-only array of shape {x.shape}; pass x.copy()")


class _Clamp(Layer):
    """ReLU and ReLU6: an elementwise clamp, in place on request, whose cache is its
    output; ``_ops`` is the functional (forward, backward) pair."""

    _ops = None

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = flag(inplace, "inplace", type(self).__name__)

    def forward(self, x):
        check_array(x, self.where)
        check_writeable(self, x)
        out, self.cache = self._ops[0](x, self.inplace)
        return out

    def backward(self, dout):
        cache = self._cached()
        check_dout(dout, cache.out.shape, self.where)
        return self._ops[1](dout, cache)

    def get_config(self):
        return {"type": type(self).__name__, "inplace": self.inplace}

    def __repr__(self):
        return f"{type(self).__name__}({'inplace=True' if self.inplace else ''})"


class ReLU(_Clamp):
    """RELU layer: max(0, x) elementwise, thresholding at zero.

    Args:
        inplace: overwrite the input with the result instead of allocating a new array,
            as PyTorch's ``ReLU(inplace=True)``: saves one activation-sized buffer per
            layer. The caller's x then holds max(0, x), and the backward pass reads that
            same buffer, so do not change x between forward and backward.

    Shapes: any, output = input. The cache keeps only the output (out != 0 is where the
    gradient flows: out > 0, or NaN); the gradient at exactly x = 0 is 0, as in PyTorch.

    >>> ReLU()(np.array([[-1.0, 2.0]]))
    array([[0., 2.]])
    """

    _ops = (A.relu_forward, A.relu_backward)


class ReLU6(_Clamp):
    """ReLU6: min(max(0, x), 6) elementwise, as PyTorch's ``nn.ReLU6`` (MobileNet's
    activation; ONNX writes it as Clip(x, 0, 6)).

    Args:
        inplace: overwrite the input with the result, as ReLU's ``inplace``.

    Shapes: any, output = input. The cache keeps only the output; the gradient is 0 at
    exactly x = 0 and x = 6, as in PyTorch.

    >>> ReLU6()(np.array([[-1.0, 2.0, 8.0]]))
    array([[0., 2., 6.]])
    """

    _ops = (A.relu6_forward, A.relu6_backward)


class LeakyReLU(Layer):
    """Leaky ReLU: x for x > 0, negative_slope * x otherwise, so units never go fully dead.

    Args:
        negative_slope: the slope for x <= 0 (PyTorch's default 0.01), a finite number.
        inplace: overwrite the input with the result at inference (``infer``), as
            ReLU's ``inplace``. In training the result is a new array: a layer before
            may read its own output in its backward pass (Tanh, Sigmoid), and a negative
            slope would change those values where a RELU's zero gradient cannot.

    Shapes: any, output = input. The cache keeps a boolean mask x > 0; at exactly x = 0
    the gradient is negative_slope, as in PyTorch.

    >>> LeakyReLU(0.1)(np.array([[-10.0, 2.0]]))
    array([[-1.,  2.]])
    """

    def __init__(self, negative_slope=0.01, inplace=False):
        super().__init__()
        self.negative_slope = real(negative_slope, "negative_slope", "LeakyReLU",
                                   expected="a finite number")
        self.inplace = flag(inplace, "inplace", "LeakyReLU")

    def forward(self, x):
        check_array(x, self.where)
        out, self.cache = A.leaky_relu_forward(x, self.negative_slope, False)
        return out

    def infer(self, x):
        check_array(x, self.where)
        check_writeable(self, x)
        out, _ = A.leaky_relu_forward(x, self.negative_slope, self.inplace)
        return out

    def backward(self, dout):
        cache = self._cached()
        check_dout(dout, cache.positive.shape, self.where)
        return A.leaky_relu_backward(dout, cache)

    def get_config(self):
        config = {"type": "LeakyReLU", "negative_slope": self.negative_slope}
        return {**config, "inplace": True} if self.inplace else config

    def __repr__(self):
        return f"LeakyReLU({self.negative_slope:g}{', inplace=True' if self.inplace else ''})"


class Tanh(Layer):
    """tanh(x) elementwise, squashing to (-1, 1); the cache keeps the output.

    Backward: dx = dout * (1 - out**2).

    >>> Tanh()(np.array([[0.0]]))
    array([[0.]])
    """

    def forward(self, x):
        check_array(x, self.where)
        out, self.cache = A.tanh_forward(x)
        return out

    def backward(self, dout):
        cache = self._cached()
        check_dout(dout, cache.out.shape, self.where)
        return A.tanh_backward(dout, cache)


class Sigmoid(Layer):
    """sigma(x) = 1 / (1 + exp(-x)) elementwise, squashing to (0, 1); no overflow warnings.

    Backward: dx = dout * out * (1 - out), from the cached output.

    >>> Sigmoid()(np.array([[0.0]]))
    array([[0.5]])
    """

    def forward(self, x):
        check_array(x, self.where)
        out, self.cache = A.sigmoid_forward(x)
        return out

    def backward(self, dout):
        cache = self._cached()
        check_dout(dout, cache.out.shape, self.where)
        return A.sigmoid_backward(dout, cache)
