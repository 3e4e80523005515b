"""Preprocessing and augmentation on whole NCHW batches, with explicit random generators.

The notes' preprocessing (CS231n, "Data Preprocessing"): scale the pixels, then subtract
the mean and divide by the standard deviation, with the statistics computed on the
training set only and applied unchanged to validation and test data. Augmentation
(random crops of a zero-padded image, horizontal flips) is batch-vectorized: one
np.random.Generator draws the offsets or flips for all samples at once, no per-sample loop.
``resize`` changes the image size of a whole data set once, before training (bilinear,
through Pillow, the ``images`` extra).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from convnet.functional.conv import pad, pair


def _check_nchw(x, where):
    if not isinstance(x, np.ndarray) or x.ndim != 4:
        got = f"shape {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise ValueError(f"{where}: expected a 4-D (N, C, H, W) array, got {got}")


def _check_rng(rng, where):
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"{where}: rng must be an np.random.Generator "
                         f"(e.g. np.random.default_rng(0)), got {type(rng).__name__}")


def to_float(x, scale=255, dtype=np.float32):
    """Integer pixels -> floats in [0, 1]: x / scale (255 for uint8 images, 16 for digits).

    >>> to_float(np.array([0, 8, 16], dtype=np.uint8), scale=16)
    array([0. , 0.5, 1. ], dtype=float32)
    """
    if not isinstance(x, np.ndarray) or not np.issubdtype(x.dtype, np.integer):
        got = f"dtype {x.dtype}" if isinstance(x, np.ndarray) else type(x).__name__
        raise ValueError(f"to_float: x must be an integer array (uint8 pixels), got {got}")
    if not (isinstance(scale, (int, float, np.number)) and scale > 0):
        raise ValueError(f"to_float: scale must be a positive number, got {scale!r}")
    if np.dtype(dtype) not in (np.float32, np.float64):
        raise ValueError(f"to_float: dtype must be float32 or float64, got {np.dtype(dtype)}")
    return (x / np.asarray(scale, dtype=dtype)).astype(dtype, copy=False)


class Normalize:
    """Per-channel standardization: (x - mean[c]) / std[c], the statistics from training data.

    Args:
        mean, std: per-channel sequences of length C, or None to ``fit`` them.

    ``fit(x)`` computes mean and std over (N, H, W) of a float training set x (N, C, H, W)
    in float64 and returns them; a channel with std 0 (constant) gets std 1. Calling the
    transform returns an array of x's float dtype.

    >>> norm = Normalize()
    >>> mean, std = norm.fit(to_float(x_train))                   # doctest: +SKIP
    >>> x_test = norm(to_float(x_test))                           # doctest: +SKIP
    """

    def __init__(self, mean=None, std=None):
        if (mean is None) != (std is None):
            raise ValueError("Normalize: give both mean and std, or neither (then call fit)")
        self.mean = self.std = None
        if mean is not None:
            self.mean = np.asarray(mean, dtype=np.float64).reshape(-1)   # (C,)
            self.std = np.asarray(std, dtype=np.float64).reshape(-1)     # (C,)
            if self.mean.shape != self.std.shape or not (
                    np.all(self.std > 0) and np.isfinite(self.mean).all()
                    and np.isfinite(self.std).all()):
                raise ValueError(f"Normalize: mean and std must be per-channel sequences of "
                                 f"one length of finite numbers with std > 0, got mean "
                                 f"{mean!r:.80}, std {std!r:.80}")

    FIT_VALUES = 1 << 22   # values fit takes in float64 at a time (32 MB)

    def fit(self, x):
        """Set and return (mean, std), each (C,) float64, from a float NCHW batch x: two
        passes (the mean, then the mean squared deviation from it), in float64, over
        blocks of images of at most FIT_VALUES values, so that no float64 copy of the
        whole set is made."""
        self._check(x, None)
        n, c = x.shape[:2]
        count = max(x.size // max(c, 1), 1)                 # values per channel
        step = max(1, self.FIT_VALUES // max(x[0].size, 1))
        total = np.zeros(c)
        for i in range(0, n, step):
            total += x[i:i + step].astype(np.float64, copy=False).sum(axis=(0, 2, 3))
        self.mean = total / count                                          # (C,)
        squares = np.zeros(c)
        for i in range(0, n, step):
            deviation = x[i:i + step].astype(np.float64) - self.mean.reshape(1, -1, 1, 1)
            np.multiply(deviation, deviation, out=deviation)
            squares += deviation.sum(axis=(0, 2, 3))
        std = np.sqrt(squares / count)
        self.std = np.where(std > 0, std, 1.0)
        return self.mean, self.std

    def __call__(self, x):
        if self.mean is None:
            raise ValueError("Normalize: no statistics yet: call fit(x_train) first or pass "
                             "mean and std")
        self._check(x, self.mean.size)
        shape = (1, -1, 1, 1)
        return ((x - self.mean.astype(x.dtype).reshape(shape))
                / self.std.astype(x.dtype).reshape(shape))

    def zero(self, dtype=np.float64):
        """The normalized value of a 0 pixel, per channel (C,): what a shift's zero padding
        must hold once the data is normalized (torchvision pads before Normalize)."""
        if self.mean is None:
            raise ValueError("Normalize: no statistics yet: call fit(x_train) first")
        return (-self.mean / self.std).astype(dtype)

    def _check(self, x, channels):
        _check_nchw(x, "Normalize")
        if not np.issubdtype(x.dtype, np.floating):
            raise ValueError(f"Normalize: expected a float array, got dtype {x.dtype}; "
                             "convert first with to_float(x, scale)")
        if channels is not None and x.shape[1] != channels:
            raise ValueError(f"Normalize: statistics are for {channels} channels, got "
                             f"{x.shape[1]} in shape {x.shape}")

    def get_config(self):
        """JSON-ready statistics, to store next to a model's weights."""
        return {"type": "Normalize",
                "mean": None if self.mean is None else self.mean.tolist(),
                "std": None if self.std is None else self.std.tolist()}

    def __repr__(self):
        if self.mean is None:
            return "Normalize(unfitted)"
        return (f"Normalize(mean={np.round(self.mean, 4).tolist()}, "
                f"std={np.round(self.std, 4).tolist()})")


