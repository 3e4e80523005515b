"""Containers and FC -> CONV: gradient checks, PyTorch comparisons, the notes' examples."""

import numpy as np
import pytest
import torch

from convnet.layers.activation import ReLU, Tanh
from convnet.layers.base import Identity
from convnet.layers.conv import Conv2d
from convnet.layers.dropout import Dropout
from convnet.layers.linear import Flatten, Linear
from convnet.layers.norm import BatchNorm1d, BatchNorm2d
from convnet.layers.pool import AdaptiveAvgPool2d, AdaptiveMaxPool2d, AvgPool2d, MaxPool2d
from convnet.models import (
    Concat,
    DenseBlock,
    Residual,
    Sequential,
    fc_to_conv,
    from_notation,
    slide,
)
from tests.torch_models import to_torch
from tests.utils import numerical_grad, rel_error

F64 = dict(dtype=np.float64)


def conv_bn(c, k, f, stride=1, rng=None):
    return Sequential({"conv": Conv2d(c, k, f, stride, padding=f // 2, bias=False, rng=rng,
                                      **F64),
                       "bn": BatchNorm2d(k, dtype=np.float64)})


def basic_block(c, k, stride, rng, post="relu"):
    """ResNet's basic block; post: the layer after the sum ("relu", "tanh" or None)."""
    shortcut = None
    if stride != 1 or c != k:
        shortcut = Sequential(Conv2d(c, k, 1, stride, bias=False, rng=rng, **F64),
                              BatchNorm2d(k, dtype=np.float64))
    body = {"conv1": Conv2d(c, k, 3, stride, 1, bias=False, rng=rng, **F64),
            "bn1": BatchNorm2d(k, dtype=np.float64), "relu": ReLU(),
            "conv2": Conv2d(k, k, 3, 1, 1, bias=False, rng=rng, **F64),
            "bn2": BatchNorm2d(k, dtype=np.float64)}
    return Residual(body, shortcut, post={"relu": ReLU(), "tanh": Tanh(), None: None}[post])


def inception(c, rng):
    return Concat({
        "branch1": Conv2d(c, 2, 1, rng=rng, **F64),
        "branch2": Sequential(Conv2d(c, 2, 1, rng=rng, **F64), ReLU(),
                              Conv2d(2, 3, 3, padding=1, rng=rng, **F64)),
        "branch3": Sequential(MaxPool2d(3, 1, 1), Conv2d(c, 1, 1, rng=rng, **F64)),
    })


def dense_block(c, growth, layers, rng):
    return DenseBlock({f"denselayer{i + 1}": Sequential({
        "norm1": BatchNorm2d(c + i * growth, dtype=np.float64), "relu1": ReLU(),
        "conv1": Conv2d(c + i * growth, growth, 3, padding=1, bias=False, rng=rng, **F64)})
        for i in range(layers)})


def make(kind, rng):
    if kind == "residual":
        return basic_block(3, 3, 1, rng), (3, 6, 6)
    if kind == "projection":
        return basic_block(2, 4, 2, rng), (2, 7, 7)
    if kind == "residual-nopost":      # as ONNX import builds inverted residuals
        return basic_block(3, 3, 1, rng, post=None), (3, 6, 6)
    if kind == "projection-tanh":
        return basic_block(2, 4, 2, rng, post="tanh"), (2, 7, 7)
    if kind == "concat":
        return inception(3, rng), (3, 5, 5)
    if kind == "dense":
        return dense_block(2, 2, 3, rng), (2, 4, 4)
    return Sequential(conv_bn(2, 3, 3, rng=rng), ReLU(), basic_block(3, 4, 2, rng),
                      inception(4, rng), dense_block(6, 2, 2, rng)), (2, 9, 9)


