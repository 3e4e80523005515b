"""Dropout: fixed-mask gradient checks, PyTorch comparisons, statistics, errors."""

import json
import warnings

import numpy as np
import pytest
import torch

from convnet.functional.dropout import dropout_backward, dropout_forward
from convnet.layers.dropout import Dropout, Dropout2d
from tests.utils import check_layer_grads, rel_error


class FixedMaskDropout(Dropout):
    """Dropout that reseeds its generator before every forward: the same mask each call."""

    def __init__(self, p, seed):
        super().__init__(p)
        self.seed = seed

    def forward(self, x):
        self.rng = np.random.default_rng(self.seed)
        return super().forward(x)


def draw_mask(p, shape, seed):
    """The mask a Dropout(p) with a fresh generator of this seed keeps (via its cache)."""
    layer = Dropout(p, rng=np.random.default_rng(seed))
    layer.forward(np.ones(shape))
    keep = layer.cache.keep
    return np.ones(shape, dtype=bool) if keep is None else keep


# -- gradient checks ----------------------------------------------------------------------
@pytest.mark.parametrize("p", [0.0, 0.2, 0.5, 0.8, 1.0])
@pytest.mark.parametrize("shape", [(3, 5), (2, 3, 2, 2)])
def test_dropout_gradients(p, shape):
    rng = np.random.default_rng(int(p * 10) + len(shape))
    errors = check_layer_grads(FixedMaskDropout(p, seed=4), rng.standard_normal(shape), seed=2)
    assert errors["x"] < 1e-7, errors


def test_dropout_gradient_in_eval_mode():
    layer = FixedMaskDropout(0.5, seed=0).eval()
    errors = check_layer_grads(layer, np.random.default_rng(1).standard_normal((2, 3, 2)))
    assert errors["x"] < 1e-7
    layer.forward(np.ones((2, 3)))
    dout = np.arange(6.0).reshape(2, 3)
    assert np.array_equal(layer.backward(dout), dout)


def test_dropout_backward_uses_the_mask_of_its_forward():
    """Switching to eval between forward and backward does not change the gradient."""
    layer = Dropout(0.5, rng=np.random.default_rng(0))
    out = layer.forward(np.ones((4, 6)))
    layer.eval()
    assert np.array_equal(layer.backward(np.ones((4, 6))), out)


# -- PyTorch, forward and backward --------------------------------------------------------
def dropout_case(seed):
    rng = np.random.default_rng(seed)
    rank = int(rng.integers(1, 5))
    shape = tuple(int(s) for s in rng.integers(1, 6, size=rank))
    p = float([0.0, 1.0, 0.5, rng.uniform(), rng.uniform(0.9, 1.0)][seed % 5])
    return rng, shape, p


@pytest.mark.parametrize("seed", range(300))
def test_dropout_matches_torch_on_our_mask(seed):
    """Our mask, applied the way torch's dropout scales (x * keep / (1 - p)), in autograd."""
    rng, shape, p = dropout_case(seed)
    layer = Dropout(p, rng=np.random.default_rng(seed))
    x = rng.standard_normal(shape) + 0.1
    dout = rng.standard_normal(shape)
    out = layer.forward(x)
    dx = layer.backward(dout)
    keep = np.ones(shape, dtype=bool) if layer.cache.keep is None else layer.cache.keep
    x_t = torch.tensor(x, requires_grad=True)
    scale = 0.0 if p == 1 else 1.0 / (1.0 - p)
    out_t = x_t * torch.from_numpy(keep) * scale
    out_t.backward(torch.from_numpy(dout))
    np.testing.assert_array_equal(out == 0, ~keep)                  # x has no zeros
    assert rel_error(out, out_t.detach().numpy()) < 1e-10
    assert rel_error(dx, x_t.grad.numpy()) < 1e-10
    # torch's own dropout keeps a different random set; where both kept, values agree
    torch.manual_seed(seed)
    theirs = torch.nn.functional.dropout(torch.from_numpy(x), p, training=True).numpy()
    both = keep & (theirs != 0)
    assert rel_error(out[both], theirs[both]) < 1e-10
    if p in (0.0, 1.0):
        assert np.array_equal(out, theirs)


# -- statistics ---------------------------------------------------------------------------
@pytest.mark.parametrize("p", [0.1, 0.25, 0.5, 0.75, 0.9])
def test_dropout_fraction_and_expectation(p):
    n = 400_000
    layer = Dropout(p, rng=np.random.default_rng(int(p * 100)))
    out = layer.forward(np.ones(n))
    zeroed = np.mean(out == 0)
    assert abs(zeroed - p) < 5 * np.sqrt(p * (1 - p) / n)          # 5 sigma
    assert abs(out.mean() - 1.0) < 5 * np.sqrt(p / (1 - p) / n)     # E[out] = x
    assert np.allclose(out[out != 0], 1.0 / (1.0 - p))
    # and on a real-valued input: E[out] = x per unit, averaged over many masks
    x = np.random.default_rng(0).standard_normal(20)
    mean = np.mean([layer.forward(x) for _ in range(4000)], axis=0)
    assert np.abs(mean - x).max() < 6 * np.sqrt(p / (1 - p) / 4000) * np.abs(x).max()


