"""PyTorch's module API on convnet's layers and models, each behaviour checked against
torch.nn doing the same: Sequential's list methods, named_parameters() and kin,
load_state_dict's result and errors, and the constructor options PyTorch accepts
(forward and backward in float64, over several shapes)."""

import inspect
from collections import OrderedDict

import numpy as np
import pytest
import torch

from convnet.io.weights import load_model, save_model
from convnet.layers import (
    AdaptiveAvgPool2d,
    AdaptiveMaxPool2d,
    BatchNorm2d,
    Conv2d,
    Dropout,
    Dropout2d,
    Flatten,
    Identity,
    LeakyReLU,
    Linear,
    ReLU,
    Tanh,
)
from convnet.layers.base import IncompatibleKeys, StateDictError
from convnet.models import Sequential, conv_to_fc, from_config, from_notation
from tests.torch_models import to_torch
from tests.utils import check_layer_grads, rel_error

F64 = dict(dtype=np.float64)


def small_net(rng):
    """features (CONV, BN, RELU, POOL) and a classifier (FC, RELU, DROPOUT, FC), as
    torchvision names them; float64."""
    return Sequential({
        "features": Sequential(Conv2d(2, 3, 3, padding=1, rng=rng, **F64), BatchNorm2d(3, **F64),
                               ReLU(), AdaptiveAvgPool2d(2)),
        "flatten": Flatten(),
        "classifier": Sequential(Linear(12, 8, rng=rng, **F64), ReLU(), Dropout(0.5),
                                 Linear(8, 5, rng=rng, **F64))})


def torch_twin(model):
    """The same net in torch.nn (nested Sequentials by the same names), weights copied."""
    def twin(layer):
        if isinstance(layer, Sequential):
            return torch_twin(layer)
        if isinstance(layer, AdaptiveAvgPool2d):
            return torch.nn.AdaptiveAvgPool2d(layer.output_size)
        return to_torch(layer)
    return torch.nn.Sequential(OrderedDict(
        (key, twin(child)) for key, child in model.named_children()))


def grads_match(ours, theirs, dx, x_torch, tol=1e-12):
    """Our dx and parameter gradients (in order) against torch's after its backward."""
    assert rel_error(dx, x_torch.grad.numpy()) < tol
    grads = ours.grads() if callable(ours.grads) else ours.grads
    expected = [p.grad.numpy() for p in theirs.parameters()]
    assert len(grads) == len(expected)
    for (key, g), tg in zip(grads.items(), expected):
        np.testing.assert_allclose(g, tg, rtol=tol, atol=tol, err_msg=key)


def run_both(ours, theirs, x, rng, tol=1e-12):
    """Forward and backward of both in training mode on x; outputs and gradients agree."""
    ours.train()
    theirs.train()
    xt = torch.tensor(x, requires_grad=True)
    out_t = theirs(xt)
    out = ours.forward(x.copy())
    assert out.shape == tuple(out_t.shape)
    assert rel_error(out, out_t.detach().numpy()) < tol
    dout = rng.standard_normal(out.shape)
    out_t.backward(torch.tensor(dout))
    grads_match(ours, theirs, ours.backward(dout), xt, tol)
    return out


# -- Sequential as a list: setitem, del, pop, append, insert, extend ------------------------

def test_setitem_replaces_a_child_in_place_as_torch():
    rng = np.random.default_rng(0)
    model = small_net(rng)
    theirs = torch_twin(model)
    new_head = Linear(8, 10, rng=rng, **F64)
    model.classifier[3] = new_head                     # torchvision's classifier[6] = ...
    theirs.classifier[3] = to_torch(new_head)
    model["classifier"][-2] = Dropout(0.0)             # negative, through __getitem__ too
    theirs.classifier[-2] = torch.nn.Dropout(0.0)
    new_relu = ReLU()
    model.classifier["1"] = new_relu                   # by name
    theirs.classifier[1] = torch.nn.ReLU()
    assert list(model.state_dict()) == list(theirs.state_dict())
    assert model.classifier[3] is new_head and new_head.name == "classifier.3"
    assert model.classifier[1] is new_relu and new_relu.name == "classifier.1"
    x = rng.standard_normal((3, 2, 5, 5))
    run_both(model, theirs, x, rng)


def test_setitem_refuses_what_torch_refuses_and_what_convnet_must():
    model = Sequential(ReLU(), Tanh())
    with pytest.raises(IndexError, match="index 2 is out of range for its 2 children"):
        model[2] = ReLU()
    with pytest.raises(KeyError, match="no child named 'head'"):
        model["head"] = ReLU()
    with pytest.raises(ValueError, match="^Sequential: child '0' must be a Layer, got int"):
        model[0] = 5
    with pytest.raises(ValueError, match="one ReLU\\(\\) object is at both"):
        model[1] = model[0]                            # one object at two places
    with pytest.raises(TypeError, match="assign one child at a time"):
        model[0:1] = ReLU()
    assert [type(layer) for layer in model] == [ReLU, Tanh]      # nothing changed


@pytest.mark.parametrize("n", [3, 5])
def test_append_extend_pop_as_torch(n):
    """A Sequential of numbered layers: append, extend and popping the last give torch's
    names and state-dict keys, and the same forward and backward."""
    rng = np.random.default_rng(n)
    sizes = rng.integers(2, 6, n + 3)
    layers = [Linear(int(a), int(b), rng=rng, **F64) for a, b in zip(sizes, sizes[1:])]
    model = Sequential(*layers[:n - 1])
    theirs = torch.nn.Sequential(*[to_torch(layer) for layer in layers[:n - 1]])
    assert model.append(layers[n - 1]) is model
    theirs.append(to_torch(layers[n - 1]))
    model.extend(Sequential(*layers[n:n + 2]))
    theirs.extend(torch.nn.Sequential(*[to_torch(layer) for layer in layers[n:n + 2]]))
    popped = model.pop(-1)
    theirs.pop(-1)
    assert popped is layers[n + 1] and popped.name is None
    assert [k for k, _ in model.named_children()] == [k for k, _ in theirs.named_children()]
    assert [layer.name for layer in model] == [str(i) for i in range(len(model))]
    assert list(model.state_dict()) == list(theirs.state_dict())
    run_both(model, theirs, rng.standard_normal((4, int(sizes[0]))), rng)


