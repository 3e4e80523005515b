"""BatchNorm1d/2d and LocalResponseNorm: gradient checks, PyTorch comparisons, errors."""

import json

import numpy as np
import pytest
import torch

from convnet.functional.norm import batch_norm_backward, batch_norm_forward
from convnet.layers.norm import BatchNorm1d, BatchNorm2d, LocalResponseNorm
from tests.utils import check_layer_grads, rel_error

TORCH_BN = {BatchNorm1d: torch.nn.BatchNorm1d, BatchNorm2d: torch.nn.BatchNorm2d}


def assert_close(ours, theirs, tol=1e-10):
    """Same shape and a relative difference (tests.utils.rel_error) below tol."""
    if isinstance(theirs, torch.Tensor):
        theirs = theirs.detach().numpy()
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    err = rel_error(ours, theirs)
    assert err < tol, err


def randomize(layer, rng):
    """Random gamma, beta and running statistics, so the checks see non-trivial values."""
    d = layer.num_features
    if layer.affine:
        layer.params["weight"][...] = rng.uniform(0.5, 2.0, d) * rng.choice([-1, 1], d)
        layer.params["bias"][...] = rng.standard_normal(d)
    if layer.track_running_stats:
        layer.buffers["running_mean"][...] = rng.standard_normal(d)
        layer.buffers["running_var"][...] = rng.uniform(0.2, 3.0, d)
    return layer


def copy_to_torch(ours, theirs):
    with torch.no_grad():
        for key, value in {**ours.params, **ours.buffers}.items():
            getattr(theirs, key).copy_(torch.from_numpy(np.array(value)))


# -- gradient checks ----------------------------------------------------------------------
BN_SHAPES = [(BatchNorm1d, (4, 3)), (BatchNorm1d, (2, 3, 4)), (BatchNorm1d, (3, 1, 2)),
             (BatchNorm2d, (2, 3, 3, 2)), (BatchNorm2d, (1, 2, 2, 3)),
             (BatchNorm2d, (3, 1, 2, 2))]


@pytest.mark.parametrize("cls,shape", BN_SHAPES)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("mode", ["train", "eval", "eval_batch_stats"])
def test_batch_norm_gradients(cls, shape, affine, mode):
    rng = np.random.default_rng(len(shape) * 10 + shape[1])
    track = mode != "eval_batch_stats"
    bn = randomize(cls(shape[1], eps=1e-3, affine=affine, track_running_stats=track,
                       dtype=np.float64), rng)
    bn.train(mode == "train")
    x = rng.standard_normal(shape) * 2 + 0.5
    errors = check_layer_grads(bn, x, seed=1)
    assert set(errors) == ({"x", "weight", "bias"} if affine else {"x"})
    assert max(errors.values()) < 1e-7, errors


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 6])
def test_local_response_norm_gradients(size):
    rng = np.random.default_rng(size)
    lrn = LocalResponseNorm(size, alpha=rng.uniform(0.1, 2.0), beta=rng.uniform(0.3, 1.2),
                            k=rng.uniform(0.5, 2.0))
    x = rng.standard_normal((2, 7, 2, 3))
    errors = check_layer_grads(lrn, x, seed=size)
    assert errors["x"] < 1e-7, errors


