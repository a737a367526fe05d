"""Contract-v2 tables of the Triton backend: one bucket's work, built once, on the device.

A :class:`Table` holds what never changes while the bucket's shapes hold -- the work items,
the tile size, the noise offsets, the layout of permuted tensors -- in one int64 device tensor
uploaded at build, and one :class:`Slot` per bound tensor list. A kernel sees a slot through
one *base* tensor (the list's first non-empty tensor, passed as the pointer argument, which
gives the slot its dtype) plus a device vector of int64 element offsets
``(t.data_ptr() - base.data_ptr()) // itemsize``: all tensors of a slot share a dtype, so
every address is a whole number of elements away from the base. This works the same compiled
and in Triton's interpreter, unlike casting raw addresses to pointers.

Work items (tensor, first element, end element, GC row length, class; see ``common.py``):

* ``plain``: every tensor cut into chunks of CHUNK elements;
* ``centralized`` (ops with ``centralize=True``): first the gradient-centralized tensors cut
  at row boundaries, each item in the class of its row length (RB x CB tiles with CB the row
  length's next power of two, or the long-row class), then the plain items of the others;
  ``gc_only`` is its first part (``centralize_``).

``refresh`` re-reads the data pointers of the ``param`` slot and of the grad slots (one pass
over the list); a list whose storage moved is checked in full, and its offsets are uploaded
again only if they changed (a new base alone costs nothing). Ops do no per-tensor work.

On CUDA every launch and upload runs under the table's device and on torch's current stream;
when that stream is not the one the table was last used on, it first waits for that one and
marks the table's device tensors as used by it (``record_stream``), so a table built on one
stream is safe on another.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import triton

from ..contract import StaleTable
from .common import ALIGN, CHUNK, INTERPRET, LONG, MAX_BLOCK, PLAIN, device_guard, num_warps

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_data_ptr = torch.Tensor.data_ptr
_grad = operator.attrgetter("grad")
MAX_DIMS = 5  # dims of a permuted (non-contiguous dense) tensor the noise can index


def supports(device) -> bool:
    """CUDA tensors when compiling; CPU tensors only under the interpreter (which cannot
    follow the kernels' offset tables into CUDA memory)."""
    device = torch.device(device)
    if INTERPRET:
        return device.type == "cpu"
    return device.type == "cuda" and torch.cuda.is_available()


def _refusal(t: torch.Tensor, gc: bool):
    """Why a table cannot take ``t`` (None if it can)."""
    if type(t) not in (torch.Tensor, torch.nn.Parameter):
        return f"a {type(t).__name__} (tensor subclasses are not served)"
    if t.layout != torch.strided or t.dtype not in DTYPES:
        return f"{t.dtype} ({t.layout}); served: {', '.join(map(str, DTYPES))}, strided"
    if not supports(t.device):
        return f"on {t.device}, where this triton backend does not run"
    if not _dense(t):
        return f"not dense (shape {tuple(t.shape)}, strides {t.stride()})"
    if not t.is_contiguous() and len(_packed_dims(t)[0]) > MAX_DIMS:
        return f"permuted with more than {MAX_DIMS} dims of size > 1"
    if gc:
        if t.dim() == 0:
            return "0-d (GC needs a dim 0)"
        if t.numel() and t.shape[0] > 1 and t.stride(0) != t.numel() // t.shape[0]:
            return f"dim 0 is not outermost in memory (strides {t.stride()}), so GC rows are not contiguous"
    return None


def serves(tensor: torch.Tensor, gc: bool = False) -> bool:
    """fp32/bf16/fp16 plain tensors on a supported device, dense (contiguous, channels_last or
    any other permutation of up to 5 dims); with ``gc``, dim 0 outermost in memory."""
    return _refusal(tensor, gc) is None


def _dense(t: torch.Tensor) -> bool:
    """One block of memory without gaps or overlaps, in any order of the dims."""
    if t.numel() == 0:
        return True
    expected = 1
    for stride, size in sorted((s, n) for n, s in zip(t.shape, t.stride()) if n > 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _packed_dims(t: torch.Tensor):
    """(sizes, strides) of t's dims of size > 1, in the order of its shape."""
    dims = [(n, s) for n, s in zip(t.shape, t.stride()) if n > 1]
    return [n for n, _ in dims], [s for _, s in dims]


def _layout(t: torch.Tensor):
    """What tensors in one position of every slot must share: contiguous, or the same shape
    and strides (dims of size 1 aside), so that element k is the same element in all."""
    if t.is_contiguous():
        return "contiguous"
    return tuple(t.shape), tuple(_packed_dims(t)[1])


def _row_class(row: int, block: int):
    """(class, rows per item) of GC rows of length ``row`` in a table of ``block``-element tiles."""
    if row > block:
        return LONG, max(1, CHUNK // row)
    cb = triton.next_power_of_2(row)
    rb = block // cb
    return cb.bit_length(), max(rb, (CHUNK // row) // rb * rb)  # class 1 + log2(CB)


def _plain_items(i, numel):
    return [(i, s, min(s + CHUNK, numel), 0, PLAIN) for s in range(0, numel, CHUNK)]


def _row_items(i, t, block):
    """Items of whole rows of a gradient-centralized tensor, in the class of their length."""
    numel = t.numel()
    if not numel:
        return []
    row = numel // t.shape[0]
    cls, rows_per_item = _row_class(row, block)
    step = rows_per_item * row
    return [(i, s, min(s + step, numel), row, cls) for s in range(0, numel, step)]


def _fields(items):
    """Items as five consecutive rows (tensor, start, end, row, class)."""
    return [value for field in zip(*items) for value in field]


def _classes(items):
    mask = 0
    for item in items:
        mask |= 1 << item[4]
    return mask


@dataclass(frozen=True)
class Items:
    """Work items for one launch: ``table`` is (5, stride) int64 -- tensor, start, end, row,
    class -- of which the first ``count`` are launched; ``classes`` is their class bitmask."""

    table: torch.Tensor
    stride: int
    count: int
    classes: int


class Slot:
    """One bound tensor list as the kernels see it: base tensor, device offsets, alignment."""

    __slots__ = ("tensors", "ptrs", "base", "host_offsets", "offsets", "aligned")

    def __init__(self, tensors, ptrs, base, host_offsets, offsets):
        self.tensors, self.ptrs, self.base = tensors, ptrs, base
        self.host_offsets, self.offsets = host_offsets, offsets
        # Vector loads need both: a 16-element-aligned offset of every tensor from the base,
        # and a 16-byte aligned base (Triton specializes pointer arguments on that by itself).
        self.aligned = all(o % ALIGN == 0 for o in host_offsets)

    @property
    def dtype(self):
        return self.base.dtype


def _locate(tensors, ptrs, name):
    """(base tensor, element offsets) of a list of one dtype."""
    nonempty = [i for i, t in enumerate(tensors) if t.numel()]
    if not nonempty:
        return tensors[0] if tensors else None, [0] * len(tensors)
    base = tensors[nonempty[0]]
    size, ptr0 = base.element_size(), ptrs[nonempty[0]]
    offsets = []
    for i, (t, p) in enumerate(zip(tensors, ptrs)):
        delta = p - ptr0 if t.numel() else 0
        if delta % size:
            raise ValueError(f"{name}[{i}] is not a whole number of elements away from {name}[{nonempty[0]}]")
        offsets.append(delta // size)
    return base, offsets


class Table:
    """One bucket of tensors prepared once (see :mod:`flatmin_kernels.backends.contract`)."""

    def __init__(self, tensors, *, gc_rows=None, offsets=None):
        tensors = list(tensors)
        n = len(tensors)
        devices = {t.device for t in tensors}
        if len(devices) > 1:
            raise ValueError(f"a table's tensors must share one device, got {sorted(map(str, devices))}")
        self.device = devices.pop() if devices else torch.device("cpu")
        self.gc_rows = [bool(f) for f in gc_rows] if gc_rows is not None else [False] * n
        if len(self.gc_rows) != n:
            raise ValueError(f"gc_rows has {len(self.gc_rows)} flags for {n} tensors")
        for i, (t, gc) in enumerate(zip(tensors, self.gc_rows)):
            why = _refusal(t, gc)
            if why is not None:
                raise ValueError(f"the triton backend does not serve tensor {i}: it is {why}")
        dtypes = {t.dtype for t in tensors}
        if len(dtypes) > 1:
            raise ValueError(f"a table's tensors must share one dtype, got {sorted(map(str, dtypes))}")
        self.offsets = [int(o) for o in offsets] if offsets is not None else None
        if self.offsets is not None and len(self.offsets) != n:
            raise ValueError(f"offsets has {len(self.offsets)} entries for {n} tensors")
        self.tensors = tensors
        self.n = n
        self._shape = [(t.dtype, t.device, t.numel(), _layout(t)) for t in tensors]
        self._cuda = self.device.type == "cuda"
        self._index = self.device.index if self._cuda else None
        self._stream = None  # the CUDA stream the table was last used on
        self._stream_id = None
        self._slots = {}
        self._grad_slots = set()
        self._offset_vectors = {}  # slot name -> its device offsets, kept across rebinding
        self._build()  # no launch can be waiting for tensors that do not exist yet
        self._set_slot("param", tensors, [t.data_ptr() for t in tensors])

    # ------------------------------------------------------------------------- build

    def _build(self):
        tensors, n = self.tensors, self.n
        numels = [t.numel() for t in tensors]
        self.block = max(16, min(MAX_BLOCK, triton.next_power_of_2(max(numels, default=1))))
        self.num_warps = num_warps(self.block)
        everything = [item for i in range(n) for item in _plain_items(i, numels[i])]
        flagged = [item for i in range(n) if self.gc_rows[i] for item in _row_items(i, tensors[i], self.block)]
        rest = [item for i in range(n) if not self.gc_rows[i] for item in _plain_items(i, numels[i])]
        centralized = flagged + rest
        host = _fields(everything) + (_fields(centralized) if flagged else [])
        noise_at = len(host)
        host += self.offsets or []
        dims_at = len(host)
        permuted = [not t.is_contiguous() for t in tensors]
        self.permuted = any(permuted)
        if self.permuted:  # per tensor: flag, sizes, strides (shape order, padded in front)
            for t, flag in zip(tensors, permuted):
                sizes, strides = _packed_dims(t) if flag else ([], [])
                pad = MAX_DIMS - len(sizes)
                host += [int(flag)] + [1] * pad + sizes + [0] * pad + strides
        self._work = work = self._upload(host)

        self.plain = Items(work[: 5 * len(everything)], len(everything), len(everything), _classes(everything))
        if flagged:
            view = work[5 * len(everything): 5 * len(everything) + 5 * len(centralized)]
            self.centralized = Items(view, len(centralized), len(centralized), _classes(centralized))
            self.gc_only = Items(view, len(centralized), len(flagged), _classes(flagged))
        else:
            self.centralized = self.plain
            self.gc_only = Items(self.plain.table, self.plain.stride, 0, 0)
        self.noise_offsets = work[noise_at: noise_at + n] if self.offsets is not None else None
        # The noise starts every tile at a Philox call (4 elements); offsets that are multiples
        # of 4 keep its tiles on the chunk grid, so they stay unmasked and aligned.
        self.noise_aligned = self.offsets is not None and all(
            o % 4 == 0 for o, k in zip(self.offsets, numels) if k)
        self.dims = work[dims_at:] if self.permuted else work
        self.partials_capacity = max(self.plain.count, self.centralized.count, 1)
        self.partials = torch.empty(2 * self.partials_capacity, dtype=torch.float32, device=self.device)

    def _upload(self, values, into=None):
        """``values`` (python ints) as an int64 device tensor, copied into ``into`` if given."""
        host = torch.tensor(values if values else [0], dtype=torch.int64)
        if self._cuda:
            if self._capturing():  # a graph would replay the copy from a host buffer long gone
                raise RuntimeError("a table would be rebuilt during CUDA graph capture (its offsets uploaded); "
                                   "bind and refresh before capturing")
            host = host.pin_memory()
        if into is None:
            into = torch.empty_like(host, device=self.device)
        into.copy_(host, non_blocking=True)
        return into

    # ------------------------------------------------------------------------- slots

    def _set_slot(self, name, tensors, ptrs, located=None):
        """Point slot ``name`` at ``tensors``, uploading their offsets only if they changed (into
        the slot's own device vector, so a captured graph keeps reading the right one)."""
        base, offsets = located or _locate(tensors, ptrs, name)
        old = self._slots.get(name)
        if old is not None and old.host_offsets == offsets:
            device_offsets = old.offsets  # same offsets from a new base: nothing to upload
        else:
            with self.launching():
                device_offsets = self._upload(offsets, into=self._offset_vectors.get(name))
            self._offset_vectors[name] = device_offsets
        self._slots[name] = Slot(tensors, ptrs, base, offsets, device_offsets)

    def _check_list(self, name, tensors, error):
        if len(tensors) != self.n:
            raise error(f"{name} has {len(tensors)} tensors for {self.n}")
        dtype = None
        for i, (t, shape) in enumerate(zip(tensors, self._shape)):
            if t is None:
                raise error(f"{name}[{i}] is None (parameter {i} has no gradient)")
            if t.device != self.device or t.numel() != shape[2]:
                raise error(f"{name}[{i}] ({t.numel()} elements on {t.device}) does not match tensor {i} "
                            f"({shape[2]} elements on {self.device})")
            if t.numel() and _layout(t) != shape[3]:
                raise error(f"{name}[{i}] is laid out as {_layout(t)}, tensor {i} as {shape[3]}: "
                            f"the triton backend needs every slot laid out alike")
            if type(t) not in (torch.Tensor, torch.nn.Parameter) or t.dtype not in DTYPES:
                raise error(f"{name}[{i}] is {_refusal(t, False)}")
            if dtype is not None and t.dtype != dtype:
                raise error(f"{name} mixes dtypes {dtype} and {t.dtype} ({name}[{i}]); a slot has one dtype")
            dtype = t.dtype

    def bind(self, name, tensors):
        """Slot ``name`` reads ``tensors`` (rebinding replaces it, a grad slot included)."""
        tensors = list(tensors)
        self._check_list(name, tensors, ValueError)
        self._grad_slots.discard(name)
        self._set_slot(name, tensors, [t.data_ptr() for t in tensors])

    def bind_scalars(self, name, tensors):
        tensors = list(tensors)
        if len(tensors) != self.n:
            raise ValueError(f"{name} has {len(tensors)} tensors for {self.n}")
        for i, s in enumerate(tensors):
            if s.numel() != 1 or s.dtype != torch.float32 or s.device != self.device:
                raise ValueError(f"{name}[{i}] must be a one-element float32 tensor on {self.device}")
        self._grad_slots.discard(name)
        self._set_slot(name, tensors, [t.data_ptr() for t in tensors])

    def bind_grads(self, name="grad"):
        """Slot ``name`` reads ``tensors[i].grad``: now if every gradient is there, and at every
        ``refresh``."""
        self._grad_slots.add(name)
        self._slots.pop(name, None)
        grads = [t.grad for t in self.tensors]
        if all(g is not None for g in grads):
            self._check_list(name, grads, ValueError)
            self._set_slot(name, grads, [g.data_ptr() for g in grads])

    def refresh(self, grads=True):
        """Re-read the storage of the param slot and (with ``grads``) of the grad slots.

        A list whose pointers are unchanged is taken as it is (the pointers are the one pass);
        one whose storage moved is checked in full first. Raises StaleTable (and changes
        nothing) if the shape part no longer holds; RuntimeError if storage moved while the
        current CUDA stream is capturing a graph."""
        moved = []
        tensors = self.tensors
        ptrs = list(map(_data_ptr, tensors))
        if ptrs != self._slots["param"].ptrs:
            for i, (t, shape) in enumerate(zip(tensors, self._shape)):
                if (t.dtype, t.device, t.numel(), _layout(t)) != shape:
                    raise StaleTable(f"tensor {i} changed to {t.numel()} elements of {t.dtype} on {t.device} "
                                     f"laid out as {_layout(t)}")
            moved.append(("param", tensors, ptrs))
        for name in (self._grad_slots if grads else ()):
            lst = list(map(_grad, tensors))
            try:
                ptrs = list(map(_data_ptr, lst))
            except TypeError:  # a gradient is None
                self._check_list(name, lst, StaleTable)
                raise
            slot = self._slots.get(name)
            if slot is None or ptrs != slot.ptrs:
                self._check_list(name, lst, StaleTable)
                moved.append((name, lst, ptrs))
        if moved and self._cuda and self._capturing():
            raise RuntimeError(f"refresh during CUDA graph capture: the storage of {moved[0][0]!r} moved, so a "
                               f"table would be rebuilt during capture; refresh before capturing")
        try:
            located = [_locate(lst, ptrs, name) for name, lst, ptrs in moved]
        except ValueError as exc:
            raise StaleTable(str(exc)) from None
        for (name, lst, ptrs), where in zip(moved, located):
            self._set_slot(name, lst, ptrs, where)

    def slot(self, name) -> Slot:
        try:
            return self._slots[name]
        except KeyError:
            if name in self._grad_slots:
                raise RuntimeError(f"slot {name!r} has not read its gradients yet: call refresh()") from None
            raise ValueError(f"no slot named {name!r} is bound to this table") from None

    def get(self, name):
        """The tensors of slot ``name`` as of the latest refresh or binding."""
        return self.slot(name).tensors

    # ------------------------------------------------------------------------- launching

    def _capturing(self) -> bool:
        with torch.cuda.device(self._index):
            return torch.cuda.is_current_stream_capturing()

    def launching(self):
        """The context of every launch and upload: the table's device made current (only when
        it is not), after following torch's current stream there (see the module docstring)."""
        if not self._cuda:
            return device_guard(self.device)
        if torch._C._cuda_getCurrentRawStream(self._index) != self._stream_id:
            self._follow_stream()
        return device_guard(self.device)

    def _follow_stream(self):
        stream = torch.cuda.current_stream(self._index)
        # torch.cuda.graph synchronizes the device before it captures, so a capture has
        # nothing to wait for (and may not wait on an event recorded outside it).
        if self._stream is not None and not self._capturing():
            stream.wait_stream(self._stream)
        for t in (self._work, self.partials, *self._offset_vectors.values()):
            t.record_stream(stream)
        self._stream, self._stream_id = stream, stream.cuda_stream
