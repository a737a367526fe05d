"""The base-optimizer update of SGD, Adam and AdamW on a plan.

One module serves flatmin's own SGD/Adam/AdamW and, for the SAM family, torch's classes of the
same names: their hyperparameters live in ``param_groups`` (read at every step, so schedulers
work) and their state uses torch's layout (``momentum_buffer``; ``step``, ``exp_avg``,
``exp_avg_sq``, ``max_exp_avg_sq``), so a state dict moves freely between the two. The state
is created when the plan is built and bound to its tables; each step is then one fused call
per bucket. Wrappers pass ``backup`` to fold the restore of perturbed weights into the update,
and ``grad``/``g2`` to update along another direction than ``p.grad``.

Parameters whose gradient is sparse (an embedding with ``sparse=True``) take torch's own SGD,
as torch.optim.SGD does; Adam refuses them as torch does.
"""
from __future__ import annotations

import torch

from ..plan import Plan
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


class Selection:
    """The parameters a plan covers and the rest, read once when a plan is built."""

    def __init__(self, param_groups, who, joins=lambda p: p.grad is not None, sparse_ok=False):
        self.params, self.groups, self.sparse, self.without = [], [], [], []
        for gi, group in enumerate(param_groups):
            for i, p in enumerate(group["params"]):
                if not joins(p):
                    self.without.append(p)
                    continue
                g = p.grad
                if g is not None and g.layout != torch.strided:
                    if not sparse_ok:
                        raise RuntimeError(f"{who} does not support sparse gradients: {param_name(group, i, gi)}"
                                           + (", please consider SparseAdam instead" if who.startswith("Adam") else ""))
                    self.sparse.append((group, p))
                    continue
                self.params.append(p)
                self.groups.append(group)

    def gc_rows(self, mode_of=None):
        """GC rows from each group's ``centralize`` (or ``mode_of(group)``: SAM's use_gc)."""
        mode_of = mode_of or (lambda group: group.get("centralize"))
        return [gc.applies(mode_of(group), p) for p, group in zip(self.params, self.groups)]


# ----------------------------------------------------------------------------- state


def _sgd_buffers(optimizer, sel):
    """Momentum buffers (torch's layout) and whether each is new (buf = g on its first update)."""
    bufs, fresh = [], []
    for p, group in zip(sel.params, sel.groups):
        if group["momentum"] == 0:
            bufs.append(None)
            fresh.append(False)
            continue
        state = optimizer.state[p]
        buf = state.get("momentum_buffer")
        if buf is None:
            # Zeros, not empty: the first update overwrites it (buf = g, as torch does), but if that
            # update is skipped on the device (found_inf) the buffer must still hold no garbage. The
            # next step then starts from momentum * 0 + (1 - dampening) * g.
            buf = state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            fresh.append(True)
        else:
            fresh.append(False)
        bufs.append(buf)
    return bufs, fresh


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


def build_plan(optimizer, backend, *, who=None, joins=None, offsets=None, fused=True, gc_mode=None):
    """(plan, parameters left out) for ``optimizer``'s parameters with a gradient, its state
    created (torch's layout) and bound to the plan's tables when ``fused``."""
    who = who or type(optimizer).__name__
    kind = update_kind(optimizer) if fused else None
    selection = Selection(optimizer.param_groups, who, **({"joins": joins} if joins else {}),
                          sparse_ok=kind == "sgd")
    fresh = None
    if kind == "sgd":
        bufs, fresh = _sgd_buffers(optimizer, selection)
    plan = Plan(selection.params, backend=backend, groups=selection.groups, gc_rows=selection.gc_rows(gc_mode),
                offsets=None if offsets is None else [offsets[p] for p in selection.params], fresh=fresh)
    plan.sparse = selection.sparse
    if kind == "sgd":
        plan.bind("momentum_buffer", bufs)
    elif kind == "adam":
        states = [_adam_state(optimizer.state[p], p, g["amsgrad"]) for p, g in zip(selection.params, selection.groups)]
        plan.bind("exp_avg", [s["exp_avg"] for s in states])
        plan.bind("exp_avg_sq", [s["exp_avg_sq"] for s in states])
        plan.bind("max_exp_avg_sq", [s.get("max_exp_avg_sq") for s in states])
        plan.bind_scalars("step", [s["step"] for s in states])
    return plan, selection.without


# ----------------------------------------------------------------------------- the update


