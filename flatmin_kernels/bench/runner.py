"""One benchmark run: which suites, lists, dtypes and backends, in which order; the report dict.

What runs is fixed by the arguments alone (the defaults below), so two runs of the same command
on the same machine time the same things; only how many back-to-back iterations make a sample,
and whether a very slow contender gets one round only, depend on the measured speed.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

import torch

from . import contenders as C
from . import host_suite, machine, ops_suite, param_lists, steps_suite, targets
from .timing import clock_for

SUITES = ("ops", "steps", "host")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
MEMORY_FRACTION = 0.7  # a list (or cohort) may use this much of the memory available when it starts
MODEL_LISTS = ("resnet50", "gpt2-small", "gpt2-medium", "llama-1b")

# Per suite: repetitions (rounds), warm-up iterations, the least time one sample averages over,
# and the iteration time above which a contender gets one round only.
TIMING = {
    "ops": dict(reps=3, warmup=1, min_sample_s=0.0, slow_s=5.0),
    "steps": dict(reps=4, warmup=1, min_sample_s=0.02, slow_s=5.0),
    "host": dict(reps=9, warmup=2, min_sample_s=0.05, slow_s=5.0),
}
QUICK_TIMING = {
    "ops": dict(reps=2, warmup=1, min_sample_s=0.0, slow_s=2.0),
    "steps": dict(reps=2, warmup=1, min_sample_s=0.0, slow_s=2.0),
    "host": dict(reps=3, warmup=1, min_sample_s=0.005, slow_s=2.0),
}
QUICK_LISTS = {"ops": ("tiny-100",), "steps": ("tiny-100",), "host": ("tiny-100", "tiny-1000")}
STEPS_LISTS = {"cpu": ("flat-10m", "gpt2-small"),
               "cuda": ("flat-10m", "resnet50", "gpt2-small", "gpt2-medium", "llama-1b")}


@dataclass
class Config:
    device: torch.device
    suites: tuple = SUITES
    params: Optional[tuple] = None  # None: each suite's default lists
    dtypes: Optional[tuple] = None  # None: ops fp32 and bf16, steps and host fp32
    backends: tuple = ()
    reps: Optional[int] = None
    quick: bool = False
    threads: int = 1
    command: str = ""
    progress: object = field(default=None, repr=False)
    checkpoint: object = field(default=None, repr=False)  # called with the report after every list


def ops_default_lists(dtype_name: str) -> tuple:
    """The smallest model list that fills at least 256 MiB in this dtype."""
    dtype = DTYPES[dtype_name]
    for name in MODEL_LISTS:
        if param_lists.get(name).nbytes(dtype) >= ops_suite.MIN_BYTES:
            return (name,)
    return (MODEL_LISTS[-1],)


def suite_lists(suite: str, config: Config, dtype_name: str) -> tuple:
    """The lists of one suite. ``--params`` splits: its host lists (tiny-*) go to the host suite,
    the others to ops and steps (which take the host lists when no other is given); a suite
    that gets none of them runs its defaults."""
    if config.params is not None:
        host = tuple(n for n in config.params if n in param_lists.HOST_LISTS)
        others = tuple(n for n in config.params if n not in param_lists.HOST_LISTS)
        given = host if suite == "host" else (others or host)
        if given:
            return given
    if config.quick:
        return QUICK_LISTS[suite]
    if suite == "ops":
        return ops_default_lists(dtype_name)
    if suite == "steps":
        return STEPS_LISTS[config.device.type]
    return param_lists.HOST_LISTS


def suite_dtypes(suite: str, config: Config) -> tuple:
    if config.dtypes is not None:
        return tuple(config.dtypes)
    return ("fp32", "bf16") if suite == "ops" else ("fp32",)


def timing_for(suite: str, config: Config) -> dict:
    t = dict((QUICK_TIMING if config.quick else TIMING)[suite])
    if config.reps is not None:
        t["reps"] = config.reps
    return t


class Progress:
    """What is running, k/n, and the elapsed time, on stderr (one line, rewritten on a terminal)."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.t0 = time.perf_counter()
        self.tty = getattr(self.stream, "isatty", lambda: False)()
        self.context = ""

    def __call__(self, what, name=""):
        elapsed = time.perf_counter() - self.t0
        line = f"[{int(elapsed // 60):3d}:{int(elapsed % 60):02d}] {self.context} {what} {name}".rstrip()
        if self.tty:
            self.stream.write("\r\033[K" + line[:150])
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def done(self):
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def steps_field(config: Config, skipped: list) -> list:
    """torch's AdamW three ways, ours on every backend, then the peers; the unavailable ones
    (and, with --quick, the slow-to-build ones) are left out with their reason."""
    field_ = C.torch_adamw() + [c for backend in config.backends for c in C.ours(backend)]
    peers, why = C.load_peers()
    if peers is None:
        skipped.append({"suite": "steps", "what": "peers", "reason": why})
    else:
        field_ += peers.contenders(config.backends)
    out = []
    for c in field_:
        if c.unavailable:
            skipped.append({"suite": "steps", "what": c.name, "reason": c.unavailable})
        elif config.quick and not c.in_quick:
            skipped.append({"suite": "steps", "what": c.name, "reason": "not run with --quick (compiles for minutes)"})
        else:
            out.append(c)
    return out


