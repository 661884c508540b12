"""Image embeddings computed once and reused: in memory, or in a folder that later runs and other processes share.

A cached embedding is found by the model's fingerprint (:func:`model_fingerprint`) and the slice's content
(:func:`slice_key`), so a cache never hands one model's embeddings to another or a stale one to a changed slice.

On disk a folder holds shards ``emb-<id>.npy`` (float32 ``(n, 256, s, s)``, read memory-mapped) and ``index.json``
(key -> shard and row). Each file is written under a temporary name and renamed, the index last, so a process
killed at any moment leaves the old or the new state; writers take a lock on ``.lock``. On load the index is
checked against the shards: a missing, truncated or unreadable file, or one the index does not list, is dropped
with one line on stderr, and its slices are encoded again when asked for.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch

from ..io import file_lock
from ..progress import notice
from .predictor import SamPredictor, SamPrompt, SamResult


INDEX = "index.json"
FORMAT, VERSION = "autosam-embedding-cache", 1
_SHARD = re.compile(r"^emb-[0-9a-f]{32}\.npy$")
_TMP = ".tmp-"

#: Slices ``(C, h, w)`` -> embeddings ``(n, 256, s, s)``.
Encoder = Callable[[list], torch.Tensor]


def _stamp(path: Path) -> Optional[list]:
    """Name, size and mtime of a file; of a folder, a digest of those of its files."""
    if path.is_file():
        st = path.stat()
        return [path.name, st.st_size, int(st.st_mtime)]
    if path.is_dir():
        files = sorted(_stamp(p) for p in path.iterdir() if p.is_file())
        return [path.name, hashlib.sha1(json.dumps(files).encode()).hexdigest()]
    return None


def model_fingerprint(model, precision: str = "float32") -> dict:
    """What fixes a model's image embeddings: backend, input size, weights file, an adapter that changes the
    encoder (one whose ``adapter_config.frozen_encoder`` is true does not), and the encoder's precision."""
    checkpoint = getattr(model, "checkpoint", None)
    adapter = getattr(model, "adapter", None)
    if adapter and getattr(getattr(model, "adapter_config", None), "frozen_encoder", False):
        adapter = None
    return {"backend": getattr(model, "name", type(model).__name__), "image_size": int(model.image_size),
            "weights": _stamp(Path(checkpoint)) if checkpoint else None,
            "adapter": _stamp(Path(adapter)) if adapter else None, "precision": precision}