KINDS = ["residual", "projection", "residual-nopost", "projection-tanh", "concat", "dense",
         "stack"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("training", [True, False])
def test_blocks_match_pytorch(kind, training):
    rng = np.random.default_rng(0)
    model, shape = make(kind, rng)
    compare_with_torch(model, shape, training, rng)


def random_block(rng):
    """A residual (identity or projection), inception, dense block or a stack of them,
    with random channels, strides, growth, depth and input size."""
    c, side = int(rng.integers(1, 5)), 2 * int(rng.integers(2, 5)) + 1   # odd: S=2 fits
    kind = str(rng.choice(["residual", "concat", "dense", "stack"]))
    if kind == "residual":
        k, stride = int(rng.choice([c, c, int(rng.integers(1, 6))])), int(rng.choice([1, 2]))
        return basic_block(c, k, stride, rng), (c, side, side)
    if kind == "concat":
        return inception(c, rng), (c, side, side)
    if kind == "dense":
        return dense_block(c, int(rng.integers(1, 4)), int(rng.integers(1, 4)), rng), \
            (c, side, side)
    k = int(rng.integers(2, 5))
    return Sequential(conv_bn(c, k, 3, rng=rng), ReLU(), basic_block(k, k + 1, 2, rng),
                      inception(k + 1, rng), dense_block(6, 2, 2, rng)), (c, side, side)


@pytest.mark.parametrize("seed", range(24))
def test_random_blocks_match_pytorch(seed):
    rng = np.random.default_rng(800 + seed)
    model, shape = random_block(rng)
    compare_with_torch(model, shape, bool(rng.integers(0, 2)), rng)


def compare_with_torch(model, shape, training, rng):
    """Forward, dx and every parameter's gradient against to_torch(model), float64."""
    model.train(training)
    tmodel = to_torch(model).train(training)
    x = rng.standard_normal((int(rng.integers(2, 4)) if training else 3, *shape))
    out = model.forward(x)
    assert out.shape[1:] == model.output_shape(shape)
    xt = torch.tensor(x, requires_grad=True)
    ot = tmodel(xt)
    assert rel_error(out, ot.detach().numpy()) < 1e-10
    dout = rng.standard_normal(out.shape)
    ot.backward(torch.tensor(dout))
    assert rel_error(model.backward(dout), xt.grad.numpy()) < 1e-10
    tparams = dict(tmodel.named_parameters())
    assert len(tparams) == len(model.params())
    # parameters line up in order of definition
    for (key, g), tg in zip(model.grads().items(), [p.grad for p in tmodel.parameters()]):
        assert rel_error(g, tg.numpy()) < 1e-10, key


@pytest.mark.parametrize("kind", KINDS)
def test_blocks_infer_matches_pytorch_eval_and_keeps_no_cache(kind):
    """infer goes through every child's infer (bounded im2col) and leaves no cache."""
    rng = np.random.default_rng(3)
    model, shape = make(kind, rng)
    model.eval()
    x = rng.standard_normal((2, *shape))
    with torch.no_grad():
        expected = to_torch(model).eval()(torch.tensor(x)).numpy()
    assert rel_error(model.infer(x), expected) < 1e-10
    caches = [layer.cache for _, layer in model.named_layers()] + [model.cache]
    assert all(cache is None for cache in caches)


def randomize_batch_norm(model, rng):
    """Non-trivial running statistics, gamma and beta (away from ReLU's kink)."""
    for _, layer in model.named_layers():
        if isinstance(layer, BatchNorm2d):
            d = layer.num_features
            layer.buffers["running_mean"][:] = rng.standard_normal(d)
            layer.buffers["running_var"][:] = rng.uniform(0.5, 2, d)
            layer.params["weight"][:] = rng.uniform(0.5, 2, d) * rng.choice([-1, 1], d)
            layer.params["bias"][:] = rng.standard_normal(d)


@pytest.mark.parametrize("kind", KINDS)
def test_infer_fuses_conv_bn_relu_and_matches_pytorch(kind, monkeypatch):
    """At inference every CONV -> BN -> RELU run is one pass (BN folded into the filters,
    RELU applied as the output is written); the result is PyTorch's eval output, the
    input is left untouched (the residual sum is done in place on the block's own array)."""
    rng = np.random.default_rng(4)
    model, shape = make(kind, rng)
    model.eval()
    randomize_batch_norm(model, rng)
    x = rng.standard_normal((2, *shape))
    x_before = x.copy()
    with torch.no_grad():
        expected = to_torch(model).eval()(torch.tensor(x)).numpy()
    called = []
    def spying(original):
        def spy(self, a):
            called.append(self.name)
            return original(self, a)
        return spy
    for cls in (BatchNorm2d, ReLU):
        for method in ("forward", "infer"):
            monkeypatch.setattr(cls, method, spying(getattr(cls, method)))
    assert rel_error(model.infer(x), expected) < 1e-10
    assert np.array_equal(x, x_before)
    if kind in ("residual", "projection"):   # every BN and RELU follows a CONV
        assert called == []
    assert all(layer.cache is None for _, layer in model.named_layers())


def test_infer_keeps_batch_statistics_in_training_mode_and_spares_a_viewed_input():
    """A training-mode BN normalizes with the batch's statistics, so infer does not fold
    it; a block whose body returns its input itself does not add into the caller's x."""
    rng = np.random.default_rng(5)
    net = Sequential(Conv2d(2, 3, 3, padding=1, rng=rng, **F64), BatchNorm2d(3, **F64),
                     ReLU())
    twin = Sequential(Conv2d(2, 3, 3, padding=1, **F64), BatchNorm2d(3, **F64), ReLU())
    twin.load_state_dict(net.state_dict())
    x = rng.standard_normal((4, 2, 5, 5))
    assert rel_error(net.infer(x), twin.forward(x)) < 1e-12
    assert rel_error(net[1].buffers["running_mean"], twin[1].buffers["running_mean"]) < 1e-12
    block = Residual({"same": Identity()}, post=ReLU()).eval()
    x_before = x.copy()
    assert rel_error(block.infer(x), np.maximum(2 * x, 0)) < 1e-12
    assert np.array_equal(x, x_before)


@pytest.mark.parametrize("kind", KINDS)
def test_blocks_gradient_check(kind):
    rng = np.random.default_rng(1)
    model, shape = make(kind, rng)
    model.eval()  # deterministic BN (train-mode BN is checked against PyTorch above)
    randomize_batch_norm(model, rng)
    x = rng.standard_normal((2, *shape))
    out = model.forward(x)
    dout = rng.standard_normal(out.shape)
    dx = model.backward(dout)
    grads = {k: v.copy() for k, v in model.grads().items()}
    assert rel_error(dx, numerical_grad(lambda: model.forward(x), x, dout)) < 1e-7
    for key, p in model.params().items():
        assert rel_error(grads[key], numerical_grad(lambda: model.forward(x), p, dout)) < 1e-7


def spy_on_forward(layers):
    """Record each layer's forward calls (the layer and its keyword arguments)."""
    ran = []
    for layer in layers:
        def spy(a, layer=layer, original=layer.forward, **fused):
            ran.append((layer, fused))
            return original(a, **fused)
        layer.forward = spy
    return ran


def one_by_one(layers, x, dout):
    """Output and input gradient of the layers run one by one in the written order, each
    with its own forward and backward passes."""
    out, caches = x.copy(), []
    for layer in layers:
        out = type(layer).forward(layer, out)
        caches.append(layer.cache)
    grad = dout
    for layer, cache in zip(reversed(layers), reversed(caches)):
        layer.cache = cache
        grad = layer.backward(grad)
    return out, grad


@pytest.mark.parametrize("inplace", [True, False])
def test_relu_then_max_pool_runs_as_pool_then_relu_with_the_same_results(inplace):
    """Sequential.forward runs RELU -> max POOL as POOL -> RELU (the RELU on the pooled,
    smaller volume), also after a CONV (no RELU fused into it then): outputs and
    gradients equal the layers run one by one in the written order, with ties, zeros and
    windows that are all negative; average pooling is not swapped."""
    rng = np.random.default_rng(9)
    layers = [ReLU(inplace), MaxPool2d(2), Conv2d(2, 3, 3, padding=1, rng=rng, **F64),
              ReLU(inplace), MaxPool2d(3, 2, 1, fit="floor"), ReLU(), AvgPool2d(2, 1, fit="floor")]
    net = Sequential(*layers)
    x = rng.integers(-2, 3, (3, 2, 8, 8)).astype(np.float64)   # ties, zeros, negatives
    ran = spy_on_forward(layers)
    out = net.forward(x.copy())
    assert ran == [(layers[i], {}) for i in (1, 0, 2, 4, 3, 5, 6)]
    dout = rng.standard_normal(out.shape)
    dx = net.backward(dout)
    expected, grad = one_by_one(layers, x, dout)
    assert np.array_equal(out, expected) and np.array_equal(dx, grad)
    x = rng.standard_normal(x.shape)                         # no ties: a numerical check
    net.forward(x.copy())
    dx = net.backward(dout)
    assert rel_error(dx, numerical_grad(lambda: net.forward(x.copy()), x, dout)) < 1e-7


@pytest.mark.parametrize("inplace", [True, False])
def test_relu_after_conv_is_fused_with_the_same_results(inplace):
    """A RELU right after a CONV (not before a max POOL) runs inside the CONV's call, on
    both of its paths, and is not called itself: outputs and gradients equal the layers
    run one by one in the written order (with the data's gradient skipped, too), and a
    numerical check passes."""
    rng = np.random.default_rng(10)
    layers = [Conv2d(3, 16, 3, padding=1, rng=rng, **F64), ReLU(inplace),      # im2col
              Conv2d(16, 16, 3, padding=1, rng=rng, **F64), ReLU(),           # shifted
              AvgPool2d(2), Conv2d(16, 4, 1, rng=rng, **F64), ReLU(inplace)]
    net = Sequential(*layers)
    x = rng.integers(-2, 3, (2, 3, 8, 8)).astype(np.float64)
    ran = spy_on_forward(layers)
    out = net.forward(x.copy())
    fused = {"relu": True}
    assert ran == [(layers[0], fused), (layers[2], fused), (layers[4], {}), (layers[5], fused)]
    assert all(layers[i].cache is None for i in (1, 3, 6))
    from convnet.functional.conv import shifted
    assert layers[0].cache.relu_out is not None
    assert isinstance(layers[2].cache, shifted.Cache)
    dout = rng.standard_normal(out.shape)
    dx = net.backward(dout)
    dw0 = net.grads()["0.weight"].copy()
    expected, grad = one_by_one(layers, x, dout)
    assert np.array_equal(out, expected) and np.array_equal(dx, grad)
    assert np.array_equal(net.grads()["0.weight"], dw0)
    net.forward(x.copy())
    assert net.backward(dout, input_grad=False) is None
    assert np.array_equal(net.grads()["0.weight"], dw0)
    x = rng.standard_normal(x.shape)
    net.forward(x.copy())
    dx = net.backward(dout)
    assert rel_error(dx, numerical_grad(lambda: net.forward(x.copy()), x, dout)) < 1e-7


def test_relu_before_dilated_max_pool_keeps_its_order_and_backward_follows_the_children():
    """A dilated window may lie wholly in the -inf padding, so RELU -> dilated POOL runs as
    written (PyTorch: -inf there). A layer put in with replace() after forward has no
    cache: backward says so instead of running the old order."""
    x = np.ones((1, 1, 2, 2))
    net = Sequential(ReLU(), MaxPool2d(2, 1, 1, dilation=3, fit="floor"))
    expected = torch_max_pool(np.maximum(x, 0), 2, 1, 1, 3)
    np.testing.assert_array_equal(net.forward(x), expected)
    assert np.isneginf(expected).any()
    net = Sequential(Conv2d(1, 2, 1, **F64), ReLU(), MaxPool2d(2))
    net.forward(x)
    net.replace("2", MaxPool2d(2))
    with pytest.raises(RuntimeError, match="backward called before forward"):
        net.backward(np.ones((1, 2, 1, 1)))


def torch_max_pool(x, kernel, stride, padding, dilation):
    return torch.nn.functional.max_pool2d(torch.tensor(x), kernel, stride, padding,
                                          dilation).numpy()


def test_container_keys_stages_and_state():
    rng = np.random.default_rng(2)
    net = Sequential({"features": Sequential(Conv2d(1, 4, 3, padding=1, rng=rng), ReLU(),
                                             MaxPool2d(2)),
                      "classifier": Sequential(Flatten(), Linear(4 * 4 * 4, 10, rng=rng))})
    assert list(net.params()) == ["features.0.weight", "features.0.bias",
                                  "classifier.1.weight", "classifier.1.bias"]
    assert list(net.grads()) == list(net.params())
    assert net.num_params() == 40 + 650
    assert net["features"][0].name == "features.0"
    assert net.output_shape((1, 8, 8)) == (10,)
    assert net.macs((1, 8, 8)) == 8 * 8 * 4 * 9 + 64 * 10
    assert net.cut("features").output_shape((1, 8, 8)) == (4, 4, 4)
    with pytest.raises(ValueError, match="no stage named 'head'.*features"):
        net.cut("head")
    net.eval()
    assert not any(layer.training for _, layer in net.named_layers())
    out = net.forward(np.ones((2, 1, 8, 8), np.float32))
    assert out.shape == (2, 10)
    net.clear_cache()
    with pytest.raises(RuntimeError, match=r"classifier\.1 Linear.*before forward"):
        net.backward(np.ones((2, 10), np.float32))


def test_residual_without_projection_reports_the_mismatch():
    block = basic_block(2, 2, 1, None)
    block._children["conv2"] = Conv2d(2, 4, 3, padding=1)  # body now changes the depth
    block._children["bn2"] = BatchNorm2d(4)
    with pytest.raises(ValueError, match="projection shortcut"):
        block.output_shape((2, 6, 6))


# -- FC -> CONV --------------------------------------------------------------------------
def unpadded_net(rng, pad=0):
    """224x224x3 -> 7x7x4 with five 2x2 pools (total stride 32), then an FC head."""
    layers = []
    c = 3
    for _ in range(5):
        layers += [Conv2d(c, 4, 1 + 2 * pad, padding=pad, rng=rng, **F64), ReLU(),
                   MaxPool2d(2)]
        c = 4
    net = Sequential({"features": Sequential(*layers),
                      "classifier": Sequential(Flatten(), Linear(7 * 7 * 4, 6, rng=rng, **F64),
                                               BatchNorm1d(6, dtype=np.float64), ReLU(),
                                               Linear(6, 5, rng=rng, **F64))})
    net.input_shape = (3, 224, 224)
    return net.eval()


def test_fc_to_conv_is_identical_on_the_original_size():
    rng = np.random.default_rng(3)
    net = unpadded_net(rng, pad=1)
    net["classifier"][2].buffers["running_mean"][:] = rng.standard_normal(6)
    conv_net = fc_to_conv(net)
    assert isinstance(conv_net["classifier"][0], Identity)
    assert isinstance(conv_net["classifier"][1], Conv2d)
    assert conv_net["classifier"][1].kernel_size == (7, 7)
    assert conv_net["classifier"][4].kernel_size == (1, 1)
    x = rng.standard_normal((2, 3, 224, 224))
    out = conv_net.forward(x)
    assert out.shape == (2, 5, 1, 1)
    assert rel_error(out[:, :, 0, 0], net.forward(x)) < 1e-10


def test_fc_to_conv_slides_over_384_as_36_crops_at_stride_32():
    rng = np.random.default_rng(4)
    net = unpadded_net(rng)
    conv_net = fc_to_conv(net)
    x = rng.standard_normal((1, 3, 384, 384))
    scores = conv_net.forward(x)
    assert scores.shape == (1, 5, 6, 6)  # the notes' 6x6 map of class scores
    crops = np.stack([x[0, :, 32 * i: 32 * i + 224, 32 * j: 32 * j + 224]
                      for i in range(6) for j in range(6)])
    expected = net.forward(crops).reshape(6, 6, 5).transpose(2, 0, 1)
    assert rel_error(scores[0], expected) < 1e-10


def test_padded_nets_slide_only_approximately():
    rng = np.random.default_rng(5)
    net = unpadded_net(rng, pad=1)
    conv_net = fc_to_conv(net)
    x = rng.standard_normal((1, 3, 288, 288))
    scores = conv_net.forward(x)[0]                                  # (5, 3, 3)
    crops = np.stack([x[0, :, 32 * i: 32 * i + 224, 32 * j: 32 * j + 224]
                      for i in range(3) for j in range(3)])
    expected = net.forward(crops).reshape(3, 3, 5).transpose(2, 0, 1)
    assert rel_error(scores[:, 0, 0], expected[:, 0, 0]) > 1e-6     # borders differ
    assert rel_error(scores, expected) < 3e-3       # (it is 3e-4; scores x2 give 0.33)


def test_slide_combines_shifted_passes_for_stride_16():
    rng = np.random.default_rng(6)
    net = unpadded_net(rng)
    conv_net = fc_to_conv(net)
    x = rng.standard_normal((1, 3, 288, 320))
    scores = slide(conv_net, x, net_stride=32, factor=2)
    assert scores.shape == (1, 5, 5, 7)  # (288-224)/16+1, (320-224)/16+1
    crops = np.stack([x[0, :, 16 * i: 16 * i + 224, 16 * j: 16 * j + 224]
                      for i in range(5) for j in range(7)])
    expected = net.forward(crops).reshape(5, 7, 5).transpose(2, 0, 1)
    assert rel_error(scores[0], expected) < 1e-10
    # an image too small for the shifted copies had failed deep inside a CONV layer
    with pytest.raises(ValueError, match=r"slide: the images are 240x250 \(H x W\); each "
                                         r"shifted copy is 32 smaller .* give at least "
                                         r"256x256"):
        slide(conv_net, x[:, :, :240, :250], net_stride=32, factor=2)
    # a net_stride that is not the net's had interleaved maps of the wrong size silently
    with pytest.raises(ValueError, match=r"slide: the pass shifted by \(0, 32\) gave a "
                                         r"3x2 map where a net of total stride 64 gives "
                                         r"3x3: net_stride must be the product"):
        slide(conv_net, x, net_stride=64, factor=2)


@pytest.mark.parametrize("call, message", [
    (lambda net, x: fc_to_conv(net, (1, 5.0, 5)), r"fc_to_conv: input_shape must be "
                                                  r"positive ints \(C, H, W\), got \(1, 5.0"),
    (lambda net, x: fc_to_conv(net, (1, 0, 5)), "input_shape must be positive ints"),
    (lambda net, x: slide(net, x, 4, 0), "slide: factor must be a positive int, got 0"),
    (lambda net, x: slide(net, x, 4, -2), "factor must be a positive int, got -2"),
    (lambda net, x: slide(net, x, 4, 2.0), "factor must be a positive int, got 2.0"),
    (lambda net, x: slide(net, x[0], 4, 2), r"x must be a batch of images \(N, C, H, W\), "
                                            r"got \(1, 9, 9\)")])
def test_fc_to_conv_and_slide_check_their_arguments(call, message):
    """They had failed with a ZeroDivisionError, a NumPy error or a layer's error about a
    kernel size the user never gave."""
    net = Sequential(Conv2d(1, 2, 3), Flatten(), Linear(18, 4))
    net.input_shape = (1, 5, 5)
    converted = fc_to_conv(net, np.array([1, 5, 5]))
    assert converted.input_shape == (1, 5, 5)
    assert all(type(v) is int for v in converted.input_shape)   # JSON can hold it
    with pytest.raises(ValueError, match=message):
        call(converted if "slide" in message or "x must" in message else net,
             np.zeros((1, 1, 9, 9)))


@pytest.mark.parametrize("options", [dict(affine=False), dict(track_running_stats=False),
                                     dict(dtype=np.float64)])
def test_fc_to_conv_keeps_a_batch_norm_after_an_fc_as_it_was(options, tmp_path):
    """A BatchNorm1d after an FC becomes a BatchNorm2d with the same options and dtype:
    it had become affine, tracking and float32 whatever it was (a net of
    track_running_stats=False then failed, one of affine=False saved a file it could not
    read back). A frozen layer stays frozen."""
    from convnet.io.convert import read_any
    from convnet.io.weights import save_model
    dtype = options.get("dtype", np.float32)
    rng = np.random.default_rng(3)
    bn = BatchNorm1d(10, **options)
    net = Sequential(Conv2d(3, 4, 3, dtype=dtype, rng=rng), ReLU(), Flatten(),
                     Linear(4 * 6 * 6, 10, dtype=dtype, rng=rng), bn, ReLU(),
                     Linear(10, 3, dtype=dtype, rng=rng))
    net[3].frozen = True
    for key in bn.buffers:
        if key.startswith("running"):
            bn.buffers[key][...] = rng.uniform(0.5, 1.5, 10)
    if bn.track_running_stats:
        net.eval()
    converted = fc_to_conv(net, (3, 8, 8))
    new = converted[4]
    assert isinstance(new, BatchNorm2d)
    assert (new.affine, new.track_running_stats, new.dtype) == (
        bn.affine, bn.track_running_stats, np.dtype(dtype))
    assert converted[3].frozen and not converted[6].frozen
    x = rng.standard_normal((4, 3, 8, 8)).astype(dtype)
    np.testing.assert_allclose(converted.forward(x)[:, :, 0, 0], net.forward(x),
                               rtol=1e-5, atol=1e-6)
    save_model(converted, tmp_path / "c.json")
    back = read_any(tmp_path / "c.json")
    for key, value in converted.state_dict().items():
        assert back.state_dict()[key].dtype == value.dtype, key


def test_fc_to_conv_refuses_a_vector_net_and_passes_a_flatten_of_a_vector():
    """A net of vectors had come back as 1x1 CONVs that could not run; a second Flatten
    (of a vector) had raised an unpacking error."""
    with pytest.raises(ValueError, match=r"fc_to_conv: the net takes input of shape "
                                         r"\(784,\); .* must be an image volume"):
        fc_to_conv(from_notation("INPUT 784 -> FC 10 -> RELU -> FC 5"))
    rng = np.random.default_rng(8)
    net = Sequential(Conv2d(3, 4, 3, rng=rng, **F64), Flatten(), Flatten(),
                     Linear(4 * 6 * 6, 5, rng=rng, **F64), Flatten(),
                     Linear(5, 2, rng=rng, **F64))
    conv_net = fc_to_conv(net, (3, 8, 8))
    x = rng.standard_normal((2, 3, 8, 8))
    assert rel_error(conv_net.forward(x)[:, :, 0, 0], net.forward(x)) < 1e-10


def test_fc_to_conv_drops_an_identity_adaptive_pool_and_needs_a_shape():
    rng = np.random.default_rng(7)
    net = Sequential(Conv2d(3, 2, 3, padding=1, rng=rng, **F64), AvgPool2d(2),
                     AdaptiveAvgPool2d(4), Flatten(), Linear(32, 3, rng=rng, **F64))
    with pytest.raises(ValueError, match="input_shape"):
        fc_to_conv(net)
    conv_net = fc_to_conv(net, (3, 8, 8))
    assert isinstance(conv_net[2], Identity)
    x = rng.standard_normal((2, 3, 8, 8))
    assert rel_error(conv_net.forward(x)[:, :, 0, 0], net.forward(x)) < 1e-10
    assert conv_net.forward(rng.standard_normal((1, 3, 12, 12))).shape == (1, 3, 3, 3)


def crops_of(x, size, step, n):
    return np.stack([x[0, :, step * i: step * i + size, step * j: step * j + size]
                     for i in range(n) for j in range(n)])


@pytest.mark.parametrize("head", ["flatten-bn", "gap", "pool-2x2"])
def test_fc_to_conv_slides_heads_with_batch_norm_or_adaptive_pooling(head):
    """A BatchNorm1d over the flattened volume (folded into the first FC) and adaptive
    pooling (AvgPool2d at stride 1, then a dilated CONV) slide exactly: the first had
    built a net that could not run, the second a 1x1 map on any image."""
    rng = np.random.default_rng(11)
    body = [Conv2d(2, 3, 3, rng=rng, **F64), ReLU(), MaxPool2d(2)]     # 12 -> 10 -> 5
    if head == "flatten-bn":
        tail = [Flatten(), BatchNorm1d(75, dtype=np.float64), Linear(75, 4, rng=rng, **F64)]
    elif head == "gap":
        tail = [AdaptiveAvgPool2d(1), Flatten(), Linear(3, 4, rng=rng, **F64)]
    else:
        body[-1] = MaxPool2d(2, 1)                                     # 12 -> 10 -> 9
        tail = [AdaptiveAvgPool2d(3), Flatten(), Dropout(0.5), Linear(27, 4, rng=rng, **F64)]
    net = Sequential(*body, *tail).eval()
    for _, layer in net.named_layers():
        if isinstance(layer, BatchNorm1d):
            layer.buffers["running_mean"][:] = rng.standard_normal(75)
            layer.buffers["running_var"][:] = rng.uniform(0.5, 2, 75)
            layer.params["weight"][:] = rng.uniform(0.5, 1.5, 75)
    conv_net = fc_to_conv(net, (2, 12, 12)).eval()
    x = rng.standard_normal((2, 2, 12, 12))
    assert rel_error(conv_net.forward(x)[:, :, 0, 0], net.forward(x)) < 1e-10
    step = 2 if head != "pool-2x2" else 1
    big = rng.standard_normal((1, 2, 12 + 4 * step, 12 + 4 * step))
    scores = conv_net.forward(big)[0]
    assert scores.shape == (4, 5, 5)
    expected = net.forward(crops_of(big, 12, step, 5)).reshape(5, 5, 4).transpose(2, 0, 1)
    assert rel_error(scores, expected) < 1e-10


@pytest.mark.parametrize("case", ["global-max", "uneven-avg", "enlarge-avg", "enlarge-max",
                                  "uneven-avg-bn"])
def test_fc_to_conv_slides_adaptive_pools_folded_into_the_first_fc(case):
    """A global max pool slides (MaxPool2d at stride 1, a dilated CONV); an adaptive pool
    over unequal windows, or enlarging (VGG's at 32x32), is folded into the first FC's
    weights. Each had given a 1x1 map on any larger image, without a word."""
    rng = np.random.default_rng(14)
    body = [Conv2d(2, 3, 3, rng=rng, **F64), ReLU()]                    # 12 -> 10
    step, features = 1, 3
    pool = {"global-max": AdaptiveMaxPool2d(1), "uneven-avg": AdaptiveAvgPool2d(4),
            "enlarge-avg": AdaptiveAvgPool2d(15), "uneven-avg-bn": AdaptiveAvgPool2d(3),
            "enlarge-max": AdaptiveMaxPool2d(10)}[case]
    if case == "enlarge-max":           # 10 -> 5, each value repeated 2x2 times
        body.append(MaxPool2d(2))
        step = 2
    size = pool.output_size if isinstance(pool.output_size, int) else pool.output_size[0]
    features *= size * size
    tail = [Flatten(), Linear(features, 4, rng=rng, **F64)]
    if case == "uneven-avg-bn":
        bn = BatchNorm1d(features, dtype=np.float64)
        bn.buffers["running_mean"][:] = rng.standard_normal(features)
        bn.buffers["running_var"][:] = rng.uniform(0.5, 2, features)
        tail.insert(1, bn)
    net = Sequential(*body, pool, *tail).eval()
    conv_net = fc_to_conv(net, (2, 12, 12)).eval()
    x = rng.standard_normal((2, 2, 12, 12))
    assert rel_error(conv_net.forward(x)[:, :, 0, 0], net.forward(x)) < 1e-10
    big = rng.standard_normal((1, 2, 12 + 4 * step, 12 + 4 * step))
    scores = conv_net.forward(big)[0]
    assert scores.shape == (4, 5, 5)
    expected = net.forward(crops_of(big, 12, step, 5)).reshape(5, 5, 4).transpose(2, 0, 1)
    assert rel_error(scores, expected) < 1e-10


@pytest.mark.parametrize("after", ["relu", "no-fc"])
def test_fc_to_conv_folds_no_pool_that_an_activation_or_nothing_follows(after):
    """An activation between the Flatten and the FC acts on the pooled values, which a
    fold no longer makes (the scores had been wrong by 0.18); with no FC after the
    Flatten there is nothing to fold into (the pool had been dropped)."""
    rng = np.random.default_rng(16)
    tail = [ReLU(), Linear(18, 4, rng=rng, **F64)] if after == "relu" else []
    net = Sequential(Conv2d(1, 2, 1, rng=rng, **F64), AdaptiveAvgPool2d(3), Flatten(),
                     *tail).eval()
    conv_net = fc_to_conv(net, (1, 5, 5))
    assert isinstance(conv_net[1], AdaptiveAvgPool2d)
    x = rng.standard_normal((2, 1, 5, 5))
    out = conv_net.forward(x)
    expected = net.forward(x)
    if after == "relu":
        assert rel_error(out[:, :, 0, 0], expected) < 1e-10
    else:
        assert rel_error(out.reshape(2, -1), expected) < 1e-10


def test_fc_to_conv_keeps_a_max_pool_over_unequal_windows():
    """Not a linear map, and not k x k windows: kept, exact at the original size only."""
    rng = np.random.default_rng(15)
    net = Sequential(Conv2d(2, 3, 3, rng=rng, **F64), AdaptiveMaxPool2d(4), Flatten(),
                     Linear(48, 4, rng=rng, **F64)).eval()
    conv_net = fc_to_conv(net, (2, 12, 12))
    assert isinstance(conv_net[1], AdaptiveMaxPool2d)
    x = rng.standard_normal((2, 2, 12, 12))
    assert rel_error(conv_net.forward(x)[:, :, 0, 0], net.forward(x)) < 1e-10


@pytest.mark.parametrize("case", ["pool-conv", "pool-maxpool", "two-pools", "enlarge",
                                  "uneven", "subclass-head"])
def test_fc_to_conv_keeps_pools_that_cannot_slide_and_converts_every_stage(case):
    """An adaptive pool slides only right before the Flatten: one followed by a CONV, a
    pool or another adaptive pool is kept, and the net is exact at the original size (as
    it is with an enlarging one, or one with windows of unequal sizes, folded into the
    FC); a stage that is a Sequential subclass is converted as a Sequential is."""
    rng = np.random.default_rng(12)
    conv = Conv2d(2, 4, 3, padding=1, rng=rng, **F64)
    pool, tail = AdaptiveAvgPool2d(2), [Flatten(), Linear(16, 5, rng=rng, **F64)]
    body = {"pool-conv": [pool, Conv2d(4, 4, 3, padding=1, rng=rng, **F64)],
            "pool-maxpool": [AdaptiveAvgPool2d(4), MaxPool2d(2)],
            "two-pools": [AdaptiveAvgPool2d(4), pool],
            "enlarge": [AdaptiveAvgPool2d(1), pool],
            "uneven": [AvgPool2d(4, 1), pool],          # 8 -> 5 -> 2: windows of 2 and 3
            "subclass-head": [pool]}[case]

    class Head(Sequential):
        pass
    head = Head(*tail) if case == "subclass-head" else Sequential(*tail)
    net = Sequential({"features": Sequential(conv, *body), "head": head}).eval()
    converted = fc_to_conv(net, (2, 8, 8))
    x = rng.standard_normal((3, 2, 8, 8))
    out = converted.forward(x)
    assert out.shape == (3, 5, 1, 1)
    assert rel_error(out[:, :, 0, 0], net.forward(x)) < 1e-10


def test_fc_to_conv_returns_a_net_with_a_folded_batch_norm_in_eval_mode():
    rng = np.random.default_rng(13)
    net = Sequential(Conv2d(1, 2, 3, rng=rng, **F64), Flatten(),
                     BatchNorm1d(8, dtype=np.float64), Linear(8, 2, rng=rng, **F64))
    assert net.training
    converted = fc_to_conv(net, (1, 4, 4))
    assert not converted.training
    net.eval()
    x = rng.standard_normal((2, 1, 4, 4))
    assert rel_error(converted.forward(x)[:, :, 0, 0], net.forward(x)) < 1e-10
    plain = fc_to_conv(Sequential(Conv2d(1, 2, 3, **F64), Flatten(), Linear(8, 2, **F64)),
                       (1, 4, 4))
    assert plain.training                         # no fold: the model's mode


def test_vgg_built_for_small_images_converts():
    """VGG at 32x32: its adaptive pool enlarges 1x1 to 7x7 and is kept."""
    from convnet.zoo import get_model
    net = get_model("vgg11", num_classes=4, input_size=32, rng=np.random.default_rng(0))
    converted = fc_to_conv(net.eval())
    x = np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)
    assert rel_error(converted.forward(x)[:, :, 0, 0], net.forward(x)) < 1e-5


