"""Train a prompter on an nnU-Net raw dataset: split by subject, augmented 2D slices, a checkpoint per epoch, resume.

Files in the model folder: ``config.json`` (everything to rebuild the network and its preprocessing, and the
validation score), ``dataset.json`` (the training dataset's, for output folders), ``splits.json``, ``model.pt``
(final weights), ``checkpoint.pt`` (weights, optimiser, random state and history of the last finished epoch),
``log.json`` (per-epoch loss and validation Dice) and, in embedding mode, ``embedding_cache/`` (SAM image
embeddings of the training slices, :class:`autosam.sam.cache.EmbeddingCache`).
"""
from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .. import io
from ..errors import AutosamError
from ..labels import dice_per_label
from ..losses import binary_loss, multiclass_loss
from ..progress import notice, progress
from ..sam import transforms as T
from ..sam.cache import EmbeddingCache
from ..splits import split_by_subject, subject_of
from .data import IGNORE, SliceSet, augmenter, batches, case_slices, load_slices
from .infer import CONFIG, WEIGHTS, Prompter
from .model import ArchConfig, PromptNet, count_parameters, decode_dense

CHECKPOINT = "checkpoint.pt"
LOG = "log.json"  # per-epoch loss and validation Dice
SPLITS = "splits.json"
EMBEDDINGS = "embedding_cache"
#: Options that fix the network or its data; a resumed run must use the same values.
FIXED = ("mode", "input_size", "base", "depth", "axis", "seed", "val_fraction", "exclude_cases", "subject_pattern",
         "empty_fraction", "embed_hidden", "max_embedding_slices", "sam")


@dataclass
class TrainOptions:
    """Training settings (``input_size`` 0 = chosen from the data: 64 for small slices, else 96).

    The validation Dice shown after each epoch uses the first ``val_cases_per_epoch`` validation cases; the
    last epoch (the score stored in ``config.json``) uses all of them.
    """

    epochs: int = 20
    iterations: int = 50
    batch_size: int = 16
    lr: float = 2e-3
    val_fraction: float = 0.2
    seed: int = 0
    mode: str = "mask"
    input_size: int = 0
    base: int = 16
    depth: int = 4
    axis: Optional[int] = None
    mirror: bool = False
    exclude_cases: list[str] = field(default_factory=list)
    subject_pattern: Optional[str] = None
    empty_fraction: float = 0.2
    embed_hidden: int = 16
    max_embedding_slices: int = 128
    val_cases_per_epoch: int = 10
    sam: str = "litemedsam"
    device: str = "cpu"

    def check(self) -> None:
        if self.mode not in ("mask", "embedding"):
            raise AutosamError(f"unknown prompter mode {self.mode!r}; choose mask or embedding")
        if not 0 <= self.val_fraction < 1:
            raise AutosamError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if self.epochs < 1 or self.iterations < 1 or self.batch_size < 1:
            raise AutosamError("--epochs, --iterations and --batch-size must be positive")
        step = 2 ** (self.depth - 1)
        if self.input_size and self.input_size % step:
            raise AutosamError(f"--input-size must be a multiple of {step} for depth {self.depth}")


def _choose_input_size(dataset_dir: Path, info: io.DatasetInfo, cases: Sequence[str], axis: Optional[int]) -> int:
    """64 when the median slice's longest side is at most 64 pixels, else 96."""
    from .. import slicing

    files = io.list_cases(dataset_dir / "imagesTr", info.file_ending, info.num_channels)
    sides = []
    for c in list(cases)[:5]:
        case = io.read_case(c, files[c])
        ax = slicing.choose_axis(case.spacing, case.image.shape[1:], axis)
        shape = [s for i, s in enumerate(case.image.shape[1:]) if i != ax]
        sides.append(max(shape))
    return 64 if float(np.median(sides)) <= 64 else 96


def _atomic_torch_save(obj, path: Path) -> None:
    with io.atomic_output(path) as tmp:
        torch.save(obj, tmp)


