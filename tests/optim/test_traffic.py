"""Bytes each method's step moves per fp32 parameter, counted from the ops it calls (issue 10).

Each op call counts every list it reads or writes once, at its dtype (contract.traffic): the
minimum a pass over memory must move. AdamW alone is 28 B (read p, g, m, v; write p, m, v).
"""
import pytest
import torch

import flatmin_kernels as fk
from flatmin_kernels.plan import counting_traffic

from . import models as M

# (make the optimizer, bytes per parameter per step, op calls per bucket per step)
CASES = {
    "adamw": (lambda n: fk.AdamW(n.parameters(), lr=1e-2), 28, {"step_adam_": 1}),
    # norm 4 + perturb with backup 16 + AdamW reading w from the backup 28
    "sam": (lambda n: fk.SAM(n.parameters(), fk.AdamW, lr=1e-2), 48, {"sumsq": 1, "perturb_": 1, "step_adam_": 1}),
    # the schedule in gam.py's docstring; the official code moves about 176 B
    "gam": (lambda n: fk.GAM(n.parameters(), fk.AdamW, lr=1e-2), 124,
            {"sumsq": 1, "perturb_": 3, "axpby_": 3, "step_adam_": 1}),
    # backup 8 + noise from the backup 8 + 8 + found_inf norm 4 + AdamW from the backup 28
    "nso": (lambda n: fk.NSO(n.parameters(), fk.AdamW, lr=1e-2, seed=0), 56,
            {"axpby_": 1, "noise_": 2, "sumsq": 1, "step_adam_": 1}),
}

# Launches per op call on the fused backends: two-stage reductions and Adam (whose second launch
# advances the step counters) take two, the element-wise ops one.
LAUNCHES = {"sumsq": 2, "dot": 2, "step_adam_": 2}


@pytest.mark.parametrize("kind", list(CASES))
def test_bytes_per_parameter_per_step(kind):
    make, expected_bytes, expected_calls = CASES[kind]
    net = M.make_net()
    net.unused.requires_grad_(False)  # every trainable parameter gets a gradient (NSO perturbs all of them)
    opt = make(net)
    data = M.batches(2)
    M.train_step(net, opt, data[0])  # state exists
    assert len(opt.host_path.plan.buckets) == 1
    with counting_traffic() as traffic:
        M.train_step(net, opt, data[1])
    trained = sum(p.numel() for p in net.parameters() if p.requires_grad)
    assert sum(p.numel() for p in opt.host_path.plan.params) == trained
    assert traffic.bytes / trained == expected_bytes
    assert traffic.calls == expected_calls


def test_gam_launches_within_budget():
    """At most 25 launches per bucket per step (the official code runs about 69 operations)."""
    _, _, calls = CASES["gam"]
    axpby_with_norms = calls["axpby_"]  # each of GAM's combinations carries a norm: a reduction
    launches = sum(n * LAUNCHES.get(op, 1) for op, n in calls.items()) + axpby_with_norms
    assert launches == 13 <= 25


def test_bf16_parameters_move_half_the_bytes_of_their_slots():
    torch.manual_seed(0)
    net = M.make_net().to(torch.bfloat16)
    opt = fk.AdamW(net.parameters(), lr=1e-2)
    x, y = M.batches(1)[0]
    for _ in range(2):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x.to(torch.bfloat16)).float(), y).backward()
        with counting_traffic() as traffic:
            opt.step()
    assert traffic.bytes / sum(p.numel() for p in opt.host_path.plan.params) == 14  # 7 bf16 lists