def test_del_and_insert_number_the_children_again_as_torch():
    """Children named by position are numbered again after del and insert, as torch
    numbers them: the names and state-dict keys stay torch's."""
    rng = np.random.default_rng(1)
    model = Sequential(*[Linear(4, 4, rng=rng, **F64) for _ in range(4)])
    theirs = torch.nn.Sequential(*[to_torch(layer) for layer in model])

    def same_names():
        assert [k for k, _ in model.named_children()] == [k for k, _ in theirs.named_children()]
        assert [layer.name for layer in model] == [k for k, _ in model.named_children()]
        assert list(model.state_dict()) == list(theirs.state_dict())
    removed = model[1]
    del model[1]
    del theirs[1]
    same_names()
    assert removed.name is None
    model.insert(-1, Tanh())                  # before the last, as torch's insert(-1, ...)
    theirs.insert(-1, torch.nn.Tanh())
    same_names()
    assert [type(m).__name__ for m in model] == [type(m).__name__ for m in theirs]
    model.append(ReLU())
    theirs.append(torch.nn.ReLU())
    del model[1:3]
    del theirs[1:3]
    same_names()
    part = model.pop(slice(0, 1))
    assert isinstance(part, Sequential) and part[0].name == "0" and len(model) == 2
    model.insert(0, part[0])
    assert [k for k, _ in model.named_children()] == ["0", "1", "2"]
    with pytest.raises(IndexError, match="index 4 is out of range"):
        model.insert(4, ReLU())
    with pytest.raises(ValueError, match="must be a Layer"):
        model.append("relu")
    theirs = torch.nn.Sequential(*[to_torch(layer) for layer in model])
    run_both(model, theirs, rng.standard_normal((3, 4)), rng)


def test_del_and_insert_keep_the_names_of_named_children():
    """Named children (a stage's name is its state-dict keys) keep their names; a new
    one takes the next free integer name, from str(len(model)) on as torch's append."""
    model = Sequential({"a": ReLU(), "b": Tanh(), "c": ReLU()})
    del model["b"]
    assert [k for k, _ in model.named_children()] == ["a", "c"]
    model.insert(1, Tanh())
    model.append(ReLU())
    assert [k for k, _ in model.named_children()] == ["a", "2", "c", "3"]
    assert model["2"].name == "2"


def test_del_by_name_in_a_named_model():
    model = small_net(np.random.default_rng(2))
    del model["flatten"]
    assert [k for k, _ in model.named_children()] == ["features", "classifier"]
    assert model.classifier[0].name == "classifier.0"


# -- the module API: children, modules, parameters, buffers ---------------------------------

def test_children_modules_parameters_and_buffers_as_torch():
    rng = np.random.default_rng(3)
    model = small_net(rng)
    theirs = torch_twin(model)
    # children() yields the layers themselves, named_children() the pairs
    assert [type(c) for c in model.children()] == [Sequential, Flatten, Sequential]
    assert [k for k, _ in model.named_children()] == [k for k, _ in theirs.named_children()]
    assert all(a is b for (_, a), b in zip(model.named_children(), model.children()))
    assert inspect.isgenerator(model.children()) and inspect.isgenerator(model.parameters())
    # named_modules: self first with name "", then depth first, torch's names
    names = [name for name, _ in model.named_modules()]
    assert names == [name for name, _ in theirs.named_modules()]
    assert next(model.modules()) is model and len(list(model.modules())) == len(names)
    assert [name for name, _ in model.named_modules(prefix="net")][:2] == [
        name for name, _ in theirs.named_modules(prefix="net")][:2] == ["net", "net.features"]
    # parameters: the state dict's keys, the layers' own arrays
    named = dict(model.named_parameters())
    assert list(named) == [k for k, _ in theirs.named_parameters()]
    assert all(value is model.state_dict()[key] for key, value in named.items())
    assert sum(p.size for p in model.parameters()) == model.num_params()
    assert [k for k, _ in model.named_buffers()] == [k for k, _ in theirs.named_buffers()]
    assert list(model.state_dict()) == list(theirs.state_dict())
    # a leaf layer: its own arrays, no children; recurse=False on a container: nothing
    conv = model.features[0]
    assert [k for k, _ in conv.named_parameters()] == ["weight", "bias"]
    assert next(conv.parameters()) is conv.weight and list(conv.children()) == []
    assert [name for name, _ in conv.named_modules()] == [""]
    assert list(model.named_parameters(recurse=False)) == []
    bn = model.features[1]
    assert [k for k, _ in bn.named_buffers(prefix="bn")] == [
        k for k, _ in theirs.features[1].named_buffers(prefix="bn")]
    # the arrays are the model's: a change through parameters() is seen by forward
    for p in model.parameters():
        p[...] = 0
    assert not model.features[0].weight.any()


@pytest.mark.parametrize("method", ["children", "named_children", "modules", "named_modules",
                                    "parameters", "named_parameters", "named_buffers"])
def test_module_api_methods_take_torch_arguments(method):
    """The methods' arguments are torch.nn.Module's, in its order, with its defaults."""
    def arguments(function):
        return [(p.name, p.default) for p in inspect.signature(function).parameters.values()]
    assert arguments(getattr(Sequential(ReLU()), method)) == arguments(
        getattr(torch.nn.Sequential(), method))
    assert arguments(getattr(ReLU(), method)) == arguments(getattr(torch.nn.ReLU(), method))


