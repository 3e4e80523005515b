"""ONNX import: export_onnx round trips, torch.onnx.export files, hand-made graphs, errors
and external data, each compared with the model it came from or with onnxruntime."""

import contextlib
import io
import os
import time
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import convnet.io.onnx_import as onnx_import
from convnet.io import export_onnx, load_model, load_onnx
from convnet.layers.activation import ReLU, ReLU6
from convnet.layers.conv import Conv2d
from convnet.layers.linear import Flatten, Linear
from convnet.layers.norm import BatchNorm1d, BatchNorm2d, LocalResponseNorm
from convnet.layers.pool import AdaptiveAvgPool2d, AdaptiveMaxPool2d, AvgPool2d, LPPool2d
from convnet.models.containers import Concat, DenseBlock, Residual, Sequential
from convnet.models.notation import from_notation
from convnet.zoo.densenet import densenet_bc_100
from convnet.zoo.googlenet import googlenet_torchvision
from convnet.zoo.lenet import lenet5
from convnet.zoo.resnet import resnet18
from tests.test_onnx import EVERY_OP, random_pool_layers, randomize_bn
from tests.utils import rel_error


def round_trip(model, tmp_path, input_shape, batches=(2,), seed=0):
    """export_onnx then load_onnx; the import computes what the model computes."""
    path = tmp_path / "model.onnx"
    export_onnx(model, path, input_shape)
    imported = load_onnx(path)
    assert imported.input_shape == tuple(input_shape)
    assert not imported.training
    rng = np.random.default_rng(seed)
    for n in batches:
        x = rng.standard_normal((n, *input_shape)).astype(np.float32)
        expected, got = model.infer(x), imported.infer(x)
        assert got.shape == expected.shape and got.dtype == np.float32
        assert rel_error(got, expected) < 1e-5, (n, rel_error(got, expected))
    return imported


def same_keys(imported, model, skip=()):
    """The state-dict keys come back (export_onnx names initializers by them), and the
    original weights load into the import strictly."""
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(skip)}
    assert list(imported.state_dict()) == list(state)
    imported.load_state_dict(state, strict=True)


def test_every_op(tmp_path):
    model = randomize_bn(from_notation(EVERY_OP, rng=np.random.default_rng(1)),
                         np.random.default_rng(2))
    imported = round_trip(model, tmp_path, (3, 19, 19), batches=(1, 3))
    same_keys(imported, model)
    types = [type(layer) for _, layer in imported.named_layers()]
    # even-size LRN, ceil-mode L2 pooling and the padded ceil AVGPOOL come back as layers
    assert types.count(LocalResponseNorm) == 2 and LPPool2d in types and AvgPool2d in types
    assert BatchNorm1d in types and BatchNorm2d in types
    lrn4 = [layer for _, layer in imported.named_layers()
            if isinstance(layer, LocalResponseNorm) and layer.size == 4][0]
    assert (lrn4.alpha, lrn4.beta, lrn4.k) == (2e-2, 0.6, 1.5)      # float32 read back exactly


@pytest.mark.parametrize("seed", range(3))
def test_pool_and_lrn_settings(tmp_path, seed):
    """Random ceil modes, paddings, strides, p and LRN sizes: the exporter's asymmetric
    pads and subgraphs are read back into the same layers' numbers."""
    rng = np.random.default_rng(200 + seed)
    for case in range(6):
        layers, (h, w) = random_pool_layers(rng, p_choices=(1.5, 2.0, 3.0))
        for layer in layers:
            model = Sequential(ReLU(), layer)
            imported = round_trip(model, tmp_path, (int(rng.integers(1, 6)), h, w), seed=case)
            assert type(imported["1"]) is type(layer)


@pytest.mark.parametrize("out, size", [((2, 3), (7, 9)), ((7, 7), (1, 1)), ((3, 5), (5, 3))])
def test_adaptive_pool_to_any_size_comes_back(tmp_path, out, size):
    """export_onnx's MatMuls by AdaptiveAvgPool2d's averaging matrices: the same layer."""
    model = Sequential(Conv2d(2, 3, 1, rng=np.random.default_rng(0)), AdaptiveAvgPool2d(out),
                       Flatten(), Linear(3 * out[0] * out[1], 4, rng=np.random.default_rng(1)))
    imported = round_trip(model, tmp_path, (2, *size), batches=(1, 3))
    assert repr(imported["1"]) == repr(model[1])
    same_keys(imported, model)


def test_global_max_pooling_comes_back_and_a_divisor_override_is_named(tmp_path):
    """GlobalMaxPool (AdaptiveMaxPool2d(1)'s export) had been refused on import; an
    AvgPool2d with a divisor_override (Pad, AveragePool, Mul) is refused by name."""
    model = Sequential(Conv2d(2, 3, 1, rng=np.random.default_rng(0)), AdaptiveMaxPool2d(1),
                       Flatten(), Linear(3, 4, rng=np.random.default_rng(1)))
    imported = round_trip(model, tmp_path, (2, 5, 7), batches=(1, 3))
    assert repr(imported["1"]) == repr(model[1])
    export_onnx(Sequential(AvgPool2d(2, divisor_override=3)), tmp_path / "d.onnx", (1, 4, 4))
    with pytest.raises(ValueError, match=r"AvgPool2d \(not with a divisor_override\)"):
        load_onnx(tmp_path / "d.onnx")


def test_lenet5(tmp_path):
    model = lenet5(rng=np.random.default_rng(0)).eval()
    imported = round_trip(model, tmp_path, model.input_shape, batches=(1, 3))
    same_keys(imported, model)
    assert list(dict(imported.named_children())) == ["features", "flatten", "classifier"]
    with pytest.raises(ValueError, match=r"input_shape \(1, 28, 28\) contradicts the graph's "
                                         r"input 'input' of per-sample shape \(1, 32, 32\)"):
        load_onnx(tmp_path / "model.onnx", input_shape=(1, 28, 28))


def test_resnet18_blocks_come_back_as_residuals(tmp_path):
    model = randomize_bn(resnet18(num_classes=10, input_size=32,
                                  rng=np.random.default_rng(0)), np.random.default_rng(1))
    imported = round_trip(model, tmp_path, (3, 32, 32), batches=(1, 3))
    same_keys(imported, model)
    block = imported["layer2"]["0"]
    assert isinstance(block, Residual)
    assert block.body_keys == ["conv1", "bn1", "relu", "conv2", "bn2"]
    assert block.shortcut_key == "downsample" and block.post_key == "post"
    assert imported["layer1"]["0"].shortcut_key is None          # the identity shortcut


def test_densenet_bc_100_dense_blocks(tmp_path):
    model = randomize_bn(densenet_bc_100(input_size=32, rng=np.random.default_rng(0)),
                         np.random.default_rng(1))
    imported = round_trip(model, tmp_path, (3, 32, 32))
    same_keys(imported, model)
    block = imported["features"]["denseblock1"]
    assert isinstance(block, DenseBlock) and len(block) == 16


def test_googlenet_torchvision(tmp_path):
    """Inception modules come back as Concat; the aux heads (identity in eval) do not."""
    model = randomize_bn(googlenet_torchvision(num_classes=10, input_size=64, aux_logits=True,
                                               rng=np.random.default_rng(0)),
                         np.random.default_rng(1))
    imported = round_trip(model, tmp_path, (3, 64, 64), batches=(1,))
    same_keys(imported, model, skip=("aux1.", "aux2."))
    assert isinstance(imported["inception3a"], Concat)
    assert list(dict(imported["inception3a"].named_children())) == [
        f"branch{i}" for i in range(1, 5)]


def test_small_dense_block_model(tmp_path):
    """A DenseBlock whose layers are single CONVs, flat names and all."""
    rng = np.random.default_rng(3)
    block = DenseBlock({f"l{i}": Conv2d(4 + 3 * i, 3, 3, padding=1, rng=rng) for i in range(3)})
    model = Sequential({"stem": Conv2d(2, 4, 1, rng=rng), "dense": block, "relu": ReLU()})
    imported = round_trip(model, tmp_path, (2, 6, 5), batches=(1, 2))
    same_keys(imported, model)
    assert isinstance(imported["dense"], DenseBlock)


