"""CONV layers: Conv2d (shared filters) and LocallyConnected2d (no parameter sharing)."""

from __future__ import annotations

import math

import numpy as np

from convnet.functional import conv as F
from convnet.functional import pad as P
from convnet.layers.base import (
    Layer,
    check_dout,
    check_dtype,
    check_param_count,
    check_volume,
    flag,
    generator,
    hw_text,
    positive_int,
    uniform_init,
    window_pair,
)

_KEPT = object()   # Conv2d._set_geometry's padding: the pads the layer has


class Conv2d(Layer):
    """CONV layer: K filters of extent F, stride S, zero padding P, over NCHW volumes.

    Args:
        in_channels: depth D1 of the input volume.
        out_channels: number of filters K (the output depth D2).
        kernel_size: F, an int or a (FH, FW) pair.
        stride: S, int or pair. padding: P, int, pair, "valid" (P = 0) or "same" (the
            output keeps H x W, stride 1 only: P = D*(F-1)/2 on each side for an odd
            extent; for an even one, as PyTorch, D*(F-1) in all, its half rounded down
            before (top, left) and the rest after (bottom, right)).
        dilation: spacing between filter taps, PyTorch's convention: 1 is a contiguous
            filter (the notes' "dilation 0"), 2 skips one input between taps.
        groups: split input and filters into this many independent groups (AlexNet's
            two-GPU split); in_channels and out_channels must both divide by it.
        bias: add a learned offset per filter.
        padding_mode: what the padding holds, PyTorch's modes: "zeros" (default),
            "reflect" (the input mirrored, edge not repeated: P < H), "replicate" (the
            edge repeated) or "circular" (the input wrapped around: P <= H); see
            convnet.functional.pad.
        fit: "exact" (default) raises ValueError when (W - F + 2P)/S + 1 is not an
            integer; "floor" drops the leftover rows/columns as PyTorch does.
        dtype: float32 (default) or float64. rng: np.random.Generator for the init.
        algorithm: how the convolution is computed: "auto" (default: chosen per input,
            see functional.conv.select) or a name of functional.conv.Algorithm ("im2col"
            is the notes' im2col + one matrix multiply); the result is the same up to
            float rounding (Winograd F(4x4): about ten times im2col's in float32; a NaN or
            infinite input spreads to whole tiles, with "fft" to the whole image; where
            direct convolution gives exactly 0, F(4x4) and "fft" can give a tiny residue
            that a fused RELU lets through: docs/performance.md).

    Parameters: weight (K, D1 // groups, FH, FW) and bias (K,), PyTorch's layout.
    Output: (N, K, OH, OW), OH = (H - (dilation*(FH-1)+1) + 2P)/S + 1.
    ``padding`` holds (top, left), ``pads`` (top, left, bottom, right), ONNX's order.

    >>> conv = Conv2d(3, 96, 11, stride=4)        # AlexNet CONV1
    >>> conv.output_shape((3, 227, 227)), conv.num_params()
    ((96, 55, 55), 34944)
    """

    optional_arrays = ("bias",)

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 dilation=1, groups=1, bias=True, padding_mode="zeros", fit="exact",
                 dtype=np.float32, rng=None, algorithm="auto"):
        super().__init__()
        where = type(self).__name__
        self.algorithm = F.Algorithm(F.select.check(algorithm, where)).value
        self.in_channels = positive_int(in_channels, "in_channels", where)
        self.out_channels = positive_int(out_channels, "out_channels", where)
        self.kernel_size = window_pair(kernel_size, "kernel_size", where)
        self.groups = positive_int(groups, "groups", where)
        self._set_geometry(stride, padding, dilation, padding_mode, algorithm_check=False)
        if fit not in F.FITS:
            raise ValueError(f"{where}: fit must be one of {F.FITS}, got {fit!r:.80}")
        self.fit = fit
        bias = flag(bias, "bias", where)
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(f"{where}: in_channels ({in_channels}) and out_channels "
                             f"({out_channels}) must both be divisible by groups ({groups})")
        self.dtype = check_dtype(dtype, where)
        fh, fw = self.kernel_size
        shape = (self.out_channels, self.in_channels // self.groups, fh, fw)
        reason = F.select.layer_why_not(self.algorithm, shape, self.stride,
                                        self._conv_padding, self.dilation, self.groups)
        if reason is not None:
            raise ValueError(self._cannot_run(reason))
        self._workspace = None  # im2col's buffer, reused each step (None when x is cached)
        self._fold = None       # inference's filters with a batch norm folded in (_folded)
        self._pad_cache = None  # the last forward's own padding (_padded), for backward
        rng = generator(rng, where)
        fan_in = self.in_channels // self.groups * fh * fw
        check_param_count(math.prod(shape) + bias * self.out_channels,
                          f"{where} with weight {shape}")
        self._init_param("weight", uniform_init(rng, shape, fan_in, self.dtype))
        if bias:
            self._init_param("bias", uniform_init(rng, (self.out_channels,), fan_in, self.dtype))


    GEOMETRY = ("stride", "padding", "dilation", "padding_mode")

    def __setattr__(self, name, value):
        """Assigning stride, padding, dilation or padding_mode after the layer is made
        (as PyTorch code does: conv.padding = (2, 2)) checks the value as the constructor
        does and makes what the convolution is computed with again; kernel_size, groups
        and the channel counts are fixed by the weight's shape."""
        if "weight" not in self.__dict__.get("params", {}):       # still being made
            return super().__setattr__(name, value)
        if name in self.GEOMETRY:
            # padding="same" is worked out again for a new stride or dilation (as PyTorch
            # does at each call); other padding is kept as it is, pads and all
            now = {"stride": self.stride, "dilation": self.dilation,
                   "padding_mode": self.padding_mode,
                   "padding": "same" if self._same else _KEPT, name: value}
            return self._set_geometry(now["stride"], now["padding"], now["dilation"],
                                      now["padding_mode"], kept=self.pads)
        if name in ("kernel_size", "groups", "in_channels", "out_channels", "pads"):
            raise AttributeError(f"{self.where}: {name} is fixed when the layer is made "
                                 f"(by its weight's shape {self.weight.shape}); make a new "
                                 f"Conv2d and copy the weights it can take")
        super().__setattr__(name, value)

    def _set_geometry(self, stride, padding, dilation, padding_mode, algorithm_check=True,
                      kept=None):
        """Check and set stride, dilation, padding_mode and padding (an int, a pair,
        "valid" or "same"; _KEPT: ``kept``, the (top, left, bottom, right) pads the
        layer has), and what the convolution pads itself (zeros, evenly) and what is padded
        before it (pad2d_forward: the uneven rest of "same", or every pad of another
        mode). Nothing is set unless all fit; a change drops the last forward's cache
        (a backward pass would mix the two geometries)."""
        where = type(self).__name__
        stride = window_pair(stride, "stride", where)
        dilation = window_pair(dilation, "dilation", where)
        if not isinstance(padding_mode, str) or padding_mode not in P.MODES:
            raise ValueError(f"{where}: padding_mode must be one of "
                             f"{', '.join(map(repr, P.MODES))}, got {padding_mode!r:.80}")
        end = None                       # (bottom, right) where they differ from padding
        same = isinstance(padding, str) and padding == "same"
        if padding is _KEPT:             # as it is (another hyperparameter assigned)
            padding, end = kept[:2], kept[2:]
        elif isinstance(padding, str) and padding == "valid":
            padding = 0
        elif isinstance(padding, str) and padding == "same":
            total = [d * (k - 1) for k, d in zip(self.kernel_size, dilation)]
            padding = tuple(t // 2 for t in total)
            if any(t % 2 for t in total):
                end = tuple(t - t // 2 for t in total)
            if stride != (1, 1):   # PyTorch refuses it too
                hint = (f"give P explicitly, e.g. padding="
                        f"{padding[0] if padding[0] == padding[1] else padding}" if end is None
                        else f"D*(F-1) = {'x'.join(map(str, total))} is odd: no P keeps it")
                raise ValueError(
                    f"{where}: padding='same' keeps the size only at stride 1, got "
                    f"S={'x'.join(map(str, stride))}; {hint}")
        elif isinstance(padding, str):
            raise ValueError(f"{where}: padding must be a non-negative int, a pair of them, "
                             f"'valid' or 'same', got {padding!r:.80}")
        padding = window_pair(padding, "padding", where, allow_zero=True)
        pads = (*padding, *(end or padding))                        # top, left, bottom, right
        top, left, bottom, right = pads
        if padding_mode != "zeros":
            conv_padding, pre_pads = (0, 0), (top, bottom, left, right)
        else:
            conv_padding, pre_pads = padding, (0, bottom - top, 0, right - left)
        if algorithm_check:
            reason = F.select.layer_why_not(self.algorithm, self.weight.shape, stride,
                                            conv_padding, dilation, self.groups)
            if reason is not None:
                raise ValueError(self._cannot_run(reason, stride, dilation))
        set_ = object.__setattr__
        for name, value in (("stride", stride), ("dilation", dilation),
                            ("padding_mode", padding_mode), ("padding", padding),
                            ("pads", pads), ("_conv_padding", conv_padding),
                            ("_pre_pads", pre_pads if any(pre_pads) else None),
                            ("_same", same), ("_fold", None), ("_pad_cache", None),
                            ("_workspace", None), ("cache", None)):
            set_(self, name, value)

    def _cannot_run(self, reason, stride=None, dilation=None):
        return (f"{type(self).__name__}: algorithm {self.algorithm!r} cannot run this layer "
                f"(F={hw_text(self.kernel_size)}, S={hw_text(stride or self.stride)}, "
                f"dilation={hw_text(dilation or self.dilation)}, groups={self.groups}): "
                f"{reason}")

    def output_shape(self, input_shape):
        c, h, w = check_volume(input_shape, self.in_channels, self.where)
        if self._pre_pads is not None:      # a mode's limits: reflect P < H, circular P <= H
            P.check_pads((1, c, h, w), self._pre_pads, self.padding_mode, self.where)
        # an uneven "same" padding as its extra rows and columns added to the input
        extra = (self.pads[2] - self.pads[0], self.pads[3] - self.pads[1])
        oh, ow = (F.conv_output_size(size + extra[a], self.kernel_size[a], self.stride[a],
                                     self.padding[a], self.dilation[a], self.fit,
                                     where=self.where, axis="HW"[a])
                  for a, size in enumerate((h, w)))
        return (self.out_channels, oh, ow)

    def _padded(self, x):
        """x with the padding the convolution does not do itself (another mode's, the
        uneven rest of "same"), and the cache of that padding (None: x itself)."""
        if self._pre_pads is None:
            return x, None
        return P.pad2d_forward(x, self._pre_pads, self.padding_mode)

    def forward(self, x, relu=False):
        """The convolution of x. relu=True returns max(0, conv) instead: a RELU that
        follows this layer fused in (Sequential's training forward does this), applied as
        the output is finished; backward then takes the gradient of the RELU's output.
        backward reads x and the weights as they are then: most algorithms keep x itself,
        not a copy, so neither may change in place in between (PyTorch would raise; this
        is not checked)."""
        F.check_input(x, self.in_channels, self.where)
        self.output_shape(x.shape[1:])  # a clear error before any work
        x, self._pad_cache = self._padded(x)
        # In training, the im2col matrix of the last step is reused as this step's buffer.
        reuse = self._workspace if self.training else None
        out, self.cache = F.conv2d_forward(x, self.params["weight"], self.params.get("bias"),
                                           self.stride, self._conv_padding, self.dilation,
                                           self.groups, self.fit, cols_out=reuse, relu=relu,
                                           algorithm=self.algorithm, where=self.where)
        self._workspace = getattr(self.cache, "workspace", None) if self.training else None
        self._out_shape = out.shape
        return out

    def infer(self, x, bn=None, relu=False):
        """Forward without a cache, building im2col in pieces of at most
        ``functional.conv.IM2COL_MAX_BYTES`` (the other algorithms' blocks in pieces of at
        most their own BLOCK_BYTES, or one image's): inference memory stays bounded.

        Containers fuse a CONV -> BN -> RELU run into this one call at inference:
        ``bn``, an eval-mode BatchNorm2d that follows this layer, is folded in (bn(y) =
        y * s + t per channel, so bn(conv(x)) = conv(x; w * s, b * s + t)): into the
        filters when they are smaller than the output, else into the output (deep layers,
        small batches: no pass over a large filter bank); ``relu=True`` applies max(0, .)
        to the output as it is finished. Neither allocates an output or runs a layer of
        its own.
        """
        F.check_input(x, self.in_channels, self.where)
        k, oh, ow = self.output_shape(x.shape[1:])
        self.cache = None
        x = self._padded(x)[0]
        w, b, scale = self.params["weight"], self.params.get("bias"), None
        if bn is not None:
            scale, shift = bn.inference_affine()
            b = shift if b is None else b * scale + shift
            if w.size <= x.shape[0] * k * oh * ow:
                w, scale = self._folded(w, scale), None
            else:   # the same result dtype as folding into the filters
                w = w.astype(np.result_type(w, scale), copy=False)
        return F.conv2d_infer(x, w, b, self.stride, self._conv_padding, self.dilation,
                              self.groups, self.fit, relu=relu, scale=scale,
                              algorithm=self.algorithm, where=self.where)

    def _folded(self, w, scale):
        """w * scale per filter (a batch norm folded into the filters), the same array
        from call to call while w and scale keep their values (compared with copies of
        them, a pass over the filters), so that what an algorithm keeps of the filters
        between calls (Winograd's transformed filters) is found again, not remade."""
        kept = self._fold
        if (kept is not None and kept[0] is w and np.array_equal(kept[1], w)
                and np.array_equal(kept[2], scale)):
            return kept[3]
        folded = w * scale.reshape(-1, 1, 1, 1)
        self._fold = (w, w.copy(), scale.copy(), folded)
        return folded

    def algorithm_for(self, input_shape, batch_size=1, training=True, itemsize=None):
        """The algorithm (a name) that runs this layer on a batch of per-sample
        ``input_shape`` (C, H, W), in training or at inference, at ``itemsize`` bytes a
        value (default: the layer's dtype's); a ValueError naming the layer when the
        algorithm it names cannot run there."""
        c, h, w = input_shape
        if self._pre_pads is not None:      # the convolution sees the padded input
            top, bottom, left, right = self._pre_pads
            h, w = h + top + bottom, w + left + right
        chosen, _ = F.algorithm_for((batch_size, c, h, w), self.params["weight"].shape,
                                    self.stride, self._conv_padding, self.dilation,
                                    self.groups,
                                    itemsize or self.dtype.itemsize, training, self.algorithm,
                                    self.where)
        return chosen.value

    skips_input_grad = True

    def backward(self, dout, input_grad=True):
        """Input gradient (None with input_grad=False); fills grads. Spends the cache (its
        im2col memory is reused)."""
        cache = self._cached()
        check_dout(dout, self._out_shape, self.where)
        dx, dw, db = F.conv2d_backward(dout, cache, overwrite_cols=True,
                                       input_grad=input_grad)
        self.cache = None
        self.grads["weight"] = dw
        if "bias" in self.params:
            self.grads["bias"] = db
        if dx is not None and self._pad_cache is not None:
            dx = P.pad2d_backward(dx, self._pad_cache)
        return dx

    def macs(self, input_shape):
        k, oh, ow = self.output_shape(input_shape)
        fh, fw = self.kernel_size
        return k * oh * ow * (self.in_channels // self.groups) * fh * fw

    def get_config(self):
        return {"type": "Conv2d", "in_channels": self.in_channels,
                "out_channels": self.out_channels, "kernel_size": list(self.kernel_size),
                "stride": list(self.stride), "padding": self._padding_config(),
                "dilation": list(self.dilation), "groups": self.groups,
                "bias": "bias" in self.params, "fit": self.fit, "dtype": self.dtype.name,
                **({} if self.padding_mode == "zeros" else {"padding_mode": self.padding_mode}),
                **({} if self.algorithm == "auto" else {"algorithm": self.algorithm})}

    def _padding_config(self):
        """[PH, PW], or "same" where it pads unevenly (no pair says that)."""
        return list(self.padding) if self.pads[:2] == self.pads[2:] else "same"

    def __repr__(self):
        padding = self._padding_config()
        text = (f"Conv2d(K={self.out_channels}, F={hw_text(self.kernel_size)}, "
                f"S={hw_text(self.stride)}, "
                f"P={hw_text(padding) if padding != 'same' else 'same'}")
        if self.padding_mode != "zeros":
            text += f", padding_mode={self.padding_mode!r}"
        if self.dilation != (1, 1):
            text += f", dilation={hw_text(self.dilation)}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        if "bias" not in self.params:
            text += ", bias=False"
        return text + ")"


class LocallyConnected2d(Layer):
    """Locally-connected layer: CONV connectivity without parameter sharing.

    Each output position has its own set of K filters, as the notes describe for inputs
    with a centered structure (faces). The input size must be known when the layer is
    built, since it fixes the number of positions.

    Args:
        in_channels: input depth D1. out_channels: filters per position K.
        input_size: (H, W) of the input, or an int for a square input.
        kernel_size, stride, padding: F, S, P as in Conv2d (int or pair).
        bias: a learned offset per filter per position.

    Parameters: weight (OH, OW, K, D1, FH, FW) and bias (K, OH, OW).

    >>> lc = LocallyConnected2d(3, 96, 227, 11, stride=4)    # AlexNet CONV1, unshared
    >>> lc.num_params()                                      # 290,400 x 364
    105705600
    """

    optional_arrays = ("bias",)

    def __init__(self, in_channels, out_channels, input_size, kernel_size, stride=1,
                 padding=0, bias=True, fit="exact", dtype=np.float32, rng=None):
        super().__init__()
        where = type(self).__name__
        self.in_channels = positive_int(in_channels, "in_channels", where)
        self.out_channels = positive_int(out_channels, "out_channels", where)
        self.input_size = F.pair(input_size, "input_size", where)
        self.kernel_size = window_pair(kernel_size, "kernel_size", where)
        self.stride = window_pair(stride, "stride", where)
        self.padding = window_pair(padding, "padding", where, allow_zero=True)
        if fit not in F.FITS:
            raise ValueError(f"{where}: fit must be one of {F.FITS}, got {fit!r:.80}")
        self.fit = fit
        bias = flag(bias, "bias", where)
        self.dtype = check_dtype(dtype, where)
        self.out_size = tuple(
            F.conv_output_size(self.input_size[a], self.kernel_size[a], self.stride[a],
                               self.padding[a], 1, fit, where=repr(self), axis="HW"[a])
            for a in (0, 1))
        rng = generator(rng, where)
        fh, fw = self.kernel_size
        oh, ow = self.out_size
        fan_in = self.in_channels * fh * fw
        shape = (oh, ow, self.out_channels, self.in_channels, fh, fw)
        check_param_count(math.prod(shape) + bias * self.out_channels * oh * ow,
                          f"{where} with weight {shape}")
        self._init_param("weight", uniform_init(rng, shape, fan_in, self.dtype))
        if bias:
            self._init_param("bias", uniform_init(rng, (self.out_channels, oh, ow), fan_in,
                                                  self.dtype))

    def output_shape(self, input_shape):
        c, h, w = check_volume(input_shape, self.in_channels, self.where)
        if (h, w) != self.input_size:
            raise ValueError(f"{self.where}: built for input H x W = {self.input_size[0]} x "
                             f"{self.input_size[1]} (weights per position), got {h} x {w}")
        return (self.out_channels, *self.out_size)

    def forward(self, x):
        F.check_input(x, self.in_channels, self.where)
        self.output_shape(x.shape[1:])
        out, self.cache = F.locally_connected_forward(
            x, self.params["weight"], self.params.get("bias"), self.stride, self.padding)
        self._out_shape = out.shape
        return out

    def backward(self, dout):
        cache = self._cached()
        check_dout(dout, self._out_shape, self.where)
        dx, dw, db = F.locally_connected_backward(dout, cache)
        self.grads["weight"] = dw
        if "bias" in self.params:
            self.grads["bias"] = db
        return dx

    def macs(self, input_shape):
        k, oh, ow = self.output_shape(input_shape)
        return k * oh * ow * self.in_channels * self.kernel_size[0] * self.kernel_size[1]

    def get_config(self):
        return {"type": "LocallyConnected2d", "in_channels": self.in_channels,
                "out_channels": self.out_channels, "input_size": list(self.input_size),
                "kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": list(self.padding), "bias": "bias" in self.params,
                "fit": self.fit, "dtype": self.dtype.name}

    def __repr__(self):
        return (f"LocallyConnected2d(K={self.out_channels}, F={hw_text(self.kernel_size)}, "
                f"S={hw_text(self.stride)}, P={hw_text(self.padding)})")
