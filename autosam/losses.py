"""Segmentation losses of the models that train: SAM adapters (per sample, on SAM's low-resolution logits,
restricted to the canvas area that holds the slice) and the prompter (over the batch, per class)."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

#: Mask losses of :func:`mask_loss`.
LOSSES = ("dice_bce", "dice_focal")


def _per_sample(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).sum(1)


def _per_class(x: torch.Tensor) -> torch.Tensor:
    return x.sum((0, 2, 3))


def soft_dice(p: torch.Tensor, t: torch.Tensor, total: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Smoothed Dice ``(2 |p t| + 1) / (|p| + |t| + 1)`` with sums taken by ``total`` (per sample or per class)."""
    return (2 * total(p * t) + 1) / (total(p) + total(t) + 1)


def _mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return _per_sample(values * valid) / _per_sample(valid).clamp_min(1)


# --- per sample: SAM adapters ----------------------------------------------------------------------------------


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per-sample ``1 - soft Dice`` of ``(B, 1, l, l)`` logits against a binary target."""
    return 1 - soft_dice(torch.sigmoid(logits) * valid, target * valid, _per_sample)


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


def _hard(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Prediction ``logits > 0`` and target inside ``valid``, and their per-sample overlap."""
    pred = (logits > 0).float() * valid
    t = target * valid
    return pred, t, _per_sample(pred * t)


def hard_iou(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per-sample IoU of ``logits > 0`` with the target (what SAM's IoU head should predict)."""
    pred, t, inter = _hard(logits, target, valid)
    return inter / _per_sample((pred + t).clamp(max=1)).clamp_min(1)


def hard_dice(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per-sample Dice of ``logits > 0`` with the target."""
    pred, t, inter = _hard(logits, target, valid)
    return 2 * inter / (_per_sample(pred) + _per_sample(t)).clamp_min(1)


# --- over the batch, per class: the prompter -------------------------------------------------------------------


def multiclass_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = -1) -> torch.Tensor:
    """Cross-entropy plus soft Dice over the foreground classes (batch Dice) of ``(B, K+1, S, S)`` logits against
    class indices ``(B, S, S)``, ignoring ``ignore_index`` pixels."""
    ce = F.cross_entropy(logits, target, ignore_index=ignore_index)
    valid = (target != ignore_index)[:, None]
    probs = torch.softmax(logits, 1)[:, 1:] * valid
    onehot = F.one_hot(target.clamp(min=0), logits.shape[1]).permute(0, 3, 1, 2)[:, 1:] * valid
    return ce + (1 - soft_dice(probs, onehot, _per_class).mean())


def binary_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """BCE plus soft Dice (batch Dice per class) for ``(B, K, S, S)`` per-class mask logits against binary targets."""
    bce = F.binary_cross_entropy_with_logits(logits, target, weight=valid)
    return bce + (1 - soft_dice(torch.sigmoid(logits) * valid, target, _per_class).mean())
