"""Which algorithm runs a convolution: the named algorithms, the auto choice's rules and
thresholds (one table, a reason each), and a way to force one.

    conv2d_forward(x, w, algorithm="shifted")      # this call
    Conv2d(64, 64, 3, padding=1, algorithm="im2col")
    with use_algorithm("im2col"):                  # every "auto" conv in the block
        model.infer(x)

An algorithm named explicitly must be able to run the convolution (a ValueError says
why not); one forced by ``use_algorithm`` runs where it can and leaves the rest to the
auto choice. ``algorithm="im2col"`` always runs the notes' computation.
"""

from __future__ import annotations

import contextlib
import contextvars
import enum
from typing import NamedTuple

from convnet.functional.conv import blocks, fft, gemm, one_image, shifted, winograd


class Algorithm(str, enum.Enum):
    """The convolution algorithms: each a file of this package, checked against
    reference.py."""
    AUTO = "auto"                  # the rules below choose
    IM2COL = "im2col"              # gemm.py: the notes' im2col + one GEMM, any convolution
    SHIFTED = "shifted"            # shifted.py: im2col along H only, stride 1
    BLOCKS = "blocks"              # blocks.py: im2col + GEMM a few images at a time
    ONE_IMAGE = "one_image"        # one_image.py: whole padded rows, a batch of one
    WINOGRAD_2X2 = "winograd2x2"   # winograd.py: F(2x2, 3x3), 2.25x fewer multiplications
    WINOGRAD_4X4 = "winograd4x4"   # winograd.py: F(4x4, 3x3), 4x fewer multiplications
    FFT = "fft"                    # fft.py: products of spectra, the DFTs as small GEMMs


WINOGRAD = (Algorithm.WINOGRAD_2X2, Algorithm.WINOGRAD_4X4)
MODULES = {Algorithm.IM2COL: gemm, Algorithm.SHIFTED: shifted, Algorithm.BLOCKS: blocks,
           Algorithm.ONE_IMAGE: one_image, Algorithm.WINOGRAD_2X2: winograd.F2X2,
           Algorithm.WINOGRAD_4X4: winograd.F4X4, Algorithm.FFT: fft}


class Threshold(NamedTuple):
    value: float
    reason: str


