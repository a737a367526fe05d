"""A training-loop companion that measures sharpness every N steps."""
from __future__ import annotations

import torch

from .edge import gd_edge, sam_edge
from .hessian import Hessian, named_tensors


class SharpnessMonitor:
    """Every ``every`` calls of :meth:`step`, records the sharpness of ``loss_fn`` at the current parameters.

    A record holds the step, the loss, λ_max (power iteration, warm-started from the previous
    record's eigenvector), the Hutchinson trace estimate (when ``trace=True``), the gradient
    norm from the same batch, the GD edge 2/lr and, when ``rho`` is given, the SAM edge.
    ``lr`` is a number or an optimizer (its first param group's ``lr`` is read at each record,
    so schedulers are followed). ``seed`` fixes the random starts and Rademacher vectors.

    Measuring runs ``loss_fn`` and many Hessian-vector products: it costs far more than a
    step, which is why it runs only every N steps and outside the optimizer's step.
    """

    def __init__(self, loss_fn, params, *, lr, rho=None, every=1, trace=True,
                 max_iter=100, tol=1e-3, trace_max_iter=100, trace_tol=1e-3, seed=0):
        self.names, self.params = named_tensors(params)
        if isinstance(every, bool) or int(every) != every or every < 1:
            raise ValueError(f"every must be an integer >= 1, got {every!r}")
        self._lr = lr
        gd_edge(self.lr)  # validate now, not at the first record
        if rho is not None:
            sam_edge(self.lr, rho, 1.0)
        self.loss_fn, self.rho, self.every, self.measure_trace = loss_fn, rho, int(every), trace
        self.max_iter, self.tol = max_iter, tol
        self.trace_max_iter, self.trace_tol = trace_max_iter, trace_tol
        self.generator = torch.Generator().manual_seed(seed)
        self.steps = 0
        self.records: list[dict] = []
        self._eigenvector = None

    @property
    def lr(self) -> float:
        if hasattr(self._lr, "param_groups"):
            return float(self._lr.param_groups[0]["lr"])
        return float(self._lr)

    def step(self):
        """Count one training step; measure and return the record when it is due, else None."""
        self.steps += 1
        if self.steps % self.every:
            return None
        return self.record()

    def record(self) -> dict:
        """Measure now, whatever the step count, and append the record."""
        hessian = Hessian(self.loss_fn, list(zip(self.names, self.params)))
        (lam,), (vector,) = hessian.eigenvalues(1, self.max_iter, self.tol, init=self._eigenvector,
                                                generator=self.generator)
        self._eigenvector = vector
        lr = self.lr
        rec = {
            "step": self.steps,
            "loss": hessian.loss,
            "lambda_max": lam,
            "trace": None,
            "grad_norm": hessian.grad_norm,
            "lr": lr,
            "gd_edge": gd_edge(lr),
            "sam_edge": None if self.rho is None else sam_edge(lr, self.rho, hessian.grad_norm),
        }
        if self.measure_trace:
            rec["trace"] = hessian.trace(self.trace_max_iter, self.trace_tol, generator=self.generator).trace
        self.records.append(rec)
        return rec
