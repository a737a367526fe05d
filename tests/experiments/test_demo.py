"""The demo end to end on a reduced setting: every method, every column, the files, reproducibility."""
import json

import matplotlib.image
import pytest

from flatmin_kernels.cli import main
from flatmin_kernels.experiments.demo import run_demo
from flatmin_kernels.experiments.methods import METHODS
from flatmin_kernels.experiments.report import COLUMNS, format_table, write_outputs

ALL = ",".join(METHODS)
PASSES = {"adamw": 1, "adamw+gc": 1, "sam": 2, "asam": 2, "gam": 4, "nso": 2}  # NSO: lam=0 skips the clean pass


@pytest.fixture(scope="module")
def reports(one_thread):
    # Twice, to check the second run reproduces the first.
    return [run_demo(ALL, epochs=1, sharpness_size=64) for _ in range(2)]


def test_every_method_every_column(reports, tmp_path):
    report = reports[0]
    assert list(report["methods"]) == list(METHODS)
    json_path, png_path = write_outputs(tmp_path, report)
    loaded = json.loads(open(json_path).read())
    for name, res in loaded["methods"].items():
        for key, _, _ in COLUMNS:
            assert isinstance(res[key], float), (name, key)
            assert key in loaded["definitions"]
        assert 0.5 < res["test_accuracy"] <= 1.0  # one epoch of any method already learns the digits
        assert res["passes_per_step"] == PASSES[name]
        assert res["optimizer_ms_per_step"] > 0
        assert res["lambda_max"] > 0 and res["hessian_trace"] > 0
        assert res["steps"] == 22  # 1347 samples in batches of 64
        assert [r["step"] for r in res["sharpness"]] == [0, 22]
    assert loaded["config"]["backend_used"] in ("torch", "triton", "cpp")
    image = matplotlib.image.imread(png_path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 400
    table = format_table(loaded["methods"]).splitlines()
    assert len(table) == 2 + len(METHODS) and "lambda_max" in table[0]


def test_same_command_same_numbers(reports):
    timing = {"optimizer_ms_per_step"}
    a, b = (
        {name: {k: v for k, v in res.items() if k not in timing} for name, res in r["methods"].items()}
        for r in reports
    )
    assert a == b


def test_methods_differ_and_gc_changes_the_trajectory(reports):
    res = reports[0]["methods"]
    losses = [res[name]["train_loss"] for name in METHODS]
    assert len(set(losses)) == len(losses)


def test_cli_demo_writes_files_and_prints_the_table(tmp_path, capsys):
    assert main(["demo", "--methods", "adamw", "--epochs", "1", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| adamw " in out and "opt ms/step" in out
    assert (tmp_path / "report.json").exists() and (tmp_path / "report.png").exists()


@pytest.mark.parametrize("argv, message", [
    (["--methods", "adamw,lion"], "error: unknown method 'lion'; choose from adamw"),
    (["--lr", "0"], "error: --lr must be positive, got 0.0"),
    (["--lr=-1e-3"], "error: --lr must be positive"),
    (["--epochs", "0"], "error: --epochs must be >= 1, got 0"),
])
def test_cli_demo_bad_input(tmp_path, capsys, argv, message):
    assert main(["demo", "--out", str(tmp_path)] + argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "report.json").exists()


def test_library_bad_input():
    with pytest.raises(ValueError, match="unknown method 'foo'"):
        run_demo("foo", epochs=1)
    with pytest.raises(ValueError, match="lr must be positive, got 0"):
        run_demo("adamw", epochs=1, lr=0)


def test_cli_puts_torch_settings_back(tmp_path):
    import torch

    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
    assert main(["demo", "--methods", "adamw", "--epochs", "1", "--threads", "1", "--out", str(tmp_path)]) == 0
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == before
