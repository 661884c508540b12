"""Fine-tuning loop: noisy prompts drawn from labels, Dice + BCE (or focal) on SAM's low-res logits,
an IoU-head regression, one checkpoint per epoch, resumable."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .. import __version__, io
from ..errors import AutosamError
from ..losses import LOSSES, hard_dice, hard_iou, mask_loss
from ..progress import notice, progress
from ..sam import build_sam, resolve_device
from ..sam import transforms as T
from ..sam.cache import EmbeddingCache
from ..splits import split_by_subject
from . import crossfit
from .config import CONFIG_NAME, SPLIT_NAME, STATE_NAME, WEIGHTS_NAME, AdapterConfig, PromptNoise
from .data import (AUTO_PROMPT, AUTO_PROMPTS, Sample, TrainSlice, auto_prompts, make_samples, read_auto_case,
                   read_training_case, select_cases)
from .model import adapter_state, is_new_parameter, prepare_model, save_adapter
from .noise import perturb_box, prompt_kind, sample_prompt

#: Default embedding cache of an adapter folder (frozen-encoder methods; see :mod:`autosam.sam.cache`).
CACHE_NAME = "embedding_cache"
#: Gaussian shift of each edge of an automatic box (relative to its side), drawn anew every time it is used.
AUTO_JITTER = 0.05


@dataclass
class FinetuneResult:
    """What :func:`finetune` leaves: the adapter's config and the adapted model as it was saved."""

    config: AdapterConfig
    model: torch.nn.Module


