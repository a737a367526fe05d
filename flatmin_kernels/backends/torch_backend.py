"""The torch reference backend: every op of the contract in plain torch and ``torch._foreach_*``.

It runs on any device, never synchronises with the host, and is the oracle the fused
backends are tested against, so it is written to be obviously correct first: inputs are
promoted to fp32, the new values are computed out of place, and stored once at the end.
See :mod:`flatmin_kernels.backends.contract` for the meaning of every argument.
"""
from __future__ import annotations

import math

import torch

name = "torch"


def available() -> tuple[bool, str]:
    return True, "plain torch; always available"


def supports(device: torch.device) -> bool:
    return True


# ----------------------------------------------------------------------------- helpers


def _fp32(tensors):
    """fp32 views for reading: the same tensor when already fp32, a copy otherwise."""
    return [t.float() for t in tensors]


def _centralized(x: torch.Tensor) -> torch.Tensor:
    """x minus its mean over every dimension but dim 0 (a new tensor)."""
    if x.numel() == 0:
        return x.clone()
    rows = x.reshape(x.shape[0], -1)
    return (rows - rows.mean(dim=1, keepdim=True)).reshape(x.shape)


def _maybe_centralized(xs, centralize):
    if centralize is None:
        return xs
    return [_centralized(x) if flag else x for x, flag in zip(xs, centralize)]


def _store(dst, new, found_inf=None):
    """Copy ``new`` into ``dst`` (rounding to dst's dtype), or keep dst where found_inf > 0."""
    if found_inf is not None:
        skip = found_inf > 0
        new = [torch.where(skip, d.float(), n) for d, n in zip(dst, new)]
    if dst:
        torch._foreach_copy_(dst, new)


def _times(xs, scalar):
    """xs * scalar for a python number or a 0-d tensor (new tensors)."""
    return torch._foreach_mul(xs, scalar)


# ----------------------------------------------------------------------------- reductions


def sumsq(tensors, *, weights=None, centralize=None):
    if not tensors:
        return torch.zeros(0, dtype=torch.float32)
    xs = _maybe_centralized(_fp32(tensors), centralize)
    if weights is not None:
        xs = torch._foreach_mul(xs, torch._foreach_abs(_fp32(weights)))
    return torch.stack([torch.dot(x.reshape(-1), x.reshape(-1)) for x in xs])


def dot(xs, ys):
    if not xs:
        return torch.zeros(0, dtype=torch.float32)
    return torch.stack(
        [torch.dot(x.float().reshape(-1), y.float().reshape(-1)) for x, y in zip(xs, ys)]
    )


# ----------------------------------------------------------------------------- element-wise


def centralize_(tensors, centralize):
    for t, flag in zip(tensors, centralize):
        if flag and t.numel():
            t.copy_(_centralized(t.float()))


def axpby_(ys, xs, a, b):
    if not ys:
        return
    bx = _times(_fp32(xs), b)
    new = bx if (not torch.is_tensor(a) and a == 0) else torch._foreach_add(_times(_fp32(ys), a), bx)
    _store(ys, new)


def perturb_(params, directions, scale, *, save_to=None, base=None, centralize=None,
             adaptive=False, found_inf=None):
    if not params:
        return
    b = _fp32(base if base is not None else params)
    d = _maybe_centralized(_fp32(directions), centralize)
    if adaptive:
        d = torch._foreach_mul(d, torch._foreach_mul(b, b))
    new = torch._foreach_add(b, _times(d, scale))
    if save_to is not None:
        torch._foreach_copy_(save_to, params)
    _store(params, new, found_inf)


# ----------------------------------------------------------------------------- noise

_MASK = 0xFFFFFFFF
_MULTIPLIERS = (0xD2511F53, 0xCD9E8D57)
_WEYL = (0x9E3779B9, 0xBB67AE85)


def _mul_hi_lo(a: torch.Tensor, m: int):
    """(hi, lo) 32-bit words of a * m for uint32 values held in int64, without overflow."""
    m_hi, m_lo = m >> 16, m & 0xFFFF
    t = a * m_lo  # < 2**48
    u = a * m_hi  # < 2**48
    low = ((u & 0xFFFF) << 16) + t  # < 2**49
    return (u >> 16) + (low >> 32), low & _MASK


def _philox_words(j: torch.Tensor, seed: int, step: int, sample: int):
    """Philox4x32-10 of counter (j_lo, j_hi, step, sample) under key (seed_lo, seed_hi)."""
    c0, c1 = j & _MASK, j >> 32
    c2 = torch.full_like(j, step & _MASK)
    c3 = torch.full_like(j, sample & _MASK)
    k0, k1 = seed & _MASK, (seed >> 32) & _MASK
    for _ in range(10):
        hi0, lo0 = _mul_hi_lo(c0, _MULTIPLIERS[0])
        hi1, lo1 = _mul_hi_lo(c2, _MULTIPLIERS[1])
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + _WEYL[0]) & _MASK, (k1 + _WEYL[1]) & _MASK
    return c0, c1, c2, c3


