"""Fine-tuning against training from scratch: Fashion-MNIST features on the digits.

The notes' advice, measured: pretrain a small ConvNet on Fashion-MNIST, then train it on
the embedded digits (8x8, resized to 28x28) for a small, fixed number of steps, and
train the same net from random weights for the same steps; print both test accuracies.

    OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 python examples/finetune.py [--json]

The three steps, each through the library's ``train`` (what ``convnet train`` runs):

(a) pretrain NET on Fashion-MNIST (``--pretrain-epochs``, optionally ``--pretrain-limit``
    images), or take a saved model with ``--pretrained MODEL_FILE``;
(b) fine-tune: load it and re-initialise its classifier, the two FC layers (the last
    through ``replace_head``: Fashion-MNIST and the digits both have 10 classes, but a
    T-shirt unit is no "0" unit), so that what transfers is the CONV features; freeze
    those (``--freeze``, default the CONV and BN layers) and train for ``--head-epochs``,
    then optionally unfreeze everything for ``--unfreeze-epochs`` more;
(c) scratch: NET from random weights with the same fresh classifier (same seed), the
    same epochs, batch size, optimizer, learning rate and schedule, nothing frozen.

Both (b) and (c) see the digits normalized with their own training statistics; their only
differences are the starting CONV weights and the freezing. (b) and (c) are repeated for
``--seeds`` seeds (data order, classifier and scratch weights); the pretraining runs once,
with seed 0. The step budget is where the gap shows: with more steps, training from
scratch catches up on a task this easy (the default ``convnet train`` reaches 97-99% on
the digits from random weights in 25 epochs).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from convnet.io.weights import load_model, save_model
from convnet.layers.linear import Linear
from convnet.models.finetune import replace_head
from convnet.spec import resolve_model
from convnet.train.checkpoint import load_checkpoint
from convnet.train.loop import TrainConfig, train

NET = "INPUT 28x28x1 -> [CONV 32 -> BN -> RELU -> POOL]*2 -> FC 128 -> RELU -> FC 10"
FEATURES = ("0", "1", "4", "5")   # NET's CONV and BN layers: the stages that stay frozen
DIGITS = 10


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/finetune", help="working directory (runs/finetune)")
    p.add_argument("--pretrained", metavar="MODEL_FILE",
                   help="skip (a): fine-tune this saved 28x28x1 model instead")
    p.add_argument("--pretrain-epochs", type=int, default=1)
    p.add_argument("--pretrain-limit", type=int, metavar="N",
                   help="pretrain on N Fashion-MNIST images only (drawn at random, seeded)")
    p.add_argument("--data-root", metavar="DIR", help="where Fashion-MNIST's files are")
    p.add_argument("--limit", type=int, metavar="N",
                   help="use N digits training images only, drawn at random, seeded "
                        "(default all 1,438)")
    p.add_argument("--freeze", nargs="+", default=list(FEATURES), metavar="STAGE",
                   help=f"stages frozen while the classifier trains (default "
                        f"{' '.join(FEATURES)}: the CONV and BN layers)")
    p.add_argument("--head-epochs", type=int, default=1,
                   help="epochs with the features frozen (scratch: nothing frozen)")
    p.add_argument("--unfreeze-epochs", type=int, default=0,
                   help="then epochs with everything trainable (default 0)")
    p.add_argument("--batch-size", type=int, default=128,
                   help="default 128: one epoch over the 1,295 digits is 10 steps")
    p.add_argument("--optimizer", default="adam")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seeds", type=int, default=5,
                   help="repeat (b) and (c) with seeds 0 .. N-1 (default 5)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p.parse_args(argv)


def steps_taken(run_dir):
    """Optimizer steps of the run in run_dir: the schedule's counter in its checkpoint."""
    return load_checkpoint(Path(run_dir) / "checkpoint.safetensors")[2]["schedule"]["last_epoch"]


def fit(start, out, freeze, seed, args, log):
    """Train the saved model ``start`` on the resized digits, in one or two phases.

    Phase 1 freezes ``freeze``; phase 2 (if --unfreeze-epochs) continues from phase 1's
    model with everything trainable. Returns (test accuracy, optimizer steps).
    """
    phases = [("head", args.head_epochs, freeze), ("all", args.unfreeze_epochs, ())]
    steps, result = 0, None
    for name, epochs, frozen in phases:
        if epochs <= 0:
            continue
        cfg = TrainConfig(data="digits", image_size=(28, 28), init_from=str(start),
                          freeze=frozen, epochs=epochs, batch_size=args.batch_size,
                          optimizer=args.optimizer, lr=args.lr, weight_decay=0.0,
                          augment=False, limit=args.limit, seed=seed,
                          out=str(out / name))
        result = train(cfg, log=log, progress=False, overwrite=True)  # its own work files
        steps += steps_taken(out / name)
        start = result.model_path
    if result is None:
        raise ValueError("nothing to train: give --head-epochs or --unfreeze-epochs above 0")
    return result.test_acc, steps