def test_dense_blocks_in_a_row_come_back_as_they_were(tmp_path):
    """Two DenseBlocks one after the other had come back as one block named "dense"
    (keys 0.l1.weight as dense.0.l1.weight): the same numbers, but not its own weights."""
    rng = np.random.default_rng(4)
    model = Sequential(DenseBlock({"l1": Conv2d(4, 2, 1, rng=rng)}),
                       DenseBlock({"l1": Conv2d(6, 2, 1, rng=rng)}))
    imported = round_trip(model, tmp_path, (4, 5, 5), batches=(2,))
    same_keys(imported, model)
    assert [type(layer) for layer in imported] == [DenseBlock, DenseBlock]


# -- files written by torch.onnx.export -----------------------------------------------------
class SmallCNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
            torch.nn.MaxPool2d(2), torch.nn.Conv2d(8, 6, 3, stride=2, padding=1, bias=False),
            torch.nn.BatchNorm2d(6), torch.nn.ReLU(), torch.nn.MaxPool2d(3, 2, ceil_mode=True))
        self.classifier = torch.nn.Linear(6 * 2 * 2, 5)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class BasicBlock(torch.nn.Module):
    """torchvision's BasicBlock, with a projection shortcut when the shape changes."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(cout)
        self.relu = torch.nn.ReLU()
        self.conv2 = torch.nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = torch.nn.Sequential(
                torch.nn.Conv2d(cin, cout, 1, stride, bias=False), torch.nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class TinyResNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(8)
        self.relu = torch.nn.ReLU()
        self.layer1 = torch.nn.Sequential(BasicBlock(8, 8, 1), BasicBlock(8, 16, 2))
        self.avgpool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(16, 4)

    def forward(self, x):
        x = self.layer1(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def torch_model(cls, seed=0):
    """A module with random weights and non-trivial running statistics, in eval mode."""
    torch.manual_seed(seed)
    net = cls()
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            with torch.no_grad():
                module.running_mean.normal_(0, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.2)
    return net.eval()


def torch_export(net, path, shape, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(2, *shape),), str(path), dynamo=False,
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "N"}, "y": {0: "N"}}, **kwargs)
    return path


def compare_with_torch(net, model, shape, batches=(1, 3)):
    for n in batches:
        x = torch.randn(n, *shape)
        with torch.no_grad():
            expected = net(x).numpy()
        got = model.infer(x.numpy())
        assert got.shape == expected.shape
        assert np.allclose(got, expected, rtol=1e-5, atol=1e-5), np.abs(got - expected).max()


def torch_export_any(net, path, shape, dynamo):
    """torch.onnx.export by either exporter, with a dynamic batch axis."""
    kwargs = ({"dynamic_shapes": ({0: torch.export.Dim("N")},)} if dynamo else
              {"dynamic_axes": {"x": {0: "N"}}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(2, *shape),), str(path), dynamo=dynamo,
                          input_names=["x"], **kwargs)
    return path


POOLS = {"lp2": lambda: torch.nn.LPPool2d(2, 3, 2),
         "lp3-ceil": lambda: torch.nn.LPPool2d(3, 2, 2, ceil_mode=True),
         "lp1.5-uneven": lambda: torch.nn.LPPool2d(1.5, (2, 3), (1, 2))}


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("pool", list(POOLS))
def test_torchs_lppool2d_is_read_as_one_layer(tmp_path, pool, dynamo):
    """PyTorch writes LPPool2d as Pow -> AveragePool -> Sign * Relu(Abs) -> Mul -> Pow
    (the older exporter's constants as Constant nodes after the first Pow): one
    LPPool2d, torch's numbers."""
    net = torch.nn.Sequential(torch.nn.ReLU(), POOLS[pool]()).eval()
    path = torch_export_any(net, tmp_path / "lp.onnx", (4, 9, 9), dynamo)
    model = load_onnx(path)
    assert [type(layer) for layer in model] == [ReLU, LPPool2d]
    assert model[1].norm_type == net[1].norm_type
    compare_with_torch(net, model, (4, 9, 9))


@pytest.mark.parametrize("size", [1, 4, 5])
def test_torchs_newer_exporters_local_response_norm_is_read(tmp_path, size):
    """dynamo=True writes LocalResponseNorm as x*x -> Reshape (N, 1, C, H, W) -> Pad ->
    AveragePool(n, 1, 1) -> Squeeze -> *alpha -> +k -> ^beta -> x / that."""
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 1),
                              torch.nn.LocalResponseNorm(size, 2e-2, 0.6, 1.5)).eval()
    path = torch_export_any(net, tmp_path / "lrn.onnx", (3, 7, 5), dynamo=True)
    assert "LRN" not in {node.op_type for node in onnx.load(str(path)).graph.node}
    model = load_onnx(path)
    lrn = model[-1]
    assert isinstance(lrn, LocalResponseNorm) and lrn.size == size
    assert (lrn.alpha, lrn.beta, lrn.k) == pytest.approx((2e-2, 0.6, 1.5))
    compare_with_torch(net, model, (3, 7, 5))


def test_torchs_older_exporters_local_response_norm_is_refused_with_the_way_out(tmp_path):
    """The TorchScript exporter computes LRN's pads with If and ConstantOfShape: refused,
    naming the exporter that writes what convnet reads."""
    net = torch.nn.Sequential(torch.nn.LocalResponseNorm(3)).eval()
    path = torch_export_any(net, tmp_path / "lrn.onnx", (4, 5, 5), dynamo=False)
    with pytest.raises(ValueError, match=r"unsupported operator 'Mul'.*torch\.onnx\.export "
                                         r"for LPPool2d and, with dynamo=True, LocalRes"):
        load_onnx(path)


class ViewByProduct(torch.nn.Module):
    """The classic flatten x.view(-1, x.size(1) * x.size(2) * x.size(3))."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.fc = torch.nn.Linear(4 * 6 * 6, 5)

    def forward(self, x):
        x = self.conv(x)
        return self.fc(x.view(-1, x.size(1) * x.size(2) * x.size(3)))


def test_shape_arithmetic_that_multiplies_past_any_size_is_refused(tmp_path):
    """Squarings of a size had reached the Reshape as a number past int64 (NumPy's
    OverflowError, shown as an unexpected error; 26 of them had taken 42 s): a product
    over MAX_VOLUME is refused at its node."""
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("Gather", ["s", "one"], ["c"], name="pick", axis=0),
             helper.make_node("Mul", ["c", "c"], ["c2"], name="square")]
    name = "c2"
    for i in range(8):           # 3**(2**9): far past any size, and quick to make
        nodes.append(helper.make_node("Mul", [name, name], [f"q{i}"], name=f"square{i}"))
        name = f"q{i}"
    nodes += [helper.make_node("Unsqueeze", [name, "axes"], ["u"], name="u"),
              helper.make_node("Concat", ["minus", "u"], ["shape2"], name="cat", axis=0),
              helper.make_node("Reshape", ["x", "shape2"], ["y"], name="flat")]
    ints = {"one": np.array(1, np.int64), "axes": np.array([0], np.int64),
            "minus": np.array([-1], np.int64)}
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in ints.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    path = tmp_path / "mul.onnx"
    onnx.save(proto, str(path))
    started = time.perf_counter()
    with pytest.raises(ValueError, match=r"\(Mul\): multiplies sizes to .*, more than the "
                                         r"268,435,456 values a sample may have"):
        load_onnx(path)
    assert time.perf_counter() - started < 5


def test_a_flatten_by_the_product_of_the_sizes_is_read(tmp_path):
    """The TorchScript exporter with a dynamic batch writes the target shape as Shape ->
    Gather -> Mul -> Concat: refused as an unsupported Mul, it is a flatten."""
    net = torch_model(ViewByProduct)
    path = torch_export(net, tmp_path / "view.onnx", (3, 8, 8), opset_version=17)
    assert "Mul" in {node.op_type for node in onnx.load(str(path)).graph.node}
    compare_with_torch(net, load_onnx(path), (3, 8, 8))


@pytest.mark.parametrize("preserve", [False, True], ids=["bn-folded", "bn-kept"])
def test_torch_small_cnn(tmp_path, preserve):
    """torch folds eval-mode BN into the CONV by default; TrainingMode.PRESERVE keeps the
    BatchNormalization nodes, whose initializers carry the module's state-dict keys."""
    net = torch_model(SmallCNN)
    kwargs = {"training": torch.onnx.TrainingMode.PRESERVE} if preserve else {}
    path = torch_export(net, tmp_path / "cnn.onnx", (3, 16, 16), **kwargs)
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert ("BatchNormalization" in ops) == preserve
    model = load_onnx(path)
    assert model.input_shape == (3, 16, 16)
    compare_with_torch(net, model, (3, 16, 16))
    if preserve:
        state = {k: v.numpy() for k, v in net.state_dict().items()}
        assert list(model.state_dict()) == list(state)         # features.1.running_mean ...
        model.load_state_dict(state, strict=True)


