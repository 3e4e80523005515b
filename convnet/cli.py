"""The convnet command line: thin argument parsing over the library."""

from __future__ import annotations

import argparse
import sys

import convnet


def build_parser():
    parser = argparse.ArgumentParser(
        prog="convnet",
        description="convnet: ConvNets on NumPy, written next to the CS231n notes.")
    parser.add_argument("--version", action="version", version=f"convnet {convnet.__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
