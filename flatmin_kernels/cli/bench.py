"""``python -m flatmin_kernels bench``: fused ops, optimizer steps and host time, ours against the peers.

Prints the tables, writes bench.json (machine, versions, configuration, every measurement,
the targets) and PNG plots to ``--out``. Progress goes to stderr. Bad arguments are refused
with one line and exit code 2 before anything is measured or written.
"""
from __future__ import annotations

import os
import sys

SUITE_CHOICES = ("ops", "steps", "host", "all")


def add_arguments(parser):
    from flatmin_kernels.bench import param_lists, runner

    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where to run (default: cpu)")
    parser.add_argument("--quick", action="store_true",
                        help="small lists and 2-3 rounds: a smoke run of every suite (under a minute on a CPU)")
    parser.add_argument("--suite", default="all", choices=SUITE_CHOICES, help="which suite (default: all)")
    parser.add_argument("--params", nargs="+", choices=param_lists.NAMES, metavar="LIST",
                        help=f"parameter lists instead of each suite's defaults, from: {', '.join(param_lists.NAMES)}")
    parser.add_argument("--dtype", nargs="+", choices=tuple(runner.DTYPES), metavar="DTYPE",
                        help="fp32 and/or bf16 (default: ops both, steps and host fp32)")
    parser.add_argument("--backends", nargs="+", metavar="NAME",
                        help="flatmin backends to time (default: every backend that runs natively on the device)")
    parser.add_argument("--out", default="flatmin_bench", help="folder for bench.json and the PNGs")
    parser.add_argument("--reps", type=int, help="rounds of every suite (default: ops 3, steps 4, host 9; --quick 2-3)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch.set_num_threads for the run (default: all cores)")


def validate(args):
    """The run's Config, or ValueError with the one line to print."""
    import torch

    from flatmin_kernels.bench import machine, param_lists, runner

    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is visible here (torch.cuda.is_available() is False)")
    for name in ("reps", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be >= 1, got {value}")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise ValueError(f"--out {args.out}: exists and is not a folder")
    device = torch.device(args.device)
    status = machine.native_backends(device)
    if args.backends:
        for name in args.backends:
            if name not in status:
                raise ValueError(f"--backends: unknown backend {name!r}; choose from {', '.join(status)}")
            if status[name] is not None:
                raise ValueError(f"--backends: {name} cannot run on {args.device} here: {status[name]}")
        backends = tuple(dict.fromkeys(args.backends))
    else:
        backends = tuple(name for name, why in status.items() if why is None)
    suites = runner.SUITES if args.suite == "all" else (args.suite,)
    if args.suite == "host" and args.params and not set(args.params) & set(param_lists.HOST_LISTS):
        raise ValueError(f"--suite host runs on {', '.join(param_lists.HOST_LISTS)}; --params gave none of them")
    return runner.Config(device=device, suites=suites, params=None if not args.params else tuple(dict.fromkeys(args.params)),
                         dtypes=None if not args.dtype else tuple(dict.fromkeys(args.dtype)), backends=backends,
                         reps=args.reps, quick=args.quick, threads=args.threads,
                         command=command_line(args))


def command_line(args) -> str:
    """The command, spelled out from the parsed arguments (defaults included)."""
    parts = ["python -m flatmin_kernels bench", f"--device {args.device}", f"--suite {args.suite}"]
    parts += ["--quick"] if args.quick else []
    for name in ("params", "dtype", "backends"):
        if getattr(args, name):
            parts.append(f"--{name} " + " ".join(getattr(args, name)))
    parts += [] if args.reps is None else [f"--reps {args.reps}"]
    parts += [f"--threads {args.threads}", f"--out {args.out}"]
    return " ".join(parts)


def run(args) -> int:
    try:
        config = validate(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from flatmin_kernels.bench import report as report_text, runner
    from flatmin_kernels.experiments.report import write_json

    os.makedirs(args.out, exist_ok=True)
    json_path = os.path.join(args.out, "bench.json")
    config.checkpoint = lambda partial: write_json(json_path, partial)  # what is measured so far
    try:
        report = runner.run(config)
    except KeyboardInterrupt:
        print(f"\ninterrupted: {json_path} holds what was measured (\"complete\": false)", file=sys.stderr)
        return 130
    print(report_text.format_report(report))
    print(f"wrote {json_path}" + "".join(f", {p}" for p in _plots(args.out, report)))
    return 0


def _plots(out, report) -> list:
    try:
        from flatmin_kernels.bench import plots

        return list(plots.write_all(out, report))
    except ImportError as exc:  # the GPU image may lack matplotlib: the JSON is the record
        print(f"no plots: {exc}", file=sys.stderr)
        return []
