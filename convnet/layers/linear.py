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
    generator,
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
    Input (N, in_features), output (N, out_features): out = x @ W.T + b. As in PyTorch,
    any input (*, in_features) works, applied to the last axis: (N, L, in_features) gives
    (N, L, out_features), one vector (in_features,) gives (out_features,).
    macs per sample: in_features * out_features for each vector of the sample.

    >>> fc = Linear(3072, 10)                       # CIFAR-10 linear classifier
    >>> fc.output_shape((3072,)), fc.num_params()
    ((10,), 30730)
    """

    optional_arrays = ("bias",)

    def __init__(self, in_features, out_features, bias=True, dtype=np.float32, rng=None):
        super().__init__()
        where = type(self).__name__
        self.in_features = positive_int(in_features, "in_features", where)
        self.out_features = positive_int(out_features, "out_features", where)
        bias = flag(bias, "bias", where)
        self.dtype = check_dtype(dtype, where)
        rng = generator(rng, where)
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
        if not shape or shape[-1] != self.in_features:
            hint = self._flatten_hint(shape) if len(shape) > 1 else ""
            raise ValueError(f"{self.where}: expected in_features={self.in_features} input "
                             f"features in the last axis (a per-sample shape (*, "
                             f"in_features)), got {shape[-1] if shape else 'none'} in "
                             f"{shape}{hint}")
        return (*shape[:-1], self.out_features)

    def forward(self, x):
        check_array(x, self.where)
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            hint = self._flatten_hint(x.shape[1:]) if x.ndim > 2 else ""
            raise ValueError(f"{self.where}: expected in_features={self.in_features} "
                             f"features in the last axis (an input (*, in_features)), got "
                             f"{x.shape[-1] if x.ndim else 'none'} in shape {x.shape}{hint}")
        rows = x.reshape(-1, self.in_features)                     # (N*, in_features)
        out, self.cache = F.linear_forward(rows, self.params["weight"],
                                           self.params.get("bias"))
        self._in_shape = x.shape
        return out.reshape(*x.shape[:-1], self.out_features)

    def backward(self, dout):
        cache = self._cached()
        shape = self._in_shape
        check_dout(dout, (*shape[:-1], self.out_features), self.where)
        dx, dw, db = F.linear_backward(dout.reshape(-1, self.out_features), cache)
        self.grads["weight"] = dw
        if "bias" in self.params:
            self.grads["bias"] = db
        return dx.reshape(shape)

    def macs(self, input_shape):
        out = self.output_shape(input_shape)
        return math.prod(out[:-1]) * self.in_features * self.out_features

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
        start_dim: first axis to merge, as PyTorch's: >= 1 (axis 0 is the batch), or
            negative, counted from the last axis of the input (-1 the last). start_dim=2
            gives (N, C, H*W).
        end_dim: last axis to merge (default -1, the last), as start_dim; it may not
            come before start_dim. Flatten(1, 2) gives (N, C*H, W).

    >>> Flatten().output_shape((512, 7, 7))          # VGG's last volume
    (25088,)
    >>> Flatten(-3, -2).output_shape((512, 7, 7))
    (3584, 7)
    """

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        for name, dim in (("start_dim", start_dim), ("end_dim", end_dim)):
            if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool) or dim == 0:
                raise ValueError(f"Flatten: {name} must be an int >= 1 or < 0 (from the "
                                 f"last axis; axis 0 is the batch N), got {dim!r}")
        if (start_dim > 0) == (end_dim > 0) and start_dim > end_dim:
            raise ValueError(f"Flatten: start_dim={start_dim} comes after "
                             f"end_dim={end_dim}; the axes merged are start_dim..end_dim")
        self.start_dim, self.end_dim = int(start_dim), int(end_dim)

    def axes(self, shape, per_sample=False):
        """(start, end): the axes merged in an input of ``shape`` (or, per_sample=True, in
        a batch of that per-sample shape), counted from 0 with the batch axis."""
        ndim = len(shape) + per_sample
        start, end = (d + ndim if d < 0 else d for d in (self.start_dim, self.end_dim))
        args = (f"start_dim={self.start_dim}" if self.end_dim == -1
                else f"start_dim={self.start_dim}, end_dim={self.end_dim}")
        what, got = ("a per-sample shape", f"{shape}") if per_sample else (
            "an input", f"shape {shape}")
        if not (1 <= start < ndim and 0 <= end < ndim):
            need = max(abs(self.start_dim) + 1, self.end_dim + 1, -self.end_dim) - per_sample
            raise ValueError(f"{self.where}: {args} needs {what} with at least {need} axes, "
                             f"got {got}")
        if start > end:
            raise ValueError(f"{self.where}: {args} puts start_dim after end_dim in {what} "
                             f"of {got}")
        return start, end

    def output_shape(self, input_shape):
        shape = tuple(input_shape)
        start, end = self.axes(shape, per_sample=True)
        return (*shape[:start - 1], math.prod(shape[start - 1:end]), *shape[end:])

    def forward(self, x):
        check_array(x, self.where)
        start, end = self.axes(x.shape, per_sample=False)
        out, self.cache = F.flatten_forward(x, start, end)
        return out

    def backward(self, dout):
        cache = self._cached()
        shape = cache.x_shape
        start, end = self.axes(shape, per_sample=False)
        check_dout(dout, (*shape[:start], math.prod(shape[start:end + 1]), *shape[end + 1:]),
                   self.where)
        return F.flatten_backward(dout, cache)

    def get_config(self):
        config = {"type": "Flatten", "start_dim": self.start_dim}
        return config if self.end_dim == -1 else {**config, "end_dim": self.end_dim}

    def __repr__(self):
        if self.end_dim != -1:
            return f"Flatten(start_dim={self.start_dim}, end_dim={self.end_dim})"
        return "Flatten()" if self.start_dim == 1 else f"Flatten(start_dim={self.start_dim})"
