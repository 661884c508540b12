"""The command line's layer of :class:`~autosam.settings.model.Settings`: a verb's SAM, runtime, prompt and fusion
options (added by :mod:`autosam.commands.common`) over the settings below them, the options the user gave winning
(``args.given``, set by :func:`autosam.cli.main`; without it every option counts as given)."""
from __future__ import annotations

import argparse
from dataclasses import fields as dataclass_fields, replace
from typing import TYPE_CHECKING

from ..errors import AutosamError
from ..fusion import fusion_options, option_names
from ..refine import RefineConfig

if TYPE_CHECKING:
    from .model import Settings

#: options of the prompts-and-fusion group -> the :class:`RefineConfig` field each sets
REFINE_FIELDS = {"prompt": "prompt", "fusion": "fusion", "margin": "margin", "min_size": "min_size", "axis": "axis",
                 "positive_points": "positive_points", "negative_points": "negative_points",
                 "no_fill_gaps": "fill_gaps", "max_objects": "max_objects", "box_hypotheses": "box_hypotheses",
                 "rebox": "rebox", "planes": "planes"}
#: fusion options -> the strategy that takes them (:data:`autosam.fusion.fusion_options`), for messages
FUSION_OPTIONS = {f.name: strategy for strategy, kind in fusion_options.items() for f in dataclass_fields(kind)}
SAM_MODEL_OPTIONS = ("sam", "checkpoint", "adapter")
RUNTIME_OPTIONS = ("device", "engine", "batch_size", "threads")


def given_options(args: argparse.Namespace) -> set:
    """The options the user gave (``args.given``), or every option of ``args`` when it does not say."""
    given = getattr(args, "given", None)
    return set(vars(args)) if given is None else set(given)


def check_applicable(args: argparse.Namespace, prompt: str, fusion: str) -> None:
    """Refuse options given on the command line that the chosen prompt strategy or fusion would ignore."""
    given = given_options(args)
    for option, strategy in FUSION_OPTIONS.items():
        if option in given and getattr(args, option) is not None and option not in option_names(fusion):
            raise AutosamError(f"--{option.replace('_', '-')} applies to --fusion {strategy} only (fusion is "
                               f"{fusion})")
    if "axis" in given and getattr(args, "axis", None) is not None and getattr(args, "planes", False):
        raise AutosamError("--axis does not apply with --planes (every axis is refined); give one of them")
    for option in ("positive_points", "negative_points"):
        if option in given and "points" not in prompt:
            raise AutosamError(f"--{option.replace('_', '-')} applies to prompt strategies with points "
                               f"(box+points, box+points+mask, points); the prompt strategy is {prompt}")


def refine_fields(args: argparse.Namespace) -> dict:
    """Every refine field as the command line sets it (options the verb lacks at RefineConfig's defaults;
    ``--margin`` carries its unit)."""
    fields = RefineConfig().to_dict()
    for option, name in REFINE_FIELDS.items():
        if hasattr(args, option):
            fields[name] = getattr(args, option)
    if hasattr(args, "no_fill_gaps"):
        fields["fill_gaps"] = not args.no_fill_gaps
    if hasattr(args, "margin"):
        fields["margin"], fields["margin_unit"] = args.margin.value, args.margin.unit
    return fields


def merged_args(settings: "Settings", args: argparse.Namespace, every: bool = False, check: bool = True) -> "Settings":
    """``settings`` updated by the options of ``args`` the user gave (``every``: by all of them); ``check``
    refuses given options that the resulting prompt strategy or fusion would ignore."""
    every = every or getattr(args, "given", None) is None  # then recorded fusion options do not carry over
    given = set(vars(args)) if every else given_options(args)
    cli = refine_fields(args)
    fields = settings.config().to_dict()
    for option, name in REFINE_FIELDS.items():
        if option in given:
            fields[name] = cli[name]
    if "margin" in given:  # a margin carries its unit
        fields["margin_unit"] = cli["margin_unit"]
    if check:
        check_applicable(args, fields["prompt"], fields["fusion"])
    applicable = option_names(fields["fusion"])
    options = {} if every else {k: v for k, v in (fields.get("fusion_options") or {}).items() if k in applicable}
    options.update({k: getattr(args, k) for k in FUSION_OPTIONS if k in given and getattr(args, k) is not None})
    fields["fusion_options"] = options
    config = RefineConfig.from_dict(fields)
    sam = replace(settings.sam, **{"name" if k == "sam" else k: getattr(args, k) for k in SAM_MODEL_OPTIONS
                                   if k in given and hasattr(args, k)})
    runtime = replace(settings.runtime, **{k: getattr(args, k) for k in RUNTIME_OPTIONS
                                           if k in given and hasattr(args, k)})
    on = settings.use_sam
    return replace(settings, sam=sam, runtime=runtime, refine=config if on else None, standby=None if on else config)
