"""summary(): the notes' VGGNet numbers, memory arithmetic, receptive fields, advice."""

import json
import math

import numpy as np
import pytest

from convnet.analysis import (
    OPTIMIZER_MULTIPLIERS,
    format_bytes,
    parse_bytes,
    summary,
    volume,
)
from convnet.layers.activation import ReLU, Tanh
from convnet.layers.conv import Conv2d
from convnet.layers.dropout import Dropout
from convnet.layers.linear import Flatten, Linear
from convnet.layers.norm import BatchNorm2d
from convnet.layers.pool import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d
from convnet.models import Concat, DenseBlock, Residual, Sequential, from_notation
from tests.utils import peak_bytes

MB = 1024 ** 2

# The notes' VGGNet-16 table, one row per CONV/POOL/FC layer: (layer, volume W x H x D).
VGG16_NOTES = (
    [("CONV3-64", (224, 224, 64))] * 2 + [("POOL2", (112, 112, 64))]
    + [("CONV3-128", (112, 112, 128))] * 2 + [("POOL2", (56, 56, 128))]
    + [("CONV3-256", (56, 56, 256))] * 3 + [("POOL2", (28, 28, 256))]
    + [("CONV3-512", (28, 28, 512))] * 3 + [("POOL2", (14, 14, 512))]
    + [("CONV3-512", (14, 14, 512))] * 3 + [("POOL2", (7, 7, 512))]
    + [("FC", (1, 1, 4096)), ("FC", (1, 1, 4096)), ("FC", (1, 1, 1000))]
)
VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
             512, 512, 512, "M", 512, 512, 512, "M"]


def vgg16(rng):
    """VGGNet-16 as torchvision lays it out: features, flatten, classifier."""
    features, depth = [], 3
    for v in VGG16_CFG:
        if v == "M":
            features.append(MaxPool2d(2, stride=2))
        else:
            features += [Conv2d(depth, v, 3, padding=1, rng=rng), ReLU(inplace=True)]
            depth = v
    classifier = [Linear(512 * 7 * 7, 4096, rng=rng), ReLU(inplace=True), Dropout(),
                  Linear(4096, 4096, rng=rng), ReLU(inplace=True), Dropout(),
                  Linear(4096, 1000, rng=rng)]
    return Sequential({"features": Sequential(*features), "flatten": Flatten(),
                       "classifier": Sequential(*classifier)})


@pytest.fixture(scope="module")
def vgg():
    """Built once: its 138M float32 parameters take a few seconds to draw."""
    return vgg16(np.random.default_rng(0))


@pytest.fixture(scope="module")
def vgg_summary(vgg):
    return summary(vgg, (3, 224, 224))


def notes_rows(s):
    """The rows the notes' table lists: CONV, POOL and FC (not RELU, dropout, flatten)."""
    return [r for r in s.layers if r.type.startswith(("Conv2d", "MaxPool2d", "Linear"))]


# -- VGGNet-16, layer by layer as in the notes ----------------------------------------------
def test_vgg16_volumes_match_the_notes(vgg_summary):
    rows = notes_rows(vgg_summary)
    assert [volume(r.output_shape) for r in rows] == [
        f"{w}x{h}x{d}" for _, (w, h, d) in VGG16_NOTES]
    for row, (kind, _) in zip(rows, VGG16_NOTES):
        assert row.type.startswith({"C": "Conv2d", "P": "MaxPool2d", "F": "Linear"}[kind[0]])
        if kind.startswith("CONV"):
            assert row.type.endswith("F=3, S=1, P=1)")          # 3x3 CONV, stride 1, pad 1
            d_in, k = row.input_shape[0], row.output_shape[0]
            assert row.params == 3 * 3 * d_in * k + k             # (F*F*D1)*K weights + K biases
            assert row.macs == 3 * 3 * d_in * math.prod(row.output_shape)


def test_vgg16_parameters(vgg, vgg_summary):
    s = vgg_summary
    fc1 = s.layers[[r.name for r in s.layers].index("classifier.0")]
    assert fc1.params == 7 * 7 * 512 * 4096 + 4096 == 102_764_544
    assert max(s.layers, key=lambda r: r.params) is fc1            # most params: first FC
    assert s.total_params == sum(r.params for r in s.layers) == vgg.num_params()
    assert s.total_params == 138_357_544 and s.trainable_params == s.total_params
    fc_params = sum(r.params for r in s.layers if r.type.startswith("Linear"))
    assert fc_params > 0.85 * s.total_params                     # "in the last FC layers"


def test_vgg16_activations_mostly_in_the_first_conv_layers(vgg_summary):
    s = vgg_summary
    rows = notes_rows(s)
    assert max(s.layers, key=lambda r: r.activation_bytes).name == "features.0"
    early = sum(r.activation_values for r in rows[:5])           # up to the second POOL
    total = sum(r.activation_values for r in s.layers)
    assert early > 0.65 * total
    # The notes' rows, summed (in place ReLUs and the Flatten view add nothing), plus the
    # two dropout masks' outputs that torchvision's classifier adds after the FC layers.
    notes_total = sum(w * h * d for _, (w, h, d) in VGG16_NOTES)
    assert total == notes_total + 2 * 4096 == 15_095_272
    assert s.memory["activations"] == total * 4
    assert s.memory["misc"] == 224 * 224 * 3 * 4                 # the notes' INPUT row
    # The notes print "TOTAL memory: 24M * 4 bytes ~= 93MB / image (only forward!)", but
    # their own rows add up to ~15.2M values (cs231n.github.io issue #88): ~58 MB forward.
    forward = s.memory["activations"] + s.memory["misc"]
    assert (notes_total + 224 * 224 * 3) * 4 / MB == pytest.approx(58.1, abs=0.05)
    assert forward / MB == pytest.approx(58.1, abs=0.1)


def test_vgg16_macs_receptive_field_and_no_advice(vgg, vgg_summary):
    s = vgg_summary
    assert s.total_macs == sum(r.macs for r in s.layers) == vgg.macs((3, 224, 224))
    assert s.total_macs == 15_470_264_320                        # VGG-16's ~15.5 G mult-adds
    rf = {r.name: (r.receptive_field, r.jump) for r in s.layers}
    assert rf["features.2"] == ((5, 5), (1, 1))                  # two 3x3: a 5x5 view
    assert rf["features.4"] == ((6, 6), (2, 2))
    assert rf["features.30"] == ((212, 212), (32, 32))           # pool5
    assert s.receptive_field[0] >= 224                           # the FC layers see it all
    assert s.advice == []


