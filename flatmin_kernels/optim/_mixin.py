"""What flatmin's SGD, Adam and AdamW add to torch's classes of the same name.

They keep torch's constructor, validation, defaults and state_dict layout, and add
``centralize`` (per parameter group) and ``backend``; the step runs on a plan (``host.py``)
built on the first step and reused: one fused call per bucket, no per-tensor Python.
"""
from __future__ import annotations

import torch

from .. import backends
from . import base_update, gc
from .host import HostPath


class FusedBaseMixin:
    # GradScaler hands us grad_scale / found_inf instead of unscaling and syncing itself.
    _step_supports_amp_scaling = True

    def _setup_flatmin(self, centralize, backend):
        for group in self.param_groups:
            group.setdefault("centralize", centralize)
            gc.check_centralize(group["centralize"])
        self.defaults["centralize"] = centralize
        self.backend = backend
        self._new_host_path()

    def _new_host_path(self):
        # Made once, never rebound in a step: a shallow copy of __dict__ (Lightning's optimizer
        # wrapper) shares it.
        self._flatmin_host = HostPath(self, lambda: base_update.build_plan(self, self.backend))

    @property
    def host_path(self) -> HostPath:
        """The plan this optimizer reuses step after step (built on the first step, dropped on real changes)."""
        return self._flatmin_host

    def _invalidate_plan(self):
        host = self.__dict__.get("_flatmin_host")  # absent while torch's __init__ adds the first groups
        if host is not None:
            host.invalidate()

    def add_param_group(self, param_group):
        if "centralize" in param_group:
            gc.check_centralize(param_group["centralize"])
        super().add_param_group(param_group)
        self._invalidate_plan()

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        self._invalidate_plan()

    def __getstate__(self):
        # torch keeps only defaults, state and param_groups; flatmin's choice of backend travels
        # too (copy, pickle, torch.save of the optimizer); the plan is rebuilt on the next step.
        state = super().__getstate__()
        state["flatmin_backend"] = self.__dict__.get("backend", "auto")
        state.pop("_flatmin_host", None)
        return state

    def __setstate__(self, state):
        state = dict(state)
        backend = state.pop("flatmin_backend", None)
        super().__setstate__(state)
        if backend is not None:
            self.backend = backend
        if "backend" in self.__dict__:
            self._new_host_path()
        for group in self.param_groups:
            group.setdefault("centralize", None)

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient; returns the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        plan = self.host_path.get()
        base_update.update(self, plan, grad_scale=getattr(self, "grad_scale", None),
                           found_inf=getattr(self, "found_inf", None))
        return loss


def validate_common(centralize, backend):
    """Checks made before torch's constructor runs, so bad input builds nothing."""
    gc.check_centralize(centralize)
    backends.check_choice(backend)
