"""step_sgd_: torch.optim.SGD's update with GC (after L2 decay, before momentum), GAM's combined
direction, AMP unscale, found_inf skip and the SAM restore folded in (read the backup instead
of p; a skipped step still restores), in one pass."""
from __future__ import annotations

import triton
import triton.language as tl

from .common import (G2, GRAD_SCALE, L2, MAXIMIZE, flags, item_header, load, scalar, scalar_args, skipped, slot_ptr,
                     store, update_direction, walk)

MOMENTUM, INIT_BUFFERS, NESTEROV, BACKUP = (tl.constexpr(1 << i) for i in range(4, 8))


@triton.jit
def _direction(k, idx, mask, args, FLAGS: tl.constexpr):
    p_ptr, g_ptr, g2_ptr, buf_ptr, b_ptr, g_coef, g2_coef, grad_scale, weight_decay, lr, momentum, damped, skip = args
    return update_direction(g_ptr, g2_ptr, b_ptr, idx, mask, g_coef, g2_coef, grad_scale, weight_decay, FLAGS)


@triton.jit
def _update(g, k, idx, mask, args, FLAGS: tl.constexpr):
    p_ptr, g_ptr, g2_ptr, buf_ptr, b_ptr, g_coef, g2_coef, grad_scale, weight_decay, lr, momentum, damped, skip = args
    b = load(b_ptr + idx, mask)  # before any store, so the compiler reuses the direction's load
    d = g
    if MOMENTUM & FLAGS:
        if INIT_BUFFERS & FLAGS:
            buf = g
        else:
            buf = load(buf_ptr + idx, mask) * momentum + g * damped
        if not skip:
            store(buf_ptr + idx, buf, mask)
        if NESTEROV & FLAGS:
            d = g + buf * momentum
        else:
            d = buf
    if not skip:
        store(p_ptr + idx, b - d * lr, mask)
    elif BACKUP & FLAGS:  # a skipped step still restores
        store(p_ptr + idx, b, mask)
    return 0.0, 0.0


@triton.jit
def _sgd_kernel(items, stride, p0, p_off, g0, g_off, g2_0, g2_off, buf0, buf_off, b0, b_off,
                g_coef, g_coef_ptr, g2_coef, g2_coef_ptr, lr, lr_ptr, grad_scale, found_inf,
                weight_decay, momentum, damped,
                FLAGS: tl.constexpr, ALIGNED: tl.constexpr, CLASSES: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    t, start, end, row, cls = item_header(items, stride, pid)
    args = (slot_ptr(p0, p_off, t, ALIGNED), slot_ptr(g0, g_off, t, ALIGNED), slot_ptr(g2_0, g2_off, t, ALIGNED),
            slot_ptr(buf0, buf_off, t, ALIGNED), slot_ptr(b0, b_off, t, ALIGNED),
            scalar(g_coef, g_coef_ptr), scalar(g2_coef, g2_coef_ptr), scalar(1.0, grad_scale), weight_decay,
            scalar(lr, lr_ptr), momentum, damped, skipped(found_inf))
    walk(start, start, end, row, cls, _direction, _update, args, FLAGS, ALIGNED, CLASSES, BLOCK)


def step_sgd_(t, p, g, buf, *, lr, weight_decay, momentum, dampening, nesterov, maximize,
              init_buffers=False, centralize=False, backup=None, g2=None, g_coef=1.0, g2_coef=1.0,
              grad_scale=None, found_inf=None):
    items = t.centralized if centralize else t.plain
    if not items.count:
        return
    has_momentum = momentum != 0
    ps = t.slot(p)
    slots = [ps, t.slot(g)] + [t.slot(name) if name is not None else ps
                               for name in (g2, buf if has_momentum else None, backup)]
    switches = flags((G2, g2 is not None), (GRAD_SCALE, grad_scale is not None), (MAXIMIZE, maximize),
                     (L2, weight_decay != 0), (MOMENTUM, has_momentum), (INIT_BUFFERS, init_buffers),
                     (NESTEROV, nesterov), (BACKUP, backup is not None))
    with t.launching():
        _sgd_kernel[(items.count,)](
            items.table, items.stride, *[x for s in slots for x in (s.base, s.offsets)],
            *scalar_args(g_coef), *scalar_args(g2_coef), *scalar_args(lr), grad_scale, found_inf,
            float(weight_decay), float(momentum), float(1 - dampening),
            FLAGS=switches, ALIGNED=all(s.aligned for s in slots), CLASSES=items.classes, BLOCK=t.block,
            num_warps=t.num_warps,
        )
