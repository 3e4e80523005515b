"""The arrow notation: grammar, defaults, repetition, shapes, errors, and PyTorch end to end."""

import re

import numpy as np
import pytest
import torch

from convnet.layers.activation import LeakyReLU, ReLU, ReLU6, Sigmoid, Tanh
from convnet.layers.conv import Conv2d, LocallyConnected2d
from convnet.layers.dropout import Dropout
from convnet.layers.linear import Flatten, Linear
from convnet.layers.norm import BatchNorm1d, BatchNorm2d, LocalResponseNorm
from convnet.layers.pool import AdaptiveAvgPool2d, AvgPool2d, LPPool2d, MaxPool2d
from convnet.models.containers import Sequential
from convnet.models.notation import from_notation
from tests.utils import rel_error

ISSUE = "INPUT 32x32x3 -> [[CONV 32 -> RELU]*2 -> POOL]*3 -> [FC 512 -> RELU]*2 -> FC 10"
NOTES = "INPUT -> [[CONV -> RELU]*N -> POOL?]*M -> [FC -> RELU]*K -> FC"


def types(model):
    return [type(layer) for layer in model]


def build(text, **kwargs):
    kwargs.setdefault("rng", np.random.default_rng(0))
    return from_notation(text, **kwargs)


def error(text, **kwargs):
    with pytest.raises(ValueError) as info:
        build(text, **kwargs)
    return str(info.value)


def caret_column(message):
    """The 1-based column of the first '^' under the copy of the text in an error."""
    lines = message.split("\n")
    carets = next(line for line in lines if line.strip() and set(line.strip()) == {"^"})
    return len(carets) - len(carets.lstrip()) - 3   # the copy is indented by 4 spaces


# -- the issue's example ---------------------------------------------------------------

def test_issue_example_structure():
    net = build(ISSUE)
    assert isinstance(net, Sequential)
    assert net.input_shape == (3, 32, 32)
    assert len(net) == 21                      # 3 * (2*2 + 1) + Flatten + 2*2 + 1
    assert [key for key, _ in net.named_children()] == [str(i) for i in range(21)]
    stage = [Conv2d, ReLU, Conv2d, ReLU, MaxPool2d]
    assert types(net) == stage * 3 + [Flatten, Linear, ReLU, Linear, ReLU, Linear]
    assert net.output_shape(net.input_shape) == (10,)
    assert net[0].in_channels == 3 and net[2].in_channels == 32
    assert all(net[i].padding == (1, 1) for i in (0, 2, 5, 7, 10, 12))
    assert net[16].in_features == 4 * 4 * 32    # three POOLs: 32 -> 16 -> 8 -> 4
    assert (net[18].in_features, net[20].in_features, net[20].out_features) == (512, 512, 10)


def test_issue_example_forward_backward():
    net = build(ISSUE, dtype=np.float64)
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32))
    out = net.forward(x)
    assert out.shape == (2, 10) and out.dtype == np.float64 and np.all(np.isfinite(out))
    dx = net.backward(np.ones_like(out))
    assert dx.shape == x.shape and np.abs(dx).sum() > 0
    assert set(net.grads()) == set(net.params())


def test_dtype_and_rng():
    a = build("INPUT 8x8x3 -> CONV 4 -> FC 5", rng=np.random.default_rng(3))
    b = build("INPUT 8x8x3 -> CONV 4 -> FC 5", rng=np.random.default_rng(3))
    c = build("INPUT 8x8x3 -> CONV 4 -> FC 5", rng=np.random.default_rng(4))
    assert all(np.array_equal(a.params()[k], b.params()[k]) for k in a.params())
    assert not np.array_equal(a.params()["0.weight"], c.params()["0.weight"])
    assert all(p.dtype == np.float32 for p in a.params().values())
    d = build("INPUT 8x8x3 -> CONV 4 -> BN -> FC 5", dtype=np.float64)
    assert all(p.dtype == np.float64 for p in d.params().values())
    assert from_notation("INPUT 8x8x3 -> FC 5").output_shape((3, 8, 8)) == (5,)  # rng=None


# -- defaults: the notes' sizing rules ---------------------------------------------------

@pytest.mark.parametrize("f, d", [(1, 1), (3, 1), (5, 1), (7, 1), (3, 2), (5, 3), (2, 2)])
def test_conv_default_padding_keeps_size(f, d):
    net = build(f"INPUT 13x11x2 -> CONV 4 F{f} D{d}")
    p = d * (f - 1) // 2
    assert net[0].padding == (p, p) and net[0].stride == (1, 1)
    assert net[0].kernel_size == (f, f) and net[0].dilation == (d, d)
    assert net.output_shape(net.input_shape) == (4, 11, 13)


def test_conv_defaults_and_rectangular():
    conv = build("INPUT 9x9x3 -> CONV 6")[0]
    assert (conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups) == (
        (3, 3), (1, 1), (1, 1), (1, 1), 1)
    assert conv.fit == "exact" and "bias" in conv.params
    net = build("INPUT 16x8x3 -> CONV 5 F3x5")          # W=16, H=8; F is FH x FW
    assert net.input_shape == (3, 8, 16)
    assert net[0].kernel_size == (3, 5) and net[0].padding == (1, 2)
    assert net.output_shape(net.input_shape) == (5, 8, 16)


@pytest.mark.parametrize("text, kernel, stride, out", [
    ("POOL", (2, 2), (2, 2), (3, 8, 8)),
    ("POOL F2", (2, 2), (2, 2), (3, 8, 8)),
    ("POOL F4", (4, 4), (4, 4), (3, 4, 4)),
    ("POOL S1", (2, 2), (1, 1), (3, 15, 15)),
    ("POOL F3 S2 floor", (3, 3), (2, 2), (3, 7, 7)),
    ("POOL F2x4 S2x4", (2, 4), (2, 4), (3, 8, 4)),
])
def test_pool_defaults(text, kernel, stride, out):
    net = build(f"INPUT 16x16x3 -> {text}")
    assert isinstance(net[0], MaxPool2d)
    assert (net[0].kernel_size, net[0].stride) == (kernel, stride)
    assert net.output_shape(net.input_shape) == out