def test_batch_norm_functional_gradient_is_zero_sum_per_channel():
    """With batch statistics, shifting a whole channel changes nothing: dx sums to 0."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 3, 2, 2))
    out, cache = batch_norm_forward(x, rng.standard_normal(3), rng.standard_normal(3))
    dx, _, _ = batch_norm_backward(rng.standard_normal(out.shape), cache)
    assert np.abs(dx.sum(axis=(0, 2, 3))).max() < 1e-12
    assert np.abs(dx).max() > 1e-3


# -- PyTorch, forward and backward --------------------------------------------------------
def bn_case(seed):
    """A small random BatchNorm configuration and input shape, drawn from the seed."""
    rng = np.random.default_rng(seed)
    cls = [BatchNorm1d, BatchNorm1d, BatchNorm2d][seed % 3]
    c = int(rng.choice([1, 1, 2, 3, 4, 5]))
    while True:
        n = int(rng.integers(1, 5))
        spatial = {0: (), 1: (int(rng.integers(1, 6)),)}.get(
            seed % 3, (int(rng.integers(1, 6)), int(rng.integers(1, 6))))
        if n * int(np.prod(spatial)) >= 2:
            break
    momentum = [0.1, 0.0, 1.0, None, round(float(rng.uniform()), 3)][int(rng.integers(5))]
    kwargs = dict(eps=float(rng.choice([1e-5, 1e-3, 0.1, 1.0])), momentum=momentum,
                  affine=bool(rng.integers(2)), track_running_stats=bool(rng.integers(4) > 0))
    return rng, cls, (n, c, *spatial), kwargs


def run_both(ours, theirs, x, dout):
    """One forward and backward through both layers; compare out, dx, dweight, dbias."""
    out = ours.forward(x)
    dx = ours.backward(dout)
    theirs.zero_grad()
    x_t = torch.tensor(x, requires_grad=True)
    out_t = theirs(x_t)
    out_t.backward(torch.from_numpy(dout))
    assert out.dtype == np.float64
    assert_close(out, out_t)
    assert_close(dx, x_t.grad)
    if ours.affine:
        assert_close(ours.grads["weight"], theirs.weight.grad)
        assert_close(ours.grads["bias"], theirs.bias.grad)


@pytest.mark.parametrize("seed", range(360))
def test_batch_norm_matches_torch(seed):
    rng, cls, shape, kwargs = bn_case(seed)
    c = shape[1]
    ours = cls(c, dtype=np.float64, **kwargs)
    theirs = TORCH_BN[cls](c, dtype=torch.float64, **kwargs)
    if seed % 2:
        randomize(ours, rng)
    copy_to_torch(ours, theirs)
    shift = rng.standard_normal((1, c) + (1,) * (len(shape) - 2)) * 3
    steps = int(rng.integers(1, 4))
    for _ in range(steps):                                         # train mode
        x = rng.standard_normal(shape) * rng.uniform(0.1, 3.0) + shift
        run_both(ours, theirs, x, rng.standard_normal(shape))
    if kwargs["track_running_stats"]:
        assert_close(ours.buffers["running_mean"], theirs.running_mean)
        assert_close(ours.buffers["running_var"], theirs.running_var)
        assert ours.buffers["num_batches_tracked"].dtype == np.int64
        assert ours.buffers["num_batches_tracked"].shape == ()
        assert int(ours.buffers["num_batches_tracked"]) == int(theirs.num_batches_tracked)
        assert int(ours.buffers["num_batches_tracked"]) == steps
    ours.eval()
    theirs.eval()
    n_eval = 1 if kwargs["track_running_stats"] else shape[0]     # N=1 is fine in eval
    x = rng.standard_normal((n_eval, *shape[1:])) + shift
    run_both(ours, theirs, x, rng.standard_normal(x.shape))
    if kwargs["track_running_stats"]:                              # eval leaves stats alone
        assert_close(ours.buffers["running_mean"], theirs.running_mean)
        assert int(ours.buffers["num_batches_tracked"]) == steps


def test_batch_norm_cumulative_average_with_momentum_none():
    """momentum=None: the running mean is the plain average of the batch means."""
    rng = np.random.default_rng(5)
    bn = BatchNorm2d(3, momentum=None, dtype=np.float64)
    batches = [rng.standard_normal((2, 3, 2, 2)) + i for i in range(4)]
    for x in batches:
        bn.forward(x)
    means = [x.mean(axis=(0, 2, 3)) for x in batches]
    unbiased = [x.var(axis=(0, 2, 3), ddof=1) for x in batches]
    assert_close(bn.buffers["running_mean"], np.mean(means, axis=0))
    assert_close(bn.buffers["running_var"], np.mean(unbiased, axis=0))


def lrn_case(seed):
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 4)), int(rng.choice([1, 2, 3, 5, 8])),
             int(rng.integers(1, 5)), int(rng.integers(1, 5)))
    kwargs = dict(size=int(rng.integers(1, 8)), alpha=float(rng.choice([1e-4, 0.5, 2.0])),
                  beta=float(rng.uniform(0.1, 1.5)), k=float(rng.choice([1.0, 2.0, 0.7])))
    return rng, shape, kwargs


@pytest.mark.parametrize("seed", range(300))
def test_local_response_norm_matches_torch(seed):
    rng, shape, kwargs = lrn_case(seed)
    lrn = LocalResponseNorm(**kwargs)
    x = rng.standard_normal(shape) * rng.uniform(0.5, 3.0)
    dout = rng.standard_normal(shape)
    out = lrn.forward(x)
    dx = lrn.backward(dout)
    x_t = torch.tensor(x, requires_grad=True)
    out_t = torch.nn.functional.local_response_norm(x_t, **kwargs)
    out_t.backward(torch.from_numpy(dout))
    assert_close(out, out_t)
    assert_close(dx, x_t.grad)
    assert_close(lrn.infer(x), out_t)          # the in-place inference pass
    assert lrn.cache is None


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e15])
def test_local_response_norm_float32_gradient_of_large_activations(scale):
    """d^(-beta-1) underflowed float32 for activations near 1e15 (d ~ 1e21): the window's
    term was lost, and dx had the wrong sign where torch's float32 is exact."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((2, 7, 3, 3)) * scale).astype(np.float32)
    dout = rng.standard_normal(x.shape).astype(np.float32)
    lrn = LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)
    lrn.forward(x)
    dx = lrn.backward(dout)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    torch.nn.LocalResponseNorm(5, 1e-4, 0.75, 2.0)(xt).backward(
        torch.tensor(dout, dtype=torch.float64))
    assert rel_error(dx, xt.grad.numpy()) < 1e-5


