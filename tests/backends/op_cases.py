"""Tensor lists every backend's ops are checked on, and the per-dtype tolerances.

Odd sizes, 0-element tensors, conv weights, many tiny tensors, and fp32/bf16/fp16. Sizes
stay small enough for the Triton interpreter on a 2-core CPU.
"""
from __future__ import annotations

import torch

SHAPES = {
    "odd": [(1,), (7,), (123,), (10001,), (0,), (3, 0), (1, 1)],
    "conv": [(8, 3, 3, 3), (16, 8, 3, 3), (5, 7), (16,), (4, 300)],
    # Many tiny tensors (biases, norms); 48 keeps the Triton interpreter fast, and the launch
    # count tests show 1000 tensors cost the same launches.
    "tiny": [((i % 5) + 1,) if i % 3 else (2, (i % 4) + 1) for i in range(48)],
}

DTYPES = [torch.float32, torch.bfloat16, torch.float16]

# (atol, rtol) for values stored in each dtype: fp32 math everywhere, so low precision
# differs by at most a rounding step of the stored result.
TOLERANCES = {
    torch.float32: (1e-5, 1e-5),
    torch.bfloat16: (2e-2, 1.6e-2),
    torch.float16: (2e-3, 2e-3),
}


def make_list(case, dtype=torch.float32, device="cpu", scale=1.0, positive=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for shape in SHAPES[case]:
        t = torch.randn(shape, generator=gen) * scale
        if positive:
            t = t.abs() + 0.1
        out.append(t.to(device=device, dtype=dtype))
    return out


def gc_flags(tensors):
    return [t.dim() > 1 for t in tensors]


def clone_list(tensors):
    return [t.clone() for t in tensors]


def assert_lists_close(actual, expected, dtype=None):
    assert len(actual) == len(expected)
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert a.shape == e.shape and a.dtype == e.dtype, (i, a.shape, e.shape, a.dtype, e.dtype)
        atol, rtol = TOLERANCES[dtype or e.dtype]
        torch.testing.assert_close(a.float(), e.float(), atol=atol, rtol=rtol, msg=lambda m: f"tensor {i} {tuple(e.shape)}: {m}")


def offsets_of(tensors, start=0):
    """Global element offsets of a list laid end to end from ``start`` (NSO's noise index)."""
    out, total = [], start
    for t in tensors:
        out.append(total)
        total += t.numel()
    return out


def build_table(backend, lists, *, gc=None, offsets=None, scalars=(), grads=None):
    """A contract-v2 table of ``backend`` over ``lists["param"]``, every other list bound by name.

    ``scalars`` names the lists bound with ``bind_scalars`` (one-element tensors, e.g. Adam's
    steps); ``grads``: give the param tensors these ``.grad`` and bind the slot "grad" to them.
    """
    table = backend.Table(lists["param"], gc_rows=gc, offsets=offsets)
    for name, tensors in lists.items():
        if name == "param" or tensors is None:
            continue
        if name in scalars:
            table.bind_scalars(name, tensors)
        else:
            table.bind(name, tensors)
    if grads is not None:
        for p, g in zip(lists["param"], grads):
            p.grad = g
        table.bind_grads("grad")
    table.refresh(grads=grads is not None)
    return table


def clone_lists(lists):
    return {name: None if ts is None else clone_list(ts) for name, ts in lists.items()}