@dataclass
class TrainingSet:
    """Slices, their samples and (for frozen encoders) cached embeddings, one row per slice."""

    slices: list[TrainSlice]
    samples: list[Sample]
    embeddings: list[Optional[torch.Tensor]] = field(default_factory=list)
    _targets: dict = field(default_factory=dict, repr=False)

    def target(self, i: int, image_size: int, low_res: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Binary target and valid-area mask ``(1, l, l)`` of sample ``i`` on the low-res canvas grid."""
        if i not in self._targets:
            s = self.samples[i]
            mask = T.mask_to_canvas(s.mask.astype(np.float32), image_size, low_res) > 0.5
            valid = T.mask_to_canvas(np.ones_like(s.mask, dtype=np.float32), image_size, low_res) > 0.5
            self._targets[i] = (mask, valid)
        mask, valid = self._targets[i]
        return mask.float(), valid.float()


def load_training_set(
    dataset_dir: Path, info: io.DatasetInfo, cases: Sequence[str], axis: Optional[int], max_slices: int, desc: str,
    cache: Optional[EmbeddingCache] = None, model=None, coarse: Optional[dict] = None, prompts: Optional[dict] = None,
    planes: bool = False,
) -> TrainingSet:
    """Read the cases' labelled slices (with ``planes``, along each of a volume's three axes); with a cache,
    embed them by ``model`` (once, with the engine SAM's predictor runs it in) and drop the images.

    ``coarse`` (case -> automatic coarse ``(label map, probabilities or None)``) adds the slices it prompts and one
    automatic sample per prompt, made as ``prompts`` says (:func:`autosam.adapt.data.read_auto_case`), after the
    label samples."""
    files = io.list_cases(dataset_dir / "imagesTr", info.file_ending, info.num_channels)
    labels = io.label_files(dataset_dir / "labelsTr", list(cases), info.file_ending)
    slices: list[TrainSlice] = []
    embeddings: list[Optional[torch.Tensor]] = []
    auto: list[Sample] = []
    for case in progress(list(cases), desc):
        if coarse is not None:
            part, found = read_auto_case(case, files[case], labels[case], info, axis, max_slices, *coarse[case],
                                         prompts=prompts, planes=planes)
            auto += [Sample(s.slice + len(slices), s.label, s.mask, s.box, s.prompt_mask) for s in found]
        else:
            part = read_training_case(case, files[case], labels[case], info, axis, max_slices, planes)
        if cache is not None and part:
            embeddings.extend(cache.fetch(model, [s.image for s in part]))
            for s in part:
                s.image = None
        else:
            embeddings.extend([None] * len(part))
        slices.extend(part)
    return TrainingSet(slices, make_samples(slices, info.foreground) + auto, embeddings)


def batch_loss(
    model, data: TrainingSet, idx: Sequence[int], kind: str, noise: PromptNoise, rng: np.random.Generator,
    loss_kind: str, device: torch.device, auto_jitter: float = AUTO_JITTER,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample mask loss, IoU-head loss and hard Dice for the samples ``idx`` with prompts of ``kind``
    (automatic samples always get their box, and their mask prompt when they have one; a batch is all automatic or
    all label samples)."""
    size, low = model.image_size, model.low_res_size
    samples = [data.samples[i] for i in idx]
    if all(data.embeddings[s.slice] is not None for s in samples):
        emb = torch.stack([data.embeddings[s.slice] for s in samples]).to(device)
    else:  # the encoder is trained: embed each distinct slice of the batch once
        order = sorted({s.slice for s in samples})
        canvas = T.to_canvas([data.slices[k].image for k in order], size).to(device)
        feats = model.embed(canvas)
        emb = feats[[order.index(s.slice) for s in samples]]
    boxes, coords, labels = [], [], []
    for s in samples:
        hw = data.slices[s.slice].hw
        if s.box is not None:  # an automatic prompt: its box, slightly jittered
            box, pts, lab = perturb_box(s.box, hw, 0.0, auto_jitter, rng), None, None
        else:
            box, pts, lab = sample_prompt(s.mask, kind, noise, rng)
        if box is not None:
            boxes.append(T.scale_coords(box, hw, size))
        if pts is not None:
            coords.append(T.scale_coords(pts, hw, size))
            labels.append(lab)
    box_t = torch.as_tensor(np.stack(boxes), device=device) if boxes else None
    points = None
    if coords:
        k = max(len(c) for c in coords)
        c = np.zeros((len(coords), k, 2), dtype=np.float32)
        lab = -np.ones((len(coords), k), dtype=np.float32)
        for j, (cc, ll) in enumerate(zip(coords, labels)):
            c[j, : len(cc)], lab[j, : len(ll)] = cc, ll
        points = (torch.as_tensor(c, device=device), torch.as_tensor(lab, device=device))
    masks = None
    if all(s.prompt_mask is not None for s in samples):
        masks = torch.stack([T.mask_to_canvas(s.prompt_mask, size, low, fill=-20.0) for s in samples]).to(device)
    logits, iou_pred = model.decode(emb, boxes=box_t, points=points, masks=masks, multimask=False)
    targets = [data.target(i, size, low) for i in idx]
    target = torch.stack([t for t, _ in targets]).to(device)
    valid = torch.stack([v for _, v in targets]).to(device)
    logits = logits[:, :1]
    loss = mask_loss(logits, target, valid, loss_kind)
    iou_loss = F.mse_loss(iou_pred[:, 0], hard_iou(logits.detach(), target, valid), reduction="none")
    return loss, iou_loss, hard_dice(logits.detach(), target, valid)


def evaluate(model, data: TrainingSet, noise: PromptNoise, loss_kind: str, device: torch.device,
             batch_size: int = 8, seed: int = 12345) -> dict:
    """Mean loss and Dice over all samples with a fixed draw of noisy prompts (no gradient)."""
    if not data.samples:
        return {}
    rng = np.random.default_rng(seed)
    losses, dices = [], []
    with torch.no_grad():
        for start in range(0, len(data.samples), batch_size):
            idx = list(range(start, min(len(data.samples), start + batch_size)))
            loss, iou_loss, dice = batch_loss(model, data, idx, prompt_kind(noise, rng), noise, rng, loss_kind, device)
            losses.append((loss + iou_loss).cpu())
            dices.append(dice.cpu())
    return {"loss": float(torch.cat(losses).mean()), "dice": float(torch.cat(dices).mean())}


def _prepare_folder(folder: Path, resume: bool, overwrite: bool) -> Optional[dict]:
    """Check the adapter folder; returns the training state when resuming."""
    exists = (folder / CONFIG_NAME).exists() or (folder / STATE_NAME).exists()
    if resume:
        if not (folder / STATE_NAME).is_file():
            raise AutosamError(f"{folder}: nothing to resume ({STATE_NAME} is missing)")
        return io.load_torch(folder / STATE_NAME, "adapter training state")
    if exists and not overwrite:
        raise AutosamError(f"{folder}: an adapter is already there; use --resume to continue or --overwrite")
    for name in (CONFIG_NAME, WEIGHTS_NAME, STATE_NAME, SPLIT_NAME):
        (folder / name).unlink(missing_ok=True)
    return None


def _check_options(loss: str, epochs: int, batch_size: int, planes: bool, axis: Optional[int]) -> None:
    if loss not in LOSSES:
        raise AutosamError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
    if epochs < 1 or batch_size < 1:
        raise AutosamError("--epochs and --batch-size must be at least 1")
    if planes and axis is not None:
        raise AutosamError("--planes trains on all three axes; give it or --axis, not both")


def finetune(
    dataset_dir: str | os.PathLike, adapter_dir: str | os.PathLike, base: str = "litemedsam",
    checkpoint: Optional[str] = None, method: str = "decoder", epochs: int = 5, rank: int = 4,
    lora_alpha: Optional[float] = None, train_encoder: bool = False, desam_channels: int = 64,
    prompt_noise: Optional[PromptNoise] = None, lr: float = 1e-4, decoder_lr: Optional[float] = None,
    batch_size: int = 8, loss: str = "dice_bce", val_fraction: float = 0.2, seed: int = 0,
    subject_pattern: Optional[str] = None, cases: Optional[Sequence[str]] = None, exclude: Sequence[str] = (),
    max_cases: int = 0, max_slices_per_case: int = 0, iterations_per_epoch: int = 0,
    cache_dir: Optional[str | os.PathLike] = None, use_cache: bool = True, axis: Optional[int] = None,
    device: str = "auto", resume: bool = False, overwrite: bool = False,
    log: Callable[[str], None] = notice,
    prompts_from: Optional[str] = None, folds: int = 3, fold_epochs: Optional[int] = None,
    auto_prompt: str = AUTO_PROMPT, planes: bool = False,
) -> FinetuneResult:
    """Train an adapter on the nnU-Net raw dataset ``dataset_dir`` and write it to ``adapter_dir``.

    After every epoch the folder holds a usable adapter (``adapter.pt``, ``adapter_config.json``), the split
    (``split.json``) and ``train_state.pt`` (optimizer state, for ``resume``). Cases are split by subject
    (``subject_pattern``, see :mod:`autosam.splits`); ``exclude`` takes case ids or subjects.

    ``prompts_from`` (``prompter:DIR`` or ``coarse:FOLDER``) adds automatic prompts on the training cases, made by
    a prompter that never trained on them (``folds`` cross-fitted fold prompters trained ``fold_epochs`` epochs,
    default the prompter's own), beside the label-derived noisy ones (:mod:`autosam.adapt.crossfit`);
    ``auto_prompt`` ``box+mask`` (the default) also gives them the source's probabilities as SAM's mask prompt, as
    refine's built-in ``box+mask`` strategy does; ``box`` gives boxes only. ``planes`` trains on the slices of all
    three axes of a volume (as ``refine --planes`` refines them), not only along ``axis`` or the chosen one.
    """
    dataset_dir, folder = Path(dataset_dir), Path(adapter_dir)
    _check_options(loss, epochs, batch_size, planes, axis)
    info = io.load_dataset_json(dataset_dir)
    if not resume:  # every check before anything is written
        split = _plan_split(dataset_dir, info, cases, exclude, max_cases, seed, subject_pattern, val_fraction,
                            max_slices_per_case)
        auto = _prompts_from_config(prompts_from, folds, fold_epochs, info, split["train"], auto_prompt)
    folder.mkdir(parents=True, exist_ok=True)
    state = _prepare_folder(folder, resume, overwrite)
    if state is not None:
        config, split = _resumed(state, epochs)
    else:
        config = AdapterConfig(
            base=base, method=method, rank=rank if method == "lora" else None,
            lora_alpha=(float(rank) if lora_alpha is None else lora_alpha) if method == "lora" else None,
            train_encoder=train_encoder and method == "decoder", desam_channels=desam_channels, epochs=epochs,
            lr=lr, decoder_lr=decoder_lr, batch_size=batch_size, loss=loss, seed=seed, axis=axis,
            planes=planes,
            subject_pattern=subject_pattern, dataset=str(dataset_dir.resolve()), labels=dict(info.labels),
            prompt_noise=prompt_noise or PromptNoise(), base_checkpoint=checkpoint, autosam_version=__version__,
            prompts_from=auto,
        )
        io.write_json(split, folder / SPLIT_NAME)
    dev = resolve_device(device)
    model, optimizer = _build_model(config, state, dev)
    cache = EmbeddingCache(cache_dir or folder / CACHE_NAME) if config.frozen_encoder and use_cache else None
    train, val = _training_data(config, split, dataset_dir, info, folder, model, cache, device, log)
    log(f"{config.method} on {config.base}: {len(train.samples)} training samples "
        f"({sum(s.box is not None for s in train.samples)} automatic) from {len(split['train'])} case(s), "
        f"{len(val.samples)} validation samples from {len(split['val'])} case(s); "
        f"{sum(p.numel() for g in optimizer.param_groups for p in g['params'])} trained parameters")
    _train(model, optimizer, train, val, config, split, folder, iterations_per_epoch, dev, log)
    return FinetuneResult(config, model)


def _training_data(config: AdapterConfig, split: dict, dataset_dir: Path, info: io.DatasetInfo, folder: Path, model,
                   cache: Optional[EmbeddingCache], device: str, log: Callable[[str], None]
                   ) -> tuple[TrainingSet, TrainingSet]:
    """The training set (with the automatic samples of ``config.prompts_from``) and the validation set."""
    n_slices = split.get("max_slices_per_case", 0)
    coarse = _automatic_coarse(config, dataset_dir, split, folder, device, log)
    prompts = (config.prompts_from or {}).get("prompts", AUTO_PROMPTS)
    train = load_training_set(dataset_dir, info, split["train"], config.axis, n_slices, "reading train cases",
                              cache, model, coarse, prompts, config.planes)
    val = load_training_set(dataset_dir, info, split["val"], config.axis, n_slices, "reading val cases", cache, model,
                            planes=config.planes)
    if not train.samples:
        raise AutosamError(f"{dataset_dir}: no labelled slices in the training cases")
    return train, val


def _plan_split(dataset_dir: Path, info: io.DatasetInfo, cases: Optional[Sequence[str]], exclude: Sequence[str],
                max_cases: int, seed: int, subject_pattern: Optional[str], val_fraction: float,
                max_slices: int) -> dict:
    """The cases of a new training and their split by subject (written later as ``split.json``)."""
    all_cases = io.list_cases(dataset_dir / "imagesTr", info.file_ending, info.num_channels)
    chosen = select_cases(all_cases, cases, exclude, max_cases, seed, subject_pattern)
    return {**split_by_subject(chosen, val_fraction, seed, subject_pattern), "max_slices_per_case": max_slices}


def _prompts_from_config(prompts_from: Optional[str], folds: int, fold_epochs: Optional[int], info: io.DatasetInfo,
                         train_cases: Sequence[str], auto_prompt: str = AUTO_PROMPT) -> Optional[dict]:
    """``AdapterConfig.prompts_from`` of a new training, after checking the source (nothing written yet)."""
    prompts = auto_prompts(auto_prompt)
    if not prompts_from:
        return None
    source = crossfit.parse_source(prompts_from)
    if folds < 2 or (fold_epochs is not None and fold_epochs < 1):
        raise AutosamError("--folds must be at least 2 and --fold-epochs at least 1")
    crossfit.check_source(source, info)
    crossfit.check_coarse_files(source, train_cases, info)
    return {"source": str(source), "folds": folds, "fold_epochs": fold_epochs, "jitter": AUTO_JITTER,
            "prompts": prompts, "record": crossfit.RECORD}


def _automatic_coarse(config: AdapterConfig, dataset_dir: Path, split: dict, folder: Path, device: str,
                      log: Callable[[str], None]) -> Optional[dict]:
    """The automatic coarse ``(label map, probabilities or None)`` of each training case (None without
    ``prompts_from``; probabilities only for mask prompts); records how they were made in
    ``config.prompts_from["use"]`` and ``folder/prompts_from.json``."""
    pf = config.prompts_from
    if not pf:
        return None
    coarse = crossfit.automatic_coarse(crossfit.parse_source(pf["source"]), dataset_dir, split["train"], folder,
                                       pf["folds"], config.subject_pattern, pf.get("fold_epochs"), device,
                                       config.seed, log, probabilities="mask" in pf["prompts"]["strategy"])
    pf["use"] = crossfit.read_record(folder)["use"]
    return coarse


def _resumed(state: dict, epochs: int) -> tuple[AdapterConfig, dict]:
    """Config (asking for ``epochs`` in total now) and split of a training state (older ones too)."""
    split = dict(state["split"])
    if "group_pattern" in split:
        split.setdefault("subject_pattern", split.pop("group_pattern"))
    return AdapterConfig.from_dict({**state["config"], "epochs": epochs}), split


def _build_model(config: AdapterConfig, state: Optional[dict], device: torch.device):
    """The adapted model (in eval mode: no dropout, BatchNorm statistics stay the base model's; gradients still
    flow) and its optimizer, both restored from ``state`` when resuming."""
    model = prepare_model(build_sam(config.base, config.base_checkpoint), config).to(device)
    model.eval()
    optimizer = torch.optim.AdamW(parameter_groups(model, config), weight_decay=1e-4)
    if state is not None:
        named = dict(model.named_parameters())
        with torch.no_grad():
            for k, v in state["adapter"].items():
                named[k].copy_(v)
        optimizer.load_state_dict(state["optimizer"])
    return model, optimizer


def _train(model, optimizer, train: TrainingSet, val: TrainingSet, config: AdapterConfig, split: dict, folder: Path,
           iterations: int, device: torch.device, log: Callable[[str], None]) -> None:
    """Epochs ``config.epoch`` to ``config.epochs``, each validated, logged and checkpointed."""
    for epoch in range(config.epoch, config.epochs):
        record = train_epoch(model, optimizer, train, config, epoch, iterations, device)
        if val.samples:
            scores = evaluate(model, val, config.prompt_noise, config.loss, device)
            record.update({f"val_{k}": v for k, v in scores.items()})
        config.epoch = epoch + 1
        config.history.append(record)
        log("  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()))
        _checkpoint(model, optimizer, config, split, folder)


def train_epoch(model, optimizer, data: TrainingSet, config: AdapterConfig, epoch: int, iterations: int,
                device: torch.device) -> dict:
    """One pass over the shuffled samples (or ``iterations`` steps, 0 = a pass); returns the epoch's record."""
    rng = np.random.default_rng([config.seed, epoch])
    batches = epoch_batches(data, config.batch_size, iterations, rng)
    noise, start, total, count = config.prompt_noise, time.time(), 0.0, 0
    bar = progress(batches, f"epoch {epoch + 1}/{config.epochs}", unit="step")
    for idx in bar:
        kind = "box" if data.samples[idx[0]].box is not None else prompt_kind(noise, rng)
        loss_s, iou_s, _ = batch_loss(model, data, idx, kind, noise, rng, config.loss, device)
        value = (loss_s + iou_s).mean()
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
        total, count = total + value.item() * len(idx), count + len(idx)
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{total / count:.4f}")
    return {"epoch": epoch + 1, "train_loss": total / max(count, 1), "seconds": round(time.time() - start, 1)}


def epoch_batches(data: TrainingSet, batch_size: int, iterations: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches of sample indices (the first ``iterations`` of them; 0 = all): label samples and automatic
    samples are batched apart (their prompts differ in kind), then the batches are shuffled together."""
    auto = np.array([s.box is not None for s in data.samples], dtype=bool)
    if not auto.any():
        order = rng.permutation(len(data.samples))
        if iterations:
            order = order[: iterations * batch_size]
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    batches = []
    for pool in (np.nonzero(~auto)[0], np.nonzero(auto)[0]):
        pool = rng.permutation(pool)
        batches += [pool[i : i + batch_size] for i in range(0, len(pool), batch_size)]
    batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches[:iterations] if iterations else batches


def parameter_groups(model: torch.nn.Module, config: AdapterConfig) -> list[dict]:
    """The trained parameters in two groups: new modules at ``lr``, SAM's own weights at ``decoder_lr`` (or ``lr``)."""
    new, pretrained = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (new if is_new_parameter(name) else pretrained).append(p)
    own_lr = config.lr if config.decoder_lr is None else config.decoder_lr
    return [g for g in ({"params": new, "lr": config.lr}, {"params": pretrained, "lr": own_lr}) if g["params"]]


def _checkpoint(model, optimizer, config: AdapterConfig, split: dict, folder: Path) -> None:
    """Write the adapter, then the training state (both atomically)."""
    save_adapter(model, config, folder)
    state = {"config": config.to_dict(), "split": split, "adapter": adapter_state(model),
             "optimizer": optimizer.state_dict()}
    with io.atomic_output(folder / STATE_NAME) as tmp:
        torch.save(state, tmp)

