"""Layers: state (hyperparameters, params, grads, cache) around convnet.functional."""

from convnet.layers.activation import LeakyReLU, ReLU, ReLU6, Sigmoid, Tanh
from convnet.layers.base import Identity, Layer
from convnet.layers.conv import Conv2d, LocallyConnected2d
from convnet.layers.dropout import Dropout, Dropout2d
from convnet.layers.linear import Flatten, Linear
from convnet.layers.loss import CrossEntropyLoss, MultiMarginLoss
from convnet.layers.norm import BatchNorm1d, BatchNorm2d, LocalResponseNorm
from convnet.layers.pool import (
    AdaptiveAvgPool2d,
    AdaptiveMaxPool2d,
    AvgPool2d,
    LPPool2d,
    MaxPool2d,
)

__all__ = [
    "Layer", "Identity", "Conv2d", "LocallyConnected2d", "MaxPool2d", "AvgPool2d", "LPPool2d",
    "AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "ReLU", "ReLU6", "LeakyReLU", "Tanh", "Sigmoid",
    "Linear", "Flatten", "BatchNorm1d", "BatchNorm2d", "LocalResponseNorm", "Dropout",
    "Dropout2d", "CrossEntropyLoss", "MultiMarginLoss",
]
