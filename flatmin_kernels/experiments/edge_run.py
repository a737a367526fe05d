"""The edge-of-stability experiment (spec section 5, Long & Bartlett) at small scale.

Full-batch GD and full-batch SAM (plain GD base: no momentum, no weight decay) train the
digits MLP with the squared loss on one-hot targets, ½·mean‖f(x) − y‖². Every few steps
λ_max of the full-batch Hessian is measured by power iteration, warm-started from the last
eigenvector, next to 2/η and SAM-edge(η, ρ, ‖g‖) with ‖g‖ from the same batch. The expected
picture: GD's λ_max rises to 2/η and hovers there; SAM's settles at the SAM edge, well below.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from ..diagnostics import SharpnessMonitor, gd_edge, sam_edge
from .mlp import make_mlp


def _optimizer(kind, model, lr, rho, backend):
    import flatmin_kernels as fk

    if kind == "gd":
        return fk.SGD(model.parameters(), lr=lr, backend=backend)
    return fk.SAM(model.parameters(), fk.SGD, rho=rho, model=model, backend=backend, lr=lr)


def run_one(kind, data, *, lr, rho, steps, every, seed, backend, progress=None) -> dict:
    """Train with ``kind`` ("gd" or "sam") and return the loss and sharpness records."""
    model = make_mlp(seed, device=data.x_train.device)
    targets = F.one_hot(data.y_train, 10).to(data.x_train.dtype)

    def loss_fn():
        return 0.5 * (model(data.x_train) - targets).pow(2).sum(1).mean()

    def closure():
        optimizer.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    optimizer = _optimizer(kind, model, lr, rho, backend)
    monitor = SharpnessMonitor(loss_fn, model.named_parameters(), lr=lr, rho=rho, every=every,
                               trace=False, seed=seed)
    monitor.record()
    for step in range(1, steps + 1):
        optimizer.step(closure)
        rec = monitor.step()
        if rec and progress and rec["step"] % (10 * every) == 0:
            edge = rec["sam_edge"] if kind == "sam" else rec["gd_edge"]
            progress(f"{kind:3s} step {step:5d}/{steps}  loss {rec['loss']:.4f}  "
                     f"lambda_max {rec['lambda_max']:.3f}  edge {edge:.3f}")
    return {"kind": kind, "records": monitor.records}


def summarize(run: dict) -> dict:
    """λ_max and the run's own edge, averaged over the second half of the records."""
    recs = run["records"]
    tail = recs[len(recs) // 2:]
    key = "sam_edge" if run["kind"] == "sam" else "gd_edge"
    lam = sum(r["lambda_max"] for r in tail) / len(tail)
    edge = sum(r[key] for r in tail) / len(tail)
    return {"final_loss": recs[-1]["loss"], "lambda_max_late": lam, "edge_late": edge, "ratio": lam / edge}


def run_edge(data, *, lr=0.3, rho=0.05, steps=1000, every=10, seed=0, backend="auto", kinds=("gd", "sam"),
             progress=None) -> dict:
    gd_edge(lr)
    sam_edge(lr, rho, 1.0)  # validates lr and rho before any work
    if int(steps) != steps or steps < 1 or int(every) != every or every < 1:
        raise ValueError(f"steps and every must be positive integers, got {steps!r} and {every!r}")
    started = time.perf_counter()
    runs = {}
    for kind in kinds:
        run = run_one(kind, data, lr=lr, rho=rho if kind == "sam" else None, steps=int(steps),
                      every=int(every), seed=seed, backend=backend, progress=progress)
        run["summary"] = summarize(run)
        runs[kind] = run
    return {
        "config": {"lr": lr, "rho": rho, "steps": int(steps), "every": int(every), "seed": seed, "backend": backend,
                   "loss": "0.5 * mean over samples of ||f(x) - onehot(y)||^2, full batch",
                   "model": "MLP 64-128-128-10, ReLU", "train_size": len(data.y_train),
                   "torch": torch.__version__, "threads": torch.get_num_threads()},
        "wall_seconds": time.perf_counter() - started,
        "runs": runs,
    }


def format_summary(report: dict) -> str:
    lines = ["| run | final loss | lambda_max (2nd half) | its edge (2nd half) | ratio |",
             "|-----|-----------:|----------------------:|--------------------:|------:|"]
    for kind, run in report["runs"].items():
        s = run["summary"]
        edge = "SAM edge" if kind == "sam" else "2/lr"
        lines.append(f"| {kind} | {s['final_loss']:.4f} | {s['lambda_max_late']:.3f} | "
                     f"{s['edge_late']:.3f} ({edge}) | {s['ratio']:.3f} |")
    return "\n".join(lines)


def write_png(path, report: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lr, rho = report["config"]["lr"], report["config"]["rho"]
    runs = report["runs"]
    fig, axes = plt.subplots(1, len(runs) + 1, figsize=(5 * (len(runs) + 1), 4))
    for ax, (kind, run) in zip(axes, runs.items()):
        recs = run["records"]
        steps = [r["step"] for r in recs]
        ax.plot(steps, [r["lambda_max"] for r in recs], color="C0", label="λ_max (full batch)")
        ax.axhline(2.0 / lr, color="k", ls="--", lw=1, label=f"GD edge 2/η = {2.0 / lr:.3g}")
        if kind == "sam":
            ax.plot(steps, [r["sam_edge"] for r in recs], color="C3", ls=":", label=f"SAM edge (ρ={rho:g}, ‖g‖)")
        ax.set(xlabel="step", ylabel="sharpness", title=f"{kind.upper()}, η={lr:g}")
        ax.legend(fontsize=8)
        axes[-1].plot(steps, [r["loss"] for r in recs], label=kind.upper())
    axes[-1].set(xlabel="step", ylabel="squared loss", yscale="log", title="training loss (full batch)")
    axes[-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
