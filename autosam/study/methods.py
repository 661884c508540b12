"""The study's methods: their names, what each does, and the variants (``METHOD/FUSION+LEVER...``) of those that
prompt SAM from an automatic coarse map."""
from __future__ import annotations

from typing import Optional

from ..errors import AutosamError
from ..fusion import fusion_strategies

#: Every method the study can score, in table order; "-adapted" ones need an adapter (``--adapt``).
METHODS = ("sam-oracle", "sam-oracle-adapted", "prompter", "prompter+sam", "prompter+sam-adapted", "tuned",
           "nnunet", "nnunet+sam", "nnunet+sam-adapted", "nnunet+tuned", "nnunet-folds", "nnunet+prompter",
           "nnunet-planes")
#: Methods that need nnU-Net's cross-validation (``--adapt-folds`` more nnU-Nets per run).
CROSS_VALIDATED = ("nnunet+tuned", "nnunet-folds", "nnunet+prompter", "nnunet-planes")
#: The SAM-free controls a SAM method is judged against (with ``nnunet`` itself).
CONTROLS = ("nnunet", "nnunet-folds", "nnunet+prompter", "nnunet-planes")
#: What a study scores unless ``--methods`` says otherwise: every method but those of :data:`CROSS_VALIDATED`.
DEFAULT_METHODS = tuple(m for m in METHODS if m not in CROSS_VALIDATED)
DESCRIPTIONS = {
    "sam-oracle": "frozen SAM, boxes from the reference labels (a ceiling, not automatic)",
    "sam-oracle-adapted": "adapted SAM, boxes from the reference labels (a ceiling, not automatic)",
    "prompter": "the prompter alone",
    "prompter+sam": "prompter -> frozen SAM, built-in default (box+mask, auto: average)",
    "prompter+sam-adapted": "prompter -> adapted SAM, built-in default (box+mask, auto: average)",
    "tuned": "prompter -> the default tuned on the prompter's validation cases (may be no SAM)",
    "nnunet": "nnU-Net alone",
    "nnunet+sam": "nnU-Net -> frozen SAM, built-in default",
    "nnunet+sam-adapted": "nnU-Net -> adapted SAM, built-in default",
    "nnunet+tuned": "nnU-Net -> the default tuned on nnU-Net's cross-fitted maps of the training cases (frozen SAM, "
                    "and with --adapt-source nnunet the adapted one through fold adapters; may be no SAM)",
    "nnunet-folds": "control, no SAM: the ensemble of nnU-Net's cross-validation folds",
    "nnunet+prompter": "control, no SAM: nnU-Net's probabilities averaged with the prompter's (weight chosen on the "
                       "prompter's validation cases)",
    "nnunet-planes": "control, no SAM: the 2d nnU-Net along each axis of the volume, averaged (the native axis's weight "
                     "chosen on nnU-Net's cross-fitted maps of the training cases)",
}
#: Levers a method variant can switch on (``METHOD/FUSION+LEVER+...``), as :class:`RefineConfig` fields.
LEVERS = {"hypotheses": {"box_hypotheses": True}, "rebox": {"rebox": 1}, "largest": {"max_objects": 1},
          "box": {"prompt": "box"}, "planes": {"planes": True}}
#: What a variant starts from: box+mask prompts (the lever ``box`` drops the mask prompt).
VARIANT_BASE = {"prompt": "box+mask"}
#: Methods that take a variant: SAM prompted from an automatic coarse map.
VARIABLE = ("prompter+sam", "prompter+sam-adapted", "nnunet+sam", "nnunet+sam-adapted")


def parse_method(method: str) -> tuple[str, Optional[dict]]:
    """``"prompter+sam-adapted/replace+rebox"`` -> ``("prompter+sam-adapted", {"prompt": "box+mask", "fusion":
    "replace", "rebox": 1})``: the base method and the :class:`RefineConfig` fields of its variant (None: the base
    method as it is)."""
    base, _, spec = method.partition("/")
    if base not in METHODS:
        raise AutosamError(f"unknown method {base!r}; choose from {', '.join(METHODS)}")
    if not spec:
        return base, None
    if base not in VARIABLE:
        raise AutosamError(f"method {base!r} takes no variant; variants go with {', '.join(VARIABLE)}")
    fusion, *levers = spec.split("+")
    if fusion not in fusion_strategies:
        raise AutosamError(f"method {method!r}: unknown fusion {fusion!r}; choose from {', '.join(fusion_strategies)}")
    fields: dict = {**VARIANT_BASE, "fusion": fusion}
    for lever in levers:
        if lever not in LEVERS:
            raise AutosamError(f"method {method!r}: unknown lever {lever!r}; choose from {', '.join(LEVERS)}")
        fields.update(LEVERS[lever])
    return base, fields


def describe(method: str) -> str:
    """One line on what ``method`` (or its variant) does, for ``summary.md``."""
    base, variant = parse_method(method)
    if variant is None:
        return DESCRIPTIONS[base]
    fusion, *levers = method.partition("/")[2].split("+")
    levers = [lv for lv in levers if lv != "box"]
    return DESCRIPTIONS[base].split(", built-in")[0] + f", {variant['prompt']} prompts, {fusion} fusion" + (
        "".join(f", {lv}" for lv in levers) if levers else "")


def table_order(methods: list) -> list:
    """``methods`` in :data:`METHODS` order, variants after them in the order given."""
    return [m for m in METHODS if m in methods] + [m for m in methods if m not in METHODS]
