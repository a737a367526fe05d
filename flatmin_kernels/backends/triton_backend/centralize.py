"""centralize_: gradient centralization in place, one launch for the flagged tensors.

Each program owns whole rows: it reads them, takes their exact means and writes x minus the
row mean (short rows from registers, long ones in a second pass)."""
from __future__ import annotations

import triton
import triton.language as tl

from .common import item_header, load, slot_ptr, store, walk


@triton.jit
def _read(k, idx, mask, x_ptr, FLAGS: tl.constexpr):
    return load(x_ptr + idx, mask)


@triton.jit
def _write(d, k, idx, mask, x_ptr, FLAGS: tl.constexpr):
    store(x_ptr + idx, d, mask)
    return 0.0, 0.0


@triton.jit
def _centralize_kernel(items, stride, x0, x_off, CLASSES: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    t, start, end, row, cls = item_header(items, stride, pid)
    walk(start, start, end, row, cls, _read, _write, slot_ptr(x0, x_off, t, False), 0, False, CLASSES, BLOCK)


def centralize_(t, x):
    items = t.gc_only
    if not items.count:
        return
    xs = t.slot(x)
    with t.launching():
        _centralize_kernel[(items.count,)](
            items.table, items.stride, xs.base, xs.offsets, CLASSES=items.classes, BLOCK=t.block,
            num_warps=t.num_warps,
        )
