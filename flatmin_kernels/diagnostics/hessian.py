"""Hessian of a loss at the current parameters, seen only through Hessian-vector products.

The loss is given as a zero-argument ``loss_fn`` that returns a scalar on a fixed batch, so
any model and any loss work. Its gradient is built once with ``create_graph=True``; every
Hessian-vector product is then one more backward pass through that gradient (double
backward), and the Hessian itself is never formed.

- ``eigenvalues``: power iteration with deflation (each new vector is kept orthogonal to
  the eigenvectors already found), stopping when the Rayleigh quotient changes by less than
  ``tol`` relative. Power iteration finds the eigenvalues of largest *magnitude*.
- ``trace``: Hutchinson's estimator, E[vᵀHv] = tr H for Rademacher v, averaged until the
  running mean changes by less than ``tol`` relative. Each sample splits into one term per
  parameter tensor, vᵢᵀ(Hv)ᵢ, whose mean is the trace of that tensor's diagonal block, so the
  per-layer breakdown costs nothing extra. The standard deviation of one sample is
  √(2·Σ_{i≠j} H_ij²): exact for a diagonal Hessian, noisy when the off-diagonal mass is large.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


def named_tensors(params) -> tuple[list[str], list[torch.Tensor]]:
    """Names and tensors from an iterable of tensors or of (name, tensor) pairs.

    Every tensor must require grad: the Hessian is taken with respect to exactly these.
    """
    names, tensors = [], []
    for i, item in enumerate(params):
        if isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str):
            name, tensor = item
        else:
            name, tensor = f"param{i}", item
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"params must hold tensors, got {type(tensor).__name__} for {name}")
        if not tensor.requires_grad:
            raise ValueError(f"params must require grad: {name} (shape {tuple(tensor.shape)}) does not")
        names.append(name)
        tensors.append(tensor)
    if not tensors:
        raise ValueError("params is empty: give the tensors to take the Hessian with respect to")
    return names, tensors


def _dot(xs, ys) -> torch.Tensor:
    return sum((x.double() * y.double()).sum() for x, y in zip(xs, ys))


def _norm(xs) -> float:
    return math.sqrt(float(_dot(xs, xs)))


def _orthogonalize_(v, basis) -> None:
    """Remove from v its components along the (orthonormal) vectors of basis, in place."""
    for u in basis:
        c = _dot(v, u).to(v[0].dtype)
        for vi, ui in zip(v, u):
            vi.sub_(c * ui)


def _check_iterations(max_iter, tol):
    if int(max_iter) != max_iter or max_iter < 1:
        raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol!r}")


@dataclass
class TraceEstimate:
    """Hutchinson's estimate of tr H: the total, its split per parameter tensor, the samples."""

    trace: float
    per_layer: dict[str, float]
    samples: list[float] = field(repr=False)

    @property
    def std_error(self) -> float:
        """Standard error of ``trace`` from the spread of the samples (nan with one sample)."""
        n = len(self.samples)
        if n < 2:
            return float("nan")
        mean = sum(self.samples) / n
        var = sum((s - mean) ** 2 for s in self.samples) / (n - 1)
        return math.sqrt(var / n)


