"""GoogLeNet (Szegedy et al., 2014), Inception v1: the paper's Table 1, and torchvision's.

An Inception module runs four branches on the same volume and concatenates their outputs
along depth (a ``Concat``):

    branch1  1x1 CONV
    branch2  1x1 CONV (the "#3x3 reduce") -> 3x3 CONV
    branch3  1x1 CONV (the "#5x5 reduce") -> 5x5 CONV (torchvision: 3x3, a known slip)
    branch4  3x3/1 max pool -> 1x1 CONV (the "pool proj")

so (3a) on 28x28x192 gives 64 + 128 + 32 + 32 = 256 maps. The nine modules are a table
(Table 1's columns), the two variants are data, and one builder makes either with
torchvision's names and keys: conv1, maxpool1, conv2, conv3, maxpool2, inception3a, ...,
inception5b, [aux1, aux2], avgpool, dropout, flatten, fc; inside a module
inception3a.branch2.1.conv.weight. Every "conv" unit is a Sequential: conv + ReLU (paper,
with bias) or conv (no bias) + BatchNorm2d(eps=0.001) + ReLU (torchvision's BasicConv2d).

The auxiliary classifiers (``aux_logits=True``) sit after (4a) and (4d) as side heads: an
``AuxClassifier`` passes its input through and keeps its logits (see its docstring).
"""

from __future__ import annotations

import numpy as np

from convnet.layers.activation import ReLU
from convnet.layers.conv import Conv2d
from convnet.layers.dropout import Dropout
from convnet.layers.linear import Flatten, Linear
from convnet.layers.norm import BatchNorm2d, LocalResponseNorm
from convnet.layers.pool import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d
from convnet.models.config import register_container
from convnet.models.containers import Concat, Sequential, relus_in_place
from convnet.zoo.init import torchvision_init

# Table 1: (input depth, #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj).
INCEPTION = {
    "inception3a": (192, 64, 96, 128, 16, 32, 32),       # 28x28x256
    "inception3b": (256, 128, 128, 192, 32, 96, 64),     # 28x28x480
    "inception4a": (480, 192, 96, 208, 16, 48, 64),      # 14x14x512
    "inception4b": (512, 160, 112, 224, 24, 64, 64),     # 14x14x512
    "inception4c": (512, 128, 128, 256, 24, 64, 64),     # 14x14x512
    "inception4d": (512, 112, 144, 288, 32, 64, 64),     # 14x14x528
    "inception4e": (528, 256, 160, 320, 32, 128, 128),   # 14x14x832
    "inception5a": (832, 256, 160, 320, 32, 128, 128),   # 7x7x832
    "inception5b": (832, 384, 192, 384, 48, 128, 128),   # 7x7x1024
}
# The order of the stages between conv3 and the head; "maxpoolN" entries are 3x3/2 pools.
BODY = ["maxpool2", "inception3a", "inception3b", "maxpool3", "inception4a", "aux1",
        "inception4b", "inception4c", "inception4d", "aux2", "inception4e", "maxpool4",
        "inception5a", "inception5b"]

VARIANTS = {
    # The paper: biases, no BN, LRN after the first pool and after conv3 (Caffe's n=5,
    # alpha=1e-4, beta=0.75, k=1), 5x5 CONVs, 3x3/2 pools rounding up (28 -> 14 -> 7),
    # a fixed 7x7/1 average pool, dropout 0.4; aux heads: 5x5/3 average pool -> 4x4.
    "paper": {"batch_norm": False, "lrn": (5, 1e-4, 0.75, 1.0), "kernel5": 5,
              "maxpool4": 3, "avgpool": "fixed", "dropout": 0.4, "aux_pool": "fixed"},
    # torchvision's googlenet: BasicConv2d units, no LRN, 3x3 in branch3, a 2x2/2 last
    # pool, adaptive pools (any input size), dropout 0.2.
    "torchvision": {"batch_norm": True, "lrn": None, "kernel5": 3, "maxpool4": 2,
                    "avgpool": "adaptive", "dropout": 0.2, "aux_pool": "adaptive"},
}


