"""The Layer base: state lives here, the math lives in convnet.functional.

A layer keeps its hyperparameters, ``params`` and ``grads`` dicts with the same keys
(``weight``, ``bias`` as in PyTorch), non-trainable ``buffers`` (batch norm's running
statistics), the cache of its last forward, and a ``training`` flag.

Shapes given to ``output_shape`` and ``macs`` are per sample, without the batch axis:
(C, H, W) for an image volume (the notes' D x H x W), (features,) for a vector.
``macs`` counts multiply-adds for one sample.
"""

from __future__ import annotations

import math

import numpy as np

from convnet.functional.conv import check_input


class Layer:
    """Base class of every layer: forward, backward, params/grads, train/eval, analysis."""

    # True where backward(dout, input_grad=False) can skip the input gradient: a net's
    # first layer, whose input is the data, needs only its parameters' gradients.
    skips_input_grad = False

    def __init__(self):
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.buffers: dict[str, np.ndarray] = {}
        self.training = True
        self.frozen = False  # a frozen layer's parameters are left alone by the optimizer
        self.cache = None
        self.name = None  # set by the model that holds the layer, e.g. "features.0"

    # -- the two passes ----------------------------------------------------------------
    def forward(self, x):
        raise NotImplementedError

    def backward(self, dout):
        raise NotImplementedError

    def __call__(self, x):
        return self.forward(x)

    def infer(self, x):
        """Forward without keeping a cache: at test time only the current activations live."""
        out = self.forward(x)
        self.cache = None
        return out

    def _cached(self):
        """The cache of the last forward; a clear error if there is none."""
        if self.cache is None:
            raise RuntimeError(f"{self.where}: backward called before forward "
                               "(or after the cache was cleared)")
        return self.cache

    # -- state -------------------------------------------------------------------------
    def train(self, mode=True):
        """Training mode (the default for a new layer, as in PyTorch)."""
        self.training = bool(mode)
        return self

    def eval(self):
        """Evaluation mode: batch norm uses running statistics, dropout is the identity."""
        return self.train(False)

    def zero_grad(self):
        for key, value in self.params.items():
            self.grads[key] = np.zeros_like(value)

    def _init_param(self, key, value):
        self.params[key] = value
        self.grads[key] = np.zeros_like(value)

    # -- analysis ----------------------------------------------------------------------
    def output_shape(self, input_shape):
        """Per-sample output shape for a per-sample input shape; checks that sizes fit."""
        return tuple(input_shape)

    def num_params(self):
        return sum(int(p.size) for p in self.params.values())

    def macs(self, input_shape):
        """Multiply-adds for one sample (0 for layers without multiplications)."""
        return 0

    def get_config(self):
        """The constructor arguments as a JSON-ready dict, with the layer's type."""
        return {"type": type(self).__name__}

    # -- naming ------------------------------------------------------------------------
    @property
    def where(self):
        """How errors name this layer: its model name if it has one, and its repr."""
        return f"{self.name} {self!r}" if self.name else repr(self)

    def __repr__(self):
        return f"{type(self).__name__}()"


def uniform_init(rng, shape, fan_in, dtype):
    """PyTorch's default init for Conv and Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    u = rng.random(shape, dtype=dtype)  # [0, 1), drawn directly in the target dtype
    u *= 2 * bound
    u -= bound
    return u


def positive_int(value, name, where):
    """A positive int (not a bool), or a ValueError naming the layer and the argument."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{where}: {name} must be a positive int, got {value!r}")
    return int(value)


def hw_text(pair):
    """(3, 3) -> '3', (3, 5) -> '3x5': the notes' compact form of an (H, W) pair."""
    return str(pair[0]) if pair[0] == pair[1] else f"{pair[0]}x{pair[1]}"


def check_dtype(dtype, where):
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"{where}: dtype must be float32 or float64, got {dtype}")
    return dtype


def check_array(x, where):
    """Check that x is a floating NumPy array of any rank; say what is wrong."""
    check_input(x, None, where, rank=np.ndim(x))


def check_dout(dout, shape, where):
    """Check that the upstream gradient has the shape of the last forward's output."""
    got = dout.shape if isinstance(dout, np.ndarray) else type(dout).__name__
    if got != tuple(shape):
        raise ValueError(f"{where}: expected dout with the shape of the last output "
                         f"{tuple(shape)}, got {got}")


def check_volume(input_shape, channels, where):
    """Check a per-sample (C, H, W) shape for a layer expecting ``channels`` channels."""
    shape = tuple(input_shape)
    if len(shape) != 3:
        raise ValueError(f"{where}: expected a per-sample volume (C, H, W), got {shape}")
    if channels is not None and shape[0] != channels:
        raise ValueError(f"{where}: expected {channels} input channels (depth D), "
                         f"got volume {shape}")
    return shape


class Identity(Layer):
    """Passes its input through unchanged (PyTorch's nn.Identity); a placeholder layer."""

    def forward(self, x):
        return x

    def backward(self, dout):
        return dout
