"""The convnet command line: thin argument parsing over the library."""

from __future__ import annotations

import argparse
import json
import sys

import convnet


def cmd_summary(args):
    from convnet.analysis import summary
    from convnet.spec import parse_shape, resolve_model

    shape = parse_shape(args.input) if args.input else None
    model = resolve_model(args.model, input_shape=shape, num_classes=args.classes)
    input_shape = shape or getattr(model, "input_shape", None)
    if input_shape is None:
        raise ValueError("the model has no default input size: give --input CxHxW")
    result = summary(model, input_shape, batch_size=args.batch, optimizer=args.optimizer,
                     budget=args.budget)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.to_text())


def cmd_train(args):
    from convnet.train.loop import TrainConfig, train

    cfg = TrainConfig(data=args.data, model=args.model, epochs=args.epochs,
                      batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
                      weight_decay=args.weight_decay, augment=args.augment,
                      schedule=args.schedule, val_fraction=args.val_fraction, limit=args.limit,
                      seed=args.seed, out=args.out, checkpoint_every=args.checkpoint_every,
                      data_root=args.data_root, download=args.download,
                      image_size=args.image_size, init_from=args.init_from,
                      freeze=tuple(args.freeze or ()))
    train(cfg, resume=args.resume, progress=not args.quiet)


def image_size(text):
    """--image-size: "28" (28x28) or "HxW" such as "32x28" -> (H, W)."""
    parts = text.lower().split("x")
    if len(parts) in (1, 2) and all(p.strip().isdigit() and int(p) > 0 for p in parts):
        return int(parts[0]), int(parts[-1])
    raise argparse.ArgumentTypeError(f"expected a size such as 28 or 32x28 (H x W, positive "
                                     f"integers), got {text!r}")


def cmd_eval(args):
    from convnet.data import load_dataset
    from convnet.io import load_model
    from convnet.train.inference import evaluate, preprocess

    model = load_model(args.model)
    splits = load_dataset(args.data, root=args.data_root)
    x, y = splits.test
    if tuple(x.shape[1:]) != tuple(model.input_shape):
        raise ValueError(f"{args.model} takes {model.input_shape} images but {args.data} has "
                         f"{tuple(x.shape[1:])}")
    result = evaluate(model, preprocess(x, splits.scale, model.info), y,
                      num_classes=len(splits.classes))
    if args.json:
        print(json.dumps({"accuracy": result["accuracy"], "loss": result["loss"],
                          "images": len(x), "classes": list(splits.classes),
                          "confusion": result["confusion"].tolist()}))
        return
    print(f"accuracy {result['accuracy']:.4f} on {len(x)} test images of {splits.name}, "
          f"loss {result['loss']:.4f}")
    print("confusion matrix (rows: true class, columns: predicted):")
    names = [str(c)[:8] for c in splits.classes]
    width = max(6, *(len(n) for n in names)) + 1
    print(" " * width + "".join(f"{i:>{width}}" for i in range(len(names))))
    for i, row in enumerate(result["confusion"]):
        print(f"{i:>2} {names[i]:<{width - 3}}" + "".join(f"{v:>{width}}" for v in row))


def cmd_predict(args):
    from convnet.io import load_model
    from convnet.train.inference import load_images, preprocess, top_k

    model = load_model(args.model)
    x = preprocess(load_images(args.images, model.input_shape), 255, model.info)
    classes = model.info.get("classes") or [str(i) for i in range(model.output_shape(
        model.input_shape)[0])]
    indices, probs = top_k(model, x, min(args.top, len(classes)))
    for path, idx, prob in zip(args.images, indices, probs):
        ranked = ", ".join(f"{classes[i]} {p:.3f}" for i, p in zip(idx, prob))
        print(f"{path}: {ranked}")


def cmd_show(args):
    from convnet import plot
    from convnet.spec import resolve_model

    model = resolve_model(args.model)
    out = args.out or f"{args.what}.png"
    if args.what == "filters":
        path = plot.plot_filters(model, out)
    elif args.what == "reuse":
        path = plot.plot_reuse(model, out)
    else:
        from convnet.train.inference import load_images, preprocess
        if not args.image:
            raise ValueError("show activations needs an IMAGE")
        info = getattr(model, "info", None) or {"mean": [0.0], "std": [1.0]}
        x = preprocess(load_images([args.image], model.input_shape), 255, info)
        path = plot.plot_activations(model, x, out)
    print(f"wrote {path}")


def cmd_convert(args):
    from convnet.io.convert import convert

    path = convert(args.src, args.dst, model=args.model, num_classes=args.classes)
    print(f"wrote {path}")


def cmd_zoo(args):
    from convnet.zoo import listing

    print(listing())


