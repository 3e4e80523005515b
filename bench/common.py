"""Timing helpers shared by the side-by-side benchmarks against PyTorch.

Why blocks: NumPy's BLAS (OpenBLAS) and PyTorch (OpenMP, MKL, oneDNN) each keep worker
threads that spin for a while after a call returns. Alternating convnet and torch call by
call makes each pay for the other's spinning threads, which on a 2-core machine can double
a time. So ``time_blocks`` runs each implementation in a block (``warmup`` untimed calls,
then a run of timed calls), then the next implementation's block, and repeats the whole
round ``rounds`` times; an implementation's time is the median over all its timed calls.

Counting rule, as in the layers' ``macs``: one multiply-add is 2 FLOPs; a forward plus
backward pass of a conv or a matrix multiply costs 3x the forward FLOPs (forward, dx, dw).

>>> t = time_blocks({"sum": lambda: sum(range(1000))}, repeat=3, rounds=2)
>>> t["sum"].calls, t["sum"].median > 0
(6, True)
"""

from __future__ import annotations

import math
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Timing:
    """All timed calls of one implementation, in seconds."""

    name: str
    times: list[float] = field(default_factory=list)
    faults: int = 0       # minor page faults over all timed calls

    @property
    def faults_per_call(self):
        """Pages the OS had to map in per call: fresh large buffers (see time_blocks)."""
        return self.faults / max(self.calls, 1)

    @property
    def calls(self):
        return len(self.times)

    @property
    def median(self):
        return statistics.median(self.times)

    @property
    def best(self):
        return min(self.times)

    @property
    def spread(self):
        """Interquartile range over the median: 0.05 means the middle half is within 5%."""
        if len(self.times) < 4:
            return 0.0
        q1, _, q3 = statistics.quantiles(self.times, n=4)
        return (q3 - q1) / self.median

    def as_dict(self):
        return {"median_s": self.median, "best_s": self.best, "spread": self.spread,
                "calls": self.calls, "faults_per_call": self.faults_per_call}


def time_blocks(fns: dict[str, Callable[[], object]], repeat=5, rounds=3, warmup=1,
                min_block_s=0.0, max_calls=200, pause_s=0.0):
    """Time several implementations of the same work, interleaved in blocks.

    fns: name -> a callable doing one unit of work (no arguments).
    Each round runs, for every implementation in turn, ``warmup`` untimed calls and then
    ``calls`` timed ones; rounds are repeated ``rounds`` times. ``calls`` is ``repeat``,
    raised (up to ``max_calls``) so that a timed block lasts at least ``min_block_s`` by the
    first warm-up's estimate, which keeps fast ops from being timed on a handful of calls.
    ``pause_s`` sleeps before each block (lets the other library's spinning threads park).
    Returns name -> Timing, which also counts minor page faults: glibc serves a large
    buffer with fresh mmap'ed pages unless a larger block was freed before (its dynamic
    mmap threshold, at most 32 MiB), and each 4 KiB page then faults on first touch (a
    few microseconds each in a VM). So times depend on what the process allocated before:
    compare implementations within one run, and look at the faults when a time surprises.
    """
    if repeat < 1 or rounds < 1 or warmup < 0:
        raise ValueError(f"time_blocks: need repeat >= 1, rounds >= 1, warmup >= 0, got "
                         f"repeat={repeat}, rounds={rounds}, warmup={warmup}")
    timings = {name: Timing(name) for name in fns}
    calls = {}
    for _ in range(rounds):
        for name, fn in fns.items():
            if pause_s:
                time.sleep(pause_s)
            first = name not in calls
            for _ in range(max(warmup, 1) if first else warmup):
                t0 = time.perf_counter()
                fn()
                estimate = time.perf_counter() - t0
            if first:
                # The last warm-up call estimates the time of one call.
                need = math.ceil(min_block_s / max(estimate, 1e-9))
                calls[name] = max(repeat, min(need, max_calls))
            times = timings[name].times
            faults0 = _minor_faults()
            for _ in range(calls[name]):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            timings[name].faults += _minor_faults() - faults0
    return timings


