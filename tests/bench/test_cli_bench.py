"""``python -m flatmin_kernels bench``: the quick run of every suite on this CPU, and bad arguments.

The quick run is the CI check of the whole command: it must finish in a minute, and its JSON
and pictures must hold every contender with consistent numbers.
"""
import contextlib
import io
import json
import os
import time

import pytest
import torch

import flatmin_kernels as fk
from flatmin_kernels.bench import contenders as C
from flatmin_kernels.bench import host_suite, ops_suite, plots
from flatmin_kernels.bench.targets import primary_backend
from flatmin_kernels.cli import main

import bench.peers


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "out"
    stdout, stderr = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        rc = main(["bench", "--quick", "--threads", "2", "--out", str(out)])
    elapsed = time.perf_counter() - start
    with open(out / "bench.json") as f:
        report = json.load(f)
    return dict(rc=rc, out=out, report=report, elapsed=elapsed, stdout=stdout.getvalue(), stderr=stderr.getvalue())


def test_quick_run_finishes_within_a_minute(quick):
    assert quick["rc"] == 0
    assert quick["elapsed"] <= 60, f"the quick run took {quick['elapsed']:.0f} s"


def test_progress_goes_to_stderr(quick):
    assert "steps tiny-100 fp32:" in quick["stderr"]
    assert "/" in quick["stderr"] and "[" in quick["stderr"]  # k/n and the elapsed time
    assert "warm-up" not in quick["stdout"]


def test_json_names_the_machine_versions_and_configuration(quick):
    r = quick["report"]
    assert r["machine"]["cpu_model"] and r["machine"]["cpu_cores"] >= 1
    assert r["machine"]["torch_threads"] == 2 == r["config"]["threads"]
    assert r["versions"]["torch"] == torch.__version__ and r["versions"]["flatmin_kernels"]
    assert r["config"]["backends"] == [b for b in ("torch", "cpp") if b in fk.available_backends()]
    assert r["config"]["timing"]["steps"]["reps"] == 2
    assert r["command"].startswith("python -m flatmin_kernels bench --device cpu --suite all --quick")
    assert r["date"]


def _names(entry):
    return [row["contender"] for row in entry["rows"]]


def test_every_contender_of_every_suite_is_in_the_json(quick):
    r = quick["report"]
    backends = r["config"]["backends"]
    field = C.torch_adamw() + [c for b in backends for c in C.ours(b)] + bench.peers.contenders(backends)
    ran = [c.name for c in field if c.in_quick and not c.unavailable]
    left_out = {c.name for c in field} - set(ran)
    [steps] = r["suites"]["steps"]
    assert _names(steps) == ran
    assert left_out == {s["what"] for s in r["skipped"] if s["suite"] == "steps"}
    assert all(s["reason"] for s in r["skipped"])
    assert [e["list"] for e in r["suites"]["host"]] == ["tiny-100", "tiny-1000"]
    for entry in r["suites"]["host"]:
        assert _names(entry) == [c.name for c in host_suite.field(backends)]
    assert [(e["list"], e["dtype"]) for e in r["suites"]["ops"]] == [("tiny-100", "fp32"), ("tiny-100", "bf16")]
    for entry in r["suites"]["ops"]:
        assert [(row["op"], row["backend"]) for row in entry["rows"]] == [
            (op.name, b) for op in ops_suite.OPS for b in backends]


def test_every_row_was_measured(quick):
    r = quick["report"]
    for suite in ("ops", "steps", "host"):
        for entry in r["suites"][suite]:
            for row in entry["rows"]:
                assert "error" not in row or row["error"] is None, row
                assert row["ms_median"] > 0 and row["ms_min"] <= row["ms_median"]


def test_ratios_are_value_over_the_anchor_of_the_same_rounds(quick):
    for suite in ("steps", "host"):
        for entry in quick["report"]["suites"][suite]:
            anchor = entry["rows"][0]
            assert anchor["contender"] == C.ANCHOR and anchor["ratio_to_fused_adamw"] == 1.0
            for row in entry["rows"]:
                assert row["ratio_to_fused_adamw"] == pytest.approx(row["ms_median"] / row["anchor_ms_median"], rel=1e-12)
                if row["cohort"] == 0:
                    assert row["anchor_ms_median"] == anchor["ms_median"]