def test_local_response_norm_even_size_window():
    """size=2 looks one channel back (c-1, c), none forward: channel 0 sees only itself."""
    x = np.arange(1.0, 5.0).reshape(1, 4, 1, 1)
    out = LocalResponseNorm(2, alpha=2.0, beta=1.0, k=0.0).forward(x).ravel()
    sq = x.ravel() ** 2
    expected = x.ravel() / np.array([sq[0], sq[0] + sq[1], sq[1] + sq[2], sq[2] + sq[3]])
    assert_close(out, expected)


# -- float32 against float64 --------------------------------------------------------------
@pytest.mark.parametrize("cls,shape", BN_SHAPES)
def test_batch_norm_float32_matches_float64(cls, shape):
    rng = np.random.default_rng(7)
    bn64 = randomize(cls(shape[1], dtype=np.float64), rng)
    bn32 = cls(shape[1])
    for key in bn64.params:
        bn32.params[key][...] = bn64.params[key]
    for key in ("running_mean", "running_var"):
        bn32.buffers[key][...] = bn64.buffers[key]
    x = (rng.standard_normal(shape) * 2 + 1).astype(np.float32)
    dout = rng.standard_normal(shape).astype(np.float32)
    for mode in (True, False):
        bn32.train(mode)
        bn64.train(mode)
        out32, out64 = bn32.forward(x), bn64.forward(x.astype(np.float64))
        dx32, dx64 = bn32.backward(dout), bn64.backward(dout.astype(np.float64))
        assert out32.dtype == dx32.dtype == bn32.grads["weight"].dtype == np.float32
        assert rel_error(out32, out64) < 1e-5
        assert rel_error(dx32, dx64) < 1e-4
        assert rel_error(bn32.grads["weight"], bn64.grads["weight"]) < 1e-5
    assert bn32.buffers["running_mean"].dtype == bn32.buffers["running_var"].dtype == np.float32
    assert rel_error(bn32.buffers["running_var"], bn64.buffers["running_var"]) < 1e-5


def test_local_response_norm_inference_holds_two_arrays_of_its_output():
    """Inference had made about five arrays of the output's size (a padded copy of the
    squares, their sum, the denominator, its power, the output); it makes the squares and
    one array that becomes the output."""
    from tests.utils import traced
    lrn = LocalResponseNorm(5, alpha=1e-2, k=2.0)
    x = np.random.default_rng(9).standard_normal((4, 64, 32, 32)).astype(np.float32)
    out, peak = traced(lrn.infer, x)
    assert out.dtype == np.float32 and peak < 2.2 * x.nbytes, peak / x.nbytes
    np.testing.assert_allclose(out, lrn.forward(x), rtol=1e-6)


def test_local_response_norm_float32_matches_float64():
    rng = np.random.default_rng(8)
    lrn = LocalResponseNorm(5, alpha=1e-2, k=2.0)
    x = rng.standard_normal((2, 7, 4, 3)).astype(np.float32)
    dout = rng.standard_normal(x.shape).astype(np.float32)
    out32, dx32 = lrn.forward(x), lrn.backward(dout)
    out64, dx64 = lrn.forward(x.astype(np.float64)), lrn.backward(dout.astype(np.float64))
    assert out32.dtype == dx32.dtype == np.float32
    assert rel_error(out32, out64) < 1e-6
    assert rel_error(dx32, dx64) < 1e-6


