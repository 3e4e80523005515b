"""Weights in and out: torchvision-layout PyTorch nets against the zoo, key for key.

For each zoo family with a torchvision variant, the same net is written below as a compact
nn.Module with torchvision's attribute names (torchvision itself is not installed), so its
state_dict keys are torchvision's. It gets random weights and random BN statistics (eval
mode BN is then not the identity), is saved with torch.save, read back with
convnet.io.load_torch (no torch, no pickle code), loaded strictly into the zoo model, and
both nets run in eval mode on the same input:
    float64: rel_error < 1e-9        float32 (a float32 checkpoint): rel_error < 1e-4
The other direction: a convnet state_dict saved with save_tensors loads strictly into the
torch module through safetensors.torch.load_file and gives the same outputs.
"""


from collections import OrderedDict

import numpy as np
import pytest
import safetensors.torch
import torch
from torch import nn

from convnet.io import load_tensors, load_torch, save_tensors
from convnet.zoo import (
    alexnet_torchvision,
    densenet121,
    densenet_bc_100,
    googlenet_torchvision,
    resnet18,
    resnet50,
    vgg11,
    vgg11_bn,
)
from tests.torch_models import (
    VGG,
    VGG11,
    AlexNet,
    BasicBlock,
    Bottleneck,
    DenseNet,
    GoogLeNet,
    ResNet,
)
from tests.utils import rel_error

NUM_CLASSES, BATCH = 10, 2

# name: (torch builder, convnet builder, input side), both with NUM_CLASSES outputs
CASES = {
    "alexnet_torchvision": (lambda: AlexNet(NUM_CLASSES),
                            lambda **kw: alexnet_torchvision(NUM_CLASSES, 64, **kw), 64),
    "vgg11": (lambda: VGG(VGG11, NUM_CLASSES, batch_norm=False),
              lambda **kw: vgg11(NUM_CLASSES, 32, **kw), 32),
    "vgg11_bn": (lambda: VGG(VGG11, NUM_CLASSES, batch_norm=True),
                 lambda **kw: vgg11_bn(NUM_CLASSES, 32, **kw), 32),
    "resnet18": (lambda: ResNet(BasicBlock, (2, 2, 2, 2), NUM_CLASSES),
                 lambda **kw: resnet18(NUM_CLASSES, 64, **kw), 64),
    "resnet50": (lambda: ResNet(Bottleneck, (3, 4, 6, 3), NUM_CLASSES),
                 lambda **kw: resnet50(NUM_CLASSES, 32, **kw), 32),
    "densenet121": (lambda: DenseNet(32, (6, 12, 24, 16), 64, NUM_CLASSES),
                    lambda **kw: densenet121(NUM_CLASSES, 32, **kw), 32),
    "densenet_bc_100": (lambda: DenseNet(12, (16, 16, 16), 24, NUM_CLASSES, stem="cifar"),
                        lambda **kw: densenet_bc_100(NUM_CLASSES, 16, **kw), 16),
    "googlenet_torchvision": (
        lambda: GoogLeNet(NUM_CLASSES, aux_logits=False),
        lambda **kw: googlenet_torchvision(NUM_CLASSES, 64, **kw), 64),
    "googlenet_torchvision_aux": (
        lambda: GoogLeNet(NUM_CLASSES, aux_logits=True),
        lambda **kw: googlenet_torchvision(NUM_CLASSES, 64, aux_logits=True, **kw), 64),
}


def randomize_(module, seed):
    """Random biases, BN affine parameters and running statistics, in place.

    CONV and FC weights keep torch's default (random) init, drawn under ``seed``; the
    1-d tensors are drawn from NumPy so that eval-mode BN is far from the identity.
    """
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for key, t in module.state_dict().items():
            if t.dim() != 1:  # weights, and num_batches_tracked (0-d)
                continue
            is_bn = isinstance(module.get_submodule(key.rsplit(".", 1)[0]), nn.BatchNorm2d)
            if key.endswith("running_var") or (is_bn and key.endswith("weight")):
                t.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, t.shape)))
            else:  # biases, BN beta, running_mean
                t.copy_(torch.from_numpy(0.1 * rng.standard_normal(t.shape)))
    return module


def torch_net(name, seed=0):
    """The torch model of CASES[name] in float64 eval mode, with random weights."""
    with torch.random.fork_rng():  # seeded init without touching the global torch state
        torch.manual_seed(seed)
        net = CASES[name][0]()
    return randomize_(net.double().eval(), seed)


def torch_forward(net, x):
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()


