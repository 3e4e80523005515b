"""Layers: state (hyperparameters, params, grads, cache) around convnet.functional."""

from convnet.layers.base import Layer
from convnet.layers.conv import Conv2d, LocallyConnected2d

__all__ = ["Layer", "Conv2d", "LocallyConnected2d"]
