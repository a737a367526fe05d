"""What the steps and host suites time: one optimizer per contender, driven the way a user drives it.

A contender is data: how to build it on a parameter list, how one training iteration calls it
(``iterate``), its *counted* traffic (list-sized arrays read or written per parameter per step,
from reading its code: ``accesses``; bytes per parameter = accesses x element size), the
parameter-sized tensors it holds (``held``, for the memory estimate; the held memory reported
is measured), and its forward/backward passes per step.

The forward/backward passes are not timed: ``PresetGradients`` stands in for them (zero_grad,
then gradients handed out from a preset list), inside ``clock.excluded()``.

Ours (flatmin's optimizers, one per backend) and torch's AdamW are defined here; the peers --
the implementations a user would otherwise run -- are in the checkout's ``bench/peers``.
"""
from __future__ import annotations

import importlib
import os
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Optional

import torch

import flatmin_kernels as fk

LR, WEIGHT_DECAY = 1e-3, 1e-2
BASE = dict(lr=LR, weight_decay=WEIGHT_DECAY)  # the base AdamW of every wrapper
ANCHOR = "torch.AdamW fused"  # the floor: one fused base step; every ratio's denominator


@dataclass(frozen=True)
class Contender:
    name: str
    method: str  # what it computes: AdamW, AdamW+GC, SAM, ASAM, SAM+GC, GAM, NSO, Adam_GC, SGD_GC
    family: str  # "ours", "torch" or "peer"
    build: Callable  # params -> optimizer
    iterate: Callable  # (optimizer, backward) -> None: one training iteration's optimizer calls
    accesses: Optional[int]  # counted list-sized reads + writes per parameter per step (None: not countable)
    counted: str  # how the count is made
    held: int  # parameter-sized tensors it keeps at its peak (optimizer state and buffers)
    passes: int  # forward/backward passes per step
    backend: Optional[str] = None
    unavailable: Optional[str] = None  # why it cannot run here
    in_quick: bool = True

    def bytes_per_param(self, element_size: int) -> Optional[int]:
        return None if self.accesses is None else self.accesses * element_size


# ----------------------------------------------------------------------------- how an iteration calls it


def base_step(opt, backward):
    """backward, then ``step()`` (AdamW and the GC optimizers)."""
    backward()
    opt.step()


def two_call(opt, backward):
    """davda54's protocol: backward, ``first_step()``, backward at w + e, ``second_step()``."""
    backward()
    opt.first_step()
    backward()
    opt.second_step()


def closure_step(opt, backward):
    """``step(closure)``: the optimizer calls the passes itself (GAM: 4, NSO: 2 or 3)."""
    opt.step(backward)


class PresetGradients:
    """Stands in for a closure (``zero_grad()``, forward, ``backward()``), untimed.

    It calls the optimizer's ``zero_grad()`` and leaves gradients the way ``backward()`` does: a
    fresh tensor where ``.grad`` is None, accumulated into ``.grad`` otherwise. Pass k of an
    iteration hands out ``FACTORS[k] * preset`` so the passes of a step differ (GAM's g1 - g0 is
    not zero). ``probe`` (if set) runs first, while the optimizer is mid-step.
    """

    FACTORS = (1.0, 1.25, 0.75, 1.5)
    LABEL = "flatmin_bench.backward"  # the profiler range of a pass (its launches are not the step's)

    def __init__(self, params, presets, loss):
        self.params, self.presets, self.loss = params, presets, loss
        self.optimizer = None
        self.clock = None
        self.probe = None
        self.profiling = False
        self.calls = 0

    @torch.no_grad()
    def _hand_out(self):
        factor = self.FACTORS[self.calls % len(self.FACTORS)]
        fresh = [i for i, p in enumerate(self.params) if p.grad is None]
        held = [i for i, p in enumerate(self.params) if p.grad is not None]
        if fresh:
            for i, g in zip(fresh, torch._foreach_mul([self.presets[i] for i in fresh], factor)):
                self.params[i].grad = g
        if held:
            torch._foreach_add_([self.params[i].grad for i in held], [self.presets[i] for i in held],
                                alpha=factor)

    def __call__(self):
        label = torch.profiler.record_function(self.LABEL) if self.profiling else nullcontext()
        with self.clock.excluded(), label:
            if self.probe is not None:
                self.probe()
            self.optimizer.zero_grad()
            self._hand_out()
            self.calls += 1
        return self.loss


# ----------------------------------------------------------------------------- torch's AdamW


