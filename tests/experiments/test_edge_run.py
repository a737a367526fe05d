"""The edge-of-stability run on a short setting."""
import json

import matplotlib.image
import pytest

from flatmin_kernels.cli import main
from flatmin_kernels.diagnostics import gd_edge, sam_edge
from flatmin_kernels.experiments.digits import load_digits_split
from flatmin_kernels.experiments.edge_run import run_edge


@pytest.fixture(scope="module")
def report(one_thread):
    return run_edge(load_digits_split(0), lr=0.3, rho=0.05, steps=40, every=20)


def test_records_against_both_edges(report):
    gd, sam = report["runs"]["gd"], report["runs"]["sam"]
    assert [r["step"] for r in gd["records"]] == [0, 20, 40]
    for r in gd["records"]:
        assert r["gd_edge"] == gd_edge(0.3) and r["sam_edge"] is None
    for r in sam["records"]:
        assert r["sam_edge"] == pytest.approx(sam_edge(0.3, 0.05, r["grad_norm"]), rel=1e-12)
        assert r["sam_edge"] < r["gd_edge"]
    # Both start from the same weights, then SAM takes a different path.
    assert gd["records"][0] == sam["records"][0] | {"sam_edge": None}
    assert gd["records"][-1]["loss"] != sam["records"][-1]["loss"]
    # GD's sharpness rises from 4.3 to the edge 2/lr within 40 steps (progressive sharpening);
    # SAM's stays well below it.
    assert gd["records"][0]["lambda_max"] < 0.7 * gd_edge(0.3) < 0.9 * gd_edge(0.3) < gd["records"][-1]["lambda_max"]
    assert sam["records"][-1]["lambda_max"] < 0.7 * gd_edge(0.3)
    assert gd["summary"]["edge_late"] == gd_edge(0.3)


def test_cli_edge(tmp_path, capsys):
    assert main(["edge", "--steps", "10", "--every", "5", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| gd |" in out and "| sam |" in out
    loaded = json.loads((tmp_path / "edge.json").read_text())
    assert set(loaded["runs"]) == {"gd", "sam"}
    assert matplotlib.image.imread(str(tmp_path / "edge.png")).ndim == 3


@pytest.mark.parametrize("argv, message", [
    (["--lr", "0"], "error: --lr must be positive, got 0.0"),
    (["--rho=-0.1"], "error: --rho must be positive, got -0.1"),
    (["--runs", "gd,adam"], "error: unknown run 'adam'; choose from gd, sam"),
])
def test_cli_edge_bad_input(tmp_path, capsys, argv, message):
    assert main(["edge", "--out", str(tmp_path)] + argv) == 2
    assert message in capsys.readouterr().err


def test_library_bad_input():
    data = load_digits_split(0)
    with pytest.raises(ValueError, match="rho must be a positive finite number, got 0.0"):
        run_edge(data, rho=0.0, steps=1)
    with pytest.raises(ValueError, match="lr must be a positive finite number"):
        run_edge(data, lr=-1.0, steps=1)
