"""``python -m flatmin_kernels info``: what is installed, what devices are seen, which backends work."""
from __future__ import annotations

import json
import platform


def add_arguments(parser):
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def collect() -> dict:
    import torch

    import flatmin_kernels
    from flatmin_kernels.backends import backend_status

    try:
        import triton

        triton_version = triton.__version__
    except Exception as exc:  # triton is optional on non-Linux machines
        triton_version = f"not importable ({type(exc).__name__}: {exc})"
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())]
    return {
        "flatmin_kernels": flatmin_kernels.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": triton_version,
        "devices": devices,
        "backends": {name: {"available": ok, "reason": reason} for name, (ok, reason) in backend_status().items()},
    }


def run(args) -> int:
    info = collect()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for key in ("flatmin_kernels", "python", "torch", "torch_cuda", "triton"):
        print(f"{key:16s} {info[key]}")
    print(f"{'devices':16s} {', '.join(info['devices'])}")
    print("backends:")
    for name, entry in info["backends"].items():
        mark = "yes" if entry["available"] else "no "
        print(f"  {name:8s} {mark}  {entry['reason']}")
    return 0
