"""Convolution as im2col + one matrix multiply, and its backward pass.

The notes' recipe (CS231n, "Implementation as Matrix Multiplication"):

1. im2col stretches every receptive field of the input into a column: for AlexNet's
   CONV1 (227x227x3 input, 96 filters of 11x11x3, S=4) that is a 363 x 3025 matrix.
2. The filters are stretched into rows: W_row is 96 x 363.
3. np.dot(W_row, X_col) is the convolution: 96 x 3025, reshaped to 55x55x96.

The backward pass is again a matrix multiply (for the weights) and a matrix multiply
followed by col2im, which adds every column back onto the receptive field it came from.

Notation: x is (N, C, H, W); w is (K, C // groups, FH, FW); out is (N, K, OH, OW).
Dilation follows PyTorch: 1 means contiguous filters (the notes' "dilation 0").
"""

from __future__ import annotations

import threading
import weakref
from typing import NamedTuple

import numpy as np
from numpy.lib.stride_tricks import as_strided, sliding_window_view

from convnet.functional.threads import THREADS, in_parallel, per_thread, split_parallel

FITS = ("exact", "floor")


def conv_output_size(size, kernel, stride, padding, dilation=1, fit="exact", ceil=False,
                     where="layer", axis="W"):
    """Output size along one axis: (W - F + 2P) / S + 1, with F the dilated extent.

    The notes call a setting invalid when this is not an integer. With ``fit="exact"``
    (the default) such a setting raises ``ValueError`` naming ``where``, the formula with
    the numbers and a fix. ``fit="floor"`` opts into PyTorch's flooring (the last rows or
    columns that do not fill a window are dropped); ``ceil=True`` is pooling's ceil mode.

    >>> conv_output_size(227, 11, 4, 0)
    55
    """
    if fit not in FITS:
        raise ValueError(f"{where}: fit must be one of {FITS}, got {fit!r}")
    extent = dilation * (kernel - 1) + 1
    span = size - extent + 2 * padding
    ext = f"F={kernel}" if dilation == 1 else f"F={extent} (F={kernel} at dilation {dilation})"
    if span < 0:
        raise ValueError(
            f"{where}: the filter extent along {axis} is larger than the padded input: "
            f"{ext} but {axis}={size} with P={padding} gives {size + 2 * padding}")
    if ceil:
        out = -(-span // stride) + 1
        # PyTorch's rule: the last window must start inside the input or the left padding.
        if (out - 1) * stride >= size + padding:
            out -= 1
        return out
    if span % stride and fit == "exact":
        formula = (f"({axis} - F + 2P)/S + 1 = ({size} - {extent} + 2*{padding})/{stride} + 1 "
                   f"= {span / stride + 1:g}")
        raise ValueError(
            f"{where}: hyperparameters do not fit along {axis}: {formula} is not an integer. "
            f"{_fit_hint(size, extent, stride, padding)}, or pass fit='floor' to drop the "
            f"last {span % stride} row(s)/column(s) as PyTorch does")
    return span // stride + 1


def _fit_hint(size, extent, stride, padding):
    """Suggest the nearest padding or stride that makes (W - F + 2P) / S integral."""
    hints = []
    tries = min(stride, 4096)  # a hint, not a search: huge strides get the generic advice
    for p in range(padding + 1, padding + tries + 1):
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
    """Check that x is a floating NCHW array with ``channels`` channels; say what is wrong."""
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{where}: expected a NumPy array, got {type(x).__name__}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{where}: expected a floating-point array (float32 or float64), "
                         f"got dtype {x.dtype}; convert with x.astype(np.float32)")
    if x.ndim != rank:
        layout = "(N, C, H, W)" if rank == 4 else "(N, features)"
        raise ValueError(f"{where}: expected a {rank}-D input {layout}, got shape {x.shape}")
    if channels is not None and x.shape[1] != channels:
        if rank == 4 and x.shape[3] == channels:
            raise ValueError(
                f"{where}: expected {channels} channels in axis 1 (NCHW), got shape {x.shape}; "
                f"this looks like an NHWC array: use x.transpose(0, 3, 1, 2)")
        raise ValueError(f"{where}: expected {channels} input channels (depth D), "
                         f"got {x.shape[1]} in shape {x.shape}")


def pad(x, padding, value=0, padded_shape=None, out=None):
    """Pad the two spatial axes of an NCHW array: (PH, PW) rows/columns of ``value`` before,
    and after up to ``padded_shape`` (HP, WP) (default: PH and PW after too).

    Writes the interior and the border once, over both cores: 2x faster than np.pad.
    ``out``: an optional buffer to write into, as for im2col.
    """
    n, c, h, w = x.shape
    ph, pw = padding
    hp, wp = padded_shape if padded_shape is not None else (h + 2 * ph, w + 2 * pw)
    if (hp, wp) == (h, w):
        return x
    xp = buffer(out, n * c * hp * wp, x.dtype).reshape(n, c, hp, wp)

    def fill(dst, src):
        dst[:, :, ph: ph + h, pw: pw + w] = src
        dst[:, :, :ph] = value
        dst[:, :, ph + h:] = value
        dst[:, :, ph: ph + h, :pw] = value
        dst[:, :, ph: ph + h, pw + w:] = value
    split_parallel(fill, xp, x)
    return xp


def buffer(out, size, dtype):
    """The first ``size`` values of the flat buffer ``out`` when it has that many of
    ``dtype``, else a new array: reusing memory saves the page faults of a fresh one."""
    if out is None or out.size < size or out.dtype != dtype:
        return np.empty(size, dtype=dtype)
    return out.reshape(-1)[:size]


# Temporaries that never leave the function making them (a padded input, an im2col
# matrix or Y, a GEMM product) come from buffers kept per thread between calls: a fresh
# large array is mapped in anew and each of its 4 KiB pages faults on first touch (a few
# microseconds each in a VM: about a tenth of VGG-16's inference at batch 1). One buffer
# per role, each at most SCRATCH_MAX_BYTES (a larger temporary is made afresh), so what
# is kept stays bounded; release_scratch() frees it.
SCRATCH_MAX_BYTES = 64 << 20
_scratch = weakref.WeakKeyDictionary()   # thread -> {role: buffer}, gone with the thread


def scratch(role, size, dtype):
    """A flat array of ``size`` values of ``dtype`` from this thread's kept buffer for
    ``role`` ("padded", "cols" or "product"), grown when too small; a new array when it
    would exceed SCRATCH_MAX_BYTES. The next call for the same role overwrites it: use
    it only for a temporary that no caller sees."""
    dtype = np.dtype(dtype)
    nbytes = size * dtype.itemsize
    if nbytes > SCRATCH_MAX_BYTES:
        return np.empty(size, dtype=dtype)
    kept = _scratch.setdefault(threading.current_thread(), {})
    if role not in kept or kept[role].nbytes < nbytes:
        kept.pop(role, None)                            # freed before its successor
        kept[role] = np.empty(max(nbytes, 1), dtype=np.uint8)
    return kept[role][:nbytes].view(dtype)