# Every threshold of the auto choice, with why it is where it is.
THRESHOLDS = {
    "shifted_min_channels": Threshold(
        16, "with fewer input channels Y's C*FH rows make a GEMM too thin to run near peak"),
    "shifted_max_waste": Threshold(
        0.125, "a padded row may be longer than the output row by this times (FW-1)/2 of it: "
               "the GEMM's extra columns cost less than im2col's extra copies"),
    "shifted_max_waste_training": Threshold(
        1.0, "in training, where im2col's backward adds FH*FW copies back where the shifted "
             "path adds FH: 3x3 and 5x5 layers on 2x2 to 8x8 planes ran 1.3-2.3x faster on "
             "the shifted path even with up to half of each padded row extra"),
    "shifted_training_min_width": Threshold(
        7, "the looser bound in training starts at output rows this wide: narrower ones "
           "(the default digits net's 4x4 layers) were 1.4-1.5x faster too, but moving "
           "them changed the rounding of the default `convnet train` run (then 98.33% for "
           "seed 0, 97.77% after; 12 seeds: a mean of 97.91% against 97.86%)"),
    "one_thread_max_flops": Threshold(
        1 << 24, "at inference, one image's convolution of fewer FLOPs (2 x its multiply-"
                 "adds) runs on one thread (blocks): handing half of it to another thread "
                 "cost more than it saved, 0.35-0.91x the split algorithms' time on layers "
                 "of 0.5-14.5 MFLOP (1x1, strided, 3x3 and 5x5), and 0.85-1.06x at 24-58"),
    "one_image_max_block_bytes": Threshold(
        shifted.BLOCK_BYTES, "one_image makes each thread's rows one block (it cannot cut "
                             "them); over the shifted path's block size the block no longer "
                             "stays in the core's cache, and the shifted path, which cuts "
                             "its blocks to that size, runs instead"),
    "blocks_min_positions": Threshold(
        100, "per-image GEMMs over fewer output positions run well below BLAS's peak"),
    "winograd_min_positions": Threshold(
        700, "at inference, fewer output positions (N*OH*OW; 28x28 has 784) make too few "
             "tiles for F(4x4)'s 4x fewer multiplications to pay for its transforms' passes "
             "and for keeping its transformed filters (4x the filters' memory)"),
    "winograd_min_channels": Threshold(
        64, "with fewer input channels the per-tile GEMMs are too thin to gain from Winograd"),
    "fft_max_side": Threshold(
        18, "in training, fft's DFTs cost each point of the grid (the padded input) a GEMM "
            "with an inner dimension of a side of the grid: on grids up to 18x18 fft ran "
            "0.44-1.12x the shifted path's time (forward + backward, batch 128, C * FH * FW "
            "of 400+; about even, 0.94-1.12x, only on 64 channels of 3x3 at 16x16), on "
            "34x34 1.28-1.44x"),
    "fft_min_depth": Threshold(
        400, "in training, fewer multiplications per output (C * FH * FW under 400: fewer "
             "than 16 channels of 5x5, 45 of 3x3) save too little for fft's transforms: 32 "
             "channels of 3x3 ran 0.83-1.12x the shifted path's time"),
    "fft_min_batch": Threshold(
        64, "each frequency's GEMM has a row per image: at batch 8 and 32 fft ran 1.5-1.8x "
            "the shifted path's time"),
    "fft_min_width": Threshold(
        7, "as shifted_training_min_width: output rows under 7 (the default digits net's "
           "4x4 layers) stay on im2col, which the default `convnet train` run was tuned on"),
    "fft_max_filter_bytes": Threshold(
        64 << 20, "in training, fft's filter spectrum, 4 * TH * (TW//2 + 1) * C * K values, is "
                  "kept from the forward pass to the backward: VGG-16's 64-channel layer at "
                  "224x224 would take 1.7 GB; a layer over this runs another algorithm even "
                  "when fft is forced (at inference max_bytes bounds it)"),
    "inference_max_bytes": Threshold(
        64 << 20, "inference builds an im2col matrix in pieces of at most this many bytes, "
                  "so its memory stays bounded"),
}


def _value(name):
    return THRESHOLDS[name].value


def shifted_suits(x_shape, w_shape, stride, padding, dilation, groups, training=False):
    """Whether the auto choice takes the shifted path: stride 1, no groups, a filter wider
    than 1, enough input channels, and output rows wide enough that the extra columns of
    the padded rows cost little (a looser bound in training)."""
    k, cg, fh, fw = w_shape
    ow = x_shape[3] + 2 * padding[1] - dilation[1] * (fw - 1)
    pitch = shifted.padded_shape(x_shape, w_shape, padding, dilation)[1]
    loose = training and ow >= _value("shifted_training_min_width")
    waste = _value("shifted_max_waste_training" if loose else "shifted_max_waste")
    return (stride == (1, 1) and groups == 1 and fw > 1
            and cg >= _value("shifted_min_channels") and ow > 0
            and pitch - ow <= waste * ow * (fw - 1) / 2)


def blocks_suit(x_shape, out_size, groups):
    """Whether the auto choice takes blocks (off the shifted path): one group, a batch of
    two or more, output planes of at least blocks_min_positions positions."""
    return (groups == 1 and x_shape[0] >= 2
            and out_size[0] * out_size[1] >= _value("blocks_min_positions"))


class Problem(NamedTuple):
    """One convolution, as the choice sees it."""
    x_shape: tuple
    w_shape: tuple
    stride: tuple
    padding: tuple
    dilation: tuple
    groups: int
    out_size: tuple
    itemsize: int         # bytes per value (the larger of x's and w's)
    max_bytes: int | None  # inference's bound on temporaries; None in training
    floating: bool = True  # x and w are floating point (Winograd's transforms need it)


