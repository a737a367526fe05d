"""Clocks and interleaved repetitions, for shared and noisy machines.

Every contender of a comparison is warmed up, then timed in rounds: each round runs every
contender once, in an order rotated by one each round, so drift (another process, thermal
state) hits all of them alike; ratios are then taken between medians of the same rounds.

A timed iteration may contain parts that are not the contender's work (the stand-in for the
forward/backward passes): they run inside ``clock.excluded()`` and their time is subtracted.
On a GPU the clock is CUDA events on the current stream (synchronised around each sample);
on a CPU it is the wall clock.
"""
from __future__ import annotations

import math
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch


class WallClock:
    """Wall time of a region minus the excluded intervals inside it (with a CUDA ``device``: the
    device is synchronised at the start and the end, so its queued work counts too)."""

    kind = "wall clock (time.perf_counter)"

    def __init__(self, device=None):
        self.device = None if device is None or torch.device(device).type != "cuda" else torch.device(device)
        self._excluded = 0.0

    def timer(self) -> float:
        """perf_counter minus every excluded interval so far; as pytest-benchmark's timer it
        leaves the excluded parts out of its rounds too."""
        return time.perf_counter() - self._excluded

    def start(self) -> None:
        if self.device is not None:
            torch.cuda.synchronize(self.device)
        self._t0 = self.timer()

    @contextmanager
    def excluded(self):
        t = time.perf_counter()
        try:
            yield
        finally:
            self._excluded += time.perf_counter() - t

    def stop(self) -> float:
        if self.device is not None:
            torch.cuda.synchronize(self.device)
        return self.timer() - self._t0


class CudaClock:
    """GPU time of a region (CUDA events on the current stream) minus its excluded intervals.

    The device is synchronised before the region starts, so queued work from earlier does not
    count, and at its end, so all of the region's work does."""

    kind = "torch.cuda.Event timing on the current stream, synchronised around each sample"

    def __init__(self, device):
        self.device = torch.device(device)

    def _event(self):
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def start(self) -> None:
        torch.cuda.synchronize(self.device)
        self._gaps = []
        self._start = self._event()

    @contextmanager
    def excluded(self):
        begin = self._event()
        try:
            yield
        finally:
            self._gaps.append((begin, self._event()))

    def stop(self) -> float:
        end = self._event()
        end.synchronize()
        total_ms = self._start.elapsed_time(end) - sum(a.elapsed_time(b) for a, b in self._gaps)
        return total_ms / 1e3


def clock_for(device, suite: str = "ops") -> WallClock | CudaClock:
    """The clock of a suite: CUDA events on a GPU, except for the host suite, whose subject is the
    host's own time (the wall clock, synchronised with the device around each sample)."""
    device = torch.device(device)
    if suite == "host":
        return WallClock(device)
    return CudaClock(device) if device.type == "cuda" else WallClock()


@dataclass
class Timing:
    """Seconds per iteration of one contender: one sample per round, each the mean of ``inner``
    back-to-back iterations (more than one only when an iteration is shorter than the minimum
    sample time)."""

    samples: list = field(default_factory=list)
    inner: int = 1
    first_s: Optional[float] = None  # the last warm-up iteration, untimed for the result
    note: Optional[str] = None
    error: Optional[str] = None

    @property
    def rounds(self) -> int:
        """Rounds it took part in: one sample each (a contender that errs or is noted leaves)."""
        return len(self.samples)

    @property
    def median(self) -> Optional[float]:
        return statistics.median(self.samples) if self.samples else None

    @property
    def min(self) -> Optional[float]:
        return min(self.samples) if self.samples else None

    def as_dict(self) -> dict:
        ms = lambda s: None if s is None else s * 1e3  # noqa: E731
        return {"ms_median": ms(self.median), "ms_min": ms(self.min),
                "samples_ms": [s * 1e3 for s in self.samples], "inner": self.inner,
                "note": self.note, "error": self.error}


def _measure(fn, clock, inner: int) -> float:
    clock.start()
    for _ in range(inner):
        fn(clock)
    return clock.stop() / inner


def interleave(entries: dict, *, clock, reps: int, warmup: int = 1, min_sample_s: float = 0.0,
               slow_s: float = math.inf, progress: Optional[Callable] = None) -> dict:
    """Time every ``entries[name](clock)`` (one iteration each call) in ``reps`` rotating rounds.

    ``warmup`` iterations per entry come first (the last one also calibrates ``inner``). An entry
    whose timed iteration takes longer than ``slow_s`` leaves the rotation after that round
    (noted): a slow warm-up alone (compilation, first-touch allocation) does not decide. An entry
    that raises is dropped with its error recorded; the others go on.
    """
    names = list(entries)
    timings = {name: Timing() for name in names}
    say = progress or (lambda *a: None)
    for i, name in enumerate(names):
        say(f"warm-up {i + 1}/{len(names)}", name)
        t = timings[name]
        try:
            for _ in range(max(1, warmup)):
                t.first_s = _measure(entries[name], clock, 1)
        except Exception as exc:  # a contender that cannot run here must not stop the others
            t.error = f"{type(exc).__name__}: {exc}"
            continue
        if min_sample_s > 0:
            t.inner = max(1, min(1000, math.ceil(min_sample_s / max(t.first_s, 1e-9))))
    for r in range(reps):
        order = names[r % len(names):] + names[:r % len(names)] if names else []
        running = [n for n in order if timings[n].error is None and timings[n].note is None]
        for k, name in enumerate(running):
            t = timings[name]
            say(f"round {r + 1}/{reps}: {k + 1}/{len(running)}", name)
            try:
                t.samples.append(_measure(entries[name], clock, t.inner))
            except Exception as exc:
                t.error = f"{type(exc).__name__}: {exc}"
                continue
            if t.samples[-1] > slow_s and r + 1 < reps:
                t.note = f"{r + 1} round(s) only: an iteration takes {t.samples[-1]:.1f} s (> {slow_s:g} s)"
    return timings
