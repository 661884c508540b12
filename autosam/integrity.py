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


def check_complete(path: str | os.PathLike) -> bytes:
    """Raise ``<file>: truncated or corrupt (...)`` if a gzip-compressed file's stream ends early or fails its CRC or
    size check, or if a NIfTI (compressed or not) holds fewer bytes than its header's ``vox_offset`` plus the data's
    size. Other files pass unread. Returns the first (decompressed) bytes read, the header of a NIfTI."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith(".gz"):
        head, size = _gunzip(path)
    elif name.endswith(".nii"):
        with open(path, "rb") as f:
            head = f.read(540)
        size = path.stat().st_size
    else:
        return b""
    if name.endswith((".nii", ".nii.gz")):
        need = _nifti_length(head)
        if need is not None and size < need:
            raise AutosamError(f"{path}: truncated or corrupt (its NIfTI header promises {need} bytes, the "
                               f"{'decompressed ' if name.endswith('.gz') else ''}file holds {size})")
    return head


#: channels of a PNG by its colour type: grey, RGB, palette (read as RGB), grey + alpha, RGBA
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}


def check_file(path: str | os.PathLike) -> Optional[int]:
    """A run's preflight over one file it will read, before anything is written: the file is there and not empty, a
    compressed stream reads to its end with its checks (:func:`check_complete`), a NIfTI is as long as its header
    says, and a PNG's chunks all carry their CRC, its image data inflates to its end and it ends with its end chunk.

    Returns the channels the header says the file holds (a PNG's colour type; a NIfTI's 4th or 5th dimension), or
    None for other formats. A file checked before in this process, unchanged since (size and modification time),
    is not read again: the preflight's check serves the read that follows."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError as e:
        raise AutosamError(f"{path}: cannot read ({e.strerror})") from None
    if stat.st_size == 0:
        raise AutosamError(f"{path}: empty file")
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _checked:
        _checked[key] = _check_content(path)
    return _checked[key]


#: files found sound in this process: (real path, size, modification time) -> channels
_checked: dict[tuple, Optional[int]] = {}


def _check_content(path: Path) -> Optional[int]:
    name = path.name.lower()
    if name.endswith(".png"):
        return _check_png(path)
    head = check_complete(path)
    return _nifti_channels(head) if name.endswith((".nii", ".nii.gz")) else None


def _check_png(path: Path) -> Optional[int]:
    """Walk a PNG's chunks, checking each CRC and inflating the image data to its end; the channels of its IHDR."""
    data = path.read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise AutosamError(f"{path}: not a PNG file")
    at, channels, inflate, ended = 8, None, zlib.decompressobj(), False
    try:
        while at + 12 <= len(data) and not ended:
            length, kind = struct.unpack(">I4s", data[at:at + 8])
            body, crc = data[at + 8:at + 8 + length], data[at + 8 + length:at + 12 + length]
            if len(crc) < 4 or zlib.crc32(kind + body) != struct.unpack(">I", crc)[0]:
                raise EOFError(f"chunk {kind.decode('latin-1')!r} fails its CRC")
            if kind == b"IHDR":
                channels = _PNG_CHANNELS.get(body[9]) if len(body) >= 10 else None
            elif kind == b"IDAT":
                inflate.decompress(body, 0)
            ended, at = kind == b"IEND", at + 12 + length
        if not ended:
            raise EOFError("no end chunk")
        if not inflate.eof:
            raise EOFError("the image data ends early")
    except (EOFError, zlib.error, struct.error) as e:
        raise AutosamError(f"{path}: truncated or corrupt ({e})") from None
    return channels


def _nifti_channels(head: bytes) -> Optional[int]:
    """Channels of a NIfTI-1 or -2 image: its 5th dimension (vector voxels) or 4th (a 4D volume), else 1."""
    for order in "<>":
        if len(head) >= 348 and struct.unpack(order + "i", head[:4])[0] == 348:
            dims = struct.unpack(order + "8h", head[40:56])
        elif len(head) >= 540 and struct.unpack(order + "i", head[:4])[0] == 540:
            dims = struct.unpack(order + "8q", head[16:80])
        else:
            continue
        if not 1 <= dims[0] <= 7:
            return None
        extra = [int(d) for d in dims[4:dims[0] + 1] if d > 1]
        return int(np.prod(extra)) if extra else 1
    return None


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
