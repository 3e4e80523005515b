"""Conv forward and forward+backward: convnet's Conv2d next to torch's conv2d.

Times convnet's Conv2d layer in training mode with its auto algorithm (forward, and
forward + backward, the path a training step takes: the shifted path for case b, fft
for case c (which keeps the input's spectrum), blocks for a, d and e (each keeping only
its input and making its blocks again in the backward pass)) and
torch.nn.functional.conv2d (backward through autograd) in float32, in the same process,
interleaved in blocks (see bench/common.py), on five workloads from the notes' nets.
Prints median times, GFLOP/s (2 * MACs / time; forward+backward counts 3x the forward
FLOPs), the fraction of a large float32 GEMM's GFLOP/s, and convnet_time / torch_time.

    python bench/bench_conv.py                  # all cases, readable table
    python bench/bench_conv.py --cases b,e --repeat 10 --json
    python bench/bench_conv.py --numpy-first    # NumPy imported before convnet
"""

from __future__ import annotations

# isort: off
import sys
if "--numpy-first" in sys.argv:   # as most scripts do: OpenBLAS loads before convnet
    import numpy  # noqa: F401
import convnet  # noqa: F401, E402  (else first: it sets OpenBLAS's thread timeout)
# isort: on
import argparse  # noqa: E402
import json  # noqa: E402
from typing import NamedTuple  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import (  # noqa: E402
    environment,
    format_table,
    gemm_peak,
    gflops,
    time_blocks,
    timed_quietly,
)

from convnet.layers import Conv2d  # noqa: E402

torch_conv2d = torch.nn.functional.conv2d
BUSY_WARN = 0.3  # CPUs kept busy by others above which the table carries a warning


class Workload(NamedTuple):
    name: str
    label: str
    n: int          # batch N
    c: int          # input depth C
    k: int          # filters K
    hw: int         # input H = W
    f: int          # extent F
    s: int          # stride S
    p: int          # padding P

    @property
    def out_hw(self):
        return (self.hw - self.f + 2 * self.p) // self.s + 1

    @property
    def macs(self):
        """Multiply-adds of the forward pass for the whole batch (bias not counted)."""
        return self.n * self.k * self.out_hw**2 * self.c * self.f**2

    def describe(self):
        return (f"N={self.n} {self.c}->{self.k} {self.hw}x{self.hw} "
                f"F={self.f} S={self.s} P={self.p}")


WORKLOADS = [
    Workload("a", "CIFAR conv1", 64, 3, 32, 32, 3, 1, 1),
    Workload("b", "CIFAR conv2", 64, 32, 64, 16, 3, 1, 1),
    Workload("c", "CIFAR conv3", 64, 64, 128, 8, 3, 1, 1),
    Workload("d", "MNIST conv1", 64, 1, 32, 28, 5, 1, 2),
    Workload("e", "AlexNet CONV1", 8, 3, 96, 227, 11, 4, 0),
]