def test_host_rows_give_ms_per_thousand_tensors(quick):
    for entry in quick["report"]["suites"]["host"]:
        for row in entry["rows"]:
            assert row["ms_per_1000_tensors"] == pytest.approx(row["ms_median"] * 1000 / entry["tensors"])


def test_measured_memory_and_passes_match_what_each_contender_declares(quick):
    """Held: the declared parameter-sized tensors, plus (flatmin) its plans' per-step scalars,
    a few dozen floats: under 5% of even these tiny lists."""
    for suite in ("steps", "host"):
        for entry in quick["report"]["suites"][suite]:
            for row in entry["rows"]:
                declared = row["declared_held"] * entry["list_bytes"]
                assert declared <= row["held_bytes"] <= declared + 0.05 * entry["list_bytes"], row["contender"]
                assert row["passes_per_step"] == row["declared_passes"], row["contender"]


def test_ops_bandwidth_is_counted_bytes_over_time(quick):
    for entry in quick["report"]["suites"]["ops"]:
        size = 4 if entry["dtype"] == "fp32" else 2
        for row in entry["rows"]:
            assert row["bytes"] == row["accesses"] * size * entry["elements"]
            assert row["gb_s"] == pytest.approx(row["bytes"] / row["ms_median"] / 1e6)
            assert row["fraction_of_copy"] == pytest.approx(row["gb_s"] / row["copy_gb_s"])
        assert entry["below_256_mib"]


