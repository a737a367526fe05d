"""What flatmin's SGD, Adam and AdamW add to torch's classes of the same name.

They keep torch's constructor, validation, defaults and state_dict layout, and add
``centralize`` (per parameter group) and ``backend``; the step runs through the op contract.
"""
from __future__ import annotations

import torch

from .. import backends
from . import base_update, gc


class FusedBaseMixin:
    # GradScaler hands us grad_scale / found_inf instead of unscaling and syncing itself.
    _step_supports_amp_scaling = True

    def _setup_flatmin(self, centralize, backend):
        for group in self.param_groups:
            group.setdefault("centralize", centralize)
            gc.check_centralize(group["centralize"])
        self.defaults["centralize"] = centralize
        self.backend = backend

    def add_param_group(self, param_group):
        if "centralize" in param_group:
            gc.check_centralize(param_group["centralize"])
        super().add_param_group(param_group)

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("centralize", None)

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient; returns the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        base_update.update(
            self,
            backend=self.backend,
            grad_scale=getattr(self, "grad_scale", None),
            found_inf=getattr(self, "found_inf", None),
        )
        return loss


def validate_common(centralize, backend):
    """Checks made before torch's constructor runs, so bad input builds nothing."""
    gc.check_centralize(centralize)
    backends.check_choice(backend)
