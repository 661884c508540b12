"""Train a prompter on an nnU-Net raw dataset: split by case, augmented 2D slices, a checkpoint per epoch, resume.

Files in the model folder: ``config.json`` (everything to rebuild the network and its preprocessing, and the
validation score), ``dataset.json`` (the training dataset's, for output folders), ``splits.json``, ``model.pt``
(final weights), ``checkpoint.pt`` (weights, optimiser, random state and history of the last finished epoch),
``log.json`` (per-epoch loss and validation Dice) and, in embedding mode, ``embeddings.pt`` (cached SAM image
embeddings of the training slices).
"""
from __future__ import annotations

import json
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .. import io
from ..errors import AutosamError
from ..sam import transforms as T
from .data import IGNORE, SliceSet, augmenter, batches, load_slices, subject_of
from .infer import CONFIG, WEIGHTS, Prompter, dice_per_label
from .model import ArchConfig, PromptNet, count_parameters, decode_dense

CHECKPOINT = "checkpoint.pt"
SPLITS = "splits.json"
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


def make_split(cases: Sequence[str], val_fraction: float, seed: int, subject_pattern: Optional[str]) -> dict:
    """Deterministic train/validation split by subject (a case is its own subject unless a pattern says more)."""
    subjects = sorted({subject_of(c, subject_pattern) for c in cases})
    order = [subjects[i] for i in np.random.default_rng(seed).permutation(len(subjects))]
    n_val = int(round(val_fraction * len(subjects))) if val_fraction > 0 and len(subjects) > 1 else 0
    n_val = min(max(n_val, 1 if val_fraction > 0 and len(subjects) > 1 else 0), len(subjects) - 1)
    val_subjects = set(order[:n_val])
    val = sorted(c for c in cases if subject_of(c, subject_pattern) in val_subjects)
    return {"train": sorted(c for c in cases if c not in set(val)), "val": val}


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


