"""DTensor parameters (FSDP2, tensor parallel): what the kernels see of them, and how sums and
noise indices become global.

A plan runs the fused ops on each DTensor's local shard (``_local_tensor``, the same object at
every access, a plain tensor). Its state and the wrappers' buffers are DTensors made by
``zeros_like``, so they shard exactly like the parameter. A sum over a shard (a norm, a dot
product) is all-reduced over the mesh dimensions the tensor is sharded on (not over those it is
replicated on), so SAM's norm is the global one. NSO's noise index is the element's index in the
global tensor, so a sharded run draws the same noise as an unsharded one.
"""
from __future__ import annotations

import torch

try:  # torch.distributed is optional (some builds lack it)
    from torch.distributed.tensor import DTensor
except Exception:  # pragma: no cover
    DTensor = None


def is_dtensor(t) -> bool:
    return DTensor is not None and isinstance(t, DTensor)


def local(t: torch.Tensor) -> torch.Tensor:
    """The plain tensor the kernels work on: a DTensor's local shard, or the tensor itself."""
    return t._local_tensor if is_dtensor(t) else t


def reduce_groups(p, index: int) -> tuple:
    """The process groups over which the local sums of DTensor ``p`` add up to the global sum
    (one per mesh dimension it is sharded on); () for a plain tensor."""
    if not is_dtensor(p):
        return ()
    groups = []
    for mesh_dim, placement in enumerate(p.placements):
        if placement.is_partial():
            raise ValueError(f"parameter {index} is a DTensor with a Partial placement ({p.placements}); "
                             f"flatmin needs its values: redistribute it to Shard or Replicate first")
        if placement.is_shard():
            groups.append(p.device_mesh.get_group(mesh_dim))
    return tuple(groups)


def check_whole_rows(p, index: int) -> None:
    """GC needs every row (dim 0) of a tensor on one rank."""
    if is_dtensor(p) and any(pl.is_shard() and pl.dim != 0 for pl in p.placements):
        raise ValueError(f"gradient centralization needs whole rows on each rank, but parameter {index} is "
                         f"sharded on a dimension other than 0 ({p.placements}); set centralize=None for it")


def local_offset(p, offset: int, index: int) -> int:
    """The global element index of the first element of ``p``'s local shard, for a tensor whose
    first global element has index ``offset`` (NSO's noise)."""
    if not is_dtensor(p):
        return offset
    if any(pl.is_shard() and pl.dim != 0 for pl in p.placements) or not p.is_contiguous():
        raise ValueError(f"NSO's noise is indexed by the global element: parameter {index} ({p.placements}) must "
                         f"be a contiguous tensor sharded on dim 0 only (FSDP2's layout), so that its shard is one "
                         f"run of global elements")
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    _, global_offset = compute_local_shape_and_global_offset(p.shape, p.device_mesh, p.placements)
    if p.dim() == 0:
        return offset
    return offset + global_offset[0] * (p.numel() // p.shape[0] if p.shape[0] else 0)


def all_reduce_(tensor: torch.Tensor, groups) -> None:
    """Sum ``tensor`` in place over each process group (no host synchronisation on CUDA)."""
    import torch.distributed as dist

    for group in groups:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