def _check_seed(seed: int):
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")


def philox(n, *, seed, step, sample, offset, device="cpu"):
    _check_seed(seed)
    j = torch.arange(offset, offset + n, dtype=torch.int64, device=device)
    return torch.stack(_philox_words(j, seed, step, sample), dim=1)


def normal_from_philox(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """Box-Muller on the first two Philox words, as the contract defines it (fp32)."""
    u1 = ((x0 >> 8) | 1).to(torch.float32) * 2.0**-24
    u2 = ((x1 >> 8) | 1).to(torch.float32) * 2.0**-24
    two_pi = torch.tensor(2 * math.pi, dtype=torch.float32)
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(two_pi * u2)


def normals(n, *, seed, step, sample, offset, device="cpu"):
    """The contract's standard normals for j = offset .. offset + n - 1 (fp32)."""
    words = philox(n, seed=seed, step=step, sample=sample, offset=offset, device=device)
    return normal_from_philox(words[:, 0], words[:, 1])


def noise_(params, coef, *, seed, step, sample, offsets, base=None, found_inf=None):
    if not params:
        return
    _check_seed(seed)
    b = _fp32(base if base is not None else params)
    new = [
        x + coef * normals(p.numel(), seed=seed, step=step, sample=sample, offset=off,
                           device=p.device).reshape(p.shape)
        for x, p, off in zip(b, params, offsets)
    ]
    _store(params, new, found_inf)


# ----------------------------------------------------------------------------- base updates


def _effective_grads(grads, grad_scale, maximize):
    g = _fp32(grads)
    if grad_scale is not None:
        g = torch._foreach_div(g, grad_scale)
    if maximize:
        g = torch._foreach_neg(g)
    return g


def step_sgd_(params, grads, momentum_buffers, *, lr, weight_decay, momentum, dampening,
              nesterov, maximize, init_buffers=False, centralize=None, backups=None,
              grad_scale=None, found_inf=None):
    if not params:
        return
    b = _fp32(backups if backups is not None else params)
    g = _effective_grads(grads, grad_scale, maximize)
    if weight_decay != 0:
        g = torch._foreach_add(g, _times(b, weight_decay))
    g = _maybe_centralized(g, centralize)
    d = g
    if momentum != 0:
        if init_buffers:
            new_bufs = [x.clone() for x in g]
        else:
            new_bufs = torch._foreach_add(
                _times(_fp32(momentum_buffers), momentum), _times(g, 1 - dampening)
            )
        d = torch._foreach_add(g, _times(new_bufs, momentum)) if nesterov else new_bufs
        _store(momentum_buffers, new_bufs, found_inf)
    _store(params, torch._foreach_sub(b, _times(d, lr)), found_inf)


def step_adam_(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, *, lr, beta1,
               beta2, eps, weight_decay, decoupled, amsgrad, maximize, centralize=None,
               backups=None, grad_scale=None, found_inf=None):
    if not params:
        return
    b = _fp32(backups if backups is not None else params)
    g = _effective_grads(grads, grad_scale, maximize)
    if weight_decay != 0:
        if decoupled:
            b = _times(b, 1 - lr * weight_decay)
        else:
            g = torch._foreach_add(g, _times(b, weight_decay))
    g = _maybe_centralized(g, centralize)

    m = _fp32(exp_avgs)
    m = torch._foreach_add(m, _times(torch._foreach_sub(g, m), 1 - beta1))
    v = torch._foreach_add(_times(_fp32(exp_avg_sqs), beta2),
                           _times(torch._foreach_mul(g, g), 1 - beta2))
    new_steps = torch._foreach_add(steps, 1)
    # Bias corrections in float64, as torch.optim computes them on the host: in fp32,
    # 1 - 0.999 ** 1 is already off by 1e-5 relative.
    bias1 = [(1 - torch.pow(beta1, s.double())).float() for s in new_steps]
    bias2_sqrt = [torch.sqrt(1 - torch.pow(beta2, s.double())).float() for s in new_steps]

    second = v
    if amsgrad:
        second = torch._foreach_maximum(_fp32(max_exp_avg_sqs), v)
        _store(max_exp_avg_sqs, second, found_inf)
    # The same order of operations as torch.optim.Adam, so trajectories agree to rounding.
    denom = torch._foreach_add(torch._foreach_div(torch._foreach_sqrt(second), bias2_sqrt), eps)
    step_size = [lr / bc for bc in bias1]
    new_p = torch._foreach_sub(b, torch._foreach_mul(torch._foreach_div(m, denom), step_size))

    _store(exp_avgs, m, found_inf)
    _store(exp_avg_sqs, v, found_inf)
    _store(steps, new_steps, found_inf)
    _store(params, new_p, found_inf)