@register_container           # from_config builds it again from a model file
class AuxClassifier(Sequential):
    """GoogLeNet's auxiliary classifier: a side head that passes its input through.

    In training mode, forward runs the head on x, keeps the result in ``self.logits``
    (N, num_classes) and returns x unchanged, so it can sit in a Sequential after (4a) or
    (4d); in eval mode it does nothing (torchvision skips the heads at test time). To train
    through it, set ``self.dlogits`` to the gradient of the weighted auxiliary loss (the
    paper weights each by 0.3) before the model's backward: backward then adds the head's
    input gradient to dout and clears dlogits. Without dlogits it passes dout through.

    Its multiply-adds (``macs``) are the head's, spent only in training mode.
    """

    skips_input_grad = False   # its backward takes only dout

    def __init__(self, layers):
        super().__init__(layers)
        self.logits = None   # (N, num_classes), from the last training-mode forward
        self.dlogits = None  # set by the training loop before backward

    def forward(self, x):
        self.logits = super().forward(x) if self.training else None
        return x

    def backward(self, dout):
        if self.dlogits is None:
            return dout
        if self.logits is None:
            raise RuntimeError(f"{self.where}: dlogits is set but the last forward ran in "
                               "eval mode, which computes no auxiliary logits")
        dlogits, self.dlogits = self.dlogits, None
        if dlogits.shape != self.logits.shape:
            raise ValueError(f"{self.where}: dlogits must have the shape of the logits "
                             f"{self.logits.shape}, got {dlogits.shape}")
        return dout + super().backward(dlogits)

    def infer(self, x):
        """Test-time forward (no caches kept): the identity, as in eval mode."""
        self.logits = None
        return x

    def output_shape(self, input_shape):
        super().output_shape(input_shape)  # checks that the head fits the volume
        return tuple(input_shape)