def fused_adamw() -> Contender:
    """``torch.optim.AdamW(fused=True)``: the anchor."""
    return Contender(ANCHOR, "AdamW", "torch", lambda ps: torch.optim.AdamW(ps, fused=True, **BASE), base_step,
                     7, "r p,g,m,v; w p,m,v (one fused pass)", 2, 1)


def torch_adamw() -> list:
    """torch.optim.AdamW three ways. Loop and foreach read and write: p *= 1 - lr wd (2),
    m.lerp_(g) (3), v.mul_ (2), v.addcmul_(g, g) (3), sqrt(v) (2), / bc2 (2), + eps (2),
    p.addcdiv_(m, denom) (4)."""
    count = "torch/optim/adam.py _single_tensor_adam / _multi_tensor_adam: 20 list-sized reads+writes"
    return [
        fused_adamw(),
        Contender("torch.AdamW foreach", "AdamW", "torch",
                  lambda ps: torch.optim.AdamW(ps, foreach=True, **BASE), base_step, 20, count, 2, 1),
        Contender("torch.AdamW for-loop", "AdamW", "torch",
                  lambda ps: torch.optim.AdamW(ps, foreach=False, **BASE), base_step, 20, count, 2, 1),
    ]


# ----------------------------------------------------------------------------- ours

# (method, build(params, backend), iterate, accesses, how counted, held, passes). The counts are
# the op-contract minimum of the ops each step issues (each list an op reads or writes, once),
# the schedules in flatmin_kernels/optim's docstrings; tests/bench checks them against
# flatmin_kernels.plan.counting_traffic().
_OURS = (
    ("AdamW", lambda ps, be: fk.AdamW(ps, backend=be, **BASE), base_step,
     7, "adamw_: r p,g,m,v; w p,m,v", 2, 1),
    ("AdamW+GC", lambda ps, be: fk.AdamW(ps, centralize="gc", backend=be, **BASE), base_step,
     7, "adamw_ with GC (row means in the same pass): r p,g,m,v; w p,m,v", 2, 1),
    ("SAM", lambda ps, be: fk.SAM(ps, torch.optim.AdamW, rho=0.05, backend=be, **BASE), two_call,
     12, "sumsq 1 + perturb_ with backup 4 + AdamW from the backup 7", 3, 2),
    ("ASAM", lambda ps, be: fk.SAM(ps, torch.optim.AdamW, rho=0.5, adaptive=True, backend=be, **BASE),
     two_call, 13, "sumsq of |p| g 2 + perturb_ with backup 4 + AdamW from the backup 7", 3, 2),
    ("SAM+GC", lambda ps, be: fk.SAM(ps, torch.optim.AdamW, rho=0.05, centralize="gc", backend=be, **BASE),
     two_call, 12, "sumsq 1 + perturb_ with backup 4 + AdamW from the backup 7, GC inside each", 3, 2),
    ("GAM", lambda ps, be: fk.GAM(ps, torch.optim.AdamW, backend=be, **BASE), closure_step,
     31, "gam.py's schedule: 1 + 5 + 3 + 4 + 3 + 3 + 4 + AdamW from W along coef B - gamma A 8", 5, 4),
    ("NSO", lambda ps, be: fk.NSO(ps, torch.optim.AdamW, sigma=0.01, seed=0, backend=be, **BASE),
     closure_step, 14, "backup 2 + noise_ from the backup 2 + 2 + found_inf norm 1 + AdamW from the backup 7",
     3, 2),
)


def ours(backend: str, methods=None) -> list:
    """flatmin's optimizers on ``backend`` (``methods`` narrows them)."""
    out = []
    for method, build, iterate, accesses, counted, held, passes in _OURS:
        if methods is not None and method not in methods:
            continue
        out.append(Contender(f"fk.{method} ({backend})", method, "ours",
                             (lambda b: lambda ps: b(ps, backend))(build), iterate, accesses, counted, held,
                             passes, backend=backend))
    return out


# ----------------------------------------------------------------------------- peers (bench/peers)

PEERS_MODULE = "bench.peers"


def _checkout_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_peers():
    """The checkout's ``bench/peers`` package, or (None, why not).

    The peers are benchmark code, not part of the installed package: they are found in the
    source checkout this package runs from (``pip install -e .``), or on ``sys.path``.
    """
    root = _checkout_root()
    if os.path.isfile(os.path.join(root, "bench", "peers", "__init__.py")) and root not in sys.path:
        sys.path.append(root)
    try:
        return importlib.import_module(PEERS_MODULE), None
    except ImportError as exc:
        return None, (f"the peer implementations live in bench/peers of the source checkout; "
                      f"not importable here ({exc})")
