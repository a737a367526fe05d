"""The demo: every method trains the same digits MLP from the same seed; one comparable report."""
from __future__ import annotations

import platform
import time

import torch

from .. import backends
from .digits import load_digits_split
from .methods import resolve_methods
from .report import DEFINITIONS
from .training import train_method

DEFAULT_METHODS = "adamw,adamw+gc,sam,asam,gam,nso"


def run_demo(methods=DEFAULT_METHODS, *, epochs=20, batch_size=64, lr=1e-3, seed=0, device="cpu",
             backend="auto", sharpness_size=512, progress=None) -> dict:
    """Train each method in turn and return the report (JSON-ready); nothing is written here."""
    chosen = resolve_methods(methods)  # bad names fail before any work
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    if int(epochs) != epochs or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    data = load_digits_split(seed, device=device)
    results, started = {}, time.perf_counter()
    for method in chosen:
        results[method.name] = train_method(
            method, data, epochs=int(epochs), batch_size=batch_size, lr=lr, seed=seed, backend=backend,
            device=device, sharpness_size=sharpness_size, progress=progress)
    return {
        "config": {
            "methods": [m.name for m in chosen], "epochs": int(epochs), "batch_size": batch_size, "lr": lr,
            "seed": seed, "device": str(device), "backend": backend,
            "backend_used": backends.resolve(backend, torch.device(device)).name, "sharpness_batch": sharpness_size,
            "train_size": len(data.y_train), "test_size": len(data.y_test), "model": "MLP 64-128-128-10, ReLU",
            "loss": "cross-entropy", "torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        },
        "definitions": DEFINITIONS,
        "wall_seconds": time.perf_counter() - started,
        "methods": results,
    }
