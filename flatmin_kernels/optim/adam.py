"""Adam and AdamW with optional Gradient Centralization (Adam_GC, AdamW_GC), fused through the op contract."""
from __future__ import annotations

import torch

from ._mixin import FusedBaseMixin, validate_common


class Adam(FusedBaseMixin, torch.optim.Adam):
    """``torch.optim.Adam`` plus ``centralize=None | "gc" | "gcc"`` and ``backend``.

    GC is applied to the gradient after L2 weight decay is added and before the moments
    (Adam_GC). Same arguments, defaults and state_dict as torch's Adam; ``step`` is kept on
    the parameter's device so the fused ops never read it from the host.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 amsgrad=False, *, foreach=None, maximize=False, capturable=False,
                 differentiable=False, fused=None, decoupled_weight_decay=False,
                 centralize=None, backend="auto"):
        validate_common(centralize, backend)
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, foreach=foreach, maximize=maximize,
                         capturable=capturable, differentiable=differentiable, fused=fused,
                         decoupled_weight_decay=decoupled_weight_decay)
        self._setup_flatmin(centralize, backend)


class AdamW(FusedBaseMixin, torch.optim.AdamW):
    """``torch.optim.AdamW`` plus ``centralize=None | "gc" | "gcc"`` and ``backend``.

    GC is applied to the raw gradient before the moments; the decoupled decay is torch's
    ``p *= 1 - lr * weight_decay`` (AdamW_GC's placement, torch's decay).
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False, foreach=None, capturable=False,
                 differentiable=False, fused=None, centralize=None, backend="auto"):
        validate_common(centralize, backend)
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize, foreach=foreach,
                         capturable=capturable, differentiable=differentiable, fused=fused)
        self._setup_flatmin(centralize, backend)
