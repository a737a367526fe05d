"""GAM, Gradient norm Aware Minimization (Zhang et al., CVPR 2023), the accelerated algorithm.

Four gradients of the same batch per step (spec section 2)::

    g0 = grad at w
    g1 = grad at w1 = w + rho' * g0 / ||g0||              (rho' = grad_rho)
    h0 = g1 - g0
    g2 = grad at w2 = w + rho * h0 / ||h0||               (rho = grad_norm_rho)
    g3 = grad at w3 = w2 + rho' * g2 / ||g2||
    h+ = alpha * g1 + (1 - alpha) * g3                    (alpha = grad_beta_1)
    h- = beta * g0 + (1 - beta) * g2                      (beta = grad_beta_0; form="reference": 1 * g0)
    d  = h+ - gamma * (h- - <h-, h+> / (||h+||^2 + eps) * h+)  = (1 + gamma * c) * h+ - gamma * h-

and the base optimizer's update from w with direction d. ``form="paper"`` is the paper's
Algorithm 2; ``form="reference"`` reproduces the official code, whose h- has coefficient 1 on
g0 (and 1 - beta on g2). ``adaptive=True`` makes the three perturbations ASAM-style.

Three extra parameter-sized buffers (the official code keeps six): W (the backup of w),
A (accumulates h-) and B (accumulates h+, then d). h0 is formed in the gradient itself, so
g0 is kept exactly (A <- g0, no g1 - (g1 - g0) cancellation).

A non-finite gradient in any pass skips every later perturbation and the update; the weights
are then w again, unchanged. For that the weights are restored from W by a copy before the
update rather than inside it: a fused restore could not also undo the perturbation when the
update is skipped. Costs in tensor passes are the same as a save_to backup plus a conditional
restore (copy W: 2, perturb: 3, restore: 2).
"""
from __future__ import annotations

import torch

from ..backends.buckets import take
from .wrapper import WrapperOptimizer, check_non_negative, check_unit_interval

FORMS = ("paper", "reference")


class GAM(WrapperOptimizer):
    """``GAM(params, base_optimizer, *, grad_rho=0.02, grad_norm_rho=0.2, grad_beta_0=0.5,
    grad_beta_1=0.6, grad_gamma=0.03, adaptive=False, form="paper", model=None,
    backend="auto", **base_kwargs)`` with ``step(closure)`` (four closure calls per step).
    Returns the loss of the first, clean pass."""

    def __init__(self, params, base_optimizer, *, grad_rho=0.02, grad_norm_rho=0.2,
                 grad_beta_0=0.5, grad_beta_1=0.6, grad_gamma=0.03, adaptive=False,
                 form="paper", model=None, backend="auto", **base_kwargs):
        eps = base_kwargs.pop("perturb_eps", 1e-12)  # the official code's name for xi
        if form not in FORMS:
            raise ValueError(f"unknown form {form!r}; choose 'paper' (the paper's Algorithm 2) or "
                             f"'reference' (the official code's combination)")
        check_non_negative(grad_rho=grad_rho, grad_norm_rho=grad_norm_rho, grad_gamma=grad_gamma,
                           eps=eps)
        check_unit_interval(grad_beta_0=grad_beta_0, grad_beta_1=grad_beta_1)
        self.form = form
        self.eps = eps
        self.adaptive = bool(adaptive)
        self.grad_rho, self.grad_norm_rho = grad_rho, grad_norm_rho
        self.beta, self.alpha, self.gamma = grad_beta_0, grad_beta_1, grad_gamma
        super().__init__(params, base_optimizer, {}, model=model, backend=backend,
                         base_kwargs=base_kwargs)

    def _scale(self, rho, norm_sq):
        return rho / (norm_sq.sqrt() + self.eps)

    def _perturb(self, params, directions, scale, found_inf, *, base=None):
        """p <- b + scale * D(d) on every bucket (ASAM's D when adaptive); nothing if found_inf."""
        lists = [params, directions] + ([base] if base is not None else [])
        for ops, dev, idx in self.buckets(*lists):
            ops.perturb_(take(params, idx), take(directions, idx), scale.to(dev),
                         base=take(base, idx), adaptive=self.adaptive, found_inf=found_inf.to(dev))

    @torch.no_grad()
    def step(self, closure=None):
        closure = self.require_closure(closure)
        self.clear_grads()
        loss = closure()  # pass 1 at w, with the usual BatchNorm statistics
        sel = self.with_grads()
        P, G = sel.params, sel.grads
        if not P:
            return loss
        W, A, B = (self.buffers(name, P) for name in ("W", "A", "B"))
        weights = (lambda xs: xs) if self.adaptive else (lambda xs: None)

        # g0: W <- w; A <- g0; w1 = w + rho' g0 / ||g0||. (W is copied on its own, not through
        # perturb_'s save_to, because a skipped perturb_ may skip its save_to too, and the
        # restore below needs W whatever happens.)
        self.copy_(W, P)
        self.copy_(A, G)
        seen = self.sumsq(G, weights=weights(P))
        found_inf = (~torch.isfinite(seen)).float()
        self._perturb(P, G, self._scale(self.grad_rho, seen), found_inf)
        self.running_stats_off()

        # g1: B <- alpha g1; the gradient becomes h0 = g1 - g0; w2 = w + rho h0 / ||h0||; A <- beta g0.
        G = self._next_pass(closure, sel)
        self.axpby_(B, G, 0, self.alpha)
        self.axpby_(G, A, 1, -1)
        h0_sq = self.sumsq(G, weights=weights(W))
        seen = seen + h0_sq
        found_inf = (~torch.isfinite(seen)).float()
        self._perturb(P, G, self._scale(self.grad_norm_rho, h0_sq), found_inf, base=W)
        beta0 = self.beta if self.form == "paper" else 1.0
        if beta0 != 1.0:
            self.axpby_(A, A, 0, beta0)

        # g2: A += (1 - beta) g2 = h-; w3 = w2 + rho' g2 / ||g2||.
        G = self._next_pass(closure, sel)
        self.axpby_(A, G, 1, 1 - self.beta)
        g2_sq = self.sumsq(G, weights=weights(P))
        seen = seen + g2_sq
        found_inf = (~torch.isfinite(seen)).float()
        self._perturb(P, G, self._scale(self.grad_rho, g2_sq), found_inf)

        # g3: B += (1 - alpha) g3 = h+; d = (1 + gamma c) h+ - gamma h-, c = <h-,h+> / (||h+||^2 + eps).
        G = self._next_pass(closure, sel)
        self.axpby_(B, G, 1, 1 - self.alpha)
        hp_sq = self.sumsq(B)
        c = self.dot(A, B) / (hp_sq + self.eps)
        found_inf = (~torch.isfinite(seen + hp_sq + c)).float()
        self.axpby_(B, A, 1 + self.gamma * c, -self.gamma)

        # Back to w exactly, then the base update with d (skipped, writing nothing, if non-finite).
        self.copy_(P, W)
        self.base_step(grads=dict(zip(P, B)), found_inf=found_inf)
        self.running_stats_on()
        return loss

    def _next_pass(self, closure, sel):
        """Run the closure at the current (perturbed) weights; its fresh gradients, same params."""
        self.clear_grads()
        closure()
        return self.grads_of(sel).grads