class _Embedder:
    """Embedding mode: frozen SAM, cached image embeddings per training slice, decoding of dense prompts."""

    def __init__(self, opts: TrainOptions, device: torch.device, cache_dir: Path) -> None:
        from ..sam import build_sam

        self.sam = build_sam(opts.sam).to(device).eval()
        for p in self.sam.parameters():
            p.requires_grad_(False)
        self.cache = EmbeddingCache(cache_dir)

    def embed(self, slices: SliceSet, dataset_dir: Path, info: io.DatasetInfo, axis: Optional[int],
              desc: str) -> torch.Tensor:
        """SAM embeddings ``(N, 256, s, s)`` of the slices (re-read at full resolution), through the cache."""
        files = io.list_cases(dataset_dir / "imagesTr", info.file_ending, info.num_channels)
        rows: dict[int, torch.Tensor] = {}
        for case_id in progress(sorted(set(slices.cases)), desc):
            norm, _ = case_slices(io.read_case(case_id, files[case_id]), info.channel_names, axis)
            idx = [i for i, c in enumerate(slices.cases) if c == case_id]
            rows.update(zip(idx, self.cache.fetch(self.sam, [norm[slices.slice_index[i]] for i in idx])))
        return torch.stack([rows[i] for i in range(len(slices))])

    def logits(self, net: PromptNet, images: torch.Tensor, emb: torch.Tensor, size: int) -> torch.Tensor:
        """Per-class mask logits ``(B, K, size, size)`` on the prompter canvas."""
        dense = net(images)
        b, k = dense.shape[:2]
        low, _ = decode_dense(self.sam, emb.repeat_interleave(k, dim=0), dense.flatten(0, 1))
        low = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
        return low.reshape(b, k, size, size)


@dataclass
class _Data:
    """What an epoch trains and validates on: training slices (and their SAM embeddings in embedding mode), and
    whole validation cases (mask mode) or validation slices with embeddings (embedding mode)."""

    train: SliceSet
    train_emb: Optional[torch.Tensor] = None
    val_slices: Optional[SliceSet] = None
    val_emb: Optional[torch.Tensor] = None
    val_cases: list = field(default_factory=list)


def _subsample(data: SliceSet, n: int, seed: int) -> SliceSet:
    if n <= 0 or len(data) <= n:
        return data
    return data.subset(sorted(np.random.default_rng(seed).choice(len(data), n, replace=False)))


def _slice_dice(logits: torch.Tensor, target: torch.Tensor, k: int) -> list[float]:
    """Per-class Dice of thresholded sigmoid logits ``(N, K, S, S)`` against class-index targets, pooled."""
    pred = logits > 0
    out = []
    for c in range(k):
        t = target == c + 1
        total = int(pred[:, c].sum()) + int(t.sum())
        out.append(float("nan") if total == 0 else 2.0 * int((pred[:, c] & t).sum()) / total)
    return out


