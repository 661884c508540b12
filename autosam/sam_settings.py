"""SAM settings of the autosam nnU-Net trainers: where they come from and where they are recorded.

Resolution (later wins): built-in defaults, ``autosam_sam.json`` next to the plans
(``$nnUNet_preprocessed/<dataset>/autosam_sam.json``), then environment variables:

* ``AUTOSAM_SAM`` (backend, default ``litemedsam``), ``AUTOSAM_CHECKPOINT``, ``AUTOSAM_ADAPTER``;
* one ``AUTOSAM_<FIELD>`` per field of :class:`autosam.refine.RefineConfig` (``AUTOSAM_PROMPT``, ``AUTOSAM_FUSION``,
  ``AUTOSAM_MARGIN``, ``AUTOSAM_MIN_SIZE``, ``AUTOSAM_AXIS``, ``AUTOSAM_FUSION_OPTIONS`` as JSON, ...);
* runtime only, never recorded as a setting: ``AUTOSAM_DEVICE`` (default: the trainer's / predictor's device) and
  ``AUTOSAM_BATCH_SIZE`` (slices per SAM forward pass, default 16).

The settings a validation ran with are written to ``fold_X/autosam_sam.json``; prediction reads them from there.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Optional, Sequence

SETTINGS_FILE = "autosam_sam.json"
#: Keys of a settings record besides the refine config.
MODEL_KEYS = ("sam", "checkpoint", "adapter")
#: Recorded for information only, and dropped on reading.
INFO_KEYS = ("runtime", "recorded_by", "source", "fit")


def _refine_fields() -> dict:
    from autosam.refine import RefineConfig

    defaults = RefineConfig()
    return {f.name: getattr(defaults, f.name) for f in dataclasses.fields(RefineConfig)}


def default_settings() -> dict:
    """The settings used when nothing is configured: LiteMedSAM and RefineConfig's defaults."""
    return {"sam": "litemedsam", "checkpoint": None, "adapter": None, "use_sam": True, "refine": _refine_fields()}


def _parse(name: str, raw: str, default):
    """An environment value parsed after the type of the field's default."""
    from autosam.errors import AutosamError

    try:
        if isinstance(default, bool):
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError("expected true or false")
            return raw.lower() in ("1", "true", "yes")
        if isinstance(default, (dict, list)):
            value = json.loads(raw)
            if not isinstance(value, type(default)):
                raise ValueError(f"expected a JSON {type(default).__name__}")
            return value
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, int) or (default is None and name in ("AUTOSAM_AXIS",)):
            return None if raw.lower() in ("", "none", "auto") else int(raw)
        if default is None:
            return None if raw.lower() in ("", "none") else raw
        return raw
    except (ValueError, json.JSONDecodeError) as e:
        raise AutosamError(f"environment variable {name}={raw!r}: {e}") from None


def _merge(settings: dict, update: dict, source: str) -> None:
    from autosam.errors import AutosamError

    refine = settings["refine"]
    for key, value in update.items():
        if key in MODEL_KEYS:
            settings[key] = value
        elif key == "use_sam":
            if not isinstance(value, bool):
                raise AutosamError(f"{source}: use_sam must be true or false, got {value!r}")
            settings[key] = value
        elif key == "tuning":  # what autosam.tune compared and chose: kept, never used as a setting
            settings[key] = value
        elif key == "refine" and isinstance(value, dict):
            _merge(settings, value, source)
        elif key in refine:
            refine[key] = _checked(key, value, source)
        elif key not in INFO_KEYS:
            raise AutosamError(f"{source}: unknown SAM setting {key!r}; known: "
                               + ", ".join(list(MODEL_KEYS) + list(refine)))


def _checked(key: str, value, source: str):
    """A recorded or environment value of a refine field, checked through the one table of option bounds
    (:data:`autosam.settings.BOUNDS`; ``fusion_options`` entry by entry)."""
    from autosam.settings import BOUNDS, check_option

    source = f"environment variable AUTOSAM_{key.upper()}" if source == "environment" else source
    if key == "fusion_options" and isinstance(value, dict):
        for name, v in value.items():
            if name in BOUNDS:
                check_option(name, v, source)
    elif key in BOUNDS and value is not None:
        check_option(key, value, source)
    return value


