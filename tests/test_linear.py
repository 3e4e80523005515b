"""Linear (FC) and Flatten: gradients, PyTorch parity, init, analysis, errors."""

import json

import numpy as np
import pytest
import torch

from convnet.functional.linear import (
    flatten_backward,
    flatten_forward,
    linear_backward,
    linear_forward,
)
from convnet.layers.linear import Flatten, Linear
from tests.utils import check_layer_grads, numerical_grad, rel_error

SEEDS = range(300)


def random_linear(rng, dtype=np.float64):
    """A tiny Linear layer with random sizes, bias on or off, and a matching input."""
    n, fin, fout = (int(v) for v in rng.integers(1, 10, size=3))
    n = 1 if rng.random() < 0.2 else n
    layer = Linear(fin, fout, bias=bool(rng.random() < 0.7), dtype=dtype, rng=rng)
    scale = float(rng.choice([1e-2, 1.0, 1e3]))
    x = (rng.standard_normal((n, fin)) * scale).astype(dtype)
    return layer, x


# -- gradients against central differences (float64) -------------------------------------
@pytest.mark.parametrize("n, fin, fout, bias", [(3, 5, 4, True), (1, 1, 1, True),
                                                (2, 7, 3, False), (4, 2, 6, True)])
def test_linear_gradient_check(n, fin, fout, bias):
    rng = np.random.default_rng(fin)
    layer = Linear(fin, fout, bias=bias, dtype=np.float64, rng=rng)
    errors = check_layer_grads(layer, rng.standard_normal((n, fin)))
    assert set(errors) == ({"x", "weight", "bias"} if bias else {"x", "weight"})
    assert max(errors.values()) < 1e-7, errors


def test_linear_gradient_check_functional():
    rng = np.random.default_rng(3)
    x, w, b = rng.standard_normal((4, 6)), rng.standard_normal((3, 6)), rng.standard_normal(3)
    dout = rng.standard_normal((4, 3))
    dx, dw, db = linear_backward(dout, linear_forward(x, w, b)[1])

    def f():                                        # reads x, w, b as they are nudged
        return linear_forward(x, w, b)[0]

    assert rel_error(dx, numerical_grad(f, x, dout)) < 1e-7
    assert rel_error(dw, numerical_grad(f, w, dout)) < 1e-7
    assert rel_error(db, numerical_grad(f, b, dout)) < 1e-7


@pytest.mark.parametrize("shape, start_dim", [((2, 3, 4, 5), 1), ((1, 1, 3, 2), 2),
                                              ((3, 4), 1)])
def test_flatten_gradient_check(shape, start_dim):
    x = np.random.default_rng(0).standard_normal(shape)
    errors = check_layer_grads(Flatten(start_dim), x)
    assert errors["x"] < 1e-7, errors
    dout = np.random.default_rng(1).standard_normal(flatten_forward(x, start_dim)[0].shape)
    dx = flatten_backward(dout, flatten_forward(x, start_dim)[1])
    num = numerical_grad(lambda: flatten_forward(x, start_dim)[0], x, dout)
    assert rel_error(dx, num) < 1e-7


# -- PyTorch, forward and backward -------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS)
def test_linear_matches_torch(seed):
    rng = np.random.default_rng(seed)
    layer, x = random_linear(rng)
    w, b = layer.params["weight"], layer.params.get("bias")
    dout = rng.standard_normal((x.shape[0], w.shape[0]))
    tx, tw = (torch.from_numpy(a.copy()).requires_grad_() for a in (x, w))
    tb = None if b is None else torch.from_numpy(b.copy()).requires_grad_()
    tout = torch.nn.functional.linear(tx, tw, tb)
    tout.backward(torch.from_numpy(dout))
    out = layer.forward(x)
    dx = layer.backward(dout)
    assert out.shape == tuple(tout.shape) and out.dtype == np.float64
    assert rel_error(out, tout.detach().numpy()) < 1e-10
    assert rel_error(dx, tx.grad.numpy()) < 1e-10
    assert rel_error(layer.grads["weight"], tw.grad.numpy()) < 1e-10
    if b is not None:
        assert rel_error(layer.grads["bias"], tb.grad.numpy()) < 1e-10
    else:
        assert set(layer.grads) == {"weight"}


