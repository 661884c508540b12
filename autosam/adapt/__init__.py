"""Adapted SAM: decoder fine-tuning, LoRA adapters and a DeSAM-style decoupled decoder.

``autosam finetune`` trains an adapter on an nnU-Net raw dataset and writes an adapter folder;
:func:`load_adapter` applies one to a base model (``build_sam(name, adapter=DIR)`` calls it, through the
``autosam.adapters`` entry point: the engine never imports this package). A model that trains (layer 7 in
``tests/test_layers.py``): it may import the engine, the case-level modules, the runner and the pipelines, and the
prompter (cross-fitted prompts); never the study, the commands or the plugins.
"""
from .config import METHODS, AdapterConfig, PromptNoise, read_config
from .lora import LoRALinear, add_lora
from .model import adapter_state, load_adapter, prepare_model, save_adapter

__all__ = [
    "METHODS", "AdapterConfig", "LoRALinear", "PromptNoise", "adapter_state", "add_lora", "load_adapter",
    "prepare_model", "read_config", "save_adapter",
]
