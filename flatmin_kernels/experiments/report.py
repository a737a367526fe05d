"""The demo's outputs: the printed table, report.json and report.png."""
from __future__ import annotations

import json
import os

COLUMNS = [
    # (key in a method's results, header, format)
    ("test_accuracy", "test acc", "{:.4f}"),
    ("train_loss", "train loss", "{:.4f}"),
    ("lambda_max", "lambda_max", "{:.3f}"),
    ("hessian_trace", "trace(H)", "{:.2f}"),
    ("passes_per_step", "passes/step", "{:.0f}"),
    ("optimizer_ms_per_step", "opt ms/step", "{:.2f}"),
]

DEFINITIONS = {
    "test_accuracy": "fraction of the 450 held-out digits classified correctly after the last epoch",
    "train_loss": "cross-entropy on the whole training set after the last epoch",
    "lambda_max": "largest-magnitude Hessian eigenvalue of the cross-entropy on the fixed sharpness batch "
                  "(power iteration, double-backward HVPs, tol 1e-3)",
    "hessian_trace": "Hutchinson estimate (Rademacher vectors, at most 100, tol 1e-3) of the Hessian trace "
                     "on the fixed sharpness batch",
    "passes_per_step": "forward+backward passes per optimizer step: calls of the closure / steps",
    "optimizer_ms_per_step": "(wall time inside optimizer.step(closure) - wall time inside the closure calls) "
                             "/ steps, in ms: the optimizer's own work without the forward/backward passes; "
                             "the closure is zero_grad + forward + loss + backward",
}


def markdown_table(headers, rows) -> str:
    """A markdown table; the first column left-aligned, the others right-aligned."""
    widths = [max(len(str(r[i])) for r in [headers] + rows) for i in range(len(headers))]
    line = lambda cells: "| " + " | ".join(  # noqa: E731
        str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths))) + " |"
    sep = "|" + "|".join("-" * (w + 1) + (":" if i else "-") for i, w in enumerate(widths)) + "|"
    return "\n".join([line(headers), sep] + [line(r) for r in rows])


def format_table(methods: dict) -> str:
    headers = ["method"] + [h for _, h, _ in COLUMNS]
    rows = [[name] + [fmt.format(res[key]) for key, _, fmt in COLUMNS] for name, res in methods.items()]
    return markdown_table(headers, rows)


def write_json(path, report: dict) -> None:
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
        f.write("\n")


def write_png(path, report: dict) -> None:
    """Left: training loss per epoch. Right: λ_max over training, with the GD edge and SAM's edge."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = report["methods"]
    fig, (ax_loss, ax_sharp) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, (name, res) in enumerate(methods.items()):
        color = f"C{i}"
        ax_loss.plot(res["history"]["epoch"], res["history"]["train_loss"], color=color, label=name)
        recs = res["sharpness"]
        steps = [r["step"] for r in recs]
        ax_sharp.plot(steps, [r["lambda_max"] for r in recs], color=color, label=f"{name} λ_max")
        if recs and recs[0]["sam_edge"] is not None:
            ax_sharp.plot(steps, [r["sam_edge"] for r in recs], color=color, ls=":",
                          label=f"{name} SAM edge (ρ, ‖g‖ of the same batch)")
    lr = report["config"]["lr"]
    ax_sharp.axhline(2.0 / lr, color="k", ls="--", lw=1, label=f"GD edge 2/η = {2.0 / lr:g}")
    ax_loss.set(xlabel="epoch", ylabel="train cross-entropy", yscale="log", title="training loss")
    ax_sharp.set(xlabel="step", ylabel="λ_max (sharpness batch)", yscale="log",
                 title="sharpness against the edges (GD/SAM formulas; the base here is AdamW)")
    ax_sharp.title.set_fontsize(9)
    ax_loss.legend(fontsize=8)
    ax_sharp.legend(fontsize=7, loc="center right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(out_dir, report: dict) -> tuple[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    json_path, png_path = os.path.join(out_dir, "report.json"), os.path.join(out_dir, "report.png")
    write_json(json_path, report)
    write_png(png_path, report)
    return json_path, png_path
