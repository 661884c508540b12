"""Train and run nnU-Net on a subset of an nnU-Net raw dataset, through nnU-Net's own commands.

Everything lives under one work folder: ``nnUNet_raw`` (symlinks to the chosen cases), ``nnUNet_preprocessed``,
``nnUNet_results`` and ``logs/`` (each command's output). Steps resume: a finished step is skipped, an interrupted
training continues from ``checkpoint_latest.pth`` (``--c``). Nothing is downloaded.

The default :class:`Schedule` is a short CPU schedule with autosam's ``nnUNetTrainer_autosam_Short`` (epochs and
iterations from ``AUTOSAM_NNUNET_*``, see ``nnunet_plugins/short_schedule.py``). On a GPU, nnU-Net's own
``nnUNetTrainer`` (1000 epochs x 250 iterations, the trainer of nnU-Net's papers) is the sensible choice and is the
default for ``device="cuda"``; it ignores ``epochs``, ``iterations``, ``val_iterations``, ``batch`` and ``seed``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Optional, Sequence

from .. import io
from ..errors import AutosamError
from ..progress import notice
from .env import ext_trainer_value

SHORT_TRAINER = "nnUNetTrainer_autosam_Short"
GPU_TRAINER = "nnUNetTrainer"
PLANS = "nnUNetPlans"
#: schedule fields that change the trained model (a resumed run must match them)
_TRAINING_FIELDS = ("trainer", "configuration", "fold", "epochs", "iterations", "val_iterations", "batch", "seed",
                    "spacing")


@dataclass
class Schedule:
    """How nnU-Net trains and predicts.

    ``trainer``: None -> ``nnUNetTrainer_autosam_Short`` on CPU, ``nnUNetTrainer`` on a GPU. ``configuration``:
    None -> ``2d`` for 2D data and ``3d_fullres`` for 3D data (read from the first training image's shape).
    ``epochs`` x ``iterations`` (training batches per epoch), ``val_iterations`` (validation batches per epoch),
    ``batch`` (None: the plans') and ``seed`` (None: unseeded) apply to the autosam short trainers only. The
    default is 10 epochs x 50 iterations on the plans' batch (measured on 2 CPU threads, 4 hippocampus cases: about
    1.2 s per 3d_fullres iteration of batch 2, 0.13 s per 2d iteration of batch 5). ``threads``: torch threads (``OMP_NUM_THREADS``), preprocessing and export processes; augmentation
    runs in the training process on CPU (``nnUNet_n_proc_DA=0``, no extra cores) and in ``threads`` workers on a
    GPU. ``spacing``: a target spacing for nnU-Net's planner (``-overwrite_target_spacing``, three numbers in
    nnU-Net's axis order; 2D images have nnU-Net's 999 first), planned and trained under their own plans name
    (:attr:`plans`); None keeps nnU-Net's own plans."""

    trainer: Optional[str] = None
    configuration: Optional[str] = None
    fold: str = "all"
    epochs: int = 10
    iterations: int = 50
    val_iterations: int = 5
    batch: Optional[int] = None
    seed: Optional[int] = 1
    device: str = "cpu"
    threads: int = 2
    spacing: Optional[tuple[float, ...]] = None

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "cuda", "mps"):
            raise AutosamError(f"nnU-Net device must be cpu, cuda or mps, got {self.device!r}")
        if self.trainer is None:
            self.trainer = SHORT_TRAINER if self.device == "cpu" else GPU_TRAINER
        self.fold = str(self.fold)
        if self.fold != "all" and not self.fold.isdigit():
            raise AutosamError(f"nnU-Net fold must be a number or 'all', got {self.fold!r}")
        if self.configuration not in (None, "2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres"):
            raise AutosamError(f"unknown nnU-Net configuration {self.configuration!r}")
        for name in ("epochs", "iterations", "val_iterations", "threads", "batch", "seed"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise AutosamError(f"schedule {name} must be a positive integer, got {value!r}")
        if self.spacing is not None:
            if len(self.spacing) != 3 or not all(isinstance(v, (int, float)) and v > 0 for v in self.spacing):
                raise AutosamError(f"nnU-Net target spacing must be three positive numbers, got {self.spacing!r}")
            self.spacing = tuple(float(v) for v in self.spacing)

    @property
    def plans(self) -> str:
        """nnU-Net's plans name: ``nnUNetPlans``, or ``nnUNetPlans_spacing_AxBxC`` with a target spacing."""
        if self.spacing is None:
            return PLANS
        return f"{PLANS}_spacing_" + "x".join(f"{v:g}" for v in self.spacing)


def _case_files(source: Path, info: io.DatasetInfo, case: str) -> list[Path]:
    """A case's channel images and label in ``source``; a missing one is an error naming it."""
    files = [source / "imagesTr" / f"{case}_{c:04d}{info.file_ending}" for c in range(info.num_channels)]
    files.append(source / "labelsTr" / f"{case}{info.file_ending}")
    for f in files:
        if not f.is_file():
            raise AutosamError(f"case {case!r} is not in {source}: {f} is missing")
    return files


def _link(src: Path, dst: Path) -> None:
    """Symlink ``dst`` -> ``src``; an existing link elsewhere is an error naming both."""
    if dst.is_symlink() or dst.exists():
        if dst.resolve() != src.resolve():
            raise AutosamError(f"{dst} points to {dst.resolve()}, not {src.resolve()}; use another work folder")
        return
    dst.symlink_to(src.resolve())


def _check_dataset_id(raw_root: Path, dataset_id: int, folder_name: str) -> None:
    others = [p.name for p in raw_root.glob(f"Dataset{dataset_id:03d}_*") if p.name != folder_name]
    if others:
        raise AutosamError(f"{raw_root} already holds dataset {dataset_id} as {others[0]}, not {folder_name}")


def make_raw_dataset(source: str | os.PathLike, cases: Sequence[str], raw_root: str | os.PathLike,
                     dataset_id: int, name: str) -> Path:
    """``raw_root/DatasetXXX_name``: symlinks to ``cases`` of the raw dataset ``source`` and its dataset.json with
    ``numTraining`` set. Idempotent; a folder holding other cases is refused (AutosamError)."""
    source, raw_root = Path(source), Path(raw_root)
    info = io.load_dataset_json(source)
    if not cases or len(set(cases)) != len(cases):
        raise AutosamError(f"{source}: give a non-empty list of distinct case ids (got {len(cases)})")
    if not 0 < dataset_id < 1000:
        raise AutosamError(f"nnU-Net dataset id must be 1..999, got {dataset_id}")
    raw = raw_root / f"Dataset{dataset_id:03d}_{name}"
    _check_dataset_id(raw_root, dataset_id, raw.name)
    files = {c: _case_files(source, info, c) for c in cases}
    if (raw / "dataset.json").is_file():
        have = sorted(f.name[: -len(info.file_ending)] for f in (raw / "labelsTr").iterdir())
        if have != sorted(cases):
            raise AutosamError(f"{raw} holds {len(have)} other cases ({', '.join(have[:3])}, ...); "
                               "use another dataset id or work folder")
    wanted = {f"{p.parent.name}/{p.name}": p for paths in files.values() for p in paths}
    for sub in ("imagesTr", "labelsTr"):
        (raw / sub).mkdir(parents=True, exist_ok=True)
        for stale in (raw / sub).iterdir():  # links of a half-built folder for another case list
            if stale.is_symlink() and f"{sub}/{stale.name}" not in wanted:
                stale.unlink()
    for rel, p in wanted.items():
        _link(p, raw / rel)
    meta = dict(info.raw, numTraining=len(cases))
    if not (raw / "dataset.json").is_file() or json.loads((raw / "dataset.json").read_text()) != meta:
        io.write_json(meta, raw / "dataset.json")
    return raw


def default_configuration(raw: Path) -> str:
    """``2d`` when the dataset's images are 2D (nnU-Net reads them as one slice), else ``3d_fullres``."""
    info = io.load_dataset_json(raw)
    first = sorted((raw / "imagesTr").glob(f"*_0000{info.file_ending}"))[0]
    image, _ = io.reader_writer(info.file_ending, first)().read_images([str(first)])
    return "2d" if image.shape[1] == 1 else "3d_fullres"


def nnunet_env(work: Optional[Path], schedule: Schedule) -> dict[str, str]:
    """The environment of nnU-Net's commands: its three folders under ``work`` (None: as inherited), autosam's
    trainers, the schedule (``AUTOSAM_NNUNET_*``) and the thread counts."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOSAM_NNUNET_")}
    if work is not None:
        env.update(nnUNet_raw=str(work / "nnUNet_raw"), nnUNet_preprocessed=str(work / "nnUNet_preprocessed"),
                   nnUNet_results=str(work / "nnUNet_results"))
    threads = str(schedule.threads)
    env.update(nnUNet_extTrainer=ext_trainer_value(),
               OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, nnUNet_def_n_proc=threads,
               nnUNet_n_proc_DA=threads,
               AUTOSAM_NNUNET_EPOCHS=str(schedule.epochs), AUTOSAM_NNUNET_ITERATIONS=str(schedule.iterations),
               AUTOSAM_NNUNET_VAL_ITERATIONS=str(schedule.val_iterations))
    if schedule.batch is not None:
        env["AUTOSAM_NNUNET_BATCH"] = str(schedule.batch)
    if schedule.seed is not None:
        env["AUTOSAM_NNUNET_SEED"] = str(schedule.seed)
    return env


def _last_error(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "error" in line]
    return (errors or lines or ["(no output)"])[-1][:300]


def run_logged(cmd: Sequence[str], env: dict[str, str], log: Path,
               say: Callable[[str], None] = notice) -> float:
    """Run one of nnU-Net's console scripts (from this interpreter's folder), appending its output to ``log``;
    return its seconds. A failure is an AutosamError naming the log and its last error line."""
    exe = Path(sys.executable).parent / cmd[0]
    full = [str(exe if exe.is_file() else cmd[0]), *map(str, cmd[1:])]
    say("$ " + " ".join(map(str, cmd)) + f"  (log: {log})")
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "a") as f:
        f.write("$ " + " ".join(full) + "\n")
        f.flush()
        done = subprocess.run(full, env=env, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise AutosamError(f"{cmd[0]} failed (exit {done.returncode}); see {log}: {_last_error(log)}")
    return time.perf_counter() - start


def _record(fold_dir: Path, schedule: Schedule, cases: Sequence[str], val_cases: Sequence[str]) -> dict:
    """The schedule and cases of a fold (``autosam_schedule.json``); another schedule there is refused."""
    want = {**{k: getattr(schedule, k) for k in _TRAINING_FIELDS}, "cases": sorted(cases), "val": sorted(val_cases)}
    want["spacing"] = None if schedule.spacing is None else list(schedule.spacing)  # as JSON reads it back
    path = fold_dir / "autosam_schedule.json"
    if path.is_file():
        have = json.loads(path.read_text())
        differ = [k for k in want if have.get(k) != want[k]]
        if differ:
            raise AutosamError(f"{path}: this fold was trained with another {differ[0]} ({have.get(differ[0])!r}, "
                               f"now {want[differ[0]]!r}); use another work folder")
        return have
    fold_dir.mkdir(parents=True, exist_ok=True)
    io.write_json({**want, "device": schedule.device, "threads": schedule.threads}, path)
    return want


def _preprocess(work: Path, dataset_id: int, conf: str, env: dict, schedule: Schedule, say) -> None:
    """nnUNetv2_plan_and_preprocess for one configuration, once (a marker file records it)."""
    pre = work / "nnUNet_preprocessed"
    suffix = "" if schedule.spacing is None else f"_{schedule.plans}"  # nnU-Net's own plans keep the old names
    marker = f"autosam_preprocessed_{conf}{suffix}"
    if any(pre.glob(f"Dataset{dataset_id:03d}_*/{marker}")):
        return
    n = str(schedule.threads)
    cmd = ["nnUNetv2_plan_and_preprocess", "-d", str(dataset_id), "-c", conf, "-np", n, "-npfp", n]
    if schedule.spacing is not None:
        cmd += ["-overwrite_target_spacing", *(f"{v:g}" for v in schedule.spacing),
                "-overwrite_plans_name", schedule.plans]
    run_logged(cmd, env, work / "logs" / f"plan_and_preprocess_{dataset_id}_{conf}{suffix}.log", say)
    for folder in pre.glob(f"Dataset{dataset_id:03d}_*"):
        (folder / marker).write_text("done\n")


def _check_split(cases: Sequence[str], split: Sequence[Sequence[str]], fold: str) -> list[str]:
    """The validation cases of ``fold`` in ``split`` (held-out cases per fold: some, not all, of the cases, no case
    in two folds); none without a split."""
    if not split:
        return []
    if not fold.isdigit() or int(fold) >= len(split):
        raise AutosamError(f"a split of {len(split)} fold(s) has no fold {fold}")
    held = [c for part in split for c in part]
    unknown = sorted(set(held) - set(cases))
    if unknown or len(set(held)) != len(held) or any(len(set(p)) in (0, len(cases)) for p in split):
        raise AutosamError(f"validation cases must be some of the training cases, each in one fold "
                           f"(not {unknown or 'these'})")
    return sorted(split[int(fold)])


def _write_split(work: Path, raw: Path, cases: Sequence[str], split: Sequence[Sequence[str]]) -> None:
    """nnU-Net's splits_final.json: fold k validates ``split[k]`` and trains on the other cases."""
    folds = [{"train": [c for c in cases if c not in part], "val": sorted(part)} for part in split]
    path = work / "nnUNet_preprocessed" / raw.name / "splits_final.json"
    if not path.is_file() or json.loads(path.read_text()) != folds:
        io.write_json(folds, path)