def random_input(name):
    side = CASES[name][2]
    return np.random.default_rng(1).standard_normal((BATCH, 3, side, side))


@pytest.fixture(scope="module", params=list(CASES))
def checkpoint(request, tmp_path_factory):
    """(name, float64 and float32 torch.save files of one net, input, their outputs)."""
    name = request.param
    net = torch_net(name)
    folder = tmp_path_factory.mktemp(name)
    path64, path32 = folder / "float64.pth", folder / "float32.pth"
    x = random_input(name)
    torch.save(net.state_dict(), path64)
    out64 = torch_forward(net, x)
    net.float()
    torch.save(net.state_dict(), path32)
    out32 = torch_forward(net, x.astype(np.float32))
    return name, path64, path32, x, out64, out32


def zoo_net(name, dtype):
    return CASES[name][1](dtype=dtype, rng=np.random.default_rng(2)).eval()


def test_torch_checkpoint_runs_the_same_in_float64(checkpoint):
    name, path64, _, x, out64, _ = checkpoint
    state = load_torch(path64)
    model = zoo_net(name, np.float64)
    assert sorted(state) == sorted(model.state_dict())
    missing, unexpected = model.load_state_dict(state, strict=True)
    assert missing == [] and unexpected == []
    assert all(np.array_equal(model.state_dict()[k], v) for k, v in state.items())
    out = model.infer(x)
    assert out.dtype == np.float64 and out.shape == (BATCH, NUM_CLASSES)
    assert np.abs(out64).max() > 1e-6  # the comparison below means something
    assert rel_error(out, out64) < 1e-9


def test_float32_torch_checkpoint_runs_the_same_in_float32(checkpoint):
    name, _, path32, x, _, out32 = checkpoint
    state = load_torch(path32)
    assert all(v.dtype == np.float32 for k, v in state.items()
               if not k.endswith("num_batches_tracked"))
    model = zoo_net(name, np.float32)
    model.load_state_dict(state, strict=True)
    out = model.infer(x.astype(np.float32))
    assert out.dtype == np.float32
    assert rel_error(out, out32) < 1e-4


# The FC-heavy AlexNet and VGG (100M+ parameters at any input size) are left out here
# to keep the file fast: their keys are checked in both directions above.
@pytest.mark.parametrize("name", ["resnet18", "resnet50", "densenet_bc_100",
                                  "googlenet_torchvision_aux"])
def test_convnet_weights_load_in_torch_via_safetensors(name, tmp_path):
    """The other direction: convnet's state_dict -> safetensors -> torch, strictly."""
    model = zoo_net(name, np.float64)
    rng = np.random.default_rng(3)
    for key, value in model.state_dict().items():  # non-trivial BN statistics
        if key.endswith("running_mean") or key.endswith("bias"):
            value[...] = 0.1 * rng.standard_normal(value.shape)
        elif key.endswith("running_var"):
            value[...] = rng.uniform(0.5, 1.5, value.shape)
    path = tmp_path / "model.safetensors"
    save_tensors(model.state_dict(), path)
    net = CASES[name][0]().double().eval()
    result = net.load_state_dict(safetensors.torch.load_file(str(path)), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    x = random_input(name)
    assert rel_error(torch_forward(net, x), model.infer(x)) < 1e-9


def test_mismatched_state_dict_lists_every_problem(tmp_path):
    """One key missing, one extra, one mis-shaped: one ValueError names all three."""
    state = torch_net("resnet18").state_dict()
    del state["layer3.1.bn2.running_var"]
    state["layer5.0.conv1.weight"] = torch.zeros(3, 3, dtype=torch.float64)
    state["fc.weight"] = torch.zeros(7, 512, dtype=torch.float64)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    model = zoo_net("resnet18", np.float64)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError) as err:
        model.load_state_dict(load_torch(path), strict=True)
    message = str(err.value)
    for text in ("layer3.1.bn2.running_var", "layer5.0.conv1.weight", "fc.weight",
                 str((NUM_CLASSES, 512)), str((7, 512))):
        assert text in message, (text, message)
    after = model.state_dict()  # strict loading copies nothing when it fails
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_a_checkpoint_without_num_batches_tracked_loads_as_in_torch(tmp_path):
    """Checkpoints from before PyTorch 0.4.1 have no num_batches_tracked: torch loads them
    strictly ("All keys matched", the counters keep their 0), and so does convnet."""
    net = torch_net("resnet18")
    old = OrderedDict((k, v) for k, v in net.state_dict().items()
                      if not k.endswith("num_batches_tracked"))
    path = tmp_path / "old.pth"
    torch.save(old, path)
    fresh = CASES["resnet18"][0]().double()
    result = fresh.load_state_dict(torch.load(path), strict=True)   # what torch does
    assert not result.missing_keys and not result.unexpected_keys
    counters = {k: int(v) for k, v in fresh.state_dict().items()
                if k.endswith("num_batches_tracked")}
    model = zoo_net("resnet18", np.float64)
    assert model.load_state_dict(load_torch(path), strict=True) == ([], [])
    assert {k: int(v) for k, v in model.state_dict().items()
            if k.endswith("num_batches_tracked")} == counters == dict.fromkeys(counters, 0)
    x = random_input("resnet18")
    assert rel_error(model.infer(x), torch_forward(fresh.eval(), x)) < 1e-9
    # the model's other keys are still required
    del old["fc.bias"]
    torch.save(old, path)
    with pytest.raises(ValueError, match=r"missing keys: fc\.bias$"):
        zoo_net("resnet18", np.float64).load_state_dict(load_torch(path))


