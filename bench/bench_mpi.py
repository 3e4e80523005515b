"""Data-parallel training speed: images per second of the default Fashion-MNIST step.

    python bench/bench_mpi.py                    # the table and the scaling model (~1 min)
    python bench/bench_mpi.py --steps 10 --rounds 1

The step is the training loop's (convnet/train/loop.py): forward on this rank's share of
a batch of 128, softmax cross-entropy, backward (scaled by the share), one Allreduce of
the gradients and the loss sums, Adam; batch norm synchronized across ranks. The net is
DEFAULTS["fashion-mnist"]["model"] in float32 on random 28x28 images (the time does not
depend on the values). Each configuration runs in processes of its own, started fresh so
that its thread settings hold from the start:

    convnet  1 rank  x 2 threads   the default: convnet's 2 threads, BLAS's 2
    convnet  1 rank  x 1 thread    OPENBLAS_NUM_THREADS=1, CONVNET_THREADS=1
    convnet  2 ranks x 1 thread    mpiexec -n 2, each rank as the row above
    PyTorch  1 process x 2 threads torch.set_num_threads(2), the same net (to_torch)

The configurations take turns, ``--rounds`` times; a configuration's figure is the median
step time over all its rounds, with the range of the rounds' medians and of the CPUs that
other processes kept busy meanwhile (/proc/stat). On a shared machine that load moves
every row: compare rows of one run, and rerun when "others' CPUs" is far from 0.

It then prints the paper model of scaling to many machines (docs/distributed.md): the
Allreduce bytes per step from the parameter count, ring-allreduce's 2(R-1)/R x bytes on a
10 Gb/s and a 100 Gb/s network against the step time measured on one core.
"""

from __future__ import annotations

# isort: off
import convnet  # noqa: F401  (first: it sets OpenBLAS's thread timeout before NumPy loads)
# isort: on
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BATCH = 128
CONFIGS = [   # name, ranks, threads per rank, worker
    ("convnet 1 rank x 2 threads", 1, 2, "convnet"),
    ("convnet 1 rank x 1 thread", 1, 1, "convnet"),
    ("convnet 2 ranks x 1 thread", 2, 1, "convnet"),
    ("PyTorch 1 process x 2 threads", 1, 2, "torch"),
]
NETWORKS = (("10 Gb/s", 10e9 / 8), ("100 Gb/s", 100e9 / 8))   # bytes per second


def _net_and_data(dtype=np.float32):
    from convnet.models import from_notation
    from convnet.train.loop import DEFAULTS

    cfg = DEFAULTS["fashion-mnist"]
    net = from_notation(cfg["model"], rng=np.random.default_rng(0))
    rng = np.random.default_rng(1)
    x = rng.standard_normal((BATCH, *net.input_shape), dtype=dtype)
    y = rng.integers(0, 10, BATCH)
    return net, x, y


def convnet_worker(steps, warmup, threads):
    """Time the loop's step on this rank; rank 0 prints one JSON line of step times."""
    from convnet.functional.loss import softmax_cross_entropy
    from convnet.layers.norm import BatchNorm1d, BatchNorm2d
    from convnet.train.distributed import from_environment
    from convnet.train.optim import Adam

    comm = from_environment()
    net, x, y = _net_and_data()
    for _, layer in net.named_layers():
        if isinstance(layer, (BatchNorm1d, BatchNorm2d)) and comm.size > 1:
            layer.comm = comm
    params = net.trainable_params()
    opt = Adam(params, lr=1e-3)
    part = comm.share(BATCH)
    xb, yb = np.ascontiguousarray(x[part]), y[part]

    def step():
        scores = net.forward(xb)
        loss, dscores = softmax_cross_entropy(scores, yb)
        if comm.size > 1:
            dscores *= dscores.dtype.type(len(yb) / BATCH)
        net.backward(dscores, input_grad=False)
        grads = net.grads()
        grads = {key: grads[key] for key in params}
        correct = int(np.sum(np.argmax(scores, axis=1) == yb))
        comm.average_gradients(grads, weight=1, extra=[loss * len(yb), correct, len(yb)])
        opt.step(grads)

    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        comm.barrier()
        start = time.perf_counter()
        step()
        comm.barrier()
        times.append(time.perf_counter() - start)
    reduce_times = []   # the gradient Allreduce alone, ranks lined up by a barrier
    grads = {key: value.copy() for key, value in net.grads().items() if key in params}
    for _ in range(steps if comm.size > 1 else 0):
        comm.barrier()
        start = time.perf_counter()
        comm.average_gradients(grads, weight=1, extra=[0.0, 0.0, 0.0])
        reduce_times.append(time.perf_counter() - start)
    if comm.is_root:
        print(json.dumps({"times": times, "params": int(sum(p.size for p in params.values())),
                          "bytes": int(sum(p.nbytes for p in params.values())),
                          "allreduce": reduce_times}))