def test_vgg16_text_and_dict(vgg_summary):
    s = vgg_summary
    text = s.to_text()
    lines = text.splitlines()
    assert max(map(len, lines)) <= 128      # with the algorithm column
    assert max(map(len, s.to_text(inference=True).splitlines())) <= 129
    for row in s.layers:
        assert any(line.startswith(row.name + " ") for line in lines), row.name
    assert "138,357,544" in text and "15,470,264,320" in text and "102,764,544" in text
    assert "212 (32)" in text and "Advice" not in text
    d = json.loads(json.dumps(s.to_dict()))
    assert d["total_params"] == 138_357_544 and d["total_macs"] == 15_470_264_320
    assert len(d["layers"]) == len(s.layers) == 39
    first = d["layers"][0]
    for key in ("name", "type", "output_shape", "params", "macs", "receptive_field", "jump",
                "activation_bytes", "algorithm"):
        assert key in first
    assert first["algorithm"] == "im2col" and d["layers"][1]["algorithm"] is None  # C=3, N=1
    assert d["layers"][2]["algorithm"] == "shifted"
    assert first["inference_algorithm"] == "im2col"
    assert d["layers"][2]["inference_algorithm"] == "winograd4x4"   # only at inference
    assert first["output_shape"] == [64, 224, 224] and first["receptive_field"] == 3
    assert d["memory"]["training_total"] == s.memory["training_total"]
    assert d["advice"] == []


def test_a_conv_whose_named_algorithm_cannot_run_is_marked_refused():
    """A CONV that names an algorithm it cannot run at this batch (blocks over inference's
    max_bytes, one_image on a batch of two) gets "refused" in that column and a line
    naming the layer and why; the summary had raised, and training then skipped its
    memory check."""
    rng = np.random.default_rng(2)
    net = Sequential(Conv2d(512, 64, 3, padding=1, algorithm="blocks", rng=rng), ReLU(),
                     Conv2d(64, 8, 3, padding=1, algorithm="one_image", rng=rng))
    s = summary(net, (512, 64, 64))
    assert [(r.algorithm, r.inference_algorithm) for r in s.layers if r.algorithm] == [
        ("blocks", "refused"), ("one_image", "one_image")]
    assert len(s.refused) == 1 and s.refused[0].startswith("0 Conv2d(K=64, F=3, S=1, P=1): "
                                                          "algorithm 'blocks' cannot run")
    assert "over max_bytes=67,108,864 (at inference, batch 1)" in s.refused[0]
    two = summary(net, (512, 64, 64), batch_size=2)
    assert [r.algorithm for r in two.layers if r.algorithm] == ["blocks", "refused"]
    assert sum("'one_image' cannot run" in why for why in two.refused) == 2
    text = two.to_text()
    assert "Refused (these CONVs name an algorithm that cannot run them here):" in text
    assert "needs a batch of one image (in training, batch 2)" in text
    assert json.loads(json.dumps(two.to_dict()))["refused"] == two.refused
    assert summary(Conv2d(3, 4, 3), (3, 8, 8)).refused == []


def test_the_algorithm_column_follows_the_summarys_bytes_per_value():
    """At batch 1 one_image takes a layer whose rows fit one block, which depends on the
    bytes per value: the column follows summary's dtype, as what runs follows the
    data's (it had used the model's dtype alone)."""
    from convnet.functional import conv
    net = Sequential(Conv2d(64, 64, 5, padding=2, rng=np.random.default_rng(3)))
    ran = []
    original = conv.choose

    def spy(algorithm, p, where="conv2d"):
        chosen = original(algorithm, p, where)
        ran.append(chosen[0].value)
        return chosen
    for dtype, expected in ((np.float32, "one_image"), (np.float64, "shifted")):
        row = summary(net, (64, 28, 28), dtype=dtype).layers[0]
        assert (row.algorithm, row.inference_algorithm) == (expected, expected), dtype
        x = np.zeros((1, 64, 28, 28), dtype)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(conv, "choose", spy)
            ran.clear()
            net.train().forward(x)
            net.eval().infer(x)
        assert ran == [expected, expected], dtype


# -- the notes' other worked examples --------------------------------------------------------
def test_three_3x3_conv64_on_224_make_10M_activations_72MB():
    rng = np.random.default_rng(1)
    net = Sequential(Conv2d(3, 64, 3, padding=1, rng=rng), Conv2d(64, 64, 3, padding=1, rng=rng),
                     Conv2d(64, 64, 3, padding=1, rng=rng))
    s = summary(net, (3, 224, 224))
    values = sum(r.activation_values for r in s.layers)
    assert values == 3 * 224 * 224 * 64
    assert values == pytest.approx(10e6, rel=0.05)               # "about 10 million"
    both = s.memory["activations"] + s.memory["activation_gradients"]
    assert both / MB == pytest.approx(72, rel=0.10)              # "72MB ... both"
    assert both == 2 * values * 4


@pytest.mark.parametrize("c", [1, 3, 8, 16])
def test_three_3x3_convs_see_7x7_with_27C2_params_vs_49C2(c):
    rng = np.random.default_rng(c)
    stack = Sequential(*[Conv2d(c, c, 3, padding=1, bias=False, rng=rng) for _ in range(3)])
    single = Sequential(Conv2d(c, c, 7, padding=3, bias=False, rng=rng))
    a, b = summary(stack, (c, 32, 32)), summary(single, (c, 32, 32))
    assert [r.receptive_field for r in a.layers] == [(3, 3), (5, 5), (7, 7)]
    assert a.receptive_field == b.receptive_field == (7, 7)
    assert a.total_params == 27 * c * c and b.total_params == 49 * c * c


