"""Finding the SAM/GAM/NSO inside a framework's optimizer wrappers."""
from __future__ import annotations

from ..optim.wrapper import WrapperOptimizer


def flatmin_wrapper(optimizer):
    """The flatmin SAM, GAM or NSO that ``optimizer`` is or wraps, else None.

    Accelerate's ``AcceleratedOptimizer`` and Lightning's ``LightningOptimizer`` both expose
    the optimizer they wrap as ``.optimizer``. The unwrapping comes first because a
    ``LightningOptimizer`` is an *instance* of its optimizer's class (Lightning subclasses it
    on the fly), so an isinstance test alone would take it for the optimizer.
    """
    while True:
        inner = getattr(optimizer, "optimizer", None)
        if inner is None or inner is optimizer:
            break
        optimizer = inner
    return optimizer if isinstance(optimizer, WrapperOptimizer) else None
