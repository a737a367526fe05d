"""The op contract between optimizers and backends.

Every backend (``torch``, ``triton``, ``cpp``) is a module that defines the functions
named in :data:`OPS` with exactly the signatures documented below. The torch reference
backend (:mod:`flatmin_kernels.backends.torch_backend`) is the executable form of this
page: when in doubt, its code is the definition.

General rules
-------------
* Every list argument holds tensors of one *bucket*: same device, and within one list the
  same dtype (different lists may differ, e.g. bf16 params with fp32 GAM buffers).
  ``flatmin_kernels.backends.buckets`` does the grouping; an op never sees two devices.
* All math and accumulation is fp32, whatever the storage dtype (fp32, bf16, fp16);
  results are rounded to the destination tensor's dtype once, when stored.
* "Scalar" arguments are python numbers or 0-d fp32 tensors on the bucket's device, so that
  values computed on the device (norms, scales, found_inf) never have to visit the host.
* No op synchronises with the host, and reductions are deterministic (same bits every run).
* Lists may contain 0-element tensors; they are valid and left alone.
* ``centralize`` is ``None`` (no GC anywhere) or a sequence of bools, one per tensor: ``True``
  means "apply gradient centralization to this tensor", i.e. replace x by x minus the mean of
  x over all dimensions but dim 0 (per output row: rows = shape[0], row length = numel/shape[0]).
  The optimizer decides the flags (``gc``: ndim > 1, ``gcc``: ndim > 3).
* ``found_inf`` is ``None`` or a 0-d fp32 device tensor; when it is > 0 params, buffers and
  steps keep their bits (``perturb_`` still fills ``save_to`` with a copy of the unchanged params).
* ``grad_scale`` is ``None`` or a 0-d fp32 device tensor; gradients are divided by it before
  use (AMP unscale). Gradients are never modified by a step op.

The ops
-------
``sumsq(tensors, *, weights=None, centralize=None) -> Tensor``
    One fp32 value per tensor, on the device: ``sum((C(x) * |w|) ** 2)`` where C is GC where
    flagged and ``|w|`` (the ASAM weighting) is used only when ``weights`` is given.

``perturb_(params, directions, scale, *, save_to=None, base=None, centralize=None, adaptive=False, found_inf=None)``
    ``p <- b + scale * D`` with ``b = base[i]`` if ``base`` is given, else ``p`` itself, and
    ``D = C(d)`` (times ``b ** 2`` when ``adaptive``; ASAM). If ``save_to`` is given, the old
    ``p`` is copied into it first (the exact backup SAM restores from).

``noise_(params, coef, *, seed, step, sample, offsets, base=None, found_inf=None)``
    ``p <- b + coef * N`` with N the standard normal of :func:`normal_from_philox` for the
    element's global index ``j = offsets[i] + k`` (k = flat index inside tensor i). The noise
    is regenerated from (seed, step, sample, j) on every call and never stored.

``philox(n, *, seed, step, sample, offset, device) -> Tensor``
    The raw generator: an int64 tensor of shape (n, 4) holding the four uint32 words of
    Philox4x32-10 for j = offset .. offset + n - 1 (see the noise definition below).

``step_sgd_(params, grads, momentum_buffers, *, lr, weight_decay, momentum, dampening, nesterov, maximize, init_buffers=False, centralize=None, backups=None, grad_scale=None, found_inf=None)``
    torch.optim.SGD's update with GC placed as SGD_GC does (after L2 weight decay, before
    momentum)::

        b = backups[i] if backups else p          # the restore is folded into the update
        g = grad / grad_scale;  g = -g if maximize
        g = g + weight_decay * b
        g = C(g)
        if momentum:  buf = g if init_buffers else momentum * buf + (1 - dampening) * g
                      d = g + momentum * buf if nesterov else buf
        else:         d = g
        p = b - lr * d

    ``momentum_buffers`` is ``None`` when momentum == 0.

``step_adam_(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, *, lr, beta1, beta2, eps, weight_decay, decoupled, amsgrad, maximize, centralize=None, backups=None, grad_scale=None, found_inf=None)``
    torch.optim.Adam (``decoupled=False``) / AdamW (``decoupled=True``) with GC placed as
    Adam_GC / AdamW_GC do (on the gradient, after L2 decay, before the moments)::

        b = backups[i] if backups else p
        g = grad / grad_scale;  g = -g if maximize
        if decoupled: b = b * (1 - lr * weight_decay)   else: g = g + weight_decay * b
        g = C(g)
        step += 1                                       # steps[i]: 0-d fp32 tensor
        m = m + (1 - beta1) * (g - m);  v = beta2 * v + (1 - beta2) * g * g
        vmax = max(vmax, v) if amsgrad
        denom = sqrt(vmax or v) / sqrt(1 - beta2 ** step) + eps
        p = b - lr / (1 - beta1 ** step) * m / denom

    The two bias corrections are computed in float64 and then rounded to fp32 (in fp32,
    ``1 - 0.999 ** 1`` is off by 1e-5 relative, enough to leave torch.optim's trajectory).

    ``max_exp_avg_sqs`` is ``None`` unless amsgrad.

``centralize_(tensors, centralize)``
    GC in place on the flagged tensors.

``axpby_(ys, xs, a, b)``
    ``y <- a * y + b * x``. When ``a`` is the python number 0, y is not read (it may hold
    garbage or non-finite values). GAM's linear combinations of gradient buffers.

``dot(xs, ys) -> Tensor``
    One fp32 value per tensor pair: ``sum(x * y)``.

The noise definition
--------------------
Element j (global index in the optimizer's flattened parameter list), step t, sample k,
64-bit seed s:

* key = (s & 0xFFFFFFFF, s >> 32); counter = (j & 0xFFFFFFFF, j >> 32, t, k), all uint32;
* (x0, x1, x2, x3) = Philox4x32-10(counter, key): multipliers 0xD2511F53, 0xCD9E8D57, Weyl
  increments 0x9E3779B9, 0xBB67AE85 (Random123's; the same as Triton's ``tl.philox``);
* u1 = ((x0 >> 8) | 1) * 2**-24 and u2 = ((x1 >> 8) | 1) * 2**-24, exact in fp32 and in (0, 1);
* N = sqrt(-2 * ln(u1)) * cos(2*pi * u2) in fp32 (Box-Muller).
"""

OPS = (
    "sumsq",
    "perturb_",
    "noise_",
    "philox",
    "step_sgd_",
    "step_adam_",
    "centralize_",
    "axpby_",
    "dot",
)


def missing_ops(module) -> list:
    """Names of contract ops that ``module`` does not define (empty for a complete backend)."""
    return [name for name in OPS if not callable(getattr(module, name, None))]
