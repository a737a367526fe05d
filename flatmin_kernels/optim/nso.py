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

Memory. ``exact_restore=True`` keeps one parameter-sized backup W: the base update reads W
from it (the restore folded into the update, as SAM's), so the weights come back bit-exactly at
no extra pass; ``exact_restore=False`` keeps none and walks back with the regenerated noise
(W + U - 2U + U, exact up to rounding). The gradients of the passes are
summed in ``p.grad`` itself: inside ``step`` the closure's ``optimizer.zero_grad()`` is a
no-op. A closure that sets the gradients to None some other way (``model.zero_grad()``) still
works -- the sum so far is held while backward writes a fresh gradient, then folded in -- at
the cost of one transient gradient-sized buffer. (A closure that zeroes gradients in place
behind the optimizer's back, ``model.zero_grad(set_to_none=False)``, is not supported.)

The seed (from ``seed=`` or drawn once from torch's generator) and the step counter are in
``state_dict()``, so a resumed run draws the same noise. The counter lives on the device and
the kernels read it there, so a step captured in a CUDA graph draws new noise at every replay. A non-finite gradient in any pass
skips the update (one fp32 norm of the final direction decides, on the device).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from .. import functional
from ..backends.contract import InvNorm
from ..plan import Plan
from .host import HostPath
from .wrapper import FOUND_INF, WrapperOptimizer, check_non_negative, check_unit_interval


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
        self.buffer_names = ("backup",) if self.exact_restore else ()
        self.seed = int(seed)
        super().__init__(params, base_optimizer, dict(sigma=sigma), model=model, backend=backend,
                         base_kwargs=base_kwargs)

    def init_step_state(self, state):
        state.first_noise_step = 0  # the counter's value when it is made
        state.counters = {}  # device -> int64 step counter
        state.accumulating = False  # inside step: the passes sum their gradients
        state.noise_host = HostPath(self, self._build_noise_plan)
        state.stranded = None  # (noise plan, update plan, restore plan)

    def check_group(self, group):
        check_non_negative(sigma=group["sigma"])

    # ------------------------------------------------------------------ state

    def _counter(self, device) -> torch.Tensor:
        """The noise step counter on ``device`` (int64; every device's copy advances together)."""
        state = self._step_state
        counter = state.counters.get(device)
        if counter is None:
            counter = state.counters[device] = torch.full((1,), state.first_noise_step, dtype=torch.int64,
                                                          device=device)
        return counter

    @property
    def noise_step(self) -> int:
        """Steps taken so far (read from the device: for state_dict and diagnostics, not the step)."""
        for counter in self._step_state.counters.values():
            return int(counter.item())
        return self._step_state.first_noise_step

    def kept_state(self):
        return dict(super().kept_state(), noise_step=self.noise_step)

    def restore_kept_state(self, kept):
        super().restore_kept_state(kept)
        self._step_state.first_noise_step = kept.get("noise_step", 0)

    def extra_state(self):
        return {"seed": self.seed, "noise_step": self.noise_step}

    def load_extra_state(self, extra):
        if "seed" in extra:
            self.seed = int(extra["seed"])
            self._step_state.first_noise_step = int(extra["noise_step"])
            self._step_state.counters.clear()

    def closure_calls(self) -> int:
        """Forward/backward passes per step."""
        if self.lam == 1:
            return 1
        perturbed = self.num_perturbs * (2 if self.antithetic else 1)
        return perturbed + (1 if self.lam > 0 else 0)

    def zero_grad(self, set_to_none: bool = True):
        if self._step_state.accumulating:  # the passes of a step sum their gradients in p.grad
            return
        super().zero_grad(set_to_none=set_to_none)

    @contextmanager
    def _summing_gradients(self):
        self._step_state.accumulating = True
        try:
            yield
        finally:
            self._step_state.accumulating = False

    # ------------------------------------------------------------------ the plans

    def noise_offsets(self):
        """Global element offset of every parameter: all groups, in order, gradient or not."""
        offsets, j = {}, 0
        for group in self.param_groups:
            for p in group["params"]:
                offsets[p] = j
                j += p.numel()
        return offsets

    @property
    def noise_path(self) -> HostPath:
        """The plan of the noise passes: every trainable parameter, whether or not it gets a gradient."""
        return self._step_state.noise_host

    def _build_noise_plan(self):
        return self._build_plan(joins=lambda p: p.requires_grad, fused=False)

    def add_param_group(self, param_group):
        super().add_param_group(param_group)
        if getattr(self._step_state, "noise_host", None) is not None:  # None while torch's __init__ adds groups
            self.noise_path.invalidate()

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        self.noise_path.invalidate()


    def _stranded(self, noise, plan):
        """A plan of the trainable parameters the update plan does not cover (no gradient this
        step: unused in the forward), rebuilt only when either plan is; None when there are none."""
        seen = self._step_state.stranded
        if seen is None or seen[0] is not noise or seen[1] is not plan:
            covered = {id(p) for p in plan.params}
            stranded = [p for p in noise.params if id(p) not in covered]
            restore = None
            if stranded:
                restore = Plan(stranded, backend=self.backend, live_grads=False)
                restore.bind("backup", self.buffers("backup", stranded))
            self._step_state.stranded = (noise, plan, restore)
        return self._step_state.stranded[2]

    # ------------------------------------------------------------------ the step

    def _noise(self, plan, coef_of_sigma, sample, base):
        """p <- b + coef * sigma * N(seed, t, sample, j) for every trainable parameter."""
        plan.each("noise_", "param", coef=lambda b: coef_of_sigma * b.group["sigma"], seed=self.seed,
                  step=lambda b: self._counter(b.device), sample=sample, base=base)

    def _pass(self, closure):
        """One forward/backward; gradients add up in p.grad (see the module docstring)."""
        params = [p for g in self.param_groups for p in g["params"]]
        held = [p.grad for p in params]
        loss = closure()
        replaced = [(h, p.grad) for h, p in zip(held, params) if h is not None and p.grad is not h]
        if replaced:  # the closure set gradients to None: fold the fresh ones into the held sum
            sums = [h for h, _ in replaced]
            fresh = [torch.zeros_like(h) if g is None else g for h, g in replaced]
            functional.axpby_(sums, fresh, 1, 1, backend=self.backend)
            for p, h in zip(params, held):
                if h is not None:
                    p.grad = h
        return loss

    @torch.no_grad()
    def step(self, closure=None):
        closure = self.require_closure(closure)
        self.amp_begin()
        clean_done = self.lam > 0 and self.first_pass_done()
        if not clean_done:
            self.clear_grads()  # every gradient of this step comes from its own passes
        self.forget_passes()
        perturbed_passes = self.num_perturbs * (2 if self.antithetic else 1)
        weight = (1 - self.lam) / perturbed_passes  # of each perturbed gradient
        exact = self.exact_restore and self.lam < 1
        loss = None
        with self._summing_gradients():
            if self.lam > 0:
                if not clean_done:
                    loss = self._pass(closure)
                self.running_stats_off()
                if self.lam < 1:  # pre-scale: lam * g = weight * (lam / weight) * g
                    self.plan().each("axpby_", "grad", "grad", 0, self.lam / weight)
            if self.lam < 1:
                noise = self.noise_path.get(grads=False)
                base = "backup" if exact else None
                if exact:
                    noise.each("axpby_", "backup", "param", 0, 1)
                for sample in range(self.num_perturbs):
                    self._noise(noise, 1.0, sample, base)  # W + U
                    first = self._pass(closure)
                    loss = first if loss is None else loss
                    self.running_stats_off()
                    if self.antithetic:  # W - U (from the backup, or W + U - 2U)
                        self._noise(noise, -1.0 if exact else -2.0, sample, base)
                        self._pass(closure)
                    if not exact:  # walk back to W with the regenerated noise
                        self._noise(noise, 1.0 if self.antithetic else -1.0, sample, None)
                for counter in self._step_state.counters.values():
                    counter.add_(1)

        # d = weight * (sum of the passes' gradients); a non-finite one skips the update, and with the
        # exact restore the update reads W from the backup (also when skipped).
        plan = self.plan()
        if exact:
            stranded = self._stranded(noise, plan)
            if stranded is not None:  # perturbed, but no gradient to update with: back to W by a copy
                stranded.each("axpby_", "param", "backup", 0, 1)
        plan.reduce("sumsq", "grad", index=0, epilogue=InvNorm(1.0, inv=1, inf=FOUND_INF))
        grad_scale, found_inf = self.amp_update(plan)
        self.base_step(plan, g_coef=weight if self.lam < 1 else 1.0, backup="backup" if exact else None,
                       grad_scale=grad_scale, found_inf=found_inf)
        self.amp_end(plan)
        self.running_stats_on()
        self.clear_grads()
        return loss
