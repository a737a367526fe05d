"""pytorch_optimizer's ``SAM`` on flatmin's fused ops, built on ``flatmin_kernels.functional`` only.

::

    from flatmin_kernels.adapters import pytorch_optimizer as fused

    fused.patch()                  # every pytorch_optimizer.SAM now runs on flatmin's kernels
    ...                            # (or: with fused.patched(): ...)
    fused.unpatch()

What changes is how, not what: ``first_step``'s global norm (|w|-weighted for adaptive groups),
GC of the gradients (``use_gc``), backups and perturbation, and ``second_step``'s restore, each
become one fused op per bucket of tensors instead of a loop of torch ops per parameter. The
results are pytorch_optimizer's to rounding (its own SAM tests pass with the patch on), the
``old_p`` backups still sit in ``state`` between the two steps (as the same buffers every step,
not a fresh clone), and the base optimizer's step is untouched.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from .. import functional

_ORIGINAL = {}
BACKEND = "auto"  # the flatmin backend the patched methods use


def _sam_class():
    try:
        from pytorch_optimizer import SAM
    except ImportError as exc:
        raise ImportError("the pytorch_optimizer adapter needs pytorch_optimizer (pip install pytorch_optimizer)") from exc
    return SAM


def _by_device(params):
    devices = {}
    for p in params:
        devices.setdefault(p.device, []).append(p)
    return devices.values()


@torch.no_grad()
def first_step(self, zero_grad: bool = False):
    """pytorch_optimizer's SAM.first_step on fused ops: norm of the raw gradients (|w| * g for
    adaptive groups) + perturb_eps, GC in place with use_gc, old_p backups, p += (p^2) g rho / norm."""
    groups = [(g, [p for p in g["params"] if p.grad is not None]) for g in self.param_groups]
    total = None
    for group, params in groups:
        for ps in _by_device(params):
            part = functional.sumsq([p.grad for p in ps], weights=ps if group.get("adaptive", False) else None,
                                    backend=BACKEND)
            total = part if total is None else total + part.to(total.device)
    if total is not None:
        norm = total.sqrt() + self.perturb_eps
        store = self.__dict__.setdefault("_flatmin_backups", {})
        for group, params in groups:
            for ps in _by_device(params):
                grads = [p.grad for p in ps]
                if self.use_gc:
                    functional.centralize_(grads, centralize="gc", backend=BACKEND)
                backups = []
                for p in ps:
                    buf = store.get(p)
                    if buf is None or buf.shape != p.shape or buf.dtype != p.dtype or buf.device != p.device:
                        buf = store[p] = torch.empty_like(p)
                    self.state[p]["old_p"] = buf
                    backups.append(buf)
                scale = (group["rho"] / norm).to(ps[0].device)
                functional.perturb_(ps, grads, scale, backups=backups, adaptive=bool(group["adaptive"]), backend=BACKEND)
    if zero_grad:
        self.zero_grad()


@torch.no_grad()
def second_step(self, zero_grad: bool = False):
    """pytorch_optimizer's SAM.second_step: every perturbed parameter back from old_p (fused), then
    the base optimizer's own step."""
    params = [p for g in self.param_groups for p in g["params"] if "old_p" in self.state[p]]
    saved = {p: self.state[p].pop("old_p") for p in params}
    for ps in _by_device(params):
        functional.restore_(ps, [saved[p] for p in ps], backend=BACKEND)
    self.base_optimizer.step()
    if zero_grad:
        self.zero_grad()


def patch(backend: str = "auto") -> None:
    """Make every ``pytorch_optimizer.SAM`` run on flatmin's fused ops (``backend`` as in flatmin)."""
    global BACKEND
    sam = _sam_class()
    BACKEND = backend
    if not _ORIGINAL:
        _ORIGINAL.update(first_step=sam.first_step, second_step=sam.second_step)
    sam.first_step, sam.second_step = first_step, second_step


def unpatch() -> None:
    """Give ``pytorch_optimizer.SAM`` its own methods back."""
    if _ORIGINAL:
        sam = _sam_class()
        sam.first_step, sam.second_step = _ORIGINAL["first_step"], _ORIGINAL["second_step"]
        _ORIGINAL.clear()


def is_patched() -> bool:
    return bool(_ORIGINAL)


@contextmanager
def patched(backend: str = "auto"):
    """``with patched(): ...`` runs pytorch_optimizer's SAM on flatmin's fused ops inside the block."""
    patch(backend)
    try:
        yield
    finally:
        unpatch()
