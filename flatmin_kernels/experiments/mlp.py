"""The MLP every method trains: the same architecture and the same initial weights from a seed."""
from __future__ import annotations

import torch
from torch import nn


def make_mlp(seed: int, sizes=(64, 128, 128, 10), device="cpu") -> nn.Sequential:
    """Linear layers of ``sizes`` with ReLU between them, initialised from ``seed``.

    The global RNG is forked, so building a model does not disturb the caller's random stream.
    """
    layers = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            if i:
                layers.append(nn.ReLU())
            layers.append(nn.Linear(n_in, n_out))
        model = nn.Sequential(*layers)
    return model.to(device)