def model_key(model, precision: str = "float32") -> str:
    """Short digest of :func:`model_fingerprint`."""
    text = json.dumps(model_fingerprint(model, precision), sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def slice_key(image: np.ndarray) -> str:
    """Content key of a normalised slice: sha1 of its float32 bytes, and its shape."""
    a = np.ascontiguousarray(image, dtype=np.float32)
    return f"{hashlib.sha1(a.tobytes()).hexdigest()}-{'x'.join(map(str, a.shape))}"


def embedding_encoder(model) -> tuple[Encoder, str]:
    """How SAM's predictor embeds slices, as an :class:`EmbeddingCache` encoder, and the precision its embeddings
    are stored under: on the CPU the fastest installed runtime (OpenVINO: about 3 times torch), torch in float32 on
    a GPU; so training and the verbs share cached embeddings. Build it once per model: a runtime compiles its
    model when it loads."""
    predictor = SamPredictor(model, device=str(next(model.parameters()).device), amp=False)
    return (lambda slices: predictor.embed_slices(slices).clone()), predictor.precision  # clone: usable in training


@dataclass
class CacheStats:
    """Counters of :meth:`EmbeddingCache.fetch`."""

    requested: int = 0  # slices asked for
    encoded: int = 0  # slices run through the encoder
    encode_seconds: float = 0.0  # wall time spent in the encoder
    charged_seconds: float = 0.0  # encoder time of every requested slice at its measured cost, as if uncached


class EmbeddingCache:
    """Embeddings by model and slice content: in memory, or with ``folder`` in memory-mapped shards on disk.

    >>> cache = EmbeddingCache("embedding_cache")
    >>> rows = cache.fetch(model, slices)    # one (256, 64, 64) tensor per slice, encoded only if not stored
    """

    def __init__(self, folder: str | os.PathLike | None = None) -> None:
        self.folder = None if folder is None else Path(folder)
        self.stats = CacheStats()
        self._memory: dict[str, tuple[torch.Tensor, float]] = {}
        self._entries: dict[str, tuple[str, int]] = {}  # key -> (shard, row)
        self._shards: dict[str, dict] = {}  # shard -> {"rows", "bytes", "seconds"}, each checked once
        self._maps: dict[str, np.ndarray] = {}
        self._index_stamp: Optional[tuple] = None
        self._lock_depth = 0
        self._encoder: Optional[tuple] = None  # (model, encode, precision) of fetch's default encoder
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            with self._locked():
                self._load()

    def __len__(self) -> int:
        return len(self._memory) + len(self._entries)

    # -- reading -------------------------------------------------------------------------------------------------
    def get(self, key: str) -> Optional[torch.Tensor]:
        """The stored embedding of ``key`` (memory-mapped when on disk), or None."""
        if key in self._memory:
            return self._memory[key][0]
        shard, row = self._entries.get(key, (None, 0))
        array = self._open(shard) if shard else None
        return None if array is None else torch.from_numpy(array[row])

    def seconds(self, key: str) -> float:
        """Encoder seconds the slice of ``key`` cost when it was encoded (0 when unknown)."""
        if key in self._memory:
            return self._memory[key][1]
        shard = self._entries.get(key, ("", 0))[0]
        return float(self._shards.get(shard, {}).get("seconds", 0.0))

    def fetch(self, model, slices: Sequence[np.ndarray], encode: Optional[Encoder] = None,
              precision: str = "float32") -> list[torch.Tensor]:
        """Embeddings of ``slices`` by ``model``, one per slice; only slices not stored are encoded, once each,
        by ``encode`` and stored under ``precision``. Without ``encode``, by :func:`embedding_encoder` (built on
        first use for the model, kept for the next calls with it) under its precision."""
        if encode is None:
            if self._encoder is None or self._encoder[0] is not model:
                self._encoder = (model, *embedding_encoder(model))
            encode, precision = self._encoder[1:]
        prefix = model_key(model, precision)
        keys = [f"{prefix}:{slice_key(s)}" for s in slices]
        first = {k: i for i, k in reversed(list(enumerate(keys)))}
        if any(self.get(k) is None for k in first) and self.folder is not None:
            with self._locked():
                self._load()  # another process may have stored them meanwhile
        todo = [k for k in first if self.get(k) is None]
        if todo:
            start = time.perf_counter()
            new = encode([slices[first[k]] for k in todo])
            each = (time.perf_counter() - start) / len(todo)
            self.put(todo, new, each)
            self.stats.encoded += len(todo)
            self.stats.encode_seconds += each * len(todo)
        self.stats.requested += len(keys)
        self.stats.charged_seconds += sum(self.seconds(k) for k in keys)
        return [self.get(k) for k in keys]

    # -- writing -------------------------------------------------------------------------------------------------
    def put(self, keys: Sequence[str], embeddings: torch.Tensor, seconds: float = 0.0) -> None:
        """Store ``embeddings`` ``(n, ...)`` under ``keys``; ``seconds``: encoder time per slice."""
        if self.folder is not None:
            array = np.ascontiguousarray(embeddings.detach().float().cpu().numpy())
            name = f"emb-{uuid.uuid4().hex}.npy"
            try:
                with self._locked():
                    self._load()  # keep what other processes stored since we last looked
                    self._write(name, lambda f: np.save(f, array))
                    self._shards[name] = {"rows": len(array), "bytes": (self.folder / name).stat().st_size,
                                          "seconds": seconds}
                    self._entries.update((k, (name, i)) for i, k in enumerate(keys))
                    self._write_index()
                return
            except OSError as e:  # a full or read-only disk: keep them in memory for this run
                self._notice(f"cannot write ({e})", "these embeddings are kept in memory only")
        self._memory.update((k, (e, seconds)) for k, e in zip(keys, embeddings))

    def clear(self) -> None:
        """Free memory: in-memory embeddings are forgotten, disk shards are unmapped (and stay on disk)."""
        self._memory.clear()
        self._maps.clear()

    # -- the folder ----------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The folder's lock (:func:`autosam.io.file_lock`), re-entrant within this cache."""
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        with file_lock(self.folder / ".lock"):
            self._lock_depth = 1
            try:
                yield
            finally:
                self._lock_depth = 0

    def _notice(self, what: str, outcome: str = "those slices are encoded again") -> None:
        notice(f"autosam: note: embedding cache {self.folder}: {what}; {outcome}")

    def _write(self, name: str, write: Callable) -> None:
        """Write ``folder/name`` under a temporary name, then rename it into place."""
        tmp = self.folder / f"{_TMP}{os.getpid()}-{uuid.uuid4().hex[:8]}-{name}"
        try:
            with open(tmp, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.folder / name)
        finally:
            tmp.unlink(missing_ok=True)

    def _write_index(self) -> None:
        index = {"format": FORMAT, "version": VERSION, "shards": self._shards,
                 "entries": {k: list(v) for k, v in self._entries.items()}}
        self._write(INDEX, lambda f: f.write(json.dumps(index).encode()))
        self._index_stamp = _file_id(self.folder / INDEX)

    def _load(self) -> None:
        """(Re)read the index if it changed, check it against the folder and repair what is out of step."""
        path = self.folder / INDEX
        if self._index_stamp is not None and _file_id(path) == self._index_stamp:
            return
        problems: list[str] = []
        shards, entries = _read_index(path, problems)
        good = {n: m for n, m in shards.items() if n in self._shards or _shard_ok(self.folder / n, m)}
        kept = {k: (s, r) for k, (s, r) in entries.items() if s in good and 0 <= r < good[s]["rows"]}
        stray = [p for p in self.folder.iterdir() if _SHARD.match(p.name) and p.name not in good]
        for count, what in ((len(shards) - len(good), "shard(s) missing, truncated or unreadable"),
                            (len(entries) - len(kept), "index entries pointing nowhere"),
                            (len(stray), f"file(s) not in {INDEX}" if path.exists() else f"file(s) without {INDEX}")):
            if count:
                problems.append(f"{count} {what}")
        for p in stray + [p for p in self.folder.iterdir() if p.name.startswith(_TMP)]:
            p.unlink(missing_ok=True)
        self._shards, self._entries = good, kept
        self._maps = {k: v for k, v in self._maps.items() if k in good}
        if problems:
            self._notice(", ".join(problems))
            self._write_index()
        else:
            self._index_stamp = _file_id(path)

    def _open(self, shard: str) -> Optional[np.ndarray]:
        """The memory-mapped array of a shard; a shard that cannot be read is dropped (with a notice)."""
        if shard not in self._maps:
            try:
                array = np.load(self.folder / shard, mmap_mode="c")
                if array.dtype != np.float32 or len(array) != self._shards[shard]["rows"]:
                    raise ValueError("shape or type differs from the index")
            except (OSError, ValueError, KeyError):
                with self._locked():  # dropped; _load says so in one line
                    (self.folder / shard).unlink(missing_ok=True)
                    self._index_stamp = None
                    self._shards.pop(shard, None)
                    self._load()
                return None
            self._maps[shard] = array
        return self._maps[shard]


def _file_id(path: Path) -> Optional[tuple]:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _read_index(path: Path, problems: list[str]) -> tuple[dict, dict]:
    """Shards and entries of the index at ``path``; none when it is missing or unreadable (noted in ``problems``)."""
    if not path.exists():
        return {}, {}
    try:
        index = json.loads(path.read_text())
        if index.get("format") != FORMAT or index.get("version") != VERSION:
            raise ValueError("not an index of this version")
        shards = {str(n): {"rows": int(m["rows"]), "bytes": int(m["bytes"]), "seconds": float(m.get("seconds", 0))}
                  for n, m in index["shards"].items()}
        if not all(_SHARD.match(n) for n in shards):
            raise ValueError("bad shard name")
        return shards, {str(k): (str(s), int(r)) for k, (s, r) in index["entries"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        problems.append(f"{INDEX} is unreadable ({type(e).__name__})")
        return {}, {}


def _shard_ok(path: Path, meta: dict) -> bool:
    """A shard exists with the recorded size and a float32 ``(rows, ...)`` header."""
    try:
        if path.stat().st_size != meta["bytes"]:
            return False
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f)
        return dtype == np.float32 and not fortran and shape[:1] == (meta["rows"],)
    except (OSError, ValueError, KeyError, TypeError):
        return False


class CachingPredictor(SamPredictor):
    """A :class:`~autosam.sam.SamPredictor` whose ``set_slices`` encodes only the slices its cache lacks.

    Share one :class:`EmbeddingCache` between predictors (or give it a folder, to share it between runs) and
    each slice pays the encoder once. ``cache.stats`` counts requested and encoded slices and encoder seconds.
    Within :meth:`remembering_decodes`, a prompt asked again on the same slice pays the decoder once too.
    """

    _decoded: Optional[dict] = None  # prompt key -> (logits, iou) while remembering decodes
    _slice_keys: Optional[list] = None

    def __init__(self, model, device: str = "auto", batch_size: int = 16, amp: bool = True,
                 cache: Optional[EmbeddingCache] = None, engine: str = "auto") -> None:
        super().__init__(model, device=device, batch_size=batch_size, amp=amp, engine=engine)
        self.cache = EmbeddingCache() if cache is None else cache

    @classmethod
    def like(cls, predictor: SamPredictor, cache: Optional[EmbeddingCache] = None) -> "CachingPredictor":
        """A caching predictor with ``predictor``'s model, device, batch size, precision and engine (its loaded
        runtime encoder too), and ``cache`` (default: a new in-memory one)."""
        new = cls.__new__(cls)
        new.__dict__.update(predictor.__dict__)
        new.embeddings, new.sizes, new._decoded, new._slice_keys = None, [], None, None
        new.cache = EmbeddingCache() if cache is None else cache
        return new

    @torch.inference_mode()
    def set_slices(self, slices: Sequence[np.ndarray]) -> None:
        rows = self.cache.fetch(self.model, slices, self._encode, self.precision)
        self.sizes = [tuple(np.asarray(s).shape[-2:]) for s in slices]
        self.embeddings = torch.stack([r.to(self.device) for r in rows]) if rows else None
        self._slice_keys = [slice_key(s) for s in slices] if self._decoded is not None else None

    @contextlib.contextmanager
    def remembering_decodes(self, max_bytes: int = 1 << 30) -> Iterator["CachingPredictor"]:
        """Within the block, :meth:`predict` answers a prompt it already decoded on the same slice content from
        memory (its logits and IoU; at most ``max_bytes`` of logits are kept). For callers that ask SAM the same
        prompts under several settings, as tuning does; the memory is freed on leaving."""
        self._decoded, self._decoded_room = {}, max_bytes
        try:
            yield self
        finally:
            self._decoded = self._slice_keys = None

    def predict(self, prompts: Sequence[SamPrompt], multimask: bool = False,
                batch_size: Optional[int] = None) -> SamResult:
        if self._decoded is None or self._slice_keys is None:
            return super().predict(prompts, multimask, batch_size)
        keys = [self._prompt_key(p, multimask) for p in prompts]
        answers = {k: self._decoded[k] for k in keys if k in self._decoded}
        todo = {k: p for k, p in zip(keys, prompts) if k not in answers}
        if todo:
            fresh = super().predict(list(todo.values()), multimask, batch_size)
            for k, logits, iou in zip(todo, fresh.logits, fresh.iou):
                answers[k] = (logits, float(iou))
                if logits.nbytes <= self._decoded_room:
                    self._decoded[k] = answers[k]
                    self._decoded_room -= logits.nbytes
        return SamResult(logits=[answers[k][0] for k in keys],
                         iou=np.array([answers[k][1] for k in keys], dtype=np.float32))

    def _prompt_key(self, p: SamPrompt, multimask: bool) -> tuple:
        if not 0 <= p.slice_index < len(self._slice_keys):
            raise IndexError(f"a prompt refers to slice {p.slice_index}; {len(self._slice_keys)} slices are encoded")

        def digest(a) -> Optional[bytes]:
            return None if a is None else hashlib.sha1(np.ascontiguousarray(a, np.float32).tobytes()).digest()

        return (self._slice_keys[p.slice_index], multimask, digest(p.box), digest(p.points),
                digest(p.point_labels), digest(p.mask))

    def _encode(self, slices: list) -> torch.Tensor:
        return self.embed_slices(slices)

    def clear(self) -> None:
        """Free the cache's memory (see :meth:`EmbeddingCache.clear`)."""
        self.cache.clear()
