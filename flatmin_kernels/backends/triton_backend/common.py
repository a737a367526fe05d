"""What every Triton kernel of this backend shares: sizes, scalar arguments, masked loads, the
exact math functions, and ``walk``, the loop that carries one work item through an op.

The work of one op over a bucket is a table of *items* (see ``tables.py``); one program
handles one item, walking it tile by tile. An op is written as two inlined functions that
``walk`` calls on every tile: ``DIRECTION(k, idx, mask, args, FLAGS)`` reads the value the op
works on (the gradient of an update, the direction of a perturbation, the tensor of a
reduction) in fp32, and ``APPLY(d, k, idx, mask, args, FLAGS)`` computes and stores the results
from it and returns the tile's two contributions to the op's sums (zeros when the op reduces
nothing). ``k`` is the tile's first element, ``idx`` its int64 element indices (64-bit: tensors
beyond 2**31 elements work), ``mask`` None for a full tile (unmasked loads and stores) or a
boolean block, ``args`` a tuple of the op's pointers and scalars, and ``FLAGS`` the op's
constexpr switches as one bitmask (a compiled kernel turns constexprs inside a tuple into
runtime values, so they travel beside it).

How ``walk`` tiles an item depends on the item's *class*:

* ``PLAIN`` (0): a chunk of a tensor seen as a flat run of elements. Full tiles are unmasked;
  when the op's table is ``ALIGNED`` (every slot's tensors start a multiple of 16 elements from
  the slot's base, and items start at multiples of the chunk) the tiles also carry
  ``tl.multiple_of`` hints, so compiled loads and stores become 128-bit vector accesses. Only
  the last tile of an item is masked.
* ``1 + log2(CB)`` for CB = 1 .. BLOCK: whole gradient-centralized rows of length at most CB,
  RB = BLOCK // CB rows per tile. The tile is read once; GC's row means come from registers.
* ``LONG``: rows longer than BLOCK, one row at a time: a first pass sums the row, a second
  computes and stores the centered values (re-reading the row, from cache).

Each class used by a table is compiled in (``CLASSES`` is a bitmask), so an op is one launch
however many row lengths its bucket has.
"""
from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl

# Read when this module is first imported; Triton itself reads it when it is imported.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

MAX_BLOCK = 1024  # elements per tile (RB * CB); smaller for buckets of small tensors
CHUNK = 64 * 1024  # elements per plain work item (apex / torch's multi_tensor_apply chunk)
ALIGN = 16  # elements: what ALIGNED promises about every slot offset and item start
_NO_GUARD = contextlib.nullcontext()
# Item classes (see the module docstring): PLAIN, short GC rows 1 .. LONG - 1 (CB = 1 ..
# MAX_BLOCK), LONG. ``walk`` spells these numbers out: bit tests of an int by a constexpr
# global do not run in the interpreter.
PLAIN = 0
LONG = 12
assert 1 + (MAX_BLOCK.bit_length() - 1) == LONG - 1, "the short-row classes end below LONG"


