"""The op contract (version 2) between the host path and the backends.

Every backend (``torch``, ``triton``, ``cpp``) is a module that defines :class:`Table`-like
class ``Table``, the functions named in :data:`OPS`, and ``available()``, ``supports(device)``
and ``serves(tensor, gc)``, with exactly the meaning documented here. The torch reference
backend (:mod:`flatmin_kernels.backends.torch_backend`) is the executable form of this page:
when in doubt, its code is the definition.

Tables
------
A *table* is one bucket of tensors prepared once: the host path (``flatmin_kernels.plan``)
builds one per bucket on an optimizer's first step and reuses it every step, so a
steady-state op call does no per-tensor Python work. ::

    table = backend.Table(tensors, gc_rows=None, offsets=None)

* ``tensors``: the bucket's tensors (the parameters), all on one device, each dense
  (``is_non_overlapping_and_dense``); they fix the *shape part*: element counts, memory layout
  (strides), work items. They are bound as the slot ``"param"``.
* ``gc_rows[i]``: whether gradient centralization may be applied to tensor i. Its rows are
  dim 0 (row length ``numel // shape[0]``); dim 0 must be the outermost dimension in memory,
  and work items never split a row.
* ``offsets[i]``: the global element index of tensor i's first element (the noise's j).

``table.bind(name, tensors)`` binds a persistent list to a slot: same length; tensor i on the
table's device with tensor i's element count and strides; one dtype in the list (lists may
differ: bf16 params with fp32 buffers). The table keeps a reference. Rebinding a name replaces
it. ``table.bind_scalars(name, tensors)`` binds one 1-element fp32 tensor per tensor (Adam's
step counts). ``table.bind_grads(name="grad")`` makes slot ``name`` read ``tensors[i].grad``.

``table.refresh(grads=True)`` re-reads the storage of the ``"param"`` slot and (with ``grads``)
of the grad slots; the host path calls it once per pass (at the entry of every step method and after every closure),
and ops use the storage seen by the latest ``refresh`` (or binding). Gradients re-allocated at
the same shapes (``zero_grad(set_to_none=True)``) refresh pointers only. If the shape part no
longer holds (a gradient is None, or an element count, layout, device or dtype changed),
``refresh`` raises :class:`StaleTable` and nothing is written; the host path then rebuilds.
Other slots must keep their storage while bound (the host path rebinds what it replaces).
A backend may also re-read pointers at every op (``cpp`` does, in C++: a few ns per tensor per list). While
the current CUDA stream is capturing a graph, ``refresh`` must neither allocate nor copy: if
the storage moved it raises RuntimeError saying that a table would be rebuilt during capture.

``backend.serves(tensor, gc)`` says whether the backend's tables take this tensor (dtype,
device, layout; ``gc``: whether it will be centralized). The host path routes any tensor a
fused backend does not serve -- fp64 where a backend has no fp64 kernels, views with gaps,
meta tensors -- to the torch backend, which serves every real floating tensor.

General rules for ops
---------------------
* The first argument is a table; list arguments are slot names (``str``), ``None`` when
  absent.
* Math and accumulation are fp32 for fp32, bf16 and fp16 storage (fp64 for fp64 in the torch
  backend); results are rounded to the destination's dtype once, when stored.
* A *scalar* is a python number, a 1-element fp32 tensor on the table's device (read on the
  device, so values computed there never visit the host), or a pair ``(number, tensor)``
  meaning their product.
* No op synchronises with the host. Reductions are deterministic (same bits every run): fixed
  order, two stages, no atomics.
* 0-element tensors are valid and left alone.
* ``centralize`` (bool) applies GC to the tensors whose ``gc_rows`` flag is set:
  ``C(x) = x - mean of x over all dims but 0``, per row.
* ``found_inf`` is ``None`` or a 1-element fp32 device tensor; > 0 means skip (see each op).
* ``grad_scale`` is ``None`` or a 1-element fp32 device tensor; gradients are divided by it
  (AMP unscale). Gradients are never modified by a step op.

Reductions accumulate into ``out``, a 1-D fp32 tensor on the table's device (the host path's
per-step scalars)::

    out[index] = (out[index] if accumulate else 0) + total

and then, if ``epilogue`` is given, derive per-step scalars in the same launch (see
:class:`InvNorm` and :class:`Ratio`), so a norm costs no tiny ops afterwards.

The ops
-------
``sumsq(t, x, *, weights=None, centralize=False, out, index=0, accumulate=False, epilogue=None)``
    total = sum over the bucket of ``(C(x) * |w|) ** 2``; ``|w|`` (ASAM) only with ``weights``.

``dot(t, x, y, *, out, index=0, accumulate=False)``
    total = sum of ``x * y``.

``axpby_(t, y, x, a, b, *, reduce=None, z=None, weights=None, out=None, index=0, accumulate=False, epilogue=None)``
    ``y' = a * y + b * x`` is stored into y (with ``a`` the python number 0, y is not read: it
    may hold garbage). GAM's linear combinations, with their norms in the same pass:

    * ``reduce="x"``: ``out[index] += sum((|w| * (x - z)) ** 2)`` (z and w optional);
    * ``reduce="y"``: ``out[index] += sum(y' ** 2)`` and, with z, ``out[index + 1] += sum(y' * z)``.

``perturb_(t, p, d, scale, *, minus=None, base=None, save_to=None, copy_d_to=None, centralize=False, adaptive=False, found_inf=None)``
    With ``b`` = base (if given) else the old p, and ``D = C(d - minus)`` (minus optional),
    times ``b ** 2`` when ``adaptive`` (ASAM)::

        save_to <- p           (the old p: bit-exact when dtypes match) } written even when
        copy_d_to <- d         (rounded to its dtype; exact if same)  } found_inf > 0
        p <- b + scale * D     unless found_inf > 0

``noise_(t, p, coef, *, seed, step, sample, base=None, found_inf=None)``
    ``p <- b + coef * N(j)`` (b = base or p) for ``j = offsets[i] + k``, k the element's logical
    (row-major) index in tensor i whatever its memory layout, skipped when
    found_inf > 0. ``step`` is a python int or a 1-element int64 device tensor (read in the
    kernel, so a captured CUDA graph draws new noise at each replay); ``sample`` a python int.

``philox(n, *, seed, step, sample, offset, device) -> Tensor``
    The raw generator, no table: an int64 tensor of shape (n, 4) holding the four uint32 words
    of Philox4x32-10 for counters c = offset .. offset + n - 1 (see the noise definition).

``step_sgd_(t, p, g, buf, *, lr, weight_decay, momentum, dampening, nesterov, maximize, init_buffers=False, centralize=False, backup=None, g2=None, g_coef=1.0, g2_coef=1.0, grad_scale=None, found_inf=None)``
    torch.optim.SGD's update with GC placed as SGD_GC does (after L2 decay, before momentum)::

        b = backup if backup else p                     # the SAM restore, folded in
        g = g_coef * g (+ g2_coef * g2)                 # GAM's direction: two lists combined
        g = g / grad_scale;  g = -g if maximize
        g = g + weight_decay * b;  g = C(g)
        if momentum:  buf = g if init_buffers else momentum * buf + (1 - dampening) * g
                      d = g + momentum * buf if nesterov else buf
        else:         d = g
        p = b - lr * d
        if found_inf > 0:  p = b and buf keeps its bits  (a skipped step still restores)

    ``buf`` is ``None`` when momentum == 0.

``step_adam_(t, p, g, m, v, vmax, steps, *, lr, beta1, beta2, eps, weight_decay, decoupled, amsgrad, maximize, centralize=False, backup=None, g2=None, g_coef=1.0, g2_coef=1.0, grad_scale=None, found_inf=None)``
    torch.optim.Adam (``decoupled=False``) / AdamW (``decoupled=True``), GC as Adam_GC /
    AdamW_GC (on the gradient, after L2 decay, before the moments); ``steps`` is a scalar slot::

        b = backup if backup else p
        g = (g_coef * g (+ g2_coef * g2)) / grad_scale;  g = -g if maximize
        if decoupled: b = b * (1 - lr * weight_decay)   else: g = g + weight_decay * b
        g = C(g)
        step += 1
        m = m + (1 - beta1) * (g - m);  v = beta2 * v + (1 - beta2) * g * g
        vmax = max(vmax, v) if amsgrad
        denom = sqrt(vmax or v) / sqrt(1 - beta2 ** step) + eps
        p = b - lr / (1 - beta1 ** step) * m / denom
        if found_inf > 0:  p = (backup if backup else p), m, v, vmax, step keep their bits

    The bias corrections are computed in float64 and rounded to fp32 (in fp32,
    ``1 - 0.999 ** 1`` is off by 1e-5 relative, enough to leave torch.optim's trajectory).
    ``vmax`` is ``None`` unless amsgrad.

``centralize_(t, x)``
    GC in place on the tensors whose ``gc_rows`` flag is set.

The noise definition (v2: four normals per Philox call)
--------------------------------------------------------
Element j (global index in the optimizer's flattened parameter list), step t, sample k,
64-bit seed s:

* c = j >> 2 (the Philox call that serves j), lane = j & 3;
* key = (s & 0xFFFFFFFF, s >> 32); counter = (c & 0xFFFFFFFF, c >> 32, t, k), all uint32;
* (x0, x1, x2, x3) = Philox4x32-10(counter, key): multipliers 0xD2511F53, 0xCD9E8D57, Weyl
  increments 0x9E3779B9, 0xBB67AE85 (Random123's; the same as Triton's ``tl.philox``);
* u_i = ((x_i >> 8) | 1) * 2**-24, exact in fp32 and in (0, 1);
* r_a = sqrt(-2 ln u0), th_a = 2 pi u1;  r_b = sqrt(-2 ln u2), th_b = 2 pi u3 (fp32);
* N(j) = (r_a cos th_a, r_a sin th_a, r_b cos th_b, r_b sin th_b)[lane]  (Box-Muller, both
  pairs, cos and sin: four normals per call, since the generator bounds the noise kernel).

Every backend computes the same words (bit for bit) and the same normals to within 1e-6.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

OPS = (
    "sumsq",
    "dot",
    "axpby_",
    "perturb_",
    "noise_",
    "philox",
    "step_sgd_",
    "step_adam_",
    "centralize_",
)

# What every backend module defines besides the ops.
MODULE_API = ("Table", "available", "supports", "serves")


class StaleTable(RuntimeError):
    """A table no longer describes its tensors (shapes, layout, device, dtype, a missing
    gradient): nothing was written; the host path rebuilds the table and retries."""


@dataclass(frozen=True)
class InvNorm:
    """Epilogue of a reduction into ``out[index]`` (the sum of squares ``s``)::

        out[inv] = 1 / (sqrt(s) + eps)
        out[inf] = f  or  max(out[inf], f) if inf_accumulate,   f = 1.0 if s is not finite else 0.0

    SAM's scale is ``rho * out[inv]``; found_inf skips what the non-finite norm would poison.
    """

    eps: float
    inv: int
    inf: int
    inf_accumulate: bool = False


@dataclass(frozen=True)
class Ratio:
    """Epilogue of ``axpby_(..., reduce="y", z=...)`` into ``out[index]`` (``s = sum(y'^2)``)
    and ``out[index + 1]`` (``q = sum(y' z)``)::

        out[coef] = 1 + gamma * q / (s + eps)
        out[inf]  = f  or  max(out[inf], f) if inf_accumulate,   f = 1.0 unless s and q are finite

    GAM's update direction is ``out[coef] * h+ - gamma * h-``.
    """

    eps: float
    gamma: float
    coef: int
    inf: int
    inf_accumulate: bool = False


EPILOGUE_NONE, EPILOGUE_INV_NORM, EPILOGUE_RATIO = 0, 1, 2


def epilogue_fields(epilogue) -> tuple:
    """An epilogue as the kernels take it: (kind, eps, gamma, target slot, flag slot, flag accumulates)."""
    if epilogue is None:
        return EPILOGUE_NONE, 0.0, 0.0, 0, 0, False
    if isinstance(epilogue, InvNorm):
        return EPILOGUE_INV_NORM, epilogue.eps, 0.0, epilogue.inv, epilogue.inf, epilogue.inf_accumulate
    if isinstance(epilogue, Ratio):
        return EPILOGUE_RATIO, epilogue.eps, epilogue.gamma, epilogue.coef, epilogue.inf, epilogue.inf_accumulate
    raise TypeError(f"unknown epilogue {epilogue!r}")


def axpby_reads_y(a) -> bool:
    """Whether ``axpby_`` reads y: unless ``a`` is the number 0 (any real number type; a tensor
    or a (number, tensor) pair is always read through)."""
    return isinstance(a, (tuple, torch.Tensor)) or a != 0


def traffic(op: str, args: tuple, kwargs: dict) -> tuple:
    """(slots read, slots written) by one call of ``op``: the memory a pass must move at least,
    for counting bytes per parameter (each slot once, however often a kernel re-reads a row)."""
    def given(*names):
        return [kwargs[n] for n in names if kwargs.get(n) is not None]

    a = dict(zip(_POSITIONAL[op], args), **kwargs)
    if op == "sumsq":
        return [a["x"]] + given("weights"), []
    if op == "dot":
        return [a["x"], a["y"]], []
    if op == "axpby_":
        reads = [a["x"]]
        if axpby_reads_y(a["a"]):
            reads.append(a["y"])
        if a.get("reduce") is not None:
            reads += [a[n] for n in ("z", "weights") if a.get(n) is not None and a[n] not in reads]
        return reads, [a["y"]]
    if op == "perturb_":
        reads = [a["d"]] + given("minus") + [a.get("base") or a["p"]]
        if a.get("base") is not None and a.get("save_to") is not None:
            reads.append(a["p"])
        return reads, [a["p"]] + given("save_to", "copy_d_to")
    if op == "noise_":
        return [a.get("base") or a["p"]], [a["p"]]
    if op == "step_sgd_":
        buf = a.get("buf")
        reads = [a.get("backup") or a["p"], a["g"]] + given("g2") + ([buf] if buf and not a.get("init_buffers") else [])
        return reads, [a["p"]] + ([buf] if buf else [])
    if op == "step_adam_":
        vmax = [a["vmax"]] if a.get("vmax") else []
        return [a.get("backup") or a["p"], a["g"], a["m"], a["v"]] + vmax + given("g2"), [a["p"], a["m"], a["v"]] + vmax
    if op == "centralize_":
        return [a["x"]], [a["x"]]
    raise ValueError(f"unknown op {op!r}")


# Positional parameters of each op after the table (for traffic()).
_POSITIONAL = {
    "sumsq": ("x",), "dot": ("x", "y"), "axpby_": ("y", "x", "a", "b"), "perturb_": ("p", "d", "scale"),
    "noise_": ("p", "coef"), "step_sgd_": ("p", "g", "buf"), "step_adam_": ("p", "g", "m", "v", "vmax", "steps"),
    "centralize_": ("x",),
}


def missing_api(module) -> list:
    """Names of the contract that ``module`` does not define (empty for a complete backend)."""
    return [name for name in OPS + MODULE_API if not callable(getattr(module, name, None))]
