"""Whole nets next to PyTorch: pooling, training steps, inference, an epoch, and memory.

The workloads of issue 5, in float32, convnet and torch (and onnxruntime for inference,
when it is installed) in one process, interleaved in blocks (see bench/common.py):

  pool      max pooling 2x2/2 over (128, 32, 28, 28): forward, and forward+backward
  lenet     CONV5-32 -> RELU -> POOL -> CONV5-64 -> RELU -> POOL -> FC1024 -> RELU -> FC10
            on 1x28x28: a training step (batch 128, SGD momentum 0.9), inference (batch 256)
  cifar     [CONV3-32 -> RELU]*2 -> POOL -> [CONV3-64 -> RELU]*2 -> POOL -> FC512 -> RELU
            -> FC10 on 3x32x32: the same two
  resnet18, vgg16
            the zoo nets at 224x224, inference at batch 1 and 8
  memory    peak memory of a training step and of inference (tracemalloc, which sees every
            NumPy allocation) beside `convnet summary`'s estimate, and for VGG-16 at batch
            8 the issue's bound: 1.5 x (weights + the two largest activations)
  epoch     (only with --only epoch) one epoch of the default Fashion-MNIST training
            (`convnet train --data fashion-mnist`'s net, Adam, batch 128): convnet's
            forward, loss, backward and optimizer against the same net in PyTorch, the
            two taking turns in runs of a tenth of the epoch each

Both sides compute the same thing from the same weights: every workload first checks that
the outputs (and, for training, the gradients) agree. A training step is forward, softmax
cross-entropy loss, backward and the optimizer's update; convnet's backward skips the
data's gradient as the training loop does (PyTorch does not compute it either).

    python bench/bench_nets.py                          # all but the epoch (~4 min)
    python bench/bench_nets.py --only lenet,cifar --json
    python bench/bench_nets.py --only epoch             # ~5 min more
"""

from __future__ import annotations

# isort: off
import sys
if "--numpy-first" in sys.argv:   # as most scripts do: OpenBLAS loads before convnet
    import numpy  # noqa: F401
import convnet  # noqa: F401, E402
# isort: on
import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from pathlib import Path  # noqa: E402

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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # tests/ holds the torch nets

from convnet.analysis import summary  # noqa: E402
from convnet.functional.conv import release_scratch  # noqa: E402
from convnet.functional.loss import softmax_cross_entropy  # noqa: E402
from convnet.functional.pool import maxpool2d_backward, maxpool2d_forward  # noqa: E402
from convnet.models import from_notation  # noqa: E402
from convnet.train.loop import DEFAULTS  # noqa: E402
from convnet.train.optim import DEFAULT_LR, SGD, Adam  # noqa: E402
from convnet.zoo import resnet18, vgg16  # noqa: E402
from tests.torch_models import VGG, VGG16, BasicBlock, ResNet, to_torch  # noqa: E402

BUSY_WARN = 0.3
LENET = ("INPUT 28x28x1 -> CONV 32 F5 P2 -> RELU -> POOL -> CONV 64 F5 P2 -> RELU -> POOL "
         "-> FC 1024 -> RELU -> FC 10")
CIFAR = ("INPUT 32x32x3 -> [CONV 32 -> RELU]*2 -> POOL -> [CONV 64 -> RELU]*2 -> POOL "
         "-> FC 512 -> RELU -> FC 10")
TRAIN_BATCH, INFER_BATCH = 128, 256


# -- the workloads: each returns rows of {"name", "gflop", "fns", "check"} ----------------
def pool_rows(rng):
    x = rng.standard_normal((128, 32, 28, 28), dtype=np.float32)
    dout = rng.standard_normal((128, 32, 14, 14), dtype=np.float32)
    xt, dt = torch.from_numpy(x), torch.from_numpy(dout)
    xg = xt.clone().requires_grad_()

    def cn_fwd():
        return maxpool2d_forward(x, (2, 2), (2, 2))[0]

    def cn_fwd_bwd():
        out, cache = maxpool2d_forward(x, (2, 2), (2, 2))
        return out, maxpool2d_backward(dout, cache)

    def t_fwd():
        with torch.inference_mode():
            return torch.nn.functional.max_pool2d(xt, 2, 2)

    def t_fwd_bwd():
        xg.grad = None
        out = torch.nn.functional.max_pool2d(xg, 2, 2)
        out.backward(dt)
        return out, xg.grad

    def check():
        out, dx = cn_fwd_bwd()
        out_t, dx_t = t_fwd_bwd()
        _close(out, out_t, "pool forward")
        _close(dx, dx_t, "pool backward")

    shape = "(128, 32, 28, 28)"
    return [
        {"name": "pool", "what": f"max pool 2x2/2 {shape} fwd", "gflop": None,
         "fns": {"convnet": cn_fwd, "torch": t_fwd}, "check": check},
        {"name": "pool", "what": f"max pool 2x2/2 {shape} fwd+bwd", "gflop": None,
         "fns": {"convnet": cn_fwd_bwd, "torch": t_fwd_bwd}, "check": None},
    ]


