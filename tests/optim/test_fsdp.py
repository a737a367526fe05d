"""FSDP2 / DTensor parameters: the fused ops run on the local shards, norms and dot products are
summed over the mesh, NSO's noise is indexed by the global element. Tested with gloo on the CPU
(world sizes 1 and 2; every rank sees the same batch, so the averaged gradient is the
single-process one): the trained parameters equal the unsharded single-process run's.
"""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import flatmin_kernels as fk

from ..backends_under_test import CPU_BACKENDS, INTERPRETED
from . import models as M

BACKENDS = [b for b in CPU_BACKENDS if b not in INTERPRETED]  # the interpreter is too slow for this
KINDS = {
    "adamw_gc": lambda net, b: fk.AdamW(net.parameters(), lr=1e-2, centralize="gc", backend=b),
    "sam": lambda net, b: fk.SAM(net.parameters(), fk.AdamW, rho=0.05, lr=1e-2, model=net, backend=b),
    "gam": lambda net, b: fk.GAM(net.parameters(), torch.optim.SGD, lr=0.05, momentum=0.9, model=net, backend=b),
    "nso": lambda net, b: fk.NSO(net.parameters(), fk.AdamW, sigma=0.01, lr=1e-2, seed=7, model=net, backend=b),
}
STEPS = 3


def _train(kind, backend, shard):
    torch.manual_seed(0)
    net = M.make_net()
    if shard:
        from torch.distributed.fsdp import fully_shard

        fully_shard(net)
    opt = KINDS[kind](net, backend)
    for batch in M.batches(STEPS):
        M.train_step(net, opt, batch)
    full = {name: (p.full_tensor() if shard else p).detach().clone() for name, p in net.named_parameters()}
    return full, opt


def _state_parity(backend):
    """fk.AdamW's state on DTensor parameters has torch.optim.AdamW's layout: DTensors, same placements."""
    from torch.distributed.fsdp import fully_shard

    layouts = []
    for cls in (fk.AdamW, torch.optim.AdamW):
        torch.manual_seed(0)
        net = M.make_net()
        fully_shard(net)
        opt = cls(net.parameters(), lr=1e-2, **({"backend": backend} if cls is fk.AdamW else {}))
        M.loss_of(net, M.batches(1)[0]).backward()
        opt.step()
        sd = opt.state_dict()["state"]
        layouts.append({k: {n: (type(t).__name__, getattr(t, "placements", None), tuple(t.shape))
                            for n, t in st.items()} for k, st in sd.items()})
    return layouts[0] == layouts[1], layouts


def _worker(rank, world, port, backend, out_path):
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results = {kind: _train(kind, backend, shard=True)[0] for kind in KINDS}
        results["state_parity"] = _state_parity(backend)
        if rank == 0:
            torch.save(results, out_path)
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("world", [1, 2])
def test_fsdp2_equals_the_single_process_run(world, backend, tmp_path):
    out = tmp_path / "sharded.pt"
    mp.spawn(_worker, args=(world, _free_port(), backend, str(out)), nprocs=world, join=True)
    sharded = torch.load(out, weights_only=False)
    same_layout, layouts = sharded.pop("state_parity")
    assert same_layout, layouts
    for kind in KINDS:
        reference, _ = _train(kind, backend, shard=False)
        for name, want in reference.items():
            torch.testing.assert_close(sharded[kind][name], want, rtol=1e-5, atol=1e-7,
                                       msg=lambda m: f"{kind}, {name}: {m}")
