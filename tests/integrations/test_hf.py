"""FlatminTrainer: SAM, GAM and NSO under the Hugging Face Trainer, checked against hand-written
loops with the same optimizer (same data, same weights at the start)."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

transformers = pytest.importorskip("transformers")

import flatmin_kernels as fk  # noqa: E402
from flatmin_kernels.integrations.hf import FlatminTrainer  # noqa: E402

from .common import EXACT, FULL_BATCH, OPTIMIZERS, STEPS, X, Y, assert_same_weights  # noqa: E402

# Forward passes per step over the accumulated batch: SAM 2, GAM 4; NSO (lam=0, one antithetic
# pair) 2, after the Trainer's own first pass, which it does not use.
PASSES = {"SAM": 2, "GAM": 4, "NSO": 3}


class Regressor(nn.Module):
    """A tiny model with the Trainer's calling convention (``model(**batch)["loss"]``)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
        self.forwards = 0

    def forward(self, x, labels):
        self.forwards += 1
        return {"loss": F.mse_loss(self.net(x), labels)}


def dataset():
    return [{"x": x, "labels": y} for x, y in zip(X, Y)]


def arguments(tmp_path, **overrides):
    settings = dict(per_device_train_batch_size=4, gradient_accumulation_steps=2, max_steps=STEPS,
                    lr_scheduler_type="constant", max_grad_norm=0.0, use_cpu=True, report_to="none",
                    save_strategy="no", logging_strategy="no", disable_tqdm=True)
    settings.update(overrides)
    return transformers.TrainingArguments(output_dir=str(tmp_path), **settings)


def train(tmp_path, name, trainer_cls=FlatminTrainer, **overrides):
    model = Regressor()
    trainer = trainer_cls(model=model, args=arguments(tmp_path, **overrides), train_dataset=dataset(),
                          optimizers=(OPTIMIZERS[name](model.parameters()), None))
    trainer.train()
    return model, trainer


def hand_loop(name, micro_batches=1, clip=None, autocast=None, scaler=None):
    """The same optimizer on the same 8 samples per step, in plain torch: as one batch, or as the
    Trainer's micro-batches in order (each loss / n, as the Trainer scales it). With ``clip`` or
    ``scaler``, SAM takes its two-call protocol, clipping the gradient at w + e (the update
    direction), GAM and NSO GradScaler's closure recipe."""
    model = Regressor()
    opt = OPTIMIZERS[name](model.parameters())
    if scaler is not None:
        opt.grad_scaler = scaler
    chunks = list(zip(X.chunk(micro_batches), Y.chunk(micro_batches)))

    def closure():
        for x, y in chunks:
            with torch.autocast("cpu", dtype=autocast or torch.float32, enabled=autocast is not None):
                loss = model(x, y)["loss"] / len(chunks)
            (loss if scaler is None else scaler.scale(loss)).backward()

    for _ in range(STEPS):
        if name != "SAM" or (clip is None and scaler is None):
            if scaler is None:
                opt.step(closure)
            else:
                scaler.step(opt, closure)
                scaler.update()
            continue
        closure()
        opt.first_step(zero_grad=True)
        closure()
        if scaler is not None:
            scaler.unscale_(opt)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if scaler is None:
            opt.second_step()
        else:
            scaler.step(opt)
            scaler.update()
        opt.zero_grad()
    return model


def weights(model):
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("name", ["SAM", "GAM", "NSO"])
def test_accumulated_window_is_the_method_on_the_whole_batch(tmp_path, name):
    model, trainer = train(tmp_path, name)  # 2 micro-batches of 4 per step
    assert trainer.state.global_step == STEPS
    assert model.forwards == STEPS * 2 * PASSES[name]  # every pass covers both micro-batches
    assert_same_weights(model, hand_loop(name), **FULL_BATCH)


def test_the_test_can_tell_the_methods_apart(tmp_path):
    model, _ = train(tmp_path, "SAM")
    with pytest.raises(AssertionError):
        assert_same_weights(model, hand_loop("GAM"), **FULL_BATCH)


def test_sam_clips_the_final_direction_once(tmp_path):
    model, _ = train(tmp_path, "SAM", max_grad_norm=0.05)
    assert_same_weights(model, hand_loop("SAM", clip=0.05), **FULL_BATCH)
    with pytest.raises(AssertionError):  # the clip was active
        assert_same_weights(model, hand_loop("SAM"), **FULL_BATCH)


