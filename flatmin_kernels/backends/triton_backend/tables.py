"""Device-resident work tables for one bucket, cached until a tensor's storage changes.

A kernel sees each tensor list through one *base* tensor (the list's first non-empty tensor,
passed as the pointer argument, which gives the list its dtype) plus a table of int64
element offsets ``(t.data_ptr() - base.data_ptr()) // itemsize``: all tensors of a list share
a dtype, so every address is a whole number of elements away from the base. This works the
same compiled and in Triton's interpreter, unlike casting raw addresses to pointers.

The work is split into items (tensor, first element, end element, row length, GC flag) of
about CHUNK elements each; a gradient-centralized tensor is split at row boundaries so one
program owns whole rows (row sums, then centered values, in the same pass).

Tables are one int64 tensor per layout, copied to the device once and cached by everything
they depend on: sizes, GC flags, dtypes and every tensor's ``data_ptr()``. A gradient
re-allocated by ``zero_grad(set_to_none=True)`` changes its pointer and so gets a new table.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import triton

from .common import BLOCK, CHUNK

_CACHE: "OrderedDict[tuple, Layout]" = OrderedDict()
CACHE_SIZE = 256  # layouts kept; a training loop uses a handful per optimizer


@dataclass(frozen=True)
class Layout:
    table: torch.Tensor  # every row below, packed into one device tensor
    n_tensors: int
    n_items: int
    bases: tuple  # per list: index of the tensor passed as its pointer argument
    rb: int  # rows per tile
    cb: int  # columns per tile
    has_gc: bool  # some item is centralized

    @property
    def items(self) -> torch.Tensor:
        """(5 * n_items,): tensor, start, end, row, gc -- each a row of n_items."""
        return self.table[: 5 * self.n_items]

    def offsets(self, k: int) -> torch.Tensor:
        """(n_tensors,) element offsets of list k from its base tensor."""
        at = 5 * self.n_items + k * self.n_tensors
        return self.table[at: at + self.n_tensors]

    @property
    def first_item(self) -> torch.Tensor:
        """(n_tensors + 1,): tensor i owns items first_item[i] .. first_item[i+1] - 1."""
        at = 5 * self.n_items + len(self.bases) * self.n_tensors
        return self.table[at: at + self.n_tensors + 1]

    @property
    def extra(self) -> torch.Tensor:
        """(n_tensors,) per-tensor integers the caller asked to carry (e.g. noise offsets)."""
        at = 5 * self.n_items + len(self.bases) * self.n_tensors + self.n_tensors + 1
        return self.table[at: at + self.n_tensors]

    def base(self, k: int, tensors):
        return tensors[self.bases[k]]


def _row_length(t: torch.Tensor) -> int:
    return t.numel() // t.shape[0] if t.dim() > 0 and t.shape[0] > 0 else t.numel()


def _dense(t: torch.Tensor) -> bool:
    if t.is_contiguous():
        return True
    if t.dim() == 4:
        return t.is_contiguous(memory_format=torch.channels_last)
    if t.dim() == 5:
        return t.is_contiguous(memory_format=torch.channels_last_3d)
    return False


def _check_dense(lists, names):
    """Every tensor must be one dense block, laid out alike in every list (contiguous, or
    channels_last, whose dim 0 is still outermost so GC rows stay contiguous)."""
    first = lists[0]
    for k, ts in enumerate(lists):
        for i, t in enumerate(ts):
            if t.numel() == 0 or (t.is_contiguous() and first[i].is_contiguous()):
                continue
            if not _dense(t) or t.stride() != first[i].stride():
                raise ValueError(
                    f"the triton backend needs dense tensors laid out alike in every list; "
                    f"tensor {i} of {names[k]} has shape {tuple(t.shape)} and strides {t.stride()}"
                    f" (strides {first[i].stride()} in {names[0]})"
                )


def layout(lists, *, names=None, centralize=None, only_flagged=False, extra=None) -> Layout:
    """The cached work layout of ``lists`` (tensor lists of equal length, one bucket).

    centralize: per-tensor GC flags or None; only_flagged: make items only for flagged
    tensors (``centralize_``); extra: per-tensor python ints carried in the table.
    """
    names = names or [f"list {k}" for k in range(len(lists))]
    _check_dense(lists, names)
    first = lists[0]
    flags = tuple(bool(f) for f in centralize) if centralize is not None else (False,) * len(first)
    key = (
        first[0].device if first else None,
        tuple(t.shape if f else t.numel() for t, f in zip(first, flags)),
        flags,
        only_flagged,
        tuple(extra) if extra is not None else None,
        tuple((ts[0].dtype if ts else None, tuple(t.data_ptr() for t in ts)) for ts in lists),
    )
    hit = _CACHE.get(key)
    if hit is not None:
        _CACHE.move_to_end(key)
        return hit
    built = _build(lists, flags, only_flagged, extra)
    _CACHE[key] = built
    if len(_CACHE) > CACHE_SIZE:
        _CACHE.popitem(last=False)
    return built


def cache_clear():
    _CACHE.clear()


def _tile_shape(first, flags):
    """(RB, CB). A tile is at most BLOCK elements, fewer when every tensor is smaller (many
    tiny tensors then do not pay for mostly-masked lanes); CB covers the longest centralized
    row (up to the tile) so short rows share a tile."""
    block = max(16, min(BLOCK, triton.next_power_of_2(max((t.numel() for t in first), default=1))))
    rows = [_row_length(t) for t, f in zip(first, flags) if f and t.numel()]
    cb = max(1, min(block, triton.next_power_of_2(max(rows)))) if rows else block
    return block // cb, cb


def _build(lists, flags, only_flagged, extra) -> Layout:
    first = lists[0]
    n = len(first)
    rb, cb = _tile_shape(first, flags)
    item_t, item_start, item_end, item_row, item_gc = [], [], [], [], []
    first_item = [0]
    for i, t in enumerate(first):
        numel = t.numel()
        if numel and (flags[i] or not only_flagged):
            if flags[i]:
                row = _row_length(t)
                rows_per_item = max(rb, (CHUNK // row) // rb * rb) if row <= CHUNK else 1
                step = rows_per_item * row
            else:
                row, step = cb, CHUNK
            for start in range(0, numel, step):
                item_t.append(i)
                item_start.append(start)
                item_end.append(min(start + step, numel))
                item_row.append(row)
                item_gc.append(int(flags[i]))
        first_item.append(len(item_t))

    bases, offsets = [], []
    for ts in lists:
        nonempty = [i for i, t in enumerate(ts) if t.numel()]
        b = nonempty[0] if nonempty else 0
        bases.append(b)
        if nonempty:
            size, ptr0 = ts[b].element_size(), ts[b].data_ptr()
            for t in ts:
                delta = t.data_ptr() - ptr0 if t.numel() else 0
                assert delta % size == 0, "tensors of one dtype sit a whole number of elements apart"
                offsets.append(delta // size)
        else:
            offsets.extend([0] * n)
    rows = item_t + item_start + item_end + item_row + item_gc + offsets + first_item
    rows += list(extra) if extra is not None else [0] * n
    host = torch.tensor(rows, dtype=torch.int64)
    device = first[0].device if first else torch.device("cpu")
    if device.type == "cuda":
        host = host.pin_memory()
    table = host.to(device, non_blocking=True)
    return Layout(table, n, len(item_t), tuple(bases), rb, cb, any(item_gc))
