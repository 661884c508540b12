"""nnU-Net raw-format I/O: dataset.json, case listing, reading and writing through nnU-Net's own reader/writers."""
from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Type

import numpy as np

from . import integrity
from .errors import AutosamError


@dataclass
class DatasetInfo:
    """The parts of an nnU-Net ``dataset.json`` that autosam uses (``raw`` keeps the whole file)."""

    path: Path
    labels: dict[str, int]
    channel_names: list[str]
    file_ending: str
    raw: dict = field(default_factory=dict)

    @property
    def foreground(self) -> list[int]:
        """Foreground label values in ascending order (ignore label excluded)."""
        return sorted(v for k, v in self.labels.items() if v != 0 and k != "ignore")

    @property
    def ignore_label(self) -> Optional[int]:
        return self.labels.get("ignore")

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)


def load_dataset_json(folder_or_file: str | os.PathLike) -> DatasetInfo:
    """Read and validate ``dataset.json`` (a folder holding it, or the file itself)."""
    path = Path(folder_or_file)
    if path.is_dir():
        path = path / "dataset.json"
    if not path.is_file():
        raise AutosamError(f"dataset.json not found: {path}")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AutosamError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise AutosamError(f"{path}: expected a JSON object")
    channels = raw.get("channel_names", raw.get("modality"))
    for key, value in (("labels", raw.get("labels")), ("channel_names", channels), ("file_ending", raw.get("file_ending"))):
        if not value:
            raise AutosamError(f"{path}: missing required key '{key}'")
    labels = raw["labels"]
    if not isinstance(labels, dict):
        raise AutosamError(f"{path}: 'labels' must map names to values")
    if any(not isinstance(v, int) for v in labels.values()):
        raise AutosamError(
            f"{path}: region-based labels (lists of values) are not supported by autosam; give one integer per label"
        )
    if labels.get("background") != 0:
        raise AutosamError(f"{path}: 'labels' must contain background: 0")
    try:
        order = sorted(channels, key=int)
    except (TypeError, ValueError):
        raise AutosamError(f"{path}: channel_names keys must be '0', '1', ...") from None
    if order != [str(i) for i in range(len(order))]:
        raise AutosamError(f"{path}: channel_names keys must be consecutive from '0', got {order}")
    ending = raw["file_ending"]
    if not ending.startswith("."):
        raise AutosamError(f"{path}: file_ending must start with a dot, got {ending!r}")
    reader_writer(ending, path)
    return DatasetInfo(path=path, labels=dict(labels), channel_names=[channels[k] for k in order],
                       file_ending=ending, raw=raw)


def find_dataset_json(given: Optional[str | os.PathLike] = None, *, predictions: Optional[str | os.PathLike] = None,
                      images: Optional[str | os.PathLike] = None, labels: Optional[str | os.PathLike] = None) -> Path:
    """The one dataset.json lookup of every verb: ``given`` (a file, or a dataset folder holding one); else the
    predictions folder's own (coarse, or scored, predictions carry the dataset.json they were written with); else
    the raw dataset's, beside the image folder (``DIR/imagesTs`` -> ``DIR/dataset.json``) or in it; else beside or
    in the label folder."""
    if given is not None:
        path = Path(given)
        return path / "dataset.json" if path.is_dir() else path
    folders = []
    if predictions is not None:
        folders.append(Path(predictions))
    for folder in (images, labels):
        if folder is not None:
            folders += [Path(folder).parent, Path(folder)]
    for folder in folders:
        if (folder / "dataset.json").is_file():
            return folder / "dataset.json"
    where = ", ".join(dict.fromkeys(str(f) for f in folders)) or "nowhere"
    raise AutosamError(f"dataset.json not found (looked in {where}); pass --dataset-json FILE or -d DATASET_DIR")


