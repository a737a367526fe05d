"""Cohorts that fit in memory, and what a contender holds."""
import torch

from flatmin_kernels.bench import contenders as C
from flatmin_kernels.bench import param_lists, probes, steps_suite
from flatmin_kernels.bench.timing import WallClock

TINY = param_lists.get("tiny-100")
LIST_BYTES = TINY.nbytes(torch.float32)
TWO_ADAMW = LIST_BYTES * (1 + 2 * (steps_suite.COPIES_PER_CONTENDER + 2))  # presets + two AdamW cohorts


def test_cohorts_fit_the_budget_each_with_the_anchor():
    anchor, foreach, loop = C.torch_adamw()
    big = C.Contender("big", "X", "peer", None, None, 0, "", 20, 1)
    adamw = steps_suite.COPIES_PER_CONTENDER + 2
    budget = LIST_BYTES * (1 + adamw + adamw)  # presets + anchor + one more AdamW
    cohorts, skipped = steps_suite.plan_cohorts([anchor, foreach, loop, big], LIST_BYTES, budget)
    assert [[c.name for c in cohort] for cohort in cohorts] == [
        [anchor.name, foreach.name], [anchor.name, loop.name]]
    big_need = (1 + adamw + steps_suite.COPIES_PER_CONTENDER + 20) * LIST_BYTES
    assert skipped == {"big": f"needs about {big_need / 2**30:.1f} GiB with the anchor, more than "
                              f"{budget / 2**30:.1f} GiB (70% of the memory available)"}


def test_a_split_field_gives_every_row_its_own_cohorts_anchor():
    anchor, foreach, loop = C.torch_adamw()
    out = steps_suite.run_list(TINY, torch.float32, "cpu", [anchor, foreach, loop], clock=WallClock(), reps=2,
                               warmup=1, min_sample_s=0.0, slow_s=10.0, budget=TWO_ADAMW,
                               progress=lambda *a: None)
    assert out["cohorts"] == 2 and out["skipped"] == {}
    rows = {r["contender"]: r for r in out["rows"]}
    assert list(rows) == [anchor.name, foreach.name, loop.name]
    assert rows[loop.name]["cohort"] == 1
    assert rows[loop.name]["anchor_ms_median"] != rows[anchor.name]["ms_median"]  # the second cohort's anchor
    assert rows[loop.name]["ratio_to_fused_adamw"] == rows[loop.name]["ms_median"] / rows[loop.name]["anchor_ms_median"]


def test_a_list_whose_anchor_does_not_fit_is_skipped_whole():
    field = C.torch_adamw()
    out = steps_suite.run_list(TINY, torch.float32, "cpu", field, clock=WallClock(), reps=1, warmup=1,
                               min_sample_s=0.0, slow_s=10.0, budget=LIST_BYTES, progress=lambda *a: None)
    assert out["rows"] == [] and set(out["skipped"]) == {c.name for c in field}


def test_held_bytes_walks_state_and_attributes_once_per_storage():
    params = [torch.randn(4, 4, requires_grad=True), torch.randn(8, requires_grad=True)]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = torch.optim.AdamW(params)

    class Wrapper:
        pass

    w = Wrapper()
    w.base_optimizer = opt
    flat = torch.zeros(24)
    w.buffers = {"views": [flat[:16].view(4, 4), flat[16:]], "again": flat}  # one storage, counted once
    w.step = torch.zeros(())  # a scalar: not parameter-sized
    w.params = params  # the parameters and their gradients are not extra
    w.grads = [p.grad for p in params]
    assert probes.held_bytes(w, params) == 24 * 4
    opt.step()  # AdamW's moments: two more parameter-sized tensors each
    assert probes.held_bytes(w, params) == 24 * 4 + 2 * 24 * 4


def test_every_contender_really_steps_under_the_stand_in_passes():
    """No optimizer mistakes the preset gradients for a skipped step: every parameter moves."""
    import bench.peers
    from flatmin_kernels.bench.machine import native_backends

    backends = [b for b, why in native_backends(torch.device("cpu")).items() if why is None]
    field = C.torch_adamw() + [c for b in backends for c in C.ours(b)] + bench.peers.contenders()
    presets = param_lists.materialize(TINY, torch.float32, "cpu", seed=1, scale=1e-3)
    for c in field:
        if c.unavailable or not c.in_quick:
            continue
        setup = steps_suite.Setup(c, TINY, torch.float32, "cpu", presets, torch.zeros(()))
        before = [p.detach().clone() for p in setup.params]
        setup.iteration(WallClock())
        assert all(not torch.equal(a, b) for a, b in zip(before, setup.params)), c.name
        assert setup.passes == c.passes, c.name


def test_a_cohorts_optimizers_are_freed_before_the_next_cohort_is_built():
    """Cohorts exist so that the field fits in memory: nothing of one may outlive it."""
    import dataclasses
    import weakref

    anchor, foreach, loop = C.torch_adamw()
    built = []

    def recording(contender):
        def build(params):
            opt = contender.build(params)
            built.append((contender.name, weakref.ref(opt)))
            return opt
        return dataclasses.replace(contender, build=build)

    alive_at_build = []
    loop_recorded = recording(loop)

    def build_loop(params):  # the last cohort: every earlier optimizer must be gone by now
        alive_at_build.append([name for name, ref in built if ref() is not None])
        return loop_recorded.build(params)

    field = [recording(anchor), recording(foreach), dataclasses.replace(loop, build=build_loop)]
    out = steps_suite.run_list(TINY, torch.float32, "cpu", field, clock=WallClock(), reps=1, warmup=1,
                               min_sample_s=0.0, slow_s=10.0, budget=TWO_ADAMW, progress=lambda *a: None)
    assert out["cohorts"] == 2
    assert alive_at_build == [[anchor.name]]  # the second cohort's own anchor, built just before
    assert [name for name, ref in built if ref() is not None] == []
