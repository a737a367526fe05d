"""The Triton backend: every op of the op contract (v2) as fused multi-tensor kernels.

A :class:`Table` (``tables.py``) is one bucket prepared once: its work items, tile size and
per-slot element offsets live on the device, and ``refresh`` re-reads only data pointers.
Each op covers the whole bucket in a fixed number of launches (one for the element-wise ops,
two for the two-stage reductions, axpby_ with its norms, and Adam, whose second launch
advances the step counters), whatever the number of tensors or of their GC row lengths:
every row-length class of GC work is compiled into the same kernel (``common.walk``). Math is fp32 for
fp32/bf16/fp16 storage, offsets are 64-bit, reductions are deterministic, nothing
synchronises with the host, and no kernel is autotuned (they update in place). On CUDA the
kernels are compiled; on CPU tensors they run only under Triton's interpreter
(``TRITON_INTERPRET=1``), which is how they are tested without a GPU. See
:mod:`flatmin_kernels.backends.contract` for every op's meaning.
"""
from __future__ import annotations

import warnings

import torch

name = "triton"

try:
    import triton  # noqa: F401

    _IMPORT_ERROR = None
except Exception as exc:  # pragma: no cover - depends on the installation
    _IMPORT_ERROR = f"{type(exc).__name__}: {exc}"
    if torch.cuda.is_available():  # only worth a warning where the fused kernels would run
        warnings.warn(f"flatmin_kernels: the triton backend is unavailable: {_IMPORT_ERROR}",
                      RuntimeWarning, stacklevel=2)

if _IMPORT_ERROR is None:
    from .adam import step_adam_
    from .axpby import axpby_
    from .centralize import centralize_
    from .common import INTERPRET
    from .noise import noise_, philox
    from .perturb import perturb_
    from .reduce import dot, sumsq
    from .sgd import step_sgd_
    from .tables import Table, serves, supports
else:  # pragma: no cover
    INTERPRET = False


def available() -> tuple[bool, str]:
    if _IMPORT_ERROR is not None:
        return False, f"cannot import triton: {_IMPORT_ERROR}"
    if INTERPRET:
        return True, f"triton {triton.__version__} interpreter (TRITON_INTERPRET=1): CPU tensors"
    if torch.cuda.is_available():
        return True, f"triton {triton.__version__} on CUDA"
    return False, "no CUDA device (set TRITON_INTERPRET=1 to run the kernels on CPU tensors)"
