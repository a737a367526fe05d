"""``python -m flatmin_kernels demo``: AdamW, AdamW+GC, SAM, ASAM, GAM and NSO on the digits MLP.

Prints one table (accuracy, loss, sharpness, passes and optimizer time per step) and writes
report.json and report.png to ``--out``. Deterministic: the same command prints the same
numbers on the same machine, except the measured optimizer time.
"""
from __future__ import annotations

import sys


def add_arguments(parser):
    from flatmin_kernels.experiments.demo import DEFAULT_METHODS

    parser.add_argument("--methods", default=DEFAULT_METHODS,
                        help=f"comma-separated, from: {DEFAULT_METHODS} (default: all)")
    parser.add_argument("--epochs", type=int, default=20, help="epochs per method (default: 20)")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--backend", default="auto", help="flatmin backend: auto, torch, triton, cpp (default: auto)")
    parser.add_argument("--out", default="flatmin_demo", help="folder for report.json and report.png")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, weights and batch order")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate of every method (default: 1e-3)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default: 1, which keeps the numbers bit-reproducible)")


def _progress(line):
    print(line, file=sys.stderr, flush=True)


def run(args) -> int:
    from flatmin_kernels.experiments.methods import resolve_methods
    from flatmin_kernels.experiments.settings import single_process_settings

    try:
        resolve_methods(args.methods)
        if not args.lr > 0:
            raise ValueError(f"--lr must be positive, got {args.lr!r}")
        if args.epochs < 1:
            raise ValueError(f"--epochs must be >= 1, got {args.epochs}")
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with single_process_settings(args.threads):
        return _run(args)


def _run(args) -> int:
    from flatmin_kernels.experiments.demo import run_demo
    from flatmin_kernels.experiments.report import format_table, write_outputs

    report = run_demo(args.methods, epochs=args.epochs, lr=args.lr, seed=args.seed, device=args.device,
                      backend=args.backend, progress=_progress)
    report["config"]["command"] = "python -m flatmin_kernels demo " + " ".join(sys.argv[2:])
    json_path, png_path = write_outputs(args.out, report)
    print(format_table(report["methods"]))
    print(f"\n{report['config']['epochs']} epochs, seed {args.seed}, device {args.device}, "
          f"backend {report['config']['backend_used']}, "
          f"{report['config']['threads']} thread(s), {report['wall_seconds']:.0f} s; "
          f"wrote {json_path} and {png_path}")
    return 0