class Hessian:
    """The Hessian of ``loss_fn()`` with respect to ``params``, at the parameters' current values.

    ``loss_fn`` runs once, here; its loss, gradient and gradient norm are kept (``loss``,
    ``grads``, ``grad_norm``) so a caller can report them from the same batch.
    """

    def __init__(self, loss_fn, params):
        self.names, self.params = named_tensors(params)
        with torch.enable_grad():
            loss = loss_fn()
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                raise ValueError("loss_fn must return a scalar tensor (the loss on a fixed batch)")
            grads = torch.autograd.grad(loss.reshape(()), self.params, create_graph=True, allow_unused=True)
        # A parameter the loss does not reach has zero gradient and zero Hessian rows.
        self.grads = [torch.zeros_like(p) if g is None else g for p, g in zip(self.params, grads)]
        self.loss = float(loss.detach())
        self.grad_norm = _norm([g.detach() for g in self.grads])
        self._curved = [i for i, g in enumerate(self.grads) if g.requires_grad]

    def hvp(self, vectors) -> list[torch.Tensor]:
        """H·v by double backward; ``vectors`` has one tensor per parameter."""
        if not self._curved:  # the loss is linear in every parameter
            return [torch.zeros_like(p) for p in self.params]
        hv = torch.autograd.grad(
            [self.grads[i] for i in self._curved],
            self.params,
            grad_outputs=[vectors[i] for i in self._curved],
            retain_graph=True,
            allow_unused=True,
        )
        return [torch.zeros_like(p) if h is None else h.detach() for p, h in zip(self.params, hv)]

    def _random_like_params(self, kind, generator):
        out = []
        for p in self.params:
            if kind == "normal":
                out.append(torch.randn(p.shape, generator=generator, dtype=p.dtype, device="cpu").to(p.device))
            else:  # Rademacher: ±1 with equal probability
                bits = torch.randint(0, 2, p.shape, generator=generator, device="cpu")
                out.append((bits * 2 - 1).to(device=p.device, dtype=p.dtype))
        return out

    def eigenvalues(self, top_n=1, max_iter=100, tol=1e-3, init=None, generator=None):
        """The ``top_n`` eigenvalues of largest magnitude and their eigenvectors.

        Returns ``(eigenvalues, eigenvectors)``: a list of floats in the order found, and one
        list of tensors (shaped like ``params``, unit norm overall) per eigenvalue.
        ``init`` warm-starts the first eigenvector (e.g. the one found at the previous
        measurement); ``generator`` (a CPU ``torch.Generator``) makes the random starts
        reproducible.
        """
        if isinstance(top_n, bool) or int(top_n) != top_n or top_n < 1:
            raise ValueError(f"top_n must be an integer >= 1, got {top_n!r}")
        _check_iterations(max_iter, tol)
        values, vectors = [], []
        for k in range(int(top_n)):
            if k == 0 and init is not None:
                v = [t.detach().to(device=p.device, dtype=p.dtype).clone() for t, p in zip(init, self.params)]
            else:
                v = self._random_like_params("normal", generator)
            value = self._power_iteration(v, vectors, max_iter, tol)
            values.append(value)
            vectors.append(v)
        return values, vectors

    def _power_iteration(self, v, found, max_iter, tol) -> float:
        """Refine v (in place) towards the top eigenvector orthogonal to ``found``; its eigenvalue."""
        _orthogonalize_(v, found)
        norm = _norm(v)
        if norm == 0.0:
            return 0.0
        for t in v:
            t.div_(norm)
        value = None
        for _ in range(int(max_iter)):
            hv = self.hvp(v)
            _orthogonalize_(hv, found)  # deflation: H restricted to the complement of found
            new_value = float(_dot(v, hv))  # Rayleigh quotient of the unit vector v
            norm = _norm(hv)
            if norm == 0.0:
                return 0.0
            for t, h in zip(v, hv):
                t.copy_(h / norm)
            if value is not None and abs(new_value - value) <= tol * (abs(value) + 1e-6):
                return new_value
            value = new_value
        return value

    def trace(self, max_iter=100, tol=1e-3, generator=None) -> TraceEstimate:
        """Hutchinson's estimate of tr H, with its split per parameter tensor."""
        _check_iterations(max_iter, tol)
        samples, per_layer_sums = [], [0.0] * len(self.params)
        mean = None
        for _ in range(int(max_iter)):
            v = self._random_like_params("rademacher", generator)
            hv = self.hvp(v)
            terms = [float(_dot([vi], [hi])) for vi, hi in zip(v, hv)]
            for i, term in enumerate(terms):
                per_layer_sums[i] += term
            samples.append(sum(terms))
            new_mean = sum(samples) / len(samples)
            if mean is not None and abs(new_mean - mean) <= tol * (abs(mean) + 1e-6):
                mean = new_mean
                break
            mean = new_mean
        n = len(samples)
        return TraceEstimate(
            trace=mean,
            per_layer={name: s / n for name, s in zip(self.names, per_layer_sums)},
            samples=samples,
        )


def hessian_eigenvalues(loss_fn, params, top_n=1, max_iter=100, tol=1e-3, *, init=None, generator=None):
    """Top ``top_n`` Hessian eigenvalues (largest magnitude) by power iteration with deflation.

    Returns ``(eigenvalues, eigenvectors)``; see :meth:`Hessian.eigenvalues`.
    """
    return Hessian(loss_fn, params).eigenvalues(top_n, max_iter, tol, init=init, generator=generator)


def hessian_trace(loss_fn, params, max_iter=100, tol=1e-3, *, generator=None) -> TraceEstimate:
    """Hutchinson estimate of the Hessian trace (Rademacher vectors) with a per-layer breakdown.

    ``params`` may be ``model.named_parameters()`` to key the breakdown by name.
    """
    return Hessian(loss_fn, params).trace(max_iter, tol, generator=generator)
