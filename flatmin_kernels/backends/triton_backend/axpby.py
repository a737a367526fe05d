"""axpby_: y <- a * y + b * x, GAM's linear combinations, with its norms in the same pass
(``reduce="x"``: sum((|w| (x - z))^2); ``reduce="y"``: sum(y'^2) and, with z, sum(y' z)),
the sums finished by the reductions' second stage."""
from __future__ import annotations

import triton
import triton.language as tl

from .common import item_header, load, scalar, scalar_args, slot_ptr, store, walk
from .reduce import finish

_NO_REDUCE, _REDUCE_X, _REDUCE_Y = 0, 1, 2


@triton.jit
def _read_x(k, idx, mask, args):
    return load(args[1] + idx, mask)


@triton.jit
def _combine(x, k, idx, mask, args):
    y_ptr, x_ptr, z_ptr, w_ptr, a, b, READ_Y, REDUCE, HAS_Z, HAS_W = args
    new = x * b
    if READ_Y:  # a == 0 (a python number) must not read y: it may hold garbage
        new = load(y_ptr + idx, mask) * a + new
    store(y_ptr + idx, new, mask)
    if REDUCE == 1:
        v = x
        if HAS_Z:
            v = v - load(z_ptr + idx, mask)
        if HAS_W:
            v = v * tl.abs(load(w_ptr + idx, mask))
        return v * v, 0.0
    elif REDUCE == 2:
        if mask is not None:
            new = tl.where(mask, new, 0.0)
        if HAS_Z:
            return new * new, new * load(z_ptr + idx, mask)
        else:
            return new * new, 0.0
    else:
        return 0.0, 0.0


@triton.jit
def _axpby_kernel(items, stride, y0, y_off, x0, x_off, z0, z_off, w0, w_off, a, a_ptr, b, b_ptr, partials,
                  capacity, READ_Y: tl.constexpr, REDUCE: tl.constexpr, HAS_Z: tl.constexpr,
                  HAS_W: tl.constexpr, ALIGNED: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    t, start, end, row, cls = item_header(items, stride, pid)
    args = (slot_ptr(y0, y_off, t, ALIGNED), slot_ptr(x0, x_off, t, ALIGNED), slot_ptr(z0, z_off, t, ALIGNED),
            slot_ptr(w0, w_off, t, ALIGNED), scalar(a, a_ptr), scalar(b, b_ptr), READ_Y, REDUCE, HAS_Z, HAS_W)
    total1, total2 = walk(start, start, end, row, cls, _read_x, _combine, args, ALIGNED, 1, BLOCK)
    if REDUCE != 0:
        tl.store(partials + pid, total1)
        if HAS_Z:
            tl.store(partials + capacity + pid, total2)


def axpby_(t, y, x, a, b, *, reduce=None, z=None, weights=None, out=None, index=0, accumulate=False,
           epilogue=None):
    mode = {None: _NO_REDUCE, "x": _REDUCE_X, "y": _REDUCE_Y}.get(reduce)
    if mode is None:
        raise ValueError(f"reduce must be None, 'x' or 'y', got {reduce!r}")
    if mode != _NO_REDUCE and out is None:
        raise ValueError(f"axpby_ with reduce={reduce!r} needs out")
    ys, xs = t.slot(y), t.slot(x)
    zs = t.slot(z) if z is not None else ys
    ws = t.slot(weights) if weights is not None and mode == _REDUCE_X else ys
    items = t.plain
    a_factor, a_ptr = scalar_args(a)
    b_factor, b_ptr = scalar_args(b)
    read_y = a_ptr is not None or a_factor != 0.0 or not isinstance(a, (int, float))
    with t.launching():
        if items.count:
            _axpby_kernel[(items.count,)](
                items.table, items.stride, ys.base, ys.offsets, xs.base, xs.offsets, zs.base, zs.offsets,
                ws.base, ws.offsets, a_factor, a_ptr, b_factor, b_ptr, t.partials, t.partials_capacity,
                READ_Y=read_y, REDUCE=mode, HAS_Z=z is not None, HAS_W=weights is not None,
                ALIGNED=all(s.aligned for s in (ys, xs, zs, ws)), BLOCK=t.block, num_warps=t.num_warps,
            )
        if mode != _NO_REDUCE:
            finish(t, items.count, out, index, accumulate, epilogue, two=mode == _REDUCE_Y and z is not None)