def _check_args(where, num_classes, input_size):
    """Positive ints, or a ValueError naming the model (before any layer is built)."""
    for arg, value in (("num_classes", num_classes), ("input_size", input_size)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{where}: {arg} must be a positive int, got {value!r}")


def build_googlenet(variant, num_classes=1000, input_size=224, *, aux_logits=False,
                    dtype=np.float32, rng=None):
    """Build GoogLeNet: ``variant`` is "paper" or "torchvision" (a key of VARIANTS).

    Args:
        variant: "paper" (Table 1, with LRN and 5x5 CONVs) or "torchvision".
        num_classes: outputs of the fc layer (and of the aux heads).
        input_size: side of the default square input; the paper's fixed 7x7 average pool
            needs 224, torchvision's adaptive pools take any input of at least 15x15.
        aux_logits: add the two auxiliary classifiers aux1 and aux2.
        dtype: float32 (default) or float64. rng: np.random.Generator for every init and
            for the dropout masks.
    """
    if variant not in VARIANTS:
        raise ValueError(f"build_googlenet: unknown variant {variant!r}; "
                         f"valid: {sorted(VARIANTS)}")
    name = "googlenet" if variant == "paper" else "googlenet_torchvision"
    _check_args(name, num_classes, input_size)
    v = VARIANTS[variant]
    rng = np.random.default_rng() if rng is None else rng
    init = {"dtype": dtype, "rng": rng}

    def unit(d_in, d_out, f, stride=1, padding=0, fit="exact"):
        """CONV + ReLU, or torchvision's BasicConv2d: CONV (no bias) + BN + ReLU."""
        conv = Conv2d(d_in, d_out, f, stride, padding, bias=not v["batch_norm"], fit=fit,
                      **init)
        if v["batch_norm"]:
            return Sequential({"conv": conv, "bn": BatchNorm2d(d_out, eps=1e-3, dtype=dtype),
                               "relu": ReLU()})
        return Sequential({"conv": conv, "relu": ReLU()})

    def inception(d_in, c1, r3, c3, r5, c5, proj):
        k5 = v["kernel5"]
        return Concat({
            "branch1": unit(d_in, c1, 1),
            "branch2": Sequential(unit(d_in, r3, 1), unit(r3, c3, 3, padding=1)),
            "branch3": Sequential(unit(d_in, r5, 1), unit(r5, c5, k5, padding=k5 // 2)),
            "branch4": Sequential(MaxPool2d(3, 1, 1), unit(d_in, proj, 1)),
        })

    def aux(d_in):
        pool = AvgPool2d(5, 3) if v["aux_pool"] == "fixed" else AdaptiveAvgPool2d(4)
        return AuxClassifier({
            "avgpool": pool,                                   # 14x14 -> 4x4
            "conv": unit(d_in, 128, 1),                        # 4x4x128
            "flatten": Flatten(),                              # 2048
            "fc1": Linear(128 * 4 * 4, 1024, **init),
            "relu": ReLU(),
            "dropout": Dropout(0.7, rng=rng),
            "fc2": Linear(1024, num_classes, **init),
        })

    def lrn(key):
        return {key: LocalResponseNorm(*v["lrn"])} if v["lrn"] else {}

    stages = {
        "conv1": unit(3, 64, 7, 2, 3, fit="floor"),             # 224 -> 112 (112.5 floored)
        "maxpool1": MaxPool2d(3, 2, ceil_mode=True),            # 112 -> 56
        **lrn("lrn1"),
        "conv2": unit(64, 64, 1),                               # the "#3x3 reduce" 64
        "conv3": unit(64, 192, 3, padding=1),                   # 56x56x192
        **lrn("lrn2"),
    }
    for key in BODY:
        if key in INCEPTION:
            stages[key] = inception(*INCEPTION[key])
        elif key.startswith("aux"):
            if aux_logits:
                stages[key] = aux(512 if key == "aux1" else 528)
        elif key == "maxpool4":
            stages[key] = MaxPool2d(v["maxpool4"], 2, ceil_mode=True)   # 14 -> 7
        else:
            stages[key] = MaxPool2d(3, 2, ceil_mode=True)               # 56 -> 28 -> 14
    stages["avgpool"] = AvgPool2d(7, 1) if v["avgpool"] == "fixed" else AdaptiveAvgPool2d(1)
    stages["dropout"] = Dropout(v["dropout"], rng=rng)
    stages["flatten"] = Flatten()
    stages["fc"] = Linear(1024, num_classes, **init)
    model = Sequential(stages)
    model.input_shape = (3, input_size, input_size)
    model.output_shape(model.input_shape)  # a clear error now if the input does not fit
    if variant == "torchvision":
        torchvision_init(model, "googlenet", rng)
    return relus_in_place(model)


def googlenet(num_classes=1000, *, aux_logits=False, dtype=np.float32, rng=None):
    """GoogLeNet as in the paper's Table 1: nine Inception modules, 224x224x3, no BN.

    [224x224x3] -> CONV 64 7x7/2 -> [112x112x64] -> POOL 3x3/2 -> LRN -> CONV 64 1x1
    -> CONV 192 3x3 -> LRN -> POOL -> [28x28x192] -> (3a) [28x28x256] -> (3b) [28x28x480]
    -> POOL -> (4a) .. (4e) [14x14x832] -> POOL -> (5a) -> (5b) [7x7x1024] -> AVG 7x7
    -> dropout 0.4 -> FC-1000.

    Parameters: 6,998,552 at 1000 classes with biases (Table 1's column sums to 6.8M;
    its per-row counts are rounded), without the aux heads.

    Args:
        num_classes: outputs of the fc layer.
        aux_logits: add the auxiliary classifiers after (4a) and (4d).
        dtype: float32 (default) or float64. rng: np.random.Generator for every init.

    >>> net = googlenet(rng=np.random.default_rng(0))
    >>> net.cut("inception3a").output_shape((3, 224, 224))
    (256, 28, 28)
    """
    return build_googlenet("paper", num_classes, 224, aux_logits=aux_logits, dtype=dtype,
                           rng=rng)


def googlenet_torchvision(num_classes=1000, input_size=224, *, aux_logits=False,
                          dtype=np.float32, rng=None):
    """GoogLeNet as torchvision builds it: BN units, 3x3 in branch3, keys as torchvision's.

    Keys: conv1.conv.weight, conv1.bn.running_mean, inception3a.branch1.conv.weight,
    inception3a.branch4.1.bn.bias, ..., aux1.fc1.weight, fc.weight. Parameters: 6,624,904
    at 1000 classes without the aux heads. A weights file with the aux heads (torchvision
    saves them by default) loads into this net without them (``resolve_model`` leaves them
    out). torchvision's ImageNet weights were trained with ``transform_input=True``: their
    net first maps each channel of ImageNet-normalized input back to (pixel - 0.5) / 0.5,
    which this net does not; give them input normalized that way.

    Args:
        num_classes: outputs of the fc layer.
        input_size: side of the default square input (adaptive pools: any >= 15).
        aux_logits: add the auxiliary classifiers after (4a) and (4d).
        dtype: float32 (default) or float64. rng: np.random.Generator for every init.
    """
    return build_googlenet("torchvision", num_classes, input_size, aux_logits=aux_logits,
                           dtype=dtype, rng=rng)