def test_dropout_torch_fraction_agrees():
    p, n = 0.3, 200_000
    ours = Dropout(p, rng=np.random.default_rng(1)).forward(np.ones(n))
    torch.manual_seed(1)
    theirs = torch.nn.functional.dropout(torch.ones(n, dtype=torch.float64), p).numpy()
    assert abs(np.mean(ours == 0) - np.mean(theirs == 0)) < 10 * np.sqrt(p * (1 - p) / n)
    assert np.array_equal(np.unique(ours), np.unique(theirs))       # {0, 1/(1-p)}


def test_dropout_eval_is_identity_and_train_is_default():
    x = np.random.default_rng(2).standard_normal((4, 3, 2, 2)).astype(np.float32)
    layer = Dropout(0.5, rng=np.random.default_rng(0))
    assert layer.training
    assert not np.array_equal(layer.forward(x), x)
    layer.eval()
    assert layer.forward(x) is x
    dout = np.ones_like(x)
    assert layer.backward(dout) is dout
    layer.train()
    assert (layer.forward(x) == 0).any()


def test_dropout_same_seed_same_mask_and_fresh_masks_per_call():
    shape = (8, 16)
    assert np.array_equal(draw_mask(0.5, shape, 3), draw_mask(0.5, shape, 3))
    assert not np.array_equal(draw_mask(0.5, shape, 3), draw_mask(0.5, shape, 4))
    layer = Dropout(0.5, rng=np.random.default_rng(3))
    first, second = layer.forward(np.ones(shape)), layer.forward(np.ones(shape))
    assert not np.array_equal(first, second)
    assert np.array_equal(first != 0, draw_mask(0.5, shape, 3))
    # the mask does not depend on the input's dtype
    layer32 = Dropout(0.5, rng=np.random.default_rng(3))
    out32 = layer32.forward(np.ones(shape, dtype=np.float32))
    assert out32.dtype == np.float32
    assert np.array_equal(out32 != 0, first != 0)


def test_dropout_float32_matches_float64():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 4, 5))
    dout = rng.standard_normal(x.shape)
    out64, cache64 = dropout_forward(x, 0.3, np.random.default_rng(9))
    out32, cache32 = dropout_forward(x.astype(np.float32), 0.3, np.random.default_rng(9))
    dx64 = dropout_backward(dout, cache64)
    dx32 = dropout_backward(dout.astype(np.float32), cache32)
    assert out32.dtype == dx32.dtype == np.float32
    assert rel_error(out32, out64) < 1e-6
    assert rel_error(dx32, dx64) < 1e-6


def test_dropout_p_zero_and_one():
    x = np.random.default_rng(6).standard_normal((5, 7))
    with warnings.catch_warnings():
        warnings.simplefilter("error")                              # no division by zero
        one = Dropout(1.0, rng=np.random.default_rng(0))
        out = one.forward(x)
        assert np.array_equal(out, np.zeros_like(x))
        assert np.array_equal(one.backward(np.ones_like(x)), np.zeros_like(x))
        zero = Dropout(0.0, rng=np.random.default_rng(0))
        out = zero.forward(x)
        assert np.array_equal(out, x) and out is not x
        assert np.array_equal(zero.backward(x), x)


