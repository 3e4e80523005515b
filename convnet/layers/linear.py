"""FC layers: Linear (the notes' fully-connected layer) and the Flatten that feeds it."""

from __future__ import annotations

import math

import numpy as np

from convnet.functional import linear as F
from convnet.layers.base import (
    Layer,
    check_array,
    check_dout,
    check_dtype,
    check_param_count,
    flag,
    positive_int,
    uniform_init,
)


class Linear(Layer):
    """FC layer: every output neuron is a dot product with all input activations.

    Args:
        in_features: size of each input vector (for a volume, C*H*W after Flatten()).
        out_features: number of neurons (the class count for the last FC layer).
        bias: add a learned offset per neuron.
        dtype: float32 (default) or float64. rng: np.random.Generator for the init.

    Parameters: weight (out_features, in_features) and bias (out_features,), PyTorch's
    layout and default init U(-1/sqrt(in_features), 1/sqrt(in_features)).
    Input (N, in_features), output (N, out_features): out = x @ W.T + b.
    macs per sample: in_features * out_features.

    >>> fc = Linear(3072, 10)                       # CIFAR-10 linear classifier
    >>> fc.output_shape((3072,)), fc.num_params()
    ((10,), 30730)
    """

    def __init__(self, in_features, out_features, bias=True, dtype=np.float32, rng=None):
        super().__init__()
        where = type(self).__name__
        self.in_features = positive_int(in_features, "in_features", where)
        self.out_features = positive_int(out_features, "out_features", where)
        bias = flag(bias, "bias", where)
        self.dtype = check_dtype(dtype, where)
        rng = np.random.default_rng() if rng is None else rng
        shape = (self.out_features, self.in_features)
        check_param_count(math.prod(shape) + bias * self.out_features,
                          f"{where} with weight {shape}")
        self._init_param("weight", uniform_init(rng, shape, self.in_features, self.dtype))
        if bias:
            self._init_param("bias", uniform_init(rng, (self.out_features,),
                                                  self.in_features, self.dtype))

    def _flatten_hint(self, shape):
        """For a per-sample shape of rank > 1: say to flatten, and what that gives."""
        size = math.prod(shape)
        product = " * ".join(map(str, shape))
        fits = "" if size == self.in_features else (
            f", which does not match in_features={self.in_features} either")
        return f"; put a Flatten() before it: it gives {product} = {size} features{fits}"

    def output_shape(self, input_shape):
        shape = tuple(input_shape)
        if len(shape) != 1:
            hint = self._flatten_hint(shape) if len(shape) > 1 else ""
            raise ValueError(f"{self.where}: expected a per-sample vector "
                             f"(in_features,) = ({self.in_features},), got {shape}{hint}")
        if shape[0] != self.in_features:
            raise ValueError(f"{self.where}: expected in_features={self.in_features} "
                             f"input features, got {shape[0]}")
        return (self.out_features,)

    def forward(self, x):
        check_array(x, self.where)
        if x.ndim != 2:
            hint = self._flatten_hint(x.shape[1:]) if x.ndim > 2 else (
                "; for one sample use x[None]")
            raise ValueError(f"{self.where}: expected a 2-D input (N, in_features) = "
                             f"(N, {self.in_features}), got shape {x.shape}{hint}")
        if x.shape[1] != self.in_features:
            raise ValueError(f"{self.where}: expected in_features={self.in_features} "
                             f"features in axis 1, got {x.shape[1]} in shape {x.shape}")
        out, self.cache = F.linear_forward(x, self.params["weight"], self.params.get("bias"))
        return out

    def backward(self, dout):
        cache = self._cached()
        check_dout(dout, (cache.x.shape[0], self.out_features), self.where)
        dx, dw, db = F.linear_backward(dout, cache)
        self.grads["weight"] = dw
        if "bias" in self.params:
            self.grads["bias"] = db
        return dx

    def macs(self, input_shape):
        self.output_shape(input_shape)
        return self.in_features * self.out_features

    def get_config(self):
        return {"type": "Linear", "in_features": self.in_features,
                "out_features": self.out_features, "bias": "bias" in self.params,
                "dtype": self.dtype.name}

    def __repr__(self):
        text = f"Linear(in={self.in_features}, out={self.out_features}"
        return text + (")" if "bias" in self.params else ", bias=False)")


class Flatten(Layer):
    """Stretch each sample into a vector: (N, C, H, W) -> (N, C*H*W), for an FC layer.

    The order is C-major (channel, then row, then column), exactly torch.flatten's, so FC
    weights trained in PyTorch apply unchanged. Backward reshapes dout back.

    Args:
        start_dim: first axis to merge, >= 1 (axis 0 is the batch); all later axes are
            merged into it. start_dim=2 gives (N, C, H*W).

    >>> Flatten().output_shape((512, 7, 7))          # VGG's last volume
    (25088,)
    """

    def __init__(self, start_dim=1):
        super().__init__()
        if not isinstance(start_dim, (int, np.integer)) or isinstance(start_dim, bool) \
                or start_dim < 1:
            raise ValueError(f"Flatten: start_dim must be an int >= 1 (axis 0 is the batch "
                             f"N), got {start_dim!r}")
        self.start_dim = int(start_dim)

    def output_shape(self, input_shape):
        shape = tuple(input_shape)
        keep = self.start_dim - 1                    # per-sample axes kept before the merge
        if len(shape) <= keep:
            raise ValueError(f"{self.where}: start_dim={self.start_dim} needs a per-sample "
                             f"shape with at least {keep + 1} axes, got {shape}")
        return (*shape[:keep], math.prod(shape[keep:]))

    def forward(self, x):
        check_array(x, self.where)
        if x.ndim <= self.start_dim:
            raise ValueError(f"{self.where}: start_dim={self.start_dim} needs an input with "
                             f"at least {self.start_dim + 1} axes, got shape {x.shape}")
        out, self.cache = F.flatten_forward(x, self.start_dim)
        return out

    def backward(self, dout):
        cache = self._cached()
        shape = cache.x_shape
        check_dout(dout, (*shape[:self.start_dim], math.prod(shape[self.start_dim:])),
                   self.where)
        return F.flatten_backward(dout, cache)

    def get_config(self):
        return {"type": "Flatten", "start_dim": self.start_dim}

    def __repr__(self):
        return "Flatten()" if self.start_dim == 1 else f"Flatten(start_dim={self.start_dim})"
