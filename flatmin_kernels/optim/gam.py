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

Three extra parameter-sized buffers (the official code keeps six): W (the backup of w), A
(g0, then h-) and B (alpha g1, then h+). Every norm is computed in the pass that writes or
reads its operand (the reductions' second stage also yields the scale, found_inf and the
coefficient 1 + gamma c), and the update reads d = coef * B - gamma * A and w from W directly,
so a step moves 124 bytes per fp32 parameter with AdamW in 13 launches per bucket (the
official code: about 176 bytes in about 69 operations):

    after g0:  sumsq(g0)                                   4 B
               W <- w, A <- g0, w <- w + s0 g0             20 B
    after g1:  B <- alpha g1, sumsq(g1 - g0)               12 B
               w <- W + s1 (g1 - g0)                       16 B
    after g2:  A <- beta A + (1 - beta) g2, sumsq(g2)      12 B
               w <- w + s2 g2                              12 B
    after g3:  B <- B + (1 - alpha) g3, ||B||^2, <B, A>    16 B
               AdamW from W along coef B - gamma A         32 B

A non-finite gradient in any pass skips every later perturbation and the update; the update's
restore-on-skip then puts w back from W, so the weights end at w, unchanged.
"""
from __future__ import annotations

import torch

from ..backends.contract import InvNorm, Ratio, StaleTable
from .wrapper import FOUND_INF, WrapperOptimizer, check_non_negative, check_unit_interval, found_inf_of

FORMS = ("paper", "reference")

# Per-step scalar slots: norms, their inverse (for the scales), the sums of pass 4 and coef.
N0, INV0, N1, INV1, N2, INV2, HP_SQ, HP_DOT, COEF = range(9)


class GAM(WrapperOptimizer):
    """``GAM(params, base_optimizer, *, grad_rho=0.02, grad_norm_rho=0.2, grad_beta_0=0.5,
    grad_beta_1=0.6, grad_gamma=0.03, adaptive=False, form="paper", model=None,
    backend="auto", **base_kwargs)`` with ``step(closure)`` (four gradients per step: the closure
    runs four times, or three when a backward since the last step already left the gradients
    at w -- see SAM.step for the rule). Returns the loss of the first, clean pass (or, when the
    caller computed it, the loss of the second)."""

    buffer_names = ("W", "A", "B")

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

    def _scale(self, plan, rho, slot):
        return lambda b: (rho, plan.scalar(slot, b.device))

    @torch.no_grad()
    def step(self, closure=None):
        closure = self.require_closure(closure)
        self.amp_begin()
        loss = None
        if not self.first_pass_done():
            self.clear_grads()
            loss = closure()  # pass 1 at w, with the usual BatchNorm statistics
        self.forget_passes()
        plan = self.plan()
        if not plan.buckets:
            return loss
        weights = (lambda name: name) if self.adaptive else (lambda name: None)
        found_inf = found_inf_of(plan)

        # g0: ||g0||; W <- w, A <- g0, w1 = w + rho' g0 / ||g0||.
        plan.reduce("sumsq", "grad", weights=weights("param"), index=N0,
                    epilogue=InvNorm(self.eps, inv=INV0, inf=FOUND_INF))
        plan.each("perturb_", "param", "grad", scale=self._scale(plan, self.grad_rho, INV0), save_to="W",
                  copy_d_to="A", adaptive=self.adaptive, found_inf=found_inf)
        self.running_stats_off()

        # g1: B <- alpha g1 and ||g1 - g0||; w2 = w + rho (g1 - g0) / ||g1 - g0||.
        second_loss = self._next_pass(closure, plan)
        loss = second_loss if loss is None else loss
        plan.reduce("axpby_", "B", "grad", 0, self.alpha, reduce="x", z="A", weights=weights("W"), index=N1,
                    epilogue=InvNorm(self.eps, inv=INV1, inf=FOUND_INF, inf_accumulate=True))
        plan.each("perturb_", "param", "grad", scale=self._scale(plan, self.grad_norm_rho, INV1), minus="A",
                  base="W", adaptive=self.adaptive, found_inf=found_inf)

        # g2: A <- beta0 g0 + (1 - beta) g2 = h- and ||g2||; w3 = w2 + rho' g2 / ||g2||.
        self._next_pass(closure, plan)
        beta0 = self.beta if self.form == "paper" else 1.0
        plan.reduce("axpby_", "A", "grad", beta0, 1 - self.beta, reduce="x", weights=weights("param"), index=N2,
                    epilogue=InvNorm(self.eps, inv=INV2, inf=FOUND_INF, inf_accumulate=True))
        plan.each("perturb_", "param", "grad", scale=self._scale(plan, self.grad_rho, INV2),
                  adaptive=self.adaptive, found_inf=found_inf)

        # g3: B <- B + (1 - alpha) g3 = h+, with ||h+||^2 and <h+, h->: coef = 1 + gamma c.
        self._next_pass(closure, plan)
        plan.reduce("axpby_", "B", "grad", 1, 1 - self.alpha, reduce="y", z="A", index=HP_SQ, width=2,
                    epilogue=Ratio(self.eps, self.gamma, coef=COEF, inf=FOUND_INF, inf_accumulate=True))

        # Back to w (from W, also when skipped) and the base update along d = coef h+ - gamma h-.
        grad_scale, found_inf = self.amp_update(plan)
        self.base_step(plan, grad="B", g2="A", g_coef=lambda b: (1.0, plan.scalar(COEF, b.device)),
                       g2_coef=-self.gamma, backup="W", grad_scale=grad_scale, found_inf=found_inf)
        self.amp_end(plan)
        self.running_stats_on()
        self.clear_grads()
        return loss

    def _next_pass(self, closure, plan):
        """Run the closure at the current (perturbed) weights and read its gradients into the plan;
        every pass must reach the same parameters (else w is restored and the step refused)."""
        self.clear_grads()
        loss = closure()
        try:
            plan.refresh()
        except StaleTable as exc:
            plan.refresh(grads=False)
            plan.each("axpby_", "param", "W", 0, 1)
            self.running_stats_on()
            raise RuntimeError(
                f"{type(self).__name__}: a parameter that had a gradient in the first pass has none (or a "
                f"different one) in a later pass ({exc}); every pass must backpropagate through the same "
                f"parameters. The weights were restored; no update was made.") from None
        return loss
