"""Sizes and checks shared by every convolution and pooling: the notes' output-size
formula (W - F + 2P)/S + 1, hyperparameter pairs, and the input check."""

from __future__ import annotations

import numpy as np

FITS = ("exact", "floor")


def conv_output_size(size, kernel, stride, padding, dilation=1, fit="exact", ceil=False,
                     where="layer", axis="W", can_ceil=False, most_padding=None):
    """Output size along one axis: (W - F + 2P) / S + 1, with F the dilated extent.

    The notes call a setting invalid when this is not an integer. With ``fit="exact"``
    (the default) such a setting raises ``ValueError`` naming ``where``, the formula with
    the numbers and a fix. ``fit="floor"`` opts into PyTorch's flooring (the last rows or
    columns that do not fill a window are dropped); ``ceil=True`` is pooling's ceil mode,
    and ``can_ceil=True`` (a pooling layer) names it in the fix too; the fix suggests no
    padding over ``most_padding`` (a pool's F/2, or 0 for one that takes none).

    >>> conv_output_size(227, 11, 4, 0)
    55
    """
    if fit not in FITS:
        raise ValueError(f"{where}: fit must be one of {FITS}, got {fit!r}")
    extent = dilation * (kernel - 1) + 1
    span = size - extent + 2 * padding
    ext = f"F={kernel}" if dilation == 1 else f"F={extent} (F={kernel} at dilation {dilation})"
    if span < 0 and not (ceil and span > -stride):   # ceil mode: one window hangs over
        formula = (f"({axis} - F + 2P)/S + 1 = ({size} - {extent} + 2*{padding})/{stride} + 1 "
                   f"= {span / stride + 1:g}")
        more = most_padding is None or size + 2 * most_padding >= extent   # padding helps
        window = "F" if dilation == 1 else "D*(F-1)+1 (a smaller F or D)"
        raise ValueError(
            f"{where}: the filter extent along {axis} is larger than the padded input: "
            f"{ext} but {axis}={size} with P={padding} gives {size + 2 * padding}; "
            f"{formula} is below 1. Fix: a larger input along {axis} (or fewer layers "
            f"before this one that shrink it), {window} <= {size + 2 * padding}"
            f"{', or more padding' if more else ''}")
    if ceil:
        out = -(-span // stride) + 1
        # PyTorch's rule: the last window must start inside the input or the left padding.
        if (out - 1) * stride >= size + padding:
            out -= 1
        return out
    if span % stride and fit == "exact":
        formula = (f"({axis} - F + 2P)/S + 1 = ({size} - {extent} + 2*{padding})/{stride} + 1 "
                   f"= {span / stride + 1:g}")
        dilated = "" if dilation == 1 else f" (F={extent}: F={kernel} at dilation {dilation})"
        raise ValueError(
            f"{where}: hyperparameters do not fit along {axis}: {formula} is not an integer"
            f"{dilated}. {_fit_hint(size, extent, stride, padding, most_padding)}"
            f", or pass fit='floor' to drop the "
            f"last {span % stride} row(s)/column(s) as PyTorch does"
            + (", or ceil_mode=True to keep them in a last, partial window" if can_ceil
               else ""))
    return span // stride + 1


def _fit_hint(size, extent, stride, padding, most_padding=None):
    """Suggest the nearest padding (at most ``most_padding``: a pool's F/2) or stride
    that makes (W - F + 2P) / S integral."""
    hints = []
    tries = min(stride, 4096)  # a hint, not a search: huge strides get the generic advice
    last = padding + tries if most_padding is None else min(padding + tries, most_padding)
    for p in range(padding + 1, last + 1):
        if (size - extent + 2 * p) % stride == 0:
            hints.append(f"P={p}")
            break
    span = size - extent + 2 * padding
    divisors = [s for s in range(min(stride - 1, tries), 0, -1) if span % s == 0]
    if divisors:
        hints.append(f"S={divisors[0]}")
    return "Fix: use " + " or ".join(hints) if hints else "Fix: change F, S or P"


def pair(value, name, where="layer", allow_zero=False):
    """Turn an int or a pair of ints into a (height, width) pair of ints, checked."""
    vals = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    low = 0 if allow_zero else 1
    if len(vals) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                 and v >= low for v in vals):
        kind = "non-negative" if allow_zero else "positive"
        raise ValueError(f"{where}: {name} must be a {kind} int or a pair of them, got {value!r}")
    return int(vals[0]), int(vals[1])


def check_input(x, channels, where, rank=4):
    """Check that x is a float32 or float64 NCHW array with ``channels`` channels (the
    dtypes the layers compute in: BLAS has no float16, and no layer's arithmetic is
    written for longer floats); say what is wrong."""
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{where}: expected a NumPy array, got {type(x).__name__}")
    if x.dtype.type not in (np.float32, np.float64):       # either byte order
        raise ValueError(f"{where}: expected a floating-point array (float32 or float64), "
                         f"got dtype {x.dtype}; convert with x.astype(np.float32)")
    if x.ndim != rank:
        layout = "(N, C, H, W)" if rank == 4 else "(N, features)"
        one = (" (one sample is a batch of one: x[None]; PyTorch's layers also take a "
               "sample without its batch axis, convnet's take batches)"
               if x.ndim == rank - 1 else "")
        raise ValueError(f"{where}: expected a {rank}-D input {layout}, got shape "
                         f"{x.shape}{one}")
    if channels is not None and x.shape[1] != channels:
        if rank == 4 and x.shape[3] == channels:
            raise ValueError(
                f"{where}: expected {channels} channels in axis 1 (NCHW), got shape {x.shape}; "
                f"this looks like an NHWC array: use x.transpose(0, 3, 1, 2)")
        raise ValueError(f"{where}: expected {channels} input channels (depth D), "
                         f"got {x.shape[1]} in shape {x.shape}")

