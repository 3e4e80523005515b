"""Algorithm "im2col": the notes' im2col + one GEMM (reference.py), made fast.

The same computation as the reference, with the machinery around it: im2col copies and
col2im additions split over the cores by channels, the training forward writing its
im2col matrix into the buffer of the step before (``workspace``), the GEMM's product
finished (bias, a folded batch norm's scale, a fused RELU) while it is transposed to
NCHW, and at inference the matrix built in pieces of at most ``max_bytes`` (a few images,
or bands of output rows of one image). For stride 1 with K <= C and padding at most
dilation * (F - 1), the input gradient is the notes' convolution with flipped filters,
which moves less memory than col2im.

Every convolution can run this way: any stride, padding, dilation and groups.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from convnet.functional.conv.machinery import buffer, pad, scratch
from convnet.functional.conv.reference import flipped_filters, windows
from convnet.functional.threads import in_parallel, matmul, split_parallel


class Cache(NamedTuple):
    x_shape: tuple
    cols: np.ndarray      # (C*FH*FW, N*OH*OW), the im2col matrix of the input
    w: np.ndarray         # (K, C // groups, FH, FW)
    stride: tuple
    padding: tuple
    dilation: tuple
    groups: int
    out_size: tuple
    workspace: np.ndarray  # the flat buffer cols is in (reusable once spent)
    relu_out: np.ndarray = None   # with relu=True, the output max(0, conv): its non-0
                                  # entries (> 0, or NaN) pass the gradient
    named: bool = False   # im2col was named (not auto's choice): the backward pass's
                          # flipped-filter convolution runs it too


def applies(x_shape, w_shape, stride, padding, dilation, groups):
    """None: im2col runs every convolution."""
    return None


def im2col(x, kernel, stride, padding, dilation, out_size, out=None):
    """reference.im2col, copied over both cores into ``out`` (an optional flat buffer of
    x's dtype with at least C*FH*FW*N*OH*OW values: reused memory saves the page faults
    of a fresh allocation). Returns X_col (C*FH*FW, N*OH*OW)."""
    xp = pad(x, padding)
    n, c = x.shape[:2]
    win = windows(xp, kernel, stride, dilation, out_size)          # (N, C, OH, OW, FH, FW)
    src = win.transpose(1, 4, 5, 0, 2, 3)                           # (C, FH, FW, N, OH, OW)
    cols = buffer(out, src.size, x.dtype).reshape(src.shape)

    def copy(part):
        np.copyto(cols[part], src[part])
    in_parallel(copy, c, cols.nbytes)
    return cols.reshape(c * kernel[0] * kernel[1], n * out_size[0] * out_size[1])


def col2im(cols, x_shape, kernel, stride, padding, dilation, out_size):
    """reference.col2im, each core adding its own channels (channel-major, so the parts
    never overlap)."""
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


def gemm_nchw(w, b, cols, groups, out, relu=False, scale=None):
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
        matmul(w_rows, cols, out=out.reshape(groups, k // groups, oh * ow))
        if b is None and scale is None and not relu:
            return out
        dst = src = out.reshape(k, oh * ow)                            # in place
    else:
        product = scratch("product", k * n * oh * ow, np.result_type(w_rows, cols))
        src = matmul(w_rows, cols, out=product.reshape(groups, k // groups, n * oh * ow))
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


def forward(x, w, b, stride, padding, dilation, groups, out, relu=False, workspace=None):
    """out = the convolution of x with w (and b), max(0, .) with relu; returns a Cache
    keeping the im2col matrix, written into ``workspace`` (a flat buffer) when it fits."""
    n, c = x.shape[:2]
    k, _, fh, fw = w.shape
    out_size = out.shape[2:]
    workspace = buffer(workspace, c * fh * fw * n * out_size[0] * out_size[1], x.dtype)
    cols = im2col(x, (fh, fw), stride, padding, dilation, out_size, workspace)  # (CFF, N*L)
    gemm_nchw(w, b, cols, groups, out, relu)
    return Cache(x.shape, cols, w, stride, padding, dilation, groups, out_size, workspace,
                 out if relu else None)


def backward(dout, cache, input_grad=True, overwrite=False):
    """(dx, dw, db) from a Cache: dw = dout_row @ X_col^T, db the sums of dout, and
    dx = col2im(W_row^T @ dout_row), or for stride 1 with K <= C and padding at most
    dilation * (F - 1) the convolution of dout with the flipped filters. With
    overwrite=True, W_row^T @ dout_row is written over the cache's im2col matrix (spent
    once dw is known). input_grad=False: dx is None."""
    reuse = cache.workspace if overwrite else None
    x_shape, cols, w, stride, padding, dilation, groups, out_size = cache[:8]
    k, cg, fh, fw = w.shape
    dout_t = np.empty((k, *dout.shape[:1], *dout.shape[2:]), dtype=dout.dtype)  # (K, N, OH, OW)
    if cache.relu_out is None:
        split_parallel(np.copyto, dout_t, dout.transpose(1, 0, 2, 3))
    else:   # a fused RELU: the gradient passes where its output is not 0 (relu_backward)
        split_parallel(lambda d, g, o: np.multiply(g, o != 0, out=d), dout_t,
                       dout.transpose(1, 0, 2, 3), cache.relu_out.transpose(1, 0, 2, 3))
        dout = dout_t.transpose(1, 0, 2, 3)
    positions = int(np.prod(dout_t.shape[1:]))                               # N*OH*OW
    dout_rows = dout_t.reshape(groups, k // groups, positions)               # (G, K/G, N*L)
    cols_g = cols.reshape(groups, cg * fh * fw, positions)                   # (G, Cg*FF, N*L)
    dw = matmul(dout_rows, cols_g.transpose(0, 2, 1)).reshape(w.shape)
    db = dout_t.reshape(k, positions).sum(axis=1)
    if not input_grad:
        return None, dw, db
    # Stride 1: the flipped-filter convolution copies K channels where col2im adds C.
    if stride == (1, 1) and k <= groups * cg and all(
            d * (f - 1) >= p for d, f, p in zip(dilation, (fh, fw), padding)):
        dx = _flipped_conv(dout, w, padding, dilation, groups, reuse, cache.named)
    else:
        w_cols = w.reshape(groups, k // groups, cg * fh * fw).transpose(0, 2, 1)  # (G, Cg*FF, K/G)
        if reuse is not None and cols.dtype == np.result_type(w, dout):
            dcols = matmul(w_cols, dout_rows, out=cols_g)
        else:
            dcols = matmul(w_cols, dout_rows)
        dx = col2im(dcols, x_shape, (fh, fw), stride, padding, dilation, out_size)
    return dx, dw, db


def _flipped_conv(dout, w, padding, dilation, groups, cols_out=None, named=False):
    """dx of a stride-1 conv: reference.flipped_input_grad, run by whichever algorithm a
    forward convolution takes here (cols_out: the im2col buffer, when im2col runs it):
    im2col where the forward's call named it (named=True) or under
    use_algorithm("im2col"), so that the notes' computation runs throughout. A forced
    Winograd is not passed on: it reaches this only from a layer that named another
    algorithm (a layer it could run would have run it, forward and backward), whose
    backward pass would then round as Winograd does."""
    from convnet.functional.conv import conv2d_forward  # the dispatcher, above this file
    from convnet.functional.conv.select import WINOGRAD, forced_algorithm, use_algorithm

    fh, fw = w.shape[2:]
    pad_t = tuple(d * (f - 1) - p for d, f, p in zip(dilation, (fh, fw), padding))
    forced = "im2col" if named else forced_algorithm()
    with use_algorithm("auto" if forced in WINOGRAD else forced or "auto"):
        dx, _ = conv2d_forward(dout, flipped_filters(w, groups), None, (1, 1), pad_t,
                               dilation, groups, "floor", cols_out)
    return dx


def infer(x, w, b, stride, padding, dilation, groups, out, relu=False, scale=None,
          max_bytes=None):
    """out = the convolution (scale, b and relu as in gemm_nchw), the im2col matrix built
    for as many images as fit in ``max_bytes`` at a time, or, when one image's matrix is
    larger, for bands of output rows (the input rows each band's windows read); at least
    one output row at a time. The GEMM's product, a temporary too where a block has
    several images or a band (one image's goes straight into out), counts against
    max_bytes as well: with many more filters than C*FH*FW it is the larger. Returns
    out."""
    n, c, h, wd = x.shape
    k, _, fh, fw = w.shape
    oh, ow = out.shape[2:]
    cols_row = c * fh * fw * ow                       # im2col's values for one output row
    one_image = max(1, cols_row * x.itemsize * oh)    # and its bytes for one image
    row_bytes = max(1, cols_row * x.itemsize, k * ow * out.itemsize)   # with the product
    per_image = max(1, max_bytes // (row_bytes * oh))
    if per_image > 1 or one_image <= max_bytes:
        buf = scratch("cols", min(n, per_image) * oh * cols_row, x.dtype)
        for s in range(0, n, per_image):
            cols = im2col(x[s: s + per_image], (fh, fw), stride, padding, dilation, (oh, ow),
                          buf)
            gemm_nchw(w, b, cols, groups, out[s: s + per_image], relu, scale)
        return out
    # One image is too large: bands of output rows over the padded image.
    rows = max(1, max_bytes // row_bytes)
    ext = dilation[0] * (fh - 1) + 1
    buf = scratch("cols", rows * cols_row, x.dtype)
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
            out[i, :, r:r1] = gemm_nchw(w, b, cols, groups, band, relu, scale)[0]
    return out
