"""What an adapter folder holds: ``adapter_config.json`` (the recipe) and ``adapter.pt`` (the trained tensors).

An adapter folder never holds a copy of the base model: only the tensors training changed (the mask decoder,
LoRA factors, the DeSAM mask module) and a config naming the base backend they belong to.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Optional

from ..errors import AutosamError

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter.pt"
SPLIT_NAME = "split.json"
STATE_NAME = "train_state.pt"

#: Adaptation methods: what is added to the base model and what is trained.
METHODS = ("decoder", "lora", "desam")


@dataclass
class PromptNoise:
    """How training prompts are drawn from a label component (all sizes relative to the component's box).

    ``types``: prompt kinds drawn from (``box``, ``points``; one is chosen at random per sample, ``box+points``
    when both are allowed and a coin says so). ``jitter``: standard deviation of each box edge's shift, as a
    fraction of the box side. ``margin``: an extra margin drawn uniformly in ``[0, margin]`` of the box side.
    ``max_points``: positive points drawn inside the component (1 to ``max_points``), plus with probability
    ``negative`` one negative point inside the box but outside the component.
    """

    types: tuple[str, ...] = ("box",)
    jitter: float = 0.1
    margin: float = 0.1
    max_points: int = 3
    negative: float = 0.5

    def __post_init__(self) -> None:
        self.types = tuple(self.types)
        bad = [t for t in self.types if t not in ("box", "points")]
        if bad or not self.types:
            raise AutosamError(f"prompt types must be box and/or points, got {','.join(self.types) or 'nothing'}")
        if self.jitter < 0 or self.margin < 0 or self.max_points < 1 or not 0 <= self.negative <= 1:
            raise AutosamError("prompt noise: jitter and margin must be >= 0, max_points >= 1, negative in [0, 1]")


@dataclass
class AdapterConfig:
    """The recipe of an adapter: enough to rebuild its modules on the base backend and to resume training."""

    base: str
    method: str
    rank: Optional[int] = None  # LoRA rank (method lora)
    lora_alpha: Optional[float] = None  # LoRA scale is alpha / rank
    train_encoder: bool = False  # method decoder: the image encoder is trained too
    desam_channels: int = 64  # method desam: width of the prompt-invariant mask module
    epoch: int = 0  # epochs finished
    epochs: int = 0  # epochs asked for
    lr: float = 1e-4  # new modules (LoRA factors, DeSAM mask module); also SAM's own weights unless decoder_lr
    decoder_lr: Optional[float] = None  # SAM's own trained weights (decoder, heads, encoder); None: lr
    batch_size: int = 8
    loss: str = "dice_bce"
    seed: int = 0
    axis: Optional[int] = None
    planes: bool = False  # slices of all three axes of a volume (finetune --planes)
    subject_pattern: Optional[str] = None  # regex of autosam.splits: a subject's cases stay on one side of the split
    dataset: str = ""
    labels: dict = field(default_factory=dict)
    split: str = SPLIT_NAME
    prompt_noise: PromptNoise = field(default_factory=PromptNoise)
    base_checkpoint: Optional[str] = None
    #: automatic prompts mixed in (``autosam.adapt.crossfit``): source, folds, fold_epochs, jitter, use
    prompts_from: Optional[dict] = None
    autosam_version: str = ""
    history: list = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise AutosamError(f"unknown adaptation method {self.method!r}; choose one of {', '.join(METHODS)}")
        if isinstance(self.prompt_noise, dict):
            self.prompt_noise = PromptNoise(**self.prompt_noise)
        if self.method == "lora" and (self.rank is None or self.rank < 1):
            raise AutosamError(f"LoRA rank must be a positive integer, got {self.rank}")

    @property
    def frozen_encoder(self) -> bool:
        """True when the image encoder is unchanged, so its embeddings can be cached."""
        return self.method == "desam" or (self.method == "decoder" and not self.train_encoder)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["prompt_noise"]["types"] = list(self.prompt_noise.types)
        return d

    @classmethod
    def from_dict(cls, raw: dict) -> "AdapterConfig":
        """A config from its dict, also as older versions wrote it (``group_pattern`` for ``subject_pattern``);
        unknown keys are ignored."""
        raw = dict(raw)
        if "group_pattern" in raw:
            raw.setdefault("subject_pattern", raw.pop("group_pattern"))
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})


def read_config(adapter_dir: str | Path) -> AdapterConfig:
    """Read ``adapter_config.json`` of an adapter folder; any problem is an :class:`AutosamError` naming it."""
    folder = Path(adapter_dir)
    path = folder / CONFIG_NAME
    if not folder.is_dir():
        raise AutosamError(f"adapter folder not found: {folder}")
    if not path.is_file():
        raise AutosamError(f"{folder}: not an adapter folder ({CONFIG_NAME} is missing)")
    try:
        raw = json.loads(path.read_text())
        if not isinstance(raw, dict) or "base" not in raw or "method" not in raw:
            raise AutosamError(f"{path}: needs at least 'base' (backend) and 'method'")
        return AdapterConfig.from_dict(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AutosamError(f"{path} is not valid JSON: {e}") from None
    except TypeError as e:
        raise AutosamError(f"{path}: {e}") from None
