"""``autosam demo``: the whole loop on the sample shipped inside the package, with Dice per label.

Per sample dataset: SAM with boxes from the labels (the ceiling of automatic prompting), then the fully automatic
path (the shipped prompter of the same name -> SAM), printed side by side with the prompter's own map.
"""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from .. import evaluation, io
from ..sample import SAMPLE_NAMES, sample_dataset
from ..pipelines.oracle import oracle_folder
from .common import add_sam_arguments, predictor_maker, sam_args_record

HELP = "run SAM on the bundled sample (label boxes, then fully automatic) and print Dice per label"


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help=HELP, description=HELP)
    p.add_argument("-o", "--output", default="autosam_demo", help="output folder (default ./autosam_demo)")
    p.add_argument("--sample", nargs="+", default=list(SAMPLE_NAMES), choices=SAMPLE_NAMES,
                   help="which sample datasets (default: all)")
    p.add_argument("--max-cases", type=int, default=2, help="cases per sample dataset (default 2; 0 = all)")
    p.add_argument("--no-automatic", action="store_true",
                   help="skip the fully automatic run (shipped prompter -> SAM)")
    p.add_argument("--overwrite", action="store_true", help="redo cases whose output already exists")
    add_sam_arguments(p)
    p.set_defaults(run=run)


def _link_cases(cases: dict, chosen: list[str], images: Path) -> None:
    images.mkdir(parents=True, exist_ok=True)
    for case in chosen:
        for f in cases[case]:
            link = images / f.name
            if not link.exists():
                link.symlink_to(f.resolve())


def automatic_table(info: io.DatasetInfo, columns: dict[str, dict]) -> str:
    """Dice per label (rows) for each run (columns: name -> nnU-Net summary)."""
    names = {v: k for k, v in info.labels.items()}
    widths = [max(24, len(c) + 2) for c in columns]
    head = f"{'label':<14}" + "".join(f"{c:>{w}}" for c, w in zip(columns, widths))
    rows = [head]
    for value in info.foreground:
        dice = (evaluation.label_mean(s, value)["Dice"] for s in columns.values())
        rows.append(f"{names[value]:<14}" + "".join(f"{d:>{w}.4f}" for d, w in zip(dice, widths)))
    rows.append(f"{'mean':<14}" + "".join(f"{s['foreground_mean']['Dice']:>{w}.4f}"
                                          for s, w in zip(columns.values(), widths)))
    return "\n".join(rows)


def run(args: argparse.Namespace) -> int:
    from ..prompter import Prompter, shipped_prompters
    from ..prompter.tuning import recorded_default
    from ..refine import RefineConfig
    from ..pipelines.segment import segment_folder

    # one predictor for both runs: slices encoded for the label boxes are reused by the automatic run
    predictor = predictor_maker(args, caching=True)()
    for name in args.sample:
        root = sample_dataset(name)
        info = io.load_dataset_json(root)
        cases = io.list_cases(root / "imagesTr", info.file_ending, info.num_channels)
        chosen = sorted(cases)[: args.max_cases or None]
        images = Path(args.output) / name / "imagesTs"  # the chosen subset, linked, so the run stays resumable
        _link_cases(cases, chosen, images)
        out = Path(args.output) / name / "prediction"
        record = {"verb": "demo", "sample": name, "cases": chosen, **sam_args_record(args)}
        oracle_folder(images, root / "labelsTr", out, info, lambda: predictor, args.axis, 0.0, args.overwrite, record)
        summary = evaluation.evaluate_folder(root / "labelsTr", out, info, out / "summary.json")
        print(f"\n{name}: LiteMedSAM with label boxes ({len(chosen)} case(s)) -> {out}"
              if args.sam == "litemedsam" else f"\n{name}: {args.sam} with label boxes -> {out}")
        print(evaluation.dice_table(summary, info))
        if args.no_automatic or name not in shipped_prompters():
            continue
        prompter = Prompter.load(name)
        settings, source = recorded_default(prompter)
        if settings is None:  # no record: the built-in default
            default = RefineConfig(axis=args.axis)
        elif settings.use_sam:
            default = replace(settings.refine, axis=args.axis)
        else:
            default = None
        chosen = "no SAM" if default is None else f"SAM {default.prompt}/{default.fusion}"
        auto, coarse = Path(args.output) / name / "automatic", Path(args.output) / name / "prompter"
        forced = Path(args.output) / name / "prompter_sam_builtin"
        segment_folder(images, auto, prompter, info, lambda: predictor, default, overwrite=args.overwrite,
                       run_args={**record, "configuration_source": source}, coarse_dir=coarse)
        segment_folder(images, forced, prompter, info, lambda: predictor, RefineConfig(axis=args.axis),
                       overwrite=args.overwrite, run_args=record)
        columns = {
            "prompter alone": evaluation.evaluate_folder(root / "labelsTr", coarse, info, coarse / "summary.json"),
            f"default: {chosen}": evaluation.evaluate_folder(root / "labelsTr", auto, info, auto / "summary.json"),
            "SAM built-in (forced)": evaluation.evaluate_folder(root / "labelsTr", forced, info,
                                                                forced / "summary.json"),
            "SAM + label boxes": summary,
        }
        print(f"\n{name}: fully automatic (shipped prompter {name!r}, no labels used) -> {auto}")
        print(f"default configuration: {chosen}; from {source}")
        print(automatic_table(info, columns))
        builtin = RefineConfig()
        print("(default: what 'autosam segment --prompter NAME' does; SAM built-in (forced): --use-sam with the "
              f"built-in {builtin.prompt}/{builtin.fusion}; SAM + label boxes: the ceiling of SAM with box prompts)")
    return 0
