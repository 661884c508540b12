"""``autosam finetune``: adapt SAM to an nnU-Net dataset (decoder fine-tuning, LoRA or DeSAM-style decoder)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..adapt.data import AUTO_PROMPT, AUTO_PROMPT_KINDS
from ..errors import AutosamError
from ..sam import backends
from . import options
from .options import Margin
from ..progress import notice

HELP = "adapt SAM to an nnU-Net dataset (decoder, LoRA or DeSAM-style); writes an adapter folder for --adapter"


def add_parser(sub) -> None:
    p = sub.add_parser("finetune", help=HELP, description=HELP)
    options.add_dataset_arguments(p, required=True)
    p.add_argument("-o", "--output", required=True, help="adapter folder to write (use it later with --adapter)")
    p.add_argument("--sam", default="litemedsam", choices=backends(), help="base backend (default litemedsam)")
    p.add_argument("--checkpoint", default=None, help="base weights file; required for the ViT backends")
    p.add_argument("--method", default="decoder", choices=("decoder", "lora", "desam"),
                   help="decoder: train the mask decoder (MedSAM-style); lora: low-rank adapters on the encoder's "
                        "attention plus the decoder; desam: prompt-invariant mask module (default decoder)")
    p.add_argument("--epochs", type=int, default=5, help="epochs in total (default 5; with --resume: up to this many)")
    p.add_argument("--prompts", default="box", help="training prompt kinds: box, points or box,points (default box)")
    p.add_argument("--rank", type=int, default=4, help="LoRA rank (default 4)")
    p.add_argument("--lora-alpha", type=float, default=None, help="LoRA scale numerator (scale = alpha/rank; default rank)")
    p.add_argument("--train-encoder", action="store_true", help="method decoder: train the image encoder too")
    p.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate (default 1e-4)")
    p.add_argument("--decoder-lr", type=float, default=None,
                   help="learning rate of SAM's own trained weights (mask decoder, heads; the encoder with "
                        "--train-encoder) when the new modules (LoRA, DeSAM mask module) take --lr (default: --lr)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per step (default 8)")
    p.add_argument("--loss", default="dice_bce", choices=("dice_bce", "dice_focal"), help="mask loss (default dice_bce)")
    add_automatic_prompt_arguments(p.add_argument_group("automatic prompts"))
    g = p.add_argument_group("prompt noise (relative to the box side)")
    g.add_argument("--jitter", type=float, default=0.1, help="std of each box edge's shift (default 0.1)")
    options.add_margin_argument(g, default=Margin(0.1, "box"), allowed=("box",),
                                help_extra="; each box edge is widened by a margin drawn in [0, MARGIN]")
    g.add_argument("--max-points", type=int, default=3, help="positive points per prompt: 1 to N (default 3)")
    add_data_arguments(p.add_argument_group("data"))
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cuda, cpu ...")
    p.add_argument("--resume", action="store_true", help="continue the training in ADAPTER_DIR")
    p.add_argument("--overwrite", action="store_true", help="replace an adapter already in ADAPTER_DIR")
    p.set_defaults(run=run)


def add_automatic_prompt_arguments(a: argparse._ArgumentGroup) -> None:
    """``--prompts-from`` and the options of training on an automatic source's prompts."""
    a.add_argument("--prompts-from", default=None, metavar="SOURCE",
                   help="also train on the prompts an automatic source really gives on the training cases: "
                        "prompter:DIR (a prompter folder or shipped name; cross-fitted when it trained on them) "
                        "or coarse:FOLDER (coarse predictions <case><file_ending> not trained on them)")
    a.add_argument("--auto-prompt", default=AUTO_PROMPT, choices=AUTO_PROMPT_KINDS,
                   help="what SAM is given on the automatic prompts: box+mask (the box and the source's "
                        "probabilities as mask prompt, as refine's built-in default gives them; the default) or box")
    a.add_argument("--folds", type=int, default=3,
                   help="fold prompters trained when the prompter trained on training cases (default 3)")
    a.add_argument("--fold-epochs", type=int, default=None,
                   help="epochs of each fold prompter (default: the prompter's recorded ones)")
    a.add_argument("--no-tune", action="store_true",
                   help="with prompter:DIR, do not leave the prompter's validation cases out of training to tune "
                        "the adapter's SAM default on them afterwards (ADAPTER_DIR/autosam_sam.json)")
    a.add_argument("--tune-cases", type=int, default=10,
                   help="the prompter's validation cases to tune on (default 10; 0 = all of them)")


