"""step_adam_: torch.optim.Adam / AdamW with GC (after L2 decay, before the moments), GAM's
combined direction, AMP unscale, found_inf skip and the SAM restore folded in, in one pass;
then one tiny launch that advances every tensor's step counter (a separate launch because the
items of one tensor must all read the step before any of them advances it)."""
from __future__ import annotations

import numpy as np
import triton
import triton.language as tl

from .common import (G2, GRAD_SCALE, L2, MAXIMIZE, flags, item_header, load, scalar, scalar_args, skipped, slot_ptr,
                     store, update_direction, walk)

DECOUPLED, AMSGRAD, BACKUP = (tl.constexpr(1 << i) for i in range(4, 7))
STEPS_BLOCK = 1024


def _f64_parts(x: float):
    """(hi, lo) fp32 numbers whose fp64 sum is x to ~48 bits: how an exact beta reaches the
    kernel, whose float arguments are fp32."""
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
def _direction(k, idx, mask, args, FLAGS: tl.constexpr):
    (p_ptr, g_ptr, g2_ptr, m_ptr, v_ptr, vmax_ptr, b_ptr, g_coef, g2_coef, grad_scale, weight_decay,
     step_size, bias2_sqrt, decay, one_minus_beta1, beta2, one_minus_beta2, eps, skip) = args
    return update_direction(g_ptr, g2_ptr, b_ptr, idx, mask, g_coef, g2_coef, grad_scale, weight_decay, FLAGS)


@triton.jit
def _update(g, k, idx, mask, args, FLAGS: tl.constexpr):
    (p_ptr, g_ptr, g2_ptr, m_ptr, v_ptr, vmax_ptr, b_ptr, g_coef, g2_coef, grad_scale, weight_decay,
     step_size, bias2_sqrt, decay, one_minus_beta1, beta2, one_minus_beta2, eps, skip) = args
    b = load(b_ptr + idx, mask)  # before any store, so the compiler reuses the direction's load
    m = load(m_ptr + idx, mask)
    m = m + (g - m) * one_minus_beta1
    v = load(v_ptr + idx, mask) * beta2 + (g * g) * one_minus_beta2
    second = v
    if AMSGRAD & FLAGS:
        second = tl.maximum(load(vmax_ptr + idx, mask), v, propagate_nan=tl.PropagateNan.ALL)
    decayed = b
    if DECOUPLED & FLAGS:
        decayed = b * decay
    new = decayed - tl.div_rn(m, tl.div_rn(tl.sqrt_rn(second), bias2_sqrt) + eps) * step_size
    if not skip:
        store(m_ptr + idx, m, mask)
        store(v_ptr + idx, v, mask)
        if AMSGRAD & FLAGS:
            store(vmax_ptr + idx, second, mask)
        store(p_ptr + idx, new, mask)
    elif BACKUP & FLAGS:  # a skipped step still restores
        store(p_ptr + idx, b, mask)
    return 0.0, 0.0


@triton.jit
def _adam_kernel(items, stride, p0, p_off, g0, g_off, g2_0, g2_off, m0, m_off, v0, v_off, vmax0, vmax_off,
                 b0, b_off, steps0, steps_off, g_coef, g_coef_ptr, g2_coef, g2_coef_ptr, lr, lr_ptr,
                 grad_scale, found_inf, beta1_hi, beta1_lo, beta2_hi, beta2_lo, one_minus_beta1, beta2,
                 one_minus_beta2, eps, weight_decay, decay,
                 FLAGS: tl.constexpr, ALIGNED: tl.constexpr, CLASSES: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    t, start, end, row, cls = item_header(items, stride, pid)
    lr_value = scalar(lr, lr_ptr)
    if lr_ptr is not None:  # else the host computed it in fp64, as the reference does
        decay = 1.0 - lr_value * weight_decay
    # Bias corrections in fp64, rounded to fp32 (as torch.optim computes them on the host).
    n = tl.load(steps0 + tl.load(steps_off + t)).to(tl.int32) + 1
    beta1_f64 = tl.cast(beta1_hi, tl.float64) + tl.cast(beta1_lo, tl.float64)
    beta2_f64 = tl.cast(beta2_hi, tl.float64) + tl.cast(beta2_lo, tl.float64)
    bias1 = (1.0 - _pow_f64(beta1_f64, n)).to(tl.float32)
    bias2_sqrt = tl.sqrt(1.0 - _pow_f64(beta2_f64, n)).to(tl.float32)
    args = (slot_ptr(p0, p_off, t, ALIGNED), slot_ptr(g0, g_off, t, ALIGNED), slot_ptr(g2_0, g2_off, t, ALIGNED),
            slot_ptr(m0, m_off, t, ALIGNED), slot_ptr(v0, v_off, t, ALIGNED), slot_ptr(vmax0, vmax_off, t, ALIGNED),
            slot_ptr(b0, b_off, t, ALIGNED), scalar(g_coef, g_coef_ptr), scalar(g2_coef, g2_coef_ptr),
            scalar(1.0, grad_scale), weight_decay, tl.div_rn(lr_value, bias1), bias2_sqrt, decay,
            one_minus_beta1, beta2, one_minus_beta2, eps, skipped(found_inf))
    walk(start, start, end, row, cls, _direction, _update, args, FLAGS, ALIGNED, CLASSES, BLOCK)


@triton.jit
def _advance_steps_kernel(steps0, steps_off, n, found_inf, BLOCK: tl.constexpr):
    if not skipped(found_inf):
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = i < n
        at = steps0 + tl.load(steps_off + i, mask=mask, other=0)
        tl.store(at, tl.load(at, mask=mask, other=0.0) + 1.0, mask=mask)


def step_adam_(t, p, g, m, v, vmax, steps, *, lr, beta1, beta2, eps, weight_decay, decoupled, amsgrad,
               maximize, centralize=False, backup=None, g2=None, g_coef=1.0, g2_coef=1.0, grad_scale=None,
               found_inf=None):
    if not t.n:
        return
    items = t.centralized if centralize else t.plain
    ps = t.slot(p)
    slots = [ps, t.slot(g)] + [t.slot(name) if name is not None else ps
                               for name in (g2, m, v, vmax if amsgrad else None, backup)]
    step_slot = t.slot(steps)
    lr_factor, lr_ptr = scalar_args(lr)
    decay = float(1 - lr_factor * weight_decay) if lr_ptr is None else 1.0  # else made on the device
    switches = flags((G2, g2 is not None), (GRAD_SCALE, grad_scale is not None), (MAXIMIZE, maximize),
                     (L2, weight_decay != 0 and not decoupled), (DECOUPLED, decoupled and weight_decay != 0),
                     (AMSGRAD, amsgrad), (BACKUP, backup is not None))
    with t.launching():
        if items.count:
            _adam_kernel[(items.count,)](
                items.table, items.stride, *[x for s in slots for x in (s.base, s.offsets)],
                step_slot.base, step_slot.offsets, *scalar_args(g_coef), *scalar_args(g2_coef), lr_factor, lr_ptr,
                grad_scale, found_inf, *_f64_parts(beta1), *_f64_parts(beta2), float(1 - beta1), float(beta2),
                float(1 - beta2), float(eps), float(weight_decay), decay,
                FLAGS=switches, ALIGNED=all(s.aligned for s in slots), CLASSES=items.classes, BLOCK=t.block,
                num_warps=t.num_warps,
            )
        _advance_steps_kernel[(triton.cdiv(t.n, STEPS_BLOCK),)](
            step_slot.base, step_slot.offsets, t.n, found_inf, BLOCK=STEPS_BLOCK, num_warps=4,
        )
