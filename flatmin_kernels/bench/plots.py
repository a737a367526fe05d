"""The PNGs of a benchmark report, drawn from the report dict alone.

Each writer returns what it drew, ``{panel title: {label: value}}``, so a test can check that
the pictures show the numbers of the JSON.
"""
from __future__ import annotations

import math
import os

FAMILY_COLORS = {"ours": "C0", "torch": "C7", "peer": "C3"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grid(n, width, height):
    plt = _pyplot()
    cols = min(n, 2)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return plt, fig, list(axes.flat[:n])


def _device(report):
    m = report["machine"]
    return m.get("gpu_name") or f"CPU: {m['cpu_model']}, {report['config']['threads']} thread(s)"


def _save(plt, fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_ops(path, report) -> dict:
    """Roofline-style: achieved GB/s per op and backend, against the copy of the same bytes."""
    entries = [e for e in report["suites"].get("ops", []) if e.get("rows")]
    if not entries:
        return {}
    plt, fig, axes = _grid(len(entries), 9, 4.5)
    drawn = {}
    for ax, entry in zip(axes, entries):
        title = f"ops {entry['list']} {entry['dtype']} ({entry['list_bytes'] / 2**20:,.0f} MiB)"
        ops = list(dict.fromkeys(r["op"] for r in entry["rows"]))
        backends = list(dict.fromkeys(r["backend"] for r in entry["rows"]))
        width = 0.8 / max(1, len(backends))
        values = {}
        for bi, backend in enumerate(backends):
            xs, ys = [], []
            for r in entry["rows"]:
                if r["backend"] == backend and r.get("gb_s") is not None:
                    xs.append(ops.index(r["op"]) + (bi - (len(backends) - 1) / 2) * width)
                    ys.append(r["gb_s"])
                    values[f"{r['op']} [{backend}]"] = r["gb_s"]
            ax.bar(xs, ys, width, label=f"{backend}", color=f"C{bi}")
        copies = {r["op"]: r["copy_gb_s"] for r in entry["rows"] if r.get("copy_gb_s") is not None}
        ax.scatter([ops.index(op) for op in copies], list(copies.values()), marker="_", s=400, color="k",
                   label="copy of the same bytes", zorder=3)
        values.update({f"copy {op}": v for op, v in copies.items()})
        ax.set_xticks(range(len(ops)))
        ax.set_xticklabels(ops, rotation=45, ha="right", fontsize=7)
        ax.set(ylabel="GB/s (counted bytes / median time)", title=title, yscale="log")
        ax.title.set_fontsize(9)
        ax.legend(fontsize=7)
        drawn[title] = values
    fig.suptitle(f"flatmin ops: achieved bandwidth vs copy -- {_device(report)}", fontsize=9)
    _save(plt, fig, path)
    return drawn


def write_steps(path, report, suite="steps") -> dict:
    """Per list: each contender's time per step as a multiple of fused AdamW's, log scale."""
    entries = [e for e in report["suites"].get(suite, []) if e.get("rows")]
    if not entries:
        return {}
    height = max(3.0, 0.22 * max(len(e["rows"]) for e in entries) + 1.2)
    plt, fig, axes = _grid(len(entries), 7.5, height)
    drawn = {}
    for ax, entry in zip(axes, entries):
        title = f"{suite} {entry['list']} {entry['dtype']}"
        rows = [r for r in entry["rows"] if r.get("ratio_to_fused_adamw") is not None]
        labels = [r["contender"] for r in rows]
        ratios = [r["ratio_to_fused_adamw"] for r in rows]
        ys = range(len(rows))
        ax.barh(ys, ratios, color=[FAMILY_COLORS.get(r["family"], "C1") for r in rows])
        for y, ratio in zip(ys, ratios):
            ax.text(ratio, y, f" {ratio:.2f}", va="center", fontsize=7)
        ax.axvline(1.0, color="k", lw=1, ls="--")
        ax.set_yticks(list(ys))
        ax.set_yticklabels(labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlim(min(ratios + [1.0]) / 1.5, max(ratios + [1.0]) * 3)
        ax.set(xlabel="time per step / torch.AdamW(fused=True) (same rounds)", title=title)
        ax.title.set_fontsize(9)
        drawn[title] = dict(zip(labels, ratios))
    what = "optimizer work per step" if suite == "steps" else "host time per step"
    fig.suptitle(f"{what} (blue: flatmin, grey: torch, red: peers) -- {_device(report)}", fontsize=9)
    _save(plt, fig, path)
    return drawn


def write_host(path, report) -> dict:
    """ms per step and ms per 1,000 tensors against the tensor count, one line per contender."""
    entries = [e for e in report["suites"].get("host", []) if e.get("rows")]
    if not entries:
        return {}
    plt, fig, (ax_ms, ax_per) = _grid(2, 6.5, 4.5)
    series = {}
    for entry in sorted(entries, key=lambda e: e["tensors"]):
        for r in entry["rows"]:
            if r.get("ms_median") is not None:
                series.setdefault(r["contender"], []).append((entry["tensors"], r["ms_median"], r["ms_per_1000_tensors"]))
    drawn = {"ms per step": {}, "ms per 1,000 tensors": {}}
    for i, (name, points) in enumerate(series.items()):
        xs = [p[0] for p in points]
        style = dict(marker="o", color=f"C{i}", label=name, ls="--" if name.startswith("torch.") else "-")
        ax_ms.plot(xs, [p[1] for p in points], **style)
        ax_per.plot(xs, [p[2] for p in points], **style)
        for x, ms, per in points:
            drawn["ms per step"][f"{name} @ {x}"] = ms
            drawn["ms per 1,000 tensors"][f"{name} @ {x}"] = per
    ax_ms.set(xscale="log", yscale="log", xlabel="tensors (16 elements each)", ylabel="ms per step",
              title="ms per step")
    ax_per.set(xscale="log", yscale="log", xlabel="tensors (16 elements each)", ylabel="ms per 1,000 tensors",
               title="ms per 1,000 tensors")
    ax_ms.legend(fontsize=7)
    fig.suptitle(f"host time per step -- {_device(report)}", fontsize=9)
    _save(plt, fig, path)
    return drawn


def write_all(out_dir, report) -> dict:
    """{path: what it drew} for every PNG this report has data for."""
    writers = {"ops.png": write_ops, "steps.png": write_steps, "host_ratios.png": lambda p, r: write_steps(p, r, "host"),
               "host.png": write_host}
    written = {}
    for name, writer in writers.items():
        path = os.path.join(out_dir, name)
        drawn = writer(path, report)
        if drawn:
            written[path] = drawn
    return written