def test_input_forms():
    assert build("INPUT 28x28 -> RELU").input_shape == (1, 28, 28)
    assert build("INPUT 20x10x4 -> RELU").input_shape == (4, 10, 20)
    assert build("input 784 -> fc 10")[0].in_features == 784
    net = build("CONV 4 -> RELU", input_shape=(2, 6, 5))
    assert net.input_shape == (2, 6, 5) and net[0].in_channels == 2
    assert build("INPUT -> FC 3", input_shape=(2, 4, 4))[1].in_features == 32
    assert build("INPUT 4x4x2 -> FC 3", input_shape=(2, 4, 4)).input_shape == (2, 4, 4)


# -- every keyword ---------------------------------------------------------------------

KEYWORD_CASES = [
    # text after INPUT 8x8x4, expected layer types, attribute checks, output shape
    ("CONV 6 F5 S1 P2 D1 G2", [Conv2d], {"groups": 2, "padding": (2, 2)}, (6, 8, 8)),
    ("CONV 6 P0", [Conv2d], {"padding": (0, 0)}, (6, 6, 6)),
    ("CONV 6 Psame F5", [Conv2d], {"padding": (2, 2)}, (6, 8, 8)),
    ("CONV 6 F3 S3 P0 floor", [Conv2d], {"fit": "floor"}, (6, 2, 2)),
    ("CONV 4 F4x1 S2x1 P1x0", [Conv2d], {"stride": (2, 1), "padding": (1, 0)}, (4, 4, 8)),
    ("POOL F3 S3 ceil", [MaxPool2d], {"ceil_mode": True}, (4, 3, 3)),
    ("POOL F3 S3 floor", [MaxPool2d], {"fit": "floor"}, (4, 2, 2)),
    ("POOL F2 S1 D2", [MaxPool2d], {"dilation": (2, 2)}, (4, 6, 6)),
    ("AVGPOOL", [AvgPool2d], {"kernel_size": (2, 2), "stride": (2, 2)}, (4, 4, 4)),
    ("AVGPOOL F3 S1 P1", [AvgPool2d], {"padding": (1, 1)}, (4, 8, 8)),
    ("L2POOL", [LPPool2d], {"norm_type": 2}, (4, 4, 4)),
    ("L2POOL F3 S2 ceil", [LPPool2d], {"ceil_mode": True}, (4, 4, 4)),
    ("GAP", [AdaptiveAvgPool2d], {"output_size": (1, 1)}, (4, 1, 1)),
    ("RELU", [ReLU], {}, (4, 8, 8)),
    ("RELU6", [ReLU6], {}, (4, 8, 8)),
    ("LEAKYRELU", [LeakyReLU], {"negative_slope": 0.01}, (4, 8, 8)),
    ("LEAKYRELU 0.2", [LeakyReLU], {"negative_slope": 0.2}, (4, 8, 8)),
    ("TANH", [Tanh], {}, (4, 8, 8)),
    ("SIGMOID", [Sigmoid], {}, (4, 8, 8)),
    ("BN", [BatchNorm2d], {"num_features": 4}, (4, 8, 8)),
    ("LRN", [LocalResponseNorm], {"size": 5, "alpha": 1e-4, "beta": 0.75, "k": 2.0},
     (4, 8, 8)),
    ("LRN 3", [LocalResponseNorm], {"size": 3, "k": 2.0}, (4, 8, 8)),
    ("LRN 3 2e-4 0.5 1", [LocalResponseNorm], {"size": 3, "alpha": 2e-4, "beta": 0.5,
                                               "k": 1.0}, (4, 8, 8)),
    ("DROPOUT", [Dropout], {"p": 0.5}, (4, 8, 8)),
    ("DROPOUT 0.25", [Dropout], {"p": 0.25}, (4, 8, 8)),
    ("LC 3", [LocallyConnected2d], {"padding": (0, 0), "input_size": (8, 8)}, (3, 6, 6)),
    ("LC 3 F2 S2 P1", [LocallyConnected2d], {"stride": (2, 2)}, (3, 5, 5)),
    ("FLATTEN", [Flatten], {}, (256,)),
    ("FC 7", [Flatten, Linear], {}, (7,)),
    ("FLATTEN -> FC 7", [Flatten, Linear], {}, (7,)),
    ("FC 7 -> BN", [Flatten, Linear, BatchNorm1d], {}, (7,)),
    ("FC 7 -> DROPOUT -> FC 2", [Flatten, Linear, Dropout, Linear], {}, (2,)),
    ("GAP -> FC 3", [AdaptiveAvgPool2d, Flatten, Linear], {}, (3,)),
]


@pytest.mark.parametrize("text, kinds, attrs, out", KEYWORD_CASES)
def test_every_keyword(text, kinds, attrs, out):
    net = build(f"INPUT 8x8x4 -> {text}")
    assert types(net) == kinds
    for key, value in attrs.items():
        assert getattr(net[0], key) == value, key
    assert net.output_shape(net.input_shape) == out
    x = np.random.default_rng(2).standard_normal((2, 4, 8, 8)).astype(np.float32)
    assert net.forward(x).shape == (2, *out)


def test_keywords_are_case_insensitive():
    a = build("input 8x8x3 -> conv 4 f5 s1 p2 -> Relu -> pool -> fc 2")
    b = build("INPUT 8x8x3 -> CONV 4 F5 S1 P2 -> RELU -> POOL -> FC 2")
    assert types(a) == types(b) and repr(a) == repr(b)
    assert len(build("INPUT 8x8x3 → CONV 4 → RELU")) == 2   # the arrow character


def test_fc_fan_in():
    net = build("INPUT 32x32x3 -> [CONV 32 -> POOL]*3 -> FC 10 -> FC 5")
    flat, fc1, fc2 = net[6], net[7], net[8]
    assert isinstance(flat, Flatten) and (fc1.in_features, fc2.in_features) == (512, 10)
    assert len(net) == 9                         # only one Flatten, before the first FC
    net = build("INPUT 12x10x3 -> CONV 5 F3 P0 -> FC 4")
    assert net[2].in_features == 5 * 8 * 10