# -- load_state_dict: IncompatibleKeys, errors both ValueError and RuntimeError -------------

def test_load_state_dict_returns_incompatible_keys_as_torch():
    rng = np.random.default_rng(4)
    model = small_net(rng)
    theirs = torch_twin(model)
    state = {k: v.copy() for k, v in model.state_dict().items()}
    state.pop("classifier.3.bias")
    state["extra.weight"] = np.zeros(3)
    result = model.load_state_dict(state, strict=False)
    expected = theirs.load_state_dict({k: torch.tensor(v) for k, v in state.items()},
                                      strict=False)
    assert isinstance(result, IncompatibleKeys) and isinstance(result, tuple)
    assert result.missing_keys == expected.missing_keys == ["classifier.3.bias"]
    assert result.unexpected_keys == expected.unexpected_keys == ["extra.weight"]
    missing, unexpected = result
    assert (missing, unexpected) == (["classifier.3.bias"], ["extra.weight"])
    matched = model.load_state_dict(model.state_dict())
    assert matched == ([], []) and repr(matched) == repr(
        theirs.load_state_dict(theirs.state_dict()))   # <All keys matched successfully>


@pytest.mark.parametrize("change", ["missing", "unexpected", "shape"])
def test_load_state_dict_errors_are_runtime_errors_and_value_errors(change):
    rng = np.random.default_rng(5)
    model = small_net(rng)
    theirs = torch_twin(model)
    state = {k: v.copy() for k, v in model.state_dict().items()}
    if change == "missing":
        del state["features.0.weight"]
    elif change == "unexpected":
        state["head.weight"] = np.zeros(2)
    else:
        state["classifier.3.weight"] = np.zeros((2, 8))
    with pytest.raises(RuntimeError):                  # what torch raises
        theirs.load_state_dict({k: torch.tensor(v) for k, v in state.items()})
    with pytest.raises(RuntimeError, match="load_state_dict"):
        model.load_state_dict(state)
    with pytest.raises(ValueError, match="load_state_dict") as info:
        model[2].load_state_dict(state)                # a container below the model too
    assert isinstance(info.value, StateDictError)
    leaf = model.classifier[3]
    with pytest.raises(StateDictError):
        leaf.load_state_dict({"weight": np.zeros((1, 1)), "bias": leaf.bias})


# -- constructor options PyTorch accepts ----------------------------------------------------

@pytest.mark.parametrize("ours, theirs", [
    (LeakyReLU, torch.nn.LeakyReLU), (Dropout, torch.nn.Dropout),
    (Dropout2d, torch.nn.Dropout2d), (Flatten, torch.nn.Flatten), (Conv2d, torch.nn.Conv2d),
    (Identity, torch.nn.Identity)])
def test_torch_positional_arguments_are_ours_in_the_same_order(ours, theirs):
    """torch's arguments (but device and dtype, where convnet has its own dtype), in its
    order, are the leading arguments of ours, with the same defaults."""
    def arguments(cls):
        return [p for p in inspect.signature(cls).parameters.values()
                if p.name not in ("device", "dtype") and p.kind != p.KEYWORD_ONLY]
    mine, torch_args = arguments(ours), arguments(theirs)
    assert [p.name for p in mine[:len(torch_args)]] == [p.name for p in torch_args]
    for a, b in zip(mine, torch_args):
        assert a.kind == b.kind and a.default == b.default, (a, b)


def test_identity_ignores_its_arguments_as_torch():
    layer = Identity(54, unused_argument1=0.1, unused_argument2=False)
    x = np.random.default_rng(6).standard_normal((2, 3))
    assert layer(x) is x and layer.backward(x) is x
    assert from_config(layer.get_config()).get_config() == {"type": "Identity"}


@pytest.mark.parametrize("shape", [(5,), (2, 7), (3, 2, 4, 4)])
@pytest.mark.parametrize("slope", [0.01, 0.3, -0.5])
def test_leaky_relu_inplace_as_torch(shape, slope):
    rng = np.random.default_rng(len(shape))
    x = rng.standard_normal(shape)
    x[..., 0] = 0.0                                    # the kink: the slope's gradient
    layer = LeakyReLU(slope, True)
    assert layer.inplace and layer.negative_slope == slope
    xt = torch.tensor(x, requires_grad=True)
    out_t = torch.nn.LeakyReLU(slope)(xt)
    given = x.copy()
    out = layer.forward(given)
    np.testing.assert_array_equal(out, out_t.detach().numpy())
    np.testing.assert_array_equal(given, x)            # training: the input is kept
    dout = rng.standard_normal(shape)
    out_t.backward(torch.tensor(dout))
    np.testing.assert_array_equal(layer.backward(dout), xt.grad.numpy())
    assert layer.infer(given) is given                 # inference: written into its input
    np.testing.assert_array_equal(given, out)
    assert repr(layer) == f"LeakyReLU({slope:g}, inplace=True)"
    with pytest.raises(ValueError, match="inplace=True needs a writeable input"):
        x.flags.writeable = False
        layer.infer(x)


