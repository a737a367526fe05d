"""The steps suite: the optimizer's own work per training iteration, ours against the peers.

Every contender gets its own copy of the parameter list (so no optimizer sees another's
pointer swaps or plans) and the same preset gradients. Contenders are timed in interleaved
rounds together with torch's fused AdamW (the anchor), and every ratio divides by the anchor's
median from the same rounds. When the whole field does not fit in memory at once it is split
into cohorts that do, each timed with its own copy of the anchor.
"""
from __future__ import annotations


import torch

from . import machine, param_lists, probes
from .contenders import ANCHOR, PresetGradients
from .timing import interleave

# Beyond what a contender holds: its parameters, its gradients and two list-sized temporaries (a
# foreach op's output; the official GAM peaks at 12.9 list copies with 8 held, measured on CPU)
COPIES_PER_CONTENDER = 4


def estimate_bytes(contender, list_bytes: int) -> int:
    return (COPIES_PER_CONTENDER + contender.held) * list_bytes


def plan_cohorts(contenders, list_bytes: int, budget: int):
    """([cohort, ...], {name: reason skipped}): the anchor (first) goes into every cohort; the
    others are packed in order into cohorts that fit ``budget`` with the shared preset gradients."""
    anchor, others = contenders[0], contenders[1:]
    base = list_bytes + estimate_bytes(anchor, list_bytes)  # presets + anchor
    cohorts, skipped, current, used = [], {}, [anchor], base
    for c in others:
        need = estimate_bytes(c, list_bytes)
        if base + need > budget:
            skipped[c.name] = (f"needs about {(base + need) / 2**30:.1f} GiB with the anchor, more than "
                               f"{budget / 2**30:.1f} GiB (70% of the memory available)")
            continue
        if used + need > budget:
            cohorts.append(current)
            current, used = [anchor], base
        current.append(c)
        used += need
    cohorts.append(current)
    return cohorts, skipped


class Setup:
    """One contender, built on its own parameters, with the stand-in passes wired to it."""

    def __init__(self, contender, plist, dtype, device, presets, loss):
        self.contender = contender
        # trainable leaves, as a model's parameters are (NSO perturbs only those that require grad)
        self.params = [p.requires_grad_() for p in param_lists.materialize(plist, dtype, device, seed=0)]
        self.optimizer = contender.build(self.params)
        self.backward = PresetGradients(self.params, presets, loss)
        self.backward.optimizer = self.optimizer
        self.passes = None

    def iteration(self, clock):
        self.backward.clock = clock
        self.backward.calls = 0
        self.contender.iterate(self.optimizer, self.backward)
        self.passes = self.backward.calls

    def measure_held(self, clock) -> int:
        """Held bytes at their peak: probed at every pass of one iteration and after it."""
        seen = []
        probe = lambda: seen.append(probes.held_bytes(self.optimizer, self.params))  # noqa: E731
        self.backward.probe = probe
        try:
            self.iteration(clock)
        finally:
            self.backward.probe = None
        probe()
        return max(seen)

    def measure_launches(self, clock) -> int:
        self.backward.profiling = True
        try:
            return probes.device_launches(lambda: self.iteration(clock), PresetGradients.LABEL)
        finally:
            self.backward.profiling = False


def _guarded(fn):
    try:
        return fn(), None
    except Exception as exc:  # a probe that fails is recorded, not fatal
        return None, f"{type(exc).__name__}: {exc}"


def run_list(plist, dtype, device, contenders, *, clock, reps, warmup, min_sample_s, slow_s, budget,
             progress) -> dict:
    """Rows for every contender on one list (the anchor first), and what was skipped."""
    device = torch.device(device)
    list_bytes = plist.nbytes(dtype)
    cohorts, skipped = plan_cohorts(contenders, list_bytes, budget)
    if list_bytes + estimate_bytes(contenders[0], list_bytes) > budget:
        return {"rows": [], "cohorts": 0, "skipped": {c.name: "the anchor alone does not fit in memory"
                                                       for c in contenders}}
    presets = param_lists.materialize(plist, dtype, device, seed=1, scale=1e-3)
    loss = torch.zeros((), device=device)
    rows = {}
    for ci, cohort in enumerate(cohorts):
        rows.update(_cohort_rows(ci, len(cohorts), cohort, plist, dtype, device, presets, loss, clock=clock, reps=reps,
                                 warmup=warmup, min_sample_s=min_sample_s, slow_s=slow_s, progress=progress))
        # the cohort's optimizers are gone with its frame; give their memory back before the next
        machine.release_freed_memory(device)
    order = [c.name for c in contenders if c.name in rows]
    return {"rows": [rows[n] for n in order], "cohorts": len(cohorts), "skipped": skipped}


def _cohort_rows(ci, ncohorts, cohort, plist, dtype, device, presets, loss, *, clock, reps, warmup, min_sample_s,
                 slow_s, progress) -> dict:
    """One cohort built, timed in interleaved rounds and measured: its rows by contender name."""
    list_bytes = plist.nbytes(dtype)
    element_size = torch.empty((), dtype=dtype).element_size()
    rows, setups = {}, {}
    for c in cohort:
        progress(f"cohort {ci + 1}/{ncohorts}: building", c.name)
        setups[c.name], err = _guarded(lambda: Setup(c, plist, dtype, device, presets, loss))
        if err:
            rows[c.name] = _row(c, None, element_size, list_bytes, ci, error=err)
    timings = interleave({n: s.iteration for n, s in setups.items()}, clock=clock, reps=reps,
                         warmup=warmup, min_sample_s=min_sample_s, slow_s=slow_s,
                         progress=lambda what, name: progress(f"cohort {ci + 1}/{ncohorts}: {what}", name))
    anchor_median = timings[ANCHOR].median if ANCHOR in timings else None
    for name, setup in setups.items():
        t = timings[name]
        if name == ANCHOR and ci > 0:
            continue  # the anchor's row is its first cohort's; later copies only serve as denominators
        extras = {}
        if t.error is None:
            extras["held_bytes"], extras["held_error"] = _guarded(lambda: setup.measure_held(clock))
            if device.type == "cuda":
                extras["peak_step_bytes"], extras["peak_error"] = _guarded(
                    lambda: probes.peak_step_bytes(lambda: setup.iteration(clock), device))
                extras["launches"], extras["launches_error"] = _guarded(lambda: setup.measure_launches(clock))
        row = _row(setup.contender, t, element_size, list_bytes, ci, passes=setup.passes, **extras)
        row["anchor_ms_median"] = None if anchor_median is None else anchor_median * 1e3
        row["ratio_to_fused_adamw"] = (None if t.median is None or anchor_median is None
                                       else t.median / anchor_median)
        rows[name] = row
    return rows


def _row(c, timing, element_size, list_bytes, cohort, *, passes=None, error=None, **extras) -> dict:
    row = {"contender": c.name, "method": c.method, "family": c.family, "backend": c.backend,
           "cohort": cohort, "passes_per_step": passes, "declared_passes": c.passes, "declared_held": c.held,
           "accesses_counted": c.accesses,
           "bytes_per_param_counted": c.bytes_per_param(element_size), "counted": c.counted}
    if timing is not None:
        row.update(timing.as_dict())
    if error is not None:
        row["error"] = error
    held = extras.pop("held_bytes", None)
    row["held_bytes"] = held
    row["held_params_equiv"] = None if held is None else held / list_bytes
    row.update({k: v for k, v in extras.items() if v is not None})
    return row
