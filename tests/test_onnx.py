"""ONNX export: the exported graph, run in onnxruntime, computes what model.infer computes."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from convnet.io.onnx_export import export_onnx
from convnet.layers.activation import ReLU
from convnet.layers.base import Layer
from convnet.layers.conv import Conv2d, LocallyConnected2d
from convnet.layers.dropout import Dropout2d
from convnet.layers.norm import BatchNorm1d, BatchNorm2d, LocalResponseNorm
from convnet.layers.pool import (
    AdaptiveAvgPool2d,
    AdaptiveMaxPool2d,
    AvgPool2d,
    LPPool2d,
    MaxPool2d,
)
from convnet.models.containers import Sequential
from convnet.models.notation import from_notation
from convnet.zoo.densenet import densenet_bc_100
from convnet.zoo.googlenet import AuxClassifier, googlenet_torchvision
from convnet.zoo.lenet import lenet5
from convnet.zoo.resnet import resnet18
from tests.utils import rel_error

# Every op of the exporter in one notation model: dilated, grouped and padded CONV, the
# three pools with ceil mode, BN on volumes and vectors, LRN, DROPOUT, FC, the activations.
EVERY_OP = ("INPUT 19x19x3 -> CONV 8 F3 P2 D2 -> BN -> RELU -> CONV 8 F3 G2 P1 -> LRN 5 "
            "-> POOL F3 S2 ceil -> LEAKYRELU 0.2 -> CONV 6 F1 -> AVGPOOL F3 S2 P1 ceil "
            "-> TANH -> L2POOL F2 S2 ceil -> LRN 4 2e-2 0.6 1.5 -> SIGMOID -> CONV 12 F1 "
            "-> RELU6 -> GAP -> DROPOUT 0.3 -> FC 16 -> BN -> RELU -> FC 10")


def randomize_bn(model, rng):
    """Non-trivial running statistics and affine parameters, so BN is not the identity."""
    for _, layer in model.named_layers():
        if isinstance(layer, (BatchNorm1d, BatchNorm2d)):
            d = layer.num_features
            layer.buffers["running_mean"][...] = rng.normal(0, 0.5, d)
            layer.buffers["running_var"][...] = rng.uniform(0.5, 2.0, d)
            layer.params["weight"][...] = rng.uniform(0.5, 1.5, d)
            layer.params["bias"][...] = rng.normal(0, 0.2, d)
    return model.eval()


def run_onnx(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def check_export(model, tmp_path, input_shape, batches=(2,), seed=0):
    """Export once, run every batch size in onnxruntime, compare with model.infer."""
    rng = np.random.default_rng(seed)
    path = tmp_path / "model.onnx"
    proto = export_onnx(model, path, input_shape)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "N"                     # the batch axis is dynamic
    for n in batches:
        x = rng.standard_normal((n, *input_shape)).astype(np.float32)
        expected = model.infer(x)
        got = run_onnx(path, x)
        assert got.shape == expected.shape
        assert rel_error(got, expected) < 1e-4, (n, rel_error(got, expected))
    return proto


def test_every_op(tmp_path):
    model = randomize_bn(from_notation(EVERY_OP, rng=np.random.default_rng(1)),
                         np.random.default_rng(2))
    proto = check_export(model, tmp_path, (3, 19, 19), batches=(1, 3))
    ops = {node.op_type for node in proto.graph.node}
    assert {"Conv", "BatchNormalization", "Relu", "LRN", "MaxPool", "LeakyRelu",
            "AveragePool", "Tanh", "Sigmoid", "Clip", "GlobalAveragePool", "Gemm",
            "Flatten"} <= ops
    # initializers carry the model's dotted state-dict keys
    names = {init.name for init in proto.graph.initializer}
    assert {"0.weight", "0.bias", "1.running_mean", "1.running_var"} <= names
    weight = next(i for i in proto.graph.initializer if i.name == "0.weight")
    assert np.array_equal(onnx.numpy_helper.to_array(weight), model["0"].params["weight"])


def random_pool_layers(rng, p_choices):
    """Max, average, LP pooling and LRN with one random setting (F, S, P, max pooling's
    dilation, ceil mode, count_include_pad, p, LRN size and constants), and an input H, W
    they fit."""
    f = int(rng.integers(1, 5))
    s = int(rng.integers(1, 5))
    p = int(rng.integers(0, f // 2 + 1))
    d = int(rng.integers(1, 4))
    ceil = bool(rng.integers(2))
    h, w = (int(v) for v in rng.integers(d * (f - 1) + 2, 14, size=2))
    layers = [MaxPool2d(f, s, p, d, ceil_mode=ceil, fit="floor"),
              AvgPool2d(f, s, p, ceil_mode=ceil, fit="floor",
                        count_include_pad=bool(rng.integers(2))),
              LPPool2d(float(rng.choice(p_choices)), f, s, ceil_mode=ceil, fit="floor"),
              LocalResponseNorm(int(rng.integers(1, 7)), float(rng.uniform(1e-3, 0.5)),
                                float(rng.uniform(0.3, 1.0)), float(rng.uniform(1, 2)))]
    return layers, (h, w)


@pytest.mark.parametrize("seed", range(8))
def test_pool_and_lrn_settings(tmp_path, seed):
    """Random pooling/LRN settings (ceil mode, padding, odd and even LRN sizes, p)."""
    rng = np.random.default_rng(100 + seed)
    for case in range(8):
        layers, (h, w) = random_pool_layers(rng, p_choices=(1.5, 2.0, 3.0, 4.0))
        for layer in layers:
            model = Sequential(ReLU(), layer)     # x >= 0 keeps x^p real for every p
            check_export(model, tmp_path, (int(rng.integers(1, 6)), h, w), seed=case)


@pytest.mark.parametrize("layer, shape", [
    (MaxPool2d(2, 4, 0, 2, ceil_mode=True, fit="floor"), (1, 13, 10)),
    (MaxPool2d(2, 2, 1, 2, ceil_mode=True), (1, 8, 9)),
    (MaxPool2d(3, 3, 1, 3, ceil_mode=True, fit="floor"), (2, 12, 7)),
    # ceil mode hanging past on one axis, PyTorch's rule dropping a window on the other:
    # an explicit Pad of -inf (the export had stopped on an AssertionError)
    (MaxPool2d(3, 6, 1, 2, ceil_mode=True, fit="floor"), (1, 13, 16)),
    (MaxPool2d(2, 5, 1, 3, ceil_mode=True, fit="floor"), (1, 3, 11)),
])
def test_dilated_ceil_mode_max_pool_runs_in_onnxruntime(tmp_path, layer, shape):
    """A dilated window hanging F or more past the input: onnxruntime refused the pads
    ("Pad should be smaller than kernel"); ceil_mode=1, or a Pad of -inf where ONNX's ceil
    mode gives other sizes, gives torch's values exactly."""
    model = Sequential(layer)
    proto = check_export(model, tmp_path, shape, batches=(1, 2))
    pool = next(node for node in proto.graph.node if node.op_type == "MaxPool")
    ops = [node.op_type for node in proto.graph.node]
    assert ({a.name: a.i for a in pool.attribute}["ceil_mode"] == 1) != ("Pad" in ops)
    x = np.random.default_rng(0).standard_normal((2, *shape)).astype(np.float32)
    expected = torch.nn.functional.max_pool2d(torch.from_numpy(x), layer.kernel_size,
                                              layer.stride, layer.padding, layer.dilation,
                                              ceil_mode=True).numpy()
    assert np.array_equal(run_onnx(tmp_path / "model.onnx", x), expected)


