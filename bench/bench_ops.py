"""GPU timing of every Triton-backend op on a >= 256 MB fp32 list, against a device-to-device
copy of the same bytes.

    python bench/bench_ops.py [--mib 256] [--tensors 64] [--out bench/results]

Each op is timed with ``triton.testing.do_bench`` (median, 20th and 80th percentile, in ms).
Its bytes are the minimal reads and writes of the op (e.g. Adam: read p, g, m, v; write p, m,
v = 28 B per fp32 element); achieved bandwidth is those bytes over the median time, and
``fraction_of_copy`` compares it with ``torch.Tensor.copy_`` moving the same number of bytes
(read + write) in the same run. Writes ``ops_<gpu>_<date>.json`` and ``.csv`` under --out,
naming the GPU, the software versions and the date. Refuses to run without a CUDA device.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import re
import sys


def _parse():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=256, help="size of each fp32 list in MiB (>= 256 for results)")
    parser.add_argument("--tensors", type=int, default=64, help="tensors per list (equal sizes)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    return parser.parse_args()


def main() -> int:
    args = _parse()
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("bench_ops.py times compiled kernels: unset TRITON_INTERPRET", file=sys.stderr)
        return 2
    import torch

    if not torch.cuda.is_available():
        print("bench_ops.py needs a CUDA device: none is visible here (torch.cuda.is_available() "
              "is False), so there is nothing to measure", file=sys.stderr)
        return 2
    import triton
    from triton.testing import do_bench

    from flatmin_kernels.backends import triton_backend as tb

    dev = torch.device("cuda")
    numel = args.mib * 2**20 // 4
    per = numel // args.tensors
    shapes = [(per // 256, 256)] * args.tensors  # matrices, so the GC variants have rows

    def fp32_list(seed, positive=False):
        gen = torch.Generator(device=dev).manual_seed(seed)
        ts = [torch.randn(s, device=dev, generator=gen) for s in shapes]
        return [t.abs_().add_(0.1) for t in ts] if positive else ts

    p, g, m, v, b = (fp32_list(i, positive=(i == 3)) for i in range(5))
    steps = [torch.zeros((), device=dev) for _ in shapes]
    flags = [True] * len(shapes)
    n = sum(t.numel() for t in p)
    scale = torch.tensor(1e-3, device=dev)
    offsets = [i * per for i in range(len(shapes))]
    E = 4  # bytes per fp32 element

    ops = {  # name: (callable, bytes moved)
        "sumsq": (lambda: tb.sumsq(g), n * E),
        "sumsq_gc": (lambda: tb.sumsq(g, centralize=flags), n * E),
        "dot": (lambda: tb.dot(g, m), 2 * n * E),
        "perturb_save": (lambda: tb.perturb_(p, g, scale, save_to=b), 4 * n * E),
        "perturb_gc_asam": (lambda: tb.perturb_(p, g, scale, centralize=flags, adaptive=True), 3 * n * E),
        "noise_": (lambda: tb.noise_(p, 1e-6, seed=1, step=0, sample=0, offsets=offsets), 2 * n * E),
        "philox": (lambda: tb.philox(n // 8, seed=1, step=0, sample=0, offset=0, device=dev), n // 8 * 32),
        "centralize_": (lambda: tb.centralize_(g, flags), 2 * n * E),
        "axpby_": (lambda: tb.axpby_(m, g, 0.5, 0.5), 3 * n * E),
        "step_sgd_momentum": (lambda: tb.step_sgd_(p, g, m, lr=1e-6, weight_decay=0.0, momentum=0.9,
                                                   dampening=0.0, nesterov=False, maximize=False),
                              5 * n * E),
        "step_sgd_momentum_gc_restore": (
            lambda: tb.step_sgd_(p, g, m, lr=1e-6, weight_decay=0.0, momentum=0.9, dampening=0.0,
                                 nesterov=False, maximize=False, centralize=flags, backups=b),
            5 * n * E),
        "step_adamw": (lambda: tb.step_adam_(p, g, m, v, None, steps, lr=1e-6, beta1=0.9, beta2=0.999,
                                             eps=1e-8, weight_decay=0.01, decoupled=True,
                                             amsgrad=False, maximize=False), 7 * n * E),
        "step_adamw_gc_restore": (
            lambda: tb.step_adam_(p, g, m, v, None, steps, lr=1e-6, beta1=0.9, beta2=0.999, eps=1e-8,
                                  weight_decay=0.01, decoupled=True, amsgrad=False, maximize=False,
                                  centralize=flags, backups=b), 7 * n * E),
    }

    quantiles = [0.5, 0.2, 0.8]
    rows = []
    for name, (fn, nbytes) in ops.items():
        fn()  # compile and build the tables outside the timing
        torch.cuda.synchronize()
        t50, t20, t80 = do_bench(fn, quantiles=quantiles)
        src = torch.empty(nbytes // 2, dtype=torch.uint8, device=dev)  # copy: reads + writes = nbytes
        dst = torch.empty_like(src)
        c50, _, _ = do_bench(lambda: dst.copy_(src), quantiles=quantiles)
        gbps = nbytes / (t50 * 1e-3) / 1e9
        copy_gbps = nbytes / (c50 * 1e-3) / 1e9
        rows.append(dict(op=name, elements=n, tensors=len(shapes), bytes=nbytes, ms_p50=t50, ms_p20=t20,
                         ms_p80=t80, copy_ms_p50=c50, gb_per_s=gbps, copy_gb_per_s=copy_gbps,
                         fraction_of_copy=gbps / copy_gbps))
        print(f"{name:32s} {t50:8.3f} ms  {gbps:7.0f} GB/s  copy {copy_gbps:7.0f} GB/s  "
              f"{100 * gbps / copy_gbps:5.1f}%", flush=True)

    gpu = torch.cuda.get_device_name(dev)
    now = datetime.datetime.now(datetime.timezone.utc)
    meta = dict(gpu=gpu, torch=torch.__version__, triton=triton.__version__, cuda=torch.version.cuda,
                python=platform.python_version(), date=now.isoformat(timespec="seconds"),
                list_mib=args.mib, dtype="float32", timing="triton.testing.do_bench, quantiles 0.5/0.2/0.8")
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"ops_{re.sub(r'[^A-Za-z0-9]+', '-', gpu).strip('-')}_{now:%Y%m%d}")
    with open(stem + ".json", "w") as fh:
        json.dump(dict(meta=meta, results=rows), fh, indent=2)
    with open(stem + ".csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) + list(meta))
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, **meta})
    print(f"wrote {stem}.json and .csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
