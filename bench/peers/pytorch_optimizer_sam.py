"""pytorch_optimizer's ``SAM`` (kozistr), when it is installed: the library a user would pip install,
as it ships and with flatmin's adapter on (``flatmin_kernels.adapters.pytorch_optimizer``, the
"import us as a faster backend" use).

As it ships, its loop path (CPU) and foreach path (CUDA) both: global norm 1; ``old_p`` clone 2;
``e = 1.0 * g * scale`` 2 + 2; ``p += e`` 3; restore copy 2; base AdamW default 20.
Adapted: the same class and base optimizer; sumsq 1, perturb_ with backup 4, restore_ 2 (flatmin's
fused ops), base AdamW default 20.
"""
from __future__ import annotations

import torch

from flatmin_kernels.bench.contenders import BASE, Contender, two_call


def _unavailable():
    try:
        import pytorch_optimizer  # noqa: F401
    except Exception as exc:
        return f"pytorch_optimizer is not installed here ({type(exc).__name__}); pip install pytorch_optimizer"
    return None


def _build(params):
    from pytorch_optimizer import SAM

    return SAM(params, torch.optim.AdamW, rho=0.05, **BASE)


def _adapted_step(backend):
    """davda54's protocol with the adapter on for the duration of the iteration only, so the
    unpatched contender in the same rounds runs pytorch_optimizer's own methods."""
    from flatmin_kernels.adapters.pytorch_optimizer import patched

    def iterate(opt, backward):
        with patched(backend):
            two_call(opt, backward)

    return iterate


def contenders():
    return [Contender("pytorch_optimizer SAM", "SAM", "peer", _build, two_call, 32,
                      "norm 1; old_p clone 2; e = 1.0*g*scale 4; p += e 3; restore copy 2; base AdamW 20",
                      3, 2, unavailable=_unavailable())]


def adapted(backends) -> list:
    """pytorch_optimizer's SAM with flatmin's adapter, once per flatmin backend of the run."""
    return [Contender(f"pytorch_optimizer SAM + flatmin ({backend})", "SAM", "peer", _build, _adapted_step(backend),
                      27, "sumsq 1; perturb_ with backup 4; restore_ 2 (flatmin ops); base AdamW 20", 3, 2,
                      backend=backend, unavailable=_unavailable()) for backend in backends]
