"""Conv2d and LocallyConnected2d: the notes' examples, naive oracles, gradients, PyTorch."""

import numpy as np
import pytest
import torch

from convnet.functional import threads
from convnet.functional.activation import ReluCache, relu_backward
from convnet.functional.conv import (
    Algorithm,
    algorithm_for,
    blocks,
    col2im,
    conv2d_backward,
    conv2d_forward,
    conv2d_infer,
    conv_output_size,
    fft,
    gemm,
    im2col,
    machinery,
    output_size,
    pad,
    problem,
    reference,
    release_scratch,
    scratch,
    select,
    shifted,
    use_algorithm,
    winograd,
)
from convnet.functional.conv.select import blocks_suit, shifted_suits
from convnet.layers.conv import Conv2d, LocallyConnected2d
from tests.utils import check_layer_grads, rel_error


# -- oracles written straight from the notes ---------------------------------------------
def naive_conv(x, w, b, stride, padding, dilation=(1, 1), groups=1):
    """V[n, d, y, x] = sum(X[n, window] * W_d) + b_d, one output neuron at a time."""
    n, c, h, wd = x.shape
    k, cg, fh, fw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    oh = (h + 2 * ph - dh * (fh - 1) - 1) // sh + 1
    ow = (wd + 2 * pw - dw * (fw - 1) - 1) // sw + 1
    out = np.zeros((n, k, oh, ow))
    kg = k // groups
    for i in range(n):
        for d in range(k):
            g = d // kg
            for y in range(oh):
                for xx in range(ow):
                    field = xp[i, g * cg:(g + 1) * cg,
                               y * sh: y * sh + dh * (fh - 1) + 1: dh,
                               xx * sw: xx * sw + dw * (fw - 1) + 1: dw]
                    out[i, d, y, xx] = np.sum(field * w[d]) + (b[d] if b is not None else 0)
    return out


def naive_local(x, w, b, stride, padding):
    """Locally connected: the same loop, but W and b indexed by the output position too."""
    n = x.shape[0]
    oh, ow, k, c, fh, fw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    out = np.zeros((n, k, oh, ow))
    for i in range(n):
        for d in range(k):
            for y in range(oh):
                for xx in range(ow):
                    field = xp[i, :, y * sh: y * sh + fh, xx * sw: xx * sw + fw]
                    out[i, d, y, xx] = np.sum(field * w[y, xx, d]) + b[d, y, xx]
    return out


def random_case(rng):
    """Random conv hyperparameters over the issue's ranges; shapes kept tiny."""
    fh, fw = rng.integers(1, 8, size=2)
    sh, sw = rng.integers(1, 5, size=2)
    ph, pw = rng.integers(0, 4, size=2)
    dh, dw = rng.integers(1, 4, size=2)
    groups = int(rng.choice([1, 1, 2, 3]))
    cg, kg = rng.integers(1, 4, size=2)
    n = int(rng.integers(1, 4))
    h = int(dh * (fh - 1) + 1 - 2 * ph + rng.integers(max(0, 2 * ph - dh * (fh - 1)), 9))
    w = int(dw * (fw - 1) + 1 - 2 * pw + rng.integers(max(0, 2 * pw - dw * (fw - 1)), 9))
    h, w = max(h, 1), max(w, 1)
    return dict(n=n, c=int(cg * groups), k=int(kg * groups), h=h, w=w, kernel=(int(fh), int(fw)),
                stride=(int(sh), int(sw)), padding=(int(ph), int(pw)),
                dilation=(int(dh), int(dw)), groups=groups)


# -- the notes' worked examples ----------------------------------------------------------
def test_notes_example_11x11x4_f5_s2_gives_4x4():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 4, 11, 11))
    w0 = rng.standard_normal((1, 4, 5, 5))
    b0 = np.array([0.5])
    out, _ = conv2d_forward(x, w0, b0, stride=(2, 2))
    assert out.shape == (1, 1, 4, 4)
    # The notes: V[0,0,0] = np.sum(X[:5,:5,:] * W0) + b0; V[1,0,0] = np.sum(X[2:7,:5,:] * W0) + b0
    X, W0 = x[0].transpose(2, 1, 0), w0[0].transpose(2, 1, 0)  # to the notes' X[x, y, d]
    assert out[0, 0, 0, 0] == pytest.approx(np.sum(X[:5, :5, :] * W0) + 0.5)
    assert out[0, 0, 0, 1] == pytest.approx(np.sum(X[2:7, :5, :] * W0) + 0.5)
    assert out[0, 0, 0, 3] == pytest.approx(np.sum(X[6:11, :5, :] * W0) + 0.5)
    assert out[0, 0, 1, 0] == pytest.approx(np.sum(X[:5, 2:7, :] * W0) + 0.5)


@pytest.mark.parametrize("stride, size", [(1, 7), (2, 4)])
def test_notes_7x7_input_f3_p1(stride, size):
    assert conv_output_size(7, 3, stride, 1) == size


def test_notes_7x7_input_f3_p1_s3_is_an_integer_but_w10_f3_s2_is_not():
    assert conv_output_size(7, 3, 3, 1) == 3
    with pytest.raises(ValueError, match=r"4\.5.*fit='floor'"):
        conv_output_size(10, 3, 2, 0)
    assert conv_output_size(10, 3, 2, 0, fit="floor") == 4


def test_notes_32x32x3_ten_5x5_filters_s1_p2():
    conv = Conv2d(3, 10, 5, stride=1, padding=2)
    assert conv.output_shape((3, 32, 32)) == (10, 32, 32)
    assert conv.num_params() == 760


def test_notes_alexnet_conv1():
    conv = Conv2d(3, 96, 11, stride=4, padding=0)
    assert conv.output_shape((3, 227, 227)) == (96, 55, 55)
    assert conv.num_params() == 34_944
    assert repr(conv) == "Conv2d(K=96, F=11, S=4, P=0)"
    assert conv.macs((3, 227, 227)) == 55 * 55 * 96 * 363
    x = np.zeros((1, 3, 227, 227), dtype=np.float32)
    assert im2col(x, (11, 11), (4, 4)).shape == (363, 3025)


def test_alexnet_conv1_unshared_has_105_705_600_parameters():
    layer = LocallyConnected2d(3, 96, 227, 11, stride=4)
    assert layer.num_params() == 290_400 * 364 == 105_705_600
    assert layer.output_shape((3, 227, 227)) == (96, 55, 55)


# -- im2col / col2im ---------------------------------------------------------------------
def test_col2im_is_the_adjoint_of_im2col():
    """<im2col(x), c> == <x, col2im(c)> for every x, c: col2im is im2col's gradient."""
    rng = np.random.default_rng(1)
    for _ in range(20):
        case = random_case(rng)
        x = rng.standard_normal((case["n"], case["c"], case["h"], case["w"]))
        out = [conv_output_size((case["h"], case["w"])[a], case["kernel"][a], case["stride"][a],
                                case["padding"][a], case["dilation"][a], fit="floor")
               for a in (0, 1)]
        args = (case["kernel"], case["stride"], case["padding"], case["dilation"])
        cols = im2col(x, *args, out_size=tuple(out))
        c = rng.standard_normal(cols.shape)
        back = col2im(c, x.shape, *args, out_size=tuple(out))
        assert np.sum(cols * c) == pytest.approx(np.sum(x * back), rel=1e-12)