def list_cases(images_dir: str | os.PathLike, file_ending: str, num_channels: int) -> dict[str, list[Path]]:
    """Map case id -> its channel files ``<case>_0000<ending>``, ``<case>_0001<ending>`` ... (sorted by case)."""
    folder = Path(images_dir)
    if not folder.is_dir():
        raise AutosamError(f"image folder not found: {folder}")
    pattern = re.compile(r"^(.+)_(\d{4})" + re.escape(file_ending) + "$")
    found: dict[str, dict[int, Path]] = {}
    for f in sorted(folder.iterdir()):
        if f.name.startswith(".") or not f.is_file():
            continue
        m = pattern.match(f.name)
        if m is None:
            if f.name.endswith(file_ending):
                raise AutosamError(f"{f}: image files must be named <case>_XXXX{file_ending} (XXXX = channel index)")
            continue
        found.setdefault(m.group(1), {})[int(m.group(2))] = f
    if not found:
        raise AutosamError(f"no images named <case>_0000{file_ending} in {folder}")
    cases = {}
    for case, channels in sorted(found.items()):
        missing = [c for c in range(num_channels) if c not in channels]
        extra = [c for c in channels if c >= num_channels]
        if missing:
            raise AutosamError(f"case {case} in {folder}: missing channel file(s) " +
                               ", ".join(f"{case}_{c:04d}{file_ending}" for c in missing))
        if extra:
            raise AutosamError(f"case {case} in {folder}: unexpected channel {extra[0]:04d}; dataset has {num_channels}")
        cases[case] = [channels[c] for c in range(num_channels)]
    return cases


def label_files(labels_dir: str | os.PathLike, cases: list[str], file_ending: str, what: str = "label"
                ) -> dict[str, Path]:
    """Each case's ``<case><ending>`` file in ``labels_dir`` (a label map; ``what`` names its kind in errors, e.g.
    ``"coarse segmentation"``); a missing folder or file is an error naming it."""
    folder = Path(labels_dir)
    if not folder.is_dir():
        raise AutosamError(f"{what} folder not found: {folder}")
    out = {}
    for case in cases:
        f = folder / f"{case}{file_ending}"
        if not f.is_file():
            raise AutosamError(f"image {case} has no {what} file: {f} is missing")
        out[case] = f
    return out


def reader_writer(file_ending: str, example_file: Optional[str | os.PathLike] = None) -> Type:
    """nnU-Net's reader/writer class for a file ending (SimpleITKIO, NaturalImage2DIO, ...)."""
    from nnunetv2.imageio.reader_writer_registry import LIST_OF_IO_CLASSES

    for rw in LIST_OF_IO_CLASSES:
        if file_ending.lower() in rw.supported_file_endings:
            return rw
    raise AutosamError(
        (f"{example_file}: " if example_file else "") + f"unknown file ending {file_ending!r}"
        + "; nnU-Net reads " + ", ".join(sorted({e for rw in LIST_OF_IO_CLASSES for e in rw.supported_file_endings}))
    )


@dataclass
class Case:
    """One image case: ``image`` is ``(C, Z, Y, X)`` float32 (2D images have ``Z == 1``), as nnU-Net reads it."""

    case_id: str
    image: np.ndarray
    properties: dict
    files: list[Path]
    #: work done on the case ahead of processing, by a job's ``prefetch`` in the runner's read-ahead thread
    prefetched: dict = field(default_factory=dict, repr=False)

    @property
    def spacing(self) -> tuple[float, ...]:
        return tuple(float(s) for s in self.properties["spacing"])


def _read(rw_class: Type, files: list[Path], what: str):
    """The reader's ``(array, properties)``; a file that is truncated or corrupt (:func:`autosam.integrity.check_file`,
    first: ITK zero-fills a short ``.nii.gz``, and a PNG reader may skip a chunk's CRC), or that the reader cannot
    read, is one line naming it."""
    for f in files:
        integrity.check_file(f)
    try:
        read = rw_class().read_images([str(f) for f in files])
    except AutosamError:
        raise
    except Exception as e:  # noqa: BLE001 - every reader failure becomes one line naming the file
        names = ", ".join(str(f) for f in files)
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise AutosamError(f"cannot read {what} {names}: {detail}") from None
    return read


def read_case(case_id: str, files: list[Path], rw_class: Optional[Type] = None) -> Case:
    """Read all channels of a case with nnU-Net's reader/writer (chosen from the file ending if not given)."""
    files = [Path(f) for f in files]
    rw_class = rw_class or reader_writer(_ending(files[0]), files[0])
    image, props = _read(rw_class, files, "image")
    return Case(case_id=case_id, image=image, properties=props, files=files)


