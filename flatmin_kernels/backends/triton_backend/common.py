"""What every Triton kernel of this backend shares: sizes, scalar arguments, the work-item
header and tile, and the math functions that must be exact on the GPU and in the interpreter.

The work of one op over a bucket is a table of (tensor, chunk) *items* (see ``tables.py``);
one program handles one item, walking it tile by tile. A tile is RB rows x CB columns of the
tensor seen as rows of length ``row``: for a gradient-centralized tensor these are its real
rows (dim 0), so a program can first sum its rows and then write the centered values; for
any other tensor ``row`` is CB, i.e. the tile is just the next RB * CB contiguous elements.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

# Read when this module is first imported; Triton itself reads it when it is imported.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

BLOCK = 1024  # elements per tile (RB * CB)
CHUNK = 64 * 1024  # elements per work item (apex / torch's multi_tensor_apply chunk)
NUM_WARPS = 4


def scalar_arg(value):
    """(kernel argument, whether it is a device pointer) for a python number or 0-d tensor.

    Device scalars stay on the device and are loaded inside the kernel: no host sync.
    """
    if torch.is_tensor(value):
        return value, True
    return float(value), False


# ----------------------------------------------------------------------------- device helpers


@triton.jit
def load_scalar(x, IS_PTR: tl.constexpr):
    """An fp32 scalar argument: loaded from device memory when it is a 0-d tensor."""
    if IS_PTR:
        return tl.load(x).to(tl.float32)
    else:
        return x


@triton.jit
def store_end(end, found_inf_ptr, HAS_FOUND_INF: tl.constexpr):
    """``end``, or 0 when the AMP found_inf flag says the op must write nothing: stores are
    masked with ``idx < store_end(...)``. (A scalar bool and-ed into a block mask trips the
    interpreter, so the flag becomes a bound instead.)"""
    if HAS_FOUND_INF:
        return tl.where(tl.load(found_inf_ptr) > 0, 0, end)
    else:
        return end


@triton.jit
def item_header(items_ptr, n_items, pid):
    """(tensor index, first element, end element, row length, centralize flag) of item pid."""
    t = tl.load(items_ptr + pid)
    start = tl.load(items_ptr + n_items + pid)
    end = tl.load(items_ptr + 2 * n_items + pid)
    row = tl.load(items_ptr + 3 * n_items + pid)
    gc = tl.load(items_ptr + 4 * n_items + pid)
    return t, start, end, row, gc


@triton.jit
def tile(r0, row, end, c, RB: tl.constexpr, CB: tl.constexpr):
    """int64 element indices and mask of the tile with rows starting at r0, r0 + row, ...
    and columns c .. c + CB - 1 (64-bit, so tensors beyond 2**31 elements work)."""
    rows = r0 + tl.arange(0, RB).to(tl.int64) * row
    cols = c + tl.arange(0, CB).to(tl.int64)
    idx = rows[:, None] + cols[None, :]
    mask = (cols[None, :] < row) & (idx < end)
    return idx, mask


# Exact (correctly rounded or libdevice-accurate) math. Triton's tl.log / tl.cos use fast
# approximate instructions on NVIDIA GPUs, which would break the 1e-6 agreement of the noise;
# libdevice is not available in the interpreter, where numpy's fp32 functions are accurate.
if INTERPRET:

    @triton.jit
    def precise_log(x):
        return tl.log(x)

    @triton.jit
    def precise_cos(x):
        return tl.cos(x)

else:
    from triton.language.extra import libdevice

    @triton.jit
    def precise_log(x):
        return libdevice.log(x)

    @triton.jit
    def precise_cos(x):
        return libdevice.cos(x)


@triton.jit
def load_direction(g_ptr, b_ptr, idx, mask, grad_scale, weight_decay,
                   HAS_GRAD_SCALE: tl.constexpr, MAXIMIZE: tl.constexpr, HAS_WD: tl.constexpr):
    """The gradient of the base update before GC (SGD, and Adam without decoupled decay):
    g / grad_scale, negated when maximizing, plus L2 decay read from the backup or p."""
    g = tl.load(g_ptr + idx, mask=mask, other=0.0).to(tl.float32)
    if HAS_GRAD_SCALE:
        g = tl.div_rn(g, tl.load(grad_scale).to(tl.float32))
    if MAXIMIZE:
        g = -g
    if HAS_WD:
        g = g + tl.load(b_ptr + idx, mask=mask, other=0.0).to(tl.float32) * weight_decay
    return g


@triton.jit
def row_means(g_ptr, b_ptr, r0, row, end, grad_scale, weight_decay,
              HAS_GRAD_SCALE: tl.constexpr, MAXIMIZE: tl.constexpr, HAS_WD: tl.constexpr,
              RB: tl.constexpr, CB: tl.constexpr):
    """GC's first half: the fp32 mean of each of the RB rows starting at element r0 of the
    direction ``load_direction`` reads (with no scale, sign or decay flag: the raw values)."""
    acc = tl.zeros([RB, CB], tl.float32)
    for c in range(0, row, CB):
        idx, mask = tile(r0, row, end, c, RB, CB)
        acc += load_direction(g_ptr, b_ptr, idx, mask, grad_scale, weight_decay,
                              HAS_GRAD_SCALE, MAXIMIZE, HAS_WD)
    return tl.sum(acc, axis=1) / row.to(tl.float32)
