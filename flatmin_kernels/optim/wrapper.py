"""What SAM, GAM and NSO share: a torch optimizer that wraps a *base optimizer* class.

The wrapper builds the base optimizer on its own ``param_groups`` and then shares both the
groups and the state with it (so an LR scheduler can wrap either, and ``state_dict()``
holds the base's momentum and moments: resumes do not spike). The extra passes at
perturbed weights are the wrapper's; the update at the unperturbed weights is the base's:
fused through :func:`base_update.update` for torch's or flatmin's SGD/Adam/AdamW, and
``base_optimizer.step()`` for any other class (the generic path).

Every tensor operation goes through the op contract, one call per bucket of tensors.
"""
from __future__ import annotations

import torch

from .. import backends
from ..backends.buckets import bucket_indices, take
from . import base_update
from .batchnorm import disable_running_stats, enable_running_stats


def check_non_negative(**values) -> None:
    for name, value in values.items():
        if not value >= 0:  # also catches NaN
            raise ValueError(f"{name} must be non-negative, got {value}")


def check_unit_interval(**values) -> None:
    for name, value in values.items():
        if not 0 <= value <= 1:
            raise ValueError(f"{name} must be in [0, 1], got {value}")


class Selection:
    """Parallel lists of the parameters that take part in a pass, grouped as ``param_groups`` is."""

    def __init__(self, groups):
        self.groups = groups  # [(group, [params], [grads])]

    @property
    def params(self):
        return [p for _, ps, _ in self.groups for p in ps]

    @property
    def grads(self):
        return [g for _, _, gs in self.groups for g in gs]