def test_fc_to_conv_copies_blocks_before_the_head_and_shares_nothing():
    """ResNet's residual blocks are the conv body: copied, not refused as 'inside the FC
    head'. The result shares no layer with the model: eval() or new weights on one leave
    the other alone."""
    from convnet.zoo import resnet18
    net = resnet18(num_classes=5, input_size=32, rng=np.random.default_rng(0)).eval()
    conv_net = fc_to_conv(net).eval()
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    assert rel_error(conv_net.forward(x)[:, :, 0, 0], net.forward(x)) < 1e-5
    ours = dict(conv_net.named_layers())
    assert all(ours[name] is not layer for name, layer in net.named_layers() if name in ours)
    ours["conv1"].params["weight"][...] = 0
    assert np.abs(net["conv1"].params["weight"]).max() > 0
    dropped = Sequential(Conv2d(1, 2, 3, **F64), Flatten(), Dropout(0.5), Linear(8, 2, **F64))
    converted = fc_to_conv(dropped, (1, 4, 4))
    converted.eval()
    assert dropped[2].training and not converted[2].training


def test_fc_to_conv_refuses_a_flattened_batch_norm_that_is_not_right_before_an_fc():
    net = Sequential(Conv2d(1, 2, 3, **F64), Flatten(), BatchNorm1d(8, dtype=np.float64),
                     ReLU(), Linear(8, 2, **F64))
    net[2].name = "2"
    with pytest.raises(ValueError, match=r"fc_to_conv: 2 normalizes each position of the "
                                         r"flattened volume and .* follows it"):
        fc_to_conv(net, (1, 4, 4))


