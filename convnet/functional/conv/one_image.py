"""Algorithm "one_image": one image's stride-1 convolution, im2col over whole padded rows.

In the shifted path's padded layout (shifted.padded_shape) an output row's windows, taken
over all WP columns, are for every tap (c, i, j) one contiguous run of the flattened
padded image: tap (c, i, j) of output rows h0..h1 is the run of (h1-h0)*WP values that
starts at c*HP*WP + (h0 + i*dh)*WP + j*dw. So this im2col matrix (C*FH*FW, (h1-h0)*WP) is
one copy of C*FH*FW long runs (im2col's rows are runs of OW), the filters are used as
they are (K, C*FH*FW), and the GEMM gives the output rows directly, WP - OW columns too
wide: no shifted sum. Runs reaching past a row's end read the next row's left padding
(zeros); past the last channel, FW-1 (dilated) zeros are added after the padded image.

Each thread takes its half of the output rows as one block, with BLAS on one thread; or,
where there are more filters than the matrix has columns (deep layers: the filters are
the larger operand, and each thread would read all of them), the threads make the matrix
together and then split the filters. A batch of one, stride 1, one group. The training
forward keeps x as the shifted path does, and its backward pass is the shifted path's
(shifted.backward).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from convnet.functional.conv import shifted
from convnet.functional.conv.machinery import pad, scale_bias_relu, scratch
from convnet.functional.threads import THREADS, per_thread


def applies(x_shape, w_shape, stride, padding, dilation, groups):
    """None when one_image can run this convolution, else why not."""
    if x_shape[0] != 1:
        return "it needs a batch of one image"
    return shifted.applies(x_shape, w_shape, stride, padding, dilation, groups)


def block_bytes(x_shape, w_shape, padding, dilation, dtype_size):
    """Bytes of run's largest temporary: each thread's matrix or product for its rows;
    where the filters are split (K >= OH*WP), the matrix of every row, which the threads
    share, or a thread's product."""
    k, c, fh, fw = w_shape
    wp = shifted.padded_shape(x_shape, w_shape, padding, dilation)[1]
    oh = x_shape[2] + 2 * padding[0] - dilation[0] * (fh - 1)
    if k >= oh * wp:
        return max(c * fh * fw, -(-k // THREADS)) * oh * wp * dtype_size
    return max(c * fh * fw, k) * wp * dtype_size * _rows_per_thread(oh)


def _rows_per_thread(oh):
    return -(-oh // THREADS)


def run(x, w, b, padding, dilation, out, relu=False, scale=None):
    """out (1, K, OH, OW) = the stride-1 convolution of one image x (1, C, H, W), the
    output rows split between the threads. b, relu and scale as in gemm.gemm_nchw.
    Returns out."""
    c = x.shape[1]
    k, _, fh, fw = w.shape
    oh, ow = out.shape[2:]
    (dh, dw), dtype = dilation, np.result_type(x, w)
    hp, wp = shifted.padded_shape(x.shape, w.shape, padding, dilation)
    size = c * hp * wp
    flat = scratch("padded", size + (fw - 1) * dw, x.dtype)
    xp = pad(x, padding, padded_shape=(hp, wp), out=flat)
    if xp is x:   # no padding: pad returns x itself
        flat[:size] = x.reshape(-1)
    flat[size:] = 0
    w_rows = w.reshape(k, c * fh * fw)
    step = flat.itemsize
    band = _rows_per_thread(oh)   # rows per block: one block a thread

    def taps_of(h0, m):
        return as_strided(flat[h0 * wp:], (c, fh, fw, m),
                          (hp * wp * step, dh * wp * step, dw * step, step), writeable=False)

    if k >= oh * wp:   # more filters than columns: split the filters
        taps = taps_of(0, oh * wp)
        cols = scratch("cols", taps.size, x.dtype).reshape(taps.shape)
        per_thread(lambda part: np.copyto(cols[part], taps[part]), c)
        cols = cols.reshape(c * fh * fw, oh * wp)

        def filters(part):
            z = np.matmul(w_rows[part], cols, out=scratch(
                "product", (part.stop - part.start) * oh * wp, dtype).reshape(-1, oh * wp))
            scale_bias_relu(z, scale, b, relu, part)
            np.copyto(out[0, part], z.reshape(-1, oh, wp)[:, :, :ow])
        per_thread(filters, k)
        return out

    def rows(part):
        for h0 in range(part.start, part.stop, band):
            block(h0, min(part.stop, h0 + band))

    def block(h0, h1):
        m = (h1 - h0) * wp
        taps = taps_of(h0, m)
        cols = scratch("cols", taps.size, x.dtype).reshape(c * fh * fw, m)
        np.copyto(cols.reshape(taps.shape), taps)
        z = np.matmul(w_rows, cols, out=scratch("product", k * m, dtype).reshape(k, m))
        scale_bias_relu(z, scale, b, relu)
        np.copyto(out[0, :, h0:h1], z.reshape(k, h1 - h0, wp)[:, :, :ow])
    per_thread(rows, oh)
    return out


def forward(x, w, b, stride, padding, dilation, groups, out, relu=False, workspace=None):
    """Training forward: run, keeping x for the shifted path's backward pass."""
    run(x, w, b, padding, dilation, out, relu)
    return shifted.Cache(x, w, padding, dilation, out.shape[2:], out if relu else None)


def infer(x, w, b, stride, padding, dilation, groups, out, relu=False, scale=None,
          max_bytes=None):
    return run(x, w, b, padding, dilation, out, relu, scale)


backward = shifted.backward

