"""The torch reference backend against independent oracles (tests/oracles.py and plain formulas)."""
import math

import pytest
import torch

from flatmin_kernels.backends import torch_backend as ref

from .. import oracles
from flatmin_kernels.backends.contract import InvNorm, Ratio

from .op_cases import build_table, clone_list, gc_flags, make_list, offsets_of

# Random123's known-answer vectors for Philox4x32-10: (counter, key, output).
PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("counter,key,expected", PHILOX_KAT)
def test_philox_known_answers(counter, key, expected):
    assert tuple(oracles.philox4x32_10(counter, key)) == expected
    seed = key[0] | (key[1] << 32)
    j = counter[0] | (counter[1] << 32)
    if j < 2**63:
        words = ref.philox(1, seed=seed, step=counter[2], sample=counter[3], offset=j)
        assert tuple(int(w) for w in words[0]) == expected


@pytest.mark.parametrize("seed", [0, 7, 2**63 + 12345, 2**64 - 1])
def test_philox_matches_python_oracle(seed):
    offset = 2**32 - 5  # crosses the low-word boundary of the counter
    words = ref.philox(16, seed=seed, step=3, sample=2, offset=offset)
    for row, j in enumerate(range(offset, offset + 16)):
        want = oracles.philox4x32_10((j & 0xFFFFFFFF, j >> 32, 3, 2), (seed & 0xFFFFFFFF, seed >> 32))
        assert [int(w) for w in words[row]] == want


def test_seed_out_of_range_is_refused():
    with pytest.raises(ValueError, match="seed must be in"):
        ref.philox(1, seed=-1, step=0, sample=0, offset=0)


def test_normals_match_float64_oracle_and_moments():
    # offset 1001: starts in lane 1 of a Philox call, so every lane and both pairs are covered
    n = ref.normals(64, seed=99, step=5, sample=1, offset=1001)
    want = torch.tensor([oracles.noise_normal(99, 5, 1, j) for j in range(1001, 1065)], dtype=torch.float32)
    torch.testing.assert_close(n, want, atol=2e-6, rtol=1e-6)
    big = ref.normals(400_000, seed=1, step=0, sample=0, offset=0).double()
    # mean 0 (std error 1/sqrt(n) = 0.0016), variance 1 (std error sqrt(2/n) = 0.0022): 5 sigma bounds
    assert abs(big.mean().item()) < 5 / math.sqrt(4e5)
    assert abs(big.var().item() - 1) < 5 * math.sqrt(2 / 4e5)
    # the four normals of one call are uncorrelated (cos/sin of one pair, and the two pairs)
    lanes = big.reshape(-1, 4)
    corr = torch.corrcoef(lanes.T)
    assert (corr - torch.eye(4, dtype=torch.float64)).abs().max() < 5 / math.sqrt(1e5)


def test_normals_reuse_one_philox_call_for_four_elements():
    words = ref.philox(2, seed=7, step=0, sample=0, offset=10)  # calls 10 and 11 serve j = 40 .. 47
    from_words = ref.normals_from_words(words).reshape(-1)
    torch.testing.assert_close(ref.normals(8, seed=7, step=0, sample=0, offset=40), from_words)
    torch.testing.assert_close(ref.normals(3, seed=7, step=0, sample=0, offset=42), from_words[2:5])


def test_noise_depends_on_every_counter_field():
    base = ref.normals(32, seed=1, step=1, sample=0, offset=0)
    for kw in (dict(seed=2, step=1, sample=0), dict(seed=1, step=2, sample=0), dict(seed=1, step=1, sample=1)):
        assert not torch.equal(base, ref.normals(32, offset=0, **kw))
    assert torch.equal(base, ref.normals(32, seed=1, step=1, sample=0, offset=0))
    assert torch.equal(base, ref.normals(32, seed=1, step=torch.tensor([1]), sample=0, offset=0))


