"""fp16 mixed precision (``torch.amp.GradScaler``) for SAM, GAM and NSO.

GradScaler's ``update()`` reduces the scale only for overflows it recorded itself, in the one
gradient check it makes per optimizer and step; the wrappers run two to four backward passes
per step. So a wrapper given the scaler (``opt.grad_scaler = scaler``) checks every pass on the
device (its norms' epilogues flag non-finite values), skips the update on any overflow with the
weights put back to w, and merges its flag into the scaler's record, so that ``scaler.update()``
backs the scale off exactly as for an overflow in a plain step. The recipes (README, tested):

* closure style: ``scaler.step(opt, closure)`` then ``scaler.update()``; the closure calls
  ``scaler.scale(loss).backward()`` and returns the loss;
* two-call style (SAM): ``scaler.scale(loss).backward(); opt.first_step(zero_grad=True);
  scaler.scale(loss2).backward(); scaler.step(opt); scaler.update()``.

No gradient is unscaled before the update: SAM's and GAM's ascent directions are invariant to
the scale (rho * g / ||g||), and every update direction is linear in the gradients, so the
fused update divides by the scale once (``grad_scale``), as torch's fused Adam does.

This module is the only place that touches GradScaler's per-optimizer record
(``_per_optimizer_states``: unchanged from torch 2.4 through 2.13).
"""
from __future__ import annotations

import torch

RECIPE = ("set opt.grad_scaler = scaler, then either scaler.step(opt, closure) (the closure calls "
          "scaler.scale(loss).backward()) or, for SAM, scaler.scale(loss).backward(); opt.first_step(zero_grad=True); "
          "scaler.scale(loss2).backward(); scaler.step(opt); followed by scaler.update() "
          "(README: 'Mixed precision with GradScaler')")


def handed_over(optimizer):
    """(grad_scale, found_inf) set on ``optimizer`` by ``GradScaler.step`` for this step, else (None, None)."""
    return optimizer.__dict__.get("grad_scale"), optimizer.__dict__.get("found_inf")


def under_scaler(optimizer) -> bool:
    """Whether this step was called by ``GradScaler.step`` (its amp protocol)."""
    return "grad_scale" in optimizer.__dict__ or "found_inf" in optimizer.__dict__


def _record(scaler, optimizer):
    try:
        return scaler._per_optimizer_states[id(optimizer)]
    except (AttributeError, KeyError):
        raise RuntimeError(f"{type(optimizer).__name__}: this GradScaler keeps no per-optimizer record; "
                           f"flatmin supports torch.amp.GradScaler") from None


def check_not_unscaled(scaler, optimizer) -> None:
    """Refuse (before anything changes) a first pass already unscaled by ``scaler.unscale_(opt)``:
    GradScaler would then hand the second pass over as unscaled, and its update would be off by
    the scale."""
    if scaler is None:
        return
    stage = _record(scaler, optimizer).get("stage")
    if getattr(stage, "name", None) == "UNSCALED":
        raise RuntimeError(
            f"{type(optimizer).__name__}: scaler.unscale_(opt) was called before the first step; GradScaler "
            f"would not unscale the later passes. Call it (for gradient clipping) only after the last "
            f"backward of the step, or not at all: {RECIPE}")


def merge_found_inf(scaler, optimizer, flag: torch.Tensor) -> None:
    """Make ``scaler.update()`` see ``flag`` (1.0: some pass overflowed) for this optimizer's step,
    on the device, without a host synchronisation."""
    per_device = _record(scaler, optimizer).setdefault("found_inf_per_device", {})
    if not per_device:  # the scaler's own check saw no gradient (the closure had not run yet)
        per_device[flag.device] = flag.reshape(()).clone()
        return
    for device, recorded in per_device.items():
        recorded.copy_(torch.maximum(recorded, flag.reshape(()).to(device, non_blocking=True)))


def combined_found_inf(own: torch.Tensor, scaler_found_inf) -> torch.Tensor:
    """Our per-step flag, raised in place where GradScaler's check (of the last pass) found an overflow."""
    if torch.is_tensor(scaler_found_inf):
        own.copy_(torch.maximum(own, scaler_found_inf.reshape(own.shape).to(own.device, non_blocking=True)))
    return own
