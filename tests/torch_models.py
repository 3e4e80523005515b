"""torchvision's architectures written in PyTorch with torchvision's attribute names.

torchvision is not installed here; these compact nn.Modules give the same state_dict keys
(torchvision/models/*.py), so zoo models load their weights by key. Used by the interop
tests and by the benchmarks (bench/bench_nets.py) as the PyTorch side.
"""

from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from convnet.layers.activation import ReLU, ReLU6, Tanh
from convnet.layers.conv import Conv2d
from convnet.layers.dropout import Dropout
from convnet.layers.linear import Flatten, Linear
from convnet.layers.norm import BatchNorm1d, BatchNorm2d
from convnet.layers.pool import MaxPool2d
from convnet.models import Concat, DenseBlock, Residual, Sequential

# --------------------------------------------------------------------------------------
# torchvision's architectures, with its attribute names (torchvision/models/*.py)
# --------------------------------------------------------------------------------------


class AlexNet(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(6)
        self.classifier = nn.Sequential(
            nn.Dropout(0.5), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(),
            nn.Dropout(0.5), nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, num_classes),
        )

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


VGG11 = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]
VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG(nn.Module):
    def __init__(self, cfg, num_classes, batch_norm):
        super().__init__()
        layers, depth = [], 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            layers.append(nn.Conv2d(depth, v, 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(v))
            layers.append(nn.ReLU())
            depth = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(7)
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(), nn.Dropout(),
            nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(), nn.Linear(4096, num_classes),
        )

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, depth, width, stride, downsample):
        super().__init__()
        self.conv1 = nn.Conv2d(depth, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample = downsample

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, depth, width, stride, downsample):
        super().__init__()
        self.conv1 = nn.Conv2d(depth, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width * 4)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self, block, counts, num_classes):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        depth = 64
        for i, count in enumerate(counts):
            width, blocks = 64 * 2**i, []
            for j in range(count):
                stride = 2 if i > 0 and j == 0 else 1
                out = width * block.expansion
                down = None
                if stride != 1 or depth != out:
                    down = nn.Sequential(nn.Conv2d(depth, out, 1, stride, bias=False),
                                         nn.BatchNorm2d(out))
                blocks.append(block(depth, width, stride, down))
                depth = out
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(depth, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class _DenseLayer(nn.Module):
    def __init__(self, depth, growth, bn_size=4):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(depth)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(depth, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)

    def forward(self, features):
        x = torch.cat(features, 1)
        return self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))


class _DenseBlock(nn.ModuleDict):
    def __init__(self, count, depth, growth):
        super().__init__()
        for j in range(count):
            self.add_module(f"denselayer{j + 1}", _DenseLayer(depth + j * growth, growth))

    def forward(self, x):
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class _Transition(nn.Sequential):
    def __init__(self, depth, out):
        super().__init__()
        self.add_module("norm", nn.BatchNorm2d(depth))
        self.add_module("relu", nn.ReLU())
        self.add_module("conv", nn.Conv2d(depth, out, 1, bias=False))
        self.add_module("pool", nn.AvgPool2d(2, 2))


class DenseNet(nn.Module):
    """torchvision's DenseNet; stem="cifar" is DenseNet-BC's single 3x3 CONV stem."""

    def __init__(self, growth, blocks, stem_depth, num_classes, stem="imagenet"):
        super().__init__()
        if stem == "imagenet":
            stem_layers = [("conv0", nn.Conv2d(3, stem_depth, 7, 2, 3, bias=False)),
                           ("norm0", nn.BatchNorm2d(stem_depth)), ("relu0", nn.ReLU()),
                           ("pool0", nn.MaxPool2d(3, 2, 1))]
        else:
            stem_layers = [("conv0", nn.Conv2d(3, stem_depth, 3, padding=1, bias=False))]
        self.features = nn.Sequential(OrderedDict(stem_layers))
        depth = stem_depth
        for i, count in enumerate(blocks):
            self.features.add_module(f"denseblock{i + 1}", _DenseBlock(count, depth, growth))
            depth += count * growth
            if i != len(blocks) - 1:
                self.features.add_module(f"transition{i + 1}", _Transition(depth, depth // 2))
                depth //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(depth))
        self.classifier = nn.Linear(depth, num_classes)

    def forward(self, x):
        out = F.adaptive_avg_pool2d(F.relu(self.features(x)), (1, 1))
        return self.classifier(torch.flatten(out, 1))


class BasicConv2d(nn.Module):
    def __init__(self, d_in, d_out, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(d_in, d_out, kernel_size, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(d_out, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class Inception(nn.Module):
    def __init__(self, d_in, c1, r3, c3, r5, c5, proj):
        super().__init__()
        self.branch1 = BasicConv2d(d_in, c1, 1)
        self.branch2 = nn.Sequential(BasicConv2d(d_in, r3, 1), BasicConv2d(r3, c3, 3, 1, 1))
        # torchvision's known slip: a 3x3 where the paper has a 5x5
        self.branch3 = nn.Sequential(BasicConv2d(d_in, r5, 1), BasicConv2d(r5, c5, 3, 1, 1))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True),
                                     BasicConv2d(d_in, proj, 1))

    def forward(self, x):
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x),
                          self.branch4(x)], 1)


