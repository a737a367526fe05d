"""``python -m flatmin_kernels info``."""
import json
import subprocess
import sys

import torch

import flatmin_kernels
from flatmin_kernels.cli import main


def test_info_lists_versions_devices_and_every_backend_with_a_reason(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"flatmin_kernels  {flatmin_kernels.__version__}" in out
    assert f"torch            {torch.__version__}" in out
    assert "devices          cpu" in out
    for name, (ok, reason) in flatmin_kernels.backend_status().items():
        assert f"  {name:8s} {'yes' if ok else 'no '}  {reason}" in out


def test_info_json_runs_as_a_module():
    out = subprocess.run([sys.executable, "-m", "flatmin_kernels", "info", "--json"],
                         capture_output=True, text=True, check=True).stdout
    info = json.loads(out)
    assert info["backends"]["torch"] == {"available": True, "reason": "plain torch; always available"}
    assert set(info["backends"]) == {"torch", "triton", "cpp"}
