"""Turning a base :class:`~autosam.sam.SamModel` into an adapted one, and saving/loading only what changed."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from .. import __version__
from ..errors import AutosamError
from ..io import atomic_output, load_torch, write_json
from .config import CONFIG_NAME, WEIGHTS_NAME, AdapterConfig, read_config
from .desam import attach_desam, desam_trainable
from .lora import add_lora, is_lora_parameter


def is_trainable(name: str, config: AdapterConfig) -> bool:
    """Whether the parameter ``name`` of an adapted model is trained (and so saved) under ``config``."""
    if config.method == "desam":
        return desam_trainable(name)
    if name.startswith("mask_decoder."):
        return True
    if config.method == "lora":
        return is_lora_parameter(name)
    return config.train_encoder and name.startswith("image_encoder.")


def is_new_parameter(name: str) -> bool:
    """Whether ``name`` belongs to a module the method adds (LoRA factors, the DeSAM mask module), not to SAM."""
    return is_lora_parameter(name) or name.startswith("mask_decoder.mask_module.")


def prepare_model(model: nn.Module, config: AdapterConfig) -> nn.Module:
    """Add the method's modules to ``model`` (in place) and set ``requires_grad`` to what the method trains.

    The prompt encoder is always frozen.
    """
    if config.method == "lora":
        add_lora(model.image_encoder, int(config.rank), config.lora_alpha)
    elif config.method == "desam":
        attach_desam(model, config.desam_channels)
    for name, p in model.named_parameters():
        p.requires_grad_(is_trainable(name, config))
    return model


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trained tensors of a prepared model (its parameters with ``requires_grad``), detached copies on CPU."""
    return {k: p.detach().cpu().clone() for k, p in model.named_parameters() if p.requires_grad}


def save_adapter(model: nn.Module, config: AdapterConfig, adapter_dir: str | os.PathLike) -> Path:
    """Write ``adapter.pt`` (trained tensors only) and ``adapter_config.json`` into ``adapter_dir``, atomically."""
    folder = Path(adapter_dir)
    folder.mkdir(parents=True, exist_ok=True)
    config.autosam_version = __version__
    with atomic_output(folder / WEIGHTS_NAME) as tmp:
        torch.save(adapter_state(model), tmp)
    write_json(config.to_dict(), folder / CONFIG_NAME)
    return folder


def load_adapter(model: nn.Module, adapter_dir: str | os.PathLike) -> nn.Module:
    """Apply the adapter in ``adapter_dir`` to a freshly built base ``model`` and return it.

    The adapter's base backend must be the model's (``AutosamError`` naming the folder and both backends
    otherwise); its tensors must be exactly those the method trains, with the model's shapes.
    """
    folder = Path(adapter_dir)
    config = read_config(folder)
    backend = getattr(model, "name", type(model).__name__)
    if config.base != backend:
        raise AutosamError(f"{folder}: adapter was trained on backend {config.base}, "
                           f"but the model is backend {backend}; use --sam {config.base}")
    path = folder / WEIGHTS_NAME
    if not path.is_file():
        raise AutosamError(f"{folder}: {WEIGHTS_NAME} is missing")
    state = load_torch(path, "adapter weights")
    if not isinstance(state, dict):
        raise AutosamError(f"{path}: adapter weights must be a state dict")
    prepare_model(model, config)
    params = dict(model.named_parameters())
    expected = {k for k, p in params.items() if p.requires_grad}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    wrong = sorted(k for k in expected & set(state) if tuple(state[k].shape) != tuple(params[k].shape))
    if missing or unexpected or wrong:
        parts = [f"{len(v)} {what} (e.g. {v[0]})" for what, v in
                 (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if v]
        raise AutosamError(f"{path} does not fit {config.method} adapter on backend {backend}: " + ", ".join(parts))
    with torch.no_grad():
        for k, v in state.items():
            params[k].copy_(v.to(params[k].device, params[k].dtype))
    for p in model.parameters():
        p.requires_grad_(False)
    model.adapter_config = config
    return model
