"""Pooling: max (with switches), average, power-average (LP), adaptive average and max.

The notes' POOL layer slides an F x F window with stride S over every depth slice
independently and keeps one number per window: the max (max pooling), the mean (average
pooling) or the p-norm (L2-norm pooling is p = 2). Depth is unchanged and the output size
is the conv formula: OW = (W - F + 2P)/S + 1. Pooling has no parameters.

Every op works on K = FH*FW strided "taps": tap (i, j) is the (N, C, OH, OW) view of the
input element at offset (i, j) of every window (``windows`` in functional/conv.py). The
forward passes combine the taps with np.maximum or np.add; the backward passes add the
gradient back through the same taps: a loop over the FH x FW kernel offsets, never a loop
over pixels or samples. When the windows tile the input (S == F, no padding, no
dilation, F divides H and W) the backward writes each tap of a (N, C, OH, FH, OW, FW)
reshape of dx once, with no zero-fill, padding or cropping.

Padding and PyTorch's ceil mode: padded rows/columns hold -inf for max pooling and 0 for
average pooling; in ceil mode the last window may hang over the bottom/right edge, so the
input is padded on that side by as much as it needs (``out_size`` decides).

Notation: x is (N, C, H, W); kernel (FH, FW), stride (SH, SW), padding (PH, PW),
dilation (DH, DW) and out_size (OH, OW) are already-checked pairs of ints (the layers in
convnet/layers/pool.py check them and compute out_size).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from convnet.functional.conv import conv_output_size, pad, scratch, windows
from convnet.functional.threads import in_parallel, split_parallel


def _floor_size(x_shape, kernel, stride, padding, dilation):
    """PyTorch's default output size (floor, no ceil mode) when none is given."""
    return tuple(conv_output_size(x_shape[2 + a], kernel[a], stride[a], padding[a],
                                  dilation[a], fit="floor", where="pool2d", axis="HW"[a])
                 for a in (0, 1))


def _padded_shape(x_shape, kernel, stride, padding, dilation, out_size):
    """(HP, WP): the input padded by P on both sides, plus on the bottom/right whatever
    the last window needs in ceil mode: (O - 1)*S + D*(F - 1) + 1 rows in all."""
    return tuple(max(x_shape[2 + a] + 2 * padding[a],
                     (out_size[a] - 1) * stride[a] + dilation[a] * (kernel[a] - 1) + 1)
                 for a in (0, 1))


def _padded(x, kernel, stride, padding, dilation, out_size, value):
    """x padded with ``value`` to _padded_shape, in this thread's "padded" scratch buffer
    (no page faults of a fresh array), or x itself when it needs no padding."""
    hp, wp = _padded_shape(x.shape, kernel, stride, padding, dilation, out_size)
    n, c = x.shape[:2]
    return pad(x, padding, value, (hp, wp), out=scratch("padded", n * c * hp * wp, x.dtype))


def _disjoint(x_shape, kernel, stride, padding, dilation, out_size):
    """True when the windows sit side by side inside the input, none overlapping: S == F,
    P == 0, D == 1, and O*F at most the input's size (in floor mode the last rows and
    columns may be in no window)."""
    return (tuple(kernel) == tuple(stride) and tuple(padding) == (0, 0)
            and tuple(dilation) == (1, 1)
            and out_size[0] * kernel[0] <= x_shape[2] and out_size[1] * kernel[1] <= x_shape[3])


def _taps(x, kernel, stride, padding, dilation, out_size, value):
    """The FH*FW strided views (N, C, OH, OW) of x, tap (i, j) at list index i*FW + j.
    With padding they are views of this thread's "padded" scratch buffer: use them before
    the next call that pads."""
    win = windows(_padded(x, kernel, stride, padding, dilation, out_size, value), kernel,
                  stride, dilation, out_size)
    return [win[..., i, j] for i in range(kernel[0]) for j in range(kernel[1])]


