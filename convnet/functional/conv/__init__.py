"""Convolution: the notes' algorithm, and faster ones beside it, chosen per layer.

    reference.py   the notes' im2col + one matrix multiply and col2im: read this first
    gemm.py        "im2col": the same, with threads, reused buffers and fused finishes
    shifted.py     "shifted": stride 1, im2col along H only (FH copies, not FH*FW)
    blocks.py      "blocks": im2col + GEMM a few images at a time, each thread its own
    one_image.py   "one_image": a batch of one, im2col over whole padded rows
    winograd.py    "winograd2x2", "winograd4x4": Winograd's minimal filtering, 3x3 filters
    fft.py         "fft": one GEMM per frequency of the padded input's DFT, stride 1
    select.py      the Algorithm names, the auto choice's rules and thresholds
    machinery.py   padding over both cores, per-thread scratch buffers
    sizes.py       the output-size formula and the checks
    local.py       the locally-connected layer

``conv2d_forward``, ``conv2d_backward`` and ``conv2d_infer`` take ``algorithm`` ("auto"
by default, see select.py). Each algorithm's forward returns its own cache type, and
``conv2d_backward`` runs the backward pass of the algorithm that made the cache.

Notation: x is (N, C, H, W); w is (K, C // groups, FH, FW); out is (N, K, OH, OW).
Dilation follows PyTorch: 1 means contiguous filters (the notes' "dilation 0").
"""

from __future__ import annotations

import numpy as np

from convnet.functional.conv import blocks, fft, gemm, reference, shifted, winograd
from convnet.functional.conv.local import (
    LocalCache,
    locally_connected_backward,
    locally_connected_forward,
)
from convnet.functional.conv.machinery import buffer, pad, release_scratch, scratch
from convnet.functional.conv.reference import col2im, im2col, output_size, windows
from convnet.functional.conv.select import (
    MODULES,
    THRESHOLDS,
    Algorithm,
    Problem,
    choose,
    forced_algorithm,
    use_algorithm,
)
from convnet.functional.conv.sizes import FITS, check_input, conv_output_size, pair

IM2COL_MAX_BYTES = THRESHOLDS["inference_max_bytes"].value

def _reference_backward(dout, cache, input_grad, overwrite):
    """The notes' backward pass (its cache made by reference.conv2d_forward); its dx is
    made anyway, and dropped (None) for input_grad=False as every algorithm's is."""
    dx, dw, db = reference.conv2d_backward(dout, cache)
    return (dx if input_grad else None), dw, db


# The backward pass of each cache type.
BACKWARD = {reference.Cache: _reference_backward,
            gemm.Cache: gemm.backward, shifted.Cache: shifted.backward,
            blocks.Cache: blocks.backward, fft.Cache: fft.backward,
            winograd.Cache: lambda dout, cache, input_grad, overwrite:
            (winograd.F2X2 if cache.m == 2 else winograd.F4X4).backward(
                dout, cache, input_grad, overwrite)}


def hyperparameters(stride, padding, dilation, where="conv2d"):
    """(stride, padding, dilation) as pairs of ints, each given as an int or a pair (a
    list too): the algorithms compare them with tuples. Pairs that are already tuples of
    ints in range (what the layers pass) are returned as they are, at little cost."""
    if _pair_of_ints(stride, 1) and _pair_of_ints(padding, 0) and _pair_of_ints(dilation, 1):
        return stride, padding, dilation
    return (pair(stride, "stride", where), pair(padding, "padding", where, allow_zero=True),
            pair(dilation, "dilation", where))


def _pair_of_ints(value, low):
    return (type(value) is tuple and len(value) == 2 and type(value[0]) is int
            and type(value[1]) is int and value[0] >= low and value[1] >= low)


def problem(x, w, stride, padding, dilation, groups, out_size, max_bytes=None):
    return Problem(x.shape, w.shape, stride, padding, dilation, groups, out_size,
                   max(x.itemsize, w.itemsize), max_bytes,
                   bool(np.issubdtype(np.result_type(x, w), np.floating)))


def algorithm_for(x_shape, w_shape, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
                  groups=1, itemsize=4, training=True, algorithm="auto", where="conv2d"):
    """(Algorithm, reason): what conv2d_forward (training) or conv2d_infer would run for
    an input of x_shape (N, C, H, W) and filters of w_shape; a ValueError beginning with
    ``where`` when ``algorithm`` is named and cannot run it."""
    stride, padding, dilation = hyperparameters(stride, padding, dilation, "algorithm_for")
    out_size = output_size(x_shape, w_shape, stride, padding, dilation, "floor")
    p = Problem(tuple(x_shape), tuple(w_shape), stride, padding, dilation, groups, out_size,
                itemsize, None if training else IM2COL_MAX_BYTES)
    return choose(algorithm, p, where)


