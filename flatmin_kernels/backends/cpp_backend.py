"""The ``cpp`` backend: every op of the contract in the compiled extension ``flatmin_kernels._C``.

The kernels live in csrc/: one set of per-element math (csrc/include/flatmin) compiled into
multi-tensor CPU loops (once per instruction set, AVX-512 / AVX2 / baseline, chosen at run time)
and, in a CUDA build, chunked CUDA kernels. :class:`Table` is the C++ table of csrc/table.h: it
holds the slot lists in C++ and reads every tensor's address (gradients included) there at each
op, so an op call converts no Python list. This module only adapts the contract's keyword
signatures; see :mod:`flatmin_kernels.backends.contract` for the semantics.

When the extension is missing (not built, or built for another torch) the package still
works on its other backends: :func:`available` says why, and one warning is issued.
"""
from __future__ import annotations

import warnings

import torch

from .contract import axpby_reads_y, epilogue_fields

name = "cpp"

try:
    from flatmin_kernels import _C
except ImportError as exc:  # not built (FLATMIN_BUILD_EXT=0) or built against another torch
    _C = None
    _IMPORT_ERROR = f"flatmin_kernels._C is not importable ({exc}); build it with `pip install --no-build-isolation -e .`"
    warnings.warn(f"flatmin_kernels: the cpp backend is unavailable: {_IMPORT_ERROR}", RuntimeWarning, stacklevel=2)
else:
    _IMPORT_ERROR = None

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_PLAIN_TYPES = (torch.Tensor, torch.nn.Parameter)


def available() -> tuple[bool, str]:
    if _C is None:
        return False, _IMPORT_ERROR
    where = "CPU and CUDA" if _C.with_cuda else "CPU only"
    return True, f"compiled extension flatmin_kernels._C ({where}; CPU loops: {_C.cpu_isa()})"


def supports(device) -> bool:
    device = torch.device(device)
    return _C is not None and (device.type == "cpu" or (device.type == "cuda" and _C.with_cuda))


def serves(tensor: torch.Tensor, gc: bool = False) -> bool:
    """fp32/bf16/fp16 plain tensors (or nn.Parameters), dense, on the CPU or (CUDA builds) CUDA;
    with ``gc``, dim 0 must be the outermost dimension in memory."""
    if type(tensor) not in _PLAIN_TYPES or tensor.layout != torch.strided or tensor.dtype not in _DTYPES:
        return False
    if tensor.is_meta or not supports(tensor.device) or not _C.is_dense(tensor):
        return False
    if gc:
        if tensor.dim() == 0:
            return False
        rows = tensor.shape[0]
        return rows <= 1 or tensor.numel() == 0 or tensor.stride(0) == tensor.numel() // rows
    return True


if _C is not None:
    Table = _C.Table
else:
    class Table:  # noqa: D101 - only so that the module defines the contract's names
        def __init__(self, *args, **kwargs):
            raise RuntimeError(f"the cpp backend is unavailable: {_IMPORT_ERROR}")


def _epilogue(epilogue):
    """The epilogue as the extension takes it (None for none)."""
    return None if epilogue is None else epilogue_fields(epilogue)


def _check_seed(seed: int):
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")


# ----------------------------------------------------------------------------- reductions


def sumsq(t, x, *, weights=None, centralize=False, out, index=0, accumulate=False, epilogue=None):
    _C.sumsq(t, x, weights, centralize, out, index, accumulate, _epilogue(epilogue))


def dot(t, x, y, *, out, index=0, accumulate=False):
    _C.dot(t, x, y, out, index, accumulate)


# ----------------------------------------------------------------------------- element-wise


def centralize_(t, x):
    _C.centralize_(t, x)


def axpby_(t, y, x, a, b, *, reduce=None, z=None, weights=None, out=None, index=0, accumulate=False,
           epilogue=None):
    _C.axpby_(t, y, x, a, b, not axpby_reads_y(a), reduce, z, weights, out, index, accumulate, _epilogue(epilogue))


def perturb_(t, p, d, scale, *, minus=None, base=None, save_to=None, copy_d_to=None, centralize=False,
             adaptive=False, found_inf=None):
    _C.perturb_(t, p, d, scale, minus, base, save_to, copy_d_to, centralize, adaptive, found_inf)


# ----------------------------------------------------------------------------- noise


def philox(n, *, seed, step, sample, offset, device="cpu"):
    _check_seed(seed)
    out = torch.empty((n, 4), dtype=torch.int64, device=device)
    _C.philox_(out, seed, step, sample, offset)
    return out


def noise_(t, p, coef, *, seed, step, sample, base=None, found_inf=None):
    _check_seed(seed)
    _C.noise_(t, p, coef, seed, step, sample, base, found_inf)


# ----------------------------------------------------------------------------- base updates


def step_sgd_(t, p, g, buf, *, lr, weight_decay, momentum, dampening, nesterov, maximize, init_buffers=False,
              centralize=False, backup=None, g2=None, g_coef=1.0, g2_coef=1.0, grad_scale=None, found_inf=None):
    _C.step_sgd_(t, p, g, buf, lr, weight_decay, momentum, dampening, nesterov, maximize, init_buffers, centralize,
                 backup, g2, g_coef, g2_coef, grad_scale, found_inf)


def step_adam_(t, p, g, m, v, vmax, steps, *, lr, beta1, beta2, eps, weight_decay, decoupled, amsgrad, maximize,
               centralize=False, backup=None, g2=None, g_coef=1.0, g2_coef=1.0, grad_scale=None, found_inf=None):
    _C.step_adam_(t, p, g, m, v, vmax, steps, lr, beta1, beta2, eps, weight_decay, decoupled, amsgrad, maximize,
                  centralize, backup, g2, g_coef, g2_coef, grad_scale, found_inf)
