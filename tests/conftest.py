"""Test-wide settings: PyTorch on one thread (its workers only fight over the two cores
with NumPy's on the tiny arrays of these tests, which made small calls ~30x slower)."""

import torch

torch.set_num_threads(1)
