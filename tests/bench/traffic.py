"""Counting the list-sized memory traffic of a torch-level optimizer step, to check the counts
the benchmark states next to each contender.

Every aten op that runs inside ``TrafficCounter`` adds, for each distinct tensor argument as
large as the list's tensors, one read (unless the op only overwrites it: ``copy_``, ``zero_``,
``fill_``, an ``out=`` argument; or takes only its shape: ``randn_like``) and one write if the op mutates it; and one write per new
output of that size. View ops move nothing. Work done while ``paused`` is not counted (the
stand-in backward passes).
"""
from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

_WRITE_ONLY = {"copy_", "_foreach_copy_", "zero_", "_foreach_zero_", "fill_", "_foreach_fill_", "normal_",
               "uniform_"}
# torch's fused optimizers mark the gradients mutable: they write them only to unscale (grad_scale)
_FUSED_STEPS = {"_fused_adam_", "_fused_adamw_", "_fused_sgd_"}
_ALLOCATES_ONLY = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided"}


class TrafficCounter(TorchDispatchMode):
    def __init__(self, numels):
        super().__init__()
        self.numels = set(numels)
        self.elements = 0  # list-sized element reads + writes
        self.paused = False

    def _sized(self, t):
        return isinstance(t, torch.Tensor) and t.numel() in self.numels and t.numel() > 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.paused:
            return out
        schema = func._schema
        name = schema.name.split("::")[-1]
        if name in _ALLOCATES_ONLY or any(r.alias_info is not None and not r.alias_info.is_write
                                          for r in schema.returns):
            return out  # an allocation or a view: no traffic
        touched = {}  # (data_ptr, numel) -> [read, write]
        values = list(args) + [kwargs.get(a.name) for a in schema.arguments[len(args):]]
        for arg, value in zip(schema.arguments, values):
            written = arg.alias_info is not None and arg.alias_info.is_write
            if name in _FUSED_STEPS and arg.name == "grads" and kwargs.get("grad_scale") is None:
                written = False
            write_only = written and (arg.kwarg_only or name in _WRITE_ONLY)
            if name.endswith("_like"):  # randn_like, zeros_like: the input gives the shape only
                write_only = True
            for t in tree_flatten(value)[0]:
                if self._sized(t):
                    rw = touched.setdefault((t.data_ptr(), t.numel()), [False, False])
                    rw[0] |= not write_only
                    rw[1] |= written
        aliased = {key for key, rw in touched.items() if rw[1]}
        for t in tree_flatten(out)[0]:
            if self._sized(t) and (t.data_ptr(), t.numel()) not in aliased:
                touched.setdefault((t.data_ptr(), t.numel()), [False, False])[1] = True
        self.elements += sum(t[1] * (rw[0] + rw[1]) for t, rw in touched.items())
        return out
