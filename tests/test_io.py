"""nnU-Net raw-format I/O through nnU-Net's reader/writers, and slicing."""
from __future__ import annotations

import gzip
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
    with pytest.raises(AutosamError, match=r".*x_0000\.nii\.gz: truncated or corrupt") as e:
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


# --- content checks (issue #34): truncated streams, label values, probabilities -------------------------------
HIPPO_LABEL = sample_dataset("hippocampus") / "labelsTr" / "hippocampus_148.nii.gz"


def test_every_bundled_sample_still_reads():
    for name in ("hippocampus", "hc18"):
        root = sample_dataset(name)
        info = io.load_dataset_json(root)
        cases = io.list_cases(root / "imagesTr", info.file_ending, info.num_channels)
        for case, files in cases.items():
            image = io.read_case(case, files)
            seg, _ = io.read_label(root / "labelsTr" / f"{case}{info.file_ending}", info=info)
            assert seg.dtype == np.int16 and seg.shape == image.image.shape[1:]
            assert set(np.unique(seg)) <= set(info.labels.values())


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16])
def test_legal_label_files_read_as_before(tmp_path, dtype):
    ref = sitk.ReadImage(str(HIPPO_LABEL))
    arr = sitk.GetArrayFromImage(ref).astype(dtype)
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(ref)
    sitk.WriteImage(img, str(tmp_path / "a.nii.gz"))
    info = io.load_dataset_json(sample_dataset("hippocampus"))
    for given in (None, info):
        seg, _ = io.read_label(tmp_path / "a.nii.gz", info=given)
        assert seg.dtype == np.int16
        np.testing.assert_array_equal(seg, arr.astype(np.int16))