# -- repetition and optional parts -----------------------------------------------------

@pytest.mark.parametrize("n, m", [(0, 0), (1, 1), (2, 3), (3, 2), (0, 2), (4, 1)])
def test_nested_repetition_counts(n, m):
    net = build(f"INPUT 16x16x2 -> [[CONV 3 -> RELU]*{n} -> POOL]*{m} -> FC 4")
    kinds = types(net)
    assert kinds.count(Conv2d) == kinds.count(ReLU) == n * m
    assert kinds.count(MaxPool2d) == m
    assert kinds[: (2 * n + 1) * m] == ([Conv2d, ReLU] * n + [MaxPool2d]) * m
    depth = 3 if n else 2
    assert net[len(net) - 1].in_features == depth * (16 >> m) ** 2


def test_single_layer_repetition():
    net = build("INPUT 8x8x2 -> CONV 4*3 -> RELU*2 -> POOL?*2")
    assert types(net) == [Conv2d] * 3 + [ReLU] * 2 + [MaxPool2d] * 2
    assert [net[i].in_channels for i in range(3)] == [2, 4, 4]
    assert net.output_shape(net.input_shape) == (4, 2, 2)
    net = build("INPUT 8x8x2 -> [[[RELU]*2]*3]*2 -> TANH")
    assert types(net) == [ReLU] * 12 + [Tanh]


@pytest.mark.parametrize("n, m, k", [(0, 0, 0), (1, 1, 1), (2, 3, 2), (3, 2, 0), (0, 2, 1),
                                     (1, 0, 2)])
@pytest.mark.parametrize("optional", [True, False])
def test_notes_pattern_symbolic_counts(n, m, k, optional):
    text = "INPUT 16x16x3 -> [[CONV 8 -> RELU]*N -> POOL?]*M -> [FC 6 -> RELU]*K -> FC 10"
    net = build(text, optional=optional, N=n, M=m, K=k)
    kinds = types(net)
    pools = m if optional else 0
    assert kinds.count(Conv2d) == n * m and kinds.count(MaxPool2d) == pools
    assert kinds.count(Linear) == k + 1 and kinds.count(ReLU) == n * m + k
    side = 16 >> pools
    depth = 8 if n * m else 3
    first_fc = next(layer for layer in net if isinstance(layer, Linear))
    assert first_fc.in_features == depth * side * side
    assert net.output_shape(net.input_shape) == (10,)


def test_optional_layers_and_groups():
    text = "INPUT 8x8x3 -> CONV 4 -> POOL? -> [CONV 4 -> BN]? -> RELU?*2 -> FC 2"
    on = build(text)
    off = build(text, optional=False)
    assert types(on) == [Conv2d, MaxPool2d, Conv2d, BatchNorm2d, ReLU, ReLU, Flatten, Linear]
    assert types(off) == [Conv2d, Flatten, Linear]
    assert on[7].in_features == 4 * 4 * 4 and off[2].in_features == 4 * 8 * 8


def test_counts_can_be_numpy_ints_and_unused_ones_are_refused():
    net = build("INPUT 4x4x1 -> RELU*N", N=np.int64(3))
    assert types(net) == [ReLU] * 3
    # a misspelt count, or seed=0 (not an argument: rng is), had been ignored silently
    with pytest.raises(ValueError, match=r"the text has no count named UNUSED \(its "
                                         r"counts: N\)"):
        build("INPUT 4x4x1 -> RELU*N", N=3, UNUSED=5)
    with pytest.raises(ValueError, match=r"no count named seed \(its counts: none\)"):
        build("INPUT 4x4x1 -> RELU", seed=0)


# -- errors ----------------------------------------------------------------------------

def test_error_non_fitting_conv():
    text = "INPUT 10x10x3 -> CONV 8 F3 S2 P0"
    msg = error(text)
    assert "4.5" in msg and "(10 - 3 + 2*0)/2 + 1" in msg   # the formula with numbers
    assert "model[0]" in msg and "'CONV 8 F3 S2 P0'" in msg
    assert "got 10x10x3" in msg and "column 18" in msg
    assert "    " + text in msg.split("\n")
    assert caret_column(msg) == text.index("CONV") + 1
    assert msg.split("\n")[-1].strip() == "^" * len("CONV 8 F3 S2 P0")
    assert "floor" in msg                                    # how to opt into flooring


def test_error_deep_in_the_net_names_layer_and_volume():
    text = "INPUT 28x28x64 -> [CONV 64 -> RELU -> POOL]*3 -> FC 10"
    msg = error(text)
    # 28 -> 14 -> 7: the third POOL gets 7x7x64 and (7 - 2)/2 + 1 = 3.5 does not fit
    assert "model[8]" in msg and "got 7x7x64" in msg and "3.5" in msg
    assert caret_column(msg) == text.index("POOL") + 1
    assert "'POOL'" in msg


def test_error_pool_larger_than_volume():
    msg = error("INPUT 4x4x3 -> POOL F5")
    assert "larger" in msg and "got 4x4x3" in msg and "model[0]" in msg


def test_error_layer_needs_volume():
    msg = error("INPUT 8x8x1 -> FC 4 -> CONV 2")
    assert "model[2]" in msg and "a vector of 4" in msg and "volume" in msg


def test_error_notes_pattern_needs_k():
    msg = error(NOTES, N=1, M=1, K=1)
    assert "CONV needs the number of filters K" in msg
    assert caret_column(msg) == NOTES.index("CONV") + 1
    assert "layer 1 in the text" in msg and "column 12" in msg
    msg = error(NOTES)                      # syntax first: the same error without counts
    assert "CONV needs the number of filters K" in msg


def test_error_unknown_keyword():
    text = "INPUT 8x8x3 -> CONVV 3 -> RELU"
    msg = error(text)
    assert "unknown layer 'CONVV'" in msg and "did you mean CONV" in msg
    assert "LEAKYRELU" in msg and caret_column(msg) == text.index("CONVV") + 1


