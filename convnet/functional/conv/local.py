"""The notes' locally-connected layer: CONV connectivity, no parameter sharing."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from convnet.functional.conv.gemm import col2im, im2col


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
