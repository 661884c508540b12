"""Low-rank adapters (LoRA) on the attention projections of a SAM image encoder.

Each targeted ``nn.Linear`` (TinyViT's ``Attention.qkv``, SAM ViT's ``blocks[i].attn.qkv``) is replaced by a
:class:`LoRALinear` that keeps the very same weight and bias tensors (so base parameter names and values stay
as they were) and adds ``scale * B @ A`` with ``A`` ``(r, in)`` random and ``B`` ``(out, r)`` zero: a fresh
adapter changes nothing.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class LoRALinear(nn.Linear):
    """``y = x W^T + b + scale * (x A^T) B^T``; only ``lora_A`` and ``lora_B`` are meant to be trained."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.rank = rank
        self.scale = alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, device=base.weight.device))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias) + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scale

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, scale={self.scale:g}"


def lora_targets(encoder: nn.Module, target: str = "qkv") -> list[str]:
    """Names of the ``nn.Linear`` modules called ``target`` inside ``encoder`` (its attention projections)."""
    return [name for name, m in encoder.named_modules()
            if name.rsplit(".", 1)[-1] == target and isinstance(m, nn.Linear) and not isinstance(m, LoRALinear)]


def add_lora(encoder: nn.Module, rank: int, alpha: float | None = None, target: str = "qkv") -> int:
    """Wrap every attention projection of ``encoder`` with a rank-``rank`` adapter; returns the parameters added.

    Each wrapped ``in -> out`` projection adds ``rank * (in + out)`` parameters.
    """
    alpha = float(rank if alpha is None else alpha)
    names = lora_targets(encoder, target)
    if not names:
        raise ValueError(f"no nn.Linear named {target!r} in {type(encoder).__name__}")
    added = 0
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = encoder.get_submodule(parent_name) if parent_name else encoder
        wrapped = LoRALinear(getattr(parent, child), rank, alpha)
        setattr(parent, child, wrapped)
        added += wrapped.lora_A.numel() + wrapped.lora_B.numel()
    return added


def is_lora_parameter(name: str) -> bool:
    """True for the names of LoRA factors in a state dict."""
    return name.endswith(".lora_A") or name.endswith(".lora_B")