@pytest.mark.parametrize("text, words, column", [
    ("INPUT 8x8x3 -> [CONV 4 -> RELU", ["never closed"], 16),
    ("INPUT 8x8x3 -> [[CONV 4 -> RELU]*2", ["never closed"], 16),
    ("INPUT 8x8x3 -> CONV 4] -> RELU", ["']' without a matching '['"], 22),
    ("INPUT 8x8x3 -> [CONV 4]] -> RELU", ["']' without a matching '['"], 24),
    ("INPUT 8x8x3 -> [] -> RELU", ["expected a layer"], 17),
])
def test_error_unbalanced_brackets(text, words, column):
    msg = error(text)
    assert all(word in msg for word in words)
    assert caret_column(msg) == column and text in msg


@pytest.mark.parametrize("text", ["CONV 4 -> RELU", "INPUT -> FC 10", "FC 10",
                                  "[CONV 4]*2 -> FC 3"])
def test_error_missing_input(text):
    msg = error(text)
    assert "input_shape" in msg and "INPUT WxHxD" in msg
    assert caret_column(msg) == 1


@pytest.mark.parametrize("text, words", [
    ("FC", ["FC needs the number of neurons n"]),
    ("INPUT 8x8x1 -> FC", ["FC needs the number of neurons n"]),
    ("INPUT 8x8x1 -> FC -> RELU", ["FC needs"]),
    ("INPUT 8x8x1 -> LC", ["LC needs the number of filters K"]),
    ("", ["empty"]),
    ("INPUT 8x8x1", ["no layers after INPUT"]),
    ("INPUT 8x8x1 -> [FC 3]*0", ["no layers left"]),
    ("INPUT 8x8x1 -> POOL?", ["no layers left"]),
])
def test_error_nothing_to_build(text, words):
    kwargs = {"optional": False} if "?" in text else {}
    msg = error(text, **kwargs)
    assert all(word in msg for word in words)


def test_bind_counts_writes_the_values_in():
    from convnet.models import bind_counts
    text = "INPUT 32x32x3 -> [[CONV 32 -> RELU]*N -> POOL?]*M -> [FC 64 -> RELU]*K -> FC 10"
    bound = bind_counts(text, {"N": 2, "M": 3, "K": 0})
    assert bound == ("INPUT 32x32x3 -> [[CONV 32 -> RELU]*2 -> POOL?]*3 -> [FC 64 -> RELU]*0 "
                     "-> FC 10")
    assert bind_counts(text, {"M": 12}).count("*12") == 1          # the rest stay names
    assert len(from_notation(bound)) == len(from_notation(text, N=2, M=3, K=0))
    with pytest.raises(ValueError, match="the text has no count named X; its names: K, M, N"):
        bind_counts(text, {"X": 1, "N": 2})
    with pytest.raises(ValueError, match="the count N must be an int >= 0, got -1"):
        bind_counts(text, {"N": -1})
    assert bind_counts("INPUT 8x8 -> [CONV", {}) == "INPUT 8x8 -> [CONV"   # from_notation's


def test_the_first_unbound_name_in_the_text_is_named():
    """An inner count comes before its group's own in the text: N is named first (M had
    been), with the command line's way to bind it."""
    text = "INPUT 32x32x3 -> [[CONV 32 -> RELU]*N -> POOL?]*M -> FC 10"
    msg = error(text)
    assert "the name N is not bound" in msg and "--count N=2" in msg
    assert caret_column(msg) == text.index("*N") + 2


def test_error_unbound_name_lists_names():
    text = "INPUT 8x8x1 -> [CONV 2 -> RELU]*N -> [FC 3]*M"
    msg = error(text, N=2, K=1)
    assert "name M is not bound" in msg and "N=2, K=1" in msg
    assert caret_column(msg) == text.rindex("M") + 1
    assert "names given: none" in error("INPUT 8x8x1 -> RELU*N")


@pytest.mark.parametrize("text, words, token", [
    ("INPUT 8x8x3 -> CONV 4 RELU", ["missing '->'"], "RELU"),
    ("INPUT 8x8x3 -> CONV 4 F0", ["F must be"], "F0"),
    ("INPUT 8x8x3 -> CONV 4 Fx", ["F must be"], "Fx"),
    ("INPUT 8x8x3 -> CONV 4.5", ["K must be"], "4.5"),
    ("INPUT 8x8x3 -> CONV 4 F3 F5", ["given twice"], "F5"),
    ("INPUT 8x8x3 -> CONV 4 8", ["extra '8'"], "8"),
    ("INPUT 8x8x3 -> CONV 4 Q2", ["does not take 'Q2'", "F<pair>"], "Q2"),
    ("INPUT 8x8x3 -> L2POOL P1", ["does not take 'P1'"], "P1"),
    ("INPUT 8x8x3 -> AVGPOOL D2", ["does not take 'D2'"], "D2"),
    ("INPUT 8x8x3 -> POOL 2", ["no bare number"], "2"),
    ("INPUT 8x8x3 -> POOL ceil floor", ["exclude each other"], "floor"),
    ("INPUT 8x8x3 -> RELU 2", ["no bare number"], "2"),
    ("INPUT 8x8x3 -> DROPOUT abc", ["does not take 'abc'"], "abc"),
    ("INPUT 8x8x3 -> DROPOUT nan", ["does not take 'nan'"], "nan"),
    ("INPUT 8x8x3 -> LEAKYRELU 1e400", ["slope must be"], "1e400"),
    ("INPUT 8x8x3 -> LEAKYRELU 0_01", ["slope must be"], "0_01"),    # not Python's 1
    ("INPUT 8x8x3 -> LRN 5 1_0", ["alpha must be"], "1_0"),
    ("INPUT 8xx8 -> RELU", ["size must be"], "8xx8"),
    ("INPUT 8x8x3x2 -> RELU", ["size must be"], "8x8x3x2"),
    ("INPUT 8x8x3 -> RELU*", ["followed by a count"], "*"),
    ("INPUT 8x8x3 -> RELU*-1", ["followed by a count"], "-1"),
    ("INPUT 8x8x3 -> RELU*2*3", ["second '*'"], "*"),
    ("INPUT 8x8x3 -> RELU??", ["'?' is given twice"], "?"),
    ("INPUT 8x8x3 -> CONV 4 -> -> RELU", ["expected a layer"], "->"),
    ("INPUT 8x8x3 -> CONV 4 ->", ["a '->' at the end: a layer must follow it"], None),
    ("INPUT 8x8x3 -> [RELU] TANH", ["expected '->' before 'TANH'"], "TANH"),
    ("INPUT 8x8x3 -> [RELU TANH]", ["missing '->'"], "TANH"),
    ("RELU -> INPUT 8x8x3", ["INPUT must be the first"], "INPUT"),
    ("INPUT 8x8x3*2 -> RELU", ["INPUT must be the first"], "INPUT"),
    # an INPUT inside brackets had raised a bare KeyError
    ("INPUT 8x8x3 -> [INPUT 8x8x3 -> RELU]*2", ["INPUT must be the first"], "INPUT"),
    ("INPUT 8x8x3 -> [RELU -> INPUT]?", ["INPUT must be the first"], "INPUT"),
    ("[INPUT 8x8x3 -> RELU] -> TANH", ["INPUT must be the first"], "INPUT"),
    # digits of other scripts, refused in whole numbers, had been read in decimals
    ("INPUT 8x8x3 -> DROPOUT \u0661", ["p must be a number"], "\u0661"),
    ("INPUT 8x8x3 -> LEAKYRELU \uff10.\uff15", ["slope must be"], "\uff10.\uff15"),
])
def test_error_syntax(text, words, token):
    msg = error(text)
    assert all(word in msg for word in words), msg
    assert msg.startswith("from_notation: ") and text in msg
    if token is not None:
        assert caret_column(msg) == text.rindex(token) + 1