def _on(value, device):
    """A per-step device scalar (AMP's grad_scale / found_inf, a tensor lr) on ``device``."""
    if isinstance(value, tuple):
        return value[0], _on(value[1], device)
    if not torch.is_tensor(value):
        return value
    if value.device == device and value.dtype == torch.float32:
        return value
    return value.to(device=device, dtype=torch.float32, non_blocking=True)


def _per_bucket(value, bucket):
    """A scalar for one bucket: a callable of the bucket (a plan's device-local slot), a tensor
    (moved to the bucket's device), or a number."""
    if callable(value):
        return value(bucket)
    return _on(value, bucket.device)


def plan_scalar(value, plan):
    """A per-step scalar for the paths outside the buckets (the host reads of the generic and
    sparse paths): a callable of the bucket is resolved on the plan's first bucket -- every
    bucket's per-step scalars hold the same value, on its own device."""
    if callable(value):
        return value(plan.buckets[0]) if plan.buckets else None
    return value


def update(optimizer, plan, *, grad="grad", g2=None, g_coef=1.0, g2_coef=1.0, backup=None, grad_scale=None,
           found_inf=None) -> None:
    """One base-optimizer step of every parameter of ``plan``, one fused call per bucket.

    grad, g2, g_coef, g2_coef: the direction ``g_coef * grad + g2_coef * g2`` (slot names).
    backup: slot of the unperturbed weights -- the restore, folded into the update (also done
    when the step is skipped). grad_scale, found_inf: the AMP protocol's device scalars. Scalars
    may be callables of the bucket (see ``_per_bucket``).
    """
    kind = update_kind(optimizer)
    per_bucket = dict(lr=lambda b: _on(b.group["lr"], b.device), maximize=lambda b: b.group.get("maximize", False),
                      centralize=lambda b: b.group.get("centralize") is not None, backup=backup, g2=g2,
                      g_coef=lambda b: _per_bucket(g_coef, b), g2_coef=lambda b: _per_bucket(g2_coef, b),
                      grad_scale=lambda b: _per_bucket(grad_scale, b), found_inf=lambda b: _per_bucket(found_inf, b))
    if kind == "sgd":
        plan.each("step_sgd_", "param", grad, buf=lambda b: "momentum_buffer" if b.group["momentum"] != 0 else None,
                  weight_decay=lambda b: b.group["weight_decay"], momentum=lambda b: b.group["momentum"],
                  dampening=lambda b: b.group["dampening"], nesterov=lambda b: b.group["nesterov"],
                  init_buffers=lambda b: b.fresh, **per_bucket)
        for bucket in plan.buckets:
            bucket.fresh = False
    else:
        plan.each("step_adam_", "param", grad, "exp_avg", "exp_avg_sq",
                  vmax=lambda b: "max_exp_avg_sq" if b.group["amsgrad"] else None, steps="step",
                  beta1=lambda b: float(b.group["betas"][0]), beta2=lambda b: float(b.group["betas"][1]),
                  eps=lambda b: b.group["eps"], weight_decay=lambda b: b.group["weight_decay"],
                  decoupled=lambda b: b.group.get("decoupled_weight_decay", type(optimizer).__name__ == "AdamW"),
                  amsgrad=lambda b: b.group["amsgrad"], **per_bucket)
    if getattr(plan, "sparse", None):
        _sparse_sgd(optimizer, plan.sparse, plan_scalar(grad_scale, plan), plan_scalar(found_inf, plan))


def _sparse_sgd(optimizer, entries, grad_scale, found_inf):
    """Parameters with sparse gradients: torch's own SGD (no GC, no fused restore), as torch.optim does."""
    if found_inf is not None and bool(found_inf.reshape(()) > 0):  # this rare path reads found_inf on the host
        return
    from torch.optim.sgd import sgd as torch_sgd

    for group, p in entries:
        grad = p.grad if grad_scale is None else p.grad / grad_scale.to(p.device)
        state = optimizer.state[p]
        bufs = [state.get("momentum_buffer")]  # torch creates it from the first gradient, in the list
        torch_sgd([p], [grad], bufs, has_sparse_grad=True, foreach=False, weight_decay=group["weight_decay"],
                  momentum=group["momentum"], lr=group["lr"], dampening=group["dampening"],
                  nesterov=group["nesterov"], maximize=group.get("maximize", False))
        if group["momentum"] != 0:
            state["momentum_buffer"] = bufs[0]
