"""Normalization: batch normalization and AlexNet's local response normalization.

Batch normalization (Ioffe & Szegedy, used throughout ResNet and DenseNet) normalizes
every channel (depth slice) with the mean and variance it has over the batch and every
spatial position, then applies a learned scale gamma (``weight``) and shift beta (``bias``):

    xhat = (x - mean) / sqrt(var + eps),    out = gamma * xhat + beta

Synchronized batch normalization (``sync_batch_norm_forward``) is the same over a batch
spread across processes, each holding a share: the per-channel sums it needs are added up
over the processes by one Allreduce forward and one backward.

Local response normalization (AlexNet; the notes' "Normalization Layer") divides every
activation by a power of the energy of its neighbours across channels at the same pixel.

Notation: x is (N, C, ...) with channels on axis 1: (N, C) and (N, C, L) for 1d batch norm,
(N, C, H, W) for images. M = N * (number of spatial positions) values per channel.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from convnet.functional.threads import split_parallel


class BatchNormCache(NamedTuple):
    x: np.ndarray                # (N, C, L), the input (L = 1 or the positions per channel)
    mean: np.ndarray             # (C,), the mean used
    inv_std: np.ndarray          # (C,), 1 / sqrt(var + eps)
    weight: np.ndarray | None    # (C,) gamma, or None without affine
    batch_stats: bool            # True: mean/var came from x itself (train mode)
    var: np.ndarray              # (C,), the (biased) variance used
    count: int                   # M, values per channel


def _per_channel(a):
    """(N, C, L) view (or copy) of a (N, C, ...) array: sums per channel run along L."""
    return a.reshape(a.shape[0], a.shape[1], math.prod(a.shape[2:]))   # -1 fails on N = 0


# Under this many positions per channel, a channel's constant is repeated along its row.
LONG_ROWS = 64


def _channel_constant(value, dtype, shape):
    """A (C,) array as a broadcast view of the (N, C, L) ``shape`` for split_parallel,
    which slices it along with the data (over N, or C for a batch of one). Under
    LONG_ROWS positions each channel's value is repeated L times, so that a ufunc runs
    one loop over a sample's C*L values rather than one per short row (the same values)."""
    n, c, length = shape
    value = np.asarray(value, dtype=dtype).reshape(1, -1, 1)
    if length < LONG_ROWS:
        value = np.repeat(value, length, axis=2)
    return np.broadcast_to(value, (n, c, length))


SQUARES_RUN = 4096   # values a float32 dot product adds one by one before float64 takes over


def _sum_of_squares(o, out):
    """out (n, c) = each row's sum of squares of o (n, c, L). np.vecdot adds a row's
    values one after the other, so its float32 rounding grows with L: rows longer than
    SQUARES_RUN are added in runs of that length, the runs' sums in float64."""
    n, c, length = o.shape
    runs = length // SQUARES_RUN
    if runs < 2:
        np.vecdot(o, o, out=out)
        return
    step = o.strides[2]
    head = np.lib.stride_tricks.as_strided(o, (n, c, runs, SQUARES_RUN),
                                           (*o.strides[:2], SQUARES_RUN * step, step))
    total = np.vecdot(head, head).sum(axis=2, dtype=np.float64)
    tail = o[..., runs * SQUARES_RUN:]
    total += np.vecdot(tail, tail)
    out[...] = total


