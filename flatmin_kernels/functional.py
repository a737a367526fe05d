"""``flatmin_kernels.functional``: the fused ops as a stable public API over plain tensor lists.

For other optimizer libraries and research code that want flatmin's fused kernels without its
optimizer classes. Every function

* takes plain lists of tensors (any mix of devices and dtypes: it groups them into buckets of
  one device and dtype itself, one fused launch per bucket);
* accepts python numbers or 1-element device tensors for its scalars, and never synchronises
  with the host;
* validates its input first -- list lengths, shapes, devices, floating dtypes, sparse or
  complex tensors -- and raises an error naming the offending list and index, with nothing
  changed;
* picks the backend like the optimizers do (``backend="auto"``: ``FLATMIN_BACKEND``, else the
  fastest that runs on the device), or the one named by ``backend=``.

The update functions follow ``torch.optim``'s functional forms (``torch.optim.sgd.sgd``,
``torch.optim.adam.adam``): same lists in the same order, same hyperparameter names, and the
same meaning of ``grad_scale`` (gradients are divided by it) and ``found_inf`` (> 0: skip).
They extend them with gradient centralization (``centralize``) and the SAM restore folded into
the update (``backups``: read the unperturbed weights from there; on a skipped step the
parameters are put back to the backups, never left perturbed).

Version promise: the names in ``__all__`` and their signatures follow semantic versioning
(``API_VERSION``): a minor version only adds keyword arguments with defaults or new
functions; anything else is a major version. ``tests/test_functional_api.py`` pins them.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from . import backends
from .backends.contract import InvNorm
from .plan import Plan

API_VERSION = "1.0"

Scalar = Union[float, int, torch.Tensor]
Centralize = Union[None, str, Sequence[bool]]

__all__ = [
    "API_VERSION",
    "sumsq",
    "global_norm",
    "dot",
    "centralize_",
    "axpby_",
    "perturb_",
    "sam_perturb_",
    "restore_",
    "noise_",
    "sgd_",
    "adam_",
    "adamw_",
]

_GC_MIN_NDIM = {"gc": 2, "gcc": 4}


# ----------------------------------------------------------------------------- validation


def _as_list(name, tensors, *, allow_none=False):
    if isinstance(tensors, torch.Tensor) or not isinstance(tensors, (list, tuple)):
        raise TypeError(f"{name} must be a list or tuple of tensors, got {type(tensors).__name__}")
    for i, t in enumerate(tensors):
        if t is None and allow_none:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}[{i}] is a {type(t).__name__}, not a tensor")
        if t.is_sparse or t.layout != torch.strided:
            raise ValueError(f"{name}[{i}] is a sparse tensor ({t.layout}); flatmin's fused ops need dense tensors")
        if t.is_complex():
            raise ValueError(f"{name}[{i}] is complex ({t.dtype}); pass torch.view_as_real(...) of it")
        if not t.is_floating_point():
            raise ValueError(f"{name}[{i}] has dtype {t.dtype}; flatmin's fused ops need floating-point tensors")
    return list(tensors)


def _check_parallel(first_name, first, **others):
    """Every other list has the length of ``first`` and, index by index, its shape and device."""
    for name, ts in others.items():
        if ts is None:
            continue
        if len(ts) != len(first):
            raise ValueError(f"{name} has {len(ts)} tensors but {first_name} has {len(first)}")
        for i, (t, ref) in enumerate(zip(ts, first)):
            if t is None:
                continue
            if t.shape != ref.shape:
                raise ValueError(f"{name}[{i}] has shape {tuple(t.shape)} but {first_name}[{i}] has shape {tuple(ref.shape)}")
            if t.device != ref.device:
                raise ValueError(f"{name}[{i}] is on {t.device} but {first_name}[{i}] is on {ref.device}")


def _check_scalar(name, value, devices):
    if torch.is_tensor(value):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a number or a one-element tensor, got shape {tuple(value.shape)}")
        if not value.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {value.dtype}")
        if len(devices) > 1 or (devices and value.device != next(iter(devices))):
            raise ValueError(f"{name} is on {value.device}; a tensor scalar must be on the tensors' device "
                             f"({', '.join(sorted(str(d) for d in devices))})")
    elif not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number or a one-element tensor, got {type(value).__name__}")


def _devices(tensors):
    return {t.device for t in tensors}


def _flags(centralize: Centralize, tensors):
    """Per-tensor GC flags (or None) from None, "gc", "gcc" or a sequence of bools."""
    if centralize is None:
        return None
    if isinstance(centralize, str):
        if centralize not in _GC_MIN_NDIM:
            raise ValueError(f"unknown centralize value {centralize!r}; choose None, 'gc', 'gcc' or a list of bools")
        flags = [t.dim() >= _GC_MIN_NDIM[centralize] for t in tensors]
    else:
        flags = [bool(f) for f in centralize]
        if len(flags) != len(tensors):
            raise ValueError(f"centralize has {len(flags)} flags for {len(tensors)} tensors")
    return flags if any(flags) else None


# ----------------------------------------------------------------------------- dispatch


def _plan(first, lists, *, backend, gc=None, offsets=None, fresh=None):
    """A transient plan over ``first`` (slot "param") with every other list bound by name:
    the same host path as the optimizers', built for one call."""
    backends.check_choice(backend)
    plan = Plan(first, backend=backend, gc_rows=gc, offsets=offsets, fresh=fresh, live_grads=False,
                also=list(lists.values()))
    for name, tensors in lists.items():
        if tensors is not None:
            plan.bind(name, tensors)
    return plan


