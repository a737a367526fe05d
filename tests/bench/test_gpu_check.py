"""bench/gpu_check.sh in its dry mode: the phases it would run, and its argument checks."""
import os
import subprocess

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "gpu_check.sh")
USAGE = "usage: bash bench/gpu_check.sh OUT_DIR [--dry-run]"


def gpu_check(*args, as_nobody=False):
    if as_nobody and os.geteuid() == 0:
        # root may write anywhere: the unwritable case runs as the unprivileged user nobody, who may
        # not be able to read the checkout (a private temporary folder), so bash reads the script
        # from stdin; the argument checks come before anything uses the script's own path
        nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        with open(SCRIPT) as script:
            return subprocess.run(nobody + ["bash", "-s", "--", *args], stdin=script, capture_output=True, text=True,
                                  timeout=60, cwd="/")
    return subprocess.run(["bash", os.path.abspath(SCRIPT), *args], capture_output=True, text=True, timeout=60, cwd="/")


def test_dry_run_prints_every_phase_and_runs_nothing(tmp_path):
    out = tmp_path / "gpu"
    r = gpu_check(str(out), "--dry-run")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"dry run: OUT_DIR {out}; budget 570 s; phases:"
    phases = [line.split()[1] for line in lines[1::2]]
    assert phases == ["info", "build", "gpu-tests", "trajectories-cuda", "large-tensor", "bench"]
    commands = "\n".join(lines[2::2])
    assert "TORCH_CUDA_ARCH_LIST=" in commands and "pip install --no-deps --no-build-isolation -e ." in commands
    assert "python -m pytest -m gpu -q" in commands
    assert "FLATMIN_TEST_DEVICE=cuda python -m pytest tests/optim -q" in commands
    assert "tests/bench/test_large_tensor.py" in commands
    assert f"python -m flatmin_kernels bench --device cuda --suite all" in commands and f"--out {out}/bench" in commands
    assert not out.exists()


def test_missing_out_dir_is_refused():
    r = gpu_check("--dry-run")
    assert r.returncode == 2
    assert r.stderr.splitlines() == ["error: OUT_DIR is missing: give the folder for the logs and results", USAGE]


def test_unknown_flag_is_refused_with_usage(tmp_path):
    r = gpu_check(str(tmp_path), "--fast")
    assert r.returncode == 2
    assert r.stderr.splitlines() == ["error: unknown option --fast", USAGE]


def test_two_out_dirs_are_refused(tmp_path):
    r = gpu_check(str(tmp_path / "a"), str(tmp_path / "b"), "--dry-run")
    assert r.returncode == 2
    assert r.stderr.splitlines()[0] == f"error: more than one OUT_DIR ({tmp_path / 'a'}, {tmp_path / 'b'})"


def test_out_dir_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("")
    r = gpu_check(str(f), "--dry-run")
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: OUT_DIR {f} exists and is not a folder"


def test_unwritable_out_dir_is_refused():
    r = gpu_check("/proc/flatmin-gpu-check/out", "--dry-run", as_nobody=True)
    assert r.returncode == 2
    assert r.stderr.strip() == "error: OUT_DIR /proc/flatmin-gpu-check/out is not writable (/proc is not)"
