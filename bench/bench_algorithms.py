"""Each convolution algorithm on the nets' stride-1 layers, next to PyTorch: the auto
choice's evidence.

For every layer shape below and every algorithm that can run it (see
convnet.functional.conv.select), times inference (conv2d_infer) or a training pass
(conv2d_forward + conv2d_backward with the input's gradient), float32, interleaved in
blocks with torch.nn.functional.conv2d (backward through autograd). Prints each
algorithm's time over PyTorch's, and which algorithm auto picks.

    python bench/bench_algorithms.py                       # every layer (~5 min)
    python bench/bench_algorithms.py --only vgg1,resnet8 --rounds 2
    python bench/bench_algorithms.py --numpy-first         # NumPy imported before convnet
"""

from __future__ import annotations

import sys

# isort: off
if "--numpy-first" in sys.argv:
    import numpy  # noqa: F401  (before convnet: OpenBLAS loads without convnet's settings)
import convnet  # noqa: F401, E402  (else first: it sets OpenBLAS's thread timeout)
# isort: on
import argparse  # noqa: E402
import json  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import environment, format_table, gemm_peak, time_blocks  # noqa: E402

from convnet.functional.conv import (  # noqa: E402
    Algorithm,
    algorithm_for,
    conv2d_backward,
    conv2d_forward,
    conv2d_infer,
    select,
)
from convnet.functional.threads import one_blas_thread  # noqa: E402

# (group, label, N, C, K, H=W, training, F): the nets' stride-1 layers of F x F filters,
# padded by F // 2 (the size kept).
LAYERS = [
    ("vgg1", "VGG-16 64->64 @224", 1, 64, 64, 224, False, 3),
    ("vgg1", "VGG-16 128->128 @112", 1, 128, 128, 112, False, 3),
    ("vgg1", "VGG-16 256->256 @56", 1, 256, 256, 56, False, 3),
    ("vgg1", "VGG-16 512->512 @28", 1, 512, 512, 28, False, 3),
    ("vgg1", "VGG-16 512->512 @14", 1, 512, 512, 14, False, 3),
    ("vgg8", "VGG-16 64->64 @224", 8, 64, 64, 224, False, 3),
    ("vgg8", "VGG-16 256->256 @56", 8, 256, 256, 56, False, 3),
    ("vgg8", "VGG-16 512->512 @28", 8, 512, 512, 28, False, 3),
    ("vgg8", "VGG-16 512->512 @14", 8, 512, 512, 14, False, 3),
    ("resnet1", "ResNet-18 64 @56", 1, 64, 64, 56, False, 3),
    ("resnet1", "ResNet-18 128 @28", 1, 128, 128, 28, False, 3),
    ("resnet1", "ResNet-18 256 @14", 1, 256, 256, 14, False, 3),
    ("resnet1", "ResNet-18 512 @7", 1, 512, 512, 7, False, 3),
    ("resnet8", "ResNet-18 64 @56", 8, 64, 64, 56, False, 3),
    ("resnet8", "ResNet-18 128 @28", 8, 128, 128, 28, False, 3),
    ("resnet8", "ResNet-18 256 @14", 8, 256, 256, 14, False, 3),
    ("resnet8", "ResNet-18 512 @7", 8, 512, 512, 7, False, 3),
    ("cifar", "CIFAR-like 32->32 @32", 128, 32, 32, 32, True, 3),
    ("cifar", "CIFAR-like 32->64 @16", 128, 32, 64, 16, True, 3),
    ("cifar", "CIFAR-like 64->64 @16", 128, 64, 64, 16, True, 3),
    ("fashion", "Fashion 32->32 @28", 128, 32, 32, 28, True, 3),
    ("fashion", "Fashion 32->64 @14", 128, 32, 64, 14, True, 3),
    ("fashion", "Fashion 64->64 @14", 128, 64, 64, 14, True, 3),
    ("small", "Fashion 64->128 @7", 128, 64, 128, 7, True, 3),
    ("small", "64->64 @8", 128, 64, 64, 8, True, 3),
    ("small", "32->64 @4", 128, 32, 64, 4, True, 3),
    ("small", "digits 64->64 @4", 32, 64, 64, 4, True, 3),
    ("lenet", "LeNet-like 32->64 5x5 @14", 128, 32, 64, 14, True, 5),
    ("lenet", "16->32 5x5 @14", 128, 16, 32, 14, True, 5),
]
CANDIDATES = [a for a in Algorithm if a is not Algorithm.AUTO]


