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
    keep: np.ndarray | None   # bool, same shape as x: the units kept; None: identity
    scale: float              # 1 / (1 - p) for the kept units (0.0 when p = 1)


def dropout_forward(x, p, rng):
    """Inverted dropout of x (any shape) with drop probability p, drawn from rng.

    out = x * keep / (1 - p) with keep ~ Bernoulli(1 - p) per element. p = 0 is the
    identity (nothing drawn), p = 1 gives zeros (no division by zero).
    Returns out (same shape as x) and a cache holding the mask.

    >>> out, cache = dropout_forward(np.ones((2, 4)), 0.5, np.random.default_rng(0))
    >>> set(out.ravel().tolist()) <= {0.0, 2.0}, out.shape      # dropped or doubled
    (True, (2, 4))
    """
    if p == 0:
        return x.copy(), DropoutCache(None, 1.0)
    if p == 1:
        return np.zeros_like(x), DropoutCache(np.zeros(x.shape, dtype=bool), 0.0)
    keep = rng.random(x.shape) >= p                  # same shape as x, P(keep) = 1 - p
    scale = 1.0 / (1.0 - p)
    out = np.where(keep, x * x.dtype.type(scale), x.dtype.type(0))
    return out, DropoutCache(keep, scale)


def dropout_backward(dout, cache):
    """Gradient of dropout_forward: dx = dout * keep / (1 - p), the same mask as forward."""
    keep, scale = cache
    if keep is None:
        return dout
    return np.where(keep, dout * dout.dtype.type(scale), dout.dtype.type(0))
