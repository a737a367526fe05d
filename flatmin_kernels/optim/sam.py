"""SAM and ASAM (Foret et al. 2021; Kwon et al. 2021), a drop-in for davda54/sam.

One step: the gradient g at w (pass 1), the ascent w + e with e = rho * d / (||d'|| + eps)
(SAM: d = g; ASAM: d = w^2 * g and the norm is taken of |w| * g), the gradient at the
perturbed weights (pass 2), then the base optimizer's update from the *unperturbed* weights.

Per step and bucket: one reduction whose second stage also computes the scale and found_inf,
one perturb that writes the backup, and one fused restore + update (the base update reads w
from the backup; on a skipped step it still writes w back). Extra memory: one parameter-sized
backup.

Two placements of Gradient Centralization:

* ``centralize="gc" | "gcc"`` (flatmin's): GC on the ascent direction and inside the base
  update; the ascent norm is taken *after* GC, so ``||w_perturbed - w|| = rho`` exactly.
* ``use_gc=True`` (pytorch_optimizer's GCSAM, reproduced exactly): the norm of the raw
  gradient, then ``p.grad`` centralized in place, the ascent along it; no GC in the update.
"""
from __future__ import annotations

import torch

from ..backends.contract import InvNorm, StaleTable
from . import amp, gc
from .wrapper import FOUND_INF, WrapperOptimizer, check_non_negative, found_inf_of

NORM_SQ, INV_NORM = 0, 1  # per-step scalar slots


