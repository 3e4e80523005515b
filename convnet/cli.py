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
                        "or a model .json file")
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
    except (ValueError, OSError) as err:
        print(f"convnet {args.command}: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