def make_calls(wl, seed=0):
    """The four units of work for one workload: {pass: {impl: callable}}, on shared data."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((wl.n, wl.c, wl.hw, wl.hw), dtype=np.float32)
    w = rng.standard_normal((wl.k, wl.c, wl.f, wl.f), dtype=np.float32)
    w *= np.float32(1 / np.sqrt(wl.c * wl.f**2))
    b = rng.standard_normal(wl.k, dtype=np.float32)
    dout = rng.standard_normal((wl.n, wl.k, wl.out_hw, wl.out_hw), dtype=np.float32)
    stride, padding = (wl.s, wl.s), (wl.p, wl.p)

    xt, wt, bt, doutt = (torch.from_numpy(a) for a in (x, w, b, dout))
    # Leaves for autograd; separate from xt/wt/bt so the forward-only calls build no graph.
    xg, wg, bg = (t.clone().requires_grad_(True) for t in (xt, wt, bt))

    layer = Conv2d(wl.c, wl.k, wl.f, stride, padding)
    layer.params["weight"], layer.params["bias"] = w, b

    def convnet_fwd():
        return layer.forward(x)

    def convnet_fwd_bwd():
        layer.forward(x)
        dx = layer.backward(dout)
        return dx, layer.grads["weight"], layer.grads["bias"]

    def torch_fwd():
        return torch_conv2d(xt, wt, bt, stride, padding)

    def torch_fwd_bwd():
        xg.grad = wg.grad = bg.grad = None  # no gradient accumulation across calls
        torch_conv2d(xg, wg, bg, stride, padding).backward(doutt)
        return xg.grad, wg.grad, bg.grad

    check(wl, convnet_fwd(), torch_fwd(), convnet_fwd_bwd(), torch_fwd_bwd())
    return {"fwd": {"convnet": convnet_fwd, "torch": torch_fwd},
            "fwd+bwd": {"convnet": convnet_fwd_bwd, "torch": torch_fwd_bwd}}


def check(wl, out, out_t, grads, grads_t, tol=1e-4):
    """Refuse to time a wrong answer: convnet must match torch to float32 accuracy."""
    pairs = zip(("out", "dx", "dw", "db"), (out, *grads), (out_t, *grads_t), strict=True)
    for name, a, t in pairs:
        ref = t.detach().numpy()
        if a.shape != ref.shape or a.dtype != np.float32:
            raise RuntimeError(f"case {wl.name}: {name} is {a.dtype}{a.shape}, "
                               f"torch gives {ref.dtype}{ref.shape}")
        err = np.abs(a - ref).max() / max(np.abs(ref).max(), 1e-30)
        if err > tol:
            raise RuntimeError(f"case {wl.name}: {name} differs from torch by {err:.2e} "
                               f"(relative to its largest entry), more than {tol:g}")


def run(cases, repeat, rounds, min_block_s, retries=0):
    peak, gemm_others = timed_quietly(gemm_peak, retries, BUSY_WARN)
    results = []
    for wl in cases:
        calls = make_calls(wl)
        for pass_, fns in calls.items():
            flops = 2 * wl.macs * (3 if pass_ == "fwd+bwd" else 1)
            t, others = timed_quietly(
                lambda fns=fns: time_blocks(fns, repeat=repeat, rounds=rounds, warmup=1,
                                            min_block_s=min_block_s), retries, BUSY_WARN)
            row = {"case": wl.name, "label": wl.label, "workload": wl.describe(),
                   "pass": pass_, "gflop": flops / 1e9, "others_busy_cpus": others}
            for impl in ("convnet", "torch"):
                rate = gflops(flops, t[impl].median)
                row[impl] = {**t[impl].as_dict(), "gflops": rate, "frac_peak": rate / peak}
            row["ratio"] = t["convnet"].median / t["torch"].median
            results.append(row)
    return {"env": environment(torch), "gemm_peak_gflops": peak,
            "gemm_others_busy_cpus": gemm_others,
            "settings": {"repeat": repeat, "rounds": rounds, "min_block_s": min_block_s,
                         "retries": retries, "dtype": "float32"},
            "results": results}


def render(report):
    env = report["env"]
    head = (f"conv2d float32, convnet (NumPy {env['numpy']}, {env['numpy_blas']}) vs torch "
            f"{env['torch']} ({env['torch_threads']} threads), {env['cpu_count']} CPUs "
            f"({env['processor']})\n"
            f"GEMM peak (2048^3 float32 np.matmul, best of 3 blocks): "
            f"{report['gemm_peak_gflops']:.1f} GFLOP/s "
            f"(others busy: {_busy(report['gemm_others_busy_cpus'])})\n"
            f"times: median ±half the interquartile range; %pk = GFLOP/s / GEMM peak; "
            f"ratio = convnet / torch; others = CPUs kept busy by other processes meanwhile\n"
            f"NumPy imported {'before' if report.get('numpy_first') else 'after'} convnet\n")
    headers = ["case", "workload", "pass", "GFLOP", "convnet ms", "GFLOP/s", "%pk",
               "torch ms", "GFLOP/s", "%pk", "ratio", "others"]
    rows = []
    for r in report["results"]:
        cn, th = r["convnet"], r["torch"]
        first = r["pass"] == "fwd"
        rows.append([
            r["case"] if first else "", f"{r['label']}: {r['workload']}" if first else "",
            r["pass"], f"{r['gflop']:.2f}",
            _ms(cn), f"{cn['gflops']:.1f}", f"{cn['frac_peak']:.0%}",
            _ms(th), f"{th['gflops']:.1f}", f"{th['frac_peak']:.0%}",
            f"{r['ratio']:.2f}x", _busy(r["others_busy_cpus"])])
    table = format_table(headers, rows, right=set(range(3, len(headers))))
    busy = [b for b in (report["gemm_others_busy_cpus"],
                        *(r["others_busy_cpus"] for r in report["results"])) if b is not None]
    if busy and max(busy) > BUSY_WARN:
        table += (f"\nWARNING: other processes kept up to {max(busy)} of {env['cpu_count']} "
                  f"CPUs busy (rows marked *): those times are unreliable; rerun when quiet "
                  f"(--retries redoes such rows).")
    return head + table


def _busy(others):
    if others is None:
        return "?"
    return f"{others:.2f}" + ("*" if others > BUSY_WARN else "")


def _ms(timing):
    """Median in ms with half the interquartile range, e.g. '10.89 ±3%'."""
    return f"{timing['median_s'] * 1e3:.2f} ±{timing['spread'] / 2:.0%}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5,
                        help="timed calls per block, at least (default 5)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="convnet-block/torch-block rounds per case and pass (default 5)")
    parser.add_argument("--min-block", type=float, default=0.2, metavar="SECONDS",
                        help="raise the calls per block so a block lasts this long "
                             "(default 0.2)")
    parser.add_argument("--cases", default="".join(w.name for w in WORKLOADS),
                        help="which workloads, e.g. 'b,e' (default all: a..e)")
    parser.add_argument("--retries", type=int, default=0,
                        help="redo a row (after waiting up to 60 s for quiet) when other "
                             f"processes kept more than {BUSY_WARN} CPUs busy (default 0)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--numpy-first", action="store_true",
                        help="import NumPy before convnet, as most scripts do (the default "
                             "imports convnet first, as the convnet command does)")
    args = parser.parse_args(argv)

    by_name = {w.name: w for w in WORKLOADS}
    wanted = [c for c in args.cases.replace(",", "") if c.strip()]
    unknown = [c for c in wanted if c not in by_name]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; valid: {sorted(by_name)}")
    report = run([by_name[c] for c in wanted], args.repeat, args.rounds, args.min_block,
                 args.retries)
    report["numpy_first"] = args.numpy_first
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
