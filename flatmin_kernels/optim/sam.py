"""SAM and ASAM (Foret et al. 2021; Kwon et al. 2021), a drop-in for davda54/sam.

One step: the gradient g at w (pass 1), the ascent w + e with e = rho * d / (||d'|| + eps)
(SAM: d = g; ASAM: d = w^2 * g and the norm is taken of |w| * g), the gradient at the
perturbed weights (pass 2), then the base optimizer's update from the *unperturbed* weights.
On the fused path that restore costs nothing: the base update reads w from the backup.

Per step: one global norm (device-side, no host sync), one perturb op (which also writes the
backup), one fused restore + update. Extra memory: one parameter-sized backup.

GC (``centralize="gc"`` or ``"gcc"``, or pytorch_optimizer's ``use_gc=True``) centralizes the
ascent direction and the final update. The ascent norm is taken *after* GC, so that
||w_perturbed - w|| = rho holds exactly (pytorch_optimizer takes it before GC, which makes
the step a little shorter than rho).
"""
from __future__ import annotations

import torch

from . import gc
from ..backends.buckets import take
from .wrapper import WrapperOptimizer, check_non_negative


class SAM(WrapperOptimizer):
    """Sharpness-Aware Minimization around a base optimizer class.

    ``SAM(params, base_optimizer, rho=0.05, adaptive=False, *, centralize=None, eps=1e-12,
    model=None, backend="auto", **base_kwargs)``; ``base_kwargs`` go to ``base_optimizer``.

    * ``first_step(zero_grad=False)`` / ``second_step(zero_grad=False)``: davda54's protocol.
    * ``step(closure)``: if no parameter has a gradient yet, the closure runs first (a torch-style
      closure, as Lightning calls it); then the ascent, the closure at the perturbed weights and
      the update. If the weights are already perturbed (``first_step`` was called, as in an HF
      Trainer ``training_step``), it is the second step. Returns the loss at the unperturbed
      weights when it computed it, else the perturbed loss. Gradients are cleared (None) after it,
      so the next call starts with a fresh first pass.
    * ``model=``: BatchNorm running statistics are frozen during the second pass.
    * A non-finite first-pass gradient skips the perturbation and the update (nothing written).
    """

    def __init__(self, params, base_optimizer, rho=0.05, adaptive=False, *, centralize=None,
                 eps=1e-12, model=None, backend="auto", **base_kwargs):
        # pytorch_optimizer's spellings, so code written for it runs unchanged.
        if base_kwargs.pop("use_gc", False):
            if centralize not in (None, "gc"):
                raise ValueError(f"use_gc=True conflicts with centralize={centralize!r}")
            centralize = "gc"
        if "perturb_eps" in base_kwargs:
            eps = base_kwargs.pop("perturb_eps")
        check_non_negative(rho=rho, eps=eps)
        gc.check_centralize(centralize)
        # eps is not a group key: it would shadow Adam's own ``eps`` in the shared groups.
        self.eps = eps
        defaults = dict(rho=rho, adaptive=adaptive, centralize=centralize)
        super().__init__(params, base_optimizer, defaults, model=model, backend=backend,
                         base_kwargs=base_kwargs)
        self._perturbed = False
        self._found_inf = None
        self._backups = {}

    def check_group(self, group):
        check_non_negative(rho=group["rho"])
        gc.check_centralize(group["centralize"])

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Move to w + e (the ascent), keeping w in the backup. Needs the gradients at w."""
        if self._perturbed:
            raise RuntimeError("first_step() called twice: call second_step() to restore the weights first")
        sel = self.with_grads()
        params = sel.params
        device = params[0].device if params else torch.device("cpu")
        flags = [gc.flags(group["centralize"], ps) for group, ps, _ in sel.groups]

        # One global norm over every tensor with a gradient, summed on the device.
        norm_sq = torch.zeros((), dtype=torch.float32, device=device)
        for (group, ps, gs), fl in zip(sel.groups, flags):
            norm_sq = norm_sq + self.sumsq(gs, weights=ps if group["adaptive"] else None,
                                           centralize=fl, device=device)
        found_inf = (~torch.isfinite(norm_sq)).float()
        inv_norm = 1.0 / (norm_sq.sqrt() + self.eps)

        self._backups = dict(zip(params, self.buffers("backup", params)))
        for (group, ps, gs), fl in zip(sel.groups, flags):
            bk = [self._backups[p] for p in ps]
            scale = group["rho"] * inv_norm
            for ops, dev, idx in self.buckets(ps, gs, bk):
                ops.perturb_(take(ps, idx), take(gs, idx), scale.to(dev), save_to=take(bk, idx),
                             centralize=take(fl, idx), adaptive=bool(group["adaptive"]),
                             found_inf=found_inf.to(dev))
        self._found_inf = found_inf
        self._perturbed = True
        self.running_stats_off()
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Back to w (bit-exactly, from the backup) and the base update with the gradient at w + e."""
        if not self._perturbed:
            raise RuntimeError("second_step() called before first_step(): there is no perturbation to undo")
        backups = self._backups
        # Parameters that had no gradient in the first pass were not moved: they are their own backup.
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and p not in backups:
                    backups[p] = p
        self.base_step(backups=backups, found_inf=self._found_inf, centralize_grads=True)
        # The update restored every parameter that has a gradient now; the rest go back here.
        self._restore_without_grad()
        self._perturbed = False
        self._backups = {}
        self._found_inf = None
        self.running_stats_on()
        if zero_grad:
            self.zero_grad()

    def _restore_without_grad(self) -> None:
        """A parameter perturbed in pass 1 whose pass-2 gradient is None still goes back to w."""
        stranded = [p for p, b in self._backups.items() if p.grad is None and b is not p]
        if stranded:  # (a skipped perturbation moved nothing, and may not have written the backup)
            self.restore_unless(stranded, [self._backups[p] for p in stranded], self._found_inf)

    @torch.no_grad()
    def step(self, closure=None):
        if self._perturbed:  # the caller ran the second pass itself (HF Trainer style)
            self.second_step()
            return None
        closure = self.require_closure(closure)
        loss = None
        if all(p.grad is None for g in self.param_groups for p in g["params"]):
            loss = closure()
        self.first_step(zero_grad=True)
        perturbed_loss = closure()
        self.second_step()
        self.clear_grads()
        return perturbed_loss if loss is None else loss
