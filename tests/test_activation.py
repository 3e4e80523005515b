"""ReLU, ReLU6, LeakyReLU, Tanh, Sigmoid: gradients, PyTorch parity, caches, errors."""

import json
import re
import warnings

import numpy as np
import pytest
import torch

from convnet.functional.activation import (
    LeakyReluCache,
    Relu6Cache,
    ReluCache,
    leaky_relu_backward,
    leaky_relu_forward,
    relu6_backward,
    relu6_forward,
    relu_backward,
    relu_forward,
    sigmoid_backward,
    sigmoid_forward,
    tanh_backward,
    tanh_forward,
)
from convnet.layers.activation import LeakyReLU, ReLU, ReLU6, Sigmoid, Tanh
from tests.utils import check_layer_grads, numerical_grad, rel_error

SEEDS = range(300)
SHAPES = [(2, 3, 4, 5), (1, 1, 1, 1), (3, 7), (5,), (2, 1, 3, 1, 2)]


def random_input(rng, dtype=np.float64):
    """A tiny array of random rank and shape, random scale, with some exact zeros."""
    shape = tuple(int(s) for s in rng.integers(1, 5, size=int(rng.integers(1, 6))))
    scale = float(rng.choice([1e-3, 1.0, 30.0, 1e3]))
    x = rng.standard_normal(shape) * scale
    x[rng.random(shape) < 0.15] = 0.0                    # the kink, and sigmoid's midpoint
    return x.astype(dtype)


def random_slope(rng):
    return float(rng.choice([0.01, 0.2, 0.0, 1.5, rng.uniform(-2, 2)]))


def make(op, rng):
    """(our layer, the same op in torch) for one random case."""
    if op == "relu":
        return ReLU(), torch.relu
    if op == "relu_inplace":
        return ReLU(inplace=True), torch.relu
    if op == "relu6":
        return ReLU6(), torch.nn.functional.relu6
    if op == "relu6_inplace":
        return ReLU6(inplace=True), torch.nn.functional.relu6
    if op == "leaky":
        slope = random_slope(rng)
        return LeakyReLU(slope), lambda t: torch.nn.functional.leaky_relu(t, slope)
    if op == "tanh":
        return Tanh(), torch.tanh
    return Sigmoid(), torch.sigmoid


def away_from_zero(rng, shape):
    """Inputs with |x| in [0.1, 2]: central differences never straddle the kink."""
    return rng.choice([-1.0, 1.0], size=shape) * rng.uniform(0.1, 2.0, size=shape)


def away_from_kinks(rng, shape):
    """Inputs in [-8, 8] at least 0.1 from ReLU6's kinks at 0 and 6."""
    x = rng.uniform(-8, 8, size=shape)
    near = np.abs(x) < 0.1
    x[near] += 0.2
    near = np.abs(x - 6) < 0.1
    x[near] += 0.2
    return x


# -- gradients against central differences (float64) -------------------------------------
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("layer", [ReLU(), ReLU6(), LeakyReLU(), LeakyReLU(0.3),
                                   LeakyReLU(-0.5), Tanh(), Sigmoid()], ids=repr)
def test_gradient_check(layer, shape):
    rng = np.random.default_rng(len(shape))
    x = away_from_zero(rng, shape) if isinstance(layer, (ReLU, LeakyReLU)) else (
        away_from_kinks(rng, shape) if isinstance(layer, ReLU6) else
        rng.standard_normal(shape) * 2)
    errors = check_layer_grads(layer, x)
    assert errors["x"] < 1e-7, errors


FUNCTIONAL = {
    "relu": (relu_forward, relu_backward),
    "relu6": (relu6_forward, relu6_backward),
    "leaky": (lambda x: leaky_relu_forward(x, 0.1), leaky_relu_backward),
    "tanh": (tanh_forward, tanh_backward),
    "sigmoid": (sigmoid_forward, sigmoid_backward),
}


@pytest.mark.parametrize("name", FUNCTIONAL)
def test_gradient_check_functional(name):
    forward, backward = FUNCTIONAL[name]
    rng = np.random.default_rng(1)
    x = (away_from_kinks if name == "relu6" else away_from_zero)(rng, (3, 4, 5))
    dout = rng.standard_normal(x.shape)
    dx = backward(dout, forward(x)[1])
    assert rel_error(dx, numerical_grad(lambda: forward(x)[0], x, dout)) < 1e-7


# -- PyTorch, forward and backward, float64 ----------------------------------------------
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("op", ["relu", "relu_inplace", "relu6", "relu6_inplace", "leaky",
                                "tanh", "sigmoid"])
