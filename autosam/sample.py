"""The tiny attributed sample shipped inside the package (see ``sample/SOURCE.md``)."""
from __future__ import annotations

from pathlib import Path

from .errors import AutosamError

SAMPLE_ROOT = Path(__file__).parent / "sample"
#: Sample datasets, each an nnU-Net raw folder with ``dataset.json``, ``imagesTr`` and ``labelsTr``.
SAMPLE_NAMES = ("hippocampus", "hc18")


def sample_dataset(name: str) -> Path:
    """Path of a bundled sample dataset folder by name."""
    if name not in SAMPLE_NAMES:
        raise AutosamError(f"unknown sample {name!r}; choose one of {', '.join(SAMPLE_NAMES)}")
    return SAMPLE_ROOT / name
