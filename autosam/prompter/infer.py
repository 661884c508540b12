"""Load a trained prompter (a folder or a shipped name) and turn cases into coarse per-class probabilities."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .. import io, slicing
from ..errors import AutosamError
from ..labels import to_distribution
from ..sam import transforms as T
from .data import case_slices, image_canvas
from .model import ArchConfig, PromptNet, decode_dense

#: Folder of the prompters shipped with autosam, one sub-folder per name.
WEIGHTS_ROOT = Path(__file__).parent / "weights"
CONFIG = "config.json"
WEIGHTS = "model.pt"


def shipped_prompters() -> list[str]:
    """Names of the prompters that ship inside the package."""
    if not WEIGHTS_ROOT.is_dir():
        return []
    return sorted(p.name for p in WEIGHTS_ROOT.iterdir() if (p / CONFIG).is_file() and (p / WEIGHTS).is_file())


def resolve_prompter(name_or_dir: str | Path) -> Path:
    """A prompter folder (holding config.json and model.pt) from a path or a shipped name."""
    path = Path(name_or_dir)
    if path.is_dir():
        if not (path / CONFIG).is_file():
            raise AutosamError(f"{path}: not a prompter folder (no {CONFIG}); train one with 'autosam train-prompter'")
        return path
    if str(name_or_dir) in shipped_prompters():
        return WEIGHTS_ROOT / str(name_or_dir)
    names = ", ".join(shipped_prompters()) or "none"
    raise AutosamError(f"prompter {name_or_dir!r} is neither a folder nor a shipped prompter (shipped: {names})")


def read_config(folder: str | Path) -> dict:
    path = Path(folder) / CONFIG
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise AutosamError(f"{path}: cannot read prompter config: {e}") from None
    if config.get("format") != "autosam-prompter":
        raise AutosamError(f"{path}: not an autosam prompter config")
    return config


class Prompter:
    """A trained prompt network with its preprocessing; ``mode`` is ``"mask"`` or ``"embedding"``."""

    def __init__(self, config: dict, net: PromptNet, folder: Optional[Path] = None, device: str = "cpu") -> None:
        self.config = config
        self.net = net.to(device).eval()
        self.folder = folder
        self.device = torch.device(device)

    @classmethod
    def load(cls, name_or_dir: str | Path, device: str = "cpu", weights: str = WEIGHTS) -> "Prompter":
        """Rebuild the network from ``config.json`` and load ``weights`` (default ``model.pt``)."""
        folder = resolve_prompter(name_or_dir)
        config = read_config(folder)
        net = PromptNet(ArchConfig(**config["architecture"]))
        path = folder / weights
        state = io.load_torch(path, "prompter weights")
        try:
            net.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)
        except (RuntimeError, KeyError, ValueError, TypeError, AttributeError) as e:
            raise AutosamError(f"{path}: does not fit {folder / CONFIG}: {str(e).splitlines()[0]}") from None
        return cls(config, net, folder, device)

    # -- what the prompter expects -------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        return self.config["mode"]

    @property
    def labels(self) -> dict[str, int]:
        return self.config["dataset"]["labels"]

    @property
    def foreground(self) -> list[int]:
        return sorted(v for k, v in self.labels.items() if v != 0 and k != "ignore")

    @property
    def channel_names(self) -> list[str]:
        return self.config["dataset"]["channel_names"]

    @property
    def input_size(self) -> int:
        return int(self.config["preprocessing"]["input_size"])

    @property
    def axis(self) -> Optional[int]:
        return self.config["preprocessing"].get("slice_axis")

    def dataset_info(self) -> io.DatasetInfo:
        """The training dataset's dataset.json (kept in the prompter folder) as :class:`io.DatasetInfo`."""
        return io.load_dataset_json(self.folder / "dataset.json")

    def check_dataset(self, info: io.DatasetInfo) -> None:
        """Refuse a dataset whose channels or labels differ from the ones the prompter was trained on."""
        name = self.folder.name if self.folder else "prompter"
        mine = [c.lower() for c in self.channel_names]
        theirs = [c.lower() for c in info.channel_names]
        if mine != theirs:
            raise AutosamError(f"{info.path}: channels {info.channel_names} do not match prompter {name!r}, "
                               f"trained on channels {self.channel_names}")
        own = {k: v for k, v in self.labels.items()}
        if {k: v for k, v in info.labels.items()} != own:
            raise AutosamError(f"{info.path}: labels {info.labels} do not match prompter {name!r}, trained on "
                               f"labels {own}")

    # -- inference -----------------------------------------------------------------------------------------
    @torch.inference_mode()
    def slice_probabilities(self, slices: np.ndarray, sam=None, batch_size: int = 32) -> np.ndarray:
        """Normalised slices ``(S, C, h, w)`` -> foreground probabilities ``(S, K, h, w)`` at slice size.

        ``sam`` (embedding mode): a SAM model, or a :class:`~autosam.sam.SamPredictor` whose ``set_slices``
        encodes them (its engine; a :class:`~autosam.sam.cache.CachingPredictor` keeps the embeddings for SAM's
        refinement of the same slices, so each is encoded once)."""
        hw = slices.shape[-2:]
        out = np.zeros((slices.shape[0], len(self.foreground)) + tuple(hw), dtype=np.float32)
        if self.mode == "embedding" and sam is None:
            raise AutosamError("this prompter is an embedding-mode (AutoSAM) prompter and needs a SAM model")
        for start in range(0, slices.shape[0], batch_size):
            part = slices[start : start + batch_size]
            canvas = image_canvas(part, self.input_size).to(self.device)
            if self.mode == "mask":
                probs = torch.softmax(self.net(canvas).float(), dim=1)[:, 1:]
                out[start : start + len(part)] = T.logits_to_slice(probs, hw, self.input_size).cpu().numpy()
            else:
                if hasattr(sam, "set_slices"):  # a predictor: its encoder, its cache
                    sam.set_slices(list(part))
                    emb, model = sam.embeddings, sam.model
                else:
                    model = sam
                    emb = model.embed(T.to_canvas(part, model.image_size).to(next(model.parameters()).device))
                dev = next(model.parameters()).device
                dense = self.net(canvas.to(dev) if dev != self.device else canvas).to(dev)
                b, k = dense.shape[:2]
                low, _ = decode_dense(model, emb.to(dev).repeat_interleave(k, dim=0), dense.flatten(0, 1))
                probs = torch.sigmoid(T.logits_to_slice(low, hw, model.image_size)).reshape(b, k, *hw)
                out[start : start + len(part)] = probs.cpu().numpy()
        return out

    def foreground_probabilities(self, case: io.Case, sam=None, axis: Optional[int] = None) -> np.ndarray:
        """A case -> ``(K, Z, Y, X)`` foreground probabilities (one map per foreground label, ascending)."""
        if case.image.shape[0] != len(self.channel_names):
            raise AutosamError(f"case {case.case_id}: {case.image.shape[0]} channel(s), but the prompter expects "
                               f"{len(self.channel_names)} ({', '.join(self.channel_names)})")
        slices, ax = case_slices(case, self.channel_names, self.axis if axis is None else axis)
        probs = self.slice_probabilities(slices, sam=sam)  # (S, K, h, w)
        return np.ascontiguousarray(slicing.from_slices(probs, ax))

    def coarse(self, case: io.Case, sam=None, axis: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
        """A case -> (label map ``(Z, Y, X)`` int16, probabilities ``(K+1, Z, Y, X)``, background first).

        The probabilities have nnU-Net's layout (background, then the foreground labels in ascending order),
        as :func:`autosam.refine.refine_case` and :func:`autosam.export.write_case` take them.
        """
        fg = self.foreground_probabilities(case, sam=sam, axis=axis)
        dist = to_distribution(fg) if self.mode == "embedding" else _with_background(fg)
        lut = np.asarray([0] + self.foreground, dtype=np.int16)
        return lut[dist.argmax(axis=0)], dist


def _with_background(fg: np.ndarray) -> np.ndarray:
    """Softmax foreground channels ``(K, ...)`` -> ``(K+1, ...)`` with the background as the remainder."""
    bg = np.clip(1.0 - fg.sum(axis=0, keepdims=True), 0.0, 1.0)
    return np.concatenate([bg, fg]).astype(np.float32)