def _minor_faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def gemm_peak(n=2048, repeat=8, warmup=2, blocks=3, dtype=np.float32, seed=0):
    """A practical BLAS peak: GFLOP/s of an (n x n) @ (n x n) np.matmul, the best of
    ``blocks`` blocks' medians (this VM's clock and neighbours move a block's rate by
    10-20%; a peak is what the machine sustains at its best).

    2*n^3 FLOPs per call. Use it to read a conv's GFLOP/s as a fraction of what a
    large, square, well-shaped matrix multiply gets on the same machine and threads.
    """
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, n), dtype=dtype)
    b = rng.standard_normal((n, n), dtype=dtype)
    out = np.empty((n, n), dtype=dtype)
    rates = []
    for _ in range(blocks):
        timing = time_blocks({"gemm": lambda: np.matmul(a, b, out=out)}, repeat=repeat,
                             rounds=1, warmup=warmup)["gemm"]
        rates.append(gflops(2 * n**3, timing.median))
    return max(rates)


def gflops(flops, seconds):
    """FLOPs and a time in seconds -> GFLOP/s."""
    return flops / seconds / 1e9


def blas_info():
    """Name and version of NumPy's BLAS, as NumPy reports it."""
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except Exception:  # noqa: BLE001 - older NumPy without mode="dicts"
        return "unknown"


def environment(torch=None):
    """What a reader needs to trust or reproduce a timing: machine, versions, threads, load.

    Pass the imported ``torch`` module to include its version and thread count.
    """
    env = {
        "machine": platform.machine(),
        "processor": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numpy_blas": blas_info(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS"),
    }
    if torch is not None:
        env["torch"] = torch.__version__
        env["torch_threads"] = torch.get_num_threads()
    return env


class CpuWatch:
    """How many CPUs *other* processes kept busy while a block of code ran.

    Compares the machine's busy time (/proc/stat) with this process's own CPU time over
    the wall time of the ``with`` block. On a shared 2-CPU machine, ``others`` near 1 means
    2-thread timings inside the block can be off by 2x or more. ``others`` is None where
    /proc/stat is not available.

    >>> with CpuWatch() as watch:
    ...     _ = sum(range(10**5))
    >>> watch.others is None or watch.others >= 0
    True
    """

    def __enter__(self):
        self.others = None
        self._start = _cpu_snapshot()
        return self

    def __exit__(self, *exc):
        end = _cpu_snapshot()
        if self._start is not None and end is not None:
            (wall0, busy0, own0), (wall1, busy1, own1) = self._start, end
            others = ((busy1 - busy0) - (own1 - own0)) / max(wall1 - wall0, 1e-9)
            self.others = round(max(others, 0.0), 2)
        return False


def _cpu_snapshot():
    """(wall s, machine busy CPU-s, own CPU-s incl. all threads), or None without /proc."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    busy = (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # less idle, iowait
    own = sum(os.times()[:2])
    return time.perf_counter(), busy, own


def busy_cpus(seconds=0.5):
    """CPUs kept busy by other processes while this one sleeps ``seconds``.

    Handy before a run: wait until it is near 0 on a shared machine.
    """
    with CpuWatch() as watch:
        time.sleep(seconds)
    return watch.others


def wait_quiet(threshold=0.3, max_wait_s=60.0, sample_s=1.0):
    """Wait until other processes keep at most ``threshold`` CPUs busy; True if they do.

    Gives up after ``max_wait_s`` seconds and returns False (True where /proc is missing).
    """
    deadline = time.perf_counter() + max_wait_s
    while True:
        others = busy_cpus(sample_s)
        if others is None or others <= threshold:
            return True
        if time.perf_counter() >= deadline:
            return False


def timed_quietly(measure, retries=0, threshold=0.3, max_wait_s=60.0):
    """Run ``measure()`` under a CpuWatch; if others were busy, wait for quiet and redo it.

    Returns (result, others) of the last attempt: at most ``retries`` redos, each after
    ``wait_quiet``. For a shared machine where other jobs come and go.
    """
    for attempt in range(retries + 1):
        with CpuWatch() as watch:
            result = measure()
        if watch.others is None or watch.others <= threshold or attempt == retries:
            return result, watch.others
        wait_quiet(threshold, max_wait_s)


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def format_table(headers, rows, right=None):
    """Plain-text table: headers and rows of already formatted strings.

    right: set of column indices to right-align (numbers); others are left-aligned.
    """
    right = set(range(1, len(headers))) if right is None else set(right)
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells):
        padded = (str(c).rjust(w) if i in right else str(c).ljust(w)
                  for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
        return "  ".join(padded).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])
