"""ONNX export: the exported graph, run in onnxruntime, computes what model.infer computes."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from convnet.io.onnx_export import export_onnx
from convnet.layers.activation import ReLU
from convnet.layers.conv import Conv2d, LocallyConnected2d
from convnet.layers.norm import BatchNorm1d, BatchNorm2d, LocalResponseNorm
from convnet.layers.pool import AdaptiveAvgPool2d, AvgPool2d, LPPool2d, MaxPool2d
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
    """Max, average, LP pooling and LRN with one random setting (F, S, P, ceil mode,
    count_include_pad, p, LRN size and constants), and an input H, W they fit."""
    f = int(rng.integers(1, 5))
    s = int(rng.integers(1, 4))
    p = int(rng.integers(0, f // 2 + 1))
    ceil = bool(rng.integers(2))
    h, w = (int(v) for v in rng.integers(f + 1, 12, size=2))
    layers = [MaxPool2d(f, s, p, ceil_mode=ceil, fit="floor"),
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


def test_adaptive_pool_even_division_and_error(tmp_path):
    model = Sequential(Conv2d(2, 4, 3, padding=1, rng=np.random.default_rng(0)),
                       AdaptiveAvgPool2d((2, 3)))
    proto = check_export(model, tmp_path, (2, 8, 9), batches=(1, 3))
    assert "AveragePool" in {node.op_type for node in proto.graph.node}
    with pytest.raises(ValueError, match=r"layer 1 AdaptiveAvgPool2d.*divide"):
        export_onnx(model, tmp_path / "bad.onnx", (2, 7, 9))


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
    model = Sequential(Conv2d(1, 2, 3, rng=np.random.default_rng(0)),
                       LocallyConnected2d(2, 2, 6, 3, rng=np.random.default_rng(1)))
    with pytest.raises(ValueError, match=r"layer 1 .*LocallyConnected2d"):
        export_onnx(model, tmp_path / "lc.onnx", (1, 8, 8))
    assert not (tmp_path / "lc.onnx").exists()


def test_input_shape_required_and_opset_checked(tmp_path):
    model = Sequential(ReLU())
    with pytest.raises(ValueError, match="input_shape is required"):
        export_onnx(model, tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="opset"):
        export_onnx(model, tmp_path / "m.onnx", (1, 4, 4), opset=9)


@pytest.mark.parametrize("include", [True, False])
def test_avgpool_ceil_window_past_padding(tmp_path, include):
    """6x6, F=3, S=2, P=1, ceil: the last window reaches past the padded input; PyTorch
    divides it by its size inside the padded input (or by its real inputs)."""
    model = Sequential(AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=include))
    proto = check_export(model, tmp_path, (2, 6, 6), batches=(1, 3))
    assert model.output_shape((2, 6, 6)) == (2, 4, 4)
    assert ("Pad" in {node.op_type for node in proto.graph.node}) == include