def test_matches_torch(op, seed):
    rng = np.random.default_rng(seed)
    layer, tfn = make(op, rng)
    x = random_input(rng)
    if op.startswith("relu6"):                           # its upper kink, exactly
        x[rng.random(x.shape) < 0.15] = 6.0
    dout = rng.standard_normal(x.shape)
    tx = torch.from_numpy(x.copy()).requires_grad_()
    tout = tfn(tx)
    tout.backward(torch.from_numpy(dout))
    xin = x.copy()
    out = layer.forward(xin)
    dx = layer.backward(dout)
    assert out.dtype == dx.dtype == np.float64 and out.shape == dx.shape == x.shape
    assert rel_error(out, tout.detach().numpy()) < 1e-10
    if op.startswith("relu") or op == "leaky":      # piecewise linear: exact, kinks included
        np.testing.assert_array_equal(out, tout.detach().numpy())
        np.testing.assert_array_equal(dx, tx.grad.numpy())
    else:
        # Both sides compute 1 - y*y (tanh) or y*(1 - y) (sigmoid) from their own y, which
        # cancels for saturated y ~ +-1: one ulp of y becomes ~eps*|dout| absolute in dx.
        # So: PyTorch's backward kernel on our cached y must agree to 1e-10 relative, and
        # autograd end to end to 1e-10 relative plus 4 eps |dout| absolute.
        kernel = torch.ops.aten.tanh_backward if op == "tanh" else torch.ops.aten.sigmoid_backward
        expected = kernel(torch.from_numpy(dout), torch.from_numpy(out)).numpy()
        assert rel_error(dx, expected) < 1e-10
        slack = 1e-10 * np.abs(tx.grad.numpy()) + 4 * np.finfo(np.float64).eps * np.abs(dout)
        assert np.all(np.abs(dx - tx.grad.numpy()) <= slack)
    if op.endswith("_inplace"):
        assert out is xin
    else:
        np.testing.assert_array_equal(xin, x)        # the input is left alone


def test_gradient_at_zero_follows_torch():
    x = np.zeros((2, 3))
    dout = np.ones((2, 3))
    relu = ReLU()
    relu.forward(x)
    np.testing.assert_array_equal(relu.backward(dout), 0.0)
    leaky = LeakyReLU(0.25)
    leaky.forward(x)
    np.testing.assert_array_equal(leaky.backward(dout), 0.25)
    relu6 = ReLU6()
    for at in (0.0, 6.0):
        relu6.forward(np.full((2, 3), at))
        np.testing.assert_array_equal(relu6.backward(dout), 0.0)


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("op", ["relu", "relu6", "leaky", "tanh", "sigmoid"])
def test_float32_matches_float64(op, seed):
    rng = np.random.default_rng(seed)
    layer, _ = make(op, rng)
    x = random_input(rng)
    dout = rng.standard_normal(x.shape)
    out64, dx64 = layer.forward(x), layer.backward(dout)
    out32 = layer.forward(x.astype(np.float32))
    dx32 = layer.backward(dout.astype(np.float32))
    assert out32.dtype == dx32.dtype == np.float32
    assert rel_error(out32, out64) < 1e-6
    # float32 rounds a saturated tanh/sigmoid to exactly +-1 or 0..1: an absolute slack of
    # a few float32 eps times |dout| covers that, and is tight everywhere else.
    slack = 1e-6 * np.abs(dx64) + 8 * np.finfo(np.float32).eps * np.abs(dout)
    assert np.all(np.abs(dx32 - dx64) <= slack)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_tanh_saturate_without_overflow(dtype):
    x = np.array([[-1e4, -800.0, -50.0, 0.0, 50.0, 800.0, 1e4]], dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sig = Sigmoid().forward(x)
        tanh = Tanh().forward(x)
    assert np.all(np.isfinite(sig)) and np.all(np.isfinite(tanh))
    np.testing.assert_allclose(sig, torch.sigmoid(torch.from_numpy(x)).numpy(), rtol=1e-6)
    assert sig[0, 0] == 0.0 and sig[0, 3] == 0.5 and sig[0, -1] == 1.0
    np.testing.assert_array_equal(tanh[0, [0, -1]], [-1.0, 1.0])


def test_relu6_at_nan_and_infinities_like_torch():
    x = np.array([[-1.0, 0.0, np.nan, 2.0, -np.inf, np.inf, 6.0, 7.0]])
    dout = np.arange(1.0, 9.0).reshape(1, 8)
    layer = ReLU6()
    out = layer.forward(x)
    xt = torch.tensor(x, requires_grad=True)
    torch.nn.functional.relu6(xt).backward(torch.tensor(dout))
    np.testing.assert_array_equal(out, torch.nn.functional.relu6(torch.tensor(x)).numpy())
    np.testing.assert_array_equal(layer.backward(dout), xt.grad.numpy())


def test_relu_passes_the_gradient_at_nan_like_torch():
    x = np.array([[-1.0, 0.0, np.nan, 2.0, -np.inf, np.inf]])
    dout = np.arange(1.0, 7.0).reshape(1, 6)
    layer = ReLU()
    out = layer.forward(x)
    xt = torch.tensor(x, requires_grad=True)
    torch.relu(xt).backward(torch.tensor(dout))
    np.testing.assert_array_equal(out, torch.relu(torch.tensor(x)).numpy())
    np.testing.assert_array_equal(layer.backward(dout), xt.grad.numpy())   # [0 0 3 4 0 6]


# -- caches keep only what backward needs ------------------------------------------------
def test_relu_cache_keeps_only_the_output():
    x = np.array([[-1.0, 0.0, 2.0]])
    layer = ReLU()
    out = layer.forward(x)
    assert isinstance(layer.cache, ReluCache) and ReluCache._fields == ("out",)
    assert layer.cache.out is out and not np.shares_memory(out, x)
    np.testing.assert_array_equal(x, [[-1.0, 0.0, 2.0]])


def test_relu_inplace_overwrites_input_and_keeps_no_copy():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4, 4))
    expected = np.maximum(x, 0)
    layer = ReLU(inplace=True)
    out = layer.forward(x)
    assert out is x                                 # no new activation array
    np.testing.assert_array_equal(x, expected)      # the caller's x now holds max(0, x)
    arrays = [v for v in layer.cache if isinstance(v, np.ndarray)]
    assert len(arrays) == 1 and arrays[0] is x      # the cache is that same buffer
    dout = rng.standard_normal(x.shape)
    np.testing.assert_array_equal(layer.backward(dout), np.where(expected > 0, dout, 0))