# -- rows add up to the totals ---------------------------------------------------------------
def random_net(rng):
    """A small random graph: CONV/POOL chains, a residual block, a concat, a dense block."""
    c = int(rng.integers(1, 4))
    k = int(rng.integers(2, 5))
    layers = {"conv1": Conv2d(c, k, int(rng.integers(1, 4)) * 2 - 1, padding="same",
                              rng=rng), "relu1": ReLU(inplace=bool(rng.integers(2)))}
    stride = int(rng.integers(1, 3))
    shortcut = None if stride == 1 else Sequential(
        {"0": Conv2d(k, k, 1, stride=stride, bias=False, fit="floor", rng=rng),
         "1": BatchNorm2d(k)})
    layers["res"] = Residual(
        {"conv1": Conv2d(k, k, 3, stride=stride, padding=1, fit="floor", rng=rng),
         "bn1": BatchNorm2d(k),
         "relu": ReLU(), "conv2": Conv2d(k, k, 3, padding=1, rng=rng)},
        shortcut=shortcut,       # a post with mult-adds of its own: Residual.macs had none
        post=ReLU() if rng.integers(2) else Conv2d(k, k, 1, rng=rng))
    layers["mix"] = Concat({"b1": Conv2d(k, 2, 1, rng=rng),
                            "b2": Sequential(Conv2d(k, 3, 1, rng=rng),
                                             Conv2d(3, 2, 3, padding=1, rng=rng)),
                            "b3": Sequential(MaxPool2d(3, stride=1, padding=1),
                                             Conv2d(k, 1, 1, rng=rng))})
    growth, depth = int(rng.integers(1, 4)), 5
    dense = {}
    for i in range(int(rng.integers(1, 4))):
        dense[f"layer{i}"] = Sequential({"norm": BatchNorm2d(depth), "relu": ReLU(),
                                         "conv": Conv2d(depth, growth, 3, padding=1,
                                                        rng=rng)})
        depth += growth
    layers["dense"] = DenseBlock(dense)
    layers["pool"] = AdaptiveAvgPool2d(1)
    layers["flat"] = Flatten()
    layers["fc"] = Linear(depth, 10, rng=rng)
    return Sequential(layers), (c, 8 * int(rng.integers(1, 3)), 8 * int(rng.integers(1, 3)))


@pytest.mark.parametrize("seed", range(20))
def test_rows_add_up_to_the_totals(seed):
    rng = np.random.default_rng(seed)
    net, shape = random_net(rng)
    batch = int(rng.integers(1, 9))
    s = summary(net, shape, batch_size=batch, optimizer=str(rng.choice(["sgd", "adam"])))
    merges = [r for r in s.layers if r.name.endswith((" (sum)", " (concat)"))]
    assert [r.name for r in s.layers if r not in merges] == [
        name for name, _ in net.named_layers()]
    # the arrays the blocks make: the residual sum, Concat's output, and DenseBlock's
    # running concatenation after each of its layers
    dense = [name for name, _ in net["dense"].named_children()]
    assert [r.name for r in merges] == ["res (sum)", "mix (concat)",
                                       *(f"dense.{name} (concat)" for name in dense)]
    rows = {r.name: r for r in s.layers}
    assert merges[0].output_shape == rows["res.post"].output_shape
    assert merges[1].output_shape == net["mix"].output_shape(rows["res.post"].output_shape)
    assert merges[-1].output_shape == net["dense"].output_shape(merges[1].output_shape)
    assert all(r.params == r.macs == 0 for r in merges)
    assert sum(r.params for r in s.layers) == s.total_params == net.num_params()
    assert sum(r.macs for r in s.layers) == s.total_macs == net.macs(shape)
    assert s.to_dict()["batch_macs"] == s.total_macs * batch
    m = s.memory
    assert sum(r.activation_bytes for r in s.layers) == m["activations"]
    assert m["activation_gradients"] == m["activations"]
    assert m["misc"] == math.prod(shape) * batch * 4
    k = m["parameter_multiplier"]
    assert m["parameters_total"] == (m["parameters"] + m["parameter_gradients"]
                                     + m["optimizer_state"]) == k * s.total_params * 4
    assert m["training_total"] == (m["activations"] + m["activation_gradients"]
                                   + m["parameters_total"] + m["misc"])
    assert s.layers[-1].output_shape == net.output_shape(shape) == (10,)
    for r in s.layers:                                            # in place: no new values
        shares = r.type in ("Flatten()", "ReLU(inplace=True)")
        assert r.activation_values == (0 if shares else math.prod(r.output_shape))
        assert r.activation_bytes == r.activation_values * batch * 4
    # the text shows every row, the totals, and the memory block
    text = s.to_text()
    assert f"{s.total_params:,}" in text and "training total" in text
    assert len(text.splitlines()) > len(s.layers)


@pytest.mark.parametrize("seed", range(5))
def test_leaf_input_shapes_through_blocks(seed):
    rng = np.random.default_rng(100 + seed)
    net, shape = random_net(rng)
    s = summary(net, shape)
    rows = {r.name: r for r in s.layers}
    k = rows["conv1"].output_shape[0]
    block_in = rows["relu1"].output_shape
    assert rows["res.conv1"].input_shape == block_in
    if "res.downsample.0" in rows:                                # the shortcut sees x
        assert rows["res.downsample.0"].input_shape == block_in
    res_out = rows["res.post"].output_shape
    for branch in ("mix.b1", "mix.b2.0", "mix.b3.0"):             # each branch sees x
        assert rows[branch].input_shape == res_out
    depth = sum(rows[b].output_shape[0] for b in ("mix.b1", "mix.b2.1", "mix.b3.1"))
    assert depth == 2 + 2 + 1                                     # the concat's depth
    for name, row in rows.items():                               # running concatenation
        if name.startswith("dense.") and name.endswith(".norm"):
            assert row.input_shape == (depth, *res_out[1:])
            depth += rows[name[: -len("norm")] + "conv"].output_shape[0]
    assert rows["pool"].input_shape[0] == depth
    assert rows["res.conv1"].output_shape[0] == k


# -- memory: optimizer, dtype, frozen layers, budget ----------------------------------------
def small_net(rng, dtype=np.float32):
    return Sequential(Conv2d(3, 8, 3, padding=1, dtype=dtype, rng=rng), ReLU(),
                      MaxPool2d(2), Flatten(), Linear(8 * 8 * 8, 10, dtype=dtype, rng=rng))


@pytest.mark.parametrize("optimizer, k", [("sgd", 2), ("momentum", 3), ("nesterov", 3),
                                          ("adagrad", 3), ("rmsprop", 3), ("adam", 4),
                                          ("AdamW", 4)])
def test_optimizer_multiplier(optimizer, k):
    net = small_net(np.random.default_rng(0))
    s = summary(net, (3, 16, 16), optimizer=optimizer)
    p = net.num_params()
    assert s.memory["parameter_multiplier"] == k == OPTIMIZER_MULTIPLIERS[optimizer.lower()]
    assert s.memory["parameters_total"] == k * p * 4
    assert s.memory["optimizer_state"] == (k - 2) * p * 4
    sgd = summary(net, (3, 16, 16), optimizer="sgd")
    assert s.memory["training_total"] - sgd.memory["training_total"] == (k - 2) * p * 4