def torch_worker(steps, warmup, threads):
    """The same step in PyTorch (autograd, torch.optim.Adam); prints one JSON line."""
    import torch

    sys.path.insert(0, str(ROOT))
    from tests.torch_models import to_torch

    torch.set_num_threads(threads)
    net, x, y = _net_and_data()
    tnet = to_torch(net).train()
    opt = torch.optim.Adam(tnet.parameters(), lr=1e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def step():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(tnet(xt), yt).backward()
        opt.step()

    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    print(json.dumps({"times": times}))


def mpiexec():
    here = Path(sys.executable).parent / "mpiexec"
    return str(here) if here.exists() else shutil.which("mpiexec")


def _cpu_seconds():
    """(wall s, machine busy CPU-s, CPU-s of this process and its waited children), or
    None without /proc/stat."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    busy = (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
    return time.perf_counter(), busy, sum(os.times()[:4])


def run_config(ranks, threads, worker, steps, warmup):
    """One configuration in fresh processes; returns the worker's JSON, with "others":
    the CPUs other processes kept busy meanwhile (None where /proc/stat is missing)."""
    start = _cpu_seconds()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for name in ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK"):
        env.pop(name, None)
    count = str(threads)          # on a machine of more cores too, BLAS gets only these
    env.update(OPENBLAS_NUM_THREADS=count, OMP_NUM_THREADS=count, MKL_NUM_THREADS=count,
               CONVNET_THREADS=count)
    command = [sys.executable, __file__, "--worker", worker, "--threads", str(threads),
               "--steps", str(steps), "--warmup", str(warmup)]
    if ranks > 1:
        if mpiexec() is None:
            raise SystemExit("no mpiexec: pip install -e '.[mpi]'")
        command = [mpiexec(), "-n", str(ranks), *command]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1200)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command[:4])} ...: failed\n{proc.stderr}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    end = _cpu_seconds()
    result["others"] = None if None in (start, end) else max(
        0.0, ((end[1] - start[1]) - (end[2] - start[2])) / (end[0] - start[0]))
    return result


def scaling_model(step_one_core, nbytes):
    """Rows of the paper model: for each network, the rank count R at which ring-allreduce
    (2(R-1)/R x bytes at the link's bandwidth) takes half the step, with the step's
    compute the one-core time divided over R ranks (global batch 128 kept: strong
    scaling), and the communication share with each rank keeping its own batch of 128
    (weak scaling, where it tends to 2 x bytes / bandwidth)."""
    rows = []
    for name, bandwidth in NETWORKS:
        def comm(r, bandwidth=bandwidth):
            return 2 * (r - 1) / r * nbytes / bandwidth
        strong = next((r for r in range(2, 1 << 20) if comm(r) >= step_one_core / r), None)
        weak = comm(1 << 20) / (comm(1 << 20) + step_one_core)
        rows.append({"network": name, "allreduce_ms": 1e3 * comm(1 << 20),
                     "strong_half_at": strong, "weak_share": weak})
    return rows


def _load(values):
    """The CPUs other processes kept busy over a configuration's rounds, as a range."""
    values = [v for v in values if v is not None]
    return f"{min(values):.1f}-{max(values):.1f}" if values else "?"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--worker", choices=("convnet", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.worker == "convnet":
        return convnet_worker(args.steps, args.warmup, args.threads)
    if args.worker == "torch":
        return torch_worker(args.steps, args.warmup, args.threads)

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import environment, format_table

    medians = {name: [] for name, *_ in CONFIGS}
    others = {name: [] for name, *_ in CONFIGS}
    times = {name: [] for name, *_ in CONFIGS}
    nbytes = params = None
    reduces = []
    for _ in range(args.rounds):
        for name, ranks, threads, worker in CONFIGS:
            result = run_config(ranks, threads, worker, args.steps, args.warmup)
            medians[name].append(statistics.median(result["times"]))
            others[name].append(result["others"])
            times[name] += result["times"]
            nbytes, params = result.get("bytes", nbytes), result.get("params", params)
            reduces += result.get("allreduce", [])
    step = {name: statistics.median(t) for name, t in times.items()}
    rows, base = [], step[CONFIGS[0][0]]
    for name, *_ in CONFIGS:
        rows.append([name, f"{BATCH / step[name]:,.0f}", f"{1e3 * step[name]:.0f} ms",
                     f"{1e3 * min(medians[name]):.0f}-{1e3 * max(medians[name]):.0f} ms",
                     f"{base / step[name]:.2f}x", _load(others[name])])
    one_core = step["convnet 1 rank x 1 thread"]
    model = scaling_model(one_core, nbytes)
    if args.json:
        print(json.dumps({"step_s": step, "round_medians_s": medians, "others": others,
                          "allreduce_s": statistics.median(reduces),
                          "params": params,
                          "bytes": nbytes, "model": model, "environment": environment()},
                         indent=1))
        return
    print(f"Default Fashion-MNIST net, training step of batch {BATCH}, Adam, float32; "
          f"{args.rounds} rounds of {args.steps} steps")
    print(format_table(["configuration", "images/s", "step", "round medians",
                        "speed vs 1x2", "others' CPUs"], rows))
    print(f"\nThe gradient Allreduce alone, 2 ranks on this machine (shared memory): "
          f"{1e3 * statistics.median(reduces):.1f} ms")
    print(f"\nScaling model: {params:,} parameters = {nbytes / 1e6:.2f} MB of float32 "
          f"gradients per Allreduce; step on one core {1e3 * one_core:.0f} ms (batch "
          f"{BATCH})")
    print(format_table(
        ["network", "ring allreduce (large R)", "strong scaling: half the step at R",
         "weak scaling: share of the step"],
        [[m["network"], f"{m['allreduce_ms']:.2f} ms",
          "never" if m["strong_half_at"] is None else str(m["strong_half_at"]),
          f"{100 * m['weak_share']:.1f}%"] for m in model]))
    env = environment()
    print(f"\n{env['processor']}, {env['cpu_count']} CPUs, numpy {env['numpy']}")


if __name__ == "__main__":
    main()
