"""SAM, GAM and NSO under Lightning (automatic and manual optimization, fp32, bf16-mixed and
16-mixed through FlatminPrecision), checked against hand-written loops with the same optimizer."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

L = pytest.importorskip("lightning.pytorch")

from lightning.pytorch.plugins.precision import MixedPrecision  # noqa: E402

from flatmin_kernels.integrations.lightning import FlatminCallback, FlatminPrecision  # noqa: E402

from .common import EXACT, FULL_BATCH, OPTIMIZERS, STEPS, X, Y, assert_same_weights  # noqa: E402

BATCHES = [(X[:4], Y[:4]), (X[4:], Y[4:])]  # the loader's order (no shuffling)
PASSES = {"SAM": 2, "GAM": 4, "NSO": 2}  # closure calls per step (NSO: lam=0, one antithetic pair)


def new_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


class Module(L.LightningModule):
    def __init__(self, name="SAM", manual=None):
        super().__init__()
        self.net, self.name, self.manual = new_net(), name, manual
        self.automatic_optimization = manual is None
        self.calls = 0

    def loss(self, x, y):
        self.calls += 1
        return F.mse_loss(self.net(x).float(), y)

    def configure_optimizers(self):
        return OPTIMIZERS[self.name](self.parameters())

    def training_step(self, batch, batch_idx):
        if self.manual is None:
            return self.loss(*batch)
        return getattr(self, self.manual)(batch)

    def closure_step(self, batch):  # the manual recipe
        def closure():
            loss = self.loss(*batch)
            self.manual_backward(loss)
            return loss

        return self.optimizers().step(closure)

    def two_call_step(self, batch):  # SAM's two calls; the second step through Lightning
        opt = self.optimizers()
        self.manual_backward(self.loss(*batch))
        opt.optimizer.first_step(zero_grad=True)
        self.manual_backward(self.loss(*batch))
        opt.step()
        opt.zero_grad()

    def accumulating_step(self, batch):  # the accumulation recipe: 2 micro-batches per step
        def closure():
            for x, y in zip(batch[0].chunk(2), batch[1].chunk(2)):
                self.manual_backward(self.loss(x, y) / 2)

        self.optimizers().step(closure)


def fit(module, batch_size=4, **trainer_args):
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, Y), batch_size=batch_size)
    settings = dict(accelerator="cpu", devices=1, max_steps=STEPS, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    settings.update(trainer_args)
    trainer = L.Trainer(**settings)
    trainer.fit(module, loader)
    return trainer


def hand_loop(name, steps=STEPS, autocast=None, scaler=None, batches=BATCHES, clip=None):
    """The same optimizer, step(closure) on the same batches, in plain torch (with ``clip``: SAM's
    two calls, clipping only the gradient at w + e)."""
    net = new_net()
    opt = OPTIMIZERS[name](net.parameters())
    if scaler is not None:
        opt.grad_scaler = scaler
    for step in range(steps):
        x, y = batches[step % len(batches)]

        def closure():
            with torch.autocast("cpu", dtype=autocast, enabled=autocast is not None):
                loss = F.mse_loss(net(x).float(), y)
            (loss if scaler is None else scaler.scale(loss)).backward()
            return loss

        if clip is not None:
            closure()
            opt.first_step(zero_grad=True)
            closure()
            torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
            opt.second_step(zero_grad=True)
        elif scaler is None:
            opt.step(closure)
        else:
            scaler.step(opt, closure)
            scaler.update()
    return net


@pytest.mark.parametrize("name", ["SAM", "GAM", "NSO"])
def test_automatic_fp32(name):
    module = Module(name)
    trainer = fit(module, callbacks=[FlatminCallback()])
    assert trainer.global_step == STEPS
    assert module.calls == STEPS * PASSES[name]
    assert_same_weights(module.net, hand_loop(name), **EXACT)


def test_automatic_bf16_mixed():
    module = Module("SAM")
    trainer = fit(module, precision="bf16-mixed")
    assert trainer.global_step == STEPS
    assert module.calls == STEPS * 2
    assert_same_weights(module.net, hand_loop("SAM", autocast=torch.bfloat16), **EXACT)


@pytest.mark.parametrize("name", ["SAM", "GAM", "NSO"])
def test_automatic_16_mixed_with_flatmin_precision(name):
    module = Module(name)
    plugin = FlatminPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu", init_scale=2.0**10))
    trainer = fit(module, plugins=[plugin], callbacks=[FlatminCallback()])
    assert trainer.global_step == STEPS
    assert module.calls == STEPS * PASSES[name]
    assert plugin.scaler.get_scale() == 2.0**10
    reference = hand_loop(name, autocast=torch.float16, scaler=torch.amp.GradScaler("cpu", init_scale=2.0**10))
    assert_same_weights(module.net, reference, **EXACT)


def test_16_mixed_overflow_skips_the_step_at_w_and_backs_the_scale_off():
    class Overflowing(Module):
        def loss(self, x, y):  # the second pass of the second step overflows in fp16
            loss = super().loss(x, y)
            return loss * 1e30 if self.calls == 4 else loss

    module = Overflowing("SAM")
    plugin = FlatminPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu", init_scale=2.0**10))
    trainer = fit(module, plugins=[plugin], max_steps=2)
    assert trainer.global_step == 2
    assert plugin.scaler.get_scale() == 2.0**9
    # The weights after the first step: the overflowing second step left them at w.
    first = hand_loop("SAM", steps=1, autocast=torch.float16, scaler=torch.amp.GradScaler("cpu", init_scale=2.0**10))
    assert_same_weights(module.net, first, **EXACT)


def test_16_mixed_without_flatmin_precision_is_refused_at_fit_start():
    module = Module("SAM")
    with pytest.raises(ValueError, match=r"Use Trainer\(plugins=\[FlatminPrecision\('16-mixed', device\)\]\)"):
        fit(module, plugins=[MixedPrecision("16-mixed", "cpu")], callbacks=[FlatminCallback()])
    assert module.calls == 0


@pytest.mark.parametrize("extra", [dict(callbacks=[FlatminCallback()]),
                                   dict(plugins=[FlatminPrecision("16-mixed", "cpu")])])
def test_automatic_accumulation_is_refused_at_fit_start(extra):
    module = Module("SAM")
    with pytest.raises(ValueError, match=r"SAM with Trainer\(accumulate_grad_batches=2\).*Use manual optimization"):
        fit(module, accumulate_grad_batches=2, **extra)
    assert module.calls == 0


def test_sam_norm_clipping_is_the_final_direction_clipped():
    """Lightning clips after each closure call; SAM's ascent ignores the scale of pass 1, so this
    is the update direction clipped once."""
    module = Module("SAM")
    fit(module, gradient_clip_val=0.05, callbacks=[FlatminCallback()])
    assert_same_weights(module.net, hand_loop("SAM", clip=0.05), **FULL_BATCH)
    with pytest.raises(AssertionError):  # the clip was active
        assert_same_weights(module.net, hand_loop("SAM"), **FULL_BATCH)


@pytest.mark.parametrize("name, algorithm, why", [
    ("GAM", "norm", "each pass's gradient, not the update direction"),
    ("NSO", "norm", "each pass's gradient, not the update direction"),
    ("SAM", "value", "clipping by value would also change the direction of SAM's ascent"),
])
def test_clipping_that_would_change_the_method_is_refused(name, algorithm, why):
    module = Module(name)
    with pytest.raises(ValueError, match=why):
        fit(module, gradient_clip_val=1.0, gradient_clip_algorithm=algorithm, callbacks=[FlatminCallback()])
    assert module.calls == 0


@pytest.mark.parametrize("name, manual", [("SAM", "closure_step"), ("GAM", "closure_step"),
                                          ("SAM", "two_call_step")])
def test_manual_optimization_counts_steps(name, manual):
    module = Module(name, manual=manual)
    trainer = fit(module, max_epochs=10)  # max_steps=STEPS must end the run
    assert trainer.global_step == STEPS
    assert module.calls == STEPS * PASSES[name]
    assert_same_weights(module.net, hand_loop(name), **EXACT)


def test_manual_two_call_16_mixed():
    module = Module("SAM", manual="two_call_step")
    plugin = FlatminPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu", init_scale=2.0**10))
    trainer = fit(module, plugins=[plugin])
    assert trainer.global_step == STEPS
    reference = hand_loop("SAM", autocast=torch.float16, scaler=torch.amp.GradScaler("cpu", init_scale=2.0**10))
    assert_same_weights(module.net, reference, **EXACT)


def test_manual_accumulation_recipe_is_the_method_on_the_whole_batch():
    module = Module("SAM", manual="accumulating_step")
    trainer = fit(module, batch_size=8)
    assert trainer.global_step == STEPS
    assert module.calls == STEPS * 2 * 2
    assert_same_weights(module.net, hand_loop("SAM", batches=[(X, Y)]), **FULL_BATCH)
