"""philox and noise_: the contract's Philox4x32-10 + Box-Muller normals, made in the kernel.

Element j of the optimizer's flattened list, step t and sample k use counter
(j_lo, j_hi, t, k) and key (seed_lo, seed_hi): Triton's ``tl.philox`` is exactly that
generator (Random123's constants). The noise is regenerated on every call, never stored.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import BLOCK, NUM_WARPS, store_end, load_scalar, precise_cos, precise_log, scalar_arg, item_header, tile
from .tables import layout

_MASK32 = 0xFFFFFFFF


@triton.jit
def _philox_words(j, seed, step, sample):
    """The four uint32 words for int64 global indices j."""
    c0 = j.to(tl.uint32)  # truncation: the low word
    c1 = (j >> 32).to(tl.uint32)
    c2 = (tl.zeros_like(j) + step).to(tl.uint32)
    c3 = (tl.zeros_like(j) + sample).to(tl.uint32)
    return tl.philox(seed, c0, c1, c2, c3)


@triton.jit
def _normal(j, seed, step, sample):
    """Box-Muller on the first two words, in fp32, exactly as the contract writes it."""
    x0, x1, _, _ = _philox_words(j, seed, step, sample)
    u1 = ((x0 >> 8) | 1).to(tl.float32) * 5.9604644775390625e-08  # 2**-24
    u2 = ((x1 >> 8) | 1).to(tl.float32) * 5.9604644775390625e-08
    return tl.sqrt_rn(-2.0 * precise_log(u1)) * precise_cos(6.283185307179586 * u2)


@triton.jit
def _philox_kernel(out, n, offset, seed, step, sample, BLOCK: tl.constexpr):
    k = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = k < n
    x0, x1, x2, x3 = _philox_words(offset + k, seed, step, sample)
    tl.store(out + 4 * k, x0.to(tl.int64), mask=mask)
    tl.store(out + 4 * k + 1, x1.to(tl.int64), mask=mask)
    tl.store(out + 4 * k + 2, x2.to(tl.int64), mask=mask)
    tl.store(out + 4 * k + 3, x3.to(tl.int64), mask=mask)


@triton.jit
def _noise_kernel(items, n_items, p0, p_off, b0, b_off, j_off, coef, found_inf, seed, step, sample,
                  COEF_PTR: tl.constexpr, HAS_BASE: tl.constexpr, HAS_FOUND_INF: tl.constexpr,
                  RB: tl.constexpr, CB: tl.constexpr):
    pid = tl.program_id(0)
    t, start, end, row, gc = item_header(items, n_items, pid)
    p_ptr = p0 + tl.load(p_off + t)
    b_ptr = b0 + tl.load(b_off + t)
    first_j = tl.load(j_off + t)
    a = load_scalar(coef, COEF_PTR)
    write_end = store_end(end, found_inf, HAS_FOUND_INF)
    for r0 in range(start, end, row * RB):
        idx, mask = tile(r0, row, end, 0, RB, CB)
        if HAS_BASE:
            b = tl.load(b_ptr + idx, mask=mask, other=0.0).to(tl.float32)
        else:
            b = tl.load(p_ptr + idx, mask=mask, other=0.0).to(tl.float32)
        tl.store(p_ptr + idx, b + a * _normal(first_j + idx, seed, step, sample), mask=mask & (idx < write_end))


def _check_seed(seed: int):
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")


def philox(n, *, seed, step, sample, offset, device="cpu"):
    _check_seed(seed)
    out = torch.empty((n, 4), dtype=torch.int64, device=device)
    if n:
        _philox_kernel[(triton.cdiv(n, BLOCK),)](
            out, n, offset, seed, step & _MASK32, sample & _MASK32, BLOCK=BLOCK, num_warps=NUM_WARPS
        )
    return out


def noise_(params, coef, *, seed, step, sample, offsets, base=None, found_inf=None):
    if not params:
        return
    _check_seed(seed)
    lists = [params] if base is None else [params, base]
    lay = layout(lists, names=["params", "base"], extra=offsets)
    if lay.n_items == 0:
        return
    b_k = 1 if base is not None else 0
    coef_arg, coef_ptr = scalar_arg(coef)
    _noise_kernel[(lay.n_items,)](
        lay.items, lay.n_items, lay.base(0, params), lay.offsets(0),
        lay.base(b_k, lists[b_k]), lay.offsets(b_k), lay.extra, coef_arg, found_inf,
        seed, step & _MASK32, sample & _MASK32,
        COEF_PTR=coef_ptr, HAS_BASE=base is not None, HAS_FOUND_INF=found_inf is not None,
        RB=lay.rb, CB=lay.cb, num_warps=NUM_WARPS,
    )
