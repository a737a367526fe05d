"""Compile the Triton backend's kernels for an NVIDIA GPU on a machine without one.

``python -m tests.backends.triton_ptx`` (run with TRITON_INTERPRET unset, so that ``triton.jit``
makes compilable kernels) builds tables of CPU tensors, calls every streaming op on them with
kernel launches intercepted, compiles each op's main launch -- the very arguments and
constexprs the op passed -- for sm_90 with ``triton.compile``, and prints, as JSON, the global
load and store instructions of each kernel's PTX. Pointer arguments are marked 16-byte aligned,
as Triton marks CUDA allocations. Works with Triton 3.6 and 3.9.
"""
from __future__ import annotations

import json
import os
import re
import sys
from collections import Counter

import torch

from flatmin_kernels.backends.contract import InvNorm, Ratio

TARGET = ("cuda", 90, 32)
_TRITON_DTYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16",
                  torch.int64: "i64", torch.int32: "i32"}


def compile_ptx(kernel, args, kwargs, num_warps):
    """PTX of ``kernel`` compiled for TARGET with the arguments of one launch."""
    import triton
    from triton.backends.compiler import GPUTarget

    values = dict(zip(kernel.arg_names, args))
    values.update(kwargs)
    signature, constexprs, attrs = {}, {}, {}
    for i, param in enumerate(kernel.params):
        value = values[param.name]
        if param.is_constexpr or value is None:
            signature[param.name], constexprs[param.name] = "constexpr", value
        elif torch.is_tensor(value):
            signature[param.name] = "*" + _TRITON_DTYPES[value.dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(value, bool):
            signature[param.name] = "i1"
        elif isinstance(value, int):
            signature[param.name] = "i32" if -2**31 <= value < 2**31 else ("i64" if value < 2**63 else "u64")
        elif isinstance(value, float):
            signature[param.name] = "fp32"
        else:
            raise TypeError(f"{kernel.__name__}: cannot type argument {param.name}={value!r}")
    source = triton.compiler.ASTSource(kernel, signature, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(source, target=GPUTarget(*TARGET), options={"num_warps": num_warps})
    return compiled.asm["ptx"]


def memory_instructions(ptx):
    """{"ld": {instruction: count}, "st": {...}}: the global loads and stores of a PTX text."""
    return {kind: dict(Counter(re.findall(kind + r"\.global[.\w]*", ptx))) for kind in ("ld", "st")}


def _launches(calls):
    """Run ``calls`` (name -> function), intercepting every kernel launch instead of running it."""
    from triton.runtime.jit import JITFunction

    launched, real_run = [], JITFunction.run

    def intercept(self, *args, grid, warmup, **kwargs):
        launched.append((self, args, kwargs))

    JITFunction.run = intercept
    try:
        out = {}
        for name, call in calls.items():
            launched.clear()
            call()
            out[name] = list(launched)
        return out
    finally:
        JITFunction.run = real_run


def _table(dtype, misalign=0):
    """A table of large tensors (full 1024-element tiles), each 16-element aligned inside one
    buffer as CUDA allocations are, or ``misalign`` elements off that, with every slot bound."""
    from flatmin_kernels.backends import triton_backend as tb
    from flatmin_kernels.backends.triton_backend import tables

    tables.supports = lambda device: True  # CPU tensors stand in for CUDA ones: nothing runs
    shapes = [(64, 96), (5000,), (3, 4, 32, 32)]

    def make():
        sizes = [torch.Size(s).numel() for s in shapes]
        buffer = torch.zeros(sum(-(-n // 1024) * 1024 + misalign for n in sizes), dtype=dtype)
        out, at = [], 0
        for s, n in zip(shapes, sizes):
            out.append(buffer[at: at + n].view(s))
            at += -(-n // 1024) * 1024 + misalign
        return out

    table = tb.Table(make(), offsets=[0, 6144, 11264])
    for name in ("g", "g2", "m", "v", "backup", "z"):
        table.bind(name, make())
    table.bind_scalars("steps", [torch.zeros(1) for _ in shapes])
    return table


# op -> (its call on a table, streams its full tiles read, streams they write)
STREAMING = {
    "sumsq": (lambda tb, t, out: tb.sumsq(t, "g", weights="param", out=out), 2, 0),
    "dot": (lambda tb, t, out: tb.dot(t, "g", "m", out=out), 2, 0),
    "axpby_": (lambda tb, t, out: tb.axpby_(t, "m", "g", 0.9, 0.1, reduce="y", z="z", out=out), 3, 1),
    "perturb_": (lambda tb, t, out: tb.perturb_(t, "param", "g", out[:1], save_to="backup", adaptive=True), 2, 2),
    "noise_": (lambda tb, t, out: tb.noise_(t, "param", 0.01, seed=1, step=2, sample=0, base="backup"), 1, 1),
    "step_sgd_": (lambda tb, t, out: tb.step_sgd_(t, "param", "g", "m", lr=0.1, weight_decay=0.01, momentum=0.9,
                                                  dampening=0.0, nesterov=False, maximize=False, backup="backup"),
                  3, 2),
    "step_adam_": (lambda tb, t, out: tb.step_adam_(t, "param", "g", "m", "v", None, "steps", lr=1e-3, beta1=0.9,
                                                    beta2=0.999, eps=1e-8, weight_decay=0.01, decoupled=True,
                                                    amsgrad=False, maximize=False, g2="g2", g_coef=1.5,
                                                    g2_coef=-0.5),
                   5, 3),
}


def report(cases):
    """{"op/dtype[/misaligned]": memory instructions of the op's main kernel} for (op, dtype,
    misalign) cases; the second stages and Adam's step counters are not streaming kernels."""
    from flatmin_kernels.backends import triton_backend as tb

    out = {}
    for op, dtype, misalign in cases:
        table, sums = _table(dtype, misalign), torch.zeros(4)
        launched = _launches({op: lambda: STREAMING[op][0](tb, table, sums)})[op]
        kernel, args, kwargs = launched[0]
        num_warps = kwargs.pop("num_warps", 4)
        key = f"{op}/{_TRITON_DTYPES[dtype]}" + ("/misaligned" if misalign else "")
        out[key] = memory_instructions(compile_ptx(kernel, args, kwargs, num_warps))
    return out


CANNOT_COMPILE = 3  # exit status: this Triton cannot compile for TARGET on this machine


def _probe():
    """Compile a trivial kernel for TARGET; exit with CANNOT_COMPILE, saying why, if that fails."""
    import triton
    import triton.language as tl

    @triton.jit
    def copy(x, y, BLOCK: tl.constexpr):
        tl.store(y + tl.arange(0, BLOCK), tl.load(x + tl.arange(0, BLOCK)))

    try:
        compile_ptx(copy, (torch.zeros(4), torch.zeros(4)), {"BLOCK": 4}, 1)
    except Exception as exc:  # whatever the toolchain says
        print(f"triton {triton.__version__} cannot compile for {TARGET} here: {type(exc).__name__}: {exc}")
        sys.exit(CANNOT_COMPILE)


def every_path():
    """Compile every kernel of every op in its widest variant: GC rows of several classes (short
    rows, a (512, 128, 1, 1) weight, long rows), a channels_last tensor (permuted noise),
    noise offsets that are not multiples of 4, device scalars and pairs, every optional list.
    Returns the "op/kernel" names compiled."""
    from flatmin_kernels.backends import triton_backend as tb

    shapes = [(8, 3, 3, 3), (512, 128, 1, 1), (64, 1024), (16, 4608), (7,), (3000,)]

    def make():
        out = [torch.randn(s) for s in shapes]
        out[0] = out[0].to(memory_format=torch.channels_last)
        return out

    _table(torch.float32)  # lets CPU tensors stand in for CUDA ones
    params = make()
    t = tb.Table(params, gc_rows=[x.dim() > 1 for x in params], offsets=[1, 217, 10000, 80000, 90000, 90007])
    for name in ("g", "g2", "m", "v", "b"):
        t.bind(name, make())
    t.bind_scalars("steps", [torch.zeros(1) for _ in shapes])
    out, one = torch.zeros(4), torch.ones(1)
    calls = {
        "sumsq": lambda: tb.sumsq(t, "g", weights="param", centralize=True, out=out,
                                  epilogue=InvNorm(eps=1e-12, inv=2, inf=3, inf_accumulate=True)),
        "dot": lambda: tb.dot(t, "g", "m", out=out, accumulate=True),
        "axpby_": lambda: tb.axpby_(t, "m", "g", one, (2.0, one), reduce="y", z="v", out=out,
                                    epilogue=Ratio(eps=1e-12, gamma=0.1, coef=2, inf=3)),
        "perturb_": lambda: tb.perturb_(t, "param", "g", (0.5, one), minus="m", base="v", save_to="b",
                                        copy_d_to="g2", centralize=True, adaptive=True, found_inf=one),
        "noise_": lambda: tb.noise_(t, "param", (0.5, one), seed=2**63 + 5, step=torch.zeros(1, dtype=torch.int64),
                                    sample=1, base="b", found_inf=one),
        "philox": lambda: tb.philox(10, seed=1, step=torch.zeros(1, dtype=torch.int64), sample=1, offset=0),
        "step_sgd_": lambda: tb.step_sgd_(t, "param", "g", "m", lr=one, weight_decay=0.1, momentum=0.9, dampening=0.1,
                                          nesterov=True, maximize=True, centralize=True, backup="b", g2="g2",
                                          g_coef=(2.0, one), g2_coef=one, grad_scale=one, found_inf=one),
        "step_adam_": lambda: tb.step_adam_(t, "param", "g", "m", "v", "b", "steps", lr=(0.1, one), beta1=0.9,
                                            beta2=0.99, eps=1e-8, weight_decay=0.1, decoupled=False, amsgrad=True,
                                            maximize=True, centralize=True, backup="g2", g2="g2", g_coef=one,
                                            grad_scale=one, found_inf=one),
        "centralize_": lambda: tb.centralize_(t, "g"),
    }
    compiled = []
    for op, launched in _launches(calls).items():
        for kernel, args, kwargs in launched:
            compile_ptx(kernel, args, kwargs, kwargs.pop("num_warps", 4))
            compiled.append(f"{op}/{kernel.__name__}")
    return compiled


def main():
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit("run with TRITON_INTERPRET unset: the interpreter's kernels cannot be compiled")
    _probe()
    cases = [(op, dtype, 0) for dtype in (torch.float32, torch.bfloat16) for op in STREAMING]
    cases.append(("sumsq", torch.float32, 1))
    result = report(cases)
    result["compiled"] = every_path()
    json.dump(result, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