class WrapperOptimizer(torch.optim.Optimizer):
    """Base class of SAM, GAM and NSO: builds, shares and drives the base optimizer."""

    def __init__(self, params, base_optimizer, defaults, *, model, backend, base_kwargs):
        if not (isinstance(base_optimizer, type) and issubclass(base_optimizer, torch.optim.Optimizer)):
            raise TypeError(
                f"base_optimizer must be an optimizer class such as torch.optim.SGD (its keyword "
                f"arguments go to {type(self).__name__}), got {base_optimizer!r}"
            )
        backends.check_choice(backend)
        self.backend = backend
        self.model = model
        self._wrapper_defaults = dict(defaults)
        self.base_optimizer = None
        super().__init__(params, defaults)
        self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
        # Share the groups (scheduler, add_param_group) and the state (state_dict) with the base.
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state
        self.defaults = {**self.base_optimizer.defaults, **defaults}
        self.fused = base_update.update_kind(self.base_optimizer) is not None

    # ------------------------------------------------------------------ torch.optim plumbing

    def check_group(self, group) -> None:
        """Validate the wrapper's hyperparameters of one param group (subclasses extend)."""

    def add_param_group(self, param_group):
        if self.base_optimizer is None:  # called by Optimizer.__init__
            super().add_param_group(param_group)
            self.check_group(self.param_groups[-1])
            return
        for key, value in self._wrapper_defaults.items():
            param_group.setdefault(key, value)
        self.check_group(param_group)
        self.base_optimizer.add_param_group(param_group)

    def extra_state(self) -> dict:
        """Wrapper state that is not per parameter (NSO's generator); saved under 'flatmin'."""
        return {}

    def load_extra_state(self, extra: dict) -> None:
        pass

    def state_dict(self):
        state = self.base_optimizer.state_dict()
        state["flatmin"] = self.extra_state()
        return state

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        extra = state_dict.pop("flatmin", {})
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state
        self.load_extra_state(extra)

    def require_closure(self, closure):
        if closure is None:
            raise RuntimeError(
                f"{type(self).__name__} requires a closure: step(closure) runs the forward and "
                f"backward passes at perturbed weights itself (the closure zeroes the gradients, "
                f"computes the loss, calls backward() and returns the loss)"
            )
        return torch.enable_grad()(closure)

    # ------------------------------------------------------------------ BatchNorm rule

    def running_stats_off(self) -> None:
        if self.model is not None:
            disable_running_stats(self.model)

    def running_stats_on(self) -> None:
        if self.model is not None:
            enable_running_stats(self.model)

    # ------------------------------------------------------------------ selections and buffers

    def with_grads(self) -> Selection:
        """Every parameter that has a gradient, with it (params without one take no part)."""
        base_update.check_gradients(self.param_groups, who=type(self).__name__)
        groups = []
        for group in self.param_groups:
            ps = [p for p in group["params"] if p.grad is not None]
            groups.append((group, ps, [p.grad for p in ps]))
        return Selection(groups)

    def grads_of(self, selection: Selection) -> Selection:
        """The same parameters with their current gradients (after another pass)."""
        groups = []
        for group, ps, _ in selection.groups:
            missing = [p for p in ps if p.grad is None]
            if missing:
                raise RuntimeError(
                    f"{type(self).__name__}: a parameter that had a gradient in the first pass has "
                    f"none in a later one (shape {tuple(missing[0].shape)}); every pass must "
                    f"backpropagate through the same parameters"
                )
            groups.append((group, ps, [p.grad for p in ps]))
        return Selection(groups)

    def buffers(self, name: str, params) -> list:
        """One persistent parameter-sized buffer per param, kept across steps (allocated once)."""
        store = self.__dict__.setdefault("_buffers_" + name, {})
        out = []
        for p in params:
            buf = store.get(p)
            if buf is None or buf.shape != p.shape or buf.dtype != p.dtype or buf.device != p.device:
                # zeros, not empty: a skipped op may leave a buffer unwritten, and a restore
                # that multiplies it by 0 must not meet NaN bits (see restore_unless).
                buf = store[p] = torch.zeros_like(p, memory_format=torch.preserve_format)
            out.append(buf)
        return out

    def clear_grads(self) -> None:
        """Gradients to None: the next backward writes a fresh gradient, whatever the closure does."""
        torch.optim.Optimizer.zero_grad(self, set_to_none=True)

    # ------------------------------------------------------------------ bucketed ops

    def buckets(self, *lists):
        """(backend module, device, positions) for each (device, dtypes) bucket of parallel lists."""
        for key, idx in bucket_indices(list(lists)).items():
            device = key[0]
            yield backends.resolve(self.backend, device), device, idx

    def copy_(self, dst, src) -> None:
        for ops, _, idx in self.buckets(dst, src):
            ops.axpby_(take(dst, idx), take(src, idx), 0, 1)

    def axpby_(self, ys, xs, a, b) -> None:
        for ops, device, idx in self.buckets(ys, xs):
            ops.axpby_(take(ys, idx), take(xs, idx), on(a, device), on(b, device))

    def restore_unless(self, params, backups, found_inf) -> None:
        """p <- backup, unless found_inf > 0 (then p keeps its bits), without a host sync.

        p <- f * p + (1 - f) * backup with f in {0, 1}: exact, because when f = 0 the weights
        are finite (nothing non-finite was ever written into them) and when f = 1 the backup is
        finite (buffers start at zero and only ever hold weights).
        """
        self.axpby_(params, backups, found_inf, 1 - found_inf)

    def sumsq(self, tensors, *, weights=None, centralize=None, device=None):
        """Global fp32 sum of squares of a list, as a 0-d tensor on the first tensor's device."""
        parts = []
        for ops, _, idx in self.buckets(tensors, weights):
            parts.append(ops.sumsq(take(tensors, idx), weights=take(weights, idx),
                                   centralize=take(centralize, idx)).sum())
        return total(parts, device or first_device(tensors))

    def dot(self, xs, ys, device=None):
        parts = [ops.dot(take(xs, idx), take(ys, idx)).sum() for ops, _, idx in self.buckets(xs, ys)]
        return total(parts, device or first_device(xs))

    # ------------------------------------------------------------------ the base update

    def base_step(self, *, backups=None, grads=None, grad_scale=None, found_inf=None,
                  centralize_grads=False) -> None:
        """The base optimizer's update of every parameter with a gradient.

        backups: {param: unperturbed weights} -- the restore, folded into the fused update.
        grads: {param: direction} instead of ``p.grad``; grad_scale divides the gradients.
        found_inf: 0-d device tensor; > 0 means write nothing (the weights stay as they are).
        centralize_grads: on the generic path, apply each group's GC to the gradient first (the
        fused path reads ``group["centralize"]`` itself).
        """
        if self.fused:
            base_update.update(self.base_optimizer, backend=self.backend, backups=backups,
                               grads=grads, grad_scale=grad_scale, found_inf=found_inf,
                               who=type(self).__name__)
        else:
            self._generic_step(backups, grads, grad_scale, found_inf, centralize_grads)
        # torch's LR schedulers warn unless they saw a step of the optimizer they wrap; the fused
        # path never calls base_optimizer.step(), and the two-call API bypasses step().
        self._opt_called = self.base_optimizer._opt_called = True

    def _generic_step(self, backups, grads, grad_scale, found_inf, centralize_grads):
        from . import gc

        # An arbitrary optimizer's step cannot be skipped on the device, so this path (only)
        # reads found_inf on the host, once per step; the fused bases never do. A skipped step
        # also skips the restore: the wrappers never move the weights once found_inf is set.
        if found_inf is not None and bool(found_inf > 0):
            return
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        if backups is not None:
            restore = [p for p in params if backups.get(p, p) is not p]
            self.copy_(restore, [backups[p] for p in restore])
        if grads is not None:
            params = [p for p in params if p in grads]
            self.copy_([p.grad for p in params], [grads[p] for p in params])
        if grad_scale is not None:
            gs = [p.grad for p in params]
            self.axpby_(gs, gs, 0, 1 / grad_scale)
        if centralize_grads:
            for group in self.param_groups:
                ps = [p for p in group["params"] if p.grad is not None]
                flags = gc.flags(group.get("centralize"), ps)
                if flags is not None:
                    for ops, _, idx in self.buckets(ps):
                        ops.centralize_(take([p.grad for p in ps], idx), take(flags, idx))
        self.base_optimizer.step()


def on(value, device):
    """A python number as is; a tensor moved to ``device`` (device to device, no host sync)."""
    return value.to(device) if torch.is_tensor(value) else value


def first_device(tensors):
    return tensors[0].device if tensors else torch.device("cpu")


def total(parts, device):
    if not parts:
        return torch.zeros((), dtype=torch.float32, device=device)
    out = parts[0].to(device)
    for part in parts[1:]:
        out = out + part.to(device)
    return out