def test_noise_uses_global_offsets_and_base():
    params = [torch.zeros(3), torch.zeros(2, 2)]
    base = [torch.ones(3), torch.full((2, 2), 2.0)]
    table = build_table(ref, {"param": params, "base": base}, offsets=[10, 13])
    ref.noise_(table, "param", 0.5, seed=4, step=1, sample=0, base="base")
    n = ref.normals(7, seed=4, step=1, sample=0, offset=10)
    torch.testing.assert_close(params[0], 1 + 0.5 * n[:3])
    torch.testing.assert_close(params[1], 2 + 0.5 * n[3:].reshape(2, 2))


@pytest.mark.parametrize("case", ["odd", "conv", "tiny"])
def test_reductions_match_naive_loops(case):
    xs = make_list(case)
    ws = make_list(case, seed=1)
    table = build_table(ref, {"param": ws, "x": xs}, gc=gc_flags(xs))
    out = torch.zeros(4)
    ref.sumsq(table, "x", weights="param", centralize=True, out=out, index=0)
    want = sum(float(((oracles.centralized(x.double(), "gc") * w.double().abs()) ** 2).sum()) for x, w in zip(xs, ws))
    torch.testing.assert_close(out[0].double(), torch.tensor(want, dtype=torch.float64), rtol=1e-5, atol=1e-6)
    ref.dot(table, "x", "param", out=out, index=1)
    ref.dot(table, "x", "param", out=out, index=1, accumulate=True)
    want = 2 * sum(float((x.double() * w.double()).sum()) for x, w in zip(xs, ws))
    torch.testing.assert_close(out[1].double(), torch.tensor(want, dtype=torch.float64), rtol=1e-5, atol=1e-5)


def test_inv_norm_epilogue_and_found_inf_accumulation():
    xs = [torch.tensor([3.0, 4.0])]
    table = build_table(ref, {"param": xs})
    out = torch.zeros(3)
    ref.sumsq(table, "param", out=out, index=0, epilogue=InvNorm(eps=1e-12, inv=1, inf=2))
    torch.testing.assert_close(out, torch.tensor([25.0, 0.2, 0.0]))
    bad = build_table(ref, {"param": [torch.tensor([float("inf")])]})
    ref.sumsq(bad, "param", out=out, index=0, epilogue=InvNorm(eps=1e-12, inv=1, inf=2, inf_accumulate=True))
    assert out[2] == 1.0
    ref.sumsq(table, "param", out=out, index=0, epilogue=InvNorm(eps=1e-12, inv=1, inf=2, inf_accumulate=True))
    assert out[2] == 1.0, "accumulated: a later finite norm does not clear the flag"
    ref.sumsq(table, "param", out=out, index=0, epilogue=InvNorm(eps=1e-12, inv=1, inf=2))
    assert out[2] == 0.0, "set: the flag is the new norm's"


def test_axpby_reductions_and_ratio_epilogue():
    y, x, z = [torch.tensor([1.0, 2.0])], [torch.tensor([0.5, -1.0])], [torch.tensor([2.0, 1.0])]
    table = build_table(ref, {"param": y, "x": x, "z": z})
    out = torch.zeros(4)
    ref.axpby_(table, "param", "x", 2.0, 4.0, reduce="y", z="z", out=out, index=0,
               epilogue=Ratio(eps=0.0, gamma=0.5, coef=2, inf=3))
    new = torch.tensor([4.0, 0.0])  # 2 * y + 4 * x
    assert torch.equal(y[0], new)
    torch.testing.assert_close(out, torch.tensor([16.0, 8.0, 1 + 0.5 * 8.0 / 16.0, 0.0]))
    before = y[0].clone()
    ref.axpby_(table, "param", "x", 1.0, 1.0, reduce="x", z="z", weights="param", out=out, index=0)
    torch.testing.assert_close(out[0], ((before.abs() * (x[0] - z[0])) ** 2).sum())  # inputs as read before the write