class InceptionAux(nn.Module):
    def __init__(self, d_in, num_classes):
        super().__init__()
        self.conv = BasicConv2d(d_in, 128, 1)
        self.fc1 = nn.Linear(2048, 1024)
        self.fc2 = nn.Linear(1024, num_classes)
        self.dropout = nn.Dropout(0.7)

    def forward(self, x):
        x = torch.flatten(self.conv(F.adaptive_avg_pool2d(x, (4, 4))), 1)
        return self.fc2(self.dropout(F.relu(self.fc1(x))))


class GoogLeNet(nn.Module):
    def __init__(self, num_classes, aux_logits):
        super().__init__()
        self.conv1 = BasicConv2d(3, 64, 7, 2, 3)
        self.maxpool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = BasicConv2d(64, 64, 1)
        self.conv3 = BasicConv2d(64, 192, 3, 1, 1)
        self.maxpool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.inception3a = Inception(192, 64, 96, 128, 16, 32, 32)
        self.inception3b = Inception(256, 128, 128, 192, 32, 96, 64)
        self.maxpool3 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.inception4a = Inception(480, 192, 96, 208, 16, 48, 64)
        self.inception4b = Inception(512, 160, 112, 224, 24, 64, 64)
        self.inception4c = Inception(512, 128, 128, 256, 24, 64, 64)
        self.inception4d = Inception(512, 112, 144, 288, 32, 64, 64)
        self.inception4e = Inception(528, 256, 160, 320, 32, 128, 128)
        self.maxpool4 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.inception5a = Inception(832, 256, 160, 320, 32, 128, 128)
        self.inception5b = Inception(832, 384, 192, 384, 48, 128, 128)
        self.aux1 = InceptionAux(512, num_classes) if aux_logits else None
        self.aux2 = InceptionAux(528, num_classes) if aux_logits else None
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(1024, num_classes)

    def forward(self, x):  # eval mode: the aux heads are skipped, as in torchvision
        x = self.maxpool2(self.conv3(self.conv2(self.maxpool1(self.conv1(x)))))
        x = self.maxpool3(self.inception3b(self.inception3a(x)))
        for key in ("4a", "4b", "4c", "4d", "4e"):
            x = getattr(self, f"inception{key}")(x)
        x = self.inception5b(self.inception5a(self.maxpool4(x)))
        return self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))


# --------------------------------------------------------------------------------------
# convnet models, rebuilt in PyTorch
# --------------------------------------------------------------------------------------

def to_torch(model):
    """The same convnet network in PyTorch (leaf layers and the graph blocks), with the
    weights and running statistics copied; float64 or float32 as the weights are."""
    if isinstance(model, Residual):
        return TorchResidual(model)
    if isinstance(model, Concat):
        return TorchConcat(model)
    if isinstance(model, DenseBlock):
        return TorchDense(model)
    if isinstance(model, Sequential):
        return nn.Sequential(*[to_torch(layer) for layer in model])
    dtype = getattr(torch, np.dtype(getattr(model, "dtype", np.float64)).name)
    if isinstance(model, Conv2d):
        padding = model.padding if model.pads[:2] == model.pads[2:] else "same"
        m = nn.Conv2d(model.in_channels, model.out_channels, model.kernel_size, model.stride,
                      padding, model.dilation, model.groups, "bias" in model.params,
                      model.padding_mode, dtype=dtype)
    elif isinstance(model, (BatchNorm1d, BatchNorm2d)):
        kind = nn.BatchNorm2d if isinstance(model, BatchNorm2d) else nn.BatchNorm1d
        m = kind(model.num_features, model.eps, model.momentum, dtype=dtype)
    elif isinstance(model, Linear):
        m = nn.Linear(model.in_features, model.out_features, "bias" in model.params,
                      dtype=dtype)
    elif isinstance(model, ReLU):
        return nn.ReLU(inplace=model.inplace)
    elif isinstance(model, ReLU6):
        return nn.ReLU6(inplace=model.inplace)
    elif isinstance(model, Tanh):
        return nn.Tanh()
    elif isinstance(model, MaxPool2d):
        return nn.MaxPool2d(model.kernel_size, model.stride, model.padding, model.dilation,
                            ceil_mode=model.ceil_mode)
    elif isinstance(model, Flatten):
        return nn.Flatten(model.start_dim, model.end_dim)
    elif isinstance(model, Dropout):
        return nn.Dropout(model.p)
    else:
        raise TypeError(model)
    with torch.no_grad():
        for key, value in {**model.params, **model.buffers}.items():
            getattr(m, key).copy_(torch.tensor(value))
    return m


class TorchResidual(nn.Module):
    def __init__(self, block):
        super().__init__()
        self.body = nn.Sequential(*[to_torch(block[k]) for k in block.body_keys])
        self.shortcut = to_torch(block["downsample"]) if block.shortcut_key else nn.Identity()
        self.post = to_torch(block[block.post_key]) if block.post_key else nn.Identity()

    def forward(self, x):
        return self.post(self.body(x) + self.shortcut(x))


class TorchConcat(nn.Module):
    def __init__(self, block):
        super().__init__()
        self.branches = nn.ModuleList(to_torch(b) for b in block)

    def forward(self, x):
        return torch.cat([b(x) for b in self.branches], 1)


class TorchDense(nn.Module):
    def __init__(self, block):
        super().__init__()
        self.layers = nn.ModuleList(to_torch(b) for b in block)

    def forward(self, x):
        features = [x]
        for layer in self.layers:
            features.append(layer(torch.cat(features, 1)))
        return torch.cat(features, 1)
