"""Each peer computes what it claims: its trajectory on a tiny model matches a naive reference.

A benchmark peer that computes the wrong thing is worthless, so every peer is trained for three
steps next to the simplest implementation of its algorithm (tests/oracles.py, or a few lines
here) and must end at the same weights. pytorch_optimizer's SAM is a third-party library, not
ours to test.
"""
import torch
from torch import nn

from bench.peers.compiled_sam import CompiledSAM
from bench.peers.davda54_sam import LoopSAM
from bench.peers.foreach_sam import ForeachSAM
from bench.peers.gam_official import OfficialGAM
from bench.peers.gc_paper import SGDGC, AdamGC
from bench.peers.nso_official import OfficialNSO
from flatmin_kernels.bench.contenders import base_step, closure_step, two_call
from tests import oracles

STEPS = 3
ADAMW = dict(lr=1e-2, weight_decay=1e-2)
ORACLE_ADAM = dict(betas=(0.9, 0.999), eps=1e-8, amsgrad=False, maximize=False)


def make_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))


BATCHES = [(torch.randn(16, 5, generator=torch.Generator().manual_seed(i)),
            torch.randn(16, 3, generator=torch.Generator().manual_seed(100 + i))) for i in range(STEPS)]


def closure_for(model, batch):
    def closure():
        model.zero_grad(set_to_none=True)
        x, y = batch
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss
    return closure


def train(model, optimizer, iterate):
    """The peer driven the way the benchmark drives it (``iterate``), with real passes."""
    for batch in BATCHES:
        iterate(optimizer, closure_for(model, batch))


def train_oracle(model, oracle):
    for batch in BATCHES:
        oracle.step(closure_for(model, batch))


def groups(model, **hyper):
    return [{"params": list(model.parameters()), "centralize": None, **hyper}]


def relative_difference(x, y):
    return float((x - y).detach().double().norm() / y.detach().double().norm())


def assert_same_weights(a, b, rtol):
    for (name, x), (_, y) in zip(a.named_parameters(), b.named_parameters()):
        assert relative_difference(x, y) <= rtol, f"{name}: relative difference {relative_difference(x, y):.2e} > {rtol}"


def sam_oracle(model, adaptive=False, rho=0.05):
    g = groups(model, **ADAMW, **ORACLE_ADAM)
    return oracles.OracleSAM(g, oracles.OracleAdam(g, decoupled=True), rho=rho, adaptive=adaptive)


def check_sam_peer(make_peer, adaptive=False, rho=0.05, rtol=1e-6):
    net, ref = make_net(), make_net()
    train(net, make_peer(net.parameters()), two_call)
    train_oracle(ref, sam_oracle(ref, adaptive, rho))
    assert_same_weights(net, ref, rtol)
    assert_moved(net)


def assert_moved(net):
    assert any((a - b).abs().max() > 1e-4 for a, b in zip(net.parameters(), make_net().parameters())), \
        "the weights did not move: the comparison would prove nothing"


def test_davda54_sam_matches_the_oracle():
    check_sam_peer(lambda ps: LoopSAM(ps, torch.optim.AdamW, rho=0.05, **ADAMW))


def test_davda54_asam_matches_the_oracle():
    check_sam_peer(lambda ps: LoopSAM(ps, torch.optim.AdamW, rho=0.5, adaptive=True, **ADAMW), adaptive=True, rho=0.5)


def test_foreach_sam_matches_the_oracle():
    check_sam_peer(lambda ps: ForeachSAM(ps, torch.optim.AdamW, rho=0.05, foreach=True, **ADAMW))


def test_compiled_sam_matches_the_oracle():
    # the "eager" compile backend traces the same functions through Dynamo without code generation;
    # the traced AdamW step orders its scalar math differently: rounding-level differences
    check_sam_peer(lambda ps: CompiledSAM(ps, torch.optim.AdamW, rho=0.05, compile_backend="eager", **ADAMW),
                   rtol=1e-5)


