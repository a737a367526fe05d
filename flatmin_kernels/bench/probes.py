"""Measurements of one contender besides its time: the memory it holds, its peak allocation
during a step (CUDA), and the device kernels it launches per step (CUDA)."""
from __future__ import annotations

import types

import torch

_OPAQUE = (types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType, type)


def held_bytes(optimizer, params) -> int:
    """Bytes of the floating-point tensors (more than one element) the optimizer holds beyond the
    parameters and their gradients: found by walking its attributes and state (dicts, lists,
    nested objects such as a base optimizer), each storage counted once."""
    skip = set()
    for p in params:
        skip.add(p.untyped_storage().data_ptr())
        if p.grad is not None:
            skip.add(p.grad.untyped_storage().data_ptr())
    storages, seen, todo = {}, set(), [optimizer]
    while todo:
        obj = todo.pop()
        if id(obj) in seen or obj is None or isinstance(obj, (str, bytes, int, float, bool, _OPAQUE)):
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            if obj.is_floating_point() and obj.numel() > 1:
                storage = obj.untyped_storage()
                if storage.data_ptr() not in skip:
                    storages[storage.data_ptr()] = storage.nbytes()
        elif isinstance(obj, dict):
            todo.extend(obj.keys())
            todo.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            todo.extend(obj)
        elif hasattr(obj, "__dict__"):
            todo.extend(vars(obj).values())
    return sum(storages.values())


def peak_step_bytes(run_iteration, device) -> int:
    """Peak CUDA memory allocated during one iteration above what was allocated before it
    (it includes the gradients the stand-in passes hand out, as a real backward would)."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    run_iteration()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def _descendants(event):
    todo = [event]
    while todo:
        e = todo.pop()
        yield e
        todo.extend(e.cpu_children)


def device_launches(run_iteration, pass_label) -> int:
    """Device operations (kernels, memcpy, memset) of one iteration, profiled, minus those
    launched inside the ranges named ``pass_label`` (the stand-in passes)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        run_iteration()
        torch.cuda.synchronize()
    events = prof.events()
    total = sum(1 for e in events if e.device_type == DeviceType.CUDA)
    in_passes = sum(len(d.kernels) for e in events if e.name == pass_label and e.device_type == DeviceType.CPU
                    for d in _descendants(e))
    return total - in_passes