def release_scratch():
    """Free every thread's scratch buffers (see scratch); call it when no convnet work
    is running."""
    for kept in list(_scratch.values()):
        kept.clear()


def windows(x, kernel, stride, dilation, out_size):
    """Strided view of every receptive field: (N, C, OH, OW, FH, FW), no copy."""
    (fh, fw), (sh, sw), (dh, dw), (oh, ow) = kernel, stride, dilation, out_size
    view = sliding_window_view(x, (dh * (fh - 1) + 1, dw * (fw - 1) + 1), axis=(2, 3))
    return view[:, :, : sh * (oh - 1) + 1 : sh, : sw * (ow - 1) + 1 : sw, ::dh, ::dw]


def im2col(x, kernel, stride=(1, 1), padding=(0, 0), dilation=(1, 1), out_size=None,
           out=None):
    """Stretch every receptive field of x into a column.

    x: (N, C, H, W). Returns X_col of shape (C*FH*FW, N*OH*OW): rows ordered (c, i, j),
    columns ordered (n, oh, ow). For one 227x227x3 image, F=11, S=4: 363 x 3025.
    ``out``: an optional buffer of x's dtype, at least that size, to write into (its first
    C*FH*FW*N*OH*OW values; reused memory saves the page faults of a fresh allocation).
    """
    xp = pad(x, padding)
    if out_size is None:
        out_size = tuple(conv_output_size(xp.shape[2 + a], kernel[a], stride[a], 0, dilation[a],
                                          fit="floor") for a in (0, 1))
    n, c = x.shape[:2]
    win = windows(xp, kernel, stride, dilation, out_size)          # (N, C, OH, OW, FH, FW)
    src = win.transpose(1, 4, 5, 0, 2, 3)                           # (C, FH, FW, N, OH, OW)
    cols = buffer(out, src.size, x.dtype).reshape(src.shape)

    def copy(part):
        np.copyto(cols[part], src[part])
    in_parallel(copy, c, cols.nbytes)
    return cols.reshape(c * kernel[0] * kernel[1], n * out_size[0] * out_size[1])