@pytest.mark.parametrize("p", [0.5, 1.0])
def test_dropout_keeps_nan_and_inf_as_torch_does(p):
    """A dropped unit is x * 0, as in torch: NaN and inf become NaN, not a hidden 0, in
    the forward and the backward pass alike; no NumPy warning about it."""
    x = np.tile([1.0, -2.0, np.nan, np.inf, -np.inf], 40).astype(np.float32)
    layer = Dropout(p, rng=np.random.default_rng(0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = layer.forward(x)
        dx = layer.backward(np.full_like(x, np.inf))
    keep = layer.cache.keep
    scale = 0.0 if p == 1 else 1.0 / (1.0 - p)
    want = torch.from_numpy(x) * torch.from_numpy(keep) * scale
    np.testing.assert_array_equal(out, want.numpy())             # NaN where torch's is
    assert np.isnan(out[~np.isfinite(x) & ~keep]).all() and np.isnan(dx[~keep]).all()
    assert (p == 1 and not keep.any()) or np.isposinf(dx[keep]).all()


def test_dropout_uses_only_its_generator():
    state = np.random.get_state()
    before = np.random.get_state()[1].copy()
    layer = Dropout(0.5)
    assert isinstance(layer.rng, np.random.Generator)
    layer.forward(np.ones((10, 10)))
    assert np.array_equal(np.random.get_state()[1], before)
    np.random.set_state(state)
    rng = np.random.default_rng(0)
    assert Dropout(0.1, rng=rng).rng is rng


def test_dropout_analysis_and_config():
    layer = Dropout()
    assert repr(layer) == "Dropout(p=0.5)" and repr(Dropout(0.25)) == "Dropout(p=0.25)"
    assert layer.num_params() == 0 and layer.params == {} and layer.buffers == {}
    assert layer.output_shape((4096,)) == (4096,)
    assert layer.macs((4096,)) == 0
    config = Dropout(0.3).get_config()
    assert config == {"type": "Dropout", "p": 0.3}
    assert json.loads(json.dumps(config)) == config
    assert Dropout(**{k: v for k, v in config.items() if k != "type"}).p == 0.3


# -- errors -------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,match", [
    (dict(p=-0.1), r"p \(the drop probability\) must be a number in \[0, 1\], got -0.1"),
    (dict(p=1.5), r"must be a number in \[0, 1\], got 1.5"),
    (dict(p="0.5"), r"must be a number in \[0, 1\], got '0.5'"),
    (dict(p=True), r"must be a number in \[0, 1\], got True"),
    (dict(p=float("nan")), r"must be a number in \[0, 1\], got nan"),
    (dict(p=0.5, rng=np.random.RandomState(0)), "rng must be an np.random.Generator"),
    (dict(p=0.5, rng=0), "rng must be an np.random.Generator or None, got int"),
])
def test_dropout_constructor_errors(kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        Dropout(**kwargs)
    assert str(info.value).startswith("Dropout: ")


@pytest.mark.parametrize("x,match", [
    (np.zeros((2, 3), dtype=np.int64), "expected a floating-point NumPy array .* int64"),
    ([1.0, 2.0], "expected a floating-point NumPy array .* got list"),
])
def test_dropout_input_errors(x, match):
    with pytest.raises(ValueError, match=rf"Dropout\(p=0.5\): {match}"):
        Dropout().forward(x)


def test_dropout_backward_before_forward():
    with pytest.raises(RuntimeError, match=r"Dropout\(p=0.5\): backward called before"):
        Dropout().backward(np.zeros(3))


# -- Dropout2d ----------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(100))
def test_dropout2d_drops_whole_maps_as_torch_scales_them(seed):
    """One draw per (sample, channel): a feature map is kept whole or zeroed, kept ones
    scaled by 1 / (1 - p); the gradient uses the same mask. Against PyTorch's dropout2d
    on the maps both keep."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in rng.integers(1, 6, size=4))
    p = float([0.0, 1.0, 0.5, rng.uniform()][seed % 4])
    layer = Dropout2d(p, rng=np.random.default_rng(seed))
    x = rng.standard_normal(shape) + 0.1
    dout = rng.standard_normal(shape)
    out, dx = layer.forward(x), layer.backward(dout)
    dropped = (out == 0).all(axis=(2, 3))
    np.testing.assert_array_equal((out == 0).any(axis=(2, 3)), dropped)   # whole maps
    scale = 0.0 if p == 1 else 1 / (1 - p)
    keep = ~dropped[:, :, None, None]
    assert rel_error(out, x * keep * scale) < 1e-12 and rel_error(dx, dout * keep * scale) \
        < 1e-12
    torch.manual_seed(seed)
    theirs = torch.nn.functional.dropout2d(torch.from_numpy(x), p, training=True).numpy()
    both = np.broadcast_to(keep, shape) & (theirs != 0)
    assert rel_error(out[both], theirs[both]) < 1e-10


def test_dropout2d_fraction_gradient_config_and_errors():
    layer = Dropout2d(0.3, rng=np.random.default_rng(5))
    out = layer.forward(np.ones((500, 200, 2, 2)))
    assert abs((out[:, :, 0, 0] == 0).mean() - 0.3) < 0.01
    class FixedMaskDropout2d(Dropout2d):
        def forward(self, x):
            self.rng = np.random.default_rng(1)
            return super().forward(x)
    errors = check_layer_grads(FixedMaskDropout2d(0.4),
                               np.random.default_rng(2).standard_normal((2, 5, 3, 3)))
    assert errors["x"] < 1e-7
    assert repr(layer) == "Dropout2d(p=0.3)" and layer.get_config() == {"type": "Dropout2d",
                                                                        "p": 0.3}
    assert layer.eval().forward(np.ones((1, 2, 2, 2))).tolist() == np.ones((1, 2, 2, 2)).tolist()
    with pytest.raises(ValueError, match=r"^Dropout2d\(p=0.3\): expected a 4-D \(N, C, H, W\) "
                                         r"array, got shape \(4, 5\)"):
        layer.train().forward(np.ones((4, 5)))