def test_leaky_relu_inplace_after_tanh_keeps_tanhs_gradient():
    """In place in training, the slope had rewritten the output Tanh keeps for its
    backward pass: dx was wrong by 0.026 (PyTorch refuses that graph)."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((4, 6))
    dout = rng.standard_normal((4, 5))
    grads = []
    for inplace in (False, True):
        model = Sequential(Linear(6, 5, rng=np.random.default_rng(0), **F64), Tanh(),
                           LeakyReLU(0.1, inplace=inplace))
        model.forward(x)
        grads.append(model.backward(dout))
    np.testing.assert_array_equal(grads[0], grads[1])


@pytest.mark.parametrize("cls", [Dropout, Dropout2d])
def test_dropout_takes_torch_positional_inplace(cls):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4, 3, 5, 5))
    layer = cls(0.25, True, rng=np.random.default_rng(0))
    assert layer.p == 0.25 and layer.inplace
    out = layer.forward(x)
    kept = out != 0
    np.testing.assert_allclose(out[kept], x[kept] / 0.75, rtol=1e-15)
    dout = rng.standard_normal(x.shape)
    np.testing.assert_allclose(layer.backward(dout), dout * kept / 0.75, rtol=1e-15)
    assert torch.nn.Dropout(0.25, True).inplace       # torch's positional order
    with pytest.raises(ValueError, match=f"^{cls.__name__}: inplace must be True or False"):
        cls(0.5, np.random.default_rng(0))            # rng is keyword only
    assert cls(0.5).eval().forward(x) is x


@pytest.mark.parametrize("shape, start, end", [
    ((2, 3, 4, 5), 1, -1), ((2, 3, 4, 5), 1, 2), ((2, 3, 4, 5), 2, 3), ((2, 3, 4, 5), -3, -2),
    ((2, 3, 4, 5), -1, -1), ((3, 2, 6), 1, 1), ((2, 3, 4, 5, 2), 2, -2), ((4, 6), -1, -1)])
def test_flatten_start_and_end_dim_as_torch(shape, start, end):
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape)
    layer = Flatten(start, end)
    xt = torch.tensor(x, requires_grad=True)
    out_t = torch.nn.Flatten(start, end)(xt)
    out = layer.forward(x)
    np.testing.assert_array_equal(out, out_t.detach().numpy())
    assert layer.output_shape(shape[1:]) == tuple(out_t.shape[1:])
    dout = rng.standard_normal(out.shape)
    out_t.backward(torch.tensor(dout))
    np.testing.assert_array_equal(layer.backward(dout), xt.grad.numpy())
    assert from_config(layer.get_config()).get_config() == layer.get_config()


def test_flatten_refuses_the_batch_axis_and_crossed_dims():
    with pytest.raises(ValueError, match="start_dim=-4 needs an input with at least 5 axes"):
        Flatten(-4).forward(np.zeros((2, 3, 4, 5)))
    with pytest.raises(ValueError, match="start_dim=-2, end_dim=1 puts start_dim after "
                                         "end_dim"):
        Flatten(-2, 1).forward(np.zeros((2, 3, 4, 5)))
    with pytest.raises(ValueError, match="^Flatten: start_dim=3 comes after end_dim=2"):
        Flatten(3, 2)
    with pytest.raises(ValueError, match="^Flatten: end_dim must be an int"):
        Flatten(1, 0)


CONV_CASES = [
    # in, out, kernel, stride, padding, dilation, groups, padding_mode
    (2, 3, 4, 1, "same", 1, 1, "zeros"),
    (2, 4, (2, 3), 1, "same", (1, 2), 2, "zeros"),
    (3, 2, (4, 1), 1, "same", 1, 1, "reflect"),
    (2, 3, 3, 1, "same", 2, 1, "replicate"),
    (2, 3, 2, 1, "same", 1, 1, "circular"),
    (2, 3, 3, 2, 1, 1, 1, "reflect"),
    (2, 3, 3, 1, (2, 1), 1, 1, "replicate"),
    (2, 2, 3, (2, 1), (1, 2), 1, 2, "circular"),
    (2, 3, 3, 2, "valid", 1, 1, "zeros"),
    (2, 3, 3, 1, "valid", 1, 1, "reflect"),
]


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")   # torch's
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"{c[4]}-{c[7]}-F{c[2]}")
@pytest.mark.parametrize("size", [(6, 7), (5, 5)])
def test_conv_padding_options_as_torch(case, size):
    """padding "valid" and "same" (an even extent: the odd pixel after), padding_mode:
    forward, backward (dx, dw, db) and inference equal torch's, alone and with the RELU
    that Sequential fuses into the CONV."""
    c, k, f, s, p, d, g, mode = case
    rng = np.random.default_rng(CONV_CASES.index(case) * 10 + size[0])
    conv = Conv2d(c, k, f, s, p, d, g, padding_mode=mode, fit="floor", rng=rng, **F64)
    theirs = torch.nn.Conv2d(c, k, f, s, p, d, g, padding_mode=mode, dtype=torch.float64)
    with torch.no_grad():
        theirs.weight.copy_(torch.tensor(conv.weight))
        theirs.bias.copy_(torch.tensor(conv.bias))
    x = rng.standard_normal((2, c, *size))
    out = run_both(conv, theirs, x, rng)
    assert conv.output_shape(x.shape[1:]) == out.shape[1:]
    np.testing.assert_allclose(conv.infer(x), out, rtol=1e-12, atol=1e-12)
    fused, fused_t = Sequential(conv, ReLU()), torch.nn.Sequential(theirs, torch.nn.ReLU())
    for m in (conv, theirs):
        m.zero_grad()
    run_both(fused, fused_t, x, rng)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")   # torch's
@pytest.mark.parametrize("seed", range(150))
def test_conv_padding_modes_as_torch_over_random_hyperparameters(seed):
    """Every padding_mode, "same" with even or dilated extents and explicit pads up to
    each mode's limit (reflect: the side less one; circular: the side), with stride,
    dilation and groups drawn at random: forward and backward equal torch's."""
    rng = np.random.default_rng(seed)
    mode = str(rng.choice(["zeros", "reflect", "replicate", "circular"]))
    g = int(rng.choice([1, 2]))
    c, k = g * int(rng.integers(1, 3)), g * int(rng.integers(1, 3))
    f = (int(rng.integers(1, 5)), int(rng.integers(1, 5)))
    d = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
    h, w = int(rng.integers(2, 9)), int(rng.integers(2, 9))
    if rng.random() < 0.4:
        s, p = (1, 1), "same"
        if mode == "reflect":         # "same" pads up to D*(F-1) on a side: keep it < side
            h, w = max(h, d[0] * (f[0] - 1) + 1), max(w, d[1] * (f[1] - 1) + 1)
    else:
        s = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
        limit = {"reflect": (h - 1, w - 1), "circular": (h, w)}.get(mode, (3, 3))
        p = (int(rng.integers(0, limit[0] + 1)), int(rng.integers(0, limit[1] + 1)))
        # the dilated filter must fit the padded input
        h = max(h, d[0] * (f[0] - 1) + 1 - 2 * p[0])
        w = max(w, d[1] * (f[1] - 1) + 1 - 2 * p[1])
    conv = Conv2d(c, k, f, s, p, d, g, padding_mode=mode, fit="floor", rng=rng, **F64)
    theirs = torch.nn.Conv2d(c, k, f, s, p, d, g, padding_mode=mode, dtype=torch.float64)
    with torch.no_grad():
        theirs.weight.copy_(torch.tensor(conv.weight))
        theirs.bias.copy_(torch.tensor(conv.bias))
    x = rng.standard_normal((2, c, h, w))
    run_both(conv, theirs, x, rng, tol=1e-10)


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("kwargs", [dict(kernel_size=3, padding=2),
                                    dict(kernel_size=(2, 4), padding="same"),
                                    dict(kernel_size=3, stride=2, padding=(1, 2))],
                         ids=["P2", "same-even", "S2"])
