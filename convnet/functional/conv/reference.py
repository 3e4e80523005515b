"""The notes' convolution: im2col + one matrix multiply, and its backward pass.

The recipe (CS231n, "Implementation as Matrix Multiplication"):

1. im2col stretches every receptive field of the input into a column: for AlexNet's
   CONV1 (227x227x3 input, 96 filters of 11x11x3, S=4) that is a 363 x 3025 matrix.
2. The filters are stretched into rows: W_row is 96 x 363.
3. np.dot(W_row, X_col) is the convolution: 96 x 3025, reshaped to 55x55x96.

The backward pass is again a matrix multiply (for the weights) and a matrix multiply
followed by col2im, which adds every column back onto the receptive field it came from.
For stride 1 the input's gradient is also the notes' "convolution with spatially-flipped
filters" (``flipped_input_grad``).

This file is the reference: plain NumPy, one thread, no reused buffers. Every fast
algorithm beside it (``convnet.functional.conv.select``) computes the same thing and is
tested against it.

Notation: x is (N, C, H, W); w is (K, C // groups, FH, FW); out is (N, K, OH, OW).
Dilation follows PyTorch: 1 means contiguous filters (the notes' "dilation 0").
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from convnet.functional.conv.sizes import conv_output_size


def windows(x, kernel, stride, dilation, out_size):
    """Strided view of every receptive field: (N, C, OH, OW, FH, FW), no copy."""
    (fh, fw), (sh, sw), (dh, dw), (oh, ow) = kernel, stride, dilation, out_size
    view = sliding_window_view(x, (dh * (fh - 1) + 1, dw * (fw - 1) + 1), axis=(2, 3))
    return view[:, :, : sh * (oh - 1) + 1 : sh, : sw * (ow - 1) + 1 : sw, ::dh, ::dw]


def output_size(x_shape, w_shape, stride, padding, dilation, fit="exact"):
    """(OH, OW) of a conv of x (N, C, H, W) with filters w (K, C/G, FH, FW), checked."""
    return tuple(conv_output_size(x_shape[2 + a], w_shape[2 + a], stride[a], padding[a],
                                  dilation[a], fit, where="conv2d", axis="HW"[a])
                 for a in (0, 1))


def im2col(x, kernel, stride=(1, 1), padding=(0, 0), dilation=(1, 1), out_size=None):
    """Stretch every receptive field of x into a column.

    x: (N, C, H, W). Returns X_col of shape (C*FH*FW, N*OH*OW): rows ordered (c, i, j),
    columns ordered (n, oh, ow). For one 227x227x3 image, F=11, S=4: 363 x 3025.

    >>> im2col(np.zeros((1, 3, 227, 227)), (11, 11), (4, 4)).shape
    (363, 3025)
    """
    (ph, pw), (fh, fw) = padding, kernel
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    if out_size is None:
        out_size = output_size(x.shape, (0, 0, fh, fw), stride, padding, dilation, "floor")
    n, c = x.shape[:2]
    win = windows(xp, kernel, stride, dilation, out_size)       # (N, C, OH, OW, FH, FW)
    return win.transpose(1, 4, 5, 0, 2, 3).reshape(c * fh * fw, n * out_size[0] * out_size[1])


def col2im(cols, x_shape, kernel, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
           out_size=None):
    """Inverse bookkeeping of im2col: add every column back onto its receptive field.

    cols: (C*FH*FW, N*OH*OW). Returns (N, C, H, W). Overlapping fields add up, which is
    exactly the gradient of im2col. A loop over the FH x FW kernel offsets, each adding
    one strided slice; never a loop over pixels or samples.
    """
    n, c, h, w = x_shape
    (fh, fw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    if out_size is None:
        out_size = output_size(x_shape, (0, 0, fh, fw), stride, padding, dilation, "floor")
    oh, ow = out_size
    cols = cols.reshape(c, fh, fw, n, oh, ow).transpose(3, 0, 1, 2, 4, 5)  # (N, C, FH, FW, ..)
    dxp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=cols.dtype)
    for i in range(fh):
        for j in range(fw):
            rows = slice(i * dh, i * dh + sh * oh, sh)
            dxp[:, :, rows, j * dw: j * dw + sw * ow: sw] += cols[:, :, i, j]
    return dxp[:, :, ph: ph + h, pw: pw + w]


class Cache(NamedTuple):
    """What the reference backward pass needs: the im2col matrix and the hyperparameters."""
    x_shape: tuple
    cols: np.ndarray      # (C*FH*FW, N*OH*OW)
    w: np.ndarray         # (K, C // groups, FH, FW)
    stride: tuple
    padding: tuple
    dilation: tuple
    groups: int
    out_size: tuple


def conv2d_forward(x, w, b=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1,
                   fit="exact"):
    """Convolve K filters over x: im2col, then one matrix multiply per group.

    x: (N, C, H, W); w: (K, C // groups, FH, FW); b: (K,) or None. Returns out
    (N, K, OH, OW), OH = (H - FH' + 2P)/S + 1 with FH' = dilation*(FH-1)+1, and a Cache.

    >>> x = np.zeros((1, 3, 227, 227)); w = np.zeros((96, 3, 11, 11))
    >>> conv2d_forward(x, w, stride=(4, 4))[0].shape
    (1, 96, 55, 55)
    """
    n = x.shape[0]
    k, cg, fh, fw = w.shape
    oh, ow = output_size(x.shape, w.shape, stride, padding, dilation, fit)
    cols = im2col(x, (fh, fw), stride, padding, dilation, (oh, ow))        # (C*FF, N*L)
    w_rows = w.reshape(groups, k // groups, cg * fh * fw)                   # W_row per group
    out = np.matmul(w_rows, cols.reshape(groups, cg * fh * fw, n * oh * ow))  # (G, K/G, N*L)
    out = out.reshape(k, n, oh, ow).transpose(1, 0, 2, 3)
    if b is not None:
        out = out + b.reshape(1, k, 1, 1)
    return np.ascontiguousarray(out), Cache(x.shape, cols, w, stride, padding, dilation,
                                            groups, (oh, ow))


def conv2d_backward(dout, cache):
    """Gradients of conv2d_forward: (dx, dw, db).

    dw = dout_row @ X_col^T (summed over every position of each depth slice);
    dx = col2im(W_row^T @ dout_row); db = dout summed over N, OH, OW.
    """
    x_shape, cols, w, stride, padding, dilation, groups, out_size = cache
    k, cg, fh, fw = w.shape
    positions = dout.shape[0] * out_size[0] * out_size[1]
    dout_rows = dout.transpose(1, 0, 2, 3).reshape(groups, k // groups, positions)
    cols_g = cols.reshape(groups, cg * fh * fw, positions)
    dw = np.matmul(dout_rows, cols_g.transpose(0, 2, 1)).reshape(w.shape)
    db = dout.sum(axis=(0, 2, 3))
    w_cols = w.reshape(groups, k // groups, cg * fh * fw).transpose(0, 2, 1)  # (G, Cg*FF, K/G)
    dcols = np.matmul(w_cols, dout_rows)                                       # (G, Cg*FF, N*L)
    dx = col2im(dcols, x_shape, (fh, fw), stride, padding, dilation, out_size)
    return dx, dw, db


def flipped_filters(w, groups=1):
    """The filters of the input gradient's convolution: spatially flipped, with the input
    and output roles swapped: (K, C/G, FH, FW) -> (C, K/G, FH, FW)."""
    k, cg, fh, fw = w.shape
    w_t = w.reshape(groups, k // groups, cg, fh, fw).transpose(0, 2, 1, 3, 4)
    return np.ascontiguousarray(w_t[..., ::-1, ::-1].reshape(groups * cg, k // groups, fh, fw))


def flipped_input_grad(dout, w, padding=(0, 0), dilation=(1, 1), groups=1):
    """dx of a stride-1 conv as the notes put it: dout convolved with the flipped filters
    (``flipped_filters``), zero-padded by dilation*(F-1) - P, which must be >= 0."""
    fh, fw = w.shape[2:]
    pad_t = tuple(d * (f - 1) - p for d, f, p in zip(dilation, (fh, fw), padding))
    return conv2d_forward(dout, flipped_filters(w, groups), None, (1, 1), pad_t, dilation,
                          groups, "floor")[0]