def random_crop(x, padding, rng, size=None, fill=0):
    """Zero-pad by P on each side, then cut one random (OH, OW) window out of each sample.

    Args:
        x: (N, C, H, W) array of any dtype.
        padding: P, an int or a (PH, PW) pair (CIFAR's usual choice: 4).
        rng: np.random.Generator; draws N offsets per axis, uniform in [0, H + 2P - OH].
        size: (OH, OW) of the crops, default (H, W), the input size.
        fill: the padding's value, a number or one per channel (C,), as torchvision's
            RandomCrop(fill=); on normalized data, ``Normalize.zero()`` pads with what a
            0 pixel became.

    Returns (N, C, OH, OW), a new array. All samples at once: a strided view of every
    window, indexed with the per-sample offsets.

    >>> out = random_crop(x, 4, np.random.default_rng(0))         # doctest: +SKIP
    """
    _check_nchw(x, "random_crop")
    _check_rng(rng, "random_crop")
    ph, pw = pair(padding, "padding", "random_crop", allow_zero=True)
    n, _, h, w = x.shape
    oh, ow = (h, w) if size is None else pair(size, "size", "random_crop")
    if oh > h + 2 * ph or ow > w + 2 * pw:
        raise ValueError(f"random_crop: size ({oh}, {ow}) is larger than the padded input "
                         f"({h + 2 * ph}, {w + 2 * pw})")
    fill = np.asarray(fill, dtype=x.dtype)
    if fill.ndim > 1 or fill.size not in (1, x.shape[1]):
        raise ValueError(f"random_crop: fill must be a number or one per channel "
                         f"({x.shape[1]}), got shape {fill.shape}")
    xp = pad(x, (ph, pw), value=fill)                                # (N, C, H+2P, W+2P)
    win = sliding_window_view(xp, (oh, ow), axis=(2, 3))             # (N, C, DY, DX, OH, OW)
    dy = rng.integers(0, h + 2 * ph - oh + 1, size=n)                # (N,)
    dx = rng.integers(0, w + 2 * pw - ow + 1, size=n)                # (N,)
    return win[np.arange(n), :, dy, dx]                              # (N, C, OH, OW)


def random_flip(x, rng, p=0.5):
    """Mirror each sample left-right with probability p (flip along W).

    x: (N, C, H, W). rng: np.random.Generator, draws N uniforms. Returns a new array.

    >>> out = random_flip(x, np.random.default_rng(0))            # doctest: +SKIP
    """
    _check_nchw(x, "random_flip")
    _check_rng(rng, "random_flip")
    if not 0 <= p <= 1:
        raise ValueError(f"random_flip: p must be a probability in [0, 1], got {p!r}")
    flip = rng.random(x.shape[0]) < p                                # (N,)
    return np.where(flip[:, None, None, None], x[..., ::-1], x)


