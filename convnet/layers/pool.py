"""POOL layers: MaxPool2d, AvgPool2d, LPPool2d, AdaptiveAvgPool2d and AdaptiveMaxPool2d.

A pooling layer resizes every depth slice independently: it has no parameters and
``macs`` is 0, since taking a max, a sum or a mean involves no multiply-adds (the same
counting rule as torchinfo). Depth is unchanged; the spatial size follows the notes'
formula W2 = (W1 - F + 2P)/S + 1, which must be an integer unless ``fit="floor"``
(PyTorch's flooring) or ``ceil_mode=True`` (PyTorch's ceil mode) is asked for.

Arguments and semantics follow PyTorch's torch.nn layers of the same names; the math
lives in convnet/functional/pool.py.
"""

from __future__ import annotations

from convnet.functional import pool as F
from convnet.functional.conv import FITS, check_input, conv_output_size
from convnet.layers.base import (
    Layer,
    check_dout,
    check_volume,
    flag,
    hw_text,
    positive_int,
    real,
    window_pair,
)


class _Pool2d(Layer):
    """Shared hyperparameters of the sliding-window pools: F, S, P, dilation, ceil, fit."""

    takes_padding = True     # up to F/2, as PyTorch's pools
    takes_dilation = False   # MaxPool2d's alone, as in PyTorch

    def __init__(self, kernel_size, stride, padding, dilation, ceil_mode, fit):
        super().__init__()
        where = type(self).__name__
        self.kernel_size = window_pair(kernel_size, "kernel_size", where)
        self.stride = (self.kernel_size if stride is None
                       else window_pair(stride, "stride", where))
        self.padding = window_pair(padding, "padding", where, allow_zero=True)
        self.dilation = window_pair(dilation, "dilation", where)
        if any(2 * p > k for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(
                f"{where}: padding must be at most half the kernel size (P <= F/2, as in "
                f"PyTorch), got padding={padding!r} for kernel_size={kernel_size!r}")
        self.ceil_mode = flag(ceil_mode, "ceil_mode", where)
        if fit not in FITS:
            raise ValueError(f"{where}: fit must be one of {FITS}, got {fit!r:.80}")
        self.fit = fit

    def __setattr__(self, name, value):
        """kernel_size, stride, padding and dilation assigned after the layer is made (as
        PyTorch code does: pool.kernel_size = 3) are checked as the constructor checks
        them, and held as (H, W) pairs."""
        if name in ("kernel_size", "stride", "padding", "dilation") and "fit" in self.__dict__:
            where = type(self).__name__
            value = window_pair(value, name, where, allow_zero=name == "padding")
            kernel = value if name == "kernel_size" else self.kernel_size
            padding = value if name == "padding" else self.padding
            if (name == "padding" and value != (0, 0) and not self.takes_padding) or (
                    name == "dilation" and value != (1, 1) and not self.takes_dilation):
                raise ValueError(f"{where} takes no {name}, as in PyTorch")
            if any(2 * p > k for p, k in zip(padding, kernel)):
                raise ValueError(f"{where}: padding must be at most half the kernel size "
                                 f"(P <= F/2, as in PyTorch), got padding={padding} for "
                                 f"kernel_size={kernel}")
        super().__setattr__(name, value)

    def output_shape(self, input_shape):
        c, h, w = check_volume(input_shape, None, self.where)
        oh, ow = (conv_output_size(size, self.kernel_size[a], self.stride[a], self.padding[a],
                                   self.dilation[a], fit=self.fit, ceil=self.ceil_mode,
                                   where=self.where, axis="HW"[a], can_ceil=True,
                                   most_padding=self.kernel_size[a] // 2 * self.takes_padding)
                  for a, size in enumerate((h, w)))
        return (c, oh, ow)

    def _out_size(self, x):
        """Check x and return (OH, OW); a hint when the sizes fail on an NHWC-looking x."""
        check_input(x, None, self.where)
        try:
            return self.output_shape(x.shape[1:])[1:]
        except ValueError as err:
            # an image's H and W, then 1 or 3 channels (not a 1x1 map of a net's depth)
            if x.shape[3] in (1, 3) and min(x.shape[1:3]) > x.shape[3]:
                raise ValueError(f"{err}. Input shape {x.shape} looks NHWC (channels last); "
                                 "pooling expects NCHW: use x.transpose(0, 3, 1, 2)") from None
            raise

    def macs(self, input_shape):
        """0: pooling has no multiply-adds (the input shape is still checked)."""
        self.output_shape(input_shape)
        return 0

    def _config(self):
        return {"kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": list(self.padding), "ceil_mode": self.ceil_mode, "fit": self.fit}

    def _repr_args(self):
        text = f"F={hw_text(self.kernel_size)}, S={hw_text(self.stride)}"
        if self.padding != (0, 0):
            text += f", P={hw_text(self.padding)}"
        if self.dilation != (1, 1):
            text += f", dilation={hw_text(self.dilation)}"
        if self.ceil_mode:
            text += ", ceil_mode=True"
        return text


class MaxPool2d(_Pool2d):
    """Max pooling: the max of every F x F window, with switches for the backward pass.

    Args:
        kernel_size: F, an int or a (FH, FW) pair.
        stride: S, int or pair; defaults to kernel_size (non-overlapping windows).
        padding: P, int or pair, at most F/2 (PyTorch's rule); padded entries are -inf.
        dilation: spacing between window taps (PyTorch's convention, 1 = contiguous).
        return_indices: False only, by keyword (PyTorch's; the switches stay inside the
            layer for its backward pass).
        ceil_mode: PyTorch's ceil mode: round the output size up, so a last window may hang
            over the bottom/right edge (it must start inside the input or left padding).
        fit: "exact" (default) raises ValueError when (W - F + 2P)/S + 1 is not an
            integer; "floor" drops the leftover rows/columns as PyTorch does.

    Input (N, C, H, W) -> output (N, C, OH, OW), OH = (H - (dilation*(FH-1)+1) + 2P)/S + 1.
    The forward keeps the switches (the index of each window's max) so the backward
    routes every gradient to its max. Ties go to the first maximum in row-major window
    order, as PyTorch's CPU kernel does. Overlapping pooling (F=3, S=2) is supported:
    an input that is the max of two windows gets both gradients.

    >>> pool = MaxPool2d(2)                        # the notes' most common POOL, F=2, S=2
    >>> pool.output_shape((64, 224, 224))
    (64, 112, 112)
    """

    takes_dilation = True

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, *,
                 return_indices=False, ceil_mode=False, fit="exact"):
        # ceil_mode by keyword only: PyTorch's fifth argument is return_indices
        super().__init__(kernel_size, stride, padding, dilation, ceil_mode, fit)
        if return_indices is not False:
            raise ValueError(f"MaxPool2d: return_indices is not offered (the switches stay "
                             f"inside the layer for its backward pass), got "
                             f"{return_indices!r:.80}")

    def forward(self, x):
        out_size = self._out_size(x)
        out, self.cache = F.maxpool2d_forward(x, self.kernel_size, self.stride, self.padding,
                                              self.dilation, out_size)
        self._out_shape = out.shape
        return out

    def infer(self, x):
        """The max of every window without its switches (nothing goes backward)."""
        self.cache = None
        return F.maxpool2d_forward(x, self.kernel_size, self.stride, self.padding,
                                   self.dilation, self._out_size(x), switches=False)[0]

    def backward(self, dout):
        cache = self._cached()
        check_dout(dout, self._out_shape, self.where)
        return F.maxpool2d_backward(dout, cache)

    def get_config(self):
        return {"type": "MaxPool2d", **self._config(), "dilation": list(self.dilation)}

    def __repr__(self):
        return f"MaxPool2d({self._repr_args()})"


class AvgPool2d(_Pool2d):
    """Average pooling: the mean of every F x F window.

    Args:
        kernel_size: F, int or pair. stride: S, int or pair (default: kernel_size).
        padding: P, int or pair, at most F/2; padded entries are zeros.
        ceil_mode: PyTorch's ceil mode (see MaxPool2d).
        count_include_pad: divide by the whole window including padding (default, as in
            PyTorch) or only by the number of real inputs in it. A ceil-mode window that
            hangs over the padded input is divided by its size inside it.
        divisor_override: a positive int that divides every window's sum instead (None:
            the window's count), as in PyTorch.
        fit: "exact" (default) or "floor", as in MaxPool2d.

    Input (N, C, H, W) -> output (N, C, OH, OW), OH = (H - FH + 2P)/S + 1.

    >>> AvgPool2d(2).output_shape((3, 32, 32))
    (3, 16, 16)
    """

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True, divisor_override=None, fit="exact"):
        super().__init__(kernel_size, stride, padding, 1, ceil_mode, fit)
        self.count_include_pad = flag(count_include_pad, "count_include_pad",
                                      type(self).__name__)
        self.divisor_override = None if divisor_override is None else positive_int(
            divisor_override, "divisor_override", type(self).__name__)

    def forward(self, x):
        out_size = self._out_size(x)
        out, self.cache = F.avgpool2d_forward(x, self.kernel_size, self.stride, self.padding,
                                              out_size, self.count_include_pad,
                                              self.divisor_override)
        self._out_shape = out.shape
        return out

    def backward(self, dout):
        cache = self._cached()
        check_dout(dout, self._out_shape, self.where)
        return F.avgpool2d_backward(dout, cache)

    def get_config(self):
        config = {"type": "AvgPool2d", **self._config(),
                  "count_include_pad": self.count_include_pad}
        if self.divisor_override is not None:
            config["divisor_override"] = self.divisor_override
        return config

    def __repr__(self):
        text = f"AvgPool2d({self._repr_args()}"
        if not self.count_include_pad:
            text += ", count_include_pad=False"
        if self.divisor_override is not None:
            text += f", divisor_override={self.divisor_override}"
        return text + ")"


