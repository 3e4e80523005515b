"""Algorithms "winograd2x2" and "winograd4x4": Winograd's minimal filtering for 3x3 filters.

Lavin & Gray 2016 ("Fast Algorithms for Convolutional Neural Networks"): an m x m tile of
a stride-1 3x3 convolution's output is computed from an a x a tile of the input, a = m + 2,
with a*a multiplications per (filter, channel) where direct convolution needs 9*m*m:

    Y = A^T [ (G w G^T) * (B^T d B) ] A          (* elementwise, per tile)

F(2x2, 3x3) (a = 4) does 2.25x fewer multiplications, F(4x4, 3x3) (a = 6) 4x fewer. Over
C channels and K filters the elementwise products become a*a GEMMs, one per position
(p, q) of the transformed tile: M[p, q] = U[p, q] (K x C) @ V[p, q] (C x tiles), with
U = G w G^T the transformed filters and V = B^T d B the transformed input tiles. The
filters' transform is two tiny matrix products, one along each tile axis; the input's and
the output's are each one GEMM with the Kronecker product of their matrix (_both_sides).

The input's tiles overlap by 2 (they are a wide, m apart); the output's tiles do not.
Tiles are made in blocks of images (or of tile rows of one image) of at most BLOCK_BYTES,
each thread its own, so a block's transforms and GEMMs stay in the core's cache. Where a
block would hold too few tiles for its GEMMs (many channels, few tiles: deep layers), the
threads instead split the channels to make V for a group of images (ALL_TILES_BYTES of
it), then the filters, each GEMM spanning every tile of the group. Inference
keeps a large filter bank's U between calls (kept_filter_transform).

The backward pass is the exact adjoint of the forward: the output gradient's tiles go
through A (dM = A dY A^T); dU = dM @ V^T gives the filters' gradient through G
(dw = G^T dU G), and dV = U^T @ dM the input's through B (dd = B dV B^T), the tiles'
overlaps added back. Training keeps x, and the backward pass makes each block's V again.

Rounding: the transforms' coefficients (up to 5 and 1/24 for F(4x4)) amplify float32
rounding: the error against a float64 reference is about 1e-6 of the output's scale for
F(2x2) and 1e-5 for F(4x4) (tests bound it): F(2x2)'s about im2col's, F(4x4)'s about ten
times it. Like im2col's, it grows with the inputs' magnitude where the output cancels it
(raw 0-255 pixels through zero-sum filters; docs/performance.md has figures). Float64
agrees with PyTorch within the tests' 1e-10. An output that direct convolution makes
exactly 0 can come out as a rounding residue (a tile that mixes zeros and non-zeros),
which a fused RELU keeps, letting the gradient through. A NaN or infinite input reaches
every output of each tile that holds it (an infinity as NaN): wider than its receptive
field.
Stride 1, 3x3 filters, dilation 1, one group; any padding.
"""

from __future__ import annotations

import math
import weakref
from typing import NamedTuple

import numpy as np
from numpy.lib.stride_tricks import as_strided

from convnet.functional.conv.machinery import on_release, pad, scratch
from convnet.functional.threads import in_parallel, per_thread

# Each block's transformed input V (and product M) takes at most this many bytes.
BLOCK_BYTES = 2 << 20
# Where a block would hold fewer than ALL_TILES_BELOW tiles (many channels, few tiles:
# GEMMs too thin to run near BLAS's peak), every GEMM spans every tile of as many images
# as their V fits in ALL_TILES_BYTES.
ALL_TILES_BYTES = 16 << 20
ALL_TILES_BELOW = 48

# (B^T, G, A^T) of F(m x m, 3 x 3), from Lavin & Gray 2016 (points 0, 1, -1 for m = 2;
# 0, 1, -1, 2, -2 for m = 4).
MATRICES = {
    2: (np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], float),
        np.array([[1, 0, 0], [1 / 2, 1 / 2, 1 / 2], [1 / 2, -1 / 2, 1 / 2], [0, 0, 1]]),
        np.array([[1, 1, 1, 0], [0, 1, -1, -1]], float)),
    4: (np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                  [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], float),
        np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                  [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]),
        np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
                  [0, 1, -1, 8, -8, 1]], float)),
}


