"""Many processes: Ray (a local instance of 2 CPUs, bound to 127.0.0.1) and split runs (``--num-parts``).

On the bundled hc18 sample (3 PNG images): a distributed run writes what one process writes (the same bytes, the
same probability arrays; one torch thread on both sides), a second run skips every case, a worker killed in the
middle of a case is restarted and the case retried, failed cases are listed one line each with exit code 1, and
the parts of a split run cover every case exactly once.
"""
from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path

# read by Ray on import: the local instance serves 127.0.0.1 only; no usage statistics are sent
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from autosam import io  # noqa: E402
from autosam.cli import main  # noqa: E402
from autosam.errors import AutosamError, CasesFailed  # noqa: E402
from autosam.runner import LOCK_FILE, CaseOutput, CaseRunner, FolderLock, FunctionJob, Parallel  # noqa: E402
from autosam.sample import sample_dataset  # noqa: E402

ray = pytest.importorskip("ray")

HC18 = sample_dataset("hc18")


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray instance for this module: 2 CPUs, no dashboard, workers' output not forwarded."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             object_store_memory=200 * 2**20)
    assert ray.util.get_node_ip_address() == "127.0.0.1"
    yield ray
    ray.shutdown()


@pytest.fixture
def one_thread():
    """The single-process run at one torch thread, as each worker runs (``--cpus-per-worker 1``)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def assert_same_outputs(one: Path, other: Path) -> None:
    """The same files; each the same bytes, except ``.npz`` (zip timestamps): the same arrays."""
    names = sorted(p.name for p in one.iterdir())
    assert names == sorted(p.name for p in other.iterdir())
    assert any(n.endswith((".png", ".nii.gz")) for n in names)
    for name in names:
        if name.endswith(".npz"):
            with np.load(one / name) as a, np.load(other / name) as b:
                assert np.array_equal(a["probabilities"], b["probabilities"]), name
        else:
            assert (one / name).read_bytes() == (other / name).read_bytes(), name


def mtimes(folder: Path) -> dict:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def test_oracle_on_ray_equals_one_process_and_resumes(local_ray, one_thread, tmp_path, capsys):
    base = ["oracle", "-i", str(HC18 / "imagesTr"), "-l", str(HC18 / "labelsTr"), "--device", "cpu"]
    one, distributed = tmp_path / "one", tmp_path / "ray"
    assert main(base + ["-o", str(one)]) == 0
    assert main(base + ["-o", str(distributed), "--ray", "--workers", "2"]) == 0
    assert "oracle: 3 case(s) on 2 worker(s) (1 CPU each)" in capsys.readouterr().err
    assert_same_outputs(one, distributed)
    before = mtimes(distributed)
    assert main(base + ["-o", str(distributed), "--ray"]) == 0  # resumes: nothing to do, no worker started
    err = capsys.readouterr().err
    assert "3 case(s) already in" in err and "worker(s)" not in err
    assert mtimes(distributed) == before


def test_segment_and_refine_on_ray_equal_one_process(local_ray, one_thread, tmp_path, capsys):
    """segment ships the prompter to the workers, refine a job of closures; with probabilities."""
    images = str(HC18 / "imagesTr")
    seg = ["segment", "-i", images, "--prompter", "hc18", "--no-sam", "--save-probabilities", "--device", "cpu"]
    assert main(seg + ["-o", str(tmp_path / "coarse")]) == 0
    assert main(seg + ["-o", str(tmp_path / "coarse_ray"), "--workers", "2"]) == 0
    assert_same_outputs(tmp_path / "coarse", tmp_path / "coarse_ray")
    ref = ["refine", "-i", images, "-c", str(tmp_path / "coarse"), "--save-probabilities", "--device", "cpu"]
    assert main(ref + ["-o", str(tmp_path / "refined")]) == 0
    assert main(ref + ["-o", str(tmp_path / "refined_ray"), "--ray", "--cpus-per-worker", "1"]) == 0
    assert "refine: 3 case(s) on 2 worker(s)" in capsys.readouterr().err  # as many as the 2 CPUs hold
    assert_same_outputs(tmp_path / "refined", tmp_path / "refined_ray")


def _threshold_job(marks: Path, seconds: float) -> FunctionJob:
    """A cheap job: marks ``<case>.<pid>`` when it starts a case, waits, then thresholds the image."""

    def fn(_, case: io.Case) -> CaseOutput:
        (marks / f"{case.case_id}.{os.getpid()}").touch()
        time.sleep(seconds)
        image = case.image[0]
        return CaseOutput((image > image.mean()).astype(np.int16))

    return FunctionJob(lambda: None, fn)


def _hc18():
    info = io.load_dataset_json(HC18)
    return info, io.list_cases(HC18 / "imagesTr", info.file_ending, info.num_channels)


def test_a_killed_worker_is_restarted_and_its_case_retried(local_ray, tmp_path):
    info, cases = _hc18()
    marks, out = tmp_path / "marks", tmp_path / "out"
    marks.mkdir()
    killed = []

    def kill_the_first_worker_that_starts_a_case():
        deadline = time.monotonic() + 120
        while not killed and time.monotonic() < deadline:
            started = sorted(marks.iterdir())
            if started:
                case, pid = started[0].name.rsplit(".", 1)
                os.kill(int(pid), signal.SIGKILL)
                killed.append((case, int(pid)))
            time.sleep(0.05)

    killer = threading.Thread(target=kill_the_first_worker_that_starts_a_case, daemon=True)
    killer.start()
    runner = CaseRunner(out, info, record={"verb": "test"}, desc="test", parallel=Parallel(workers=2))
    assert runner.run(cases, _threshold_job(marks, 3.0)) == list(cases)
    killer.join()
    (case, pid), = killed
    tries = sorted(m.name for m in marks.iterdir() if m.name.startswith(f"{case}."))
    assert len(tries) == 2 and f"{case}.{pid}" in tries  # the killed try, and Ray's retry in a new process
    assert all(runner.finished(c) for c in cases)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no lock, no half-written file


@pytest.mark.parametrize("distributed", [False, True], ids=["keep-going", "ray"])
def test_failed_cases_are_listed_one_line_each_with_exit_1(local_ray, tmp_path, capsys, distributed):
    images = tmp_path / "images"
    shutil.copytree(HC18 / "imagesTr", images)
    shutil.copy(HC18 / "dataset.json", tmp_path / "dataset.json")
    (images / "800_HC_0000.png").write_bytes(b"\x89PNG broken")
    out = tmp_path / "out"
    extra = ["--workers", "2"] if distributed else ["--keep-going"]
    code = main(["segment", "-i", str(images), "-o", str(out), "--prompter", "hc18", "--no-sam", "--device", "cpu",
                 *extra])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("autosam segment:")]
    assert code == 1
    assert err[0].startswith("autosam segment: case 800_HC failed: ") and len(err) == 2
    assert err[0].endswith("800_HC_0000.png: not a PNG file")  # found by the preflight, before anything ran
    assert "1 case(s) failed, 2 written" in err[1]
    assert sorted(p.name for p in out.glob("*.png")) == ["719_HC.png", "801_HC.png"]


def test_a_model_that_cannot_load_ends_a_distributed_run_in_one_line(local_ray, tmp_path, capsys):
    code = main(["oracle", "-i", str(HC18 / "imagesTr"), "-l", str(HC18 / "labelsTr"), "-o", str(tmp_path / "o"),
                 "--sam", "sam_vit_b", "--checkpoint", str(tmp_path / "missing.pth"), "--workers", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("autosam oracle: error: ") and "checkpoint not found" in err[-1]
    assert not list((tmp_path / "o").glob("*.png"))


def test_parts_cover_every_case_exactly_once(tmp_path, capsys):
    ids = [f"case_{i:03d}" for i in range(11)]
    for n in range(1, 6):
        parts = [Parallel(num_parts=n, part_id=k).part(list(reversed(ids))) for k in range(n)]
        assert sorted(c for part in parts for c in part) == ids  # every case once, whatever order they came in
    written = []
    for k in range(2):  # the CLI: two parts into one folder
        out = tmp_path / "out"
        assert main(["segment", "-i", str(HC18 / "imagesTr"), "-o", str(out), "--prompter", "hc18", "--no-sam",
                     "--device", "cpu", "--num-parts", "2", "--part-id", str(k)]) == 0
        assert f"part {k} of 2" in capsys.readouterr().err
        now = sorted(p.stem for p in out.glob("*.png"))
        written.append(sorted(set(now) - {c for part in written for c in part}))
    assert written == [["719_HC", "801_HC"], ["800_HC"]]
    assert not [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_parts_share_a_folder_but_exclude_a_whole_run(tmp_path):
    first = FolderLock(tmp_path, "a", part=(0, 2))
    first.acquire()
    try:
        second = FolderLock(tmp_path, "b", part=(1, 2))
        second.acquire()  # parts of one run write side by side
        second.release()
        with pytest.raises(AutosamError, match="in use by a part of another autosam run"):
            FolderLock(tmp_path, "c").acquire()
        assert not (tmp_path / LOCK_FILE).exists()
    finally:
        first.release()
    whole = FolderLock(tmp_path, "d")
    whole.acquire()
    try:
        with pytest.raises(AutosamError, match="in use by a run over the whole folder"):
            FolderLock(tmp_path, "e", part=(0, 2)).acquire()
    finally:
        whole.release()
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("extra, message", [
    (["--num-parts", "2", "--part-id", "2"], "--part-id must be 0 to 1 for --num-parts 2 (got 2)"),
    (["--num-parts", "0"], "argument --num-parts: '0': expected an integer >= 1"),  # at parse time
    (["--workers", "0"], "argument --workers: '0': expected an integer >= 1"),
    (["--workers", "2", "--device", "cuda"], "--device cuda with --ray or --workers needs --gpus-per-worker"),
    (["--ray", "--gpus-per-worker", "-1"], "argument --gpus-per-worker: '-1': expected a number >= 0"),
])
def test_bad_parallel_options_are_one_line_exit_2(tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    try:
        code = main(["segment", "-i", str(HC18 / "imagesTr"), "-o", str(out), "--prompter", "hc18", "--no-sam",
                     *extra])
    except SystemExit as e:  # argparse's refusals
        code = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"autosam segment: error: {err[0].split(': error: ', 1)[1]}"] and message in err[0]
    assert not out.exists()


def test_without_ray_the_option_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "ray", None)  # as if Ray were not installed
    code = main(["segment", "-i", str(HC18 / "imagesTr"), "-o", str(tmp_path / "o"), "--prompter", "hc18",
                 "--no-sam", "--ray"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["autosam segment: error: --ray and --workers run on Ray, which is not installed: "
                                 "pip install 'autosam[ray]'"]
    info, cases = _hc18()
    with pytest.raises(AutosamError, match=r"pip install 'autosam\[ray\]'"):
        CaseRunner(tmp_path / "o", info, record={}, parallel=Parallel(workers=2)).run(cases, lambda case: None)


def test_cases_failed_lists_one_line_per_case():
    failed = CasesFailed({"a": "cannot read image a.png", "b": "RuntimeError: boom"}, ["c"])
    assert failed.lines() == ["case a failed: cannot read image a.png", "case b failed: RuntimeError: boom"]
    assert failed.written == ["c"]


@pytest.mark.slow
def test_predict_on_ray_equals_one_process(local_ray, one_thread, trained_hippo_2d, tmp_path):
    """predict: each worker loads nnU-Net and SAM itself; this process reads only the model's plans."""
    from nnunet_helpers import write_slab

    raw = trained_hippo_2d["raw"]
    images = tmp_path / "imagesTs"
    images.mkdir()
    for case in ("hippocampus_148", trained_hippo_2d["val_case"]):
        write_slab(raw / "imagesTr" / f"{case}_0000.nii.gz", raw / "labelsTr" / f"{case}.nii.gz",
                   images / f"{case}_0000.nii.gz", tmp_path / f"{case}.nii.gz", 3)
    args = ["predict", "-m", str(trained_hippo_2d["model"]), "-i", str(images), "-f", "0", "--device", "cpu",
            "--save-probabilities", "--min-size", "40", "--fusion", "replace"]
    assert main(args + ["-o", str(tmp_path / "one")]) == 0
    assert main(args + ["-o", str(tmp_path / "ray"), "--workers", "2"]) == 0
    assert_same_outputs(tmp_path / "one", tmp_path / "ray")
