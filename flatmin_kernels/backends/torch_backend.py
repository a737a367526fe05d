"""The torch reference backend: every op of the contract in plain torch and ``torch._foreach_*``.

It runs on any device and any strided real floating tensor (fp64 computed in fp64, views with
gaps and meta tensors included), never synchronises with the host, and is the oracle the fused
backends are tested against, so it is written to be obviously correct first: inputs are
promoted to the compute dtype, new values are computed out of place and stored once at the end.
See :mod:`flatmin_kernels.backends.contract` for the meaning of every argument.
"""
from __future__ import annotations

import math

import torch

from .contract import InvNorm, Ratio, StaleTable, axpby_reads_y

name = "torch"


def available() -> tuple[bool, str]:
    return True, "plain torch; always available"


def supports(device) -> bool:
    return True


def serves(tensor: torch.Tensor, gc: bool = False) -> bool:
    """Every strided real floating tensor, whatever its layout or device."""
    return tensor.layout == torch.strided and tensor.is_floating_point()


# ----------------------------------------------------------------------------- tables


class Table:
    """One bucket: the tensors, their GC flags and noise offsets, and named tensor lists.

    Lists are kept as tensor objects (so the parameters are always read where they live now);
    the gradient slots are read from ``tensor.grad`` at every op, no reference kept.
    """

    def __init__(self, tensors, *, gc_rows=None, offsets=None):
        self.tensors = list(tensors)
        devices = {t.device for t in self.tensors}
        if len(devices) > 1:
            raise ValueError(f"a table's tensors must share one device, got {sorted(map(str, devices))}")
        self.device = devices.pop() if devices else torch.device("cpu")
        n = len(self.tensors)
        self.gc_rows = [bool(f) for f in gc_rows] if gc_rows is not None else [False] * n
        if len(self.gc_rows) != n:
            raise ValueError(f"gc_rows has {len(self.gc_rows)} flags for {n} tensors")
        self.offsets = [int(o) for o in offsets] if offsets is not None else None
        self._lists = {"param": self.tensors}
        self._grad_slots = set()
        self._layout = [(t.dtype, t.device, t.numel()) for t in self.tensors]

    def bind(self, name, tensors):
        tensors = list(tensors)
        _check_list(self, name, tensors)
        self._lists[name] = tensors
        self._grad_slots.discard(name)  # rebinding replaces a slot, a grad slot included

    def bind_scalars(self, name, tensors):
        tensors = list(tensors)
        if len(tensors) != len(self.tensors):
            raise ValueError(f"{name} has {len(tensors)} tensors for {len(self.tensors)}")
        for i, s in enumerate(tensors):
            if s.numel() != 1 or s.dtype != torch.float32 or s.device != self.device:
                raise ValueError(f"{name}[{i}] must be a one-element float32 tensor on {self.device}")
        self._lists[name] = tensors

    def bind_grads(self, name="grad"):
        self._grad_slots.add(name)
        self._lists.pop(name, None)

    def refresh(self, grads=True):
        for i, t in enumerate(self.tensors):
            if (t.dtype, t.device, t.numel()) != self._layout[i]:
                raise StaleTable(f"tensor {i} changed to {t.numel()} elements of {t.dtype} on {t.device}")
        for name in (self._grad_slots if grads else ()):
            _check_list(self, name, self._grads(), stale=True)

    def _grads(self):
        return [t.grad for t in self.tensors]

    def get(self, name):
        """The current tensors of slot ``name`` (gradients read now)."""
        if name in self._grad_slots:
            return self._grads()
        return self._lists[name]


def _check_list(table, name, tensors, stale=False):
    error = StaleTable if stale else ValueError
    if len(tensors) != len(table.tensors):
        raise error(f"{name} has {len(tensors)} tensors for {len(table.tensors)}")
    dtypes = set()
    for i, (t, ref) in enumerate(zip(tensors, table.tensors)):
        if t is None:
            raise error(f"{name}[{i}] is None (parameter {i} has no gradient)")
        if t.device != table.device or t.numel() != ref.numel():
            raise error(f"{name}[{i}] ({t.numel()} elements on {t.device}) does not match tensor {i} "
                        f"({ref.numel()} elements on {table.device})")
        dtypes.add(t.dtype)
    if len(dtypes) > 1:
        raise error(f"{name} mixes dtypes {sorted(map(str, dtypes))}; a slot has one dtype")


# ----------------------------------------------------------------------------- helpers