def add_data_arguments(d: argparse._ArgumentGroup) -> None:
    """Which cases and slices the adapter trains on, and the embedding cache."""
    d.add_argument("--val-fraction", type=float, default=0.2,
                   help="share of subjects held out for validation (default 0.2)")
    options.add_subject_argument(d)
    options.add_exclude_argument(d, what="cases never to train on")
    d.add_argument("--max-cases", type=int, default=0, help="use at most N cases, seeded draw (default 0 = all)")
    d.add_argument("--max-slices", type=int, default=0, help="labelled slices per case, evenly spread (0 = all)")
    d.add_argument("--iterations", type=int, default=0, help="steps per epoch (default 0 = one pass over the samples)")
    d.add_argument("--seed", type=int, default=0, help="seed of split, shuffling and prompt noise (default 0)")
    d.add_argument("--axis", type=int, default=None, choices=(0, 1, 2), help="slice axis (default: coarsest spacing)")
    d.add_argument("--planes", action="store_true",
                   help="train on the slices of all three axes of a volume, as refine --planes refines them "
                        "(not with --axis; 2D images have one plane)")
    d.add_argument("--cache-dir", default=None,
                   help="embedding cache for frozen-encoder methods (default ADAPTER_DIR/embedding_cache)")
    d.add_argument("--no-cache", action="store_true", help="re-embed slices every step instead of caching")


def run(args: argparse.Namespace) -> int:
    from .. import io
    from ..adapt import crossfit
    from ..adapt.config import PromptNoise
    from ..adapt.train import finetune

    if args.resume and args.overwrite:
        raise AutosamError("--resume and --overwrite exclude each other")
    kinds = tuple(k.strip() for k in args.prompts.split(",") if k.strip())
    margin = options.resolve_margin(args, allowed=("box",))
    noise = PromptNoise(types=kinds, jitter=args.jitter, margin=margin.value, max_points=args.max_points)
    dataset = options.dataset_folder(args)
    if args.prompts_from and not args.resume:
        if args.folds < 2 or (args.fold_epochs is not None and args.fold_epochs < 1):
            raise AutosamError("--folds must be at least 2 and --fold-epochs at least 1")
        crossfit.check_source(crossfit.parse_source(args.prompts_from), io.load_dataset_json(dataset))
    held_out = tuning_cases(args)
    created = not Path(args.output).exists()
    try:
        return _train(args, dataset, noise, finetune, held_out)
    except AutosamError:
        if created and Path(args.output).is_dir() and not any(Path(args.output).iterdir()):
            Path(args.output).rmdir()  # refused before anything was written: leave no empty folder behind
        raise


def tuning_cases(args: argparse.Namespace) -> list[str]:
    """With ``--prompts-from prompter:DIR`` (and neither ``--no-tune`` nor ``--resume``): the prompter's validation
    cases, which the adapter then never trains on, so its SAM default is tuned on cases neither model saw."""
    from ..adapt.crossfit import parse_source
    from ..prompter import Prompter
    from ..prompter.tuning import validation_cases

    if not args.prompts_from or args.no_tune or args.resume:
        return []
    source = parse_source(args.prompts_from)
    if source.kind != "prompter":
        return []
    try:
        cases = validation_cases(Prompter.load(source.path))
    except AutosamError:  # a prompter without a recorded split: nothing held out to tune on
        return []
    return cases[: args.tune_cases or None]


