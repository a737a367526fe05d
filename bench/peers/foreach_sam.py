"""SAM written with torch's ``_foreach_*`` ops over the whole list (the multi-tensor way a user
would write it without a fused kernel), on ``AdamW(foreach=True)``: one ``_foreach_norm``, the
backup copied into persistent buffers, ``e = scale * g`` and ``p += e`` as list ops, the
restore a list copy. The scale stays a device tensor, so nothing waits on the host.
"""
from __future__ import annotations

import torch

from flatmin_kernels.bench.contenders import BASE, Contender, two_call


class ForeachSAM(torch.optim.Optimizer):
    def __init__(self, params, base_optimizer, rho=0.05, **kwargs):
        super().__init__(params, dict(rho=rho, **kwargs))
        self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups

    def _with_grads(self, group):
        params = [p for p in group["params"] if p.grad is not None]
        return params, [p.grad for p in params]

    @torch.no_grad()
    def first_step(self):
        grads = [g for group in self.param_groups for g in self._with_grads(group)[1]]
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        for group in self.param_groups:
            params, grads = self._with_grads(group)
            backups = []
            for p in params:
                if "backup" not in self.state[p]:
                    self.state[p]["backup"] = torch.empty_like(p)
                backups.append(self.state[p]["backup"])
            torch._foreach_copy_(backups, params)
            torch._foreach_add_(params, torch._foreach_mul(grads, group["rho"] / (norm + 1e-12)))

    @torch.no_grad()
    def second_step(self):
        for group in self.param_groups:
            params, _ = self._with_grads(group)
            torch._foreach_copy_(params, [self.state[p]["backup"] for p in params])
        self.base_optimizer.step()


def contenders():
    return [Contender("foreach SAM", "SAM", "peer",
                      lambda ps: ForeachSAM(ps, torch.optim.AdamW, rho=0.05, foreach=True, **BASE), two_call,
                      30, "_foreach_norm 1; backup copy 2; e = g*s 2; p += e 3; restore copy 2; "
                          "base AdamW(foreach=True) 20", 3, 2)]
