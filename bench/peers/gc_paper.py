"""Adam_GC and SGD_GC as the Gradient Centralization paper's code (Yonghongwei/Gradient-
Centralization, GC_code/CIFAR100/algorithm) runs them: a per-parameter loop with L2 weight decay
added into the gradient in place, GC (minus the mean over all dims but 0, for ndim > 1) in
place, then the classic Adam (eps added to sqrt(v), the bias corrections folded into the step
size) or SGD with momentum.

Counted per step (list-sized reads + writes, for the tensors GC applies to; 1-D ones skip the
mean and the subtraction, 3 fewer): Adam_GC: g += wd p 3; mean 1; g -= mean 2;
m *= b1 2; m += (1-b1) g 3; v *= b2 2; v += (1-b2) g g 3; denom = sqrt(v) 2 + eps 2;
p -= s m / denom 4: 24. SGD_GC: g += wd p 3; mean 1 + subtract 2; buf *= mu 2; buf += g 3;
p -= lr buf 3: 14.
"""
from __future__ import annotations

import math

import torch

from flatmin_kernels.bench.contenders import Contender, LR, WEIGHT_DECAY, base_step


def _centralize_(g):
    if g.dim() > 1:
        g.sub_(g.mean(dim=tuple(range(1, g.dim())), keepdim=True))


class AdamGC(torch.optim.Optimizer):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                if group["weight_decay"] != 0:
                    grad.add_(p, alpha=group["weight_decay"])
                _centralize_(grad)
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = exp_avg_sq.sqrt().add_(group["eps"])
                step_size = group["lr"] * math.sqrt(1 - beta2 ** state["step"]) / (1 - beta1 ** state["step"])
                p.addcdiv_(exp_avg, denom, value=-step_size)


class SGDGC(torch.optim.Optimizer):
    def __init__(self, params, lr=0.1, momentum=0.9, dampening=0.0, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d_p = p.grad
                if group["weight_decay"] != 0:
                    d_p.add_(p, alpha=group["weight_decay"])
                _centralize_(d_p)
                if group["momentum"] != 0:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        buf = state["momentum_buffer"] = d_p.clone()
                    else:
                        buf = state["momentum_buffer"]
                        buf.mul_(group["momentum"]).add_(d_p, alpha=1 - group["dampening"])
                    d_p = buf
                p.add_(d_p, alpha=-group["lr"])


def contenders():
    return [
        Contender("GC paper Adam_GC", "Adam_GC", "peer",
                  lambda ps: AdamGC(ps, lr=LR, weight_decay=WEIGHT_DECAY), base_step, 24,
                  "per-parameter loop with GC inside (see bench/peers/gc_paper.py)", 2, 1),
        Contender("GC paper SGD_GC", "SGD_GC", "peer",
                  lambda ps: SGDGC(ps, lr=LR, momentum=0.9, weight_decay=WEIGHT_DECAY), base_step, 14,
                  "per-parameter loop with GC inside (see bench/peers/gc_paper.py)", 1, 1),
    ]