@pytest.mark.parametrize("text, words", [
    ("INPUT 8x8x3 -> CONV 4 F4", ["P = D*(F-1)/2 = 1.5", "give P explicitly, e.g. P0 or P1, "
                                                          "or Psame (the size kept"]),
    ("INPUT 8x8x3 -> CONV 4 F2", ["e.g. P0, or Psame"]),        # had said "P0 or P0"
    ("INPUT 9x9x3 -> CONV 4 F3 S2 Psame", ["keeps the size only at stride 1", "S=2",
                                          "padding=1"]),
    ("INPUT 8x8x3 -> CONV 4 G2", ["divisible by groups"]),
    ("INPUT 8x8x3 -> CONV 4 F3 S2", ["(8 - 3 + 2*1)/2 + 1 = 4.5"]),
    ("INPUT 8x8x3 -> LC 4 F3 S2", ["not an integer"]),
    ("INPUT 8x8x3 -> POOL F2 P2", ["at most half"]),
    ("INPUT 8x8x3 -> DROPOUT 1.5", ["p (the drop probability)"]),
    ("INPUT 8x8x3 -> FLATTEN -> LRN", ["needs a volume", "a vector of 192"]),
    ("INPUT 8x8x3 -> GAP -> FLATTEN -> POOL", ["needs a volume", "a vector of 3"]),
])
def test_error_build(text, words):
    msg = error(text)
    assert all(word in msg for word in words), msg
    assert "model[" in msg and "got " in msg and text in msg
    assert caret_column(msg) == text.rindex("->") + 4


def test_error_multiline_text_gives_line():
    text = "INPUT 8x8x1 ->\n  CONV 4 F3 S2 P0 ->\n  FC 10"
    msg = error(text)
    assert "line 2, column 3" in msg and "\n      CONV 4 F3 S2 P0 ->\n" in msg
    assert caret_column(msg) == 3


def test_error_bad_arguments():
    assert "input_shape" in error("RELU", input_shape=(3, 32))
    assert "input_shape" in error("RELU", input_shape=(3, 0, 4))
    msg = error("INPUT 32x32x3 -> RELU", input_shape=(3, 16, 16))
    assert "32x32x3" in msg and "16x16x3" in msg
    assert "count N" in error("RELU*N", input_shape=(1, 2, 2), N=-1)
    assert "count N" in error("RELU*N", input_shape=(1, 2, 2), N=True)
    assert "optional" in error("INPUT 2x2 -> RELU", optional="yes")
    assert "dtype" in error("INPUT 2x2 -> RELU", dtype=np.int32)
    assert "rng" in error("INPUT 2x2 -> RELU", rng=0)
    assert "str" in error(["INPUT 2x2"])


def test_error_messages_are_positioned():
    """Every error copies the text and puts carets under a part of it."""
    cases = ["INPUT 10x10x3 -> CONV 4 S2", "INPUT 9x9x3 -> POOL", "INPUT 9x9x3 -> CONV",
             "INPUT 9x9x3 -> CONV 4 F3x10 P0", "INPUT 5x5x3 -> [CONV 4 P0]*3"]
    for text in cases:
        msg = error(text)
        lines = msg.split("\n")
        assert lines[-2] == "    " + text
        assert 1 <= caret_column(msg) <= len(text)
        assert re.search(r"column \d+", msg)


# -- end to end against PyTorch --------------------------------------------------------

