"""Softmax cross-entropy and SVM losses: the notes' example, oracles, gradients, PyTorch."""

import json
import re
import warnings

import numpy as np
import pytest
import torch

from convnet.functional import loss as F
from convnet.functional.loss import (
    cross_entropy,
    log_softmax,
    multi_margin_loss,
    softmax,
    softmax_cross_entropy,
    svm_loss,
)
from convnet.layers.loss import CrossEntropyLoss, MultiMarginLoss
from tests.utils import numerical_grad, rel_error

SEEDS = range(300)
TF = torch.nn.functional


# -- oracles -----------------------------------------------------------------------------
def naive_svm_loss(scores, y, margin=1.0):
    """The notes' unvectorized L_i, one sample and one wrong class at a time."""
    n, c = scores.shape
    loss, dscores = 0.0, np.zeros_like(scores)
    for i in range(n):
        for j in range(c):
            if j == y[i]:
                continue
            m = scores[i, j] - scores[i, y[i]] + margin
            if m > 0:
                loss += m
                dscores[i, j] += 1
                dscores[i, y[i]] -= 1
    return loss / n, dscores / n


def random_problem(rng, dtype=np.float64, integer_scores=False):
    """Scores (N, C) and targets: N=1 and C=1/2 often, scales up to 1e4."""
    n = 1 if rng.random() < 0.2 else int(rng.integers(2, 7))
    c = int(rng.choice([1, 2, 2, 3, 5, 8, 10]))
    if integer_scores:                               # hits the hinge's kinks exactly
        scores = rng.integers(-3, 4, size=(n, c)).astype(dtype)
    else:
        scale = float(rng.choice([1e-3, 1.0, 10.0, 1e4]))
        scores = (rng.standard_normal((n, c)) * scale).astype(dtype)
    return scores, rng.integers(0, c, size=n)


def torch_loss(fn, scores, y, **kwargs):
    """(loss, dscores) from PyTorch autograd, float64."""
    t = torch.from_numpy(scores.copy()).requires_grad_()
    loss = fn(t, torch.from_numpy(y), **kwargs)
    loss.backward()
    return loss.item(), t.grad.numpy()


# -- the notes' worked example -----------------------------------------------------------
def test_svm_notes_example_cat_car_frog():
    """CS231n: scores for a cat, a car and a frog image, Delta = 1: L = 2.9, 0, 12.9."""
    scores = np.array([[3.2, 5.1, -1.7], [1.3, 4.9, 2.0], [2.2, 2.5, -3.1]])
    y = np.array([0, 1, 2])
    for i, expected in enumerate([2.9, 0.0, 12.9]):
        assert svm_loss(scores[i:i + 1], y[i:i + 1])[0] == pytest.approx(expected)
    assert svm_loss(scores, y)[0] == pytest.approx((2.9 + 0 + 12.9) / 3)
    assert MultiMarginLoss()(scores, y) == pytest.approx((2.9 + 0 + 12.9) / 3 / 3)


# -- naive loop and PyTorch sweeps -------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS)
def test_svm_loss_matches_naive_loop(seed):
    rng = np.random.default_rng(seed)
    scores, y = random_problem(rng, integer_scores=seed % 3 == 0)
    margin = float(rng.choice([0.0, 0.5, 1.0, 2.0]))
    loss, dscores = svm_loss(scores, y, margin)
    naive_loss, naive_d = naive_svm_loss(scores, y, margin)
    assert loss == pytest.approx(naive_loss, rel=1e-12, abs=1e-12)
    np.testing.assert_array_equal(dscores, naive_d)


@pytest.mark.parametrize("seed", SEEDS)
def test_cross_entropy_matches_torch(seed):
    rng = np.random.default_rng(seed)
    scores, y = random_problem(rng)
    smoothing = float(rng.choice([0.0, 0.0, 0.05, 0.3, 1.0]))     # label smoothing too
    expected_loss, expected_d = torch_loss(TF.cross_entropy, scores, y,
                                           label_smoothing=smoothing)
    layer = CrossEntropyLoss(label_smoothing=smoothing)
    loss = layer.forward(scores, y)
    dscores = layer.backward()
    assert isinstance(loss, float) and np.isfinite(loss)
    assert rel_error([loss], [expected_loss]) < 1e-10
    assert dscores.shape == scores.shape and dscores.dtype == np.float64
    assert rel_error(dscores, expected_d) < 1e-10
    f_loss, f_d = softmax_cross_entropy(scores, y, smoothing)
    assert f_loss == loss and np.array_equal(f_d, dscores)


