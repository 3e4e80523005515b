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

import contextlib
import contextvars
import functools
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from convnet.limits import cores_per_process
from convnet.limits import is_count as _count


def _thread_count():
    """$CONVNET_THREADS when set; else this process's share of the cores (at most 2)
    among the processes an MPI launcher started on this machine (MPICH's
    MPI_LOCALNRANKS, Open MPI's OMPI_COMM_WORLD_LOCAL_SIZE; ``limits.cores_per_process``),
    at least 1. A CONVNET_THREADS that is not a positive int is kept as SETTING_ERROR,
    which every model call (one_blas_thread) and the command line raise: raised at
    import, it would be a traceback before the command line could say it in one line."""
    global SETTING_ERROR
    text = os.environ.get("CONVNET_THREADS", "").strip()
    if text:
        if _count(text) and 1 <= int(text) <= MAX_THREADS:
            return int(text)
        SETTING_ERROR = (f"CONVNET_THREADS must be a positive int of at most "
                         f"{MAX_THREADS} (the threads of each process), got {text[:40]!r}")
    local = (os.environ.get("MPI_LOCALNRANKS")
             or os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE") or "1").strip()
    ranks = int(local) if _count(local) and int(local) > 0 else 1
    return max(1, min(2, cores_per_process(ranks)))


SETTING_ERROR = None     # what is wrong with $CONVNET_THREADS, if anything
MAX_THREADS = 256        # more threads than any machine convnet runs on has cores
THREADS = _thread_count()


def _new_pool():
    return ThreadPoolExecutor(THREADS, thread_name_prefix="convnet") if THREADS > 1 else None


_POOL = _new_pool()
PARALLEL_BYTES = 1 << 20  # below this an operation is not worth a thread hand-off
_local = threading.local()  # .busy: this thread is running one part of a split call


def in_parallel(fn, size, nbytes):
    """Call fn(slice) over THREADS contiguous parts of range(size), the last part on the
    calling thread; or once over everything when nbytes < PARALLEL_BYTES or size < 2, or
    when called from inside a part (every thread already has its own part)."""
    if _POOL is None or nbytes < PARALLEL_BYTES or size < 2 or getattr(_local, "busy", False):
        fn(slice(0, size))
        return
    _split(fn, size)


def per_thread(fn, size):
    """Call fn(slice) over THREADS parts of range(size), each part on its own thread with
    BLAS on one thread: every thread then runs a whole pipeline of its own (a block's
    copies, its GEMM, the passes after it) on blocks small enough to stay in its core's
    cache, where splitting each step over both cores would stream every step's arrays
    through memory. Once over everything, BLAS as it is, for one part (size < 2), inside
    a part, or when BLAS's threads cannot be set (threadpoolctl is not installed, or
    knows no BLAS here)."""
    if _POOL is None or size < 2 or getattr(_local, "busy", False) or not _controller():
        fn(slice(0, size))
        return
    with one_blas_thread():
        _split(fn, size)


def one_thread(fn, *args):
    """fn(*args) on the calling thread alone, BLAS's included: every split inside it
    (in_parallel, per_thread, matmul) runs there too. For work too small to be worth a
    hand-off to another thread."""
    if getattr(_local, "busy", False):          # inside a part already: nothing splits
        return fn(*args)
    with one_blas_thread():
        _local.busy = True
        try:
            return fn(*args)
        finally:
            _local.busy = False


def _split(fn, size):
    step = -(-size // THREADS)
    parts = [slice(i, min(size, i + step)) for i in range(0, size, step)]
    # Each worker runs in a copy of the caller's context: NumPy's error settings
    # (np.errstate) are context variables, so a part raises or warns as the caller would.
    try:
        futures = [_POOL.submit(contextvars.copy_context().run, _part, fn, part)
                   for part in parts[:-1]]
    except RuntimeError:    # the interpreter is shutting down (an atexit handler): no pool
        _part(fn, slice(0, size))
        return
    try:
        _part(fn, parts[-1])
    finally:   # even if this part fails, no worker may still be writing when we return
        for future in futures:
            future.result()


def _part(fn, part):
    _local.busy = True
    try:
        fn(part)
    finally:
        _local.busy = False


_blas = None   # threadpoolctl's controller of the loaded BLAS libraries, or False for none
_held = threading.Lock()   # guards the two below
_holders = 0               # how many calls, on any thread, hold BLAS to one thread now
_original = None           # each BLAS library's thread count before they did


def _after_fork():
    """In a child process forked from this one: the pool's threads and any hold on BLAS
    stayed in the parent (the child would wait on them for good): start afresh, BLAS's
    threads as they were before a hold the fork came in."""
    global _POOL, _held, _holders, _original
    if _holders and _original and _controller():
        _set_blas(_controller().lib_controllers, _original)
    _POOL, _held, _holders, _original = _new_pool(), threading.Lock(), 0, None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def _controller():
    """threadpoolctl's controller of the loaded BLAS libraries, or False for none."""
    global _blas
    if _blas is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _blas = False
        else:
            found = ThreadpoolController().select(user_api="blas")
            _blas = found if found.lib_controllers else False
    return _blas


@contextlib.contextmanager
def one_blas_thread():
    """Hold BLAS to one thread for the block: convnet's own threads do the parallel work
    (per_thread, matmul), and BLAS's worker threads stay asleep. That also makes speed
    independent of whether NumPy was imported before convnet: OpenBLAS's workers,
    started without convnet's OPENBLAS_THREAD_TIMEOUT, spin for about 0.1 s after every
    multi-threaded GEMM on the cores convnet's threads need. Nested and concurrent holds
    share one limit, set by the first and lifted by the last. Without threadpoolctl (the
    ``fast`` extra) it does nothing. Raises SETTING_ERROR, if there is one."""
    global _holders, _original
    if SETTING_ERROR is not None:
        raise ValueError(SETTING_ERROR)
    controller = _controller()
    if not controller:
        yield
        return
    with _held:
        if _holders == 0:
            libraries = controller.lib_controllers
            _original = [lib.get_num_threads() for lib in libraries]
            try:
                _set_blas(libraries, [1] * len(libraries))
            except BaseException:      # a Ctrl-C half way: every library as it was
                _set_blas(libraries, _original)
                raise
        _holders += 1
    try:
        yield
    finally:
        with _held:
            if _holders > 0:     # (0 in a child forked inside the hold: ended there)
                _holders -= 1
                if _holders == 0:
                    _set_blas(controller.lib_controllers, _original)


def _set_blas(libraries, counts):
    """Set each BLAS library's thread count, from whichever thread this is. threadpoolctl
    lets only the first thread that sets OpenBLAS's count set it again (from others it
    does nothing) until that thread lets go: it is let go around each set, so that a
    model call on any thread holds BLAS, and the last hold's end puts it back."""
    let_go = _openblas_let_go()
    for lib, count in zip(libraries, counts):
        if count is None:
            continue
        let_go()
        try:
            lib.set_num_threads(count)
        finally:
            let_go()


def _openblas_let_go():
    """threadpoolctl's OpenBLASController.clear_controlling_thread(force=True) (3.6 on),
    else a function that does nothing (earlier versions have no ownership)."""
    import threadpoolctl
    clear = getattr(getattr(threadpoolctl, "OpenBLASController", None),
                    "clear_controlling_thread", None)
    return (lambda: clear(force=True)) if clear is not None else (lambda: None)


def holding_blas(method):
    """Decorator: run ``method`` inside one_blas_thread (the containers' forward, backward
    and infer: a model call holds BLAS once, for all its layers)."""
    @functools.wraps(method)
    def held(*args, **kwargs):
        if getattr(_local, "holding", False):       # an outer call holds it already
            return method(*args, **kwargs)
        _local.holding = True
        try:
            with one_blas_thread():
                return method(*args, **kwargs)
        finally:
            _local.holding = False
    return held


MATMUL_SPLIT_FLOPS = 1 << 22   # below this, a matrix product is not worth a hand-off
FEW_ROWS = 32   # up to this many rows of a, x @ W.T is split over the rows of W


def matmul(a, b, out=None):
    """np.matmul(a, b, out), split between convnet's threads when it is large: each
    thread computes its share of the output's columns (or rows, when there are more of
    them) with BLAS on one thread (per_thread). a (..., M, K), b (..., K, N). An FC
    layer's x @ W.T with few rows of x (inference on a small batch) is split as
    (W[part] @ x.T).T: each thread then streams its own rows of W, which BLAS does up to
    twice as fast as a block of W.T's columns."""
    m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
    batch = math.prod(np.broadcast_shapes(a.shape[:-2], b.shape[:-2]))
    if (_POOL is None or getattr(_local, "busy", False) or not _controller()
            or 2 * batch * m * k * n < MATMUL_SPLIT_FLOPS):
        return np.matmul(a, b, out=out)
    if a.ndim == b.ndim == 2 and m <= FEW_ROWS < n and b.T.flags.c_contiguous:
        out_t = np.empty((n, m), dtype=np.result_type(a, b))
        per_thread(lambda part: np.matmul(b.T[part], a.T, out=out_t[part]), n)
        if out is None:
            return np.ascontiguousarray(out_t.T)
        np.copyto(out, out_t.T)
        return out
    if out is None:
        shape = (*np.broadcast_shapes(a.shape[:-2], b.shape[:-2]), m, n)
        out = np.empty(shape, dtype=np.result_type(a, b))
    if n >= m:
        per_thread(lambda part: np.matmul(a, b[..., part], out=out[..., part]), n)
    else:
        per_thread(lambda part: np.matmul(a[..., part, :], b, out=out[..., part, :]), m)
    return out


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