def test_truncated_gzip_image_and_label_are_refused(tmp_path):
    data = HIPPO_LABEL.read_bytes()
    for keep in (len(data) // 2, len(data) - 1):
        bad = tmp_path / "x_0000.nii.gz"
        bad.write_bytes(data[:keep])
        for read in (lambda: io.read_label(bad), lambda: io.read_case("x", [bad])):
            with pytest.raises(AutosamError, match=r"x_0000\.nii\.gz: truncated or corrupt \(") as e:
                read()
            assert "\n" not in str(e.value)


def test_check_complete_verifies_crc_size_and_the_nifti_length(tmp_path):
    from autosam import integrity

    raw = gzip.decompress(HIPPO_LABEL.read_bytes())
    f = tmp_path / "a.nii.gz"
    good = gzip.compress(raw)
    for blob in (good, gzip.compress(raw[:400]) + gzip.compress(raw[400:]), good + bytes(64)):
        f.write_bytes(blob)  # one member, two members, zero padding: all complete
        integrity.check_complete(f)
    for where, why in ((-8, "incorrect data check"), (-2, "incorrect length check")):
        broken = bytearray(good)
        broken[where] ^= 1
        f.write_bytes(bytes(broken))
        with pytest.raises(AutosamError, match=why):
            integrity.check_complete(f)
    f.write_bytes(gzip.compress(raw[:-10]))  # a complete stream of a short NIfTI
    with pytest.raises(AutosamError, match=rf"truncated or corrupt \(its NIfTI header promises {len(raw)} bytes"):
        integrity.check_complete(f)
    plain = tmp_path / "a.nii"
    plain.write_bytes(raw)
    integrity.check_complete(plain)
    plain.write_bytes(raw[:-10])
    with pytest.raises(AutosamError, match=r"a\.nii: truncated or corrupt"):
        integrity.check_complete(plain)


def test_nifti2_length_is_checked(tmp_path):
    import nibabel as nib

    arr = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    nib.save(nib.Nifti2Image(arr, np.eye(4)), str(tmp_path / "two.nii"))
    from autosam import integrity

    raw = (tmp_path / "two.nii").read_bytes()
    assert integrity._nifti_length(raw[:540]) == len(raw)
    (tmp_path / "two.nii").write_bytes(raw[:-2])
    with pytest.raises(AutosamError, match="truncated or corrupt"):
        integrity.check_complete(tmp_path / "two.nii")


def _label_file(tmp_path, values: np.ndarray, dtype):
    ref = sitk.ReadImage(str(HIPPO_LABEL))
    arr = sitk.GetArrayFromImage(ref).astype(dtype)
    arr[0, 0, : len(values)] = values
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(ref)
    sitk.WriteImage(img, str(tmp_path / "l.nii.gz"))
    return tmp_path / "l.nii.gz"


def test_large_label_values_never_wrap(tmp_path):
    info = io.load_dataset_json(sample_dataset("hippocampus"))
    f = _label_file(tmp_path, np.array([65537]), np.int32)
    with pytest.raises(AutosamError, match=r"l\.nii\.gz: label values 65537 are not in .*dataset\.json \(0, 1, 2\)"):
        io.read_label(f, info=info)
    with pytest.raises(AutosamError, match=r"l\.nii\.gz: label values 65537 are beyond the int16 range"):
        io.read_label(f)


def test_label_values_not_in_dataset_json_are_refused(tmp_path):
    from PIL import Image

    info = io.load_dataset_json(sample_dataset("hc18"))
    a = np.asarray(Image.open(sample_dataset("hc18") / "labelsTr" / "719_HC.png")) * 255
    Image.fromarray(a.astype(np.uint8)).save(tmp_path / "719_HC.png")
    with pytest.raises(AutosamError, match=r"719_HC\.png: label values 255 are not in .*dataset\.json \(0, 1\)") as e:
        io.read_label(tmp_path / "719_HC.png", info=info)
    assert "\n" not in str(e.value)
    seg, _ = io.read_label(tmp_path / "719_HC.png")  # without a dataset.json only the int16 range is checked
    assert seg.max() == 255
    many = _label_file(tmp_path, np.arange(3, 23), np.int16)
    with pytest.raises(AutosamError, match=r"label values 3, 4, 5, 6, 7, 8, 9, 10, \.\.\. \(20 values\)"):
        io.read_label(many, info=io.load_dataset_json(sample_dataset("hippocampus")))


def test_non_integer_label_values_are_refused(tmp_path):
    from autosam.integrity import label_map

    info = io.load_dataset_json(sample_dataset("hippocampus"))
    f = _label_file(tmp_path, np.array([0.5]), np.float32)
    for given in (None, info):
        with pytest.raises(AutosamError, match=r"label file .*l\.nii\.gz holds non-integer values \(0\.5\)"):
            io.read_label(f, info=given)
    values = np.array([0, 1, np.nan, 2], np.float32)  # ITK writes NaN as 0, so the reader's array is checked here
    for allowed in (None, [0, 1, 2]):
        with pytest.raises(AutosamError, match=r"label file x\.png holds non-integer values \(nan\)"):
            label_map(values, "x.png", allowed)


def test_probability_checks():
    from autosam.integrity import check_probabilities

    probs = np.random.default_rng(0).random((3, 4, 5, 6)).astype(np.float32)
    probs /= probs.sum(0, keepdims=True)
    check_probabilities(probs, "p.npz")
    check_probabilities(np.clip(probs + 5e-4, 0, None), "p.npz")  # within both tolerances
    for poison, why in ((lambda p: p.__setitem__((1, 0, 0, 0), np.nan), "non-finite"),
                        (lambda p: p.__setitem__((1, 0, 0, 0), np.inf), "non-finite"),
                        (lambda p: p.__setitem__((0, 0, 0, 0), -0.5), r"\[0, 1\]"),
                        (lambda p: p.__imul__(2), r"\[0, 1\]|sum to 1"),
                        (lambda p: p[0].fill(0), "sum to 1")):
        bad = probs.copy()
        poison(bad)
        with pytest.raises(AutosamError, match=rf"p\.npz: .*({why})"):
            check_probabilities(bad, "p.npz")


def test_the_preflight_check_refuses_empty_cut_and_flipped_files(tmp_path):
    """check_file: the intact samples pass with their channels; empty, cut and byte-flipped files are refused."""
    from autosam.integrity import check_file

    hippo = sample_dataset("hippocampus") / "imagesTr" / "hippocampus_148_0000.nii.gz"
    png = sample_dataset("hc18") / "imagesTr" / "801_HC_0000.png"
    assert check_file(hippo) == 1 and check_file(png) == 1
    for source, keep, message in ((hippo, 0, "empty file"), (hippo, 0.6, "truncated or corrupt"),
                                  (png, 0.6, "truncated or corrupt"), (hippo, -1, "truncated or corrupt"),
                                  (png, -1, "truncated or corrupt")):
        data = bytearray(source.read_bytes())
        if keep < 0:  # one byte flipped in the middle of the compressed data
            data[len(data) // 2] ^= 0x10
        else:
            data = data[: int(len(data) * keep)]
        broken = tmp_path / f"broken{keep}{source.name}"
        broken.write_bytes(bytes(data))
        with pytest.raises(AutosamError, match=message):
            check_file(broken)


def test_a_file_checked_once_is_not_read_again_until_it_changes(tmp_path, monkeypatch):
    """The preflight's check serves the read that follows: one decompression per unchanged file and process."""
    import os

    from autosam import integrity

    image = tmp_path / "x_0000.nii.gz"
    shutil.copy(sample_dataset("hippocampus") / "imagesTr" / "hippocampus_148_0000.nii.gz", image)
    reads = []
    real = integrity._gunzip
    monkeypatch.setattr(integrity, "_gunzip", lambda p: reads.append(p) or real(p))
    assert integrity.check_file(image) == integrity.check_file(image) == 1 and len(reads) == 1
    io.read_case("x", [image])
    assert len(reads) == 1
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # changed since: checked again
    integrity.check_file(image)
    assert len(reads) == 2
