"""Targets are evaluated from the report's rows, pass or fail, and left out when not measured."""
from flatmin_kernels.bench import targets


def row(name, ratio, backend=None, held=None):
    return {"contender": name, "ratio_to_fused_adamw": ratio, "backend": backend, "held_bytes": held}


def report(device="cpu", backends=("torch", "cpp"), steps=(), host=(), ops=()):
    return {"config": {"device": device, "backends": list(backends)},
            "suites": {"steps": list(steps), "host": list(host), "ops": list(ops)}}


def entry(name, rows, elements=100, list_bytes=400):
    return {"list": name, "dtype": "fp32", "elements": elements, "list_bytes": list_bytes, "rows": rows}


def by_text(results):
    return {t["target"]: t for t in results}


def test_host_targets_pass_and_fail_on_the_primary_backend():
    r = report(host=[entry("tiny-1000", [row("torch.AdamW fused", 1.0), row("fk.SAM (cpp)", 0.4),
                                         row("fk.AdamW (cpp)", 0.3), row("fk.SAM (torch)", 9.0)])])
    results = by_text(targets.evaluate(r))
    assert set(results) == {"fk.SAM (cpp) <= 0.5x torch.AdamW fused (host, tiny-1000)",
                            "fk.AdamW (cpp) <= 0.25x torch.AdamW fused (host, tiny-1000)"}
    assert results["fk.SAM (cpp) <= 0.5x torch.AdamW fused (host, tiny-1000)"]["pass"] is True
    assert results["fk.AdamW (cpp) <= 0.25x torch.AdamW fused (host, tiny-1000)"]["pass"] is False


def test_a_target_against_a_peer_divides_the_two_ratios():
    r = report(steps=[entry("gpt2-small", [row("torch.AdamW fused", 1.0), row("fk.NSO (cpp)", 3.0),
                                            row("official-style NSO", 4.0), row("fk.GAM (cpp)", 6.0),
                                            row("official-style GAM", 10.0)])])
    results = by_text(targets.evaluate(r))
    nso = results["fk.NSO (cpp) <= 1x official-style NSO (steps, gpt2-small)"]
    gam = results["fk.GAM (cpp) <= 0.5x official-style GAM (steps, gpt2-small)"]
    assert (nso["measured"], nso["pass"]) == (0.75, True)
    assert (gam["measured"], gam["pass"]) == (0.6, False)


def test_cpu_only_targets_are_left_out_on_cuda_and_triton_is_primary_there():
    rows = [row("torch.AdamW fused", 1.0), row("fk.AdamW (triton)", 0.9), row("fk.AdamW (cpp)", 0.5)]
    assert targets.evaluate(report("cuda", ("torch", "triton", "cpp"), steps=[entry("flat-10m", rows)])) == []
    results = targets.evaluate(report("cpu", steps=[entry("flat-10m", [row("torch.AdamW fused", 1.0),
                                                                        row("fk.AdamW (cpp)", 0.5)])]))
    assert [t["target"] for t in results] == ["fk.AdamW (cpp) <= 1x torch.AdamW fused (steps, flat-10m)"]


LIST = targets.HELD_MIN_BYTES  # the smallest list held memory is judged on


def test_held_memory_beyond_adamw_on_the_largest_list():
    small = entry("flat-10m", [row("torch.AdamW fused", 1.0, held=2 * LIST), row("fk.SAM (cpp)", 1.0, held=4 * LIST)],
                  elements=LIST // 4, list_bytes=LIST)
    large = entry("gpt2-small", [row("torch.AdamW fused", 1.0, held=20 * LIST), row("fk.SAM (cpp)", 1.0, held=30 * LIST),
                                 row("fk.GAM (cpp)", 1.0, held=70 * LIST)], elements=10 * LIST // 4, list_bytes=10 * LIST)
    results = by_text(targets.evaluate(report(steps=[small, large])))
    sam = results["fk.SAM (cpp) holds <= 1 parameter-sized buffer(s) beyond AdamW's state"]
    gam = results["fk.GAM (cpp) holds <= 3 parameter-sized buffer(s) beyond AdamW's state"]
    assert (sam["list"], sam["measured"], sam["pass"]) == ("gpt2-small", 1.0, True)
    assert (gam["measured"], gam["pass"]) == (5.0, False)


def test_held_memory_is_not_judged_on_lists_below_a_mebibyte():
    """On the quick run's tiny lists the plans' fixed per-step scalars would read as buffers."""
    rows = [row("torch.AdamW fused", 1.0, held=800), row("fk.SAM (cpp)", 1.0, held=1200 + 16)]
    assert targets.evaluate(report(steps=[entry("tiny-100", rows, list_bytes=400)])) == []


def test_ops_targets_only_on_lists_of_at_least_256_mib():
    rows = [{"op": "adamw_", "backend": "cpp", "fraction_of_copy": 0.95},
            {"op": "noise_", "backend": "cpp", "fraction_of_copy": 0.2},
            {"op": "adamw_", "backend": "torch", "fraction_of_copy": 0.1}]
    big = {"list": "gpt2-small", "dtype": "fp32", "below_256_mib": False, "rows": rows}
    small = {"list": "tiny-100", "dtype": "fp32", "below_256_mib": True, "rows": rows}
    results = targets.evaluate(report(ops=[big, small]))
    assert [(t["target"], t["pass"]) for t in results] == [
        ("adamw_ (cpp, fp32) >= 90% of copy bandwidth", True), ("noise_ (cpp, fp32) >= 90% of copy bandwidth", False)]


def test_the_reference_backend_gets_no_fused_op_targets():
    big = {"list": "gpt2-small", "dtype": "fp32", "below_256_mib": False,
           "rows": [{"op": "adamw_", "backend": "torch", "fraction_of_copy": 0.1}]}
    assert targets.evaluate(report(backends=("torch",), ops=[big])) == []


def test_held_buffers_are_counted_to_a_hundredth_of_the_list():
    rows = [row("torch.AdamW fused", 1.0, held=2 * LIST), row("fk.SAM (cpp)", 1.0, held=3 * LIST + 1000)]
    [sam] = targets.evaluate(report(steps=[entry("gpt2-small", rows, list_bytes=LIST)]))
    assert (sam["measured"], sam["pass"]) == (1.0, True)


def test_no_flatmin_backend_no_targets():
    assert targets.evaluate(report(backends=())) == []


def test_host_time_growth_from_100_to_10000_tensors():
    def host(name, ms_per_1000):
        return {"list": name, "dtype": "fp32", "rows": [
            {"contender": "fk.SAM (cpp)", "backend": "cpp", "ms_per_1000_tensors": ms_per_1000},
            {"contender": "fk.SAM (torch)", "backend": "torch", "ms_per_1000_tensors": 9.0}]}

    r = report()
    r["suites"]["host"] = [host("tiny-100", 2.0), host("tiny-10000", 2.4)]
    [growth] = targets.evaluate(r)
    assert growth["target"] == "fk.SAM (cpp): host time per 1,000 tensors at 10,000 tensors <= 1.1x at 100"
    assert (growth["measured"], growth["pass"]) == (1.2, False)
    r["suites"]["host"] = [host("tiny-100", 2.0), host("tiny-10000", 1.0)]
    assert targets.evaluate(r)[0]["pass"]