def random_flatten_input(rng):
    """A tiny array of rank 2..5, sometimes a non-contiguous (transposed) view."""
    shape = tuple(int(s) for s in rng.integers(1, 5, size=int(rng.integers(2, 6))))
    x = rng.standard_normal(shape)
    if rng.random() < 0.3:
        x = np.ascontiguousarray(x.transpose(0, *range(x.ndim - 1, 0, -1)))
        x = x.transpose(0, *range(x.ndim - 1, 0, -1))          # same values, strided
    return x


@pytest.mark.parametrize("seed", SEEDS)
def test_flatten_matches_torch_flatten(seed):
    rng = np.random.default_rng(seed)
    x = random_flatten_input(rng)
    start_dim = int(rng.integers(1, x.ndim))
    layer = Flatten(start_dim)
    tx = torch.from_numpy(x.copy()).requires_grad_()
    tout = torch.flatten(tx, start_dim)
    dout = rng.standard_normal(tuple(tout.shape))
    tout.backward(torch.from_numpy(dout))
    out = layer.forward(x)
    np.testing.assert_array_equal(out, tout.detach().numpy())       # same C-major order
    assert layer.output_shape(x.shape[1:]) == out.shape[1:]
    dx = layer.backward(dout)
    np.testing.assert_array_equal(dx, tx.grad.numpy())
    np.testing.assert_array_equal(layer.backward(out), x)          # round trip


def test_flatten_is_a_view_of_contiguous_input():
    x = np.arange(24.0).reshape(2, 3, 2, 2)
    out = Flatten().forward(x)
    assert np.shares_memory(out, x)
    np.testing.assert_array_equal(out[1], np.arange(12.0, 24.0))   # channel, row, column


def test_flatten_then_linear_matches_torch_module():
    rng = np.random.default_rng(7)
    tmodel = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 5, 6)).double()
    flat, fc = Flatten(), Linear(60, 6, dtype=np.float64)
    for key, value in tmodel[1].state_dict().items():              # names and layout as-is
        fc.params[key] = value.numpy().copy()
    x = rng.standard_normal((2, 3, 4, 5))
    expected = tmodel(torch.from_numpy(x)).detach().numpy()
    assert rel_error(fc.forward(flat.forward(x)), expected) < 1e-12


@pytest.mark.parametrize("seed", range(20))
def test_linear_float32_matches_float64(seed):
    rng = np.random.default_rng(seed)
    layer32, x = random_linear(rng, np.float32)
    layer64 = Linear(layer32.in_features, layer32.out_features, "bias" in layer32.params,
                     dtype=np.float64)
    layer64.params = {k: v.astype(np.float64) for k, v in layer32.params.items()}
    dout = rng.standard_normal((x.shape[0], layer32.out_features))
    out32, out64 = layer32.forward(x), layer64.forward(x.astype(np.float64))
    dx32 = layer32.backward(dout.astype(np.float32))
    dx64 = layer64.backward(dout)
    assert out32.dtype == dx32.dtype == layer32.grads["weight"].dtype == np.float32
    assert rel_error(out32, out64) < 1e-5
    assert rel_error(dx32, dx64) < 1e-5
    assert rel_error(layer32.grads["weight"], layer64.grads["weight"]) < 1e-5


# -- init, analysis, naming --------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_linear_init_is_pytorch_default(dtype):
    layer = Linear(400, 300, dtype=dtype, rng=np.random.default_rng(0))
    bound = 1 / np.sqrt(400)
    for key, shape in (("weight", (300, 400)), ("bias", (300,))):
        p = layer.params[key]
        assert p.shape == shape and p.dtype == dtype and layer.grads[key].shape == shape
        assert np.abs(p).max() <= bound and np.abs(p).max() > 0.95 * bound
    assert abs(layer.params["weight"].std() / (bound / np.sqrt(3)) - 1) < 0.02  # U(-b, b)
    same = Linear(400, 300, dtype=dtype, rng=np.random.default_rng(0))
    other = Linear(400, 300, dtype=dtype, rng=np.random.default_rng(1))
    np.testing.assert_array_equal(same.params["weight"], layer.params["weight"])
    assert not np.array_equal(other.params["weight"], layer.params["weight"])


def test_linear_analysis_and_config():
    fc = Linear(3072, 10)
    assert repr(fc) == "Linear(in=3072, out=10)"
    assert repr(Linear(5, 2, bias=False)) == "Linear(in=5, out=2, bias=False)"
    assert fc.output_shape((3072,)) == (10,)
    assert fc.num_params() == 3072 * 10 + 10 and Linear(5, 2, bias=False).num_params() == 10
    assert fc.macs((3072,)) == 30720
    assert json.loads(json.dumps(fc.get_config())) == {
        "type": "Linear", "in_features": 3072, "out_features": 10, "bias": True,
        "dtype": "float32"}


