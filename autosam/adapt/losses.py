"""Segmentation losses on SAM's low-resolution logits, restricted to the canvas area that holds the slice."""
from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("dice_bce", "dice_focal")


def _mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return (values * valid).flatten(1).sum(1) / valid.flatten(1).sum(1).clamp_min(1)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per-sample ``1 - soft Dice`` of ``(B, 1, l, l)`` logits against a binary target."""
    p = torch.sigmoid(logits) * valid
    t = target * valid
    inter = (p * t).flatten(1).sum(1)
    return 1 - (2 * inter + 1) / (p.flatten(1).sum(1) + t.flatten(1).sum(1) + 1)


def bce_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per-sample binary cross-entropy averaged over the valid pixels."""
    return _mean(F.binary_cross_entropy_with_logits(logits, target, reduction="none"), valid)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Per-sample focal loss (Lin et al. 2017, no class weight), averaged over the valid pixels."""
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_true = torch.exp(-ce)
    return _mean((1 - p_true) ** gamma * ce, valid)


def mask_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, kind: str = "dice_bce") -> torch.Tensor:
    """Per-sample Dice + BCE (``dice_bce``) or Dice + 20 x focal (``dice_focal``, SAM's weighting)."""
    if kind == "dice_bce":
        return soft_dice_loss(logits, target, valid) + bce_loss(logits, target, valid)
    if kind == "dice_focal":
        return soft_dice_loss(logits, target, valid) + 20 * focal_loss(logits, target, valid)
    raise ValueError(f"unknown loss {kind!r}; choose one of {', '.join(LOSSES)}")


def hard_iou(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per-sample IoU of ``logits > 0`` with the target (what SAM's IoU head should predict)."""
    pred = (logits > 0).float() * valid
    t = target * valid
    inter = (pred * t).flatten(1).sum(1)
    union = (pred + t).clamp(max=1).flatten(1).sum(1)
    return inter / union.clamp_min(1)


def hard_dice(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per-sample Dice of ``logits > 0`` with the target."""
    pred = (logits > 0).float() * valid
    t = target * valid
    inter = (pred * t).flatten(1).sum(1)
    return 2 * inter / (pred.flatten(1).sum(1) + t.flatten(1).sum(1)).clamp_min(1)
