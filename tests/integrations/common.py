"""What the trainer tests share: the data, the optimizers under test and the comparison."""
import torch

import flatmin_kernels as fk

STEPS = 3
X = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
Y = torch.randn(8, 1, generator=torch.Generator().manual_seed(2))

OPTIMIZERS = {
    "SAM": lambda p: fk.SAM(p, torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9, backend="torch"),
    "GAM": lambda p: fk.GAM(p, torch.optim.SGD, lr=0.1, backend="torch"),
    "NSO": lambda p: fk.NSO(p, torch.optim.SGD, sigma=0.05, seed=0, lr=0.1, backend="torch"),
}
# Same batches, same passes in the same order: bit-exact. Against one batch where the trainer
# summed micro-batches: equal up to the last bits.
EXACT = dict(rtol=0, atol=0)
FULL_BATCH = dict(rtol=1e-5, atol=1e-6)


def assert_same_weights(a, b, **tol):
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, msg=lambda m: f"{name}: {m}", **tol)
