"""Adapted SAM: decoder fine-tuning, LoRA adapters and a DeSAM-style decoupled decoder.

``autosam finetune`` trains an adapter on an nnU-Net raw dataset and writes an adapter folder;
:func:`load_adapter` applies one to a base model (``build_sam(name, adapter=DIR)`` calls it).
"""
from .config import METHODS, AdapterConfig, PromptNoise, read_config
from .lora import LoRALinear, add_lora
from .model import adapter_state, load_adapter, prepare_model, save_adapter

__all__ = [
    "METHODS", "AdapterConfig", "LoRALinear", "PromptNoise", "adapter_state", "add_lora", "load_adapter",
    "prepare_model", "read_config", "save_adapter",
]
