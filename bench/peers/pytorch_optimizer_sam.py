"""pytorch_optimizer's ``SAM`` (kozistr), when it is installed: the library a user would pip install.

Its loop path (CPU) and foreach path (CUDA) both: global norm 1; ``old_p`` clone 2;
``e = 1.0 * g * scale`` 2 + 2; ``p += e`` 3; restore copy 2; base AdamW default 20.
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


def contenders():
    return [Contender("pytorch_optimizer SAM", "SAM", "peer", _build, two_call, 32,
                      "norm 1; old_p clone 2; e = 1.0*g*scale 4; p += e 3; restore copy 2; base AdamW 20",
                      3, 2, unavailable=_unavailable())]
