"""One job's settings, typed: :class:`Settings` (which SAM, how it runs, the refine config or "no SAM", and what
tuning chose), from the built-in defaults, a record (``autosam_sam.json``), the environment and the command line,
merged by one rule: defaults < record < environment < the options the user gave on the command line.

The environment: ``AUTOSAM_SAM`` (backend, default ``litemedsam``), ``AUTOSAM_CHECKPOINT``, ``AUTOSAM_ADAPTER``, one
``AUTOSAM_<FIELD>`` per field of :class:`autosam.refine.RefineConfig` (``AUTOSAM_PROMPT``, ``AUTOSAM_FUSION``,
``AUTOSAM_MARGIN``, ``AUTOSAM_MIN_SIZE``, ``AUTOSAM_AXIS``, ``AUTOSAM_FUSION_OPTIONS`` as JSON, ...) and, runtime only,
never recorded as a setting, ``AUTOSAM_DEVICE`` and ``AUTOSAM_BATCH_SIZE`` (:meth:`Runtime.from_env`). The nnU-Net
trainers resolve ``$nnUNet_preprocessed/<dataset>/autosam_sam.json`` then the environment (:meth:`Settings.resolve`);
the settings a validation ran with are written to ``fold_X/autosam_sam.json``, and prediction reads them from there
(:func:`load_recorded`).
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

from ..errors import AutosamError
from ..refine import RefineConfig
from .bounds import BOUNDS, check_option
from .record import INFO_KEYS, MODEL_KEYS, SETTINGS_FILE, read_json, recorded_files, write_record
from .spec import Runtime, SamSpec


@dataclass(frozen=True)
class Settings:
    """Which SAM (``sam``), how it runs (``runtime``), the refine config (``refine``; None: "no SAM", the coarse map
    as it is) and what tuning compared and chose (``tuning``, kept, never used as a setting).

    ``standby``: with ``refine`` None, the refine options recorded beside "no SAM"; options given later that switch
    SAM on start from them (:meth:`with_sam`)."""

    sam: SamSpec = SamSpec()
    runtime: Runtime = Runtime()
    refine: Optional[RefineConfig] = field(default_factory=RefineConfig)
    tuning: Optional[dict] = None
    standby: Optional[RefineConfig] = None

    # -- sources ---------------------------------------------------------------------------------------------
    @classmethod
    def default(cls) -> "Settings":
        """The settings used when nothing is configured: LiteMedSAM and RefineConfig's defaults."""
        return cls()

    @classmethod
    def from_args(cls, args: argparse.Namespace, check: bool = True) -> "Settings":
        """Every SAM, runtime and refine option of a verb's command line (those it has; the rest at their defaults);
        ``check`` refuses options given that the chosen strategies would ignore."""
        from .args import merged_args

        return merged_args(cls(), args, every=True, check=check)

    @classmethod
    def from_env(cls, env: Optional[Mapping] = None, device: str = "auto") -> "Settings":
        """The defaults updated by the ``AUTOSAM_*`` variables of ``env`` (default ``os.environ``), runtime included
        (``device``: unless ``AUTOSAM_DEVICE`` says otherwise); checked."""
        return cls(runtime=Runtime.from_env(device, env)).merged(environment(env)).checked()

    @classmethod
    def from_record(cls, record: Union[str, os.PathLike, Mapping]) -> "Settings":
        """The defaults updated by one record (a file, or its JSON object), checked; a file's relative
        ``adapter``/``checkpoint`` are relative to its folder."""
        return cls._read(record).checked()

    @classmethod
    def resolve(cls, plans_folder: Optional[str | os.PathLike] = None, env: Optional[Mapping] = None) -> "Settings":
        """Defaults, then ``<plans_folder>/autosam_sam.json`` (if any), then ``AUTOSAM_*`` variables; checked (the
        runtime is the trainer's: :meth:`Runtime.from_env` when it runs)."""
        settings = cls()
        if plans_folder is not None and (Path(plans_folder) / SETTINGS_FILE).is_file():
            path = Path(plans_folder) / SETTINGS_FILE
            settings = settings.merged(read_json(path), str(path))
        return settings.merged(environment(env)).checked()

    @classmethod
    def from_tuning(cls, result, sam: SamSpec = SamSpec(), runtime: Runtime = Runtime()) -> "Settings":
        """The settings of a :class:`autosam.tune.TuneResult`'s winner (with the tuning record kept beside)."""
        config = result.best.config if result.best.config is not None else RefineConfig()
        on = bool(result.best.use_sam)
        return cls(sam, runtime, config if on else None, result.to_dict(), None if on else config)

    @classmethod
    def _read(cls, record: Union[str, os.PathLike, Mapping]) -> "Settings":
        """The defaults updated by one record, unchecked (paths anchored to a file's folder)."""
        if isinstance(record, Mapping):
            return cls().merged(record, "record")
        path = Path(record)
        settings = cls().merged(read_json(path), str(path))
        anchored = {}
        for key in ("checkpoint", "adapter"):
            value = getattr(settings.sam, key)
            if value and not Path(os.path.expanduser(str(value))).is_absolute():
                anchored[key] = str(path.parent / value)
        return replace(settings, sam=replace(settings.sam, **anchored))

    # -- the one merge rule ----------------------------------------------------------------------------------
    def merged(self, given: Union[Mapping, argparse.Namespace], source: str = "environment") -> "Settings":
        """These settings updated by a later source: a record's or the environment's keys (a mapping as
        ``autosam_sam.json`` holds it, refine fields also at the top level; ``source`` names it in errors), or the
        options a verb's command line gave (a Namespace: ``args.given``, every option without it; recorded fusion
        options the resulting fusion does not take are dropped). Unchecked: see :meth:`checked`."""
        if isinstance(given, argparse.Namespace):
            from .args import merged_args

            return merged_args(self, given)
        data = self._as_dict()
        _merge(data, dict(given), source)
        config = RefineConfig.from_dict(data["refine"])
        sam = SamSpec(data["sam"], data["checkpoint"], data["adapter"])
        on = data["use_sam"]
        return Settings(sam, self.runtime, config if on else None, data.get("tuning"), None if on else config)

    def with_sam(self, on: bool = True) -> "Settings":
        """SAM switched on (with the refine options kept beside "no SAM") or off (keeping them)."""
        config = self.config()
        return replace(self, refine=config if on else None, standby=None if on else config)

    def checked(self) -> "Settings":
        """Names and files validated (paths made absolute); does not load any weights."""
        from ..sam import backends

        if self.sam.name not in backends():
            raise AutosamError(f"unknown SAM backend {self.sam.name!r} (AUTOSAM_SAM); choose one of "
                               + ", ".join(backends()))
        paths = {}
        for key in ("checkpoint", "adapter"):
            value = getattr(self.sam, key)
            if value:
                path = Path(os.path.expanduser(str(value))).resolve()
                if not path.exists():
                    raise AutosamError(f"SAM {key} not found: {path} (AUTOSAM_{key.upper()})")
                paths[key] = str(path)
        sam = replace(self.sam, **paths)
        if sam.adapter:  # a wrong adapter fails now, not when validation starts after training
            from ..adapt.config import read_config

            base = read_config(sam.adapter).base
            if base != sam.name:
                raise AutosamError(f"{sam.adapter}: adapter was trained on backend {base}, but the SAM backend "
                                   f"is {sam.name} (AUTOSAM_SAM); set AUTOSAM_SAM={base}")
        self.config().check()
        return replace(self, sam=sam)

    # -- use -------------------------------------------------------------------------------------------------
    @property
    def use_sam(self) -> bool:
        return self.refine is not None

    def config(self) -> RefineConfig:
        """The refine options, whether SAM runs or not ("no SAM" keeps its own, :attr:`standby`)."""
        return self.refine or self.standby or RefineConfig()

    def predictor(self, caching: bool = False):
        """The SAM predictor of these settings (:meth:`SamSpec.predictor`)."""
        return self.sam.predictor(self.runtime, caching=caching)

    def maker(self, caching: bool = False):
        """What builds this predictor later, once per process (:meth:`SamSpec.maker`)."""
        return self.sam.maker(self.runtime, caching=caching)

    def describe(self) -> str:
        """One line naming the backend and the refine options ("no SAM" when the settings say so)."""
        if self.refine is None:
            return "no SAM (the coarse map as it is)"
        refine = ", ".join(f"{k}={v}" for k, v in self.refine.to_dict().items())
        extra = "".join(f", {k}={getattr(self.sam, k)}" for k in ("checkpoint", "adapter") if getattr(self.sam, k))
        return f"SAM {self.sam.name}{extra}; {refine}"

    # -- records ---------------------------------------------------------------------------------------------
    def to_record(self, runtime: bool = False) -> dict:
        """The ``autosam_sam.json`` shape: ``sam``, ``checkpoint``, ``adapter``, ``use_sam``, ``refine``, ``tuning``
        (when tuned) and ``runtime`` (with ``runtime``: this runtime, for information; else empty)."""
        data = self._core()
        if self.tuning:
            data["tuning"] = self.tuning
        data["runtime"] = self.runtime.to_record() if runtime else {}
        return data

    def write(self, folder: str | os.PathLike, by: str = "", name: str = SETTINGS_FILE, runtime: bool = False,
              extra: Optional[dict] = None) -> Path:
        """Write :meth:`to_record` (plus ``extra``, e.g. fit's section, for information) as ``folder/name``."""
        return write_record({**self.to_record(runtime), **(extra or {})}, folder, by, name)

    def run_record(self) -> dict:
        """The SAM keys of a verb's run record (``autosam_run.json``): :meth:`to_record`'s shape with this runtime
        and without the tuning table (the run record names the record it came from)."""
        return {**self._core(), "runtime": self.runtime.to_record()}

    def _core(self) -> dict:
        """The keys every record shape shares: SAM, ``use_sam`` and the refine options."""
        return {**self.sam.to_record(), "use_sam": self.use_sam, "refine": self.config().to_dict()}

    def _as_dict(self) -> dict:
        data = self._core()
        return {**data, "tuning": self.tuning} if self.tuning is not None else data