def _result(plan, index, device):
    """Per-step scalar ``index`` of a plan as a fresh 0-d tensor on ``device``."""
    if not plan.buckets:
        return torch.zeros((), dtype=torch.float32, device=device)
    return plan.scalars[plan.devices[0]][index].clone()


def _scalar_for(value):
    """A functional scalar as the per-bucket value the ops take (tensors on each bucket's device)."""
    if torch.is_tensor(value):
        return lambda b: value.to(device=b.device, dtype=torch.float32).reshape(1)
    return value


# ----------------------------------------------------------------------------- reductions


def sumsq(tensors, *, weights=None, centralize: Centralize = None, backend: str = "auto") -> torch.Tensor:
    """``sum_i sum((C(x_i) * |w_i|) ** 2)`` as a 0-d fp32 tensor on ``tensors[0]``'s device.

    C is gradient centralization where ``centralize`` asks for it; ``weights`` (ASAM's |w|
    weighting) is optional. An empty list gives 0 on the CPU.
    """
    tensors = _as_list("tensors", tensors)
    weights = None if weights is None else _as_list("weights", weights)
    _check_parallel("tensors", tensors, weights=weights)
    flags = _flags(centralize, tensors)
    plan = _plan(tensors, {"w": weights}, backend=backend, gc=flags)
    plan.reduce("sumsq", "param", weights=None if weights is None else "w", centralize=flags is not None, index=0)
    return _result(plan, 0, tensors[0].device if tensors else torch.device("cpu"))


def global_norm(tensors, *, weights=None, centralize: Centralize = None, backend: str = "auto") -> torch.Tensor:
    """The global L2 norm ``sqrt(sumsq(...))`` of a list (SAM's ``||g||``), a 0-d fp32 device tensor."""
    return sumsq(tensors, weights=weights, centralize=centralize, backend=backend).sqrt()


def dot(xs, ys, *, backend: str = "auto") -> torch.Tensor:
    """``sum_i sum(x_i * y_i)`` as a 0-d fp32 tensor on ``xs[0]``'s device."""
    xs, ys = _as_list("xs", xs), _as_list("ys", ys)
    _check_parallel("xs", xs, ys=ys)
    plan = _plan(xs, {"y": ys}, backend=backend)
    plan.reduce("dot", "param", "y", index=0)
    return _result(plan, 0, xs[0].device if xs else torch.device("cpu"))


# ----------------------------------------------------------------------------- element-wise


def centralize_(tensors, *, centralize: Centralize = "gc", backend: str = "auto") -> None:
    """Gradient centralization in place: each flagged tensor minus its mean over all dims but 0.

    ``"gc"`` flags every tensor with more than one dimension, ``"gcc"`` conv weights only
    (more than three); a list of bools flags tensors one by one.
    """
    tensors = _as_list("tensors", tensors)
    flags = _flags(centralize, tensors)
    if flags is None:
        return
    _plan(tensors, {}, backend=backend, gc=flags).each("centralize_", "param")


