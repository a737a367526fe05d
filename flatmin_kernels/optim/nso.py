"""NSO, Noise Stability Optimization (Ju, Li, Zhang; arXiv 2306.08553), spec section 3.

The update direction is the two-point (antithetic) estimate of the gradient of
F(W) = E f(W + U), U ~ N(0, sigma^2 I), mixed with the clean gradient::

    G = 1 / (2k) * sum_i [grad f(W + U_i) + grad f(W - U_i)]      (antithetic; else 1/k sum grad f(W + U_i))
    d = lam * grad f(W) + (1 - lam) * G

and the base optimizer's update from W with direction d. Closure calls per step: 2k when
lam == 0, 1 + 2k otherwise (k and 1 + k without antithetic); lam == 1 is the base optimizer
itself, one call.

The noise is the op contract's Philox4x32-10 + Box-Muller normal of (seed, step t, sample i,
global element index j): j counts every parameter of every group in order (with or without a
gradient), so the noise of a tensor does not depend on which others have gradients. It is
regenerated for the +U, -U (and, without exact restore, the restore) phases, never stored.
Every trainable parameter (requires_grad) is perturbed; sigma is absolute, per param group.

Memory. ``exact_restore=True`` keeps one parameter-sized backup W (the weights come back
bit-exactly, by a copy); ``exact_restore=False`` keeps none and walks back with the
regenerated noise (W + U - 2U + U, exact up to rounding). The gradients of the passes are
summed in ``p.grad`` itself: inside ``step`` the closure's ``optimizer.zero_grad()`` is a
no-op. A closure that sets the gradients to None some other way (``model.zero_grad()``) still
works -- the sum so far is held while backward writes a fresh gradient, then folded in -- at
the cost of one transient gradient-sized buffer. (A closure that zeroes gradients in place
behind the optimizer's back, ``model.zero_grad(set_to_none=False)``, is not supported.)

The seed (from ``seed=`` or drawn once from torch's generator) and the step counter are in
``state_dict()``, so a resumed run draws the same noise. A non-finite gradient in any pass
skips the update (one fp32 norm of the final direction decides, on the device).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from ..backends.buckets import take
from .wrapper import WrapperOptimizer, check_non_negative, check_unit_interval


class NSO(WrapperOptimizer):
    """``NSO(params, base_optimizer, *, sigma=0.01, num_perturbs=1, antithetic=True, lam=0.0,
    seed=None, exact_restore=True, model=None, backend="auto", **base_kwargs)`` with
    ``step(closure)``. Returns the loss of the first pass (the clean one when lam > 0)."""

    def __init__(self, params, base_optimizer, *, sigma=0.01, num_perturbs=1, antithetic=True,
                 lam=0.0, seed=None, exact_restore=True, model=None, backend="auto",
                 **base_kwargs):
        check_non_negative(sigma=sigma)
        if int(num_perturbs) != num_perturbs or num_perturbs < 1:
            raise ValueError(f"num_perturbs must be an integer >= 1, got {num_perturbs}")
        check_unit_interval(lam=lam)
        if seed is None:
            seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))  # once, at construction
        if not 0 <= seed < 2**64:
            raise ValueError(f"seed must be in [0, 2**64), got {seed}")
        self.num_perturbs = int(num_perturbs)
        self.antithetic = bool(antithetic)
        self.lam = float(lam)
        self.exact_restore = bool(exact_restore)
        self.seed = int(seed)
        self.noise_step = 0
        self._accumulating = False
        super().__init__(params, base_optimizer, dict(sigma=sigma), model=model, backend=backend,
                         base_kwargs=base_kwargs)

    def check_group(self, group):
        check_non_negative(sigma=group["sigma"])

    # ------------------------------------------------------------------ state

    def extra_state(self):
        return {"seed": self.seed, "noise_step": self.noise_step}

    def load_extra_state(self, extra):
        if "seed" in extra:
            self.seed = int(extra["seed"])
            self.noise_step = int(extra["noise_step"])

    def closure_calls(self) -> int:
        """Forward/backward passes per step."""
        if self.lam == 1:
            return 1
        perturbed = self.num_perturbs * (2 if self.antithetic else 1)
        return perturbed + (1 if self.lam > 0 else 0)

    def zero_grad(self, set_to_none: bool = True):
        if self._accumulating:  # the passes of a step sum their gradients in p.grad
            return
        super().zero_grad(set_to_none=set_to_none)

    @contextmanager
    def _summing_gradients(self):
        self._accumulating = True
        try:
            yield
        finally:
            self._accumulating = False

    # ------------------------------------------------------------------ the step

    def _offsets(self):
        """Global element offset of every parameter: all groups, in order, gradient or not."""
        offsets, j = {}, 0
        for group in self.param_groups:
            for p in group["params"]:
                offsets[p] = j
                j += p.numel()
        return offsets

    def _noise(self, trainable, coef_of_sigma, sample, base=None):
        """p <- b + coef * sigma * N(seed, t, sample, j) for every trainable parameter."""
        for group, ps, offs in trainable:
            b = None if base is None else [base[p] for p in ps]
            coef = coef_of_sigma * group["sigma"]
            for ops, _, idx in self.buckets(ps, b):
                ops.noise_(take(ps, idx), coef, seed=self.seed, step=self.noise_step & 0xFFFFFFFF,
                           sample=sample, offsets=take(offs, idx), base=take(b, idx))

    def _pass(self, closure):
        """One forward/backward; gradients add up in p.grad (see the module docstring)."""
        params = [p for g in self.param_groups for p in g["params"]]
        held = [p.grad for p in params]
        loss = closure()
        replaced = [(h, p.grad) for h, p in zip(held, params)
                    if h is not None and p.grad is not h]
        if replaced:  # the closure set gradients to None: fold the fresh ones into the held sum
            sums = [h for h, _ in replaced]
            fresh = [torch.zeros_like(h) if g is None else g for h, g in replaced]
            self.axpby_(sums, fresh, 1, 1)
            for p, h in zip(params, held):
                if h is not None:
                    p.grad = h
        return loss

    @torch.no_grad()
    def step(self, closure=None):
        closure = self.require_closure(closure)
        self.clear_grads()  # every gradient of this step comes from its own passes
        offsets = self._offsets()
        trainable = []
        for group in self.param_groups:
            ps = [p for p in group["params"] if p.requires_grad]
            trainable.append((group, ps, [offsets[p] for p in ps]))
        params = [p for _, ps, _ in trainable for p in ps]
        perturbed_passes = self.num_perturbs * (2 if self.antithetic else 1)
        weight = (1 - self.lam) / perturbed_passes  # of each perturbed gradient
        loss = None
        with self._summing_gradients():
            if self.lam > 0:
                loss = self._pass(closure)
                self.running_stats_off()
                if self.lam < 1:  # pre-scale: lam * g = weight * (lam / weight) * g
                    gs = [p.grad for p in params if p.grad is not None]
                    self.axpby_(gs, gs, 0, self.lam / weight)
            if self.lam < 1:
                backup = None
                if self.exact_restore:
                    backup = dict(zip(params, self.buffers("backup", params)))
                    self.copy_(list(backup.values()), params)
                for sample in range(self.num_perturbs):
                    self._noise(trainable, 1.0, sample, base=backup)  # W + U
                    first = self._pass(closure)
                    loss = first if loss is None else loss
                    self.running_stats_off()
                    if self.antithetic:  # W - U (from the backup, or W + U - 2U)
                        self._noise(trainable, -1.0 if backup else -2.0, sample, base=backup)
                        self._pass(closure)
                    if backup is None:  # walk back to W with the regenerated noise
                        self._noise(trainable, 1.0 if self.antithetic else -1.0, sample)
                if backup is not None:
                    self.copy_(params, [backup[p] for p in params])
        self.noise_step += 1

        with_grad = [p for p in params if p.grad is not None]
        grads = [p.grad for p in with_grad]
        device = params[0].device if params else torch.device("cpu")
        found_inf = (~torch.isfinite(self.sumsq(grads, device=device))).float()
        grad_scale = None
        if self.lam < 1:  # d = weight * (sum of the passes' gradients), as the AMP unscale divides
            grad_scale = torch.full((), 1.0 / weight, dtype=torch.float32, device=device)
        self.base_step(grad_scale=grad_scale, found_inf=found_inf)
        self.running_stats_on()
        return loss
