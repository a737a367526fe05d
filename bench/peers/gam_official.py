"""GAM as its official code (xxgege/GAM, gam/gam.py) runs it: per-parameter loops over six
parameter-sized buffers kept in the optimizer state (g_0, g_1, g_2, e_w_0, e_w_1_2, pro_m),
four passes, weights moved back by subtracting the stored perturbations, the final direction
from a cosine decomposition, then the base optimizer's step. Like the official code, h- is
``g_0 + |1 - beta| g_2`` (spec section 2: the code's form, flatmin's ``form="reference"``).

Counted per step (list-sized reads + writes): 3 norms of g 3+3+3 (``sum(g**2)``), g_0 clone 2,
e = g*s 2 (x3), p += e 3 (x3), p -= e_w_0 3, g_1 clone 2, g -= g_0 3, g_2 clone 2,
e_w_1_2 += e 3, pro_m 2+3, new grad 2+2+2+3, inner product 3+1, norms of grad and pro_m 3+3,
vertical 2+2+3, grad += -gamma vertical 3, p -= e_w_1_2 3; base AdamW 20: 96.
"""
from __future__ import annotations

import torch

from flatmin_kernels.bench.contenders import BASE, Contender, closure_step


class OfficialGAM(torch.optim.Optimizer):
    def __init__(self, params, base_optimizer, *, grad_rho=0.02, grad_norm_rho=0.2, grad_beta_0=0.5,
                 grad_beta_1=0.6, grad_gamma=0.03, perturb_eps=1e-12, **kwargs):
        super().__init__(params, dict(**kwargs))
        self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.grad_rho, self.grad_norm_rho, self.eps = grad_rho, grad_norm_rho, perturb_eps
        self.beta_1, self.beta_2, self.beta_3 = grad_beta_1, 1 - grad_beta_0, 1 - grad_beta_1
        self.gamma = grad_gamma

    def _params(self):
        return [p for group in self.param_groups for p in group["params"] if p.grad is not None]

    def _norm(self, key=None):
        total = 0.0
        for p in self._params():
            g = p.grad if key is None else self.state[p][key]
            total += torch.sum(g ** 2)
        return torch.sqrt(total)

    @torch.no_grad()
    def _perturb(self, first: bool):
        scale = self.grad_rho / (self._norm() + self.eps)
        for p in self._params():
            self.state[p]["g_0" if first else "g_2"] = p.grad.clone()
            e_w = p.grad * scale.to(p)
            p.add_(e_w)
            if first:
                self.state[p]["e_w_0"] = e_w
            else:
                self.state[p]["e_w_1_2"] += e_w

    @torch.no_grad()
    def _grad_norm_ascent(self):
        for p in self._params():
            self.state[p]["g_1"] = p.grad.clone()
            p.grad -= self.state[p]["g_0"]
        scale = self.grad_norm_rho / (self._norm() + self.eps)
        for p in self._params():
            e_w = p.grad * scale.to(p)
            p.add_(e_w)
            self.state[p]["e_w_1_2"] = e_w

    @torch.no_grad()
    def _unperturb(self, key):
        for p in self._params():
            p.sub_(self.state[p][key])

    @torch.no_grad()
    def _decompose(self):
        inner = 0.0
        for p in self._params():
            st = self.state[p]
            st["pro_m"] = st["g_0"] + abs(self.beta_2) * st["g_2"]
            p.grad = self.beta_1 * st["g_1"] + self.beta_3 * p.grad.clone()
            inner += torch.sum(st["pro_m"] * p.grad)
        new_norm, old_norm = self._norm(), self._norm("pro_m")
        cosine = inner / (new_norm * old_norm + self.eps)
        for p in self._params():
            vertical = self.state[p]["pro_m"] - cosine * old_norm * p.grad / (new_norm + self.eps)
            p.grad.add_(vertical, alpha=-self.gamma)

    def step(self, closure):
        closure = torch.enable_grad()(closure)
        loss = closure()
        self._perturb(first=True)
        closure()
        self._unperturb("e_w_0")
        self._grad_norm_ascent()
        closure()
        self._perturb(first=False)
        closure()
        self._decompose()
        self._unperturb("e_w_1_2")
        self.base_optimizer.step()
        return loss

    def zero_grad(self, set_to_none: bool = False):  # the official code zeroes in place
        self.base_optimizer.zero_grad(set_to_none)


def contenders():
    return [Contender("official-style GAM", "GAM", "peer",
                      lambda ps: OfficialGAM(ps, torch.optim.AdamW, **BASE), closure_step, 96,
                      "per-parameter loops, six state buffers (see bench/peers/gam_official.py); "
                      "base AdamW default 20", 8, 4)]