def _train(args: argparse.Namespace, dataset: Path, noise, finetune, held_out: list[str]) -> int:
    """Run :func:`autosam.adapt.train.finetune` with the options of ``args`` in the locked output folder, then tune
    the adapter's SAM default on ``held_out`` (left out of its training)."""
    if held_out:
        notice(f"autosam finetune: the prompter's {len(held_out)} validation case(s) are left out of training, to "
               f"tune the adapter's SAM default on them afterwards (--no-tune trains on them)")
    with options.exclusive_output(args.output, {"dataset": dataset}):
        config = finetune(
            dataset, args.output, base=args.sam, checkpoint=args.checkpoint, method=args.method,
            epochs=args.epochs, rank=args.rank, lora_alpha=args.lora_alpha, train_encoder=args.train_encoder,
            prompt_noise=noise, lr=args.lr, decoder_lr=args.decoder_lr, batch_size=args.batch_size, loss=args.loss,
            val_fraction=args.val_fraction, seed=args.seed, subject_pattern=options.subject_pattern(args),
            exclude=options.excluded_cases(args) + held_out, max_cases=args.max_cases,
            max_slices_per_case=args.max_slices, iterations_per_epoch=args.iterations, cache_dir=args.cache_dir,
            use_cache=not args.no_cache, axis=args.axis, planes=args.planes,
            device=args.device, resume=args.resume, overwrite=args.overwrite, prompts_from=args.prompts_from,
            folds=args.folds, fold_epochs=args.fold_epochs, auto_prompt=args.auto_prompt,
        ).config
        if held_out:
            tune_adapter(args, dataset, held_out)
    if args.resume:
        report_resumed(args, config)
    source = getattr(config, "prompts_from", None)
    if source:
        print(f"automatic prompts from {source['source']} ({source.get('use')}; "
              f"recorded in {Path(args.output) / 'prompts_from.json'})")
    print(f"wrote {args.output} ({config.method} adapter on {config.base}, epoch {config.epoch}/{config.epochs}); "
          f"use it with --sam {config.base} --adapter {args.output}")
    return 0


def tune_adapter(args: argparse.Namespace, dataset: Path, cases: list[str]) -> None:
    """The adapter's SAM default for its prompter, chosen on ``cases`` (:mod:`autosam.prompter.tuning`)."""
    from ..adapt.crossfit import parse_source
    from ..prompter import Prompter
    from ..prompter.tuning import tune_prompter
    from ..sam import resolve_device
    from ..settings import SETTINGS_FILE, Runtime, SamSpec

    device = str(resolve_device(args.device))
    prompter = Prompter.load(parse_source(args.prompts_from).path, device=device)
    make = SamSpec(args.sam, args.checkpoint, args.output).maker(Runtime(device=device), caching=True)
    tune_prompter(prompter, dataset, make, cases=cases, max_cases=0,
                  sam=SamSpec(args.sam, args.checkpoint, str(Path(args.output).resolve())),
                  output=Path(args.output) / SETTINGS_FILE)


#: options a resumed training may change; every other one comes from the stored configuration
RESUMABLE = {"resume", "output", "dataset", "epochs", "device", "cache_dir", "no_cache", "iterations"}


def report_resumed(args: argparse.Namespace, config) -> None:
    """Say which stored options a ``--resume`` continued with, and which given ones it therefore ignored."""
    given = sorted((getattr(args, "given", None) or set()) - RESUMABLE)
    stored = ", ".join(f"{k}={getattr(config, k)}" for k in ("method", "base", "lr", "batch_size", "loss", "seed")
                       if hasattr(config, k))
    ignored = f"; ignored here: {', '.join('--' + g.replace('_', '-') for g in given)}" if given else ""
    notice(f"autosam finetune: resumed with the options stored in {args.output} ({stored}){ignored}")