@pytest.mark.parametrize("seed", SEEDS)
def test_multi_margin_matches_torch(seed):
    rng = np.random.default_rng(seed)
    scores, y = random_problem(rng, integer_scores=seed % 3 == 0)
    margin = float(rng.choice([0.5, 1.0, 2.0, 1.0]))
    expected_loss, expected_d = torch_loss(TF.multi_margin_loss, scores, y, margin=margin)
    layer = MultiMarginLoss(margin=margin)
    loss = layer.forward(scores, y)
    dscores = layer.backward()
    assert isinstance(loss, float)
    assert rel_error([loss], [expected_loss]) < 1e-10
    assert rel_error(dscores, expected_d) < 1e-10
    # Integer scores put margins exactly at the kink: both pass no gradient there.
    np.testing.assert_array_equal(dscores != 0, expected_d != 0)


@pytest.mark.parametrize("seed", range(100))
def test_softmax_and_log_softmax_match_torch(seed):
    rng = np.random.default_rng(seed)
    scores, _ = random_problem(rng)
    p, logp = softmax(scores), log_softmax(scores)
    assert rel_error(p, torch.softmax(torch.from_numpy(scores), 1).numpy()) < 1e-10
    assert rel_error(logp, torch.log_softmax(torch.from_numpy(scores), 1).numpy()) < 1e-10
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-12)
    volume = rng.standard_normal((2, 4, 3, 3)) * 100                # per-pixel scores
    assert rel_error(softmax(volume), torch.softmax(torch.from_numpy(volume), 1).numpy()) \
        < 1e-10


# -- PyTorch's options -------------------------------------------------------------------
def torch_options(rng, c, losses):
    """Random weight / reduction (and ignore_index for cross-entropy) for PyTorch and us."""
    options = {"reduction": str(rng.choice(["mean", "sum", "none"]))}
    if rng.random() < 0.6:
        options["weight"] = rng.uniform(0, 3, c) * (rng.random(c) < 0.9)
    if losses == "cross_entropy" and rng.random() < 0.5:
        options["ignore_index"] = int(rng.choice([-1, 0, c - 1, 7]))
    return options


def torch_reduced(fn, scores, y, **options):
    """(loss, dscores) from PyTorch autograd, float64; 'none' backpropagates the sum."""
    t = torch.from_numpy(scores.copy()).requires_grad_()
    if "weight" in options:
        options = {**options, "weight": torch.from_numpy(options["weight"])}
    loss = fn(t, torch.from_numpy(y), **options)
    loss.sum().backward()
    return loss.detach().numpy(), t.grad.numpy()


@pytest.mark.parametrize("seed", range(200))
def test_cross_entropy_options_match_torch(seed):
    """weight, ignore_index, reduction and label smoothing together, as PyTorch computes
    them; some batches ignore every sample or weigh every target 0 (NaN, as there), and
    some ignored samples have a score of -inf (masked out: they had made the loss NaN)."""
    rng = np.random.default_rng(seed)
    scores, y = random_problem(rng)
    c = scores.shape[1]
    options = torch_options(rng, c, "cross_entropy")
    if "ignore_index" in options and rng.random() < 0.5:
        ignored = rng.random(len(y)) < 0.5
        y[ignored] = options["ignore_index"]
        if rng.random() < 0.5 and c > 1:     # (a whole row of -inf: NaN in torch's dx)
            scores[ignored, rng.integers(0, c)] = -np.inf
    smoothing = float(rng.choice([0.0, 0.1, 1.0]))
    expected, expected_d = torch_reduced(TF.cross_entropy, scores, y,
                                         label_smoothing=smoothing, **options)
    layer = CrossEntropyLoss(options.get("weight"), ignore_index=options.get(
        "ignore_index", -100), reduction=options["reduction"], label_smoothing=smoothing)
    loss = layer(scores, y)
    dscores = layer.backward(np.ones(len(y)) if options["reduction"] == "none" else 1.0)
    assert isinstance(loss, float) != (options["reduction"] == "none")
    np.testing.assert_allclose(loss, expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dscores, expected_d, rtol=1e-10, atol=1e-12)
    f_loss, f_d = cross_entropy(scores, y, label_smoothing=smoothing, **options)
    np.testing.assert_array_equal(f_loss, loss)
    np.testing.assert_array_equal(f_d, dscores)