def train_prompter(dataset_dir: str | Path, model_dir: str | Path, opts: TrainOptions,
                   log: Callable[[str], None] = notice) -> dict:
    """Train (or resume training) a prompter; returns the final ``config.json`` content."""
    from ..sam import resolve_device

    opts.check()
    dataset_dir, model_dir = Path(dataset_dir), Path(model_dir)
    info = io.load_dataset_json(dataset_dir)
    cases = _choose_cases(dataset_dir, info, opts, log)
    model_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(opts.device)
    state = _resume_state(model_dir, opts)
    if not opts.input_size:
        opts.input_size = _choose_input_size(dataset_dir, info, cases, opts.axis)
    split = _write_split(model_dir, cases, info, opts, resumed=state is not None)
    arch = ArchConfig(in_channels=info.num_channels, num_classes=len(info.foreground), mode=opts.mode,
                      base=opts.base, depth=opts.depth, extra={"embed_hidden": opts.embed_hidden})
    torch.manual_seed(opts.seed)
    net = PromptNet(arch).to(device)
    config = _config(dataset_dir, info, opts, arch, net, split)
    io.write_json(config, model_dir / CONFIG)
    log(f"loading {len(split['train'])} training and {len(split['val'])} validation case(s) "
        f"(input {opts.input_size} px, {opts.mode} mode, {config['parameters']:,} parameters)")
    embedder = _Embedder(opts, device, model_dir / EMBEDDINGS) if opts.mode == "embedding" else None
    data = _load_data(dataset_dir, info, split, opts, embedder)
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=opts.lr, weight_decay=1e-4)
    history: list[dict] = []
    start = 0
    if state is not None:
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history, start = state["history"], state["epoch"]
        log(f"resuming after epoch {start} of {opts.epochs}")
    prompter = Prompter(config, net, model_dir, str(device))
    for epoch in range(start, opts.epochs):
        history.append(_train_epoch(prompter, optimizer, data, info, opts, epoch, embedder, history, log))
        _atomic_torch_save({"epoch": epoch + 1, "model": net.state_dict(), "optimizer": optimizer.state_dict(),
                            "history": history}, model_dir / CHECKPOINT)
        io.write_json(history, model_dir / LOG)
    _atomic_torch_save(net.state_dict(), model_dir / WEIGHTS)
    config["validation"] = _validation_record(history, split, opts)
    io.write_json(config, model_dir / CONFIG)
    return config


def epochs_trained(model_dir: str | os.PathLike) -> int:
    """Epochs recorded in a prompter folder's training log (0: none yet, or no readable log)."""
    try:
        return len(json.loads((Path(model_dir) / LOG).read_text()))
    except (OSError, ValueError, TypeError):
        return 0


def _choose_cases(dataset_dir: Path, info: io.DatasetInfo, opts: TrainOptions, log: Callable[[str], None]) -> list[str]:
    """The dataset's cases minus ``opts.exclude_cases`` (case ids, or subjects under ``opts.subject_pattern``; a
    note for ids the dataset lacks), all labelled."""
    all_cases = list(io.list_cases(dataset_dir / "imagesTr", info.file_ending, info.num_channels))
    excluded = set(opts.exclude_cases)
    unknown = sorted(excluded - set(all_cases) - {subject_of(c, opts.subject_pattern) for c in all_cases})
    if unknown:
        log(f"note: {len(unknown)} excluded case(s) are not in the dataset (e.g. {unknown[0]})")
    cases = [c for c in all_cases if c not in excluded and subject_of(c, opts.subject_pattern) not in excluded]
    if not cases:
        raise AutosamError(f"{dataset_dir}: no cases left to train on")
    io.label_files(dataset_dir / "labelsTr", cases, info.file_ending)
    return cases


def _resume_state(model_dir: Path, opts: TrainOptions) -> Optional[dict]:
    """The checkpoint to resume from (None for a fresh folder); refuses one trained with other fixed options."""
    ckpt_path, config_path = model_dir / CHECKPOINT, model_dir / CONFIG
    if not (ckpt_path.is_file() and config_path.is_file()):
        return None
    old = json.loads(config_path.read_text())["training"]["options"]
    if not opts.input_size:
        opts.input_size = old["input_size"]
    diff = [k for k in FIXED if old.get(k) != asdict(opts).get(k)]
    if diff:
        raise AutosamError(f"{model_dir}: holds a prompter trained with other settings ({', '.join(diff)} "
                           f"differ); use another model folder or delete it")
    return torch.load(ckpt_path, map_location="cpu", weights_only=False)


def _write_split(model_dir: Path, cases: Sequence[str], info: io.DatasetInfo, opts: TrainOptions,
                 resumed: bool) -> dict:
    """The split by subject (a resumed run keeps its recorded one), and the dataset.json, in the model folder."""
    split = split_by_subject(cases, opts.val_fraction, opts.seed, opts.subject_pattern)
    if (model_dir / SPLITS).is_file() and resumed:
        split = json.loads((model_dir / SPLITS).read_text())
    io.write_json(split, model_dir / SPLITS)
    shutil.copyfile(info.path, model_dir / ".dataset.json.partial")
    (model_dir / ".dataset.json.partial").replace(model_dir / "dataset.json")
    return split


