"""axpby_: y <- a * y + b * x, the element-wise linear combination GAM needs."""
from __future__ import annotations

import triton
import triton.language as tl

from .common import NUM_WARPS, item_header, load_scalar, scalar_arg, tile
from .tables import layout


@triton.jit
def _axpby_kernel(items, n_items, y0, y_off, x0, x_off, a, b,
                  A_PTR: tl.constexpr, B_PTR: tl.constexpr, READ_Y: tl.constexpr,
                  RB: tl.constexpr, CB: tl.constexpr):
    pid = tl.program_id(0)
    t, start, end, row, gc = item_header(items, n_items, pid)
    y_ptr = y0 + tl.load(y_off + t)
    x_ptr = x0 + tl.load(x_off + t)
    a_value = load_scalar(a, A_PTR)
    b_value = load_scalar(b, B_PTR)
    for r0 in range(start, end, row * RB):
        idx, mask = tile(r0, row, end, 0, RB, CB)
        new = tl.load(x_ptr + idx, mask=mask, other=0.0).to(tl.float32) * b_value
        if READ_Y:  # a == 0 (a python number) must not read y: it may hold garbage
            new = tl.load(y_ptr + idx, mask=mask, other=0.0).to(tl.float32) * a_value + new
        tl.store(y_ptr + idx, new, mask=mask)


def axpby_(ys, xs, a, b):
    if not ys:
        return
    lay = layout([ys, xs], names=["ys", "xs"])
    if lay.n_items == 0:
        return
    a_arg, a_ptr = scalar_arg(a)
    b_arg, b_ptr = scalar_arg(b)
    _axpby_kernel[(lay.n_items,)](
        lay.items, lay.n_items, lay.base(0, ys), lay.offsets(0), lay.base(1, xs), lay.offsets(1),
        a_arg, b_arg, A_PTR=a_ptr, B_PTR=b_ptr, READ_Y=a_ptr or a_arg != 0,
        RB=lay.rb, CB=lay.cb, num_warps=NUM_WARPS,
    )