def build_parser():
    parser = argparse.ArgumentParser(
        prog="convnet",
        description="convnet: ConvNets on NumPy, written next to the CS231n notes.")
    parser.add_argument("--version", action="version", version=f"convnet {convnet.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = commands.add_parser(
        "summary", help="volumes, parameters, mult-adds, receptive field and memory",
        description="Summarize a ConvNet layer by layer the way the notes compute it: output "
                    "volume W x H x D, parameters, multiply-adds, receptive field (and jump), "
                    "activation memory; then the memory arithmetic (activations and their "
                    "gradients, parameters x the optimizer's multiplier, the input batch) "
                    "and the notes' rules of thumb as advice.")
    p.add_argument("model", metavar="MODEL",
                   help="a zoo name (see 'convnet zoo'), arrow notation in quotes "
                        "(e.g. 'INPUT 32x32x3 -> [CONV 32 -> RELU -> POOL]*2 -> FC 10'), "
                        "a model .json file, or an ONNX .onnx file")
    p.add_argument("--input", metavar="CxHxW",
                   help="per-sample input size, channels first (e.g. 3x224x224); "
                        "default: the model's own")
    p.add_argument("--batch", type=int, default=1, metavar="N", help="batch size (default 1)")
    p.add_argument("--classes", type=int, metavar="K", help="number of classes (zoo models)")
    p.add_argument("--optimizer", default="sgd",
                   help="sets the parameter memory multiplier: sgd x2; momentum, nesterov, "
                        "adagrad, rmsprop x3; adam, adamw x4 (default sgd)")
    p.add_argument("--budget", metavar="SIZE",
                   help="memory budget such as 4GB or 512MB: report the largest batch that fits")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_summary)

    p = commands.add_parser(
        "train", help="train a ConvNet (default: the embedded digits, in under a minute)",
        description="Train a ConvNet on real images with a progress bar, validation after "
                    "each epoch, the best model kept, and a checkpoint after every epoch "
                    "(and every --checkpoint-every batches) that --resume continues from, "
                    "bit for bit. Unset options take the dataset's defaults.")
    p.add_argument("--model", metavar="MODEL",
                   help="a zoo name or arrow notation (default: a small net of the notes' "
                        "pattern sized for the data)")
    p.add_argument("--data", default="digits", metavar="DATA",
                   help="digits (embedded, the default), fashion-mnist, mnist, cifar10, "
                        "cifar100, or a directory of images (one sub-folder per class)")
    p.add_argument("--data-root", metavar="DIR", help="where to look for the dataset's files")
    p.add_argument("--download", action="store_true",
                   help="download Fashion-MNIST if it is not found (checksums verified)")
    p.add_argument("--image-size", type=image_size, metavar="H[xW]",
                   help="resize the images first (bilinear), e.g. 28 to fine-tune a 28x28 "
                        "net on the 8x8 digits")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--optimizer", help="sgd, momentum, nesterov, adagrad, rmsprop, adam, adamw")
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--schedule", default="cosine", help="none, step, cosine or warmup+cosine")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random crops (zero padding of 1/8 of the image size), plus "
                        "horizontal flips except for digits (default: the dataset's)")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of the training images held out for validation (0.1)")
    p.add_argument("--limit", type=int, metavar="N", help="train on the first N images only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", metavar="DIR", help="output directory (default runs/DATA)")
    p.add_argument("--checkpoint-every", type=int, default=0, metavar="N",
                   help="also write a checkpoint every N batches")
    p.add_argument("--resume", action="store_true",
                   help="continue the run saved in --out from its last checkpoint")
    p.add_argument("--from", dest="init_from", metavar="MODEL_FILE",
                   help="fine-tune: start from a saved model's weights (a new head is made "
                        "when the number of classes differs)")
    p.add_argument("--freeze", nargs="+", metavar="STAGE",
                   help="with --from: stages whose parameters stay fixed (e.g. features)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = commands.add_parser("eval", help="accuracy and confusion matrix on a test set",
                            description="Evaluate a saved model on a dataset's test split.")
    p.add_argument("model", metavar="MODEL", help="a saved model (model.json)")
    p.add_argument("--data", required=True, help="digits, fashion-mnist, cifar10, ... or a path")
    p.add_argument("--data-root", metavar="DIR")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_eval)

    p = commands.add_parser("predict", help="top-k classes of image files",
                            description="Classify image files with a saved model.")
    p.add_argument("model", metavar="MODEL", help="a saved model (model.json)")
    p.add_argument("images", metavar="IMAGE", nargs="+")
    p.add_argument("--top", type=int, default=3, help="how many classes to show (3)")
    p.set_defaults(func=cmd_predict)

    p = commands.add_parser(
        "show", help="pictures: first-layer filters, activation maps, DenseNet reuse",
        description="Draw what a net has learned (needs matplotlib): 'filters' = the first "
                    "CONV layer's filters as a grid; 'activations MODEL IMAGE' = each "
                    "stage's activation maps for an image; 'reuse' = the DenseNet paper's "
                    "feature-reuse heat map, one per dense block.")
    p.add_argument("what", choices=["filters", "activations", "reuse"])
    p.add_argument("model", metavar="MODEL", help="a saved model, zoo name or arrow notation")
    p.add_argument("image", metavar="IMAGE", nargs="?", help="for activations: an image file")
    p.add_argument("--out", metavar="PNG", help="output file (default WHAT.png)")
    p.set_defaults(func=cmd_show)

    p = commands.add_parser(
        "convert", help="convert between PyTorch, safetensors, convnet and ONNX files",
        description="Convert a model between formats, chosen by suffix. In: a convnet model "
                    "(.json), an ONNX file (.onnx: architecture and weights), or weights "
                    "(.pt/.pth from torch.save, .safetensors) with --model naming the "
                    "architecture. Out: .json (convnet model), .safetensors (weights, "
                    "loadable in PyTorch), .onnx.")
    p.add_argument("src", metavar="IN")
    p.add_argument("dst", metavar="OUT")
    p.add_argument("--model", metavar="MODEL",
                   help="the architecture for a weights-only input: a zoo name or notation")
    p.add_argument("--classes", type=int, metavar="K", help="number of classes (zoo models)")
    p.set_defaults(func=cmd_convert)

    p = commands.add_parser("zoo", help="list the famous nets", description="List the zoo: "
                            "name, default input, parameters, and a one-line description.")
    p.set_defaults(func=cmd_zoo)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        args.func(args)
    except (ValueError, OSError, ImportError) as err:
        print(f"convnet {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"convnet {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
