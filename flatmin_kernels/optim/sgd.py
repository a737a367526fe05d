"""SGD with optional Gradient Centralization (SGD_GC / SGD_GCC), fused through the op contract."""
from __future__ import annotations

import torch

from ._mixin import FusedBaseMixin, validate_common


class SGD(FusedBaseMixin, torch.optim.SGD):
    """``torch.optim.SGD`` plus ``centralize=None | "gc" | "gcc"`` and ``backend``.

    Same arguments, defaults, semantics and state_dict as torch's SGD. GC is applied after
    L2 weight decay is added to the gradient and before momentum, as SGD_GC does.
    ``foreach`` and ``fused`` are accepted for compatibility; ``backend`` decides how the
    step runs. ``capturable`` (torch's word, which torch's SGD lacks) is accepted: a warmed-up
    flatmin step is always safe to capture in a CUDA graph.
    """

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0,
                 nesterov=False, *, maximize=False, foreach=None, differentiable=False,
                 fused=None, capturable=False, centralize=None, backend="auto"):
        validate_common(centralize, backend)
        super().__init__(params, lr=lr, momentum=momentum, dampening=dampening,
                         weight_decay=weight_decay, nesterov=nesterov, maximize=maximize,
                         foreach=foreach, differentiable=differentiable, fused=fused)
        self._setup_flatmin(centralize, backend)
        self.capturable = bool(capturable)