def test_other_caches():
    x = np.array([[-1.0, 0.0, 2.0]])
    leaky = LeakyReLU(0.1)
    leaky.forward(x)
    assert isinstance(leaky.cache, LeakyReluCache) and leaky.cache.positive.dtype == bool
    np.testing.assert_array_equal(leaky.cache.positive, [[False, False, True]])
    for layer in (Tanh(), Sigmoid(), ReLU6()):
        out = layer.forward(x)
        assert layer.cache._fields == ("out",) and layer.cache.out is out
    assert isinstance(layer.cache, Relu6Cache)


# -- analysis and naming -----------------------------------------------------------------
@pytest.mark.parametrize("layer, text, config", [
    (ReLU(), "ReLU()", {"type": "ReLU", "inplace": False}),
    (ReLU(inplace=True), "ReLU(inplace=True)", {"type": "ReLU", "inplace": True}),
    (ReLU6(), "ReLU6()", {"type": "ReLU6", "inplace": False}),
    (LeakyReLU(), "LeakyReLU(0.01)", {"type": "LeakyReLU", "negative_slope": 0.01}),
    (LeakyReLU(0.2), "LeakyReLU(0.2)", {"type": "LeakyReLU", "negative_slope": 0.2}),
    (Tanh(), "Tanh()", {"type": "Tanh"}),
    (Sigmoid(), "Sigmoid()", {"type": "Sigmoid"}),
])
def test_repr_config_and_counts(layer, text, config):
    assert repr(layer) == text
    assert json.loads(json.dumps(layer.get_config())) == config
    assert layer.output_shape((64, 55, 55)) == (64, 55, 55)
    assert layer.output_shape((10,)) == (10,)
    assert layer.num_params() == 0 and layer.params == {}
    assert layer.macs((64, 55, 55)) == 0


# -- errors ------------------------------------------------------------------------------
@pytest.mark.parametrize("layer", [ReLU(), ReLU6(), LeakyReLU(), Tanh(), Sigmoid()], ids=repr)
def test_input_errors(layer):
    with pytest.raises(ValueError, match=re.escape(repr(layer)) + ": expected a floating-point"):
        layer.forward(np.arange(6).reshape(2, 3))
    with pytest.raises(ValueError, match="expected a NumPy array, got list"):
        layer.forward([1.0, 2.0])
    with pytest.raises(RuntimeError, match="backward called before forward"):
        type(layer)().backward(np.ones(3))
    layer.forward(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"dout.*\(2, 3\), got \(2, 1\)"):
        layer.backward(np.ones((2, 1)))


def test_errors_name_the_model_layer():
    layer = ReLU()
    layer.name = "features.1"
    with pytest.raises(ValueError, match=r"^features\.1 ReLU\(\): .*dtype int64"):
        layer.forward(np.arange(3))


@pytest.mark.parametrize("kwargs, message", [
    ({"negative_slope": "0.1"}, "negative_slope must be a finite number, got '0.1'"),
    ({"negative_slope": float("nan")}, "negative_slope must be a finite number, got nan"),
    ({"negative_slope": True}, "negative_slope must be a finite number, got True"),
])
def test_leaky_relu_argument_errors(kwargs, message):
    with pytest.raises(ValueError, match=f"^LeakyReLU: {message}"):
        LeakyReLU(**kwargs)


def test_relu_inplace_needs_a_writeable_input():
    x = np.broadcast_to(np.ones(3), (2, 3))
    with pytest.raises(ValueError, match=r"^ReLU\(inplace=True\): .*read-only array of shape"):
        ReLU(inplace=True).forward(x)
    np.testing.assert_array_equal(ReLU().forward(x), x)


def test_relu_inplace_must_be_bool():
    with pytest.raises(ValueError, match="ReLU: inplace must be True or False, got 1"):
        ReLU(inplace=1)