def test_conv_padding_modes_gradient_check(mode, kwargs):
    """pad2d's backward (each mode's padded pixels added back where they came from),
    through the Conv2d layer, against central differences in float64."""
    rng = np.random.default_rng(0)
    conv = Conv2d(2, 3, padding_mode=mode, fit="floor", rng=rng, **F64, **kwargs)
    errors = check_layer_grads(conv, rng.standard_normal((2, 2, 5, 6)))
    assert max(errors.values()) < 1e-7, errors


def test_conv_padding_options_refused_as_torch():
    with pytest.raises(ValueError, match="padding_mode must be one of 'zeros', 'reflect', "
                                         "'replicate', 'circular', got 'mirror'"):
        Conv2d(3, 8, 3, padding_mode="mirror")
    with pytest.raises(ValueError, match="padding must be .* 'valid' or 'same', got 'full'"):
        Conv2d(3, 8, 3, padding="full")
    with pytest.raises(ValueError, match="keeps the size only at stride 1.*D\\*\\(F-1\\) = 3x3 "
                                         "is odd"):
        Conv2d(3, 8, 4, stride=2, padding="same")
    for mode, pad, message in (("reflect", 3, "pads less than the input's side, got padding "
                                              r"3, 3 for H=3 in volume \(1, 3, 3\)"),
                               ("circular", 4, "pads at most the input's side")):
        conv = Conv2d(1, 1, 3, padding=pad, padding_mode=mode)
        with pytest.raises(ValueError, match=message):
            conv.output_shape((1, 3, 3))
        with pytest.raises(ValueError, match=message):   # a batch of 2: the same volume
            conv.forward(np.zeros((2, 1, 3, 3), np.float32))
        with pytest.raises(RuntimeError):              # torch refuses them too
            torch.nn.Conv2d(1, 1, 3, padding=pad, padding_mode=mode)(torch.zeros(1, 1, 3, 3))
    with pytest.raises(ValueError, match="conv_to_fc: .*padding_mode='reflect'"):
        conv_to_fc(Conv2d(1, 1, 3, padding=1, padding_mode="reflect"), (1, 4, 4))


def test_conv_same_padding_of_an_even_kernel_converts_to_fc_and_builds_from_notation():
    rng = np.random.default_rng(8)
    conv = Conv2d(2, 3, 4, padding="same", rng=rng, **F64)
    x = rng.standard_normal((2, 2, 5, 6))
    fc = conv_to_fc(conv, (2, 5, 6))
    np.testing.assert_allclose(fc.forward(x.reshape(2, -1)), conv.forward(x).reshape(2, -1),
                               rtol=1e-12, atol=1e-12)
    net = from_notation("INPUT 8x8x3 -> CONV 4 F4 Psame")
    assert net.output_shape((3, 8, 8)) == (4, 8, 8) and net[0].pads == (1, 1, 2, 2)


@pytest.mark.parametrize("output_size, size", [
    ((None, 3), (5, 7)), ((4, None), (9, 6)), ((None, None), (3, 4)), ([2, None], (7, 7))])
@pytest.mark.parametrize("cls", [AdaptiveAvgPool2d, AdaptiveMaxPool2d])
def test_adaptive_pool_none_keeps_the_input_side_as_torch(cls, output_size, size):
    rng = np.random.default_rng(sum(size))
    x = rng.standard_normal((2, 3, *size))
    layer = cls(output_size)
    xt = torch.tensor(x, requires_grad=True)
    out_t = getattr(torch.nn, cls.__name__)(output_size)(xt)
    out = layer.forward(x)
    np.testing.assert_allclose(out, out_t.detach().numpy(), rtol=1e-12, atol=1e-15)
    assert layer.output_shape(x.shape[1:]) == tuple(out_t.shape[1:])
    dout = rng.standard_normal(out.shape)
    out_t.backward(torch.tensor(dout))
    np.testing.assert_allclose(layer.backward(dout), xt.grad.numpy(), rtol=1e-12, atol=1e-15)
    rebuilt = from_config(layer.get_config())
    assert rebuilt.output_size == tuple(output_size)
    np.testing.assert_array_equal(rebuilt.forward(x), out)


