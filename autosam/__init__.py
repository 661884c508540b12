"""autosam: automatic prompting of SAM inside nnU-Net workflows."""

__version__ = "0.1.0"