def to_torch(net):
    """The same network in torch.nn, with the same float64 weights."""
    nn = torch.nn
    modules = []
    for layer in net:
        kind = type(layer)
        if kind is Conv2d:
            m = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size,
                          layer.stride, layer.padding, layer.dilation, layer.groups,
                          bias="bias" in layer.params)
        elif kind is Linear:
            m = nn.Linear(layer.in_features, layer.out_features)
        elif kind in (BatchNorm2d, BatchNorm1d):
            m = getattr(nn, kind.__name__)(layer.num_features)
        elif kind is MaxPool2d:
            m = nn.MaxPool2d(layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                             ceil_mode=layer.ceil_mode)
        elif kind is AvgPool2d:
            m = nn.AvgPool2d(layer.kernel_size, layer.stride, layer.padding, layer.ceil_mode,
                             layer.count_include_pad)
        elif kind is LPPool2d:
            m = nn.LPPool2d(layer.norm_type, layer.kernel_size, layer.stride, layer.ceil_mode)
        elif kind is AdaptiveAvgPool2d:
            m = nn.AdaptiveAvgPool2d(layer.output_size)
        elif kind is LocalResponseNorm:
            m = nn.LocalResponseNorm(layer.size, layer.alpha, layer.beta, layer.k)
        elif kind is LeakyReLU:
            m = nn.LeakyReLU(layer.negative_slope)
        elif kind is Dropout:
            m = nn.Dropout(layer.p)
        else:
            m = {ReLU: nn.ReLU, ReLU6: nn.ReLU6, Tanh: nn.Tanh, Sigmoid: nn.Sigmoid,
                 Flatten: nn.Flatten}[kind]()
        for key, value in layer.params.items():
            getattr(m, key).data = torch.tensor(value)
        modules.append(m)
    return nn.Sequential(*modules).double()


TORCH_CASES = [
    ISSUE,
    "INPUT 15x13x3 -> CONV 4 F5 S2 P1 floor -> LEAKYRELU 0.1 -> AVGPOOL F3 S2 P1 ceil -> "
    "[CONV 6 F3x1 D2 G2 -> BN -> TANH]*2 -> L2POOL F2 floor -> FC 5 -> SIGMOID -> FC 3",
    "INPUT 12x12x4 -> LRN 3 1e-3 0.7 1.5 -> CONV 8 F1 -> POOL F3 S3 -> GAP -> DROPOUT 0 -> "
    "FC 6 -> BN -> RELU -> FC 2",
    "INPUT 10x10x2 -> CONV 4 F3 -> BN -> RELU6 -> CONV 4 F3 G4 -> RELU6 -> GAP -> FC 3",
    "INPUT 11x9 -> [CONV 3 F3 P0 -> RELU]*2 -> POOL F2 S1 D2 ceil -> FLATTEN -> FC 4",
]


@pytest.mark.parametrize("text", TORCH_CASES)
def test_forward_backward_match_pytorch(text):
    net = build(text, dtype=np.float64, rng=np.random.default_rng(5))
    ref = to_torch(net)
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, *net.input_shape))
    out = net.forward(x)
    xt = torch.tensor(x, requires_grad=True)
    out_t = ref(xt)
    assert out.shape == tuple(out_t.shape) == (3, *net.output_shape(net.input_shape))
    assert rel_error(out, out_t.detach().numpy()) < 1e-10
    dout = rng.standard_normal(out.shape)
    dx = net.backward(dout)
    out_t.backward(torch.tensor(dout))
    assert rel_error(dx, xt.grad.numpy()) < 1e-10
    torch_grads = {f"{i}.{k}": p.grad.numpy() for i, m in enumerate(ref)
                   for k, p in m.named_parameters()}
    grads = net.grads()
    assert set(grads) == set(torch_grads)
    for key, value in grads.items():
        # a bias right before BN gets a zero gradient: both sides hold rounding noise there
        close = np.max(np.abs(value - torch_grads[key])) < 1e-12
        assert rel_error(value, torch_grads[key]) < 1e-10 or close, key