def _done(fold_dir: Path, npz: bool) -> bool:
    """A finished fold (with its validation probabilities when ``npz``)."""
    if not (fold_dir / "checkpoint_final.pth").is_file():
        return False
    return not npz or any((fold_dir / "validation").glob("*.npz"))


def train_nnunet(source: str | os.PathLike, cases: Sequence[str], work: str | os.PathLike, dataset_id: int,
                 schedule: Schedule, log: Callable[[str], None] = notice, name: str = "AutosamSubset",
                 split: Sequence[Sequence[str]] = (), npz: bool = False) -> Path:
    """Plan, preprocess and train nnU-Net on ``cases`` of the raw dataset ``source``; return the model folder
    ``work/nnUNet_results/DatasetXXX_name/Trainer__nnUNetPlans__configuration``. ``split``: the validation cases of
    each fold (``schedule.fold`` is one of them), else nnU-Net's own splits; ``npz``: the fold's validation keeps
    its probabilities (``--npz``). A finished fold is not retrained."""
    work = Path(work).resolve()
    val_cases = _check_split(cases, split, schedule.fold)
    raw = make_raw_dataset(source, cases, work / "nnUNet_raw", dataset_id, name)
    conf = schedule.configuration or default_configuration(raw)
    model = work / "nnUNet_results" / raw.name / f"{schedule.trainer}__{schedule.plans}__{conf}"
    fold_dir = model / f"fold_{schedule.fold}"
    schedule = Schedule(**{**asdict(schedule), "configuration": conf})
    record = _record(fold_dir, schedule, cases, val_cases)
    if _done(fold_dir, npz):
        return model
    env = nnunet_env(work, schedule)
    _preprocess(work, dataset_id, conf, env, schedule, log)
    if split:
        _write_split(work, raw, cases, split)
    cmd = ["nnUNetv2_train", str(dataset_id), conf, schedule.fold, "-tr", schedule.trainer, "-p", schedule.plans,
           "-device", schedule.device] + ["--npz"] * npz
    if (fold_dir / "checkpoint_final.pth").is_file():
        cmd.append("--val")  # trained, but its validation lacks the probabilities
    elif (fold_dir / "checkpoint_latest.pth").is_file():
        cmd.append("--c")
    if schedule.device == "cpu":
        env["nnUNet_n_proc_DA"] = "0"  # augmentation in the training process: no cores beyond ``threads``
    seconds = run_logged(cmd, env, work / "logs" / f"train_{dataset_id}_{conf}_fold_{schedule.fold}.log", log)
    io.write_json({**record, "train_s": record.get("train_s", 0.0) + seconds}, fold_dir / "autosam_schedule.json")
    return model


