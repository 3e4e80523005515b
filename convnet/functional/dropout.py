"""Inverted dropout: zero each unit with probability p, scale the kept ones by 1 / (1 - p).

The notes' regularizer (CS231n, "Dropout"): at train time every unit is kept with
probability 1 - p; scaling the kept units by 1 / (1 - p) right away ("inverted dropout")
keeps the expected activation unchanged, so the test-time pass is the identity.
Randomness comes only from the np.random.Generator passed in, never a global state.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class DropoutCache(NamedTuple):
    keep: np.ndarray | None   # bool, x's shape (or (N, C, 1, 1)): the units kept; None: identity
    scale: float              # 1 / (1 - p) for the kept units (0.0 when p = 1)


def dropout_forward(x, p, rng, channels=False):
    """Inverted dropout of x (any shape) with drop probability p, drawn from rng.

    out = x * keep / (1 - p) with keep ~ Bernoulli(1 - p) per element, or with
    channels=True per depth slice of x (N, C, H, W): a whole feature map is kept or
    dropped (PyTorch's Dropout2d, "spatial dropout"). p = 0 is the identity (nothing
    drawn), p = 1 gives x * 0 (no division by zero). A dropped unit is x * 0, as in
    PyTorch: a NaN or inf stays NaN, so divergence is not hidden.
    Returns out (same shape as x) and a cache holding the mask.

    >>> out, cache = dropout_forward(np.ones((2, 4)), 0.5, np.random.default_rng(0))
    >>> set(out.ravel().tolist()) <= {0.0, 2.0}, out.shape      # dropped or doubled
    (True, (2, 4))
    """
    if p == 0:
        return x.copy(), DropoutCache(None, 1.0)
    shape = (*x.shape[:2], 1, 1) if channels else x.shape      # the mask, broadcast
    if p == 1:
        return _masked(x, False, 0.0), DropoutCache(np.zeros(shape, dtype=bool), 0.0)
    keep = rng.random(shape) >= p                    # P(keep) = 1 - p
    scale = 1.0 / (1.0 - p)
    return _masked(x, keep, scale), DropoutCache(keep, scale)


def _masked(a, keep, scale):
    """a * keep * scale in a's dtype: the kept values a * scale, the dropped a * 0 (NaN
    for an inf, without NumPy's warning: the NaN is the answer)."""
    with np.errstate(invalid="ignore"):
        out = np.multiply(a, keep, dtype=a.dtype.type)     # native byte order
        out *= a.dtype.type(scale)
    return out


def dropout_backward(dout, cache):
    """Gradient of dropout_forward: dx = dout * keep / (1 - p), the same mask as forward
    (a dropped unit's gradient is dout * 0)."""
    keep, scale = cache
    if keep is None:
        return dout
    return _masked(dout, keep, scale)
