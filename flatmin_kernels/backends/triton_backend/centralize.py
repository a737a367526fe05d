"""centralize_: gradient centralization in place, one launch for the flagged tensors.

Each program owns whole rows: it sums them, then writes x minus the row mean."""
from __future__ import annotations

import triton
import triton.language as tl

from .common import NUM_WARPS, item_header, row_means, tile
from .tables import layout


@triton.jit
def _centralize_kernel(items, n_items, x0, x_off, RB: tl.constexpr, CB: tl.constexpr):
    pid = tl.program_id(0)
    t, start, end, row, gc = item_header(items, n_items, pid)
    x_ptr = x0 + tl.load(x_off + t)
    for r0 in range(start, end, row * RB):
        mean = row_means(x_ptr, x_ptr, r0, row, end, 0, 0.0, False, False, False, RB, CB)
        for c in range(0, row, CB):
            idx, mask = tile(r0, row, end, c, RB, CB)
            x = tl.load(x_ptr + idx, mask=mask, other=0.0).to(tl.float32)
            tl.store(x_ptr + idx, x - mean[:, None], mask=mask)


def centralize_(tensors, centralize):
    if not tensors:
        return
    lay = layout([tensors], names=["tensors"], centralize=centralize, only_flagged=True)
    if lay.n_items == 0:
        return
    _centralize_kernel[(lay.n_items,)](
        lay.items, lay.n_items, lay.base(0, tensors), lay.offsets(0),
        RB=lay.rb, CB=lay.cb, num_warps=NUM_WARPS,
    )