def from_environment(env: Optional[dict] = None) -> dict:
    """The settings given as ``AUTOSAM_*`` environment variables (only those that are set)."""
    env = os.environ if env is None else env
    found = {}
    for key in MODEL_KEYS:
        value = env.get(f"AUTOSAM_{key.upper()}", "").strip()
        if value:
            found[key] = value
    for key, default in _refine_fields().items():
        name = f"AUTOSAM_{key.upper()}"
        if env.get(name, "").strip():
            found[key] = _parse(name, env[name].strip(), default)
    return found


def read_json(path: Path) -> dict:
    """A settings JSON object (``AutosamError`` naming the file if it is not one)."""
    from autosam.errors import AutosamError

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AutosamError(f"{path}: cannot read SAM settings: {e}") from None
    if not isinstance(data, dict):
        raise AutosamError(f"{path}: SAM settings must be a JSON object")
    return data


def resolve(plans_folder: Optional[str | os.PathLike] = None, env: Optional[dict] = None) -> dict:
    """Defaults, then ``<plans_folder>/autosam_sam.json`` (if any), then ``AUTOSAM_*`` variables; checked."""
    settings = default_settings()
    if plans_folder is not None and (Path(plans_folder) / SETTINGS_FILE).is_file():
        path = Path(plans_folder) / SETTINGS_FILE
        _merge(settings, read_json(path), str(path))
    _merge(settings, from_environment(env), "environment")
    return check(settings)


def check(settings: dict) -> dict:
    """Validate names and files (paths made absolute); returns ``settings``. Does not load any weights."""
    from autosam.errors import AutosamError
    from autosam.sam import backends

    if settings["sam"] not in backends():
        raise AutosamError(f"unknown SAM backend {settings['sam']!r} (AUTOSAM_SAM); choose one of "
                           + ", ".join(backends()))
    for key in ("checkpoint", "adapter"):
        if settings.get(key):
            path = Path(os.path.expanduser(str(settings[key]))).resolve()
            if not path.exists():
                raise AutosamError(f"SAM {key} not found: {path} (AUTOSAM_{key.upper()})")
            settings[key] = str(path)
    if settings.get("adapter"):  # a wrong adapter fails now, not when validation starts after training
        from autosam.adapt.config import read_config

        base = read_config(settings["adapter"]).base
        if base != settings["sam"]:
            raise AutosamError(f"{settings['adapter']}: adapter was trained on backend {base}, but the SAM backend "
                               f"is {settings['sam']} (AUTOSAM_SAM); set AUTOSAM_SAM={base}")
    refine_config(settings).check()
    return settings


def refine_config(settings: dict):
    """The :class:`autosam.refine.RefineConfig` of a settings record."""
    from autosam.refine import RefineConfig

    return RefineConfig(**settings["refine"])


def runtime(default_device: str, env: Optional[dict] = None) -> dict:
    """Device and batch size for SAM: ``AUTOSAM_DEVICE`` / ``AUTOSAM_BATCH_SIZE`` or the given defaults (the batch
    size parsed and checked through :data:`autosam.settings.BOUNDS`, as ``--batch-size`` is)."""
    from autosam.errors import AutosamError
    from autosam.settings import BOUNDS

    env = os.environ if env is None else env
    batch = env.get("AUTOSAM_BATCH_SIZE", "").strip() or "16"
    try:
        size = BOUNDS["batch_size"].parse(batch)
    except ValueError as e:
        raise AutosamError(f"environment variable AUTOSAM_BATCH_SIZE={batch!r}: {e}") from None
    return {"device": env.get("AUTOSAM_DEVICE", "").strip() or default_device, "batch_size": size}


def build_predictor(settings: dict, run: dict):
    """A :class:`autosam.sam.SamPredictor` for the settings and runtime options."""
    from autosam.settings import Runtime, SamSpec

    spec = SamSpec(settings["sam"], settings.get("checkpoint"), settings.get("adapter"))
    runtime = Runtime(device=run["device"], engine=run.get("engine", "auto"), batch_size=run["batch_size"])
    return spec.predictor(runtime, caching=bool(run.get("cache")))  # cache: slices asked again are not re-encoded