def batch_norm_forward(x, weight=None, bias=None, mean=None, var=None, eps=1e-5):
    """Batch normalization of x over every axis but the channel axis 1.

    x: (N, C), (N, C, L) or (N, C, H, W). weight (gamma), bias (beta): (C,) or None.
    mean, var: (C,) fixed statistics (eval mode: the running averages), or None to use the
    batch's own mean and biased variance (train mode); the cache then carries them (with
    M, the count per channel) for the running-average update, and backward differentiates
    through them. out = gamma * (x - mean) / sqrt(var + eps) + beta, same shape as x.

    The variance is two-pass, the mean of (x - mean)^2, for accuracy. Per-channel sums
    are taken per sample and channel (contiguous rows, x.dtype) and then added over N in
    float64; the elementwise work is split over both cores. The cache keeps x itself (a
    view of it, or a copy if x is not contiguous; the centred values are recomputed in
    backward): do not change x between forward and backward.

    >>> x = np.array([[1.0], [3.0]])                 # N=2, C=1: mean 2, var 1
    >>> batch_norm_forward(x, eps=0.0)[0].ravel()
    array([-1.,  1.])
    """
    xr = _per_channel(x)
    n, c = xr.shape[:2]
    count = x.size // c
    given = [a for a in (weight, bias, mean, var) if a is not None]
    dtype = np.result_type(x, *given)
    out = np.empty(xr.shape, dtype=dtype)
    rows = np.empty((n, c), dtype=dtype)                   # one sum per sample and channel
    batch_stats = mean is None
    if batch_stats:
        split_parallel(lambda a, s: np.sum(a, axis=2, out=s), xr, rows)
        mean = rows.sum(axis=0, dtype=np.float64) / count
    centre = _channel_constant(mean, dtype, xr.shape)

    def centred(a, m, o, s):          # o = x - mean, and each row's sum of squares
        np.subtract(a, m, out=o)
        if batch_stats:
            _sum_of_squares(o, s)
    split_parallel(centred, xr, centre, out, rows)
    if batch_stats:
        var = rows.sum(axis=0, dtype=np.float64) / count                 # biased
    inv_std = 1.0 / np.sqrt(var + eps)
    scale = (inv_std if weight is None else inv_std * weight).astype(dtype)
    affine_channels(out, scale, bias, out=out)
    # Copies of the C statistics used: the running buffers may change before backward.
    mean, var = np.array(mean, dtype=dtype), np.array(var, dtype=dtype)
    cache = BatchNormCache(xr, mean, inv_std.astype(dtype), weight, batch_stats, var, count)
    return out.reshape(x.shape), cache


def _centred_sums(dout, xr, mean, inv_std, weight):
    """The backward's shared first pass: (dr, dx, sums). dr is dout per channel row, dx a
    new array holding xc = x - mean (the backward then overwrites it with the gradient),
    sums (2, C) float64 the per-channel sum(dout) and sum(dout * xc), both cores at work."""
    n, c = xr.shape[:2]
    dr = _per_channel(dout)
    dtype = np.result_type(dout, xr, inv_std, *([] if weight is None else [weight]))
    dx = np.empty(xr.shape, dtype=dtype)                   # first holds xc = x - mean
    sums = np.empty((2, n, c), dtype=dtype)                # per row: sum(dout), sum(dout*xc)

    def row_sums(d, a, m, xc, s, sx):
        np.subtract(a, m, out=xc)
        np.sum(d, axis=2, out=s)
        np.vecdot(d, xc, out=sx)
    split_parallel(row_sums, dr, xr, _channel_constant(mean, dtype, xr.shape), dx, sums[0],
                   sums[1])
    return dr, dx, sums.sum(axis=1, dtype=np.float64)


def batch_norm_backward(dout, cache):
    """Gradients of batch_norm_forward: returns (dx, dweight, dbias).

    dweight = sum(dout * xhat) and dbias = sum(dout) over every axis but 1 (what gamma and
    beta would get; a layer without affine ignores them). With batch statistics, the
    compact closed form (dxhat = gamma * dout, sums per channel over its M values):

        dx = inv_std / M * (M * dxhat - sum(dxhat) - xhat * sum(dxhat * xhat))

    computed as one affine map per channel of dout and the centred input xc = x - mean
    (xhat = inv_std * xc):

        dx = a * dout + b * xc + k,   a = gamma * inv_std,
        b = -gamma * inv_std^3 * sum(dout * xc) / M,   k = -gamma * inv_std * sum(dout) / M

    With fixed statistics it is just the affine map's: dx = gamma * inv_std * dout.
    """
    xr, mean, inv_std, weight, batch_stats, _, count = cache
    dr, dx, (dsum, dxc) = _centred_sums(dout, xr, mean, inv_std, weight)
    _input_grad(dr, dx, weight, inv_std, dsum, dxc, count, batch_stats)
    dtype = dx.dtype
    return (dx.reshape(dout.shape), (inv_std.astype(np.float64) * dxc).astype(dtype),
            dsum.astype(dtype))