def axpby_(ys, xs, a: Scalar, b: Scalar, *, backend: str = "auto") -> None:
    """``y <- a * y + b * x`` for every pair; with ``a`` the number 0, y is not read."""
    ys, xs = _as_list("ys", ys), _as_list("xs", xs)
    _check_parallel("ys", ys, xs=xs)
    devices = _devices(ys)
    _check_scalar("a", a, devices)
    _check_scalar("b", b, devices)
    plan = _plan(ys, {"x": xs}, backend=backend)
    plan.each("axpby_", "param", "x", a=_scalar_for(a), b=_scalar_for(b))


def perturb_(params, directions, scale: Scalar, *, backups=None, base=None, centralize: Centralize = None,
             adaptive: bool = False, found_inf: Optional[torch.Tensor] = None, backend: str = "auto") -> None:
    """``p <- b + scale * D``: the ascent step of SAM-type methods, in one pass.

    ``b`` is ``base[i]`` if given, else ``p`` itself; ``D = C(d)``, times ``b ** 2`` when
    ``adaptive`` (ASAM). ``backups`` receives an exact copy of ``p`` first (also when the step
    is skipped by ``found_inf > 0``, which leaves ``p`` unchanged).
    """
    params, directions = _as_list("params", params), _as_list("directions", directions)
    backups = None if backups is None else _as_list("backups", backups)
    base = None if base is None else _as_list("base", base)
    _check_parallel("params", params, directions=directions, backups=backups, base=base)
    if backups is not None:
        for i, (s, p) in enumerate(zip(backups, params)):
            if s.dtype != p.dtype:
                raise ValueError(f"backups[{i}] has dtype {s.dtype} but params[{i}] has {p.dtype}; a backup is an exact copy")
    devices = _devices(params)
    _check_scalar("scale", scale, devices)
    if found_inf is not None:
        _check_scalar("found_inf", found_inf, devices)
    flags = _flags(centralize, params)
    plan = _plan(params, {"d": directions, "backup": backups, "base": base}, backend=backend, gc=flags)
    plan.each("perturb_", "param", "d", scale=_scalar_for(scale), save_to=None if backups is None else "backup",
              base=None if base is None else "base", centralize=flags is not None, adaptive=bool(adaptive),
              found_inf=_scalar_for(found_inf))


def sam_perturb_(params, grads, *, rho: Scalar, adaptive: bool = False, centralize: Centralize = None,
                 eps: float = 1e-12, backups=None, backend: str = "auto") -> torch.Tensor:
    """SAM's (or ASAM's) whole first step: ``p <- p + rho * D / (||D'|| + eps)``.

    ``D = C(g)`` (times ``p ** 2`` for ASAM) and ``||D'||`` is the global norm of ``C(g)``
    (times ``|p|`` for ASAM) over the whole list. ``backups`` receives an exact copy of the
    parameters first. Returns ``found_inf``, a 0-d fp32 device tensor: 1.0 when the norm was not
    finite, in which case no parameter moved. One reduction (whose second stage computes the
    scale and found_inf on the device) and one perturbation pass per bucket.
    """
    params, grads = _as_list("params", params), _as_list("grads", grads)
    backups = None if backups is None else _as_list("backups", backups)
    _check_parallel("params", params, grads=grads, backups=backups)
    _check_scalar("rho", rho, _devices(params))
    flags = _flags(centralize, params)
    plan = _plan(params, {"g": grads, "backup": backups}, backend=backend, gc=flags)
    plan.reduce("sumsq", "g", weights="param" if adaptive else None, centralize=flags is not None, index=0,
                epilogue=InvNorm(eps, inv=1, inf=2))
    rho_value = (lambda b: (1.0, rho.to(b.device, torch.float32).reshape(1) * plan.scalar(1, b.device))) \
        if torch.is_tensor(rho) else (lambda b: (float(rho), plan.scalar(1, b.device)))
    plan.each("perturb_", "param", "g", scale=rho_value, save_to=None if backups is None else "backup",
              centralize=flags is not None, adaptive=bool(adaptive), found_inf=lambda b: plan.scalar(2, b.device))
    return _result(plan, 2, params[0].device if params else torch.device("cpu"))