def calls(n, c, k, hw, training, f=3, seed=0):
    """name -> a callable doing the layer's work once, for each algorithm and torch."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, hw, hw)).astype(np.float32)
    w = (rng.standard_normal((k, c, f, f)) / np.sqrt(f * f * c)).astype(np.float32)
    pad = f // 2
    b = rng.standard_normal(k).astype(np.float32)
    dout = rng.standard_normal((n, k, hw, hw)).astype(np.float32)
    p = select.Problem(x.shape, w.shape, (1, 1), (pad, pad), (1, 1), 1, (hw, hw), 4,
                       None if training else select.THRESHOLDS["inference_max_bytes"].value)
    fns = {}
    for algorithm in CANDIDATES:
        if select.why_not(algorithm, p) is not None:
            continue
        # Each call holds BLAS to one thread, as a model's forward, backward and infer do
        # (threads.holding_blas): convnet's own threads do the parallel work.
        if training:
            def step(a=algorithm):
                with one_blas_thread():
                    out, cache = conv2d_forward(x, w, b, padding=(pad, pad), algorithm=a,
                                                relu=True)
                    conv2d_backward(dout, cache)
        else:
            def step(a=algorithm):
                with one_blas_thread():
                    conv2d_infer(x, w, b, padding=(pad, pad), algorithm=a, relu=True)
        fns[algorithm.value] = step
    xt, wt, bt = (torch.from_numpy(a) for a in (x, w, b))
    if training:
        xg, wg, bg = (t.clone().requires_grad_() for t in (xt, wt, bt))
        dt = torch.from_numpy(dout)

        def torch_step():
            torch.relu(torch.nn.functional.conv2d(xg, wg, bg, padding=pad)).backward(dt)
    else:
        def torch_step():
            with torch.no_grad():
                torch.relu(torch.nn.functional.conv2d(xt, wt, bt, padding=pad))
    fns["torch"] = torch_step
    return fns


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="layer groups, comma-separated: " +
                        ", ".join(dict.fromkeys(g for g, *_ in LAYERS)))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--numpy-first", action="store_true",
                        help="import NumPy before convnet, as most scripts do")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    groups = set(args.only.split(",")) if args.only else None
    report = {"environment": environment(torch), "gemm_peak_gflops": gemm_peak(),
              "numpy_first": args.numpy_first, "layers": []}
    rows = []
    for group, label, n, c, k, hw, training, f in LAYERS:
        if groups and group not in groups:
            continue
        timings = time_blocks(calls(n, c, k, hw, training, f), repeat=args.repeat,
                              rounds=args.rounds, min_block_s=0.3, pause_s=0.05)
        base = timings.pop("torch").median
        auto = algorithm_for((n, c, hw, hw), (k, c, f, f), padding=(f // 2, f // 2),
                             training=training)[0].value
        ratios = {name: t.median / base for name, t in timings.items()}
        best = min(ratios, key=ratios.get)
        report["layers"].append({"group": group, "label": label, "n": n, "training": training,
                                 "torch_ms": base * 1e3, "ratios": ratios, "auto": auto,
                                 "best": best})
        cells = [f"{ratios[a.value]:.2f}x" if a.value in ratios else "" for a in CANDIDATES]
        rows.append([f"{label}, N={n}", "train" if training else "infer",
                     f"{base * 1e3:.1f} ms", *cells, auto])
        print(f"{label}, N={n}: torch {base * 1e3:.1f} ms, " +
              ", ".join(f"{a} {r:.2f}x" for a, r in ratios.items()) + f"; auto {auto}",
              file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(report, indent=1))
        return
    headers = ["layer", "pass", "PyTorch", *(a.value for a in CANDIDATES), "auto"]
    print(format_table(headers, rows))
    print(f"\nconvnet time / PyTorch time (below 1: convnet faster); GEMM peak "
          f"{report['gemm_peak_gflops']:.0f} GFLOP/s; NumPy imported "
          f"{'before' if args.numpy_first else 'after'} convnet")


if __name__ == "__main__":
    main()
