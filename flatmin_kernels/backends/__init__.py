"""Backend registry: which implementations of the op contract exist and which one to use.

``torch`` (the reference, always there), ``triton`` (fused kernels on CUDA; on CPU tensors
only under ``TRITON_INTERPRET=1``) and ``cpp`` (the compiled extension in csrc/). An
optimizer asks :func:`resolve` for the backend of each bucket's device.
"""
from __future__ import annotations

import importlib
import os
from functools import lru_cache

import torch

from .contract import OPS, missing_api

BACKEND_NAMES = ("torch", "triton", "cpp")
CHOICES = ("auto",) + BACKEND_NAMES
ENV_VAR = "FLATMIN_BACKEND"

_MODULES = {
    "torch": "flatmin_kernels.backends.torch_backend",
    "triton": "flatmin_kernels.backends.triton_backend",
    "cpp": "flatmin_kernels.backends.cpp_backend",
}

# What "auto" prefers, by device type; the first one that works wins.
AUTO_ORDER = {
    "cuda": ("triton", "cpp", "torch"),
    "cpu": ("cpp", "torch"),
}


class BackendUnavailableError(RuntimeError):
    """Raised when a backend was asked for by name but cannot run here."""


@lru_cache(maxsize=None)
def _load(name: str):
    """(module or None, reason). Never raises for a missing optional dependency."""
    try:
        module = importlib.import_module(_MODULES[name])
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("flatmin_kernels.backends."):
            return None, "not implemented in this version"
        return None, f"cannot import: {exc}"
    except Exception as exc:  # a broken optional dependency must not break the package
        return None, f"cannot import: {type(exc).__name__}: {exc}"
    ok, reason = module.available()
    if not ok:
        return None, reason
    missing = missing_api(module)
    if missing:
        return None, f"incomplete for contract v2: missing {', '.join(missing)}"
    return module, reason


def backend_status() -> dict:
    """{name: (works here, reason)} for every backend."""
    return {name: (_load(name)[0] is not None, _load(name)[1]) for name in BACKEND_NAMES}


def available_backends() -> list:
    """Names of the backends that work on this machine."""
    return [name for name, (ok, _) in backend_status().items() if ok]


def check_choice(name: str) -> str:
    """Validate a ``backend=`` argument; raise with the reason if it cannot be used."""
    if name not in CHOICES:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(CHOICES)}")
    if name != "auto":
        get_backend(name)
    return name


def get_backend(name: str):
    """The backend module ``name``; raises BackendUnavailableError saying why if it cannot run."""
    if name not in BACKEND_NAMES:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKEND_NAMES)}")
    module, reason = _load(name)
    if module is None:
        raise BackendUnavailableError(f"backend {name!r} is not available here: {reason}")
    return module


def resolve(name: str, device: torch.device):
    """The backend module to run a bucket on ``device`` for a ``backend=`` choice.

    ``auto`` means the environment variable FLATMIN_BACKEND if it is set, otherwise the fastest
    backend that works for this device type.
    """
    if name == "auto":
        name = os.environ.get(ENV_VAR, "auto") or "auto"
        if name not in CHOICES:
            raise ValueError(f"{ENV_VAR}={name!r} is not a backend; choose one of {', '.join(CHOICES)}")
    if name != "auto":
        module = get_backend(name)
        if not module.supports(device):
            raise BackendUnavailableError(f"backend {name!r} cannot run on device {device}")
        return module
    for candidate in AUTO_ORDER.get(device.type, ("torch",)):
        module = _load(candidate)[0]
        if module is not None and module.supports(device):
            return module
    return get_backend("torch")


__all__ = [
    "OPS",
    "BACKEND_NAMES",
    "BackendUnavailableError",
    "available_backends",
    "backend_status",
    "check_choice",
    "get_backend",
    "resolve",
]
