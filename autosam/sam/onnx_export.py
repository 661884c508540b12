"""The image encoder exported to ONNX (``torch.onnx.export(dynamo=True)``) and, for OpenVINO, converted to its IR.

:func:`build_entry` writes one entry of the runtime cache that :class:`autosam.sam.engines.RuntimeEncoder` loads:
the exported files under temporary names, renamed into place, ``meta.json`` (their sizes and sha1) last.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import uuid
import warnings
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

#: Engine -> files of a cached entry (the first is what the runtime loads).
FILES = {"onnx": ("encoder.onnx",), "openvino": ("encoder.xml", "encoder.bin")}


def sha1(path: Path) -> str:
    """sha1 of a file's bytes, read in blocks."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class _Embed(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, canvas: torch.Tensor) -> torch.Tensor:
        return self.model.embed(canvas)


@contextlib.contextmanager
def _batch_free(encoder: nn.Module) -> Iterator[None]:
    """TinyViT's ``PatchMerging`` reads the batch size with ``len(x)``, which export freezes to the example's;
    during export it gets its input already reshaped with ``x.shape[0]``, which stays symbolic."""
    patched = []
    for m in encoder.modules():
        if type(m).__name__ == "PatchMerging" and hasattr(m, "input_resolution"):
            def forward(x, _m=m, _original=m.forward):
                if x.ndim == 3:
                    h, w = _m.input_resolution
                    x = x.reshape(x.shape[0], h, w, x.shape[-1]).permute(0, 3, 1, 2)
                return _original(x)

            m.forward = forward
            patched.append(m)
    try:
        yield
    finally:
        for m in patched:
            del m.forward


def export_onnx(model: nn.Module, path: Path) -> None:
    """The model's ``embed`` (canvases ``(B, 3, S, S)`` in ``[0, 1]`` -> embeddings), batch size free, as ONNX."""
    size = int(model.image_size)
    example = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    wrapper = _Embed(model).eval()
    with _batch_free(model.image_encoder), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, (example,), str(path), input_names=["canvas"], output_names=["embeddings"],
                          dynamic_shapes={"canvas": {0: torch.export.Dim("batch", min=1, max=4096)}},
                          dynamo=True, external_data=False, verbose=False)


def to_openvino(onnx_path: Path, xml_path: Path) -> None:
    """An ONNX file converted to OpenVINO's IR (``.xml`` and its ``.bin``), weights kept in f32."""
    import openvino as ov

    ov.save_model(ov.convert_model(str(onnx_path)), str(xml_path), compress_to_fp16=False)


def build_entry(model: nn.Module, folder: Path, key: dict, engine: str) -> None:
    """Export into temporary names, rename the files into place, then write meta.json."""
    (folder / "meta.json").unlink(missing_ok=True)
    tag = f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = folder / tag
    tmp.mkdir()
    try:
        was_training = model.training
        model.eval()
        try:
            export_onnx(model, tmp / "encoder.onnx")
        finally:
            model.train(was_training)
        if engine == "openvino":
            to_openvino(tmp / "encoder.onnx", tmp / "encoder.xml")
        files = {}
        for f in FILES[engine]:
            files[f] = {"bytes": (tmp / f).stat().st_size, "sha1": sha1(tmp / f)}
            os.replace(tmp / f, folder / f)
        meta = {"key": key, "files": files, "weights": getattr(model, "checkpoint", None),
                "adapter": getattr(model, "adapter", None)}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        os.replace(tmp / "meta.json", folder / "meta.json")
    finally:
        for p in tmp.iterdir() if tmp.exists() else ():
            p.unlink()
        if tmp.exists():
            tmp.rmdir()
