"""Dropout layers: inverted dropout at train time, the identity at test time; Dropout2d
drops whole feature maps."""

from __future__ import annotations

import numpy as np

from convnet.functional import dropout as F
from convnet.layers.base import Layer, check_dout, flag, generator, real


class Dropout(Layer):
    """Inverted dropout: zero each unit with probability p, scale the rest by 1 / (1 - p).

    Args:
        p: probability of dropping a unit, in [0, 1] (p = 0: identity; p = 1: x * 0, zeros for
            finite x).
        inplace: accepted as PyTorch's second argument, True or False; the output is
            a new array either way, with the same values (x is left as it is: the layer
            before, a RELU or Tanh, may keep x as its cache for its backward pass).
        rng: keyword only, np.random.Generator the masks are drawn from, kept as
            ``self.rng`` (np.random.default_rng() when None). Reseed it for a repeatable
            mask.

    Training mode draws a fresh mask per forward; eval mode returns x itself (the scale
    at train time already keeps expectations equal). No parameters; any input shape,
    (N, D) after an FC layer or (N, C, H, W) after a CONV layer; output the same shape.

    >>> drop = Dropout(0.5, rng=np.random.default_rng(0))
    >>> drop.eval()(np.ones((1, 3)))
    array([[1., 1., 1.]])
    """

    def __init__(self, p=0.5, inplace=False, *, rng=None):
        super().__init__()
        self.inplace = inplace
        self.p = p
        self.rng = generator(rng, type(self).__name__)

    def __setattr__(self, name, value):
        """p and inplace are checked when set, after construction too (as PyTorch
        checks p): a p of 1.5 had zeroed every output."""
        where = type(self).__name__
        if name == "p":
            value = float(real(value, "p (the drop probability)", where, 0, 1,
                               expected="a number in [0, 1]"))
        elif name == "inplace":
            value = flag(value, "inplace", where)
        super().__setattr__(name, value)

    def forward(self, x):
        if not isinstance(x, np.ndarray) or x.dtype.type not in (np.float32, np.float64):
            got = f"dtype {x.dtype}" if isinstance(x, np.ndarray) else type(x).__name__
            raise ValueError(f"{self.where}: expected a floating-point NumPy array "
                             f"(float32 or float64), got {got}")
        self._out_shape = x.shape
        if not self.training:
            self.cache = F.DropoutCache(None, 1.0)       # identity: backward passes dout
            return x
        out, self.cache = F.dropout_forward(x, self.p, self.rng, self._channels(x))
        return out

    def _channels(self, x):
        """Whether the mask is one per channel (Dropout2d): False, one per unit."""
        return False

    def backward(self, dout):
        cache = self._cached()
        check_dout(dout, self._out_shape, self.where)
        return F.dropout_backward(dout, cache)

    def get_config(self):
        config = {"type": type(self).__name__, "p": self.p}
        return {**config, "inplace": True} if self.inplace else config

    def __repr__(self):
        inplace = ", inplace=True" if self.inplace else ""
        return f"{type(self).__name__}(p={self.p:g}{inplace})"


class Dropout2d(Dropout):
    """Spatial dropout (PyTorch's Dropout2d): zero each whole feature map (channel of
    each sample) with probability p, scale the kept ones by 1 / (1 - p). Neighbouring
    pixels of a map are strongly correlated, so dropping single units regularizes a
    CONV layer little; dropping whole maps does (Tompson et al. 2015).

    Args and eval mode as Dropout's; input (N, C, H, W).

    >>> drop = Dropout2d(0.5, rng=np.random.default_rng(0))
    >>> out = drop(np.ones((1, 4, 2, 2)))
    >>> sorted(set(out[0, :, 0, 0].tolist())) == sorted(set(out[0].ravel().tolist()))
    True
    """

    def _channels(self, x):
        if x.ndim != 4:
            raise ValueError(f"{self.where}: expected a 4-D (N, C, H, W) array, got shape "
                             f"{x.shape}")
        return True