@pytest.mark.parametrize("seed", range(200))
def test_multi_margin_options_match_torch(seed):
    """p = 1 and 2, class weights and reductions, as PyTorch's kernel (the weight
    multiplies after the square)."""
    rng = np.random.default_rng(seed)
    scores, y = random_problem(rng, integer_scores=seed % 3 == 0)
    p, margin = int(rng.choice([1, 2])), float(rng.choice([0.5, 1.0, 2.0]))
    options = torch_options(rng, scores.shape[1], "multi_margin")
    expected, expected_d = torch_reduced(TF.multi_margin_loss, scores, y, p=p, margin=margin,
                                         **options)
    layer = MultiMarginLoss(p, margin, options.get("weight"), reduction=options["reduction"])
    loss = layer(scores, y)
    dscores = layer.backward(np.ones(len(y)) if options["reduction"] == "none" else 1.0)
    np.testing.assert_allclose(loss, expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dscores, expected_d, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(dscores != 0, expected_d != 0)


def test_unreduced_losses_backpropagate_a_gradient_per_sample():
    """reduction='none': backward takes one gradient per sample, as loss.backward(g)."""
    rng = np.random.default_rng(3)
    scores, y = rng.standard_normal((4, 5)), np.array([0, 4, 2, 2])
    g = np.array([1.0, -2.0, 0.5, 3.0])
    for ours, theirs in ((CrossEntropyLoss(reduction="none"), torch.nn.CrossEntropyLoss(
            reduction="none")), (MultiMarginLoss(2, reduction="none"),
                                 torch.nn.MultiMarginLoss(2, reduction="none"))):
        t = torch.tensor(scores, requires_grad=True)
        expected = theirs(t, torch.tensor(y))
        expected.backward(torch.tensor(g))
        losses = ours(scores, y)
        assert losses.shape == (4,)
        np.testing.assert_allclose(losses, expected.detach().numpy(), rtol=1e-12)
        np.testing.assert_allclose(ours.backward(g), t.grad.numpy(), rtol=1e-12)
        with pytest.raises(ValueError, match=r"expected dout as a number or shape \(4,\), "
                           r"got shape \(3,\)"):
            ours.backward(g[:3])
    layer = CrossEntropyLoss()
    layer(scores, y)
    with pytest.raises(ValueError, match=r"^CrossEntropyLoss\(\): expected dout as a number, "
                       r"got shape \(4,\)"):
        layer.backward(g)


@pytest.mark.parametrize("make, message", [
    (lambda: CrossEntropyLoss(2.5), r"weight must be a 1-D array of C finite numbers, one "
                                    r"per class, got shape \(\)"),
    (lambda: CrossEntropyLoss([1, np.nan]), "got nan"),
    (lambda: CrossEntropyLoss("abc"), "got str"),
    (lambda: CrossEntropyLoss({1: 2}), "got dict"),
    (lambda: CrossEntropyLoss(reduction="avg"), "reduction must be one of mean, sum, none, "
                                                "got 'avg'"),
    (lambda: CrossEntropyLoss(ignore_index=True), "ignore_index must be an int, got True"),
    (lambda: CrossEntropyLoss(ignore_index=1.0), "ignore_index must be an int, got 1.0"),
    (lambda: MultiMarginLoss(2.0), r"p must be 1 or 2 \(an int\), got 2.0; for a margin of "
                                   r"2.0, write margin=2.0"),
    (lambda: MultiMarginLoss(3), r"p must be 1 or 2 \(an int\), got 3$"),
    (lambda: MultiMarginLoss(weight=[[1, 2]]), r"got shape \(1, 2\)"),
    (lambda: MultiMarginLoss(reduction=None), "got None"),
    (lambda: CrossEntropyLoss(0.1), r"for label smoothing, write label_smoothing=0.1$"),
    (lambda: multi_margin_loss(np.zeros((1, 3)), [0], p=3), r"^multi_margin_loss: p must be "
                                                            r"1 or 2, got 3$"),
    (lambda: multi_margin_loss(np.zeros((1, 3)), [0], p=True), "p must be 1 or 2, got True"),
    (lambda: softmax_cross_entropy(np.zeros((2, 3)), np.array([-100, 1])),
     r"^softmax_cross_entropy: target values must be class indices in \[0, C\) = \[0, 3\), "
     r"got values from -100 to 1$"),
])
def test_loss_options_are_checked(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_loss_options_are_checked_against_the_scores():
    scores = np.zeros((2, 3))
    with pytest.raises(ValueError, match=r"^CrossEntropyLoss\(weight=<2 values>\): weight "
                       r"must be a 1-D array of C = 3 finite numbers, one per class, got 2 "
                       r"values$"):
        CrossEntropyLoss([1, 2])(scores, np.array([0, 1]))
    with pytest.raises(ValueError, match=r"^CrossEntropyLoss\(ignore_index=5\): target values "
                       r"must be class indices in \[0, C\) = \[0, 3\) \(or ignore_index 5\), "
                       r"got values from 0 to 4$"):
        CrossEntropyLoss(ignore_index=5)(scores, np.array([4, 0]))
    assert CrossEntropyLoss(ignore_index=5)(scores, np.array([5, 0])) == pytest.approx(np.log(3))
    config = CrossEntropyLoss([1, 2, 3], ignore_index=0, reduction="sum",
                              label_smoothing=0.1).get_config()
    assert json.loads(json.dumps(config)) == {
        "type": "CrossEntropyLoss", "weight": [1.0, 2.0, 3.0], "reduction": "sum",
        "ignore_index": 0, "label_smoothing": 0.1}
    assert MultiMarginLoss(2, 0.5, reduction="none").get_config() == {
        "type": "MultiMarginLoss", "p": 2, "margin": 0.5, "reduction": "none"}


# -- gradients against central differences (float64) -------------------------------------
def away_from_kinks(rng, n, c, margin):
    """Scores whose margins s_j - s_y + margin all stay 1e-2 away from 0 (j != y)."""
    while True:
        scores, y = rng.standard_normal((n, c)), rng.integers(0, c, size=n)
        m = scores - scores[np.arange(n), y][:, None] + margin
        m[np.arange(n), y] = 1.0
        if np.all(np.abs(m) > 1e-2):
            return scores, y


def layer_pair(layer):
    """A loss layer as a function (scores, y) -> (loss, dscores), like the functionals."""
    def run(scores, y):
        loss = layer.forward(scores, y)
        return loss, layer.backward()
    return run


LOSSES = {
    "softmax_cross_entropy": softmax_cross_entropy,
    "label_smoothing": lambda scores, y: softmax_cross_entropy(scores, y, 0.3),
    "svm_loss": lambda scores, y: svm_loss(scores, y, 0.5),
    "CrossEntropyLoss": layer_pair(CrossEntropyLoss()),
    "MultiMarginLoss": layer_pair(MultiMarginLoss(margin=0.5)),
    "cross_entropy options": lambda scores, y: cross_entropy(
        scores, y, weight=np.linspace(0.5, 2, scores.shape[1]), label_smoothing=0.2,
        ignore_index=y[0] if (y != y[0]).any() else -100),     # one class ignored
    "cross_entropy sum": lambda scores, y: cross_entropy(scores, y, reduction="sum"),
    "squared hinge": layer_pair(MultiMarginLoss(p=2, margin=0.5)),
    "weighted hinge": lambda scores, y: multi_margin_loss(
        scores, y, 1, 0.5, np.linspace(2, 0.5, scores.shape[1]), "sum"),
}


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("n, c", [(4, 5), (1, 3), (3, 2), (2, 1), (5, 10)])
def test_gradient_check(name, n, c):
    rng = np.random.default_rng(n * 10 + c)
    scores, y = away_from_kinks(rng, n, c, 0.5)
    loss_fn = LOSSES[name]
    analytic = loss_fn(scores, y)[1].copy()
    num = numerical_grad(lambda: loss_fn(scores, y)[0], scores, 1.0)
    assert c == 1 or np.abs(analytic).max() > 0     # a real check, not 0 == 0
    assert rel_error(analytic, num) < 1e-7


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("name", LOSSES)
def test_float32_matches_float64(name, seed):
    rng = np.random.default_rng(seed)
    scores, y = random_problem(rng)
    scores /= max(1.0, np.abs(scores).max() / 10)   # float32 spacing at 1e4 is 1e-3
    loss64, d64 = LOSSES[name](scores, y)
    loss32, d32 = LOSSES[name](scores.astype(np.float32), y)
    assert d32.dtype == np.float32
    assert abs(loss32 - loss64) <= 1e-5 * max(1.0, abs(loss64))
    assert np.abs(d32 - d64).max() <= 1e-6


# -- numerical stability -----------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_is_stable_for_huge_scores(dtype):
    scores = np.array([[1e4, 0.0, -1e4], [-1e4, 1e4, 1e4], [3e4, 3e4, 3e4]], dtype=dtype)
    y = np.array([0, 1, 2])
    with warnings.catch_warnings():
        warnings.simplefilter("error")                      # no overflow in exp()
        loss, dscores = softmax_cross_entropy(scores, y)
        p = softmax(scores)
    # Per sample: 0, log 2, log 3 (the rest is e^-1e4 = 0 in any float).
    assert loss == pytest.approx((0 + np.log(2) + np.log(3)) / 3, rel=1e-6)
    assert np.all(np.isfinite(dscores)) and np.all(np.isfinite(p))
    expected = (p - np.eye(3)[y]) / 3
    np.testing.assert_allclose(dscores, expected, atol=1e-7)
    np.testing.assert_allclose(log_softmax(scores)[2], -np.log(3), rtol=1e-6)


# -- analysis, naming, backward ----------------------------------------------------------
def test_loss_layers_analysis_config_and_backward_scale():
    ce, mm = CrossEntropyLoss(), MultiMarginLoss(margin=2.0)
    assert repr(ce) == "CrossEntropyLoss()" and repr(mm) == "MultiMarginLoss(margin=2.0)"
    assert repr(MultiMarginLoss()) == "MultiMarginLoss(margin=1.0)"
    assert json.loads(json.dumps(ce.get_config())) == {"type": "CrossEntropyLoss"}
    assert json.loads(json.dumps(mm.get_config())) == {"type": "MultiMarginLoss",
                                                       "margin": 2.0}
    for layer in (ce, mm):
        assert layer.output_shape((10,)) == () and layer.num_params() == 0
        assert layer.macs((10,)) == 0
        scores = np.random.default_rng(0).standard_normal((3, 4))
        layer(scores, np.array([0, 3, 1]))
        np.testing.assert_array_equal(layer.backward(2.5), 2.5 * layer.backward())


# -- errors ------------------------------------------------------------------------------
BAD_INPUTS = [
    ([[1.0, 2.0]], [0], "expected scores as a NumPy array, got list"),
    (np.zeros((2, 3), np.int64), [0, 1], "expected floating-point scores .*got dtype int64"),
    (np.zeros(3), [0], r"expected scores of shape \(N, C\) .*got shape \(3,\)"),
    (np.zeros((2, 3, 1, 1)), [0, 1], r"got shape \(2, 3, 1, 1\)"),
    (np.zeros((0, 3)), np.zeros(0, int), r"N, C >= 1, got shape \(0, 3\)"),
    (np.zeros((2, 3)), np.array([0.0, 1.0]), "integer class indices .*got dtype float64"),
    (np.zeros((2, 3)), np.array([True, False]), "integer class indices .*got dtype bool"),
    (np.zeros((2, 3)), np.array([0, 1, 2]), (r"target of shape \(N,\) = \(2,\) .*"
                                              r"got shape \(3,\)$")),
    (np.zeros((2, 3)), np.eye(3, dtype=int)[:2], r"got shape \(2, 3\); use target.argmax"),
    (np.zeros((2, 3)), np.array([0, 3]), r"in \[0, C\) = \[0, 3\), got values from 0 to 3"),
    (np.zeros((2, 3)), np.array([-1, 2]), r"\[0, 3\), got values from -1 to 2"),
]


@pytest.mark.parametrize("scores, y, message", BAD_INPUTS)
def test_input_errors_name_the_loss(scores, y, message):
    for where, call in (("softmax_cross_entropy", softmax_cross_entropy),
                        ("svm_loss", svm_loss),
                        ("CrossEntropyLoss()", CrossEntropyLoss()),
                        ("MultiMarginLoss(margin=1.0)", MultiMarginLoss())):
        with pytest.raises(ValueError, match="^" + re.escape(where) + ": .*" + message):
            call(scores, y)


def test_named_loss_and_backward_before_forward():
    layer = CrossEntropyLoss()
    layer.name = "loss"
    with pytest.raises(ValueError, match=r"^loss CrossEntropyLoss\(\): target values"):
        layer(np.zeros((1, 2)), np.array([2]))
    with pytest.raises(RuntimeError, match="backward called before forward"):
        MultiMarginLoss().backward()


@pytest.mark.parametrize("margin", ["1", float("inf"), None, False])
def test_margin_must_be_a_finite_number(margin):
    with pytest.raises(ValueError, match=f"^MultiMarginLoss: margin must be a finite number, "
                       f"got {re.escape(repr(margin))}$"):
        MultiMarginLoss(margin=margin)


@pytest.mark.parametrize("margin", ["1", [1.0], float("nan"), 10 ** 400, True])
@pytest.mark.parametrize("loss", ["svm_loss", "multi_margin_loss"])
def test_the_functions_check_their_margin(loss, margin):
    """The layers checked it, the functions not: a list was broadcast (a loss of 2.1), NaN
    gave a NaN loss, a string a NumPy UFuncTypeError."""
    scores, y = np.array([[0.1, 0.5, -0.2]]), np.array([0])
    with pytest.raises(ValueError, match=f"^{loss}: margin must be a finite number, got "):
        getattr(F, loss)(scores, y, margin=margin)


@pytest.mark.parametrize("ignore_index", [0.5, True, "0"])
def test_cross_entropy_checks_its_ignore_index(ignore_index):
    with pytest.raises(ValueError, match="^cross_entropy: ignore_index must be an int or "
                                         "None, got "):
        F.cross_entropy(np.zeros((1, 3)), np.array([0]), ignore_index=ignore_index)


def test_svm_margins_round_as_pytorchs_and_nan_shows():
    """A margin exactly 0 in decimal: (s_j - s_y) + margin had rounded to 2e-16 and passed
    the gradient; PyTorch's margin - s_y + s_j gives 0 and passes none. A NaN score gives
    a NaN loss (PyTorch skips its term) and no gradient, as PyTorch."""
    s, y = np.array([[-1.8, -2.3]]), np.array([0])
    st = torch.tensor(s, requires_grad=True)
    expected = torch.nn.MultiMarginLoss(margin=0.5)(st, torch.tensor(y))
    expected.backward()
    layer = MultiMarginLoss(margin=0.5)
    assert layer(s, y) == expected.item() == 0.0
    np.testing.assert_array_equal(layer.backward(), st.grad.numpy())
    rng = np.random.default_rng(7)
    for _ in range(200):      # scores on a coarse grid: many margins exactly at the kink
        s = np.round(rng.uniform(-3, 3, (4, 5)), 1)
        y = rng.integers(0, 5, 4)
        st = torch.tensor(s, requires_grad=True)
        expected = torch.nn.MultiMarginLoss(margin=0.3)(st, torch.tensor(y))
        expected.backward()
        layer = MultiMarginLoss(margin=0.3)
        assert layer(s, y) == pytest.approx(expected.item(), rel=1e-12, abs=1e-15)
        np.testing.assert_allclose(layer.backward(), st.grad.numpy(), atol=1e-15)
    s = np.array([[0.0, np.nan, 1.0]])
    loss, dscores = svm_loss(s, np.array([0]))
    assert np.isnan(loss) and dscores[0, 1] == 0 and np.isfinite(dscores).all()


def test_an_ignored_sample_of_minus_inf_alone_makes_no_warning():
    """Its scores are all -inf (a masked-out row): the loss is the others', as PyTorch's,
    and nothing is warned (log_softmax's -inf - -inf had warned 'invalid value')."""
    scores, y = np.array([[0.0, 1.0], [-np.inf, -np.inf]]), np.array([0, -100])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss, dscores = cross_entropy(scores, y)
    expected = TF.cross_entropy(torch.tensor(scores), torch.tensor(y)).item()
    assert loss == pytest.approx(expected) and np.array_equal(dscores[1], [0.0, 0.0])


def test_a_mean_over_zero_weight_is_nan_with_label_smoothing_as_in_pytorch():
    """Class weights that give every counted target weight 0: the smoothing part had been
    divided by 0 into infinities, where PyTorch gives NaN."""
    import torch
    import torch.nn.functional as TF

    from convnet.functional.loss import cross_entropy
    s, y, w = np.array([[1., 2., 3.], [0.5, -1, 2]]), np.array([0, 1]), np.array([0., 0., 1.])
    loss, d = cross_entropy(s, y, w, label_smoothing=0.3)
    expected = TF.cross_entropy(torch.tensor(s), torch.tensor(y), weight=torch.tensor(w),
                                label_smoothing=0.3).item()
    assert np.isnan(loss) and np.isnan(expected) and np.isnan(d).all()