def small_net_rows(name, spec, rng):
    """A training step (batch 128, SGD momentum) and inference (batch 256)."""
    net = from_notation(spec, rng=np.random.default_rng(0))
    shape = net.input_shape
    tnet = to_torch(net)
    x = rng.standard_normal((TRAIN_BATCH, *shape), dtype=np.float32)
    y = rng.integers(0, 10, TRAIN_BATCH)
    xi = rng.standard_normal((INFER_BATCH, *shape), dtype=np.float32)
    xt, yt, xit = torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(xi)
    opt = SGD(net.params(), lr=1e-3, momentum=0.9)
    topt = torch.optim.SGD(tnet.parameters(), lr=1e-3, momentum=0.9)

    def cn_step():
        loss, dscores = softmax_cross_entropy(net.forward(x), y)
        net.backward(dscores, input_grad=False)
        opt.step(net.grads())
        return loss

    def t_step():
        topt.zero_grad()
        loss = torch.nn.functional.cross_entropy(tnet(xt), yt)
        loss.backward()
        topt.step()
        return loss

    def cn_infer():
        return net.infer(xi)

    def t_infer():
        with torch.inference_mode():
            return tnet(xit)

    def check():
        _check_training_step(spec, x, y, name)
        net.eval()
        tnet.eval()
        _close(cn_infer(), t_infer(), f"{name} inference")
        net.train()
        tnet.train()

    def infer_mode(fn, model, tmodel):
        def run():   # eval mode for this block, training mode for the training rows
            model.eval()
            tmodel.eval()
            try:
                return fn()
            finally:
                model.train()
                tmodel.train()
        return run

    macs = net.macs(shape)
    return [
        {"name": name, "what": f"training step, batch {TRAIN_BATCH}",
         "gflop": 3 * 2 * macs * TRAIN_BATCH / 1e9,
         "fns": {"convnet": cn_step, "torch": t_step}, "check": check},
        {"name": name, "what": f"inference, batch {INFER_BATCH}",
         "gflop": 2 * macs * INFER_BATCH / 1e9,
         "fns": {"convnet": infer_mode(cn_infer, net, tnet),
                 "torch": infer_mode(t_infer, net, tnet)}, "check": None},
    ]


def _check_training_step(spec, x, y, name):
    """The loss and every gradient of one step agree with PyTorch's, in float64 (in float32
    a near-tie in a pool window can switch its max and move a gradient)."""
    net = from_notation(spec, dtype=np.float64, rng=np.random.default_rng(0))
    tnet = to_torch(net)
    x = x.astype(np.float64)
    loss, dscores = softmax_cross_entropy(net.forward(x), y)
    net.backward(dscores, input_grad=False)
    loss_t = torch.nn.functional.cross_entropy(tnet(torch.from_numpy(x)), torch.from_numpy(y))
    loss_t.backward()
    _close(loss, loss_t, f"{name} loss", tol=1e-9)
    tgrads = {k: p.grad for k, p in tnet.named_parameters()}
    for key, g in net.grads().items():
        _close(g, tgrads[key], f"{name} gradient {key}", tol=1e-9)


def zoo_rows(name, rng, batches=(1, 8)):
    """Inference at 224x224 of the zoo net, its torchvision-layout twin, and onnxruntime."""
    if name == "resnet18":
        net, tnet = resnet18(rng=np.random.default_rng(0)), ResNet(BasicBlock, (2, 2, 2, 2), 1000)
    else:
        net, tnet = vgg16(rng=np.random.default_rng(0)), VGG(VGG16, 1000, batch_norm=False)
    net.eval()
    missing, unexpected = tnet.load_state_dict(
        {k: torch.from_numpy(v) for k, v in net.state_dict().items()}, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)
    tnet.eval()
    session = _ort_session(net)
    rows = []
    for n in batches:
        x = rng.standard_normal((n, 3, 224, 224), dtype=np.float32)
        xt = torch.from_numpy(x)

        def t_infer(xt=xt):
            with torch.inference_mode():
                return tnet(xt)

        fns = {"convnet": lambda x=x: net.infer(x), "torch": t_infer}
        if session is not None:
            fns["onnxruntime"] = lambda x=x: session.run(None, {"input": x})[0]

        def check(fns=fns, n=n):
            expected = fns["torch"]()
            for impl, fn in fns.items():
                _close(fn(), expected, f"{name} batch {n} {impl}")

        rows.append({"name": name, "what": f"inference 224x224, batch {n}",
                     "gflop": 2 * net.macs((3, 224, 224)) * n / 1e9, "fns": fns,
                     "check": check})
    return rows