def test_the_pictures_show_the_numbers_of_the_json(quick, tmp_path):
    r = quick["report"]
    written = sorted(f for f in os.listdir(quick["out"]) if f.endswith(".png"))
    assert written == ["host.png", "host_ratios.png", "ops.png", "steps.png"]
    for name in written:
        with open(quick["out"] / name, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    drawn = plots.write_all(str(tmp_path), r)
    steps = drawn[str(tmp_path / "steps.png")]["steps tiny-100 fp32"]
    assert steps == {row["contender"]: row["ratio_to_fused_adamw"] for row in r["suites"]["steps"][0]["rows"]}
    ops = drawn[str(tmp_path / "ops.png")]
    for entry in r["suites"]["ops"]:
        [panel] = [v for k, v in ops.items() if f"{entry['list']} {entry['dtype']}" in k]
        for row in entry["rows"]:
            assert panel[f"{row['op']} [{row['backend']}]"] == row["gb_s"]
            assert panel[f"copy {row['op']}"] == row["copy_gb_s"]
    host = drawn[str(tmp_path / "host.png")]["ms per 1,000 tensors"]
    for entry in r["suites"]["host"]:
        for row in entry["rows"]:
            assert host[f"{row['contender']} @ {entry['tensors']}"] == row["ms_per_1000_tensors"]


def test_the_console_shows_the_tables_and_every_target(quick):
    text = quick["stdout"]
    assert "steps: tiny-100 fp32 on cpu" in text and "host: tiny-100 fp32 on cpu" in text
    assert "ops: tiny-100 bf16 on cpu" in text and "below 256 MiB" in text
    targets = quick["report"]["targets"]
    b = primary_backend(quick["report"])  # cpp on a CPU where it is built, else torch
    assert {t["target"] for t in targets} >= {
        f"fk.SAM ({b}) <= 0.5x torch.AdamW fused (host, tiny-1000)",
        f"fk.AdamW ({b}) <= 0.25x torch.AdamW fused (host, tiny-1000)",
        f"fk.GAM ({b}) <= 1.5x torch.AdamW fused (host, tiny-1000)",
        f"fk.NSO ({b}) <= 0.75x torch.AdamW fused (host, tiny-1000)"}
    for t in targets:
        assert t["target"] in text
        assert t["pass"] == (t["measured"] <= t["limit"] if t["comparison"] == "<=" else t["measured"] >= t["limit"])
    host = {row["contender"]: row for row in quick["report"]["suites"]["host"][1]["rows"]}
    [sam] = [t for t in targets if t["target"].startswith(f"fk.SAM ({b}) <= 0.5x")]
    assert sam["measured"] == host[f"fk.SAM ({b})"]["ratio_to_fused_adamw"]


# ----------------------------------------------------------------------------- bad arguments


def refused(argv, tmp_path, capsys):
    out = tmp_path / "never"
    rc = main(["bench", "--quick", "--out", str(out)] + argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert not out.exists(), "a refused run wrote something"
    assert len(err.splitlines()) == 1
    return err


def test_cuda_without_a_gpu_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    err = refused(["--device", "cuda"], tmp_path, capsys)
    assert err == "error: --device cuda: no CUDA device is visible here (torch.cuda.is_available() is False)"


@pytest.mark.parametrize("argv, message", [
    (["--reps", "0"], "error: --reps must be >= 1, got 0"),
    (["--threads", "0"], "error: --threads must be >= 1, got 0"),
    (["--backends", "nope"], "error: --backends: unknown backend 'nope'; choose from torch, triton, cpp"),
    (["--backends", "triton"], "error: --backends: triton cannot run on cpu here: Triton runs on a CPU only in "
                               "its interpreter, which is not worth timing"),
    (["--suite", "host", "--params", "gpt2-small"],
     "error: --suite host runs on tiny-100, tiny-1000, tiny-10000; --params gave none of them"),
])
def test_bad_arguments_are_refused_in_one_line(argv, message, tmp_path, capsys):
    assert refused(argv, tmp_path, capsys) == message


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("")
    rc = main(["bench", "--quick", "--out", str(target)])
    assert rc == 2
    assert capsys.readouterr().err.strip() == f"error: --out {target}: exists and is not a folder"
    assert target.read_text() == ""


@pytest.mark.parametrize("argv", [["--device", "tpu"], ["--suite", "everything"], ["--params", "bert"],
                                  ["--dtype", "fp8"], ["--reps", "many"]])
def test_argparse_refuses_unknown_values(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench"] + argv)
    assert exc.value.code == 2
    assert "invalid" in capsys.readouterr().err


def test_an_interrupted_run_leaves_what_it_measured(tmp_path, monkeypatch, capsys):
    from flatmin_kernels.bench import runner

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner.steps_suite, "run_list", interrupt)
    out = tmp_path / "out"
    rc = main(["bench", "--params", "tiny-100", "--backends", "torch", "--reps", "1", "--dtype", "fp32",
               "--out", str(out)])
    assert rc == 130
    assert capsys.readouterr().err.strip().endswith(f'interrupted: {out / "bench.json"} holds what was measured '
                                                    f'("complete": false)')
    with open(out / "bench.json") as f:
        report = json.load(f)
    assert report["complete"] is False
    assert [e["list"] for e in report["suites"]["ops"]] == ["tiny-100"] and not report["suites"].get("steps")


def test_params_send_host_lists_to_the_host_suite_and_the_others_to_ops_and_steps():
    from flatmin_kernels.bench.runner import Config, suite_lists

    config = Config(device=torch.device("cpu"), params=("gpt2-medium", "tiny-1000"))
    assert suite_lists("steps", config, "fp32") == ("gpt2-medium",) == suite_lists("ops", config, "bf16")
    assert suite_lists("host", config, "fp32") == ("tiny-1000",)
    only_model = Config(device=torch.device("cpu"), params=("gpt2-small",))
    assert suite_lists("host", only_model, "fp32") == ("tiny-100", "tiny-1000", "tiny-10000")
    only_host = Config(device=torch.device("cpu"), params=("tiny-100",))
    assert suite_lists("steps", only_host, "fp32") == ("tiny-100",)
    default = Config(device=torch.device("cpu"))
    assert suite_lists("ops", default, "fp32") == ("gpt2-small",)  # the smallest model list >= 256 MiB
    assert suite_lists("ops", default, "bf16") == ("gpt2-medium",)
    assert suite_lists("steps", default, "fp32") == ("flat-10m", "gpt2-small")