def _config(dataset_dir: Path, info: io.DatasetInfo, opts: TrainOptions, arch: ArchConfig, net: PromptNet,
            split: dict) -> dict:
    """The ``config.json`` of a prompter (validation added at the end of training)."""
    return {
        "format": "autosam-prompter",
        "version": 1,
        "mode": opts.mode,
        "dataset": {"name": info.raw.get("name", dataset_dir.name), "path": str(dataset_dir),
                    "labels": info.labels, "channel_names": info.channel_names, "file_ending": info.file_ending,
                    "train_cases": len(split["train"]), "val_cases": len(split["val"])},
        "preprocessing": {
            "input_size": opts.input_size,
            "normalization": "autosam.sam.transforms.normalize_case (CT: window %s; else percentiles %s, to [0, 1])"
                             % (list(T.CT_WINDOW), list(T.PERCENTILES)),
            "canvas": "longest side resized to input_size, zero padding bottom/right "
                      "(autosam.sam.transforms.to_canvas per channel)",
            "slice_axis": opts.axis,
            "slice_axis_rule": "autosam.slicing.choose_axis (coarsest spacing; 2D: the only slice)",
        },
        "architecture": arch.to_dict(),
        "parameters": count_parameters(net),
        "sam": {"name": opts.sam} if opts.mode == "embedding" else None,
        "training": {"options": asdict(opts)},
    }