class LPPool2d(_Pool2d):
    """Power-average pooling: out = (sum over the F x F window of x^p)^(1/p).

    p = 2 is the notes' L2-norm pooling. As in PyTorch there is no padding, and the
    gradient is zero for a window whose sum of x^p is zero.

    Args:
        norm_type: p, a positive finite number.
        kernel_size: F, int or pair. stride: S, int or pair (default: kernel_size).
        ceil_mode: PyTorch's ceil mode; as PyTorch computes (F*F * mean(x^p))^(1/p), a
            window hanging over the edge has its sum scaled by F*F / (its size inside).
        fit: "exact" (default) or "floor", as in MaxPool2d.

    Input (N, C, H, W) -> output (N, C, OH, OW), OH = (H - FH)/S + 1.

    >>> LPPool2d(2, 3, stride=2).output_shape((16, 13, 13))
    (16, 6, 6)
    """

    takes_padding = False

    def __init__(self, norm_type, kernel_size, stride=None, ceil_mode=False, fit="exact"):
        super().__init__(kernel_size, stride, 0, 1, ceil_mode, fit)
        where, expected = type(self).__name__, "a positive finite number p"
        self.norm_type = real(norm_type, "norm_type", where, low=0, expected=expected)
        if self.norm_type == 0:
            raise ValueError(f"{where}: norm_type must be {expected}, got {norm_type!r}")

    def forward(self, x):
        out_size = self._out_size(x)
        out, self.cache = F.lppool2d_forward(x, self.norm_type, self.kernel_size, self.stride,
                                             out_size)
        self._out_shape = out.shape
        return out

    def backward(self, dout):
        cache = self._cached()
        check_dout(dout, self._out_shape, self.where)
        return F.lppool2d_backward(dout, cache)

    def get_config(self):
        config = self._config()
        del config["padding"]
        return {"type": "LPPool2d", "norm_type": self.norm_type, **config}

    def __repr__(self):
        return f"LPPool2d(p={self.norm_type:g}, {self._repr_args()})"


