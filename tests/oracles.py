"""Naive per-parameter versions of every method, written straight from ../shared/spec/algorithms.md.

They import nothing from flatmin_kernels: they are what the package is checked against.
Each works on ordinary parameter groups (dicts with "params" and every hyperparameter
spelled out), loops over parameters one by one, and does its math in fp32.
"""
from __future__ import annotations

import math

import torch

# ----------------------------------------------------------------------------- GC (spec section 4)


def centralized(grad: torch.Tensor, mode) -> torch.Tensor:
    """Phi_GC: subtract the mean over all dims but 0, for ndim > 1 ("gc") or ndim > 3 ("gcc")."""
    if mode is None:
        return grad
    if (mode == "gc" and grad.dim() > 1) or (mode == "gcc" and grad.dim() > 3):
        if grad.numel() == 0:
            return grad
        return grad - grad.mean(dim=tuple(range(1, grad.dim())), keepdim=True)
    return grad


class OracleSGD:
    """SGD / SGD_GC / SGD_GCC: g <- grad + wd*theta, then GC(g), then momentum, then theta -= lr*d."""

    def __init__(self, groups):
        self.groups = groups
        self.state = {}

    @torch.no_grad()
    def step(self):
        for group in self.groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad.float().clone()
                if group["maximize"]:
                    g = -g
                if group["weight_decay"]:
                    g = g + group["weight_decay"] * p.float()
                g = centralized(g, group["centralize"])
                d = g
                if group["momentum"]:
                    st = self.state.setdefault(p, {})
                    if "buf" not in st:
                        st["buf"] = g.clone()
                    else:
                        st["buf"] = group["momentum"] * st["buf"] + (1 - group["dampening"]) * g
                    d = g + group["momentum"] * st["buf"] if group["nesterov"] else st["buf"]
                p.copy_(p.float() - group["lr"] * d)


class OracleAdam:
    """Adam_GC (L2 decay into g, then GC) and AdamW_GC (GC on the raw gradient, decoupled decay)."""

    def __init__(self, groups, decoupled: bool):
        self.groups = groups
        self.decoupled = decoupled
        self.state = {}

    @torch.no_grad()
    def step(self):
        for group in self.groups:
            beta1, beta2 = group["betas"]
            lr, wd = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state.setdefault(p, {"t": 0, "m": torch.zeros_like(p, dtype=torch.float32),
                                                "v": torch.zeros_like(p, dtype=torch.float32),
                                                "vmax": torch.zeros_like(p, dtype=torch.float32)})
                theta = p.float()
                g = p.grad.float().clone()
                if group["maximize"]:
                    g = -g
                if self.decoupled:
                    theta = theta * (1 - lr * wd)
                elif wd:
                    g = g + wd * theta
                g = centralized(g, group["centralize"])
                st["t"] += 1
                st["m"] = beta1 * st["m"] + (1 - beta1) * g
                st["v"] = beta2 * st["v"] + (1 - beta2) * g * g
                second = st["v"]
                if group["amsgrad"]:
                    st["vmax"] = torch.maximum(st["vmax"], st["v"])
                    second = st["vmax"]
                m_hat = st["m"] / (1 - beta1 ** st["t"])
                v_hat = second / (1 - beta2 ** st["t"])
                p.copy_(theta - lr * m_hat / (v_hat.sqrt() + group["eps"]))


# ----------------------------------------------------------------------------- Philox noise (DESIGN.md)

PHILOX_M = (0xD2511F53, 0xCD9E8D57)
PHILOX_W = (0x9E3779B9, 0xBB67AE85)


def philox4x32_10(counter, key):
    """Random123's Philox4x32-10 on python ints: counter 4 words, key 2 words -> 4 words."""
    c = list(counter)
    k0, k1 = key
    mask = 0xFFFFFFFF
    for _ in range(10):
        p0 = PHILOX_M[0] * c[0]
        p1 = PHILOX_M[1] * c[2]
        c = [((p1 >> 32) ^ c[1] ^ k0) & mask, p1 & mask, ((p0 >> 32) ^ c[3] ^ k1) & mask, p0 & mask]
        k0, k1 = (k0 + PHILOX_W[0]) & mask, (k1 + PHILOX_W[1]) & mask
    return c


def noise_normal(seed: int, step: int, sample: int, j: int) -> float:
    """The standard normal for element j, computed in float64 from the same two uniforms."""
    words = philox4x32_10((j & 0xFFFFFFFF, j >> 32, step, sample), (seed & 0xFFFFFFFF, seed >> 32))
    u1 = ((words[0] >> 8) | 1) * 2.0**-24
    u2 = ((words[1] >> 8) | 1) * 2.0**-24
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)
