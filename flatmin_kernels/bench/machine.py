"""What a benchmark ran on: the machine, the software versions, and how much memory is free."""
from __future__ import annotations

import ctypes
import datetime
import importlib.metadata
import os
import platform
from contextlib import contextmanager

import torch


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _meminfo_bytes(key: str):
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def release_freed_memory(device: torch.device) -> None:
    """Give memory the previous lists freed back to the system before it is counted: the CUDA
    allocator's cache, or on Linux what glibc's malloc keeps after large frees (without this a
    CPU run that has been through the ops suite sees gigabytes fewer available)."""
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def available_memory(device: torch.device) -> int:
    """Bytes that can still be allocated on ``device`` (free GPU memory, or MemAvailable)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    avail = _meminfo_bytes("MemAvailable")
    if avail is None:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return avail


def versions() -> dict:
    import flatmin_kernels

    out = {"python": platform.python_version(), "torch": torch.__version__,
           "torch_cuda": torch.version.cuda, "flatmin_kernels": flatmin_kernels.__version__}
    for name in ("triton", "pytorch_optimizer"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def describe(device: torch.device) -> dict:
    info = {"device": str(device), "platform": platform.platform(), "cpu_model": cpu_model(),
            "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "ram_bytes": _meminfo_bytes("MemTotal"), "loadavg": list(os.getloadavg())}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu_name=props.name, gpu_capability=f"{props.major}.{props.minor}",
                    gpu_memory_bytes=props.total_memory)
    return info


def native_backends(device) -> dict:
    """{backend: None if it runs natively on ``device`` else why not}, asked through the public API."""
    import flatmin_kernels as fk
    from flatmin_kernels import functional

    out = {}
    for name, (ok, reason) in fk.backend_status().items():
        if not ok:
            out[name] = reason
        elif name == "triton" and device.type != "cuda":
            out[name] = "Triton runs on a CPU only in its interpreter, which is not worth timing"
        else:
            try:
                functional.sumsq([torch.ones(2, device=device)], backend=name)
                out[name] = None
            except Exception as exc:
                out[name] = str(exc)
    return out


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


@contextmanager
def threads(n: int):
    """``torch.set_num_threads(n)`` for the duration of a run, put back afterwards."""
    saved = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)
