"""``python -m flatmin_kernels edge``: full-batch GD and SAM on the digits MLP against their edges of stability.

Writes edge.json and edge.png to ``--out`` and prints λ_max against each run's edge.
"""
from __future__ import annotations

import os
import sys


def add_arguments(parser):
    parser.add_argument("--lr", type=float, default=0.3, help="GD step size eta (default: 0.3, so 2/eta = 6.67)")
    parser.add_argument("--rho", type=float, default=0.05, help="SAM radius (default: 0.05)")
    parser.add_argument("--steps", type=int, default=1000, help="full-batch steps per run (default: 1000)")
    parser.add_argument("--every", type=int, default=10, help="measure lambda_max every N steps (default: 10)")
    parser.add_argument("--runs", default="gd,sam", help="comma-separated, from: gd, sam (default: both)")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--backend", default="auto", help="flatmin backend (default: auto)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="flatmin_edge", help="folder for edge.json and edge.png")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")


def _kinds(text):
    return tuple(k.strip().lower() for k in text.split(",") if k.strip())


def run(args) -> int:
    from flatmin_kernels.experiments.settings import single_process_settings

    kinds = _kinds(args.runs)
    try:
        bad = [k for k in kinds if k not in ("gd", "sam")]
        if bad or not kinds:
            raise ValueError(f"unknown run {bad[0] if bad else args.runs!r}; choose from gd, sam")
        for name in ("lr", "rho"):
            if not getattr(args, name) > 0:
                raise ValueError(f"--{name} must be positive, got {getattr(args, name)!r}")
        if args.steps < 1 or args.every < 1 or args.threads < 1:
            raise ValueError("--steps, --every and --threads must be >= 1")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with single_process_settings(args.threads):
        return _run(args)


def _run(args) -> int:
    from flatmin_kernels.experiments.digits import load_digits_split
    from flatmin_kernels.experiments.edge_run import format_summary, run_edge, write_png
    from flatmin_kernels.experiments.report import write_json

    data = load_digits_split(args.seed, device=args.device)
    report = run_edge(data, lr=args.lr, rho=args.rho, steps=args.steps, every=args.every, seed=args.seed,
                      backend=args.backend, kinds=_kinds(args.runs),
                      progress=lambda line: print(line, file=sys.stderr, flush=True))
    report["config"]["command"] = "python -m flatmin_kernels edge " + " ".join(sys.argv[2:])
    os.makedirs(args.out, exist_ok=True)
    json_path, png_path = os.path.join(args.out, "edge.json"), os.path.join(args.out, "edge.png")
    write_json(json_path, report)
    write_png(png_path, report)
    print(format_summary(report))
    print(f"\neta {args.lr:g}, rho {args.rho:g}, {args.steps} steps, {report['wall_seconds']:.0f} s; "
          f"wrote {json_path} and {png_path}")
    return 0
