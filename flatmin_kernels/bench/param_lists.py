"""The parameter lists the benchmarks run on, generated in code (shapes only; nothing is downloaded).

Model lists have the tensor shapes of the real checkpoints, in their own layouts: ResNet-50 as
torchvision builds it, GPT-2 as Hugging Face stores it (``Conv1D`` weights are (in, out)), and a
Llama-3.2-1B-style decoder. Flat and tiny lists isolate bandwidth (few big tensors) and host
time (many 16-element tensors, where the arithmetic is negligible).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

Shape = tuple


@dataclass(frozen=True)
class ParamList:
    name: str
    description: str
    shapes: tuple

    @property
    def tensors(self) -> int:
        return len(self.shapes)

    @property
    def numel(self) -> int:
        return sum(math.prod(s) for s in self.shapes)

    def nbytes(self, dtype: torch.dtype) -> int:
        return self.numel * torch.empty((), dtype=dtype).element_size()


def resnet50() -> list:
    """torchvision's resnet50: conv1/bn1, bottlenecks [3, 4, 6, 3] with a downsample in each
    stage's first block, fc. 161 tensors, 25,557,032 elements."""
    shapes = [(64, 3, 7, 7), (64,), (64,)]
    in_ch = 64
    for width, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        out_ch = 4 * width
        for b in range(blocks):
            shapes += [(width, in_ch, 1, 1), (width,), (width,),
                       (width, width, 3, 3), (width,), (width,),
                       (out_ch, width, 1, 1), (out_ch,), (out_ch,)]
            if b == 0:
                shapes += [(out_ch, in_ch, 1, 1), (out_ch,), (out_ch,)]
            in_ch = out_ch
    return shapes + [(1000, 2048), (1000,)]


def gpt2(d_model: int, layers: int, vocab: int = 50257, context: int = 1024) -> list:
    """Hugging Face GPT-2: wte, wpe, per layer ln_1, c_attn, c_proj, ln_2, c_fc, c_proj (weights
    and biases), ln_f; the LM head is tied to wte. 12 tensors per layer + 4."""
    d, ffn = d_model, 4 * d_model
    shapes = [(vocab, d), (context, d)]
    for _ in range(layers):
        shapes += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,),
                   (d,), (d,), (d, ffn), (ffn,), (ffn, d), (d,)]
    return shapes + [(d,), (d,)]


def llama(d_model: int = 2048, layers: int = 16, ffn: int = 8192, kv_dim: int = 512,
          vocab: int = 128256) -> list:
    """A Llama-3.2-1B-style decoder (grouped-query attention, SwiGLU MLP, RMSNorm, tied
    embeddings): embed, per layer norm, q, k, v, o, norm, gate, up, down; final norm."""
    d = d_model
    shapes = [(vocab, d)]
    for _ in range(layers):
        shapes += [(d,), (d, d), (kv_dim, d), (kv_dim, d), (d, d), (d,), (ffn, d), (ffn, d), (d, ffn)]
    return shapes + [(d,)]


def flat(tensors: int, rows: int, cols: int) -> list:
    return [(rows, cols)] * tensors


def tiny(tensors: int) -> list:
    """``tensors`` tensors of 16 elements, alternately a 4x4 matrix (GC applies) and a vector."""
    return [(4, 4) if i % 2 == 0 else (16,) for i in range(tensors)]


_BUILDERS = {
    "resnet50": ("ResNet-50 (torchvision shapes)", resnet50),
    "gpt2-small": ("GPT-2 small (Hugging Face shapes)", lambda: gpt2(768, 12)),
    "gpt2-medium": ("GPT-2 medium (Hugging Face shapes)", lambda: gpt2(1024, 24)),
    "llama-1b": ("Llama-3.2-1B-style decoder", llama),
    "flat-10m": ("100 tensors of 250x400", lambda: flat(100, 250, 400)),
    "tiny-100": ("100 tensors of 16 elements", lambda: tiny(100)),
    "tiny-1000": ("1,000 tensors of 16 elements", lambda: tiny(1000)),
    "tiny-10000": ("10,000 tensors of 16 elements", lambda: tiny(10000)),
}

NAMES = tuple(_BUILDERS)
HOST_LISTS = ("tiny-100", "tiny-1000", "tiny-10000")


def get(name: str) -> ParamList:
    if name not in _BUILDERS:
        raise ValueError(f"unknown parameter list {name!r}; choose from {', '.join(NAMES)}")
    description, build = _BUILDERS[name]
    return ParamList(name, description, tuple(tuple(s) for s in build()))


def materialize(plist: ParamList, dtype: torch.dtype, device, *, seed: int, scale: float = 1.0) -> list:
    """One tensor per shape, each its own allocation, uniform in [-scale, scale), reproducible."""
    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    return [torch.empty(s, dtype=dtype, device=device).uniform_(-scale, scale, generator=gen)
            for s in plist.shapes]
