"""The bytes per parameter the benchmark states next to each contender are what its code moves.

For every torch-level contender (torch's AdamW and the peers) one steady-state iteration is run
under a dispatch-mode counter of list-sized reads and writes, and compared with the stated
count. flatmin's own contenders run compiled kernels the counter cannot see: their counts are
the op-contract values (AdamW 28 B per fp32 parameter, SAM 48 B).
"""
from contextlib import contextmanager

import pytest
import torch

from flatmin_kernels.bench import contenders as C
from flatmin_kernels.bench.param_lists import ParamList
from flatmin_kernels.bench.steps_suite import Setup
from flatmin_kernels.bench.timing import WallClock
from flatmin_kernels.plan import counting_traffic
from tests.bench.traffic import TrafficCounter

import bench.peers

# distinct sizes, none equal to a row mean or a stack of norms; all with ndim > 1, where the GC
# peers' counts (which include GC) apply
SMALL = ParamList("small", "three tensors", ((24, 20), (6, 5), (6, 5, 2, 2)))


class CountingClock(WallClock):
    """A clock whose excluded parts (the stand-in backward passes) also pause the counter."""

    def __init__(self, counter=None):
        super().__init__()
        self.counter = counter

    @contextmanager
    def excluded(self):
        if self.counter is None:
            with super().excluded():
                yield
            return
        self.counter.paused = True
        try:
            with super().excluded():
                yield
        finally:
            self.counter.paused = False


def counted_accesses(contender) -> float:
    presets = [torch.full(s, 1e-3) for s in SMALL.shapes]
    setup = Setup(contender, SMALL, torch.float32, "cpu", presets, torch.zeros(()))
    for _ in range(2):  # state created, first-step branches taken
        setup.iteration(CountingClock())
    counter = TrafficCounter([t.numel() for t in setup.params])
    with counter:
        setup.iteration(CountingClock(counter))
    return counter.elements / SMALL.numel


TORCH_LEVEL = [c for c in C.torch_adamw() + bench.peers.contenders() if c.accesses is not None and not c.unavailable]


@pytest.mark.parametrize("contender", TORCH_LEVEL, ids=lambda c: c.name)
def test_stated_count_is_what_the_code_moves(contender):
    assert counted_accesses(contender) == contender.accesses


def test_ours_are_the_op_contract_counts():
    ours = {c.method: c for c in C.ours("torch")}
    assert ours["AdamW"].bytes_per_param(4) == 28  # r p,g,m,v; w p,m,v
    assert ours["AdamW"].bytes_per_param(2) == 14
    assert ours["SAM"].bytes_per_param(4) == 48  # norm 4 + perturb with backup 16 + AdamW from the backup 28
    assert C.fused_adamw().bytes_per_param(4) == 28


@pytest.mark.parametrize("contender", C.ours("torch"), ids=lambda c: c.method)
def test_ours_are_what_flatmins_traffic_accounting_counts(contender):
    """flatmin counts the slots each op call reads and writes (the same on every backend)."""
    presets = [torch.full(s, 1e-3) for s in SMALL.shapes]
    setup = Setup(contender, SMALL, torch.float32, "cpu", presets, torch.zeros(()))
    setup.iteration(WallClock())  # state exists
    with counting_traffic() as traffic:
        setup.iteration(WallClock())
    assert traffic.bytes == contender.accesses * 4 * SMALL.numel


def test_counter_sees_a_fused_adamw_as_seven_accesses():
    assert counted_accesses(C.fused_adamw()) == 7


def test_adapted_pytorch_optimizer_sam_moves_its_stated_count():
    """The adapter's fused ops (flatmin's accounting, any backend) plus the base AdamW's torch ops
    (the dispatch counter; the cpp kernels are invisible to it) make up the stated count."""
    pytest.importorskip("pytorch_optimizer")
    from bench.peers.pytorch_optimizer_sam import adapted

    [contender] = adapted(["cpp"])
    presets = [torch.full(s, 1e-3) for s in SMALL.shapes]
    setup = Setup(contender, SMALL, torch.float32, "cpu", presets, torch.zeros(()))
    setup.iteration(WallClock())  # state exists
    counter = TrafficCounter([t.numel() for t in setup.params])
    with counting_traffic() as fused, counter:
        setup.iteration(CountingClock(counter))
    assert fused.bytes == 7 * 4 * SMALL.numel  # sumsq 1 + perturb_ with backup 4 + restore_ 2
    assert counter.elements / SMALL.numel == 20  # torch.optim.AdamW's for-loop step
    assert fused.bytes / 4 / SMALL.numel + counter.elements / SMALL.numel == contender.accesses