def test_torch_resnet_blocks(tmp_path):
    net = torch_model(TinyResNet, seed=1)
    path = torch_export(net, tmp_path / "resnet.onnx", (3, 10, 10),
                        training=torch.onnx.TrainingMode.PRESERVE)
    model = load_onnx(path)
    compare_with_torch(net, model, (3, 10, 10))
    blocks = model["layer1"]
    assert isinstance(blocks["0"], Residual) and isinstance(blocks["1"], Residual)
    assert blocks["0"].shortcut_key is None and blocks["1"].shortcut_key == "downsample"
    assert blocks["1"].post_key == "post"
    torch_keys = [k for k in net.state_dict()]
    assert list(model.state_dict()) == torch_keys


def test_torch_concat_branches_and_final_softmax(tmp_path):
    class Inception(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.branch1 = torch.nn.Conv2d(4, 3, 1)
            self.branch2 = torch.nn.Sequential(torch.nn.Conv2d(4, 2, 1), torch.nn.ReLU(),
                                               torch.nn.Conv2d(2, 5, 3, padding=1))
            self.branch3 = torch.nn.Sequential(torch.nn.MaxPool2d(3, 1, 1),
                                               torch.nn.Conv2d(4, 2, 1))
            self.fc = torch.nn.Linear(10 * 6 * 6, 7)
            self.softmax = torch.nn.Softmax(dim=1)

        def forward(self, x):
            x = torch.cat([self.branch1(x), self.branch2(x), self.branch3(x)], 1)
            return self.softmax(self.fc(torch.flatten(x, 1)))

    torch.manual_seed(2)
    net = Inception().eval()
    path = torch_export(net, tmp_path / "inception.onnx", (4, 6, 6))
    with pytest.warns(UserWarning, match="final Softmax .* not imported"):
        model = load_onnx(path)
    assert isinstance(model[next(iter(dict(model.named_children())))], Concat)
    x = torch.randn(2, 4, 6, 6)
    scores = model.infer(x.numpy())
    probs = np.exp(scores - scores.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    with torch.no_grad():
        assert np.allclose(probs, net(x).numpy(), atol=1e-6)


class MeanHead(torch.nn.Module):
    """The heads the exporters write as ReduceMean and Squeeze, and a final log_softmax
    (pytorch/examples' MNIST net)."""

    def __init__(self, head):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.fc = torch.nn.Linear(6, 4)
        self.head = head

    def forward(self, x):
        x = torch.relu(self.conv(x))
        if self.head == "mean":
            x = x.mean((2, 3))                                     # ReduceMean, keepdims=0
        elif self.head == "mean-keep":
            x = torch.flatten(x.mean((2, 3), keepdim=True), 1)     # ReduceMean, keepdims=1
        else:
            x = torch.nn.functional.adaptive_avg_pool2d(x, 1).squeeze(-1).squeeze(-1)
        x = self.fc(x)
        return torch.log_softmax(x, 1) if self.head == "squeeze" else x


@pytest.mark.parametrize("opset", [13, 18])      # axes an attribute, then an input
@pytest.mark.parametrize("head", ["mean", "mean-keep", "squeeze"])
def test_torch_mean_and_squeeze_heads_and_a_final_log_softmax(tmp_path, head, opset):
    """x.mean((2, 3)) (and torch's newer exporter's adaptive_avg_pool2d(x, 1)) is
    ReduceMean; .squeeze() is Squeeze; a final log_softmax: all had been refused."""
    torch.manual_seed(3)
    net = MeanHead(head).eval()
    path = torch_export(net, tmp_path / f"{head}.onnx", (3, 5, 5), opset_version=opset)
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert ("ReduceMean" in ops) == head.startswith("mean")
    assert ("Squeeze" in ops) == (head == "squeeze")
    if head == "squeeze":
        with pytest.warns(UserWarning, match="final LogSoftmax .* not imported.*apply a "
                                             "logsoftmax .* log-probabilities"):
            model = load_onnx(path)
        x = torch.randn(2, 3, 5, 5)
        scores = model.infer(x.numpy())
        with torch.no_grad():
            expected = net(x).numpy()
        shifted = scores - scores.max(1, keepdims=True)
        got = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
        assert np.allclose(got, expected, atol=1e-5)
    else:
        model = load_onnx(path)
        compare_with_torch(net, model, (3, 5, 5))


class ViewHead(torch.nn.Module):
    """The PyTorch tutorials' flatten: x.view(x.size(0), -1) (or reshape)."""

    def __init__(self, how):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * 4 * 4, 5)
        self.how = how

    def forward(self, x):
        x = torch.nn.functional.max_pool2d(torch.relu(self.conv(x)), 2)
        x = x.view(x.size(0), -1) if self.how == "view" else x.reshape(x.shape[0], -1)
        return self.fc(x)


@pytest.mark.parametrize("opset", [11, 13, 17, 18])
@pytest.mark.parametrize("how", ["view", "reshape"])
def test_a_flatten_computed_from_the_input_shape_is_read(tmp_path, how, opset):
    """With a dynamic batch axis the exporter computes the target shape: Shape -> Gather
    -> Unsqueeze -> Concat -> Reshape. It had been refused at Shape."""
    torch.manual_seed(5)
    net = ViewHead(how).eval()
    path = torch_export(net, tmp_path / "view.onnx", (3, 8, 8), opset_version=opset)
    assert "Shape" in {node.op_type for node in onnx.load(str(path)).graph.node}
    compare_with_torch(net, load_onnx(path), (3, 8, 8))
    # a static batch without constant folding computes it from constants alone
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(2, 3, 8, 8),), str(tmp_path / "static.onnx"),
                          dynamo=False, opset_version=opset, do_constant_folding=False)
    compare_with_torch(net, load_onnx(tmp_path / "static.onnx"), (3, 8, 8), batches=(2,))


def test_shape_arithmetic_other_than_a_flatten_is_refused(tmp_path):
    """A Gather past the shape's end is named; Reshape to the input's own shape is read."""
    shape = helper.make_node("Shape", ["x"], ["s"], name="shape")
    for nodes, message in (
            ([shape, helper.make_node("Constant", [], ["i"], name="c",
                                      value=numpy_helper.from_array(np.array(7, np.int64))),
              helper.make_node("Gather", ["s", "i"], ["g"], name="gather"),
              helper.make_node("Unsqueeze", ["g"], ["u"], name="u", axes=[0]),
              helper.make_node("Reshape", ["x", "u"], ["y"], name="reshape")],
             "Gather on the shape \\[None, 2, 2, 2\\] is not read"),
            ([shape, helper.make_node("Reshape", ["x", "s"], ["y"], name="reshape")],
             None)):
        path = make_model(nodes, {}, [1, 2, 2, 2], [1, 2, 2, 2], tmp_path / "g.onnx", opset=11)
        if message is None:        # Reshape to its own shape: a no-op flatten, read
            assert load_onnx(path).output_shape((2, 2, 2)) == (2, 2, 2)
            continue
        with pytest.raises(ValueError, match=message):
            load_onnx(path)