def load_recorded(model_folder: str | os.PathLike, folds: Sequence) -> Optional[Settings]:
    """The settings prediction with ``model_folder`` uses: ``autosam fit``'s record, else the ones the trainer's
    validation recorded in the folds (:func:`~autosam.settings.record.recorded_files`); None when there is none.

    Raises if two folds recorded different settings (one prediction must use one set of settings).
    """
    found = {str(path): Settings._read(path) for path in recorded_files(model_folder, folds)}
    if not found:
        return None
    first_path, first = next(iter(found.items()))
    for path, other in found.items():
        if (other.sam, other.config(), other.use_sam) != (first.sam, first.config(), first.use_sam):
            raise AutosamError(f"{path} and {first_path} record different SAM settings; predict with folds "
                               "trained with the same settings")
    return first.checked()


# -- the environment and records, key by key ---------------------------------------------------------------------
def _refine_fields() -> dict:
    return RefineConfig().to_dict()


def environment(env: Optional[Mapping] = None) -> dict:
    """The settings given as ``AUTOSAM_*`` environment variables (only those that are set), by record key."""
    env = os.environ if env is None else env
    found = {}
    for key in MODEL_KEYS:
        value = env.get(f"AUTOSAM_{key.upper()}", "").strip()
        if value:
            found[key] = value
    for key, default in _refine_fields().items():
        name = f"AUTOSAM_{key.upper()}"
        if env.get(name, "").strip():
            found[key] = parse_env(name, env[name].strip(), default)
    return found


def parse_env(name: str, raw: str, default):
    """An environment value parsed after the type of the field's default (one line naming the variable when it
    cannot be)."""
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
    """``update`` (a record's or the environment's keys) into ``settings`` (:meth:`Settings._as_dict`), checked
    key by key."""
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
    source = f"environment variable AUTOSAM_{key.upper()}" if source == "environment" else source
    if key == "fusion_options" and isinstance(value, dict):
        for name, v in value.items():
            if name in BOUNDS:
                check_option(name, v, source)
    elif key in BOUNDS and value is not None:
        check_option(key, value, source)
    return value
