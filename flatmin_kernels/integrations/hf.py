"""Hugging Face ``Trainer`` for SAM, GAM and NSO: :class:`FlatminTrainer`.

Recipe (any ``gradient_accumulation_steps``; fp32, bf16, fp16)::

    import torch, flatmin_kernels as fk
    from transformers import TrainingArguments
    from flatmin_kernels.integrations.hf import FlatminTrainer

    opt = fk.SAM(model.parameters(), torch.optim.AdamW, rho=0.05, lr=5e-5)
    args = TrainingArguments("out", gradient_accumulation_steps=4, max_grad_norm=1.0)
    FlatminTrainer(model=model, args=args, train_dataset=ds, optimizers=(opt, None)).train()

    # or let the Trainer build it (its decay / no-decay groups reach the base optimizer):
    FlatminTrainer(..., optimizer_cls_and_kwargs=(fk.GAM, dict(base_optimizer=torch.optim.AdamW, lr=5e-5)))

A plain ``Trainer`` calls ``optimizer.step()`` without a closure, so SAM, GAM and NSO raise
"... requires a closure" at the first step (nothing is changed): use ``FlatminTrainer``.

How it works. The Trainer's backward of each micro-batch is the first pass of the accumulated
batch (the optimizers' first-pass rule). ``FlatminTrainer`` keeps the window's inputs (the
batches the Trainer already holds; no copies) and, at the optimizer step, replays all of them
for every later pass with the Trainer's own ``training_step`` (same loss scaling,
``num_items_in_batch``, autocast and scaled backward; ``no_sync`` on all but the last), so each
step is the true method on the accumulated batch:

* SAM: after the last micro-batch, ``first_step`` and one replay at w + e; the Trainer then
  clips that gradient (``max_grad_norm``: the final direction, clipped once; SAM's ascent is
  invariant to the scale of the first pass) and calls ``optimizer.step()``, which for a
  perturbed SAM is the second step.
* GAM / NSO: the Trainer's ``optimizer.step()`` is given the replay as its closure (3 replays
  for GAM; 2k for NSO, plus the clean pass reused when lam > 0 -- with lam == 0 the Trainer's
  own pass is not used). Their update direction is formed inside ``step()``, out of the
  Trainer's reach, so ``max_grad_norm`` must be 0 (a ValueError at ``train()`` otherwise);
  the logged ``grad_norm`` is the first pass's.

fp16 (``TrainingArguments(fp16=True)``, a GPU): the Accelerate scaler is handed to the optimizer
(``opt.grad_scaler``); SAM follows the two-call GradScaler recipe (the clip's ``unscale_``
comes after the last backward) and GAM/NSO the closure recipe (``scaler.step(opt, closure)``).
An overflow in any pass leaves the weights at w and backs the scale off. As with any optimizer
that unscales inside its step (torch's fused Adam), Accelerate cannot see such a skipped step,
so the LR scheduler still advances on it.

Not covered: DeepSpeed (it owns the optimizer step) and a model whose forward differs between
passes for reasons other than the weights (dropout draws new masks in each pass, as in any
SAM implementation).
"""
from __future__ import annotations

import contextlib
import functools

import torch
from accelerate.optimizer import AcceleratedOptimizer
from transformers import Trainer

from ..optim.sam import SAM
from ._unwrap import flatmin_wrapper


class FlatminTrainer(Trainer):
    """A ``transformers.Trainer`` whose optimizer may be ``fk.SAM``, ``fk.GAM`` or ``fk.NSO``
    (any other optimizer trains exactly as with ``Trainer``). See the module docstring."""

    def __init__(self, *args, **kwargs):
        # The inputs of the micro-batches since the last optimizer step, and that step's number.
        self._window, self._window_step = [], None
        super().__init__(*args, **kwargs)

    # The Trainer assigns ``self.optimizer`` when it gets or builds the optimizer and again
    # once Accelerate has wrapped it; that second assignment is where a flatmin optimizer is
    # checked and connected (before any step), whatever path created it.
    @property
    def optimizer(self):
        return self.__dict__.get("_optimizer")

    @optimizer.setter
    def optimizer(self, optimizer):
        if isinstance(optimizer, AcceleratedOptimizer) and flatmin_wrapper(optimizer) is not None:
            self._connect(optimizer)
        self.__dict__["_optimizer"] = optimizer

    def _connect(self, accelerated) -> None:
        opt = flatmin_wrapper(accelerated)
        if not isinstance(opt, SAM) and self.args.max_grad_norm > 0:
            raise ValueError(
                f"FlatminTrainer with {type(opt).__name__}: set TrainingArguments(max_grad_norm=0). "
                f"{type(opt).__name__} forms its update direction inside step() from several passes, so "
                f"the Trainer's clipping (before the step) would clip the first pass only and change the "
                f"method; nothing was clipped or changed.")
        if self.accelerator.scaler is not None:  # fp16: every pass is checked for overflows
            opt.grad_scaler = self.accelerator.scaler
        accelerated.__class__ = _replaying(type(accelerated))

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)  # the first pass of this micro-batch
        opt = flatmin_wrapper(self.optimizer)
        if opt is None:
            return loss
        if self._window_step != self.state.global_step:  # global_step advances at every optimizer step
            self._window, self._window_step = [], self.state.global_step
        self._window.append(inputs)
        if not self.accelerator.sync_gradients:
            return loss
        # The last micro-batch: the optimizer step comes next.
        replay = functools.partial(self._replay, model, self._window, num_items_in_batch)
        self._window = []
        if isinstance(opt, SAM):
            opt.first_step(zero_grad=True)
            replay()  # the gradient at w + e; the Trainer clips it, then its step() is the second step
        else:
            self.optimizer.replay = replay
        return loss

    def _replay(self, model, window, num_items_in_batch):
        """One pass over the window at the current weights, exactly as the Trainer ran it."""
        for i, inputs in enumerate(window):
            last = i == len(window) - 1
            with contextlib.nullcontext() if last else self.accelerator.no_sync(model):
                super().training_step(model, inputs, num_items_in_batch)

    def _get_grad_norm(self, model, grad_norm=None):
        # Without max_grad_norm the Trainer still measures the gradient norm, through Accelerate's
        # clip_grad_norm_, which under fp16 calls scaler.unscale_ before the step: GAM and NSO would
        # then take their later passes as unscaled (they refuse it). Measure without unscaling.
        pending = getattr(self.optimizer, "replay", None) is not None
        scaler = self.accelerator.scaler
        if grad_norm is None and pending and scaler is not None:
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            # one foreach norm, divided on the device (scaler.get_scale() would sync with the host)
            return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))) / scaler._scale if grads else 0.0
        return super()._get_grad_norm(model, grad_norm)


class _ReplayStep:
    """For Accelerate's optimizer wrapper: the Trainer's ``step()`` (no closure) takes the
    pending replay of the window as its closure (through Accelerate: ``scaler.step(opt,
    closure)`` under fp16)."""

    replay = None

    def step(self, closure=None):
        if closure is None and self.replay is not None:
            closure, self.replay = self.replay, None
        return super().step(closure)


@functools.lru_cache(maxsize=None)
def _replaying(cls):
    # A subclass, assigned to the Trainer's own wrapper object: Accelerate keeps that object
    # (unscale_gradients, optimizer_step_was_skipped), so it must stay the same instance.
    return cls if issubclass(cls, _ReplayStep) else type("Replaying" + cls.__name__, (_ReplayStep, cls), {})
