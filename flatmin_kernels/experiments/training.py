"""One method's training run on the digits MLP: the numbers the demo reports about it.

Every method starts from the same weights and sees the same minibatches in the same order.
The optimizer is always driven as ``optimizer.step(closure)``, where the closure is
zero_grad + forward + loss + backward; counting its calls gives the passes per step, and
timing them separates the optimizer's own work from the model's:

    optimizer ms per step = (wall time inside optimizer.step(closure)
                             − wall time inside the closure calls it made) / steps

i.e. the norms, perturbations, restores, noise and base update, not the forward/backward.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from ..diagnostics import Hessian, SharpnessMonitor
from .mlp import make_mlp


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def sharpness_batch(data, size, seed):
    """A fixed, seeded subset of the training set on which every Hessian quantity is measured."""
    g = torch.Generator().manual_seed(seed + 1)
    idx = torch.randperm(len(data.y_train), generator=g)[:size].to(data.x_train.device)
    return data.x_train[idx], data.y_train[idx]


@torch.no_grad()
def _evaluate(model, data):
    train_loss = F.cross_entropy(model(data.x_train), data.y_train).item()
    accuracy = (model(data.x_test).argmax(1) == data.y_test).float().mean().item()
    return train_loss, accuracy


def train_method(method, data, *, epochs, batch_size=64, lr=1e-3, seed=0, backend="auto",
                 device="cpu", sharpness_size=512, sharpness_every=1, progress=None) -> dict:
    """Train ``method`` for ``epochs`` and return its results (JSON-ready)."""
    model = make_mlp(seed, device=device)
    optimizer = method.build(model, lr, backend, seed)
    xs, ys = sharpness_batch(data, sharpness_size, seed)
    params = [(n, p) for n, p in model.named_parameters()]

    def sharpness_loss():
        return F.cross_entropy(model(xs), ys)

    steps_per_epoch = -(-len(data.y_train) // batch_size)
    monitor = SharpnessMonitor(sharpness_loss, params, lr=lr, rho=method.sam_rho, trace=False,
                               every=steps_per_epoch * sharpness_every, seed=seed)
    order = torch.Generator().manual_seed(seed)
    calls, closure_seconds, step_seconds, steps = 0, 0.0, 0.0, 0
    history = {"epoch": [], "train_loss": [], "test_accuracy": []}
    batch = {}

    def closure():
        nonlocal calls, closure_seconds
        _sync(device)
        t0 = time.perf_counter()
        optimizer.zero_grad()
        loss = F.cross_entropy(model(batch["x"]), batch["y"])
        loss.backward()
        _sync(device)
        closure_seconds += time.perf_counter() - t0
        calls += 1
        return loss

    model.train()
    monitor.record()  # sharpness at the initial weights, step 0
    for epoch in range(1, epochs + 1):
        perm = torch.randperm(len(data.y_train), generator=order).to(data.x_train.device)
        for start in range(0, len(perm), batch_size):
            idx = perm[start:start + batch_size]
            batch["x"], batch["y"] = data.x_train[idx], data.y_train[idx]
            _sync(device)
            t0 = time.perf_counter()
            optimizer.step(closure)
            _sync(device)
            step_seconds += time.perf_counter() - t0
            steps += 1
            monitor.step()
        train_loss, accuracy = _evaluate(model, data)
        history["epoch"].append(epoch)
        history["train_loss"].append(train_loss)
        history["test_accuracy"].append(accuracy)
        if progress:
            progress(f"{method.name:9s} epoch {epoch:3d}/{epochs}  train loss {train_loss:.4f}  "
                     f"test acc {accuracy:.4f}")

    hessian = Hessian(sharpness_loss, params)
    (lam,), _ = hessian.eigenvalues(1, generator=torch.Generator().manual_seed(seed))
    trace = hessian.trace(generator=torch.Generator().manual_seed(seed))
    return {
        "description": method.description,
        "test_accuracy": history["test_accuracy"][-1],
        "train_loss": history["train_loss"][-1],
        "lambda_max": lam,
        "hessian_trace": trace.trace,
        "hessian_trace_per_layer": trace.per_layer,
        "passes_per_step": calls / steps,
        "optimizer_ms_per_step": 1000.0 * (step_seconds - closure_seconds) / steps,
        "steps": steps,
        "history": history,
        "sharpness": monitor.records,
    }
