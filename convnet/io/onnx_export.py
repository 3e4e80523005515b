"""Export a convnet model to ONNX, for inference in onnxruntime and other runtimes.

The model is walked layer by layer from its per-sample input shape (C, H, W); each layer
becomes one ONNX node (or a few), each container its children's nodes plus the joins:

    Conv2d -> Conv (padding_mode reflect, replicate, circular: Pad (mode reflect, edge,
              wrap: opset 19 on) and an unpadded Conv, which load_onnx reads back)
                                MaxPool2d -> MaxPool       AvgPool2d -> AveragePool
    LocallyConnected2d -> Conv (one-hot filters: im2col) + Reshape, Transpose, MatMul, Add
                          (load_onnx does not read this subgraph back)
    LPPool2d -> LpPool          AdaptiveAvgPool2d(1) -> GlobalAveragePool (others below)
    AdaptiveMaxPool2d(1) -> GlobalMaxPool, an output that divides the input -> MaxPool
                          (others are refused)
    ReLU -> Relu, LeakyReLU -> LeakyRelu, Tanh -> Tanh, Sigmoid -> Sigmoid, ReLU6 -> Clip(0, 6)
    Linear -> Gemm (transB=1), on a volume MatMul + Add
    Flatten -> Flatten(axis=1), other axes a Reshape (load_onnx reads it back where it
               keeps the channel axis, not Flatten(1, 2))
    BatchNorm2d/1d -> BatchNormalization (running statistics)
    LocalResponseNorm -> LRN    Dropout, Dropout2d, Identity, GoogLeNet's AuxClassifier
                                -> Identity
    Residual -> body + shortcut + Add (+ post)   Concat -> branches + Concat(axis=1)
    DenseBlock -> a running Concat(axis=1) after each layer

The graph is what ``model.infer(x)`` computes in eval mode, in float32, with a dynamic
batch axis "N". Initializers carry the model's dotted state-dict keys (``features.0.weight``)
so the weights can be matched by name. A few settings have no single ONNX op with the same
numbers and are written as small subgraphs: LRN with an even size (PyTorch's window reaches
one channel further back, ONNX's one further forward), LPPool2d with a non-even p or a
ceil-mode window hanging over the edge (PyTorch scales its sum by FH*FW / size inside),
AdaptiveAvgPool2d (AveragePool, kernel = stride, for an output size that divides the
input; else rows @ (x @ cols.T), two MatMuls with its averaging matrices, as it computes);
a dilated ceil-mode MaxPool2d whose last window hangs F or more past the input is
MaxPool with ceil_mode=1 (runtimes refuse pads >= F), or a Pad of -inf and MaxPool where
ONNX's ceil mode gives other sizes (load_onnx does not read that Pad back); AvgPool2d
with a divisor_override is a zero Pad, AveragePool and Mul by FH*FW / divisor (load_onnx
does not read this one back).

>>> from convnet.zoo import lenet5
>>> export_onnx(lenet5(), "lenet5.onnx")                      # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np

from convnet.functional.pool import adaptive_windows
from convnet.io.weights import INFO_KEY, atomic_write, json_text
from convnet.layers.activation import LeakyReLU, ReLU, ReLU6, Sigmoid, Tanh
from convnet.layers.base import Identity
from convnet.layers.conv import Conv2d, LocallyConnected2d
from convnet.layers.dropout import Dropout, Dropout2d
from convnet.layers.linear import Flatten, Linear
from convnet.layers.norm import BatchNorm1d, BatchNorm2d, LocalResponseNorm
from convnet.layers.pool import (
    AdaptiveAvgPool2d,
    AdaptiveMaxPool2d,
    AvgPool2d,
    LPPool2d,
    MaxPool2d,
)
from convnet.models.containers import Concat, DenseBlock, Residual, Sequential

__all__ = ["export_onnx"]

MIN_OPSET = 13      # Squeeze/Unsqueeze take their axes as inputs from opset 13 on


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ImportError("export_onnx needs the onnx package: pip install onnx") from None
    return onnx


def export_onnx(model, path, input_shape=None, opset=17, info=None):
    """Write ``model`` as an ONNX file that computes its eval-mode ``infer`` in float32.

    Args:
        model: a Sequential or graph model (Residual, Concat, DenseBlock blocks), or a
            single layer. It is exported as in eval mode (running statistics, no dropout)
            whatever its ``training`` flag; the model itself is not changed.
        path: the .onnx file to write (atomically).
        input_shape: per-sample input shape (C, H, W) (or (features,)); default
            ``model.input_shape``. The batch axis is dynamic ("N").
        opset: the ONNX opset to target, >= 13 (default 17).
        info: the model's record (class names, preprocessing: a convnet model's
            ``info``), kept as JSON in the file's metadata_props under "convnet.info",
            which load_onnx reads back (default: none).

    Returns the onnx.ModelProto, already checked by onnx.checker.

    Input "input" (N, C, H, W) float32 -> output "output" (N, *model.output_shape(...)).

    >>> from convnet.zoo import resnet18
    >>> net = resnet18(num_classes=10, input_size=32)
    >>> export_onnx(net, "resnet18.onnx").graph.output[0].name      # doctest: +SKIP
    'output'
    """
    onnx = _onnx()
    where = f"export_onnx({type(model).__name__})"
    if input_shape is None:
        input_shape = getattr(model, "input_shape", None)
        if input_shape is None:
            raise ValueError(f"{where}: input_shape is required (per-sample (C, H, W)) for a "
                             "model without an input_shape attribute, got None")
    if not isinstance(input_shape, (tuple, list)) or not input_shape or not all(
            isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 1
            for s in input_shape):
        raise ValueError(f"{where}: input_shape must be positive int sizes such as "
                         f"(C, H, W), got {input_shape!r:.80}")
    shape = tuple(int(s) for s in input_shape)
    newest = onnx.defs.onnx_opset_version()
    if not isinstance(opset, int) or isinstance(opset, bool) or not MIN_OPSET <= opset <= (
            newest):
        raise ValueError(f"{where}: opset must be an int from {MIN_OPSET} to {newest} (the "
                         f"installed onnx's newest), got {opset!r}")

    graph = _Graph(onnx, opset)
    out, out_shape = graph.layer(model, "input", shape)
    graph.nodes.append(onnx.helper.make_node("Identity", [out], ["output"], name="output"))
    helper, f32 = onnx.helper, onnx.TensorProto.FLOAT
    opsets = [helper.make_opsetid("", opset)]
    proto = helper.make_model(
        helper.make_graph(graph.nodes, type(model).__name__,
                          [helper.make_tensor_value_info("input", f32, ["N", *shape])],
                          [helper.make_tensor_value_info("output", f32, ["N", *out_shape])],
                          graph.initializers),
        opset_imports=opsets, producer_name="convnet",
        # the oldest IR version for the opset, which runtimes older than onnx read too
        ir_version=helper.find_min_ir_version_for(opsets))
    if info:
        helper.set_model_props(proto, {INFO_KEY: json_text(info)})
    onnx.checker.check_model(proto, full_check=True)
    atomic_write(path, proto.SerializeToString())
    return proto


class _Graph:
    """Nodes and initializers collected while walking a model; unique tensor names."""

    def __init__(self, onnx, opset):
        self.opset = opset
        self.helper = onnx.helper
        self.numpy_helper = onnx.numpy_helper
        self.nodes, self.initializers = [], []
        self.names = {"input", "output"}

    # -- bookkeeping ---------------------------------------------------------------------
    def fresh(self, base):
        """A tensor name not used yet: base, or base_1, base_2, ..."""
        name, i = base, 0
        while name in self.names:
            i += 1
            name = f"{base}_{i}"
        self.names.add(name)
        return name

    def const(self, name, value, dtype=np.float32):
        """Add an initializer (the model's arrays keep their dotted state-dict keys)."""
        name = self.fresh(name)
        array = np.ascontiguousarray(np.asarray(value, dtype=dtype))
        self.initializers.append(self.numpy_helper.from_array(array, name))
        return name

    def node(self, op, inputs, base, **attrs):
        """Append one node named after base; returns its output tensor's name."""
        out = self.fresh(base)
        self.nodes.append(self.helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    # -- the walk ------------------------------------------------------------------------
    def layer(self, layer, x, shape):
        """Emit ``layer`` applied to tensor x of per-sample shape; returns (name, shape)."""
        from convnet.zoo.googlenet import AuxClassifier  # zoo sits above models and layers

        base = layer.name or type(layer).__name__.lower()
        if isinstance(layer, AuxClassifier):              # eval/infer: passes x through
            layer.output_shape(shape)
            return self.node("Identity", [x], base), shape
        if isinstance(layer, Sequential):
            for child in layer:
                x, shape = self.layer(child, x, shape)
            return x, shape
        if isinstance(layer, Residual):
            return self._residual(layer, x, shape, base)
        if isinstance(layer, Concat):
            outs = [self.layer(branch, x, shape) for branch in layer]
            out_shape = layer.output_shape(shape)
            return self.node("Concat", [o for o, _ in outs], f"{base}.concat", axis=1), out_shape
        if isinstance(layer, DenseBlock):
            for child in layer:
                new, new_shape = self.layer(child, x, shape)
                x = self.node("Concat", [x, new], f"{child.name or base}.concat", axis=1)
                shape = (shape[0] + new_shape[0], *shape[1:])
            return x, shape
        out_shape = layer.output_shape(shape)             # checks that the layer fits
        emit = _LEAVES.get(type(layer))
        if emit is None:
            raise ValueError(f"export_onnx: layer {layer.where} of type "
                             f"{type(layer).__name__} has no ONNX export; supported: "
                             f"{', '.join(sorted(t.__name__ for t in _LEAVES))} and the "
                             "containers Sequential, Residual, Concat, DenseBlock")
        return emit(self, layer, x, shape, out_shape, base), out_shape

    def _residual(self, block, x, shape, base):
        out, out_shape = x, shape
        for key in block.body_keys:
            out, out_shape = self.layer(block[key], out, out_shape)
        skip = x
        if block.shortcut_key is not None:
            skip, _ = self.layer(block[block.shortcut_key], x, shape)
        block.output_shape(shape)                          # body and shortcut must agree
        out = self.node("Add", [out, skip], f"{base}.add")
        if block.post_key is not None:
            out, out_shape = self.layer(block[block.post_key], out, out_shape)
        return out, out_shape

    # -- leaves --------------------------------------------------------------------------
    def conv(self, layer, x, shape, out_shape, base):
        pads, w = list(layer.pads), layer.params["weight"]      # top, left, bottom, right
        if layer.padding_mode != "zeros" and any(pads):
            # PyTorch's other modes: the border filled from the input by a Pad, whose
            # modes are these (wrap from opset 19), before a Conv that pads nothing
            mode = PAD_MODES[layer.padding_mode]
            if mode == "wrap" and self.opset < 19:
                raise ValueError(f"export_onnx: layer {layer.where}: padding_mode="
                                 f"'circular' is ONNX's Pad mode 'wrap', from opset 19 on; "
                                 f"got opset {self.opset} (pass opset=19 or later)")
            top, left, bottom, right = pads
            x = self.node("Pad", [x, self.const(f"{base}.pads", [0, 0, top, left, 0, 0,
                                                                  bottom, right], np.int64)],
                          f"{base}.pad", mode=mode)
            pads = [0, 0, 0, 0]
        inputs = [x, self.const(f"{base}.weight", w)]
        if "bias" in layer.params:
            inputs.append(self.const(f"{base}.bias", layer.params["bias"]))
        return self.node("Conv", inputs, base, kernel_shape=list(layer.kernel_size),
                         strides=list(layer.stride), pads=pads,
                         dilations=list(layer.dilation), group=layer.groups)

    def locally_connected(self, layer, x, shape, out_shape, base):
        """im2col as a Conv with one-hot filters, one group per input channel (each output
        copies one tap of one channel: exact), then one batched MatMul over the positions
        with each position's own filters, as functional.locally_connected_forward."""
        c, k, (fh, fw), (oh, ow) = (layer.in_channels, layer.out_channels,
                                    layer.kernel_size, layer.out_size)
        (ph, pw), taps, positions = layer.padding, c * fh * fw, oh * ow
        one_hot = np.tile(np.eye(fh * fw).reshape(fh * fw, 1, fh, fw), (c, 1, 1, 1))
        cols = self.node("Conv", [x, self.const(f"{base}.taps", one_hot)], f"{base}.im2col",
                         kernel_shape=[fh, fw], strides=list(layer.stride),
                         pads=[ph, pw, ph, pw], group=c)                   # (N, CFF, OH, OW)
        cols = self.node("Reshape", [cols, self.const(f"{base}.cols_shape",
                                                      [0, taps, positions], np.int64)],
                         f"{base}.cols")                                    # (N, CFF, L)
        cols = self.node("Transpose", [cols], f"{base}.by_position", perm=[2, 1, 0])
        weight = self.node("Reshape", [self.const(f"{base}.weight", layer.params["weight"]),
                                       self.const(f"{base}.weight_shape",
                                                  [positions, k, taps], np.int64)],
                           f"{base}.filters")                               # (L, K, CFF)
        out = self.node("MatMul", [weight, cols], f"{base}.matmul")         # (L, K, N)
        out = self.node("Transpose", [out], f"{base}.by_sample", perm=[2, 1, 0])
        shape_out = self.const(f"{base}.out_shape", [0, k, oh, ow], np.int64)
        if "bias" not in layer.params:
            return self.node("Reshape", [out, shape_out], base)             # (N, K, OH, OW)
        out = self.node("Reshape", [out, shape_out], f"{base}.unbiased")
        return self.node("Add", [out, self.const(f"{base}.bias", layer.params["bias"])], base)

    def maxpool(self, layer, x, shape, out_shape, base):
        pads, ceil = _pool_pads(layer, shape, out_shape), 0
        if any(pad >= f for pad, f in zip(pads, 2 * list(layer.kernel_size))):
            # a dilated ceil-mode window hanging F or more past the end: runtimes take no
            # pad >= F (the window's taps, not its extent). ONNX's ceil mode with the
            # layer's pads where it gives the layer's sizes; else (PyTorch's rule that
            # the last window starts inside drops one along the other axis) the padding
            # as a Pad of -inf, as max pooling pads, before an unpadded pool.
            if _onnx_ceil_sizes(layer, shape) == list(out_shape[1:]):
                pads, ceil = [*layer.padding, *layer.padding], 1
            else:
                top, left, bottom, right = pads
                x = self.node("Pad", [x, self.const(f"{base}.pads", [0, 0, top, left, 0, 0,
                                                                      bottom, right],
                                                    np.int64),
                                      self.const(f"{base}.minus_inf", -np.inf)],
                              f"{base}.pad")
                pads = [0, 0, 0, 0]
        return self.node("MaxPool", [x], base, kernel_shape=list(layer.kernel_size),
                         strides=list(layer.stride), pads=pads,
                         dilations=list(layer.dilation), ceil_mode=ceil)

    def avgpool(self, layer, x, shape, out_shape, base):
        pads, (ph, pw) = _pool_pads(layer, shape, out_shape), layer.padding
        if layer.divisor_override is not None:
            # every window's sum over the divisor: zero-pad to the windows' whole extent,
            # average full windows (sum / FH*FW), then times FH*FW / divisor
            (fh, fw), area = layer.kernel_size, layer.kernel_size[0] * layer.kernel_size[1]
            if any(pads):
                x = self.node("Pad", [x, self.const(f"{base}.pads", [0, 0, *pads[:2], 0, 0,
                                                                      *pads[2:]], np.int64)],
                              f"{base}.pad")
            mean = self.node("AveragePool", [x], f"{base}.mean", kernel_shape=[fh, fw],
                             strides=list(layer.stride))
            return self.node("Mul", [mean, self.const(
                f"{base}.scale", area / layer.divisor_override)], base)
        include = layer.count_include_pad
        if include and pads[2:] != [ph, pw]:
            # a ceil-mode window past the padded input: PyTorch divides by its size inside
            # the padded input, so pad with zeros first and count only what is inside
            x = self.node("Pad", [x, self.const(f"{base}.pads", [0, 0, ph, pw, 0, 0, ph, pw],
                                                np.int64)], f"{base}.pad")
            pads, include = [0, 0, pads[2] - ph, pads[3] - pw], False
        return self.node("AveragePool", [x], base, kernel_shape=list(layer.kernel_size),
                         strides=list(layer.stride), pads=pads,
                         count_include_pad=int(include))

    def lppool(self, layer, x, shape, out_shape, base):
        p, (fh, fw) = layer.norm_type, layer.kernel_size
        pads = _pool_pads(layer, shape, out_shape)
        if p == int(p) and int(p) % 2 == 0 and not any(pads):
            return self.node("LpPool", [x], base, kernel_shape=[fh, fw],
                             strides=list(layer.stride), p=int(p))
        # PyTorch's formula: (FH*FW * avgpool(x^p))^(1/p), the mean over the inside part
        xp = self.node("Pow", [x, self.const(f"{base}.p", p)], f"{base}.pow")
        mean = self.node("AveragePool", [xp], f"{base}.mean", kernel_shape=[fh, fw],
                         strides=list(layer.stride), pads=pads, count_include_pad=0)
        total = self.node("Mul", [mean, self.const(f"{base}.area", fh * fw)], f"{base}.sum")
        return self.node("Pow", [total, self.const(f"{base}.inv_p", 1 / p)], base)

    def adaptive_avgpool(self, layer, x, shape, out_shape, base):
        (oh, ow), (h, w) = out_shape[1:], shape[1:]         # None sizes: the input's
        if (oh, ow) == (1, 1):
            return self.node("GlobalAveragePool", [x], base)
        if h % oh == 0 and w % ow == 0:     # equal windows side by side
            kernel = [h // oh, w // ow]
            return self.node("AveragePool", [x], base, kernel_shape=kernel, strides=kernel)
        # windows of unequal sizes, overlapping: rows @ (x @ cols.T), as convnet computes
        # it, with the (OH, H) and (OW, W) averaging matrices as constants
        cols = self.const(f"{base}.cols", averaging_matrix(w, ow).T)      # (W, OW)
        rows = self.const(f"{base}.rows", averaging_matrix(h, oh))        # (OH, H)
        x = self.node("MatMul", [x, cols], f"{base}.over_w")             # (N, C, H, OW)
        return self.node("MatMul", [rows, x], base)                      # (N, C, OH, OW)

    def adaptive_maxpool(self, layer, x, shape, out_shape, base):
        (oh, ow), (h, w) = out_shape[1:], shape[1:]
        if (oh, ow) == (1, 1):
            return self.node("GlobalMaxPool", [x], base)
        if h % oh or w % ow:
            raise ValueError(f"export_onnx: layer {layer.where}: an adaptive max pool "
                             f"exports where its output divides the input (equal windows, "
                             f"one MaxPool), got {w}x{h} to {ow}x{oh} (W x H)")
        kernel = [h // oh, w // ow]
        return self.node("MaxPool", [x], base, kernel_shape=kernel, strides=kernel)

    def activation(self, layer, x, shape, out_shape, base):
        if isinstance(layer, LeakyReLU):
            return self.node("LeakyRelu", [x], base, alpha=layer.negative_slope)
        if isinstance(layer, ReLU6):
            bounds = [self.const(f"{base}.{end}", value) for end, value in (("min", 0),
                                                                           ("max", 6))]
            return self.node("Clip", [x, *bounds], base)
        op = {ReLU: "Relu", Tanh: "Tanh", Sigmoid: "Sigmoid"}[type(layer)]
        return self.node(op, [x], base)

    def linear(self, layer, x, shape, out_shape, base):
        if len(shape) > 1:   # (N, *, in_features): Gemm takes 2-D only; x @ W.T (+ b)
            weight_t = self.const(f"{base}.weight_t", layer.params["weight"].T)
            if "bias" not in layer.params:
                return self.node("MatMul", [x, weight_t], base)
            out = self.node("MatMul", [x, weight_t], f"{base}.matmul")
            return self.node("Add", [out, self.const(f"{base}.bias", layer.params["bias"])],
                             base)
        inputs = [x, self.const(f"{base}.weight", layer.params["weight"])]
        if "bias" in layer.params:
            inputs.append(self.const(f"{base}.bias", layer.params["bias"]))
        return self.node("Gemm", inputs, base, transB=1)

    def flatten(self, layer, x, shape, out_shape, base):
        start, end = layer.axes(shape, per_sample=True)
        if end == len(shape):                           # to the last axis
            if start == 1:
                return self.node("Flatten", [x], base, axis=1)
            # keep N and the axes before start (0 copies a size), merge the rest (-1)
            target = [0] * start + [-1]
        else:                                           # N, then the per-sample shape
            target = [0, *out_shape]
        return self.node("Reshape", [x, self.const(f"{base}.shape", target, np.int64)],
                         base)

    def batchnorm(self, layer, x, shape, out_shape, base):
        if not layer.track_running_stats:
            raise ValueError(f"export_onnx: layer {layer.where} has no running statistics "
                             "(track_running_stats=False), so inference uses batch "
                             "statistics, which ONNX's BatchNormalization cannot compute")
        d, name = layer.num_features, base
        scale = (self.const(f"{name}.weight", layer.params["weight"]) if layer.affine
                 else self.const(f"{name}.ones", np.ones(d)))
        bias = (self.const(f"{name}.bias", layer.params["bias"]) if layer.affine
                else self.const(f"{name}.zeros", np.zeros(d)))
        mean = self.const(f"{name}.running_mean", layer.buffers["running_mean"])
        var = self.const(f"{name}.running_var", layer.buffers["running_var"])
        extra = {} if layer.momentum is None else {"momentum": 1 - layer.momentum}  # ONNX's
        return self.node("BatchNormalization", [x, scale, bias, mean, var], base,
                         epsilon=layer.eps, **extra)

    def lrn(self, layer, x, shape, out_shape, base):
        n = layer.size
        if n % 2:   # odd n: ONNX's window [c - (n-1)/2, c + (n-1)/2] is PyTorch's
            return self.node("LRN", [x], base, size=n, alpha=layer.alpha, beta=layer.beta,
                             bias=layer.k)
        # even n: mean of squares over channels [c - n//2, c + (n-1)//2], zeros outside,
        # as a 3-D average pool over (C, H, W) of x^2 with one axis added
        axis = self.const(f"{base}.axis", [1], np.int64)
        sq = self.node("Mul", [x, x], f"{base}.square")
        sq = self.node("Unsqueeze", [sq, axis], f"{base}.unsqueeze")         # (N, 1, C, H, W)
        mean = self.node("AveragePool", [sq], f"{base}.mean", kernel_shape=[n, 1, 1],
                         pads=[n // 2, 0, 0, (n - 1) // 2, 0, 0], count_include_pad=1)
        mean = self.node("Squeeze", [mean, axis], f"{base}.squeeze")        # (N, C, H, W)
        denom = self.node("Mul", [mean, self.const(f"{base}.alpha", layer.alpha)],
                          f"{base}.scaled")
        denom = self.node("Add", [denom, self.const(f"{base}.k", layer.k)], f"{base}.denom")
        denom = self.node("Pow", [denom, self.const(f"{base}.beta", layer.beta)],
                          f"{base}.power")
        return self.node("Div", [x, denom], base)

    def identity(self, layer, x, shape, out_shape, base):
        return self.node("Identity", [x], base)


def _pool_pads(layer, shape, out_shape):
    """ONNX pads [top, left, bottom, right] that give the layer's (OH, OW) by flooring.

    Ceil mode and fit="floor" are folded into the bottom/right pads, so the ONNX op runs
    with ceil_mode=0 and gives exactly PyTorch's sizes (its rule that the last window must
    start inside the input or the left padding is not in every runtime's ceil mode).
    """
    begin, end = list(layer.padding), []
    for size, out, f, s, d, p in zip(shape[1:], out_shape[1:], layer.kernel_size,
                                     layer.stride, layer.dilation, layer.padding):
        extent = d * (f - 1) + 1
        end.append(max(p, (out - 1) * s + extent - size - p))   # floor(...) + 1 == out
    return begin + end


# PyTorch's Conv2d padding modes other than zeros, as the ONNX Pad modes that fill alike
PAD_MODES = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def averaging_matrix(size, out):
    """AdaptiveAvgPool2d's (out, size) float32 matrix along one axis: row i is 1/len
    over window i (PyTorch's [floor(i*size/out), ceil((i+1)*size/out))), 0 elsewhere."""
    start, end = adaptive_windows(size, out)
    pos = np.arange(size)
    inside = (pos >= start[:, None]) & (pos < end[:, None])
    return (inside / (end - start)[:, None]).astype(np.float32)


def _onnx_ceil_sizes(layer, shape):
    """(OH, OW) of ONNX's ceil mode with the layer's pads on both sides, by the spec's
    formula ceil((size + 2P - extent) / S) + 1, without PyTorch's rule that the last
    window starts inside (not every runtime has it): where it agrees with the layer's
    sizes, every runtime gives them."""
    return [-(-(size + 2 * p - d * (f - 1) - 1) // s) + 1 for size, f, s, d, p in zip(
        shape[1:], layer.kernel_size, layer.stride, layer.dilation, layer.padding)]


_LEAVES = {
    Conv2d: _Graph.conv, LocallyConnected2d: _Graph.locally_connected,
    MaxPool2d: _Graph.maxpool, AvgPool2d: _Graph.avgpool,
    LPPool2d: _Graph.lppool, AdaptiveAvgPool2d: _Graph.adaptive_avgpool,
    AdaptiveMaxPool2d: _Graph.adaptive_maxpool, Dropout2d: _Graph.identity,
    ReLU: _Graph.activation, ReLU6: _Graph.activation, LeakyReLU: _Graph.activation,
    Tanh: _Graph.activation, Sigmoid: _Graph.activation, Linear: _Graph.linear,
    Flatten: _Graph.flatten,
    BatchNorm2d: _Graph.batchnorm, BatchNorm1d: _Graph.batchnorm,
    LocalResponseNorm: _Graph.lrn, Dropout: _Graph.identity, Identity: _Graph.identity,
}
