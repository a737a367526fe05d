"""What an optimizer keeps between steps: its plan, and the cheap checks that say it still holds.

A plan is built on the first step and after any real change: a param group added, the state
loaded, a hyperparameter that changes which state exists (centralize, momentum on/off,
amsgrad), a parameter gaining or losing its gradient, a parameter's dtype, device or size
changed (``module.to(...)``). Steady state costs O(param groups) Python plus the tables'
``refresh`` -- not a pass over the tensors.
"""
from __future__ import annotations

import torch

from ..backends.contract import StaleTable

# Group keys whose value decides what the plan holds (which state exists, GC rows).
_PLAN_KEYS = ("centralize", "momentum", "amsgrad")


def _group_signature(groups):
    return tuple((id(g), len(g["params"])) + tuple(bool(g.get(k)) if k != "centralize" else g.get(k)
                                                   for k in _PLAN_KEYS) for g in groups)


def capturing() -> bool:
    """Whether the current CUDA stream is capturing a graph (never on a CPU-only machine)."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


class HostPath:
    """The plan of one optimizer (or wrapper), rebuilt only when it no longer holds.

    ``build()`` returns ``(plan, without)``: the plan over the parameters that have a gradient
    now, and the parameters that have none (checked each step: one gaining a gradient means
    the plan must grow).
    """

    def __init__(self, owner, build):
        self.owner = owner
        self._build = build
        self.plan = None
        self.builds = 0  # how many plans were built (tests assert steady state builds none)
        self._without = ()
        self._signature = None

    def invalidate(self) -> None:
        self.plan = None

    def _holds(self) -> bool:
        return (self.plan is not None
                and self._signature == _group_signature(self.owner.param_groups)
                and not any(p.grad is not None for p in self._without))

    def _rebuild(self):
        if capturing():
            raise RuntimeError(
                f"{type(self.owner).__name__}: the step would build a new plan (tables) during CUDA graph "
                f"capture; run a few eager steps first, with the same parameters and static gradients")
        self.plan, self._without = self._build()
        self._signature = _group_signature(self.owner.param_groups)
        self.builds += 1

    def get(self, grads: bool = True):
        """The plan for this pass, refreshed (storage of parameters and, with ``grads``, gradients)."""
        if not self._holds():
            self._rebuild()
        try:
            self.plan.refresh(grads=grads)
        except StaleTable:
            self._rebuild()
            self.plan.refresh(grads=grads)
        return self.plan