def winograd_suits(p):
    """Whether the auto choice takes F(4x4, 3x3): at inference (its backward pass is slower
    than the shifted path's), a 3x3 stride-1 conv with enough channels and positions. Its
    float32 rounding error is about ten times im2col's (docs/performance.md)."""
    return (p.max_bytes is not None and p.floating and winograd.F4X4.applies(
                p.x_shape, p.w_shape, p.stride, p.padding, p.dilation, p.groups) is None
            and p.x_shape[1] >= _value("winograd_min_channels")
            and p.x_shape[0] * p.out_size[0] * p.out_size[1] >= _value("winograd_min_positions"))


def fft_suits(p):
    """Whether the auto choice takes "fft": in training (at inference it was not measured
    against Winograd, the shifted path and blocks), where it can run (its filter spectrum within
    fft_max_filter_bytes), a batch of fft_min_batch or more, a small grid, enough
    multiplications per output, rows wide enough."""
    n, c = p.x_shape[:2]
    fh, fw = p.w_shape[2:]
    return (p.max_bytes is None and why_not(Algorithm.FFT, p) is None
            and n >= _value("fft_min_batch")
            and max(fft.grid(p.x_shape, p.padding)) <= _value("fft_max_side")
            and c * fh * fw >= _value("fft_min_depth")
            and p.out_size[1] >= _value("fft_min_width"))


def one_thread_suits(p):
    """Whether the auto choice runs blocks on one thread: at inference, one image whose
    convolution (one group) takes fewer than one_thread_max_flops, and whose im2col
    matrix fits inference's bound."""
    n, c, _, _ = p.x_shape
    k, _, fh, fw = p.w_shape
    positions = p.out_size[0] * p.out_size[1]
    return (p.max_bytes is not None and n == 1 and p.groups == 1
            and 2 * k * c * fh * fw * positions < _value("one_thread_max_flops")
            and why_not(Algorithm.BLOCKS, p) is None)


def auto(p):
    """The auto choice for a Problem: (Algorithm, the rule's reason)."""
    if one_thread_suits(p):
        return Algorithm.BLOCKS, "inference, one image, little work: one thread, no hand-off"
    if winograd_suits(p):
        return Algorithm.WINOGRAD_4X4, "inference, 3x3, many tiles: 4x fewer multiplications"
    if fft_suits(p):
        return Algorithm.FFT, "training, a batch on small planes: fewer multiplications"
    if shifted_suits(p.x_shape, p.w_shape, p.stride, p.padding, p.dilation, p.groups,
                     training=p.max_bytes is None):
        limit = _value("one_image_max_block_bytes")
        limit = limit if p.max_bytes is None else min(p.max_bytes, limit)
        if p.x_shape[0] == 1 and one_image.block_bytes(
                p.x_shape, p.w_shape, p.padding, p.dilation, p.itemsize) <= limit:
            return Algorithm.ONE_IMAGE, "one image whose rows fit one block a thread"
        return Algorithm.SHIFTED, "stride 1, enough channels, wide rows: FH copies, not FH*FW"
    if blocks_suit(p.x_shape, p.out_size, p.groups) and why_not(Algorithm.BLOCKS, p) is None:
        return Algorithm.BLOCKS, "a batch with wide output planes: blocks stay in cache"
    return Algorithm.IM2COL, "the notes' algorithm: every other convolution"


_forced = contextvars.ContextVar("convnet_conv_algorithm", default=None)


@contextlib.contextmanager
def use_algorithm(algorithm):
    """Run every convolution whose algorithm is "auto" with ``algorithm`` inside the
    block, where it can run (elsewhere the auto choice stands).

    >>> with use_algorithm("im2col"):                               # doctest: +SKIP
    ...     out = model.infer(x)
    """
    token = _forced.set(check(algorithm, "use_algorithm"))
    try:
        yield
    finally:
        _forced.reset(token)


def forced_algorithm():
    """The Algorithm an enclosing use_algorithm forces, or None."""
    return _forced.get()