def test_reduce_mean_and_squeeze_over_other_axes_are_refused(tmp_path):
    for op, axes, shape, message in (
            ("ReduceMean", [1], [1, 4],
             r"ReduceMean over axes \[1\] of \(N, \*\(2, 3, 3\)\) is not supported"),
            ("Squeeze", [1], [1, 3, 3], "Squeeze of axes \\[1\\] .*only axes of size 1")):
        node = helper.make_node(op, ["x", "axes"], ["y"], name="n")
        path = make_model([node], {}, [1, 2, 3, 3], shape, tmp_path / f"{op}.onnx", opset=18)
        proto = onnx.load(str(path))
        proto.graph.initializer.append(numpy_helper.from_array(np.array(axes, np.int64), "axes"))
        onnx.save(proto, str(path))
        with pytest.raises(ValueError, match=message):
            load_onnx(path)


@pytest.mark.parametrize("mode, onnx_mode", [("reflect", "reflect"), ("replicate", "edge")])
def test_a_padding_mode_with_computed_pads_is_named_at_its_pad(tmp_path, mode, onnx_mode):
    """torch's older exporter computes a reflect Pad's pads with ConstantOfShape, Slice and
    Concat; the error names the Pad and its mode, not the first of those."""
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1, padding_mode=mode))
    path = tmp_path / "pad.onnx"
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), (torch.randn(1, 3, 8, 8),), str(path), dynamo=False)
    with pytest.raises(ValueError, match=f"\\(Pad\\): padding mode '{onnx_mode}' is read "
                                         "only as a Pad with constant pads of H and W"):
        load_onnx(path)


