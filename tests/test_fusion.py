"""Fusion strategies on hand-made arrays, and label decisions by probability (never by label order)."""
from __future__ import annotations

import numpy as np
import pytest

from autosam.errors import AutosamError
from autosam.fusion import AverageOptions, GatedOptions, fuse, fusion_strategies
from autosam.labels import to_distribution, to_segmentation
from autosam.answers import SamAnswer


def _run(sam, prompted, iou=None, axis=0, labels=(1,)):
    prompted = np.asarray(prompted, bool)
    iou = np.where(prompted, 0.9, 0.0) if iou is None else np.asarray(iou, np.float32)
    return SamAnswer(labels=list(labels), axis=axis, probabilities=np.asarray(sam, np.float32), prompted=prompted,
                  iou=iou.astype(np.float32))


# one label, two slices (axis 0) of 1 x 4 voxels; SAM was prompted on slice 0 only
COARSE = np.array([[[[1.0, 1.0, 0.0, 0.0]], [[1.0, 0.0, 0.0, 0.0]]]], np.float32)
SAM = np.array([[[[0.0, 0.9, 0.8, 0.0]], [[0.7, 0.7, 0.7, 0.7]]]], np.float32)


def test_replace_uses_sam_where_prompted_and_coarse_elsewhere():
    out = fuse(COARSE, _run(SAM, [[True, False]]), "replace")
    np.testing.assert_allclose(out[0, 0, 0], [0.0, 0.9, 0.8, 0.0])
    np.testing.assert_allclose(out[0, 1, 0], [1.0, 0.0, 0.0, 0.0])


def test_union_and_intersection():
    run = _run(SAM, [[True, False]])
    np.testing.assert_allclose(fuse(COARSE, run, "union")[0, 0, 0], [1.0, 1.0, 0.8, 0.0])
    inter = fuse(COARSE, run, "intersection")
    np.testing.assert_allclose(inter[0, 0, 0], [0.0, 0.9, 0.0, 0.0])
    np.testing.assert_allclose(inter[0, 1, 0], COARSE[0, 1, 0])  # not prompted: coarse kept


def test_average_is_weighted():
    run = _run(SAM, [[True, False]])
    np.testing.assert_allclose(fuse(COARSE, run, "average")[0, 0, 0], [0.5, 0.95, 0.4, 0.0])
    np.testing.assert_allclose(fuse(COARSE, run, "average", AverageOptions(weight=0.25))[0, 0, 0], [0.75, 0.975, 0.2, 0.0])
    np.testing.assert_allclose(fuse(COARSE, run, "average")[0, 1, 0], COARSE[0, 1, 0])


def test_gated_keeps_sam_only_where_confident_and_in_agreement():
    sam = np.array([[[[1, 1, 0, 0]], [[0, 0, 1, 1]]]], np.float32)  # slice 0 agrees with coarse, slice 1 does not
    both = [[True, True]]
    out = fuse(COARSE, _run(sam, both, iou=[[0.95, 0.95]]), "gated")
    np.testing.assert_allclose(out[0, 0, 0], sam[0, 0, 0])
    np.testing.assert_allclose(out[0, 1, 0], COARSE[0, 1, 0])  # Dice with coarse 0 < 0.5
    low = fuse(COARSE, _run(sam, both, iou=[[0.5, 0.95]]), "gated")
    np.testing.assert_allclose(low[0, 0, 0], COARSE[0, 0, 0])  # predicted IoU 0.5 < 0.8
    np.testing.assert_allclose(fuse(COARSE, _run(sam, both, iou=[[0.5, 0.5]]), "gated", GatedOptions(min_iou=0.4, min_agreement=0.0)),
                               sam)