def random_text(rng):
    """A random net in the notation: CONV stages with BN or not, each activation (RELU,
    fused into the CONV or swapped with a max POOL in training), and pooling of each
    kind, then FC layers."""
    c, side = int(rng.integers(1, 4)), int(rng.integers(6, 14))
    items = [f"INPUT {side}x{side}x{c}"]
    for _ in range(int(rng.integers(1, 4))):
        f, s = int(rng.choice([1, 3, 5])), int(rng.choice([1, 1, 2]))
        p = int(rng.integers(0, f // 2 + 1))
        if side + 2 * p < f:
            break
        items.append(f"CONV {int(rng.integers(1, 7))} F{f} S{s} P{p} floor")
        side = (side + 2 * p - f) // s + 1
        if rng.random() < 0.4:
            items.append("BN")
        items.append(str(rng.choice(["RELU", "RELU", "TANH", "LEAKYRELU 0.2"])))
        if side >= 2 and rng.random() < 0.6:
            items.append(str(rng.choice(["POOL F2 floor", "POOL F3 S2 P1 floor",
                                         "AVGPOOL F2 floor", "POOL F2 ceil"])))
            side = {"POOL F2 floor": side // 2, "POOL F3 S2 P1 floor": (side + 1) // 2,
                    "AVGPOOL F2 floor": side // 2, "POOL F2 ceil": -(-side // 2)}[items[-1]]
        if rng.random() < 0.3:
            items.append("RELU")
    items += [f"FC {int(rng.integers(2, 9))}", str(rng.choice(["RELU", "BN -> RELU"])), "FC 3"]
    return " -> ".join(items)


@pytest.mark.parametrize("seed", range(40))
def test_random_nets_match_pytorch_in_training(seed):
    """Sequential's training pass (its fused CONV -> RELU, RELU -> max POOL run as POOL ->
    RELU, in-place RELUs) over random nets: the loss's gradients against PyTorch's, float64."""
    rng = np.random.default_rng(700 + seed)
    text = random_text(rng)
    net = build(text, dtype=np.float64, rng=rng)
    ref = to_torch(net)
    x = rng.standard_normal((int(rng.integers(2, 5)), *net.input_shape))
    xt = torch.tensor(x, requires_grad=True)
    out, out_t = net.forward(x), ref(xt)
    assert rel_error(out, out_t.detach().numpy()) < 1e-10, text
    dout = rng.standard_normal(out.shape)
    dx = net.backward(dout)
    out_t.backward(torch.tensor(dout))
    assert rel_error(dx, xt.grad.numpy()) < 1e-9, text
    torch_grads = {f"{i}.{k}": p.grad.numpy() for i, m in enumerate(ref)
                   for k, p in m.named_parameters()}
    for key, value in net.grads().items():
        close = np.max(np.abs(value - torch_grads[key])) < 1e-10   # a bias before BN: noise
        assert rel_error(value, torch_grads[key]) < 1e-9 or close, (key, text)


def test_float32_forward_matches_float64():
    a = build(TORCH_CASES[1], dtype=np.float32, rng=np.random.default_rng(7))
    b = build(TORCH_CASES[1], dtype=np.float64, rng=np.random.default_rng(7))
    for key, value in a.params().items():
        b.params()[key][...] = value                 # the same weights in both dtypes
    x = np.random.default_rng(8).standard_normal((2, *a.input_shape))
    out32 = a.forward(x.astype(np.float32))
    assert out32.dtype == np.float32
    assert rel_error(out32, b.forward(x)) < 1e-5


def test_relu_after_conv_fc_or_bn_works_in_place_and_gradients_still_match():
    """RELU overwrites the output of CONV, FC and BN (they do not keep it for backward),
    not that of a layer that does (TANH keeps its output; here it feeds a RELU)."""
    net = from_notation("INPUT 6x6x2 -> CONV 3 -> RELU -> BN -> RELU -> TANH -> RELU -> POOL "
                        "-> FC 5 -> RELU -> FC 2", dtype=np.float64,
                        rng=np.random.default_rng(0))
    relus = {i: layer.inplace for i, layer in enumerate(net) if isinstance(layer, ReLU)}
    assert relus == {1: True, 3: True, 5: False, 9: True}
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 2, 6, 6))
    dout = rng.standard_normal((3, 2))
    net.forward(x)
    dx = net.backward(dout)
    for layer in net:
        if isinstance(layer, ReLU):
            layer.inplace = False
    net.forward(x)
    assert np.allclose(net.backward(dout), dx, rtol=1e-12, atol=0)


# -- caps ----------------------------------------------------------------------------------


@pytest.mark.parametrize("text, cap", [
    ("INPUT 8x8x1 -> [[RELU]*200]*51", "the repetitions unroll to 10,200 layers"),
    ("INPUT 8x8x1 -> RELU*10001", "the count 10001 is over the cap"),
    ("INPUT 8x8x1 -> " + "[" * 33 + "RELU" + "]" * 33, "brackets nested deeper than 32"),
    ("INPUT 100000x100000x3 -> RELU", "over the cap of 268,435,456"),
    ("INPUT 32x32x3 -> CONV 999999999", "parameters 27,999,999,972 is over the cap"),
    ("INPUT 32x32x3 -> FC 999999999999", "Linear with weight (999999999999, 3072)"),
    ("INPUT 16384x16384x1 -> CONV 2", "its output 16384x16384x2"),
    ("INPUT 8x8x1 -> POOL F2 S9999", "stride must be at most 8,192"),
])
def test_caps_are_named_errors_before_anything_is_allocated(text, cap):
    msg = error(text)
    assert cap in msg and "convnet.limits." in msg, msg


def test_caps_are_read_when_the_text_is_built(monkeypatch):
    from convnet import limits
    text = "INPUT 8x8x1 -> [[RELU]*200]*51"
    monkeypatch.setattr(limits, "MAX_LAYERS", 10_200)
    assert len(build(text)) == 10_200
    monkeypatch.setattr(limits, "MAX_PARAMS", 150)       # FC 10: 50, then 110 parameters
    msg = error("INPUT 4 -> FC 10 -> FC 10")
    assert "model[1]" in msg and "the model's total of parameters 160 is over the cap" in msg


def test_an_error_in_a_long_line_shows_a_window_around_the_caret():
    text = "INPUT 8x8x1 -> " + "RELU -> " * 500 + "CONVV -> " + "RELU -> " * 500 + "RELU"
    msg = error(text)
    line, carets = msg.split("\n")[1:3]
    assert len(line) < 1100 and carets.strip() == "^" * len("CONVV")
    start = carets.index("^")
    assert line[start:start + len("CONVV")] == "CONVV"


@pytest.mark.parametrize("text", ["INPUT 8x8x1 -> [RELU] ", "INPUT 8x8x1 -> [[RELU] "])
def test_a_long_word_after_a_group_is_cut_short_in_the_message(text):
    """Two messages copied the whole word, and a repetition hint ("x..." read as a
    times sign) copied it again: a word of 1,000,000 characters made a 2 MB message."""
    msg = error(text + "x" * 1_000_000)
    assert len(msg) < 3000 and "(1,000,000 characters)" in msg


def test_a_count_name_is_ascii_as_count_takes_it():
    """'Né' was a name the parser took but --count NAME=N refused."""
    assert "'*' must be followed by a count" in error("INPUT 8x8x1 -> [RELU]*Né -> FC 2")


@pytest.mark.parametrize("before, after", [(121, 0), (400, 400), (0, 0)])
@pytest.mark.parametrize("space", [" ", "\x0b\x0c", "\t\x1c\x1d\x1e", "\u00a0"])
def test_the_command_lines_carets_stay_under_the_layer(capsys, before, after, space):
    """The command line cuts lines over 1,000 characters in the middle, and escapes what
    is not printable: the window had been 1,000 wide, so a text of about 1,000 had its
    bad word cut out, and control whitespace had pushed the text right of its carets."""
    from convnet.cli import main
    text = ("INPUT 8x8x1" + space + "-> " + "RELU -> " * before + "RELU" + space
            + "-> CONVV 4" + " -> RELU" * after + " -> FC 10")
    assert main(["summary", text]) == 1
    line, carets = capsys.readouterr().err.split("\n")[1:3]
    start = carets.index("^")
    assert line[start:start + 6] == "CONVV " and carets[start:] == "^" * 5, (line, carets)


def test_the_notes_own_spellings():
    """The notes write options as F=7, P=0, S=1, and an input as INPUT [32x32x3]: the first
    is read, the second says how to write it."""
    net = build("INPUT 32x32x3 -> CONV 8 F=5 S=1 P=2 -> POOL F=2 S=2 -> FC 10")
    assert (net[0].kernel_size, net[0].stride, net[0].padding) == ((5, 5), (1, 1), (2, 2))
    assert net.output_shape(net.input_shape) == (10,)
    assert "F must be" in error("INPUT 8x8x3 -> CONV 4 F= -> FC 2")
    # and the bare numbers by their names: K=4096, n=10, p=0.5
    named = build("INPUT 8x8x1 -> CONV K=4 F=3 S=1 P=1 -> DROPOUT p=0.3 -> LRN alpha=1e-3 3 "
                  "-> FC n=10")
    assert [repr(layer) for layer in named] == [
        "Conv2d(K=4, F=3, S=1, P=1)", "Dropout(p=0.3)",
        "LocalResponseNorm(n=3, alpha=0.001, beta=0.75, k=2)", "Flatten()",
        "Linear(in=256, out=10)"]
    assert build("INPUT size=8x8x1 -> FC 2").input_shape == (1, 8, 8)
    assert "K is given twice" in error("INPUT 8x8x1 -> CONV 4 K=4 -> FC 10")
    assert "K must be a positive int" in error("INPUT 8x8x1 -> CONV K=x -> FC 10")


@pytest.mark.parametrize("name", ["text", "input_shape", "optional", "dtype", "rng"])
def test_a_count_named_like_an_argument_of_from_notation_is_bound_by_bind_counts(name):
    from convnet.models import bind_counts
    text = f"INPUT 8x8x1 -> [CONV 4]*{name} -> FC 10"
    assert f"from_notation(bind_counts(text, {{'{name}': 2}}))" in error(text)
    assert len(build(bind_counts(text, {name: 2}))) == 4


def test_too_many_pools_get_the_formula_and_a_fix():
    msg = error("INPUT 8x8x1 -> [CONV 8 -> RELU -> POOL]*4 -> FC 10")
    assert "model[11] = 'POOL'" in msg and "got 1x1x8" in msg
    assert ("(H - F + 2P)/S + 1 = (1 - 2 + 2*0)/2 + 1 = 0.5 is below 1. Fix: a larger "
            "input along H (or fewer layers before this one that shrink it), F <= 1, or "
            "more padding") in msg
    # a dilated window's extent, and no more padding where the layer takes no more
    assert "D*(F-1)+1 (a smaller F or D) <= 5, or more padding" in error(
        "INPUT 5x5x1 -> CONV 2 F3 D4 P0 -> FC 2")
    assert "D*(F-1)+1 (a smaller F or D) <= 5\n" in error("INPUT 3x3x1 -> POOL F3 D3 P1 -> FC 2")
    assert "<= 2\n" in error("INPUT 2x2x1 -> POOL F3 S1 D2 -> FC 2")   # P=1 would not do
    assert "F <= 8\n" in error("INPUT 8x8x1 -> L2POOL F9 -> FC 10")   # it takes no padding


def test_symbols_copied_from_typeset_notes():
    """The notes write volumes as 32×32×3: read as 32x32x3. A dash-arrow (–>, −>) or a
    repetition with a times sign ([...]×2) had been refused as an argument, with no hint."""
    net = build("INPUT 8×8×1 -> CONV 4 F3×1 -> FC 10")
    assert net.input_shape == (1, 8, 8) and net[0].kernel_size == (3, 1)
    for text, bad, hint in [
            ("INPUT 8x8x1 -> CONV 4 –> FC 10", "–>", "'–' (U+2013) is an en dash: write "
                                                     "the arrow as '->'"),
            ("INPUT 8x8x1 -> [CONV 4] −> FC 10", "−>", "(U+2212) is a minus sign"),
            ("INPUT 8x8x1 -> [CONV 4]×2 -> FC 10", "×2", "a repetition is written with "
                                                          "'*': *2"),
            ("INPUT 8x8x1 -> [CONV 4]xN -> FC 10", "xN", "written with '*': *N"),
            ("INPUT 8x8x1 -> CONV 4 x2 -> FC 10", "x2", "written with '*': *2"),
            ("INPUT 8x8x1 -> [[CONV 8 -> RELU]x2 -> POOL]*2 -> FC 10", "x2",   # inside
             "written with '*': *2"),
            ("INPUT 8x8x1 -> CONV 8–>FC 10", "8–>FC", "is an en dash"),      # no spaces
            ("INPUT 8x8x1 -> RELU—>FC 10", "RELU—>FC", "is an em dash"),
            ("INPUT 8x8x1 -> CONV 4 F3–>RELU -> FC 10", "F3–>RELU", "is an en dash"),
            ("INPUT size=8x8x1–>FC 10", "size=8x8x1–>FC", "is an en dash")]:
        msg = error(text)
        assert hint in msg and caret_column(msg) == text.index(bad) + 1, msg


def test_a_word_starting_with_x_is_no_repetition():
    msg = error("INPUT 8x8x1 -> CONV 4 xavier -> FC 2")
    assert "repetition" not in msg and "CONV does not take 'xavier'; it takes K" in msg


def test_a_text_whose_only_arrows_are_dashes_is_named_as_such(capsys):
    from convnet.cli import main
    assert main(["summary", "INPUT 8x8x1 –> FC 10"]) == 1
    assert "its arrows are written with '–' (U+2013), not the hyphen-minus of '->'" in (
        capsys.readouterr().err)
    assert "the size follows INPUT without brackets: INPUT 32x32x3" in error(
        "INPUT [32x32x3] -> CONV 8 -> FC 10")


def test_the_command_lines_help_gives_the_grammar(capsys):
    """summary and train --help carry the notation's grammar: every keyword, and the
    example in it builds."""
    from convnet import cli
    from convnet.models.notation import KEYWORDS
    for keyword in KEYWORDS:
        assert re.search(rf"\b{keyword}\b", cli.NOTATION_HELP), keyword
    example = re.search(r"E\.g\. '([^']+)'", cli.NOTATION_HELP)[1]
    assert build(example).output_shape((3, 32, 32)) == (10,)
    for command in ("summary", "train"):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        assert "Arrow notation (the notes')" in capsys.readouterr().out
