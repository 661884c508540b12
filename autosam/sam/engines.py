"""Which engine runs SAM's image encoder, and the encoder in a CPU inference runtime (ONNX Runtime or OpenVINO).

``--engine torch|onnx|openvino|auto`` picks what runs the encoder; ``auto`` (the default) takes the fastest
installed runtime on the CPU (OpenVINO, then ONNX Runtime: see scripts/README.md, "CPU runtime") and torch on
CUDA/MPS. The prompt encoder and mask decoder stay in torch: they cost a few percent of a slice's encoder time.

The encoder (with its input normalisation and any adapter's encoder changes, e.g. LoRA, as built) is exported
to ONNX and, for OpenVINO, converted to its IR (:mod:`.onnx_export`), in f32. The files live in
:func:`cache_dir` ``/runtime/<key>/``, keyed on the backend, a digest of the encoder's weights as built (so a new
checkpoint or adapter gives a new key), the runtime's and torch's versions. They are written under temporary
names and renamed into place, ``meta.json`` last; on load each file's size and sha1 are checked, and a corrupt or
incomplete entry is rebuilt after one line on stderr.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import torch
from torch import nn

from ..errors import AutosamError
from ..io import file_lock
from ..progress import notice
from . import onnx_export
from .onnx_export import FILES, sha1


#: Values of ``--engine``.
ENGINES = ("auto", "torch", "onnx", "openvino")
#: Runtime engine -> (module it needs, PyPI package).
RUNTIMES = {"onnx": ("onnxruntime", "onnxruntime"), "openvino": ("openvino", "openvino")}
#: Order in which ``auto`` tries the installed runtimes (fastest first, as measured).
PREFERENCE = ("openvino", "onnx")
#: Backends that ``auto`` runs in a runtime; any other backend needs an explicit ``--engine``.
AUTO_BACKENDS = ("litemedsam",)
#: Modules the ONNX export needs besides torch.
EXPORT_MODULES = ("onnx", "onnxscript")
INSTALL_HINT = "pip install 'autosam[cpu]'"
FORMAT, VERSION = "autosam-runtime-encoder", 1



def cache_dir() -> Path:
    """``$AUTOSAM_CACHE_DIR``, else ``$XDG_CACHE_HOME/autosam``, else ``~/.cache/autosam``."""
    if os.environ.get("AUTOSAM_CACHE_DIR"):
        return Path(os.environ["AUTOSAM_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "autosam"


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing(engine: str) -> list[str]:
    """The modules ``engine`` needs (its runtime, the ONNX export tools) that cannot be imported here."""
    return [m for m in (RUNTIMES[engine][0],) + EXPORT_MODULES if not _importable(m)]


def installed(engine: str) -> bool:
    """Whether ``engine``'s runtime and the ONNX export tools are installed."""
    return not missing(engine)


def runtime_version(engine: str) -> str:
    return str(importlib.import_module(RUNTIMES[engine][0]).__version__)


def resolve_engine(engine: str, device: torch.device, backend: str = "litemedsam") -> str:
    """The engine that runs the encoder: ``torch``, ``onnx`` or ``openvino``.

    An explicit runtime that is not installed, or on a device other than the CPU, is an :class:`AutosamError`;
    ``auto`` falls back to torch (with one line on stderr, once per process, when no runtime is installed).
    """
    if engine not in ENGINES:
        raise AutosamError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if engine == "torch":
        return engine
    if engine != "auto":
        if missing(engine):
            packages = [RUNTIMES[engine][1] if m == RUNTIMES[engine][0] else m for m in missing(engine)]
            raise AutosamError(f"--engine {engine} needs {', '.join(missing(engine))}, not installed here: "
                               f"pip install {' '.join(packages)}")
        if device.type != "cpu":
            raise AutosamError(f"--engine {engine} runs on the CPU, not on {device}; use --device cpu "
                               "or --engine torch")
        return engine
    if device.type != "cpu" or backend not in AUTO_BACKENDS:
        return "torch"
    for name in PREFERENCE:
        if installed(name):
            return name
    notice(f"autosam: note: no CPU runtime installed, SAM's image encoder runs in torch (faster: {INSTALL_HINT})",
           once="auto")
    return "torch"


# -- keys ---------------------------------------------------------------------------------------------------------
def _tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """What the exported graph depends on: the encoder's parameters and buffers, and the input normalisation."""
    seen = set()
    for name, t in [*model.image_encoder.named_parameters(), *model.image_encoder.named_buffers()]:
        if id(t) not in seen:
            seen.add(id(t))
            yield name, t
    for name in ("pixel_mean", "pixel_std"):
        if isinstance(getattr(model, name, None), torch.Tensor):
            yield name, getattr(model, name)


def weights_version(model: nn.Module) -> int:
    """Changes whenever a tensor of the encoder is changed in place (a training step, ``load_state_dict``)."""
    try:
        return sum(t._version + 1 for _, t in _tensors(model))
    except RuntimeError:  # inference tensors keep no version: they cannot have been trained since
        return -1


def encoder_digest(model: nn.Module) -> str:
    """sha1 of the encoder's tensors (names, types, shapes, values): new weights or adapter, new digest."""
    h = hashlib.sha1()
    for name, t in _tensors(model):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def encoder_key(model: nn.Module, engine: str) -> dict:
    """Everything the cached runtime model depends on (the runtimes run the encoder in f32)."""
    return {
        "format": FORMAT, "version": VERSION, "backend": getattr(model, "name", type(model).__name__),
        "image_size": int(model.image_size), "encoder": encoder_digest(model), "engine": engine,
        "runtime": f"{RUNTIMES[engine][0]}=={runtime_version(engine)}", "torch": torch.__version__,
        "precision": "f32",
    }


