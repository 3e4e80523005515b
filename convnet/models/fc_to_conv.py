"""FC -> CONV conversion: slide a trained net over a larger image in one pass; and the
other way, a CONV layer as the FC layer that computes the same function (``conv_to_fc``).

The notes: an FC layer that looks at a 7x7x512 volume is a CONV layer with F=7, P=0,
S=1 and K = its number of neurons; the FC layers after it become 1x1 CONVs. The converted
net computes the same class scores on the original input size, and on a larger image it
returns a spatial map of scores: each entry is the original net evaluated on one crop,
the crops spaced by the net's total stride (32 for a net with five 2x2 pools).

Exactness: for a net whose CONV and POOL layers do not pad (and whose pools do not round
up, ceil_mode), each map entry equals the original net on the corresponding crop exactly.
A net with padding differs near the crops' borders: the crop, run alone, sees zeros (or a
pool's window cut short) where the big image has pixels.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np

from convnet.functional import norm as F
from convnet.functional.pool import adaptive_windows
from convnet.layers.activation import LeakyReLU, ReLU, ReLU6, Sigmoid, Tanh
from convnet.layers.base import Identity, Layer, check_volume
from convnet.layers.conv import Conv2d
from convnet.layers.dropout import Dropout
from convnet.layers.linear import Flatten, Linear
from convnet.layers.norm import BatchNorm1d, BatchNorm2d
from convnet.layers.pool import AdaptiveAvgPool2d, AdaptiveMaxPool2d, AvgPool2d, MaxPool2d
from convnet.models.containers import Container, Sequential

# Layers that act on each position of a volume alone: they may sit between a sliding
# adaptive pool and the Flatten (they then run on the pool's stride-1 grid).
_PER_POSITION = (ReLU, ReLU6, LeakyReLU, Tanh, Sigmoid, Dropout, Identity, BatchNorm2d)


def fc_to_conv(model, input_shape=None):
    """Return a copy of ``model`` whose FC layers are CONV layers, weights copied.

    Args:
        model: a Sequential (possibly of named Sequential stages such as "features" and
            "classifier"; blocks such as Residual before the first FC are copied as they
            are) ending in FC layers.
        input_shape: the per-sample (C, H, W) the net was built for; defaults to
            ``model.input_shape``.

    The first FC after the conv stack becomes Conv2d(D, K, F=(H, W)) on the incoming
    H x W x D volume; later FCs become 1x1 CONVs; the Flatten before them becomes an
    Identity. An adaptive pool that is the identity at the original size is dropped
    (it would squash a larger map). One right before the Flatten (RELU, batch norm and
    dropout aside) over k x k windows (global pooling: the whole grid) becomes
    AvgPool2d(k, stride 1) or MaxPool2d(k, stride 1), and the first FC's CONV takes
    dilation k, so that the pooling slides too. Any other adaptive pool right before the
    Flatten that is a linear map (averages over windows of unequal sizes, an enlarging
    pool, a max whose every window is one value) is folded into the first FC's weights,
    whose CONV then spans the pool's input. Any other (a max over unequal windows, other
    layers between it and the Flatten) is kept, and the net gives its scores at the
    original size only.
    A BatchNorm1d between the Flatten and the first FC (one mean and variance per
    position of the volume) is folded into that FC with its running statistics, and the
    converted net is returned in eval mode; otherwise in the model's mode. Output:
    (N, K, OH, OW), with OH = OW = 1 at the original size. Nothing is shared with
    ``model``.

    >>> # a net reducing 224x224 to 7x7x512 gives a 6x6 map of scores on 384x384
    """
    if input_shape is None:
        input_shape = getattr(model, "input_shape", None)
    if input_shape is None:
        raise ValueError("fc_to_conv: give input_shape=(C, H, W), the size the net was "
                         "built for (the model has no input_shape attribute)")
    if not isinstance(model, Sequential):
        raise ValueError(f"fc_to_conv: expected a Sequential model, got {type(model).__name__}")
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list, np.ndarray)) else ()
    if not all(_positive_int(v) for v in shape):
        raise ValueError(f"fc_to_conv: input_shape must be positive ints (C, H, W), got "
                         f"{input_shape!r:.80}")
    shape = tuple(int(v) for v in shape)
    if len(shape) != 3:
        raise ValueError(f"fc_to_conv: the net takes input of shape {shape}; converting its "
                         f"FC layers to CONVs slides it over larger images, so its input "
                         f"must be an image volume (C, H, W)")
    leaves = list(_leaves(model, shape))
    state = _State(sliding=_sliding_pools(leaves), pooled=_folded_pools(leaves))
    converted, _ = _convert(model, shape, state)
    if state.pending is not None:
        raise ValueError(f"fc_to_conv: {state.pending[2]} normalizes the flattened volume "
                         f"but no FC layer follows it")
    converted.input_shape = shape
    converted.train(model.training and not state.folded)
    return converted


def _positive_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0


@dataclasses.dataclass
class _State:
    """What the conversion carries from layer to layer."""
    sliding: set                 # ids of the adaptive pools that become sliding ones
    pooled: set                  # ids of the adaptive pools folded into the first FC
    fold: tuple = None           # (rows (OH, H), columns (OW, W)): a folded pool's maps
    volume: tuple = None         # the (D, H, W) the first FC sees, once a Flatten is passed
    head: bool = False           # a Flatten or an FC has been passed
    dilation: tuple = (1, 1)     # the first FC's CONV's: a sliding pool's window
    pending: tuple = None        # (scale, shift, name): a BatchNorm1d to fold into the FC
    folded: bool = False


def _is_stage(layer, shape):
    """A Sequential converted child by child: not a side head (GoogLeNet's AuxClassifier),
    whose output is its input."""
    return isinstance(layer, Sequential) and (
        type(layer) is Sequential or tuple(layer.output_shape(shape)) != tuple(shape))


def _leaves(seq, shape):
    """(layer, in shape, out shape) of each leaf or block, in order, through the stages."""
    for layer in seq.children():
        if _is_stage(layer, shape):
            yield from _leaves(layer, shape)
            shape = tuple(layer.output_shape(shape))
        else:
            out = tuple(layer.output_shape(shape))
            yield layer, shape, out
            shape = out


def _sliding_pools(leaves):
    """The ids of the adaptive pools that can slide: windows of one size k (the output
    divides the input) and the Flatten next, layers of _PER_POSITION aside."""
    found = set()
    for i, (layer, shape, out) in enumerate(leaves):
        if not isinstance(layer, (AdaptiveAvgPool2d, AdaptiveMaxPool2d)) or out == shape \
                or len(shape) != 3 or any(s % o for s, o in zip(shape[1:], out[1:])):
            continue
        after = next((nxt for nxt, _, _ in leaves[i + 1:]
                      if not isinstance(nxt, _PER_POSITION)), None)
        if isinstance(after, Flatten):
            found.add(id(layer))
    return found


def _pool_matrix(size, out):
    """(out, size): adaptive average pooling along one axis as a matrix, row i 1/len
    over window i."""
    start, end = adaptive_windows(size, out)
    pos = np.arange(size)
    inside = (pos >= start[:, None]) & (pos < end[:, None])
    return inside / (end - start)[:, None]


def _folded_pools(leaves):
    """The ids of the other adaptive pools right before the Flatten that are linear maps
    of their input (any average; a max whose every window holds one value, as when the
    output is a multiple of the input): folded into the first FC's weights, they slide
    as part of its CONV."""
    found = set()
    for i, (layer, shape, out) in enumerate(leaves):
        if not isinstance(layer, (AdaptiveAvgPool2d, AdaptiveMaxPool2d)) or out == shape \
                or len(shape) != 3 or i + 1 == len(leaves) \
                or not isinstance(leaves[i + 1][0], Flatten):
            continue
        # the first FC must follow, with only linear layers between (an activation there
        # would act on the pooled values, which the fold no longer makes)
        after = next((nxt for nxt, _, _ in leaves[i + 2:]
                      if not isinstance(nxt, (Dropout, Identity, BatchNorm1d))), None)
        if not isinstance(after, Linear):
            continue
        if isinstance(layer, AdaptiveMaxPool2d) and any(
                np.any(np.subtract(*adaptive_windows(s, o)[::-1]) != 1)
                for s, o in zip(shape[1:], out[1:])):
            continue
        found.add(id(layer))
    return found


def _convert(seq, shape, state):
    children = {}
    for key, layer in seq.named_children():
        if _is_stage(layer, shape):
            children[key], shape = _convert(layer, shape, state)
            continue
        out_shape = tuple(layer.output_shape(shape))
        children[key] = _convert_layer(layer, shape, out_shape, state)
        shape = out_shape
    return Sequential(children), shape


def _convert_layer(layer, shape, out_shape, state):
    """The CONV-world replacement of one leaf layer or block (a copy where nothing
    changes)."""
    where = layer.name or type(layer).__name__
    if state.pending is not None and not isinstance(layer, (Linear, Dropout)):
        raise ValueError(f"fc_to_conv: {state.pending[2]} normalizes each position of the "
                         f"flattened volume and {where} follows it: only an FC layer "
                         f"(which it is folded into) can")
    if isinstance(layer, Flatten):
        if len(shape) == 1:                      # a vector again: nothing to flatten
            return Identity()
        if len(shape) != 3:
            raise ValueError(f"fc_to_conv: {where} flattens a {shape} volume; only a "
                             f"(C, H, W) volume's Flatten becomes part of a CONV")
        state.volume, state.head = shape, True   # the (D, H, W) that the next FC sees
        return Identity()
    if isinstance(layer, AdaptiveAvgPool2d) and out_shape == shape:
        return Identity()
    if id(layer) in state.sliding:
        state.dilation = tuple(s // o for s, o in zip(shape[1:], out_shape[1:]))
        pool = MaxPool2d if isinstance(layer, AdaptiveMaxPool2d) else AvgPool2d
        return pool(state.dilation, stride=1)
    if id(layer) in state.pooled and id(layer) not in state.sliding:
        state.fold = tuple(_pool_matrix(s, o) for s, o in zip(shape[1:], out_shape[1:]))
        return Identity()
    if isinstance(layer, BatchNorm1d) and state.volume is not None:
        state.pending = (*_bn_affine(layer, where), where)
        return Identity()
    if isinstance(layer, Linear):
        if len(shape) != 1:
            raise ValueError(f"fc_to_conv: {where} is applied to the last axis of a "
                             f"{shape} input, not to a vector (after Flatten()); only an "
                             f"FC layer on a vector is a CONV")
        return _fc_as_conv(layer, state)
    if isinstance(layer, BatchNorm1d):   # after an FC: one value per channel of a 1x1 map
        bn = BatchNorm2d(layer.num_features, eps=layer.eps, momentum=layer.momentum,
                         affine=layer.affine, track_running_stats=layer.track_running_stats,
                         dtype=layer.dtype)
        bn.frozen = layer.frozen
        bn.params = {k: v.copy() for k, v in layer.params.items()}
        bn.buffers = {k: v.copy() for k, v in layer.buffers.items()}
        bn.zero_grad()
        return bn
    if isinstance(layer, Container) and state.head:
        raise ValueError(f"fc_to_conv: cannot convert the block {where} inside the FC head")
    if not isinstance(layer, Layer):
        raise ValueError(f"fc_to_conv: cannot convert {where}: not a layer")
    copied = copy.deepcopy(layer)       # the converted net shares nothing with the model
    copied.clear_cache() if isinstance(copied, Container) else setattr(copied, "cache", None)
    return copied


def _bn_affine(layer, where):
    """A BatchNorm1d's eval-mode (scale, shift) per feature, to fold into the next FC."""
    if not layer.track_running_stats:
        raise ValueError(f"fc_to_conv: {where} normalizes the flattened volume with batch "
                         f"statistics only (no running statistics to fold)")
    return F.batch_norm_affine(layer.params.get("weight"), layer.params.get("bias"),
                               layer.buffers["running_mean"], layer.buffers["running_var"],
                               layer.eps)


def _fc_as_conv(layer, state):
    """An FC layer as the CONV that computes it: on the flattened (D, H, W) volume for
    the first, 1x1 for the others; a pending batch norm folded in: W (x * scale + shift)
    + b."""
    state.head = True
    w = layer.params["weight"]
    b = layer.params["bias"] if "bias" in layer.params else None
    if state.pending is not None:
        scale, shift, _ = state.pending
        state.pending, state.folded = None, True
        b = (0 if b is None else b) + w @ shift
        w = w * scale
    dilation = (1, 1)
    if state.volume is not None:        # the first FC: F equals the incoming volume
        (d, h, wd), dilation = state.volume, state.dilation
        state.volume = None
    else:
        d, h, wd = layer.in_features, 1, 1
    w = w.reshape(layer.out_features, d, h, wd)
    if state.fold is not None:          # W on pool(x) = (W through the pool's maps) on x
        rows, cols = state.fold
        w = np.einsum("kdxy,xa,yb->kdab", w, rows.astype(w.dtype), cols.astype(w.dtype))
        h, wd = w.shape[2:]
        state.fold = None
    conv = Conv2d(d, layer.out_features, (h, wd), dilation=dilation, bias=b is not None,
                  dtype=w.dtype)
    conv.params["weight"] = np.ascontiguousarray(w, dtype=w.dtype)
    if b is not None:
        conv.params["bias"] = np.asarray(b, dtype=w.dtype).copy()
    conv.zero_grad()
    conv.frozen = layer.frozen
    return conv


def slide(model, x, net_stride, factor=2):
    """Score crops at a stride of net_stride/factor by combining shifted passes.

    The notes' trick: a converted net scores crops at its own total stride (32); to get
    stride 16, run it on the image and on the image shifted by 16 pixels (along H, W and
    both) and interleave the maps. Each shifted copy is cropped by net_stride on the far
    side so that its size still fits the net.

    Args:
        model: a converted (fc_to_conv) model. x: (N, C, H, W).
        net_stride: the converted net's total stride (product of its strides).
        factor: how many times finer the output grid is (stride = net_stride / factor).

    Returns (N, K, factor*(OH-1)+1, factor*(OW-1)+1): entry (i, j) is the net on the crop
    whose top-left corner is (i, j) * net_stride / factor.
    """
    for name, value in (("net_stride", net_stride), ("factor", factor)):
        if not _positive_int(value):
            raise ValueError(f"slide: {name} must be a positive int, got {value!r:.40}")
    if not (isinstance(x, np.ndarray) and x.ndim == 4):
        raise ValueError(f"slide: x must be a batch of images (N, C, H, W), got "
                         f"{getattr(x, 'shape', type(x).__name__)}")
    if net_stride % factor:
        raise ValueError(f"slide: net_stride={net_stride} must be divisible by "
                         f"factor={factor}")
    step = net_stride // factor
    n, _, h, w = x.shape
    size = getattr(model, "input_shape", None)        # the size the net was trained on
    if size is not None and factor > 1 and (h < size[1] + net_stride
                                            or w < size[2] + net_stride):
        raise ValueError(f"slide: the images are {h}x{w} (H x W); each shifted copy is "
                         f"{net_stride} smaller and must still hold the {size[1]}x{size[2]} "
                         f"the net was built for: give at least {size[1] + net_stride}x"
                         f"{size[2] + net_stride}")
    base = model.forward(x)                                   # (N, K, OH, OW)
    k, oh, ow = base.shape[1:]
    scores = np.empty((n, k, factor * (oh - 1) + 1, factor * (ow - 1) + 1), dtype=base.dtype)
    for i in range(factor):
        for j in range(factor):
            if i == 0 and j == 0:
                out = base
            else:
                hi = h - (net_stride if i else 0)
                wi = w - (net_stride if j else 0)
                out = model.forward(x[:, :, i * step: i * step + hi, j * step: j * step + wi])
            grid = scores[:, :, i::factor, j::factor]
            if out.shape != grid.shape:   # a map of another size: not the net's stride
                raise ValueError(f"slide: the pass shifted by ({i * step}, {j * step}) gave "
                                 f"a {out.shape[2]}x{out.shape[3]} map where a net of total "
                                 f"stride {net_stride} gives {grid.shape[2]}x{grid.shape[3]}"
                                 f": net_stride must be the product of the net's strides")
            grid[...] = out
    return scores


def conv_to_fc(conv, input_shape):
    """The FC layer that computes what the CONV layer ``conv`` computes on (C, H, W)
    inputs: the notes' "for any CONV layer there is an FC layer that implements the same
    forward function".

    Its weight matrix (K*OH*OW, C*H*W) is mostly zero (each output sees only its F x F
    window: local connectivity), and its non-zero blocks repeat the same F x F x C/G
    filter values at every output position (parameter sharing). Rows and columns are in
    NCHW order, so ``fc(x.reshape(N, -1))`` equals ``conv(x).reshape(N, -1)``; the bias
    repeats each filter's over its OH x OW outputs. The matrix must fit
    ``convnet.limits.MAX_PARAMS``.

    >>> conv = Conv2d(3, 12, 3, padding=1, rng=np.random.default_rng(0))
    >>> fc = conv_to_fc(conv, (3, 32, 32))
    >>> fc.params["weight"].shape, int(np.count_nonzero(fc.params["weight"]))
    ((12288, 3072), 318096)
    """
    if not isinstance(conv, Conv2d):
        raise ValueError(f"conv_to_fc: expected a Conv2d layer, got {type(conv).__name__}")
    if conv.padding_mode != "zeros":
        raise ValueError(f"conv_to_fc: {conv.where} pads with padding_mode="
                         f"{conv.padding_mode!r}, whose border values are copies of inputs: "
                         f"only zero padding (padding_mode='zeros') is converted")
    c, h, w = check_volume(input_shape, conv.in_channels, "conv_to_fc: input_shape")
    k, oh, ow = conv.output_shape((c, h, w))
    weight = conv.params["weight"]                                  # (K, C/G, FH, FW)
    cg, fh, fw = weight.shape[1:]
    (sh, sw), (ph, pw), (dh, dw) = conv.stride, conv.padding, conv.dilation
    fc = Linear(c * h * w, k * oh * ow, bias="bias" in conv.params, dtype=weight.dtype,
                rng=np.random.default_rng(0))
    filters, channels, i, j, y, x = np.indices((k, cg, fh, fw, oh, ow), sparse=True)
    rows = y * sh - ph + i * dh                                     # the input pixel each
    cols = x * sw - pw + j * dw                                     # tap of each output reads
    inside = np.broadcast_to((rows >= 0) & (rows < h) & (cols >= 0) & (cols < w),
                             (k, cg, fh, fw, oh, ow))
    channel = filters // (k // conv.groups) * cg + channels         # its group's channels
    out_index = np.broadcast_to((filters * oh + y) * ow + x, inside.shape)[inside]
    in_index = np.broadcast_to((channel * h + rows) * w + cols, inside.shape)[inside]
    matrix = fc.params["weight"]                                    # (K*OH*OW, C*H*W)
    matrix[...] = 0                                                 # its own, initialised
    matrix[out_index, in_index] = np.broadcast_to(weight[..., None, None], inside.shape)[inside]
    if "bias" in conv.params:
        fc.params["bias"] = np.repeat(conv.params["bias"], oh * ow)
    fc.zero_grad()
    return fc