def test_centralize_matches_oracle_and_zeroes_row_means():
    xs = make_list("conv")
    got = clone_list(xs)
    ref.centralize_(build_table(ref, {"param": got}, gc=gc_flags(xs)), "param")
    for g, x in zip(got, xs):
        torch.testing.assert_close(g, oracles.centralized(x, "gc"))
        if x.dim() > 1:
            assert g.reshape(g.shape[0], -1).mean(1).abs().max() < 1e-6


def test_perturb_formula_with_backup_minus_adaptive_and_gc():
    params, dirs, minus = make_list("conv"), make_list("conv", seed=1), make_list("conv", seed=2)
    saved = [torch.empty_like(p) for p in params]
    copied = [torch.empty_like(p) for p in params]
    got = clone_list(params)
    table = build_table(ref, {"param": got, "d": dirs, "m": minus, "s": saved, "c": copied}, gc=gc_flags(params))
    ref.perturb_(table, "param", "d", (0.5, torch.tensor([0.6])), minus="m", save_to="s", copy_d_to="c",
                 adaptive=True, centralize=True)
    for g, p, d, m, s, c in zip(got, params, dirs, minus, saved, copied):
        assert torch.equal(s, p) and torch.equal(c, d)
        torch.testing.assert_close(g, p + 0.3 * oracles.centralized(d - m, "gc") * p * p)


def test_skipped_sgd_step_restores_from_the_backup_and_keeps_buffers():
    params = [torch.randn(4, 3)]
    table = build_table(ref, {"param": params, "g": [torch.full((4, 3), float("nan"))],
                              "buf": [torch.randn(4, 3)], "backup": [torch.randn(4, 3)]})
    b0, k0 = clone_list(table.get("buf")), clone_list(table.get("backup"))
    ref.step_sgd_(table, "param", "g", "buf", lr=0.1, weight_decay=0.1, momentum=0.9, dampening=0, nesterov=False,
                  maximize=False, backup="backup", found_inf=torch.ones(1))
    assert torch.equal(params[0], k0[0]) and torch.equal(table.get("buf")[0], b0[0])


def test_gam_direction_is_the_combination_of_two_lists():
    params, g, g2 = [torch.zeros(3)], [torch.tensor([1.0, 2.0, 3.0])], [torch.tensor([1.0, 0.0, -1.0])]
    table = build_table(ref, {"param": params, "g": g, "g2": g2})
    ref.step_sgd_(table, "param", "g", None, lr=1.0, weight_decay=0.0, momentum=0.0, dampening=0.0, nesterov=False,
                  maximize=False, g2="g2", g_coef=(2.0, torch.tensor([0.5])), g2_coef=-3.0)
    torch.testing.assert_close(params[0], -(1.0 * g[0] - 3.0 * g2[0]))


def test_axpby_ignores_y_when_a_is_zero():
    ys = [torch.full((5,), float("nan"))]
    table = build_table(ref, {"param": ys, "x": [torch.ones(5)]})
    ref.axpby_(table, "param", "x", 0, 2.0)
    assert torch.equal(ys[0], torch.full((5,), 2.0))
    ref.axpby_(table, "param", "x", torch.tensor([0.5]), -1.0)
    assert torch.equal(ys[0], torch.zeros(5))


def test_low_precision_is_computed_in_fp32_and_rounded_once():
    p = [torch.tensor([1.0, 256.0], dtype=torch.bfloat16)]
    d = [torch.tensor([1e-3, 1.0], dtype=torch.bfloat16)]
    ref.perturb_(build_table(ref, {"param": p, "d": d}), "param", "d", 0.75)
    want = (torch.tensor([1.0, 256.0]) + 0.75 * d[0].float()).to(torch.bfloat16)
    assert torch.equal(p[0], want)


def test_fp64_is_computed_in_fp64():
    p = [torch.tensor([1.0], dtype=torch.float64)]
    d = [torch.tensor([1e-12], dtype=torch.float64)]
    ref.perturb_(build_table(ref, {"param": p, "d": d}), "param", "d", 1.0)
    assert p[0].item() == 1.0 + 1e-12  # in fp32 the increment would vanish
