"""perturb_: p <- b + scale * C(d) [* b**2 for ASAM], with the optional exact backup of p,
in one pass (the GC row means of d are taken by the program that owns the rows)."""
from __future__ import annotations

import triton
import triton.language as tl

from .common import NUM_WARPS, item_header, load_scalar, row_means, scalar_arg, store_end, tile
from .tables import layout


@triton.jit
def _perturb_kernel(items, n_items, p0, p_off, d0, d_off, b0, b_off, s0, s_off, scale, found_inf,
                    SCALE_PTR: tl.constexpr, HAS_BASE: tl.constexpr, HAS_SAVE: tl.constexpr,
                    ADAPTIVE: tl.constexpr, HAS_FOUND_INF: tl.constexpr, HAS_GC: tl.constexpr,
                    RB: tl.constexpr, CB: tl.constexpr):
    pid = tl.program_id(0)
    t, start, end, row, gc = item_header(items, n_items, pid)
    p_ptr = p0 + tl.load(p_off + t)
    d_ptr = d0 + tl.load(d_off + t)
    b_ptr = b0 + tl.load(b_off + t)
    s_ptr = s0 + tl.load(s_off + t)
    s = load_scalar(scale, SCALE_PTR)
    write_end = store_end(end, found_inf, HAS_FOUND_INF)
    for r0 in range(start, end, row * RB):
        mean = tl.zeros([RB], tl.float32)
        if HAS_GC:
            if gc != 0:
                mean = row_means(d_ptr, d_ptr, r0, row, end, 0, 0.0, False, False, False, RB, CB)
        for c in range(0, row, CB):
            idx, mask = tile(r0, row, end, c, RB, CB)
            p = tl.load(p_ptr + idx, mask=mask)
            if HAS_SAVE:  # bit-exact backup, as the reference does even when found_inf is set
                tl.store(s_ptr + idx, p, mask=mask)
            if HAS_BASE:
                b = tl.load(b_ptr + idx, mask=mask, other=0.0).to(tl.float32)
            else:
                b = p.to(tl.float32)
            d = tl.load(d_ptr + idx, mask=mask, other=0.0).to(tl.float32) - mean[:, None]
            if ADAPTIVE:
                d = d * (b * b)
            tl.store(p_ptr + idx, b + d * s, mask=mask & (idx < write_end))


def perturb_(params, directions, scale, *, save_to=None, base=None, centralize=None,
             adaptive=False, found_inf=None):
    if not params:
        return
    lists = [params, directions] + [ts for ts in (base, save_to) if ts is not None]
    names = ["params", "directions"] + [n for n, ts in (("base", base), ("save_to", save_to)) if ts is not None]
    lay = layout(lists, names=names, centralize=centralize)
    if lay.n_items == 0:
        return
    b_k = 2 if base is not None else 0
    s_k = len(lists) - 1 if save_to is not None else 0
    scale_arg, scale_ptr = scalar_arg(scale)
    _perturb_kernel[(lay.n_items,)](
        lay.items, lay.n_items,
        lay.base(0, params), lay.offsets(0), lay.base(1, directions), lay.offsets(1),
        lay.base(b_k, lists[b_k]), lay.offsets(b_k), lay.base(s_k, lists[s_k]), lay.offsets(s_k),
        scale_arg, found_inf,
        SCALE_PTR=scale_ptr, HAS_BASE=base is not None, HAS_SAVE=save_to is not None,
        ADAPTIVE=adaptive, HAS_FOUND_INF=found_inf is not None, HAS_GC=lay.has_gc,
        RB=lay.rb, CB=lay.cb, num_warps=NUM_WARPS,
    )