def _input_grad(dr, dx, weight, inv_std, dsum, dxc, count, batch_stats=True):
    """dx = a * dout + b * xc + k (batch_norm_backward's closed form), written over dx,
    which holds xc; dr is dout, both (N, C, L). dsum and dxc: sum(dout) and sum(dout * xc)
    per channel over the count values of the batch. With fixed statistics dx = a * dout."""
    c, dtype = dx.shape[1], dx.dtype
    gamma = 1.0 if weight is None else weight.astype(np.float64)
    inv = inv_std.astype(np.float64)
    a = _channel_constant(np.broadcast_to(gamma * inv, (c,)), dtype, dx.shape)
    if not batch_stats:
        split_parallel(lambda d, o, a: np.multiply(d, a, out=o), dr, dx, a)
        return
    b = _channel_constant(-gamma * inv**3 * dxc / count, dtype, dx.shape)
    k = _channel_constant(-gamma * inv * dsum / count, dtype, dx.shape)

    def grad(d, o, a, b, k):           # o holds xc: o = b * xc + k + a * dout
        np.multiply(o, b, out=o)
        o += k
        o += d * a
    split_parallel(grad, dr, dx, a, b, k)


class SyncBatchNormCache(NamedTuple):
    x: np.ndarray                # (N, C, L), this process's share of the input
    mean: np.ndarray             # (C,), the mean over the whole batch
    inv_std: np.ndarray          # (C,), 1 / sqrt(var + eps), var over the whole batch
    weight: np.ndarray | None    # (C,) gamma, or None without affine
    var: np.ndarray              # (C,), the (biased) variance over the whole batch
    count: int                   # M, values per channel over the whole batch
    allreduce: object            # sums a float64 array over the processes, in place


def sync_batch_norm_forward(x, weight, bias, eps, allreduce):
    """Batch normalization with the statistics of a batch spread over processes.

    Each process holds its share x of the batch (N_r, C, ...); the mean and the biased
    variance are those of the whole batch (ChainerMN's multi-node batch normalization),
    from two calls ``allreduce(buf)``, each of which must sum the float64 array buf over
    the processes in place. The first adds up [M_r, sum(x)] per channel (C + 1 values)
    for the count M and the mean; the second adds up each share's squared deviations
    from that mean, M2_r + M_r * (mean_r - mean)^2 (C values; M2_r is the share's own
    two-pass sum), as Chan et al. merge variances. Then

        mean = S1 / M,   var = S2 / M,   out = gamma * (x - mean) / sqrt(var + eps) + beta

    and out is what batch_norm_forward gives the whole batch, rows of this share. (One
    allreduce of sum(x^2) would give var = S2 / M - mean^2, which cancels when the mean
    is large against the spread: 1e-4 relative error at a mean of 1e6 std.) With
    allreduce the identity (one process) it is batch_norm_forward to rounding. Returns
    (out, SyncBatchNormCache); the cache's mean, var and count are the whole batch's
    (what the running averages take).

    >>> x = np.array([[1.0], [3.0]])
    >>> sync_batch_norm_forward(x, None, None, 0.0, lambda buf: buf)[0].ravel()
    array([-1.,  1.])
    """
    xr = _per_channel(x)
    n, c = xr.shape[:2]
    local = x.size // c if c else 0
    given = [a for a in (weight, bias) if a is not None]
    dtype = np.result_type(x, *given)
    out = np.empty(xr.shape, dtype=dtype)                  # first holds x - mean_r
    rows = np.empty((n, c), dtype=dtype)
    split_parallel(lambda a, s: np.sum(a, axis=2, out=s), xr, rows)
    own_mean = rows.sum(axis=0, dtype=np.float64) / max(local, 1)

    def centred(a, m, o, s):
        np.subtract(a, m, out=o)
        _sum_of_squares(o, s)
    split_parallel(centred, xr, _channel_constant(own_mean, dtype, xr.shape), out, rows)
    buf = np.empty(c + 1, dtype=np.float64)                # [M_r, sum(x)]
    buf[0] = local
    buf[1:] = own_mean * local
    allreduce(buf)
    count = int(round(buf[0]))
    if count < 2:
        raise ValueError(f"synchronized batch norm: expected more than 1 value per channel "
                         f"over all processes, got {count}")
    mean = buf[1:] / count
    squares = rows.sum(axis=0, dtype=np.float64) + local * (own_mean - mean)**2
    allreduce(squares)                                     # sum((x - mean)^2)
    var = squares / count                                  # biased
    inv_std = 1.0 / np.sqrt(var + eps)
    scale = inv_std if weight is None else inv_std * weight
    shift = (own_mean - mean) * scale                      # out holds x - mean_r
    if bias is not None:
        shift = shift + bias
    affine_channels(out, scale.astype(dtype), shift.astype(dtype), out=out)
    cache = SyncBatchNormCache(xr, mean.astype(dtype), inv_std.astype(dtype), weight,
                               var.astype(dtype), count, allreduce)
    return out.reshape(x.shape), cache


