"""Pooling: naive loops from the notes as oracles, PyTorch sweeps, gradient checks, errors."""

import functools
import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

from convnet.functional import pool as P
from convnet.layers.pool import (
    AdaptiveAvgPool2d,
    AdaptiveMaxPool2d,
    AvgPool2d,
    LPPool2d,
    MaxPool2d,
)
from tests.utils import check_layer_grads, rel_error

# -- naive references, straight from the notes: loop over n, c, oh, ow ---------------------


def naive_maxpool(x, kernel, stride, padding=(0, 0), dilation=(1, 1), out_size=None,
                  dout=None):
    """Max over each window (padding never wins); first max in row-major order.

    Returns (out, switches) or, with dout, the gradient routed to each window's max.
    """
    n_, c_, h, w = x.shape
    (fh, fw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    if out_size is None:
        out_size = ((h + 2 * ph - dh * (fh - 1) - 1) // sh + 1,
                    (w + 2 * pw - dw * (fw - 1) - 1) // sw + 1)
    oh, ow = out_size
    out = np.empty((n_, c_, oh, ow))
    switches = np.empty((n_, c_, oh, ow), dtype=int)
    dx = np.zeros_like(x)
    for n in range(n_):
        for c in range(c_):
            for i in range(oh):
                for j in range(ow):
                    best, arg = -np.inf, None
                    for a in range(fh):
                        for b in range(fw):
                            r, q = i * sh - ph + a * dh, j * sw - pw + b * dw
                            if 0 <= r < h and 0 <= q < w and x[n, c, r, q] > best:
                                best, arg = x[n, c, r, q], (a * fw + b, r, q)
                    out[n, c, i, j] = best
                    switches[n, c, i, j] = arg[0]
                    if dout is not None:
                        dx[n, c, arg[1], arg[2]] += dout[n, c, i, j]
    return dx if dout is not None else (out, switches)


def naive_avgpool(x, kernel, stride, padding=(0, 0), out_size=None, count_include_pad=True,
                  dout=None):
    """Mean of each window; PyTorch's divisor (the window clipped to the padded input,
    or only its real inputs). Returns out or, with dout, the gradient."""
    n_, c_, h, w = x.shape
    (fh, fw), (sh, sw), (ph, pw) = kernel, stride, padding
    if out_size is None:
        out_size = ((h + 2 * ph - fh) // sh + 1, (w + 2 * pw - fw) // sw + 1)
    oh, ow = out_size
    out = np.empty((n_, c_, oh, ow))
    dx = np.zeros_like(x)
    for n in range(n_):
        for c in range(c_):
            for i in range(oh):
                for j in range(ow):
                    r0, q0 = i * sh - ph, j * sw - pw
                    rows = [r for r in range(r0, r0 + fh) if 0 <= r < h]
                    cols = [q for q in range(q0, q0 + fw) if 0 <= q < w]
                    if count_include_pad:
                        div = ((min(r0 + fh, h + ph) - r0) * (min(q0 + fw, w + pw) - q0))
                    else:
                        div = len(rows) * len(cols)
                    out[n, c, i, j] = sum(x[n, c, r, q] for r in rows for q in cols) / div
                    if dout is not None:
                        for r in rows:
                            for q in cols:
                                dx[n, c, r, q] += dout[n, c, i, j] / div
    return dx if dout is not None else out


def torch_grad(op, x, dout):
    """PyTorch's forward and input gradient of op at x (float64)."""
    xt = torch.tensor(x, requires_grad=True)
    out = op(xt)
    out.backward(torch.tensor(dout))
    return out.detach().numpy(), xt.grad.numpy()


def distinct(rng, shape):
    """float64 input without ties (values spaced 1 apart): max pooling is smooth there."""
    return rng.permutation(int(np.prod(shape))).reshape(shape) + rng.uniform(-.3, .3, shape)


# -- the notes' examples and the naive oracles -------------------------------------------

def test_notes_sizes():
    # 224x224x64 with F=2, S=2 -> 112x112x64; AlexNet's overlapping pool 55 -> 27.
    assert MaxPool2d(2).output_shape((64, 224, 224)) == (64, 112, 112)
    assert MaxPool2d(3, 2).output_shape((96, 55, 55)) == (96, 27, 27)
    pool = MaxPool2d(2)
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    out = pool.forward(x)
    assert out.shape == (1, 3, 4, 4) and out.dtype == np.float32
    assert out.size == x.size // 4                  # 75% of the activations discarded
    assert pool.num_params() == 0 and pool.macs((64, 224, 224)) == 0


MAX_CONFIGS = [  # kernel, stride, padding, dilation, (H, W)
    ((2, 2), (2, 2), (0, 0), (1, 1), (8, 6)),       # tiles: the reshape fast path
    ((3, 3), (3, 3), (0, 0), (1, 1), (9, 6)),       # tiles
    ((2, 3), (2, 3), (0, 0), (1, 1), (4, 9)),       # tiles, rectangular
    ((2, 2), (2, 2), (0, 0), (1, 1), (9, 7)),       # S == F but floored: general path
    ((3, 3), (2, 2), (0, 0), (1, 1), (9, 7)),       # overlapping pooling
    ((3, 3), (2, 2), (1, 1), (1, 1), (8, 8)),       # overlapping, padded
    ((3, 2), (1, 2), (1, 1), (2, 1), (7, 6)),       # dilation
    ((1, 1), (2, 3), (0, 0), (1, 1), (5, 7)),       # F=1, S > F
    ((4, 5), (3, 4), (2, 2), (1, 2), (9, 13)),
]


@pytest.mark.parametrize("kernel,stride,padding,dilation,hw", MAX_CONFIGS)
def test_maxpool_matches_naive(kernel, stride, padding, dilation, hw):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 4, (2, 3, *hw)).astype(np.float64)  # many ties
    out, cache = P.maxpool2d_forward(x, kernel, stride, padding, dilation)
    ref, ref_switches = naive_maxpool(x, kernel, stride, padding, dilation)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(cache.switches, ref_switches)
    dout = rng.standard_normal(out.shape)
    dx = P.maxpool2d_backward(dout, cache)
    assert dx.shape == x.shape
    assert rel_error(dx, naive_maxpool(x, kernel, stride, padding, dilation, dout=dout)) < 1e-14


def test_fast_path_is_taken_when_windows_do_not_overlap():
    assert P._disjoint((2, 3, 8, 6), (2, 2), (2, 2), (0, 0), (1, 1), (4, 3))
    assert P._disjoint((2, 3, 9, 7), (2, 2), (2, 2), (0, 0), (1, 1), (4, 3))   # floor
    assert not P._disjoint((2, 3, 9, 7), (2, 2), (2, 2), (0, 0), (1, 1), (5, 4))  # ceil
    assert not P._disjoint((2, 3, 8, 6), (2, 2), (2, 2), (1, 1), (1, 1), (5, 4))
    assert not P._disjoint((2, 3, 9, 9), (3, 3), (2, 2), (0, 0), (1, 1), (4, 4))


@pytest.mark.parametrize("size", [(7, 7), (9, 6), (8, 11)])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_floor_mode_leftovers_get_no_gradient(size, kind):
    """Windows side by side with rows or columns in none of them (a 7x7 plane under a 2x2
    pool): the leftovers' gradient is 0, the rest routed as PyTorch does."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 4, *size))
    forward, backward, torch_pool = (
        (P.maxpool2d_forward, P.maxpool2d_backward, TF.max_pool2d) if kind == "max" else
        (P.avgpool2d_forward, P.avgpool2d_backward, TF.avg_pool2d))
    out, cache = forward(x, (2, 2), (2, 2))
    dout = rng.standard_normal(out.shape)
    dx = backward(dout, cache)
    xt = torch.from_numpy(x).requires_grad_()
    torch_pool(xt, 2, 2).backward(torch.from_numpy(dout))
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-12, atol=1e-12)
    assert not dx[:, :, size[0] // 2 * 2:].any() and not dx[..., size[1] // 2 * 2:].any()


@pytest.mark.parametrize("switches", [False, True])
def test_padded_input_comes_from_the_scratch_buffer(switches):
    """A padded pool (ResNet's 3x3 stride-2 max) pads into the thread's kept buffer:
    after the first call, a call allocates its output (and switches) but no padded copy
    of the input, and its result is unchanged by a later call reusing the buffer."""
    import tracemalloc

    from convnet.functional.conv import release_scratch
    rng = np.random.default_rng(0)
    x, other = rng.standard_normal((2, 2, 8, 64, 64)).astype(np.float32)
    args = ((3, 3), (2, 2), (1, 1))
    release_scratch()
    first = P.maxpool2d_forward(x, *args, switches=switches)[0]
    tracemalloc.start()
    out = P.maxpool2d_forward(x, *args, switches=switches)[0]
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 3 * out.nbytes < x.nbytes         # the padded input alone is > x
    P.maxpool2d_forward(other, *args, switches=switches)
    np.testing.assert_array_equal(out, first)
    expected = TF.max_pool2d(torch.from_numpy(x), 3, 2, 1).numpy()
    np.testing.assert_array_equal(out, expected)


AVG_CONFIGS = [  # kernel, stride, padding, (H, W), count_include_pad, ceil_mode
    ((2, 2), (2, 2), (0, 0), (8, 6), True, False),  # tiles
    ((3, 2), (3, 2), (0, 0), (9, 4), True, False),  # tiles, rectangular
    ((3, 3), (2, 2), (1, 1), (8, 7), True, False),
    ((3, 3), (2, 2), (1, 1), (8, 7), False, False),
    ((2, 3), (2, 2), (1, 0), (7, 8), True, True),   # ceil mode: windows hang over the edge
    ((3, 3), (2, 2), (0, 1), (6, 6), False, True),
    ((5, 4), (4, 1), (2, 2), (11, 5), True, False),
]


@pytest.mark.parametrize("kernel,stride,padding,hw,include,ceil", AVG_CONFIGS)
def test_avgpool_matches_naive(kernel, stride, padding, hw, include, ceil):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, *hw))
    layer = AvgPool2d(kernel, stride, padding, ceil, include, fit="floor")
    out = layer.forward(x)
    out_size = out.shape[2:]
    assert rel_error(out, naive_avgpool(x, kernel, stride, padding, out_size, include)) < 1e-14
    dout = rng.standard_normal(out.shape)
    ref = naive_avgpool(x, kernel, stride, padding, out_size, include, dout=dout)
    assert rel_error(layer.backward(dout), ref) < 1e-14


# -- switches and ties --------------------------------------------------------------------

def test_switches_route_gradient_to_the_max():
    x = np.array([[1., 9., 2., 0.],
                  [3., 4., 8., 5.],
                  [7., 0., 1., 2.],
                  [6., 5., 3., 4.]])[None, None]
    pool = MaxPool2d(2)
    out = pool.forward(x)
    np.testing.assert_array_equal(out[0, 0], [[9., 8.], [7., 4.]])
    # switches: flat index i*F + j of the max inside each 2x2 window
    np.testing.assert_array_equal(pool.cache.switches[0, 0], [[1, 2], [0, 3]])
    dx = pool.backward(np.array([[10., 20.], [30., 40.]])[None, None])
    expect = np.zeros((4, 4))
    expect[0, 1], expect[1, 2], expect[2, 0], expect[3, 3] = 10, 20, 30, 40
    np.testing.assert_array_equal(dx[0, 0], expect)


def test_overlapping_windows_share_a_max_and_add_its_gradients():
    x = np.zeros((1, 1, 5, 5))
    x[0, 0, 2, 2] = 1.0                     # inside all four 3x3 windows of stride 2
    pool = MaxPool2d(3, 2)
    out = pool.forward(x)
    np.testing.assert_array_equal(out[0, 0], np.ones((2, 2)))
    dx = pool.backward(np.array([[1., 2.], [3., 4.]])[None, None])
    assert dx[0, 0, 2, 2] == 10 and np.count_nonzero(dx) == 1


@pytest.mark.parametrize("kernel,stride,padding,dilation", [
    (2, 2, 0, 1), (3, 2, 1, 1), (3, 1, 1, 2), ((2, 3), (1, 2), (1, 0), 1)])
def test_ties_go_to_the_first_max_like_torch(kernel, stride, padding, dilation):
    x = np.full((2, 2, 7, 8), 0.5)
    pool = MaxPool2d(kernel, stride, padding, dilation, fit="floor")
    out = pool.forward(x)
    dout = np.random.default_rng(3).standard_normal(out.shape)
    dx = pool.backward(dout)
    ref_out, ref_dx = torch_grad(
        lambda t: TF.max_pool2d(t, kernel, stride, padding, dilation), x, dout)
    np.testing.assert_array_equal(out, ref_out)
    np.testing.assert_array_equal(dx, ref_dx)
    if padding == 0:                        # first tap of every window is its first max
        assert np.all(pool.cache.switches == 0)


# -- PyTorch sweeps -------------------------------------------------------------------------

def _size(rng, extent, padding, stride):
    """An input size along one axis that fits at least one window, often an odd one."""
    return max(1, extent - 2 * padding) + int(rng.integers(0, 2 * stride + 3))


def _has_real_tap(size, kernel, stride, padding, dilation, out):
    """Every window along this axis sees at least one real (not padded) input."""
    return all(any(0 <= o * stride - padding + i * dilation < size for i in range(kernel))
               for o in range(out))


def _out(size, kernel, stride, padding, dilation, ceil):
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    if not ceil:
        return span // stride + 1
    out = -(-span // stride) + 1
    return out - 1 if (out - 1) * stride >= size + padding else out


def pool_cases(count, seed, dilation=True, padding=True):
    """Random pooling settings: kernel 1..5 (often rectangular), stride 1..4, padding up
    to F//2, dilation 1..3, ceil mode, odd sizes, N and C from 1."""
    rng = np.random.default_rng(seed)
    cases = []
    while len(cases) < count:
        k = rng.integers(1, 6, 2)
        if rng.random() < 0.3:
            k[1] = k[0]
        s = rng.integers(1, 5, 2)
        p = [int(rng.integers(0, f // 2 + 1)) if padding and rng.random() < 0.6 else 0
             for f in k]
        d = rng.integers(1, 4, 2) if dilation and rng.random() < 0.4 else np.ones(2, int)
        ceil = bool(rng.random() < 0.3)
        hw = [_size(rng, d[a] * (k[a] - 1) + 1, p[a], s[a]) for a in (0, 1)]
        outs = [_out(hw[a], k[a], s[a], p[a], d[a], ceil) for a in (0, 1)]
        if not all(_has_real_tap(hw[a], k[a], s[a], p[a], d[a], outs[a]) for a in (0, 1)):
            continue
        cases.append({"kernel": tuple(map(int, k)), "stride": tuple(map(int, s)),
                      "padding": tuple(p), "dilation": tuple(map(int, d)), "ceil": ceil,
                      "shape": (int(rng.integers(1, 3)), int(rng.integers(1, 4)), *hw),
                      "seed": int(rng.integers(2**31))})
    return cases


def _hw(v):
    return f"{v[0]}x{v[1]}"


def _id(case):
    hw = _hw
    return (f"F{hw(case['kernel'])}-S{hw(case['stride'])}-P{hw(case['padding'])}"
            f"-D{hw(case['dilation'])}{'-ceil' if case['ceil'] else ''}-{hw(case['shape'][2:])}"
            f"-n{case['shape'][0]}c{case['shape'][1]}")


MAX_CASES = pool_cases(300, seed=10)
AVG_CASES = pool_cases(300, seed=11, dilation=False)
LP_CASES = pool_cases(300, seed=12, dilation=False, padding=False)


@pytest.mark.parametrize("case", MAX_CASES, ids=[_id(c) for c in MAX_CASES])
def test_maxpool_matches_torch(case):
    rng = np.random.default_rng(case["seed"])
    shape = case["shape"]
    if rng.random() < 0.5:
        x = rng.integers(0, 3, shape).astype(np.float64)    # ties everywhere
    else:
        x = rng.standard_normal(shape)
    k, s, p, d, ceil = (case[key] for key in ("kernel", "stride", "padding", "dilation", "ceil"))
    pool = MaxPool2d(k, s, p, d, ceil_mode=ceil, fit="floor")
    out = pool.forward(x)
    dout = rng.standard_normal(out.shape)
    dx = pool.backward(dout)
    ref_out, ref_dx = torch_grad(lambda t: TF.max_pool2d(t, k, s, p, d, ceil), x, dout)
    assert out.shape == ref_out.shape and out.shape[1:] == pool.output_shape(shape[1:])
    assert out.dtype == dx.dtype == np.float64
    np.testing.assert_array_equal(out, ref_out)
    assert rel_error(dx, ref_dx) < 1e-10
    np.testing.assert_array_equal(pool.infer(x), ref_out)    # no switches, no cache
    assert pool.cache is None


@pytest.mark.parametrize("case", MAX_CASES[:100], ids=[_id(c) for c in MAX_CASES[:100]])
def test_maxpool_routes_nan_and_inf_windows_like_torch(case):
    """A window whose max is NaN sends its gradient to its last NaN, one whose max is
    -inf to its first element inside the input (padding is -inf too), as PyTorch does."""
    rng = np.random.default_rng(case["seed"] + 1)
    shape = case["shape"]
    x = rng.standard_normal(shape)
    draw = rng.random(shape)
    x[draw < 0.1] = np.nan
    x[(draw > 0.1) & (draw < 0.6)] = -np.inf
    k, s, p, d, ceil = (case[key] for key in ("kernel", "stride", "padding", "dilation", "ceil"))
    pool = MaxPool2d(k, s, p, d, ceil_mode=ceil, fit="floor")
    out = pool.forward(x)
    dout = rng.standard_normal(out.shape)
    ref_out, ref_dx = torch_grad(lambda t: TF.max_pool2d(t, k, s, p, d, ceil), x, dout)
    np.testing.assert_array_equal(out, ref_out)              # NaN where torch has NaN
    np.testing.assert_allclose(pool.backward(dout), ref_dx, rtol=1e-12, atol=0)


@pytest.mark.parametrize("case", AVG_CASES, ids=[_id(c) for c in AVG_CASES])
def test_avgpool_matches_torch(case):
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal(case["shape"])
    k, s, p, ceil = (case[key] for key in ("kernel", "stride", "padding", "ceil"))
    include = bool(rng.random() < 0.5)
    divisor = int(rng.integers(1, 10)) if rng.random() < 0.25 else None
    pool = AvgPool2d(k, s, p, ceil, include, divisor, fit="floor")
    out = pool.forward(x)
    dout = rng.standard_normal(out.shape)
    dx = pool.backward(dout)
    ref_out, ref_dx = torch_grad(lambda t: TF.avg_pool2d(t, k, s, p, ceil, include, divisor),
                                 x, dout)
    assert out.shape == ref_out.shape and out.shape[1:] == pool.output_shape(x.shape[1:])
    assert rel_error(out, ref_out) < 1e-10
    assert rel_error(dx, ref_dx) < 1e-10


@pytest.mark.parametrize("case", LP_CASES, ids=[_id(c) for c in LP_CASES])
def test_lppool_matches_torch(case):
    rng = np.random.default_rng(case["seed"])
    x = rng.uniform(0.5, 2.0, case["shape"])             # away from zero: smooth
    p = [1, 2, 3, 1.5, 4][int(rng.integers(0, 5))]
    k, s, ceil = case["kernel"], case["stride"], case["ceil"]
    pool = LPPool2d(p, k, s, ceil, fit="floor")
    out = pool.forward(x)
    dout = rng.standard_normal(out.shape)
    dx = pool.backward(dout)
    ref_out, ref_dx = torch_grad(lambda t: TF.lp_pool2d(t, p, k, s, ceil), x, dout)
    assert out.shape == ref_out.shape and out.shape[1:] == pool.output_shape(x.shape[1:])
    assert rel_error(out, ref_out) < 1e-10
    assert rel_error(dx, ref_dx) < 1e-10


@pytest.mark.filterwarnings("ignore:invalid value encountered in power")  # the NaNs
@pytest.mark.parametrize("case", LP_CASES[:60], ids=[_id(c) for c in LP_CASES[:60]])
def test_lppool_of_signed_inputs_matches_torch(case):
    """What a pool after a CONV sees: negative values too. x**p of a negative value at
    an odd p, a negative window sum at p = 1 or 3, and the p = 2 backward's x (not |x|)."""
    rng = np.random.default_rng(case["seed"] + 5000)
    x = rng.standard_normal(case["shape"])
    p = [1, 2, 3, 4][int(rng.integers(0, 4))]
    k, s, ceil = case["kernel"], case["stride"], case["ceil"]
    pool = LPPool2d(p, k, s, ceil, fit="floor")
    out = pool.forward(x)
    dout = rng.standard_normal(out.shape)
    dx = pool.backward(dout)
    ref_out, ref_dx = torch_grad(lambda t: TF.lp_pool2d(t, p, k, s, ceil), x, dout)
    assert out.shape == ref_out.shape
    # torch's root of a negative sum (odd p) is NaN: the same windows, the same NaNs
    for ours, theirs, tol in ((out, ref_out, 1e-10), (dx, ref_dx, 1e-9)):
        np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs))
        finite = ~np.isnan(theirs)
        assert rel_error(ours[finite], theirs[finite]) < tol


@pytest.mark.parametrize("p", [1, 2, 4])
def test_lppool_of_signed_inputs_gradient_check(p):
    x = np.random.default_rng(70 + p).standard_normal((2, 2, 4, 6))
    assert check_layer_grads(LPPool2d(p, 2), x)["x"] < 1e-7


def adaptive_cases(count, seed):
    rng = np.random.default_rng(seed)
    return [{"shape": (int(rng.integers(1, 3)), int(rng.integers(1, 4)),
                       *map(int, rng.integers(1, 13, 2))),
             "out": tuple(map(int, rng.integers(1, 9, 2))) if rng.random() < 0.8 else (1, 1),
             "seed": int(rng.integers(2**31))}
            for _ in range(count)]


ADAPTIVE_CASES = adaptive_cases(300, seed=13)


@pytest.mark.parametrize("case", ADAPTIVE_CASES, ids=[
    f"{c['shape'][2]}x{c['shape'][3]}-to-{c['out'][0]}x{c['out'][1]}" for c in ADAPTIVE_CASES])
def test_adaptive_avgpool_matches_torch(case):
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal(case["shape"])
    pool = AdaptiveAvgPool2d(case["out"])
    out = pool.forward(x)
    dout = rng.standard_normal(out.shape)
    dx = pool.backward(dout)
    ref_out, ref_dx = torch_grad(lambda t: TF.adaptive_avg_pool2d(t, case["out"]), x, dout)
    assert out.shape == ref_out.shape and out.shape[1:] == pool.output_shape(x.shape[1:])
    assert rel_error(out, ref_out) < 1e-10
    assert rel_error(dx, ref_dx) < 1e-10


@pytest.mark.parametrize("case", ADAPTIVE_CASES, ids=[
    f"{c['shape'][2]}x{c['shape'][3]}-to-{c['out'][0]}x{c['out'][1]}" for c in ADAPTIVE_CASES])
def test_adaptive_maxpool_matches_torch(case):
    """Values, and the gradient routed to each window's max; every third case on integer
    values, whose ties go to the first max in row-major order, as PyTorch's."""
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal(case["shape"])
    if case["seed"] % 3 == 0:
        x = np.round(x)
    pool = AdaptiveMaxPool2d(case["out"])
    out = pool.forward(x)
    dout = rng.standard_normal(out.shape)
    dx = pool.backward(dout)
    ref_out, ref_dx = torch_grad(lambda t: TF.adaptive_max_pool2d(t, case["out"]), x, dout)
    assert out.shape[1:] == pool.output_shape(x.shape[1:])
    np.testing.assert_array_equal(out, ref_out)
    assert rel_error(dx, ref_dx) < 1e-12
    x32 = x.astype(np.float32)
    assert pool.forward(x32).dtype == np.float32 and pool.backward(
        dout.astype(np.float32)).dtype == np.float32


@pytest.mark.parametrize("case", ADAPTIVE_CASES[:100], ids=[
    f"{c['shape'][2]}x{c['shape'][3]}-to-{c['out'][0]}x{c['out'][1]}"
    for c in ADAPTIVE_CASES[:100]])
def test_adaptive_pools_match_torch_where_values_are_not_finite(case):
    """An inf or NaN reaches the windows that hold it, as in PyTorch: the average's
    averaging matrices had carried it into every output of its plane (0 * inf: NaN), in
    the backward pass too; and the max routes a window's gradient to its last NaN, where
    argmax had chosen the first."""
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal(case["shape"])
    x[rng.random(x.shape) < 0.15] = rng.choice([np.inf, -np.inf, np.nan], size=1)[0]
    x[rng.random(x.shape) < 0.1] = np.nan
    for pool, reference in ((AdaptiveAvgPool2d(case["out"]), TF.adaptive_avg_pool2d),
                            (AdaptiveMaxPool2d(case["out"]), TF.adaptive_max_pool2d)):
        out = pool.forward(x)
        dout = rng.standard_normal(out.shape)
        if isinstance(pool, AdaptiveAvgPool2d):
            dout[rng.random(dout.shape) < 0.2] = np.inf
        dx = pool.backward(dout)
        ref_out, ref_dx = torch_grad(functools.partial(reference, output_size=case["out"]),
                                     x, dout)
        np.testing.assert_allclose(out, ref_out, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(dx, ref_dx, rtol=1e-12, atol=1e-12)
        x32 = x.astype(np.float32)          # float32 stays float32 (it had become float64)
        assert pool.forward(x32).dtype == np.float32
        assert pool.backward(dout.astype(np.float32)).dtype == np.float32


def test_adaptive_maxpool_config_and_errors():
    pool = AdaptiveMaxPool2d((2, 3))
    assert repr(pool) == "AdaptiveMaxPool2d(output=2x3)" and pool.num_params() == 0
    assert pool.get_config() == {"type": "AdaptiveMaxPool2d", "output_size": [2, 3]}
    assert pool.output_shape((64, 9, 10)) == (64, 2, 3) and pool.macs((64, 9, 10)) == 0
    with pytest.raises(ValueError, match="return_indices is not offered"):
        AdaptiveMaxPool2d(1, return_indices=True)
    with pytest.raises(ValueError, match=r"^AdaptiveMaxPool2d\(output=2x3\): expected dout "
                                         r"with the shape of the last output \(1, 1, 2, 3\)"):
        pool.forward(np.ones((1, 1, 4, 4)))
        pool.backward(np.ones((1, 1, 3, 2)))


def test_adaptive_windows_follow_the_floor_ceil_rule():
    start, end = P.adaptive_windows(10, 4)
    np.testing.assert_array_equal(start, [0, 2, 5, 7])    # floor(i*10/4)
    np.testing.assert_array_equal(end, [3, 5, 8, 10])     # ceil((i+1)*10/4)
    x = np.random.default_rng(4).standard_normal((2, 3, 10, 7))
    out = AdaptiveAvgPool2d((4, 1)).forward(x)
    for i in range(4):
        ref = x[:, :, start[i] : end[i], :].mean(axis=(2, 3))
        assert rel_error(out[:, :, i, 0], ref) < 1e-14


def test_global_average_pooling_is_the_mean():
    x = np.random.default_rng(5).standard_normal((2, 8, 7, 7))
    gap = AdaptiveAvgPool2d(1)
    out = gap.forward(x)
    assert out.shape == (2, 8, 1, 1)
    assert rel_error(out[:, :, 0, 0], x.mean(axis=(2, 3))) < 1e-14
    np.testing.assert_allclose(gap.backward(np.ones(out.shape)), np.full(x.shape, 1 / 49))
    # equal to AvgPool2d over the whole volume
    assert rel_error(out, AvgPool2d(7).forward(x)) < 1e-14


# -- gradient checks (float64 central differences) ------------------------------------------

@pytest.mark.parametrize("layer,shape", [
    (MaxPool2d(2), (2, 2, 4, 6)),
    (MaxPool2d(3, 2), (1, 2, 7, 5)),
    (MaxPool2d(3, 2, padding=1, ceil_mode=True), (2, 1, 6, 6)),
    (MaxPool2d((2, 3), (1, 2), (1, 1), dilation=2, fit="floor"), (1, 2, 6, 7)),
])
def test_maxpool_gradcheck(layer, shape):
    x = distinct(np.random.default_rng(6), shape)
    assert check_layer_grads(layer, x)["x"] < 1e-7


@pytest.mark.parametrize("layer,shape", [
    (AdaptiveMaxPool2d(1), (2, 2, 5, 4)),
    (AdaptiveMaxPool2d((3, 2)), (2, 2, 7, 5)),             # overlapping windows
    (AdaptiveMaxPool2d((4, 6)), (1, 2, 3, 4)),             # output larger than the input
])
def test_adaptive_maxpool_gradcheck(layer, shape):
    x = distinct(np.random.default_rng(8), shape)
    assert check_layer_grads(layer, x)["x"] < 1e-7


@pytest.mark.parametrize("layer,shape", [
    (AvgPool2d(2), (2, 2, 4, 6)),
    (AvgPool2d(3, 2, padding=1), (1, 2, 7, 5)),
    (AvgPool2d((3, 2), (2, 1), (1, 1), count_include_pad=False, fit="floor"), (2, 1, 6, 5)),
    (AvgPool2d(3, 2, ceil_mode=True), (1, 2, 6, 6)),
    (LPPool2d(2, 2), (2, 2, 4, 6)),
    (LPPool2d(3, (3, 2), (2, 1), fit="floor"), (1, 2, 6, 5)),
    (LPPool2d(1.5, 2, ceil_mode=True), (1, 1, 5, 5)),
    (AdaptiveAvgPool2d(1), (2, 2, 5, 4)),
    (AdaptiveAvgPool2d((3, 2)), (2, 2, 7, 5)),
    (AdaptiveAvgPool2d((4, 6)), (1, 2, 3, 4)),            # output larger than the input
])
def test_smooth_pool_gradcheck(layer, shape):
    x = np.random.default_rng(7).uniform(0.5, 2.0, shape)
    assert check_layer_grads(layer, x)["x"] < 1e-7


def test_lppool_zero_window_has_zero_gradient():
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 0, 0] = 2.0
    pool = LPPool2d(2, 2)
    out = pool.forward(x)
    np.testing.assert_array_equal(out[0, 0], [[2.0, 0.0], [0.0, 0.0]])
    dx = pool.backward(np.ones(out.shape))
    assert np.all(np.isfinite(dx)) and dx[0, 0, 0, 0] == 1.0 and np.count_nonzero(dx) == 1
    _, ref_dx = torch_grad(lambda t: TF.lp_pool2d(t, 2, 2), x, np.ones(out.shape))
    np.testing.assert_array_equal(dx, ref_dx)


# -- float32 against float64 ------------------------------------------------------------------

@pytest.mark.parametrize("make,hw", [
    (lambda: MaxPool2d(2), (8, 6)), (lambda: MaxPool2d(3, 2, 1), (9, 7)),
    (lambda: AvgPool2d(2), (8, 6)),
    (lambda: AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False), (8, 8)),
    (lambda: LPPool2d(2, 3, 2), (9, 7)), (lambda: AdaptiveAvgPool2d(1), (9, 7)),
    (lambda: AdaptiveAvgPool2d((3, 5)), (9, 7)),
])
def test_float32_matches_float64(make, hw):
    rng = np.random.default_rng(8)
    x64 = distinct(rng, (2, 3, *hw)) / 100 + 0.5       # no ties, positive for LPPool2d
    x32 = x64.astype(np.float32)
    layer32, layer64 = make(), make()
    out32, out64 = layer32.forward(x32), layer64.forward(x64)
    assert out32.dtype == np.float32 and out64.dtype == np.float64
    assert rel_error(out32, out64) < 1e-6
    dout = rng.standard_normal(out64.shape)
    dx32 = layer32.backward(dout.astype(np.float32))
    assert dx32.dtype == np.float32
    assert rel_error(dx32, layer64.backward(dout)) < 1e-6


# -- sizing and input errors ---------------------------------------------------------------------

def test_non_integer_output_size_is_an_error_unless_floor_or_ceil():
    x = np.zeros((1, 1, 10, 10))
    with pytest.raises(ValueError, match=r"MaxPool2d\(F=3, S=2\).*4\.5.*fit='floor'.*"
                                         r"or ceil_mode=True to keep them in a last, partial"):
        MaxPool2d(3, 2).forward(x)
    with pytest.raises(ValueError, match="4.5.*ceil_mode=True"):
        MaxPool2d(3, 2).output_shape((1, 10, 10))
    from convnet.models import from_notation
    with pytest.raises(ValueError, match="add the word 'floor' or 'ceil' to the layer"):
        from_notation("INPUT 10x10x1 -> POOL F3 S2")
    with pytest.raises(ValueError, match="not an integer"):
        AvgPool2d(2).forward(np.zeros((1, 1, 5, 4)))
    with pytest.raises(ValueError, match="along W"):
        LPPool2d(2, (2, 3)).output_shape((1, 4, 4))
    assert MaxPool2d(3, 2, fit="floor").forward(x).shape == (1, 1, 4, 4)
    assert MaxPool2d(3, 2, ceil_mode=True).forward(x).shape == (1, 1, 5, 5)
    assert TF.max_pool2d(torch.zeros(1, 1, 10, 10), 3, 2, ceil_mode=True).shape[2:] == (5, 5)


def test_window_larger_than_input_is_an_error():
    with pytest.raises(ValueError, match="larger than the padded input"):
        MaxPool2d(5).forward(np.zeros((1, 1, 4, 8)))
    with pytest.raises(ValueError, match="larger than the padded input"):
        AvgPool2d(3, padding=1, fit="floor").output_shape((1, 8, 0))


@pytest.mark.parametrize("make", [lambda: MaxPool2d(2), lambda: AvgPool2d(2),
                                  lambda: LPPool2d(2, 2), lambda: AdaptiveAvgPool2d(1)])
def test_bad_inputs_name_the_layer(make):
    layer = make()
    name = type(layer).__name__
    with pytest.raises(ValueError, match=rf"{name}.*4-D input.*\(2, 4, 4\)"):
        layer.forward(np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match=rf"{name}.*floating-point.*int64"):
        layer.forward(np.zeros((1, 2, 4, 4), dtype=np.int64))
    with pytest.raises(ValueError, match=rf"{name}.*NumPy array"):
        layer.forward([[[[1.0]]]])
    with pytest.raises(ValueError, match=rf"{name}.*volume \(C, H, W\)"):
        layer.output_shape((4, 4))
    with pytest.raises(RuntimeError, match="backward called before forward"):
        make().backward(np.zeros((1, 1, 1, 1)))


def test_nhwc_input_gets_a_hint():
    with pytest.raises(ValueError, match=r"NHWC.*transpose\(0, 3, 1, 2\)"):
        MaxPool2d(2).forward(np.zeros((1, 32, 32, 3), dtype=np.float32))
    # a 1x1 map of 8 channels (a net's volume run out of room) is no image: no hint
    with pytest.raises(ValueError) as err:
        MaxPool2d(2).forward(np.zeros((2, 8, 1, 1), dtype=np.float32))
    assert "NHWC" not in str(err.value)


@pytest.mark.parametrize("make,match", [
    (lambda: MaxPool2d(3, padding=2), r"MaxPool2d: padding must be at most half"),
    (lambda: AvgPool2d((2, 4), padding=(1, 3)), r"AvgPool2d: padding must be at most half"),
    (lambda: MaxPool2d(0), r"MaxPool2d: kernel_size must be a positive int.*got 0"),
    (lambda: MaxPool2d(2, stride=(1, 2, 3)), r"stride must be .*got \(1, 2, 3\)"),
    (lambda: MaxPool2d(2, dilation=0), r"dilation must be a positive int"),
    (lambda: MaxPool2d(2, padding=-1), r"padding must be a non-negative int"),
    (lambda: MaxPool2d(2, fit="round"), r"fit must be one of \('exact', 'floor'\)"),
    (lambda: MaxPool2d(2, ceil_mode="yes"), r"ceil_mode must be True or False"),
    (lambda: AvgPool2d(2, count_include_pad=None), r"count_include_pad must be True or False"),
    (lambda: AvgPool2d(2, divisor_override=0), r"divisor_override must be a positive int, got 0"),
    (lambda: AvgPool2d(2, divisor_override=2.0), r"divisor_override must be a positive int"),
    (lambda: LPPool2d(0, 2), r"LPPool2d: norm_type must be a positive finite number.*got 0"),
    (lambda: LPPool2d(float("inf"), 2), r"norm_type must be a positive finite"),
    (lambda: LPPool2d("2", 2), r"norm_type must be a positive finite"),
    (lambda: AdaptiveAvgPool2d(0), r"AdaptiveAvgPool2d: output_size must be a positive int"),
    (lambda: AdaptiveAvgPool2d((7, 0)), r"output_size must be"),
])
def test_bad_hyperparameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# -- analysis, config, repr --------------------------------------------------------------

@pytest.mark.parametrize("layer,text", [
    (MaxPool2d(3, 2), "MaxPool2d(F=3, S=2)"),
    (MaxPool2d(2), "MaxPool2d(F=2, S=2)"),
    (MaxPool2d(3, 1, 1, ceil_mode=True), "MaxPool2d(F=3, S=1, P=1, ceil_mode=True)"),
    (MaxPool2d((3, 2), dilation=2), "MaxPool2d(F=3x2, S=3x2, dilation=2)"),
    (AvgPool2d(2), "AvgPool2d(F=2, S=2)"),
    (AvgPool2d(3, 1, 1, count_include_pad=False),
     "AvgPool2d(F=3, S=1, P=1, count_include_pad=False)"),
    (AvgPool2d(2, divisor_override=3), "AvgPool2d(F=2, S=2, divisor_override=3)"),
    (LPPool2d(2, 2), "LPPool2d(p=2, F=2, S=2)"),
    (LPPool2d(1.5, 3, 2), "LPPool2d(p=1.5, F=3, S=2)"),
    (AdaptiveAvgPool2d(1), "AdaptiveAvgPool2d(output=1x1)"),
    (AdaptiveAvgPool2d((6, 7)), "AdaptiveAvgPool2d(output=6x7)"),
])
def test_repr_in_the_notes_terms(layer, text):
    assert repr(layer) == text


@pytest.mark.parametrize("layer", [
    MaxPool2d((3, 2), (2, 1), (1, 1), 2, ceil_mode=True, fit="floor"),
    AvgPool2d(3, 2, 1, True, False),
    LPPool2d(3, 2, 1, fit="floor"), AdaptiveAvgPool2d((2, 3)),
])
def test_config_round_trip_and_analysis(layer):
    config = json.loads(json.dumps(layer.get_config()))
    assert config["type"] == type(layer).__name__
    kind = {"MaxPool2d": MaxPool2d, "AvgPool2d": AvgPool2d, "LPPool2d": LPPool2d,
            "AdaptiveAvgPool2d": AdaptiveAvgPool2d}[config.pop("type")]
    clone = kind(**config)
    assert repr(clone) == repr(layer) and clone.get_config() == layer.get_config()
    x = np.random.default_rng(9).uniform(0.5, 2.0, (2, 3, 9, 8))
    np.testing.assert_array_equal(clone.forward(x), layer.forward(x))
    assert layer.output_shape((3, 9, 8)) == layer.forward(x).shape[1:]
    assert layer.num_params() == 0 and layer.macs((3, 9, 8)) == 0
    assert layer.params == {} and layer.grads == {}


@pytest.mark.parametrize("size, kernel, stride, padding", [
    (2, 3, 2, 0), (1, 2, 2, 0), (4, 5, 3, 0), (3, 6, 4, 1)])
def test_ceil_mode_window_wider_than_the_padded_input(size, kernel, stride, padding):
    """In ceil mode PyTorch keeps one window hanging over an input narrower than it (the
    zoo's GoogLeNet on small images): (size + 2P - extent) down to -(S - 1)."""
    rng = np.random.default_rng(40)
    x = rng.standard_normal((2, 3, size, size))
    dout = rng.standard_normal((2, 3, 1, 1))
    xt = torch.tensor(x, requires_grad=True)
    for layer, fn in ((MaxPool2d(kernel, stride, padding, ceil_mode=True),
                       lambda t: TF.max_pool2d(t, kernel, stride, padding, ceil_mode=True)),
                      (AvgPool2d(kernel, stride, padding, ceil_mode=True),
                       lambda t: TF.avg_pool2d(t, kernel, stride, padding, ceil_mode=True))):
        want = fn(xt)
        (dx_want,) = torch.autograd.grad(want, xt, torch.tensor(dout))
        got = layer.forward(x)
        assert got.shape == tuple(want.shape) == (2, 3, 1, 1)
        assert rel_error(got, want.detach().numpy()) < 1e-12
        assert rel_error(layer.backward(dout), dx_want.numpy()) < 1e-12
    with pytest.raises(ValueError, match="larger than the padded input"):
        MaxPool2d(kernel + stride, stride, padding, ceil_mode=True).forward(x)


def test_every_fix_a_pool_size_error_suggests_builds_a_pool_that_fits():
    """The hint had offered paddings over F/2, which the pool then refused (MaxPool2d(3, 3)
    on 32x32: 'use P=2')."""
    import re
    checked = 0
    for pool in (MaxPool2d, AvgPool2d, lambda f, **kw: LPPool2d(2, f, **kw)):
        for size in range(3, 30):
            for f in range(1, 6):
                for s in range(2, 6):
                    try:
                        pool(f, stride=s).output_shape((1, size, size))
                        continue
                    except ValueError as err:
                        text = str(err)
                    if "is not an integer" not in text or "Fix: use" not in text:
                        continue
                    fix = text.split("Fix: use")[1].split(", or pass")[0]
                    for key, value in re.findall(r"\b([PS])=(\d+)\b", fix):
                        kwargs = {"padding": int(value)} if key == "P" else \
                            {"stride": int(value)}
                        pool(f, **{"stride": s, **kwargs}).output_shape((1, size, size))
                        checked += 1
    assert checked > 300


def test_a_backward_pass_names_a_dout_of_another_shape():
    """Every layer's backward checks dout against its last output's shape and names
    itself: the pools, batch norm, LRN and dropout had broadcast a dout of batch 1 over a
    batch of 2 (AdaptiveAvgPool2d then returned dx of the wrong shape) or failed inside
    NumPy."""
    from convnet.functional.conv import Algorithm
    from convnet.layers import (
        BatchNorm2d,
        Conv2d,
        Dropout,
        LocallyConnected2d,
        LocalResponseNorm,
    )
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 6))
    convs = [Conv2d(3, 4, 3, padding=1, algorithm=a, dtype=np.float64)
             for a in Algorithm if a != "one_image"]  # (the convolutions had taken a dout
    for layer in (MaxPool2d(2, fit="floor"), AvgPool2d(2, fit="floor"),  # of their output's
                  LPPool2d(2, 2, fit="floor"), AdaptiveAvgPool2d(2), Dropout(0.5),  # size
                  Dropout(0.5).eval(), LocalResponseNorm(2), BatchNorm2d(3),  # in any shape)
                  BatchNorm2d(3).eval(), *convs,
                  LocallyConnected2d(3, 4, (5, 6), 3, padding=1, dtype=np.float64)):
        out = layer.forward(x)
        for shape in ((1, *out.shape[1:]), out.shape[:-1], out.shape[:2] + out.shape[2:][::-1],
                      out.shape[:3] + (out.shape[3] - 1,)):
            if shape == out.shape:
                continue
            bad = np.ones(shape)
            with pytest.raises(ValueError, match=rf"^{re.escape(layer.where)}: expected dout "
                                                 rf"with the shape of the last output"):
                layer.backward(bad)
        assert layer.backward(np.ones_like(out)).shape == x.shape