def restore_(params, backups, *, backend: str = "auto") -> None:
    """``p <- backup``, bit for bit (SAM's way back when the update is not fused with it)."""
    params, backups = _as_list("params", params), _as_list("backups", backups)
    _check_parallel("params", params, backups=backups)
    _plan(params, {"backup": backups}, backend=backend).each("axpby_", "param", "backup", 0, 1)


def noise_(params, coef: Scalar, *, seed: int, step: Union[int, torch.Tensor], sample: int = 0,
           offsets: Optional[Sequence[int]] = None, base=None, found_inf: Optional[torch.Tensor] = None,
           backend: str = "auto") -> None:
    """``p <- b + coef * N``: antithetic noise (coef = +sigma, -sigma, ...) regenerated from a seed.

    N is the standard normal of element ``j = offsets[i] + k`` of the flattened list (default
    offsets: the running element count, so j is the element's index in the concatenated
    list), made by Philox4x32-10 keyed by ``seed`` (four normals per generator call: see
    ``flatmin_kernels.backends.contract``); never stored. ``step`` is an int or a one-element
    int64 device tensor (read on the device: a captured CUDA graph draws new noise each replay).
    ``b`` is ``base[i]`` if given (``p <- base + coef * N``), else ``p``.
    """
    params = _as_list("params", params)
    base = None if base is None else _as_list("base", base)
    _check_parallel("params", params, base=base)
    if not 0 <= int(seed) < 2**64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    if offsets is None:
        offsets, total = [], 0
        for p in params:
            offsets.append(total)
            total += p.numel()
    elif len(offsets) != len(params):
        raise ValueError(f"offsets has {len(offsets)} entries but params has {len(params)}")
    devices = _devices(params)
    _check_scalar("coef", coef, devices)
    if torch.is_tensor(step):
        if step.numel() != 1 or step.dtype != torch.int64:
            raise ValueError(f"step must be an int or a one-element int64 tensor, got {step.dtype} of shape {tuple(step.shape)}")
        step_value = lambda b: step.to(b.device).reshape(1)  # noqa: E731
    else:
        step_value = int(step)
    plan = _plan(params, {"base": base}, backend=backend, offsets=list(offsets))
    plan.each("noise_", "param", coef=_scalar_for(coef), seed=int(seed), step=step_value, sample=int(sample),
              base=None if base is None else "base", found_inf=_scalar_for(found_inf))


# ----------------------------------------------------------------------------- base updates


def _check_step_scalars(devices, grad_scale, found_inf):
    for name, value in (("grad_scale", grad_scale), ("found_inf", found_inf)):
        if value is not None:
            _check_scalar(name, value, devices)


def sgd_(params, grads, momentum_buffers, *, lr: Scalar, weight_decay: float = 0.0, momentum: float = 0.0,
         dampening: float = 0.0, nesterov: bool = False, maximize: bool = False, centralize: Centralize = None,
         backups=None, grad_scale: Optional[torch.Tensor] = None, found_inf: Optional[torch.Tensor] = None,
         backend: str = "auto") -> None:
    """``torch.optim.sgd.sgd``'s update, fused, with GC after L2 decay and before momentum (SGD_GC).

    ``momentum_buffers``: one entry per parameter (or None when ``momentum == 0``); a ``None``
    entry is created from the first gradient (``buf = g``, as torch does) and stored back into
    the list. ``backups``: the unperturbed weights (SAM's restore folded into the update; on a
    skipped step the parameters are set back to them).
    """
    params, grads = _as_list("params", params), _as_list("grads", grads)
    if momentum != 0:
        if momentum_buffers is None:
            raise ValueError("momentum != 0 needs momentum_buffers (a list; None entries are created)")
        bufs = _as_list("momentum_buffers", momentum_buffers, allow_none=True)
    else:
        bufs = None
    backups = None if backups is None else _as_list("backups", backups)
    _check_parallel("params", params, grads=grads, momentum_buffers=bufs, backups=backups)
    devices = _devices(params)
    _check_scalar("lr", lr, devices)
    _check_step_scalars(devices, grad_scale, found_inf)
    flags = _flags(centralize, params)
    fresh = None
    if bufs is not None:
        fresh = [b is None for b in bufs]
        for i, b in enumerate(bufs):
            if b is None:
                # zeros, not empty: if this first update is skipped (found_inf) the buffer holds no garbage
                bufs[i] = momentum_buffers[i] = torch.zeros_like(params[i], memory_format=torch.preserve_format)
    plan = _plan(params, {"g": grads, "buf": bufs, "backup": backups}, backend=backend, gc=flags, fresh=fresh)
    plan.each("step_sgd_", "param", "g", "buf" if bufs is not None else None, lr=_scalar_for(lr),
              weight_decay=weight_decay, momentum=momentum, dampening=dampening, nesterov=nesterov,
              maximize=maximize, init_buffers=lambda b: b.fresh, centralize=flags is not None,
              backup=None if backups is None else "backup", grad_scale=_scalar_for(grad_scale),
              found_inf=_scalar_for(found_inf))


