"""A DeSAM-style decoupled mask decoder (after Gao et al. 2023, "DeSAM: Decoupling Segment Anything Model
for Generalizable Medical Image Segmentation"), in a simplified form written for autosam.

SAM's decoder lets the prompt tokens attend to and rewrite the image features before the mask is read
out of them, so a poor box distorts the very features the mask comes from. Here the two jobs are split:

- prompt-relevant path (SAM's frozen two-way transformer): reads the prompt and the image and yields the
  IoU token and the mask tokens. Only its outputs are kept; the image features it rewrote are discarded.
  The IoU head and the mask-token hypernetworks on top of it are trained.
- prompt-invariant mask module (new, trained): a residual conv block plus a copy of SAM's upscaling,
  applied to the image embedding alone (for box and point prompts SAM's dense prompt embedding is a
  constant, so this path never sees where the prompt is). The mask is the dot product of its per-pixel
  features with the hypernetwork's vector for the mask token, so the prompt picks *which* object through
  one global vector and cannot bend the mask's outline.

Simplifications against the paper: one embedding scale (no multi-scale encoder features), the decoder
transformer frozen, no box gating, and only the single-mask output (token 0) is trained; the three
multimask outputs use the same machinery with their own (untrained) hypernetworks. With a mask prompt the
dense embedding does vary in space and reaches the mask module.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from segment_anything.modeling import MaskDecoder


class PromptInvariantMaskModule(nn.Module):
    """Image embedding ``(B, D, s, s)`` -> per-pixel mask features ``(B, D/8, 4s, 4s)``; no prompt input."""

    def __init__(self, upscaling: nn.Module, dim: int = 256, channels: int = 64) -> None:
        super().__init__()
        self.refine = nn.Sequential(
            nn.Conv2d(dim, channels, 3, padding=1), nn.GroupNorm(8, channels), nn.GELU(),
            nn.Conv2d(channels, dim, 3, padding=1),
        )
        nn.init.zeros_(self.refine[-1].weight)  # starts as SAM's upscaling of the raw image embedding
        nn.init.zeros_(self.refine[-1].bias)
        self.upscaling = copy.deepcopy(upscaling)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.upscaling(x + self.refine(x))


class DecoupledMaskDecoder(nn.Module):
    """Drop-in replacement of segment-anything's :class:`MaskDecoder` (same ``forward`` signature)."""

    def __init__(self, decoder: MaskDecoder, channels: int = 64) -> None:
        super().__init__()
        self.decoder = decoder
        self.mask_module = PromptInvariantMaskModule(decoder.output_upscaling, decoder.transformer_dim, channels)
        self.num_multimask_outputs = decoder.num_multimask_outputs

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.decoder
        b = sparse_prompt_embeddings.shape[0]
        out_tokens = torch.cat([d.iou_token.weight, d.mask_tokens.weight], dim=0)
        tokens = torch.cat([out_tokens[None].expand(b, -1, -1), sparse_prompt_embeddings], dim=1)
        if image_embeddings.shape[0] != b:
            image_embeddings = torch.repeat_interleave(image_embeddings, b // image_embeddings.shape[0], dim=0)
        src = image_embeddings + dense_prompt_embeddings
        pos = torch.repeat_interleave(image_pe, b, dim=0) if image_pe.shape[0] != b else image_pe
        hs, _ = d.transformer(src, pos, tokens)  # prompt-relevant path: tokens only
        iou = d.iou_prediction_head(hs[:, 0])
        wanted = range(1, d.num_mask_tokens) if multimask_output else range(0, 1)
        hyper = torch.stack([d.output_hypernetworks_mlps[i](hs[:, 1 + i]) for i in wanted], dim=1)
        features = self.mask_module(src)  # prompt-invariant path: image embedding only
        masks = torch.einsum("bnc,bchw->bnhw", hyper, features)
        return masks, iou[:, list(wanted)]


def attach_desam(model: nn.Module, channels: int = 64) -> None:
    """Replace ``model.mask_decoder`` by a :class:`DecoupledMaskDecoder` wrapping it."""
    if not isinstance(model.mask_decoder, DecoupledMaskDecoder):
        model.mask_decoder = DecoupledMaskDecoder(model.mask_decoder, channels)


def desam_trainable(name: str) -> bool:
    """Parameters DeSAM trains: the mask module, the hypernetworks and the IoU head (names in the SamModel)."""
    return name.startswith(("mask_decoder.mask_module.", "mask_decoder.decoder.output_hypernetworks_mlps.",
                            "mask_decoder.decoder.iou_prediction_head."))