class SAM(WrapperOptimizer):
    """Sharpness-Aware Minimization around a base optimizer class.

    ``SAM(params, base_optimizer, rho=0.05, adaptive=False, *, centralize=None, use_gc=False,
    eps=1e-12, perturb_eps=None, model=None, backend="auto", **base_kwargs)``; ``base_kwargs``
    go to ``base_optimizer``; ``perturb_eps`` is pytorch_optimizer's name for ``eps``. For fp16
    with ``torch.amp.GradScaler``, set ``opt.grad_scaler = scaler`` (see ``amp.py``).

    * ``first_step(zero_grad=False)`` / ``second_step(zero_grad=False)``: davda54's protocol.
    * ``step(closure)``: the gradients present count as the first pass (davda54's protocol,
      and micro-batches accumulated before the call) only if a backward pass ran through the
      parameters since the last step; otherwise -- nothing computed yet, or only zero-filled
      gradients (``zero_grad(set_to_none=False)``) -- the closure runs first (torch's and
      Lightning's convention). Then the ascent, the closure at the perturbed weights, and the
      update. If the weights are already perturbed (``first_step`` was called, as in an HF
      Trainer ``training_step``), it is the second step. Returns the loss at the unperturbed
      weights when it computed it, else the perturbed loss. Gradients are None afterwards.
    * ``model=``: BatchNorm running statistics are frozen during the second pass.
    * A non-finite first-pass gradient skips the perturbation and the update (nothing written).
    """

    buffer_names = ("backup",)

    def __init__(self, params, base_optimizer, rho=0.05, adaptive=False, *, centralize=None, use_gc=False,
                 eps=1e-12, perturb_eps=None, model=None, backend="auto", **base_kwargs):
        if perturb_eps is not None:
            eps = perturb_eps
        check_non_negative(rho=rho, eps=eps)
        gc.check_centralize(centralize)
        if use_gc and centralize is not None:
            raise ValueError(
                f"use_gc=True (pytorch_optimizer's GCSAM: GC on the ascent direction only, norm before GC) "
                f"and centralize={centralize!r} (flatmin's GC: ascent and update, norm after GC) are two "
                f"placements of GC; choose one")
        # eps is not a group key: it would shadow Adam's own ``eps`` in the shared groups.
        self.eps = eps
        self.use_gc = bool(use_gc)
        defaults = dict(rho=rho, adaptive=adaptive, centralize=centralize)
        super().__init__(params, base_optimizer, defaults, model=model, backend=backend,
                         base_kwargs=base_kwargs)

    def init_step_state(self, state):
        state.perturbed = False  # between first_step and second_step
        state.plan = None  # the plan first_step used

    def check_group(self, group):
        check_non_negative(rho=group["rho"])
        gc.check_centralize(group["centralize"])

    def gc_mode(self, group):
        return "gc" if self.use_gc else group.get("centralize")

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Move to w + e (the ascent), keeping w in the backup. Needs the gradients at w."""
        if self._step_state.perturbed:
            raise RuntimeError("first_step() called twice: call second_step() to restore the weights first")
        amp.check_not_unscaled(self.grad_scaler, self)
        plan = self.plan()
        adaptive = lambda b: "param" if b.group["adaptive"] else None  # noqa: E731
        # One global norm over every tensor with a gradient; its second stage writes 1 / (||d|| + eps)
        # and found_inf, so the perturbation reads both on the device.
        plan.reduce("sumsq", "grad", weights=adaptive, centralize=not self.use_gc, index=NORM_SQ,
                    epilogue=InvNorm(self.eps, inv=INV_NORM, inf=FOUND_INF))
        if self.use_gc:
            plan.each("centralize_", "grad")  # in place, as pytorch_optimizer does
        plan.each("perturb_", "param", "grad", scale=lambda b: (b.group["rho"], plan.scalar(INV_NORM, b.device)),
                  save_to="backup", centralize=not self.use_gc, adaptive=lambda b: bool(b.group["adaptive"]),
                  found_inf=found_inf_of(plan))
        self._step_state.plan = plan
        self._step_state.perturbed = True
        self.running_stats_off()
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Back to w (bit-exactly, from the backup) and the base update with the gradient at w + e."""
        if not self._step_state.perturbed:
            raise RuntimeError("second_step() called before first_step(): there is no perturbation to undo")
        plan = self._step_state.plan
        if amp.under_scaler(self) and self.grad_scaler is None:
            self._abandon(plan)
            raise RuntimeError(f"SAM was stepped by a GradScaler it does not know: {amp.RECIPE}. The weights "
                               f"were put back to w; no update was made.")
        try:
            plan.refresh()
        except StaleTable:
            plan = self._second_step_on_another_plan(plan)
        else:
            self.amp_check(plan, NORM_SQ)
            grad_scale, found_inf = self.amp_update(plan)
            self.base_step(plan, backup="backup", grad_scale=grad_scale, found_inf=found_inf, centralize_grads=True)
        self.amp_end(plan)
        self._step_state.perturbed = False
        self._step_state.plan = None
        self.running_stats_on()
        if zero_grad:
            self.zero_grad()

    def _abandon(self, plan):
        """Back to w from the backup, the step abandoned (nothing else changes)."""
        plan.refresh(grads=False)
        plan.each("axpby_", "param", "backup", 0, 1)
        self._step_state.perturbed = False
        self._step_state.plan = None
        self.running_stats_on()

    def _second_step_on_another_plan(self, plan):
        """Pass 2 left gradients on other parameters than pass 1: every perturbed parameter goes
        back to w first, then the update runs on a plan of the parameters that have one now
        (with pass 1's found_inf carried over)."""
        plan.refresh(grads=False)
        plan.each("axpby_", "param", "backup", 0, 1)
        now = self.plan()
        for device in now.devices:
            carried = plan.scalar(FOUND_INF, device) if device in plan.scalars else 0.0
            now.scalar(FOUND_INF, device).copy_(carried)
        self.amp_check(now, NORM_SQ)
        grad_scale, found_inf = self.amp_update(now)
        self.base_step(now, grad_scale=grad_scale, found_inf=found_inf, centralize_grads=True)
        return now

    @torch.no_grad()
    def step(self, closure=None):
        if self._step_state.perturbed:  # the caller ran the second pass itself (HF Trainer style)
            self.second_step()
            return None
        closure = self.require_closure(closure)
        self.amp_begin()
        loss = None
        if not self.first_pass_done():
            self.clear_grads()
            loss = closure()
        self.first_step(zero_grad=True)
        perturbed_loss = closure()
        self.second_step()
        self.clear_grads()
        return perturbed_loss if loss is None else loss