def fresh_classifier(model, num_classes, rng):
    """Re-initialise every FC layer of ``model`` (its classifier), in place.

    The last one goes through ``replace_head`` (num_classes outputs), the others keep their
    sizes. The CONV stages, what transfers between data sets, keep their weights.
    """
    fcs = [(name, layer) for name, layer in model.named_layers() if isinstance(layer, Linear)]
    for name, layer in fcs[:-1]:
        model.replace(name, Linear(layer.in_features, layer.out_features,
                                   dtype=layer.params["weight"].dtype, rng=rng))
    replace_head(model, num_classes, rng)
    return model


def compare(pretrained, seed, args, log):
    """(b) and (c) for one seed: {"finetune": (acc, steps), "scratch": (acc, steps)}."""
    out = Path(args.out) / f"seed{seed}"
    # Both runs get the same fresh classifier, drawn from one seed.
    finetune_start = fresh_classifier(load_model(pretrained), DIGITS,
                                      np.random.default_rng([seed, 7]))
    scratch_start = fresh_classifier(resolve_model(NET, rng=np.random.default_rng([seed, 8])),
                                     DIGITS, np.random.default_rng([seed, 7]))
    finetune_file = save_model(finetune_start, out / "start-finetune")
    scratch_file = save_model(scratch_start, out / "start-scratch")
    log(f"== seed {seed}: (b) fine-tune the pretrained net")
    finetune = fit(finetune_file, out / "finetune", tuple(args.freeze), seed, args, log)
    log(f"== seed {seed}: (c) the same net from scratch")
    scratch = fit(scratch_file, out / "scratch", (), seed, args, log)
    return {"finetune": finetune, "scratch": scratch}


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out)
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    started = time.perf_counter()

    record = {"net": NET, "frozen": list(args.freeze), "seeds": args.seeds}
    if args.pretrained:
        pretrained = Path(args.pretrained)
    else:  # (a)
        cfg = TrainConfig(data="fashion-mnist", model=NET, epochs=args.pretrain_epochs,
                          limit=args.pretrain_limit, batch_size=64, optimizer="adam",
                          lr=2e-3, weight_decay=0.0, augment=False, seed=0,
                          data_root=args.data_root, out=str(out / "pretrain"))
        result = train(cfg, log=log, progress=False, overwrite=True)  # its own work files
        pretrained = result.model_path
        record["pretrain"] = {"data": "fashion-mnist", "epochs": args.pretrain_epochs,
                              "limit": args.pretrain_limit,
                              "steps": steps_taken(out / "pretrain"),
                              "test_acc": result.test_acc}
    shape = tuple(getattr(load_model(pretrained), "input_shape", None) or ())
    if shape != (1, 28, 28):
        raise ValueError(f"{pretrained}: expected a model for 28x28x1 images, got {shape}")

    runs = [compare(pretrained, seed, args, log) for seed in range(args.seeds)]
    record["digits"] = {"image_size": [28, 28], "limit": args.limit,
                        "batch_size": args.batch_size, "optimizer": args.optimizer,
                        "lr": args.lr, "head_epochs": args.head_epochs,
                        "unfreeze_epochs": args.unfreeze_epochs}
    for kind in ("finetune", "scratch"):
        accs = [run[kind][0] for run in runs]
        record[kind] = {"test_acc": accs, "mean_test_acc": float(np.mean(accs)),
                        "steps": [run[kind][1] for run in runs][0]}
    record["seconds"] = round(time.perf_counter() - started, 1)
    if args.json:
        print(json.dumps(record))
    else:
        ft, sc = record["finetune"], record["scratch"]
        print(f"digits (resized to 28x28) test accuracy, mean of {args.seeds} seeds:")
        for name, kind in (("fine-tuned  ", ft), ("from scratch", sc)):
            each = ", ".join(f"{a:.4f}" for a in kind["test_acc"])
            print(f"  {name} {kind['mean_test_acc']:.4f} after {kind['steps']} steps "
                  f"({each})")
    return record


if __name__ == "__main__":
    main()
