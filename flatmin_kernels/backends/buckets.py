"""Grouping an optimizer's tensors into buckets: one op call per bucket.

A bucket is a set of positions whose tensors share a device and, list by list, a dtype,
so a backend op can treat the whole bucket as one launch.
"""
from __future__ import annotations

from typing import Callable, Hashable, Sequence

import torch


def _dtype_key(tensor_lists, i):
    return tuple(None if ts is None or ts[i] is None else ts[i].dtype for ts in tensor_lists)


def bucket_indices(
    tensor_lists: Sequence[Sequence[torch.Tensor] | None],
    extra_key: Callable[[int], Hashable] | None = None,
) -> dict:
    """Map (device, dtypes of each list[, extra]) -> positions, keeping the original order.

    ``tensor_lists[0]`` decides the device; a list may be ``None`` (absent for this call).
    ``extra_key(i)`` splits buckets further (for example by a per-tensor flag).
    """
    first = tensor_lists[0]
    buckets: dict = {}
    for i, t in enumerate(first):
        key = (t.device, _dtype_key(tensor_lists, i))
        if extra_key is not None:
            key = key + (extra_key(i),)
        buckets.setdefault(key, []).append(i)
    return buckets


def take(tensors, indices):
    """The sub-list of ``tensors`` at ``indices`` (``None`` stays ``None``)."""
    if tensors is None:
        return None
    return [tensors[i] for i in indices]
