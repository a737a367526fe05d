"""The torch reference backend against independent oracles (tests/oracles.py and plain formulas)."""
import math

import pytest
import torch

from flatmin_kernels.backends import torch_backend as ref

from .. import oracles
from .op_cases import clone_list, gc_flags, make_list

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
    n = ref.normals(64, seed=99, step=5, sample=1, offset=1000)
    want = torch.tensor([oracles.noise_normal(99, 5, 1, j) for j in range(1000, 1064)], dtype=torch.float32)
    torch.testing.assert_close(n, want, atol=2e-6, rtol=1e-6)
    big = ref.normals(400_000, seed=1, step=0, sample=0, offset=0).double()
    # mean 0 (std error 1/sqrt(n) = 0.0016), variance 1 (std error sqrt(2/n) = 0.0022): 5 sigma bounds
    assert abs(big.mean().item()) < 5 / math.sqrt(4e5)
    assert abs(big.var().item() - 1) < 5 * math.sqrt(2 / 4e5)


def test_noise_depends_on_every_counter_field():
    base = ref.normals(32, seed=1, step=1, sample=0, offset=0)
    for kw in (dict(seed=2, step=1, sample=0), dict(seed=1, step=2, sample=0), dict(seed=1, step=1, sample=1)):
        assert not torch.equal(base, ref.normals(32, offset=0, **kw))
    assert torch.equal(base, ref.normals(32, seed=1, step=1, sample=0, offset=0))


def test_noise_uses_global_offsets_and_base():
    params = [torch.zeros(3), torch.zeros(2, 2)]
    base = [torch.ones(3), torch.full((2, 2), 2.0)]
    ref.noise_(params, 0.5, seed=4, step=1, sample=0, offsets=[10, 13], base=base)
    n = ref.normals(7, seed=4, step=1, sample=0, offset=10)
    torch.testing.assert_close(params[0], 1 + 0.5 * n[:3])
    torch.testing.assert_close(params[1], 2 + 0.5 * n[3:].reshape(2, 2))


@pytest.mark.parametrize("case", ["odd", "conv", "tiny"])
def test_sumsq_and_dot_match_naive_loops(case):
    xs = make_list(case)
    ws = make_list(case, seed=1)
    flags = gc_flags(xs)
    got = ref.sumsq(xs, weights=ws, centralize=flags)
    want = [float(((oracles.centralized(x.double(), "gc") * w.double().abs()) ** 2).sum()) for x, w in zip(xs, ws)]
    torch.testing.assert_close(got.double(), torch.tensor(want, dtype=torch.float64), rtol=1e-5, atol=1e-6)
    d = ref.dot(xs, ws)
    torch.testing.assert_close(d.double(), torch.tensor([float((x.double() * w.double()).sum()) for x, w in zip(xs, ws)], dtype=torch.float64),
                               rtol=1e-5, atol=1e-5)


def test_centralize_matches_oracle_and_zeroes_row_means():
    xs = make_list("conv")
    got = clone_list(xs)
    ref.centralize_(got, gc_flags(xs))
    for g, x in zip(got, xs):
        torch.testing.assert_close(g, oracles.centralized(x, "gc"))
        if x.dim() > 1:
            assert g.reshape(g.shape[0], -1).mean(1).abs().max() < 1e-6


def test_perturb_formula_with_backup_adaptive_and_gc():
    params, dirs = make_list("conv"), make_list("conv", seed=1)
    saved = [torch.empty_like(p) for p in params]
    got = clone_list(params)
    ref.perturb_(got, dirs, torch.tensor(0.3), save_to=saved, adaptive=True, centralize=gc_flags(params))
    for g, p, d, s in zip(got, params, dirs, saved):
        assert torch.equal(s, p)
        torch.testing.assert_close(g, p + 0.3 * oracles.centralized(d, "gc") * p * p)


def test_found_inf_writes_nothing_even_with_nan_inputs():
    params = [torch.randn(4, 3)]
    grads = [torch.full((4, 3), float("nan"))]
    bufs = [torch.randn(4, 3)]
    p0, b0 = clone_list(params), clone_list(bufs)
    ref.step_sgd_(params, grads, bufs, lr=0.1, weight_decay=0.1, momentum=0.9, dampening=0, nesterov=False,
                  maximize=False, found_inf=torch.ones(()))
    assert torch.equal(params[0], p0[0]) and torch.equal(bufs[0], b0[0])


def test_axpby_ignores_y_when_a_is_zero():
    ys = [torch.full((5,), float("nan"))]
    ref.axpby_(ys, [torch.ones(5)], 0, 2.0)
    assert torch.equal(ys[0], torch.full((5,), 2.0))
    ref.axpby_(ys, [torch.ones(5)], torch.tensor(0.5), -1.0)
    assert torch.equal(ys[0], torch.zeros(5))


def test_low_precision_is_computed_in_fp32_and_rounded_once():
    p = [torch.tensor([1.0, 256.0], dtype=torch.bfloat16)]
    d = [torch.tensor([1e-3, 1.0], dtype=torch.bfloat16)]
    ref.perturb_(p, d, 0.75)
    want = (torch.tensor([1.0, 256.0]) + 0.75 * d[0].float()).to(torch.bfloat16)
    assert torch.equal(p[0], want)
