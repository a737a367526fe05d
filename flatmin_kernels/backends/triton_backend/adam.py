"""step_adam_: torch.optim.Adam / AdamW with GC (after L2 decay, before the moments), AMP
unscale, found_inf skip and the SAM restore folded in, in one pass; then one tiny launch that
advances every tensor's step counter (a separate launch because the items of one tensor must
all read the step before any of them advances it)."""
from __future__ import annotations

import triton
import triton.language as tl

from .common import (
    BLOCK,
    NUM_WARPS,
    item_header,
    load_direction,
    load_scalar,
    row_means,
    scalar_arg,
    store_end,
    tile,
)
from .tables import layout


def _f64_parts(x: float):
    """(hi, lo) fp32 numbers whose fp64 sum is x to ~48 bits: how an exact beta reaches the
    kernel, whose float arguments are fp32."""
    import numpy as np

    hi = float(np.float32(x))
    return hi, float(np.float32(x - hi))


@triton.jit
def _pow_f64(base, n):
    """base ** n for an fp64 base and an integer n >= 0, by squaring (fp64 multiplies only)."""
    result = base * 0.0 + 1.0
    while n > 0:
        result = tl.where((n & 1) == 1, result * base, result)
        base = base * base
        n = n >> 1
    return result


@triton.jit
def _adam_kernel(items, n_items, p0, p_off, g0, g_off, m0, m_off, v0, v_off, vmax0, vmax_off,
                 b0, b_off, steps0, steps_off,
                 lr, beta1_hi, beta1_lo, beta2_hi, beta2_lo, one_minus_beta1, beta2,
                 one_minus_beta2, eps, weight_decay, decay, grad_scale, found_inf,
                 LR_PTR: tl.constexpr, L2: tl.constexpr, DECOUPLED: tl.constexpr,
                 AMSGRAD: tl.constexpr, MAXIMIZE: tl.constexpr, HAS_GRAD_SCALE: tl.constexpr,
                 HAS_FOUND_INF: tl.constexpr, HAS_GC: tl.constexpr,
                 RB: tl.constexpr, CB: tl.constexpr):
    pid = tl.program_id(0)
    t, start, end, row, gc = item_header(items, n_items, pid)
    p_ptr = p0 + tl.load(p_off + t)
    g_ptr = g0 + tl.load(g_off + t)
    m_ptr = m0 + tl.load(m_off + t)
    v_ptr = v0 + tl.load(v_off + t)
    vmax_ptr = vmax0 + tl.load(vmax_off + t)
    b_ptr = b0 + tl.load(b_off + t)  # the backup, or p itself
    write_end = store_end(end, found_inf, HAS_FOUND_INF)
    lr_value = load_scalar(lr, LR_PTR)
    if DECOUPLED:
        if LR_PTR:
            decay = 1.0 - lr_value * weight_decay
    # Bias corrections in fp64, rounded to fp32 (as torch.optim computes them on the host).
    n = tl.load(steps0 + tl.load(steps_off + t)).to(tl.int32) + 1
    b1 = tl.cast(beta1_hi, tl.float64) + tl.cast(beta1_lo, tl.float64)
    b2 = tl.cast(beta2_hi, tl.float64) + tl.cast(beta2_lo, tl.float64)
    bias1 = (1.0 - _pow_f64(b1, n)).to(tl.float32)
    bias2_sqrt = tl.sqrt(1.0 - _pow_f64(b2, n)).to(tl.float32)
    step_size = tl.div_rn(lr_value, bias1)
    for r0 in range(start, end, row * RB):
        mean = tl.zeros([RB], tl.float32)
        if HAS_GC:
            if gc != 0:
                mean = row_means(g_ptr, b_ptr, r0, row, end, grad_scale, weight_decay,
                                 HAS_GRAD_SCALE, MAXIMIZE, L2, RB, CB)
        for c in range(0, row, CB):
            idx, mask = tile(r0, row, end, c, RB, CB)
            smask = mask & (idx < write_end)
            g = load_direction(g_ptr, b_ptr, idx, mask, grad_scale, weight_decay,
                                HAS_GRAD_SCALE, MAXIMIZE, L2) - mean[:, None]
            m = tl.load(m_ptr + idx, mask=mask, other=0.0).to(tl.float32)
            m = m + (g - m) * one_minus_beta1
            v = tl.load(v_ptr + idx, mask=mask, other=0.0).to(tl.float32)
            v = v * beta2 + (g * g) * one_minus_beta2
            tl.store(m_ptr + idx, m, mask=smask)
            tl.store(v_ptr + idx, v, mask=smask)
            second = v
            if AMSGRAD:
                second = tl.maximum(tl.load(vmax_ptr + idx, mask=mask, other=0.0).to(tl.float32), v)
                tl.store(vmax_ptr + idx, second, mask=smask)
            denom = tl.div_rn(tl.sqrt_rn(second), bias2_sqrt) + eps
            b = tl.load(b_ptr + idx, mask=mask, other=0.0).to(tl.float32)
            if DECOUPLED:
                b = b * decay
            tl.store(p_ptr + idx, b - tl.div_rn(m, denom) * step_size, mask=smask)


