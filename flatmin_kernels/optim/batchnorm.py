"""Keeping BatchNorm running statistics out of the extra forward passes of SAM, GAM and NSO.

The first, clean pass of a step updates the running statistics as usual; every later pass
runs at perturbed weights, so it must not. The rule the reference implementations use
(spec section 0): stay in train mode (the batch is still normalised with its own
statistics, so the function being differentiated does not change) but set ``momentum=0``,
keeping the old value in ``backup_momentum`` as davda54's ``bypass_bn`` does.

Two differences from that helper, both fixes:
* disabling twice keeps the first backup (davda54 would back up the 0 and lose the momentum);
* ``num_batches_tracked`` is put back too, since with ``momentum=None`` (a cumulative
  average) it decides the weight of every later batch.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch.nn.modules.batchnorm import _BatchNorm


def _batchnorms(model: torch.nn.Module):
    # _BatchNorm covers BatchNorm1d/2d/3d, their lazy forms and SyncBatchNorm.
    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


def disable_running_stats(model: torch.nn.Module) -> None:
    """Freeze the running statistics of every BatchNorm in ``model`` (momentum -> 0)."""
    counters, saved = [], []
    for module in _batchnorms(model):
        if hasattr(module, "backup_momentum"):
            continue  # already disabled: keep the real momentum
        module.backup_momentum = module.momentum
        module.momentum = 0.0
        if module.num_batches_tracked is not None:
            backup = getattr(module, "_flatmin_batches_tracked", None)
            if backup is None or backup.device != module.num_batches_tracked.device:
                backup = module._flatmin_batches_tracked = torch.empty_like(module.num_batches_tracked)
            counters.append(module.num_batches_tracked)
            saved.append(backup)
    if counters:  # one device-side copy for every BatchNorm (no host sync)
        torch._foreach_copy_(saved, counters)


def enable_running_stats(model: torch.nn.Module) -> None:
    """Undo :func:`disable_running_stats` (a no-op for modules that were not disabled)."""
    counters, saved = [], []
    for module in _batchnorms(model):
        if not hasattr(module, "backup_momentum"):
            continue
        module.momentum = module.backup_momentum
        del module.backup_momentum
        if module.num_batches_tracked is not None and hasattr(module, "_flatmin_batches_tracked"):
            counters.append(module.num_batches_tracked)
            saved.append(module._flatmin_batches_tracked)
    if counters:
        torch._foreach_copy_(counters, saved)


@contextmanager
def running_stats_disabled(model: torch.nn.Module):
    """``with running_stats_disabled(model): loss = ...`` runs a pass that leaves BN statistics alone."""
    disable_running_stats(model)
    try:
        yield model
    finally:
        enable_running_stats(model)