#: Largest relative error of the embeddings against torch that :meth:`RuntimeEncoder.check` accepts.
TOLERANCE = 1e-3


# -- sessions -----------------------------------------------------------------------------------------------------
def _onnx_session(folder: Path, threads: int) -> Callable:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # no busy threads between slices
    options.log_severity_level = 3
    session = ort.InferenceSession(str(folder / FILES["onnx"][0]), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def read_openvino(folder: Path) -> tuple:
    """OpenVINO's ``(Core, Model)`` of a cached entry, its input reshaped to one slice."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(folder / FILES["openvino"][0]))
    shape = model.input(0).get_partial_shape()
    shape[0] = 1  # one slice per call (see RuntimeEncoder); a static shape is a little faster
    model.reshape({model.input(0): shape})
    return core, model


def compile_openvino(core, model, threads: int, **config) -> Callable:
    """The model compiled for the CPU (latency, one stream, f32 unless ``config`` says otherwise), as a function."""
    compiled = core.compile_model(model, "CPU", {
        "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "f32", **config})
    request = compiled.create_infer_request()
    output = compiled.output(0)
    return lambda x: request.infer([x])[output].copy()


def _openvino_session(folder: Path, threads: int) -> Callable:
    return compile_openvino(*read_openvino(folder), threads)


SESSIONS = {"onnx": _onnx_session, "openvino": _openvino_session}


class RuntimeEncoder:
    """A model's image encoder in ``engine``: ``encoder(canvas)`` gives what ``model.embed(canvas)`` gives.

    >>> encoder = RuntimeEncoder.load(build_sam("litemedsam"), "openvino")   # built once, then from the cache
    >>> embeddings = encoder(torch.rand(4, 3, 256, 256))                     # (4, 256, 64, 64) float32, CPU
    """

    def __init__(self, engine: str, folder: Path, run: Callable, key: dict) -> None:
        self.engine, self.folder, self.key = engine, folder, key
        self._run = run

    def __call__(self, canvas: torch.Tensor) -> torch.Tensor:
        """Embeddings of ``(B, 3, S, S)`` canvases, computed one slice per call: a runtime is no faster per slice
        on larger batches, and its memory then grows with each new batch size (ONNX Runtime: past 10 GB)."""
        x = canvas.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(np.concatenate([self._run(x[i : i + 1]) for i in range(len(x))]))

    @classmethod
    def load(cls, model: nn.Module, engine: str, threads: Optional[int] = None,
             root: Optional[Path] = None) -> "RuntimeEncoder":
        """From the cache (a corrupt entry is rebuilt), or exported and checked against torch first.

        ``threads``: default torch's; ``root``: default :func:`cache_dir` ``/runtime``.
        """
        threads = threads or torch.get_num_threads()
        key = encoder_key(model, engine)
        name = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
        folder = (root or cache_dir() / "runtime") / f"{key['backend']}-{engine}-{name}"
        folder.mkdir(parents=True, exist_ok=True)
        with file_lock(folder / ".lock"):  # processes building the same entry take turns
            problem = _check(folder, key, engine)
            if problem is None:
                try:
                    encoder = cls(engine, folder, SESSIONS[engine](folder, threads), key)
                except Exception as e:  # noqa: BLE001 - whatever the runtime says of a bad file, rebuild it
                    problem = f"{FILES[engine][0]} does not load ({type(e).__name__})"
            if problem is not None:
                if problem != "missing":
                    notice(f"autosam: note: runtime cache {folder}: {problem}; rebuilding it")
                onnx_export.build_entry(model, folder, key, engine)
                encoder = cls(engine, folder, SESSIONS[engine](folder, threads), key)
                try:
                    encoder.check(model)
                except AutosamError:
                    (folder / "meta.json").unlink(missing_ok=True)  # never used as it is
                    raise
        return encoder

    def check(self, model: nn.Module) -> None:
        """Embeddings of one random canvas agree with torch (relative max error), or an AutosamError."""
        size = int(model.image_size)
        x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1))
        with torch.inference_mode():
            ref = model.embed(x.to(next(model.parameters()).device)).float().cpu()
        err = float((self(x) - ref).abs().max() / ref.abs().max().clamp_min(1e-6))
        if not err <= TOLERANCE:
            raise AutosamError(f"{self.engine} encoder differs from torch (relative error {err:.2g})")


def _check(folder: Path, key: dict, engine: str) -> Optional[str]:
    """None when the entry is complete and intact; else what is wrong (``"missing"``: never built)."""
    meta_path = folder / "meta.json"
    if not meta_path.exists():
        return "missing" if not any((folder / f).exists() for f in FILES[engine]) else "meta.json is missing"
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("key") != key:
            return "meta.json belongs to another model"
        for f in FILES[engine]:
            st = (folder / f).stat()
            if st.st_size != meta["files"][f]["bytes"] or sha1(folder / f) != meta["files"][f]["sha1"]:
                return f"{f} is truncated or changed"
    except FileNotFoundError as e:
        return f"{Path(e.filename).name} is missing"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return f"meta.json is unreadable ({type(e).__name__})"
    return None
