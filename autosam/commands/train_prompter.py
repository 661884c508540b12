"""``autosam train-prompter``: train a lightweight prompt generator on an nnU-Net raw dataset (no nnU-Net model)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..sam.engines import ENGINES
from . import options
from ..progress import notice

HELP = "train a small 2D network that prompts SAM automatically (for 'autosam segment')"


def add_parser(sub) -> None:
    from ..prompter.train import TrainOptions

    d = TrainOptions()
    p = sub.add_parser("train-prompter", help=HELP, description=HELP)
    options.add_dataset_arguments(p, required=True)
    p.add_argument("-o", "--output", required=True, help="model folder (config.json, model.pt, checkpoint.pt ...); "
                                                         "rerunning with the same folder resumes")
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"epochs (default {d.epochs})")
    p.add_argument("--iterations", type=int, default=d.iterations, help=f"batches per epoch (default {d.iterations})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"slices per batch (default {d.batch_size})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"initial learning rate (default {d.lr})")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction,
                   help=f"share of cases (subjects) held out for validation (default {d.val_fraction})")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the split, sampling and initialisation")
    p.add_argument("--mode", choices=("mask", "embedding"), default=d.mode,
                   help="mask: coarse per-class maps turned into prompts (default); embedding: AutoSAM-style dense "
                        "prompt embeddings trained through SAM's frozen mask decoder")
    p.add_argument("--input-size", type=int, default=0, help="network input side in pixels (default: 64 for small "
                                                             "slices, else 96)")
    p.add_argument("--base", type=int, default=d.base, help=f"channels of the first U-Net level (default {d.base})")
    p.add_argument("--depth", type=int, default=d.depth, help=f"U-Net levels (default {d.depth})")
    p.add_argument("--axis", type=int, default=None, choices=(0, 1, 2),
                   help="slice axis of (Z, Y, X); default: the SAM path's rule (coarsest spacing)")
    p.add_argument("--mirror", action="store_true", help="mirror augmentation (only if labels do not depend on side)")
    options.add_exclude_argument(p)
    options.add_subject_argument(p)
    p.add_argument("--max-embedding-slices", type=int, default=d.max_embedding_slices,
                   help=f"embedding mode: training slices whose SAM embeddings are cached (default "
                        f"{d.max_embedding_slices})")
    p.add_argument("--sam", default=d.sam, help="embedding mode: SAM backend (default litemedsam)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, mps or auto")
    t = p.add_argument_group("tuning the SAM default (on the validation cases, after training)")
    t.add_argument("--no-tune", action="store_true",
                   help="do not tune; 'autosam segment' then uses the built-in SAM default with this prompter")
    t.add_argument("--tune-cases", type=int, default=10,
                   help="validation cases to tune on (default 10; 0 = all of them)")
    t.add_argument("--engine", default="auto", choices=ENGINES,
                   help="what runs SAM's encoder while tuning (default auto)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..prompter.train import TrainOptions, epochs_trained, train_prompter

    if args.device == "cpu" and torch.get_num_threads() > 4:
        torch.set_num_threads(4)
    opts = TrainOptions(
        epochs=args.epochs, iterations=args.iterations, batch_size=args.batch_size, lr=args.lr,
        val_fraction=args.val_fraction, seed=args.seed, mode=args.mode, input_size=args.input_size, base=args.base,
        depth=args.depth, axis=args.axis, mirror=args.mirror, exclude_cases=options.excluded_cases(args),
        subject_pattern=options.subject_pattern(args), max_embedding_slices=args.max_embedding_slices, sam=args.sam,
        device=args.device,
    )
    dataset = options.dataset_folder(args)
    with options.exclusive_output(args.output, {"dataset": dataset}):
        before = epochs_trained(Path(args.output))
        config = train_prompter(dataset, args.output, opts)
        if not args.no_tune:
            tune_after_training(args, dataset)
        elif epochs_trained(Path(args.output)) != before:
            set_aside_stale_tuning(Path(args.output))
    val = (config.get("validation") or {}).get("dice")
    score = f"; validation Dice {val['mean']:.4f}" if val else ""
    print(f"wrote {args.output}{score}")
    return 0


def set_aside_stale_tuning(folder: Path) -> None:
    """New weights trained with ``--no-tune``: a SAM default tuned for the earlier weights no longer holds; it is
    renamed (kept, not used) so that ``segment`` falls back to the built-in defaults."""
    from ..settings import SETTINGS_FILE

    record = folder / SETTINGS_FILE
    if record.is_file():
        kept = record.with_name("autosam_sam.earlier-weights.json")
        record.replace(kept)
        notice(f"autosam train-prompter: {record} was tuned for the earlier weights; renamed to {kept.name} "
               f"(`autosam tune --prompter {folder}` tunes the new ones)")


def tune_after_training(args: argparse.Namespace, dataset) -> None:
    """Choose the prompter's SAM default on its validation cases (:mod:`autosam.prompter.tuning`)."""
    from ..prompter import Prompter
    from ..prompter.tuning import tune_prompter
    from ..settings import Runtime, SamSpec

    device = "cpu" if args.device == "cpu" else args.device
    prompter = Prompter.load(args.output, device=device)
    maker = SamSpec(args.sam).maker(Runtime(device=device, engine=args.engine), caching=True)
    tune_prompter(prompter, dataset, maker, max_cases=args.tune_cases, sam=SamSpec(args.sam))
