"""sumsq and dot: deterministic two-stage reductions, one value per tensor.

Stage 1 writes one fp32 partial per work item (a fixed order inside the program); stage 2
adds each tensor's partials in item order. No atomics, so the same inputs give the same
bits on every run, and two launches per bucket whatever the number of tensors.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import NUM_WARPS, item_header, row_means, tile
from .tables import layout

PARTIALS_BLOCK = 128


@triton.jit
def _partials_kernel(items, n_items, x0, x_off, y0, y_off, partials,
                     HAS_Y: tl.constexpr, DOT: tl.constexpr, HAS_GC: tl.constexpr,
                     RB: tl.constexpr, CB: tl.constexpr):
    pid = tl.program_id(0)
    t, start, end, row, gc = item_header(items, n_items, pid)
    x_ptr = x0 + tl.load(x_off + t)
    y_ptr = y0 + tl.load(y_off + t)
    total = tl.zeros([RB, CB], tl.float32)
    for r0 in range(start, end, row * RB):
        mean = tl.zeros([RB], tl.float32)
        if HAS_GC:
            if gc != 0:  # sumsq of the centralized tensor: row means first
                mean = row_means(x_ptr, x_ptr, r0, row, end, 0, 0.0, False, False, False, RB, CB)
        for c in range(0, row, CB):
            idx, mask = tile(r0, row, end, c, RB, CB)
            x = tl.load(x_ptr + idx, mask=mask, other=0.0).to(tl.float32)
            if DOT:
                v = x * tl.load(y_ptr + idx, mask=mask, other=0.0).to(tl.float32)
            else:
                v = tl.where(mask, x - mean[:, None], 0.0)
                if HAS_Y:  # ASAM: |w| * C(x)
                    v = v * tl.abs(tl.load(y_ptr + idx, mask=mask, other=0.0).to(tl.float32))
                v = v * v
            total += v
    tl.store(partials + pid, tl.sum(tl.sum(total, axis=1), axis=0))


@triton.jit
def _sum_partials_kernel(partials, first_item, out, BLOCK: tl.constexpr):
    t = tl.program_id(0)
    lo = tl.load(first_item + t)
    hi = tl.load(first_item + t + 1)
    acc = tl.zeros([BLOCK], tl.float32)
    for i in range(lo, hi, BLOCK):
        j = i + tl.arange(0, BLOCK)
        acc += tl.load(partials + j, mask=j < hi, other=0.0)
    tl.store(out + t, tl.sum(acc, axis=0))


def _reduce(xs, ys, *, dot, centralize=None):
    if not xs:
        return torch.zeros(0, dtype=torch.float32)
    lists = [xs] if ys is None else [xs, ys]
    lay = layout(lists, names=["xs", "ys" if dot else "weights"], centralize=centralize)
    device = xs[0].device
    if lay.n_items == 0:
        return torch.zeros(len(xs), dtype=torch.float32, device=device)
    out = torch.empty(len(xs), dtype=torch.float32, device=device)  # stage 2 writes every entry
    partials = torch.empty(lay.n_items, dtype=torch.float32, device=device)
    y_k = 1 if ys is not None else 0
    _partials_kernel[(lay.n_items,)](
        lay.items, lay.n_items, lay.base(0, xs), lay.offsets(0),
        lay.base(y_k, lists[y_k]), lay.offsets(y_k), partials,
        HAS_Y=ys is not None, DOT=dot, HAS_GC=lay.has_gc, RB=lay.rb, CB=lay.cb,
        num_warps=NUM_WARPS,
    )
    _sum_partials_kernel[(len(xs),)](partials, lay.first_item, out, BLOCK=PARTIALS_BLOCK)
    return out


def sumsq(tensors, *, weights=None, centralize=None):
    return _reduce(tensors, weights, dot=False, centralize=centralize)


def dot(xs, ys):
    return _reduce(xs, ys, dot=True)