def _load_data(dataset_dir: Path, info: io.DatasetInfo, split: dict, opts: TrainOptions,
               embedder: Optional[_Embedder]) -> _Data:
    """Training slices; validation cases (mask mode) or validation slices and all embeddings (embedding mode)."""
    data = _Data(load_slices(dataset_dir, split["train"], info, opts.input_size, opts.axis, opts.empty_fraction,
                             opts.seed, progress_desc="reading"))
    if embedder is None:
        files = io.list_cases(dataset_dir / "imagesTr", info.file_ending, info.num_channels)
        data.val_cases = [(io.read_case(c, files[c]),
                           io.read_label(dataset_dir / "labelsTr" / f"{c}{info.file_ending}", info=info)[0])
                          for c in split["val"]]
        return data
    data.train = _subsample(data.train, opts.max_embedding_slices, opts.seed)
    data.train_emb = embedder.embed(data.train, dataset_dir, info, opts.axis, "SAM embeddings")
    if split["val"]:
        val = load_slices(dataset_dir, split["val"], info, opts.input_size, opts.axis, 0.0, opts.seed)
        data.val_slices = _subsample(val, max(1, opts.max_embedding_slices // 4), opts.seed + 1)
        data.val_emb = embedder.embed(data.val_slices, dataset_dir, info, opts.axis, "SAM val")
    return data


def _train_epoch(prompter: Prompter, optimizer, data: _Data, info: io.DatasetInfo, opts: TrainOptions, epoch: int,
                 embedder: Optional[_Embedder], history: list[dict], log: Callable[[str], None]) -> dict:
    """One epoch of ``opts.iterations`` augmented batches, then validation; returns the epoch's log entry."""
    net, device = prompter.net, prompter.device
    net.train()
    for seed in (np.random.seed, random.seed, torch.manual_seed):  # batchgenerators draws from numpy's and Python's
        seed(opts.seed * 100003 + epoch)                             # global generators (its Gaussian noise: random)
    stream = batches(data.train, opts.batch_size, augmenter(opts.input_size, mirror=opts.mirror,
                                                            spatial=opts.mode == "mask"),
                     np.random.default_rng([opts.seed, epoch]))
    previous = history[-1]["val_dice"] if history else None
    shown = {"val_dice": f"{previous['mean']:.3f}"} if previous else {}
    losses, t0 = [], time.time()
    bar = progress(range(opts.iterations), f"epoch {epoch + 1}/{opts.epochs}", unit="it")
    for it in bar:
        images, target, idx = next(stream)
        for g in optimizer.param_groups:
            g["lr"] = opts.lr * (1 - (epoch * opts.iterations + it) / (opts.epochs * opts.iterations)) ** 0.9
        loss = _batch_loss(net, images.to(device), target.to(device), data.train_emb, idx, embedder, opts)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", **shown)
    net.eval()
    val = _validate_epoch(prompter, data, info, opts, epoch, embedder)
    entry = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "seconds": round(time.time() - t0, 1),
             "val_dice": val}
    log(f"epoch {epoch + 1}/{opts.epochs}: loss {entry['loss']:.4f}"
        + (f", validation Dice {val['mean']:.4f} " + str({k: round(v, 4) for k, v in val['per_label'].items()})
           if val else "") + f" ({entry['seconds']} s)")
    return entry


def _batch_loss(net: PromptNet, images: torch.Tensor, target: torch.Tensor, embeddings: Optional[torch.Tensor],
                idx: np.ndarray, embedder: Optional[_Embedder], opts: TrainOptions) -> torch.Tensor:
    """Mask mode: cross-entropy + Dice of the class logits; embedding mode: BCE + Dice of SAM's decoded masks."""
    if embedder is None:
        return multiclass_loss(net(images), target, IGNORE)
    logits = embedder.logits(net, images, embeddings[idx].to(images.device), opts.input_size)
    onehot = torch.stack([(target == k + 1) for k in range(logits.shape[1])], 1).float()
    valid = (target != IGNORE)[:, None].float().expand_as(onehot)
    return binary_loss(logits, onehot, valid)


def _validate_epoch(prompter: Prompter, data: _Data, info: io.DatasetInfo, opts: TrainOptions, epoch: int,
                    embedder: Optional[_Embedder]) -> Optional[dict]:
    """Validation Dice after an epoch: per case (mask mode; all cases after the last epoch, else the first
    ``val_cases_per_epoch``) or over the validation slices (embedding mode)."""
    if embedder is None:
        last = epoch + 1 == opts.epochs
        return validate(prompter, data.val_cases if last else data.val_cases[: opts.val_cases_per_epoch], info)
    if data.val_slices is None:
        return None
    device, s = prompter.device, data.val_slices
    with torch.inference_mode():
        logits = torch.cat([embedder.logits(prompter.net, s.images[i:i + 16].to(device),
                                            data.val_emb[i:i + 16].to(device), opts.input_size).cpu()
                            for i in range(0, len(s), 16)])
    return _summary(_slice_dice(logits, s.labels, len(info.foreground)), info)


def _validation_record(history: list[dict], split: dict, opts: TrainOptions) -> dict:
    last = history[-1] if history else {}
    return {
        "cases": len(split["val"]),
        "epoch": last.get("epoch"),
        "dice": last.get("val_dice"),
        "what": "per-case Dice of the prompter's own coarse map on the validation cases (3D for volumes)"
        if opts.mode == "mask" else "Dice over a fixed subset of validation slices (2D)",
    }


def _summary(per_label: Sequence[float], info: io.DatasetInfo) -> dict:
    names = {v: k for k, v in info.labels.items()}
    d = {names[v]: float(x) for v, x in zip(info.foreground, per_label)}
    finite = [x for x in per_label if not math.isnan(x)]
    return {"per_label": d, "mean": float(np.mean(finite)) if finite else float("nan")}


def validate(prompter: Prompter, cases: Sequence[tuple[io.Case, np.ndarray]], info: io.DatasetInfo) -> Optional[dict]:
    """Mean per-case Dice of the prompter's coarse label maps (NaN cases, both empty, left out per label)."""
    if not cases:
        return None
    scores = np.array([dice_per_label(prompter.coarse(case)[0], ref, info.foreground) for case, ref in cases])
    per_label = [float(np.nanmean(col)) if np.isfinite(col).any() else float("nan") for col in scores.T]
    return _summary(per_label, info)