def train_cross_validation(source: str | os.PathLike, cases: Sequence[str], work: str | os.PathLike,
                           dataset_id: int, schedule: Schedule, split: Sequence[Sequence[str]],
                           log: Callable[[str], None] = notice, name: str = "AutosamSubset") -> Path:
    """nnU-Net's cross-validation on ``cases``: fold k trained on the cases outside ``split[k]`` and validated on
    them with probabilities (``--npz``), the maps ``autosam fit`` reads; returns the model folder."""
    model = None
    for k in range(len(split)):
        model = train_nnunet(source, cases, work, dataset_id, replace(schedule, fold=str(k)), log, name, split, True)
    return model


def _outputs(model_folder: Path, images: Path, out: Path, probabilities: bool) -> list[Path]:
    info = io.load_dataset_json(model_folder)
    cases = io.list_cases(images, info.file_ending, info.num_channels)
    files = [out / f"{case}{info.file_ending}" for case in cases]
    return files + ([out / f"{case}.npz" for case in cases] if probabilities else [])


def predict_nnunet(model_folder: str | os.PathLike, images: str | os.PathLike, out: str | os.PathLike,
                   schedule: Schedule, save_probabilities: bool = False, disable_tta: bool = False,
                   log: Callable[[str], None] = notice, folds: Optional[Sequence[str]] = None) -> Path:
    """Segment every case of ``images`` into ``out`` with nnUNetv2_predict_from_modelfolder (fold
    ``schedule.fold``, or the ensemble of ``folds``); cases already written are kept, and nothing runs when all are
    there. Returns ``out``."""
    model, images, out = Path(model_folder), Path(images), Path(out)
    folds = [str(f) for f in folds] if folds else [schedule.fold]
    for fold in folds:
        if not (model / f"fold_{fold}" / "checkpoint_final.pth").is_file():
            raise AutosamError(f"{model}: fold_{fold}/checkpoint_final.pth not found; train first")
    if all(f.is_file() for f in _outputs(model, images, out, save_probabilities)):
        return out
    n = str(schedule.threads)
    cmd = ["nnUNetv2_predict_from_modelfolder", "-i", str(images), "-o", str(out), "-m", str(model),
           "-f", *folds, "-device", schedule.device, "-npp", n, "-nps", n, "--continue_prediction",
           "--disable_progress_bar"]
    cmd += ["--save_probabilities"] * save_probabilities + ["--disable_tta"] * disable_tta
    env = nnunet_env(None, schedule)
    out.mkdir(parents=True, exist_ok=True)
    run_logged(cmd, env, out / "nnunet_predict.log", log)
    return out