def sync_batch_norm_backward(dout, cache):
    """Gradients of sync_batch_norm_forward: returns (dx, dweight, dbias) of this share.

    dout must be the gradient of the loss over the whole batch (the training loop scales
    each share's by its size). The closed form of batch_norm_backward needs sum(dout) and
    sum(dout * xc) over the whole batch: one ``allreduce`` of these 2C values, then

        dx = a * dout + b * xc + k,   b = -gamma * inv_std^3 * sum(dout * xc) / M,
        k = -gamma * inv_std * sum(dout) / M,   a = gamma * inv_std

    with M the whole batch's count. dweight and dbias are this share's parts, sum(dout *
    xhat) and sum(dout) over its own rows: adding them over the processes (the gradient
    Allreduce) gives the whole batch's.
    """
    xr, mean, inv_std, weight, _, count, allreduce = cache
    dr, dx, own = _centred_sums(dout, xr, mean, inv_std, weight)
    c, dtype = xr.shape[1], dx.dtype
    own = own.ravel()                                      # [sum(dout), sum(dout*xc)]
    total = own.copy()
    allreduce(total)
    _input_grad(dr, dx, weight, inv_std, total[:c], total[c:], count)
    return (dx.reshape(dout.shape), (inv_std.astype(np.float64) * own[c:]).astype(dtype),
            own[:c].astype(dtype))


def batch_norm_affine(weight, bias, mean, var, eps=1e-5):
    """Eval-mode batch norm as one affine map per channel: returns (scale, shift), each
    (C,), with out = x * scale + shift. scale = gamma / sqrt(var + eps), shift = beta -
    mean * scale (gamma 1 and beta 0 when None). A CONV before it folds them into its
    filters (w * scale) and bias (b * scale + shift) at inference.

    >>> batch_norm_affine(None, None, np.array([2.0]), np.array([4.0]), eps=0.0)
    (array([0.5]), array([-1.]))
    """
    scale = 1.0 / np.sqrt(var + eps)
    if weight is not None:
        scale = scale * weight
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias
    return scale, shift


def affine_channels(x, scale, shift=None, out=None):
    """x * scale + shift per channel (axis 1; shift None adds nothing), in one or two
    passes split over both cores; ``out`` may be x itself."""
    xr = _per_channel(x)
    dtype = np.result_type(x, scale, *([] if shift is None else [shift]))
    out = np.empty(xr.shape, dtype=dtype) if out is None else _per_channel(out)

    def apply(o, a, s, t):
        np.multiply(a, s, out=o)
        if shift is not None:
            o += t
    split_parallel(apply, out, xr, _channel_constant(scale, dtype, xr.shape),
                   _channel_constant(np.zeros(np.shape(scale)) if shift is None else shift,
                                     dtype, xr.shape))
    return out.reshape(x.shape)


