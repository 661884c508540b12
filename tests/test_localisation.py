"""SAM-side localisation levers (``box_hypotheses``, ``rebox``) on loose boxes: real LiteMedSAM, real HC18 images."""
from __future__ import annotations

import numpy as np
import pytest

from autosam import io
from autosam.labels import dice_per_label
from autosam.prompts import prompts_for_slices
from autosam.sam.cache import CachingPredictor
from autosam.sam.transforms import normalize_case
from autosam.answers import ask_sam
from autosam.sample import sample_dataset

HC18 = sample_dataset("hc18")
INFO = io.load_dataset_json(HC18)


def _loose(ref: np.ndarray, scale: float = 1.3):
    """Box prompts from the reference, widened by ``scale`` about their centre: a coarse map that overshoots."""
    prompts = prompts_for_slices(ref, INFO.foreground, "box")
    for cp in prompts:
        x0, y0, x1, y1 = cp.prompt.box
        cx, cy, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2 * scale, (y1 - y0) / 2 * scale
        cp.prompt.box = np.array([cx - hw, cy - hh, cx + hw, cy + hh], np.float32)
    return prompts


@pytest.fixture(scope="module")
def scores(litemedsam) -> dict:
    predictor = CachingPredictor(litemedsam, device="cpu", engine="torch")
    files = io.list_cases(HC18 / "imagesTr", INFO.file_ending, INFO.num_channels)
    out: dict = {}
    for case_id in sorted(files):
        case = io.read_case(case_id, files[case_id])
        ref = io.read_label(HC18 / "labelsTr" / f"{case_id}.png")[0]
        image = normalize_case(case.image, INFO.channel_names)
        for name, kwargs in {"plain": {}, "hypotheses": {"box_hypotheses": True}, "rebox": {"rebox": 1}}.items():
            run = ask_sam(predictor, image, 0, _loose(ref), INFO.foreground, **kwargs)
            seg = (run.probabilities[0] > 0.5).astype(np.int16)
            out.setdefault(name, []).append(dice_per_label(seg, ref, INFO.foreground)[0])
    return {k: float(np.mean(v)) for k, v in out.items()}


def test_box_hypotheses_recover_from_loose_boxes(scores):
    assert scores["hypotheses"] >= scores["plain"] + 0.01, scores


def test_rebox_tightens_loose_boxes(scores):
    assert scores["rebox"] >= scores["plain"] + 0.01, scores
    assert scores["rebox"] > 0.9, scores