def _opmath(dtype):
    """The compute dtype: fp64 for fp64 storage, fp32 for everything narrower."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _vals(tensors, like=None):
    """Values for reading, in the compute dtype of ``like`` (or their own): no copy when already there."""
    return [t.to(_opmath((like or tensors)[i].dtype)) for i, t in enumerate(tensors)]


def _centralized(x: torch.Tensor) -> torch.Tensor:
    """x minus its mean over every dimension but dim 0 (a new tensor)."""
    if x.numel() == 0:
        return x.clone()
    rows = x.reshape(x.shape[0] if x.dim() else 1, -1)  # a 0-d tensor is one row of one element
    return (rows - rows.mean(dim=1, keepdim=True)).reshape(x.shape)


def _maybe_centralized(xs, table, centralize):
    if not centralize:
        return xs
    return [_centralized(x) if flag else x for x, flag in zip(xs, table.gc_rows)]


def scalar(value):
    """A contract scalar as a python number or a 0-d tensor (a pair is the product)."""
    if isinstance(value, tuple):
        number, tensor = value
        return number * tensor.reshape(())
    if torch.is_tensor(value):
        return value.reshape(())
    return value


def _skip(found_inf):
    return None if found_inf is None else scalar(found_inf) > 0


def _store(dst, new, skip=None, keep=None):
    """Copy ``new`` into ``dst`` (rounding to dst's dtype); where ``skip`` holds, store ``keep``
    instead (default: dst's own value, i.e. write nothing)."""
    if not dst:
        return
    if skip is not None:
        keep = keep if keep is not None else _vals(dst)
        new = [torch.where(skip, k, n) for k, n in zip(keep, new)]
    torch._foreach_copy_(dst, new)


def _accumulate(out, index, total, accumulate):
    slot = out.select(0, index)
    slot.copy_(slot + total if accumulate else total)


def _total(values):
    """Sum of per-tensor totals in fp32, in list order (deterministic)."""
    if not values:
        return torch.zeros((), dtype=torch.float32)
    return torch.stack([v.to(torch.float32) for v in values]).sum()


def _nonfinite(*values):
    ok = torch.isfinite(values[0])
    for v in values[1:]:
        ok = ok & torch.isfinite(v)
    return (~ok).float()


def _set_flag(out, index, flag, accumulate):
    slot = out.select(0, index)
    slot.copy_(torch.maximum(slot, flag) if accumulate else flag)


def _epilogue(out, index, epilogue):
    if epilogue is None:
        return
    s = out[index]
    if isinstance(epilogue, InvNorm):
        out.select(0, epilogue.inv).copy_(1.0 / (s.sqrt() + epilogue.eps))
        _set_flag(out, epilogue.inf, _nonfinite(s), epilogue.inf_accumulate)
    elif isinstance(epilogue, Ratio):
        q = out[index + 1]
        out.select(0, epilogue.coef).copy_(1.0 + epilogue.gamma * q / (s + epilogue.eps))
        _set_flag(out, epilogue.inf, _nonfinite(s, q), epilogue.inf_accumulate)
    else:
        raise TypeError(f"unknown epilogue {epilogue!r}")


def _reduce_into(out, index, accumulate, totals, epilogue=None):
    """Accumulate one total (or, for a pair, two consecutive ones) into out, then the epilogue."""
    for k, values in enumerate(totals):
        _accumulate(out, index + k, _total(values).to(out.device), accumulate)
    _epilogue(out, index, epilogue)


def _sq_sums(xs):
    return [torch.dot(x.reshape(-1), x.reshape(-1)) for x in xs]


# ----------------------------------------------------------------------------- reductions


def sumsq(t, x, *, weights=None, centralize=False, out, index=0, accumulate=False, epilogue=None):
    xs = _maybe_centralized(_vals(t.get(x)), t, centralize)
    if weights is not None:
        xs = torch._foreach_mul(xs, torch._foreach_abs(_vals(t.get(weights), like=xs)))
    _reduce_into(out, index, accumulate, [_sq_sums(xs)], epilogue)


def dot(t, x, y, *, out, index=0, accumulate=False):
    xs = _vals(t.get(x))
    ys = _vals(t.get(y), like=xs)
    _reduce_into(out, index, accumulate, [[torch.dot(a.reshape(-1), b.reshape(-1)) for a, b in zip(xs, ys)]])


# ----------------------------------------------------------------------------- element-wise


def centralize_(t, x):
    for tensor, flag in zip(t.get(x), t.gc_rows):
        if flag and tensor.numel():
            tensor.copy_(_centralized(tensor.to(_opmath(tensor.dtype))))


def axpby_(t, y, x, a, b, *, reduce=None, z=None, weights=None, out=None, index=0, accumulate=False,
           epilogue=None):
    ys = t.get(y)
    xs = _vals(t.get(x), like=ys)
    a, b = scalar(a), scalar(b)
    bx = torch._foreach_mul(xs, b)
    new = bx if not axpby_reads_y(a) else torch._foreach_add(torch._foreach_mul(_vals(ys), a), bx)
    if reduce is not None:
        zs = None if z is None else _vals(t.get(z), like=ys)
        if reduce == "x":
            v = xs if zs is None else torch._foreach_sub(xs, zs)
            if weights is not None:
                v = torch._foreach_mul(v, torch._foreach_abs(_vals(t.get(weights), like=ys)))
            totals = [_sq_sums(v)]
        elif reduce == "y":
            totals = [_sq_sums(new)]
            if zs is not None:
                totals.append([torch.dot(n.reshape(-1), w.reshape(-1)) for n, w in zip(new, zs)])
        else:
            raise ValueError(f"reduce must be None, 'x' or 'y', got {reduce!r}")
        _reduce_into(out, index, accumulate, totals, epilogue)
    _store(ys, new)


def perturb_(t, p, d, scale, *, minus=None, base=None, save_to=None, copy_d_to=None, centralize=False,
             adaptive=False, found_inf=None):
    params = t.get(p)
    if not params:
        return
    b = _vals(t.get(base) if base is not None else params, like=params)
    ds = t.get(d)
    dv = _vals(ds, like=params)
    if minus is not None:
        dv = torch._foreach_sub(dv, _vals(t.get(minus), like=params))
    dv = _maybe_centralized(dv, t, centralize)
    if adaptive:
        dv = torch._foreach_mul(dv, torch._foreach_mul(b, b))
    new = torch._foreach_add(b, torch._foreach_mul(dv, scalar(scale)))
    if save_to is not None:
        torch._foreach_copy_(t.get(save_to), params)
    if copy_d_to is not None:
        torch._foreach_copy_(t.get(copy_d_to), ds)
    _store(params, new, _skip(found_inf))


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


def _philox_words(c: torch.Tensor, seed: int, step, sample: int):
    """Philox4x32-10 of counter (c_lo, c_hi, step, sample) under key (seed_lo, seed_hi).

    ``step`` may be a python int or a one-element integer tensor (read on the device)."""
    c0, c1 = c & _MASK, c >> 32
    if torch.is_tensor(step):
        c2 = (step.reshape(()).to(torch.int64) & _MASK).expand_as(c)
    else:
        c2 = torch.full_like(c, step & _MASK)
    c3 = torch.full_like(c, sample & _MASK)
    k0, k1 = seed & _MASK, (seed >> 32) & _MASK
    for _ in range(10):
        hi0, lo0 = _mul_hi_lo(c0, _MULTIPLIERS[0])
        hi1, lo1 = _mul_hi_lo(c2, _MULTIPLIERS[1])
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + _WEYL[0]) & _MASK, (k1 + _WEYL[1]) & _MASK
    return c0, c1, c2, c3


def check_seed(seed: int):
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")


def philox(n, *, seed, step, sample, offset, device="cpu"):
    check_seed(seed)
    c = torch.arange(offset, offset + n, dtype=torch.int64, device=device)
    return torch.stack(_philox_words(c, seed, step, sample), dim=1)


def _uniform(x: torch.Tensor) -> torch.Tensor:
    return ((x >> 8) | 1).to(torch.float32) * 2.0**-24


def normals_from_words(words: torch.Tensor) -> torch.Tensor:
    """The four normals of each row of Philox words (shape (m, 4) -> (m, 4)), in fp32."""
    two_pi = torch.tensor(2 * math.pi, dtype=torch.float32)
    r_a = torch.sqrt(-2.0 * torch.log(_uniform(words[:, 0])))
    th_a = two_pi * _uniform(words[:, 1])
    r_b = torch.sqrt(-2.0 * torch.log(_uniform(words[:, 2])))
    th_b = two_pi * _uniform(words[:, 3])
    return torch.stack([r_a * torch.cos(th_a), r_a * torch.sin(th_a), r_b * torch.cos(th_b), r_b * torch.sin(th_b)], 1)


def normals(n, *, seed, step, sample, offset, device="cpu"):
    """The contract's standard normals N(j) for j = offset .. offset + n - 1 (fp32)."""
    check_seed(seed)
    if n == 0:
        return torch.zeros(0, dtype=torch.float32, device=device)
    first, last = offset >> 2, (offset + n - 1) >> 2
    c = torch.arange(first, last + 1, dtype=torch.int64, device=device)
    flat = normals_from_words(torch.stack(_philox_words(c, seed, step, sample), dim=1)).reshape(-1)
    lead = offset & 3
    return flat[lead: lead + n]


def noise_(t, p, coef, *, seed, step, sample, base=None, found_inf=None):
    check_seed(seed)
    params = t.get(p)
    if not params:
        return
    if t.offsets is None:
        raise ValueError("noise_ needs a table built with offsets")
    b = _vals(t.get(base) if base is not None else params, like=params)
    coef = scalar(coef)
    new = [x + coef * normals(q.numel(), seed=seed, step=step, sample=sample, offset=off,
                              device=q.device).reshape(q.shape).to(x.dtype)
           for x, q, off in zip(b, params, t.offsets)]
    _store(params, new, _skip(found_inf))


# ----------------------------------------------------------------------------- base updates


def _direction(t, params, g, g2, g_coef, g2_coef, grad_scale, maximize):
    """c1 * g (+ c2 * g2), unscaled and signed: the gradient the base update sees."""
    gv = _vals(t.get(g), like=params)
    if isinstance(g_coef, (tuple, torch.Tensor)) or g_coef != 1.0:
        gv = torch._foreach_mul(gv, scalar(g_coef))
    if g2 is not None:
        gv = torch._foreach_add(gv, torch._foreach_mul(_vals(t.get(g2), like=params), scalar(g2_coef)))
    if grad_scale is not None:
        gv = torch._foreach_div(gv, scalar(grad_scale))
    if maximize:
        gv = torch._foreach_neg(gv)
    return gv


def step_sgd_(t, p, g, buf, *, lr, weight_decay, momentum, dampening, nesterov, maximize,
              init_buffers=False, centralize=False, backup=None, g2=None, g_coef=1.0, g2_coef=1.0,
              grad_scale=None, found_inf=None):
    params = t.get(p)
    if not params:
        return
    b = _vals(t.get(backup) if backup is not None else params, like=params)
    gv = _direction(t, params, g, g2, g_coef, g2_coef, grad_scale, maximize)
    if weight_decay != 0:
        gv = torch._foreach_add(gv, torch._foreach_mul(b, weight_decay))
    gv = _maybe_centralized(gv, t, centralize)
    skip = _skip(found_inf)
    d = gv
    if momentum != 0:
        bufs = t.get(buf)
        if init_buffers:
            new_bufs = [x.clone() for x in gv]
        else:
            new_bufs = torch._foreach_add(torch._foreach_mul(_vals(bufs, like=params), momentum),
                                          torch._foreach_mul(gv, 1 - dampening))
        d = torch._foreach_add(gv, torch._foreach_mul(new_bufs, momentum)) if nesterov else new_bufs
        _store(bufs, new_bufs, skip)
    _store(params, torch._foreach_sub(b, torch._foreach_mul(d, scalar(lr))), skip, keep=b)


def step_adam_(t, p, g, m, v, vmax, steps, *, lr, beta1, beta2, eps, weight_decay, decoupled, amsgrad,
               maximize, centralize=False, backup=None, g2=None, g_coef=1.0, g2_coef=1.0, grad_scale=None,
               found_inf=None):
    params = t.get(p)
    if not params:
        return
    lr = scalar(lr)
    b = _vals(t.get(backup) if backup is not None else params, like=params)
    keep = b
    gv = _direction(t, params, g, g2, g_coef, g2_coef, grad_scale, maximize)
    if weight_decay != 0:
        if decoupled:
            b = torch._foreach_mul(b, 1 - lr * weight_decay)
        else:
            gv = torch._foreach_add(gv, torch._foreach_mul(b, weight_decay))
    gv = _maybe_centralized(gv, t, centralize)

    exp_avgs, exp_avg_sqs, step_list = t.get(m), t.get(v), t.get(steps)
    mv = _vals(exp_avgs, like=params)
    mv = torch._foreach_add(mv, torch._foreach_mul(torch._foreach_sub(gv, mv), 1 - beta1))
    vv = torch._foreach_add(torch._foreach_mul(_vals(exp_avg_sqs, like=params), beta2),
                            torch._foreach_mul(torch._foreach_mul(gv, gv), 1 - beta2))
    new_steps = torch._foreach_add(step_list, 1)
    # Bias corrections in float64, as torch.optim computes them on the host: in fp32,
    # 1 - 0.999 ** 1 is already off by 1e-5 relative.
    bias1 = [(1 - torch.pow(beta1, s.double())).to(x.dtype) for s, x in zip(new_steps, gv)]
    bias2_sqrt = [torch.sqrt(1 - torch.pow(beta2, s.double())).to(x.dtype) for s, x in zip(new_steps, gv)]

    skip = _skip(found_inf)
    second = vv
    if amsgrad:
        second = torch._foreach_maximum(_vals(t.get(vmax), like=params), vv)
        _store(t.get(vmax), second, skip)
    # The same order of operations as torch.optim.Adam, so trajectories agree to rounding.
    denom = torch._foreach_add(torch._foreach_div(torch._foreach_sqrt(second), bias2_sqrt), eps)
    step_size = [lr / bc for bc in bias1]
    new_p = torch._foreach_sub(b, torch._foreach_mul(torch._foreach_div(mv, denom), step_size))

    _store(exp_avgs, mv, skip)
    _store(exp_avg_sqs, vv, skip)
    _store(step_list, new_steps, skip)
    _store(params, new_p, skip, keep=keep)