class _AdaptivePool2d(Layer):
    """A pool to a fixed output size (OH, OW) over PyTorch's adaptive windows: window
    (i, j) spans rows [floor(i*H/OH), ceil((i+1)*H/OH)) and the like columns, so any
    input size works; None for OH or OW keeps the input's H or W, as in PyTorch.
    Subclasses name the functional pair."""

    _forward = _backward = None

    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size

    def __setattr__(self, name, value):
        """output_size is checked and kept as a pair when set, after construction too
        (``pool.output_size = 1``, as in PyTorch)."""
        if name == "output_size":
            value = self._output_size(value)
        super().__setattr__(name, value)

    def _output_size(self, output_size):
        where = type(self).__name__
        sizes = tuple(output_size) if isinstance(output_size, (tuple, list)) else None
        if sizes is not None and len(sizes) == 2 and None in sizes:
            # (None, 7): the input's H, 7 columns; the given sizes checked, None kept
            try:
                given = window_pair([1 if size is None else size for size in sizes],
                                    "output_size", where)
            except ValueError:
                raise ValueError(f"{where}: output_size must be a positive int or a pair "
                                 f"of positive ints or None (the input's size), got "
                                 f"{output_size!r:.80}") from None
            return tuple(None if size is None else got for size, got in zip(sizes, given))
        return window_pair(output_size, "output_size", where)

    def _size(self, h, w):
        """(OH, OW) for an input of H x W: output_size, None taking the input's size."""
        return tuple(size if size is not None else got
                     for size, got in zip(self.output_size, (h, w)))

    def output_shape(self, input_shape):
        c, h, w = check_volume(input_shape, None, self.where)
        return (c, *self._size(h, w))

    def forward(self, x):
        check_input(x, None, self.where)
        if 0 in x.shape[2:]:
            raise ValueError(f"{self.where}: expected a non-empty H x W, got shape {x.shape}")
        out, self.cache = type(self)._forward(x, self._size(*x.shape[2:]))
        self._out_shape = out.shape
        return out

    def backward(self, dout):
        cache = self._cached()
        check_dout(dout, self._out_shape, self.where)
        return type(self)._backward(dout, cache)

    def macs(self, input_shape):
        """0: pooling has no multiply-adds (the input shape is still checked)."""
        self.output_shape(input_shape)
        return 0

    def get_config(self):
        return {"type": type(self).__name__, "output_size": list(self.output_size)}

    def __repr__(self):
        oh, ow = ("H" if self.output_size[0] is None else self.output_size[0],
                  "W" if self.output_size[1] is None else self.output_size[1])
        return f"{type(self).__name__}(output={oh}x{ow})"