def _budget(device) -> int:
    machine.release_freed_memory(device)  # the previous list's tensors
    return int(MEMORY_FRACTION * machine.available_memory(device))


def _run_ops(config, progress, skipped, results, checkpoint):
    t = timing_for("ops", config)
    for dtype_name in suite_dtypes("ops", config):
        for name in suite_lists("ops", config, dtype_name):
            plist = param_lists.get(name)
            dtype = DTYPES[dtype_name]
            need, budget = ops_suite.memory_estimate(plist, dtype), _budget(config.device)
            entry = {"list": name, "description": plist.description, "dtype": dtype_name,
                     "tensors": plist.tensors, "elements": plist.numel, "list_bytes": plist.nbytes(dtype),
                     "below_256_mib": plist.nbytes(dtype) < ops_suite.MIN_BYTES}
            if need > budget:
                reason = f"needs about {need / 2**30:.1f} GiB, more than {budget / 2**30:.1f} GiB (70% available)"
                skipped.append({"suite": "ops", "what": f"{name} {dtype_name}", "reason": reason})
                progress(f"skipped ops {name} {dtype_name}:", reason)
                continue
            progress.context = f"ops {name} {dtype_name}:"
            entry["rows"] = ops_suite.run_list(plist, dtype, config.device, config.backends,
                                               clock=clock_for(config.device), reps=t["reps"],
                                               warmup=t["warmup"], slow_s=t["slow_s"], progress=progress)
            results.append(entry)
            checkpoint()


def _run_steps_like(suite, module, field_, config, progress, skipped, results, checkpoint):
    t = timing_for(suite, config)
    clock = clock_for(config.device, suite)
    for dtype_name in suite_dtypes(suite, config):
        for name in suite_lists(suite, config, dtype_name):
            plist = param_lists.get(name)
            dtype = DTYPES[dtype_name]
            progress.context = f"{suite} {name} {dtype_name}:"
            out = module.run_list(plist, dtype, config.device, field_, clock=clock, reps=t["reps"],
                                  warmup=t["warmup"], min_sample_s=t["min_sample_s"], slow_s=t["slow_s"],
                                  budget=_budget(config.device), progress=progress)
            for what, reason in out["skipped"].items():
                skipped.append({"suite": suite, "what": f"{what} on {name} {dtype_name}", "reason": reason})
                progress("skipped", f"{what}: {reason}")
            results.append({"list": name, "description": plist.description, "dtype": dtype_name,
                            "tensors": plist.tensors, "elements": plist.numel, "list_bytes": plist.nbytes(dtype),
                            "anchor": C.ANCHOR, "cohorts": out["cohorts"], "rows": out["rows"]})
            checkpoint()


def run(config: Config) -> dict:
    """Run the suites; ``config.checkpoint(report)`` sees the report grow after every list, so an
    interrupted run (KeyboardInterrupt propagates) still leaves what it measured."""
    with machine.threads(config.threads):
        return _run(config, config.progress or Progress())


def _run(config, progress) -> dict:
    started = time.perf_counter()
    report = {
        "schema": "flatmin_kernels.bench/1",
        "command": config.command,
        "date": machine.now(),
        "complete": False,
        "machine": machine.describe(config.device),
        "versions": machine.versions(),
        "config": {"device": str(config.device), "suites": list(config.suites), "quick": config.quick,
                   "params": None if config.params is None else list(config.params),
                   "dtypes": None if config.dtypes is None else list(config.dtypes),
                   "backends": list(config.backends), "threads": config.threads,
                   "timing": {s: timing_for(s, config) for s in config.suites},
                   "clock": {s: clock_for(config.device, s).kind
                             for s in config.suites},
                   "memory_fraction": MEMORY_FRACTION},
        "suites": {},
        "skipped": [],
        "targets": [],
    }

    def checkpoint():
        report["targets"] = targets.evaluate(report)
        report["wall_seconds"] = time.perf_counter() - started
        report["machine"]["loadavg_after"] = list(os.getloadavg())
        if config.checkpoint is not None:
            config.checkpoint(report)

    skipped = report["skipped"]
    if "ops" in config.suites:
        _run_ops(config, progress, skipped, report["suites"].setdefault("ops", []), checkpoint)
    if "steps" in config.suites:
        _run_steps_like("steps", steps_suite, steps_field(config, skipped), config, progress, skipped,
                        report["suites"].setdefault("steps", []), checkpoint)
    if "host" in config.suites:
        _run_steps_like("host", host_suite, host_suite.field(config.backends), config, progress, skipped,
                        report["suites"].setdefault("host", []), checkpoint)
    progress.done()
    report["complete"] = True
    checkpoint()
    return report