def test_float64_doubles_every_byte_count():
    a = summary(small_net(np.random.default_rng(0)), (3, 16, 16), batch_size=3)
    b = summary(small_net(np.random.default_rng(0), np.float64), (3, 16, 16), batch_size=3)
    c = summary(small_net(np.random.default_rng(0)), (3, 16, 16), batch_size=3,
                dtype=np.float64)
    assert a.dtype == "float32" and b.dtype == c.dtype == "float64"
    for key in ("activations", "parameters_total", "misc", "training_total",
                "inference_total"):
        assert b.memory[key] == c.memory[key] == 2 * a.memory[key]
    assert [r.activation_bytes * 2 for r in a.layers] == [r.activation_bytes for r in b.layers]


def test_frozen_layers_count_once():
    net = small_net(np.random.default_rng(0))
    net["0"].frozen = True
    s = summary(net, (3, 16, 16), optimizer="adam")
    conv = 3 * 3 * 3 * 8 + 8
    assert s.trainable_params == s.total_params - conv
    assert s.to_dict()["frozen_params"] == conv
    assert s.memory["parameters_total"] == (4 * s.trainable_params + conv) * 4
    assert s.layers[0].frozen and not s.layers[-1].frozen
    assert "frozen" in s.to_text()


def test_inference_keeps_only_the_current_activations():
    net = small_net(np.random.default_rng(0))
    s = summary(net, (3, 16, 16), batch_size=2)
    # the largest: the ReLU's input + output, while the caller keeps the net's input
    live = 3 * 16 * 16 + 2 * 8 * 16 * 16
    assert s.memory["inference_total"] == (live * 2 + net.num_params()) * 4
    assert s.memory["inference_total"] < s.memory["training_total"]
    net = Sequential(Conv2d(3, 8, 3, padding=1), ReLU(inplace=True), MaxPool2d(2))
    # the RELU works in place; the POOL's input + output, and the net's input
    live = 3 * 16 * 16 + 8 * 16 * 16 + 8 * 8 * 8
    assert summary(net, (3, 16, 16), batch_size=2).memory["inference_total"] == (
        (live * 2 + net.num_params()) * 4)


def _blocks(rng):
    """A net of each block: Concat, Residual with a projection, DenseBlock."""
    def conv(c, k, f=3):
        return Conv2d(c, k, f, padding=f // 2, rng=rng)
    yield Sequential(conv(3, 8), Concat({"a": conv(8, 4, 1), "b": Sequential(
        conv(8, 16), ReLU(inplace=True), conv(16, 8)), "c": MaxPool2d(3, 1, 1)}),
        conv(20, 4))
    yield Sequential(conv(3, 8), Residual({"conv1": conv(8, 16), "relu": ReLU(),
                                           "conv2": conv(16, 16)}, shortcut=conv(8, 16, 1),
                                          post=ReLU(inplace=True)), MaxPool2d(2))
    yield Sequential(conv(3, 8), DenseBlock({f"layer{i}": Sequential(
        BatchNorm2d(8 + 4 * i), ReLU(), conv(8 + 4 * i, 4)) for i in range(3)}))


@pytest.mark.parametrize("index", range(3))
def test_inference_memory_counts_what_blocks_hold(index):
    """The estimate counts a block's input while the block runs, a Concat's finished
    branches and a residual body's output beside the shortcut's: tracemalloc's peak of
    one inference (after one that made the scratch buffers) is the estimate's, within
    the small arrays that are not activations."""
    net = list(_blocks(np.random.default_rng(0)))[index]
    net.eval()
    x = np.random.default_rng(1).standard_normal((4, 3, 32, 32)).astype(np.float32)
    net.infer(x)
    peak = peak_bytes(net.infer, x)
    memory = summary(net, (3, 32, 32), batch_size=4).memory
    estimate = memory["inference_total"] - memory["parameters"] - x.nbytes  # x: not new
    assert estimate * 0.97 <= peak <= estimate * 1.25, (peak, estimate)   # had been 1.5-1.9x


@pytest.mark.parametrize("seed", range(10))
def test_budget_gives_the_largest_batch_that_fits(seed):
    rng = np.random.default_rng(seed)
    net = small_net(rng)
    one = summary(net, (3, 16, 16))
    fixed = one.memory["parameters_total"]
    per_sample = one.memory["training_total"] - fixed
    budget = int(fixed + rng.integers(0, 300) * per_sample + rng.integers(0, per_sample))
    s = summary(net, (3, 16, 16), budget=budget, batch_size=int(rng.integers(1, 5)))
    b = s.max_batch_size
    assert s.budget == budget and b >= 0
    assert summary(net, (3, 16, 16), batch_size=b + 1).memory["training_total"] > budget
    if b:
        assert summary(net, (3, 16, 16), batch_size=b).memory["training_total"] <= budget
    assert f"largest batch that fits for training is {b:,}" in s.to_text()


def test_budget_strings_and_too_small_budgets(vgg):
    s = summary(vgg, (3, 224, 224), budget="4GB")
    assert s.budget == 4 * 1024 ** 3
    assert s.max_batch_size == (4 * 1024 ** 3 - 2 * 4 * 138_357_544) // (
        (2 * 15_095_272 + 150_528) * 4)
    assert summary(vgg, (3, 224, 224), budget="512MB").max_batch_size == 0  # params alone
    assert summary(small_net(np.random.default_rng(0)), (3, 16, 16),
                   budget=1000).max_batch_size == 0