def _ort_session(net):
    try:
        import onnxruntime

        from convnet.io import export_onnx
    except ImportError:
        return None
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(net, path, (3, 224, 224))
        return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _close(got, expected, what, tol=1e-3):
    got = np.asarray(got.detach() if isinstance(got, torch.Tensor) else got, dtype=np.float64)
    expected = np.asarray(expected.detach() if isinstance(expected, torch.Tensor)
                          else expected, dtype=np.float64)
    err = np.abs(got - expected).max() / max(np.abs(expected).max(), 1e-12)
    if got.shape != expected.shape or not err < tol:
        raise AssertionError(f"{what}: convnet and torch disagree (relative {err:.2e}, "
                             f"shapes {got.shape} vs {expected.shape})")


# -- memory ------------------------------------------------------------------------------
def memory_rows(rng):
    """Peak bytes NumPy allocates, from before the model is built: weights, gradients,
    optimizer state, activations kept for backward and every temporary."""
    rows = []
    for name, spec in (("lenet", LENET), ("cifar", CIFAR)):
        release_scratch()   # the kept temporaries count in the peak, made afresh
        tracemalloc.start()
        net = from_notation(spec, rng=np.random.default_rng(0))
        x = rng.standard_normal((TRAIN_BATCH, *net.input_shape), dtype=np.float32)
        y = rng.integers(0, 10, TRAIN_BATCH)
        opt = SGD(net.params(), lr=1e-3, momentum=0.9)
        for _ in range(2):
            _, dscores = softmax_cross_entropy(net.forward(x), y)
            net.backward(dscores, input_grad=False)
            opt.step(net.grads())
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        est = summary(net, net.input_shape, TRAIN_BATCH, optimizer="momentum").memory
        rows.append({"name": name, "what": f"training, batch {TRAIN_BATCH}",
                     "peak_bytes": peak, "estimate_bytes": est["training_total"]})
        rows.append(_inference_memory(name, net, INFER_BATCH, rng))
    net = vgg16(rng=np.random.default_rng(0)).eval()
    row = _inference_memory("vgg16", net, 8, rng, (3, 224, 224))
    acts = sorted(r.activation_bytes for r in summary(net, (3, 224, 224), 8).layers)
    row["bound_bytes"] = int(1.5 * (net.num_params() * 4 + acts[-1] + acts[-2]))
    rows.append(row)
    rows.append(_inference_memory("resnet18", resnet18(rng=np.random.default_rng(0)).eval(),
                                  8, rng, (3, 224, 224)))
    return rows


def _inference_memory(name, net, n, rng, shape=None):
    shape = shape or net.input_shape
    x = rng.standard_normal((n, *shape), dtype=np.float32)
    net.eval()
    release_scratch()
    tracemalloc.start()
    net.infer(x)
    extra = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    net.train()
    weights = sum(p.nbytes for p in net.state_dict().values())
    est = summary(net, shape, n).memory["inference_total"]
    return {"name": name, "what": f"inference, batch {n}",
            "peak_bytes": weights + x.nbytes + extra, "estimate_bytes": est}


# -- one epoch ---------------------------------------------------------------------------
EPOCH_CHUNKS = 10   # the epoch's batches in this many runs a side, taken in turns