RESIZE_DTYPES = (np.uint8, np.float32, np.float64)


def _pillow_image():
    """Import Pillow lazily: only resize needs it here."""
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("resize needs Pillow, the 'images' extra: "
                          "pip install 'convnet[images]'") from None
    return Image


def resize(x, size):
    """Resize every image of an NCHW batch to size = (OH, OW), bilinear, through Pillow.

    Meant for a whole data set once (e.g. the 8x8 digits to 28x28 for a net pretrained on
    Fashion-MNIST), not per batch: it loops over the N*C planes in Python.

    Args:
        x: (N, C, H, W) array, uint8 or float32/float64. float64 is resampled in float32
            (Pillow's mode "F") and returned as float64.
        size: OH = OW as an int, or an (OH, OW) pair of positive ints.

    Returns a new (N, C, OH, OW) array of x's dtype. Each plane goes through
    ``Image.fromarray(plane).resize((OW, OH), Resampling.BILINEAR)``: pixel centres at
    half-pixel offsets (PyTorch's ``interpolate(..., "bilinear", align_corners=False)``),
    and when shrinking a triangle filter widened by the scale, i.e. antialiased (PyTorch's
    ``antialias=True``). Every output is a weighted mean of inputs with weights >= 0, so
    the value range is kept: digits with pixels 0..16 stay within 0..16 (uint8 rounds).

    >>> x = np.array([0, 4], dtype=np.uint8).reshape(1, 1, 1, 2)
    >>> resize(x, (1, 4))[0, 0]
    array([[0, 1, 3, 4]], dtype=uint8)
    """
    _check_nchw(x, "resize")
    oh, ow = pair(size, "size", "resize")
    if x.dtype not in RESIZE_DTYPES:
        raise ValueError(f"resize: x must be uint8, float32 or float64, got dtype {x.dtype}")
    n, c, h, w = x.shape
    if (oh, ow) == (h, w):
        return x.copy()
    Image = _pillow_image()
    work = np.float32 if x.dtype == np.float64 else x.dtype
    planes = np.ascontiguousarray(x.reshape(n * c, h, w), dtype=work)   # (N*C, H, W)
    out = np.empty((n * c, oh, ow), dtype=work)                        # (N*C, OH, OW)
    bilinear = Image.Resampling.BILINEAR
    for i, plane in enumerate(planes):
        out[i] = np.asarray(Image.fromarray(plane).resize((ow, oh), bilinear))
    return out.reshape(n, c, oh, ow).astype(x.dtype, copy=False)


LUMA_BLOCK = 1 << 20    # values of RGB input converted to grayscale at a time


def _luma(x, ftype):
    """The luma of an RGB block (see to_channels), (n, 1, H, W)."""
    if x.dtype == np.uint8:      # Pillow's own integer arithmetic, bit for bit
        luma = sum(weight * x[:, c:c + 1].astype(np.int32)
                   for c, weight in enumerate((19595, 38470, 7471)))
        return ((luma + 0x8000) >> 16).astype(np.uint8)
    luma = sum(weight * x[:, c:c + 1].astype(ftype)      # a channel at a time
               for c, weight in enumerate((299, 587, 114))) / np.dtype(ftype).type(1000)
    return np.rint(luma).astype(x.dtype) if np.issubdtype(x.dtype, np.integer) else luma


def to_channels(x, channels):
    """An NCHW batch with ``channels`` (1 or 3) channels, converted as Pillow converts modes.

    Grayscale to RGB repeats the one channel; RGB to grayscale is the ITU-R 601-2 luma
    L = (299 R + 587 G + 114 B) / 1000, Pillow's "L" conversion (for uint8 in Pillow's
    16-bit fixed point, so that the bytes equal Pillow's). x of the right depth is
    returned as it is.

    >>> to_channels(np.full((1, 1, 2, 2), 7, np.uint8), 3).shape
    (1, 3, 2, 2)
    """
    _check_nchw(x, "to_channels")
    have = x.shape[1]
    if have == channels:
        return x
    if channels == 3 and have == 1:
        return np.repeat(x, 3, axis=1)
    if channels == 1 and have == 3:
        ftype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64
        out = np.empty((len(x), 1, *x.shape[2:]), x.dtype)
        step = max(1, LUMA_BLOCK // max(1, x[:1].size))     # images a block
        for s in range(0, len(x), step):     # blocks: the temporaries stay small
            out[s: s + step] = _luma(x[s: s + step], ftype)
        return out
    raise ValueError(f"to_channels: can convert between 1 and 3 channels only, got "
                     f"{have} -> {channels}")