def adam_(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, *, lr: Scalar, beta1: float = 0.9,
          beta2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False,
          maximize: bool = False, decoupled_weight_decay: bool = False, centralize: Centralize = None,
          backups=None, grad_scale: Optional[torch.Tensor] = None, found_inf: Optional[torch.Tensor] = None,
          backend: str = "auto") -> None:
    """``torch.optim.adam.adam``'s update (AdamW with ``decoupled_weight_decay=True``), fused.

    GC sits where Adam_GC / AdamW_GC put it: on the gradient, after L2 decay, before the
    moments. ``state_steps``: one fp32 one-element tensor per parameter, on its device,
    advanced in place (not on a skipped step). ``max_exp_avg_sqs`` is used only with amsgrad.
    ``backups``: as for :func:`sgd_`.
    """
    params, grads = _as_list("params", params), _as_list("grads", grads)
    exp_avgs, exp_avg_sqs = _as_list("exp_avgs", exp_avgs), _as_list("exp_avg_sqs", exp_avg_sqs)
    vmax = _as_list("max_exp_avg_sqs", max_exp_avg_sqs) if amsgrad else None
    backups = None if backups is None else _as_list("backups", backups)
    _check_parallel("params", params, grads=grads, exp_avgs=exp_avgs, exp_avg_sqs=exp_avg_sqs,
                    max_exp_avg_sqs=vmax, backups=backups)
    steps = list(state_steps)
    if len(steps) != len(params):
        raise ValueError(f"state_steps has {len(steps)} tensors but params has {len(params)}")
    for i, (s, p) in enumerate(zip(steps, params)):
        if not torch.is_tensor(s) or s.numel() != 1 or s.dtype != torch.float32 or s.device != p.device:
            raise ValueError(f"state_steps[{i}] must be a one-element float32 tensor on {p.device} "
                             f"(the step count, read and advanced on the device)")
    devices = _devices(params)
    _check_scalar("lr", lr, devices)
    _check_step_scalars(devices, grad_scale, found_inf)
    flags = _flags(centralize, params)
    plan = _plan(params, {"g": grads, "m": exp_avgs, "v": exp_avg_sqs, "vmax": vmax, "backup": backups},
                 backend=backend, gc=flags)
    plan.bind_scalars("step", steps)
    plan.each("step_adam_", "param", "g", "m", "v", "vmax" if amsgrad else None, "step", lr=_scalar_for(lr),
              beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, decoupled=bool(decoupled_weight_decay),
              amsgrad=bool(amsgrad), maximize=bool(maximize), centralize=flags is not None,
              backup=None if backups is None else "backup", grad_scale=_scalar_for(grad_scale),
              found_inf=_scalar_for(found_inf))


def adamw_(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, *, lr: Scalar, beta1: float = 0.9,
           beta2: float = 0.999, eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False,
           maximize: bool = False, centralize: Centralize = None, backups=None,
           grad_scale: Optional[torch.Tensor] = None, found_inf: Optional[torch.Tensor] = None,
           backend: str = "auto") -> None:
    """``torch.optim.adamw.adamw``'s update: :func:`adam_` with decoupled weight decay."""
    adam_(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, lr=lr, beta1=beta1, beta2=beta2,
          eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize, decoupled_weight_decay=True,
          centralize=centralize, backups=backups, grad_scale=grad_scale, found_inf=found_inf, backend=backend)
