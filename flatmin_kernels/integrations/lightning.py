"""Lightning for SAM, GAM and NSO: :class:`FlatminPrecision` (fp16) and :class:`FlatminCallback`
(checks at fit start).

Automatic optimization, fp32 and ``bf16-mixed``: nothing to add. Lightning calls
``optimizer.step(closure)`` with no gradients computed yet, so the closure runs first (pass 1)
and again at each perturbed point; ``configure_optimizers`` just returns ``fk.SAM(...)``.
``FlatminCallback()`` adds the checks below at fit start::

    trainer = L.Trainer(max_steps=1000, callbacks=[FlatminCallback()])                 # fp32
    trainer = L.Trainer(precision="bf16-mixed", callbacks=[FlatminCallback()])         # bf16

``16-mixed``: Lightning's ``MixedPrecision`` runs the closure itself, then calls
``scaler.step(optimizer)`` without it ("SAM requires a closure"). Use the plugin instead of
``precision="16-mixed"``; it hands the scaler to the optimizer (``opt.grad_scaler``) and
takes the closure recipe, ``scaler.step(opt, closure)`` then ``scaler.update()``, so every
pass is checked and an overflow leaves the weights at w and backs the scale off::

    trainer = L.Trainer(plugins=[FlatminPrecision("16-mixed", "cuda")], callbacks=[FlatminCallback()])

(On the CPU, ``precision="16-mixed"`` is turned into ``bf16-mixed`` by Lightning;
``FlatminPrecision("16-mixed", "cpu")`` does run fp16 with a CPU GradScaler.)

Manual optimization: step through the ``LightningOptimizer`` so that Lightning counts the step
(``global_step``, ``max_steps``) and the precision plugin sees it::

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()

        def closure():
            loss = self.loss(batch)
            self.manual_backward(loss)
            return loss

        return opt.step(closure)  # SAM, GAM or NSO; gradients are None afterwards

    # or SAM's two calls: first_step on the optimizer itself, the second step through Lightning
        sam = self.optimizers().optimizer  # fk.SAM (not the LightningOptimizer: see below)
        self.manual_backward(self.loss(batch))
        sam.first_step(zero_grad=True)
        self.manual_backward(self.loss(batch))
        self.optimizers().step()  # = second_step(), counted; opt.second_step() is not counted
        self.optimizers().zero_grad()

``first_step`` may be called on the ``LightningOptimizer`` or on ``.optimizer``: the wrappers keep
their step state in one object that Lightning's shallow copy of the optimizer shares.

Checks at fit start (``FlatminCallback``, and ``FlatminPrecision`` itself), each a ValueError
before anything runs:

* ``accumulate_grad_batches > 1`` in automatic optimization: Lightning steps with the last
  micro-batch's closure only, so the ascent would use the other micro-batches' gradients and
  the descent the last one's. Accumulate in manual optimization instead, one closure over the
  micro-batches of an optimizer step (true SAM/GAM/NSO on the accumulated batch)::

      def closure():
          for x, y in zip(batch[0].chunk(n), batch[1].chunk(n)):
              self.manual_backward(self.loss(x, y) / n)

      self.optimizers().step(closure)

* ``gradient_clip_val`` with GAM or NSO (Lightning clips after every closure call: each pass,
  not their update direction), with SAM and ``gradient_clip_algorithm="value"`` (it would
  change the ascent direction), and under fp16 (the optimizer unscales inside its step).
  SAM with norm clipping, fp32/bf16, clips the final direction (the last pass's gradient);
  clipping the first pass does not change SAM's ascent, which is scale-free.
* ``16-mixed`` through Lightning's own ``MixedPrecision`` (``FlatminCallback``): use
  ``FlatminPrecision``.

In automatic optimization the loss Lightning reports for a step is the last closure call's
(the perturbed pass), and ``on_before_optimizer_step`` runs after every pass.
"""
from __future__ import annotations

from functools import partial

from lightning.pytorch import Callback
from lightning.pytorch.plugins.precision import MixedPrecision

from ..optim.sam import SAM
from ._unwrap import flatmin_wrapper


def check_trainer(trainer) -> None:
    """Refuse, before any step, a Lightning setting that would run SAM/GAM/NSO wrongly."""
    wrappers = [w for w in map(flatmin_wrapper, trainer.optimizers) if w is not None]
    if not wrappers:
        return
    names = "/".join(sorted({type(w).__name__ for w in wrappers}))
    automatic = trainer.lightning_module.automatic_optimization
    if automatic and trainer.accumulate_grad_batches > 1:
        raise ValueError(
            f"{names} with Trainer(accumulate_grad_batches={trainer.accumulate_grad_batches}): Lightning would "
            f"step with the last micro-batch's closure only (the ascent from the other micro-batches, the "
            f"descent from the last one). Use manual optimization with one closure over the micro-batches: "
            f"opt.step(closure), the closure calling self.manual_backward(loss / n) for each "
            f"(flatmin_kernels.integrations.lightning).")
    plugin = trainer.precision_plugin
    fp16 = isinstance(plugin, MixedPrecision) and plugin.scaler is not None
    if fp16 and not isinstance(plugin, FlatminPrecision):
        raise ValueError(
            f"{names} with precision='16-mixed': Lightning's MixedPrecision steps the optimizer without its "
            f"closure. Use Trainer(plugins=[FlatminPrecision('16-mixed', device)]) from "
            f"flatmin_kernels.integrations.lightning instead of precision='16-mixed'.")
    if automatic and trainer.gradient_clip_val:
        if fp16:
            why = "under 16-mixed the optimizer unscales the gradients inside its step, after Lightning clips"
        elif any(not isinstance(w, SAM) for w in wrappers):
            why = ("Lightning clips after every closure call, i.e. each pass's gradient, not the update "
                   "direction that GAM/NSO form inside step()")
        elif trainer.gradient_clip_algorithm == "value":
            why = "clipping by value would also change the direction of SAM's ascent; clip by norm"
        else:
            return
        raise ValueError(f"{names} with Trainer(gradient_clip_val={trainer.gradient_clip_val}): {why}.")


class FlatminCallback(Callback):
    """Runs :func:`check_trainer` at fit start (the optimizers exist by then)."""

    def on_fit_start(self, trainer, pl_module) -> None:
        check_trainer(trainer)


class FlatminPrecision(MixedPrecision):
    """``MixedPrecision`` that steps SAM/GAM/NSO by GradScaler's closure recipe under fp16.

    Same arguments as ``MixedPrecision(precision, device, scaler=None)``; other optimizers,
    and ``bf16-mixed``, step exactly as with ``MixedPrecision``.
    """

    def connect(self, model, optimizers, lr_schedulers):
        if self.scaler is not None:
            for optimizer in optimizers:
                wrapper = flatmin_wrapper(optimizer)
                if wrapper is not None:  # every pass checked for overflows, merged into this scaler
                    wrapper.grad_scaler = self.scaler
        check_trainer(model.trainer)
        return super().connect(model, optimizers, lr_schedulers)

    def optimizer_step(self, optimizer, model, closure, **kwargs):
        if self.scaler is None or flatmin_wrapper(optimizer) is None:
            return super().optimizer_step(optimizer, model=model, closure=closure, **kwargs)
        # The optimizer runs the closure for each pass (the first too, if no backward ran since
        # the last step); _wrap_closure calls Lightning's on_before_optimizer_step hooks after each.
        closure = partial(self._wrap_closure, model, optimizer, closure)
        output = self.scaler.step(optimizer, closure, **kwargs)  # positional: GradScaler refuses closure=
        self.scaler.update()
        return output
