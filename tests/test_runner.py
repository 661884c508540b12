"""The one case runner: resume, the output guard, the folder lock and atomic, consistent case files.

Real files through nnU-Net's reader/writer (the bundled hippocampus sample); the per-case function is cheap (the
reference label, eroded) so these tests need no SAM.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage

from autosam import io
from autosam.errors import AutosamError
from autosam.runner import LOCK_FILE, CaseOutput, CaseRunner, FolderLock, guard_output
from autosam.sample import sample_dataset

ROOT = sample_dataset("hippocampus")


@pytest.fixture()
def data():
    info = io.load_dataset_json(ROOT)
    cases = io.list_cases(ROOT / "imagesTr", info.file_ending, info.num_channels)
    labels = io.label_files(ROOT / "labelsTr", list(cases), info.file_ending)
    return info, dict(sorted(cases.items())[:3]), labels


def _eroded(labels, calls: list):
    def process(case: io.Case) -> CaseOutput:
        calls.append(case.case_id)
        label, _ = io.read_label(labels[case.case_id])
        seg = np.where(ndimage.binary_erosion(label > 0), label, 0).astype(np.int16)
        probs = np.stack([(seg == v) for v in (0, 1, 2)]).astype(np.float32)
        return CaseOutput(seg, probs)
    return process


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_runs_resumes_and_overwrites(data, tmp_path, capsys):
    info, cases, labels = data
    out, calls = tmp_path / "out", []
    runner = CaseRunner(out, info, inputs={"image": ROOT / "imagesTr"}, record={"verb": "test"}, desc="test")
    assert runner.run(cases, _eroded(labels, calls)) == list(cases)
    assert calls == list(cases)
    names = {p.name for p in out.iterdir()}
    assert {"dataset.json", "plans.json", "autosam_run.json"} <= names
    assert not any(n.startswith(".") for n in names)  # no lock, no temporary file left
    for case in cases:  # what was written is what the function returned, on the image's grid
        seg, props = io.read_label(out / f"{case}{info.file_ending}")
        label, ref_props = io.read_label(labels[case])
        assert seg.shape == label.shape and 0 < (seg > 0).sum() < (label > 0).sum()
        io.check_same_geometry(ref_props, props, case)
    before = _snapshot(out)
    assert CaseRunner(out, info, record={"verb": "test"}).run(cases, _eroded(labels, calls)) == []
    assert len(calls) == 3 and _snapshot(out) == before  # resumed: nothing redone, nothing rewritten
    assert "3 case(s) already in" in capsys.readouterr().err
    assert CaseRunner(out, info, record={"verb": "test"}, overwrite=True).run(cases, _eroded(labels, calls)) \
        == list(cases)
    assert len(calls) == 6


def test_overwrite_without_probabilities_drops_stale_npz_and_pkl(data, tmp_path):
    info, cases, labels = data
    out = tmp_path / "out"
    CaseRunner(out, info, record={}, save_probabilities=True).run(cases, _eroded(labels, []))
    first = next(iter(cases))
    assert (out / f"{first}.npz").is_file() and (out / f"{first}.pkl").is_file()
    CaseRunner(out, info, record={}, overwrite=True).run(cases, _eroded(labels, []))
    assert not list(out.glob("*.npz")) and not list(out.glob("*.pkl"))
    assert len(list(out.glob(f"*{info.file_ending}"))) == len(cases)


def test_a_failing_case_leaves_finished_cases_and_no_partial_files(data, tmp_path):
    info, cases, labels = data
    out, calls = tmp_path / "out", []
    good = _eroded(labels, calls)
    broken = list(cases)[1]

    def process(case):
        if case.case_id == broken:
            raise AutosamError(f"case {broken}: broken on purpose")
        return good(case)

    with pytest.raises(AutosamError, match="broken on purpose"):
        CaseRunner(out, info, record={}, save_probabilities=True).run(cases, process)
    files = sorted(p.name for p in out.iterdir())
    assert f"{list(cases)[0]}.npz" in files and not any(broken in f for f in files)
    assert not any(f.startswith(".") for f in files)  # lock released, no temporary file
    calls.clear()
    CaseRunner(out, info, record={}, save_probabilities=True).run(cases, good)
    assert calls == list(cases)[1:]  # the rerun does only what is missing


@pytest.mark.parametrize("where", ["same", "inside", "contains", "symlink"])
def test_the_output_may_not_touch_an_input_folder(data, tmp_path, where):
    info, cases, _ = data
    images = tmp_path / "images"
    images.mkdir()
    out = {"same": images, "inside": images / "out", "contains": tmp_path, "symlink": tmp_path / "link"}[where]
    if where == "symlink":
        out.symlink_to(images)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(AutosamError, match="must differ from, and lie outside, every input folder") as e:
        CaseRunner(out, info, inputs={"image": images}, record={})
    assert len(str(e.value).splitlines()) == 1 and "image folder" in str(e.value)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written
    guard_output(tmp_path / "elsewhere", {"image": images, "unused": None})  # a sibling is fine


def test_a_second_run_into_a_locked_folder_fails_at_once_naming_the_holder(data, tmp_path):
    info, cases, labels = data
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK_FILE).write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(), "verb": "x"}))
        with pytest.raises(AutosamError) as e:
            CaseRunner(out, info, record={}).run(cases, _eroded(labels, []))
        assert f"PID {holder.pid} on {socket.gethostname()}" in str(e.value)
        assert not list(out.glob(f"*{info.file_ending}"))
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_left_by_a_dead_process_is_taken_over(data, tmp_path, capsys):
    info, cases, labels = data
    out = tmp_path / "out"
    out.mkdir()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (out / LOCK_FILE).write_text(json.dumps({"pid": gone.pid, "host": socket.gethostname()}))
    (out / ".tmp999_left.nii.gz").write_bytes(b"half")  # a dead run's temporary file
    assert CaseRunner(out, info, record={}).run(cases, _eroded(labels, [])) == list(cases)
    assert "taking over the lock" in capsys.readouterr().err
    assert not (out / LOCK_FILE).exists() and not list(out.glob(".tmp*"))


def test_the_lock_is_exclusive_within_one_process_too(tmp_path):
    first = FolderLock(tmp_path, "a")
    first.acquire()
    try:
        data = json.loads((tmp_path / LOCK_FILE).read_text())
        assert data["pid"] == os.getpid() and data["host"] == socket.gethostname()
        with pytest.raises(AutosamError, match="in use by another autosam run"):
            FolderLock(tmp_path, "b").acquire()
    finally:
        first.release()
    assert not (tmp_path / LOCK_FILE).exists()
