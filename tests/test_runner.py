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
from autosam.errors import AutosamError, CasesFailed
from autosam.runner import LOCK_FILE, CaseOutput, CaseRunner, FolderLock, Parallel, guard_output
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
    err = capsys.readouterr().err
    assert "3 case(s) already in" in err and "other settings" not in err
    # a rerun with other settings keeps the finished cases and says so, even quiet and with nothing left to do
    quiet = CaseRunner(out, info, record={"verb": "test", "fusion": "average"}, quiet=True)
    assert quiet.run(cases, _eroded(labels, calls)) == [] and _snapshot(out) == before
    assert capsys.readouterr().err.strip() == (f"note: {out} holds 3 case(s) of a run with other settings (fusion); "
                                               "they are kept unless --overwrite is given")
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


# --- the pipelined local loop (a thread reading ahead, a thread writing behind) ----------------------------------

def _segment_no_sam(out, pipeline: bool, cases: int = 3):
    """``autosam segment --no-sam`` (the shipped hippocampus prompter's own map) on sample cases, with the coarse
    map as an extra output, probabilities and overlays: every kind of file the runner writes."""
    from autosam.pipelines.segment import segment_folder
    from autosam.prompter import Prompter

    prompter = Prompter.load("hippocampus")
    info = io.load_dataset_json(ROOT)
    images = out / "images"
    images.mkdir(parents=True)
    for f in sorted((ROOT / "imagesTr").iterdir())[:cases]:
        (images / f.name).symlink_to(f)
    return segment_folder(images, out / "pred", prompter, info, make_predictor=lambda: None, config=None,
                          coarse_dir=out / "coarse", save_probabilities=True, overlays=out / "overlays",
                          pipeline=pipeline, quiet=True)


def _npz_arrays(path):
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def test_the_pipelined_loop_writes_what_the_plain_loop_writes(tmp_path, monkeypatch):
    plain, piped = tmp_path / "plain", tmp_path / "piped"
    assert _segment_no_sam(plain, pipeline=False) == _segment_no_sam(piped, pipeline=True)
    monkeypatch.setenv("AUTOSAM_PIPELINE", "0")
    assert not CaseRunner(tmp_path / "x", io.load_dataset_json(ROOT), record=None).pipeline
    for folder in ("pred", "coarse", "overlays"):
        a, b = _snapshot(plain / folder), _snapshot(piped / folder)
        assert sorted(a) == sorted(b) and len(a) >= 3
        for name in a:
            if name.endswith(".npz"):  # a zip member records the time it was written: compare the arrays
                x, y = _npz_arrays(plain / folder / name), _npz_arrays(piped / folder / name)
                assert x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
            elif name != "autosam_run.json":  # the run record names its own output folder
                assert a[name] == b[name], f"{folder}/{name} differs"


def _failing_io(broken: str):
    """nnU-Net's reader/writer for the sample, whose segmentation write of case ``broken`` stops halfway (a full
    disk): half a file written where the runner asked, then the error."""

    class FailingIO(io.reader_writer(".nii.gz")):
        def write_seg(self, seg, path, properties):
            if broken in os.path.basename(path):
                with open(path, "wb") as f:
                    f.write(b"half a file")
                raise OSError(28, "No space left on device")
            super().write_seg(seg, path, properties)

    return FailingIO


@pytest.mark.parametrize("pipeline", [True, False])
def test_a_failing_write_is_reported_and_leaves_no_partial_file(data, tmp_path, pipeline):
    info, cases, labels = data
    names = list(cases)
    rw = _failing_io(names[1])
    out = tmp_path / "out"
    runner = CaseRunner(out, info, record={}, save_probabilities=True, rw_class=rw, pipeline=pipeline)
    with pytest.raises(OSError, match="No space left on device"):
        runner.run(cases, _eroded(labels, []))
    files = sorted(p.name for p in out.iterdir())
    assert f"{names[0]}{info.file_ending}" in files  # finished before the failure
    assert f"{names[1]}{info.file_ending}" not in files  # never counted finished
    assert not any(f.startswith(".") for f in files), files  # no temporary file, lock released
    assert not runner.finished(names[1]) and not runner.finished(names[2])

    keep = CaseRunner(out, info, record={}, save_probabilities=True, rw_class=rw, pipeline=pipeline,
                      parallel=Parallel(keep_going=True))
    with pytest.raises(CasesFailed) as e:
        keep.run(cases, _eroded(labels, []))
    assert e.value.failures == {names[1]: "OSError: [Errno 28] No space left on device"}
    assert e.value.written == [names[2]] and keep.finished(names[2])
    assert not any(p.name.startswith(".") for p in out.iterdir())


@pytest.mark.parametrize("pipeline", [True, False])
def test_a_failing_case_stops_the_pipeline_after_the_cases_before_are_written(data, tmp_path, pipeline):
    info, cases, labels = data
    names, calls = list(cases), []
    good = _eroded(labels, calls)

    def process(case):
        if case.case_id == names[1]:
            raise AutosamError(f"case {names[1]}: broken on purpose")
        return good(case)

    runner = CaseRunner(tmp_path / "out", info, record={}, pipeline=pipeline)
    with pytest.raises(AutosamError, match="broken on purpose"):
        runner.run(cases, process)
    assert runner.finished(names[0]) and not runner.finished(names[2]) and calls == names[:1]
    assert not any(p.name.startswith(".") for p in (tmp_path / "out").iterdir())