def num_warps(block: int) -> int:
    """4 warps for full tiles (8 fp32 per thread: two 128-bit accesses), 1 for small ones."""
    return max(1, min(4, block // 256))


def device_guard(device: torch.device):
    """Make ``device`` current for a launch, only when it is a CUDA device that is not."""
    if device.type == "cuda" and device.index != torch.cuda.current_device():
        return torch.cuda.device(device.index)
    return _NO_GUARD


def flags(*switches) -> int:
    """One constexpr bitmask from ``(bit, on)`` pairs. Bits are ``tl.constexpr`` powers of 2 (the
    only globals a compiled kernel may read), tested as ``BIT & FLAGS`` (in the interpreter
    FLAGS is a python int, which cannot take a constexpr on its right)."""
    return sum(bit.value for bit, on in switches if on)


# Switches of ``update_direction`` (the base updates add their own from bit 4 on).
G2, GRAD_SCALE, MAXIMIZE, L2 = (tl.constexpr(1 << i) for i in range(4))


def scalar_args(value):
    """A contract scalar as kernel arguments ``(factor, pointer or None)``: the value is
    ``factor * pointer[0]`` (a number, a 1-element device tensor, or their product), read on the
    device, so a value computed there never visits the host."""
    if isinstance(value, tuple):
        number, tensor = value
        return float(number), tensor
    if torch.is_tensor(value):
        return 1.0, value
    return float(value), None


# ----------------------------------------------------------------------------- device helpers


@triton.jit
def scalar(factor, ptr):
    """A contract scalar passed as ``scalar_args`` made it, in fp32."""
    if ptr is None:
        return factor
    else:
        return factor * tl.load(ptr).to(tl.float32)


@triton.jit
def skipped(found_inf):
    """Whether the AMP found_inf flag (None or a 1-element tensor) says: skip the step."""
    if found_inf is None:
        return False
    else:
        return tl.load(found_inf) > 0


@triton.jit
def item_header(items, stride, pid):
    """(tensor index, first element, end element, GC row length, class) of item pid."""
    t = tl.load(items + pid)
    start = tl.load(items + stride + pid)
    end = tl.load(items + 2 * stride + pid)
    row = tl.load(items + 3 * stride + pid)
    cls = tl.load(items + 4 * stride + pid)
    return t, start, end, row, cls


@triton.jit
def slot_ptr(base, offsets, t, ALIGNED: tl.constexpr):
    """Where tensor t of a slot starts: its base tensor plus t's element offset."""
    offset = tl.load(offsets + t)
    if ALIGNED:
        offset = tl.multiple_of(offset, 16)
    return base + offset


@triton.jit
def load(ptr, mask):
    """An fp32 block from any storage dtype; mask None means a full tile."""
    if mask is None:
        return tl.load(ptr).to(tl.float32)
    else:
        return tl.load(ptr, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def load_raw(ptr, mask):
    """A block in its storage dtype (for bit-exact copies)."""
    if mask is None:
        return tl.load(ptr)
    else:
        return tl.load(ptr, mask=mask)


@triton.jit
def store(ptr, value, mask):
    """Store, rounding once to the destination's dtype; mask None means a full tile."""
    if mask is None:
        tl.store(ptr, value.to(ptr.dtype.element_ty))
    else:
        tl.store(ptr, value.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def finite(x):
    """x is neither inf nor NaN (NaN fails every comparison)."""
    return tl.abs(x) <= 3.4028234663852886e38


@triton.jit
def update_direction(g_ptr, g2_ptr, b_ptr, idx, mask, g_coef, g2_coef, grad_scale, weight_decay,
                     FLAGS: tl.constexpr):
    """The gradient a base update sees, before GC: (g_coef g + g2_coef g2) / grad_scale,
    negated when maximizing, plus L2 decay of b (the backup, or p)."""
    g = load(g_ptr + idx, mask) * g_coef
    if G2 & FLAGS:
        g = g + load(g2_ptr + idx, mask) * g2_coef
    if GRAD_SCALE & FLAGS:
        g = tl.div_rn(g, grad_scale)
    if MAXIMIZE & FLAGS:
        g = -g
    if L2 & FLAGS:
        g = g + load(b_ptr + idx, mask) * weight_decay
    return g


# ----------------------------------------------------------------------------- walking an item


@triton.jit
def _tile(DIRECTION: tl.constexpr, APPLY: tl.constexpr, args, FLAGS: tl.constexpr, k, idx, mask):
    d = DIRECTION(k, idx, mask, args, FLAGS)
    if mask is not None:
        d = tl.where(mask, d, 0.0)  # masked lanes add nothing to the op's sums
    return APPLY(d, k, idx, mask, args, FLAGS)


@triton.jit
def _walk_flat(first, start, end, DIRECTION: tl.constexpr, APPLY: tl.constexpr, args, FLAGS: tl.constexpr,
               ALIGNED: tl.constexpr, BLOCK: tl.constexpr):
    """Tiles first, first + BLOCK, ... of elements start .. end - 1 (first <= start: the noise
    starts a tile at a Philox call boundary); full tiles unmasked, the others masked."""
    acc1 = tl.zeros([BLOCK], tl.float32)
    acc2 = tl.zeros([BLOCK], tl.float32)
    lanes = tl.arange(0, BLOCK)
    k = first
    if k < start:
        idx = k + lanes
        r1, r2 = _tile(DIRECTION, APPLY, args, FLAGS, k, idx, (idx >= start) & (idx < end))
        acc1 += r1
        acc2 += r2
        k += BLOCK
    while k + BLOCK <= end:
        idx = k + lanes
        if ALIGNED:
            idx = tl.multiple_of(idx, 16)
        r1, r2 = _tile(DIRECTION, APPLY, args, FLAGS, k, idx, None)
        acc1 += r1
        acc2 += r2
        k += BLOCK
    if k < end:
        idx = k + lanes
        r1, r2 = _tile(DIRECTION, APPLY, args, FLAGS, k, idx, idx < end)
        acc1 += r1
        acc2 += r2
    return tl.sum(acc1, axis=0), tl.sum(acc2, axis=0)


@triton.jit
def _walk_rows(start, end, row, DIRECTION: tl.constexpr, APPLY: tl.constexpr, args, FLAGS: tl.constexpr,
               RB: tl.constexpr, CB: tl.constexpr):
    """Whole rows of length row <= CB, RB per tile; each row centered with its exact mean."""
    acc1 = tl.zeros([RB, CB], tl.float32)
    acc2 = tl.zeros([RB, CB], tl.float32)
    cols = tl.arange(0, CB)[None, :]
    row_steps = tl.arange(0, RB).to(tl.int64)[:, None] * row
    length = row.to(tl.float32)
    r0 = start
    while r0 < end:
        idx = r0 + row_steps + cols
        mask = (cols < row) & (r0 + row_steps < end)
        d = tl.where(mask, DIRECTION(r0, idx, mask, args, FLAGS), 0.0)
        d = tl.where(mask, d - tl.div_rn(tl.sum(d, axis=1), length)[:, None], 0.0)
        r1, r2 = APPLY(d, r0, idx, mask, args, FLAGS)
        acc1 += r1
        acc2 += r2
        r0 += RB * row
    return tl.sum(tl.sum(acc1, axis=1), axis=0), tl.sum(tl.sum(acc2, axis=1), axis=0)


@triton.jit
def _walk_long_rows(start, end, row, DIRECTION: tl.constexpr, APPLY: tl.constexpr, args,
                    FLAGS: tl.constexpr, BLOCK: tl.constexpr):
    """Rows longer than a tile, one at a time: sum the row, then store the centered values."""
    acc1 = tl.zeros([BLOCK], tl.float32)
    acc2 = tl.zeros([BLOCK], tl.float32)
    lanes = tl.arange(0, BLOCK)
    length = row.to(tl.float32)
    r0 = start
    while r0 < end:
        row_end = r0 + row
        sums = tl.zeros([BLOCK], tl.float32)
        k = r0
        while k < row_end:
            idx = k + lanes
            mask = idx < row_end
            sums += tl.where(mask, DIRECTION(k, idx, mask, args, FLAGS), 0.0)
            k += BLOCK
        mean = tl.div_rn(tl.sum(sums, axis=0), length)
        k = r0
        while k < row_end:
            idx = k + lanes
            mask = idx < row_end
            d = tl.where(mask, DIRECTION(k, idx, mask, args, FLAGS) - mean, 0.0)
            r1, r2 = APPLY(d, k, idx, mask, args, FLAGS)
            acc1 += r1
            acc2 += r2
            k += BLOCK
        r0 = row_end
    return tl.sum(acc1, axis=0), tl.sum(acc2, axis=0)


@triton.jit
def walk(first, start, end, row, cls, DIRECTION: tl.constexpr, APPLY: tl.constexpr, args, FLAGS: tl.constexpr,
         ALIGNED: tl.constexpr, CLASSES: tl.constexpr, BLOCK: tl.constexpr):
    """Carry one item through an op (see the module docstring); returns the item's two sums."""
    total1 = 0.0
    total2 = 0.0
    if CLASSES & 1:
        if cls == 0:
            total1, total2 = _walk_flat(first, start, end, DIRECTION, APPLY, args, FLAGS, ALIGNED, BLOCK)
    for K in tl.static_range(1, 12):
        if (CLASSES >> K) & 1:
            if cls == K:
                CB: tl.constexpr = 1 << (K - 1)
                total1, total2 = _walk_rows(start, end, row, DIRECTION, APPLY, args, FLAGS, BLOCK // CB, CB)
    if (CLASSES >> 12) & 1:
        if cls == 12:
            total1, total2 = _walk_long_rows(start, end, row, DIRECTION, APPLY, args, FLAGS, BLOCK)
    return total1, total2


# Exact (correctly rounded or libdevice-accurate) math. Triton's tl.log / tl.cos / tl.sin use
# fast approximate instructions on NVIDIA GPUs, which would break the 1e-6 agreement of the
# noise; libdevice is not available in the interpreter, where numpy's fp32 functions are
# accurate.
if INTERPRET:

    @triton.jit
    def precise_log(x):
        return tl.log(x)

    @triton.jit
    def precise_cos(x):
        return tl.cos(x)

    @triton.jit
    def precise_sin(x):
        return tl.sin(x)

else:
    from triton.language.extra import libdevice

    @triton.jit
    def precise_log(x):
        return libdevice.log(x)

    @triton.jit
    def precise_cos(x):
        return libdevice.cos(x)

    @triton.jit
    def precise_sin(x):
        return libdevice.sin(x)