def test_padding_modes_read_from_torch_and_from_export_onnx(tmp_path):
    """torch.onnx.export(dynamo=True) writes Conv2d's padding_mode as a Pad of that mode
    before an unpadded Conv, and so does export_onnx: both read back as the one Conv2d,
    computing what torch does."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), torch.nn.ReLU(),
        torch.nn.Conv2d(4, 2, 3, padding=(2, 1), padding_mode="replicate"),
        torch.nn.Conv2d(2, 2, 3, 2, padding=1, padding_mode="circular"),
        torch.nn.Conv2d(2, 3, (2, 4), padding="same", padding_mode="reflect")).eval()
    x = torch.randn(2, 3, 9, 8)
    path = tmp_path / "modes.onnx"
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x[:1],), str(path), dynamo=True, opset_version=19)
    model = load_onnx(path)
    convs = [layer for layer in model if isinstance(layer, Conv2d)]
    assert [(tuple(c.pads), c.padding_mode) for c in convs] == [   # top, left, bottom, right
        ((1, 1, 1, 1), "reflect"), ((2, 1, 2, 1), "replicate"), ((1, 1, 1, 1), "circular"),
        ((0, 1, 1, 2), "reflect")]
    expected = net(x).detach().numpy()
    np.testing.assert_allclose(model.infer(x.numpy()), expected, rtol=1e-5, atol=1e-6)
    export_onnx(model, tmp_path / "again.onnx", opset=19)
    again = load_onnx(tmp_path / "again.onnx")
    np.testing.assert_allclose(again.infer(x.numpy()), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("pads, conv_pads", [([0, 0, 1, 1, 0, 0, 2, 1], [0, 0, 0, 0]),
                                             ([0, 0, 1, 1, 0, 0, 1, 1], [1, 1, 1, 1]),
                                             ([0, 1, 1, 1, 0, 1, 1, 1], [0, 0, 0, 0])])
def test_a_reflect_pad_convnet_cannot_take_into_its_conv_is_named(tmp_path, pads, conv_pads):
    """Uneven pads, a Conv that pads again, a Pad of the channels: refused, naming it."""
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"], name="pad", mode="reflect"),
             helper.make_node("Conv", ["p", "w"], ["y"], name="conv", pads=conv_pads)]
    path = make_model(nodes, {"w": np.ones((1, 2, 3, 3))}, [1, 2, 6, 6], None,
                      tmp_path / "pad.onnx", opset=13)
    proto = onnx.load(str(path))
    proto.graph.initializer.append(numpy_helper.from_array(np.array(pads, np.int64), "pads"))
    onnx.save(proto, str(path))
    with pytest.raises(ValueError, match="node '(pad|conv)'") as info:
        load_onnx(path)
    if conv_pads != [0, 0, 0, 0]:
        assert "after a Pad of mode 'reflect' is not read: convnet's Conv2d pads once" in \
            str(info.value)


def test_an_unsupported_operator_before_a_reflect_pad_is_named_itself(tmp_path):
    """Only shape arithmetic is followed to the Pad it computes pads for: an Elu on the
    data path before a reflect Pad is named as the Elu."""
    nodes = [helper.make_node("Elu", ["x"], ["a"], name="elu"),
             helper.make_node("Pad", ["a", "pads"], ["y"], name="pad", mode="reflect")]
    path = make_model(nodes, {}, [1, 2, 4, 4], [1, 2, 6, 6], tmp_path / "elu.onnx", opset=13)
    proto = onnx.load(str(path))
    proto.graph.initializer.append(numpy_helper.from_array(
        np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads"))
    onnx.save(proto, str(path))
    with pytest.raises(ValueError, match=r"node 'elu' \(Elu\): unsupported operator 'Elu'"):
        load_onnx(path)


# -- hand-made graphs, checked against onnxruntime ------------------------------------------
def make_model(nodes, inits, in_shape, out_shape, path, opset=17, in_name="x"):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(in_name, TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 8
    onnx.save(proto, str(path))
    return path


def compare_with_ort(path, model, shape, n=2):
    x = np.random.default_rng(0).standard_normal((n, *shape)).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = session.run(None, {session.get_inputs()[0].name: x})[0]
    got = model.infer(x)
    assert got.shape == expected.shape
    assert rel_error(got, expected) < 1e-5


def weights(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_matmul_add_is_linear(tmp_path):
    nodes = [helper.make_node("Flatten", ["x"], ["f"], name="flat"),
             helper.make_node("MatMul", ["f", "W"], ["m"], name="fc.mm"),
             helper.make_node("Add", ["m", "b"], ["y"], name="fc")]
    path = make_model(nodes, {"W": weights(12, 5), "b": weights(5, seed=1)}, ["N", 3, 2, 2],
                      ["N", 5], tmp_path / "mm.onnx")
    model = load_onnx(path)
    assert isinstance(model["fc"], Linear) and "bias" in model["fc"].params
    compare_with_ort(path, model, (3, 2, 2))


def test_dropout_identity_and_global_pool(tmp_path):
    """Dropout (its ratio an input, opset >= 12) becomes an eval-mode Dropout, Identity
    nodes only rename tensors, LeakyRelu keeps its slope."""
    nodes = [helper.make_node("Identity", ["x"], ["i"], name="alias"),
             helper.make_node("LeakyRelu", ["i"], ["a"], name="act", alpha=0.3),
             helper.make_node("GlobalAveragePool", ["a"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flat"),
             helper.make_node("Dropout", ["f", "ratio"], ["d"], name="drop"),
             helper.make_node("Identity", ["d"], ["y"], name="out")]
    path = make_model(nodes, {"ratio": np.array(0.3)}, ["N", 3, 5, 4], ["N", 3],
                      tmp_path / "misc.onnx")
    model = load_onnx(path)
    assert list(dict(model.named_children())) == ["act", "gap", "flat", "drop"]
    assert model["drop"].p == 0.3 and model["act"].negative_slope == 0.3
    compare_with_ort(path, model, (3, 5, 4), n=3)


@pytest.mark.parametrize("attrs, size", [
    ({"auto_pad": "SAME_UPPER", "strides": [2, 2]}, 7),      # pads 1, 1: symmetric
    ({"pads": [1, 1, 0, 0], "strides": [2, 2]}, 8),          # the end pad is never reached
    ({"auto_pad": "VALID"}, 6),
    ({"auto_pad": "SAME_UPPER", "strides": [2, 2], "kernel": 1}, 8),   # pads max(0, -1)
    ({"auto_pad": "SAME_LOWER", "strides": [3, 3], "kernel": 2}, 9),   # pads max(0, -1)
])
def test_conv_pads_that_convnet_can_represent(tmp_path, attrs, size):
    """A stride wider than the window under auto_pad (Keras's 1x1/2 "same" shortcut)
    had been refused as a negative pad: the spec and onnxruntime pad it by 0."""
    k = attrs.pop("kernel", 3)
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["y"], name="conv", **attrs)]
    path = make_model(nodes, {"W": weights(4, 3, k, k), "B": weights(4, seed=1)},
                      ["N", 3, size, size], None, tmp_path / "conv.onnx")
    compare_with_ort(path, load_onnx(path), (3, size, size))


@pytest.mark.parametrize("op", ["Conv", "MaxPool", "AveragePool", "LpPool"])
def test_random_windows_agree_with_onnxruntime_or_are_refused(tmp_path, op):
    """Random kernels, strides, pads (asymmetric too), auto_pad, ceil_mode and
    count_include_pad: what load_onnx accepts computes what onnxruntime computes; what
    it cannot represent is refused naming the pads."""
    accepted = refused = 0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        k, s = int(rng.integers(1, 5)), int(rng.integers(1, 4))
        size = int(rng.integers(k + 1, 12))
        attrs = {"strides": [s, s]}
        if op != "Conv":
            attrs["kernel_shape"] = [k, k]
        if seed % 3 == 0:
            attrs["auto_pad"] = ["SAME_UPPER", "SAME_LOWER", "VALID"][seed // 3 % 3]
        else:
            high = k if op == "Conv" else k // 2 + 1
            attrs["pads"] = [int(v) for v in rng.integers(0, high, size=4)]
        if op in ("MaxPool", "AveragePool"):
            attrs["ceil_mode"] = int(rng.integers(2))
        if op == "AveragePool":
            attrs["count_include_pad"] = int(rng.integers(2))
        inits = {"W": weights(2, 3, k, k, seed=seed)} if op == "Conv" else {}
        nodes = [helper.make_node(op, ["x", *inits], ["y"], name="window", **attrs)]
        path = make_model(nodes, inits, [2, 3, size, size], None, tmp_path / f"{seed}.onnx",
                          opset=19)
        try:
            model = load_onnx(path)
        except ValueError as err:
            assert "attribute pads=" in str(err) or "attribute auto_pad=" in str(err), err
            refused += 1
            continue
        compare_with_ort(path, model, (3, size, size))
        accepted += 1
    assert accepted >= 10 and refused >= 1, (accepted, refused)


def test_reshape_as_flatten_and_dynamic_input(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="act"),
             helper.make_node("Reshape", ["r", "shape"], ["y"], name="flat")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array([0, -1], np.int64), "shape")])
    path = tmp_path / "dyn.onnx"
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.save(proto, str(path))
    with pytest.raises(ValueError, match=r"dyn\.onnx: input 'x' has shape \['\?', 2, '\?', "
                                         r"'\?'\], not a static per-sample shape; pass "
                                         r"input_shape=\(C, H, W\)$"):
        load_onnx(path)
    with pytest.raises(ValueError, match=r"pass input_shape=\(C, H, W\) \(with --size\)$"):
        load_onnx(path, input_hint="with --size")
    model = load_onnx(path, input_shape=(2, 3, 4))
    assert model.output_shape((2, 3, 4)) == (24,)
    compare_with_ort(path, model, (2, 3, 4))


def conv_graph(tmp_path, **attrs):
    nodes = [helper.make_node("Conv", ["x", "W"], ["y"], name="features.conv", **attrs)]
    return make_model(nodes, {"W": weights(2, 1, 3, 3)}, [1, 1, 8, 8], None,
                      tmp_path / "bad.onnx")


def test_node_names_with_control_characters_become_printable_child_names(tmp_path):
    """A node named with a tab and an escape had made a child name that the summary
    printed raw, and that convert wrote into a model file convnet then refused."""
    from convnet.io import load_model, save_model
    nodes = [helper.make_node("Conv", ["x", "W"], ["y"], name="conv\ttab\x1b[2J")]
    path = make_model(nodes, {"W": weights(2, 1, 3, 3)}, [1, 1, 8, 8], None,
                      tmp_path / "named.onnx")
    model = load_onnx(path)
    names = [name for name, _ in model.named_layers()]
    assert names == ["conv_tab_[2J"], names
    save_model(model, tmp_path / "m")
    assert [name for name, _ in load_model(tmp_path / "m.json").named_layers()] == names


def test_node_names_over_the_child_name_cap_are_shortened_and_kept_apart(tmp_path):
    """A node named with 300 characters had made a model file convnet refused (a child
    name is at most 200 characters); two such names stay two."""
    from convnet.io import load_model, save_model
    nodes = [helper.make_node("Conv", ["x", "W"], ["h"], name="c" * 300 + "a", pads=[1] * 4),
             helper.make_node("Conv", ["h", "V"], ["y"], name="c" * 300 + "b", pads=[1] * 4)]
    path = make_model(nodes, {"W": weights(1, 1, 3, 3), "V": weights(1, 1, 3, 3, seed=1)},
                      [1, 1, 8, 8], None, tmp_path / "long.onnx")
    model = load_onnx(path)
    names = [name for name, _ in model.named_layers()]
    assert len(set(names)) == 2 and all(len(name) == 200 for name in names), names
    save_model(model, tmp_path / "m")
    assert [name for name, _ in load_model(tmp_path / "m.json").named_layers()] == names


def gemm_graph(tmp_path, **attrs):
    nodes = [helper.make_node("Flatten", ["x"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "W", "b"], ["y"], name="head", **attrs)]
    return make_model(nodes, {"W": weights(4, 3), "b": weights(3)}, [1, 4, 1, 1], None,
                      tmp_path / "bad.onnx")


@pytest.mark.parametrize("build, message", [
    (lambda p: conv_graph(p, pads=[0, 0, 1, 1]),
     r"node 'features.conv' \(Conv\): attribute pads=\[0, 0, 1, 1\] cannot be represented"),
    (lambda p: conv_graph(p, auto_pad="SAME_UPPER", strides=[2, 2]),
     r"node 'features.conv' \(Conv\): attribute auto_pad='SAME_UPPER' \(pads \[0, 0, 1, 1\]\)"),
    (lambda p: gemm_graph(p, transA=1), r"node 'head' \(Gemm\): attribute transA=1 is not"),
    (lambda p: gemm_graph(p, alpha=2.0), r"node 'head' \(Gemm\): attribute alpha=2.0 is not"),
    (lambda p: make_model([helper.make_node("Elu", ["x"], ["y"], name="act")], {},
                          [1, 2, 3, 3], None, p / "bad.onnx"),
     r"node 'act' \(Elu\): unsupported operator 'Elu'; convnet reads Add, AveragePool, "
     r"BatchNormalization, Clip, Concat, Constant, Conv"),
    (lambda p: make_model([helper.make_node("LRN", ["x"], ["y"], name="norm", size=4)], {},
                          [1, 6, 3, 3], None, p / "bad.onnx"),
     r"node 'norm' \(LRN\): attribute size=4 is not supported: for an even size"),
    (lambda p: make_model([helper.make_node("Softmax", ["x"], ["s"], name="sm", axis=1),
                           helper.make_node("Relu", ["s"], ["y"], name="act")], {},
                          [1, 5], None, p / "bad.onnx"),
     r"node 'sm' \(Softmax\): Softmax is read only as the last node"),
    (lambda p: make_model([helper.make_node("Relu", ["x"], ["a"], name="a"),
                           helper.make_node("Concat", ["x", "a"], ["y"], name="cat", axis=2)],
                          {}, [1, 2, 3, 3], None, p / "bad.onnx"),
     r"node 'cat' \(Concat\): attribute axis=2 is not supported"),
])
def test_unrepresentable_graphs_are_named(tmp_path, build, message):
    with pytest.raises(ValueError, match=r"bad\.onnx: " + message):
        load_onnx(build(tmp_path))


def clip_graph(tmp_path, bounds, opset):
    """Clip(x, min, max): the bounds as inputs (opset 11 on) or attributes (before)."""
    if opset >= 11:
        names = [f"c{i}" if value is not None else "" for i, value in enumerate(bounds)]
        while names and not names[-1]:
            names.pop()
        node = helper.make_node("Clip", ["x", *names], ["y"], name="act")
        inits = {f"c{i}": np.array(value, np.float32) for i, value in enumerate(bounds)
                 if value is not None}
    else:
        kwargs = {end: value for end, value in zip(("min", "max"), bounds) if value is not None}
        node, inits = helper.make_node("Clip", ["x"], ["y"], name="act", **kwargs), {}
    return make_model([node], inits, [1, 2, 3, 3], [1, 2, 3, 3], tmp_path / "clip.onnx",
                      opset=opset)


@pytest.mark.parametrize("opset", [6, 13])
@pytest.mark.parametrize("bounds, layer", [((0.0, 6.0), ReLU6), ((0.0, None), ReLU)])
def test_clip_to_0_6_is_relu6_and_to_0_is_relu(tmp_path, bounds, layer, opset):
    path = clip_graph(tmp_path, bounds, opset)
    model = load_onnx(path)
    assert [type(m) for _, m in model.named_layers()] == [layer]
    x = np.random.default_rng(0).uniform(-9, 9, (1, 2, 3, 3)).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(model.infer(x), session.run(None, {"x": x})[0])


@pytest.mark.parametrize("opset", [6, 13])
def test_other_clips_are_named(tmp_path, opset):
    with pytest.raises(ValueError, match=r"node 'act' \(Clip\): Clip to \[-1.0, 1.0\] is not "
                                         r"read: convnet reads Clip to \[0, 6\] \(ReLU6\)"):
        load_onnx(clip_graph(tmp_path, (-1.0, 1.0), opset))


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_torch_relu6_net_imports_as_relu6(tmp_path, dynamo):
    """MobileNet's CONV -> BN -> ReLU6 and a depthwise CONV, from either exporter."""
    torch.manual_seed(3)
    net = torch_model(lambda: torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU6(),
        torch.nn.Conv2d(8, 8, 3, padding=1, groups=8), torch.nn.ReLU6(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4)))
    path = tmp_path / "relu6.onnx"
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(1, 3, 8, 8) * 4,), str(path), dynamo=dynamo)
    model = load_onnx(path)
    assert sum(isinstance(m, ReLU6) for _, m in model.named_layers()) == 2
    for n in (1, 3):
        x = torch.randn(n, 3, 8, 8) * 4
        with torch.no_grad():
            expected = net(x).numpy()
        np.testing.assert_allclose(model.infer(x.numpy()), expected, rtol=1e-5, atol=1e-5)


