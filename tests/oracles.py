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
    """The standard normal for element j (noise definition v2), in float64 from the same uniforms:
    Philox call c = j >> 2 gives four words, i.e. two Box-Muller pairs (cos and sin of each);
    element j takes entry j & 3 of (r_a cos, r_a sin, r_b cos, r_b sin)."""
    c = j >> 2
    words = philox4x32_10((c & 0xFFFFFFFF, c >> 32, step, sample), (seed & 0xFFFFFFFF, seed >> 32))
    u = [((w >> 8) | 1) * 2.0**-24 for w in words]
    r_a, th_a = math.sqrt(-2.0 * math.log(u[0])), 2.0 * math.pi * u[1]
    r_b, th_b = math.sqrt(-2.0 * math.log(u[2])), 2.0 * math.pi * u[3]
    return (r_a * math.cos(th_a), r_a * math.sin(th_a), r_b * math.cos(th_b), r_b * math.sin(th_b))[j & 3]


# ----------------------------------------------------------------------------- BatchNorm rule (spec section 0)


class frozen_batchnorm:
    """Later passes stay in train mode but with BN momentum 0; the momentum comes back after."""

    def __init__(self, model):
        self.modules = [] if model is None else [
            m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
        ]

    def __enter__(self):
        self.saved = [m.momentum for m in self.modules]
        for m in self.modules:
            m.momentum = 0.0

    def __exit__(self, *exc):
        for m, momentum in zip(self.modules, self.saved):
            m.momentum = momentum


def _with_grad(groups):
    return [(group, p) for group in groups for p in group["params"] if p.grad is not None]


def _asam_weight(p, adaptive):
    return p.detach().float().abs() if adaptive else 1.0


def _ascent(vectors, points, rho, adaptive, eps):
    """{p: e} with e = rho * T^2 v / (||T v|| + eps), T = diag(|point|) for ASAM, else identity."""
    total = torch.zeros((), dtype=torch.float32)
    for p, v in vectors.items():
        total = total + ((_asam_weight(points[p], adaptive) * v) ** 2).sum()
    scale = rho / (total.sqrt() + eps)
    return {p: scale * v * (points[p].float() ** 2 if adaptive else 1.0) for p, v in vectors.items()}


# ----------------------------------------------------------------------------- SAM / ASAM (spec section 1)


class OracleSAM:
    """SAM (adaptive=False) and ASAM (adaptive=True) around a base oracle, one parameter at a time.

    The ascent direction is the pass-1 gradient centralized with the group's GC mode (norm taken
    after GC); the base update (which applies its own GC) runs at the restored weights.
    use_gc=True is pytorch_optimizer's GCSAM instead: the norm of the raw gradient, the ascent
    along the gradient centralized in place ("gc": every tensor with ndim > 1).
    step(closure): the closure sets gradients to None, computes the loss and backprops.
    """

    def __init__(self, groups, base, *, rho, adaptive=False, eps=1e-12, model=None, use_gc=False):
        self.groups, self.base, self.rho, self.adaptive, self.eps = groups, base, rho, adaptive, eps
        self.model, self.use_gc = model, use_gc

    def step(self, closure):
        loss = closure()
        with torch.no_grad():
            pairs = _with_grad(self.groups)
            old = {p: p.detach().clone() for _, p in pairs}
            if self.use_gc:
                raw = {p: p.grad.float().clone() for _, p in pairs}
                norm = torch.stack([((_asam_weight(p, self.adaptive) * g) ** 2).sum() for p, g in raw.items()]).sum().sqrt()
                scale = self.rho / (norm + self.eps)
                e = {p: scale * centralized(g, "gc") * (p.float() ** 2 if self.adaptive else 1.0) for p, g in raw.items()}
            else:
                d = {p: centralized(p.grad.float().clone(), group["centralize"]) for group, p in pairs}
                e = _ascent(d, old, self.rho, self.adaptive, self.eps)
            for p in old:
                p.copy_(p.float() + e[p])
        with frozen_batchnorm(self.model):
            closure()
        with torch.no_grad():
            for p, w in old.items():
                p.copy_(w)
        self.base.step()
        return loss


# ----------------------------------------------------------------------------- GAM (spec section 2)


