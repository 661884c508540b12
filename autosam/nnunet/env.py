"""Make nnU-Net find the trainers in ``nnunet_plugins`` through ``nnUNet_extTrainer`` (nnunetv2 >= 2.8).

``import autosam`` calls :func:`ensure_ext_trainer_env`, so Python code and the ``autosam`` commands (and every
process they start) see the trainers. A plain shell running ``nnUNetv2_train`` needs the variable exported once:
``eval "$(autosam nnunet-env)"`` (see :func:`export_line`).
"""
from __future__ import annotations

import os
import shlex
from pathlib import Path

VARIABLE = "nnUNet_extTrainer"
#: The trainers nnunet_plugins provides (``-tr`` names).
TRAINERS = ("nnUNetTrainerAutoSAM", "nnUNetTrainerAutoSAM_Short", "nnUNetTrainer_autosam_Short")


def plugins_folder() -> str:
    """Absolute path of the ``nnunet_plugins`` package folder (found without importing it)."""
    from importlib.util import find_spec

    spec = find_spec("nnunet_plugins")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the nnunet_plugins package (installed with autosam) cannot be found")
    return str(Path(list(spec.submodule_search_locations)[0]).resolve())


def ext_trainer_value(current: str | None = None) -> str:
    """``nnUNet_extTrainer`` with the plugins folder appended unless listed (other folders are kept)."""
    current = os.environ.get(VARIABLE, "") if current is None else current
    folders = [p for p in current.split(os.pathsep) if p.strip()]
    folder = plugins_folder()
    if folder not in folders:
        folders.append(folder)
    return os.pathsep.join(folders)


def ensure_ext_trainer_env() -> str:
    """Add the plugins folder to ``nnUNet_extTrainer`` in this process if it is not listed yet; return the value."""
    os.environ[VARIABLE] = ext_trainer_value()
    return os.environ[VARIABLE]


def export_line(shell: str = "sh", value: str | None = None) -> str:
    """The shell line that sets ``nnUNet_extTrainer`` (``sh`` covers bash and zsh; also ``fish``, ``powershell``)."""
    value = ext_trainer_value() if value is None else value
    if shell == "sh":
        return f"export {VARIABLE}={shlex.quote(value)}"
    if shell == "fish":
        return f"set -gx {VARIABLE} {shlex.quote(value)}"
    if shell == "powershell":
        return f"$env:{VARIABLE} = '{value.replace(chr(39), chr(39) * 2)}'"
    raise ValueError(f"unknown shell {shell!r}")