# -- against the naive oracle and PyTorch ------------------------------------------------
@pytest.mark.parametrize("seed", range(40))
def test_conv_matches_naive_loops(seed):
    rng = np.random.default_rng(seed)
    case = random_case(rng)
    x = rng.standard_normal((case["n"], case["c"], case["h"], case["w"]))
    w = rng.standard_normal((case["k"], case["c"] // case["groups"], *case["kernel"]))
    b = rng.standard_normal(case["k"])
    args = (case["stride"], case["padding"], case["dilation"], case["groups"])
    out, _ = conv2d_forward(x, w, b, *args, fit="floor")
    assert rel_error(out, naive_conv(x, w, b, *args)) < 1e-12


@pytest.mark.parametrize("block", range(10))
def test_conv_matches_pytorch_forward_and_backward(block):
    """300 random cases (30 per block), float64, relative difference below 1e-10."""
    rng = np.random.default_rng(100 + block)
    for _ in range(30):
        case = random_case(rng)
        x = rng.standard_normal((case["n"], case["c"], case["h"], case["w"]))
        w = rng.standard_normal((case["k"], case["c"] // case["groups"], *case["kernel"]))
        b = rng.standard_normal(case["k"])
        args = (case["stride"], case["padding"], case["dilation"], case["groups"])
        out, cache = conv2d_forward(x, w, b, *args, fit="floor")
        xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
        ot = torch.nn.functional.conv2d(xt, wt, bt, *args)
        assert out.shape == tuple(ot.shape), case
        assert rel_error(out, ot.detach().numpy()) < 1e-10, case
        dout = rng.standard_normal(out.shape)
        ot.backward(torch.tensor(dout))
        dx, dw, db = conv2d_backward(dout, cache)
        assert rel_error(dx, xt.grad.numpy()) < 1e-10, case
        assert rel_error(dw, wt.grad.numpy()) < 1e-10, case
        assert rel_error(db, bt.grad.numpy()) < 1e-10, case


@pytest.mark.parametrize("block", range(4))
def test_conv_infer_in_pieces_matches_pytorch(block):
    """conv2d_infer over random cases, with im2col limits that force every way of cutting
    the work: all images at once, a few images at a time, bands of rows, one row; and with
    relu=True, max(0, conv) applied as each piece is finished."""
    rng = np.random.default_rng(300 + block)
    for _ in range(30):
        case = random_case(rng)
        x = rng.standard_normal((case["n"], case["c"], case["h"], case["w"]))
        w = rng.standard_normal((case["k"], case["c"] // case["groups"], *case["kernel"]))
        b = rng.standard_normal(case["k"]) if rng.random() < 0.7 else None
        args = (case["stride"], case["padding"], case["dilation"], case["groups"])
        expected = torch.nn.functional.conv2d(
            torch.tensor(x), torch.tensor(w), None if b is None else torch.tensor(b),
            *args).numpy()
        image_bytes = x[:1].nbytes * w.shape[2] * w.shape[3] * 8   # above one image's matrix
        for limit in (1 << 30, image_bytes, image_bytes // 30, 1):
            out = conv2d_infer(x, w, b, *args, fit="floor", max_bytes=limit)
            assert out.shape == expected.shape, case
            assert rel_error(out, expected) < 1e-10, (case, limit)
            out = conv2d_infer(x, w, b, *args, fit="floor", max_bytes=limit, relu=True)
            assert rel_error(out, np.maximum(expected, 0)) < 1e-10, (case, limit)
            assert out.min() >= 0


@pytest.mark.parametrize("n", [0, 1, 3])
@pytest.mark.parametrize("c,hw,stride", [(3, 8, 1), (3, 8, 2), (3, 16, 1), (0, 16, 1),
                                         (32, 16, 1), (32, 64, 1)])
def test_empty_filter_banks_and_batches(n, c, hw, stride):
    """No filters (K = 0), no images (N = 0) or no input channels (C = 0), on the auto
    choice (im2col, blocks, shifted, one_image), im2col and Winograd: empty
    (or zero) outputs, and zero gradients of the right shapes (PyTorch's conv2d refuses
    K = 0; Conv2d refuses K = 0 and C = 0, but the functions do not)."""
    x = np.random.default_rng(0).standard_normal((n, c, hw, hw)).astype(np.float32)
    for k in (0, 4):
        if n and k and c:
            continue                 # the non-empty case is everywhere else
        w = np.ones((k, c, 3, 3), np.float32)
        args = ((stride, stride), (1, 1))
        shape = (n, k, (hw - 1) // stride + 1, (hw - 1) // stride + 1)
        winograd = ("winograd2x2", "winograd4x4") if stride == 1 else ()
        for algorithm in ("auto", "im2col", *winograd):
            out, cache = conv2d_forward(x, w, None, *args, fit="floor", algorithm=algorithm)
            assert out.shape == shape
            assert conv2d_infer(x, w, None, *args, fit="floor",
                                algorithm=algorithm).shape == shape
            dx, dw, db = conv2d_backward(out, cache)
            assert dx.shape == x.shape and not dx.any()
            assert dw.shape == w.shape and not dw.any()
            assert db.shape == (k,) and not db.any()


def test_conv_infer_builds_im2col_in_bounded_pieces():
    """The largest temporary of conv2d_infer stays near max_bytes, not the full matrix."""
    import tracemalloc
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 16, 64, 64)).astype(np.float32)
    w = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    full = 16 * 9 * 4 * 64 * 64 * 4                                  # 9.4 MB of im2col
    expected = conv2d_forward(x, w, padding=(1, 1))[0]
    out_bytes = expected.nbytes
    for limit in (1 << 20, 1 << 18):                                  # images, then rows
        release_scratch()              # every thread's kept temporaries count, made afresh
        tracemalloc.start()
        out = conv2d_infer(x, w, padding=(1, 1), max_bytes=limit)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert rel_error(out, expected) < 1e-5
        # Each thread: its padded images, Y and Z blocks (the shifted path's).
        assert peak < out_bytes + threads.THREADS * (3 * limit + x[:1].nbytes * 2), (
            limit, peak)
        assert peak < full


def test_scratch_buffers_are_kept_per_thread_and_role_and_bounded(monkeypatch):
    from concurrent.futures import ThreadPoolExecutor
    release_scratch()
    a = scratch("cols", 100, np.float32)
    assert a.shape == (100,) and a.dtype == np.float32
    assert np.shares_memory(scratch("cols", 50, np.float64), a)        # kept, reused
    assert not np.shares_memory(scratch("product", 10, np.float32), a)  # one per role
    assert not np.shares_memory(scratch("cols", 1000, np.float32), a)   # grown
    with ThreadPoolExecutor(1) as pool:                                 # one per thread
        other = pool.submit(scratch, "cols", 100, np.float32).result()
        assert not np.shares_memory(other, scratch("cols", 100, np.float32))
        assert np.shares_memory(pool.submit(scratch, "cols", 10, np.float32).result(), other)
        release_scratch()                                               # every thread's
        assert not np.shares_memory(pool.submit(scratch, "cols", 10, np.float32).result(),
                                    other)
    monkeypatch.setattr(machinery, "SCRATCH_MAX_BYTES", 64)
    big = scratch("cols", 17, np.float32)                               # 68 bytes: fresh
    assert not np.shares_memory(big, scratch("cols", 17, np.float32))
    release_scratch()


@pytest.mark.parametrize("c", [3, 16])          # the im2col path, the shifted path
def test_conv_infer_output_is_not_scratch(c):
    """Two inferences in a row: the first's output is its own array, not a scratch buffer
    the second overwrites."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, c, 12, 12)).astype(np.float32)
    w = rng.standard_normal((8, c, 3, 3)).astype(np.float32)
    first = conv2d_infer(x, w, padding=(1, 1), relu=True)
    kept = first.copy()
    conv2d_infer(-x, w, padding=(1, 1), relu=True)
    assert np.array_equal(first, kept)


def test_conv_layer_infer_equals_forward_and_keeps_no_cache():
    rng = np.random.default_rng(1)
    layer = Conv2d(3, 5, 3, stride=2, padding=1, fit="floor", dtype=np.float64, rng=rng)
    x = rng.standard_normal((3, 3, 9, 9))
    out = layer.infer(x)
    assert layer.cache is None
    assert rel_error(out, layer.forward(x)) < 1e-12


@pytest.mark.parametrize("affine, bias, relu", [
    (True, True, True), (True, False, True), (False, True, False), (False, False, True)])
@pytest.mark.parametrize("n, c, k, groups, dilation, stride", [
    (3, 4, 6, 1, 1, 2), (1, 16, 24, 1, 1, 2), (2, 4, 6, 2, 2, 2), (1, 16, 24, 4, 2, 2),
    (2, 16, 8, 1, 1, 1)])
def test_conv_layer_infer_folds_batch_norm_and_relu(affine, bias, relu, n, c, k, groups,
                                                    dilation, stride):
    """Conv2d.infer(x, bn, relu) = relu(bn(conv(x))) with BN's running statistics folded
    into the filters (when they are smaller than the output) or into the output, on the
    im2col path and (the last case) the shifted path; the BN layer itself is left
    unchanged."""
    from convnet.layers.norm import BatchNorm2d
    rng = np.random.default_rng(7)
    conv = Conv2d(c, k, 3, stride=stride, padding=1, dilation=dilation, groups=groups,
                  bias=bias, fit="floor", dtype=np.float64, rng=rng)
    bn = BatchNorm2d(k, eps=1e-3, affine=affine, dtype=np.float64).eval()
    bn.buffers["running_mean"][:] = rng.standard_normal(k)
    bn.buffers["running_var"][:] = rng.uniform(0.1, 3, k)
    if affine:
        bn.params["weight"][:] = rng.standard_normal(k)
        bn.params["bias"][:] = rng.standard_normal(k)
    state = {k: v.copy() for k, v in {**bn.params, **bn.buffers, **conv.params}.items()}
    x = rng.standard_normal((n, c, 9, 9))
    expected = bn.forward(conv.forward(x))
    assert isinstance(conv.cache, shifted.Cache) == (stride == 1)
    if relu:
        expected = np.maximum(expected, 0)
    assert rel_error(conv.infer(x, bn=bn, relu=relu), expected) < 1e-12
    assert conv.cache is None
    for key, value in {**bn.params, **bn.buffers, **conv.params}.items():
        assert np.array_equal(value, state[key]), key


def test_conv_layer_infer_keeps_its_folded_filters_while_they_hold(monkeypatch):
    """A batch norm folded into the filters gives the same array from call to call, so
    Winograd finds its transformed filters again (one transform for two calls); an
    in-place change of the conv's weight or of the batch norm's statistics or scale is
    seen on the next call."""
    from convnet.layers.norm import BatchNorm2d
    rng = np.random.default_rng(8)
    conv = Conv2d(64, 64, 3, padding=1, bias=False, rng=rng)        # 147 KB: U kept
    bn = BatchNorm2d(64).eval()
    bn.buffers["running_var"][:] = rng.uniform(0.5, 2, 64)
    bn.params["weight"][:] = rng.uniform(0.5, 2, 64)
    x = rng.standard_normal((1, 64, 28, 28)).astype(np.float32)     # w smaller than out
    assert conv.algorithm_for(x.shape[1:], 1, training=False) == "winograd4x4"
    transforms = []
    real = winograd.filter_transform
    monkeypatch.setattr(winograd, "filter_transform",
                        lambda *a: transforms.append(1) or real(*a))

    def expected():
        return np.maximum(bn.forward(conv.forward(x)), 0)

    first = conv.infer(x, bn=bn, relu=True)
    assert rel_error(conv.infer(x, bn=bn, relu=True), first) == 0
    assert len(transforms) == 1
    assert rel_error(first, expected()) < 1e-4
    weight, mean, gamma = conv.params["weight"], bn.buffers["running_mean"], bn.params["weight"]
    for array, value in ((weight, -weight), (mean, mean + 0.5), (gamma, gamma * 0.5)):
        array[...] = value                                                  # in place
        assert rel_error(conv.infer(x, bn=bn, relu=True), expected()) < 1e-4
    assert len(transforms) == 3   # the conv's weight and the scale changed; the mean did not


@pytest.mark.parametrize("seed", range(20))
def test_conv_layer_exact_fit_raises_exactly_when_pytorch_would_floor(seed):
    rng = np.random.default_rng(200 + seed)
    case = random_case(rng)
    conv = Conv2d(case["c"], case["k"], case["kernel"], case["stride"], case["padding"],
                  case["dilation"], case["groups"])
    fits = all(((case["h"], case["w"])[a] + 2 * case["padding"][a]
                - case["dilation"][a] * (case["kernel"][a] - 1) - 1) % case["stride"][a] == 0
               for a in (0, 1))
    if fits:
        assert conv.output_shape((case["c"], case["h"], case["w"]))[0] == case["k"]
    else:
        with pytest.raises(ValueError, match="not an integer"):
            conv.output_shape((case["c"], case["h"], case["w"]))


def test_conv_float32_forward_matches_float64():
    rng = np.random.default_rng(3)
    conv64 = Conv2d(5, 7, 3, stride=2, padding=1, dtype=np.float64, rng=rng)
    conv32 = Conv2d(5, 7, 3, stride=2, padding=1, rng=rng)
    conv32.params = {k: v.astype(np.float32) for k, v in conv64.params.items()}
    x = rng.standard_normal((4, 5, 15, 15))
    out32 = conv32.forward(x.astype(np.float32))
    assert out32.dtype == np.float32
    assert rel_error(out32, conv64.forward(x)) < 1e-6


# -- every algorithm against PyTorch ------------------------------------------------------
ALGORITHMS = [a.value for a in Algorithm if a is not Algorithm.AUTO]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_a_fused_relu_passes_the_gradient_at_nan_as_relu_backward_does(algorithm):
    """PyTorch's RELU passes the gradient where its output is NaN (its test is out <= 0);
    so does relu_backward, and so must every algorithm's fused RELU. The NaN is put in
    the output the cache holds, since a NaN in x or w spreads differently through each
    algorithm's arithmetic (Winograd's tiles, the zero padding times a NaN filter)."""
    rng = np.random.default_rng(7)
    for _ in range(5):
        case = case_for(algorithm, rng)
        x, w, b = arrays(case, rng)
        out, cache = conv2d_forward(x, w, b, *conv_args(case), fit="floor", relu=True,
                                    algorithm=algorithm)
        nan = rng.random(out.shape) < 0.2
        out[nan] = np.nan                       # the cache's RELU output is this array
        dout = rng.standard_normal(out.shape)
        fused = conv2d_backward(dout, cache)
        _, plain = conv2d_forward(x, w, b, *conv_args(case), fit="floor",
                                  algorithm=algorithm)
        expected = conv2d_backward(relu_backward(dout, ReluCache(out)), plain)
        for mine, want in zip(fused, expected):
            np.testing.assert_allclose(mine, want, rtol=1e-12, atol=1e-12, err_msg=str(case))


def case_for(algorithm, rng):
    """random_case restricted to what ``algorithm`` runs: one group for all but im2col;
    stride 1 for shifted, one_image and fft; a batch of one for one_image; 3x3 filters,
    stride 1 and dilation 1 for Winograd."""
    case = random_case(rng)
    if algorithm == "im2col":
        return case
    case = {**case, "groups": 1, "c": case["c"] // case["groups"],
            "k": case["k"] // case["groups"]}
    if algorithm in ("shifted", "one_image", "fft"):
        fw = case["kernel"][1]
        w = max(case["w"], case["dilation"][1] * (fw - 1) + 1 - 2 * case["padding"][1])
        case = {**case, "stride": (1, 1), "w": w}
    if algorithm == "one_image":
        case["n"] = 1
    if algorithm.startswith("winograd"):
        h, w = (max(size, 3 - 2 * p) for size, p in zip((case["h"], case["w"]),
                                                          case["padding"]))
        case = {**case, "kernel": (3, 3), "stride": (1, 1), "dilation": (1, 1),
                "h": h + int(rng.integers(0, 9)), "w": w + int(rng.integers(0, 9))}
    return case


def arrays(case, rng, dtype=np.float64):
    x = rng.standard_normal((case["n"], case["c"], case["h"], case["w"])).astype(dtype)
    w = rng.standard_normal((case["k"], case["c"] // case["groups"], *case["kernel"]))
    return x, w.astype(dtype), rng.standard_normal(case["k"]).astype(dtype)


def conv_args(case):
    return case["stride"], case["padding"], case["dilation"], case["groups"]


@pytest.mark.parametrize("block", range(3))
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_algorithm_matches_pytorch_forward_and_backward(algorithm, block):
    """90 random cases per algorithm (in its domain), float64, against torch: the output,
    with a fused RELU or not, dx, dw and db, with and without the input's gradient, and
    a second backward from an intact cache."""
    rng = np.random.default_rng(1000 + 10 * ALGORITHMS.index(algorithm) + block)
    for _ in range(30):
        case = case_for(algorithm, rng)
        x, w, b = arrays(case, rng)
        b = b if rng.random() < 0.7 else None
        relu = bool(rng.integers(2))
        out, cache = conv2d_forward(x, w, b, *conv_args(case), fit="floor", relu=relu,
                                    algorithm=algorithm)
        xt, wt = (torch.tensor(a, requires_grad=True) for a in (x, w))
        bt = None if b is None else torch.tensor(b, requires_grad=True)
        ot = torch.nn.functional.conv2d(xt, wt, bt, *conv_args(case))
        ot = torch.relu(ot) if relu else ot
        assert rel_error(out, ot.detach().numpy()) < 1e-10, case
        dout = rng.standard_normal(out.shape)
        ot.backward(torch.tensor(dout))
        input_grad = rng.random() >= 0.3
        if not input_grad:
            none, dw, db = conv2d_backward(dout, cache, input_grad=False)
            assert none is None
        else:
            dx, dw, db = conv2d_backward(dout, cache)
            assert rel_error(dx, xt.grad.numpy()) < 1e-10, case
        assert rel_error(dw, wt.grad.numpy()) < 1e-10, case
        if b is not None:
            assert rel_error(db, bt.grad.numpy()) < 1e-10, case
        if not isinstance(cache, gemm.Cache):    # the cache is intact: the same again
            assert np.array_equal(conv2d_backward(dout, cache, input_grad=input_grad)[1], dw)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_algorithm_at_inference_in_pieces(algorithm):
    """conv2d_infer with a bias, a per-channel scale (a folded batch norm) and a fused
    RELU, each or not, with max_bytes that cut the work into images, bands of rows and
    single rows (each algorithm's blocks too), float64 and float32. one_image, blocks and
    fft, which cannot cut one image, refuse a max_bytes under what they need."""
    rng = np.random.default_rng(2000 + ALGORITHMS.index(algorithm))
    for _ in range(25):
        case = case_for(algorithm, rng)
        dtype = np.float32 if rng.random() < 0.3 else np.float64
        x, w, b = arrays(case, rng, dtype)
        b = b if rng.random() < 0.7 else None
        scale = rng.standard_normal(case["k"]).astype(dtype) if rng.random() < 0.5 else None
        relu = bool(rng.integers(2))
        want = torch.nn.functional.conv2d(torch.tensor(x, dtype=torch.float64),
                                          torch.tensor(w, dtype=torch.float64), None,
                                          *conv_args(case)).numpy()
        want = want * (1 if scale is None else scale[:, None, None])
        want = want + (0 if b is None else b[:, None, None])
        want = np.maximum(want, 0) if relu else want
        image_bytes = x[:1].nbytes * w.shape[2] * w.shape[3] * 8
        out_size = output_size(x.shape, w.shape, *conv_args(case)[:3], "floor")
        for limit in (1 << 30, image_bytes, image_bytes // 30, 1):
            p = problem(x, w, *conv_args(case), out_size, limit)
            if select.inference_bytes(Algorithm(algorithm), p) > limit:
                assert algorithm in ("one_image", "blocks", "fft") and limit < 1 << 30
                with pytest.raises(ValueError, match="over max_bytes"):
                    conv2d_infer(x, w, b, *conv_args(case), fit="floor", max_bytes=limit,
                                 algorithm=algorithm)
                continue
            out = conv2d_infer(x, w, b, *conv_args(case), fit="floor", max_bytes=limit,
                               relu=relu, scale=scale, algorithm=algorithm)
            assert out.dtype == dtype and out.shape == want.shape
            tolerance = 1e-4 if dtype == np.float32 else 1e-10
            assert rel_error(out, want) < tolerance, (case, limit)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_algorithm_gradient_check(algorithm):
    """Each algorithm's gradients (through the Conv2d layer) against central differences,
    float64."""
    rng = np.random.default_rng(3000 + ALGORITHMS.index(algorithm))
    kwargs = dict(kernel_size=3, padding=1)
    if algorithm in ("im2col", "blocks"):
        kwargs = dict(kernel_size=(3, 2), stride=(2, 1), padding=(2, 0), dilation=(1, 2))
    conv = Conv2d(3, 4, dtype=np.float64, rng=rng, algorithm=algorithm, fit="floor", **kwargs)
    x = rng.standard_normal((1 if algorithm == "one_image" else 2, 3, 7, 6))
    errors = check_layer_grads(conv, x)
    assert max(errors.values()) < 1e-7, errors


@pytest.mark.parametrize("algorithm, bound", [("im2col", 1e-6), ("shifted", 1e-6),
                                              ("blocks", 1e-6), ("one_image", 1e-6),
                                              ("winograd2x2", 3e-6), ("winograd4x4", 3e-5),
                                              ("fft", 1e-6)])
def test_float32_error_of_each_algorithm_is_bounded(algorithm, bound):
    """float32 against a float64 reference, as the largest error over the largest value,
    of the output, dx and dw, on layers of the nets' sizes (Winograd's transforms amplify
    rounding: F(4x4)'s most)."""
    rng = np.random.default_rng(4)
    worst = 0.0
    for n, c, k, hw in ((1, 64, 64, 28), (2, 128, 128, 14), (1, 256, 256, 7), (4, 32, 32, 16)):
        x = rng.standard_normal((n, c, hw, hw))
        w = rng.standard_normal((k, c, 3, 3)) / np.sqrt(9 * c)
        want = reference.conv2d_forward(x, w, padding=(1, 1))[0]
        if algorithm == "one_image":
            x = x[:1]
            want = want[:1]
        got = conv2d_infer(x.astype(np.float32), w.astype(np.float32), padding=(1, 1),
                           algorithm=algorithm)
        worst = max(worst, np.abs(got - want).max() / np.abs(want).max())
        # the backward pass's: dx and dw against float64 (the same bound)
        dout = rng.standard_normal(want.shape)
        dx, dw, _ = reference.conv2d_backward(dout, reference.conv2d_forward(
            x, w, padding=(1, 1))[1])
        cache = conv2d_forward(x.astype(np.float32), w.astype(np.float32), padding=(1, 1),
                               algorithm=algorithm)[1]
        dx32, dw32, _ = conv2d_backward(dout.astype(np.float32), cache)
        worst = max(worst, np.abs(dx32 - dx).max() / np.abs(dx).max(),
                    np.abs(dw32 - dw).max() / np.abs(dw).max())
    assert worst < bound, worst


def test_winograd_keeps_transformed_filters_only_while_they_hold():
    """Inference keeps a large filter bank's U = G w G^T between calls; an in-place change
    of w (an optimizer's step) makes it again, and an entry goes with its array."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((1, 64, 12, 12)).astype(np.float32)
    w = rng.standard_normal((128, 64, 3, 3)).astype(np.float32)       # 295 KB: kept
    assert w.nbytes >= winograd.FILTERS_MIN_BYTES
    first = conv2d_infer(x, w, padding=(1, 1), algorithm="winograd4x4")
    assert any(kept.ref() is w for kept in winograd._filters.values())
    w *= -0.5                                                             # in place
    second = conv2d_infer(x, w, padding=(1, 1), algorithm="winograd4x4")
    want = reference.conv2d_forward(x.astype(np.float64), w.astype(np.float64),
                                    padding=(1, 1))[0]
    assert np.abs(second - want).max() < 3e-5 * np.abs(want).max()
    assert np.allclose(second, -0.5 * first, rtol=1e-4, atol=1e-4 * np.abs(first).max())
    before = len(winograd._filters)
    del w
    assert len(winograd._filters) == before - 1
    w = rng.standard_normal((128, 64, 3, 3)).astype(np.float32)
    conv2d_infer(x, w, padding=(1, 1), algorithm="winograd4x4")
    assert winograd._filters
    release_scratch()
    assert not winograd._filters
    conv2d_forward(x, w, padding=(1, 1), algorithm="winograd4x4")   # training: new each step
    assert not winograd._filters


def test_winograd_keeps_filters_within_its_bound_dropping_the_oldest(monkeypatch):
    """The kept transformed filters (U and a copy of w: 5x w's bytes for F(4x4)) stay
    within FILTERS_MAX_BYTES, the oldest dropped first; each result stays right."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((1, 64, 8, 8)).astype(np.float32)
    banks = [rng.standard_normal((64, 64, 3, 3)).astype(np.float32) for _ in range(4)]
    bank = banks[0].nbytes                                                 # 147 KB
    monkeypatch.setattr(winograd, "FILTERS_MAX_BYTES", 5 * bank * 2)      # room for two
    release_scratch()
    for w in banks:
        got = conv2d_infer(x, w, padding=(1, 1), algorithm="winograd4x4")
        want = reference.conv2d_forward(x.astype(np.float64), w.astype(np.float64),
                                        padding=(1, 1))[0]
        assert np.abs(got - want).max() < 3e-5 * np.abs(want).max()
    kept = [entry.ref() for entry in winograd._filters.values()]
    assert len(kept) == 2 and kept[0] is banks[2] and kept[1] is banks[3]
    assert sum(e.u.nbytes + e.copy.nbytes for e in winograd._filters.values()) <= 10 * bank


def test_winograd_keeps_filters_within_its_bound_for_wider_inputs(monkeypatch):
    """With float32 filters and a float64 input, U is made in float64 (8x the filters'
    bytes for F(4x4)): a bank whose U and copy would pass FILTERS_MAX_BYTES is not kept."""
    rng = np.random.default_rng(12)
    x = rng.standard_normal((1, 64, 8, 8))                                # float64
    w = rng.standard_normal((64, 64, 3, 3)).astype(np.float32)            # 147 KB
    monkeypatch.setattr(winograd, "FILTERS_MAX_BYTES", 6 * w.nbytes)      # 9x needed
    release_scratch()
    got = conv2d_infer(x, w, padding=(1, 1), algorithm="winograd4x4")
    want = reference.conv2d_forward(x, w.astype(np.float64), padding=(1, 1))[0]
    assert rel_error(got, want) < 1e-10
    assert not winograd._filters


def test_winograd_backward_sums_one_filter_gradient_a_thread(monkeypatch):
    """The backward pass adds each block's dU into its thread's own sum: with a block an
    image, its memory stays near THREADS sums, not one a block; the gradients are
    PyTorch's."""
    import tracemalloc
    rng = np.random.default_rng(13)
    x, w = rng.standard_normal((16, 64, 8, 8)), rng.standard_normal((64, 64, 3, 3))
    dout = rng.standard_normal((16, 64, 8, 8))
    monkeypatch.setattr(winograd, "BLOCK_BYTES", 36 * 64 * 2 * 2 * 8)     # one image
    _, cache = conv2d_forward(x, w, padding=(1, 1), algorithm="winograd4x4")
    du = 36 * 64 * 64 * 8                                                 # one sum
    release_scratch()
    tracemalloc.start()
    dx, dw, _ = conv2d_backward(dout, cache)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < (threads.THREADS + 5) * du, (peak, du)          # one a block: 16+
    xt, wt = (torch.tensor(a, requires_grad=True) for a in (x, w))
    torch.nn.functional.conv2d(xt, wt, padding=1).backward(torch.tensor(dout))
    assert rel_error(dx, xt.grad.numpy()) < 1e-10 and rel_error(dw, wt.grad.numpy()) < 1e-10


def test_the_reference_is_the_notes_computation():
    """reference.py: im2col + one GEMM against the naive loops, col2im as im2col's adjoint,
    and the notes' flipped-filter convolution as the stride-1 input gradient."""
    rng = np.random.default_rng(5)
    for _ in range(20):
        case = random_case(rng)
        x, w, b = arrays(case, rng)
        out, cache = reference.conv2d_forward(x, w, b, *conv_args(case), fit="floor")
        assert rel_error(out, naive_conv(x, w, b, *conv_args(case))) < 1e-12
        dout = rng.standard_normal(out.shape)
        dx, dw, db = reference.conv2d_backward(dout, cache)
        xt, wt = (torch.tensor(a, requires_grad=True) for a in (x, w))
        torch.nn.functional.conv2d(xt, wt, None, *conv_args(case)).backward(torch.tensor(dout))
        assert rel_error(dx, xt.grad.numpy()) < 1e-10 and rel_error(dw, wt.grad.numpy()) < 1e-10


def test_conv2d_backward_runs_the_notes_backward_on_a_reference_cache():
    rng = np.random.default_rng(8)
    x, w = rng.standard_normal((2, 4, 6, 7)), rng.standard_normal((6, 2, 3, 2))
    out, cache = reference.conv2d_forward(x, w, None, (2, 1), (1, 0), (1, 2), 2, "floor")
    dout = rng.standard_normal(out.shape)
    want = reference.conv2d_backward(dout, cache)
    got = conv2d_backward(dout, cache)
    assert all(np.array_equal(a, b) for a, b in zip(got, want))
    dx, dw, db = conv2d_backward(dout, cache, input_grad=False)
    assert dx is None and np.array_equal(dw, want[1]) and np.array_equal(db, want[2])


def test_the_notes_flipped_filter_convolution_is_the_stride_1_input_gradient():
    """reference.flipped_input_grad (dout convolved with the flipped filters, padded by
    D*(F-1) - P) against PyTorch's input gradient, over random stride-1 cases whose P is
    at most D*(F-1) (the random cases above almost never are)."""
    rng = np.random.default_rng(7)
    for _ in range(30):
        (fh, fw), (dh, dw) = rng.integers(1, 6, size=2), rng.integers(1, 4, size=2)
        padding = tuple(int(rng.integers(0, d * (f - 1) + 1)) for d, f in ((dh, fh), (dw, fw)))
        groups = int(rng.choice([1, 2, 3]))
        c, k = (int(v) * groups for v in rng.integers(1, 4, size=2))
        h, w = (int(d * (f - 1) + 1 + rng.integers(0, 6)) for d, f in ((dh, fh), (dw, fw)))
        x = rng.standard_normal((int(rng.integers(1, 3)), c, h, w))
        weight = rng.standard_normal((k, c // groups, int(fh), int(fw)))
        xt = torch.tensor(x, requires_grad=True)
        out = torch.nn.functional.conv2d(xt, torch.tensor(weight), None, 1, padding,
                                         (int(dh), int(dw)), groups)
        dout = rng.standard_normal(out.shape)
        out.backward(torch.tensor(dout))
        flipped = reference.flipped_input_grad(dout, weight, padding, (int(dh), int(dw)),
                                               groups)
        assert rel_error(flipped, xt.grad.numpy()) < 1e-10


# -- choosing an algorithm ----------------------------------------------------------------
def test_an_algorithm_that_cannot_run_the_convolution_says_why():
    x = np.zeros((2, 4, 8, 8))
    w = np.zeros((4, 2, 5, 5))
    for algorithm, stride, groups, reason in (
            ("shifted", (2, 2), 1, "it needs stride 1"), ("one_image", (1, 1), 1,
                                                          "a batch of one image"),
            ("blocks", (1, 1), 2, "groups=1"), ("winograd4x4", (1, 1), 1, "3x3 filters"),
            ("fft", (1, 2), 1, "it needs stride 1")):
        weights = w[:, :2] if groups == 2 else np.zeros((4, 4, 5, 5))
        with pytest.raises(ValueError, match=f"algorithm '{algorithm}' cannot run.*{reason}"):
            conv2d_forward(x, weights, stride=stride, groups=groups, fit="floor",
                           algorithm=algorithm)
    with pytest.raises(ValueError, match="algorithm must be one of auto, im2col"):
        conv2d_infer(x, w[:, :1].repeat(4, 1), algorithm="fourier")
    # fft's filter spectrum (34 * 18 frequencies of 4 * 128 * 128 floats) is kept for
    # backward: 160 MB
    big_x, big_w = np.zeros((1, 128, 32, 32), np.float32), np.zeros((128, 128, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"'fft' cannot run.*in training its filters' "
                                         r"spectrum would take 160,432,128 bytes, over "
                                         r"fft_max_filter_bytes=67,108,864 \(a 34x34 grid"):
        conv2d_forward(big_x, big_w, padding=(1, 1), algorithm="fft")
    with use_algorithm("fft"):
        assert isinstance(conv2d_forward(big_x[:, :, :8, :8], big_w, padding=(1, 1))[1],
                          fft.Cache)
        assert not isinstance(conv2d_forward(big_x, big_w, padding=(1, 1))[1], fft.Cache)
        # nor does the auto choice take it there, at a batch it would otherwise suit
        assert algorithm_for((128, 256, 14, 14), (256, 256, 3, 3),
                             padding=(1, 1))[0] is not Algorithm.FFT
    # at inference max_bytes bounds it instead
    assert conv2d_infer(big_x[:, :, :4], big_w, padding=(1, 1), max_bytes=1 << 30,
                        algorithm="fft").shape == (1, 128, 4, 32)
    with pytest.raises(ValueError, match="Conv2d: algorithm must be one of"):
        Conv2d(3, 4, 3, algorithm="direct")


def test_a_layer_naming_an_algorithm_that_can_never_run_it_is_refused_when_built():
    """Stride, groups, filter size and dilation are known when a Conv2d is built: an
    algorithm that can never run such a layer is an error then, naming it (it had been
    accepted, and failed at the first forward); what depends on the batch (one_image's
    batch of one, blocks' bytes at inference) is an error at the call, naming the layer."""
    from convnet.layers import ReLU
    from convnet.models import Sequential
    from convnet.models.config import from_config

    for kwargs, algorithm, reason in (
            (dict(stride=2, padding=1), "shifted", "it needs stride 1"),
            (dict(stride=2, padding=1), "one_image", "it needs stride 1"),
            (dict(kernel_size=5), "winograd4x4", "it needs 3x3 filters"),
            (dict(dilation=2), "winograd2x2", "it needs stride 1 and dilation 1"),
            (dict(groups=2), "blocks", "it needs groups=1"),
            (dict(groups=2), "shifted", "it needs groups=1")):
        kwargs = {"kernel_size": 3, **kwargs}
        with pytest.raises(ValueError, match=rf"^Conv2d: algorithm '{algorithm}' cannot run "
                                             rf"this layer \(F=.*\): {reason}"):
            Conv2d(4, 4, algorithm=algorithm, **kwargs)
        config = {"type": "Conv2d", "in_channels": 4, "out_channels": 4,
                  "algorithm": algorithm, **kwargs}
        with pytest.raises(ValueError, match=f"cannot run this layer.*{reason}"):
            from_config(config)
        assert Conv2d(4, 4, algorithm="im2col", **kwargs).algorithm == "im2col"
    net = Sequential(Conv2d(3, 4, 3, padding=1), ReLU(),
                     Conv2d(4, 4, 3, padding=1, algorithm="one_image", dtype=np.float64))
    with pytest.raises(ValueError, match=r"^2 Conv2d\(K=4, F=3, S=1, P=1\): algorithm "
                                         r"'one_image' cannot run this convolution .*: it "
                                         r"needs a batch of one image"):
        net.forward(np.zeros((2, 3, 6, 6)))
    with pytest.raises(ValueError, match=r"^2 Conv2d.*'one_image' cannot run"):
        net.eval().infer(np.zeros((2, 3, 6, 6)))
    assert net.infer(np.zeros((1, 3, 6, 6))).shape == (1, 4, 6, 6)


def test_use_algorithm_forces_auto_layers_where_it_can_run():
    """Inside use_algorithm, an "auto" conv runs the forced algorithm where it applies and
    the auto choice elsewhere; a layer's own algorithm stands; the block's end restores."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 16, 12, 12))
    w3, w5 = rng.standard_normal((8, 16, 3, 3)), rng.standard_normal((8, 16, 5, 5))
    assert isinstance(conv2d_forward(x, w3, padding=(1, 1))[1], shifted.Cache)
    with use_algorithm("winograd4x4"):
        assert isinstance(conv2d_forward(x, w3, padding=(1, 1))[1], winograd.Cache)
        assert isinstance(conv2d_forward(x, w5, padding=(2, 2))[1], shifted.Cache)
        assert isinstance(conv2d_forward(x, w3, padding=(1, 1), algorithm="im2col")[1],
                          gemm.Cache)
        with use_algorithm("im2col"):
            assert isinstance(conv2d_forward(x, w3, padding=(1, 1))[1], gemm.Cache)
        assert isinstance(conv2d_forward(x, w3, padding=(1, 1))[1], winograd.Cache)
    assert isinstance(conv2d_forward(x, w3, padding=(1, 1))[1], shifted.Cache)
    with pytest.raises(ValueError, match="use_algorithm: algorithm must be one of"):
        with use_algorithm("fastest"):
            pass


def test_the_auto_choice_per_layer():
    """The rules of select.py on the nets' layers, in training and at inference."""
    def chosen(x_shape, w_shape, stride=(1, 1), padding=(1, 1), training=True):
        return algorithm_for(x_shape, w_shape, stride, padding, training=training)[0].value
    assert chosen((128, 32, 32, 32), (32, 32, 3, 3)) == "shifted"          # CIFAR's middle
    assert chosen((128, 3, 32, 32), (32, 3, 3, 3)) == "blocks"             # a first layer
    assert chosen((8, 64, 56, 56), (128, 64, 3, 3), (2, 2)) == "blocks"    # strided
    assert chosen((8, 256, 14, 14), (512, 256, 3, 3), (2, 2)) == "im2col"  # 7x7 planes
    assert chosen((1, 64, 56, 56), (64, 64, 3, 3)) == "one_image"         # batch 1
    assert chosen((1, 64, 56, 56), (64, 64, 3, 3), training=False) == "winograd4x4"
    assert chosen((8, 128, 28, 28), (128, 128, 3, 3), training=False) == "winograd4x4"
    assert chosen((8, 128, 28, 28), (128, 128, 3, 3)) == "shifted"       # not in training
    assert chosen((1, 512, 28, 28), (512, 512, 3, 3), training=False) == "winograd4x4"
    assert chosen((1, 512, 14, 14), (512, 512, 3, 3), training=False) == "one_image"  # few
    # one image's little work runs on one thread at inference: 7.2 and 6.4 MFLOP
    assert chosen((1, 32, 14, 14), (64, 32, 3, 3), training=False) == "blocks"
    assert chosen((1, 32, 14, 14), (64, 32, 3, 3)) == "one_image"                # training
    assert chosen((1, 256, 14, 14), (64, 256, 1, 1), padding=(0, 0), training=False) == "blocks"
    assert chosen((1, 64, 56, 56), (128, 64, 1, 1), (2, 2), (0, 0), training=False) == "blocks"
    assert chosen((1, 64, 56, 56), (128, 64, 3, 3), (2, 2), training=False) == "im2col"  # 116
    assert algorithm_for((1, 32, 14, 14), (64, 8, 3, 3), padding=(1, 1), groups=4,
                         training=False)[0].value == "im2col"                  # groups
    assert chosen((8, 32, 56, 56), (32, 32, 3, 3), training=False) == "shifted"   # thin
    assert chosen((1, 3, 224, 224), (64, 3, 7, 7), (2, 2), (3, 3)) == "im2col"  # one image
    assert algorithm_for((8, 64, 56, 56), (64, 16, 3, 3), groups=4)[0].value == "im2col"
    # fft in training, a batch on small grids with enough multiplications per output
    assert chosen((128, 32, 14, 14), (64, 32, 5, 5), padding=(2, 2)) == "fft"  # LeNet-like
    assert chosen((128, 64, 7, 7), (128, 64, 3, 3)) == "fft"              # Fashion's third
    assert chosen((128, 64, 16, 16), (64, 64, 3, 3)) == "fft"             # grid 18x18
    assert chosen((128, 64, 32, 32), (64, 64, 3, 3)) == "shifted"         # grid 34x34
    assert chosen((128, 32, 16, 16), (64, 32, 3, 3)) == "shifted"         # 32 * 9 < 400
    assert chosen((32, 32, 14, 14), (64, 32, 5, 5), padding=(2, 2)) == "shifted"  # batch
    assert chosen((128, 64, 4, 4), (64, 64, 3, 3)) == "im2col"            # the digits' 4x4
    assert chosen((128, 256, 14, 14), (256, 256, 3, 3)) == "shifted"     # 151 MB spectrum
    assert chosen((128, 64, 10, 25), (64, 64, 3, 3)) == "shifted"         # a 12x27 grid
    assert chosen((128, 32, 14, 14), (64, 32, 5, 5), padding=(2, 2),
                  training=False) != "fft"                                 # inference


def test_conv_layer_algorithm_travels_in_its_config_and_summary_names_it():
    conv = Conv2d(16, 16, 3, padding=1, algorithm="winograd2x2")
    assert conv.get_config()["algorithm"] == "winograd2x2"
    assert "algorithm" not in Conv2d(16, 16, 3).get_config()
    rebuilt = Conv2d(**{k: v for k, v in conv.get_config().items() if k != "type"})
    assert rebuilt.algorithm == "winograd2x2"
    assert conv.algorithm_for((16, 8, 8), batch_size=4) == "winograd2x2"
    assert Conv2d(16, 16, 3, padding=1).algorithm_for((16, 8, 8), batch_size=4) == "shifted"


def test_shifted_suits_layers_with_depth_and_width():
    suits = shifted_suits
    assert suits((128, 32, 32, 32), (32, 32, 3, 3), (1, 1), (1, 1), (1, 1), 1)
    assert suits((8, 64, 224, 224), (64, 64, 3, 3), (1, 1), (1, 1), (1, 1), 1)
    assert not suits((128, 3, 32, 32), (32, 3, 3, 3), (1, 1), (1, 1), (1, 1), 1)  # C=3
    assert not suits((8, 64, 56, 56), (64, 64, 3, 3), (2, 2), (1, 1), (1, 1), 1)  # S=2
    assert suits((64, 64, 8, 8), (128, 64, 3, 3), (1, 1), (1, 1), (1, 1), 1)  # 9 for 8
    assert not suits((8, 512, 7, 7), (512, 512, 3, 3), (1, 1), (1, 1), (1, 1), 1)  # 8/7
    assert suits((8, 32, 14, 14), (64, 32, 5, 5), (1, 1), (2, 2), (1, 1), 1)  # 16/14, F=5
    assert not suits((8, 64, 7, 7), (64, 64, 5, 5), (1, 1), (2, 2), (1, 1), 1)  # 9/7
    assert not suits((8, 64, 56, 56), (64, 64, 1, 1), (1, 1), (0, 0), (1, 1), 1)  # 1x1
    assert not suits((8, 64, 56, 56), (64, 16, 3, 3), (1, 1), (1, 1), (1, 1), 4)  # groups
    # training's looser bound: 8/7 and 5x5 on 7x7 take the shifted path, 5/4 does not
    assert suits((128, 64, 7, 7), (128, 64, 3, 3), (1, 1), (1, 1), (1, 1), 1, training=True)
    assert not suits((128, 64, 7, 7), (128, 64, 3, 3), (1, 1), (1, 1), (1, 1), 1)
    assert suits((8, 64, 7, 7), (64, 64, 5, 5), (1, 1), (2, 2), (1, 1), 1, training=True)
    assert not suits((32, 32, 4, 4), (64, 32, 3, 3), (1, 1), (1, 1), (1, 1), 1, training=True)


def test_blocks_suit_batches_with_wide_output_planes():
    assert blocks_suit((128, 3, 32, 32), (32, 32), 1)       # a first layer
    assert blocks_suit((8, 64, 56, 56), (28, 28), 1)        # stride 2
    assert blocks_suit((8, 128, 20, 20), (10, 10), 1)       # 1x1, 100 positions
    assert not blocks_suit((1, 3, 224, 224), (112, 112), 1)  # one image
    assert not blocks_suit((8, 256, 14, 14), (7, 7), 1)      # 49 positions
    assert not blocks_suit((8, 64, 56, 56), (56, 56), 4)     # groups


# -- the algorithms' own machinery: blocks, bands, threads --------------------------------
@pytest.mark.parametrize("padding, dh, h0, oh", [
    ((1, 1), 2, 0, 5), ((2, 1), 1, 0, 9), ((0, 2), 3, 0, 1), ((1, 0), 2, 2, 2),
    ((3, 1), 1, 4, 3)])
def test_im2col_rows_holds_the_vertical_taps_and_col2im_rows_is_its_adjoint(padding, dh, h0,
                                                                           oh):
    """Y[(c, i), (n, h, w)] = xp[n, c, h + i*dh, w], and with xp = pad(x), <Y(x), D> =
    <x, col2im_rows(D)> (added onto dx, or fresh: written, for a block of whole images),
    for blocks of output rows h0 .. h0+oh-1 that reach past either edge or skip rows."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 7, 5))
    xp = pad(x, padding)
    y = shifted.im2col_rows(xp[:, :, h0:], 3, dh, oh).reshape(3, 3, 2, oh, xp.shape[3])
    for i in range(3):
        rows = xp[:, :, h0 + dh * i: h0 + dh * i + oh]
        assert np.array_equal(y[:, i], rows.transpose(1, 0, 2, 3))
    d = rng.standard_normal(y.shape)
    start = rng.standard_normal(x.shape)
    back = start.copy()
    shifted.col2im_rows(d, back, dh, padding, h0)
    assert abs(np.sum(y * d) - np.sum(x * (back - start))) < 1e-10 * np.abs(y * d).sum()
    whole_image = h0 == 0 and oh == xp.shape[2] - 2 * dh
    if whole_image:
        fresh = np.full_like(x, np.nan)
        shifted.col2im_rows(d, fresh, dh, padding, h0, fresh=True)
        assert np.allclose(fresh, back - start, rtol=0, atol=1e-12)


@pytest.mark.parametrize("algorithm, module", [("shifted", shifted), ("blocks", blocks),
                                               ("winograd2x2", winograd),
                                               ("winograd4x4", winograd)])
def test_blocks_of_any_size_give_the_same_result(algorithm, module, monkeypatch):
    """Each blocked algorithm's BLOCK_BYTES small enough to cut the work into images,
    bands of rows and single rows, in training and at inference (Winograd: every tile at
    once, its filters one at a time, then blocks of tiles); every copy and sum split over
    threads however small: the same as one block of everything."""
    monkeypatch.setattr(threads, "PARALLEL_BYTES", 0)
    rng = np.random.default_rng(600)
    for _ in range(8):
        case = case_for(algorithm, rng)
        x, w, b = arrays(case, rng)
        dout = None
        results = []
        for limit in (1 << 30, 8 * x[0].size * 9, 8 * x.shape[3] * 9 * 4, 1):
            monkeypatch.setattr(module, "BLOCK_BYTES", limit)
            if module is winograd:   # every tile at once: the batch, then each image
                m = 2 if algorithm == "winograd2x2" else 4
                t = winograd.tiling(x.shape, case["padding"], m)
                one_image = (m + 2) ** 2 * x.shape[1] * t.th * t.tw * x.itemsize
                monkeypatch.setattr(module, "ALL_TILES_BELOW", 1 << 30)
                monkeypatch.setattr(module, "ALL_TILES_BYTES", (1 << 30, one_image, limit,
                                                                limit)[len(results)])
            out, cache = conv2d_forward(x, w, b, *conv_args(case), fit="floor",
                                        algorithm=algorithm)
            dout = rng.standard_normal(out.shape) if dout is None else dout
            # blocks holds one image at least, which no max_bytes under it may ask for
            infer = conv2d_infer(x, w, b, *conv_args(case), fit="floor",
                                 max_bytes=1 << 30 if module is blocks else limit,
                                 algorithm=algorithm)
            results.append((out, infer, *conv2d_backward(dout, cache)))
        for got in results[1:]:
            for a, e in zip(got, results[0]):
                assert rel_error(a, e) < 1e-12, case


@pytest.mark.parametrize("blas_limit", [True, False])
def test_per_thread_blocks_match_one_thread(blas_limit, monkeypatch):
    """The images split between the threads (each its own blocks, BLAS on one thread, its
    own dW and db summed at the end), or, when BLAS's threads cannot be set, every block on
    the calling thread: the same result, for batches that do not split evenly."""
    if not blas_limit:
        monkeypatch.setattr(threads, "_blas", False)
    rng = np.random.default_rng(7)
    for algorithm in ("shifted", "blocks", "winograd4x4", "fft"):
        for n in (1, 2, 5):
            x = rng.standard_normal((n, 3, 9, 8))
            w = rng.standard_normal((4, 3, 3, 3))
            b = rng.standard_normal(4)
            dout = rng.standard_normal((n, 4, 9, 8))
            ref, cache = reference.conv2d_forward(x, w, b, padding=(1, 1))
            want = (ref, *reference.conv2d_backward(dout, cache))
            out, cache = conv2d_forward(x, w, b, padding=(1, 1), algorithm=algorithm)
            for a, e in zip((out, *conv2d_backward(dout, cache)), want):
                assert rel_error(a, e) < 1e-12, (algorithm, n)


def test_fft_dtypes_as_the_other_algorithms_and_float16_transformed_in_float32():
    """Mixed dtypes give the dtypes im2col gives (dw in x's and dout's); float16 inputs,
    whose spectra's sums overflow float16 (a DC term of 78,400 here), are transformed in
    float32."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 3, 6, 5))
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    dout = rng.standard_normal((2, 4, 6, 5)).astype(np.float32)
    dtypes = []
    for name in ("im2col", "shifted", "fft"):
        out, cache = conv2d_forward(x, w, padding=(1, 1), algorithm=name)
        dtypes.append([a.dtype for a in (out, *conv2d_backward(dout, cache))])
    assert dtypes[0][2] == np.float64 and dtypes[0] == dtypes[1] == dtypes[2], dtypes
    ones = np.ones((1, 16, 14, 14), np.float16)
    out = conv2d_forward(ones, np.ones((4, 16, 5, 5), np.float16), padding=(2, 2),
                         algorithm="fft")[0]
    want = reference.conv2d_forward(ones.astype(np.float64), np.ones((4, 16, 5, 5)),
                                    padding=(2, 2))[0]
    assert out.dtype == np.float16 and rel_error(out, want) < 1e-3


def test_fft_in_blocks_of_one_image_and_groups_at_inference(monkeypatch):
    """fft's DFTs run over blocks of images (BLOCK_BYTES) and inference over groups whose
    spectra fit max_bytes: one image a block, or a group, gives what the whole batch does,
    with padding, dilation and rectangular planes and filters."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((7, 5, 11, 9))
    w = rng.standard_normal((6, 5, 3, 2))
    b = rng.standard_normal(6)
    args = (1, 1), (2, 1), (2, 1)
    ref, cache = reference.conv2d_forward(x, w, b, *args)
    dout = rng.standard_normal(ref.shape)
    want = (ref, *reference.conv2d_backward(dout, cache))
    for block_bytes in (fft.BLOCK_BYTES, 1):
        monkeypatch.setattr(fft, "BLOCK_BYTES", block_bytes)
        out, cache = conv2d_forward(x, w, b, *args, algorithm="fft")
        for got, expected in zip((out, *conv2d_backward(dout, cache)), want):
            assert rel_error(got, expected) < 1e-12, block_bytes
        one = fft.inference_bytes((1, *x.shape[1:]), w.shape, (2, 1), 8)
        for limit in (1 << 30, one, 2 * one):
            got = conv2d_infer(x, w, b, *args, max_bytes=limit, algorithm="fft")
            assert rel_error(got, ref) < 1e-12, (block_bytes, limit)


def test_one_image_takes_whole_padded_rows_when_a_threads_rows_fit():
    """At inference a batch of one on the shifted path runs one_image when each thread's
    rows fit in one block of max_bytes, else the shifted path's bands of rows; both give
    the convolution."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((1, 32, 28, 28))   # 22 MFLOP: more than one thread's share
    w = rng.standard_normal((48, 32, 3, 3))
    want = naive_conv(x, w, None, (1, 1), (1, 1))
    row = 32 * 9 * 29 * 8       # bytes of the (C*FH*FW, WP) matrix per output row
    rows = -(-28 // threads.THREADS)
    for limit, taken in ((rows * row, "one_image"), (rows * row - 1, "shifted")):
        chosen = algorithm_for(x.shape, w.shape, padding=(1, 1), itemsize=8, training=False)
        from convnet.functional.conv.select import Problem, auto
        p = Problem(x.shape, w.shape, (1, 1), (1, 1), (1, 1), 1, (28, 28), 8, limit)
        assert auto(p)[0].value == taken, limit
        out = conv2d_infer(x, w, padding=(1, 1), max_bytes=limit)
        assert rel_error(out, want) < 1e-10, limit
    assert chosen[0].value == "one_image"
    out, cache = conv2d_forward(x, w, padding=(1, 1))   # training: the same forward
    assert isinstance(cache, shifted.Cache) and rel_error(out, want) < 1e-10


def test_algorithms_that_cannot_cut_one_image_keep_to_max_bytes_or_are_refused():
    """At inference one_image's rows and blocks' one-image matrix cannot be cut: named
    with a max_bytes they would pass, they are a ValueError naming the bytes; forced by
    use_algorithm, the call goes to auto, its temporaries within the bound (blocks' one
    image's matrix would take 922 KB, one_image's rows 472 KB a thread); under it they
    run."""
    import tracemalloc
    rng = np.random.default_rng(14)
    x = rng.standard_normal((1, 16, 40, 40)).astype(np.float32)
    w = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    want = reference.conv2d_forward(x, w, padding=(1, 1))[0]
    for algorithm in ("one_image", "blocks"):
        with pytest.raises(ValueError, match=rf"'{algorithm}' cannot run .* over "
                                             r"max_bytes=262,144"):
            conv2d_infer(x, w, padding=(1, 1), max_bytes=256 << 10, algorithm=algorithm)
        release_scratch()
        tracemalloc.start()
        with use_algorithm(algorithm):
            got = conv2d_infer(x, w, padding=(1, 1), max_bytes=256 << 10)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        bound = got.nbytes + threads.THREADS * (2 * (256 << 10) + 2 * x.nbytes) + (64 << 10)
        assert rel_error(got, want) < 1e-5 and peak < bound, (algorithm, peak)
        got = conv2d_infer(x, w, padding=(1, 1), max_bytes=4 << 20, algorithm=algorithm)
        assert rel_error(got, want) < 1e-5


@pytest.mark.parametrize("max_bytes", [None, 0, -5, 2.5, True, "64"])
def test_conv_infer_max_bytes_must_be_a_positive_int(max_bytes):
    x, w = np.zeros((1, 16, 8, 8), np.float32), np.zeros((16, 16, 3, 3), np.float32)
    with pytest.raises(ValueError, match="conv2d_infer: max_bytes must be a positive int"):
        conv2d_infer(x, w, padding=(1, 1), max_bytes=max_bytes)


def test_one_image_splits_the_filters_where_they_outnumber_the_columns():
    """one_image with more filters than its matrix has columns (K >= OH*WP: deep layers)
    makes the matrix once and splits the filters between the threads, else the output
    rows: both give the convolution, with a folded scale, bias and RELU."""
    rng = np.random.default_rng(10)
    for k, size in ((40, 4), (24, 5), (8, 9), (64, 7)):      # OH*WP = 20, 30, 90, 56
        x = rng.standard_normal((1, 6, size, size))
        w = rng.standard_normal((k, 6, 3, 3))
        b, scale = rng.standard_normal(k), rng.standard_normal(k)
        want = np.maximum(naive_conv(x, w, None, (1, 1), (1, 1)) * scale[:, None, None]
                          + b[:, None, None], 0)
        out = conv2d_infer(x, w, b, padding=(1, 1), relu=True, scale=scale,
                           algorithm="one_image")
        assert rel_error(out, want) < 1e-10, (k, size)


def test_layers_keep_only_their_input_where_the_algorithm_remakes_its_matrix():
    """shifted, blocks and Winograd keep x itself in training (their matrices are made
    again, block by block, in the backward pass), im2col its matrix in a reused buffer;
    two training steps give the same output and gradients."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((4, 16, 20, 20)).astype(np.float32)
    dout = rng.standard_normal((4, 16, 20, 20)).astype(np.float32)
    for algorithm in ("shifted", "blocks", "winograd2x2", "im2col"):
        conv = Conv2d(16, 16, 3, padding=1, rng=rng, algorithm=algorithm)
        first = conv.forward(x)
        if algorithm == "im2col":
            assert conv.cache.cols.shape == (144, 1600) and conv.cache.workspace is not None
        else:
            assert conv.cache.x is x and getattr(conv.cache, "workspace", None) is None
        dx1 = conv.backward(dout)
        dw1 = conv.grads["weight"].copy()
        assert np.array_equal(conv.forward(x), first)
        assert np.array_equal(conv.backward(dout), dx1)
        assert np.array_equal(conv.grads["weight"], dw1)


def test_conv_blocks_at_inference_stay_within_max_bytes():
    """conv2d_infer's max_bytes also bounds blocks' blocks (two images' matrices here,
    where BLOCK_BYTES alone would take every image a thread has)."""
    import tracemalloc
    rng = np.random.default_rng(3)
    x = rng.standard_normal((16, 3, 64, 64)).astype(np.float32)
    w = rng.standard_normal((16, 3, 3, 3)).astype(np.float32)
    image = 27 * 32 * 32 * 4                              # one image's im2col matrix
    expected = conv2d_forward(x, w, stride=(2, 2), padding=(1, 1), fit="floor")[0]
    release_scratch()
    tracemalloc.start()
    out = conv2d_infer(x, w, stride=(2, 2), padding=(1, 1), fit="floor", max_bytes=2 * image)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert rel_error(out, expected) < 1e-5
    padded = 2 * x[0].nbytes * 66 * 66 // (64 * 64)       # two padded images
    assert peak < out.nbytes + threads.THREADS * (2 * image + padded) + (64 << 10), peak


@pytest.mark.parametrize("c", [3, 16])          # im2col, the shifted path
def test_conv_of_an_empty_batch(c):
    rng = np.random.default_rng(8)
    x = np.zeros((0, c, 20, 20), np.float32)
    w = rng.standard_normal((8, c, 3, 3)).astype(np.float32)
    out, cache = conv2d_forward(x, w, padding=(1, 1))
    assert out.shape == (0, 8, 20, 20) and isinstance(cache, shifted.Cache) == (c == 16)
    dx, dw, db = conv2d_backward(np.zeros(out.shape, np.float32), cache, overwrite_cols=True)
    assert dx.shape == x.shape and not dw.any() and not db.any()
    assert conv2d_infer(x, w, padding=(1, 1)).shape == (0, 8, 20, 20)


# -- gradient checks ---------------------------------------------------------------------
@pytest.mark.parametrize("kwargs", [
    dict(kernel_size=3, padding=1),
    dict(kernel_size=(2, 3), stride=(2, 1), padding=(1, 0)),
    dict(kernel_size=3, stride=2, padding=2, dilation=2),
    dict(kernel_size=1),
    dict(kernel_size=3, groups=2, padding="same", bias=False),
])
def test_conv_gradient_check(kwargs):
    rng = np.random.default_rng(4)
    conv = Conv2d(4, 6, dtype=np.float64, rng=rng, fit="floor", **kwargs)
    x = rng.standard_normal((2, 4, 7, 6))
    errors = check_layer_grads(conv, x)
    assert set(errors) == {"x", *conv.params}
    assert max(errors.values()) < 1e-7, errors


def test_locally_connected_gradient_check_and_oracle():
    rng = np.random.default_rng(5)
    layer = LocallyConnected2d(3, 4, (7, 6), (3, 2), stride=(2, 2), padding=(1, 0),
                               dtype=np.float64, rng=rng)
    x = rng.standard_normal((2, 3, 7, 6))
    out = layer.forward(x)
    p = layer.params
    assert rel_error(out, naive_local(x, p["weight"], p["bias"], (2, 2), (1, 0))) < 1e-12
    errors = check_layer_grads(layer, x)
    assert max(errors.values()) < 1e-7, errors


@pytest.mark.parametrize("seed", range(60))
def test_locally_connected_matches_pytorch_unfold(seed):
    """PyTorch has no such layer; unfold + a per-position einsum is the same computation."""
    rng = np.random.default_rng(300 + seed)
    fh, fw, sh, sw = (int(v) for v in rng.integers(1, 5, size=4))
    ph, pw = int(rng.integers(0, fh // 2 + 1)), int(rng.integers(0, fw // 2 + 1))
    oh, ow, c, k, n = (int(v) for v in rng.integers(1, 4, size=5))
    ph, pw = (min(p, ((o - 1) * s + f - 1) // 2) for p, o, s, f in ((ph, oh, sh, fh),
                                                                  (pw, ow, sw, fw)))
    h, w = (oh - 1) * sh + fh - 2 * ph, (ow - 1) * sw + fw - 2 * pw   # each at least 1
    layer = LocallyConnected2d(c, k, (h, w), (fh, fw), (sh, sw), (ph, pw), dtype=np.float64,
                               rng=rng)
    x = rng.standard_normal((n, c, h, w))
    out = layer.forward(x)
    dout = rng.standard_normal(out.shape)
    dx = layer.backward(dout)
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(layer.params["weight"], requires_grad=True)
    bt = torch.tensor(layer.params["bias"], requires_grad=True)
    cols = torch.nn.functional.unfold(xt, (fh, fw), padding=(ph, pw), stride=(sh, sw))
    cols = cols.reshape(n, c * fh * fw, oh, ow)
    ot = torch.einsum("nfyx,yxkf->nkyx", cols, wt.reshape(oh, ow, k, -1)) + bt
    ot.backward(torch.tensor(dout))
    assert rel_error(out, ot.detach().numpy()) < 1e-10
    assert rel_error(dx, xt.grad.numpy()) < 1e-10
    assert rel_error(layer.grads["weight"], wt.grad.numpy()) < 1e-10
    assert rel_error(layer.grads["bias"], bt.grad.numpy()) < 1e-10


# -- the layer's contract and its errors -------------------------------------------------
def test_conv_layer_contract():
    conv = Conv2d(3, 8, (3, 5), stride=(1, 2), padding=(2, 4), dilation=2, groups=1)
    assert Conv2d(3, 8, (3, 5), padding="same", dilation=2).padding == (2, 4)
    assert conv.padding == (2, 4)
    assert conv.training and conv.eval() is conv and not conv.training
    assert set(conv.params) == set(conv.grads) == {"weight", "bias"}
    weight = conv.params["weight"]
    assert weight.shape == (8, 3, 3, 5) and weight.dtype == np.float32
    assert repr(conv) == "Conv2d(K=8, F=3x5, S=1x2, P=2x4, dilation=2)"
    config = conv.get_config()
    assert config["type"] == "Conv2d" and config["dilation"] == [2, 2]
    rebuilt = Conv2d(**{k: v for k, v in config.items() if k != "type"})
    assert rebuilt.get_config() == config
    with pytest.raises(RuntimeError, match="backward called before forward"):
        Conv2d(1, 1, 1).backward(np.zeros((1, 1, 1, 1)))


@pytest.mark.parametrize("make, message", [
    (lambda: Conv2d(3, 8, 0), "kernel_size must be a positive int"),
    (lambda: Conv2d(3, 8, 3, stride=-1), "stride must be a positive int"),
    (lambda: Conv2d(3, 8, 3, padding=-1), "padding must be a non-negative"),
    (lambda: Conv2d(3, 8, 2.5), "kernel_size"),
    (lambda: Conv2d(0, 8, 3), "in_channels must be a positive int"),
    (lambda: Conv2d(3, 8, 3, groups=2), "divisible by groups"),
    (lambda: Conv2d(3, 8, 3, stride=(1, 2), padding="same"),
     r"padding='same' keeps the size only at stride 1, got S=1x2; give P explicitly, "
     r"e.g. padding=1"),
    (lambda: Conv2d(3, 8, 3, fit="round"), "fit must be one of"),
    (lambda: Conv2d(3, 8, 3, dtype=np.int32), "dtype must be float32 or float64"),
])
def test_conv_constructor_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_conv_forward_errors_name_the_layer_and_the_problem():
    conv = Conv2d(3, 8, 3, stride=2)
    conv.name = "features.0"
    x = np.zeros((2, 10, 10, 3), dtype=np.float32)
    with pytest.raises(ValueError, match=r"features\.0 Conv2d.*NHWC.*transpose\(0, 3, 1, 2\)"):
        conv.forward(x)
    with pytest.raises(ValueError, match=r"expected 3 input channels.*got 4"):
        conv.forward(np.zeros((2, 4, 9, 9), dtype=np.float32))
    with pytest.raises(ValueError, match=r"4-D input \(N, C, H, W\), got shape \(3, 9, 9\)"):
        conv.forward(np.zeros((3, 9, 9), dtype=np.float32))
    with pytest.raises(ValueError, match="floating-point"):
        conv.forward(np.zeros((1, 3, 9, 9), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"along H: \(H - F \+ 2P\)/S \+ 1 = "
                                         r"\(10 - 3 \+ 2\*0\)/2 \+ 1 = 4\.5.*use S=1"):
        conv.forward(np.zeros((1, 3, 10, 10), dtype=np.float32))
    with pytest.raises(ValueError, match="larger than the padded input"):
        conv.forward(np.zeros((1, 3, 2, 2), dtype=np.float32))
    assert Conv2d(3, 8, 3, stride=2, fit="floor").forward(
        np.zeros((1, 3, 10, 10), dtype=np.float32)).shape == (1, 8, 4, 4)


def test_locally_connected_errors():
    with pytest.raises(ValueError, match="not an integer"):
        LocallyConnected2d(3, 4, 10, 3, stride=2)
    layer = LocallyConnected2d(3, 4, 9, 3, stride=2)
    with pytest.raises(ValueError, match="built for input H x W = 9 x 9"):
        layer.forward(np.zeros((1, 3, 11, 11), dtype=np.float32))


def test_winograd_is_refused_for_integer_arrays_and_auto_keeps_them_exact():
    """Winograd's transforms have fractions (1/2 .. 1/24), fft's cosines: in an integer
    dtype they would round to 0. Named, it is a ValueError; auto and use_algorithm run an
    exact algorithm."""
    rng = np.random.default_rng(30)
    x = rng.integers(-3, 4, (1, 64, 28, 28))
    w = rng.integers(-3, 4, (64, 64, 3, 3))
    want = reference.conv2d_forward(x, w, padding=(1, 1))[0]
    assert np.array_equal(conv2d_infer(x, w, padding=(1, 1)), want)   # auto: not Winograd
    for name in ("winograd2x2", "winograd4x4", "fft"):
        with pytest.raises(ValueError, match="needs floating-point input"):
            conv2d_forward(x, w, padding=(1, 1), algorithm=name)
        with use_algorithm(name):
            assert np.array_equal(conv2d_infer(x, w, padding=(1, 1)), want)
            assert np.array_equal(conv2d_forward(x, w, padding=(1, 1))[0], want)


def test_im2col_inference_counts_its_product_against_max_bytes():
    """With many more filters than C*FH*FW the GEMM's product, not the im2col matrix, is
    the large temporary: a block of several images (or a band) must keep it within
    max_bytes too (here 32x max_bytes before)."""
    import tracemalloc
    rng = np.random.default_rng(31)
    x = rng.standard_normal((8, 16, 64, 64)).astype(np.float32)
    w = rng.standard_normal((512, 16, 1, 1)).astype(np.float32)
    expected = reference.conv2d_forward(x, w)[0]
    for limit in (1 << 20, 1 << 17):                     # one image a block, then bands
        release_scratch()
        tracemalloc.start()
        out = conv2d_infer(x, w, max_bytes=limit, algorithm="im2col")
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert rel_error(out, expected) < 1e-5
        assert peak < out.nbytes + 2 * limit + x[:1].nbytes + (64 << 10), (limit, peak)


@pytest.mark.parametrize("algorithm", ["im2col", "shifted", "one_image", "blocks"])
def test_conv_with_no_channels_and_no_filters(algorithm):
    x = np.zeros((1, 0, 8, 8))
    w = np.zeros((0, 0, 3, 3))
    out, cache = conv2d_forward(x, w, padding=(1, 1), algorithm=algorithm)
    dx, dw, db = conv2d_backward(out, cache)
    assert out.shape == dx.shape == (1, 0, 8, 8) and dw.shape == (0, 0, 3, 3)
    assert conv2d_infer(x, w, padding=(1, 1), algorithm=algorithm).shape == (1, 0, 8, 8)


def test_a_named_algorithm_keeps_its_backward_pass_under_use_algorithm():
    """im2col's input gradient for stride 1 is the flipped-filter convolution, part of its
    own backward pass: a forced Winograd around the backward does not reach it (it would
    have run Winograd there, 14x the float32 error)."""
    rng = np.random.default_rng(32)
    x = rng.standard_normal((2, 64, 16, 16)).astype(np.float32)
    w = (rng.standard_normal((64, 64, 3, 3)) / 24).astype(np.float32)
    dout = rng.standard_normal((2, 64, 16, 16)).astype(np.float32)
    _, cache = conv2d_forward(x, w, padding=(1, 1), algorithm="im2col")
    plain = conv2d_backward(dout, cache)[0]
    _, cache = conv2d_forward(x, w, padding=(1, 1), algorithm="im2col")
    with use_algorithm("winograd4x4"):
        forced = conv2d_backward(dout, cache)[0]
    assert np.array_equal(forced, plain)
    # use_algorithm("im2col") keeps the notes' computation throughout: the flipped-filter
    # convolution runs on im2col too (auto would take the shifted path here).
    flipped = conv2d_forward(dout, reference.flipped_filters(w, 1), padding=(1, 1),
                             algorithm="im2col")[0]
    with use_algorithm("im2col"):
        _, cache = conv2d_forward(x, w, padding=(1, 1))
        assert np.array_equal(conv2d_backward(dout, cache)[0], flipped)
    # and so does naming it, at the call or on the layer, or forcing it around the
    # forward pass alone (the backward pass had taken auto's choice there)
    assert np.array_equal(plain, flipped)
    with use_algorithm("im2col"):
        _, cache = conv2d_forward(x, w, padding=(1, 1))
    assert np.array_equal(conv2d_backward(dout, cache)[0], flipped)
    layer = Conv2d(64, 64, 3, padding=1, bias=False, algorithm="im2col")
    layer.weight[...] = w
    layer.forward(x)
    assert np.array_equal(layer.backward(dout), flipped)


@pytest.mark.parametrize("algorithm", ["im2col", "shifted", "winograd4x4"])
def test_conv_hyperparameters_as_ints_or_lists(algorithm):
    """stride, padding and dilation as an int or a list mean the same as a tuple: the
    algorithms that need stride 1 take [1, 1] (they compared with a tuple and refused)."""
    rng = np.random.default_rng(33)
    x = rng.standard_normal((2, 16, 9, 9))
    w = rng.standard_normal((8, 16, 3, 3))
    want = reference.conv2d_forward(x, w, padding=(1, 1))[0]
    for stride, padding, dilation in ((1, 1, 1), ([1, 1], [1, 1], [1, 1])):
        got = conv2d_forward(x, w, None, stride, padding, dilation, algorithm=algorithm)[0]
        assert rel_error(got, want) < 1e-10
        got = conv2d_infer(x, w, None, stride, padding, dilation, algorithm=algorithm)
        assert rel_error(got, want) < 1e-10
    with pytest.raises(ValueError, match="conv2d: stride must be a positive int"):
        conv2d_forward(x, w, stride=(1, 0))
