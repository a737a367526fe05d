"""step_sgd_: torch.optim.SGD's update with GC (after L2 decay, before momentum), AMP unscale,
found_inf skip and the SAM restore folded in (read the backup instead of p), in one pass."""
from __future__ import annotations

import triton
import triton.language as tl

from .common import (
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


@triton.jit
def _sgd_kernel(items, n_items, p0, p_off, g0, g_off, m0, m_off, b0, b_off,
                lr, weight_decay, momentum, one_minus_dampening, grad_scale, found_inf,
                LR_PTR: tl.constexpr, HAS_WD: tl.constexpr, HAS_MOMENTUM: tl.constexpr,
                INIT_BUFFERS: tl.constexpr, NESTEROV: tl.constexpr, MAXIMIZE: tl.constexpr,
                HAS_GRAD_SCALE: tl.constexpr,
                HAS_FOUND_INF: tl.constexpr, HAS_GC: tl.constexpr,
                RB: tl.constexpr, CB: tl.constexpr):
    pid = tl.program_id(0)
    t, start, end, row, gc = item_header(items, n_items, pid)
    p_ptr = p0 + tl.load(p_off + t)
    g_ptr = g0 + tl.load(g_off + t)
    m_ptr = m0 + tl.load(m_off + t)
    b_ptr = b0 + tl.load(b_off + t)  # the backup, or p itself
    step_size = load_scalar(lr, LR_PTR)
    write_end = store_end(end, found_inf, HAS_FOUND_INF)
    for r0 in range(start, end, row * RB):
        mean = tl.zeros([RB], tl.float32)
        if HAS_GC:
            if gc != 0:
                mean = row_means(g_ptr, b_ptr, r0, row, end, grad_scale, weight_decay,
                                 HAS_GRAD_SCALE, MAXIMIZE, HAS_WD, RB, CB)
        for c in range(0, row, CB):
            idx, mask = tile(r0, row, end, c, RB, CB)
            g = load_direction(g_ptr, b_ptr, idx, mask, grad_scale, weight_decay,
                               HAS_GRAD_SCALE, MAXIMIZE, HAS_WD) - mean[:, None]
            d = g
            if HAS_MOMENTUM:
                if INIT_BUFFERS:
                    buf = g
                else:
                    old = tl.load(m_ptr + idx, mask=mask, other=0.0).to(tl.float32)
                    buf = old * momentum + g * one_minus_dampening
                tl.store(m_ptr + idx, buf, mask=mask & (idx < write_end))
                if NESTEROV:
                    d = g + buf * momentum
                else:
                    d = buf
            b = tl.load(b_ptr + idx, mask=mask, other=0.0).to(tl.float32)
            tl.store(p_ptr + idx, b - d * step_size, mask=mask & (idx < write_end))


def step_sgd_(params, grads, momentum_buffers, *, lr, weight_decay, momentum, dampening,
              nesterov, maximize, init_buffers=False, centralize=None, backups=None,
              grad_scale=None, found_inf=None):
    if not params:
        return
    has_momentum = momentum != 0
    lists = [params, grads]
    names = ["params", "grads"]
    if has_momentum:
        lists.append(momentum_buffers)
        names.append("momentum_buffers")
    if backups is not None:
        lists.append(backups)
        names.append("backups")
    lay = layout(lists, names=names, centralize=centralize)
    if lay.n_items == 0:
        return
    m_k = 2 if has_momentum else 0
    b_k = len(lists) - 1 if backups is not None else 0
    lr_arg, lr_ptr = scalar_arg(lr)
    _sgd_kernel[(lay.n_items,)](
        lay.items, lay.n_items, lay.base(0, params), lay.offsets(0), lay.base(1, grads), lay.offsets(1),
        lay.base(m_k, lists[m_k]), lay.offsets(m_k), lay.base(b_k, lists[b_k]), lay.offsets(b_k),
        lr_arg, float(weight_decay), float(momentum), float(1 - dampening), grad_scale, found_inf,
        LR_PTR=lr_ptr, HAS_WD=weight_decay != 0, HAS_MOMENTUM=has_momentum,
        INIT_BUFFERS=bool(init_buffers), NESTEROV=bool(nesterov), MAXIMIZE=bool(maximize),
        HAS_GRAD_SCALE=grad_scale is not None,
        HAS_FOUND_INF=found_inf is not None, HAS_GC=lay.has_gc,
        RB=lay.rb, CB=lay.cb, num_warps=NUM_WARPS,
    )