def test_a_dag_that_is_not_nested_blocks_is_refused(tmp_path):
    """a = relu(x), b = sigmoid(x), c = a + b, y = a + c: 'a' feeds both inputs of the
    last Add, which no Residual or Concat nesting expresses."""
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="a"),
             helper.make_node("Sigmoid", ["x"], ["b"], name="b"),
             helper.make_node("Add", ["a", "b"], ["c"], name="c"),
             helper.make_node("Add", ["a", "c"], ["y"], name="out")]
    path = make_model(nodes, {}, [1, 2, 3, 3], None, tmp_path / "dag.onnx")
    with pytest.raises(ValueError, match=r"dag\.onnx: node 'a' \(Relu\) feeds more than one "
                                         r"input of node 'out' \(Add\); convnet models are "
                                         "chains"):
        load_onnx(path)


def test_not_an_onnx_file(tmp_path):
    (tmp_path / "junk.onnx").write_bytes(b"\xff\x00junk" * 10)
    with pytest.raises(ValueError, match=r"junk\.onnx: not an ONNX model|junk\.onnx: a "
                                         "convnet model has one input"):
        load_onnx(tmp_path / "junk.onnx")
    with pytest.raises(ValueError, match=r"missing\.onnx: no such ONNX file"):
        load_onnx(tmp_path / "missing.onnx")


# -- external data -------------------------------------------------------------------------
def external_model(tmp_path, location, folder="model"):
    """lenet5 exported, its weights moved to an external file; then one tensor's
    location rewritten to ``location``. Returns (path, model, the tensor's name)."""
    model = lenet5(rng=np.random.default_rng(0)).eval()
    directory = tmp_path / folder
    directory.mkdir()
    proto = export_onnx(model, tmp_path / "plain.onnx")
    path = directory / "lenet.onnx"
    onnx.save_model(proto, str(path), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    if location is not None:
        proto = onnx.load(str(path), load_external_data=False)
        tensor = proto.graph.initializer[-1]
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
        onnx.save(proto, str(path))
        return path, model, tensor.name
    return path, model, None


@pytest.fixture
def reads(monkeypatch):
    """Every external-data read load_onnx makes, as (file, offset, length)."""
    calls = []
    real = onnx_import._read_bytes

    def record(file, offset, length):
        calls.append((file, offset, length))
        return real(file, offset, length)

    monkeypatch.setattr(onnx_import, "_read_bytes", record)
    return calls


def test_external_data_inside_the_folder_loads(tmp_path, reads):
    path, model, _ = external_model(tmp_path, None)
    assert (path.parent / "weights.bin").stat().st_size > 240_000
    imported = load_onnx(path)
    x = np.random.default_rng(1).standard_normal((2, 1, 32, 32)).astype(np.float32)
    assert np.array_equal(imported.infer(x), model.infer(x))
    assert len(reads) == 10 and {os.path.basename(f) for f, _, _ in reads} == {"weights.bin"}


@pytest.mark.parametrize("where", ["parent", "absolute", "symlink"])
def test_external_data_outside_the_folder_is_refused_unread(tmp_path, reads, where):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(os.urandom(400_000))         # big enough for any lenet tensor
    if where == "parent":
        location = "../secret.bin"
    elif where == "absolute":
        location = str(secret)
    else:
        location = "link.bin"
    path, _, name = external_model(tmp_path, location)
    if where == "symlink":
        (path.parent / "link.bin").symlink_to(secret)
    reason = "is an absolute path" if where == "absolute" else "resolves to .*secret.bin, outside"
    with pytest.raises(ValueError, match=rf"lenet\.onnx: tensor '{name}': external data "
                                         rf"location '{location}' {reason}"):
        load_onnx(path)
    assert reads == []                              # nothing was read, not even the others


def test_the_cli_shows_a_dropped_softmax_as_one_warning_line(tmp_path, capsys):
    """It had printed Python's 'spec.py:74: UserWarning: ...' and the source line."""
    from convnet.cli import main
    torch.manual_seed(4)
    path = torch_export(MeanHead("squeeze").eval(), tmp_path / "m.onnx", (3, 5, 5))
    capsys.readouterr()
    assert main(["summary", str(path)]) == 0
    err = capsys.readouterr().err
    assert err.startswith(f"convnet summary: warning: {path}: the final LogSoftmax"), err
    assert err.count("\n") == 1 and "UserWarning" not in err and ".py:" not in err


def test_a_long_chain_of_shape_arithmetic_is_refused_not_recursed(tmp_path):
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("Constant", [], ["zero"], name="zero",
                              value=numpy_helper.from_array(np.array(0, np.int64))),
             helper.make_node("Gather", ["s", "zero"], ["t0"], name="gather")]
    for i in range(2000):       # Unsqueeze then Squeeze, back and forth
        nodes += [helper.make_node("Unsqueeze", [f"t{i}"], [f"u{i}"], name=f"u{i}", axes=[0]),
                  helper.make_node("Squeeze", [f"u{i}"], [f"t{i + 1}"], name=f"s{i}",
                                   axes=[0])]
    nodes += [helper.make_node("Unsqueeze", ["t2000"], ["n"], name="n", axes=[0]),
              helper.make_node("Constant", [], ["rest"], name="rest",
                               value=numpy_helper.from_array(np.array([-1], np.int64))),
              helper.make_node("Concat", ["n", "rest"], ["target"], name="cat", axis=0),
              helper.make_node("Reshape", ["x", "target"], ["y"], name="reshape")]
    path = make_model(nodes, {}, [1, 2, 2, 2], [1, 8], tmp_path / "deep.onnx", opset=11)
    with pytest.raises(ValueError, match="reshape.*the target shape must be a constant, or "
                                         "computed from the input's shape"):
        load_onnx(path)


