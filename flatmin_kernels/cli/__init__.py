"""``python -m flatmin_kernels <command>``: one module per command under this package.

Each command module defines ``add_arguments(parser)`` and ``run(args) -> int``; modules are
imported only when the parser is built, so ``info`` works even where the demo's extras are missing.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "info": "versions, devices, and which backends work here",
    "demo": "train a digits MLP with every method and report accuracy, sharpness and cost",
    "edge": "GD and SAM on the digits MLP: sharpness against the edges of stability",
    "bench": "benchmarks: fused ops, optimizer steps and host time, against the peers",
}


def _command_module(name):
    return importlib.import_module(f"flatmin_kernels.cli.{name}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m flatmin_kernels",
                                     description="flatmin_kernels: fused flat-minima optimizers")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in COMMANDS.items():
        _command_module(name).add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return _command_module(args.command).run(args) or 0


if __name__ == "__main__":
    sys.exit(main())
