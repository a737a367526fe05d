"""The methods the demo compares, each on an AdamW base with the same learning rate.

Hyperparameters are the references' defaults (spec/algorithms.md): SAM ρ=0.05; ASAM ρ=0.5
(the "about 10× SAM" rule of thumb); GAM ρ'=0.02, ρ=0.2; NSO σ=0.01, one antithetic pair.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    build: Callable  # (model, lr, backend, seed) -> optimizer driven by optimizer.step(closure)
    sam_rho: float | None = None  # ρ of plain SAM, for the SAM edge in the picture


def _adamw(model, lr, backend, seed):
    import flatmin_kernels as fk

    return fk.AdamW(model.parameters(), lr=lr, backend=backend)


def _adamw_gc(model, lr, backend, seed):
    import flatmin_kernels as fk

    return fk.AdamW(model.parameters(), lr=lr, centralize="gc", backend=backend)


def _sam(model, lr, backend, seed, rho=0.05, adaptive=False):
    import flatmin_kernels as fk

    return fk.SAM(model.parameters(), fk.AdamW, rho=rho, adaptive=adaptive, model=model, backend=backend, lr=lr)


def _asam(model, lr, backend, seed):
    return _sam(model, lr, backend, seed, rho=0.5, adaptive=True)


def _gam(model, lr, backend, seed):
    import flatmin_kernels as fk

    return fk.GAM(model.parameters(), fk.AdamW, grad_rho=0.02, grad_norm_rho=0.2, model=model, backend=backend, lr=lr)


def _nso(model, lr, backend, seed):
    import flatmin_kernels as fk

    # The noise seed is the run's seed, so the same command draws the same noise.
    return fk.NSO(model.parameters(), fk.AdamW, sigma=0.01, num_perturbs=1, seed=seed, model=model,
                  backend=backend, lr=lr)


METHODS = {
    m.name: m
    for m in (
        Method("adamw", "AdamW", _adamw),
        Method("adamw+gc", "AdamW with Gradient Centralization", _adamw_gc),
        Method("sam", "SAM (rho=0.05) on AdamW", _sam, sam_rho=0.05),
        Method("asam", "ASAM (rho=0.5) on AdamW", _asam),
        Method("gam", "GAM (grad_rho=0.02, grad_norm_rho=0.2) on AdamW", _gam),
        Method("nso", "NSO (sigma=0.01, 1 antithetic pair) on AdamW", _nso),
    )
}


def resolve_methods(spec) -> list[Method]:
    """Methods from a comma-separated string or a list of names, in the order given."""
    names = [n.strip().lower() for n in spec.split(",")] if isinstance(spec, str) else list(spec)
    names = [n for n in names if n]
    if not names:
        raise ValueError(f"no method named; choose from {', '.join(METHODS)}")
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise ValueError(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"method named twice in {', '.join(names)}")
    return [METHODS[n] for n in names]