@pytest.mark.parametrize("wrap, prefix", [
    (nn.DataParallel, "module."),
    (lambda net: torch.compile(net), "_orig_mod."),
    (lambda net: torch.compile(nn.DataParallel(net)), "_orig_mod.module."),
])
def test_a_wrapped_modules_checkpoint_loads_without_the_prefix(tmp_path, wrap, prefix):
    """nn.DataParallel / DDP save 'module.conv1.weight', torch.compile
    '_orig_mod.conv1.weight': read as the model's keys, with a warning naming the
    wrapper; the same outputs as the torch net."""
    from convnet.spec import resolve_model

    net = torch_net("resnet18")
    state = wrap(net).state_dict()
    assert all(key.startswith(prefix) for key in state)
    path = tmp_path / "wrapped.pth"
    torch.save(state, path)
    with pytest.warns(UserWarning, match=rf"{path}: every key starts with "
                                         rf"'{prefix}' \(saved from .*\); read without it"):
        model = resolve_model(str(path), num_classes=NUM_CLASSES, architecture="resnet18",
                              input_shape=(3, 64, 64))
    x = random_input("resnet18").astype(np.float32)
    assert rel_error(model.eval().infer(x), torch_forward(net.float(), x)) < 1e-4


def test_torchvisions_densenet_keys_of_old_and_googlenets_aux_heads_load(tmp_path):
    """torchvision's DenseNet files name the dense layers' parts "norm.1", "conv.2", and
    its GoogLeNet files hold the aux heads (its default aux_logits=True): neither had
    loaded with --model densenet121 / googlenet_torchvision; torchvision's loaders read
    them."""
    import re

    from convnet.spec import resolve_model

    net = torch_net("densenet121")
    old = OrderedDict((re.sub(r"(denselayer\d+\.(?:norm|relu|conv))(\d)\.", r"\1.\2.", k), v)
                      for k, v in nn.DataParallel(net).state_dict().items()
                      if not k.endswith("num_batches_tracked"))    # as old files have none
    assert "module.features.denseblock1.denselayer1.norm.1.weight" in old
    torch.save(old, tmp_path / "densenet.pth")
    with pytest.warns(UserWarning, match="every key starts with 'module.'"):
        model = resolve_model(str(tmp_path / "densenet.pth"), num_classes=NUM_CLASSES,
                              architecture="densenet121", input_shape=(3, 32, 32))
    x = random_input("densenet121").astype(np.float32)
    assert rel_error(model.eval().infer(x), torch_forward(net.float(), x)) < 1e-4
    # both spellings of one tensor had loaded silently, keeping one by key order
    both = OrderedDict(net.state_dict())
    both["features.denseblock1.denselayer1.norm.1.weight"] = torch.full((64,), 5.0)
    torch.save(both, tmp_path / "both.pth")
    with pytest.raises(ValueError, match=r"both.pth: the keys 'features.denseblock1."
                                         r"denselayer1.norm1.weight' and 'features."
                                         r"denseblock1.denselayer1.norm.1.weight' both name"):
        resolve_model(str(tmp_path / "both.pth"), num_classes=NUM_CLASSES,
                      architecture="densenet121", input_shape=(3, 32, 32))

    net = torch_net("googlenet_torchvision_aux")
    torch.save(net.state_dict(), tmp_path / "googlenet.pth")
    with pytest.warns(UserWarning, match=r"googlenet.pth: the file's auxiliary classifiers "
                                         r"\(aux1, aux2: 20 tensors\) are left out: the "
                                         r"model has none"):
        model = resolve_model(str(tmp_path / "googlenet.pth"), num_classes=NUM_CLASSES,
                              architecture="googlenet_torchvision", input_shape=(3, 64, 64))
    x = random_input("googlenet_torchvision").astype(np.float32)
    assert rel_error(model.eval().infer(x), torch_forward(net.float(), x)) < 1e-4
    state = net.double().state_dict()           # a model with aux heads takes them
    aux = zoo_net("googlenet_torchvision_aux", np.float64)
    aux.load_state_dict({k: v.numpy() for k, v in state.items()})
    assert np.array_equal(aux["aux1"].state_dict()["fc1.weight"], state["aux1.fc1.weight"])
    del state["inception5b.branch1.conv.weight"]        # other keys are still required
    torch.save(state, tmp_path / "short.pth")
    with pytest.raises(ValueError, match=r"missing keys: inception5b\.branch1\.conv\.weight"), \
            pytest.warns(UserWarning, match="auxiliary classifiers"):
        resolve_model(str(tmp_path / "short.pth"), num_classes=NUM_CLASSES,
                      architecture="googlenet_torchvision", input_shape=(3, 64, 64))


