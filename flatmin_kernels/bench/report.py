"""The console tables of a benchmark report (its JSON is the report dict itself)."""
from __future__ import annotations

from ..experiments.report import markdown_table


def _fmt(value, spec):
    return "-" if value is None else spec.format(value)

def _title(suite, entry, device):
    size = f"{entry['tensors']:,} tensors, {entry['elements']:,} elements, {entry['list_bytes'] / 2**20:,.0f} MiB"
    return f"{suite}: {entry['list']} {entry['dtype']} on {device} ({size})"

def ops_tables(report) -> list:
    out = []
    for entry in report["suites"].get("ops", []):
        rows = [[r["op"], r["backend"], r["bytes"] // entry["elements"], _fmt(r.get("ms_median"), "{:.3f}"),
                 _fmt(r.get("ms_min"), "{:.3f}"), _fmt(r.get("gb_s"), "{:.1f}"), _fmt(r.get("copy_gb_s"), "{:.1f}"),
                 _fmt(None if r.get("fraction_of_copy") is None else 100 * r["fraction_of_copy"], "{:.0f}%"),
                 r.get("error") or r.get("note") or ""] for r in entry["rows"]]
        note = " -- below 256 MiB: caches inflate GB/s" if entry["below_256_mib"] else ""
        out.append(_title("ops", entry, report["config"]["device"]) + note + "\n" + markdown_table(
            ["op", "backend", "B/elem", "ms median", "ms min", "GB/s", "copy GB/s", "of copy", "note"], rows))
    return out

def steps_tables(report, suite="steps") -> list:
    cuda = report["config"]["device"].startswith("cuda")
    out = []
    for entry in report["suites"].get(suite, []):
        headers = ["contender", "ms median", "ms min", "x fused AdamW"]
        headers += ["ms/1000 tensors"] if suite == "host" else ["B/param counted", "held x params", "passes"]
        if cuda:
            headers += ["peak MiB", "launches"]
        rows = []
        for r in entry["rows"]:
            row = [r["contender"], _fmt(r.get("ms_median"), "{:.3f}"), _fmt(r.get("ms_min"), "{:.3f}"),
                   _fmt(r.get("ratio_to_fused_adamw"), "{:.2f}")]
            if suite == "host":
                row += [_fmt(r.get("ms_per_1000_tensors"), "{:.3f}")]
            else:
                row += [_fmt(r.get("bytes_per_param_counted"), "{}"), _fmt(r.get("held_params_equiv"), "{:.2f}"),
                        _fmt(r.get("passes_per_step"), "{}")]
            if cuda:
                row += [_fmt(None if r.get("peak_step_bytes") is None else r["peak_step_bytes"] / 2**20, "{:.0f}"),
                        _fmt(r.get("launches"), "{}")]
            rows.append(row + [r.get("error") or r.get("note") or ""])
        out.append(_title(suite, entry, report["config"]["device"]) + f", {entry['cohorts']} cohort(s)\n"
                   + markdown_table(headers + ["note"], rows))
    return out

def targets_table(report) -> str:
    rows = [[t["target"], f"{t['measured']:.3g}", f"{t['comparison']} {t['limit']:g}", "pass" if t["pass"] else "FAIL"]
            for t in report["targets"]]
    return "targets\n" + markdown_table(["target", "measured", "limit", "result"], rows) if rows else "targets: none evaluable in this run"

def format_report(report) -> str:
    parts = ops_tables(report) + steps_tables(report, "steps") + steps_tables(report, "host") + [targets_table(report)]
    if report["skipped"]:
        parts.append("skipped:\n" + "\n".join(f"  {s['suite']}: {s['what']}: {s['reason']}" for s in report["skipped"]))
    m = report["machine"]
    where = m.get("gpu_name") or f"{m['cpu_model']}, {m['cpu_cores']} cores"
    parts.append(f"{where}; torch {report['versions']['torch']}, {report['config']['threads']} thread(s); "
                 f"{report['wall_seconds']:.0f} s")
    return "\n\n".join(parts)
