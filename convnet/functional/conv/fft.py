"""Algorithm "fft": convolution as a product of spectra, the DFTs done as small GEMMs.

The correlation theorem: correlating a padded input plane with a filter is, on a grid of
TH x TW = (H + 2*PH) x (W + 2*PW) points, the inverse DFT of the input's DFT times the
filter's conjugate DFT. The grid is just large enough that the circular correlation
wraps nothing onto the outputs kept. Over C channels and K filters the products become
one GEMM per frequency (TH * NFW of them, NFW = TW//2 + 1, a real input's spectrum
being symmetric): Y[f] (N x K) = X[f] (N x C) @ conj(W[f]) (C x K), complex, run as a real
GEMM with the real and imaginary parts side by side, (N x 2C) @ (2C x 2K).

Each DFT is two small matrix products, one along each axis (the real DFT along W, the
complex DFT along H), each a GEMM over a block of images; the padding costs nothing (the
DFT matrix's columns start at the padded position of the input's first row and column).
The spectra are laid out frequency first, (TH, NFW, N, 2, C) with NFW = TW//2 + 1, so
that each
frequency's GEMM reads a contiguous (N, 2C) matrix.

Multiplications per output, per filter and channel: 4 * TH * NFW / (OH * OW) (four real
ones per complex product, over TH * NFW frequencies) against FH * FW for direct
convolution: 6.8x fewer for a 5x5 layer on 14x14 with "same" padding, 2.5x for a 3x3
layer on 7x7. The transforms
cost a few GEMMs with an inner dimension of H, W, TH or 2 * NFW per plane. The filters'
spectrum, as the GEMMs' real blocks, is 4 * TH * NFW / (FH * FW) times their size (in
training select.py does not run "fft" where it would pass fft_max_filter_bytes): "fft"
suits small planes and large filters, not deep layers on large planes.

Backward, from the same spectra: the output gradient's spectrum D (one DFT of dout),
dx = inverse DFT of D[f] @ W[f] (the full convolution with the flipped filters: the
forward GEMM's transpose), dw = the inverse DFT of conj(D[f])^T X[f] at the FH x FW
taps (the correlation of the input with dout). Training keeps the input's spectrum and
the filters'.

Rounding: each output mixes every input of its plane through the transforms, so its
float32 error is about that of a sum over the plane (about 1e-6 of the output's scale;
docs/performance.md; float16 inputs are transformed in float32). An output that direct
convolution makes exactly 0 (a zero region of the input, no bias) comes out as a rounding
residue (about 1e-15 of the scale in float64), which a fused RELU keeps, so the gradient
passes there where PyTorch's stops. A NaN or infinite input makes every output of its
image NaN.
Stride 1, one group; any padding and dilation.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from convnet.functional.conv import shifted
from convnet.functional.conv.machinery import scale_bias_relu
from convnet.functional.threads import per_thread

# A block of images' largest temporary (a spectrum before its real and imaginary parts
# are combined) takes at most this many bytes, so each thread's block stays in its cache.
BLOCK_BYTES = 2 << 20


class Cache(NamedTuple):
    spectrum: np.ndarray  # the input's, (TH, NFW, N, 2, C)
    filters: np.ndarray   # the filters' conjugate spectrum as real blocks, (TH*NFW, 2C, 2K)
    x_shape: tuple
    x_dtype: np.dtype
    w: np.ndarray         # (K, C, FH, FW)
    padding: tuple
    dilation: tuple
    relu_out: np.ndarray = None   # with relu=True, the output: its non-0 entries pass dout


def applies(x_shape, w_shape, stride, padding, dilation, groups):
    """None when "fft" can run this convolution, else why not: the shifted path's domain,
    stride 1 and one group."""
    return shifted.applies(x_shape, w_shape, stride, padding, dilation, groups)


def work_dtype(*arrays):
    """The spectra's dtype: float32 at least (a float16 spectrum's sums overflow)."""
    return np.result_type(*arrays, np.float32)


def grid(x_shape, padding):
    """(TH, TW): the DFT's grid, the padded input's size."""
    return x_shape[2] + 2 * padding[0], x_shape[3] + 2 * padding[1]


# -- the DFT matrices (made in float64, kept per dtype) -------------------------------
@functools.lru_cache(maxsize=256)
def _real_dft(n, offset, t, dtype):
    """(n, 2 * (t//2 + 1)): row p holds the real DFT's [cos | -sin] of position p + offset
    on a grid of t points, one column per frequency: x @ it is [Re | Im] of rfft."""
    angle = 2 * np.pi * np.outer(np.arange(n) + offset, np.arange(t // 2 + 1)) / t
    return _frozen(np.concatenate([np.cos(angle), -np.sin(angle)], axis=1), dtype)


@functools.lru_cache(maxsize=256)
def _complex_dft(n, offset, t, dtype):
    """(2t, n): [cos; -sin] of 2 pi k (p + offset) / t, row k for each of the t
    frequencies, column p for each of n positions: the DFT along H, its real and
    imaginary parts stacked."""
    angle = 2 * np.pi * np.outer(np.arange(t), np.arange(n) + offset) / t
    return _frozen(np.concatenate([np.cos(angle), -np.sin(angle)]), dtype)


@functools.lru_cache(maxsize=256)
def _inverse_complex(n, offset, t, dtype):
    """(2n, t): [cos; sin] of 2 pi k (p + offset) / t, row p for each of n positions,
    column k for each frequency: the inverse DFT along H, unscaled."""
    angle = 2 * np.pi * np.outer(np.arange(n) + offset, np.arange(t)) / t
    return _frozen(np.concatenate([np.cos(angle), np.sin(angle)]), dtype)


@functools.lru_cache(maxsize=256)
def _inverse_real(n, offset, t, scale, dtype):
    """(2 * (t//2 + 1), n): the inverse real DFT onto n positions from [Re; Im] of the
    t//2 + 1 frequencies (each but the first, and the last for an even t, counted twice
    for its conjugate), times scale."""
    f = t // 2 + 1
    angle = 2 * np.pi * np.outer(np.arange(f), np.arange(n) + offset) / t
    weight = np.full((f, 1), 2.0)
    weight[0] = 1
    if t % 2 == 0:
        weight[-1] = 1
    return _frozen(np.concatenate([weight * np.cos(angle), -weight * np.sin(angle)]) * scale,
                   dtype)


def _frozen(a, dtype):
    a = a.astype(dtype)
    a.flags.writeable = False     # shared by every call and thread
    return a


# -- spectra --------------------------------------------------------------------------
def _images_per_block(per_image):
    return max(1, BLOCK_BYTES // max(1, per_image))


def spectrum(a, offset, t, dtype, out=None):
    """The 2-D real DFT of every (n, c) plane of a (N, C, H, W), its rows at offset[0] and
    its columns at offset[1] of a zero grid of t = (TH, TW) points: (TH, NFW, N, 2, C)
    with NFW = TW//2 + 1, [..., 0, :] the real parts, [..., 1, :] the imaginary ones;
    written into ``out`` when given (any strides)."""
    n, c, h, w = a.shape
    th, tw = t
    nfw = tw // 2 + 1
    along_w = _real_dft(w, offset[1], tw, dtype).T                         # (2NFW, W)
    along_h = _complex_dft(h, offset[0], th, dtype)                      # (2TH, H)
    if out is None:
        out = np.empty((th, nfw, n, 2, c), dtype)
    per = _images_per_block(2 * th * 2 * nfw * c * np.dtype(dtype).itemsize)

    def work(part):
        for n0 in range(part.start, part.stop, per):
            n1 = min(part.stop, n0 + per)
            nb = n1 - n0
            planes = np.ascontiguousarray(a[n0:n1].transpose(2, 3, 0, 1), dtype=dtype)
            rows = np.matmul(along_w, planes.reshape(h, w, nb * c))    # (H, 2NFW, nb*C)
            both = np.matmul(along_h, rows.reshape(h, -1)).reshape(2, th, 2, nfw, nb, c)
            # (cos + i s)(re + i im) = cos re - s im + i (cos im + s re), s = -sin
            np.subtract(both[0, :, 0], both[1, :, 1], out=out[:, :, n0:n1, 0])
            np.add(both[0, :, 1], both[1, :, 0], out=out[:, :, n0:n1, 1])
    per_thread(work, n)
    return out


def inverse(s, t, offset, out, b=None, relu=False, scale=None):
    """out (N, K, OH, OW) = the inverse 2-D real DFT, on the grid t = (TH, TW), of s
    (TH, NFW, N, 2K) (real parts, then imaginary ones), at rows offset[0] .. offset[0] + OH
    - 1 and columns offset[1] .. offset[1] + OW - 1; then the channel scale, the bias and
    a RELU where given."""
    th, nfw, n, k2 = s.shape
    k = k2 // 2
    oh, ow = out.shape[2:]
    dtype = s.dtype
    along_h = _inverse_complex(oh, offset[0], th, dtype)                     # (2OH, TH)
    along_w = _inverse_real(ow, offset[1], t[1], 1 / (th * t[1]), dtype)    # (2NFW, OW)
    per = _images_per_block(2 * oh * nfw * k2 * np.dtype(dtype).itemsize)

    def work(part):
        for n0 in range(part.start, part.stop, per):
            n1 = min(part.stop, n0 + per)
            nb = n1 - n0
            block = s[:, :, n0:n1].transpose(1, 0, 2, 3).reshape(nfw, th, nb * k2)
            both = np.matmul(along_h, block).reshape(nfw, 2, oh, nb, 2, k)
            # (cos + i sin)(re + i im) = cos re - sin im + i (cos im + sin re)
            half = np.empty((oh, 2, nfw, nb, k), dtype)
            np.subtract(both[:, 0, :, :, 0].transpose(1, 0, 2, 3),
                        both[:, 1, :, :, 1].transpose(1, 0, 2, 3), out=half[:, 0])
            np.add(both[:, 0, :, :, 1].transpose(1, 0, 2, 3),
                   both[:, 1, :, :, 0].transpose(1, 0, 2, 3), out=half[:, 1])
            dest = out[n0:n1].transpose(2, 0, 1, 3).reshape(oh, nb * k, ow)
            np.matmul(half.reshape(oh, 2 * nfw, nb * k).transpose(0, 2, 1), along_w, out=dest)
            if scale is not None or b is not None or relu:
                scale_bias_relu(out[n0:n1].reshape(nb, k, oh * ow), scale, b, relu)
    per_thread(work, n)
    return out


# -- the filters ----------------------------------------------------------------------
def _dilated(w, dilation):
    """w with dilation - 1 zeros between its taps (w itself for dilation 1)."""
    if dilation == (1, 1):
        return w
    k, c, fh, fw = w.shape
    out = np.zeros((k, c, dilation[0] * (fh - 1) + 1, dilation[1] * (fw - 1) + 1), w.dtype)
    out[:, :, :: dilation[0], :: dilation[1]] = w
    return out


def filter_spectrum(w, t, dilation, dtype):
    """The GEMMs' right-hand sides: for each frequency f of the grid t, the filters'
    conjugate DFT conj(W[f]) (C x K) as the real (2C, 2K) block [[Re, Im], [-Im, Re]]
    that maps [Re X | Im X] to [Re Y | Im Y]: (TH * NFW, 2C, 2K)."""
    k, c = w.shape[:2]
    th, tw = t
    blocks = np.empty((th * (tw // 2 + 1), 2 * c, 2 * k), dtype)
    top = blocks[:, :c]                          # W's DFT as [Re | Im] for each channel
    spectrum(_dilated(w, dilation).transpose(1, 0, 2, 3), (0, 0), t, dtype,
             out=top.reshape(th, -1, c, 2, k))
    blocks[:, c:, :k] = top[:, :, k:]
    blocks[:, c:, k:] = top[:, :, :k]
    np.negative(top[:, :, k:], out=top[:, :, k:])     # conj(W) = Re - i Im
    return blocks


def _filter_gradient(g, t, w_shape, dilation, dtype):
    """dw (K, C, FH, FW) from g = D^T [Re X | Im X] ((TH * FW, 2K, 2C), D = [Re | Im] of
    dout's spectrum): the inverse real DFT of conj(D)^T X at the filters' taps."""
    k, c, fh, fw = w_shape
    nf = g.shape[0]
    s = np.empty((nf, k, 2, c), g.dtype)
    # conj(D)^T X = (Dr^T Xr + Di^T Xi) + i (Dr^T Xi - Di^T Xr)
    np.add(g[:, :k, :c], g[:, k:, c:], out=s[:, :, 0])
    np.subtract(g[:, :k, c:], g[:, k:, :c], out=s[:, :, 1])
    span = (dilation[0] * (fh - 1) + 1, dilation[1] * (fw - 1) + 1)
    dw = np.empty((k, c, *span), dtype)
    inverse(s.reshape(t[0], -1, k, 2 * c), t, (0, 0), dw)
    return np.ascontiguousarray(dw[:, :, :: dilation[0], :: dilation[1]])


# -- the algorithm --------------------------------------------------------------------
def _products(a, blocks, transpose=False):
    """a (NF, N, 2C) @ blocks (NF, 2C, 2K) (or blocks transposed), frequencies split
    between the threads."""
    right = blocks.transpose(0, 2, 1) if transpose else blocks
    out = np.empty((a.shape[0], a.shape[1], right.shape[2]), np.result_type(a, right))
    per_thread(lambda part: np.matmul(a[part], right[part], out=out[part]), a.shape[0])
    return out


def run(x, w, b, padding, dilation, out, relu=False, scale=None, blocks=None):
    """out = conv(x, w) + b (and scale, RELU): returns (x's spectrum, the filters')."""
    n, c = x.shape[:2]
    k = w.shape[0]
    t = grid(x.shape, padding)
    dtype = work_dtype(x, w)
    if blocks is None:
        blocks = filter_spectrum(w, t, dilation, dtype)
    spec = spectrum(x, padding, t, dtype)
    th, nfw = spec.shape[:2]
    y = _products(spec.reshape(th * nfw, n, 2 * c), blocks)
    inverse(y.reshape(th, nfw, n, 2 * k), t, (0, 0), out, b, relu, scale)
    return spec, blocks


def forward(x, w, b, stride, padding, dilation, groups, out, relu=False, workspace=None):
    """Training forward: keeps the input's and the filters' spectra for backward."""
    spec, blocks = run(x, w, b, padding, dilation, out, relu)
    return Cache(spec, blocks, x.shape, x.dtype, w, padding, dilation,
                 out if relu else None)


def filter_bytes(x_shape, w_shape, padding, item_bytes):
    """The bytes of the filters' spectrum (the GEMMs' right-hand sides), for inputs of
    item_bytes a value (the spectra take 4 at least)."""
    th, tw = grid(x_shape, padding)
    return max(item_bytes, 4) * th * (tw // 2 + 1) * 4 * w_shape[0] * w_shape[1]


def inference_bytes(x_shape, w_shape, padding, item_bytes):
    """The filters' spectrum and one image's spectra (its input's and its output's): what
    "fft" needs at inference at least (it runs the images in groups whose spectra fit
    max_bytes)."""
    th, tw = grid(x_shape, padding)
    k, c = w_shape[:2]
    return (filter_bytes(x_shape, w_shape, padding, item_bytes)
            + max(item_bytes, 4) * th * (tw // 2 + 1) * (2 * c + 2 * k))


def infer(x, w, b, stride, padding, dilation, groups, out, relu=False, scale=None,
          max_bytes=None):
    """The output in groups of images whose spectra (input's and output's) fit
    max_bytes beside the filters' spectrum."""
    n = x.shape[0]
    one = inference_bytes((1, *x.shape[1:]), w.shape, padding, max(x.itemsize, w.itemsize))
    t = grid(x.shape, padding)
    blocks = filter_spectrum(w, t, dilation, work_dtype(x, w))
    per_image = one - blocks.nbytes
    per = n if max_bytes is None else max(1, (max_bytes - blocks.nbytes) // per_image)
    for n0 in range(0, n, per):
        run(x[n0: n0 + per], w, b, padding, dilation, out[n0: n0 + per], relu, scale, blocks)
    return out


def backward(dout, cache, input_grad=True, overwrite=False):
    """(dx, dw, db) from dout's spectrum and the kept ones (see the module notes)."""
    spec, blocks, x_shape, x_dtype, w, padding, dilation, gate = cache
    n, c = x_shape[:2]
    k = w.shape[0]
    t = grid(x_shape, padding)
    th, nfw = spec.shape[:2]
    dtype = work_dtype(spec, dout)
    if gate is not None:   # a fused RELU: the gradient passes where its output is not 0
        dout = dout * (gate != 0)
    d = spectrum(dout, (0, 0), t, dtype).reshape(th * nfw, n, 2 * k)
    db = dout.sum(axis=(0, 2, 3))
    g = np.empty((th * nfw, 2 * k, 2 * c), dtype)
    x_spec = spec.reshape(th * nfw, n, 2 * c)
    per_thread(lambda part: np.matmul(d[part].transpose(0, 2, 1), x_spec[part],
                                      out=g[part]), th * nfw)
    dw = _filter_gradient(g, t, w.shape, dilation, np.result_type(x_dtype, dout))
    dx = None
    if input_grad:
        dx = np.empty(x_shape, dtype=np.result_type(w, dout))
        s = _products(d, blocks, transpose=True)                          # D[f] @ W[f]
        inverse(s.reshape(th, nfw, n, 2 * c), t, padding, dx)
    return dx, dw, db