def check(algorithm, where="conv2d"):
    """An Algorithm from its name (or itself); a ValueError listing the names otherwise."""
    try:
        return Algorithm(algorithm)
    except ValueError:
        names = ", ".join(a.value for a in Algorithm)
        raise ValueError(f"{where}: algorithm must be one of {names}, got "
                         f"{algorithm!r:.40}") from None


def inference_bytes(algorithm, p):
    """The largest temporary ``algorithm`` makes for the Problem at inference where it
    cannot cut its work into pieces of max_bytes: one_image's blocks (whole rows of one
    image), blocks' im2col matrix of one image (a block holds one at least), fft's
    filter spectrum with one image's spectra; 0 for the algorithms that can."""
    if algorithm is Algorithm.ONE_IMAGE:
        return one_image.block_bytes(p.x_shape, p.w_shape, p.padding, p.dilation,
                                     p.itemsize)
    if algorithm is Algorithm.BLOCKS:
        c, (fh, fw) = p.x_shape[1], p.w_shape[2:]
        return c * fh * fw * p.out_size[0] * p.out_size[1] * p.itemsize
    if algorithm is Algorithm.FFT:
        return fft.inference_bytes(p.x_shape, p.w_shape, p.padding, p.itemsize)
    return 0


def why_not(algorithm, p):
    """None when ``algorithm`` can run the Problem, else the reason it cannot: it does
    not apply, in training fft's filter spectrum would be too large, or at inference its
    temporaries would pass max_bytes."""
    reason = MODULES[algorithm].applies(p.x_shape, p.w_shape, p.stride, p.padding,
                                        p.dilation, p.groups)
    if reason is None and not p.floating and algorithm in (*WINOGRAD, Algorithm.FFT):
        reason = ("it needs floating-point input and filters (its transforms have "
                  "fractional coefficients)")
    if reason is None and algorithm is Algorithm.FFT and p.max_bytes is None:
        need = fft.filter_bytes(p.x_shape, p.w_shape, p.padding, p.itemsize)
        limit = _value("fft_max_filter_bytes")
        if need > limit:
            th, tw = fft.grid(p.x_shape, p.padding)
            reason = (f"in training its filters' spectrum would take {need:,} bytes, over "
                      f"fft_max_filter_bytes={limit:,} (a {th}x{tw} grid, {p.w_shape[0]} "
                      f"filters of {p.w_shape[1]} channels)")
    if reason is None and p.max_bytes is not None:
        need = inference_bytes(algorithm, p)
        if need > p.max_bytes:
            reason = (f"at inference its temporaries would take {need:,} bytes, over "
                      f"max_bytes={p.max_bytes:,}")
    return reason


def layer_why_not(algorithm, w_shape, stride, padding, dilation, groups):
    """None when ``algorithm`` can run a layer of these filters and hyperparameters on
    some input (a batch of one), else the reason it never can (stride, groups, filter
    size, dilation): what a layer that names it checks when it is built."""
    algorithm = check(algorithm)
    if algorithm is Algorithm.AUTO:
        return None
    x_shape = (1, w_shape[1] * groups, *w_shape[2:])
    return MODULES[algorithm].applies(x_shape, tuple(w_shape), stride, padding, dilation,
                                      groups)


def choose(algorithm, p, where="conv2d"):
    """(Algorithm, reason) for a Problem: the one asked for, the one forced by
    use_algorithm where it applies, or the auto choice. ``where`` begins the error for
    an algorithm asked for that cannot run the Problem."""
    algorithm = check(algorithm, where)
    if algorithm is not Algorithm.AUTO:
        reason = why_not(algorithm, p)
        if reason is not None:
            raise ValueError(f"{where}: algorithm {algorithm.value!r} cannot run this "
                             f"convolution (input {p.x_shape}, filters {p.w_shape}, stride "
                             f"{p.stride}, dilation {p.dilation}, groups {p.groups}): {reason}")
        return algorithm, "asked for"
    forced = _forced.get()
    if forced is not None and forced is not Algorithm.AUTO and why_not(forced, p) is None:
        return forced, "forced by use_algorithm"
    return auto(p)