def update_running_stats(running_mean, running_var, mean, var, count, factor):
    """Exponential running averages of a batch's statistics; returns the new (mean, var).

    running = (1 - factor) * running + factor * batch, where the variance averaged is the
    UNBIASED one, var * M / (M - 1), as in PyTorch (normalization itself uses the biased
    one). factor is the momentum, or 1 / (batches seen) for a cumulative average.
    """
    unbiased = var * (count / (count - 1))
    new_mean = (1 - factor) * running_mean + factor * mean
    new_var = (1 - factor) * running_var + factor * unbiased
    return new_mean, new_var


class LRNCache(NamedTuple):
    x: np.ndarray        # (N, C, H, W), the input
    denom: np.ndarray    # (N, C, H, W), k + alpha/n * (sum of squares in the window)
    size: int
    alpha: float
    beta: float


def _window_sum(a, before, after):
    """Sum of a over the channel window [c - before, c + after], zero beyond the edges.

    A loop over the window's offsets, each adding the channels it shifts onto the
    channels that have them (no padded copy: one new array, the sum).
    """
    c = a.shape[1]
    total = a.copy()                                      # offset 0
    for off in range(-before, after + 1):
        lo, hi = max(0, -off), min(c, c - off)            # channels c' whose c' + off exists
        if off and lo < hi:
            total[:, lo:hi] += a[:, lo + off: hi + off]
    return total


def local_response_norm_forward(x, size, alpha=1e-4, beta=0.75, k=1.0):
    """AlexNet's local response normalization across channels, PyTorch's exact formula.

    x: (N, C, H, W) (any rank >= 2 with channels on axis 1). With n = size,

        b_c = a_c * (k + alpha / n * sum_{c'=c-n//2}^{c+(n-1)//2} a_{c'}^2) ^ (-beta)

    where channels outside 0..C-1 count as zero (so even n looks one more channel back
    than forward). Returns out (same shape as x) and a cache.

    >>> x = np.full((1, 3, 1, 1), 2.0)
    >>> local_response_norm_forward(x, size=3, alpha=3.0, beta=1.0, k=0.0)[0].ravel()
    array([0.25      , 0.16666667, 0.25      ])
    """
    sq_sum = _window_sum(x * x, size // 2, (size - 1) // 2)       # (N, C, H, W)
    denom = k + (alpha / size) * sq_sum
    out = x * denom ** -beta
    return out, LRNCache(x, denom, size, alpha, beta)


def local_response_norm_infer(x, size, alpha=1e-4, beta=0.75, k=1.0):
    """local_response_norm_forward's output alone, its passes in place on one array: the
    squares, and their window sum, which becomes the output (two arrays of x's size,
    where the training forward keeps the denominator and makes the output besides)."""
    sq = x * x
    out = _window_sum(sq, size // 2, (size - 1) // 2)
    del sq
    np.multiply(out, alpha / size, out=out)
    np.add(out, k, out=out)
    np.power(out, -beta, out=out)
    return np.multiply(out, x, out=out)


def local_response_norm_backward(dout, cache):
    """Gradient of local_response_norm_forward: returns dx.

    Each a_j scales its own output and enters the denominators d_c of every channel c whose
    window holds j, i.e. c in [j - (n-1)//2, j + n//2] (the window reflected):

        dx_j = dout_j * d_j^-beta - 2 beta alpha / n * a_j * sum_c dout_c a_c d_c^(-beta-1)
    """
    x, denom, size, alpha, beta = cache
    scale = denom ** -beta                                        # d^-beta, (N, C, H, W)
    # a_c d_c^(-beta-1) as (a_c d_c^-beta) / d_c: the power alone underflows float32 for
    # large activations (d ~ 1e21), losing the window's term
    g = dout * (x * scale) / denom
    g_sum = _window_sum(g, (size - 1) // 2, size // 2)
    return dout * scale - (2 * beta * alpha / size) * x * g_sum