def test_wrapper_prefixes_are_peeled_a_few_times_at_most(tmp_path):
    """A key of "module." repeated 200,000 times (a 1.4 MB file) had been peeled one
    prefix a pass, each pass copying every key: minutes of work before the refusal."""
    from safetensors.numpy import save_file

    from convnet.spec import resolve_model

    save_file({"module." * 50 + "w": np.zeros(1, np.float32)}, tmp_path / "deep.safetensors")
    with pytest.raises(ValueError) as err:
        resolve_model(str(tmp_path / "deep.safetensors"), architecture="lenet5")
    assert "every key of the file starts with 'module.module.module.module.', as " in \
        str(err.value)


def test_a_prefixed_checkpoint_that_does_not_fit_names_the_prefix(tmp_path):
    from convnet.spec import resolve_model

    state = nn.DataParallel(torch_net("resnet18")).state_dict()
    state["module.fc.weight"] = torch.zeros(7, 512, dtype=torch.float64)
    del state["module.fc.bias"]
    path = tmp_path / "wrapped.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"does not fit the architecture.*every key of the "
                                         r"file starts with 'module\.', as nn\.DataParallel"):
        resolve_model(str(path), num_classes=NUM_CLASSES, architecture="resnet18")


def test_a_bfloat16_safetensors_file_loads_as_its_pt_twin(tmp_path):
    """The same bfloat16 weights as a .safetensors and a .pt: both widen exactly to
    float32 (torch's .float()), and the model gives the torch net's outputs."""
    from convnet.spec import resolve_model

    net = torch_net("resnet18").to(torch.bfloat16)
    safetensors.torch.save_file(net.state_dict(), str(tmp_path / "w.safetensors"))
    torch.save(net.state_dict(), tmp_path / "w.pt")
    tensors, _ = load_tensors(tmp_path / "w.safetensors")
    expected = {k: (v.float() if v.is_floating_point() else v).numpy()
                for k, v in net.state_dict().items()}
    assert tensors.keys() == expected.keys()
    for key, value in tensors.items():
        assert value.dtype == expected[key].dtype and np.array_equal(value, expected[key])
        assert np.array_equal(value, load_torch(tmp_path / "w.pt")[key])
    model = resolve_model(str(tmp_path / "w.safetensors"), num_classes=NUM_CLASSES,
                          architecture="resnet18").eval()
    x = random_input("resnet18").astype(np.float32)
    assert rel_error(model.infer(x), torch_forward(net.float(), x)) < 1e-4


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2])
def test_every_bit_pattern_widens_as_torch_does(tmp_path, dtype):
    """Every value of bfloat16 and float8 (NaN, infinities, zeros, subnormals): load_tensors
    gives torch's .float() bit for bit."""
    size = torch.finfo(dtype).bits
    bits = torch.arange(2 ** size, dtype=torch.int32).to(
        torch.int16 if size == 16 else torch.uint8)
    tensor = bits.view(dtype).reshape(2, -1)
    safetensors.torch.save_file({"w": tensor, "b": torch.ones(3)}, str(tmp_path / "w.st"))
    got = load_tensors(tmp_path / "w.st")[0]["w"]
    expected = tensor.float().numpy()
    assert got.dtype == np.float32 and got.shape == expected.shape
    assert np.array_equal(got.view(np.uint32)[~np.isnan(got)],
                          expected.view(np.uint32)[~np.isnan(expected)])
    assert np.array_equal(np.isnan(got), np.isnan(expected))
