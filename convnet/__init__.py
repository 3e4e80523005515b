"""convnet: a ConvNet library on NumPy, written next to the CS231n notes."""

__version__ = "0.1.0"
