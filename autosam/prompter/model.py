"""The prompt networks: a small 2D U-Net with two heads.

``mode="mask"``: per-class logits (background first) on the input canvas, from which the coarse per-class
probability map and then SAM's prompts are derived. ``mode="embedding"`` (AutoSAM-style): one dense prompt
embedding per foreground class on SAM's embedding grid, decoded by SAM's frozen mask decoder.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

MODES = ("mask", "embedding")


@dataclass
class ArchConfig:
    """Everything needed to rebuild a :class:`PromptNet` (stored in ``config.json`` under ``architecture``)."""

    in_channels: int
    num_classes: int  # foreground classes K
    mode: str = "mask"
    base: int = 16
    depth: int = 4
    embed_dim: int = 256  # embedding mode: SAM's prompt embedding channels
    embed_size: int = 64  # embedding mode: SAM's embedding grid side
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.InstanceNorm2d(cout, affine=True), nn.LeakyReLU(0.01, True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.InstanceNorm2d(cout, affine=True), nn.LeakyReLU(0.01, True),
    )


class PromptNet(nn.Module):
    """U-Net (``depth`` levels, ``base`` channels doubling per level) on a ``(B, C, S, S)`` canvas.

    ``forward`` returns ``(B, K+1, S, S)`` logits in mask mode, ``(B, K, embed_dim, embed_size, embed_size)``
    dense prompt embeddings in embedding mode. ``S`` must be divisible by ``2 ** (depth - 1)``.
    """

    def __init__(self, cfg: ArchConfig) -> None:
        super().__init__()
        if cfg.mode not in MODES:
            raise ValueError(f"unknown prompter mode {cfg.mode!r}; choose one of {', '.join(MODES)}")
        self.cfg = cfg
        widths = [cfg.base * 2 ** i for i in range(cfg.depth)]
        self.down = nn.ModuleList()
        cin = cfg.in_channels
        for w in widths:
            self.down.append(_block(cin, w))
            cin = w
        self.up = nn.ModuleList()
        self.fuse = nn.ModuleList()
        for w_low, w in zip(widths[::-1][:-1], widths[::-1][1:]):
            self.up.append(nn.ConvTranspose2d(w_low, w, 2, stride=2))
            self.fuse.append(_block(2 * w, w))
        if cfg.mode == "mask":
            self.head = nn.Conv2d(widths[0], cfg.num_classes + 1, 1)
        else:
            # low-rank head: features -> a few channels per class -> 1x1 to SAM's embedding width
            hidden = max(8, cfg.extra.get("embed_hidden", 32))
            self.head = nn.Sequential(nn.Conv2d(widths[0], hidden * cfg.num_classes, 1), nn.GELU())
            self.project = nn.Conv2d(hidden, cfg.embed_dim, 1)
            nn.init.zeros_(self.project.weight)  # start from "no dense prompt"
            nn.init.zeros_(self.project.bias)
            self.hidden = hidden

    def features(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for up, fuse in zip(self.up, self.fuse):
            x = fuse(torch.cat([up(x), skips.pop()], dim=1))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        if self.cfg.mode == "mask":
            return self.head(f)
        b, k = x.shape[0], self.cfg.num_classes
        h = self.head(f)
        h = F.interpolate(h, size=(self.cfg.embed_size,) * 2, mode="bilinear", align_corners=False)
        h = h.reshape(b * k, self.hidden, self.cfg.embed_size, self.cfg.embed_size)
        return self.project(h).reshape(b, k, self.cfg.embed_dim, self.cfg.embed_size, self.cfg.embed_size)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def decode_dense(sam, image_embeddings: torch.Tensor, dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM's frozen mask decoder with a learned dense prompt embedding in place of the prompt encoder.

    ``image_embeddings`` and ``dense`` are ``(B, 256, s, s)``; one mask per row. Returns low-res logits
    ``(B, 1, l, l)`` on SAM's canvas and the predicted IoU ``(B, 1)``; differentiable with respect to ``dense``.
    """
    no_points = dense.new_zeros((dense.shape[0], 0, dense.shape[1]))
    # one prompt per image (as SamModel.decode does it): the image embedding rides on the dense input of a zero image
    return sam.mask_decoder(torch.zeros_like(image_embeddings[:1]), sam.prompt_encoder.get_dense_pe(), no_points,
                            dense + image_embeddings, multimask_output=False)