@pytest.mark.parametrize("kind", KINDS)
def test_config_round_trip_rebuilds_the_same_architecture(kind):
    import json

    from convnet.models import from_config
    model, shape = make(kind, np.random.default_rng(8))
    config = json.loads(json.dumps(model.get_config()))
    rebuilt = from_config(config, rng=np.random.default_rng(9))
    assert rebuilt.get_config() == model.get_config()
    assert list(rebuilt.params()) == list(model.params())
    assert rebuilt.output_shape(shape) == model.output_shape(shape)


def test_the_newer_pools_and_dropout2d_save_and_load(tmp_path):
    """AdaptiveMaxPool2d, Dropout2d and AvgPool2d's divisor_override: a model file that
    holds them loads as it was saved (from_config knows them)."""
    from convnet.io import load_model, save_model
    from convnet.layers import AdaptiveMaxPool2d, AvgPool2d, Dropout2d
    model = Sequential(Conv2d(1, 4, 3, **F64), Dropout2d(0.2), AvgPool2d(2, divisor_override=3),
                       AdaptiveMaxPool2d((2, 1)), Flatten(), Linear(8, 3, **F64)).eval()
    loaded = load_model(save_model(model, tmp_path / "m")).eval()
    assert loaded.get_config() == model.get_config()
    assert [type(layer).__name__ for layer in loaded] == [
        "Conv2d", "Dropout2d", "AvgPool2d", "AdaptiveMaxPool2d", "Flatten", "Linear"]
    x = np.random.default_rng(3).standard_normal((2, 1, 10, 10))
    np.testing.assert_array_equal(loaded.forward(x), model.forward(x))