def _scatter_taps(tap_grad, x_shape, kernel, stride, padding, dilation, out_size, dtype):
    """Adjoint of _taps: add the gradient of every tap back onto dx (N, C, H, W).

    ``tap_grad(k, buf, part)`` gives the gradient of tap k = i*FW + j for the samples in
    ``part`` (a slice of N), shape (len(part), C, OH, OW); it may write it into ``buf``
    (and return buf) to save a temporary. When the windows do not overlap (_disjoint),
    buf is the tap's own strided view of dx, so each element is written once (the rows
    and columns in no window are zeroed), and the samples are split over both cores.
    """
    n, c, h, w = x_shape
    (fh, fw), (sh, sw), (ph, pw), (dh, dw), (oh, ow) = (kernel, stride, padding, dilation,
                                                          out_size)
    if _disjoint(x_shape, kernel, stride, padding, dilation, out_size):
        dx = np.empty(x_shape, dtype=dtype)

        def fill(part):
            for k in range(fh * fw):
                i, j = divmod(k, fw)
                view = dx[part, :, i: oh * fh: fh, j: ow * fw: fw]   # tap (i, j)
                grad = tap_grad(k, view, part)
                if grad is not view:
                    view[...] = grad
            dx[part, :, oh * fh:] = 0                   # floor mode's leftover rows
            dx[part, :, : oh * fh, ow * fw:] = 0        # and columns

        in_parallel(fill, n, dx.nbytes)
        return dx
    hp, wp = _padded_shape(x_shape, kernel, stride, padding, dilation, out_size)
    dxp = np.zeros((n, c, hp, wp), dtype=dtype)
    buf = np.empty((n, c, oh, ow), dtype=dtype)
    for k in range(fh * fw):
        i, j = k // fw * dh, k % fw * dw
        dxp[:, :, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw] += (
            tap_grad(k, buf, slice(None)))
    return dxp[:, :, ph : ph + h, pw : pw + w]


# -- max pooling -----------------------------------------------------------------------

class MaxPoolCache(NamedTuple):
    x_shape: tuple
    switches: np.ndarray  # (N, C, OH, OW): index i*FW + j of each window's max (uint8)
    kernel: tuple
    stride: tuple
    padding: tuple
    dilation: tuple
    out_size: tuple


def maxpool2d_forward(x, kernel, stride, padding=(0, 0), dilation=(1, 1), out_size=None,
                      switches=True):
    """Max over every window, keeping the switches (the argmax of each window).

    x: (N, C, H, W). Returns out (N, C, OH, OW), OH = (H - (DH*(FH-1)+1) + 2PH)/SH + 1
    (floored; pass ``out_size`` for ceil mode), and a cache whose ``switches`` hold, for
    every window, the row-major index i*FW + j of its max inside the FH x FW window.

    With ``switches=False`` (inference) only the max is computed and the cache is None.

    Ties go to the FIRST maximum in row-major window order, as PyTorch's CPU kernel does.
    Padding is -inf, so it never wins against a real value. A NaN in a window makes the
    output NaN. The switches of the rare windows whose max is NaN or -inf are PyTorch's
    too (``_odd_switches``): the last NaN, and the first element that is not padding.

    >>> x = np.array([[[[1., 2.], [4., 3.]]]])
    >>> out, cache = maxpool2d_forward(x, (2, 2), (2, 2))
    >>> out[0, 0], cache.switches[0, 0]              # 4 sits at (1, 0): index 1*2 + 0
    (array([[4.]]), array([[2]], dtype=uint8))
    """
    if out_size is None:
        out_size = _floor_size(x.shape, kernel, stride, padding, dilation)
    if not switches and kernel[0] * kernel[1] > kernel[0] + kernel[1]:
        return _separable_max(x, kernel, stride, padding, dilation, out_size), None
    taps = _taps(x, kernel, stride, padding, dilation, out_size, -np.inf)
    out = np.empty(taps[0].shape, dtype=x.dtype)             # (N, C, OH, OW)

    def first_max(switch, out, *taps):
        # The switch is the number of taps before the first one equal to the max.
        missed = taps[0] != out                              # no max among taps 0..k yet
        switch += missed
        for tap in taps[1:-1]:
            missed &= tap != out
            switch += missed

    split_parallel(_window_max, out, *taps)                  # over N, on both cores
    if not switches:
        return out, None
    switch = np.zeros(out.shape, dtype=np.min_scalar_type(len(taps) - 1))
    if len(taps) > 1:
        split_parallel(first_max, switch, out, *taps)
    if out.size and not out.min() > -np.inf:       # a NaN or an all -inf window (rare)
        _odd_switches(switch, out, taps, x.shape[2:], kernel, stride, padding, dilation)
    return out, MaxPoolCache(x.shape, switch, tuple(kernel), tuple(stride),
                             tuple(padding), tuple(dilation), tuple(out_size))


