"""NSO as its official code (VirtuosoResearch/noise-stability-optimization: utils/nso.py driven
by trainer/nso_trainer.py) runs a step: a clean pass at W whose gradient is stored with weight
lam (``old_p`` and ``old_gradients`` cloned), then for each sample U ~ N(0, sigma^2) drawn with
``randn_like`` and stored: W + U, a pass, its gradient accumulated; W - U, a pass, accumulated;
gradients zeroed in place after each; finally W and the accumulated gradient swapped back in
and the base optimizer's step. The scripts run lam = 0, one sample, antithetic (``--use_neg``).

Counted per step (list-sized reads + writes): old_p clone 2; old_gradients = clone * lam 2+2;
zero 1; for +U: p = old_p.clone() 2, U = randn_like * sigma 1+2, p += U 3, zero 1; store
2+2+3, zero 1; for -U: p = old_p.clone() 2, p -= U 3, zero 1; store 2+2+3, zero 1; swap back 0;
base AdamW 20; zero 1: 59.
"""
from __future__ import annotations

import torch

from flatmin_kernels.bench.contenders import BASE, Contender, closure_step


class OfficialNSO(torch.optim.Optimizer):
    def __init__(self, params, base_optimizer, sigma=0.01, num_perturbs=1, lam=0.0, **kwargs):
        super().__init__(params, dict(sigma=sigma, **kwargs))
        self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.num_perturbs, self.lam = num_perturbs, lam

    def _trainable(self):
        return [(group, p) for group in self.param_groups for p in group["params"] if p.requires_grad]

    @torch.no_grad()
    def _store_gradients(self, weight, first=False):
        for _, p in self._trainable():
            if first:
                self.state[p]["old_p"] = p.data.clone()
                self.state[p]["old_gradients"] = p.grad.clone() * weight
            else:
                self.state[p]["old_gradients"] += p.grad.clone() * weight
        self.zero_grad(set_to_none=False)

    @torch.no_grad()
    def _move(self, new_noise: bool):
        for group, p in self._trainable():
            p.data = self.state[p]["old_p"].clone()
            if new_noise:
                self.state[p]["perturb"] = torch.randn_like(p) * group["sigma"]
                p.add_(self.state[p]["perturb"])
            else:
                p.sub_(self.state[p]["perturb"])
        self.zero_grad(set_to_none=False)

    @torch.no_grad()
    def _restore_and_update(self):
        for _, p in self._trainable():
            p.data = self.state[p]["old_p"]
            p.grad = self.state[p]["old_gradients"]
        self.base_optimizer.step()
        self.zero_grad(set_to_none=False)

    def step(self, closure):
        closure = torch.enable_grad()(closure)
        loss = closure()  # the clean pass always runs in the official trainer
        self._store_gradients(self.lam, first=True)
        weight = (1 - self.lam) / (2 * self.num_perturbs)
        for _ in range(self.num_perturbs):
            self._move(new_noise=True)
            closure()
            self._store_gradients(weight)
            self._move(new_noise=False)
            closure()
            self._store_gradients(weight)
        self._restore_and_update()
        return loss


def contenders():
    return [Contender("official-style NSO", "NSO", "peer",
                      lambda ps: OfficialNSO(ps, torch.optim.AdamW, sigma=0.01, **BASE), closure_step, 59,
                      "per-parameter loops, stored randn_like noise (see bench/peers/nso_official.py); "
                      "base AdamW default 20", 5, 3)]
