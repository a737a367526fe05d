"""perturb_: p <- b + scale * C(d - minus) [* b**2 for ASAM], with the optional exact backup of
p and copy of d, in one pass (GC's row means of the direction come from the program that owns
the rows)."""
from __future__ import annotations

import triton
import triton.language as tl

from .common import flags, item_header, load, load_raw, scalar, scalar_args, skipped, slot_ptr, store, walk

MINUS, BASE, SAVE, COPY, ADAPTIVE = (tl.constexpr(1 << i) for i in range(5))


@triton.jit
def _direction(k, idx, mask, args, FLAGS: tl.constexpr):
    p_ptr, d_ptr, minus_ptr, b_ptr, save_ptr, copy_ptr, s, skip = args
    d = load(d_ptr + idx, mask)
    if MINUS & FLAGS:
        d = d - load(minus_ptr + idx, mask)
    return d


@triton.jit
def _perturb(d, k, idx, mask, args, FLAGS: tl.constexpr):
    p_ptr, d_ptr, minus_ptr, b_ptr, save_ptr, copy_ptr, s, skip = args
    if BASE & FLAGS:
        b = load(b_ptr + idx, mask)
    if (SAVE & FLAGS) or not (BASE & FLAGS):
        p = load_raw(p_ptr + idx, mask)
        if SAVE & FLAGS:  # bit-exact backup, written even when the step is skipped (as the reference does)
            store(save_ptr + idx, p, mask)
        if not (BASE & FLAGS):
            b = p.to(tl.float32)
    if COPY & FLAGS:
        store(copy_ptr + idx, load_raw(d_ptr + idx, mask), mask)
    if ADAPTIVE & FLAGS:
        d = d * (b * b)
    if not skip:
        store(p_ptr + idx, b + d * s, mask)
    return 0.0, 0.0


@triton.jit
def _perturb_kernel(items, stride, p0, p_off, d0, d_off, minus0, minus_off, b0, b_off, save0, save_off,
                    copy0, copy_off, scale, scale_ptr, found_inf,
                    FLAGS: tl.constexpr, ALIGNED: tl.constexpr, CLASSES: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    t, start, end, row, cls = item_header(items, stride, pid)
    args = (slot_ptr(p0, p_off, t, ALIGNED), slot_ptr(d0, d_off, t, ALIGNED), slot_ptr(minus0, minus_off, t, ALIGNED),
            slot_ptr(b0, b_off, t, ALIGNED), slot_ptr(save0, save_off, t, ALIGNED),
            slot_ptr(copy0, copy_off, t, ALIGNED), scalar(scale, scale_ptr), skipped(found_inf))
    walk(start, start, end, row, cls, _direction, _perturb, args, FLAGS, ALIGNED, CLASSES, BLOCK)


def perturb_(t, p, d, scale, *, minus=None, base=None, save_to=None, copy_d_to=None, centralize=False,
             adaptive=False, found_inf=None):
    items = t.centralized if centralize else t.plain
    if not items.count:
        return
    ps, ds = t.slot(p), t.slot(d)
    slots = [ps, ds] + [t.slot(name) if name is not None else ps for name in (minus, base, save_to, copy_d_to)]
    switches = flags((MINUS, minus is not None), (BASE, base is not None), (SAVE, save_to is not None),
                     (COPY, copy_d_to is not None), (ADAPTIVE, adaptive))
    with t.launching():
        _perturb_kernel[(items.count,)](
            items.table, items.stride, *[x for s in slots for x in (s.base, s.offsets)], *scalar_args(scale),
            found_inf, FLAGS=switches, ALIGNED=all(s.aligned for s in slots), CLASSES=items.classes,
            BLOCK=t.block, num_warps=t.num_warps,
        )
