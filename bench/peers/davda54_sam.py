"""SAM and ASAM as the popular reference implementation (davda54/sam) runs them: a Python loop
over the parameters, one norm per tensor stacked into the global norm, ``old_p`` cloned per
tensor, a temporary ``e = scale * g`` (ASAM: ``scale * p^2 * g``) added, and the restore a
pointer swap back to ``old_p`` before the base optimizer's step.
"""
from __future__ import annotations

import torch

from flatmin_kernels.bench.contenders import BASE, Contender, two_call


class LoopSAM(torch.optim.Optimizer):
    def __init__(self, params, base_optimizer, rho=0.05, adaptive=False, **kwargs):
        super().__init__(params, dict(rho=rho, adaptive=adaptive, **kwargs))
        self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups

    @torch.no_grad()
    def first_step(self):
        grad_norm = self._grad_norm()
        for group in self.param_groups:
            scale = group["rho"] / (grad_norm + 1e-12)
            for p in group["params"]:
                if p.grad is None:
                    continue
                self.state[p]["old_p"] = p.clone()
                if group["adaptive"]:
                    e = p.pow(2).mul_(p.grad).mul_(scale.to(p))
                else:
                    e = p.grad * scale.to(p)
                p.add_(e)

    @torch.no_grad()
    def second_step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.data = self.state[p]["old_p"]  # back to w: the saved tensor becomes the parameter
        self.base_optimizer.step()

    def _grad_norm(self):
        device = self.param_groups[0]["params"][0].device
        norms = [((p.abs() * p.grad) if group["adaptive"] else p.grad).norm(p=2).to(device)
                 for group in self.param_groups for p in group["params"] if p.grad is not None]
        return torch.stack(norms).norm(p=2)


def contenders():
    base = "base torch.AdamW default (for-loop on CPU, foreach on CUDA) 20"
    return [
        Contender("davda54-style SAM", "SAM", "peer",
                  lambda ps: LoopSAM(ps, torch.optim.AdamW, rho=0.05, **BASE), two_call,
                  28, f"norm 1; clone 2; e = g*s 2; p += e 3; restore: pointer swap 0; {base}", 3, 2),
        Contender("davda54-style ASAM", "ASAM", "peer",
                  lambda ps: LoopSAM(ps, torch.optim.AdamW, rho=0.5, adaptive=True, **BASE), two_call,
                  38, f"norm of |p|*g 2+3+1; clone 2; e = p^2*g*s 2+3+2; p += e 3; {base}", 3, 2),
    ]