@pytest.mark.parametrize("shape", [(4,), (3, 4), (2, 3, 4), (2, 1, 3, 4)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_on_any_leading_axes_as_torch(shape, bias):
    rng = np.random.default_rng(len(shape) + bias)
    layer = Linear(4, 5, bias=bias, rng=rng, **F64)
    theirs = to_torch(layer)
    x = rng.standard_normal(shape)
    out = run_both(layer, theirs, x, rng)
    assert out.shape == (*shape[:-1], 5)
    assert layer.output_shape(shape[1:] or (4,)) == (*shape[1:-1], 5)
    assert layer.macs(shape[1:] or (4,)) == int(np.prod(shape[1:-1])) * 20
    with pytest.raises(ValueError, match="expected in_features=4 features in the last axis"):
        layer.forward(rng.standard_normal((*shape[:-1], 3)))


# -- the new options saved, loaded and exported ---------------------------------------------

def options_net(rng, circular=False):
    """One layer for each new option (a circular padding first on request), float32;
    input (2, 7, 6), output (12, 2)."""
    first = [Conv2d(2, 2, 3, padding=1, padding_mode="circular", rng=rng)] if circular else []
    return Sequential(
        *first, Conv2d(2, 3, 4, padding="same", rng=rng),
        Conv2d(3, 3, 3, padding=1, padding_mode="reflect", rng=rng),
        Conv2d(3, 4, 3, padding=(2, 1), padding_mode="replicate", rng=rng),
        Conv2d(4, 4, (4, 1), padding="valid", rng=rng),
        LeakyReLU(0.2, True), Dropout(0.1, True), Identity(3, scale=2),
        AdaptiveAvgPool2d((None, 3)), AdaptiveMaxPool2d((3, None)), Linear(3, 5, rng=rng),
        Flatten(1, 2), Linear(5, 2, rng=rng))


def test_new_options_survive_save_and_load(tmp_path):
    rng = np.random.default_rng(9)
    model = options_net(rng, circular=True).eval()
    x = rng.standard_normal((2, 2, 7, 6)).astype(np.float32)
    config = model.get_config()
    assert config["children"][0][1]["padding_mode"] == "circular"
    assert config["children"][1][1]["padding"] == "same"
    assert config["children"][2][1]["padding_mode"] == "reflect"
    assert config["children"][8][1]["output_size"] == [None, 3]
    assert config["children"][11][1]["end_dim"] == 2
    loaded = load_model(save_model(model, tmp_path / "net")).eval()
    assert loaded.get_config() == config
    out = loaded.infer(x.copy())
    assert out.shape == (2, 12, 2)
    np.testing.assert_array_equal(out, model.infer(x.copy()))
    assert repr(loaded[1]) == "Conv2d(K=3, F=4, S=1, P=same)"
    assert repr(loaded[2]) == "Conv2d(K=3, F=3, S=1, P=1, padding_mode='reflect')"


def test_new_options_export_to_onnx(tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from convnet.io.onnx_export import export_onnx

    rng = np.random.default_rng(10)
    model = options_net(rng).eval()
    x = rng.standard_normal((2, 2, 7, 6)).astype(np.float32)
    path = tmp_path / "net.onnx"
    export_onnx(model, path, (2, 7, 6))
    got = ort.InferenceSession(str(path)).run(None, {"input": x})[0]
    np.testing.assert_allclose(got, model.infer(x.copy()), rtol=1e-5, atol=1e-5)
    circular = Sequential(Conv2d(2, 3, 3, padding=1, padding_mode="circular", rng=rng)).eval()
    with pytest.raises(ValueError, match="padding_mode='circular' is ONNX's Pad mode 'wrap', "
                                         "from opset 19 on; got opset 17"):
        export_onnx(circular, path, (2, 7, 6))
    export_onnx(circular, path, (2, 7, 6), opset=19)
    got = ort.InferenceSession(str(path)).run(None, {"input": x})[0]
    np.testing.assert_allclose(got, circular.infer(x.copy()), rtol=1e-5, atol=1e-5)


def test_uneven_same_padding_reads_back_from_onnx(tmp_path):
    """A Conv whose pads are PyTorch's padding="same" for an even extent (one more after
    than before) loads as Conv2d(padding="same")."""
    pytest.importorskip("onnx")
    from convnet.io.onnx_export import export_onnx
    from convnet.io.onnx_import import load_onnx

    rng = np.random.default_rng(11)
    model = Sequential(Conv2d(2, 3, (4, 3), padding="same", dilation=(1, 2), rng=rng),
                       ReLU()).eval()
    path = tmp_path / "same.onnx"
    export_onnx(model, path, (2, 7, 6))
    loaded = load_onnx(path)
    conv = loaded[0]
    assert conv.get_config()["padding"] == "same" and conv.pads == model[0].pads == (1, 2, 2, 2)
    x = rng.standard_normal((2, 2, 7, 6)).astype(np.float32)
    np.testing.assert_allclose(loaded.infer(x.copy()), model.infer(x.copy()), rtol=1e-6)


def test_a_refused_replace_leaves_every_name_in_place():
    """replace() refused a layer already in the model, then took its name away in undoing
    the swap: its later errors named no layer. (The container edited is also in a second
    model here, which it links to last, so that only replace's own check sees the
    duplicate.)"""
    model = Sequential(Sequential(Linear(2, 2)), Sequential(Tanh()))
    Sequential(model[1], ReLU())
    with pytest.raises(ValueError, match="object is at both"):
        model.replace("1.0", model[0][0])
    assert model[0][0].name == "0.0" and isinstance(model[1][0], Tanh)


def test_copies_and_pickles_of_a_model_keep_the_whole_model_check():
    """Links from each container to the one holding it (weak references) had made nested
    models unpicklable, and a deep copy's links pointed into the original."""
    import copy
    import pickle
    model = Sequential(Sequential(Linear(2, 2)), Sequential(Tanh()))
    for twin in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        with pytest.raises(ValueError, match="object is at both"):
            twin[1].append(twin[0][0])
    model.cut("0")
    with pytest.raises(ValueError, match="object is at both"):
        model[0].append(model[1][0])


def test_a_layer_added_inside_a_nested_container_is_checked_against_the_whole_model():
    """append, insert and setitem had checked only the container edited: a layer already
    in another branch was taken, at two places, and its filter gradient came out wrong."""
    model = Sequential(Sequential(Linear(2, 2)), Sequential(Tanh()))
    shared = model[0][0]
    for edit in (lambda: model[1].append(shared), lambda: model[1].insert(0, shared),
                 lambda: model[1].__setitem__(0, shared)):
        with pytest.raises(ValueError, match=r"one Linear\(in=2, out=2\) object is at both "
                                             r"'0.0' and '1.\d'"):
            edit()
    assert [name for name, _ in model.named_layers()] == ["0.0", "1.0"]
    assert isinstance(model[1][0], Tanh) and shared.name == "0.0"


def test_a_container_is_named_on_one_line_in_errors():
    """A Residual's errors named it by its repr, which spans lines: the command line
    showed them broken, with a stray ')'."""
    from convnet.layers import Conv2d
    from convnet.models import Residual
    block = Residual({"c": Conv2d(2, 2, 3, stride=2, padding=1)})
    model = Sequential(block)
    with pytest.raises(ValueError) as err:
        model.output_shape((2, 9, 9))
    assert "\n" not in str(err.value) and str(err.value).startswith("0 Residual: "), err.value


def test_an_unbatched_image_is_told_to_be_a_batch_of_one():
    """PyTorch's Conv2d and pools take one (C, H, W) image; convnet's layers take batches,
    and the error says how to make one."""
    from convnet.layers import AvgPool2d, Conv2d, MaxPool2d
    x = np.zeros((3, 8, 8), np.float32)
    for layer in (Conv2d(3, 4, 3), MaxPool2d(2), AvgPool2d(2)):
        with pytest.raises(ValueError, match=r"got shape \(3, 8, 8\) \(one sample is a batch "
                                             r"of one: x\[None\]"):
            layer(x)
        assert layer(x[None]).shape[0] == 1


@pytest.mark.parametrize("attr, value", [
    ("padding", (2, 2)), ("padding", 0), ("padding", "same"), ("dilation", (2, 1)),
    ("stride", 2), ("padding_mode", "reflect"), ("padding_mode", "circular")])
def test_hyperparameters_assigned_after_the_conv_is_made_are_computed_with(attr, value):
    """conv.padding = (2, 2), as PyTorch code edits a net (torchvision's stride-to-
    dilation swap): the shape, repr and config had changed but forward, backward and
    infer had kept the old padding."""
    from convnet.layers.conv import Conv2d as Conv
    rng = np.random.default_rng(7)
    conv = Conv(3, 4, 3, padding=1, dtype=np.float64, rng=rng)
    ref = torch.nn.Conv2d(3, 4, 3, padding=1, dtype=torch.float64)
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(conv.weight))
        ref.bias.copy_(torch.from_numpy(conv.bias))
    setattr(conv, attr, value)
    if value == "same":     # torch works out its pads in the constructor
        ref = torch.nn.Conv2d(3, 4, 3, padding="same", dtype=torch.float64)
        ref.load_state_dict({k: torch.from_numpy(v) for k, v in conv.state_dict().items()})
    else:
        setattr(ref, attr, (value, value) if isinstance(value, int) else value)
    x = rng.standard_normal((2, 3, 9, 11))
    xt = torch.tensor(x, requires_grad=True)
    out = ref(xt)
    dout = rng.standard_normal(out.shape)
    out.backward(torch.from_numpy(dout))
    np.testing.assert_allclose(conv.forward(x), out.detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(conv.backward(dout), xt.grad.numpy(), atol=1e-12)
    np.testing.assert_allclose(conv.grads["weight"], ref.weight.grad.numpy(), atol=1e-12)
    np.testing.assert_allclose(conv.infer(x), out.detach().numpy(), atol=1e-12)
    assert conv.output_shape((3, 9, 11)) == tuple(out.shape[1:])
    rebuilt = from_config(conv.get_config())
    rebuilt.load_state_dict(conv.state_dict())
    np.testing.assert_allclose(rebuilt.forward(x), out.detach().numpy(), atol=1e-12)


def test_a_bad_or_fixed_hyperparameter_assigned_to_a_made_layer_is_refused():
    from convnet.layers import MaxPool2d
    from convnet.layers.pool import LPPool2d
    conv = Conv2d(3, 4, 3, padding=1)
    with pytest.raises(ValueError, match="padding must be a non-negative int"):
        conv.padding = -1
    with pytest.raises(ValueError, match="padding='same' keeps the size only at stride 1"):
        Conv2d(3, 4, 3, stride=2).padding = "same"
    with pytest.raises(ValueError, match="algorithm 'winograd4x4' cannot run this layer"):
        Conv2d(3, 4, 3, algorithm="winograd4x4").stride = 2
    with pytest.raises(AttributeError, match=r"kernel_size is fixed when the layer is made "
                                             r"\(by its weight's shape \(4, 3, 3, 3\)\)"):
        conv.kernel_size = 5
    assert conv.padding == (1, 1) and conv.stride == (1, 1)      # nothing set on a refusal
    pool = MaxPool2d(2)
    pool.kernel_size, pool.padding = 3, 1      # held as pairs (an int had crashed forward)
    assert pool.kernel_size == (3, 3) and pool.padding == (1, 1) and pool.stride == (2, 2)
    x = np.random.default_rng(8).standard_normal((1, 2, 7, 7))
    np.testing.assert_array_equal(pool.forward(x), torch.nn.MaxPool2d(3, 2, 1)(
        torch.from_numpy(x)).numpy())
    with pytest.raises(ValueError, match="padding must be at most half the kernel size"):
        pool.padding = 2
    with pytest.raises(ValueError, match="LPPool2d takes no padding"):
        LPPool2d(2, 2).padding = 1
    from convnet.layers import AvgPool2d
    with pytest.raises(ValueError, match="AvgPool2d takes no dilation"):  # (size had moved)
        AvgPool2d(2).dilation = 2
    # pads of four numbers are not a padding (they had crashed forward, or saved as "same")
    with pytest.raises(ValueError, match="padding must be a non-negative int or a pair"):
        Conv2d(1, 1, 3, padding=(2, 2, 0, 0))
    with pytest.raises(ValueError, match="padding must be a non-negative int or a pair"):
        conv.padding = (0, 0, 1, 1)
    with pytest.raises(ValueError, match="padding must be a non-negative int or a pair"):
        conv.padding = None                # (it had been taken as "keep it as it is")
    # "same" is worked out again for a new dilation, and refused at stride 2, as PyTorch
    even = Conv2d(1, 2, 2, padding="same")
    even.dilation = 3
    assert even.output_shape((1, 8, 8)) == (2, 8, 8)
    assert from_config(even.get_config()).output_shape((1, 8, 8)) == (2, 8, 8)
    with pytest.raises(ValueError, match="padding='same' keeps the size only at stride 1"):
        Conv2d(3, 4, 4, padding="same").stride = 2
    # a change between forward and backward drops the forward's cache (the backward pass
    # had mixed the two: an input gradient of the padded size)
    reflect = Conv2d(1, 2, 3, padding=1, padding_mode="reflect")
    out = reflect.forward(np.zeros((1, 1, 8, 8), np.float32))
    reflect.padding_mode = "zeros"
    with pytest.raises(RuntimeError, match="backward called before forward"):
        reflect.backward(np.ones_like(out))
    # an array for a bias the layer was made without is refused (it had been ignored)
    bare = Conv2d(1, 2, 3, bias=False)
    with pytest.raises(AttributeError, match="made without bias, and an array assigned "
                                             "would not be used: make it with bias=True"):
        bare.bias = np.ones(2, np.float32)
    with pytest.raises(AttributeError, match="make it with affine=True"):
        BatchNorm2d(2, affine=False).weight = np.ones(2, np.float32)
    assert bare.bias is None and list(bare.state_dict()) == ["weight"]


@pytest.mark.parametrize("children, message", [
    ({"": Linear(2, 3)}, "a child name must be a non-empty string .*got ''"),
    ({1: ReLU()}, "a child name must be .*got 1"),
    ({("a",): ReLU()}, r"a child name must be .*got \('a',\)"),
    ({"a\n": ReLU()}, r"a child name must be .*printable"),
    ({"x" * 201: ReLU()}, "a child name must be .*at most 200 printable characters"),
    ([ReLU(), Tanh()], r"children must be \(name, layer\) pairs, got ReLU\(\); for layers "
                       r"in order: Sequential\(\*layers\)"),
    ([("a", ReLU()), ("a", Tanh())], "child names must be unique, got 'a' twice"),
])
def test_child_names_are_checked_as_torch_does_and_as_model_files_need(children, message):
    """An empty name had given state_dict key '.weight' where named_parameters gave
    'weight'; an int or a list of layers a bare TypeError; a name with a line break a
    model that saved and then would not load."""
    with pytest.raises(ValueError, match=f"^Sequential: {message}"):
        Sequential(children)


def test_a_container_subclass_must_say_its_output_shape():
    """A user's Container had the identity output_shape and macs 0, which an enclosing
    Sequential passed on as the volume after it."""
    from convnet.models import Container

    class Net(Container):
        def __init__(self):
            super().__init__([("conv", Conv2d(1, 2, 3)), ("fc", Linear(2, 3))])

    with pytest.raises(NotImplementedError, match="Net must define output_shape"):
        Net().output_shape((1, 3, 3))
    with pytest.raises(NotImplementedError, match="Net must define macs"):
        Sequential(Net()).macs((1, 3, 3))

    class Holder(Container):
        def __init__(self):
            super().__init__([])
            self.conv = Conv2d(1, 2, 3)
    with pytest.raises(AttributeError, match="give it among the children$"):
        Holder()          # (append and insert are Sequential's: not offered)


def test_dropout_p_and_adaptive_output_size_are_checked_when_set():
    """As PyTorch's: d.p = 1.5 had zeroed every output; pool.output_size = 1 raised a bare
    TypeError at forward, and at save."""
    drop = Dropout()
    with pytest.raises(ValueError, match=r"Dropout: p \(the drop probability\) must be a "
                                         r"number in \[0, 1\], got 1.5"):
        drop.p = 1.5
    drop.p = 0.25
    assert drop.p == 0.25 and drop.get_config()["p"] == 0.25
    for cls, torch_cls in ((AdaptiveAvgPool2d, torch.nn.AdaptiveAvgPool2d),
                           (AdaptiveMaxPool2d, torch.nn.AdaptiveMaxPool2d)):
        ours, theirs = cls(7), torch_cls(7)
        ours.output_size, theirs.output_size = 1, 1
        x = np.random.default_rng(0).standard_normal((1, 2, 4, 4))
        np.testing.assert_allclose(ours(x), theirs(torch.tensor(x)).numpy())
        assert ours.get_config()["output_size"] == [1, 1]
        with pytest.raises(ValueError, match="output_size"):
            ours.output_size = 0
