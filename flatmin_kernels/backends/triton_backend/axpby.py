"""axpby_: y <- a * y + b * x, GAM's linear combinations, with its norms in the same pass
(``reduce="x"``: sum((|w| (x - z))^2); ``reduce="y"``: sum(y'^2) and, with z, sum(y' z)),
the sums finished by the reductions' second stage."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import flags, item_header, load, scalar, scalar_args, slot_ptr, store, walk
from ..contract import axpby_reads_y
from .reduce import finish

READ_Y, REDUCE_X, REDUCE_Y, HAS_Z, HAS_W = (tl.constexpr(1 << i) for i in range(5))


@triton.jit
def _read_x(k, idx, mask, args, FLAGS: tl.constexpr):
    y_ptr, x_ptr, z_ptr, w_ptr, a, b = args
    return load(x_ptr + idx, mask)


@triton.jit
def _combine(x, k, idx, mask, args, FLAGS: tl.constexpr):
    y_ptr, x_ptr, z_ptr, w_ptr, a, b = args
    new = x * b
    if READ_Y & FLAGS:  # a == 0 (a python number) must not read y: it may hold garbage
        new = load(y_ptr + idx, mask) * a + new
    store(y_ptr + idx, new, mask)
    sum1 = 0.0
    sum2 = 0.0
    if REDUCE_X & FLAGS:  # |w| (x - z)
        v = x
        if HAS_Z & FLAGS:
            v = v - load(z_ptr + idx, mask)
        if HAS_W & FLAGS:
            v = v * tl.abs(load(w_ptr + idx, mask))
        sum1 = v * v
    if REDUCE_Y & FLAGS:  # y', y' z
        if mask is not None:
            new = tl.where(mask, new, 0.0)
        sum1 = new * new
        if HAS_Z & FLAGS:
            sum2 = new * load(z_ptr + idx, mask)
    return sum1, sum2


@triton.jit
def _axpby_kernel(items, stride, y0, y_off, x0, x_off, z0, z_off, w0, w_off, a, a_ptr, b, b_ptr, partials,
                  capacity, FLAGS: tl.constexpr, ALIGNED: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    t, start, end, row, cls = item_header(items, stride, pid)
    args = (slot_ptr(y0, y_off, t, ALIGNED), slot_ptr(x0, x_off, t, ALIGNED), slot_ptr(z0, z_off, t, ALIGNED),
            slot_ptr(w0, w_off, t, ALIGNED), scalar(a, a_ptr), scalar(b, b_ptr))
    total1, total2 = walk(start, start, end, row, cls, _read_x, _combine, args, FLAGS, ALIGNED, 1, BLOCK)
    if (REDUCE_X | REDUCE_Y) & FLAGS:
        tl.store(partials + pid, total1)
        if HAS_Z & FLAGS:
            tl.store(partials + capacity + pid, total2)


def axpby_(t, y, x, a, b, *, reduce=None, z=None, weights=None, out=None, index=0, accumulate=False,
           epilogue=None):
    if reduce not in (None, "x", "y"):
        raise ValueError(f"reduce must be None, 'x' or 'y', got {reduce!r}")
    if reduce is not None and out is None:
        raise ValueError(f"axpby_ with reduce={reduce!r} needs out")
    ys, xs = t.slot(y), t.slot(x)
    has_z = z is not None and reduce is not None
    has_w = weights is not None and reduce == "x"
    zs = t.slot(z) if has_z else ys
    ws = t.slot(weights) if has_w else ys
    items = t.plain
    switches = flags((READ_Y, axpby_reads_y(a)), (REDUCE_X, reduce == "x"),
                     (REDUCE_Y, reduce == "y"), (HAS_Z, has_z), (HAS_W, has_w))
    with t.launching():
        if items.count:
            _axpby_kernel[(items.count,)](
                items.table, items.stride, ys.base, ys.offsets, xs.base, xs.offsets, zs.base, zs.offsets,
                ws.base, ws.offsets, *scalar_args(a), *scalar_args(b), t.partials, t.partials_capacity,
                FLAGS=switches, ALIGNED=all(s.aligned for s in (ys, xs, zs, ws)), BLOCK=t.block,
                num_warps=t.num_warps,
            )
        if reduce is not None:
            finish(t, items.count, out, index, accumulate, epilogue, two=reduce == "y" and has_z)
