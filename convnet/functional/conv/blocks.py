"""Algorithm "blocks": im2col and the GEMM a few images at a time, each thread its own.

For convolutions the shifted path does not take (first layers with 1 or 3 input
channels, strided and 1x1 layers) on a batch, the images split between the threads
(per_thread), each running its own blocks; and at inference for one image's small
convolution, which runs on one thread, its copies and BLAS included (one_thread: a
hand-off to the other thread would cost more than it saves). A block's images are
padded and their receptive fields copied into an im2col matrix laid out image by image,
(n, C*FH*FW, OH*OW), and one stacked matmul by W_row (K, C*FH*FW) writes each image's
(K, OH*OW) straight into the NCHW output: no product to transpose, and the block's
matrix (at most BLOCK_BYTES, at least one image's) is still in the core's cache when it
is used.

Training keeps only x; the backward pass makes each block's matrix again, this time in
im2col's order, and runs col2im on W_row^T @ dout for the input's gradient (a first
layer's, which needs none, keeps the forward's order and reads dout in place).
Any stride, padding and dilation; one group.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from convnet.functional.conv.gemm import col2im
from convnet.functional.conv.machinery import pad, scale_bias_relu, scratch
from convnet.functional.conv.reference import windows
from convnet.functional.threads import one_thread, per_thread

# The im2col matrix of this many bytes of images is made at a time (at least one image).
BLOCK_BYTES = 4 << 20


class Cache(NamedTuple):
    x: np.ndarray         # the input, kept: each block's matrix is made again from it
    w: np.ndarray         # (K, C, FH, FW)
    stride: tuple
    padding: tuple
    dilation: tuple
    out_size: tuple
    relu_out: np.ndarray = None   # with relu=True, the output: its non-0 entries pass dout


def applies(x_shape, w_shape, stride, padding, dilation, groups):
    """None when blocks can run this convolution, else why not."""
    return None if groups == 1 else "it needs groups=1"


def run(x, w, b, stride, padding, dilation, out, relu=False, scale=None, max_bytes=None):
    """out (N, K, OH, OW) = the convolution of x (N, C, H, W) with filters w (K, C, FH, FW),
    a block of images at a time (blocks of at most max_bytes, default BLOCK_BYTES).
    b, relu and scale as in gemm.gemm_nchw, applied to each block's output in place.
    Returns out."""
    max_bytes = BLOCK_BYTES if max_bytes is None else max_bytes
    n, c = x.shape[:2]
    k, _, fh, fw = w.shape
    oh, ow = out.shape[2:]
    positions, depth = oh * ow, c * fh * fw
    per = max(1, max_bytes // max(1, depth * positions * x.itemsize))
    w_rows = w.reshape(k, depth)

    def work(part):
        for s in range(part.start, part.stop, per):
            sub = x[s: min(part.stop, s + per)]
            m = sub.shape[0]
            cols = _block_cols(sub, (fh, fw), stride, padding, dilation, (oh, ow),
                               (0, 1, 4, 5, 2, 3))                 # (m, C, FH, FW, OH, OW)
            o = out[s: s + m].reshape(m, k, positions)
            np.matmul(w_rows, cols.reshape(m, depth, positions), out=o)
            scale_bias_relu(o, scale, b, relu)
    if n == 1:
        one_thread(work, slice(0, 1))    # its copies and BLAS too: no hand-off
    else:
        per_thread(work, n)
    return out


def forward(x, w, b, stride, padding, dilation, groups, out, relu=False, workspace=None):
    """Training forward: run, keeping x (so x must not change before the backward pass)."""
    run(x, w, b, stride, padding, dilation, out, relu)
    return Cache(x, w, stride, padding, dilation, out.shape[2:], out if relu else None)


def infer(x, w, b, stride, padding, dilation, groups, out, relu=False, scale=None,
          max_bytes=None):
    return run(x, w, b, stride, padding, dilation, out, relu, scale,
               min(max_bytes, BLOCK_BYTES))


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


def backward(dout, cache, input_grad=True, overwrite=False):
    """(dx, dw, db) from dout and the kept x, a block of images at a time: each thread
    runs its own images' blocks (per_thread), making each block's im2col matrix again
    from x in im2col's order (C*FH*FW, n*OH*OW), with dout's block beside it as
    (K, n*OH*OW) (masked where a fused RELU's output was 0). Then dw += dout_rows @
    X_col^T and db += the rows' sums, summed per thread, and dx's images are
    col2im(W_row^T @ dout_rows), that product written over the spent matrix when their
    dtypes agree.

    Without the input's gradient (a first layer; dx is None), the block's matrix keeps
    the forward's image-by-image order (n, C*FH*FW, OH*OW) and dw += the sum over its
    images of dout_image @ X_image^T: one stacked matmul that reads dout where it lies,
    with no transposed copy of it."""
    x, w, stride, padding, dilation, (oh, ow), gate = cache
    n, c = x.shape[:2]
    k, _, fh, fw = w.shape
    positions, depth = oh * ow, c * fh * fw
    per = max(1, BLOCK_BYTES // max(1, depth * positions * x.itemsize))
    w_cols = w.reshape(k, depth).T
    dx = np.empty(x.shape, dtype=np.result_type(w, dout)) if input_grad else None
    sums = {}

    def work(part):
        dw = np.zeros((k, depth), dtype=np.result_type(dout, x))
        db = np.zeros(k, dtype=dout.dtype)
        for s in range(part.start, part.stop, per):
            sub = x[s: min(part.stop, s + per)]
            m = sub.shape[0]
            if not input_grad:
                cols = _block_cols(sub, (fh, fw), stride, padding, dilation, (oh, ow),
                                   (0, 1, 4, 5, 2, 3)).reshape(m, depth, positions)
                d = dout[s: s + m].reshape(m, k, positions)
                if gate is not None:
                    d = np.multiply(d, gate[s: s + m].reshape(m, k, positions) != 0,
                                    out=scratch("product", d.size, d.dtype).reshape(d.shape))
                dw += np.matmul(d, cols.transpose(0, 2, 1)).sum(axis=0)
                db += d.sum(axis=(0, 2))
                continue
            cols = _block_cols(sub, (fh, fw), stride, padding, dilation, (oh, ow),
                               (1, 4, 5, 0, 2, 3))                 # (C, FH, FW, m, OH, OW)
            d = scratch("product", k * m * positions, dout.dtype).reshape(k, m, oh, ow)
            src = dout[s: s + m].transpose(1, 0, 2, 3)
            if gate is None:
                np.copyto(d, src)
            else:
                np.multiply(src, gate[s: s + m].transpose(1, 0, 2, 3) != 0, out=d)
            d, cols = d.reshape(k, m * positions), cols.reshape(depth, m * positions)
            dw += np.matmul(d, cols.T)
            db += d.sum(axis=1)
            # dX_col over X_col, which is spent
            dcols = np.matmul(w_cols, d, out=cols if cols.dtype == dx.dtype else None)
            dx[s: s + m] = col2im(dcols, sub.shape, (fh, fw), stride, padding, dilation,
                                  (oh, ow))
        sums[part.start] = dw, db
    if n == 1:
        one_thread(work, slice(0, 1))
    else:
        per_thread(work, n)
    dw, db = (sum(parts) for parts in zip(*(sums[i] for i in sorted(sums))))
    return dx, dw.reshape(w.shape), db
