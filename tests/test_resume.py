"""Crash safety: a ``segment`` run killed with SIGKILL mid-way resumes to the same outputs, leaving no temporary
file and no stale lock behind."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np

from autosam import export, io
from autosam.runner import LOCK_FILE
from autosam.sample import sample_dataset

HIPPO = sample_dataset("hippocampus")


def _segment(venv_bin: Path, out: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([str(venv_bin / "autosam"), "segment", "-i", str(HIPPO / "imagesTr"), "-o", str(out),
                             "--prompter", "hippocampus", "--no-sam", "--save-probabilities", "--device", "cpu"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _arrays(folder: Path, ending: str) -> dict:
    out = {}
    for f in sorted(folder.iterdir()):
        if f.name.endswith(ending):
            out[f.name] = io.read_label(f)[0]
        elif f.suffix == ".npz":
            with np.load(f) as data:
                out[f.name] = data["probabilities"]
    return out


def _finished(folder: Path, ending: str) -> list[str]:
    """Cases with all their files (label, npz, pkl): a label alone is not a finished case."""
    ids = [f.name[:-len(ending)] for f in folder.iterdir() if f.name.endswith(ending)]
    return [c for c in ids if all(f.is_file() for f in export.case_files(folder, c, ending, True))]


def test_segment_killed_mid_way_resumes_to_the_same_outputs(tmp_path, venv_bin, cli_env):
    env = {**cli_env, "OMP_NUM_THREADS": "1"}
    info = io.load_dataset_json(HIPPO)
    n_cases = len(io.list_cases(HIPPO / "imagesTr", info.file_ending, info.num_channels))
    whole = tmp_path / "whole"
    assert _segment(venv_bin, whole, env).wait(timeout=600) == 0

    killed = tmp_path / "killed"
    proc = _segment(venv_bin, killed, env)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if killed.is_dir() and _finished(killed, info.file_ending):
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 1 <= len(_finished(killed, info.file_ending)) < n_cases
    assert (killed / LOCK_FILE).exists()  # the dead run's lock is still there

    resumed = subprocess.run([str(venv_bin / "autosam"), "segment", "-i", str(HIPPO / "imagesTr"), "-o", str(killed),
                              "--prompter", "hippocampus", "--no-sam", "--save-probabilities", "--device", "cpu"],
                             env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "taking over the lock" in resumed.stderr and "already in" in resumed.stderr
    assert not [f.name for f in killed.iterdir() if f.name.startswith(".")]  # no temporary file, no lock
    mine, reference = _arrays(killed, info.file_ending), _arrays(whole, info.file_ending)
    assert sorted(mine) == sorted(reference) and len(mine) == 2 * n_cases
    for name, array in reference.items():
        np.testing.assert_array_equal(mine[name], array, err_msg=name)


def test_sigterm_stops_a_run_as_ctrl_c_does(tmp_path, venv_bin, cli_env):
    """A batch scheduler's SIGTERM: one line, exit 130, the lock released, finished cases kept and resumed."""
    env = {**cli_env, "OMP_NUM_THREADS": "1"}
    info = io.load_dataset_json(HIPPO)
    out = tmp_path / "out"
    proc = _segment(venv_bin, out, env)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and not (out.is_dir() and _finished(out, info.file_ending)):
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    lines = [line.split("\r")[-1] for line in err.splitlines() if line.split("\r")[-1].strip()]
    assert proc.returncode == 130, err
    assert lines[-1] == "autosam segment: interrupted; finished cases are kept, rerun to resume", lines
    assert not (out / LOCK_FILE).exists() and _finished(out, info.file_ending)
    resumed = subprocess.run([str(venv_bin / "autosam"), "segment", "-i", str(HIPPO / "imagesTr"), "-o", str(out),
                              "--prompter", "hippocampus", "--no-sam", "--save-probabilities", "--device", "cpu"],
                             env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0 and "taking over the lock" not in resumed.stderr, resumed.stderr


def test_finetune_killed_mid_epoch_resumes_from_the_last_finished_epoch(tmp_path, venv_bin, cli_env,
                                                                        adapter_cache_dir):
    from autosam.adapt import read_config

    hc18 = sample_dataset("hc18")
    out = tmp_path / "adapter"
    args = [str(venv_bin / "autosam"), "finetune", "-d", str(hc18), "-o", str(out), "--method", "decoder",
            "--epochs", "4", "--iterations", "25", "--batch-size", "2", "--val-fraction", "0",
            "--cache-dir", str(adapter_cache_dir), "--device", "cpu"]
    env = {**cli_env, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        try:
            if read_config(out).epoch >= 1:
                break
        except Exception:  # noqa: BLE001 - not written yet
            pass
        time.sleep(0.05)
    assert proc.poll() is None, "the training ended before it could be killed"
    time.sleep(0.5)  # into the next epoch
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = read_config(out).epoch
    assert 1 <= finished < 4
    resumed = subprocess.run(args + ["--resume"], env=env, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed with the options stored in" in resumed.stderr
    config = read_config(out)
    assert config.epoch == 4 and [h["epoch"] for h in config.history] == [1, 2, 3, 4]
    assert not [f.name for f in out.iterdir() if f.name.startswith(".tmp") or f.name == LOCK_FILE]