def read_label(path: str | os.PathLike, rw_class: Optional[Type] = None, info: Optional[DatasetInfo] = None
               ) -> tuple[np.ndarray, dict]:
    """A label map ``(Z, Y, X)`` as int16 with its properties. Values are checked before the cast: non-integers are
    refused, and so are values that ``info``'s dataset.json does not list (given ``info``; else values beyond
    int16), one line naming the file and the values."""
    path = Path(path)
    rw_class = rw_class or reader_writer(_ending(path), path)
    seg, props = _read(rw_class, [path], "label")
    allowed = sorted(set(info.labels.values())) if info is not None else None
    return integrity.label_map(seg[0], path, allowed, info.path if info is not None else "dataset.json"), props


def check_same_geometry(a: dict, b: dict, what: str) -> None:
    """Raise if two nnU-Net property dicts describe different grids (shape is checked by the caller)."""
    if not np.allclose(a["spacing"], b["spacing"], rtol=1e-3):
        raise AutosamError(f"{what}: spacing {tuple(b['spacing'])} differs from the image's {tuple(a['spacing'])}")
    sa, sb = a.get("sitk_stuff"), b.get("sitk_stuff")
    if sa and sb:
        for key in ("origin", "direction"):
            if not np.allclose(sa[key], sb[key], atol=1e-3):
                raise AutosamError(f"{what}: {key} {tuple(sb[key])} differs from the image's {tuple(sa[key])}")


def _ending(path: Path) -> str:
    name = path.name
    for ending in (".nii.gz", ".seg.nrrd"):
        if name.endswith(ending):
            return ending
    return path.suffix


_TEMPORARY = re.compile(r"^\.tmp\d+_(.+)$")


def temporary_target(tmp: str | os.PathLike) -> Optional[str]:
    """The file name a temporary file of :func:`atomic_output` was to become (None for any other name)."""
    m = _TEMPORARY.match(Path(tmp).name)
    return m.group(1) if m else None


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary name beside ``path`` (same ending; its folder made if missing); rename it to ``path`` only
    if the block succeeds. A folder that cannot be made or written is one :class:`AutosamError` line."""
    path = Path(path)
    tmp = path.with_name(f".tmp{os.getpid()}_{path.name}")
    made = [p for p in [path.parent, *path.parent.parents] if not p.exists()]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise AutosamError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        yield tmp
        os.replace(tmp, path)
    except PermissionError as e:
        raise AutosamError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        tmp.unlink(missing_ok=True)
        if not path.exists():  # nothing written: the folders made for it go too
            for folder in made:
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the block, so processes take turns; where
    ``flock`` does not exist (not POSIX) the block runs unlocked."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        yield
        return
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_seg(seg: np.ndarray, path: str | os.PathLike, properties: dict, rw_class: Optional[Type] = None) -> None:
    """Write a ``(Z, Y, X)`` label map with the geometry in ``properties``, atomically, via nnU-Net's writer."""
    path = Path(path)
    rw_class = rw_class or reader_writer(_ending(path))
    with atomic_output(path) as tmp:
        rw_class().write_seg(np.asarray(seg), str(tmp), properties)


def write_json(obj, path: str | os.PathLike) -> None:
    """Write JSON atomically (indent 2, numpy scalars converted)."""
    def default(o):
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, (np.ndarray, tuple, Path)):
            return o.tolist() if isinstance(o, np.ndarray) else (list(o) if isinstance(o, tuple) else str(o))
        raise TypeError(f"cannot write {type(o).__name__} to JSON")

    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=default))


def load_torch(path: str | os.PathLike, what: str):
    """``torch.load`` (weights only, on the CPU) of a file autosam or the user wrote; a missing, empty or corrupt
    file is one :class:`AutosamError` line naming the file and ``what`` it should hold."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise AutosamError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same one-line message
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise AutosamError(f"cannot read {what} {path}: {type(e).__name__}: {first}") from None