def test_an_onnx_file_with_an_open_input_size_runs_from_the_cli_with_input(tmp_path, capsys):
    """A graph exported with dynamic H and W had no size the CLI could give it: predict
    and eval take --input (an ONNX file's only); the error says so."""
    from PIL import Image

    from convnet.cli import main

    class Pooled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = torch.nn.Conv2d(3, 4, 3), torch.nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(
                torch.relu(self.conv(x)), 1), 1))
    path = tmp_path / "open.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Pooled().eval(), (torch.randn(1, 3, 8, 8),), str(path), dynamo=False,
                          input_names=["x"], dynamic_axes={"x": {0: "N", 2: "H", 3: "W"}})
    Image.new("RGB", (12, 10), "white").save(tmp_path / "a.png")
    capsys.readouterr()
    assert main(["predict", str(path), str(tmp_path / "a.png")]) == 1
    assert "not a static per-sample shape; pass input_shape=(C, H, W) (on the command line: " \
           "--input CxHxW, which summary, eval, predict, report, show and convert take; " \
           "train --from takes --channels C and --image-size HxW)" in capsys.readouterr().err
    for command in (["show", "filters", str(path)], ["train", "--from", str(path)],
                    ["train", "--from", str(path), "--image-size", "8"]):
        assert main(command) == 1
        assert "train --from takes --channels C and --image-size HxW" in \
            capsys.readouterr().err
    # show and train --from had taken no size for such a graph: convert it first, they said
    assert main(["show", "filters", str(path), "--input", "3x8x8",
                 "--out", str(tmp_path / "f.png")]) == 0
    assert (tmp_path / "f.png").stat().st_size > 0
    for split in ("train", "test"):
        for side in range(2):
            (tmp_path / "data" / split / f"c{side}").mkdir(parents=True)
            for i in range(5):
                Image.new("RGB", (12, 10), (50 * i, 90 * side, 9)).save(
                    tmp_path / "data" / split / f"c{side}" / f"{i}.png")
    capsys.readouterr()
    assert main(["train", "--from", str(path), "--data", str(tmp_path / "data"), "--channels",
                 "3", "--image-size", "10x12", "--epochs", "1", "--val-fraction", "0.2",
                 "--quiet", "--no-report",
                 "--out", str(tmp_path / "run")]) == 0, capsys.readouterr().err
    assert load_model(tmp_path / "run" / "model.json").input_shape == (3, 10, 12)
    fixed = tmp_path / "fixed.onnx"           # a graph of fixed size takes its own, as before
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Pooled().eval(), (torch.randn(1, 3, 8, 8),), str(fixed), dynamo=False)
    assert main(["train", "--from", str(fixed), "--data", str(tmp_path / "data"), "--channels",
                 "3", "--image-size", "10x12", "--epochs", "1", "--val-fraction", "0.2",
                 "--quiet", "--no-report", "--out", str(tmp_path / "run3")]) == 0, \
        capsys.readouterr().err
    assert main(["train", "--from", str(path), "--data", str(tmp_path / "data"), "--channels",
                 "1", "--image-size", "10x12", "--out", str(tmp_path / "run2")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"convnet train: error: {path}: node ") and \
        "the input has 1 channels" in err, err
    assert main(["predict", str(path), str(tmp_path / "a.png"), "--input", "3x8x8"]) == 0
    assert capsys.readouterr().out.startswith(f"{tmp_path / 'a.png'}: ")
    assert main(["eval", "lenet5", "--data", "digits", "--input", "1x8x8"]) == 1
    assert "lenet5: it takes 1x32x32 (C x H x W), and --input 1x8x8 does not fit it" in \
        capsys.readouterr().err
    assert main(["convert", str(path), str(tmp_path / "fixed.json"), "--input", "3x8x8"]) == 0
    assert load_model(tmp_path / "fixed.json").input_shape == (3, 8, 8)
    capsys.readouterr()
    assert main(["convert", str(tmp_path / "fixed.json"), str(tmp_path / "o.onnx"), "--input",
                 "3x9x9"]) == 1
    assert "--input (input_shape) sets the input size of an ONNX file" in capsys.readouterr().err


def test_nodes_named_by_operator_take_their_pytorch_modules_names(tmp_path):
    """torch's newer (default) exporter names nodes "node_Conv_28" and keeps the module in
    the weights' names and in name-scope metadata: the layers get PyTorch's keys (they
    had been node_Conv_28.weight, so --freeze features found no stage)."""
    rng = np.random.default_rng(9)

    def scoped(node, scopes):
        prop = node.metadata_props.add()
        prop.key, prop.value = "pkg.torch.onnx.name_scopes", str(scopes)
        return node
    nodes = [helper.make_node("Conv", ["x", "features.0.weight", "features.0.bias"], ["c"],
                              name="node_Conv_28", pads=[1, 1, 1, 1]),
             scoped(helper.make_node("Relu", ["c"], ["r"], name="node_relu"),
                    ["", "features", "features.1", "relu"]),
             scoped(helper.make_node("Flatten", ["r"], ["f"], name="node_flatten"),
                    ["", "flatten"]),
             helper.make_node("Gemm", ["f", "classifier.weight", "classifier.bias"], ["y"],
                              name="node_linear", transB=1)]
    inits = {"features.0.weight": rng.standard_normal((4, 2, 3, 3)),
             "features.0.bias": rng.standard_normal(4),
             "classifier.weight": rng.standard_normal((3, 4 * 5 * 5)),
             "classifier.bias": rng.standard_normal(3)}
    path = make_model(nodes, inits, ["N", 2, 5, 5], ["N", 3], tmp_path / "dynamo.onnx")
    model = load_onnx(path)
    assert list(model.state_dict()) == list(inits)
    assert [key for key, _ in model.named_children()][0] == "features"
    assert list(dict(model["features"].named_children())) == ["0", "1"]
    compare_with_ort(path, model, (2, 5, 5))


def test_shape_arithmetic_is_worked_out_once_per_tensor(tmp_path, monkeypatch):
    """Concats that each read the one before twice had made 2^depth evaluations (a 1 KB
    file ran for minutes at depth 30); malformed shape nodes are errors naming the node."""
    nodes = [helper.make_node("Constant", [], ["c0"], name="c",
                              value=numpy_helper.from_array(np.zeros(0, np.int64)))]
    for i in range(40):
        nodes.append(helper.make_node("Concat", [f"c{i}", f"c{i}"], [f"c{i + 1}"],
                                      name=f"k{i}", axis=0))
    nodes += [helper.make_node("Constant", [], ["tail"], name="tail",
                               value=numpy_helper.from_array(np.array([0, -1], np.int64))),
              helper.make_node("Concat", ["c40", "tail"], ["target"], name="cat", axis=0),
              helper.make_node("Reshape", ["x", "target"], ["y"], name="reshape")]
    path = make_model(nodes, {}, [1, 2, 2, 2], [1, 8], tmp_path / "dag.onnx", opset=13)
    calls = []
    work = onnx_import._Importer._shape_of
    monkeypatch.setattr(onnx_import._Importer, "_shape_of",
                        lambda self, *args: calls.append(1) or work(self, *args))
    assert load_onnx(path).output_shape((2, 2, 2)) == (8,)
    assert len(calls) <= len(nodes)
    for bad, message in (
            ([helper.make_node("Shape", ["x"], ["s"], name="shape"),
              helper.make_node("Gather", ["s", "s"], ["g"], name="gather"),
              helper.make_node("Reshape", ["x", "g"], ["y"], name="reshape")],
             r"node 'gather' \(Gather\): Gather on the shape \[None, 2, 2, 2\] is not read"),
            ([helper.make_node("Shape", ["x"], ["s"], name="shape"),
              helper.make_node("Gather", ["s"], ["g"], name="gather"),
              helper.make_node("Reshape", ["x", "g"], ["y"], name="reshape")],
             r"node 'gather' \(Gather\): Gather takes 2 input\(s\), got 1")):
        path = make_model(bad, {}, [1, 2, 2, 2], [1, 8], tmp_path / "bad.onnx", opset=13)
        with pytest.raises(ValueError, match=message):
            load_onnx(path)


def test_torchvisions_densenet_layout_is_read_as_dense_blocks(tmp_path):
    """torchvision's DenseNet concatenates every earlier feature before each layer and at
    the block's end (Concat(x0, f1, ..., fk)); it had been refused. It is read as
    convnet's running Concat(x, layer(x)), with PyTorch's keys."""
    from tests.torch_models import DenseNet
    torch.manual_seed(6)
    net = torch_model(lambda: DenseNet(8, (2, 3), 16, 10, stem="cifar"))
    path = torch_export(net, tmp_path / "densenet.onnx", (3, 8, 8),
                        training=torch.onnx.TrainingMode.PRESERVE)
    model = load_onnx(path)
    assert isinstance(model["features"]["denseblock1"], DenseBlock)
    compare_with_torch(net, model, (3, 8, 8))
    assert list(model.state_dict()) == list(net.state_dict())


def test_an_untrained_densenets_shared_initializers_are_constants(tmp_path):
    """With batch norm at its initial values, torch's exporter keeps one tensor of ones
    and one of zeros and hands them on through Identity nodes: such a node's output was
    taken for a second data input, and the DenseNet refused."""
    from tests.torch_models import DenseNet
    torch.manual_seed(7)
    net = DenseNet(8, (2, 3), 16, 10, stem="cifar").eval()      # running stats as made
    path = torch_export(net, tmp_path / "densenet.onnx", (3, 8, 8))
    assert any(n.op_type == "Identity" for n in onnx.load(str(path)).graph.node)
    compare_with_torch(net, load_onnx(path), (3, 8, 8))


def test_torchvisions_densenet_layout_from_the_newer_exporter(tmp_path):
    """torch's newer (dynamo) exporter drops each block's one-input Concat(x0), so a block
    starts at Concat(x0, f1); it is read as a DenseBlock all the same. That exporter folds
    each layer's second batch norm into its first CONV, which gains a bias."""
    from tests.torch_models import DenseNet
    torch.manual_seed(6)
    net = torch_model(lambda: DenseNet(8, (2, 3), 16, 10, stem="cifar"))
    path = tmp_path / "densenet.onnx"
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(2, 3, 8, 8),), str(path), dynamo=True,
                          dynamic_shapes=({0: torch.export.Dim("N")},))
    assert [len(n.input) for n in onnx.load(str(path)).graph.node if n.op_type == "Concat"] \
        == [2, 3, 2, 3, 4]
    model = load_onnx(path)
    blocks = model["features"]
    assert [type(blocks[name]) for name in ("denseblock1", "denseblock2")] == [DenseBlock] * 2
    assert [layer.name.rsplit(".", 1)[1] for layer in blocks["denseblock2"]] == [
        "denselayer1", "denselayer2", "denselayer3"]
    compare_with_torch(net, model, (3, 8, 8))
    ours, theirs = set(model.state_dict()), set(net.state_dict())
    assert ours - theirs == {f"features.denseblock{b}.denselayer{i}.conv1.bias"
                             for b, n in ((1, 2), (2, 3)) for i in range(1, n + 1)}
    assert {key.rsplit(".", 2)[1] for key in theirs - ours} == {"norm2"}


