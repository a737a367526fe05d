"""A pytest plugin for running pytorch_optimizer's own test suite with the flatmin adapter on.

``-p flatmin_adapter_plugin`` (with this folder on PYTHONPATH: the library's own ``tests``
package would shadow ours): patches pytorch_optimizer.SAM at start-up and, at
the end, writes how many fused first/second steps ran to $FLATMIN_ADAPTER_CALLS (so the caller can
tell the adapter really carried the tests).
"""
import os

from flatmin_kernels.adapters import pytorch_optimizer as adapter

CALLS = {"first_step": 0, "second_step": 0}


def _counting(name, fn):
    def wrapped(self, *args, **kwargs):
        CALLS[name] += 1
        return fn(self, *args, **kwargs)
    return wrapped


def pytest_configure(config):
    adapter.patch()
    import pytorch_optimizer

    for name in CALLS:
        setattr(pytorch_optimizer.SAM, name, _counting(name, getattr(pytorch_optimizer.SAM, name)))


def pytest_unconfigure(config):
    path = os.environ.get("FLATMIN_ADAPTER_CALLS")
    if path:
        with open(path, "w") as f:
            f.write(f"{CALLS['first_step']} {CALLS['second_step']}\n")