def col2im(cols, x_shape, kernel, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
           out_size=None):
    """Inverse bookkeeping of im2col: add every column back onto its receptive field.

    cols: (C*FH*FW, N*OH*OW). Returns (N, C, H, W). Overlapping fields add up, which is
    exactly the gradient of im2col. A loop over the FH x FW kernel offsets, each adding
    one strided slice; never a loop over pixels or samples.
    """
    n, c, h, w = x_shape
    (fh, fw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    oh, ow = out_size
    cols = cols.reshape(c, fh, fw, n, oh, ow)
    dxp = np.zeros((c, n, h + 2 * ph, w + 2 * pw), dtype=cols.dtype)  # channel-major

    def add(part):  # channels in `part`, every kernel offset
        for i in range(fh):
            for j in range(fw):
                dxp[part, :, i * dh: i * dh + sh * oh: sh, j * dw: j * dw + sw * ow: sw] += (
                    cols[part, i, j])
    in_parallel(add, c, cols.nbytes)
    return dxp[:, :, ph: ph + h, pw: pw + w].transpose(1, 0, 2, 3)


class ConvCache(NamedTuple):
    x_shape: tuple
    cols: np.ndarray      # (C*FH*FW, N*OH*OW), the im2col matrix of the input, or on the
                          # shifted path and conv_blocks' the input x itself (its matrices
                          # are made again, in blocks)
    w: np.ndarray         # (K, C // groups, FH, FW)
    stride: tuple
    padding: tuple
    dilation: tuple
    groups: int
    out_size: tuple
    shifted: bool = False  # the shifted path: cols is x
    workspace: np.ndarray = None  # the flat buffer cols is in (reusable once spent)
    relu_out: np.ndarray = None   # with relu=True, the output max(0, conv): its > 0 entries
                                  # pass the gradient
    blocked: bool = False  # conv_blocks: cols is x


def conv2d_forward(x, w, b=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1,
                   fit="exact", cols_out=None, relu=False):
    """Convolve K filters over x: im2col, then one matrix multiply per group.

    x: (N, C, H, W); w: (K, C // groups, FH, FW); b: (K,) or None.
    Returns out (N, K, OH, OW) with OH = (H - FH' + 2P)/S + 1, FH' = dilation*(FH-1)+1,
    and a cache for conv2d_backward. Stride-1 convs that suit it (shifted_suits: most
    3x3 layers) take the shifted path instead (conv_shifted_images): the same product
    with a third of im2col's copying, made in blocks that stay in the CPU's cache. Of
    the others, batches with wide enough output planes (blocks_suit: first layers,
    strided layers) take conv_blocks: im2col and the GEMM a few images at a time, each
    thread its own. Both caches keep x itself rather than a matrix (so x must not change
    before the backward pass) and have no workspace. ``cols_out``: an optional flat
    buffer for the im2col matrix; the one used is the cache's ``workspace``, to pass back
    as cols_out next time (see im2col). relu=True returns max(0, conv), the RELU of a
    CONV -> RELU applied as the output is finished (no pass of its own); conv2d_backward
    then takes the gradient of that output and lets it through only where it is > 0.

    >>> x = np.zeros((1, 3, 227, 227)); w = np.zeros((96, 3, 11, 11))
    >>> conv2d_forward(x, w, stride=(4, 4))[0].shape
    (1, 96, 55, 55)
    """
    out_size = _out_size(x.shape, w.shape, stride, padding, dilation, fit)
    out = np.empty((x.shape[0], w.shape[0], *out_size), dtype=np.result_type(x, w))
    n, c, h, wd = x.shape
    k, _, fh, fw = w.shape
    if shifted_suits(x.shape, w.shape, stride, padding, dilation, groups):
        conv_shifted_images(x, w, b, padding, dilation, out, relu)
        return out, ConvCache(x.shape, x, w, stride, padding, dilation, groups, out_size,
                              True, None, out if relu else None)
    if blocks_suit(x.shape, w.shape, out_size, groups):
        conv_blocks(x, w, b, stride, padding, dilation, out, relu)
        return out, ConvCache(x.shape, x, w, stride, padding, dilation, groups, out_size,
                              False, None, out if relu else None, True)
    workspace = buffer(cols_out, c * fh * fw * n * out_size[0] * out_size[1], x.dtype)
    cols = im2col(x, (fh, fw), stride, padding, dilation, out_size, workspace)  # (CFF, N*L)
    _gemm_nchw(w, b, cols, groups, out, relu)
    return out, ConvCache(x.shape, cols, w, stride, padding, dilation, groups, out_size,
                          False, workspace, out if relu else None)


def _out_size(x_shape, w_shape, stride, padding, dilation, fit):
    """(OH, OW) of a conv of x (N, C, H, W) with filters w (K, C/G, FH, FW), checked."""
    return tuple(conv_output_size(x_shape[2 + a], w_shape[2 + a], stride[a], padding[a],
                                  dilation[a], fit, where="conv2d", axis="HW"[a])
                 for a in (0, 1))


def _gemm_nchw(w, b, cols, groups, out, relu=False, scale=None):
    """out (N, K, OH, OW) = W_row @ X_col + b, one GEMM per group, written in NCHW order.

    The GEMM gives (K, N*OH*OW); for one image that is already NCHW, for several the
    bias is added while transposing to (N, K, OH*OW), so the result is written once.
    scale (K,) multiplies each output channel before the bias (a batch norm folded into
    the output); relu=True then applies max(0, .) (a CONV -> RELU at inference). Both
    work on each part of the output right after it is written, on the same array: no
    array and no layer call of their own, though each is still a pass over the part.
    """
    assert out.flags.c_contiguous  # written through reshaped views
    n, k, oh, ow = out.shape
    w_rows = w.reshape(groups, k // groups, cols.shape[0] // groups)   # W_row per group
    cols = cols.reshape(groups, w_rows.shape[2], n * oh * ow)          # (G, Cg*FF, N*L)
    if n == 1:
        np.matmul(w_rows, cols, out=out.reshape(groups, k // groups, oh * ow))
        if b is None and scale is None and not relu:
            return out
        dst = src = out.reshape(k, oh * ow)                            # in place
    else:
        product = scratch("product", k * n * oh * ow, np.result_type(w_rows, cols))
        src = np.matmul(w_rows, cols, out=product.reshape(groups, k // groups, n * oh * ow))
        src = src.reshape(k, n, oh * ow).transpose(1, 0, 2)                  # (N, K, L)
        dst = out.reshape(n, k, oh * ow)

    def per_channel(v):   # (K,) as a view of dst's shape, sliced along with it
        v = np.zeros(1, dst.dtype) if v is None else v.reshape(k, 1)
        return np.broadcast_to(v, dst.shape)

    def finish(o, p, factor, bias):   # o = p * factor + bias, then max(0, o)
        if scale is not None:
            np.multiply(p, factor, out=o)
            p = o
        if b is not None:
            np.add(p, bias, out=o)
        elif not np.may_share_memory(o, p):
            np.copyto(o, p)
        if relu:
            np.maximum(o, 0, out=o)
    split_parallel(finish, dst, src, per_channel(scale), per_channel(b))
    return out


# -- image blocks: the other convolutions of a batch, a few images at a time a thread ----
# A batch of at least two images whose output planes have at least this many positions
# takes conv_blocks (in training and at inference) where the shifted path does not suit.
BLOCKS_MIN_POSITIONS = 100
# conv_blocks makes the im2col matrix of this many bytes of images at a time (at least one).
BLOCK_BYTES = 4 << 20


def blocks_suit(x_shape, w_shape, out_size, groups):
    """Whether a conv that is not on the shifted path runs as conv_blocks: one group, a
    batch of two or more, and output planes of at least BLOCKS_MIN_POSITIONS positions
    (each image's GEMM is then wide enough to run near BLAS's peak)."""
    return groups == 1 and x_shape[0] >= 2 and out_size[0] * out_size[1] >= BLOCKS_MIN_POSITIONS


def conv_blocks(x, w, b, stride, padding, dilation, out, relu=False, scale=None,
                max_bytes=None):
    """out (N, K, OH, OW) = the convolution of x (N, C, H, W) with filters w (K, C, FH, FW),
    a block of images at a time. Returns out.

    The images are split between the threads (per_thread), each running its own blocks:
    pad the block's images, copy their receptive fields into an im2col matrix laid out
    image by image, (n, C*FH*FW, OH*OW), and multiply it by W_row (K, C*FH*FW) as one
    stacked matmul, which writes each image's (K, OH*OW) straight into out: the output is
    NCHW as it is made, with no product to transpose, and the block's matrix (at most
    max_bytes, default BLOCK_BYTES, and at least one image's) is still in the core's
    cache when it is used. Against im2col + one GEMM for the batch: 0.69-0.85x the time
    on the first layers of the small nets (batch 256) and of VGG-16 and ResNet-18 (batch
    8), and 0.85-0.93x on ResNet-18's strided layers with 28x28 outputs.
    b, relu and scale as in conv2d_infer, applied to the block's output in place.
    """
    max_bytes = BLOCK_BYTES if max_bytes is None else max_bytes
    n, c = x.shape[:2]
    k, _, fh, fw = w.shape
    oh, ow = out.shape[2:]
    positions, depth = oh * ow, c * fh * fw
    per = max(1, max_bytes // max(1, depth * positions * x.itemsize))
    w_rows = w.reshape(k, depth)

    def run(part):
        for s in range(part.start, part.stop, per):
            sub = x[s: min(part.stop, s + per)]
            m = sub.shape[0]
            cols = _block_cols(sub, (fh, fw), stride, padding, dilation, (oh, ow),
                               (0, 1, 4, 5, 2, 3))                 # (m, C, FH, FW, OH, OW)
            o = out[s: s + m].reshape(m, k, positions)
            np.matmul(w_rows, cols.reshape(m, depth, positions), out=o)
            _scale_bias_relu(o, scale, b, relu)
    per_thread(run, n)
    return out


def _block_cols(sub, kernel, stride, padding, dilation, out_size, axes):
    """The receptive fields of a block of images sub (m, C, H, W), padded into this
    thread's "padded" scratch buffer: their windows (m, C, OH, OW, FH, FW) transposed by
    ``axes``, copied into this thread's "cols" scratch buffer."""
    m, c, h, w = sub.shape
    size = m * c * (h + 2 * padding[0]) * (w + 2 * padding[1])
    xp = pad(sub, padding, out=scratch("padded", size, sub.dtype))
    win = windows(xp, kernel, stride, dilation, out_size).transpose(axes)
    cols = scratch("cols", win.size, sub.dtype).reshape(win.shape)
    np.copyto(cols, win)
    return cols


def _blocks_backward(dout, cache, input_grad):
    """(dx, dw, db) of a conv that ran conv_blocks, from dout and the kept x, a block of
    images at a time: each thread runs its own images' blocks (per_thread), making each
    block's im2col matrix again from x, this time in im2col's order (C*FH*FW, n*OH*OW),
    with dout's block beside it as (K, n*OH*OW) (masked where a fused RELU's output was
    0). Then dw += dout_rows @ X_col^T and db += the rows' sums, summed per thread, and
    dx's images are col2im(W_row^T @ dout_rows), that product written over the spent
    matrix when their dtypes agree."""
    x_shape, x, w, stride, padding, dilation, _, (oh, ow) = cache[:8]
    gate = cache.relu_out
    n, c = x_shape[:2]
    k, _, fh, fw = w.shape
    positions, depth = oh * ow, c * fh * fw
    per = max(1, BLOCK_BYTES // max(1, depth * positions * x.itemsize))
    w_cols = w.reshape(k, depth).T
    dx = np.empty(x_shape, dtype=np.result_type(w, dout)) if input_grad else None
    sums = {}

    def run(part):
        dw = np.zeros((k, depth), dtype=np.result_type(dout, x))
        db = np.zeros(k, dtype=dout.dtype)
        for s in range(part.start, part.stop, per):
            sub = x[s: min(part.stop, s + per)]
            m = sub.shape[0]
            cols = _block_cols(sub, (fh, fw), stride, padding, dilation, (oh, ow),
                               (1, 4, 5, 0, 2, 3))                 # (C, FH, FW, m, OH, OW)
            d = scratch("product", k * m * positions, dout.dtype).reshape(k, m, oh, ow)
            src = dout[s: s + m].transpose(1, 0, 2, 3)
            if gate is None:
                np.copyto(d, src)
            else:
                np.multiply(src, gate[s: s + m].transpose(1, 0, 2, 3) > 0, out=d)
            d, cols = d.reshape(k, m * positions), cols.reshape(depth, m * positions)
            dw += np.matmul(d, cols.T)
            db += d.sum(axis=1)
            if input_grad:   # dX_col over X_col, which is spent
                dcols = np.matmul(w_cols, d, out=cols if cols.dtype == dx.dtype else None)
                dx[s: s + m] = col2im(dcols, sub.shape, (fh, fw), stride, padding, dilation,
                                      (oh, ow))
        sums[part.start] = dw, db
    per_thread(run, n)
    dw, db = (sum(parts) for parts in zip(*(sums[i] for i in sorted(sums))))
    return dx, dw.reshape(w.shape), db


# -- the shifted path: stride-1 convolutions, im2col along H only -----------------------
# A stride-1 conv with at least this many input channels, whose padded rows are longer
# than its output rows by at most this fraction times (FW - 1)/2, runs as conv_shifted
# instead of im2col + GEMM. The extra columns cost GEMM time in proportion; the copying
# saved grows with FW (im2col copies the input FH*FW times, the shifted path FH times), so
# wider filters may waste more: 3x3 and 5x5 layers from 8x8 up qualify (5x5 at 8x8:
# 0.84x the im2col path's time in training, the same at inference).
SHIFTED_MIN_CHANNELS = 16
SHIFTED_MAX_WASTE = 0.125
# The shifted path works in blocks of images (or of rows of one image) whose Y and GEMM
# product each take at most this many bytes: each thread runs its own blocks, one after
# another, in its core's share of the cache (see per_thread).
SHIFTED_BLOCK_BYTES = 4 << 20


def shifted_suits(x_shape, w_shape, stride, padding, dilation, groups):
    """Whether a conv takes the shifted path (see conv_shifted): stride 1, no groups, a
    filter wider than 1, enough input channels, and output rows wide enough that the
    extra columns of the padded rows cost little (a fraction SHIFTED_MAX_WASTE * (FW-1)/2
    of the output's at most)."""
    k, cg, fh, fw = w_shape
    ow = x_shape[3] + 2 * padding[1] - dilation[1] * (fw - 1)
    pitch = _shifted_padding(x_shape, w_shape, padding, dilation)[1]
    return (stride == (1, 1) and groups == 1 and fw > 1 and cg >= SHIFTED_MIN_CHANNELS
            and ow > 0 and pitch - ow <= SHIFTED_MAX_WASTE * ow * (fw - 1) / 2)


def _shifted_padding(x_shape, w_shape, padding, dilation):
    """(HP, WP) of the shifted path's padded input: PH zero rows above and below, PW zero
    columns before each row and none after it (each row's right padding is the next row's
    left padding: a tap reaching past a row's end reads the next row's first PW columns,
    all zeros), plus any columns an output row needs beyond that (when PW > dw*(FW-1))."""
    h, w = x_shape[2:]
    (ph, pw), dw, fw = padding, dilation[1], w_shape[3]
    return h + 2 * ph, w + pw + max(0, pw - dw * (fw - 1))


def im2col_rows(xp, fh, dh, oh, out=None):
    """im2col along H only: the (C*FH, N*OH*WP) matrix Y[(c, i), (n, h, w)] =
    xp[n, c, h + i*dh, w] of a padded input xp (N, C, HP, WP).

    The FH vertical taps are copied (FH times the input, where im2col copies FH*FW times);
    the FW horizontal ones are not: tap j is Y's columns shifted by j*dw (conv_shifted).

    ``out``: an optional buffer to write into, as for im2col.

    >>> im2col_rows(np.zeros((2, 3, 6, 7)), 3, 1, 4).shape   # (3*3, 2*4*7)
    (9, 56)
    """
    n, c, _, wp = xp.shape
    y = buffer(out, c * fh * n * oh * wp, xp.dtype).reshape(c, fh, n, oh, wp)

    def copy(part):
        for i in range(fh):
            np.copyto(y[part, i], xp[:, part, i * dh: i * dh + oh].transpose(1, 0, 2, 3))
    in_parallel(copy, c, y.nbytes)
    return y.reshape(c * fh, n * oh * wp)


def _shifted_filters(w):
    """W_s (FW*K, C*FH): row (j, k) holds filter k's column j of taps, ordered (c, i)."""
    k, c, fh, fw = w.shape
    return np.ascontiguousarray(w.transpose(3, 0, 1, 2)).reshape(fw * k, c * fh)


def _row_blocks(n, oh, row_bytes, max_bytes):
    """(n0, n1, h0, h1) blocks covering N images of OH output rows: whole images while
    several fit in max_bytes (row_bytes per output row), else bands of rows of one."""
    per_image = max_bytes // (row_bytes * oh)
    if per_image >= 1:
        return [(s, min(n, s + per_image), 0, oh) for s in range(0, n, per_image)]
    rows = max(1, max_bytes // row_bytes)
    return [(i, i + 1, r, min(oh, r + rows)) for i in range(n) for r in range(0, oh, rows)]


def conv_shifted(xp, w, b, dilation, out, relu=False, scale=None, max_bytes=None,
                 w_s=None):
    """out (N, K, OH, OW) = the stride-1 convolution of the padded input xp (N, C, HP, WP)
    (padded as _shifted_padding says) with filters w (K, C, FH, FW), as one GEMM per
    block of output rows. Returns out.

    With Y = im2col_rows(xp) and W_s = the filters' columns stacked (FW*K, C*FH), the
    product Z = W_s @ Y holds, for each horizontal tap j, every filter's partial sums at
    every padded column; the output is the FW products added with shifts:
    out[n, k, h, w] = sum_j Z[(j, k), (n, h, w + j*dw)]. The GEMM does im2col's FLOPs
    (on WP/OW times as many columns) from a third of the copying, with FW*K rows where
    im2col's has K: for K=32 OpenBLAS runs it measurably nearer its peak.
    Y and Z are made block by block, each block at most max_bytes (default
    SHIFTED_BLOCK_BYTES). b, relu and scale as in conv2d_infer; w_s: _shifted_filters(w),
    when the caller has it already.
    """
    max_bytes = SHIFTED_BLOCK_BYTES if max_bytes is None else max_bytes
    n, c, _, wp = xp.shape
    k, _, fh, fw = w.shape
    oh, ow = out.shape[2:]
    (dh, dw), ext = dilation, dilation[0] * (fh - 1)
    w_s = _shifted_filters(w) if w_s is None else w_s
    blocks = _row_blocks(n, oh, _shifted_row_bytes(w.shape, wp, _itemsize(xp, w)), max_bytes)
    if not blocks:   # an empty batch
        return out
    n0, n1, h0, h1 = blocks[0]
    z_buf = scratch("product", fw * k * (n1 - n0) * (h1 - h0) * wp, np.result_type(xp, w))
    y_buf = scratch("cols", c * fh * (n1 - n0) * (h1 - h0) * wp, xp.dtype)
    for n0, n1, h0, h1 in blocks:
        y_blk = im2col_rows(xp[n0:n1, :, h0: h1 + ext], fh, dh, h1 - h0, y_buf)
        z = z_buf[: fw * k * y_blk.shape[1]].reshape(fw * k, y_blk.shape[1])
        np.matmul(w_s, y_blk, out=z)
        _shifted_sum(z.reshape(fw, k, y_blk.shape[1]), dw, b, relu, scale,
                     out[n0:n1, :, h0:h1].transpose(1, 0, 2, 3))
    return out


def _itemsize(*arrays):
    """The largest item size among the arrays: what a block's Y or Z may take per value."""
    return max(a.itemsize for a in arrays)


def _shifted_row_bytes(w_shape, wp, itemsize):
    """Bytes per output row of the larger of Y (C*FH rows) and Z (FW*K rows), at
    itemsize bytes a value."""
    k, c, fh, fw = w_shape
    return max(fw * k, c * fh) * wp * itemsize


def conv_shifted_images(x, w, b, padding, dilation, out, relu=False, scale=None,
                        max_bytes=None):
    """out = the stride-1 convolution of x (N, C, H, W) on the shifted path (conv_shifted),
    a few images at a time: each block of images is padded, stretched into its Y and
    multiplied while it is still in the cache, its Y and Z at most max_bytes each (bands
    of rows when one image is larger; max_bytes defaults to SHIFTED_BLOCK_BYTES). The
    images are split between the threads, each running its own blocks with BLAS on one
    thread (per_thread); a single image's output rows are, and when a thread's rows fit
    in one block a single image takes conv_one_image instead. Each thread's temporaries
    (its padded images, Y and Z) are its own, so together they take up to THREADS times
    a block's. Returns out."""
    max_bytes = SHIFTED_BLOCK_BYTES if max_bytes is None else max_bytes
    n, c = x.shape[:2]
    hp, wp = _shifted_padding(x.shape, w.shape, padding, dilation)
    if n == 1 and _wide_row_bytes(w.shape, wp, _itemsize(x, w)) * _rows_per_thread(
            out.shape[2]) <= max_bytes:
        return conv_one_image(x, w, b, padding, dilation, out, relu, scale)
    w_s = _shifted_filters(w)
    if n == 1:
        xp = pad(x, padding, padded_shape=(hp, wp), out=scratch("padded", c * hp * wp, x.dtype))
        ext = dilation[0] * (w.shape[2] - 1)

        def rows(part):
            conv_shifted(xp[:, :, part.start: part.stop + ext], w, b, dilation,
                         out[:, :, part], relu, scale, max_bytes, w_s)
        per_thread(rows, out.shape[2])
        return out
    per = _images_per_block(w.shape, wp, out.shape[2], _itemsize(x, w), max_bytes)

    def run(part):
        for s in range(part.start, part.stop, per):
            sub = x[s: min(part.stop, s + per)]
            xp = pad(sub, padding, padded_shape=(hp, wp),
                     out=scratch("padded", sub.shape[0] * c * hp * wp, x.dtype))
            conv_shifted(xp, w, b, dilation, out[s: s + sub.shape[0]], relu, scale,
                         max_bytes, w_s)
    per_thread(run, n)
    return out


def conv_one_image(x, w, b, padding, dilation, out, relu=False, scale=None):
    """out (1, K, OH, OW) = the stride-1 convolution of one image x (1, C, H, W): im2col
    over whole padded rows, the output rows split between the threads.

    In the shifted path's padded layout (see _shifted_padding) an output row's windows,
    taken over all WP columns, are for every tap (c, i, j) one contiguous run of the
    flattened padded image: tap (c, i, j) of output rows h0..h1 is the run of (h1-h0)*WP
    values that starts at c*HP*WP + (h0 + i*dh)*WP + j*dw. So this im2col matrix (C*FH*FW,
    (h1-h0)*WP) is one copy of C*FH*FW long runs (im2col's rows are runs of OW), the
    filters are used as they are (K, C*FH*FW), and the GEMM gives the output rows
    directly, WP - OW columns too wide: no shifted sum. Runs reaching past a row's end
    read the next row's left padding (zeros); past the last channel, FW-1 (dilated)
    zeros added after the padded image.

    Each thread takes its output rows as one block, with BLAS on one thread
    (conv_shifted_images uses this only when a thread's matrix and product fit in its
    block size; run on one thread, the blocks go one after another).
    Against the shifted path at batch 1 (fewer passes and NumPy calls, no transposed
    filter bank): 0.7-0.95x the time on ResNet-18's 3x3 layers at 28x28 and 14x14, about
    the same at 56x56; the whole of ResNet-18 0.97x, VGG-16 0.98x.
    b, relu and scale as in conv2d_infer. Returns out.
    """
    c = x.shape[1]
    k, _, fh, fw = w.shape
    oh, ow = out.shape[2:]
    (dh, dw), dtype = dilation, np.result_type(x, w)
    hp, wp = _shifted_padding(x.shape, w.shape, padding, dilation)
    size = c * hp * wp
    flat = scratch("padded", size + (fw - 1) * dw, x.dtype)
    xp = pad(x, padding, padded_shape=(hp, wp), out=flat)
    if xp is x:   # no padding: pad returns x itself
        flat[:size] = x.reshape(-1)
    flat[size:] = 0
    w_rows = w.reshape(k, c * fh * fw)
    step = flat.itemsize
    band = _rows_per_thread(oh)   # rows per block: one block a thread

    def rows(part):
        for h0 in range(part.start, part.stop, band):
            block(h0, min(part.stop, h0 + band))

    def block(h0, h1):
        m = (h1 - h0) * wp
        taps = as_strided(flat[h0 * wp:], (c, fh, fw, m),
                          (hp * wp * step, dh * wp * step, dw * step, step), writeable=False)
        cols = scratch("cols", taps.size, x.dtype).reshape(c * fh * fw, m)
        np.copyto(cols.reshape(taps.shape), taps)
        z = np.matmul(w_rows, cols, out=scratch("product", k * m, dtype).reshape(k, m))
        _scale_bias_relu(z, scale, b, relu)
        np.copyto(out[0, :, h0:h1], z.reshape(k, h1 - h0, wp)[:, :, :ow])
    per_thread(rows, oh)
    return out


def _wide_row_bytes(w_shape, wp, itemsize):
    """Bytes per output row of the larger of conv_one_image's matrix and product."""
    k, c, fh, fw = w_shape
    return max(c * fh * fw, k) * wp * itemsize


def _rows_per_thread(oh):
    return -(-oh // THREADS)


def _images_per_block(w_shape, wp, oh, itemsize, max_bytes):
    """How many images' Y and Z fit in max_bytes each (at least one)."""
    return max(1, max_bytes // (_shifted_row_bytes(w_shape, wp, itemsize) * oh))


def _shifted_sum(z, dw, b, relu, scale, out):
    """out (K, n, h, OW) = z[0] (K, n*h*WP) + z[j] shifted left by j*dw for every tap j,
    then * scale + b and max(0, .) per channel: flat passes in place on z[0] (long
    contiguous loops), then a copy into out (dropping each row's WP - OW extra columns),
    in pieces of rows small enough to stay in the CPU's cache."""
    fw, k, m = z.shape
    wp = m // (out.shape[1] * out.shape[2])
    ow = out.shape[3]
    step = max(1, (512 << 10) // (m * z.itemsize))

    def work(part):
        for r in range(part.start, part.stop, step):
            rows = slice(r, min(part.stop, r + step))
            z0 = z[0, rows]
            for j in range(1, fw):
                s = min(j * dw, m)         # a block of one short row can be narrower
                np.add(z0[:, : m - s], z[j, rows, s:], out=z0[:, : m - s])
            _scale_bias_relu(z0, scale, b, relu, rows)
            # A plain copy for the rows of OW out of WP: a ufunc writing them into out
            # would loop over rows of OW (16 at 16x16), about twice as slow.
            np.copyto(out[rows], z0.reshape(-1, *out.shape[1:3], wp)[..., :ow])
    in_parallel(work, k, z.nbytes)


def _scale_bias_relu(z, scale, b, relu, rows=slice(None)):
    """z = max(0, z * scale + b) in place, z's rows being the output channels ``rows``:
    each step only when given (scale and b (K,) or None, relu a bool)."""
    if scale is not None:
        np.multiply(z, scale[rows, None], out=z)
    if b is not None:
        np.add(z, b[rows, None], out=z)
    if relu:
        np.maximum(z, 0, out=z)


def _shifted_grad(dz, src, dw, gate=None):
    """Z's gradient dZ (FW, K, n*h*WP) of an output block's gradient src (K, n, h, OW):
    dZ[j, k, (n, h, w)] = src[k, n, h, w - j*dw], 0 outside [0, OW). gate: the block's
    RELU output (K, n, h, OW), when a RELU was fused in: src passes only where it is > 0."""
    fw, k, cols = dz.shape
    _, n, h, ow = src.shape
    wp = cols // (n * h)

    def tap0(part):   # src, with WP - OW zero columns after each row
        dz0 = dz[0, part].reshape(-1, n, h, wp)
        if gate is None:
            np.copyto(dz0[..., :ow], src[part])
        else:
            np.multiply(src[part], gate[part] > 0, out=dz0[..., :ow])
        for col in range(ow, wp):
            dz0[..., col] = 0
    in_parallel(tap0, k, dz[0].nbytes)
    # Tap j is tap 0 shifted right by j*dw as one flat array: each row's first columns
    # then read the zeros that end the row before (one 1-D copy per tap: a shifted copy
    # row by row runs several times slower in NumPy).
    flat = dz.reshape(fw, -1)
    for j in range(1, fw):
        s = min(j * dw, flat.shape[1])
        flat[j, :s] = 0
        split_parallel(np.copyto, flat[j, s:], flat[0, : flat.shape[1] - s])


def col2im_rows(dy, dx, dh, padding, h0=0, fresh=False):
    """The gradient of pad + im2col_rows: add dY (C, FH, n, h, WP), the gradient of Y's
    block of n images' output rows h0 .. h0+h-1, onto dx (n, C, H, W), the input's gradient.
    Tap i of output row r was copied from input row r + i*dh - PH, columns PW .. PW+W-1 of
    the padded row; what came from the padding is dropped. FH adds of contiguous rows,
    over both cores, straight into dx (no padded gradient to fill and copy out).
    fresh=True: dx holds nothing yet and the block has all its images' output rows (h0 = 0,
    so tap 0 starts at input row 0): tap 0 is copied rather than added, and the input
    rows below its last one are zeroed.
    """
    c, fh, _, h, _ = dy.shape
    (ph, pw), (rows, cols) = padding, dx.shape[2:]

    def add(part):
        for i in range(fh):
            s = h0 + i * dh - ph                     # input row of the block's first row
            lo = max(0, -s)
            hi = max(lo, min(h, rows - s))           # block rows whose tap i is an input row
            src = dy[part, i, :, lo:hi, pw: pw + cols].transpose(1, 0, 2, 3)
            dst = dx[:, part, s + lo: s + hi]
            if fresh and i == 0:
                np.copyto(dst, src)
                dx[:, part, s + hi:] = 0
            else:
                np.add(dst, src, out=dst)
    in_parallel(add, c, dy.nbytes)


def _shifted_backward(dout, cache, input_grad):
    """(dx, dw, db) of a conv that ran conv_shifted_images, from dout and the kept x.

    Z's gradient is dZ[(j, k), (n, h, w)] = dout[n, k, h, w - j*dw] (0 outside the
    output), so dW_s = dZ @ Y^T and dY = W_s^T @ dZ, and dY's rows add back onto the
    input's rows they were copied from (col2im_rows: col2im along H only). Made in blocks
    of images (bands of rows when one image is larger) of at most SHIFTED_BLOCK_BYTES:
    each block's Y is made again from x (a copy of a few images that stays in the cache,
    cheaper than keeping the whole Y in memory), and each thread runs its own images'
    blocks (per_thread), summing its own dW and db.
    """
    x_shape, x, w, _, padding, dilation, _, (oh, ow) = cache[:8]
    gate = cache.relu_out
    n, c = x_shape[:2]
    k, _, fh, fw = w.shape
    (dil_h, dil_w), ext = dilation, dilation[0] * (fh - 1)
    hp, wp = _shifted_padding(x_shape, w.shape, padding, dilation)
    w_s = _shifted_filters(w)
    size = _itemsize(x, w, dout)
    row_bytes = _shifted_row_bytes(w.shape, wp, size)
    per = _images_per_block(w.shape, wp, oh, size, SHIFTED_BLOCK_BYTES)
    dx = np.empty(x_shape, dtype=np.result_type(w, dout)) if input_grad else None
    sums = {}

    def run(part):
        dw_s = np.zeros((fw * k, c * fh), dtype=np.result_type(dout, x))
        db = np.zeros(k, dtype=dout.dtype)
        for s in range(part.start, part.stop, per):
            s1 = min(part.stop, s + per)
            xp = pad(x[s:s1], padding, padded_shape=(hp, wp),
                     out=scratch("padded", (s1 - s) * c * hp * wp, x.dtype))
            blocks = _row_blocks(s1 - s, oh, row_bytes, SHIFTED_BLOCK_BYTES)
            whole = len(blocks) == 1 and blocks[0][2:] == (0, oh)   # images, not bands
            if input_grad and not whole:
                dx[s:s1].fill(0)
            for n0, n1, h0, h1 in blocks:
                m = (n1 - n0) * (h1 - h0) * wp
                y = im2col_rows(xp[n0:n1, :, h0: h1 + ext], fh, dil_h, h1 - h0,
                                scratch("cols", c * fh * m, x.dtype))
                dz = scratch("product", fw * k * m, dout.dtype).reshape(fw, k, m)
                _shifted_grad(dz, dout[s + n0: s + n1, :, h0:h1].transpose(1, 0, 2, 3), dil_w,
                              None if gate is None else
                              gate[s + n0: s + n1, :, h0:h1].transpose(1, 0, 2, 3))
                dz = dz.reshape(fw * k, m)
                dw_s += np.matmul(dz, y.T)
                db += dz[:k].sum(axis=1)
                if input_grad:   # dY over Y, which is spent
                    dy = np.matmul(w_s.T, dz, out=y if y.dtype == dx.dtype else None)
                    col2im_rows(dy.reshape(c, fh, n1 - n0, h1 - h0, wp),
                                dx[s + n0: s + n1], dil_h, padding, h0, fresh=whole)
        sums[part.start] = dw_s, db
    per_thread(run, n)
    dw_s, db = (sum(parts) for parts in zip(*(sums[i] for i in sorted(sums))))
    dw = np.ascontiguousarray(dw_s.reshape(fw, k, c, fh).transpose(1, 2, 3, 0))
    return dx, dw, db


# Inference builds the im2col matrix in pieces of at most this many bytes (a few images
# at a time, or bands of output rows of one image), so its memory stays bounded.
IM2COL_MAX_BYTES = 64 << 20


def conv2d_infer(x, w, b=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1,
                 fit="exact", max_bytes=IM2COL_MAX_BYTES, relu=False, scale=None):
    """conv2d_forward for inference: the output only, its temporaries bounded by max_bytes.

    Same arguments and output as conv2d_forward, but no cache: the im2col matrix is built
    for as many images as fit in ``max_bytes`` at a time, or, when one image's matrix is
    larger, for bands of output rows (the input rows each band's windows read). At least
    one output row is done at a time, so a single row larger than max_bytes still runs.
    On the shifted path (see conv2d_forward) the same holds for its Y and its product,
    each at most min(max_bytes, SHIFTED_BLOCK_BYTES) a block, and for the padded input of
    the images of a block (a whole padded image when one image is cut into bands of rows);
    each thread has its own blocks (see conv_shifted_images). conv_blocks is taken when
    one image's matrix fits in max_bytes; its blocks are at most min(max_bytes,
    BLOCK_BYTES), one image at least, each thread with its own.
    relu=True returns max(0, conv): the RELU of a CONV -> RELU, applied to each piece of
    the output as it is finished (no array or layer call of its own). scale (K,)
    multiplies each output channel before the bias is added (a batch norm folded into the
    output rather than the filters).

    >>> x = np.ones((8, 64, 224, 224), np.float32); w = np.ones((64, 64, 3, 3), np.float32)
    >>> conv2d_infer(x, w, padding=(1, 1)).shape     # 0.3 GB of Y, in 4 MB pieces
    (8, 64, 224, 224)
    """
    n, c, h, wd = x.shape
    k, _, fh, fw = w.shape
    oh, ow = _out_size(x.shape, w.shape, stride, padding, dilation, fit)
    out = np.empty((n, k, oh, ow), dtype=np.result_type(x, w))
    if shifted_suits(x.shape, w.shape, stride, padding, dilation, groups):
        return conv_shifted_images(x, w, b, padding, dilation, out, relu, scale,
                                   min(max_bytes, SHIFTED_BLOCK_BYTES))
    if blocks_suit(x.shape, w.shape, (oh, ow), groups) and (
            c * fh * fw * oh * ow * x.itemsize <= max_bytes):
        return conv_blocks(x, w, b, stride, padding, dilation, out, relu, scale,
                           min(max_bytes, BLOCK_BYTES))
    row_bytes = max(1, c * fh * fw * ow * x.itemsize)  # the im2col matrix of one output row
    per_image = max(1, max_bytes // (row_bytes * oh))
    if per_image > 1 or row_bytes * oh <= max_bytes:
        buf = scratch("cols", min(n, per_image) * oh * row_bytes // x.itemsize, x.dtype)
        for s in range(0, n, per_image):
            cols = im2col(x[s: s + per_image], (fh, fw), stride, padding, dilation, (oh, ow),
                          buf)
            _gemm_nchw(w, b, cols, groups, out[s: s + per_image], relu, scale)
        return out
    # One image is too large: bands of output rows over the padded image.
    rows = max(1, max_bytes // row_bytes)
    ext = dilation[0] * (fh - 1) + 1
    buf = scratch("cols", rows * row_bytes // x.itemsize, x.dtype)
    band_buf = scratch("product", k * rows * ow, out.dtype)
    for i in range(n):
        xp = pad(x[i: i + 1], padding,
                 out=scratch("padded", c * (h + 2 * padding[0]) * (wd + 2 * padding[1]),
                             x.dtype))
        for r in range(0, oh, rows):
            r1 = min(oh, r + rows)
            part = xp[:, :, r * stride[0]: (r1 - 1) * stride[0] + ext]
            cols = im2col(part, (fh, fw), stride, (0, 0), dilation, (r1 - r, ow), buf)
            band = band_buf[: k * (r1 - r) * ow].reshape(1, k, r1 - r, ow)
            out[i, :, r:r1] = _gemm_nchw(w, b, cols, groups, band, relu, scale)[0]
    return out


def conv2d_backward(dout, cache, overwrite_cols=False, input_grad=True):
    """Gradients of conv2d_forward: returns (dx, dw, db).

    dw = dout_row @ X_col.T (summed over every position of each depth slice);
    dx = col2im(W_row.T @ dout_row); db = dout summed over N, OH, OW. For stride 1 with
    K <= C, dx is instead the notes' "convolution with spatially-flipped filters", which
    moves less memory than col2im.
    With overwrite_cols=True, W_row.T @ dout_row is written over the cache's im2col
    matrix (same size, no longer needed once dw is known): the cache is then spent.
    A cache of the shifted path (see conv2d_forward) goes to _shifted_backward: dw from
    dZ @ Y^T, dx by adding W_s^T @ dZ's rows back onto the input's rows they came from
    (col2im along H only), block by block; one of conv_blocks goes to _blocks_backward,
    which makes each block's im2col matrix again. overwrite_cols applies to neither.
    With input_grad=False dx is not computed and None is returned in its place (a net's
    first layer: nothing needs the gradient of the data). A cache of conv2d_forward's
    relu=True takes dout as the gradient of the RELU's output and masks it in its first
    pass over dout (the transpose, or on the shifted path dZ's first tap).
    """
    if cache.shifted:
        return _shifted_backward(dout, cache, input_grad)
    if cache.blocked:
        return _blocks_backward(dout, cache, input_grad)
    reuse = cache.workspace if overwrite_cols else None
    x_shape, cols, w, stride, padding, dilation, groups, out_size = cache[:8]
    k, cg, fh, fw = w.shape
    dout_t = np.empty((k, *dout.shape[:1], *dout.shape[2:]), dtype=dout.dtype)  # (K, N, OH, OW)
    if cache.relu_out is None:
        split_parallel(np.copyto, dout_t, dout.transpose(1, 0, 2, 3))
    else:   # a fused RELU: the gradient passes where its output is > 0
        split_parallel(lambda d, g, o: np.multiply(g, o > 0, out=d), dout_t,
                       dout.transpose(1, 0, 2, 3), cache.relu_out.transpose(1, 0, 2, 3))
        dout = dout_t.transpose(1, 0, 2, 3)
    positions = int(np.prod(dout_t.shape[1:]))                               # N*OH*OW
    dout_rows = dout_t.reshape(groups, k // groups, positions)               # (G, K/G, N*L)
    cols_g = cols.reshape(groups, cg * fh * fw, positions)                   # (G, Cg*FF, N*L)
    dw = np.matmul(dout_rows, cols_g.transpose(0, 2, 1)).reshape(w.shape)
    db = dout_t.reshape(k, positions).sum(axis=1)
    if not input_grad:
        return None, dw, db
    # Stride 1: the flipped-filter convolution copies K channels where col2im adds C.
    if stride == (1, 1) and k <= groups * cg and all(
            d * (f - 1) >= p for d, f, p in zip(dilation, (fh, fw), padding)):
        dx = _flipped_conv(dout, w, padding, dilation, groups, reuse)
    else:
        w_cols = w.reshape(groups, k // groups, cg * fh * fw).transpose(0, 2, 1)  # (G, Cg*FF, K/G)
        if reuse is not None and cols.dtype == np.result_type(w, dout):
            dcols = np.matmul(w_cols, dout_rows, out=cols_g)
        else:
            dcols = np.matmul(w_cols, dout_rows)
        dx = col2im(dcols, x_shape, (fh, fw), stride, padding, dilation, out_size)
    return dx, dw, db


def _flipped_conv(dout, w, padding, dilation, groups, cols_out=None):
    """dx of a stride-1 conv as the notes put it: a convolution of dout with the filters
    spatially flipped and their in/out roles swapped, zero-padded by dilation*(F-1) - P.

    One im2col and one GEMM, instead of a GEMM and a col2im scatter.
    """
    k, cg, fh, fw = w.shape
    w_t = w.reshape(groups, k // groups, cg, fh, fw).transpose(0, 2, 1, 3, 4)
    w_t = w_t[..., ::-1, ::-1].reshape(groups * cg, k // groups, fh, fw)  # (C, K/G, FH, FW)
    pad_t = tuple(d * (f - 1) - p for d, f, p in zip(dilation, (fh, fw), padding))
    dx, _ = conv2d_forward(dout, np.ascontiguousarray(w_t), None, (1, 1), pad_t, dilation,
                           groups, "floor", cols_out)
    return dx


class LocalCache(NamedTuple):
    x_shape: tuple
    cols: np.ndarray      # (OH*OW, C*FH*FW, N): one im2col matrix per output position
    w: np.ndarray         # (OH, OW, K, C, FH, FW)
    stride: tuple
    padding: tuple
    out_size: tuple


def locally_connected_forward(x, w, b=None, stride=(1, 1), padding=(0, 0)):
    """The notes' locally-connected layer: conv connectivity, no parameter sharing.

    Every output position (oh, ow) has its own K filters. x: (N, C, H, W);
    w: (OH, OW, K, C, FH, FW); b: (K, OH, OW) or None. Returns (N, K, OH, OW) and a cache.
    One batched matrix multiply over positions: (L, K, C*FH*FW) @ (L, C*FH*FW, N).
    """
    n = x.shape[0]
    oh, ow, k, c, fh, fw = w.shape
    cols = im2col(x, (fh, fw), stride, padding, (1, 1), (oh, ow))          # (CFF, N*L)
    cols = cols.reshape(c * fh * fw, n, oh * ow).transpose(2, 0, 1)         # (L, CFF, N)
    out = np.matmul(w.reshape(oh * ow, k, -1), cols)                        # (L, K, N)
    out = out.transpose(2, 1, 0).reshape(n, k, oh, ow)
    if b is not None:
        out = out + b
    return out, LocalCache(x.shape, cols, w, stride, padding, (oh, ow))


def locally_connected_backward(dout, cache):
    """Gradients of locally_connected_forward: returns (dx, dw, db)."""
    x_shape, cols, w, stride, padding, (oh, ow) = cache
    n = x_shape[0]
    _, _, k, c, fh, fw = w.shape
    dout_l = dout.reshape(n, k, oh * ow).transpose(2, 1, 0)                 # (L, K, N)
    dw = np.matmul(dout_l, cols.transpose(0, 2, 1)).reshape(w.shape)
    db = dout.sum(axis=0)
    dcols = np.matmul(w.reshape(oh * ow, k, -1).transpose(0, 2, 1), dout_l)  # (L, CFF, N)
    dcols = dcols.transpose(1, 2, 0).reshape(c * fh * fw, n * oh * ow)
    dx = col2im(dcols, x_shape, (fh, fw), stride, padding, (1, 1), (oh, ow))
    return dx, dw, db
