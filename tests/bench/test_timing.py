"""Interleaved rounds, the excluded passes, calibration, slow and failing contenders."""
import time

import pytest

from flatmin_kernels.bench.timing import WallClock, interleave


def test_rounds_rotate_the_order_so_drift_hits_every_contender_alike():
    calls = []
    entries = {name: (lambda n: lambda clock: calls.append(n))(name) for name in "abc"}
    interleave(entries, clock=WallClock(), reps=3, warmup=1)
    assert calls[:3] == ["a", "b", "c"]  # warm-up
    assert calls[3:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]


def test_excluded_parts_are_not_counted():
    def iteration(clock):
        with clock.excluded():
            time.sleep(0.03)
        time.sleep(0.01)

    t = interleave({"x": iteration}, clock=WallClock(), reps=2)["x"]
    assert 0.009 <= t.min and t.median < 0.025


def test_short_iterations_are_averaged_to_the_minimum_sample_time():
    t = interleave({"x": lambda clock: time.sleep(0.002)}, clock=WallClock(), reps=1, min_sample_s=0.02)["x"]
    assert 3 <= t.inner <= 10
    assert len(t.samples) == 1 and t.samples[0] >= 0.0019


def test_a_slow_contender_leaves_after_its_first_round_and_says_so():
    timings = interleave({"slow": lambda clock: time.sleep(0.05), "fast": lambda clock: None},
                         clock=WallClock(), reps=3, slow_s=0.02)
    assert timings["slow"].rounds == 1 and len(timings["slow"].samples) == 1
    assert timings["slow"].note.startswith("1 round(s) only: an iteration takes 0.")
    assert timings["slow"].note.endswith(" s (> 0.02 s)")
    assert len(timings["fast"].samples) == 3 and timings["fast"].note is None


def test_a_slow_warm_up_alone_does_not_shorten_the_run():
    """A compiler's first call (or first-touch allocation) is slow once, then fast."""
    calls = []

    def compiles_once(clock):
        calls.append(1)
        if len(calls) == 1:
            time.sleep(0.05)

    t = interleave({"x": compiles_once}, clock=WallClock(), reps=3, slow_s=0.02)["x"]
    assert len(t.samples) == 3 and t.note is None and t.first_s >= 0.05


def test_a_failing_contender_is_recorded_and_the_others_go_on():
    def broken(clock):
        raise RuntimeError("no kernel for this")

    timings = interleave({"broken": broken, "fine": lambda clock: None}, clock=WallClock(), reps=2)
    assert timings["broken"].error == "RuntimeError: no kernel for this"
    assert timings["broken"].as_dict()["ms_median"] is None
    assert len(timings["fine"].samples) == 2


def test_median_and_min():
    from flatmin_kernels.bench.timing import Timing

    t = Timing(samples=[0.003, 0.001, 0.002])
    assert t.median == 0.002 and t.min == 0.001
    assert t.as_dict()["samples_ms"] == pytest.approx([3.0, 1.0, 2.0])
