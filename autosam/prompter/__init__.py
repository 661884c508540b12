"""Learned prompt generators: a small 2D network gives coarse per-class maps (or SAM dense prompts) without nnU-Net.

``Prompter.load(name_or_dir)`` loads a trained or shipped prompter; ``train_prompter`` trains one; ``tuning``
chooses its SAM default on its validation cases. A model that trains (layer 7 in ``tests/test_layers.py``): it may
import the engine, the case-level modules, the runner, the pipelines and the tuner; never the study, the commands or
the plugins.
"""
from .infer import Prompter, resolve_prompter, shipped_prompters
from .model import ArchConfig, PromptNet

__all__ = ["ArchConfig", "PromptNet", "Prompter", "resolve_prompter", "shipped_prompters", "train_prompter",
           "TrainOptions"]


def __getattr__(name):  # train pulls in batchgenerators; import it only when asked
    if name in ("train_prompter", "TrainOptions"):
        from . import train

        return getattr(train, name)
    raise AttributeError(name)
