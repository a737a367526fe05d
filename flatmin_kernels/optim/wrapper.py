"""What SAM, GAM and NSO share: a torch optimizer that wraps a *base optimizer* class.

The wrapper builds the base optimizer on its own ``param_groups`` and then shares both the
groups and the state with it (so an LR scheduler can wrap either, and ``state_dict()`` holds
the base's momentum and moments: resumes do not spike). The extra passes at perturbed weights
are the wrapper's; the update at the unperturbed weights is the base's: fused into one call per
bucket for torch's or flatmin's SGD/Adam/AdamW, and ``base_optimizer.step()`` for any other
class (the generic path).

Every tensor operation runs on the wrapper's plan (``host.py``): the base optimizer's
parameters and state plus the wrapper's own parameter-sized buffers, bound once to each
bucket's table; a steady-state step is a handful of fused calls per bucket.
"""
from __future__ import annotations

import functools
import inspect
import weakref

import torch

from .. import backends
from . import amp, base_update
from .batchnorm import disable_running_stats, enable_running_stats
from ..backends.contract import InvNorm
from .host import HostPath

# Per-step scalar slots (Plan.scalars) shared by the wrappers' code.
FOUND_INF = 15


class StepState:
    """Everything a wrapper changes while it steps, in one object made at construction.

    The optimizer's ``__dict__`` is never rebound during a step, so a shallow copy of it --
    Lightning's ``LightningOptimizer`` is one -- shares the step state with the optimizer
    instead of splitting it (a first step taken through the copy is then seen by the original).
    """

    def __init__(self):
        self.backward_seen = False  # a backward reached the parameters since the last zero/clear
        self.grads_cleared = False  # the optimizer itself left the gradients as None
        self.grad_scaler = None  # torch.amp.GradScaler of an fp16 run
        self.host = None  # HostPath: the plan
        self.buffers = {}  # name -> {param: parameter-sized buffer}
        self.hook = None  # removes the autograd hook that sets backward_seen (a weakref.finalize)


def _note_backward(state_ref, grad) -> None:
    state = state_ref()
    if state is not None:
        state.backward_seen = True


def check_non_negative(**values) -> None:
    for name, value in values.items():
        if not value >= 0:  # also catches NaN
            raise ValueError(f"{name} must be non-negative, got {value}")


def check_unit_interval(**values) -> None:
    for name, value in values.items():
        if not 0 <= value <= 1:
            raise ValueError(f"{name} must be in [0, 1], got {value}")


