"""Encode 2D slices once, then answer any number of prompts on them (segment-anything's predictor idea, batched)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from . import transforms as T
from .registry import SamModel
from .engines import RuntimeEncoder, notice, resolve_engine, weights_version


@dataclass
class SamPrompt:
    """One prompt on one encoded slice; coordinates in pixels of that slice (x, y).

    ``box`` is ``(x0, y0, x1, y1)``; ``points`` ``(K, 2)`` with ``point_labels`` ``(K,)`` (1 positive,
    0 negative); ``mask`` is a slice-sized prior given as logits (SAM's low-resolution mask prompt).
    """

    slice_index: int
    box: Optional[np.ndarray] = None
    points: Optional[np.ndarray] = None
    point_labels: Optional[np.ndarray] = None
    mask: Optional[np.ndarray] = None

    def signature(self) -> tuple[bool, bool, bool]:
        """Prompts with the same signature can share one decoder call."""
        return self.box is not None, self.points is not None and len(self.points) > 0, self.mask is not None


@dataclass
class SamResult:
    """Mask logits at each prompt's slice resolution and SAM's predicted IoU, in prompt order."""

    logits: list[np.ndarray]
    iou: np.ndarray


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; an explicit name is checked for availability."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    from ..errors import AutosamError

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise AutosamError(f"device {device!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise AutosamError(f"device {device!r} requested but CUDA is not available here")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise AutosamError(f"device {device!r} requested but this machine has {torch.cuda.device_count()} GPU(s)")
    mps = getattr(torch.backends, "mps", None)
    if dev.type == "mps" and not (mps is not None and mps.is_available()):
        raise AutosamError(f"device {device!r} requested but MPS is not available here")
    return dev


#: prompts per decoder call on the CPU (LiteMedSAM, peak memory 1.55 GB at 16 against 3.55 GB at 64 prompts:
#: ``scripts/benchmark_memory.py --components``)
CPU_DECODE_BATCH = 16


def _chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def upsample(low: torch.Tensor, sizes: Sequence[tuple[int, int]], image_size: int, chunk: Optional[int] = None
             ) -> list[np.ndarray]:
    """Low-res logits ``(B, 1, l, l)`` -> one ``(H, W)`` array per row at its slice size ``sizes[row]``.

    Rows of one size are upsampled together, ``chunk`` at a time: on a GPU (default 64) one call and one copy to
    the host per chunk instead of per prompt. On a CPU (default 1) larger chunks were measured slower (64 masks
    to 540x800: 26 ms one by one, 37 ms in chunks of 16), as the full-size masks leave the caches."""
    chunk = chunk or (1 if low.device.type == "cpu" else 64)
    out: list[Optional[np.ndarray]] = [None] * len(sizes)
    by_size: dict[tuple[int, int], list[int]] = {}
    for j, hw in enumerate(sizes):
        by_size.setdefault(tuple(hw), []).append(j)
    for hw, rows in by_size.items():
        for part in _chunks(len(rows), chunk):
            some = rows[part]
            up = T.logits_to_slice(low[some], hw, image_size)[:, 0].cpu().numpy()
            for r, j in enumerate(some):
                out[j] = up[r]
    return out  # type: ignore[return-value]


class SamPredictor:
    """Holds the embeddings of a set of slices and decodes prompts against them.

    >>> predictor = SamPredictor(build_sam())
    >>> predictor.set_slices([slice0, slice1])            # each (C, H, W) in [0, 1], encoded once
    >>> result = predictor.predict([SamPrompt(0, box=np.array([10, 10, 40, 50]))])
    """

    def __init__(self, model: SamModel, device: str = "auto", batch_size: int = 16, amp: bool = True,
                 engine: str = "auto") -> None:
        if engine not in ("auto", "torch") and device == "auto":
            device = "cpu"  # the runtimes run on the CPU
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.batch_size = batch_size
        self.amp = amp and self.device.type == "cuda"
        self.engine = resolve_engine(engine, self.device, getattr(model, "name", ""))
        self.embeddings: Optional[torch.Tensor] = None
        self.sizes: list[tuple[int, int]] = []
        self._encoder: Optional[RuntimeEncoder] = None
        self._encoder_version: Optional[int] = None

    @property
    def precision(self) -> str:
        """What the embeddings are computed in: ``bfloat16`` (torch under CUDA autocast) or ``float32`` (the
        runtimes run the encoder in f32)."""
        return "bfloat16" if self.engine == "torch" and self.amp else "float32"

    def _autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def _runtime(self) -> Optional[RuntimeEncoder]:
        """The runtime encoder of :attr:`engine` (exported or loaded on first use, again when the weights change);
        None for torch. A runtime that fails falls back to torch with one line on stderr."""
        if self.engine == "torch":
            return None
        version = weights_version(self.model)
        if self._encoder is None or version != self._encoder_version:
            try:
                self._encoder = RuntimeEncoder.load(self.model, self.engine)
                self._encoder_version = version
            except Exception as e:  # noqa: BLE001 - any export or runtime failure: torch still works
                self._fall_back(e)
        return self._encoder

    def _fall_back(self, error: BaseException) -> None:
        text = str(error).splitlines()[0][:200] if str(error) else ""
        notice(f"the {self.engine} engine failed ({type(error).__name__}: {text}); SAM's encoder runs in torch")
        self.engine, self._encoder = "torch", None

    def encode(self, canvas: torch.Tensor) -> torch.Tensor:
        """Float32 embeddings of ``(B, 3, S, S)`` canvases in ``[0, 1]``, on :attr:`device`."""
        encoder = self._runtime()
        if encoder is not None:
            try:
                return encoder(canvas).to(self.device)
            except Exception as e:  # noqa: BLE001
                self._fall_back(e)
        with self._autocast():
            return self.model.embed(canvas.to(self.device)).float()

    @torch.inference_mode()
    def embed_slices(self, slices: Sequence[np.ndarray]) -> Optional[torch.Tensor]:
        """Float32 embeddings ``(n, 256, s, s)`` of slices (``(C, H, W)`` or ``(H, W)``, intensities in ``[0, 1]``),
        encoded in batches and not kept (None for no slices)."""
        out = [self.encode(T.to_canvas(slices[part], self.model.image_size))
               for part in _chunks(len(slices), self.batch_size)]
        return torch.cat(out) if out else None

    def set_slices(self, slices: Sequence[np.ndarray]) -> None:
        """Encode slices (``(C, H, W)`` or ``(H, W)``, intensities in ``[0, 1]``) in batches; keep embeddings."""
        self.sizes = [tuple(np.asarray(s).shape[-2:]) for s in slices]
        self.embeddings = self.embed_slices(slices)

    @torch.inference_mode()
    def predict(self, prompts: Sequence[SamPrompt], multimask: bool = False,
                batch_size: Optional[int] = None) -> SamResult:
        """Decode prompts; with ``multimask`` the best of SAM's three masks (by predicted IoU) is kept.

        ``batch_size`` prompts share one decoder call (default on a GPU: :attr:`batch_size`, at least 64; on the
        CPU :data:`CPU_DECODE_BATCH`: there a call of 64 prompts held about 2 GB more than one of 16,
        ``scripts/benchmark_memory.py --components``).
        """
        if prompts and self.embeddings is None:
            raise RuntimeError("call set_slices() before predict()")
        batch_size = batch_size or (CPU_DECODE_BATCH if self.device.type == "cpu" else max(64, self.batch_size))
        logits: list[Optional[np.ndarray]] = [None] * len(prompts)
        iou = np.zeros(len(prompts), dtype=np.float32)
        groups: dict[tuple, list[int]] = {}
        for i, p in enumerate(prompts):
            if not 0 <= p.slice_index < len(self.sizes):
                raise IndexError(f"prompt {i} refers to slice {p.slice_index}; {len(self.sizes)} slices are encoded")
            groups.setdefault(p.signature(), []).append(i)
        for signature, members in groups.items():
            for part in _chunks(len(members), batch_size):
                idx = members[part]
                low, scores = self._decode_group([prompts[i] for i in idx], signature, multimask)
                iou[idx] = scores.cpu().numpy()
                sizes = [self.sizes[prompts[i].slice_index] for i in idx]
                for i, up in zip(idx, upsample(low, sizes, self.model.image_size)):
                    logits[i] = up
        return SamResult(logits=logits, iou=iou)  # type: ignore[arg-type]

    def _decode_group(
        self, prompts: list[SamPrompt], signature: tuple[bool, bool, bool], multimask: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        has_box, has_points, has_mask = signature
        size, dev = self.model.image_size, self.device
        emb = self.embeddings[[p.slice_index for p in prompts]]
        boxes = points = masks = None
        if has_box:
            boxes = torch.as_tensor(
                np.stack([T.scale_coords(p.box, self.sizes[p.slice_index], size) for p in prompts]), device=dev
            )
        if has_points:
            k = max(len(p.points) for p in prompts)
            coords = np.zeros((len(prompts), k, 2), dtype=np.float32)
            labels = -np.ones((len(prompts), k), dtype=np.float32)  # -1 pads to the longest point list
            for j, p in enumerate(prompts):
                coords[j, : len(p.points)] = T.scale_coords(p.points, self.sizes[p.slice_index], size)
                labels[j, : len(p.points)] = p.point_labels
            points = (torch.as_tensor(coords, device=dev), torch.as_tensor(labels, device=dev))
        if has_mask:
            low = self.model.low_res_size
            masks = torch.stack([T.mask_to_canvas(p.mask, size, low, fill=-20.0) for p in prompts]).to(dev)
        with self._autocast():
            low_res, scores = self.model.decode(emb, boxes=boxes, points=points, masks=masks, multimask=multimask)
        low_res, scores = low_res.float(), scores.float()
        if multimask:
            best = scores.argmax(dim=1)
            rows = torch.arange(len(prompts), device=low_res.device)
            return low_res[rows, best][:, None], scores[rows, best]
        return low_res, scores[:, 0]