def record(settings: dict, folder: str | os.PathLike, run: Optional[dict] = None, by: str = "",
           name: str = SETTINGS_FILE, extra: Optional[dict] = None) -> Path:
    """Write ``autosam_sam.json`` (or ``name``: settings, plus the runtime options and ``extra``, e.g. fit's
    section, for information) into ``folder``."""
    from autosam import __version__
    from autosam.io import write_json

    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {key: settings.get(key) for key in MODEL_KEYS}
    data["use_sam"] = bool(settings.get("use_sam", True))
    data["refine"] = refine_config(settings).to_dict()  # as autosam_run.json records it
    if settings.get("tuning"):
        data["tuning"] = settings["tuning"]
    data["runtime"] = run or {}
    data.update(extra or {})
    data["recorded_by"] = f"{by} (autosam {__version__})".strip()
    write_json(data, path)
    return path


def recorded_files(model_folder: str | os.PathLike, folds: Sequence) -> list[Path]:
    """The settings files prediction reads: ``MODEL/autosam_sam.json`` (``autosam fit``'s choice) when there,
    else the folds' ``fold_X/autosam_sam.json`` that exist, in the order of ``folds``."""
    fitted = Path(model_folder) / SETTINGS_FILE
    if fitted.is_file():
        return [fitted]
    paths = (Path(model_folder) / f"fold_{fold}" / SETTINGS_FILE for fold in folds)
    return [path for path in paths if path.is_file()]


def _read_record(path: Path) -> dict:
    """Defaults updated by one record; its relative ``adapter``/``checkpoint`` are relative to its folder."""
    settings = default_settings()
    _merge(settings, read_json(path), str(path))
    for key in ("checkpoint", "adapter"):
        value = settings.get(key)
        if value and not Path(os.path.expanduser(str(value))).is_absolute():
            settings[key] = str(path.parent / value)
    return settings


def load_recorded(model_folder: str | os.PathLike, folds: Sequence) -> Optional[dict]:
    """The settings prediction with ``model_folder`` uses: ``autosam fit``'s record, else the ones the trainer's
    validation recorded in the folds (:func:`recorded_files`); None when there is none.

    Raises if two folds recorded different settings (one prediction must use one set of settings).
    """
    from autosam.errors import AutosamError

    found = {str(path): _read_record(path) for path in recorded_files(model_folder, folds)}
    if not found:
        return None
    first_path, first = next(iter(found.items()))
    for path, other in found.items():
        keys = MODEL_KEYS + ("refine", "use_sam")
        if {k: other.get(k) for k in keys} != {k: first.get(k) for k in keys}:
            raise AutosamError(f"{path} and {first_path} record different SAM settings; predict with folds "
                               "trained with the same settings")
    return check(first)


def load_file(path: str | os.PathLike) -> dict:
    """Defaults updated by one recorded settings file (``autosam_sam.json`` of a prompter, adapter, fold or
    model), checked."""
    return check(_read_record(Path(path)))


def from_tuning(result, sam: str = "litemedsam", checkpoint: Optional[str] = None,
                adapter: Optional[str] = None) -> dict:
    """The settings of a :class:`autosam.tune.TuneResult`'s winner (with the tuning record kept beside)."""
    settings = default_settings()
    settings.update(sam=sam, checkpoint=checkpoint, adapter=adapter, use_sam=result.best.use_sam,
                    tuning=result.to_dict())
    if result.best.config is not None:
        settings["refine"] = result.best.config.to_dict()
    return settings


def describe(settings: dict) -> str:
    """One line naming the backend and the refine options ("no SAM" when the settings say so)."""
    if not settings.get("use_sam", True):
        return "no SAM (the coarse map as it is)"
    refine = ", ".join(f"{k}={v}" for k, v in settings["refine"].items())
    extra = "".join(f", {k}={settings[k]}" for k in ("checkpoint", "adapter") if settings.get(k))
    return f"SAM {settings['sam']}{extra}; {refine}"