class Cache(NamedTuple):
    x: np.ndarray         # the input, kept: each block's V is made again from it
    w: np.ndarray         # (K, C, 3, 3)
    padding: tuple
    m: int                # output tile size
    out_size: tuple
    relu_out: np.ndarray = None   # with relu=True, the output: its non-0 entries pass dout


def filter_transform(w, m):
    """U = G w G^T for every filter and channel: (a*a, K, C), in w's dtype."""
    g = MATRICES[m][1].astype(w.dtype)
    k, c = w.shape[:2]
    u = _two_sided(g, w.transpose(2, 3, 0, 1))                       # (a, a, K, C)
    return u.reshape((m + 2) ** 2, k, c)


# Inference keeps the transformed filters of a filter bank of at least FILTERS_MIN_BYTES
# (U is 4x (F(4x4)) or 1.8x (F(2x2)) the size of w, and making it is a pass over all of
# it), at most FILTERS_MAX_BYTES of them, the oldest dropped first.
FILTERS_MIN_BYTES = 64 << 10
FILTERS_MAX_BYTES = 512 << 20
_filters = {}   # (id(w), m, dtype) -> _Kept
on_release(_filters.clear)                    # release_scratch() frees them too


class _Kept(NamedTuple):
    ref: weakref.ref      # w itself: an entry never outlives its array
    copy: np.ndarray      # w's values when U was made: an in-place change is seen
    u: np.ndarray


def kept_filter_transform(w, m, dtype):
    """filter_transform(w, m) in dtype, kept between calls for a large w while w keeps
    its values (compared in full each call, a pass over w: an optimizer's in-place
    update, or any other, makes U again)."""
    key = (id(w), m, np.dtype(dtype).str)
    kept = _filters.get(key)
    if kept is not None and kept.ref() is w and _equal(kept.copy, w):
        return kept.u
    u = filter_transform(w.astype(dtype, copy=False), m)
    if w.nbytes >= FILTERS_MIN_BYTES and u.nbytes + w.nbytes <= FILTERS_MAX_BYTES:
        _filters.pop(key, None)
        # Snapshots (list(...)): another thread, or an array's end, may change _filters.
        while (kept := list(_filters.items())) and sum(
                v.u.nbytes + v.copy.nbytes for _, v in kept) + u.nbytes + w.nbytes > (
                FILTERS_MAX_BYTES):
            _filters.pop(kept[0][0], None)                                  # the oldest
        _filters[key] = _Kept(weakref.ref(w, lambda _, key=key: _filters.pop(key, None)),
                              w.copy(), u)
    return u


