"""The zoo: parameter counts, volumes, torchvision state dict keys, small forward passes.

Expected numbers come from outside the code under test: torchvision's published parameter
counts and state dict sizes (checked once against torchvision 0.29 by loading our arrays
into its models), the papers' tables (AlexNet, ZF Net, GoogLeNet's Table 1, DenseNet's
Table 1), and hand formulas written out below.
"""

import numpy as np
import pytest

from convnet.layers.conv import Conv2d, LocallyConnected2d
from convnet.layers.dropout import Dropout
from convnet.layers.linear import Flatten, Linear
from convnet.layers.norm import LocalResponseNorm
from convnet.models.containers import Concat, Sequential
from convnet.zoo import CARDS, MODELS, describe, get_model, listing
from convnet.zoo.densenet import densenet_bc_100
from convnet.zoo.googlenet import AuxClassifier, googlenet, googlenet_torchvision
from convnet.zoo.lenet import lenet5
from convnet.zoo.resnet import resnet18
from tests.utils import numerical_grad, rel_error


def densenet_bc_count(k=12, layers=16, blocks=3, classes=10):
    """DenseNet-BC parameters by hand: conv0, dense layers, transitions, norm5, classifier."""
    total, depth = 3 * 2 * k * 9, 2 * k                        # conv0: 3x3, 3 -> 2k maps
    for b in range(blocks):
        for _ in range(layers):
            total += 2 * depth + depth * 4 * k                 # norm1, conv1 1x1 -> 4k
            total += 2 * 4 * k + 4 * k * k * 9                 # norm2, conv2 3x3 -> k
            depth += k
        if b < blocks - 1:
            total += 2 * depth + depth * (depth // 2)          # transition: norm, conv 1x1
            depth //= 2
    return total + 2 * depth + depth * classes + classes       # norm5, classifier


# Parameters at the default number of classes: torchvision's published counts, the brief's
# AlexNet / ZF Net / LeNet-5 numbers, and for the paper's GoogLeNet torchvision's count
# minus its BN scales (7,280 channels) plus the 5x5-over-3x3 weights (16 * 23,808).
PARAMS = {
    "lenet5": 61_706,
    "alexnet": 60_965_224,
    "alexnet_torchvision": 61_100_840,
    "zfnet": 62_357_608,
    # CONV3-5 256->512->1024->512 and FC 6*6*512 -> 4096, counted by hand
    "zfnet_wide": (96 * 3 * 49 + 96 + 256 * 96 * 25 + 256 + 512 * 256 * 9 + 512
                   + 1024 * 512 * 9 + 1024 + 512 * 1024 * 9 + 512 + 18_432 * 4096 + 4096
                   + 4096 * 4096 + 4096 + 4096 * 1000 + 1000),
    "vgg11": 132_863_336, "vgg13": 133_047_848, "vgg16": 138_357_544, "vgg19": 143_667_240,
    "vgg11_bn": 132_868_840, "vgg13_bn": 133_053_736, "vgg16_bn": 138_365_992,
    "vgg19_bn": 143_678_248,
    "googlenet": 6_624_904 - 7_280 + 16 * 23_808,
    "googlenet_torchvision": 6_624_904,
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
    "resnet101": 44_549_160, "resnet152": 60_192_808,
    "densenet121": 7_978_856, "densenet169": 14_149_480, "densenet201": 20_013_928,
    "densenet_bc_100": densenet_bc_count(),
}
DEFAULT_CLASSES = {"lenet5": 10, "densenet_bc_100": 10}

# Entries in torchvision's state_dict (parameters and buffers, num_batches_tracked too).
STATE_DICT_SIZE = {
    "alexnet_torchvision": 16, "googlenet_torchvision": 344,
    "vgg11": 22, "vgg13": 26, "vgg16": 32, "vgg19": 38,
    "vgg11_bn": 62, "vgg13_bn": 76, "vgg16_bn": 97, "vgg19_bn": 118,
    "resnet18": 122, "resnet34": 218, "resnet50": 320, "resnet101": 626, "resnet152": 932,
    "densenet121": 727, "densenet169": 1015, "densenet201": 1207,
}

# A few state dict keys per model with their shapes (torchvision's where it has the net).
KEYS = {
    "lenet5": {"features.0.weight": (6, 1, 5, 5), "features.3.weight": (16, 6, 5, 5),
               "classifier.0.weight": (120, 400), "classifier.4.weight": (10, 84)},
    "alexnet": {"features.0.weight": (96, 3, 11, 11), "features.4.weight": (256, 48, 5, 5),
                "features.8.weight": (384, 256, 3, 3), "features.10.weight": (384, 192, 3, 3),
                "features.12.weight": (256, 192, 3, 3), "classifier.1.weight": (4096, 9216),
                "classifier.6.bias": (1000,)},
    "alexnet_torchvision": {
        "features.0.weight": (64, 3, 11, 11), "features.3.weight": (192, 64, 5, 5),
        "features.6.weight": (384, 192, 3, 3), "features.8.weight": (256, 384, 3, 3),
        "features.10.weight": (256, 256, 3, 3), "classifier.1.weight": (4096, 9216),
        "classifier.4.weight": (4096, 4096), "classifier.6.weight": (1000, 4096)},
    "zfnet": {"features.0.weight": (96, 3, 7, 7), "features.4.weight": (256, 96, 5, 5),
              "features.10.weight": (384, 384, 3, 3), "features.12.weight": (256, 384, 3, 3),
              "classifier.1.weight": (4096, 9216)},
    "zfnet_wide": {"features.8.weight": (512, 256, 3, 3), "features.10.weight": (1024, 512, 3, 3),
                   "features.12.weight": (512, 1024, 3, 3), "classifier.1.weight": (4096, 18432)},
    "vgg16": {"features.0.weight": (64, 3, 3, 3), "features.28.weight": (512, 512, 3, 3),
              "classifier.0.weight": (4096, 25088), "classifier.3.weight": (4096, 4096),
              "classifier.6.weight": (1000, 4096)},
    "vgg16_bn": {"features.0.weight": (64, 3, 3, 3), "features.1.running_mean": (64,),
                 "features.40.weight": (512, 512, 3, 3), "features.41.running_var": (512,),
                 "classifier.0.weight": (4096, 25088)},
    "googlenet": {"conv1.conv.weight": (64, 3, 7, 7), "conv1.conv.bias": (64,),
                  "inception3a.branch3.1.conv.weight": (32, 16, 5, 5),
                  "inception5b.branch2.1.conv.weight": (384, 192, 3, 3),
                  "fc.weight": (1000, 1024)},
    "googlenet_torchvision": {
        "conv1.conv.weight": (64, 3, 7, 7), "conv1.bn.running_var": (64,),
        "conv2.conv.weight": (64, 64, 1, 1), "conv3.conv.weight": (192, 64, 3, 3),
        "inception3a.branch1.conv.weight": (64, 192, 1, 1),
        "inception3a.branch2.1.conv.weight": (128, 96, 3, 3),
        "inception3a.branch3.1.conv.weight": (32, 16, 3, 3),
        "inception3a.branch4.1.conv.weight": (32, 192, 1, 1),
        "inception5b.branch4.1.bn.bias": (128,), "fc.weight": (1000, 1024)},
    "resnet18": {"conv1.weight": (64, 3, 7, 7), "bn1.num_batches_tracked": (),
                 "layer1.0.conv1.weight": (64, 64, 3, 3),
                 "layer2.0.downsample.0.weight": (128, 64, 1, 1),
                 "layer2.0.downsample.1.running_mean": (128,),
                 "layer4.1.bn2.weight": (512,), "fc.weight": (1000, 512)},
    "resnet50": {"layer1.0.downsample.0.weight": (256, 64, 1, 1),
                 "layer1.0.conv3.weight": (256, 64, 1, 1),
                 "layer4.2.conv3.weight": (2048, 512, 1, 1), "fc.weight": (1000, 2048)},
    "densenet121": {
        "features.conv0.weight": (64, 3, 7, 7), "features.norm0.running_mean": (64,),
        "features.denseblock1.denselayer1.norm1.weight": (64,),
        "features.denseblock1.denselayer1.conv1.weight": (128, 64, 1, 1),
        "features.denseblock1.denselayer6.conv2.weight": (32, 128, 3, 3),
        "features.transition1.norm.weight": (256,),
        "features.transition1.conv.weight": (128, 256, 1, 1),
        "features.denseblock4.denselayer16.norm1.weight": (992,),
        "features.norm5.weight": (1024,), "classifier.weight": (1000, 1024)},
    "densenet_bc_100": {
        "features.conv0.weight": (24, 3, 3, 3),
        "features.denseblock1.denselayer1.conv1.weight": (48, 24, 1, 1),
        "features.denseblock3.denselayer16.conv2.weight": (12, 48, 3, 3),
        "features.transition2.conv.weight": (150, 300, 1, 1),
        "features.norm5.weight": (342,), "classifier.weight": (10, 342)},
}


def volumes(model, shape, prefix=""):
    """{dotted stage name: per-sample output shape}, descending into plain Sequentials."""
    out = {}
    for key, layer in model.named_children():
        name = prefix + key
        if type(layer) is Sequential:
            out.update(volumes(layer, shape, name + "."))
        shape = layer.output_shape(shape)
        out[name] = shape
    return out


def _resnet_volumes(e):
    """The paper's Table 1 output sizes, e = 1 (basic) or 4 (bottleneck)."""
    return {"conv1": (64, 112, 112), "maxpool": (64, 56, 56), "layer1": (64 * e, 56, 56),
            "layer2": (128 * e, 28, 28), "layer3": (256 * e, 14, 14),
            "layer4": (512 * e, 7, 7), "avgpool": (512 * e, 1, 1), "fc": (1000,)}


def _densenet_volumes(block3, block4):
    """DenseNet's Table 1: 56 -> 28 -> 14 -> 7, depth k0 + L*k per block, halved between."""
    return {"features.pool0": (64, 56, 56), "features.denseblock1": (256, 56, 56),
            "features.transition1": (128, 28, 28), "features.denseblock2": (512, 28, 28),
            "features.transition2": (256, 14, 14), "features.denseblock3": (block3, 14, 14),
            "features.transition3": (block3 // 2, 7, 7),
            "features.denseblock4": (block4, 7, 7), "classifier": (1000,)}


VOLUMES = {
    "lenet5": {"features.0": (6, 28, 28), "features.2": (6, 14, 14),
               "features.3": (16, 10, 10), "features": (16, 5, 5), "flatten": (400,)},
    # the notes' AlexNet walk-through
    "alexnet": {"features.0": (96, 55, 55), "features.3": (96, 27, 27),
                "features.4": (256, 27, 27), "features.7": (256, 13, 13),
                "features.8": (384, 13, 13), "features.10": (384, 13, 13),
                "features.12": (256, 13, 13), "features.14": (256, 6, 6),
                "flatten": (9216,), "classifier.1": (4096,)},
    "alexnet_torchvision": {"features.0": (64, 55, 55), "features": (256, 6, 6),
                            "avgpool": (256, 6, 6)},
    # ZF Net's Figure 3
    "zfnet": {"features.0": (96, 110, 110), "features.2": (96, 55, 55),
              "features.4": (256, 26, 26), "features.6": (256, 13, 13),
              "features.8": (384, 13, 13), "features.10": (384, 13, 13),
              "features.12": (256, 13, 13), "features.14": (256, 6, 6)},
    "zfnet_wide": {"features.6": (256, 13, 13), "features.8": (512, 13, 13),
                   "features.10": (1024, 13, 13), "features.12": (512, 13, 13),
                   "features.14": (512, 6, 6), "flatten": (18432,)},
    "vgg16": {"features.1": (64, 224, 224), "features.4": (64, 112, 112),
              "features.9": (128, 56, 56), "features.16": (256, 28, 28),
              "features.23": (512, 14, 14), "features": (512, 7, 7), "flatten": (25088,)},
    "resnet18": _resnet_volumes(1), "resnet34": _resnet_volumes(1),
    "resnet50": _resnet_volumes(4), "resnet101": _resnet_volumes(4),
    "resnet152": _resnet_volumes(4),
    "densenet121": _densenet_volumes(1024, 1024),
    "densenet169": _densenet_volumes(1280, 1664),
    "densenet201": _densenet_volumes(1792, 1920),
    "densenet_bc_100": {"features.conv0": (24, 32, 32), "features.denseblock1": (216, 32, 32),
                        "features.transition1": (108, 16, 16),
                        "features.denseblock2": (300, 16, 16),
                        "features.transition2": (150, 8, 8),
                        "features.denseblock3": (342, 8, 8), "avgpool": (342, 1, 1)},
}


@pytest.mark.parametrize("name", list(MODELS))
def test_model_card(name):
    """Count, default input, output, keys and volumes of every model, built once each."""
    model = MODELS[name](rng=np.random.default_rng(0))
    classes = DEFAULT_CLASSES.get(name, 1000)
    assert model.num_params() == PARAMS[name]
    assert CARDS[name] == (model.input_shape, PARAMS[name])    # what `convnet zoo` lists
    assert model.output_shape(model.input_shape) == (classes,)
    params = model.params()
    assert sum(p.size for p in params.values()) == PARAMS[name]
    assert all(p.dtype == np.float32 for p in params.values())
    state = {**params, **model.buffers()}
    if name in STATE_DICT_SIZE:
        assert len(state) == STATE_DICT_SIZE[name]
    for key, shape in KEYS.get(name, {}).items():
        assert state[key].shape == shape, key
    if name == "vgg16":  # every key: the 13 CONV and 3 FC layers at torchvision's indices
        convs = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
        assert set(state) == {f"{stage}.{i}.{p}" for stage, idx in
                              (("features", convs), ("classifier", (0, 3, 6)))
                              for i in idx for p in ("weight", "bias")}
    got = volumes(model, model.input_shape)
    for stage, shape in VOLUMES.get(name, {}).items():
        assert got[stage] == shape, stage


def test_densenet_bc_100_is_about_0_8m():
    count = densenet_bc_100(rng=np.random.default_rng(0)).num_params()
    assert count == densenet_bc_count() == 769_162
    assert 750_000 <= count <= 850_000


# GoogLeNet's Table 1: output (depth, side) and #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5,
# pool proj of every module.
TABLE1 = {
    "inception3a": (256, 28, (64, 96, 128, 16, 32, 32)),
    "inception3b": (480, 28, (128, 128, 192, 32, 96, 64)),
    "inception4a": (512, 14, (192, 96, 208, 16, 48, 64)),
    "inception4b": (512, 14, (160, 112, 224, 24, 64, 64)),
    "inception4c": (512, 14, (128, 128, 256, 24, 64, 64)),
    "inception4d": (528, 14, (112, 144, 288, 32, 64, 64)),
    "inception4e": (832, 14, (256, 160, 320, 32, 128, 128)),
    "inception5a": (832, 7, (256, 160, 320, 32, 128, 128)),
    "inception5b": (1024, 7, (384, 192, 384, 48, 128, 128)),
}
TABLE1_OTHERS = {"conv1": (64, 112, 112), "maxpool1": (64, 56, 56), "conv3": (192, 56, 56),
                 "maxpool2": (192, 28, 28), "maxpool3": (480, 14, 14),
                 "maxpool4": (832, 7, 7), "avgpool": (1024, 1, 1), "fc": (1000,)}


@pytest.mark.parametrize("factory", [googlenet, googlenet_torchvision])
def test_googlenet_table1(factory):
    model = factory(rng=np.random.default_rng(0))
    shape = model.input_shape
    modules = []
    for key, stage in model.named_children():
        if isinstance(stage, Concat):
            depth, side, (c1, r3, c3, r5, c5, proj) = TABLE1[key]
            # every branch gives its column of Table 1 at the module's H x W
            assert stage["branch1"].output_shape(shape) == (c1, side, side)
            assert stage["branch2"]["0"].output_shape(shape) == (r3, side, side)
            assert stage["branch2"].output_shape(shape) == (c3, side, side)
            assert stage["branch3"]["0"].output_shape(shape) == (r5, side, side)
            assert stage["branch3"].output_shape(shape) == (c5, side, side)
            assert stage["branch4"].output_shape(shape) == (proj, side, side)
            shape = stage.output_shape(shape)
            assert shape == (depth, side, side), key
            modules.append(key)
        else:
            shape = stage.output_shape(shape)
            if key in TABLE1_OTHERS:
                assert shape == TABLE1_OTHERS[key], key
    assert modules == list(TABLE1)
    kernel5 = model["inception4e"]["branch3"]["1"]["conv"].kernel_size
    lrns = [key for key, layer in model.named_layers() if isinstance(layer, LocalResponseNorm)]
    if factory is googlenet:      # the paper: 5x5 CONVs, LRN twice, biases, dropout 0.4
        assert kernel5 == (5, 5) and lrns == ["lrn1", "lrn2"]
        assert model["dropout"].p == 0.4
        assert 6_500_000 < model.num_params() < 7_200_000        # "about 6.8M"
    else:                         # torchvision: 3x3 in branch3, BN, no LRN
        assert kernel5 == (3, 3) and lrns == []


def test_googlenet_aux_heads_counts_and_keys():
    # torchvision's googlenet(aux_logits=True): 13,004,888 parameters
    tv = googlenet_torchvision(aux_logits=True, rng=np.random.default_rng(0))
    assert tv.num_params() == 13_004_888
    keys = tv.params()
    assert keys["aux1.conv.conv.weight"].shape == (128, 512, 1, 1)
    assert keys["aux2.conv.conv.weight"].shape == (128, 528, 1, 1)
    assert keys["aux1.fc1.weight"].shape == (1024, 2048)
    assert keys["aux2.fc2.weight"].shape == (1000, 1024)
    assert tv.output_shape(tv.input_shape) == (1000,)
    # the paper's heads: 5x5/3 average pool, 1x1 CONV 128 (bias), FC-1024, FC-1000
    paper = googlenet(aux_logits=True, rng=np.random.default_rng(0))
    head = (512 * 128 + 128) + (2048 * 1024 + 1024) + (1024 * 1000 + 1000)
    assert paper.num_params() == PARAMS["googlenet"] + 2 * head + 16 * 128
    assert paper["aux1"]["avgpool"].output_shape((512, 14, 14)) == (512, 4, 4)


def test_googlenet_aux_heads_forward_backward():
    model = googlenet_torchvision(num_classes=3, input_size=32, aux_logits=True,
                                  rng=np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    out = model.forward(x)
    assert out.shape == (2, 3) and out.dtype == np.float32
    assert model["aux1"].logits.shape == (2, 3) and model["aux2"].logits.shape == (2, 3)
    dout = np.ones_like(out)
    plain = model.backward(dout)                 # no dlogits: the heads pass dout through
    model.forward(x)
    model["aux1"].dlogits = np.ones((2, 3), dtype=np.float32)
    with_aux = model.backward(dout)
    assert model["aux1"].dlogits is None         # consumed
    assert with_aux.shape == plain.shape == x.shape
    assert np.abs(with_aux - plain).max() > 0
    model.eval()
    model.forward(x)
    assert model["aux1"].logits is None          # eval mode skips the heads


def test_aux_classifier_gradient():
    """The side head's input gradient: d/dx [sum(out * dout) + sum(logits * dlogits)]."""
    rng = np.random.default_rng(3)
    head = AuxClassifier({"flatten": Flatten(), "fc": Linear(12, 3, dtype=np.float64,
                                                               rng=rng)})
    x = rng.standard_normal((2, 3, 2, 2))
    dout, dlogits = rng.standard_normal(x.shape), rng.standard_normal((2, 3))

    def objective():
        out = head.forward(x)
        return np.sum(out * dout) + np.sum(head.logits * dlogits)

    objective()
    head.dlogits = dlogits
    dx = head.backward(dout)
    num = numerical_grad(objective, x, np.array(1.0))
    assert rel_error(dx, num) < 1e-7
    assert head.output_shape((3, 2, 2)) == (3, 2, 2)
    with pytest.raises(ValueError, match="dlogits"):
        head.forward(x)
        head.dlogits = np.zeros((5, 3))
        head.backward(dout)


def test_forward_small_nets():
    rng = np.random.default_rng(0)
    net = lenet5(rng=rng)
    out = net.forward(rng.standard_normal((2, 1, 32, 32)).astype(np.float32))
    assert out.shape == (2, 10) and out.dtype == np.float32 and np.isfinite(out).all()
    dx = net.backward(np.ones_like(out))
    assert dx.shape == (2, 1, 32, 32)
    grads, params = net.grads(), net.params()
    assert grads.keys() == params.keys()
    assert all(grads[k].shape == params[k].shape for k in params)

    net = densenet_bc_100(rng=rng)
    out = net.forward(rng.standard_normal((1, 3, 32, 32)).astype(np.float32))
    assert out.shape == (1, 10) and np.isfinite(out).all()
    assert net.backward(np.ones_like(out)).shape == (1, 3, 32, 32)

    net = resnet18(rng=rng).eval()
    out = net.forward(rng.standard_normal((1, 3, 64, 64)).astype(np.float32))
    assert out.shape == (1, 1000) and np.isfinite(out).all()


def test_lenet5_gradient_spot_check():
    """float64 LeNet-5: backward against central differences at sampled coordinates."""
    rng = np.random.default_rng(4)
    net = lenet5(num_classes=4, dtype=np.float64, rng=rng)
    x = rng.standard_normal((2, 1, 32, 32))
    out = net.forward(x)
    dout = rng.standard_normal(out.shape)
    dx = net.backward(dout)
    grads = {k: v.copy() for k, v in net.grads().items()}
    arrays = {"x": (x, dx), **{k: (p, grads[k]) for k, p in net.params().items()}}
    for key, (array, analytic) in arrays.items():
        flat, gflat = array.reshape(-1), analytic.reshape(-1)
        for i in rng.choice(flat.size, size=min(6, flat.size), replace=False):
            old = flat[i]
            flat[i] = old + 1e-6
            plus = np.sum(net.forward(x) * dout)
            flat[i] = old - 1e-6
            minus = np.sum(net.forward(x) * dout)
            flat[i] = old
            num = (plus - minus) / 2e-6
            assert abs(num - gflat[i]) <= 1e-6 * (abs(num) + abs(gflat[i])) + 1e-9, (key, i)


def test_float64_and_classes():
    net = lenet5(num_classes=3, dtype=np.float64, rng=np.random.default_rng(0))
    assert all(p.dtype == np.float64 for p in net.params().values())
    out = net.forward(np.zeros((1, 1, 32, 32)))
    assert out.shape == (1, 3) and out.dtype == np.float64
    net32 = lenet5(num_classes=3, rng=np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((2, 1, 32, 32))
    out64 = net.forward(x)
    for key, p in net.params().items():
        net32.params()[key][...] = p
    assert rel_error(net32.forward(x.astype(np.float32)), out64) < 1e-5


def test_rng_reproducible():
    a = densenet_bc_100(rng=np.random.default_rng(5)).params()
    b = densenet_bc_100(rng=np.random.default_rng(5)).params()
    c = densenet_bc_100(rng=np.random.default_rng(6)).params()
    key = "features.denseblock2.denselayer3.conv2.weight"
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a[key], c[key])


def test_get_model():
    net = get_model("lenet5", num_classes=4, rng=np.random.default_rng(0))
    assert net.output_shape(net.input_shape) == (4,)
    net = get_model("resnet18", num_classes=10, input_size=32, rng=np.random.default_rng(0))
    assert net.input_shape == (3, 32, 32)
    assert net.output_shape((3, 32, 32)) == (10,)
    with pytest.raises(ValueError) as info:
        get_model("resnet19")
    message = str(info.value)
    assert "unknown model 'resnet19'" in message and "Did you mean" in message
    assert all(name in message for name in MODELS)
    with pytest.raises(ValueError, match="Valid names"):
        get_model("")


@pytest.mark.parametrize("call, match", [
    (lambda: lenet5(num_classes=0), "lenet5: num_classes must be a positive int, got 0"),
    (lambda: resnet18(num_classes=2.5), "resnet18: num_classes"),
    (lambda: get_model("densenet121", input_size=0), "densenet121: input_size"),
    (lambda: get_model("densenet121", input_size=16), "transition3"),  # 16 -> 4 -> 2 -> 1
    (lambda: googlenet_torchvision(input_size=True), "input_size"),
])
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_describe_and_listing():
    rows = describe()
    assert [row["name"] for row in rows] == list(MODELS)
    for row in rows:
        assert row["description"] and "\n" not in row["description"]
        assert row["input_shape"] == CARDS[row["name"]][0]
        assert row["num_params"] == PARAMS[row["name"]]
    text = listing()
    lines = text.splitlines()
    assert len(lines) == len(MODELS) + 1
    assert "138,357,544" in text and "227x227x3" in text and "32x32x1" in text
    assert all(len(line.split()) >= 4 for line in lines[1:])


def test_building_blocks_as_documented():
    """The pieces the docs name: groups in AlexNet, dropout, BN and floored strides."""
    model = MODELS["alexnet"](rng=np.random.default_rng(0))
    groups = [layer.groups for _, layer in model.named_layers() if isinstance(layer, Conv2d)]
    assert groups == [1, 2, 1, 2, 2]
    lrn = model["features"]["2"]
    assert isinstance(lrn, LocalResponseNorm) and (lrn.size, lrn.k, lrn.beta) == (5, 2.0, 0.75)
    drops = [layer.p for _, layer in model.named_layers() if isinstance(layer, Dropout)]
    assert drops == [0.5, 0.5]
    net = resnet18(rng=np.random.default_rng(0))
    assert net["conv1"].fit == "floor" and net["maxpool"].fit == "floor"
    assert net["layer1"]["0"].output_shape((64, 56, 56)) == (64, 56, 56)


def test_the_families_start_from_torchvisions_initial_weights():
    """With PyTorch's default init per layer, VGG-16's activations had shrunk to 4.7e-3 of
    the input's spread by its last CONV (3.9e-2 with torchvision's init), and training
    from scratch barely started; ResNet, VGG, DenseNet and GoogLeNet now start from the
    weights torchvision draws for them."""
    import math

    from convnet.zoo import densenet_bc_100, googlenet_torchvision, resnet18, vgg16
    rng = np.random.default_rng(0)
    net = vgg16(10, 32, rng=rng)
    x = rng.standard_normal((4, 3, 32, 32)).astype(np.float32)
    assert net["features"].forward(x).std() > 0.02
    fc = net["classifier"][0]
    assert abs(fc.weight.std() - 0.01) < 2e-4 and not fc.bias.any()
    assert not net["features"][0].bias.any()
    conv = net["features"][-3]                                  # 512 -> 512, 3x3
    assert abs(conv.weight.std() / math.sqrt(2 / (512 * 9)) - 1) < 0.02
    conv = resnet18(10, 64, rng=rng)["layer1"][0]["conv1"]      # 64 -> 64, 3x3: fan_out
    assert abs(conv.weight.std() / math.sqrt(2 / (64 * 9)) - 1) < 0.02
    dense = densenet_bc_100(10, rng=rng)
    conv = next(layer for _, layer in dense.named_layers()
                if isinstance(layer, Conv2d) and layer.kernel_size == (3, 3)
                and layer.in_channels == 48)                    # 48 -> 12, 3x3: fan_in
    assert abs(conv.weight.std() / math.sqrt(2 / (48 * 9)) - 1) < 0.1
    assert not dense["classifier"].bias.any()
    google = googlenet_torchvision(10, 64, rng=rng)
    assert abs(google["conv1"]["conv"].weight.std() / 0.01 - 1) < 0.05


@pytest.mark.parametrize("make", [
    lambda rng: get_model("lenet5", rng=rng),
    lambda rng: Conv2d(3, 8, 3, rng=rng),
    lambda rng: Linear(3, 8, rng=rng),
    lambda rng: LocallyConnected2d(3, 8, (4, 4), 3, rng=rng),
    lambda rng: Dropout(0.5, rng=rng)])
@pytest.mark.parametrize("rng", [5, np.random.RandomState(0)])
def test_an_rng_that_is_not_a_generator_is_named(make, rng):
    """A seed or a RandomState as rng had failed inside the initializer: AttributeError
    'int' object has no attribute 'random', or a TypeError."""
    with pytest.raises(ValueError, match=rf"rng must be an np.random.Generator or None, got "
                                         rf"{type(rng).__name__}; use "
                                         rf"np.random.default_rng\(seed\)"):
        make(rng)