def test_config_errors_name_the_place():
    from convnet.models import from_config
    with pytest.raises(ValueError, match="unknown layer type 'Conv3d'"):
        from_config({"type": "Sequential", "children": [["0", {"type": "Conv3d"}]]})
    with pytest.raises(ValueError, match=r"model config, layer 0: malformed Conv2d config: "
                                         r"missing field\(s\) in_channels"):
        from_config({"type": "Sequential", "children": [["0", {"type": "Conv2d"}]]})


def test_backward_without_input_grad_gives_the_same_parameter_gradients():
    """The training loop's backward(dout, input_grad=False): the first CONV skips dx."""
    rng = np.random.default_rng(4)
    model = Sequential(Sequential(conv_bn(2, 3, 3, rng=rng), ReLU()), basic_block(3, 4, 2, rng))
    x = rng.standard_normal((2, 2, 7, 7))
    dout = rng.standard_normal((2, *model.output_shape((2, 7, 7))))
    model.forward(x)
    dx = model.backward(dout)
    full = {key: g.copy() for key, g in model.grads().items()}
    model.forward(x)
    assert dx is not None and model.backward(dout, input_grad=False) is None
    for key, g in model.grads().items():
        assert rel_error(g, full[key]) < 1e-12, key
    # a layer with no parameters before the first that has some gets no backward pass
    relu_first = Sequential(ReLU(), Conv2d(2, 2, 1, dtype=np.float64, rng=rng))
    relu_first.forward(x)
    relu_first[0].backward = None
    assert relu_first.backward(rng.standard_normal((2, 2, 7, 7)), input_grad=False) is None
    # frozen layers skipped: None, not the gradient of an inner activation
    frozen_first = Sequential(Conv2d(2, 2, 1, dtype=np.float64, rng=rng), ReLU(),
                              Conv2d(2, 2, 1, dtype=np.float64, rng=rng)).freeze("0")
    frozen_first.forward(x)
    assert frozen_first.backward(rng.standard_normal((2, 2, 7, 7)), input_grad=False) is None
    # a first layer that trains but cannot skip dx (a Residual block) returns it
    block_first = Sequential(basic_block(2, 2, 1, rng), ReLU())
    block_first.forward(x)
    dx = block_first.backward(rng.standard_normal((2, 2, 7, 7)), input_grad=False)
    assert dx.shape == x.shape