def mask_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy plus soft Dice over the foreground classes (batch Dice), ignoring ``IGNORE`` pixels."""
    ce = F.cross_entropy(logits, target, ignore_index=IGNORE)
    valid = (target != IGNORE)[:, None]
    probs = torch.softmax(logits, 1)[:, 1:] * valid
    onehot = F.one_hot(target.clamp(min=0), logits.shape[1]).permute(0, 3, 1, 2)[:, 1:] * valid
    inter = (probs * onehot).sum((0, 2, 3))
    dice = (2 * inter + 1) / (probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3)) + 1)
    return ce + (1 - dice.mean())


def binary_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """BCE plus soft Dice for ``(B, K, S, S)`` per-class mask logits against binary targets."""
    bce = F.binary_cross_entropy_with_logits(logits, target, weight=valid)
    p = torch.sigmoid(logits) * valid
    inter = (p * target).sum((0, 2, 3))
    dice = (2 * inter + 1) / (p.sum((0, 2, 3)) + target.sum((0, 2, 3)) + 1)
    return bce + (1 - dice.mean())


class _Embedder:
    """Embedding mode: frozen SAM, cached image embeddings per training slice, decoding of dense prompts."""

    def __init__(self, opts: TrainOptions, device: torch.device) -> None:
        from ..sam import build_sam

        self.sam = build_sam(opts.sam).to(device).eval()
        for p in self.sam.parameters():
            p.requires_grad_(False)
        self.device = device

    @torch.inference_mode()
    def embed(self, slices: SliceSet, dataset_dir: Path, info: io.DatasetInfo, axis: Optional[int], cache: Path,
              desc: str) -> torch.Tensor:
        """SAM embeddings ``(N, 256, s, s)`` of the slices (re-read at full resolution), cached in ``cache``."""
        from ..pipeline import progress
        from .data import case_slices

        key = list(zip(slices.cases, slices.slice_index))
        if cache.is_file():
            stored = torch.load(cache, map_location="cpu", weights_only=False)
            if [tuple(k) for k in stored.get("key", [])] == key:
                return stored["embeddings"]
        files = io.list_cases(dataset_dir / "imagesTr", info.file_ending, info.num_channels)
        rows: dict[int, torch.Tensor] = {}
        for case_id in progress(sorted(set(slices.cases)), desc):
            norm, _ = case_slices(io.read_case(case_id, files[case_id]), info.channel_names, axis)
            idx = [i for i, c in enumerate(slices.cases) if c == case_id]
            canvas = T.to_canvas([norm[slices.slice_index[i]] for i in idx], self.sam.image_size).to(self.device)
            for i, e in zip(idx, self.sam.embed(canvas).float().cpu()):
                rows[i] = e
        emb = torch.stack([rows[i] for i in range(len(key))])
        _atomic_torch_save({"key": key, "embeddings": emb}, cache)
        return emb

    def logits(self, net: PromptNet, images: torch.Tensor, emb: torch.Tensor, size: int) -> torch.Tensor:
        """Per-class mask logits ``(B, K, size, size)`` on the prompter canvas."""
        dense = net(images)
        b, k = dense.shape[:2]
        low, _ = decode_dense(self.sam, emb.repeat_interleave(k, dim=0), dense.flatten(0, 1))
        low = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
        return low.reshape(b, k, size, size)


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
                   log: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> dict:
    """Train (or resume training) a prompter; returns the final ``config.json`` content."""
    from tqdm import tqdm

    from ..sam import resolve_device

    opts.check()
    dataset_dir, model_dir = Path(dataset_dir), Path(model_dir)
    info = io.load_dataset_json(dataset_dir)
    all_cases = list(io.list_cases(dataset_dir / "imagesTr", info.file_ending, info.num_channels))
    excluded = set(opts.exclude_cases)
    unknown = sorted(excluded - set(all_cases))
    if unknown:
        log(f"note: {len(unknown)} excluded case(s) are not in the dataset (e.g. {unknown[0]})")
    cases = [c for c in all_cases if c not in excluded]
    if not cases:
        raise AutosamError(f"{dataset_dir}: no cases left to train on")
    io.label_files(dataset_dir / "labelsTr", cases, info.file_ending)
    model_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(opts.device)

    # resume: the stored options must agree with the requested ones on everything that fixes network and data
    ckpt_path = model_dir / CHECKPOINT
    config_path = model_dir / CONFIG
    state = None
    if ckpt_path.is_file() and config_path.is_file():
        old = json.loads(config_path.read_text())["training"]["options"]
        if not opts.input_size:
            opts.input_size = old["input_size"]
        diff = [k for k in FIXED if old.get(k) != asdict(opts).get(k)]
        if diff:
            raise AutosamError(f"{model_dir}: holds a prompter trained with other settings ({', '.join(diff)} "
                               f"differ); use another model folder or delete it")
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    if not opts.input_size:
        opts.input_size = _choose_input_size(dataset_dir, info, cases, opts.axis)

    split = make_split(cases, opts.val_fraction, opts.seed, opts.subject_pattern)
    if (model_dir / SPLITS).is_file() and state is not None:
        split = json.loads((model_dir / SPLITS).read_text())
    io.write_json(split, model_dir / SPLITS)
    shutil.copyfile(info.path, model_dir / ".dataset.json.partial")
    (model_dir / ".dataset.json.partial").replace(model_dir / "dataset.json")

    arch = ArchConfig(in_channels=info.num_channels, num_classes=len(info.foreground), mode=opts.mode,
                      base=opts.base, depth=opts.depth, extra={"embed_hidden": opts.embed_hidden})
    torch.manual_seed(opts.seed)
    net = PromptNet(arch).to(device)
    config = {
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
    io.write_json(config, config_path)

    log(f"loading {len(split['train'])} training and {len(split['val'])} validation case(s) "
        f"(input {opts.input_size} px, {opts.mode} mode, {config['parameters']:,} parameters)")
    train = load_slices(dataset_dir, split["train"], info, opts.input_size, opts.axis, opts.empty_fraction,
                        opts.seed, progress_desc="reading")
    embedder = val_slices = None
    if opts.mode == "embedding":
        embedder = _Embedder(opts, device)
        train = _subsample(train, opts.max_embedding_slices, opts.seed)
        train_emb = embedder.embed(train, dataset_dir, info, opts.axis, model_dir / "embeddings.pt",
                                   "SAM embeddings")
        if split["val"]:
            val_slices = load_slices(dataset_dir, split["val"], info, opts.input_size, opts.axis, 0.0, opts.seed)
            val_slices = _subsample(val_slices, max(1, opts.max_embedding_slices // 4), opts.seed + 1)
            val_emb = embedder.embed(val_slices, dataset_dir, info, opts.axis, model_dir / "embeddings_val.pt",
                                     "SAM val")
    files = io.list_cases(dataset_dir / "imagesTr", info.file_ending, info.num_channels)
    val_cases = [] if opts.mode == "embedding" else [
        (io.read_case(c, files[c]), io.read_label(dataset_dir / "labelsTr" / f"{c}{info.file_ending}")[0])
        for c in split["val"]]

    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=opts.lr, weight_decay=1e-4)
    history: list[dict] = []
    start = 0
    if state is not None:
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history = state["history"]
        start = state["epoch"]
        log(f"resuming after epoch {start} of {opts.epochs}")
    total = opts.epochs * opts.iterations
    transform = augmenter(opts.input_size, mirror=opts.mirror, spatial=opts.mode == "mask")
    prompter = Prompter(config, net, model_dir, str(device))

    for epoch in range(start, opts.epochs):
        net.train()
        np.random.seed(opts.seed * 100003 + epoch)  # batchgenerators draws from numpy's global generator
        torch.manual_seed(opts.seed * 100003 + epoch)
        rng = np.random.default_rng([opts.seed, epoch])
        stream = batches(train, opts.batch_size, transform, rng)
        losses = []
        t0 = time.time()
        bar = tqdm(range(opts.iterations), desc=f"epoch {epoch + 1}/{opts.epochs}", unit="it", file=sys.stderr,
                   dynamic_ncols=True)
        previous = history[-1]["val_dice"] if history else None
        shown = {"val_dice": f"{previous['mean']:.3f}"} if previous else {}
        for it in bar:
            images, target, idx = next(stream)
            lr = opts.lr * (1 - (epoch * opts.iterations + it) / total) ** 0.9
            for g in optimizer.param_groups:
                g["lr"] = lr
            images, target = images.to(device), target.to(device)
            if opts.mode == "mask":
                loss = mask_loss(net(images), target)
            else:
                logits = embedder.logits(net, images, train_emb[idx].to(device), opts.input_size)
                onehot = torch.stack([(target == k + 1) for k in range(arch.num_classes)], 1).float()
                valid = (target != IGNORE)[:, None].float().expand_as(onehot)
                loss = binary_loss(logits, onehot, valid)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", **shown)
        net.eval()
        if opts.mode == "mask":
            last = epoch + 1 == opts.epochs
            val = validate(prompter, val_cases if last else val_cases[: opts.val_cases_per_epoch], info)
        elif val_slices is not None:
            with torch.inference_mode():
                logits = torch.cat([embedder.logits(net, val_slices.images[i:i + 16].to(device),
                                                    val_emb[i:i + 16].to(device), opts.input_size).cpu()
                                    for i in range(0, len(val_slices), 16)])
            val = _summary(_slice_dice(logits, val_slices.labels, arch.num_classes), info)
        else:
            val = None
        entry = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "seconds": round(time.time() - t0, 1),
                 "val_dice": val}
        history.append(entry)
        log(f"epoch {epoch + 1}/{opts.epochs}: loss {entry['loss']:.4f}"
            + (f", validation Dice {val['mean']:.4f} " + str({k: round(v, 4) for k, v in val['per_label'].items()})
               if val else "") + f" ({entry['seconds']} s)")
        _atomic_torch_save({"epoch": epoch + 1, "model": net.state_dict(), "optimizer": optimizer.state_dict(),
                            "history": history}, ckpt_path)
        io.write_json(history, model_dir / "log.json")

    _atomic_torch_save(net.state_dict(), model_dir / WEIGHTS)
    last = history[-1] if history else {}
    config["validation"] = {
        "cases": len(split["val"]),
        "epoch": last.get("epoch"),
        "dice": last.get("val_dice"),
        "what": "per-case Dice of the prompter's own coarse map on the validation cases (3D for volumes)"
        if opts.mode == "mask" else "Dice over a fixed subset of validation slices (2D)",
    }
    io.write_json(config, config_path)
    return config


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