def test_a_concat_that_only_shares_a_prefix_is_not_read_as_a_dense_step(tmp_path):
    """Concat(x, x) and Concat(x, x, c) in two branches of an Add: the second does not
    extend the first (c is not computed from it), and the graph reads as it did."""
    rng = np.random.default_rng(10)
    inits = {f"m.{k}.weight": rng.standard_normal(shape) for k, shape in (
        ("c", (2, 2, 1, 1)), ("p", (3, 4, 1, 1)), ("q", (3, 6, 1, 1)))}
    nodes = [helper.make_node("Conv", ["x", "m.c.weight"], ["c"], name="m.c"),
             helper.make_node("Concat", ["x", "x"], ["y1"], name="m.cat1", axis=1),
             helper.make_node("Concat", ["x", "x", "c"], ["y2"], name="m.cat2", axis=1),
             helper.make_node("Conv", ["y1", "m.p.weight"], ["p"], name="m.p"),
             helper.make_node("Conv", ["y2", "m.q.weight"], ["q"], name="m.q"),
             helper.make_node("Add", ["p", "q"], ["y"], name="m.add")]
    path = make_model(nodes, inits, [1, 2, 4, 4], [1, 3, 4, 4], tmp_path / "prefix.onnx")
    model = load_onnx(path)
    assert isinstance(model["m"], Residual)
    compare_with_ort(path, model, (2, 4, 4), n=1)


@pytest.mark.parametrize("cls, shape", [(BatchNorm2d, (3, 4, 5)), (BatchNorm1d, (6,))])
def test_batch_norm_without_affine_comes_back_without(tmp_path, cls, shape):
    """BatchNorm(affine=False) came back affine (weight and bias keys of ones and zeros);
    a scale of ones and a bias of zeros under other names stay parameters."""
    rng = np.random.default_rng(4)
    bn = cls(shape[0], affine=False)
    bn.buffers["running_mean"][...] = rng.normal(0, 0.5, shape[0])
    bn.buffers["running_var"][...] = rng.uniform(0.5, 2.0, shape[0])
    model = Sequential(bn, cls(shape[0]), cls(shape[0], affine=False)).eval()
    imported = round_trip(model, tmp_path, shape, batches=(1, 3))
    assert [layer.affine for layer in imported] == [False, True, False]
    same_keys(imported, model)
    assert list(imported.state_dict()) == list(model.state_dict())


def test_an_imported_net_runs_its_relus_in_place_as_the_zoo_net_does(tmp_path):
    """An ONNX file's net had every RELU write a new array: its summary (and training)
    counted 1.3-1.5x the zoo net's activation memory."""
    from convnet.analysis import summary
    from convnet.io.onnx_export import export_onnx
    from convnet.io.onnx_import import load_onnx
    from convnet.zoo import get_model
    net = get_model("alexnet")
    export_onnx(net, tmp_path / "a.onnx", input_shape=(3, 227, 227))
    imported = load_onnx(tmp_path / "a.onnx")
    def relus(model):
        return [row.activation_values for row in summary(model, (3, 227, 227)).layers
                if row.type.startswith("ReLU")]
    assert relus(imported) == relus(net) == [0] * 7
    x = np.random.default_rng(0).standard_normal((1, 3, 227, 227)).astype(np.float32)
    assert np.allclose(imported.infer(x), net.eval().infer(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("momentum", [0.01, 0.1, 0.3])
def test_batch_norms_momentum_comes_back_from_torch_and_from_export(tmp_path, momentum):
    """ONNX's momentum (1 - PyTorch's) had been left out both ways: every imported batch
    norm trained on with 0.1."""
    from convnet.io.onnx_export import export_onnx
    from convnet.io.onnx_import import load_onnx
    from convnet.layers.conv import Conv2d
    from convnet.layers.norm import BatchNorm2d
    from convnet.models import Sequential
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4,
                                                                             momentum=momentum))
    torch.onnx.export(net.eval(), torch.randn(1, 3, 8, 8), tmp_path / "t.onnx", dynamo=False,
                      do_constant_folding=False)
    assert load_onnx(tmp_path / "t.onnx")[1].momentum == momentum
    ours = Sequential(Conv2d(3, 4, 3), BatchNorm2d(4, momentum=momentum))
    export_onnx(ours, tmp_path / "o.onnx", input_shape=(3, 8, 8))
    assert load_onnx(tmp_path / "o.onnx")[1].momentum == momentum


@pytest.mark.parametrize("length", [199, 200])
def test_repeated_long_node_names_stay_within_a_child_names_cap(tmp_path, length):
    """Three nodes of one 199- or 200-character name: the second and third got "_1" and
    "_2" past the 200-character cap, and the model could not be saved (or, before the
    containers checked names, saved and then not loaded)."""
    from convnet.io import save_model
    from convnet.models.config import MAX_NAME
    name = "a" * length
    w = numpy_helper.from_array(np.eye(2, dtype=np.float32), "W")
    nodes = [helper.make_node("Relu", ["x"], ["h"], name=name),
             helper.make_node("MatMul", ["h", "W"], ["h2"], name=name),
             helper.make_node("Relu", ["h2"], ["y"], name=name)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]),
              tmp_path / "n.onnx")
    model = load_onnx(tmp_path / "n.onnx")
    names = [key for key, _ in model.named_layers()]
    assert len(set(names)) == 3, names
    assert all(len(part) <= MAX_NAME for key in names for part in key.split(".")), names
    x = np.array([[-1.0, 2.0]], np.float32)
    loaded = load_model(save_model(model, tmp_path / "m"))
    np.testing.assert_array_equal(loaded.forward(x), np.maximum(x, 0))
