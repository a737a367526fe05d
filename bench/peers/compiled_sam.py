"""The reference (per-parameter loop) SAM step under ``torch.compile``: what a user might try
instead of a fused kernel. The ascent (norm, backup, ``p += scale * g``) and the restore are
compiled functions over the parameter lists; the base AdamW step is compiled the way PyTorch's
compiled-optimizer recipe does it (``torch.compile(optimizer.step)``).

Not counted: the compiler decides how many passes over memory the loop becomes (the eager
source reads and writes 30 list-sized arrays per parameter with a loop AdamW).
"""
from __future__ import annotations

import torch

from flatmin_kernels.bench.contenders import BASE, Contender, two_call


def _ascend(params, grads, backups, rho: float):
    norm = torch.stack([g.norm(p=2) for g in grads]).norm(p=2)
    scale = rho / (norm + 1e-12)
    for p, g, b in zip(params, grads, backups):
        b.copy_(p)
        p.add_(g * scale)


def _restore(params, backups):
    for p, b in zip(params, backups):
        p.copy_(b)


class CompiledSAM(torch.optim.Optimizer):
    def __init__(self, params, base_optimizer, rho=0.05, compile_backend="inductor", **kwargs):
        super().__init__(params, dict(rho=rho, **kwargs))
        self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups
        compile_ = lambda fn: torch.compile(fn, backend=compile_backend, dynamic=False)  # noqa: E731
        self._ascend, self._restore = compile_(_ascend), compile_(_restore)
        self._base_step = compile_(self.base_optimizer.step)

    def _lists(self):
        params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        for p in params:
            if "backup" not in self.state[p]:
                self.state[p]["backup"] = torch.empty_like(p)
        return params, [p.grad for p in params], [self.state[p]["backup"] for p in params]

    @torch.no_grad()
    def first_step(self):
        params, grads, backups = self._lists()
        self._ascend(params, grads, backups, self.param_groups[0]["rho"])

    @torch.no_grad()
    def second_step(self):
        params, _, backups = self._lists()
        self._restore(params, backups)
        self._base_step()


def contenders():
    return [Contender("torch.compile loop SAM", "SAM", "peer",
                      lambda ps: CompiledSAM(ps, torch.optim.AdamW, rho=0.05, **BASE), two_call,
                      None, "not counted: inductor fuses the loop (eager source: 30)", 3, 2, in_quick=False)]