def test_load_state_dict_refuses_a_dtype_that_does_not_fit_and_copies_nothing():
    """A float32 weight whose file says int32 (the same bytes) would load as integer bits;
    an int64 counter is not a float. Both are listed, with the model's and file's dtypes."""
    model = Sequential(Linear(2, 3, rng=np.random.default_rng(0)), BatchNorm1d(3))
    state = {key: value.copy() for key, value in model.state_dict().items()}
    state["0.weight"] = state["0.weight"].view(np.int32)
    state["1.num_batches_tracked"] = np.array(1.0)
    state["1.running_mean"] = [0.0, 0.0, 0.0]
    before = {key: value.copy() for key, value in model.state_dict().items()}
    with pytest.raises(ValueError, match="mistyped keys") as info:
        model.load_state_dict(state)
    for text in ("0.weight: model float32, file int32",
                 "1.num_batches_tracked: model int64, file float64",
                 "1.running_mean: model float32, file a list (not a NumPy array)"):
        assert text in str(info.value)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[key])
    state = {key: value.astype(np.float16) if value.dtype.kind == "f" else value
             for key, value in before.items()}
    assert model.load_state_dict(state) == ([], [])       # float16 is cast, as before


def test_output_shape_holds_every_volume_to_the_cap(monkeypatch):
    from convnet import limits
    net = Sequential(Conv2d(1, 8, 3, padding=1), Concat({"a": Identity(), "b": Identity()}))
    assert net.output_shape((1, 16, 16)) == (16, 16, 16)
    monkeypatch.setattr(limits, "MAX_VOLUME", 4000)
    with pytest.raises(ValueError, match=r"^1 Concat: its output \(16, 16, 16\): values "
                                         r"per sample 4,096 is over the cap of 4,000"):
        net.output_shape((1, 16, 16))
    with pytest.raises(ValueError, match=r"^0 Conv2d\(.*\(8, 32, 32\).*MAX_VOLUME"):
        net.output_shape((1, 32, 32))


def test_config_caps_depth_layers_and_parameters():
    from convnet.models import from_config
    config = {"type": "ReLU"}
    for _ in range(33):
        config = {"type": "Sequential", "children": [["0", config]]}
    with pytest.raises(ValueError, match=r"m\.json, layer 0(\.0)+: containers nested 33 is "
                                         r"over the cap of 32 \(convnet.limits.MAX_DEPTH\)"):
        from_config(config, where="m.json")
    wide = {"type": "Sequential", "children": [[str(i), {"type": "ReLU"}]
                                               for i in range(10_001)]}
    with pytest.raises(ValueError, match="m.json: layers 10,002 is over the cap of 10,000"):
        from_config(wide, where="m.json")
    huge = {"type": "Sequential", "children": [["fc", {
        "type": "Linear", "in_features": 10**6, "out_features": 10**6}]]}
    with pytest.raises(ValueError, match=r"m\.json, layer fc: Linear with weight "
                                         r"\(1000000, 1000000\): parameters"):
        from_config(huge, where="m.json")


@pytest.mark.parametrize("field, value, words", [
    ("in_channels", "3", "in_channels must be a positive int, got '3'"),
    ("kernel_size", [3, None], "kernel_size must be a positive int or a pair"),
    ("bias", 1, "bias must be True or False, got 1"),
    ("dtype", None, "dtype must be float32 or float64, got None"),
    ("stride", {"a": 1}, "stride must be a positive int or a pair"),
    ("groups", True, "groups must be a positive int, got True"),
    ("weights", 1, "malformed Conv2d config: unknown field(s) 'weights'"),
])
def test_config_field_errors_name_the_file_the_layer_and_the_field(field, value, words):
    from convnet.models import from_config
    conv = {"type": "Conv2d", "in_channels": 3, "out_channels": 4, "kernel_size": 3}
    config = {"type": "Sequential", "children": [
        ["features", {"type": "Sequential", "children": [["0", conv | {field: value}]]}]]}
    with pytest.raises(ValueError) as info:
        from_config(config, where="model.json")
    assert str(info.value).startswith("model.json, layer features.0: ")
    assert words in str(info.value), str(info.value)


def test_a_state_dict_missing_every_key_is_one_readable_line():
    from convnet.zoo import densenet121
    model = densenet121()
    with pytest.raises(ValueError) as info:
        model.load_state_dict({"conv0.weight": np.zeros(3)})
    message = str(info.value)
    # num_batches_tracked is not missing when absent (PyTorch fills it)
    count = sum(not k.endswith("num_batches_tracked") for k in model.state_dict())
    assert len(message) < 1000 and "\n" not in message
    assert "features.conv0.weight, " in message
    assert f"({count - 8:,} more, {count:,} in all)" in message
    assert "unexpected keys: conv0.weight" in message


