"""Prompts from label maps: boxes (margins in mm, px or box fractions), points, mask prompts, gaps between slices."""
from __future__ import annotations

import numpy as np
import pytest

from autosam.errors import AutosamError
from autosam.prompts import (bounding_box, fill_gaps, mask_logits, negative_points, positive_points,
                             prompt_strategies, prompts_for_slices)


def _slices(n=3, h=30, w=40):
    return np.zeros((n, h, w), dtype=np.int16)


def test_box_of_a_component_with_margin_in_pixels_and_mm():
    lab = _slices(1)
    lab[0, 10:20, 5:15] = 1  # y 10..19, x 5..14
    (px,) = prompts_for_slices(lab, [1], "box", margin=2, margin_unit="px")
    np.testing.assert_allclose(px.prompt.box, [3, 8, 16, 21])
    # spacing (y, x) = (0.5, 2.0) mm: a 2 mm margin is 4 pixels along y and 1 along x
    (mm,) = prompts_for_slices(lab, [1], "box", margin=2, margin_unit="mm", spacing=(0.5, 2.0))
    np.testing.assert_allclose(mm.prompt.box, [4, 6, 15, 23])
    assert px.label == 1 and px.prompt.slice_index == 0 and px.prompt.points is None


def test_box_is_clipped_to_the_slice_and_one_box_per_component():
    lab = _slices(1)
    lab[0, 0:5, 0:5] = 1
    lab[0, 20:25, 30:38] = 1
    boxes = sorted(p.prompt.box.tolist() for p in prompts_for_slices(lab, [1], "box", margin=3, margin_unit="px"))
    assert boxes == [[0, 0, 7, 7], [27, 17, 39, 27]]
    np.testing.assert_allclose(bounding_box(lab[0] == 1), [0, 0, 37, 24])


def test_small_components_are_dropped():
    lab = _slices(1)
    lab[0, 10:20, 5:15] = 1
    lab[0, 25:27, 30:32] = 1  # 4 pixels
    assert len(prompts_for_slices(lab, [1], "box", min_size=1)) == 2
    assert len(prompts_for_slices(lab, [1], "box", min_size=5)) == 1


def test_positive_points_inside_negative_points_outside():
    lab = _slices(1)
    lab[0, 5:25, 5:10] = 1  # an L shape: vertical bar ...
    lab[0, 20:25, 5:35] = 1  # ... and horizontal bar
    lab[0, 2:4, 36:39] = 2  # another class nearby
    (p,) = prompts_for_slices(lab, [1], "box+points", positive_points=2, negative_points=3)
    pts, labels = p.prompt.points, p.prompt.point_labels
    assert labels.tolist() == [1, 1, 0, 0, 0]
    for (x, y), positive in zip(pts.astype(int), labels):
        assert (lab[0, y, x] == 1) == bool(positive)
    assert len({tuple(q) for q in pts[:2].tolist()}) == 2  # two distinct interior points
    # the first positive point is the most interior one: at least 2 px from the border
    x, y = pts[0].astype(int)
    assert lab[0, y - 2 : y + 3, x - 2 : x + 3].min() == 1


def test_positive_points_use_spacing_and_negatives_avoid_the_whole_class():
    comp = np.zeros((20, 20), bool)
    comp[5:15, 2:18] = True
    (x, y), = positive_points(comp, 1)
    assert comp[int(y), int(x)]
    other = comp.copy()
    other[0:20, 0:2] = True  # same class elsewhere on the slice
    for x, y in negative_points(comp, other, n=4).astype(int):
        assert not other[y, x]


def test_no_prompts_for_an_empty_slice_or_absent_class():
    lab = _slices(3)
    lab[0, 10:20, 5:15] = 1
    prompts = prompts_for_slices(lab, [1, 2], "box+points")
    assert [(p.label, p.prompt.slice_index) for p in prompts] == [(1, 0)]
    assert prompts_for_slices(_slices(2), [1, 2], "box") == []


def test_neighbour_propagation_fills_a_one_slice_gap():
    lab = _slices(5)
    lab[1, 10:20, 5:15] = 1
    lab[3, 12:22, 7:17] = 1
    lab[4, 12:22, 7:17] = 1
    without = prompts_for_slices(lab, [1], "box")
    assert sorted(p.prompt.slice_index for p in without) == [1, 3, 4]
    filled = prompts_for_slices(lab, [1], "box", gaps=True)
    assert sorted(p.prompt.slice_index for p in filled) == [1, 2, 3, 4]  # slice 0 has one neighbour only
    (gap,) = [p for p in filled if p.prompt.slice_index == 2]
    np.testing.assert_allclose(gap.prompt.box, [7, 12, 14, 19])  # the neighbours' overlap
    masks = fill_gaps(lab == 1)
    assert not masks[0].any() and masks[2].any()


def test_mask_prompt_is_logits_limited_to_the_box_and_taken_from_probabilities():
    lab = _slices(1)
    lab[0, 10:20, 5:15] = 1
    probs = np.zeros((1, 1, 30, 40), np.float32)
    probs[0, 0, 10:20, 5:15] = 0.9
    probs[0, 0, 0:3, 30:40] = 0.9  # outside the component's box: must not leak into the prompt
    (p,) = prompts_for_slices(lab, [1], "box+mask", prob_slices=probs, margin=1, margin_unit="px", mask_logit=6.0)
    m = p.prompt.mask
    assert m.shape == (30, 40)
    np.testing.assert_allclose(m[15, 10], np.log(0.9 / 0.1), rtol=1e-5)
    assert m[1, 35] == -6.0 and m[25, 30] == -6.0
    assert mask_logits(np.ones((2, 2)), bound=4.0).max() == pytest.approx(4.0)


def test_prompts_from_probabilities_alone_and_every_strategy_is_registered():
    probs = np.zeros((1, 2, 30, 40), np.float32)
    probs[0, 1, 10:20, 5:15] = 0.8
    (p,) = prompts_for_slices(None, [1, 2], "box", prob_slices=probs)
    assert p.label == 2
    assert set(prompt_strategies) >= {"box", "box+points", "box+mask", "box+points+mask", "points"}
    lab = _slices(1)
    lab[0, 10:20, 5:15] = 1
    for name in prompt_strategies:
        (q,) = prompts_for_slices(lab, [1], name)
        assert (q.prompt.box is not None) == name.startswith("box")
        assert (q.prompt.points is not None) == ("points" in name)
        assert (q.prompt.mask is not None) == ("mask" in name)


def test_bad_strategy_or_unit_is_refused():
    with pytest.raises(AutosamError, match="unknown prompt strategy"):
        prompts_for_slices(_slices(1), [1], "lasso")
    with pytest.raises(AutosamError, match="margin unit"):
        prompts_for_slices(_slices(1), [1], "box", margin_unit="inch")


def test_max_objects_keeps_the_largest_components_of_each_label():
    from autosam.prompts import prompts_for_slices

    seg = np.zeros((1, 40, 40), np.int16)
    seg[0, 2:20, 2:20] = 1  # the object
    seg[0, 30:34, 30:34] = 1  # a stray blob
    seg[0, 25:28, 2:5] = 2
    every = prompts_for_slices(seg, [1, 2], "box", min_size=1)
    one = prompts_for_slices(seg, [1, 2], "box", min_size=1, max_objects=1)
    assert len(every) == 3 and len(one) == 2
    assert [p.prompt.box.tolist() for p in one if p.label == 1] == [[2, 2, 19, 19]]