def _odd_switches(switch, out, taps, size, kernel, stride, padding, dilation):
    """Set the switch of each window whose max is NaN to its last NaN tap, and of each
    whose max is -inf to its first tap inside the input (the window's other taps being
    padding or -inf), as PyTorch's kernel routes their gradients; first_max would have
    taken the last tap and a padding tap. Only those windows are read."""
    (fh, fw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    odd = np.nonzero(~(out > -np.inf))                         # (n, c, oh, ow) of each
    values = np.stack([tap[odd] for tap in taps])              # (FH*FW, windows)
    last_nan = len(taps) - 1 - np.argmax(np.isnan(values[::-1]), axis=0)
    i, j = np.divmod(np.arange(fh * fw), fw)                   # each tap's (i, j)
    rows = odd[2] * sh + i[:, None] * dh - ph                  # (FH*FW, windows)
    cols = odd[3] * sw + j[:, None] * dw - pw
    inside = (rows >= 0) & (rows < size[0]) & (cols >= 0) & (cols < size[1])
    switch[odd] = np.where(np.isnan(out[odd]), last_nan, np.argmax(inside, axis=0))


def _window_max(out, *taps):
    """out = the elementwise max of the taps (same-shape views)."""
    np.copyto(out, taps[0])
    for tap in taps[1:]:
        np.maximum(out, tap, out=out)


def _separable_max(x, kernel, stride, padding, dilation, out_size):
    """The max of every FH x FW window as the max over its FW columns, then over FH rows:
    FH + FW passes instead of FH * FW (3x3: 6 instead of 9), for when no switches are
    needed. Same values, NaN included (np.maximum propagates it)."""
    (fh, fw), (sh, sw), (dh, dw), (oh, ow) = kernel, stride, dilation, out_size
    xp = _padded(x, kernel, stride, padding, dilation, out_size, -np.inf)
    columns = [xp[..., j * dw: j * dw + sw * (ow - 1) + 1: sw] for j in range(fw)]
    across = scratch("cols", np.prod(columns[0].shape), x.dtype).reshape(
        columns[0].shape)                                     # (N, C, HP, OW)
    split_parallel(_window_max, across, *columns)
    rows = [across[:, :, i * dh: i * dh + sh * (oh - 1) + 1: sh] for i in range(fh)]
    out = np.empty(rows[0].shape, dtype=x.dtype)              # (N, C, OH, OW)
    split_parallel(_window_max, out, *rows)
    return out


def maxpool2d_backward(dout, cache):
    """Route each gradient to the input its window took the max from (the switches).

    dout: (N, C, OH, OW). Returns dx (N, C, H, W); an input that is the max of several
    overlapping windows (F > S) receives the sum of their gradients.
    """
    x_shape, switches, kernel, stride, padding, dilation, out_size = cache

    def tap_grad(k, buf, part):
        return np.multiply(dout[part], switches[part] == k, out=buf)

    return _scatter_taps(tap_grad, x_shape, kernel, stride, padding, dilation, out_size,
                         dout.dtype)


# -- average pooling -------------------------------------------------------------------

class AvgPoolCache(NamedTuple):
    x_shape: tuple
    divisor: np.ndarray  # (OH, OW): how many elements each window's sum is divided by
    kernel: tuple
    stride: tuple
    padding: tuple
    out_size: tuple


def _counts(size, kernel, stride, padding, out, count_include_pad):
    """Per-axis divisor of each window, PyTorch's rule: the window clipped to the padded
    input (count_include_pad) or to the real input; a ceil-mode overhang never counts."""
    start = np.arange(out) * stride - padding
    end = np.minimum(start + kernel, size + padding)
    if not count_include_pad:
        start, end = np.maximum(start, 0), np.minimum(end, size)
    return end - start


def avgpool2d_forward(x, kernel, stride, padding=(0, 0), out_size=None,
                      count_include_pad=True, divisor_override=None):
    """Mean over every window: the sum of its FH*FW taps divided by the window's count.

    x: (N, C, H, W). Returns out (N, C, OH, OW), OH = (H - FH + 2PH)/SH + 1 (floored;
    pass ``out_size`` for ceil mode), and a cache. Padding adds zeros. The divisor follows
    PyTorch: FH*FW, except that a window hanging over the padded input in ceil mode counts
    only its part inside it, and with ``count_include_pad=False`` only the real inputs
    count; a ``divisor_override`` divides every window's sum instead.

    >>> x = np.arange(16.).reshape(1, 1, 4, 4)
    >>> avgpool2d_forward(x, (2, 2), (2, 2))[0][0, 0]
    array([[ 2.5,  4.5],
           [10.5, 12.5]])
    """
    if out_size is None:
        out_size = _floor_size(x.shape, kernel, stride, padding, (1, 1))
    taps = _taps(x, kernel, stride, padding, (1, 1), out_size, 0)
    out = taps[0].copy()                                     # (N, C, OH, OW)
    for tap in taps[1:]:
        out += tap
    h, w = x.shape[2:]
    if divisor_override is not None:
        divisor = np.full(out_size, divisor_override, dtype=x.dtype)
    else:
        divisor = np.outer(*(_counts((h, w)[a], kernel[a], stride[a], padding[a],
                                     out_size[a], count_include_pad)
                             for a in (0, 1))).astype(x.dtype)
    out /= divisor
    return out, AvgPoolCache(x.shape, divisor, tuple(kernel), tuple(stride), tuple(padding),
                             tuple(out_size))


def avgpool2d_backward(dout, cache):
    """Spread each window's gradient evenly over its taps: dx += dout / divisor per tap."""
    x_shape, divisor, kernel, stride, padding, out_size = cache
    g = dout / divisor                                       # (N, C, OH, OW)
    return _scatter_taps(lambda k, buf, part: g[part], x_shape, kernel, stride, padding,
                         (1, 1), out_size, g.dtype)


# -- power-average (LP) pooling --------------------------------------------------------

class LPPoolCache(NamedTuple):
    x: np.ndarray         # (N, C, H, W), the input
    out: np.ndarray       # (N, C, OH, OW), the output
    norm_type: float
    avg: AvgPoolCache


def lppool2d_forward(x, norm_type, kernel, stride, out_size=None):
    """Power-average pooling: out = (sum over the window of x^p)^(1/p), p = norm_type.

    p = 2 is the notes' L2-norm pooling, p = 1 sum pooling; large p approaches max
    pooling of |x| for x >= 0. No padding. Computed as PyTorch does, through average
    pooling: out = (FH*FW * avgpool(x^p))^(1/p); in ceil mode this scales the sum of a
    window that hangs over the edge by FH*FW / (its size inside the input), as PyTorch's
    lp_pool2d does. Windows whose sum is negative (odd p) give NaN.

    x: (N, C, H, W). Returns out (N, C, OH, OW) and a cache.

    >>> x = np.array([[[[3., 0.], [0., 4.]]]])
    >>> lppool2d_forward(x, 2, (2, 2), (2, 2))[0]
    array([[[[5.]]]])
    """
    p = float(norm_type)
    xp = x * x if p == 2 else x ** p
    mean, avg = avgpool2d_forward(xp, kernel, stride, (0, 0), out_size)
    total = mean * (kernel[0] * kernel[1])                   # sum of x^p per window
    out = np.sqrt(total) if p == 2 else total ** (1 / p)
    return out, LPPoolCache(x, out, p, avg)


def lppool2d_backward(dout, cache):
    """d out / d x = out^(1-p) x^(p-1) (through the window sum); 0 where a sum is 0.

    The gradient is set to zero for windows whose sum of x^p is zero, as in PyTorch.
    """
    x, out, p, avg = cache
    k = avg.kernel[0] * avg.kernel[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(out != 0, k * out ** (1 - p), 0).astype(out.dtype)
    dsum = avgpool2d_backward(dout * scale, avg)            # d loss / d (x^p) * p
    return dsum if p == 1 else dsum * (x if p == 2 else x ** (p - 1))


# -- adaptive average pooling ----------------------------------------------------------

class AdaptiveAvgCache(NamedTuple):
    x_shape: tuple
    rows: np.ndarray | None  # (OH, H) averaging matrix, None on the global path
    cols: np.ndarray | None  # (OW, W) averaging matrix


def adaptive_windows(size, out):
    """PyTorch's adaptive windows along one axis: window i spans [start_i, end_i) with
    start_i = floor(i*size/out) and end_i = ceil((i+1)*size/out)."""
    i = np.arange(out)
    return i * size // out, -(-(i + 1) * size // out)


def _averaging_matrix(size, out, dtype):
    """(out, size) matrix whose row i is 1/len over window i and 0 elsewhere."""
    start, end = adaptive_windows(size, out)
    pos = np.arange(size)
    inside = (pos >= start[:, None]) & (pos < end[:, None])    # (out, size)
    return (inside / (end - start)[:, None]).astype(dtype)


def adaptive_avgpool2d_forward(x, out_size):
    """Average pooling to a fixed output size (OH, OW), whatever the input's H x W.

    Window (i, j) averages rows [floor(i*H/OH), ceil((i+1)*H/OH)) and the like columns,
    so windows differ in size by at most one when OH does not divide H. out_size (1, 1)
    is global average pooling (the GoogLeNet/ResNet head): a plain mean over H and W.
    Otherwise the windows are separable and out = A_rows @ x @ A_cols.T with (OH, H) and
    (OW, W) averaging matrices: two batched matrix multiplies, no loop.

    x: (N, C, H, W). Returns out (N, C, OH, OW) and a cache.

    >>> x = np.arange(6.).reshape(1, 1, 1, 6)
    >>> adaptive_avgpool2d_forward(x, (1, 4))[0]         # windows [0,2) [1,3) [3,5) [4,6)
    array([[[[0.5, 1.5, 3.5, 4.5]]]])
    """
    (h, w), (oh, ow) = x.shape[2:], out_size
    if (oh, ow) == (1, 1):
        return x.mean(axis=(2, 3), keepdims=True), AdaptiveAvgCache(x.shape, None, None)
    rows, cols = _averaging_matrix(h, oh, x.dtype), _averaging_matrix(w, ow, x.dtype)
    with np.errstate(invalid="ignore"):     # (0 * inf: recomputed below, window by window)
        out = rows @ (x @ cols.T)                            # (N, C, OH, OW)
    if not np.isfinite(out).all():  # an inf in x: the matrices' zeros made it NaN in every
        out = _window_means(x, out_size)            # window of its plane (0 * inf)
    return out, AdaptiveAvgCache(x.shape, rows, cols)


def adaptive_avgpool2d_backward(dout, cache):
    """The adjoint of the forward: dx = A_rows.T @ dout @ A_cols (or dout / (H*W))."""
    x_shape, rows, cols = cache
    if rows is None:
        g = dout / (x_shape[2] * x_shape[3])                 # (N, C, 1, 1)
        return np.broadcast_to(g, x_shape).copy()
    if not np.isfinite(dout).all():
        return _window_means_backward(dout, x_shape)
    return rows.T @ (dout @ cols)


def _windows(h, w, out_size):
    """Each adaptive window's positions (rows (OH, kh), cols (OW, kw)), the mask of those
    inside it (OH, kh, OW, kw), and its size (OH, 1, OW, 1)."""
    (rows, rin), (cols, cin) = _window_indices(h, out_size[0]), _window_indices(w, out_size[1])
    inside = rin[:, :, None, None] & cin[None, None, :, :]
    return rows, cols, inside, inside.sum(axis=(1, 3), keepdims=True)


def _window_means(x, out_size):
    """adaptive average pooling window by window: where x is not finite, each inf or NaN
    reaches only the windows that hold it, as in PyTorch (the matrix product's zeros
    would carry it into every output of its plane: 0 * inf is NaN)."""
    rows, cols, inside, count = _windows(*x.shape[2:], out_size)
    win = x[:, :, rows[:, :, None, None], cols[None, None, :, :]]   # (N, C, OH, kh, OW, kw)
    return np.where(inside, win, 0).sum(axis=(3, 5)) / count[:, 0, :, 0].astype(x.dtype)


def _window_means_backward(dout, x_shape):
    """The adjoint of _window_means: each output's gradient over its window's size, added
    to each of the window's positions."""
    n, c, h, w = x_shape
    rows, cols, inside, count = _windows(h, w, dout.shape[2:])
    share = (dout / count[:, 0, :, 0])[:, :, :, None, :, None]     # (N, C, OH, 1, OW, 1)
    flat = rows[:, :, None, None] * w + cols[None, None, :, :]      # (OH, kh, OW, kw)
    planes = (np.arange(n * c) * (h * w)).reshape(n, c, 1, 1, 1, 1)
    index = np.broadcast_to(planes + flat, (n, c, *inside.shape))[:, :, inside]
    weight = np.broadcast_to(share, (n, c, *inside.shape))[:, :, inside]
    dx = np.bincount(index.ravel(), weights=weight.ravel(), minlength=n * c * h * w)
    return dx.reshape(x_shape).astype(dout.dtype, copy=False)


# -- adaptive max pooling --------------------------------------------------------------

class AdaptiveMaxCache(NamedTuple):
    x_shape: tuple
    switches: np.ndarray     # (N, C, OH, OW) flat index into x of each window's max


def _window_indices(size, out):
    """(out, k) indices of each adaptive window's positions, k the longest window, and a
    mask of those inside it (a shorter window repeats its last position, masked off)."""
    start, end = adaptive_windows(size, out)
    k = int((end - start).max())
    idx = start[:, None] + np.arange(k)                        # (out, k)
    inside = idx < end[:, None]
    return np.minimum(idx, end[:, None] - 1), inside


def adaptive_maxpool2d_forward(x, out_size):
    """Max pooling to a fixed output size (OH, OW): window (i, j) is the adaptive one of
    ``adaptive_avgpool2d_forward`` (PyTorch's rule), its max is the output, and its
    position is kept (the switch) for the backward pass. Each window's positions are
    gathered at once, padded to the longest window with -inf: no loop. A tie goes to the
    first position in row-major order, and a window holding NaN to its last NaN, as in
    PyTorch.

    x: (N, C, H, W) float. Returns out (N, C, OH, OW) and a cache.

    >>> x = np.array([[[[1., 5., 2., 0., 3.]]]])
    >>> adaptive_maxpool2d_forward(x, (1, 2))[0]          # windows [0, 3) and [2, 5)
    array([[[[5., 3.]]]])
    """
    n, c, h, w = x.shape
    oh, ow = out_size
    (rows, rin), (cols, cin) = _window_indices(h, oh), _window_indices(w, ow)
    kh, kw = rows.shape[1], cols.shape[1]
    win = x[:, :, rows[:, :, None, None], cols[None, None, :, :]]   # (N, C, OH, kh, OW, kw)
    inside = rin[:, :, None, None] & cin[None, None, :, :]          # (OH, kh, OW, kw)
    win = np.where(inside, win, -np.inf).astype(x.dtype, copy=False)
    win = win.transpose(0, 1, 2, 4, 3, 5).reshape(n, c, oh, ow, kh * kw)
    at = win.argmax(axis=-1)                                       # first max, row-major
    out = np.take_along_axis(win, at[..., None], axis=-1)[..., 0]
    if np.isnan(out).any():   # PyTorch's switch is a window's last NaN (argmax's: its first)
        nan = np.isnan(win)
        at = np.where(nan.any(axis=-1), kh * kw - 1 - nan[..., ::-1].argmax(axis=-1), at)
    r = rows[np.arange(oh)[:, None], at // kw]                     # (N, C, OH, OW)
    col = cols[np.arange(ow)[None, :], at % kw]
    planes = (np.arange(n)[:, None] * c + np.arange(c))[:, :, None, None]
    switches = (planes * h + r) * w + col
    return out, AdaptiveMaxCache(x.shape, switches)


def adaptive_maxpool2d_backward(dout, cache):
    """Each output's gradient to its window's max position (the switch); windows that
    overlap add where they share a max."""
    x_shape, switches = cache
    dx = np.bincount(switches.ravel(), weights=dout.ravel(), minlength=math.prod(x_shape))
    return dx.reshape(x_shape).astype(dout.dtype, copy=False)
