"""The host path: a list of parameters grouped into buckets once, each with its backend's table.

A :class:`Plan` is built on an optimizer's first step (and by every ``functional`` call, for
its lists): it decides for every tensor which backend serves it (the one asked for, or the torch
reference for what a fused backend cannot take: fp64 without fp64 kernels, views with gaps,
meta tensors), how the kernels see it (a complex tensor as its real view), groups the tensors
into buckets of one param group, device, dtype and backend, and builds each bucket's table
(contract v2). A steady-state step then costs per bucket one ``refresh`` (the backends re-read
the gradients' storage at C speed where they can) and one call per op: no per-tensor Python.

Reductions (norms, dot products) accumulate across buckets into a small per-device fp32 vector
of per-step scalars (:attr:`Plan.scalars`) and finish with the contract's epilogue (scale,
found_inf, GAM's coefficient) in the same launch when the plan lives on one device; otherwise
the partial sums are combined on the first device first.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from contextlib import contextmanager

import torch

from . import backends, sharding
from .backends import contract, torch_backend
from .backends.contract import StaleTable

N_SCALARS = 16  # per-step scalar slots per device: norms, scales, found_inf, coefficients

_traffic = None  # the active Traffic recorder, if any (see counting_traffic)


class Traffic:
    """What the ops called under :func:`counting_traffic` moved: bytes read and written (each slot
    once per call, at its dtype) and calls per bucket, by op."""

    def __init__(self):
        self.bytes = 0
        self.calls = {}

    def record(self, bucket, op, args, kwargs):
        reads, writes = contract.traffic(op, args, kwargs)
        for slot in reads + writes:
            self.bytes += bucket.numel * bucket.slot_dtypes.get(slot, bucket.dtype).itemsize
        self.calls[op] = self.calls.get(op, 0) + 1


@contextmanager
def counting_traffic():
    """``with counting_traffic() as t: opt.step(...)``: t.bytes, t.calls of every plan op call."""
    global _traffic
    outer, _traffic = _traffic, Traffic()
    try:
        yield _traffic
    finally:
        _traffic = outer


@dataclass
class Bucket:
    """One launch unit: tensors of one param group, device, dtype and backend."""

    ops: object  # the backend module
    table: object  # ops.Table over the bucket's tensors
    device: torch.device
    positions: list  # indices into Plan.params
    group: object = None  # the param group dict (optimizers), or None
    fresh: bool = False  # SGD: momentum buffers created this step (buf = g, as torch)
    explicit_grads: bool = False  # gradients bound at each refresh (DTensor shards, complex views)
    dtype: torch.dtype = torch.float32
    out: torch.Tensor = field(default=None, repr=False)  # the device's per-step scalars
    numel: int = 0  # elements of the bucket's tensors
    slot_dtypes: dict = field(default_factory=dict)  # dtype of each bound list (for traffic counts)
    shard_groups: tuple = ()  # process groups its sums are all-reduced over (DTensor shards)


def _same_layout(t, others) -> bool:
    """Whether every list lays element k of this tensor at the same place (fused ops run in memory order)."""
    return t.numel() == 0 or all(o.stride() == t.stride() for o in others)


def kernel_view(t: torch.Tensor) -> torch.Tensor:
    """What the kernels see of a tensor: a DTensor's local shard, a complex tensor's real view."""
    t = sharding.local(t)
    return torch.view_as_real(t) if t.is_complex() else t


class Plan:
    """Buckets and tables for ``params`` (every one of which must have a gradient when the plan
    reads gradients); see the module docstring.

    params:      the tensors (parameters) the plan covers, in order.
    groups:      for optimizers, the param group of each tensor (a dict; hyperparameters are
                 read from it at every step); buckets never mix groups.
    gc_rows:     per tensor, whether GC may be applied (its dim 0 is the output unit).
    offsets:     per tensor, the global index of its first element (NSO's noise).
    fresh:       per tensor, whether its SGD momentum buffer is new this step.
    live_grads:  True: the slot "grad" is each parameter's ``.grad`` (optimizers); False: lists
                 are bound explicitly (``functional``).
    also:        other lists aligned with ``params`` that the ops will read or write: a tensor goes
                 to a fused backend only if that backend serves it in every list, and buckets
                 split by their dtypes too.
    """

    def __init__(self, params, *, backend: str = "auto", groups=None, gc_rows=None, offsets=None, fresh=None,
                 live_grads: bool = True, also=()):
        self.params = list(params)
        n = len(self.params)
        self.live_grads = live_grads
        groups = groups if groups is not None else [None] * n
        gc_rows = list(gc_rows) if gc_rows is not None else [False] * n
        fresh = list(fresh) if fresh is not None else [False] * n
        also = [ts for ts in also if ts is not None]
        if live_grads:
            also.append([p.grad for p in self.params])
        keys = {}
        for i, p in enumerate(self.params):
            view = kernel_view(p)
            if p.is_complex() and gc_rows[i]:
                raise ValueError(f"gradient centralization is not defined for complex parameters "
                                 f"(parameter {i}, shape {tuple(p.shape)}): set centralize=None for its group")
            if gc_rows[i]:
                sharding.check_whole_rows(p, i)
            others = [kernel_view(ts[i]) for ts in also if ts[i] is not None]
            ops = backends.resolve(backend, view.device)
            if not (all(ops.serves(t, gc_rows[i]) for t in [view] + others) and _same_layout(view, others)):
                ops = torch_backend  # the reference serves what a fused backend cannot
            group = groups[i]
            explicit = p.is_complex() or sharding.is_dtensor(p)
            key = (id(group), view.device, view.dtype, tuple(t.dtype for t in others), ops.name, explicit,
                   fresh[i], sharding.reduce_groups(p, i))
            keys.setdefault(key, (ops, group, []))[2].append(i)
        self.scalars = {}
        self._partials = {}
        self.buckets = []
        for (_, device, dtype, _, _, explicit, is_fresh, groups_), (ops, group, positions) in keys.items():
            tensors = [kernel_view(self.params[i]) for i in positions]
            local_offsets = None
            if offsets is not None:
                local_offsets = [sharding.local_offset(self.params[i], offsets[i], i) for i in positions]
            table = ops.Table(tensors, gc_rows=[gc_rows[i] for i in positions], offsets=local_offsets)
            if live_grads and not explicit:
                table.bind_grads("grad")
            if device not in self.scalars:
                self.scalars[device] = torch.zeros(N_SCALARS, dtype=torch.float32, device=device)
            if (device, groups_) not in self._partials:
                self._partials[(device, groups_)] = torch.zeros(N_SCALARS, dtype=torch.float32, device=device)
            self.buckets.append(Bucket(ops, table, device, positions, group, is_fresh, explicit, dtype,
                                       self.scalars[device], sum(t.numel() for t in tensors), {}, groups_))
        self.devices = list(self.scalars)
        # one device and nothing sharded: reductions finish in the kernels' own epilogue
        self._simple = len(self.devices) == 1 and all(not b.shard_groups for b in self.buckets)
        self._views = {}

    # ------------------------------------------------------------------ binding lists

    def bind(self, name, tensors) -> None:
        """Bind a persistent list aligned with ``params`` (state, buffers) to slot ``name``.

        Entries may be None for buckets that have no such list (e.g. ``max_exp_avg_sq`` outside
        amsgrad groups): a bucket is bound only when all its entries are tensors."""
        for bucket in self.buckets:
            entries = [tensors[i] for i in bucket.positions]
            missing = sum(t is None for t in entries)
            if missing == len(entries):
                continue
            if missing:
                raise ValueError(f"{name}: some tensors of one bucket are None")
            views = [kernel_view(t) for t in entries]
            bucket.table.bind(name, views)
            bucket.slot_dtypes[name] = views[0].dtype

    def bind_scalars(self, name, tensors) -> None:
        for bucket in self.buckets:
            bucket.table.bind_scalars(name, [sharding.local(tensors[i]) for i in bucket.positions])

    def refresh(self, grads: bool = True) -> None:
        """Re-read the parameters' (and, with ``grads``, the gradients') storage; StaleTable if the
        plan no longer holds. Called once per pass: at every step entry and after every closure."""
        for bucket in self.buckets:
            if grads and self.live_grads and bucket.explicit_grads:
                grad_list = [self.params[i].grad for i in bucket.positions]
                if any(g is None for g in grad_list):
                    raise StaleTable("a parameter of the plan has no gradient")
                try:
                    bucket.table.bind("grad", [kernel_view(g) for g in grad_list])
                except ValueError as exc:
                    raise StaleTable(str(exc)) from None
            bucket.table.refresh(grads=grads)

    # ------------------------------------------------------------------ per-step scalars

    def scalar(self, index: int, device) -> torch.Tensor:
        """The 1-element view of per-step scalar ``index`` on ``device`` (cached: no allocation)."""
        key = (index, device)
        view = self._views.get(key)
        if view is None:
            view = self._views[key] = self.scalars[device][index: index + 1]
        return view

    # ------------------------------------------------------------------ ops

    def _call(self, bucket, op, args, kwargs, **fixed):
        """One op on one bucket; argument values that are callables are called with the bucket."""
        args = tuple(v(bucket) if callable(v) else v for v in args)
        kw = {k: (v(bucket) if callable(v) else v) for k, v in kwargs.items()}
        kw.update(fixed)
        if _traffic is not None:
            _traffic.record(bucket, op, args, kw)
        getattr(bucket.ops, op)(bucket.table, *args, **kw)

    def each(self, op: str, *args, **kwargs) -> None:
        """Call op on every bucket; an argument value that is a callable is called with the bucket."""
        for bucket in self.buckets:
            self._call(bucket, op, args, kwargs)

    def reduce(self, op: str, *args, index: int, width: int = 1, epilogue=None, **kwargs) -> None:
        """A reduction over the whole plan into scalars[index : index + width], then ``epilogue``.

        On one device with nothing sharded, the buckets accumulate in order (deterministic) and the
        last one applies the epilogue in its own launch. Otherwise each (device, mesh groups)
        accumulates a partial sum, the sharded ones are all-reduced over their mesh, all meet on the
        first device, the epilogue runs there in torch ops, and the scalars are copied to every device.
        """
        if op == "dot" and epilogue is not None:
            raise ValueError("dot takes no epilogue")
        if not self.buckets:  # then there are no scalars either: nothing to reduce into
            return
        if self._simple:
            last = self.buckets[-1]
            for k, bucket in enumerate(self.buckets):
                fixed = {} if op == "dot" else {"epilogue": epilogue if bucket is last else None}
                self._call(bucket, op, args, kwargs, out=bucket.out, index=index, accumulate=k > 0, **fixed)
            return
        seen = set()
        for bucket in self.buckets:
            key = (bucket.device, bucket.shard_groups)
            self._call(bucket, op, args, kwargs, out=self._partials[key], index=index, accumulate=key in seen)
            seen.add(key)
        first = self.scalars[self.devices[0]]
        total = first[index: index + width]
        total.zero_()
        for (_, groups), partial in self._partials.items():
            if groups:
                sharding.all_reduce_(partial[index: index + width], groups)
            total.add_(partial[index: index + width].to(first.device, non_blocking=True))
        torch_backend._epilogue(first, index, epilogue)
        for device in self.devices[1:]:
            self.scalars[device].copy_(first, non_blocking=True)
