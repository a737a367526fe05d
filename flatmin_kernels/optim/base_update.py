"""The base-optimizer update of SGD, Adam and AdamW, run through the op contract.

One function serves flatmin's own SGD/Adam/AdamW and, for the SAM family, torch's classes of
the same names: their hyperparameters live in ``param_groups`` and their state uses torch's
layout (``momentum_buffer``; ``step``, ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``), so a
state dict moves freely between the two. Wrappers pass ``backups`` to fold the restore of
perturbed weights into the update, and ``grads`` to update with a direction other than
``p.grad``.
"""
from __future__ import annotations

import torch

from .. import backends
from ..backends.buckets import bucket_indices, take
from . import gc


def update_kind(optimizer) -> str | None:
    """'sgd' or 'adam' for optimizers whose update this module can fuse, else None."""
    if isinstance(optimizer, torch.optim.SGD):
        return "sgd"
    if isinstance(optimizer, torch.optim.Adam):  # AdamW is a subclass in torch >= 2.6
        return "adam"
    if type(optimizer).__name__ == "AdamW" and isinstance(optimizer, torch.optim.Optimizer):
        return "adam"
    return None


def param_name(group, index: int, group_index: int) -> str:
    """How error messages name a parameter: its name when the group carries names."""
    names = group.get("param_names")
    if names:
        return f"parameter {names[index]!r}"
    shape = tuple(group["params"][index].shape)
    return f"parameter {index} of param group {group_index} (shape {shape})"


def check_gradients(param_groups, grads=None, who="optimizer") -> None:
    """Refuse sparse or complex gradients before anything is changed, naming the parameter."""
    for gi, group in enumerate(param_groups):
        for i, p in enumerate(group["params"]):
            g = p.grad if grads is None else grads.get(p)
            if g is None:
                continue
            if g.is_sparse:
                raise RuntimeError(f"{who} does not support sparse gradients: {param_name(group, i, gi)}")
            if p.is_complex() or g.is_complex():
                raise RuntimeError(f"{who} does not support complex tensors: {param_name(group, i, gi)}")


def _device_scalar(value, device):
    return None if value is None else value.to(device=device, dtype=torch.float32, non_blocking=True)


def _sgd_state(state, p, momentum):
    """(momentum buffer or None, whether it must be initialised from the gradient)."""
    if momentum == 0:
        state.setdefault("momentum_buffer", None)
        return None, False
    buf = state.get("momentum_buffer")
    if buf is None:
        # Zeros, not empty: the first update overwrites it (buf = g, as torch does), but if that
        # update is skipped on the device (found_inf) the buffer must still hold no garbage. The
        # next step then starts from momentum * 0 + (1 - dampening) * g.
        state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state["momentum_buffer"], True
    return buf, False


def _adam_state(state, p, amsgrad):
    if "step" not in state:
        state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    elif state["step"].device != p.device or state["step"].dtype != torch.float32:
        # torch keeps ``step`` on the CPU; the fused ops read it where the parameter lives.
        state["step"] = state["step"].to(device=p.device, dtype=torch.float32)
    if amsgrad and "max_exp_avg_sq" not in state:
        state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    return state


def update(optimizer, *, backend: str = "auto", backups=None, grads=None, grad_scale=None,
           found_inf=None, who=None) -> None:
    """One base-optimizer step of ``optimizer`` (SGD, Adam or AdamW) over every parameter with a
    gradient, one op call per bucket.

    backups: {param: backup tensor} -- update from the backup instead of the (perturbed) param.
    grads:   {param: tensor} -- use these instead of ``p.grad`` (params missing from it are skipped).
    grad_scale, found_inf: the AMP protocol's device scalars (see the op contract).
    """
    kind = update_kind(optimizer)
    if kind is None:
        raise TypeError(f"cannot fuse the update of {type(optimizer).__name__}")
    who = who or type(optimizer).__name__
    check_gradients(optimizer.param_groups, grads, who)
    for group in optimizer.param_groups:
        params, gradients = [], []
        for p in group["params"]:
            g = p.grad if grads is None else grads.get(p)
            if g is not None:
                params.append(p)
                gradients.append(g)
        if params:
            (_update_sgd if kind == "sgd" else _update_adam)(
                optimizer, group, params, gradients, backend, backups, grad_scale, found_inf
            )


def _backup_list(backups, params):
    return None if backups is None else [backups[p] for p in params]


def _update_sgd(optimizer, group, params, grads, backend, backups, grad_scale, found_inf):
    momentum = group["momentum"]
    bufs, init = [], []
    for p in params:
        buf, fresh = _sgd_state(optimizer.state[p], p, momentum)
        bufs.append(buf)
        init.append(fresh)
    bufs = bufs if momentum != 0 else None
    flags = gc.flags(group.get("centralize"), params)
    backup_list = _backup_list(backups, params)
    for (device, _, fresh), idx in bucket_indices(
        [params, grads, bufs, backup_list], extra_key=init.__getitem__
    ).items():
        backends.resolve(backend, device).step_sgd_(
            take(params, idx), take(grads, idx), take(bufs, idx),
            lr=group["lr"], weight_decay=group["weight_decay"], momentum=momentum,
            dampening=group["dampening"], nesterov=group["nesterov"],
            maximize=group.get("maximize", False), init_buffers=fresh,
            centralize=take(flags, idx), backups=take(backup_list, idx),
            grad_scale=_device_scalar(grad_scale, device), found_inf=_device_scalar(found_inf, device),
        )


def _update_adam(optimizer, group, params, grads, backend, backups, grad_scale, found_inf):
    amsgrad = group["amsgrad"]
    states = [_adam_state(optimizer.state[p], p, amsgrad) for p in params]
    exp_avgs = [s["exp_avg"] for s in states]
    exp_avg_sqs = [s["exp_avg_sq"] for s in states]
    max_sqs = [s["max_exp_avg_sq"] for s in states] if amsgrad else None
    steps = [s["step"] for s in states]
    decoupled = group.get("decoupled_weight_decay", type(optimizer).__name__ == "AdamW")
    beta1, beta2 = group["betas"]
    flags = gc.flags(group.get("centralize"), params)
    backup_list = _backup_list(backups, params)
    for (device, _), idx in bucket_indices(
        [params, grads, exp_avgs, exp_avg_sqs, max_sqs, backup_list]
    ).items():
        backends.resolve(backend, device).step_adam_(
            take(params, idx), take(grads, idx), take(exp_avgs, idx), take(exp_avg_sqs, idx),
            take(max_sqs, idx), take(steps, idx),
            lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"],
            weight_decay=group["weight_decay"], decoupled=decoupled, amsgrad=amsgrad,
            maximize=group.get("maximize", False), centralize=take(flags, idx),
            backups=take(backup_list, idx),
            grad_scale=_device_scalar(grad_scale, device), found_inf=_device_scalar(found_inf, device),
        )