@pytest.mark.parametrize("text, expected", [("4GB", 4 * 1024 ** 3), ("512MB", 512 * MB),
                                            ("512 mb", 512 * MB), ("1.5G", 3 * 1024 ** 3 // 2),
                                            ("2KiB", 2048), ("100", 100), ("7B", 7), (0, 0)])
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("bad", ["4 XB", "", "GB", "-1GB", -5, 1.5, None, True, "9000000TB",
                                 "9" * 400])
def test_parse_bytes_rejects(bad):
    with pytest.raises(ValueError, match="budget"):
        parse_bytes(bad)


@pytest.mark.parametrize("n, text", [(0, "0 B"), (1023, "1023 B"), (1024, "1.00 KB"),
                                     (1536, "1.50 KB"), (93 * MB, "93.0 MB"),
                                     (138_357_544 * 4, "528 MB"), (5 * 1024 ** 3, "5.00 GB")])
def test_format_bytes(n, text):
    assert format_bytes(n) == text


# -- receptive field --------------------------------------------------------------------------
def empirical_field(net, shape, rng):
    """The input region one central output neuron depends on, measured by backprop.

    With random weights, an average (not max) pooling and a one-hot dout at the centre of
    the output, dx is nonzero exactly on that neuron's receptive field (its extent: a
    dilated filter leaves holes inside it). Returns (extent H, extent W), and whether the
    region touches the border (then the field is clipped and cannot be measured).
    """
    x = rng.standard_normal((1, *shape))
    out = net.forward(x)
    dout = np.zeros_like(out)
    if out.ndim == 4:
        dout[0, :, out.shape[2] // 2, out.shape[3] // 2] = rng.standard_normal(out.shape[1])
    else:
        dout[0] = rng.standard_normal(out.shape[1])
    dx = np.abs(net.backward(dout)).sum(axis=(0, 1))
    rows, cols = np.nonzero(dx > 1e-12)
    touches = rows.min() == 0 or cols.min() == 0 or rows.max() == shape[1] - 1 \
        or cols.max() == shape[2] - 1
    return (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1), touches


def random_chain(rng, depth):
    layers = []
    for _ in range(int(rng.integers(1, 4))):
        if rng.random() < 0.7:
            fh, fw = (int(v) for v in rng.integers(1, 6, size=2))
            dil = int(rng.integers(1, 3))
            layers.append(Conv2d(depth, 2, (fh, fw), stride=int(rng.integers(1, 3)),
                                 padding=(dil * (fh - 1) // 2, dil * (fw - 1) // 2),
                                 dilation=dil, fit="floor", dtype=np.float64, rng=rng))
            depth = 2
        else:
            f = int(rng.integers(2, 4))
            layers.append(AvgPool2d(f, stride=int(rng.integers(1, f + 1)), fit="floor"))
        if rng.random() < 0.3:
            layers.append(Tanh())      # elementwise; unlike ReLU it never zeroes a gradient
    return layers, depth


@pytest.mark.parametrize("seed", range(40))
def test_receptive_field_matches_backprop_on_chains(seed):
    rng = np.random.default_rng(1000 + seed)
    layers, _ = random_chain(rng, 2)
    net = Sequential(*layers)
    probe = summary(net, (2, 64, 64))
    rf, jump = probe.receptive_field, probe.jump
    size = 2 * max(rf) + 4 * max(jump) + 3                        # room around the field
    s = summary(net, (2, size, size))
    assert s.receptive_field == rf
    extent, touches = empirical_field(net, (2, size, size), rng)
    assert not touches
    assert extent == rf
    # jump: the input stride between two neighbouring neurons of the last layer
    for r in s.layers:
        assert r.jump == tuple(math.prod(
            getattr(q, "stride", (1, 1))[a] for q in layers[: s.layers.index(r) + 1])
            for a in (0, 1))


def test_receptive_field_through_a_residual_block():
    rng = np.random.default_rng(7)

    def conv(cin, cout, f, s=1):
        return Conv2d(cin, cout, f, stride=s, padding=f // 2, fit="floor", dtype=np.float64,
                      rng=rng)

    # Tanh where ResNet has ReLU: a ReLU could zero the gradient the check measures
    identity = Residual({"conv1": conv(2, 2, 3), "act": Tanh(), "conv2": conv(2, 2, 3)},
                        post=Tanh())
    projection = Residual({"conv1": conv(2, 4, 3, 2), "conv2": conv(4, 4, 3)},
                          shortcut=conv(2, 4, 1, 2), post=Tanh())
    net = Sequential({"stem": conv(2, 2, 3), "block1": identity, "block2": projection,
                      "head": conv(4, 4, 3)})
    s = summary(net, (2, 40, 40))
    rows = {r.name: r for r in s.layers}
    assert rows["block1.conv2"].receptive_field == (7, 7)       # stem 3, then two 3x3
    assert rows["block1.post"].receptive_field == (7, 7)        # max(body 7, identity 3)
    assert rows["block2.downsample"].receptive_field == (7, 7)  # the 1x1 shortcut keeps 7
    assert rows["block2.downsample"].jump == (2, 2)
    assert rows["block2.conv2"].receptive_field == (13, 13)     # 7 + 2*1, then 9 + 2*2
    assert rows["block2.post"].receptive_field == (13, 13)
    assert rows["head"].receptive_field == s.receptive_field == (17, 17)
    assert s.jump == (2, 2)
    extent, touches = empirical_field(net, (2, 40, 40), rng)
    assert not touches and extent == (17, 17)


def test_receptive_field_through_a_concat_block():
    rng = np.random.default_rng(8)
    inception = Concat({
        "branch1": Conv2d(3, 2, 1, dtype=np.float64, rng=rng),
        "branch2": Sequential(Conv2d(3, 2, 1, dtype=np.float64, rng=rng),
                              Conv2d(2, 2, 3, padding=1, dtype=np.float64, rng=rng)),
        "branch3": Sequential(Conv2d(3, 2, 1, dtype=np.float64, rng=rng),
                              Conv2d(2, 2, 5, padding=2, dtype=np.float64, rng=rng)),
        "branch4": Sequential(AvgPool2d(3, stride=1, padding=1),
                              Conv2d(3, 2, 1, dtype=np.float64, rng=rng)),
    })
    net = Sequential({"inception": inception,
                      "conv": Conv2d(8, 4, 3, padding=1, dtype=np.float64, rng=rng)})
    s = summary(net, (3, 24, 24))
    rows = {r.name: r for r in s.layers}
    assert rows["inception.branch1"].receptive_field == (1, 1)
    assert rows["inception.branch2.1"].receptive_field == (3, 3)
    assert rows["inception.branch3.1"].receptive_field == (5, 5)
    assert rows["inception.branch4.1"].receptive_field == (3, 3)
    assert rows["conv"].input_shape == (8, 24, 24)
    assert s.receptive_field == (7, 7)                           # the largest branch, 5, + 2
    extent, touches = empirical_field(net, (3, 24, 24), rng)
    assert not touches and extent == (7, 7)


@pytest.mark.parametrize("head", ["fc", "gap"])
def test_fc_and_global_pooling_see_the_whole_input(head):
    rng = np.random.default_rng(9)
    layers = [Conv2d(2, 3, 3, padding=1, dtype=np.float64, rng=rng), MaxPool2d(2)]
    if head == "fc":
        layers += [Flatten(), Linear(3 * 5 * 6, 4, dtype=np.float64, rng=rng)]
    else:
        layers += [AdaptiveAvgPool2d(1), Flatten()]
    s = summary(Sequential(*layers), (2, 10, 12))
    assert s.layers[1].receptive_field == (4, 4)
    assert s.receptive_field == (4 + 4 * 2, 4 + 5 * 2)          # + (grid - 1) * jump
    assert all(r >= n for r, n in zip(s.receptive_field, (10, 12)))


def test_rectangular_and_dilated_fields_in_dict():
    net = Sequential(Conv2d(1, 1, (3, 5), dilation=(1, 2), padding=(1, 4)),
                     MaxPool2d((2, 1), stride=(2, 1)))
    s = summary(net, (1, 16, 16))
    assert s.layers[0].receptive_field == (3, 9)                 # F_eff = 2 * (5 - 1) + 1
    assert s.layers[1].receptive_field == (4, 9) and s.jump == (2, 1)
    d = s.to_dict()
    assert d["receptive_field"] == [4, 9] and d["jump"] == [2, 1]
    assert "4x9 (2x1)" in s.to_text()


# -- advice -----------------------------------------------------------------------------------
def advice_for(net, shape):
    return summary(net, shape).advice


def test_advice_on_a_large_filter_after_the_first_conv():
    tips = advice_for(Sequential(Conv2d(3, 8, 3, padding=1), Conv2d(8, 8, 7, padding=3)),
                      (3, 32, 32))
    assert len(tips) == 1 and tips[0].startswith("1 Conv2d(K=8, F=7")
    assert "very first conv layer" in tips[0] and "notes" in tips[0]
    # a 7x7 (or 11x11) first layer is the notes' accepted compromise
    assert advice_for(Sequential(Conv2d(3, 8, 7, stride=2, padding=3, fit="floor"),
                                 Conv2d(8, 8, 5, padding=2)), (3, 32, 32)) == []


def test_advice_on_a_large_pool():
    tips = advice_for(Sequential(Conv2d(3, 8, 3, padding=1), MaxPool2d(4)), (3, 32, 32))
    assert len(tips) == 1 and "F=4 > 3" in tips[0] and "too lossy" in tips[0]
    assert advice_for(Sequential(Conv2d(3, 8, 3, padding=1), MaxPool2d(2)), (3, 32, 32)) == []
    # global pooling (a 1x1 output) is not the downsampling the rule is about
    assert advice_for(Sequential(AvgPool2d(8)), (3, 8, 8)) == []


@pytest.mark.parametrize("size, fires", [(227, True), (28, True), (100, True), (32, False),
                                         (64, False), (96, False), (224, False),
                                         (384, False), (512, False)])
def test_advice_on_the_input_size(size, fires):
    tips = advice_for(Sequential(Conv2d(3, 4, 3, padding=1)), (3, size, size))
    assert (len(tips) == 1) == fires
    if fires:
        assert f"{size} = 2^" in tips[0] and "divisible by 2 many times" in tips[0]


def test_advice_on_a_shrinking_stride_1_conv():
    tips = advice_for(Sequential(Conv2d(3, 8, 3), Conv2d(8, 8, 5, padding=1)), (3, 32, 32))
    assert len(tips) == 2
    assert tips[0].startswith("0 Conv2d") and "32x32x3 to 30x30x8" in tips[0]
    assert "P=(F-1)/2=1 would keep" in tips[0] and "P=(F-1)/2=2" in tips[1]
    # the same with P = (F-1)/2, or a strided CONV that is meant to downsample: no advice
    assert advice_for(Sequential(Conv2d(3, 8, 3, padding=1), Conv2d(8, 8, 5, padding=2)),
                      (3, 32, 32)) == []
    assert advice_for(Sequential(Conv2d(3, 8, 3, stride=2, padding=0, fit="floor")),
                      (3, 32, 32)) == []


def test_advice_spares_fc_layers_slid_as_convs_and_names_dilations_rule():
    """fc_to_conv's layers span their input (or half of it, slid over larger images):
    the notes' FC -> CONV, not a large filter to stack from 3x3s nor a shrinking CONV to
    pad; a dilated CONV's padding rule is D*(F-1)/2 (the advice had said (F-1)/2 = 2
    for F = 3)."""
    from convnet.models import fc_to_conv
    from convnet.zoo import alexnet_torchvision, vgg16
    for make in (alexnet_torchvision, vgg16):
        net = fc_to_conv(make(rng=np.random.default_rng(0)).eval(), (3, 224, 224))
        for size in (224, 384):
            assert advice_for(net, (3, size, size)) == [], (make.__name__, size)
    # a global average pool slid as AvgPool2d(7, stride 1) (ResNet's): not a large
    # pooling window that loses information, as the advice had said
    from convnet.layers.base import counting_only
    from convnet.zoo import resnet18
    with counting_only():
        net = fc_to_conv(resnet18(), (3, 224, 224))
    assert advice_for(net, (3, 384, 384)) == []
    tips = advice_for(Sequential(Conv2d(3, 8, 3, dilation=2)), (3, 32, 32))
    assert len(tips) == 1 and "P=D*(F-1)/2=2 would keep the size" in tips[0]
    # a large filter on a large plane is still advised against
    tips = advice_for(Sequential(Conv2d(3, 8, 3, padding=1), Conv2d(8, 8, 7)), (3, 32, 32))
    assert len(tips) == 2 and "a 7x7 filter after the first CONV" in tips[0]


def test_advice_is_listed_at_the_end_of_the_text():
    s = summary(Sequential(Conv2d(3, 8, 3), MaxPool2d(5, fit="floor")), (3, 227, 227))
    assert len(s.advice) == 3
    text = s.to_text()
    tail = text[text.index("Advice"):]
    assert all(tip in tail for tip in s.advice)
    assert s.to_dict()["advice"] == s.advice


# -- bad arguments ----------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    ({"input_shape": (3, 0, 32)}, "input_shape"),
    ({"input_shape": (1, 3, 32, 32)}, "input_shape"),
    ({"input_shape": 32}, "input_shape"),
    ({"batch_size": 0}, "batch_size"),
    ({"optimizer": "lbfgs"}, "optimizer must be one of .*adam"),
    ({"dtype": np.int32}, "dtype must be float32"),
    ({"budget": "lots"}, "budget"),
])
def test_bad_arguments(kwargs, match):
    args = {"input_shape": (3, 16, 16), **kwargs}
    with pytest.raises(ValueError, match=match):
        summary(small_net(np.random.default_rng(0)), **args)


def test_a_volume_that_does_not_fit_names_the_layer():
    with pytest.raises(ValueError, match="2 Conv2d.*expected 4 input channels"):
        summary(Sequential(Conv2d(3, 8, 3, padding=1), ReLU(), Conv2d(4, 8, 3)), (3, 8, 8))
    with pytest.raises(ValueError, match="model must be a Layer"):
        summary("vgg16", (3, 224, 224))


ALEXNET = ("INPUT 227x227x3 -> CONV 96 F11 S4 P0 -> RELU -> LRN -> POOL F3 S2 -> "
           "CONV 256 F5 G2 -> RELU -> LRN -> POOL F3 S2 -> CONV 384 -> RELU -> CONV 384 G2 -> "
           "RELU -> CONV 256 G2 -> RELU -> POOL F3 S2 -> DROPOUT -> FC 4096 -> RELU -> "
           "DROPOUT -> FC 4096 -> RELU -> FC 1000")


def test_the_zoo_and_the_notation_count_the_same_net_alike():
    """The zoo's RELUs after a CONV, FC or batch norm write in place, as the notation's
    (and torchvision's) do: AlexNet's memory had been 1.52x the notation's for the same
    layers, every RELU an extra copy of its input."""
    from convnet.zoo import get_model
    zoo = summary(get_model("alexnet"), (3, 227, 227))
    notation = summary(from_notation(ALEXNET), (3, 227, 227))
    assert zoo.total_params == notation.total_params and zoo.total_macs == notation.total_macs
    assert zoo.memory["activations"] == notation.memory["activations"] == 5_088_288


@pytest.mark.parametrize("name", ["alexnet", "resnet18", "googlenet_torchvision",
                                  "densenet_bc_100"])
def test_every_zoo_relu_after_a_layer_that_keeps_its_input_is_in_place(name):
    """In a Sequential, and in a Residual's body (ResNet's block RELUs follow a batch
    norm there)."""
    from convnet.layers import BatchNorm2d, Conv2d, Linear, ReLU
    from convnet.models import Container, Residual, Sequential
    from convnet.zoo import get_model
    seen = 0
    stack = [get_model(name)]
    while stack:
        container = stack.pop()
        children = list(container.children())
        stack += [c for c in children if isinstance(c, Container)]
        if isinstance(container, Residual):
            children = [container[key] for key in container.body_keys]
        if isinstance(container, (Sequential, Residual)):
            for before, layer in zip(children, children[1:]):
                if isinstance(layer, ReLU):
                    kept = isinstance(before, (Conv2d, Linear, BatchNorm2d))
                    assert layer.inplace is kept, (name, before, layer)
                    seen += kept
    assert seen > 0


@pytest.mark.parametrize("name", ["googlenet", "googlenet_torchvision"])
def test_summary_walks_past_googlenets_auxiliary_heads(name):
    """A side head passes its input on: the stage after it sees the 14x14x512 volume, not
    the head's class scores (the summary, and the report with it, had failed there)."""
    from convnet.zoo import get_model
    net = get_model(name, aux_logits=True, rng=np.random.default_rng(0))
    found = summary(net, net.input_shape)
    assert found.total_params == net.num_params()
    assert found.layers[-1].output_shape == (1000,)
    heads = [row for row in found.layers if row.name.startswith("aux1.")]
    assert heads and heads[-1].output_shape == (1000,)
    after = next(row for row in found.layers if row.name.startswith("inception4b."))
    assert after.input_shape == (512, 14, 14)


def test_an_enlarging_adaptive_pool_adds_nothing_to_the_receptive_field():
    """VGG at 32x32: pool5 is 1x1 and the adaptive pool repeats it 7x7 times; the FC
    after it sees pool5's one neuron, so its field stays pool5's (it had been 342)."""
    from convnet.zoo import get_model
    net = get_model("vgg11", input_size=32, rng=np.random.default_rng(0))
    rows = {r.name: r for r in summary(net, (3, 32, 32)).layers}
    assert rows["avgpool"].output_shape == (512, 7, 7)
    pool5 = rows["features.20"].receptive_field
    assert pool5 == (150, 150)
    assert rows["classifier.0"].receptive_field == pool5
    # at 64x64 pool5 is 2x2 (field 212, jump 32): the FC sees 212 + 32 (it had been 276)
    net = get_model("vgg16", input_size=64, rng=np.random.default_rng(0))
    rows = {r.name: r for r in summary(net, (3, 64, 64)).layers}
    assert rows["features.30"].receptive_field == (212, 212)
    assert rows["classifier.0"].receptive_field == (244, 244)


def test_the_activation_estimate_counts_the_arrays_blocks_make():
    """DenseNet's running concatenations, Concat's output and a residual sum are arrays
    of their own: a DenseBlock's forward peaked at 1.5x the estimate that left them out
    (densenet_bc_100: 138.5 MB against 88.5 MB at batch 4); counted, the estimate is
    within a few percent of the forward's peak (tracemalloc, every NumPy allocation)."""
    import gc

    from convnet.functional.conv import release_scratch
    rng = np.random.default_rng(5)
    depth, layers = 8, {}
    for i in range(8):
        layers[f"l{i}"] = Sequential({"norm": BatchNorm2d(depth), "relu": ReLU(),
                                      "conv": Conv2d(depth, 8, 3, padding=1, rng=rng)})
        depth += 8
    net = Sequential({"block": DenseBlock(layers)}).train()
    x = rng.standard_normal((4, 8, 16, 16)).astype(np.float32)
    net.forward(x)
    release_scratch()
    gc.collect()
    peak = peak_bytes(net.forward, x)
    estimate = summary(net, (8, 16, 16), batch_size=4).memory["activations"]
    assert 0.85 < estimate / peak < 1.25, (estimate, peak)


def test_advice_still_names_a_large_filter_with_spatial_layers_after_it():
    """The FC -> CONV exemption is for a CONV with only 1x1 CONVs after it: a 7x7 CONV
    on a 12x12 map followed by a 3x3 CONV had lost its advice too."""
    net = from_notation("INPUT 48x48x3 -> CONV 8 -> POOL -> POOL -> CONV 16 F7 P0 -> RELU "
                        "-> POOL -> CONV 32 F3 P0 -> FC 10")
    tips = summary(net, net.input_shape).advice
    assert any("a 7x7 filter after the first CONV layer" in tip for tip in tips), tips
    assert any("S=1 shrinks 12x12x8 to 6x6x16" in tip for tip in tips), tips


def test_the_table_says_its_axis_orders_and_what_a_mult_add_counts():
    """The output column is W x H x D but RF and jump were H x W without saying so (a
    rectangular net read swapped), and the notes' colRow counts biases where mult-adds
    do not."""
    from convnet.models import from_notation
    net = from_notation("INPUT 64x32x3 -> CONV 4 F1x3 P0x1 -> POOL F1x2 -> FC 2")
    text = summary(net, net.input_shape).to_text()
    assert "RF HxW (jump)" in text.splitlines()[0]
    assert "64x32x4" in text and "1x3 (1)" in text
    assert "per batch of 1 (bias adds not counted)" in text


def test_an_fc_layer_on_a_volume_sees_its_rows_only():
    """FC layers take a volume as PyTorch's do, acting on its last axis (W): the summary
    had given them the whole grid as their receptive field."""
    from convnet.layers import Conv2d, Linear, ReLU
    from convnet.models import Sequential
    net = Sequential(Conv2d(3, 8, 3), ReLU(), Linear(30, 10))
    rows = summary(net, (3, 32, 32)).layers
    assert rows[-1].output_shape == (8, 30, 10)
    # along W (now the features) every output sees the same whole rows: no jump
    assert (rows[-1].receptive_field, rows[-1].jump) == ((3, 32), (1, 0))
    # a CONV after it combines features, each of which sees the whole row: the field
    # stays the row's width (it had been 24 on an 8-wide input)
    net = Sequential(Linear(8, 6), Conv2d(1, 1, 3))
    assert summary(net, (1, 10, 8)).receptive_field == (3, 8)


@pytest.mark.parametrize("then_conv", [False, True], ids=["pool-fc", "pool-conv-fc"])
@pytest.mark.parametrize("size, pooled", [(4, 5), (12, 4), (6, 5), (9, 2), (2, 7)])
def test_an_fc_after_adaptive_pooling_sees_exactly_the_input(size, pooled, then_conv):
    """Without padding, an FC layer after an adaptive pool sees the whole input and no
    more, whether the pool enlarges or has uneven windows, and with a 1x1 CONV between:
    the field had been 5 on a 4x4 input (pooled to 5x5), 11 on 12x12 (to 4x4), 8 on 2x2
    (to 7x7, then a CONV). Checked by backpropagation."""
    first = Conv2d(1, 1, 3 if size > 2 else 1, dtype=np.float64)
    middle = [Conv2d(1, 1, 1, dtype=np.float64)] if then_conv else []
    net = Sequential(first, AdaptiveAvgPool2d(pooled), *middle,
                     Flatten(), Linear(pooled * pooled, 1, dtype=np.float64))
    for p in net.parameters():
        p[...] = 1.0
    net.forward(np.zeros((1, 1, size, size)))
    seen = np.flatnonzero(np.abs(net.backward(np.ones((1, 1)))[0, 0]).sum(0))
    assert seen.max() - seen.min() + 1 == size
    assert summary(net, (1, size, size)).receptive_field == (size, size)


def test_leaky_relu_and_dropout_in_place_count_their_training_output():
    """LeakyReLU and Dropout with inplace=True write into their input at inference only;
    the summary had counted no training memory for their output."""
    from convnet.layers import Conv2d, Dropout, LeakyReLU, ReLU
    from convnet.models import Sequential
    for layer in (LeakyReLU(0.1, inplace=True), Dropout(0.5, inplace=True)):
        rows = summary(Sequential(Conv2d(3, 8, 3), layer), (3, 32, 32)).layers
        assert [r.activation_bytes for r in rows] == [7200 * 4, 7200 * 4]
    rows = summary(Sequential(Conv2d(3, 8, 3), ReLU(inplace=True)), (3, 32, 32)).layers
    assert [r.activation_bytes for r in rows] == [7200 * 4, 0]


def test_an_identity_adds_no_activation_memory():
    """Identity hands back its input: no new values (fc_to_conv makes one of each Flatten
    and sliding pool it drops, and summary had counted each as a new volume)."""
    from convnet.layers.base import Identity
    from convnet.models.fc_to_conv import fc_to_conv
    net = Sequential(Conv2d(3, 4, 3), ReLU(), Flatten(), Linear(4 * 6 * 6, 10))
    converted = fc_to_conv(net, (3, 8, 8))
    assert isinstance(converted[2], Identity)
    rows = summary(converted, (3, 8, 8)).layers
    row = next(r for r in rows if r.type.startswith("Identity"))
    assert row.activation_values == 0 and row.activation_bytes == 0
    # the same volumes as the original net's: the CONV's 10x1x1 for the FC's 10
    assert summary(converted, (3, 8, 8)).memory["activations"] == summary(
        net, (3, 8, 8)).memory["activations"]


def test_the_table_shows_groups_block_names_and_aligned_digits():
    """The type column had cut 'groups=2' off AlexNet's CONVs, the name column every
    DenseNet block's concatenation rows to '....denselayer1 (concat)', a frozen row's
    '*' had moved its digits, and the input's row held the input batch, which the
    activations' total leaves out."""
    from convnet.zoo import get_model
    text = summary(get_model("alexnet"), (3, 227, 227)).to_text()
    assert "Conv2d(K=256, F=5, S=1, P=2, G=2)" in text and "LRN(n=5" in text
    rows = summary(get_model("densenet121"), (3, 224, 224)).to_text().splitlines()
    names = [row.split("  ")[0] for row in rows if "denselayer1 (concat)" in row]
    assert names == [f"...denseblock{i}.denselayer1 (concat)" for i in range(1, 5)]
    net = small_net(np.random.default_rng(0))
    net["0"].frozen = True
    lines = summary(net, (3, 16, 16)).to_text().splitlines()
    table = lines[:lines.index("")]
    params = table[0].index("params") + len("params")       # right-aligned under it
    ends = {len(row[:params + 2].rstrip(" *")) for row in table[3:] if row[:5] != "-----"}
    assert len(ends) == 1, table            # every count's last digit in one column
    assert table[2].startswith("input") and table[2].rstrip().endswith("1 (1)")