def conv2d_forward(x, w, b=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1,
                   fit="exact", cols_out=None, relu=False, algorithm="auto", where="conv2d"):
    """Convolve K filters over x, keeping what the backward pass needs.

    x: (N, C, H, W); w: (K, C // groups, FH, FW); b: (K,) or None. Returns out
    (N, K, OH, OW), OH = (H - FH' + 2P)/S + 1 with FH' = dilation*(FH-1)+1, and a cache
    for conv2d_backward, of the type of the algorithm that ran (``algorithm``: a name of
    select.Algorithm, "auto" by default). ``cols_out``: a flat buffer the im2col algorithm
    may write its matrix into (the cache's ``workspace``, to pass back next time). The
    shifted, blocks, one_image and Winograd algorithms keep x itself, which must not
    change before the backward pass (fft keeps x's spectrum). relu=True returns
    max(0, conv), the RELU of a CONV -> RELU applied as the output is finished;
    conv2d_backward then takes the gradient of that output and lets it through only where
    it is not 0 (> 0, or NaN).
    ``where`` begins the error when the algorithm named cannot run the convolution.

    >>> x = np.zeros((1, 3, 227, 227)); w = np.zeros((96, 3, 11, 11))
    >>> conv2d_forward(x, w, stride=(4, 4))[0].shape
    (1, 96, 55, 55)
    """
    stride, padding, dilation = hyperparameters(stride, padding, dilation)
    out_size = output_size(x.shape, w.shape, stride, padding, dilation, fit)
    out = np.empty((x.shape[0], w.shape[0], *out_size), dtype=np.result_type(x, w))
    chosen, _ = choose(algorithm, problem(x, w, stride, padding, dilation, groups, out_size),
                       where)
    cache = MODULES[chosen].forward(x, w, b, stride, padding, dilation, groups, out, relu,
                                    cols_out)
    if chosen == Algorithm.IM2COL and Algorithm.IM2COL in (algorithm, forced_algorithm()):
        cache = cache._replace(named=True)      # its backward pass runs im2col throughout
    return out, cache


def conv2d_backward(dout, cache, overwrite_cols=False, input_grad=True):
    """Gradients of conv2d_forward: (dx, dw, db), by the algorithm that made ``cache``.

    dw = dout_row @ X_col^T (summed over every position of each depth slice),
    dx = col2im(W_row^T @ dout_row), db = dout summed over N, OH, OW, however each
    algorithm arranges it. With input_grad=False dx is not computed and None is returned
    in its place (a net's first layer: nothing needs the gradient of the data). With
    overwrite_cols=True the im2col algorithm writes W_row^T @ dout_row over its cache's
    matrix: the cache is then spent.
    """
    return BACKWARD[type(cache)](dout, cache, input_grad, overwrite_cols)


def conv2d_infer(x, w, b=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1,
                 fit="exact", max_bytes=IM2COL_MAX_BYTES, relu=False, scale=None,
                 algorithm="auto", where="conv2d"):
    """conv2d_forward for inference: the output only, its temporaries bounded.

    Same arguments and output as conv2d_forward, but no cache; every algorithm makes its
    matrix (im2col's, the shifted copies, Winograd's transformed tiles) in pieces of at
    most ``max_bytes`` (im2col: a few images, or bands of output rows of one image; the
    others: blocks of at most their own BLOCK_BYTES too); each thread may also pad one
    whole image at a time; fft runs groups of images whose spectra fit.
    one_image and blocks cannot cut one image's rows or matrix, nor fft its filters'
    spectrum and one image's: where those would pass max_bytes, naming them is a
    ValueError and use_algorithm leaves the call to auto.
    relu=True returns max(0, conv): the RELU of a CONV -> RELU, applied to each piece of
    the output as it is finished. scale (K,) multiplies each output channel before the
    bias is added (a batch norm folded into the output rather than the filters). ``where``
    as in conv2d_forward.

    >>> x = np.ones((8, 64, 224, 224), np.float32); w = np.ones((64, 64, 3, 3), np.float32)
    >>> conv2d_infer(x, w, padding=(1, 1)).shape   # 231 MB of Winograd's V, 2 MB at a time
    (8, 64, 224, 224)
    """
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, np.integer)) or (
            max_bytes < 1):
        raise ValueError(f"conv2d_infer: max_bytes must be a positive int (bytes), got "
                         f"{max_bytes!r:.40}")
    stride, padding, dilation = hyperparameters(stride, padding, dilation, "conv2d_infer")
    out_size = output_size(x.shape, w.shape, stride, padding, dilation, fit)
    out = np.empty((x.shape[0], w.shape[0], *out_size), dtype=np.result_type(x, w))
    p = problem(x, w, stride, padding, dilation, groups, out_size, max_bytes)
    chosen, _ = choose(algorithm, p, where)
    return MODULES[chosen].infer(x, w, b, stride, padding, dilation, groups, out, relu,
                                 scale, max_bytes)


__all__ = [
    "Algorithm", "use_algorithm", "algorithm_for", "conv2d_forward", "conv2d_backward",
    "conv2d_infer", "conv_output_size", "im2col", "col2im", "windows", "pad", "pair",
    "check_input", "scratch", "release_scratch", "buffer", "FITS", "IM2COL_MAX_BYTES",
    "LocalCache", "locally_connected_forward", "locally_connected_backward",
]
