"""A full SAM step's optimizer work on the CPU, backend against backend.

The work between the two backward passes of SAM with AdamW, through the op contract:
``sumsq`` of the gradients -> the scale rho / (||g|| + eps) as a 0-d tensor -> ``perturb_``
with the backup saved -> ``step_adam_`` (AdamW) reading the unperturbed weights from the
backup (the restore folded into the update). The forward/backward passes are not timed.

Default: 10M fp32 parameters in 100 tensors, median of several repetitions after warm-up.
Writes one JSON file naming the machine; the numbers are whatever this machine measured.

    python bench/sam_step_cpu.py --out bench/results/sam_step_cpu.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time

import torch

from flatmin_kernels.backends import get_backend

RHO, LR, BETAS, EPS, WD = 0.05, 1e-3, (0.9, 0.999), 1e-8, 1e-2


def make_state(n_tensors: int, per_tensor: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    shape = (per_tensor // 400, 400) if per_tensor % 400 == 0 else (per_tensor,)

    def randn():
        return [torch.randn(shape, generator=gen) for _ in range(n_tensors)]

    params, grads = randn(), randn()
    return dict(params=params, grads=grads, backups=[torch.empty_like(p) for p in params],
                exp_avgs=[torch.zeros_like(p) for p in params], exp_avg_sqs=[torch.zeros_like(p) for p in params],
                steps=[torch.zeros(()) for _ in params])


def sam_step(backend, s):
    """Norm, perturb (with backup), and the AdamW update from the backup: SAM's optimizer work."""
    norm = backend.sumsq(s["grads"]).sum().sqrt()
    scale = RHO / (norm + 1e-12)  # stays a 0-d tensor: no host synchronisation
    backend.perturb_(s["params"], s["grads"], scale, save_to=s["backups"])
    # ... the second forward/backward would run here, at the perturbed weights ...
    backend.step_adam_(s["params"], s["grads"], s["exp_avgs"], s["exp_avg_sqs"], None, s["steps"],
                       lr=LR, beta1=BETAS[0], beta2=BETAS[1], eps=EPS, weight_decay=WD, decoupled=True,
                       amsgrad=False, maximize=False, backups=s["backups"])


def time_backend(name: str, n_tensors: int, per_tensor: int, warmup: int, reps: int) -> dict:
    backend = get_backend(name)
    state = make_state(n_tensors, per_tensor)
    for _ in range(warmup):
        sam_step(backend, state)
    samples = []
    for _ in range(reps):
        start = time.perf_counter()
        sam_step(backend, state)
        samples.append((time.perf_counter() - start) * 1e3)
    return {"median_ms": statistics.median(samples), "min_ms": min(samples), "samples_ms": samples}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tensors", type=int, default=100)
    parser.add_argument("--per-tensor", type=int, default=100_000)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--backends", nargs="+", default=["torch", "cpp"])
    parser.add_argument("--out", help="write the result JSON here")
    args = parser.parse_args(argv)

    load_before = os.getloadavg()
    results = {}
    for name in args.backends:
        results[name] = time_backend(name, args.tensors, args.per_tensor, args.warmup, args.reps)
        print(f"{name:6s} median {results[name]['median_ms']:8.2f} ms   min {results[name]['min_ms']:8.2f} ms")
    report = {
        "benchmark": "SAM step optimizer work: sumsq -> scale -> perturb_(save_to) -> step_adam_(AdamW, backups)",
        "params": args.tensors * args.per_tensor,
        "tensors": args.tensors,
        "dtype": "float32",
        "warmup": args.warmup,
        "reps": args.reps,
        "machine": {
            "nproc": os.cpu_count(),
            "cpu_model": cpu_model(),
            "torch_threads": torch.get_num_threads(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        },
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "results": results,
    }
    if "torch" in results and "cpp" in results:
        report["speedup_cpp_vs_torch"] = results["torch"]["median_ms"] / results["cpp"]["median_ms"]
        print(f"cpp speedup over torch: {report['speedup_cpp_vs_torch']:.2f}x (median)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
