"""The ``cpp`` backend: every op of the contract in the compiled extension ``flatmin_kernels._C``.

The kernels live in csrc/: one set of per-element math (csrc/include/flatmin) compiled into
multi-tensor CPU loops and, in a CUDA build, chunked CUDA kernels. This module only adapts
arguments: it hands the extension the tensor lists, python numbers or 0-d tensors for scalars,
and the current CUDA stream. See :mod:`flatmin_kernels.backends.contract` for the semantics.

When the extension is missing (not built, or built for another torch) the package still
works on its other backends: :func:`available` says why, and one warning is issued.
"""
from __future__ import annotations

import warnings

import torch

name = "cpp"

try:
    from flatmin_kernels import _C
except ImportError as exc:  # not built (FLATMIN_BUILD_EXT=0) or built against another torch
    _C = None
    _IMPORT_ERROR = f"flatmin_kernels._C is not importable ({exc}); build it with `pip install --no-build-isolation -e .`"
    warnings.warn(f"flatmin_kernels: the cpp backend is unavailable: {_IMPORT_ERROR}", RuntimeWarning, stacklevel=2)
else:
    _IMPORT_ERROR = None


def available() -> tuple[bool, str]:
    if _C is None:
        return False, _IMPORT_ERROR
    return True, "compiled extension flatmin_kernels._C (" + ("CPU and CUDA" if _C.with_cuda else "CPU only") + ")"


def supports(device: torch.device) -> bool:
    device = torch.device(device)
    return _C is not None and (device.type == "cpu" or (device.type == "cuda" and _C.with_cuda))


def _stream(device: torch.device) -> int:
    """The raw handle of the current CUDA stream of ``device`` (0 on the CPU); no synchronisation."""
    return torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0


def _flags(centralize):
    return None if centralize is None else [bool(f) for f in centralize]


def _check_seed(seed: int):
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")


# ----------------------------------------------------------------------------- reductions


def sumsq(tensors, *, weights=None, centralize=None):
    if not tensors:
        return torch.zeros(0, dtype=torch.float32)
    return _C.sumsq(list(tensors), weights, _flags(centralize), _stream(tensors[0].device))


def dot(xs, ys):
    if not xs:
        return torch.zeros(0, dtype=torch.float32)
    return _C.dot(list(xs), list(ys), _stream(xs[0].device))


# ----------------------------------------------------------------------------- element-wise


def centralize_(tensors, centralize):
    if tensors:
        _C.centralize_(list(tensors), _flags(centralize), _stream(tensors[0].device))


def axpby_(ys, xs, a, b):
    if not ys:
        return
    a_is_zero = not torch.is_tensor(a) and a == 0
    _C.axpby_(list(ys), list(xs), a, b, a_is_zero, _stream(ys[0].device))


def perturb_(params, directions, scale, *, save_to=None, base=None, centralize=None,
             adaptive=False, found_inf=None):
    if not params:
        return
    _C.perturb_(list(params), list(directions), scale, save_to, base, _flags(centralize),
                bool(adaptive), found_inf, _stream(params[0].device))


# ----------------------------------------------------------------------------- noise


def philox(n, *, seed, step, sample, offset, device="cpu"):
    _check_seed(seed)
    device = torch.device(device)
    out = torch.empty((n, 4), dtype=torch.int64, device=device)
    _C.philox_(out, seed, step & 0xFFFFFFFF, sample & 0xFFFFFFFF, offset, _stream(device))
    return out


def noise_(params, coef, *, seed, step, sample, offsets, base=None, found_inf=None):
    if not params:
        return
    _check_seed(seed)
    _C.noise_(list(params), coef, seed, step & 0xFFFFFFFF, sample & 0xFFFFFFFF, [int(o) for o in offsets],
              base, found_inf, _stream(params[0].device))


# ----------------------------------------------------------------------------- base updates


def step_sgd_(params, grads, momentum_buffers, *, lr, weight_decay, momentum, dampening,
              nesterov, maximize, init_buffers=False, centralize=None, backups=None,
              grad_scale=None, found_inf=None):
    if not params:
        return
    _C.step_sgd_(list(params), list(grads), momentum_buffers, lr, float(weight_decay), float(momentum),
                 float(dampening), bool(nesterov), bool(maximize), bool(init_buffers), _flags(centralize),
                 backups, grad_scale, found_inf, _stream(params[0].device))


def step_adam_(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, *, lr, beta1,
               beta2, eps, weight_decay, decoupled, amsgrad, maximize, centralize=None,
               backups=None, grad_scale=None, found_inf=None):
    if not params:
        return
    _C.step_adam_(list(params), list(grads), list(exp_avgs), list(exp_avg_sqs), max_exp_avg_sqs, list(steps),
                  lr, float(beta1), float(beta2), float(eps), float(weight_decay), bool(decoupled),
                  bool(amsgrad), bool(maximize), _flags(centralize), backups, grad_scale, found_inf,
                  _stream(params[0].device))