def test_batch_norm_float32_layer_accepts_float64_input():
    rng = np.random.default_rng(9)
    bn = BatchNorm2d(2)
    out = bn.forward(rng.standard_normal((3, 2, 2, 2)))
    assert out.dtype == np.float64 and np.isfinite(out).all()
    assert bn.buffers["running_mean"].dtype == np.float32


# -- state, analysis, config --------------------------------------------------------------
@pytest.mark.parametrize("cls", [BatchNorm1d, BatchNorm2d])
@pytest.mark.parametrize("affine,track", [(True, True), (True, False), (False, True),
                                          (False, False)])
def test_batch_norm_names_match_torch_state_dict(cls, affine, track):
    ours = cls(6, affine=affine, track_running_stats=track)
    theirs = TORCH_BN[cls](6, affine=affine, track_running_stats=track)
    assert set(ours.params) | set(ours.buffers) == set(theirs.state_dict())
    assert set(ours.params) == {name for name, _ in theirs.named_parameters()}
    for key, value in theirs.state_dict().items():
        mine = {**ours.params, **ours.buffers}[key]
        assert mine.shape == tuple(value.shape)
        assert np.array_equal(mine, value.numpy())
    assert ours.num_params() == sum(p.numel() for p in theirs.parameters())
    assert all(p.dtype == np.float32 for p in ours.params.values())


def test_batch_norm_analysis_and_config():
    bn = BatchNorm2d(64)
    assert repr(bn) == "BatchNorm2d(D=64)"
    assert bn.output_shape((64, 56, 56)) == (64, 56, 56)
    assert bn.macs((64, 56, 56)) == 2 * 64 * 56 * 56
    assert bn.num_params() == 128
    config = bn.get_config()
    assert config == {"type": "BatchNorm2d", "num_features": 64, "eps": 1e-5, "momentum": 0.1,
                      "affine": True, "track_running_stats": True, "dtype": "float32"}
    assert json.loads(json.dumps(config)) == config
    args = {k: v for k, v in config.items() if k != "type"}
    assert BatchNorm2d(**args).get_config() == config
    odd = BatchNorm1d(10, eps=1e-3, momentum=None, affine=False, track_running_stats=False,
                      dtype=np.float64)
    assert repr(odd) == ("BatchNorm1d(D=10, eps=0.001, momentum=None, affine=False, "
                         "track_running_stats=False)")
    assert odd.get_config()["momentum"] is None and odd.num_params() == 0
    assert odd.output_shape((10,)) == (10,) and odd.output_shape((10, 7)) == (10, 7)
    assert odd.macs((10, 7)) == 140


def test_local_response_norm_analysis_and_config():
    lrn = LocalResponseNorm(5, k=2.0)
    assert repr(lrn) == "LocalResponseNorm(n=5, alpha=0.0001, beta=0.75, k=2)"
    assert lrn.output_shape((96, 55, 55)) == (96, 55, 55)
    assert lrn.num_params() == 0
    assert lrn.macs((96, 55, 55)) == 6 * 96 * 55 * 55
    config = lrn.get_config()
    assert json.loads(json.dumps(config)) == config
    args = {k: v for k, v in config.items() if k != "type"}
    assert LocalResponseNorm(**args).get_config() == config


@pytest.mark.parametrize("cls, shape", [
    (BatchNorm2d, (3, 4, 5, 6)), (BatchNorm2d, (1, 4, 5, 6)), (BatchNorm1d, (5, 4)),
    (BatchNorm1d, (3, 4, 7)), (BatchNorm1d, (1, 4))])
