"""Models: Sequential, graph blocks, the notes' arrow notation, FC <-> CONV conversion."""

from convnet.models.config import from_config
from convnet.models.containers import (
    Concat,
    Container,
    DenseBlock,
    Residual,
    Sequential,
    relus_in_place,
)
from convnet.models.fc_to_conv import conv_to_fc, fc_to_conv, slide
from convnet.models.notation import bind_counts, from_notation

__all__ = ["Container", "Sequential", "Residual", "Concat", "DenseBlock", "fc_to_conv",
           "conv_to_fc",
           "slide", "from_notation", "bind_counts", "from_config", "relus_in_place"]