def test_optimizer_cls_and_kwargs(tmp_path):
    model = Regressor()
    kwargs = dict(base_optimizer=torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9, backend="torch")
    trainer = FlatminTrainer(model=model, args=arguments(tmp_path), train_dataset=dataset(),
                             optimizer_cls_and_kwargs=(fk.SAM, kwargs))
    trainer.train()
    assert isinstance(trainer.optimizer.optimizer, fk.SAM)
    assert_same_weights(model, hand_loop("SAM"), **FULL_BATCH)


@pytest.mark.parametrize("name", ["GAM", "NSO"])
def test_gam_nso_refuse_max_grad_norm_before_any_step(tmp_path, name):
    model = Regressor()
    before = weights(model)
    trainer = FlatminTrainer(model=model, args=arguments(tmp_path, max_grad_norm=1.0), train_dataset=dataset(),
                             optimizers=(OPTIMIZERS[name](model.parameters()), None))
    with pytest.raises(ValueError, match=rf"FlatminTrainer with {name}: set TrainingArguments\(max_grad_norm=0\)"):
        trainer.train()
    assert model.forwards == 0
    assert all(torch.equal(a, b) for a, b in zip(before, weights(model)))


def test_plain_trainer_refuses_sam_before_changing_anything(tmp_path):
    model = Regressor()
    before = weights(model)
    trainer = transformers.Trainer(model=model, args=arguments(tmp_path, gradient_accumulation_steps=1),
                                   train_dataset=dataset(), optimizers=(OPTIMIZERS["SAM"](model.parameters()), None))
    with pytest.raises(RuntimeError, match="SAM requires a closure.*integrations.hf.FlatminTrainer"):
        trainer.train()
    assert all(torch.equal(a, b) for a, b in zip(before, weights(model)))


def test_bf16(tmp_path):
    model, trainer = train(tmp_path, "SAM", bf16=True, train_sampling_strategy="sequential")
    assert trainer.state.global_step == STEPS
    assert model.forwards == STEPS * 2 * 2
    assert_same_weights(model, hand_loop("SAM", micro_batches=2, autocast=torch.bfloat16), **EXACT)


@pytest.mark.parametrize("name", ["SAM", "GAM"])
def test_fp16_grad_scaler_path(tmp_path, name):
    """HF's fp16 (a GPU) run on the CPU: the Accelerator given a CPU GradScaler takes exactly the
    GPU code path (scaled backward, unscale_ for the clip, scaler.step and update)."""
    model = Regressor()
    opt = OPTIMIZERS[name](model.parameters())
    clip = 0.5 if name == "SAM" else 0.0
    args = arguments(tmp_path, fp16=True, max_grad_norm=clip, train_sampling_strategy="sequential")
    trainer = FlatminTrainer(model=model, args=args, train_dataset=dataset(), optimizers=(opt, None))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    trainer.accelerator.scaler, trainer.accelerator.native_amp = scaler, True
    trainer.train()
    assert opt.grad_scaler is scaler
    assert trainer.state.global_step == STEPS
    assert model.forwards == STEPS * 2 * PASSES[name]
    assert scaler.get_scale() == 2.0**10  # no overflow, no back-off
    reference = hand_loop(name, micro_batches=2, clip=clip or None, autocast=torch.float16,
                          scaler=torch.amp.GradScaler("cpu", init_scale=2.0**10))
    assert_same_weights(model, reference, **EXACT)


def test_gpt2_accumulation_equals_the_large_batch(tmp_path):
    """A real HF model (its loss normalised by num_items_in_batch over the window)."""
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=16,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0,
                                     eos_token_id=0)
    ids = torch.randint(0, 64, (4, 12), generator=torch.Generator().manual_seed(3))
    data = [{"input_ids": row, "labels": row} for row in ids]

    torch.manual_seed(0)
    initial = transformers.GPT2LMHeadModel(config)

    def run(batch, accumulation):
        model = copy.deepcopy(initial)
        opt = fk.SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9, backend="torch")
        args = arguments(tmp_path, per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation,
                         max_steps=2, max_grad_norm=1.0)
        FlatminTrainer(model=model, args=args, train_dataset=data, optimizers=(opt, None)).train()
        return model

    assert_same_weights(run(2, 2), run(4, 1), rtol=1e-4, atol=1e-5)