def test_flatten_analysis_and_config():
    assert Flatten().output_shape((512, 7, 7)) == (25088,)
    assert Flatten(2).output_shape((512, 7, 7)) == (512, 49)
    assert Flatten().output_shape((10,)) == (10,)
    assert Flatten().macs((512, 7, 7)) == 0 and Flatten().num_params() == 0
    assert repr(Flatten()) == "Flatten()" and repr(Flatten(2)) == "Flatten(start_dim=2)"
    assert json.loads(json.dumps(Flatten(2).get_config())) == {"type": "Flatten",
                                                               "start_dim": 2}


# -- errors ------------------------------------------------------------------------------
def test_linear_volume_input_says_to_flatten():
    fc = Linear(3072, 10)
    with pytest.raises(ValueError, match=r"^Linear\(in=3072, out=10\): expected "
                       r"in_features=3072 features in the last axis .*got 32 in shape "
                       r"\(2, 3, 32, 32\); put a Flatten\(\) before it: "
                       r"it gives 3 \* 32 \* 32 = 3072 features$"):
        fc.forward(np.zeros((2, 3, 32, 32), np.float32))
    with pytest.raises(ValueError, match=r"16 \* 16 = 768 features, which does not match "
                       r"in_features=3072"):
        fc.forward(np.zeros((2, 3, 16, 16), np.float32))
    with pytest.raises(ValueError, match=r"got 32 in \(3, 32, 32\); put a Flatten\(\) "
                       r"before it"):
        fc.output_shape((3, 32, 32))


def test_linear_wrong_feature_count_names_both():
    fc = Linear(3072, 10)
    with pytest.raises(ValueError, match=r"expected in_features=3072 features in the last "
                       r"axis .*got 100 in shape \(2, 100\)"):
        fc.forward(np.zeros((2, 100), np.float32))
    with pytest.raises(ValueError, match="expected in_features=3072 input features in the "
                       r"last axis .*got 100 in \(100,\)"):
        fc.output_shape((100,))
    with pytest.raises(ValueError, match="floating-point.*got dtype int64"):
        fc.forward(np.zeros((2, 3072), np.int64))


@pytest.mark.parametrize("args, kwargs, message", [
    ((0, 10), {}, "in_features must be a positive int, got 0"),
    (("3", 10), {}, "in_features must be a positive int, got '3'"),
    ((3, True), {}, "out_features must be a positive int, got True"),
    ((3, 10), {"bias": "yes"}, "bias must be True or False, got 'yes'"),
    ((3, 10), {"dtype": np.int32}, "dtype must be float32 or float64, got int32"),
])
def test_linear_argument_errors(args, kwargs, message):
    with pytest.raises(ValueError, match=f"^Linear: {message}"):
        Linear(*args, **kwargs)


def test_linear_backward_errors():
    fc = Linear(4, 3)
    with pytest.raises(RuntimeError, match=r"Linear\(in=4, out=3\): backward called before"):
        fc.backward(np.zeros((2, 3), np.float32))
    fc.forward(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"dout.*\(2, 3\), got \(2, 4\)"):
        fc.backward(np.zeros((2, 4), np.float32))


def test_flatten_errors():
    for bad in (0, 1.0, True):
        with pytest.raises(ValueError, match=f"^Flatten: start_dim must be an int >= 1 .*"
                           f"got {bad!r}"):
            Flatten(bad)
    with pytest.raises(ValueError, match=r"start_dim=2 needs an input with at least 3 axes, "
                       r"got shape \(4, 5\)"):
        Flatten(2).forward(np.zeros((4, 5)))
    with pytest.raises(ValueError, match=r"start_dim=3 needs a per-sample shape with at least "
                       r"3 axes, got \(4, 5\)"):
        Flatten(3).output_shape((4, 5))
    with pytest.raises(ValueError, match="floating-point"):
        Flatten().forward(np.zeros((2, 3), bool))
    layer = Flatten()
    layer.forward(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match=r"dout.*\(2, 12\), got \(2, 3, 4\)"):
        layer.backward(np.zeros((2, 3, 4)))