@triton.jit
def _advance_steps_kernel(steps0, steps_off, n, found_inf, HAS_FOUND_INF: tl.constexpr,
                          BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = i < n
    at = steps0 + tl.load(steps_off + i, mask=mask, other=0)
    step = tl.load(at, mask=mask, other=0.0)
    tl.store(at, step + 1.0, mask=mask & (i < store_end(n, found_inf, HAS_FOUND_INF)))


def step_adam_(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, *, lr, beta1,
               beta2, eps, weight_decay, decoupled, amsgrad, maximize, centralize=None,
               backups=None, grad_scale=None, found_inf=None):
    if not params:
        return
    lists = [params, grads, exp_avgs, exp_avg_sqs, steps]
    names = ["params", "grads", "exp_avgs", "exp_avg_sqs", "steps"]
    if amsgrad:
        lists.append(max_exp_avg_sqs)
        names.append("max_exp_avg_sqs")
    if backups is not None:
        lists.append(backups)
        names.append("backups")
    lay = layout(lists, names=names, centralize=centralize)
    vmax_k = 5 if amsgrad else 3
    b_k = len(lists) - 1 if backups is not None else 0
    lr_arg, lr_ptr = scalar_arg(lr)
    if lay.n_items:
        decoupled_wd = decoupled and weight_decay != 0
        _adam_kernel[(lay.n_items,)](
            lay.items, lay.n_items, lay.base(0, params), lay.offsets(0), lay.base(1, grads),
            lay.offsets(1), lay.base(2, exp_avgs), lay.offsets(2), lay.base(3, exp_avg_sqs),
            lay.offsets(3), lay.base(vmax_k, lists[vmax_k]), lay.offsets(vmax_k),
            lay.base(b_k, lists[b_k]), lay.offsets(b_k), lay.base(4, steps), lay.offsets(4),
            lr_arg, *_f64_parts(beta1), *_f64_parts(beta2), float(1 - beta1), float(beta2),
            float(1 - beta2), float(eps), float(weight_decay),
            float(1 - lr * weight_decay) if not lr_ptr else 1.0, grad_scale, found_inf,
            LR_PTR=lr_ptr, L2=weight_decay != 0 and not decoupled, DECOUPLED=decoupled_wd,
            AMSGRAD=bool(amsgrad), MAXIMIZE=bool(maximize), HAS_GRAD_SCALE=grad_scale is not None,
            HAS_FOUND_INF=found_inf is not None, HAS_GC=lay.has_gc,
            RB=lay.rb, CB=lay.cb, num_warps=NUM_WARPS,
        )
    _advance_steps_kernel[(triton.cdiv(len(steps), BLOCK),)](
        lay.base(4, steps), lay.offsets(4), len(steps), found_inf,
        HAS_FOUND_INF=found_inf is not None, BLOCK=BLOCK,
    )