class OracleGAM:
    """Accelerated GAM: four gradients of one batch, h+ / h- combination, base step with d at w.

    form="paper": h- = beta*g0 + (1-beta)*g2; form="reference": h- = g0 + (1-beta)*g2.
    """

    def __init__(self, groups, base, *, grad_rho=0.02, grad_norm_rho=0.2, grad_beta_0=0.5,
                 grad_beta_1=0.6, grad_gamma=0.03, adaptive=False, form="paper", eps=1e-12,
                 model=None):
        self.groups, self.base, self.model = groups, base, model
        self.rho_s, self.rho_n = grad_rho, grad_norm_rho
        self.beta, self.alpha, self.gamma = grad_beta_0, grad_beta_1, grad_gamma
        self.adaptive, self.form, self.eps = adaptive, form, eps

    def _grads(self, ps):
        return {p: p.grad.float().clone() for p in ps}

    def _move(self, origin, e):
        with torch.no_grad():
            for p in origin:
                p.copy_(origin[p].float() + e[p])

    def step(self, closure):
        loss = closure()
        ps = [p for _, p in _with_grad(self.groups)]
        theta = {p: p.detach().clone() for p in ps}
        g0 = self._grads(ps)
        self._move(theta, _ascent(g0, theta, self.rho_s, self.adaptive, self.eps))
        with frozen_batchnorm(self.model):
            closure()
            g1 = self._grads(ps)
            h0 = {p: g1[p] - g0[p] for p in ps}
            self._move(theta, _ascent(h0, theta, self.rho_n, self.adaptive, self.eps))
            closure()
            g2 = self._grads(ps)
            theta2 = {p: p.detach().clone() for p in ps}
            self._move(theta2, _ascent(g2, theta2, self.rho_s, self.adaptive, self.eps))
            closure()
            g3 = self._grads(ps)
        b0 = self.beta if self.form == "paper" else 1.0
        h_plus = {p: self.alpha * g1[p] + (1 - self.alpha) * g3[p] for p in ps}
        h_minus = {p: b0 * g0[p] + (1 - self.beta) * g2[p] for p in ps}
        dot = sum((h_minus[p] * h_plus[p]).sum() for p in ps)
        sq = sum((h_plus[p] ** 2).sum() for p in ps)
        c = dot / (sq + self.eps)
        with torch.no_grad():
            for p in ps:
                p.copy_(theta[p])
                p.grad = h_plus[p] - self.gamma * (h_minus[p] - c * h_plus[p])
        self.base.step()
        return loss


# ----------------------------------------------------------------------------- NSO (spec section 3)


def noise_tensor(seed: int, step: int, sample: int, offset: int, shape) -> torch.Tensor:
    """The standard normals of a tensor whose first element has global index ``offset``."""
    n = math.prod(shape)
    return torch.tensor([noise_normal(seed, step, sample, offset + j) for j in range(n)],
                        dtype=torch.float32).reshape(shape)


class OracleNSO:
    """NSO: d = lam * g(W) + (1 - lam) * mean over the k samples of [g(W+U) (+ g(W-U))] / (2 or 1),
    U = sigma * N(seed, t, i, j), j the element's index over every parameter of every group."""

    def __init__(self, groups, base, *, sigma=0.01, num_perturbs=1, antithetic=True, lam=0.0,
                 seed=0, model=None):
        self.groups, self.base, self.model = groups, base, model
        self.sigma, self.k, self.antithetic, self.lam = sigma, num_perturbs, antithetic, lam
        self.seed, self.t = seed, 0

    def step(self, closure):
        offsets, j = {}, 0
        for group in self.groups:
            for p in group["params"]:
                offsets[p] = j
                j += p.numel()
        trainable = [(g, p) for g in self.groups for p in g["params"] if p.requires_grad]
        acc, loss, passes = {}, None, 0

        def run(weight):
            nonlocal loss, passes
            if passes == 0:
                out = closure()
            else:
                with frozen_batchnorm(self.model):
                    out = closure()
            loss = out if loss is None else loss
            passes += 1
            for _, p in trainable:
                if p.grad is not None:
                    acc[p] = acc.get(p, 0.0) + weight * p.grad.float()

        if self.lam > 0:
            run(self.lam)
        W = {p: p.detach().clone() for _, p in trainable}
        w = (1 - self.lam) / (self.k * (2 if self.antithetic else 1))
        for i in range(self.k):
            U = {p: g["sigma"] * noise_tensor(self.seed, self.t, i, offsets[p], p.shape) for g, p in trainable}
            for sign in ((1.0, -1.0) if self.antithetic else (1.0,)):
                with torch.no_grad():
                    for p in W:
                        p.copy_(W[p].float() + sign * U[p])
                run(w)
        with torch.no_grad():
            for p in W:
                p.copy_(W[p])
                p.grad = acc.get(p)
        self.t += 1
        self.base.step()
        return loss
