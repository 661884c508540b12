"""What autosam checks in a file's content before it trusts it, each failure one :class:`AutosamError` line naming
the file: a compressed stream read to its end (a truncated ``.nii.gz`` is otherwise zero-filled by ITK), a NIfTI as
long as its header says, label values that dataset.json lists (checked before any cast, so 65537 never wraps to 1),
and probabilities that are finite, within [0, 1] and sum to 1 per voxel.

It imports nothing of autosam but :mod:`autosam.errors`; :mod:`autosam.io` calls it wherever it reads a file.
"""
from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .errors import AutosamError

_CHUNK = 1 << 18  # compressed bytes read at a time
_OUTPUT = 1 << 22  # most decompressed bytes held at a time
_INT16 = np.iinfo(np.int16)


def check_complete(path: str | os.PathLike) -> None:
    """Raise ``<file>: truncated or corrupt (...)`` if a gzip-compressed file's stream ends early or fails its CRC or
    size check, or if a NIfTI (compressed or not) holds fewer bytes than its header's ``vox_offset`` plus the data's
    size. Other files pass unread."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith(".gz"):
        head, size = _gunzip(path)
    elif name.endswith(".nii"):
        with open(path, "rb") as f:
            head = f.read(540)
        size = path.stat().st_size
    else:
        return
    if name.endswith((".nii", ".nii.gz")):
        need = _nifti_length(head)
        if need is not None and size < need:
            raise AutosamError(f"{path}: truncated or corrupt (its NIfTI header promises {need} bytes, the "
                               f"{'decompressed ' if name.endswith('.gz') else ''}file holds {size})")


def check_header(path: str | os.PathLike) -> None:
    """The cheap part of :func:`check_complete`, for a run's preflight over every file it will read: the file is
    there and not empty, a PNG ends with its end chunk, and a NIfTI's header fits the file's size (for a ``.gz``,
    the header decompressed from the stream's start against the size in its trailer). Where a ``.gz`` trailer
    disagrees (a truncated stream, or a file of several members) the whole stream is checked."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise AutosamError(f"{path}: cannot read ({e.strerror})") from None
    if size == 0:
        raise AutosamError(f"{path}: empty file")
    name = path.name.lower()
    if name.endswith(".png"):
        with open(path, "rb") as f:
            f.seek(max(0, size - 12))
            if f.read()[4:8] != b"IEND":
                raise AutosamError(f"{path}: truncated or corrupt (no PNG end chunk)")
    elif name.endswith(".nii.gz") and size > 18:
        with open(path, "rb") as f:
            start = f.read(_CHUNK)
            f.seek(size - 4)
            trailer = struct.unpack("<I", f.read(4))[0]
        try:
            head = zlib.decompressobj(31).decompress(start, 540)
        except zlib.error as e:
            raise AutosamError(f"{path}: truncated or corrupt ({e})") from None
        need = _nifti_length(head)
        if need is None or need % 2**32 != trailer:
            check_complete(path)
    elif name.endswith((".nii", ".gz")):
        check_complete(path)


def _gunzip(path: Path) -> tuple[bytes, int]:
    """The first 540 decompressed bytes and the decompressed size, inflating the whole stream in bounded pieces
    (every member's CRC and size checked by zlib; zero padding after a member is allowed, as :mod:`gzip` does)."""
    head, size, members = b"", 0, 0
    inflate, started = zlib.decompressobj(31), False
    try:
        with open(path, "rb") as f:
            while data := f.read(_CHUNK):
                while data:
                    if members and not started:
                        data = data.lstrip(b"\0")
                        if not data:
                            break
                    out, started = inflate.decompress(data, _OUTPUT), True
                    size, head = size + len(out), head + out[:540 - len(head)] if len(head) < 540 else head
                    if inflate.eof:
                        data, members = inflate.unused_data, members + 1
                        inflate, started = zlib.decompressobj(31), False
                    else:
                        data = inflate.unconsumed_tail
        while started and (out := inflate.decompress(b"", _OUTPUT)):  # output held back by the bound
            size, head = size + len(out), head + out[:540 - len(head)] if len(head) < 540 else head
        if (started and not inflate.eof) or not (members or inflate.eof):
            raise EOFError("the compressed stream ends before its end marker")
    except (EOFError, zlib.error) as e:
        raise AutosamError(f"{path}: truncated or corrupt ({e})") from None
    return head, size


def _nifti_length(head: bytes) -> Optional[int]:
    """Bytes a single-file NIfTI-1 or NIfTI-2 needs (``vox_offset`` + data) from its header; None where the header
    is not one (the reader then judges the file)."""
    for order in "<>":
        if len(head) >= 348 and struct.unpack(order + "i", head[:4])[0] == 348 and head[344:348] == b"n+1\0":
            dims = struct.unpack(order + "8h", head[40:56])
            bitpix = struct.unpack(order + "h", head[72:74])[0]
            offset = struct.unpack(order + "f", head[108:112])[0]
        elif len(head) >= 540 and struct.unpack(order + "i", head[:4])[0] == 540 and head[4:8] == b"n+2\0":
            dims = struct.unpack(order + "8q", head[16:80])
            bitpix = struct.unpack(order + "h", head[14:16])[0]
            offset = struct.unpack(order + "q", head[168:176])[0]
        else:
            continue
        if not 1 <= dims[0] <= 7 or any(d < 0 for d in dims[1:dims[0] + 1]) or bitpix <= 0 or not offset >= 0:
            return None
        voxels = int(np.prod([int(d) for d in dims[1:dims[0] + 1]], dtype=object))
        return int(offset) + voxels * int(bitpix) // 8
    return None


def _listed(values: np.ndarray, limit: int = 8) -> str:
    """``255, 65537`` (integers without a decimal point), at most ``limit`` of them."""
    shown = ", ".join(f"{v:g}" if not float(v).is_integer() else str(int(v)) for v in values[:limit])
    return shown + (f", ... ({len(values)} values)" if len(values) > limit else "")


def label_map(values: np.ndarray, path: str | os.PathLike, allowed: Optional[Sequence[int]] = None,
              source: str | os.PathLike = "dataset.json") -> np.ndarray:
    """``values`` (as a reader returns them, float32) as an int16 label map, refused first if any value is not an
    integer, not in ``allowed`` (the label values of dataset.json ``source``; when given), or beyond int16."""
    values = np.asarray(values)
    if allowed is not None:
        outside = [v for v in allowed if not _INT16.min <= v <= _INT16.max]
        if outside:
            raise AutosamError(f"{source}: label value(s) {outside} are beyond the int16 range autosam uses")
        odd = ~np.isin(values, np.asarray(allowed, dtype=values.dtype))
    else:
        odd = ~((values >= _INT16.min) & (values <= _INT16.max) & (values == np.round(values)))  # NaN is odd
    if odd.any():
        bad = np.unique(values[odd])
        fractional = bad[~np.isfinite(bad) | (bad != np.round(bad))]
        if fractional.size:
            raise AutosamError(f"label file {path} holds non-integer values ({_listed(fractional)})")
        if allowed is None:
            raise AutosamError(f"{path}: label values {_listed(bad)} are beyond the int16 range autosam uses")
        raise AutosamError(f"{path}: label values {_listed(bad)} are not in {source} "
                           f"({', '.join(str(v) for v in sorted(allowed))}); map them to the dataset's labels")
    return values.astype(np.int16)


def check_probabilities(probs: np.ndarray, path: str | os.PathLike, tolerance: float = 1e-3,
                        sum_tolerance: float = 1e-2) -> None:
    """Refuse class probabilities ``(C, ...)`` (one channel per class, background first) that are not finite, leave
    [0, 1] by more than ``tolerance``, or whose per-voxel sum is off 1 by more than ``sum_tolerance``."""
    if probs.size == 0:
        return
    lo, hi = float(probs.min()), float(probs.max())
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise AutosamError(f"{path}: probabilities hold non-finite values (NaN or inf)")
    if lo < -tolerance or hi > 1 + tolerance:
        raise AutosamError(f"{path}: probabilities must lie in [0, 1], found values from {lo:g} to {hi:g}")
    off = float(np.abs(probs.sum(axis=0, dtype=np.float32) - 1).max())
    if off > sum_tolerance:
        raise AutosamError(f"{path}: the class probabilities of a voxel must sum to 1 (a softmax), found sums off "
                           f"by up to {off:.3g}")