class WrapperOptimizer(torch.optim.Optimizer):
    """Base class of SAM, GAM and NSO: builds, shares and drives the base optimizer.

    ``grad_scaler``: the ``torch.amp.GradScaler`` of an fp16 run (see ``amp.py``); with it the
    wrapper takes GradScaler's protocol (``scaler.step(opt, closure)``, or for SAM the two-call
    recipe) and checks every pass for overflows itself.
    """

    # GradScaler.step hands us grad_scale / found_inf (see amp.py) instead of unscaling itself.
    _step_supports_amp_scaling = True

    # Names of the parameter-sized buffers a subclass keeps (bound to the plan as slots).
    buffer_names: tuple = ()

    def __init__(self, params, base_optimizer, defaults, *, model, backend, base_kwargs):
        if not (isinstance(base_optimizer, type) and issubclass(base_optimizer, torch.optim.Optimizer)):
            raise TypeError(
                f"base_optimizer must be an optimizer class such as torch.optim.SGD (its keyword "
                f"arguments go to {type(self).__name__}), got {base_optimizer!r}"
            )
        backends.check_choice(backend)
        capturable = base_kwargs.pop("capturable", False)
        if "capturable" in inspect.signature(base_optimizer.__init__).parameters:
            base_kwargs["capturable"] = capturable
        self.backend = backend
        self.model = model
        self._step_state = StepState()
        self._wrapper_defaults = dict(defaults)
        self.base_optimizer = None
        super().__init__(params, defaults)
        self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
        # Share the groups (scheduler, add_param_group) and the state (state_dict) with the base.
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state
        self.defaults = {**self.base_optimizer.defaults, **defaults}
        self.fused = base_update.update_kind(self.base_optimizer) is not None
        self.capturable = bool(capturable)
        if self.capturable and not self.fused:
            raise ValueError(f"capturable=True needs a base optimizer flatmin can fuse (torch's or flatmin's SGD, "
                             f"Adam, AdamW): {base_optimizer.__name__}'s step runs outside flatmin and reads "
                             f"found_inf on the host")
        self._step_state.host = HostPath(self, self._build_plan)
        self.init_step_state(self._step_state)
        self._watch_backward()

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
        self.host_path.invalidate()
        self._watch_backward()

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
        self.host_path.invalidate()

    def __getstate__(self):
        # Everything that makes the wrapper (the base optimizer, hyperparameters, the model for
        # the BatchNorm rule); not the step state (plans, buffers and the autograd hook are made
        # again) nor torch's optimizer hooks. What must survive goes through kept_state().
        state = {k: v for k, v in self.__dict__.items() if k != "_step_state" and not k.startswith("_optimizer_")}
        state["_kept"] = self.kept_state()
        return state

    def __setstate__(self, state):
        state = dict(state)
        kept = state.pop("_kept", {})
        super().__setstate__(state)
        self._step_state = StepState()
        self._step_state.host = HostPath(self, self._build_plan)
        self.init_step_state(self._step_state)
        self.restore_kept_state(kept)
        self._watch_backward()

    def init_step_state(self, state: StepState) -> None:
        """Add a subclass's own step fields to a new step state (at construction and after a copy)."""

    def kept_state(self) -> dict:
        """What a copy must carry of the step state (subclasses extend: NSO's noise step)."""
        return {"grad_scaler": self._step_state.grad_scaler}

    def restore_kept_state(self, kept: dict) -> None:
        self._step_state.grad_scaler = kept.get("grad_scaler")

    # ------------------------------------------------------------------ what counts as the first pass

    def _watch_backward(self) -> None:
        """One autograd hook over every trainable parameter: it notes each backward pass that
        reaches them (one Python call per backward, not per tensor).

        The hook lives in the parameters' C++ autograd metadata, and the optimizer's plans hold
        the parameters in C++ tables: a hook holding the step state would close a cycle that
        Python's collector cannot see, and no SAM/GAM/NSO would ever be freed. So it holds the
        step state weakly, and is removed when the optimizer goes."""
        state = self._step_state
        if state.hook is not None:
            state.hook()  # removes the previous hook (a finalizer runs once)
            state.hook = None
        params = [p for g in self.param_groups for p in g["params"] if p.requires_grad]
        if params:
            handle = torch.autograd.graph.register_multi_grad_hook(params, functools.partial(_note_backward,
                                                                                             weakref.ref(state)),
                                                                   mode="any")
            state.hook = weakref.finalize(self, handle.remove)

    def first_pass_done(self) -> bool:
        """Whether the gradients present are a first pass: a backward reached the parameters since
        this optimizer last zeroed or cleared them (a step ends by clearing them), or gradients
        appeared where it had left None (FSDP2 sets the sharded gradients itself, unseen by autograd
        hooks). Zero-filled gradients are not a pass; micro-batches accumulated since are one."""
        state = self._step_state
        return ((state.backward_seen or state.grads_cleared)
                and any(p.grad is not None for g in self.param_groups for p in g["params"]))

    def forget_passes(self) -> None:
        """The gradients present have been taken as this step's first pass."""
        self._step_state.backward_seen = self._step_state.grads_cleared = False

    def zero_grad(self, set_to_none: bool = True):
        super().zero_grad(set_to_none=set_to_none)
        self._step_state.backward_seen = False
        self._step_state.grads_cleared = set_to_none

    def clear_grads(self) -> None:
        """Gradients to None: the next backward writes a fresh gradient, whatever the closure does."""
        torch.optim.Optimizer.zero_grad(self, set_to_none=True)
        self._step_state.backward_seen = False
        self._step_state.grads_cleared = True

    def require_closure(self, closure):
        if closure is None:
            raise RuntimeError(
                f"{type(self).__name__} requires a closure: step(closure) runs the forward and "
                f"backward passes at perturbed weights itself (the closure zeroes the gradients, "
                f"computes the loss, calls backward() and returns the loss). Trainers that call "
                f"step() without one: use flatmin_kernels.integrations.hf.FlatminTrainer (Hugging "
                f"Face) or flatmin_kernels.integrations.lightning.FlatminPrecision (Lightning 16-mixed)"
            )
        return torch.enable_grad()(closure)

    # ------------------------------------------------------------------ BatchNorm rule

    def running_stats_off(self) -> None:
        if self.model is not None:
            disable_running_stats(self.model)

    def running_stats_on(self) -> None:
        if self.model is not None:
            enable_running_stats(self.model)

    # ------------------------------------------------------------------ the plan

    def plan_joins(self, p) -> bool:
        """Whether parameter p takes part in this step's plan (subclasses: NSO perturbs every
        trainable parameter, gradient or not)."""
        return p.grad is not None

    def gc_mode(self, group):
        """The GC mode that decides a group's GC rows (SAM's use_gc overrides the group's)."""
        return group.get("centralize")

    def noise_offsets(self):
        """{param: global element offset} for the noise (NSO), else None."""
        return None

    @property
    def host_path(self) -> HostPath:
        return self._step_state.host

    def _build_plan(self, joins=None, fused=None):
        plan, without = base_update.build_plan(self.base_optimizer, self.backend, who=type(self).__name__,
                                               joins=joins or self.plan_joins, offsets=self.noise_offsets(),
                                               fused=self.fused if fused is None else fused, gc_mode=self.gc_mode)
        for name in self.buffer_names:
            plan.bind(name, self.buffers(name, plan.params))
        return plan, without

    def plan(self, grads: bool = True):
        """This pass's plan: reused, or rebuilt after a real change; refreshed."""
        return self.host_path.get(grads=grads)

    def buffers(self, name: str, params) -> list:
        """One persistent parameter-sized buffer per param, kept across steps (allocated once)."""
        store = self._step_state.buffers.setdefault(name, {})
        out = []
        for p in params:
            buf = store.get(p)
            if buf is None or buf.shape != p.shape or buf.dtype != p.dtype or buf.device != p.device:
                # zeros, not empty: a skipped op may leave a buffer unwritten, and an update that
                # reads it must not meet NaN bits.
                buf = store[p] = torch.zeros_like(p, memory_format=torch.preserve_format)
            out.append(buf)
        return out

    # ------------------------------------------------------------------ fp16 with GradScaler

    @property
    def grad_scaler(self):
        return self._step_state.grad_scaler

    @grad_scaler.setter
    def grad_scaler(self, scaler) -> None:
        if scaler is not None:
            # GradScaler makes its scale at the first scaler.scale(...); in the closure recipe that call
            # comes inside the step, after GradScaler.step has already asked for the scale.
            device = next((p.device for g in self.param_groups for p in g["params"]), torch.device("cpu"))
            scaler.scale(torch.zeros((), device=device))
        self._step_state.grad_scaler = scaler

    def amp_begin(self) -> None:
        """At the start of a step, before anything changes: refuse GradScaler's protocol without the
        scaler in hand, and a step whose gradients the scaler was told to unscale too early."""
        if amp.under_scaler(self) and self.grad_scaler is None:
            raise RuntimeError(f"{type(self).__name__} was stepped by a GradScaler it does not know: "
                               f"{amp.RECIPE}. Nothing was changed.")
        if amp.under_scaler(self):
            amp.check_not_unscaled(self.grad_scaler, self)

    def amp_check(self, plan, index: int) -> None:
        """Under the scaler: flag the current gradients if non-finite (into found_inf, accumulated)."""
        if amp.under_scaler(self):
            plan.reduce("sumsq", "grad", index=index, epilogue=InvNorm(1.0, inv=index, inf=FOUND_INF,
                                                                        inf_accumulate=True))

    def amp_update(self, plan):
        """(grad_scale, found_inf) for the update: the scale handed over by GradScaler, and our
        per-step flag raised where GradScaler's own check found an overflow."""
        grad_scale, scaler_found_inf = amp.handed_over(self)
        if scaler_found_inf is not None:
            for device in plan.devices:
                amp.combined_found_inf(plan.scalar(FOUND_INF, device), scaler_found_inf)
        return grad_scale, found_inf_of(plan)

    def amp_end(self, plan) -> None:
        """Let ``scaler.update()`` see an overflow in any pass of this step."""
        if self.grad_scaler is not None and amp.under_scaler(self) and plan.devices:
            amp.merge_found_inf(self.grad_scaler, self, plan.scalar(FOUND_INF, plan.devices[0]))

    # ------------------------------------------------------------------ the base update

    def base_step(self, plan, *, grad="grad", g2=None, g_coef=1.0, g2_coef=1.0, backup=None, grad_scale=None,
                  found_inf=None, centralize_grads=False) -> None:
        """The base optimizer's update of every parameter of ``plan``.

        grad/g2/g_coef/g2_coef: the direction (slot names and scalars); backup: the slot of the
        unperturbed weights -- the restore, folded into the fused update (and done on a skipped
        step too). grad_scale divides the gradients; found_inf > 0 skips the update.
        centralize_grads: on the generic path, apply each group's GC to the gradient first (the
        fused path applies it itself).
        """
        if self.fused:
            base_update.update(self.base_optimizer, plan, grad=grad, g2=g2, g_coef=g_coef, g2_coef=g2_coef,
                               backup=backup, grad_scale=grad_scale, found_inf=found_inf)
        else:
            self._generic_step(plan, grad, g2, g_coef, g2_coef, backup, grad_scale, found_inf, centralize_grads)
        # torch's LR schedulers warn unless they saw a step of the optimizer they wrap; the fused
        # path never calls base_optimizer.step(), and the two-call API bypasses step().
        self._opt_called = self.base_optimizer._opt_called = True

    def _generic_step(self, plan, grad, g2, g_coef, g2_coef, backup, grad_scale, found_inf, centralize_grads):
        if backup is not None:
            plan.each("axpby_", "param", backup, 0, 1)  # back to w, whatever happens next
        # An arbitrary optimizer's step cannot be skipped on the device, so this path (only)
        # reads found_inf on the host, once per step; the fused bases never do.
        flag = base_update.plan_scalar(found_inf, plan)
        if flag is not None and bool(flag.reshape(()) > 0):
            return
        plain = grad == "grad" and g2 is None and isinstance(g_coef, (int, float)) and g_coef == 1.0
        if not plain:  # the direction into p.grad: g_coef * grad (+ g2_coef * g2)
            plan.each("axpby_", "grad", grad, 0, g_coef)
            if g2 is not None:
                plan.each("axpby_", "grad", g2, 1, g2_coef)
        if grad_scale is not None:  # divided by grad_scale
            inv = (1.0, 1.0 / grad_scale) if torch.is_tensor(grad_scale) else 1.0 / grad_scale
            plan.each("axpby_", "grad", "grad", 0, lambda b: base_update._on(inv, b.device))
        if centralize_grads:
            plan.each("centralize_", "grad")
        self.base_optimizer.step()


def found_inf_of(plan):
    """Each bucket's found_inf: the plan's device-local slot (a per-bucket keyword for Plan calls)."""
    return lambda b: plan.scalar(FOUND_INF, b.device)