def test_random_dilated_max_pools_agree_with_torch_in_onnxruntime(tmp_path):
    rng = np.random.default_rng(7)
    for _ in range(120):
        f, d = (int(v) for v in rng.integers(1, 5, size=2))
        s = int(rng.integers(1, 8))
        p, ceil = int(rng.integers(0, f // 2 + 1)), bool(rng.integers(2))
        h, w = (int(v) for v in rng.integers(d * (f - 1) + 1, 16, size=2))
        layer = MaxPool2d(f, s, p, d, ceil_mode=ceil, fit="floor")
        export_onnx(Sequential(layer), tmp_path / "m.onnx", (2, h, w))
        x = rng.standard_normal((1, 2, h, w)).astype(np.float32)
        expected = torch.nn.functional.max_pool2d(torch.from_numpy(x), f, s, p, d,
                                                  ceil_mode=ceil).numpy()
        assert np.array_equal(run_onnx(tmp_path / "m.onnx", x), expected), (layer, h, w)


def test_adaptive_pool_even_division(tmp_path):
    model = Sequential(Conv2d(2, 4, 3, padding=1, rng=np.random.default_rng(0)),
                       AdaptiveAvgPool2d((2, 3)))
    proto = check_export(model, tmp_path, (2, 8, 9), batches=(1, 3))
    assert "AveragePool" in {node.op_type for node in proto.graph.node}


@pytest.mark.parametrize("out, size", [((2, 3), (7, 9)), ((7, 7), (1, 1)), ((3, 5), (5, 3)),
                                       ((4, 1), (10, 6)), ((5, 2), (13, 4))])
def test_adaptive_pool_to_any_size_agrees_with_torch(tmp_path, out, size):
    """An output size that does not divide the input (unequal, overlapping windows; more
    outputs than inputs): onnxruntime gives torch's adaptive_avg_pool2d."""
    model = Sequential(AdaptiveAvgPool2d(out))
    proto = check_export(model, tmp_path, (3, *size), batches=(1, 2))
    assert "MatMul" in {node.op_type for node in proto.graph.node}
    x = np.random.default_rng(1).standard_normal((2, 3, *size)).astype(np.float32)
    expected = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x), out).numpy()
    assert rel_error(run_onnx(tmp_path / "model.onnx", x), expected) < 1e-6


