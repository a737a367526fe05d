"""scikit-learn's handwritten digits (1,797 8×8 images, shipped with the library: no download)."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class DigitsSplit:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    def to(self, device) -> "DigitsSplit":
        return DigitsSplit(*(t.to(device) for t in (self.x_train, self.y_train, self.x_test, self.y_test)))


def load_digits_split(seed: int = 0, test_fraction: float = 0.25, device="cpu") -> DigitsSplit:
    """A fixed, stratified train/test split, features standardised with the training statistics.

    Pixels that are constant over the training set (the image borders) are only centred.
    """
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as exc:  # an optional dependency: say how to get it
        raise ImportError("the digits experiments need scikit-learn: pip install 'flatmin_kernels[demo]'") from exc
    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.data, digits.target, test_size=test_fraction, random_state=seed, stratify=digits.target)
    x_train = torch.tensor(x_train, dtype=torch.float32)
    x_test = torch.tensor(x_test, dtype=torch.float32)
    mean = x_train.mean(0)
    std = x_train.std(0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return DigitsSplit(
        (x_train - mean) / std, torch.tensor(y_train, dtype=torch.long),
        (x_test - mean) / std, torch.tensor(y_test, dtype=torch.long),
    ).to(device)
