"""sumsq and dot, and the second stage every reduction shares (``finish``).

Stage 1 writes one fp32 partial per work item (a fixed order inside the program), into the
table's own partials buffer (no allocation per call, so a step can be captured in a CUDA
graph); stage 2, one program, adds them in item order into ``out[index]`` and derives the
epilogue's per-step scalars (``InvNorm``, ``Ratio``) in the same launch. No atomics: the same
inputs give the same bits on every run, in two launches per bucket whatever its size.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ..contract import epilogue_fields
from .common import finite, flags, item_header, load, slot_ptr, walk

FINISH_BLOCK = 1024


@triton.jit
def _finish_kernel(partials, n, capacity, out, index, eps, gamma, target, flag,
                   ACCUMULATE: tl.constexpr, TWO: tl.constexpr, EPILOGUE: tl.constexpr,
                   FLAG_ACCUMULATE: tl.constexpr, BLOCK: tl.constexpr):
    acc1 = tl.zeros([BLOCK], tl.float32)
    acc2 = tl.zeros([BLOCK], tl.float32)
    lanes = tl.arange(0, BLOCK)
    i = 0
    while i < n:
        mask = i + lanes < n
        acc1 += tl.load(partials + i + lanes, mask=mask, other=0.0)
        if TWO:
            acc2 += tl.load(partials + capacity + i + lanes, mask=mask, other=0.0)
        i += BLOCK
    s = tl.sum(acc1, axis=0)
    q = tl.sum(acc2, axis=0)
    if ACCUMULATE:
        s = tl.load(out + index) + s
        if TWO:
            q = tl.load(out + index + 1) + q
    tl.store(out + index, s)
    if TWO:
        tl.store(out + index + 1, q)
    if EPILOGUE != 0:
        if EPILOGUE == 1:  # InvNorm: 1 / (sqrt(s) + eps)
            tl.store(out + target, tl.div_rn(1.0, tl.sqrt_rn(s) + eps))
            f = tl.where(finite(s), 0.0, 1.0)
        else:  # Ratio: 1 + gamma * q / (s + eps)
            tl.store(out + target, 1.0 + tl.div_rn(gamma * q, s + eps))
            f = tl.where(finite(s) & finite(q), 0.0, 1.0)
        if FLAG_ACCUMULATE:
            f = tl.maximum(tl.load(out + flag), f, propagate_nan=tl.PropagateNan.ALL)
        tl.store(out + flag, f)


def finish(t, count, out, index, accumulate, epilogue=None, two=False):
    """Stage 2 over the first ``count`` partials (and their second row with ``two``)."""
    kind, eps, gamma, target, flag, flag_accumulate = epilogue_fields(epilogue)
    _finish_kernel[(1,)](
        t.partials, count, t.partials_capacity, out, int(index), float(eps), float(gamma), int(target),
        int(flag), ACCUMULATE=bool(accumulate), TWO=two, EPILOGUE=kind, FLAG_ACCUMULATE=bool(flag_accumulate),
        BLOCK=FINISH_BLOCK, num_warps=4,
    )


# ----------------------------------------------------------------------------- stage 1

WEIGHTS, DOT = tl.constexpr(1), tl.constexpr(2)


@triton.jit
def _read_x(k, idx, mask, args, FLAGS: tl.constexpr):
    x_ptr, y_ptr = args
    return load(x_ptr + idx, mask)


@triton.jit
def _square_or_product(d, k, idx, mask, args, FLAGS: tl.constexpr):
    """sumsq: (d * |w|)^2 (|w| with WEIGHTS); dot: d * y."""
    x_ptr, y_ptr = args
    if DOT & FLAGS:
        v = d * load(y_ptr + idx, mask)
    else:
        if WEIGHTS & FLAGS:
            d = d * tl.abs(load(y_ptr + idx, mask))
        v = d * d
    return v, 0.0


@triton.jit
def _partials_kernel(items, stride, x0, x_off, y0, y_off, partials,
                     FLAGS: tl.constexpr, ALIGNED: tl.constexpr, CLASSES: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    t, start, end, row, cls = item_header(items, stride, pid)
    args = (slot_ptr(x0, x_off, t, ALIGNED), slot_ptr(y0, y_off, t, ALIGNED))
    total, _ = walk(start, start, end, row, cls, _read_x, _square_or_product, args, FLAGS, ALIGNED, CLASSES,
                    BLOCK)
    tl.store(partials + pid, total)


def _reduce(t, x, y, mode, centralize, out, index, accumulate, epilogue):
    items = t.centralized if centralize else t.plain
    xs = t.slot(x)
    ys = t.slot(y) if y is not None else xs
    with t.launching():
        if items.count:
            _partials_kernel[(items.count,)](
                items.table, items.stride, xs.base, xs.offsets, ys.base, ys.offsets, t.partials,
                FLAGS=mode, ALIGNED=xs.aligned and ys.aligned, CLASSES=items.classes, BLOCK=t.block,
                num_warps=t.num_warps,
            )
        finish(t, items.count, out, index, accumulate, epilogue)


def sumsq(t, x, *, weights=None, centralize=False, out, index=0, accumulate=False, epilogue=None):
    _reduce(t, x, weights, flags((WEIGHTS, weights is not None)), centralize, out, index, accumulate, epilogue)


def dot(t, x, y, *, out, index=0, accumulate=False):
    _reduce(t, x, y, flags((DOT, True)), False, out, index, accumulate, None)