@pytest.mark.parametrize("layer, size", [
    (AvgPool2d(2, divisor_override=3), (8, 6)),
    (AvgPool2d(3, 2, 1, ceil_mode=True, divisor_override=5, fit="floor"), (9, 8)),
    (AvgPool2d(3, 2, 1, count_include_pad=False, divisor_override=2, fit="floor"), (7, 7)),
    (AdaptiveMaxPool2d(1), (5, 7)), (AdaptiveMaxPool2d((2, 4)), (8, 8)),
    (Dropout2d(0.5), (4, 4))])
def test_divisor_override_adaptive_max_pool_and_dropout2d_agree_with_torch(tmp_path, layer,
                                                                         size):
    model = Sequential(layer).eval()
    check_export(model, tmp_path, (3, *size), batches=(1, 2))
    x = np.random.default_rng(2).standard_normal((2, 3, *size)).astype(np.float32)
    t = torch.from_numpy(x)
    if isinstance(layer, AvgPool2d):
        expected = torch.nn.functional.avg_pool2d(
            t, layer.kernel_size, layer.stride, layer.padding, layer.ceil_mode,
            layer.count_include_pad, layer.divisor_override)
    elif isinstance(layer, AdaptiveMaxPool2d):
        expected = torch.nn.functional.adaptive_max_pool2d(t, layer.output_size)
    else:
        expected = t
    assert rel_error(run_onnx(tmp_path / "model.onnx", x), expected.numpy()) < 1e-6


def test_an_adaptive_max_pool_that_does_not_divide_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"exports where its output divides the input \(equal "
                                         r"windows, one MaxPool\), got 7x5 to 2x2"):
        export_onnx(Sequential(AdaptiveMaxPool2d(2)), tmp_path / "m.onnx", (1, 5, 7))


def test_vgg11_bn_for_small_images_exports(tmp_path):
    """vgg11_bn at 32x32 pools a 1x1 volume to 7x7 (AdaptiveAvgPool2d(7)): export refused
    it; it runs in onnxruntime as convnet computes it."""
    from convnet.zoo import get_model

    model = randomize_bn(get_model("vgg11_bn", num_classes=10, input_size=32,
                                   rng=np.random.default_rng(0)), np.random.default_rng(1))
    check_export(model, tmp_path, (3, 32, 32), batches=(2,))


def test_lenet5(tmp_path):
    model = lenet5(rng=np.random.default_rng(0)).eval()
    check_export(model, tmp_path, model.input_shape, batches=(1, 3))


def test_resnet18(tmp_path):
    model = randomize_bn(resnet18(num_classes=10, input_size=32,
                                  rng=np.random.default_rng(0)), np.random.default_rng(1))
    proto = check_export(model, tmp_path, (3, 32, 32), batches=(1, 3))
    assert "Add" in {node.op_type for node in proto.graph.node}


def test_densenet_bc_100(tmp_path):
    model = randomize_bn(densenet_bc_100(input_size=32, rng=np.random.default_rng(0)),
                         np.random.default_rng(1))
    proto = check_export(model, tmp_path, (3, 32, 32), batches=(2,))
    assert "Concat" in {node.op_type for node in proto.graph.node}