def test_a_model_that_only_infers_holds_no_gradient_memory():
    """The gradients are made as zero pages the OS maps only when a backward pass writes
    them: building a 67M-parameter model (269 MB of weights) for summary or predict takes
    about the weights, not twice them."""
    import subprocess
    import sys
    code = ("import os\n"
            "from convnet.models import from_notation\n"
            "m = from_notation('INPUT 4096 -> FC 16384 -> FC 10')\n"
            "pages = int(open('/proc/self/statm').read().split()[1])\n"
            "print(pages * os.sysconf('SC_PAGE_SIZE'), m.num_params() * 4)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    resident, weights = map(int, out.split())       # resident now, after the build
    assert resident < 1.5 * weights, (resident, weights)


def test_a_conv_too_wide_for_the_volume_cap_is_refused_before_its_filters_are_made():
    import tracemalloc
    tracemalloc.start()
    with pytest.raises(ValueError, match=r"CONV: its output 8x8x100000000.*MAX_VOLUME"):
        from_notation("INPUT 8x8x1 -> CONV 100000000 -> FC 10")
    with pytest.raises(ValueError, match=r"CONV: its output 8x8x100000000.*MAX_VOLUME"):
        from_notation("INPUT 8x8x1 -> CONV 100000000 Psame -> FC 10")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 16 << 20, peak


# -- CONV -> FC: the same function as an FC layer --------------------------------------------
@pytest.mark.parametrize("seed", range(40))
def test_conv_to_fc_computes_the_conv_layers_function(seed):
    """Random K, F, S, P, dilation and groups: the FC layer's output is the CONV layer's,
    flattened; its matrix is zero outside the windows and repeats the filters."""
    from convnet.models import conv_to_fc
    rng = np.random.default_rng(seed)
    groups = int(rng.choice([1, 2]))
    c, k = groups * int(rng.integers(1, 4)), groups * int(rng.integers(1, 4))
    f, s, p, d = (int(rng.integers(1, 4)), int(rng.integers(1, 3)), int(rng.integers(0, 2)),
                  int(rng.integers(1, 3)))
    size = d * (f - 1) + 1 + int(rng.integers(0, 6))
    conv = Conv2d(c, k, f, s, p, d, groups=groups, bias=bool(rng.integers(2)),
                  dtype=np.float64, rng=rng, fit="floor")
    fc = conv_to_fc(conv, (c, size, size + 1))
    x = rng.standard_normal((3, c, size, size + 1))
    want = conv.forward(x).reshape(3, -1)
    np.testing.assert_allclose(fc.forward(x.reshape(3, -1)), want, rtol=1e-12, atol=1e-12)
    matrix = fc.params["weight"]
    assert np.count_nonzero(matrix) <= k * (c // groups) * f * f * want.shape[1] // k
    assert set(np.unique(matrix[matrix != 0])) <= set(conv.params["weight"].ravel())
    with pytest.raises(ValueError, match=r"conv_to_fc: input_shape: expected a per-sample "
                                         r"volume \(C, H, W\)"):
        conv_to_fc(conv, (c, size))


# -- what a PyTorch user writes --------------------------------------------------------------

def test_one_layer_object_at_two_places_is_refused():
    """PyTorch sums a shared module's gradients; a convnet layer keeps one cache and one
    set of gradients, so a ReLU used twice gave wrong gradients without a word (and a
    shared MaxPool2d a broadcasting error in backward). It is refused where it is made."""
    act = ReLU()
    with pytest.raises(ValueError, match=r"Sequential: one ReLU\(\) object is at both '1' and "
                                         r"'3'; .*make a new ReLU\(...\) for each"):
        Sequential(Linear(4, 4), act, Linear(4, 4), act)
    block = Sequential(Linear(4, 4), ReLU())
    with pytest.raises(ValueError, match=r"at both '0.0' and '1.0'"):
        Sequential(block, block)
    with pytest.raises(ValueError, match="at both"):
        Residual({"act": act, "fc": Linear(4, 4)}, shortcut=Sequential(act))
    net = Sequential(Linear(4, 4), ReLU(), Linear(4, 2))
    with pytest.raises(ValueError, match="at both '0' and '2'"):
        net.replace("2", net[0])
    assert isinstance(net[2], Linear) and net[2].params["weight"].shape == (2, 4)


def test_a_sequential_is_indexed_by_position_and_sliced_as_in_pytorch():
    layers = [Conv2d(1, 2, 3), ReLU(), Flatten(), Linear(2, 3)]
    net = Sequential(*layers)
    named = Sequential({"conv": Conv2d(1, 2, 3), "relu": ReLU()})
    assert net[0] is layers[0] and net[-1] is layers[-1] and net[np.int64(1)] is layers[1]
    assert named[0] is named["conv"] and named[-1] is named["relu"]
    part = net[1:3]
    assert isinstance(part, Sequential) and list(part) == layers[1:3]
    assert [key for key, _ in part.named_children()] == ["1", "2"]     # the children's names kept
    with pytest.raises(IndexError, match="index 4 is out of range for its 4 children"):
        net[4]
    with pytest.raises(KeyError, match="no child named 'conv2'; its children are conv, relu"):
        named["conv2"]
    outer = Sequential({"features": Sequential(Linear(2, 2), ReLU()), "head": Linear(2, 1)})
    outer["features"][0:1]
    assert outer["features"][0].name == "features.0"   # slicing renames nothing
    with pytest.raises(TypeError, match="Residual cannot be sliced"):
        Residual({"fc": Linear(2, 2)})[0:1]


def test_a_single_layer_has_pytorchs_state_dict():
    rng = np.random.default_rng(3)
    conv, bn = Conv2d(2, 3, 3, rng=rng), BatchNorm2d(3)
    tconv, tbn = torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3)
    for ours, theirs in ((conv, tconv), (bn, tbn)):
        state = ours.state_dict()
        assert list(state) == list(theirs.state_dict()), (list(state), theirs)
        new = {k: v.detach().numpy().copy() for k, v in theirs.state_dict().items()}
        assert ours.load_state_dict(new) == ([], [])
        for key, value in new.items():
            np.testing.assert_array_equal(ours.state_dict()[key], value)
    with pytest.raises(ValueError, match=r"Conv2d.load_state_dict: .*mis-shaped keys: weight"):
        conv.load_state_dict({"weight": np.zeros((3, 2, 5, 5), np.float32),
                              "bias": np.zeros(3, np.float32)})


def test_train_takes_a_bool_and_maxpools_fifth_argument_is_not_ceil_mode():
    """train("False") had set training mode; MaxPool2d(2, 2, 0, 1, True) is PyTorch's
    return_indices=True, and had meant ceil_mode here."""
    net = Sequential(Linear(2, 2))
    for layer in (net, net[0]):
        with pytest.raises(ValueError, match=r"\.train: mode must be True or False, got "
                                             r"'False'"):
            layer.train("False")
    assert net.train(False) is net and not net[0].training
    with pytest.raises(TypeError):
        MaxPool2d(2, 2, 0, 1, True)
    assert MaxPool2d(2, 2, 0, 1, ceil_mode=True).output_shape((1, 5, 5)) == (1, 3, 3)
    # PyTorch's keyword return_indices=False is taken (it had been a TypeError); True is
    # refused: the switches stay inside the layer, as AdaptiveMaxPool2d's
    assert MaxPool2d(2, return_indices=False).output_shape((1, 4, 4)) == (1, 2, 2)
    with pytest.raises(ValueError, match="MaxPool2d: return_indices is not offered"):
        MaxPool2d(2, return_indices=True)


def test_layers_refuse_the_float_dtypes_they_do_not_compute_in():
    """float16 and longdouble inputs had passed the check whose message says float32 or
    float64; a longdouble then failed deep in AdaptiveMaxPool2d's backward."""
    from convnet.layers.pool import AdaptiveMaxPool2d
    for dtype in (np.float16, np.longdouble):
        x = np.zeros((1, 2, 4, 4), dtype)
        for layer in (Conv2d(2, 2, 3), MaxPool2d(2), AdaptiveMaxPool2d(2)):
            with pytest.raises(ValueError, match=r"expected a floating-point array \(float32 "
                                                 rf"or float64\), got dtype {x.dtype}"):
                layer.forward(x)
        with pytest.raises(ValueError, match=r"\(float32 or float64\), got dtype"):
            Dropout(0.5).forward(np.zeros((2, 3), dtype))
    # either byte order of float32 is float32 (a file's big-endian array)
    swapped = np.arange(32, dtype=">f4").reshape(1, 2, 4, 4)
    conv = Conv2d(2, 2, 3)
    assert np.array_equal(conv.forward(swapped), conv.forward(swapped.astype(np.float32)))
    assert Dropout(0.5).forward(swapped).shape == swapped.shape


def test_identity_passes_values_and_gradients_through_as_pytorchs():
    from tests.utils import check_layer_grads
    rng = np.random.default_rng(4)
    for shape in [(2, 3), (2, 3, 4, 5), (1, 1)]:
        x = rng.standard_normal(shape)
        assert max(check_layer_grads(Identity(), x).values()) < 1e-9
        xt = torch.tensor(x, requires_grad=True)
        out = torch.nn.Identity()(xt)
        dout = rng.standard_normal(shape)
        out.backward(torch.tensor(dout))
        layer = Identity()
        np.testing.assert_array_equal(layer.forward(x), out.detach().numpy())
        np.testing.assert_array_equal(layer.backward(dout), xt.grad.numpy())


def test_parameters_buffers_and_children_are_attributes_as_in_pytorch():
    """conv.weight, bn.running_var, model.fc and model.layer1[0].conv1 as PyTorch users
    write them (AttributeError before): the arrays the layers use, changed in place;
    assigning one is refused with how to change it."""
    from convnet.zoo import resnet18
    model = resnet18(num_classes=10, rng=np.random.default_rng(0))
    assert model.fc.weight is model.params()["fc.weight"]
    assert model.layer1[0].conv1.weight is model.params()["layer1.0.conv1.weight"]
    assert model.bn1.running_var is model.buffers()["bn1.running_var"]
    model.fc.bias[...] = 7.0
    assert (model.state_dict()["fc.bias"] == 7.0).all()
    with pytest.raises(AttributeError, match=r"^fc Linear\(in=512, out=10\): weight is the "
                                             r"layer's own array: change it in place"):
        model.fc.weight = np.zeros((10, 512))
    with pytest.raises(AttributeError, match="'Linear' object has no attribute 'wieght'"):
        _ = model.fc.wieght
    with pytest.raises(AttributeError, match="'Sequential' object has no attribute 'layer9'"):
        _ = model.layer9
    # as PyTorch's: what a layer was made without reads None (``if m.bias is not None``)
    from convnet.layers import BatchNorm2d, Conv2d
    from convnet.layers.conv import LocallyConnected2d
    for layer in (Linear(2, 3, bias=False), Conv2d(2, 3, 1, bias=False),
                  LocallyConnected2d(2, 3, (4, 4), 1, bias=False)):
        assert layer.bias is None and "bias" not in layer.state_dict()
    bn = BatchNorm2d(3, affine=False, track_running_stats=False)
    assert bn.weight is bn.bias is bn.running_mean is bn.running_var is None
    assert bn.num_batches_tracked is None and bn.state_dict() == {}
    with pytest.raises(AttributeError, match="'Linear' object has no attribute 'running_var'"):
        _ = Linear(2, 3).running_var
    # a layer kept inside a (non-container) layer is refused: params(), state_dict(),
    # train() and eval() had passed it by (its weights never trained, nor saved)
    from convnet.layers.base import Layer

    class Stem(Layer):
        def __init__(self):
            super().__init__()
            self.body = Conv2d(1, 2, 3)
    with pytest.raises(AttributeError, match="body: a layer kept inside a layer would not "
                                             "be trained, saved or switched"):
        Stem()
    model = Sequential(Linear(4, 3))       # nor is a container's under a new name
    with pytest.raises(AttributeError, match="extra: a layer set as an attribute is not "
                                             "one of the model's children"):
        model.extra = Linear(3, 2)
    model.extra = "a note"                 # other attributes are set as usual
    assert list(model.state_dict()) == ["0.weight", "0.bias"]


def test_assigning_a_child_replaces_it_as_in_pytorch():
    """model.fc = Linear(...) replaces the head (it had set a stray attribute while the
    model kept the old layer); a child named like a model attribute (info, from a
    file's layer names) is not read as that attribute."""
    net = Sequential({"conv": Conv2d(1, 2, 3), "relu": ReLU(), "flat": Flatten(),
                      "fc": Linear(72, 3)})
    net.fc = Linear(72, 5)
    x = np.zeros((2, 1, 8, 8), np.float32)
    assert net["fc"] is net.fc and net.forward(x).shape == (2, 5)
    assert net.params()["fc.weight"].shape == (5, 72) and net.fc.name == "fc"
    with pytest.raises(ValueError, match="child 'fc' must be a Layer, got int"):
        net.fc = 3
    with pytest.raises(ValueError, match="is at both"):
        net.fc = net.conv
    assert isinstance(net["fc"], Linear)                  # the failed assignment undone
    named = Sequential({"info": ReLU(), "trained": ReLU()})
    assert getattr(named, "info", None) is None and getattr(named, "trained", None) is None
    named.info = {"classes": ["a"]}
    assert named.info == {"classes": ["a"]} and isinstance(named["info"], ReLU)


def test_googlenet_with_aux_heads_saves_and_loads(tmp_path):
    """save_model wrote a file load_model refused ("unknown layer type 'AuxClassifier'"):
    the aux heads come back as AuxClassifiers, with the same state dict and outputs (in
    eval mode, and the aux logits in training mode), in a fresh interpreter too."""
    import subprocess
    import sys

    from convnet.io import load_model, save_model
    from convnet.zoo.googlenet import AuxClassifier, googlenet_torchvision

    model = googlenet_torchvision(num_classes=5, input_size=64, aux_logits=True,
                                  rng=np.random.default_rng(0))
    save_model(model, tmp_path / "g.json")
    loaded = load_model(tmp_path / "g.json")
    assert [k for k, v in loaded.named_children()
            if isinstance(v, AuxClassifier)] == ["aux1", "aux2"]
    assert list(loaded.state_dict()) == list(model.state_dict())
    assert all(np.array_equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    x = np.random.default_rng(1).standard_normal((2, 3, 64, 64)).astype(np.float32)
    assert np.array_equal(loaded.eval().infer(x), model.eval().infer(x))
    for net in (model, loaded):              # training mode, dropout off: the aux heads run
        net.train()
        for _, layer in net.named_layers():
            if isinstance(layer, Dropout):
                layer.eval()
        net.forward(x)
    assert np.array_equal(loaded["aux2"].logits, model["aux2"].logits)
    code = ("from convnet.io import load_model; "
            f"print(type(load_model({str(tmp_path / 'g.json')!r})['aux1']).__name__)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "AuxClassifier", result.stderr


def test_inference_does_not_fold_a_batch_norm_of_another_channel_count():
    """Sequential and Residual fold a CONV's batch norm into it at inference: one of 1
    channel after a CONV of 4 had been applied to all 4 (a wrong output), one of 2 had
    raised NumPy's broadcast error; forward refused both. Inference refuses them too."""
    from convnet.layers import BatchNorm2d, Conv2d
    from convnet.models import Residual, Sequential
    x = np.random.default_rng(0).random((2, 3, 6, 6)).astype(np.float32)
    for k in (1, 2):
        model = Sequential(Conv2d(3, 4, 3), BatchNorm2d(k)).eval()
        with pytest.raises(ValueError, match=rf"BatchNorm2d\(D={k}\): expected {k} input "
                                             r"channels \(depth D\), got 4"):
            model.infer(x)
    block = Residual({"conv": Conv2d(3, 3, 3, padding=1), "bn": BatchNorm2d(1)}).eval()
    with pytest.raises(ValueError, match="expected 1 input channels"):
        block.infer(x)