def test_multiclass_conflict_goes_to_the_more_probable_label_whatever_its_value():
    # labels 1 and 2 both claim voxels; the more probable wins, in both directions
    fg = np.array([[[[0.6, 0.9, 0.3, 0.2]]], [[[0.9, 0.6, 0.1, 0.4]]]], np.float32)  # (K=2, 1, 1, 4)
    dist = to_distribution(fg)
    np.testing.assert_allclose(dist.sum(0), 1.0, rtol=1e-6)
    assert to_segmentation(dist, [1, 2])[0, 0].tolist() == [2, 1, 0, 2]
    # an untouched softmax keeps its own argmax (nnU-Net's decision), also where no class reaches 0.5
    softmax = np.array([[[[0.2, 0.5]]], [[[0.45, 0.1]]], [[[0.35, 0.4]]]], np.float32)  # (C=3, 1, 1, 2)
    assert to_segmentation(to_distribution(softmax[1:]), [1, 2]).tolist() == [[softmax.argmax(0)[0, 0].tolist()]]
    # after fusion: SAM raises label 1 above label 2's coarse probability on a voxel both claim
    coarse = np.array([[[[0.0, 0.0]]], [[[0.7, 0.7]]]], np.float32)
    sam = np.array([[[[0.95, 0.2]]], [[[0.0, 0.0]]]], np.float32)
    run = _run(sam, [[True], [False]], labels=(1, 2))
    seg = to_segmentation(to_distribution(fuse(coarse, run, "union")), [1, 2])
    assert seg[0, 0].tolist() == [1, 2]


def test_every_strategy_keeps_shape_and_unknown_is_refused():
    run = _run(SAM, [[True, False]])
    for name in fusion_strategies:
        out = fuse(COARSE, run, name)
        assert out.shape == COARSE.shape and out.dtype == np.float32
    assert set(fusion_strategies) == {"replace", "union", "intersection", "average", "gated"}
    with pytest.raises(AutosamError, match="unknown fusion"):
        fuse(COARSE, run, "vote")
    with pytest.raises(AutosamError, match="differ in shape"):
        fuse(COARSE[:, :1], run, "replace")


def test_auto_fusion_is_average_on_probabilities_and_gated_on_label_maps():
    """The built-in default: an average needs coarse probabilities (a 0/1 map ties SAM at 0.5), so a hard label map
    gets the gate; each side keeps only its own options."""
    from autosam.refine import RefineConfig

    config = RefineConfig(fusion_options={"weight": 0.3, "min_iou": 0.9})
    config.check()
    assert config.fusion == "auto"
    assert config.fusion_for(soft=True) == ("average", AverageOptions(weight=0.3))
    assert config.fusion_for(soft=False) == ("gated", GatedOptions(min_iou=0.9, min_agreement=0.5))
    assert RefineConfig(fusion="replace").fusion_for(soft=False) == ("replace", None)


def test_each_fusion_takes_its_own_typed_options_declared_once():
    """One options dataclass per fusion that takes any: the CLI flags, the record's names and the defaults all
    come from it; the wrong type or an option of another fusion is refused in one line."""
    from autosam.fusion import option_names, options_of
    from autosam.settings.args import FUSION_OPTIONS

    assert option_names("average") == ("weight",) and option_names("gated") == ("min_iou", "min_agreement")
    assert option_names("auto") == ("weight", "min_iou", "min_agreement") and option_names("replace") == ()
    assert FUSION_OPTIONS == {"weight": "average", "min_iou": "gated", "min_agreement": "gated"}
    assert options_of("gated", {"min_iou": 0.7}) == GatedOptions(0.7, 0.5) and options_of("union", {}) is None
    with pytest.raises(AutosamError, match=r"fusion option\(s\) weight do not apply to fusion 'gated'"):
        options_of("gated", {"weight": 0.3})
    run = _run(SAM, [[True, True]])
    with pytest.raises(AutosamError, match="fusion 'average' takes AverageOptions, not GatedOptions"):
        fuse(COARSE, run, "average", GatedOptions())
    with pytest.raises(AutosamError, match="fusion 'replace' takes no options"):
        fuse(COARSE, run, "replace", AverageOptions())
