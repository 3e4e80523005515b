"""Splitting large array operations over the CPU's cores.

NumPy runs a copy or an elementwise ufunc on one core while BLAS uses all of them, so on
a 2-core machine every non-GEMM step of a layer (im2col's copies, ReLU, pooling, the
transposes around a GEMM) would run at half speed. NumPy releases the GIL inside those
loops, so ``in_parallel`` runs one function on slices of an axis in a small thread pool.
Small work stays on the calling thread: a hand-off costs tens of microseconds.

>>> x = np.arange(8.0); out = np.empty_like(x)
>>> in_parallel(lambda part: np.multiply(x[part], 2, out=out[part]), len(x), x.nbytes)
>>> float(out[-1])
14.0
>>> split_parallel(lambda a, b: np.maximum(a, 5, out=b), x, out)
>>> out[:3]
array([5., 5., 5.])
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np  # noqa: F401  (the doctest)

THREADS = min(2, os.cpu_count() or 1)
_POOL = ThreadPoolExecutor(THREADS, thread_name_prefix="convnet") if THREADS > 1 else None
PARALLEL_BYTES = 1 << 20  # below this an operation is not worth a thread hand-off


def in_parallel(fn, size, nbytes):
    """Call fn(slice) over THREADS contiguous parts of range(size), the last part on the
    calling thread; or once over everything when nbytes < PARALLEL_BYTES or size < 2."""
    if _POOL is None or nbytes < PARALLEL_BYTES or size < 2:
        fn(slice(0, size))
        return
    step = -(-size // THREADS)
    parts = [slice(i, min(size, i + step)) for i in range(0, size, step)]
    futures = [_POOL.submit(fn, part) for part in parts[:-1]]
    try:
        fn(parts[-1])
    finally:   # even if this part fails, no worker may still be writing when we return
        for future in futures:
            future.result()


def split_parallel(fn, *arrays):
    """fn(*parts) over matching slices of same-shape arrays (any strides) along axis 0, or
    axis 1 when axis 0 is shorter than THREADS (a batch of one): for elementwise work,
    ``split_parallel(lambda a, b: np.maximum(a, 0, out=b), x, out)``."""
    shape = arrays[0].shape
    if not shape:
        fn(*arrays)
        return
    axis = 1 if shape[0] < THREADS and len(shape) > 1 else 0

    def run(part):
        index = part if axis == 0 else (slice(None), part)
        fn(*(a[index] for a in arrays))

    in_parallel(run, shape[axis], sum(a.nbytes for a in arrays))