def test_googlenet_torchvision_with_aux(tmp_path):
    model = randomize_bn(googlenet_torchvision(num_classes=10, input_size=64, aux_logits=True,
                                               rng=np.random.default_rng(0)),
                         np.random.default_rng(1))
    assert any(isinstance(layer, AuxClassifier) for layer in _all_layers(model))
    check_export(model, tmp_path, (3, 64, 64), batches=(1, 2))


def _all_layers(model):
    for layer in model:
        yield layer
        if isinstance(layer, Sequential):
            yield from _all_layers(layer)


def test_unsupported_layer_is_named(tmp_path):
    class Square(Layer):
        def forward(self, x):
            return x * x

    model = Sequential(Conv2d(1, 2, 3, rng=np.random.default_rng(0)), Square())
    with pytest.raises(ValueError, match=r"layer 1 Square\(\) of type Square has no ONNX "
                                         r"export; supported: .*LocallyConnected2d"):
        export_onnx(model, tmp_path / "sq.onnx", (1, 8, 8))
    assert not (tmp_path / "sq.onnx").exists()


@pytest.mark.parametrize("seed", range(6))
def test_locally_connected_agrees_with_torch_unfold(tmp_path, seed):
    """LocallyConnected2d (export refused it): im2col as a one-hot Conv, one MatMul per
    position; onnxruntime gives convnet's numbers and torch's unfold-then-multiply."""
    rng = np.random.default_rng(seed)
    f, s = (int(v) for v in rng.integers(1, 4, size=2))
    p = int(rng.integers(0, f))
    c, k = (int(v) for v in rng.integers(1, 4, size=2))
    h, w = (int(v) for v in rng.integers(f, 10, size=2))
    layer = LocallyConnected2d(c, k, (h, w), f, s, p, bias=bool(seed % 2), fit="floor",
                               rng=rng)
    model = Sequential(Conv2d(c, c, 1, rng=rng), layer)
    check_export(model, tmp_path, (c, h, w), batches=(1, 3))
    x = rng.standard_normal((3, c, h, w)).astype(np.float32)
    cols = torch.nn.functional.unfold(torch.from_numpy(model[0].infer(x)), f, padding=p,
                                      stride=s)                             # (N, CFF, L)
    oh, ow, *_ = layer.params["weight"].shape
    weight = torch.from_numpy(layer.params["weight"].reshape(oh * ow, k, -1))
    expected = torch.einsum("lkj,njl->nkl", weight, cols).reshape(3, k, oh, ow).numpy()
    if "bias" in layer.params:
        expected = expected + layer.params["bias"]
    assert rel_error(run_onnx(tmp_path / "model.onnx", x), expected) < 1e-5


def test_input_shape_required_and_opset_checked(tmp_path):
    model = Sequential(ReLU())
    with pytest.raises(ValueError, match="input_shape is required"):
        export_onnx(model, tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="opset"):
        export_onnx(model, tmp_path / "m.onnx", (1, 4, 4), opset=9)
    newest = onnx.defs.onnx_opset_version()     # (onnx's own error had named neither)
    with pytest.raises(ValueError, match=f"opset must be an int from 13 to {newest}"):
        export_onnx(model, tmp_path / "m.onnx", (1, 4, 4), opset=newest + 1)
    for shape in ((1.5, 4, 4), "1x4x4", 16, (True, 4, 4), ()):   # 1.5 had become 1
        with pytest.raises(ValueError, match="input_shape must be positive int sizes"):
            export_onnx(model, tmp_path / "m.onnx", shape)
    assert not (tmp_path / "m.onnx").exists()
    export_onnx(model, tmp_path / "m.onnx", [1, np.int64(4), 4])


@pytest.mark.parametrize("include", [True, False])
def test_avgpool_ceil_window_past_padding(tmp_path, include):
    """6x6, F=3, S=2, P=1, ceil: the last window reaches past the padded input; PyTorch
    divides it by its size inside the padded input (or by its real inputs)."""
    model = Sequential(AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=include))
    proto = check_export(model, tmp_path, (2, 6, 6), batches=(1, 3))
    assert model.output_shape((2, 6, 6)) == (2, 4, 4)
    assert ("Pad" in {node.op_type for node in proto.graph.node}) == include
