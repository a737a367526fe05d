"""The host suite: host time per step on lists of 100 / 1,000 / 10,000 tensors of 16 elements.

The arithmetic is negligible, so what is measured is the Python and dispatch work per step
(plans, bucketing, launches), and how it grows with the tensor count: ``ms_per_1000_tensors``
is flat when a step's host cost does not depend on the number of tensors. Timed by the wall
clock on every device (synchronised on CUDA), in the steps suite's interleaved rounds against
``torch.optim.AdamW(fused=True)`` on the same list.
"""
from __future__ import annotations

from . import contenders as C
from .steps_suite import run_list as run_steps_list

METHODS = ("AdamW", "SAM", "GAM", "NSO")


def field(backends) -> list:
    """The anchor, then fk.AdamW, SAM+AdamW, GAM and NSO on every backend."""
    return [C.fused_adamw()] + [c for backend in backends for c in C.ours(backend, METHODS)]


def run_list(plist, dtype, device, contenders, **kwargs) -> dict:
    result = run_steps_list(plist, dtype, device, contenders, **kwargs)
    for row in result["rows"]:
        ms = row.get("ms_median")
        row["ms_per_1000_tensors"] = None if ms is None else ms * 1000 / plist.tensors
    return result