def epoch_rows(limit=None):
    """One pass over Fashion-MNIST's 60,000 training images, batch 128, Adam, in the same
    shuffled order on both sides, with the default net (BN) in training mode.

    Each side runs its epoch in EPOCH_CHUNKS runs of consecutive batches, the two taking
    turns (convnet first, then PyTorch first, ...) after a short pause, so that a minute
    of a busier machine weighs on both alike. A side's time is the sum of its runs."""
    from convnet.data import load_dataset
    from convnet.data.transforms import to_float

    cfg = DEFAULTS["fashion-mnist"]
    data = load_dataset("fashion-mnist")
    images, y = data.train
    x = to_float(images)
    mean, std = x.mean(), x.std()
    x = (x - mean) / std
    if limit:
        x, y = x[:limit], y[:limit]
    order = np.random.default_rng(0).permutation(len(x))
    batches = [order[i: i + cfg["batch_size"]] for i in range(0, len(x), cfg["batch_size"])]
    net = from_notation(cfg["model"], rng=np.random.default_rng(0))
    tnet = to_torch(net)
    opt = Adam(net.params(), lr=cfg.get("lr", DEFAULT_LR[cfg["optimizer"]]))
    topt = torch.optim.Adam(tnet.parameters(), lr=cfg.get("lr", DEFAULT_LR[cfg["optimizer"]]))
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def cn_run(part):
        for idx in part:
            _, dscores = softmax_cross_entropy(net.forward(x[idx]), y[idx])
            net.backward(dscores, input_grad=False)
            opt.step(net.grads())

    def t_run(part):
        for idx in part:
            i = torch.from_numpy(idx)
            topt.zero_grad()
            torch.nn.functional.cross_entropy(tnet(xt[i]), yt[i]).backward()
            topt.step()

    times = {"convnet": 0.0, "torch": 0.0}
    step = -(-len(batches) // EPOCH_CHUNKS)
    for turn, s in enumerate(range(0, len(batches), step)):
        sides = (("convnet", cn_run), ("torch", t_run))
        for impl, fn in sides if turn % 2 == 0 else sides[::-1]:
            time.sleep(0.2)           # the other library's worker threads park
            start = time.perf_counter()
            fn(batches[s: s + step])
            times[impl] += time.perf_counter() - start
    macs = net.macs(net.input_shape)
    return [{"name": "epoch", "what": f"Fashion-MNIST epoch, {len(x):,} images, batch "
             f"{cfg['batch_size']}, Adam", "gflop": 3 * 2 * macs * len(x) / 1e9,
             "seconds": times}]


# -- running and printing ----------------------------------------------------------------
def run(only, repeat, rounds, min_block_s, retries, epoch_limit=None):
    rng = np.random.default_rng(0)
    peak, _ = timed_quietly(gemm_peak, retries, BUSY_WARN)
    rows, memory = [], []
    makers = {"pool": lambda: pool_rows(rng),
              "lenet": lambda: small_net_rows("lenet", LENET, rng),
              "cifar": lambda: small_net_rows("cifar", CIFAR, rng),
              "resnet18": lambda: zoo_rows("resnet18", rng),
              "vgg16": lambda: zoo_rows("vgg16", rng)}
    for name in only:
        if name == "memory":
            memory = memory_rows(rng)
            continue
        if name == "epoch":
            for row in epoch_rows(epoch_limit):
                rows.append(_epoch_result(row, peak))
            continue
        big = name in ("resnet18", "vgg16")
        reps, rnds = (2, 2) if big else (repeat, rounds)
        for row in makers[name]():
            if row["check"] is not None:
                row["check"]()
            timings, others = timed_quietly(
                lambda row=row, reps=reps, rnds=rnds: time_blocks(
                    row["fns"], repeat=reps, rounds=rnds, warmup=1, min_block_s=min_block_s),
                retries, BUSY_WARN)
            result = {"name": row["name"], "what": row["what"], "gflop": row["gflop"],
                      "others_busy_cpus": others}
            for impl, t in timings.items():
                result[impl] = t.as_dict()
                if row["gflop"]:
                    rate = gflops(row["gflop"] * 1e9, t.median)
                    result[impl].update(gflops=rate, frac_peak=rate / peak)
            result["ratio"] = timings["convnet"].median / timings["torch"].median
            rows.append(result)
    return {"env": environment(torch), "gemm_peak_gflops": peak,
            "settings": {"repeat": repeat, "rounds": rounds, "min_block_s": min_block_s,
                         "retries": retries, "dtype": "float32"},
            "results": rows, "memory": memory}


def _epoch_result(row, peak):
    result = {"name": row["name"], "what": row["what"], "gflop": row["gflop"],
              "others_busy_cpus": None}
    for impl, s in row["seconds"].items():
        rate = gflops(row["gflop"] * 1e9, s)
        result[impl] = {"median_s": s, "spread": 0.0, "calls": 1, "gflops": rate,
                        "frac_peak": rate / peak}
    result["ratio"] = row["seconds"]["convnet"] / row["seconds"]["torch"]
    return result


def render(report):
    env = report["env"]
    out = [f"whole nets, float32: convnet (NumPy {env['numpy']}, {env['numpy_blas']}) vs "
           f"torch {env['torch']} ({env['torch_threads']} threads), {env['cpu_count']} CPUs "
           f"({env['processor']})",
           f"GEMM peak (2048^3 float32 np.matmul, best of 3 blocks): "
           f"{report['gemm_peak_gflops']:.1f} GFLOP/s; "
           f"ratio = convnet / torch (below 1: convnet faster); %pk = GFLOP/s / GEMM peak",
           f"NumPy imported {'before' if report.get('numpy_first') else 'after'} convnet",
           ""]
    if report["results"]:
        headers = ["net", "work", "convnet ms", "GFLOP/s", "%pk", "torch ms", "GFLOP/s", "%pk",
                   "ratio", "ort ms", "others"]
        rows = []
        for r in report["results"]:
            cn, th, ort = r["convnet"], r["torch"], r.get("onnxruntime")
            rows.append([r["name"], r["what"], _ms(cn), _gf(cn), _pk(cn), _ms(th), _gf(th),
                         _pk(th), f"{r['ratio']:.2f}x", _ms(ort) if ort else "-",
                         _busy(r["others_busy_cpus"])])
        out.append(format_table(headers, rows, right=set(range(2, len(headers)))))
        busy = [r["others_busy_cpus"] for r in report["results"]
                if r["others_busy_cpus"] is not None]
        if busy and max(busy) > BUSY_WARN:
            out.append(f"WARNING: other processes kept up to {max(busy)} CPUs busy (rows "
                       f"marked *): those times are unreliable; rerun when quiet.")
    if report["memory"]:
        headers = ["net", "memory of", "peak (tracemalloc)", "summary estimate", "peak/est",
                   "bound", "within"]
        rows = []
        for m in report["memory"]:
            bound = m.get("bound_bytes")
            rows.append([m["name"], m["what"], _mb(m["peak_bytes"]), _mb(m["estimate_bytes"]),
                         f"{m['peak_bytes'] / m['estimate_bytes']:.2f}",
                         _mb(bound) if bound else "-",
                         ("yes" if m["peak_bytes"] <= bound else "NO") if bound else "-"])
        out += ["", format_table(headers, rows, right={2, 3, 4, 5})]
        out.append("bound (VGG-16): 1.5 x (weights + the two largest activations)")
    return "\n".join(out)


def _ms(t):
    return f"{t['median_s'] * 1e3:.1f} ±{t['spread'] / 2:.0%}"


def _pk(t):
    return f"{t['frac_peak']:.0%}" if "frac_peak" in t else "-"


def _gf(t):
    return f"{t['gflops']:.1f}" if "gflops" in t else "-"


def _mb(nbytes):
    return f"{nbytes / 2**20:,.1f} MB"


def _busy(others):
    if others is None:
        return "?"
    return f"{others:.2f}" + ("*" if others > BUSY_WARN else "")


WORKLOADS = ["pool", "lenet", "cifar", "resnet18", "vgg16", "memory", "epoch"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="pool,lenet,cifar,resnet18,vgg16,memory",
                        help=f"comma-separated workloads from {', '.join(WORKLOADS)} "
                             "(default: all but epoch)")
    parser.add_argument("--repeat", type=int, default=5,
                        help="timed calls per block, at least (default 5; 2 for the zoo nets)")
    parser.add_argument("--rounds", type=int, default=4,
                        help="convnet/torch block rounds per row (default 4; 2 for the zoo)")
    parser.add_argument("--min-block", type=float, default=0.3, metavar="SECONDS",
                        help="raise the calls per block so a block lasts this long (0.3)")
    parser.add_argument("--retries", type=int, default=0,
                        help="redo a row after waiting for quiet when other processes kept "
                             f"more than {BUSY_WARN} CPUs busy (default 0)")
    parser.add_argument("--epoch-limit", type=int, metavar="N",
                        help="epoch workload: only the first N training images")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--numpy-first", action="store_true",
                        help="import NumPy before convnet, as most scripts do (the default "
                             "imports convnet first, as the convnet command does)")
    args = parser.parse_args(argv)
    only = [w.strip() for w in args.only.split(",") if w.strip()]
    unknown = [w for w in only if w not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workload(s) {unknown}; valid: {', '.join(WORKLOADS)}")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    report = run(only, args.repeat, args.rounds, args.min_block, args.retries,
                 args.epoch_limit)
    report["numpy_first"] = args.numpy_first
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