@pytest.mark.parametrize("affine", [True, False])
def test_eval_infer_is_one_scale_and_shift(cls, shape, affine):
    """In eval mode infer applies x * s + t per channel (batch_norm_affine): the same as
    forward, no cache; in training mode it is forward (batch statistics)."""
    rng = np.random.default_rng(sum(shape))
    bn = cls(4, affine=affine, dtype=np.float64)
    bn.buffers["running_mean"][:] = rng.standard_normal(4)
    bn.buffers["running_var"][:] = rng.uniform(0.1, 3, 4)
    if affine:
        bn.params["weight"][:] = rng.standard_normal(4)
        bn.params["bias"][:] = rng.standard_normal(4)
    x = rng.standard_normal(shape)
    bn.eval()
    assert rel_error(bn.infer(x), bn.forward(x)) < 1e-12
    assert bn.infer(x).shape == shape and bn.cache is None
    bn.train()
    assert bn.inference_affine() is None
    if shape[0] > 1:
        twin = cls(4, affine=affine, dtype=np.float64)
        for mine, theirs in ((twin.params, bn.params), (twin.buffers, bn.buffers)):
            for key, value in theirs.items():
                mine[key][...] = value
        assert rel_error(bn.infer(x), twin.forward(x)) < 1e-12


def test_eval_mode_uses_running_statistics():
    rng = np.random.default_rng(11)
    bn = randomize(BatchNorm2d(3, dtype=np.float64), rng).eval()
    x = rng.standard_normal((2, 3, 2, 2))
    mean, var = bn.buffers["running_mean"], bn.buffers["running_var"]
    gamma, beta = bn.params["weight"], bn.params["bias"]
    expected = ((x - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-5)
                * gamma[:, None, None] + beta[:, None, None])
    assert_close(bn.forward(x), expected)
    assert int(bn.buffers["num_batches_tracked"]) == 0


# -- errors -------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,match", [
    (dict(num_features=0), "num_features must be a positive int"),
    (dict(num_features=2.0), "num_features must be a positive int"),
    (dict(num_features=3, eps=-1e-5), "eps must be >= 0"),
    (dict(num_features=3, momentum=1.5), r"momentum must be in \[0, 1\]"),
    (dict(num_features=3, momentum="0.1"), "momentum must be a real number"),
    (dict(num_features=3, affine=1), "affine must be True or False"),
    (dict(num_features=3, track_running_stats=None), "track_running_stats must be True"),
    (dict(num_features=3, dtype=np.int32), "dtype must be float32 or float64"),
])
@pytest.mark.parametrize("cls", [BatchNorm1d, BatchNorm2d])
def test_batch_norm_constructor_errors(cls, kwargs, match):
    with pytest.raises(ValueError, match=f"{cls.__name__}: {match}"):
        cls(**kwargs)


@pytest.mark.parametrize("cls,x,match", [
    (BatchNorm2d, np.zeros((2, 4, 5, 5)), r"expected 3 input channels .* got 4"),
    (BatchNorm2d, np.zeros((2, 5, 5, 3)), "looks like an NHWC array"),
    (BatchNorm2d, np.zeros((2, 3, 5)), r"expected a 4-D input \(N, C, H, W\)"),
    (BatchNorm2d, np.zeros((2, 3, 2, 2), dtype=np.int64), "expected a floating-point"),
    (BatchNorm2d, [[1.0, 2.0]], "expected a NumPy array, got list"),
    (BatchNorm1d, np.zeros((2, 4)), r"expected 3 input channels .* got 4"),
    (BatchNorm1d, np.zeros((2, 5, 3)), r"looks like \(N, L, C\)"),
    (BatchNorm1d, np.zeros((2, 3, 2, 2)), r"2-D input \(N, C\) or a 3-D input \(N, C, L\)"),
    (BatchNorm1d, np.zeros(3), r"2-D input \(N, C\) or a 3-D input \(N, C, L\)"),
    (BatchNorm1d, np.zeros((2, 3), dtype=np.int32), "expected a floating-point"),
    (BatchNorm2d, np.zeros((1, 3, 1, 1)), "more than 1 value per channel in training"),
    (BatchNorm1d, np.zeros((1, 3)), "more than 1 value per channel in training"),
    (BatchNorm1d, np.zeros((1, 3, 1)), "more than 1 value per channel in training"),
])
def test_batch_norm_input_errors(cls, x, match):
    bn = cls(3)
    with pytest.raises(ValueError, match=match) as info:
        bn.forward(x)
    assert str(info.value).startswith(f"{cls.__name__}(D=3)")
    assert int(bn.buffers["num_batches_tracked"]) == 0


def test_batch_norm_single_value_is_fine_in_eval_and_torch_agrees_on_train():
    bn = BatchNorm1d(3).eval()
    assert bn.forward(np.ones((1, 3), dtype=np.float32)).shape == (1, 3)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        torch.nn.BatchNorm1d(3)(torch.ones(1, 3))
    assert BatchNorm1d(3).forward(np.ones((1, 3, 2), dtype=np.float32)).shape == (1, 3, 2)


