"""The ops suite: every ``flatmin_kernels.functional`` op per backend, as bandwidth.

Each op's bytes are the minimal traffic it must cause: ``accesses`` list-sized arrays read or
written once per element (adamw_: read p, g, m, v; write p, m, v = 7, so 28 B per fp32
element). Achieved GB/s is those bytes over the median time, and ``fraction_of_copy``
compares it with ``dst.copy_(src)`` on flat buffers moving the same bytes (read + write), timed
in the same interleaved rounds. To add an op, add a row to ``OPS``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .. import functional as F
from . import param_lists
from .timing import interleave

MIN_BYTES = 256 * 2**20  # lists below this are too small for a bandwidth figure (caches)


@dataclass(frozen=True)
class Op:
    name: str
    accesses: int  # list-sized arrays read + written per element
    traffic: str
    call: Callable  # (Buffers, backend) -> None


class Buffers:
    """The lists an op reads and writes: params, grads, Adam moments, SGD momentum, backups."""

    def __init__(self, plist, dtype, device, seed=0):
        make = lambda k, scale: param_lists.materialize(plist, dtype, device, seed=seed + k, scale=scale)  # noqa: E731
        self.p = make(0, 1.0)
        self.g = make(1, 1e-3)
        self.m = make(2, 1e-4)
        self.v = [t.abs_() for t in make(3, 1e-6)]  # a second moment is never negative
        self.buf = make(4, 1e-4)
        self.backup = make(5, 1.0)
        self.steps = [torch.zeros((), dtype=torch.float32, device=device) for _ in self.p]


LR = 1e-6  # tiny steps: repeated calls keep the values in range
OPS = (
    Op("sumsq", 1, "r g", lambda b, be: F.sumsq(b.g, backend=be)),
    Op("sumsq gc", 1, "r g", lambda b, be: F.sumsq(b.g, centralize="gc", backend=be)),
    Op("sumsq asam", 2, "r g,p", lambda b, be: F.sumsq(b.g, weights=b.p, backend=be)),
    Op("global_norm", 1, "r g", lambda b, be: F.global_norm(b.g, backend=be)),
    Op("dot", 2, "r g,m", lambda b, be: F.dot(b.g, b.m, backend=be)),
    Op("centralize_", 2, "r g; w g", lambda b, be: F.centralize_(b.g, centralize="gc", backend=be)),
    Op("axpby_", 3, "r m,g; w m", lambda b, be: F.axpby_(b.m, b.g, 0.9, 0.1, backend=be)),
    Op("perturb_", 3, "r p,g; w p", lambda b, be: F.perturb_(b.p, b.g, 1e-6, backend=be)),
    Op("perturb_ backups", 4, "r p,g; w p,backup",
       lambda b, be: F.perturb_(b.p, b.g, 1e-6, backups=b.backup, backend=be)),
    Op("sam_perturb_", 5, "r g (norm); r p,g; w p,backup",
       lambda b, be: F.sam_perturb_(b.p, b.g, rho=1e-4, backups=b.backup, backend=be)),
    Op("restore_", 2, "r backup; w p", lambda b, be: F.restore_(b.p, b.backup, backend=be)),
    Op("noise_", 2, "r p; w p", lambda b, be: F.noise_(b.p, 1e-6, seed=1, step=0, backend=be)),
    Op("sgd_ momentum", 5, "r p,g,buf; w p,buf",
       lambda b, be: F.sgd_(b.p, b.g, b.buf, lr=LR, momentum=0.9, backend=be)),
    Op("adam_", 7, "r p,g,m,v; w p,m,v",
       lambda b, be: F.adam_(b.p, b.g, b.m, b.v, None, b.steps, lr=LR, backend=be)),
    Op("adamw_", 7, "r p,g,m,v; w p,m,v",
       lambda b, be: F.adamw_(b.p, b.g, b.m, b.v, None, b.steps, lr=LR, backend=be)),
    Op("adamw_ gc", 7, "r p,g,m,v; w p,m,v",
       lambda b, be: F.adamw_(b.p, b.g, b.m, b.v, None, b.steps, lr=LR, centralize="gc", backend=be)),
    Op("adamw_ backups", 7, "r backup,g,m,v; w p,m,v",
       lambda b, be: F.adamw_(b.p, b.g, b.m, b.v, None, b.steps, lr=LR, backups=b.backup, backend=be)),
)

BUFFER_COPIES = 6  # p, g, m, v, buf, backup


def memory_estimate(plist, dtype) -> int:
    """Bytes the suite allocates for one list: its buffers and the copy baseline's two flat buffers."""
    max_accesses = max(op.accesses for op in OPS)
    return (BUFFER_COPIES + max_accesses) * plist.nbytes(dtype)


def run_list(plist, dtype, device, backends, *, clock, reps, warmup, slow_s, progress) -> list:
    """One row per (op, backend), each with its copy baseline from the same rounds."""
    bufs = Buffers(plist, dtype, device)
    itemsize = bufs.p[0].element_size()
    numel = plist.numel
    max_bytes = max(op.accesses for op in OPS) * itemsize * numel
    src = torch.zeros(max_bytes // 2 + 1, dtype=torch.uint8, device=device)
    dst = torch.zeros_like(src)

    def copy_of(accesses):
        half = accesses * itemsize * numel // 2  # a copy reads and writes `half` bytes
        return lambda clock: dst[:half].copy_(src[:half])

    def call(op, backend):
        return lambda clock: op.call(bufs, backend)

    entries = {f"copy {a}x": copy_of(a) for a in sorted({op.accesses for op in OPS})}
    for op in OPS:
        for backend in backends:
            entries[f"{op.name} [{backend}]"] = call(op, backend)
    timings = interleave(entries, clock=clock, reps=reps, warmup=warmup, slow_s=slow_s, progress=progress)

    rows = []
    for op in OPS:
        copy = timings[f"copy {op.accesses}x"]
        for backend in backends:
            t = timings[f"{op.name} [{backend}]"]
            nbytes = op.accesses * itemsize * numel
            gbs = None if t.median is None else nbytes / t.median / 1e9
            copy_gbs = None if copy.median is None else nbytes / copy.median / 1e9
            rows.append({"op": op.name, "backend": backend, "accesses": op.accesses, "traffic": op.traffic,
                         "bytes": nbytes, **t.as_dict(), "gb_s": gbs,
                         "copy_ms_median": None if copy.median is None else copy.median * 1e3,
                         "copy_gb_s": copy_gbs,
                         "fraction_of_copy": None if gbs is None or copy_gbs is None else gbs / copy_gbs})
    return rows
