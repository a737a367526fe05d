"""philox and noise_: the contract's Philox4x32-10 words and v2 normals, made in the kernel.

Element j of the optimizer's flattened list, step t and sample k is served by Philox call
c = j >> 2 (counter (c_lo, c_hi, t, k), key (seed_lo, seed_hi): Triton's ``tl.philox`` is
exactly that generator, Random123's constants), whose four words give four normals (both
Box-Muller pairs, cos and sin), lane j & 3. So a tile of the noise kernel starts at a call
boundary and draws BLOCK / 4 calls for its BLOCK elements; a tensor whose first j is not a
multiple of 4 starts its first tile a few elements early, masked. The noise is regenerated on
every call, never stored. j follows the logical (row-major) element order, as the reference
does; for a permuted tensor (channels_last, ...) each tile's logical indices are mapped to
their memory positions.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import (device_guard, item_header, load, precise_cos, precise_log, precise_sin, scalar, scalar_args,
                     skipped, slot_ptr, store, walk)
from .tables import MAX_DIMS

_MASK32 = 0xFFFFFFFF
PHILOX_BLOCK = 256


def check_seed(seed: int):
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")


def _step_args(step):
    """(python step or 0, 1-element int64 device tensor or None)."""
    if torch.is_tensor(step):
        return 0, step
    return int(step) & _MASK32, None


@triton.jit
def _philox_words(c, seed, step, sample):
    """The four uint32 words of Philox4x32-10 for int64 call counters c."""
    c0 = c.to(tl.uint32)  # truncation: the low word
    c1 = (c >> 32).to(tl.uint32)
    c2 = (tl.zeros_like(c) + step).to(tl.uint32)  # truncation: step & 0xFFFFFFFF
    c3 = (tl.zeros_like(c) + sample).to(tl.uint32)
    return tl.philox(seed, c0, c1, c2, c3)


@triton.jit
def _uniform(x):
    """((x >> 8) | 1) * 2**-24: exact in fp32, in (0, 1)."""
    return ((x >> 8) | 1).to(tl.float32) * 5.9604644775390625e-08


@triton.jit
def _normals(first_call, seed, step, sample, BLOCK: tl.constexpr):
    """The BLOCK normals of calls first_call .. first_call + BLOCK / 4 - 1, in element order."""
    x0, x1, x2, x3 = _philox_words(first_call + tl.arange(0, BLOCK // 4).to(tl.int64), seed, step, sample)
    r_a = tl.sqrt_rn(-2.0 * precise_log(_uniform(x0)))
    th_a = 6.283185307179586 * _uniform(x1)
    r_b = tl.sqrt_rn(-2.0 * precise_log(_uniform(x2)))
    th_b = 6.283185307179586 * _uniform(x3)
    n0 = r_a * precise_cos(th_a)
    n1 = r_a * precise_sin(th_a)
    n2 = r_b * precise_cos(th_b)
    n3 = r_b * precise_sin(th_b)
    return tl.interleave(tl.interleave(n0, n2), tl.interleave(n1, n3))  # n0 n1 n2 n3 per call


@triton.jit
def _memory_index(idx, dims, t):
    """Where logical element idx of permuted tensor t is stored: its row-major coordinates
    (sizes at dims[t * 11 + 1 ..]) times its strides (at dims[t * 11 + 6 ..]), innermost first."""
    at = dims + t * (1 + 2 * 5)
    rest = idx
    address = tl.zeros_like(idx)
    for d in tl.static_range(5):
        size = tl.load(at + 5 - d)
        address += (rest % size) * tl.load(at + 10 - d)
        rest = rest // size
    return address


@triton.jit
def _read_base(k, idx, mask, args, PERMUTED: tl.constexpr):
    p_ptr, b_ptr, dims, t, first_j, coef, seed, step, sample = args
    if PERMUTED:
        idx = _memory_index(idx, dims, t)
    return load(b_ptr + idx, mask)


@triton.jit
def _add_noise(b, k, idx, mask, args, PERMUTED: tl.constexpr):
    p_ptr, b_ptr, dims, t, first_j, coef, seed, step, sample = args
    normals = _normals((first_j + k) >> 2, seed, step, sample, idx.shape[0])
    if PERMUTED:
        idx = _memory_index(idx, dims, t)
    store(p_ptr + idx, b + coef * normals, mask)
    return 0.0, 0.0


@triton.jit
def _noise_kernel(items, stride, p0, p_off, b0, b_off, noise_offsets, dims, coef, coef_ptr, found_inf,
                  seed, step, step_ptr, sample, ALIGNED: tl.constexpr, PERMUTED: tl.constexpr,
                  BLOCK: tl.constexpr):
    if not skipped(found_inf):
        pid = tl.program_id(0)
        t, start, end, row, cls = item_header(items, stride, pid)
        first_j = tl.load(noise_offsets + t)
        first = start - ((first_j + start) & 3)  # the tile grid starts at a Philox call
        t_step = step
        if step_ptr is not None:  # read here, so a captured graph draws new noise at each replay
            t_step = tl.load(step_ptr)
        p_ptr = slot_ptr(p0, p_off, t, ALIGNED)
        b_ptr = slot_ptr(b0, b_off, t, ALIGNED)
        a = scalar(coef, coef_ptr)
        permuted = False
        if PERMUTED:
            permuted = tl.load(dims + t * (1 + 2 * 5)) != 0
        args = (p_ptr, b_ptr, dims, t, first_j, a, seed, t_step, sample)
        if permuted:
            walk(first, start, end, row, cls, _read_base, _add_noise, args, True, False, 1, BLOCK)
        else:
            walk(first, start, end, row, cls, _read_base, _add_noise, args, False, ALIGNED, 1, BLOCK)


@triton.jit
def _philox_kernel(out, n, offset, seed, step, step_ptr, sample, BLOCK: tl.constexpr):
    k = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = k < n
    t_step = step
    if step_ptr is not None:
        t_step = tl.load(step_ptr)
    x0, x1, x2, x3 = _philox_words(offset + k, seed, t_step, sample)
    tl.store(out + 4 * k, x0.to(tl.int64), mask=mask)
    tl.store(out + 4 * k + 1, x1.to(tl.int64), mask=mask)
    tl.store(out + 4 * k + 2, x2.to(tl.int64), mask=mask)
    tl.store(out + 4 * k + 3, x3.to(tl.int64), mask=mask)


def philox(n, *, seed, step, sample, offset, device="cpu"):
    check_seed(seed)
    out = torch.empty((n, 4), dtype=torch.int64, device=device)
    if n:
        step_value, step_ptr = _step_args(step)
        with device_guard(out.device):
            _philox_kernel[(triton.cdiv(n, PHILOX_BLOCK),)](
                out, n, offset, seed, step_value, step_ptr, sample & _MASK32, BLOCK=PHILOX_BLOCK, num_warps=4,
            )
    return out


def noise_(t, p, coef, *, seed, step, sample, base=None, found_inf=None):
    check_seed(seed)
    if t.noise_offsets is None:
        raise ValueError("noise_ needs a table built with offsets")
    items = t.plain
    if not items.count:
        return
    ps = t.slot(p)
    bs = t.slot(base) if base is not None else ps
    coef_factor, coef_ptr = scalar_args(coef)
    step_value, step_ptr = _step_args(step)
    with t.launching():
        _noise_kernel[(items.count,)](
            items.table, items.stride, ps.base, ps.offsets, bs.base, bs.offsets, t.noise_offsets, t.dims,
            coef_factor, coef_ptr, found_inf, seed, step_value, step_ptr, sample & _MASK32,
            ALIGNED=ps.aligned and bs.aligned and t.noise_aligned, PERMUTED=t.permuted, BLOCK=t.block,
            num_warps=t.num_warps,
        )


assert MAX_DIMS == 5, "the kernels above index 1 + 2 * 5 integers per tensor"