def test_batch_norm_output_shape_errors_and_backward_before_forward():
    with pytest.raises(ValueError, match=r"BatchNorm2d\(D=3\): expected 3 input channels"):
        BatchNorm2d(3).output_shape((4, 5, 5))
    with pytest.raises(ValueError, match=r"BatchNorm1d\(D=3\): expected a per-sample shape"):
        BatchNorm1d(3).output_shape((3, 4, 5))
    with pytest.raises(RuntimeError, match="backward called before forward"):
        BatchNorm2d(3).backward(np.zeros((2, 3, 1, 1)))


@pytest.mark.parametrize("kwargs,match", [
    (dict(size=0), "size must be a positive int"),
    (dict(size=2.5), "size must be a positive int"),
    (dict(size=5, alpha="1e-4"), "alpha must be a real number"),
    (dict(size=5, beta=None), "beta must be a real number"),
    (dict(size=5, k=float("nan")), "k must be a real number"),
    # a negative base of the power: NaN for every output of its window
    (dict(size=5, alpha=-1), "alpha must be >= 0, got -1"),
    (dict(size=5, k=-0.5), "k must be >= 0, got -0.5"),
])
def test_local_response_norm_constructor_errors(kwargs, match):
    with pytest.raises(ValueError, match=f"LocalResponseNorm: {match}"):
        LocalResponseNorm(**kwargs)


@pytest.mark.parametrize("x,match", [
    (np.zeros((2, 3, 5)), r"expected a 4-D input \(N, C, H, W\)"),
    (np.zeros((2, 3, 5, 5), dtype=np.int8), "expected a floating-point"),
])
def test_local_response_norm_input_errors(x, match):
    with pytest.raises(ValueError, match=match) as info:
        LocalResponseNorm(5).forward(x)
    assert str(info.value).startswith("LocalResponseNorm(n=5")


def test_batch_norm_inference_of_an_empty_batch():
    bn = BatchNorm2d(4).eval()
    x = np.zeros((0, 4, 5, 5), np.float32)
    assert bn.infer(x).shape == bn.forward(x).shape == (0, 4, 5, 5)


def test_batch_norm_without_running_statistics_needs_two_values_in_eval_too():
    """A BatchNorm that keeps no running statistics normalizes with the batch's in eval
    mode too: one value per channel is refused, as PyTorch refuses it (it had given
    zeros)."""
    for layer, x in ((BatchNorm1d(3, track_running_stats=False), np.ones((1, 3))),
                     (BatchNorm2d(3, track_running_stats=False), np.ones((1, 3, 1, 1)))):
        with pytest.raises(ValueError, match="expected more than 1 value per channel "
                                             r"\(batch statistics\).*keeps no running"):
            layer.eval().forward(x)
        assert layer.forward(np.arange(6.0).reshape(2, 3, *x.shape[2:])).shape[0] == 2
    assert BatchNorm1d(3).eval().forward(np.ones((1, 3))).shape == (1, 3)


def test_batch_norm_with_eps_0_is_refused_where_it_uses_the_batchs_statistics():
    """eps=0 had made a constant channel NaN in training, without a word (PyTorch
    raises); at inference with running statistics it is allowed, as there."""
    x = np.ones((2, 2, 3, 3))
    for bn in (BatchNorm2d(2, eps=0), BatchNorm2d(2, eps=0, track_running_stats=False).eval()):
        with pytest.raises(ValueError, match=r"eps must be positive to normalize with the "
                                             r"batch's statistics .* got 0"):
            bn.forward(x)
    assert np.array_equal(BatchNorm2d(2, eps=0).eval().forward(x), x)


def test_batch_norm_float32_variance_of_a_large_plane():
    """A float32 dot product adds a row's values one after another: over 2048 x 2048
    positions the variance was off by 7e-6 and the output by 2e-5 (PyTorch: 4e-7)."""
    x = np.random.default_rng(0).standard_normal((1, 2, 2048, 2048), dtype=np.float32)
    out = BatchNorm2d(2).forward(x)
    want = torch.nn.functional.batch_norm(torch.tensor(x, dtype=torch.float64), None, None,
                                          training=True).numpy()
    assert np.abs(out - want).max() < 2e-6
