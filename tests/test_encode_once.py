"""``autosam segment`` with an embedding-mode prompter and SAM's refinement encodes each slice once: the prompter's
slices and refine's prompted slices share one in-memory cache for the case (the real LiteMedSAM, its torch image
encoder counted by a forward hook)."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from autosam import io, slicing
from autosam.pipelines.segment import SegmentJob
from autosam.prompter import Prompter
from autosam.prompter.model import ArchConfig, PromptNet, decode_dense
from autosam.refine import RefineConfig
from autosam.sam import SamPredictor
from autosam.sample import sample_dataset

ROOT = sample_dataset("hippocampus")


def _embedding_prompter(info: io.DatasetInfo, sam) -> Prompter:
    """An embedding-mode prompter for the sample's dataset whose dense prompt was trained (30 steps through SAM's
    real decoder, its constant part only) to call everything foreground: the coarse map covers every slice, so
    refine prompts every slice the prompter encoded."""
    torch.manual_seed(0)
    net = PromptNet(ArchConfig(in_channels=1, num_classes=len(info.foreground), mode="embedding", base=4, depth=2))
    bias = net.project.bias
    opt = torch.optim.Adam([bias], lr=0.1)
    for _ in range(30):
        low, _ = decode_dense(sam, torch.zeros(1, 256, 64, 64), bias[None, :, None, None].expand(1, 256, 64, 64))
        loss = torch.nn.functional.softplus(-low).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    config = {"mode": "embedding", "dataset": {"labels": info.labels, "channel_names": info.channel_names},
              "preprocessing": {"input_size": 32, "slice_axis": None}}
    return Prompter(config, net)


def test_the_prompter_and_refine_encode_each_slice_once(litemedsam):
    info = io.load_dataset_json(ROOT)
    case_id, files = sorted(io.list_cases(ROOT / "imagesTr", info.file_ending, info.num_channels).items())[0]
    case = io.read_case(case_id, files)
    case = dataclasses.replace(case, image=np.ascontiguousarray(case.image[:, 10:14]))  # 4 slices (axis 0) suffice
    prompter = _embedding_prompter(info, litemedsam)
    encoded = []
    hook = litemedsam.image_encoder.register_forward_hook(lambda m, inputs, out: encoded.append(len(inputs[0])))
    try:
        job = SegmentJob(prompter, info, lambda: SamPredictor(litemedsam, device="cpu",
                                                                                engine="torch"),
                         RefineConfig(prompt="box", fusion="replace"))
        out = job(case)
    finally:
        hook.remove()
    n_slices = case.image.shape[1 + slicing.choose_axis(case.spacing, case.image.shape[1:])]
    stats = job._sam.cache.stats
    assert sum(encoded) == stats.encoded == n_slices  # every slice once, by the prompter
    assert stats.requested > n_slices  # refine asked for slices too: all came from the cache
    assert (out.coarse > 0).all() and out.segmentation.shape == case.image.shape[1:]
    assert len(job._sam.cache) == 0  # the case's embeddings are freed with it
    assert np.isin(out.segmentation, [0, *info.foreground]).all()
