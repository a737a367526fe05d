"""BatchNorm running statistics: the helpers, and the wrappers' model= handling."""
import pytest
import torch
from torch import nn

import flatmin_kernels as fk

from . import models as M


def bn_net(momentum=0.1):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6, momentum=momentum), nn.ReLU(),
                         nn.Linear(6, 6), nn.BatchNorm1d(6, momentum=momentum), nn.Linear(6, 2))


def stats(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


def test_disable_enable_keep_the_momentum_in_backup_momentum():
    net = bn_net(momentum=0.3)
    fk.disable_running_stats(net)
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm1d)]
    assert all(m.momentum == 0 and m.backup_momentum == 0.3 for m in bns)
    fk.disable_running_stats(net)  # twice: the real momentum is kept, not the 0
    fk.enable_running_stats(net)
    assert all(m.momentum == 0.3 and not hasattr(m, "backup_momentum") for m in bns)
    fk.enable_running_stats(net)  # enabling what is enabled changes nothing
    assert all(m.momentum == 0.3 for m in bns)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_a_disabled_pass_leaves_every_statistic_alone(momentum):
    net = bn_net(momentum)
    x = torch.randn(32, 4)
    net(x)  # some history, so a cumulative average (momentum=None) has a count to protect
    before = stats(net)
    with fk.running_stats_disabled(net):
        net(x * 3 + 1)
    after = stats(net)
    for k in before:
        assert torch.equal(before[k], after[k]), k
    net(x * 3 + 1)  # and the statistics move again once enabled
    assert not torch.equal(stats(net)["1.running_mean"], before["1.running_mean"])


def test_the_context_manager_restores_on_error():
    net = bn_net()
    with pytest.raises(ZeroDivisionError):
        with fk.running_stats_disabled(net):
            1 / 0
    assert net[1].momentum == 0.1


def _make(name, model, params, with_model):
    kw = dict(model=model) if with_model else {}
    if name == "SAM":
        return fk.SAM(params, torch.optim.SGD, lr=0.1, rho=0.5, **kw)
    if name == "GAM":
        return fk.GAM(params, torch.optim.SGD, lr=0.1, grad_rho=0.5, grad_norm_rho=0.5, **kw)
    return fk.NSO(params, torch.optim.SGD, lr=0.1, sigma=0.5, lam=0.5, seed=0, **kw)


@pytest.mark.parametrize("name", ["SAM", "GAM", "NSO"])
def test_model_argument_keeps_extra_passes_out_of_the_statistics(name):
    """With model=, a step changes the running statistics exactly as one clean forward does."""
    net, twin = M.make_net(), M.make_net()
    batch = M.batches(1)[0]
    M.loss_of(twin, batch)  # one clean pass at the same weights
    opt = _make(name, net, net.parameters(), with_model=True)
    opt.step(M.closure_for(net, batch, opt.zero_grad))
    for k, v in stats(twin).items():
        assert torch.equal(stats(net)[k], v), k
    assert net.bn.momentum == 0.1 and not hasattr(net.bn, "backup_momentum")

    # Without model= the extra passes do move them (so the check above can fail).
    net2 = M.make_net()
    opt2 = _make(name, net2, net2.parameters(), with_model=False)
    opt2.step(M.closure_for(net2, batch, opt2.zero_grad))
    assert not torch.equal(stats(net2)["bn.running_mean"], stats(twin)["bn.running_mean"])


def test_sam_two_call_api_with_model():
    net, twin = M.make_net(), M.make_net()
    batch = M.batches(1)[0]
    M.loss_of(twin, batch)
    opt = fk.SAM(net.parameters(), torch.optim.SGD, lr=0.1, rho=0.5, model=net)
    M.loss_of(net, batch).backward()
    opt.first_step(zero_grad=True)
    assert net.bn.momentum == 0 and net.bn.backup_momentum == 0.1
    M.loss_of(net, batch).backward()
    opt.second_step(zero_grad=True)
    assert net.bn.momentum == 0.1
    for k, v in stats(twin).items():
        assert torch.equal(stats(net)[k], v), k
