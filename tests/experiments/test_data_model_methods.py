"""The digits split, the seeded MLP and the method registry."""
import pytest
import torch

from flatmin_kernels.experiments.digits import load_digits_split
from flatmin_kernels.experiments.methods import METHODS, resolve_methods
from flatmin_kernels.experiments.mlp import make_mlp


def test_digits_split_is_fixed_stratified_and_standardised():
    a, b = load_digits_split(0), load_digits_split(0)
    assert (len(a.y_train), len(a.y_test)) == (1347, 450)
    assert a.x_train.shape == (1347, 64) and a.x_train.dtype == torch.float32
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.y_test, load_digits_split(1).y_test)
    from sklearn.datasets import load_digits

    full = torch.bincount(torch.tensor(load_digits().target), minlength=10)
    counts = torch.bincount(a.y_test, minlength=10)
    assert ((counts - 0.25 * full).abs() <= 1).all()  # stratified: each class keeps its share
    std = a.x_train.std(0)
    varying = std > 0
    assert torch.allclose(a.x_train.mean(0), torch.zeros(64), atol=1e-5)
    assert torch.allclose(std[varying], torch.ones(int(varying.sum())), atol=1e-4)
    assert int((~varying).sum()) >= 1  # constant border pixels exist and are only centred, not divided by 0
    assert torch.isfinite(a.x_test).all()


def test_mlp_same_seed_same_weights_and_global_rng_untouched():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    m1, m2 = make_mlp(0), make_mlp(0)
    assert torch.equal(torch.rand(1), before)
    assert [p.shape for p in m1.parameters()] == [(128, 64), (128,), (128, 128), (128,), (10, 128), (10,)]
    for p, q in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p, q)
    assert not torch.equal(next(make_mlp(1).parameters()), next(m1.parameters()))


def test_resolve_methods():
    assert [m.name for m in resolve_methods("sam, AdamW")] == ["sam", "adamw"]
    assert list(METHODS) == ["adamw", "adamw+gc", "sam", "asam", "gam", "nso"]
    with pytest.raises(ValueError, match=r"unknown method 'sgd'; choose from adamw, adamw\+gc, sam, asam, gam, nso"):
        resolve_methods("adamw,sgd")
    with pytest.raises(ValueError, match="no method named"):
        resolve_methods(" , ")
    with pytest.raises(ValueError, match="method named twice"):
        resolve_methods("sam,sam")
