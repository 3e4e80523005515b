"""Algorithm "shifted": stride-1 convolutions with im2col along H only.

im2col along H only makes Y (C*FH, N*OH*WP): FH copies of the padded input where im2col
makes FH*FW. One GEMM multiplies Y by the filters with their FW columns of taps stacked,
W_s (FW*K, C*FH), and the output is the FW products added with shifts:
out[n, k, h, w] = sum_j Z[(j, k), (n, h, w + j*dw)]. Each padded row's right padding is
the next row's left padding, so a row is only PW columns longer than the input's; the
GEMM does WP/OW times the convolution's work on those extra columns, the price of the
smaller copy (14% more for a 5x5 layer on 14x14).

The work is done in blocks of images (or bands of rows of one image) whose Y and product
each take at most BLOCK_BYTES, each thread running its own blocks with BLAS on one
thread (per_thread), so a block's copies, GEMM and sums stay in its core's cache.
Training keeps only x; the backward pass makes each block's Y again, builds the
product's gradient from FW shifted copies of dout, and adds dY's rows back onto the
input's rows they came from (col2im along H only).

Stride 1 and one group; any padding and dilation.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from convnet.functional.conv.machinery import buffer, itemsize, pad, scale_bias_relu, scratch
from convnet.functional.threads import in_parallel, per_thread, split_parallel

# Each block's Y and GEMM product take at most this many bytes; each thread runs its own
# blocks, one after another, in its core's share of the cache (see per_thread).
BLOCK_BYTES = 4 << 20


class Cache(NamedTuple):
    x: np.ndarray         # the input, kept: each block's Y is made again from it
    w: np.ndarray         # (K, C, FH, FW)
    padding: tuple
    dilation: tuple
    out_size: tuple
    relu_out: np.ndarray = None   # with relu=True, the output: its non-0 entries pass dout


def applies(x_shape, w_shape, stride, padding, dilation, groups):
    """None when the shifted path can run this convolution, else why not."""
    if stride != (1, 1):
        return "it needs stride 1"
    return None if groups == 1 else "it needs groups=1"


def forward(x, w, b, stride, padding, dilation, groups, out, relu=False, workspace=None):
    """Training forward: run, keeping x (so x must not change before the backward pass)."""
    run(x, w, b, padding, dilation, out, relu)
    return Cache(x, w, padding, dilation, out.shape[2:], out if relu else None)


def infer(x, w, b, stride, padding, dilation, groups, out, relu=False, scale=None,
          max_bytes=None):
    return run(x, w, b, padding, dilation, out, relu, scale, min(max_bytes, BLOCK_BYTES))


def padded_shape(x_shape, w_shape, padding, dilation):
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
    the FW horizontal ones are not: tap j is Y's columns shifted by j*dw (conv_rows).

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


def stacked_filters(w):
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


def conv_rows(xp, w, b, dilation, out, relu=False, scale=None, max_bytes=None, w_s=None):
    """out (N, K, OH, OW) = the stride-1 convolution of the padded input xp (N, C, HP, WP)
    (padded as padded_shape says) with filters w (K, C, FH, FW), as one GEMM per
    block of output rows. Returns out.

    With Y = im2col_rows(xp) and W_s = the filters' columns stacked (FW*K, C*FH), the
    product Z = W_s @ Y holds, for each horizontal tap j, every filter's partial sums at
    every padded column; the output is the FW products added with shifts:
    out[n, k, h, w] = sum_j Z[(j, k), (n, h, w + j*dw)]. The GEMM does im2col's FLOPs
    (on WP/OW times as many columns) from a third of the copying, with FW*K rows where
    im2col's has K (a taller matrix, which BLAS runs nearer its peak when K is small).
    Y and Z are made block by block, each block at most max_bytes (default
    BLOCK_BYTES). b, relu and scale as in gemm.gemm_nchw; w_s: stacked_filters(w),
    when the caller has it already.
    """
    max_bytes = BLOCK_BYTES if max_bytes is None else max_bytes
    n, c, _, wp = xp.shape
    k, _, fh, fw = w.shape
    oh, ow = out.shape[2:]
    (dh, dw), ext = dilation, dilation[0] * (fh - 1)
    w_s = stacked_filters(w) if w_s is None else w_s
    blocks = _row_blocks(n, oh, row_bytes_of(w.shape, wp, itemsize(xp, w)), max_bytes)
    if not blocks:   # an empty batch
        return out
    n0, n1, h0, h1 = blocks[0]
    z_buf = scratch("product", fw * k * (n1 - n0) * (h1 - h0) * wp, np.result_type(xp, w))
    y_buf = scratch("cols", c * fh * (n1 - n0) * (h1 - h0) * wp, xp.dtype)
    for n0, n1, h0, h1 in blocks:
        y_blk = im2col_rows(xp[n0:n1, :, h0: h1 + ext], fh, dh, h1 - h0, y_buf)
        z = z_buf[: fw * k * y_blk.shape[1]].reshape(fw * k, y_blk.shape[1])
        np.matmul(w_s, y_blk, out=z)
        shifted_sum(z.reshape(fw, k, y_blk.shape[1]), dw, b, relu, scale,
                    out[n0:n1, :, h0:h1].transpose(1, 0, 2, 3))
    return out


def row_bytes_of(w_shape, wp, size):
    """Bytes per output row of the larger of Y (C*FH rows) and Z (FW*K rows), at
    ``size`` bytes a value."""
    k, c, fh, fw = w_shape
    return max(1, fw * k, c * fh) * wp * size


def run(x, w, b, padding, dilation, out, relu=False, scale=None, max_bytes=None):
    """out = the stride-1 convolution of x (N, C, H, W) on the shifted path (conv_rows),
    a few images at a time: each block of images is padded, stretched into its Y and
    multiplied while it is still in the cache, its Y and Z at most max_bytes each (bands
    of rows when one image is larger; max_bytes defaults to BLOCK_BYTES). The images are
    split between the threads, each running its own blocks with BLAS on one thread
    (per_thread); a single image's output rows are. Each thread's temporaries (its padded
    images, Y and Z) are its own, so together they take up to THREADS times a block's.
    Returns out."""
    max_bytes = BLOCK_BYTES if max_bytes is None else max_bytes
    n, c = x.shape[:2]
    hp, wp = padded_shape(x.shape, w.shape, padding, dilation)
    w_s = stacked_filters(w)
    if n == 1:
        xp = pad(x, padding, padded_shape=(hp, wp), out=scratch("padded", c * hp * wp, x.dtype))
        ext = dilation[0] * (w.shape[2] - 1)

        def rows(part):
            conv_rows(xp[:, :, part.start: part.stop + ext], w, b, dilation,
                      out[:, :, part], relu, scale, max_bytes, w_s)
        per_thread(rows, out.shape[2])
        return out
    per = images_per_block(w.shape, wp, out.shape[2], itemsize(x, w), max_bytes)

    def images(part):
        for s in range(part.start, part.stop, per):
            sub = x[s: min(part.stop, s + per)]
            xp = pad(sub, padding, padded_shape=(hp, wp),
                     out=scratch("padded", sub.shape[0] * c * hp * wp, x.dtype))
            conv_rows(xp, w, b, dilation, out[s: s + sub.shape[0]], relu, scale,
                      max_bytes, w_s)
    per_thread(images, n)
    return out


def images_per_block(w_shape, wp, oh, size, max_bytes):
    """How many images' Y and Z fit in max_bytes each (at least one), at ``size`` bytes
    a value."""
    return max(1, max_bytes // (row_bytes_of(w_shape, wp, size) * oh))


def shifted_sum(z, dw, b, relu, scale, out):
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
            scale_bias_relu(z0, scale, b, relu, rows)
            # A plain copy for the rows of OW out of WP: a ufunc writing them into out
            # would loop over rows of OW (16 at 16x16), about twice as slow.
            np.copyto(out[rows], z0.reshape(-1, *out.shape[1:3], wp)[..., :ow])
    in_parallel(work, k, z.nbytes)


def shifted_grad(dz, src, dw, gate=None):
    """Z's gradient dZ (FW, K, n*h*WP) of an output block's gradient src (K, n, h, OW):
    dZ[j, k, (n, h, w)] = src[k, n, h, w - j*dw], 0 outside [0, OW). gate: the block's
    RELU output (K, n, h, OW), when a RELU was fused in: src passes only where it is not
    0 (> 0 or NaN, as relu_backward)."""
    fw, k, cols = dz.shape
    _, n, h, ow = src.shape
    wp = cols // (n * h)

    def tap0(part):   # src, with WP - OW zero columns after each row
        dz0 = dz[0, part].reshape(-1, n, h, wp)
        if gate is None:
            np.copyto(dz0[..., :ow], src[part])
        else:
            np.multiply(src[part], gate[part] != 0, out=dz0[..., :ow])
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


def backward(dout, cache, input_grad=True, overwrite=False):
    """(dx, dw, db) from dout and the kept x.

    Z's gradient is dZ[(j, k), (n, h, w)] = dout[n, k, h, w - j*dw] (0 outside the
    output), so dW_s = dZ @ Y^T and dY = W_s^T @ dZ, and dY's rows add back onto the
    input's rows they were copied from (col2im_rows: col2im along H only). Made in blocks
    of images (bands of rows when one image is larger) of at most BLOCK_BYTES: each
    block's Y is made again from x (a copy of a few images that stays in the cache,
    cheaper than keeping the whole Y in memory), and each thread runs its own images'
    blocks (per_thread), summing its own dW and db.
    """
    x, w, padding, dilation, (oh, ow), gate = cache
    x_shape = x.shape
    n, c = x_shape[:2]
    k, _, fh, fw = w.shape
    (dil_h, dil_w), ext = dilation, dilation[0] * (fh - 1)
    hp, wp = padded_shape(x_shape, w.shape, padding, dilation)
    w_s = stacked_filters(w)
    size = itemsize(x, w, dout)
    row_bytes = row_bytes_of(w.shape, wp, size)
    per = images_per_block(w.shape, wp, oh, size, BLOCK_BYTES)
    dx = np.empty(x_shape, dtype=np.result_type(w, dout)) if input_grad else None
    sums = {}

    def work(part):
        dw_s = np.zeros((fw * k, c * fh), dtype=np.result_type(dout, x))
        db = np.zeros(k, dtype=dout.dtype)
        for s in range(part.start, part.stop, per):
            s1 = min(part.stop, s + per)
            xp = pad(x[s:s1], padding, padded_shape=(hp, wp),
                     out=scratch("padded", (s1 - s) * c * hp * wp, x.dtype))
            blocks = _row_blocks(s1 - s, oh, row_bytes, BLOCK_BYTES)
            whole = len(blocks) == 1 and blocks[0][2:] == (0, oh)   # images, not bands
            if input_grad and not whole:
                dx[s:s1].fill(0)
            for n0, n1, h0, h1 in blocks:
                m = (n1 - n0) * (h1 - h0) * wp
                y = im2col_rows(xp[n0:n1, :, h0: h1 + ext], fh, dil_h, h1 - h0,
                                scratch("cols", c * fh * m, x.dtype))
                dz = scratch("product", fw * k * m, dout.dtype).reshape(fw, k, m)
                shifted_grad(dz, dout[s + n0: s + n1, :, h0:h1].transpose(1, 0, 2, 3), dil_w,
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
    per_thread(work, n)
    dw_s, db = (sum(parts) for parts in zip(*(sums[i] for i in sorted(sums))))
    dw = np.ascontiguousarray(dw_s.reshape(fw, k, c, fh).transpose(1, 2, 3, 0))
    return dx, dw, db
