"""``autosam nnunet-env``: print the line that lets nnU-Net's own commands find the autosam trainers."""
from __future__ import annotations

import argparse

from ..nnunet.env import TRAINERS, VARIABLE, export_line, plugins_folder
from ..progress import notice

HELP = f"print the '{VARIABLE}' line that lets nnUNetv2_train/_predict find the autosam trainers"


def add_parser(sub) -> None:
    p = sub.add_parser("nnunet-env", help=HELP, description=HELP + ". Use: eval \"$(autosam nnunet-env)\". "
                       f"Trainers: {', '.join(TRAINERS)}.")
    p.add_argument("--shell", default="sh", choices=("sh", "fish", "powershell"),
                   help="syntax of the printed line (default sh: bash, zsh, ...)")
    p.add_argument("--check", action="store_true",
                   help="also check, on stderr, that nnU-Net finds every autosam trainer with this setting")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    print(export_line(args.shell))
    if args.check:
        check_trainers()
    return 0


def check_trainers() -> None:
    """Look every autosam trainer up the way nnUNetv2_train does (the variable is already set by autosam)."""
    import contextlib
    import io

    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from ..errors import AutosamError

    for name in TRAINERS:
        with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net narrates its search
            try:
                recursive_find_trainer_class_by_name(name)
            except RuntimeError as e:
                raise AutosamError(f"nnU-Net does not find {name} in {plugins_folder()}: {e}") from None
        notice(f"ok: nnU-Net finds {name}")