def _equal(a, b, chunk=1 << 18):
    """Whether a and b (same shape and dtype) hold the same values: a chunk at a time
    (np.array_equal would make a whole-size temporary), the chunks split between the
    threads."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    a, b = a.reshape(-1), b.reshape(-1)
    differ = []

    def compare(part):
        for i in range(part.start * chunk, min(a.size, part.stop * chunk), chunk):
            if not np.array_equal(a[i: i + chunk], b[i: i + chunk]):
                differ.append(i)
                return
    in_parallel(compare, -(-a.size // chunk), a.nbytes)
    return not differ


def _two_sided(mat, t):
    """mat @ T @ mat^T on the first two axes of t (a1, a2, ...): mat (b, a) applied along
    axis 0, then along axis 1, as two matrix products (the filters' transforms)."""
    a1, a2 = t.shape[:2]
    b, rest = mat.shape[0], t.shape[2:]
    size = math.prod(rest)
    first = np.matmul(mat, t.reshape(a1, a2 * size))                        # along axis 0
    second = np.matmul(mat, first.reshape(b, a2, size))                     # along axis 1
    return second.reshape(b, b, *rest)


class Tiling(NamedTuple):
    """How a convolution is cut into tiles: their counts and the padded input's size."""
    th: int               # tile rows
    tw: int               # tile columns
    hp: int               # padded input height: th*m + 2
    wp: int               # padded input width: tw*m + 2


def tiling(x_shape, padding, m):
    oh, ow = x_shape[2] + 2 * padding[0] - 2, x_shape[3] + 2 * padding[1] - 2
    th, tw = -(-oh // m), -(-ow // m)
    return Tiling(th, tw, th * m + 2, tw * m + 2)


def _pad_input(x, padding, t, m, r0=0, r1=None):
    """Rows r0*m .. r1*m + 2 of x (n, C, H, W) zero-padded (PH rows above, PW columns
    before, and after them as many as the last tiles need): the rows tile rows r0..r1
    (default: all of them) read, (n, C, (r1 - r0)*m + 2, WP) in this thread's scratch."""
    n, c, h = x.shape[:3]
    r1 = t.th if r1 is None else r1
    top = r0 * m - padding[0]                 # the input row at the first padded row
    rows = (r1 - r0) * m + 2
    lo, hi = max(0, top), min(h, top + rows)
    return pad(x[:, :, lo: max(lo, hi)], (lo - top, padding[1]), padded_shape=(rows, t.wp),
               out=scratch("padded", n * c * rows * t.wp, x.dtype))


def _input_tiles(xp, r0, r1, m):
    """The a x a input tiles of tile rows r0..r1 of every image of xp (n, C, HP, WP):
    a view (a, a, C, n, R, TW)."""
    n, c, _, wp = xp.shape
    a, tw = m + 2, (wp - 2) // m
    s = xp.strides
    return as_strided(xp[:, :, r0 * m:], (a, a, c, n, r1 - r0, tw),
                      (s[2], s[3], s[1], s[0], s[2] * m, s[3] * m), writeable=False)


def _both_sides(kron, t, role):
    """mat @ T @ mat^T for every a x a tile of t (a*a, ...), the tile's positions
    flattened on its first axis, as one GEMM with kron = np.kron(mat, mat) (b*b, a*a):
    a K of a*a runs nearer BLAS's peak than two products with a K of a. The result
    (b*b, ...) goes into this thread's scratch ``role``."""
    rest = t.shape[1:]
    out = scratch(role, kron.shape[0] * math.prod(rest), np.result_type(kron, t))
    np.matmul(kron, t.reshape(kron.shape[1], -1), out=out.reshape(kron.shape[0], -1))
    return out.reshape(kron.shape[0], *rest)


def _transform_input(xp, r0, r1, m, kron_b):
    """V = B^T d B of the tiles of tile rows r0..r1: (a*a, C, n*R*TW)."""
    tiles = _input_tiles(xp, r0, r1, m)
    a, c = m + 2, tiles.shape[2]
    d = scratch("cols", tiles.size, xp.dtype).reshape(tiles.shape)
    np.copyto(d, tiles)
    d = d.reshape(a * a, c, math.prod(tiles.shape[3:]))
    return _both_sides(kron_b, d, "winograd_v")


# Column 1 of A^T is all ones (its interpolation point is 1, and every power of 1 is 1),
# so a value added to M at tile position (1, 1) reaches every output of the tile once:
# the bias goes there, a pass over one of M's a*a positions instead of over every output.
ONES = 1


def _place_tiles(y, out, lo, hi, ow, relu=False):
    """Output rows lo..hi of out (n, K, OH, OW) from the output tiles y (m, m, K, n, R, TW):
    y[i, j, k, n, r, c] is out[n, k, lo + r*m + i, c*m + j], the last tiles cropped. One
    strided copy per tile position (i, j), each reading y[i, j] in order; relu=True
    writes max(0, y) instead."""
    m = y.shape[0]
    for i in range(m):
        rows = len(range(lo + i, hi, m))
        for j in range(m):
            dst = out[:, :, lo + i: hi: m, j: ow: m]
            src = y[i, j, :, :, :rows, : dst.shape[3]].transpose(1, 0, 2, 3)
            if relu:
                np.maximum(src, 0, out=dst)
            else:
                np.copyto(dst, src)


def _output_tiles(u, v, kron_a, grid, scale, b, relu, out, lo, hi):
    """Output rows lo..hi of out (n, K', OH, OW) from the transformed tiles: M = U @ V
    ((a*a, K', C) by (a*a, C, tiles), a GEMM per tile position), Y = A^T M A, placed.
    The bias is added to M at tile position (ONES, ONES) (every output gets it once); a
    scale (a batch norm folded into the output) multiplies Y while it is contiguous,
    before the bias; the RELU is applied as Y is placed. grid: the tiles' (n, R, TW)."""
    aa, k = u.shape[:2]
    a = math.isqrt(aa)
    m = math.isqrt(kron_a.shape[0])
    prod = scratch("product", aa * k * v.shape[2], np.result_type(u, v))
    mm = np.matmul(u, v, out=prod.reshape(aa, k, v.shape[2]))                # (a*a, K', T)
    if b is not None and scale is None:
        np.add(mm[ONES * a + ONES], b.reshape(-1, 1), out=mm[ONES * a + ONES])
    y = _both_sides(kron_a, mm.reshape(aa, k, *grid), "cols")                 # (m*m, K', ..)
    if scale is not None:
        flat = y.reshape(m * m, k, v.shape[2])
        np.multiply(flat, scale.reshape(1, -1, 1), out=flat)
        if b is not None:
            np.add(flat, b.reshape(1, -1, 1), out=flat)
    _place_tiles(y.reshape(m, m, *y.shape[1:]), out, lo, hi, out.shape[3], relu)


def _gather_tiles(dout, lo, nr, tw, m):
    """The adjoint of _place_tiles: the output gradient's m x m tiles of tile rows
    starting at row lo, (m*m, K, n*nr*tw) in this thread's scratch, zero where a last tile
    reaches past dout (n, K, OH, OW)."""
    n, k, oh, ow = dout.shape
    y = scratch("winograd_dy", m * m * k * n * nr * tw, dout.dtype).reshape(m, m, k, n, nr, tw)
    for i in range(m):
        rows = len(range(lo + i, min(oh, lo + nr * m), m))
        for j in range(m):
            src = dout[:, :, lo + i: lo + nr * m: m, j: ow: m]
            dst = y[i, j].transpose(1, 0, 2, 3)                              # (n, K, R, TW)
            np.copyto(dst[:, :, :rows, : src.shape[3]], src)
            dst[:, :, rows:] = 0
            dst[:, :, :rows, src.shape[3]:] = 0
    return y.reshape(m * m, k, n * nr * tw)


class Winograd:
    """F(m x m, 3 x 3) as a convolution algorithm: applies, forward, infer, backward."""

    def __init__(self, m):
        self.m = m
        self.bt, self.g, self.at = MATRICES[m]
        self._krons = {}   # dtype -> (kron(B^T, B^T), kron(A^T, A^T)), made once

    def krons(self, dtype):
        """(np.kron(B^T, B^T), np.kron(A^T, A^T)) in dtype: the input's and the output's
        two-sided transforms as one matrix each (_both_sides), made once per dtype."""
        key = np.dtype(dtype).str
        if key not in self._krons:
            pair = tuple(np.kron(mat, mat).astype(dtype) for mat in (self.bt, self.at))
            for kron in pair:
                kron.flags.writeable = False        # shared by every call and thread
            self._krons[key] = pair
        return self._krons[key]

    def applies(self, x_shape, w_shape, stride, padding, dilation, groups):
        """None when this Winograd algorithm can run the convolution, else why not."""
        if tuple(w_shape[2:]) != (3, 3):
            return "it needs 3x3 filters"
        if stride != (1, 1) or dilation != (1, 1):
            return "it needs stride 1 and dilation 1"
        return None if groups == 1 else "it needs groups=1"

    def _rows_per_block(self, n, c, k, t, itemsize, max_bytes):
        """(images, tile rows) a block takes: whole images while they fit in max_bytes
        (V and M each), else bands of tile rows of one image; at least one tile row."""
        row_bytes = (self.m + 2) ** 2 * max(c, k) * t.tw * itemsize
        per_image = max_bytes // max(1, row_bytes * t.th)
        if per_image >= 1:
            return max(1, min(n, per_image)), t.th
        return 1, max(1, max_bytes // max(1, row_bytes))

    def _each_block(self, x, padding, t, images, rows, work, split_rows=True):
        """work(xp, n0, n1, r0, r1, part) for every block of tile rows r0..r1 of images
        n0..n1, xp holding the padded rows they read (from padded row r0*m), part the
        start of the share of images (or tile rows) that the calling thread runs. The
        threads split the images; an image alone, its tile rows (unless split_rows is
        False), each band padded by the thread that uses it, so that its rows are still
        in the cache."""
        n = x.shape[0]
        if n == 1:
            def bands(part):
                for r0 in range(part.start, part.stop, rows):
                    r1 = min(part.stop, r0 + rows)
                    work(_pad_input(x, padding, t, self.m, r0, r1), 0, 1, r0, r1,
                         part.start)
            if split_rows:
                per_thread(bands, t.th)
            else:
                bands(range(t.th))
            return

        def batch(part):
            for s in range(part.start, part.stop, images):
                s1 = min(part.stop, s + images)
                xp = _pad_input(x[s:s1], padding, t, self.m)
                for r0 in range(0, t.th, rows):
                    work(xp[:, :, r0 * self.m:], s, s1, r0, min(t.th, r0 + rows),
                         part.start)
        per_thread(batch, n)

    def run(self, x, w, b, padding, out, relu=False, scale=None, max_bytes=None,
            keep_filters=False):
        """out (N, K, OH, OW) = the convolution of x (N, C, H, W) with w (K, C, 3, 3).
        The tiles in blocks of at most BLOCK_BYTES, each thread its own; or, where a
        block would hold fewer than ALL_TILES_BELOW tiles, every tile of a group of images
        at once (_all_tiles), as many images as their transformed input V fits in
        ALL_TILES_BYTES. Neither makes its transformed tiles in pieces over max_bytes
        (default: no bound but theirs); a thread pads one whole image at a time.
        b, relu and scale as in gemm.gemm_nchw. keep_filters: U is kept between calls
        (kept_filter_transform; inference, where the filters stay as they are). Returns
        out."""
        max_bytes = math.inf if max_bytes is None else max_bytes
        m, a = self.m, self.m + 2
        n, c = x.shape[:2]
        k = w.shape[0]
        oh = out.shape[2]
        t = tiling(x.shape, padding, m)
        dtype = np.result_type(x, w)
        kb, ka = self.krons(dtype)
        u = (kept_filter_transform(w, m, dtype) if keep_filters else
             filter_transform(w.astype(dtype, copy=False), m))              # (a*a, K, C)
        size = np.dtype(dtype).itemsize
        images, rows = self._rows_per_block(n, c, k, t, size, min(max_bytes, BLOCK_BYTES))
        limit = min(max_bytes, ALL_TILES_BYTES)
        if images * rows * t.tw < ALL_TILES_BELOW and a * a * c * t.th * t.tw * size <= limit:
            return self._all_tiles(x, u, b, padding, out, relu, scale, t, kb, ka, limit)

        def block(xp, n0, n1, r0, r1, part):
            nb = n1 - n0
            v = _transform_input(xp, 0, r1 - r0, m, kb)
            _output_tiles(u, v, ka, (nb, r1 - r0, t.tw), scale, b, relu, out[n0:n1], r0 * m,
                          min(oh, r1 * m))
        self._each_block(x, padding, t, images, rows, block)
        return out

    def _all_tiles(self, x, u, b, padding, out, relu, scale, t, kb, ka, max_bytes):
        """run with every tile of a group of images in each GEMM (few tiles, many channels:
        deep layers), as many images a group as their V fits in max_bytes."""
        n, c = x.shape[:2]
        per_image = (self.m + 2) ** 2 * c * t.th * t.tw
        images = max(1, min(n, int(max_bytes // max(1, per_image * u.itemsize))))
        v = scratch("winograd_all", images * per_image, u.dtype)   # the threads fill it
        for n0 in range(0, n, images):
            n1 = min(n, n0 + images)
            self._group(_pad_input(x[n0:n1], padding, t, self.m), u, b, out[n0:n1], relu,
                        scale, t, kb, ka, v[: (n1 - n0) * per_image])
        return out

    def _group(self, xp, u, b, out, relu, scale, t, kb, ka, v):
        """out (n, K, OH, OW) from the padded images xp (n, C, HP, WP), every tile in each
        GEMM: the threads split the channels to make V (into the flat buffer v), then the
        filters, each thread's GEMMs spanning every tile for its filters. Each transform
        and each product is made a BLOCK_BYTES piece at a time."""
        m, a = self.m, self.m + 2
        n, c = xp.shape[:2]
        k = u.shape[1]
        oh = out.shape[2]
        tiles = n * t.th * t.tw
        v = v.reshape(a * a, c, tiles)
        step = max(1, BLOCK_BYTES // (a * a * tiles * u.itemsize))   # channels a piece

        def transform(part):
            for c0 in range(part.start, part.stop, step):
                c1 = min(part.stop, c0 + step)
                v[:, c0:c1] = _transform_input(xp[:, c0:c1], 0, t.th, m, kb)

        def filters(part):
            for k0 in range(part.start, part.stop, step):
                k1 = min(part.stop, k0 + step)
                _output_tiles(u[:, k0:k1], v, ka, (n, t.th, t.tw),
                              None if scale is None else scale[k0:k1],
                              None if b is None else b[k0:k1], relu, out[:, k0:k1], 0, oh)
        per_thread(transform, c)
        per_thread(filters, k)

    def forward(self, x, w, b, stride, padding, dilation, groups, out, relu=False,
                workspace=None):
        """Training forward: run, keeping x (so x must not change before the backward)."""
        self.run(x, w, b, padding, out, relu)
        return Cache(x, w, padding, self.m, out.shape[2:], out if relu else None)

    def infer(self, x, w, b, stride, padding, dilation, groups, out, relu=False, scale=None,
              max_bytes=None):
        return self.run(x, w, b, padding, out, relu, scale, max_bytes, keep_filters=True)

    def backward(self, dout, cache, input_grad=True, overwrite=False):
        """(dx, dw, db): the exact adjoint of run, block by block (see the module notes).
        Each thread takes its own images and sums its own dU, one (a*a, K, C) array a
        thread; one image runs on one thread (its tiles' overlaps would add across
        threads)."""
        x, w, padding, m, (oh, ow), gate = cache
        a = m + 2
        n, c, h, wd = x.shape
        k = w.shape[0]
        t = tiling(x.shape, padding, m)
        dtype = np.result_type(x, w, dout)
        g = self.g.astype(dtype)
        kb, ka = self.krons(dtype)
        u = filter_transform(w.astype(dtype, copy=False), m)               # (a*a, K, C)
        if gate is not None:   # a fused RELU: the gradient passes where its output is not 0
            dout = dout * (gate != 0)
        images, rows = self._rows_per_block(n, c, k, t, np.dtype(dtype).itemsize, BLOCK_BYTES)
        dx = np.empty(x.shape, dtype=dtype) if input_grad else None
        sums = {}
        grads = {}

        def block(xp, n0, n1, r0, r1, part):
            nb, nr = n1 - n0, r1 - r0
            v = _transform_input(xp, 0, nr, m, kb)                           # (a*a, C, T)
            dy = _gather_tiles(dout[n0:n1], r0 * m, nr, t.tw, m)             # (m*m, K, T)
            dm = _both_sides(ka.T, dy, "winograd_dm")                        # (a*a, K, T)
            du = sums.get(part)            # this thread's own sum (one thread a part)
            if du is None:
                du = sums[part] = np.zeros((a * a, k, c), dtype)
            du += np.matmul(dm, v.transpose(0, 2, 1))
            if not input_grad:
                return
            dv = np.matmul(u.transpose(0, 2, 1), dm,
                           out=scratch("product", v.size, dtype).reshape(v.shape))
            dd = _both_sides(kb.T, dv, "cols").reshape(a, a, c, nb, nr, t.tw)
            dxp = grads[n0]                                                  # (nb, C, HP, WP)
            lo = r0 * m
            for i in range(a):   # add every tile back where it came from (overlaps add)
                for j in range(a):
                    dxp[:, :, lo + i: lo + i + nr * m: m, j: j + t.tw * m: m] += (
                        dd[i, j].transpose(1, 0, 2, 3))

        def images_block(xp, n0, n1, r0, r1, part):
            if input_grad and r0 == 0:
                grads[n0] = np.zeros((n1 - n0, c, t.hp, t.wp), dtype)
            block(xp, n0, n1, r0, r1, part)
            if input_grad and r1 == t.th:
                ph, pw = padding
                dx[n0:n1] = grads.pop(n0)[:, :, ph: ph + h, pw: pw + wd]
        self._each_block(x, padding, t, images, rows, images_block, split_rows=False)
        parts = [sums[key] for key in sorted(sums)] or [np.zeros((a * a, k, c), dtype)]
        du = parts[0]
        for more in parts[1:]:     # the threads' sums in order, into the first one
            du += more
        du = du.reshape(a, a, k, c)
        dw = _two_sided(g.T, du).transpose(2, 3, 0, 1)                       # (K, C, 3, 3)
        db = dout.sum(axis=(0, 2, 3))
        return dx, np.ascontiguousarray(dw, dtype=dtype), db


F2X2 = Winograd(2)
F4X4 = Winograd(4)
