"""nnU-Net raw-format I/O through nnU-Net's reader/writers, and slicing."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from autosam import io, slicing
from autosam.errors import AutosamError
from autosam.sample import sample_dataset


def test_sample_datasets_are_valid_and_complete():
    for name, n_cases, ending in (("hippocampus", 6, ".nii.gz"), ("hc18", 3, ".png")):
        root = sample_dataset(name)
        info = io.load_dataset_json(root)
        assert info.file_ending == ending and info.num_channels == 1
        cases = io.list_cases(root / "imagesTr", info.file_ending, info.num_channels)
        assert len(cases) == n_cases == info.raw["numTraining"]
        io.label_files(root / "labelsTr", list(cases), info.file_ending)
    assert (sample_dataset("hc18").parent / "SOURCE.md").read_text().count("Licence") == 2


def test_nifti_round_trip_keeps_geometry_and_dtype(tmp_path):
    root = sample_dataset("hippocampus")
    src = root / "labelsTr" / "hippocampus_165.nii.gz"
    seg, props = io.read_label(src)
    out = tmp_path / "hippocampus_165.nii.gz"
    io.write_seg(seg, out, props)
    a, b = sitk.ReadImage(str(src)), sitk.ReadImage(str(out))
    assert a.GetSpacing() == b.GetSpacing()
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin())
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection())
    assert a.GetPixelID() == b.GetPixelID()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
    assert not list(tmp_path.glob(".tmp*"))


def test_nifti_round_trip_of_unusual_geometry(tmp_path):
    arr = np.zeros((4, 5, 6), dtype=np.uint8)
    arr[1:3, 2:4, 1:5] = 2
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.7, 1.3, 3.0))
    img.SetOrigin((10.0, -4.5, 2.25))
    img.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    src = tmp_path / "a.nii.gz"
    sitk.WriteImage(img, str(src))
    seg, props = io.read_label(src)
    assert props["spacing"] == [3.0, 1.3, 0.7] or tuple(props["spacing"]) == pytest.approx((3.0, 1.3, 0.7))
    io.write_seg(seg, tmp_path / "b.nii.gz", props)
    b = sitk.ReadImage(str(tmp_path / "b.nii.gz"))
    assert b.GetSpacing() == pytest.approx(img.GetSpacing())
    assert b.GetOrigin() == pytest.approx(img.GetOrigin())
    assert b.GetDirection() == pytest.approx(img.GetDirection())
    assert b.GetPixelID() == img.GetPixelID()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(b), arr)


def test_png_round_trip(tmp_path):
    from PIL import Image

    src = sample_dataset("hc18") / "labelsTr" / "801_HC.png"
    seg, props = io.read_label(src)
    assert seg.shape[0] == 1 and props["spacing"][0] == 999
    out = tmp_path / "801_HC.png"
    io.write_seg(seg, out, props)
    a, b = Image.open(src), Image.open(out)
    assert a.mode == b.mode and a.size == b.size
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_multichannel_listing_and_errors(tmp_path):
    for name in ("a_0000.nii.gz", "a_0001.nii.gz", "b_0000.nii.gz", "b_0001.nii.gz", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    cases = io.list_cases(tmp_path, ".nii.gz", 2)
    assert list(cases) == ["a", "b"] and [f.name for f in cases["b"]] == ["b_0000.nii.gz", "b_0001.nii.gz"]
    (tmp_path / "b_0001.nii.gz").unlink()
    with pytest.raises(AutosamError, match=r"case b .*missing channel file\(s\) b_0001\.nii\.gz"):
        io.list_cases(tmp_path, ".nii.gz", 2)
    (tmp_path / "c.nii.gz").write_bytes(b"")
    with pytest.raises(AutosamError, match="must be named <case>_XXXX.nii.gz"):
        io.list_cases(tmp_path, ".nii.gz", 2)
    with pytest.raises(AutosamError, match="no images named"):
        io.list_cases(tmp_path, ".png", 1)


def test_dataset_json_validation(tmp_path):
    with pytest.raises(AutosamError, match="dataset.json not found"):
        io.load_dataset_json(tmp_path)
    (tmp_path / "dataset.json").write_text("{broken")
    with pytest.raises(AutosamError, match="is not valid JSON"):
        io.load_dataset_json(tmp_path)
    good = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1}, "file_ending": ".nii.gz"}
    for key in good:
        (tmp_path / "dataset.json").write_text(json.dumps({k: v for k, v in good.items() if k != key}))
        with pytest.raises(AutosamError, match=f"missing required key '{key}'"):
            io.load_dataset_json(tmp_path)
    regions = dict(good, labels={"background": 0, "whole": [1, 2], "core": 2}, regions_class_order=[1, 2])
    (tmp_path / "dataset.json").write_text(json.dumps(regions))
    with pytest.raises(AutosamError, match="region-based labels"):
        io.load_dataset_json(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps(dict(good, labels={"background": 0, "a": 1, "ignore": 2})))
    info = io.load_dataset_json(tmp_path)
    assert info.foreground == [1] and info.ignore_label == 2 and info.channel_names == ["CT"]


def test_reader_errors_are_one_line(tmp_path):
    with pytest.raises(AutosamError, match=r"unknown file ending '\.xyz'"):
        io.reader_writer(".xyz")
    bad = tmp_path / "x_0000.nii.gz"
    bad.write_bytes(b"garbage, not a nifti")
    with pytest.raises(AutosamError, match=r"cannot read image .*x_0000\.nii\.gz") as e:
        io.read_case("x", [bad])
    assert "\n" not in str(e.value)
    shutil.copy(sample_dataset("hc18") / "labelsTr" / "801_HC.png", tmp_path / "l.png")
    with pytest.raises(AutosamError, match="has no label file"):
        io.label_files(tmp_path, ["801_HC"], ".png")


def test_choose_axis_and_slices_round_trip():
    assert slicing.choose_axis((3.0, 0.8, 0.8), (40, 200, 200)) == 0
    assert slicing.choose_axis((0.8, 0.8, 5.0), (200, 200, 40)) == 2
    assert slicing.choose_axis((1.0, 1.0, 1.0), (36, 50, 35)) == 2  # tie: fewest slices
    assert slicing.choose_axis((999, 1, 1), (1, 540, 800)) == 0
    assert slicing.choose_axis((1, 1, 1), (3, 4, 5), axis=1) == 1
    with pytest.raises(AutosamError):
        slicing.choose_axis((1, 1, 1), (3, 4, 5), axis=3)
    vol = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    for axis in range(3):
        s = slicing.to_slices(vol, axis)
        assert s.shape[1] == 2 and s.shape[0] == vol.shape[axis + 1]
        np.testing.assert_array_equal(slicing.from_slices(s, axis), vol)