def test_official_gam_matches_the_reference_form():
    hyper = dict(grad_rho=0.05, grad_norm_rho=0.3, grad_beta_0=0.4, grad_beta_1=0.7, grad_gamma=0.2)
    net, ref = make_net(), make_net()
    train(net, OfficialGAM(net.parameters(), torch.optim.AdamW, **hyper, **ADAMW), closure_step)
    g = groups(ref, **ADAMW, **ORACLE_ADAM)
    train_oracle(ref, oracles.OracleGAM(g, oracles.OracleAdam(g, decoupled=True), form="reference", **hyper))
    # the official code returns to w by subtraction, not by copy: rounding differs slightly
    assert_same_weights(net, ref, 1e-5)
    assert_moved(net)


def test_official_nso_without_noise_is_its_base_optimizer():
    net, ref = make_net(), make_net()
    train(net, OfficialNSO(net.parameters(), torch.optim.AdamW, sigma=0.0, **ADAMW), closure_step)
    train(ref, torch.optim.AdamW(ref.parameters(), **ADAMW), base_step)
    assert_same_weights(net, ref, 1e-6)
    assert_moved(net)


def test_official_nso_averages_the_gradients_at_w_plus_and_minus_u():
    """With the same torch seed a naive loop draws the same U (randn_like per parameter, in order)."""
    sigma = 0.05
    net, ref = make_net(), make_net()
    peer = OfficialNSO(net.parameters(), torch.optim.AdamW, sigma=sigma, **ADAMW)
    base = torch.optim.AdamW(ref.parameters(), **ADAMW)
    for step, batch in enumerate(BATCHES):
        torch.manual_seed(1000 + step)
        peer.step(closure_for(net, batch))
        torch.manual_seed(1000 + step)
        params = list(ref.parameters())
        w = [p.detach().clone() for p in params]
        noise = [torch.randn_like(p) * sigma for p in params]
        grads = []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                for p, w0, u in zip(params, w, noise):
                    p.copy_(w0 + sign * u)
            closure_for(ref, batch)()
            grads.append([p.grad.clone() for p in params])
        with torch.no_grad():
            for p, w0, gp, gm in zip(params, w, *grads):
                p.copy_(w0)
                p.grad = (gp + gm) / 2
        base.step()
    assert_same_weights(net, ref, 1e-6)
    assert_moved(net)


def train_base_oracle(model, oracle):
    for batch in BATCHES:
        closure_for(model, batch)()
        oracle.step()


def test_gc_paper_adam_gc_matches_the_oracle():
    net, ref = make_net(), make_net()
    train(net, AdamGC(net.parameters(), lr=1e-2, weight_decay=1e-2), base_step)
    g = groups(ref, lr=1e-2, weight_decay=1e-2, **ORACLE_ADAM)
    g[0]["centralize"] = "gc"
    train_base_oracle(ref, oracles.OracleAdam(g, decoupled=False))
    # the paper's Adam adds eps to sqrt(v) before the bias correction: eps-level differences
    assert_same_weights(net, ref, 1e-5)
    assert_moved(net)


def test_gc_paper_sgd_gc_matches_the_oracle():
    net, ref = make_net(), make_net()
    train(net, SGDGC(net.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-2), base_step)
    g = groups(ref, lr=0.05, momentum=0.9, dampening=0.0, nesterov=False, maximize=False, weight_decay=1e-2)
    g[0]["centralize"] = "gc"
    train_base_oracle(ref, oracles.OracleSGD(g))
    assert_same_weights(net, ref, 1e-6)
    assert_moved(net)


def test_the_tolerances_tell_the_methods_apart():
    """SAM and plain AdamW end 1e-3 apart (relative) after these steps: far above every rtol used here."""
    net, ref = make_net(), make_net()
    train(net, LoopSAM(net.parameters(), torch.optim.AdamW, rho=0.05, **ADAMW), two_call)
    train(ref, torch.optim.AdamW(ref.parameters(), **ADAMW), base_step)
    assert max(relative_difference(a, b) for a, b in zip(net.parameters(), ref.parameters())) > 1e-3