class AdaptiveAvgPool2d(_AdaptivePool2d):
    """Average pooling to a fixed output size, whatever the input's H x W.

    Window (i, j) averages rows [floor(i*H/OH), ceil((i+1)*H/OH)) and the like columns
    (PyTorch's rule), so any input size works. output_size=1 is global average pooling,
    the head of GoogLeNet and ResNet: one average per depth slice.

    Args:
        output_size: (OH, OW), an int or a pair of positive ints; None in the pair keeps
            that side of the input (PyTorch's (None, 7): OH = H, OW = 7).

    Input (N, C, H, W) -> output (N, C, OH, OW).

    >>> gap = AdaptiveAvgPool2d(1)
    >>> gap.output_shape((2048, 7, 7))
    (2048, 1, 1)
    """

    _forward = staticmethod(F.adaptive_avgpool2d_forward)
    _backward = staticmethod(F.adaptive_avgpool2d_backward)


class AdaptiveMaxPool2d(_AdaptivePool2d):
    """Max pooling to a fixed output size, whatever the input's H x W, over the windows
    of AdaptiveAvgPool2d; the backward pass routes each gradient to its window's max
    (PyTorch's AdaptiveMaxPool2d; return_indices is not offered).

    Args:
        output_size: (OH, OW), an int or a pair of positive ints; None in the pair keeps
            that side of the input, as AdaptiveAvgPool2d's.

    >>> AdaptiveMaxPool2d((2, 3)).output_shape((64, 9, 10))
    (64, 2, 3)
    """

    _forward = staticmethod(F.adaptive_maxpool2d_forward)
    _backward = staticmethod(F.adaptive_maxpool2d_backward)

    def __init__(self, output_size, return_indices=False):
        super().__init__(output_size)
        if return_indices is not False:
            raise ValueError(f"AdaptiveMaxPool2d: return_indices is not offered (the "
                             f"switches stay inside the layer for its backward pass), got "
                             f"{return_indices!r:.80}")
