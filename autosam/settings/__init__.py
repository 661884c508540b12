"""The settings every job shares: which SAM (:class:`SamSpec`), how it runs (:class:`Runtime`), the one table of
option constraints (:data:`BOUNDS`) that the command line, the environment and the records validate through, and
the SAM settings record on disk (:mod:`.record`, ``autosam_sam.json``).

``SamSpec.predictor(runtime)`` is the one place a SAM predictor is built. Layer: beside the engine
(:mod:`autosam.sam`); this package's ``__init__``, :mod:`.bounds`, :mod:`.spec` and :mod:`.record` import only it,
:mod:`autosam.errors`, :mod:`autosam.io` and the standard library. :mod:`.model` (:class:`~.model.Settings`: SAM,
runtime, refine config and tuning, from the defaults, a record, the environment and the command line, merged by
one rule) and :mod:`.args` (the command line's SAM and refine options) sit with the models that train, as they
build :class:`autosam.refine.RefineConfig`; import them by their module path.
"""
from .bounds import (BOUNDS, COUNT, DEVICES, FOLDS, FRACTION, NON_NEGATIVE, POSITIVE, POSITIVE_INT, UNIT, Bound,
                     bind_bounds, check_option, device_type, option_type)
from .record import INFO_KEYS, MODEL_KEYS, SETTINGS_FILE, read_json, recorded_files, write_record
from .spec import Runtime, SamSpec

__all__ = ["BOUNDS", "COUNT", "DEVICES", "FOLDS", "FRACTION", "NON_NEGATIVE", "POSITIVE", "POSITIVE_INT", "UNIT",
           "Bound", "bind_bounds", "check_option", "device_type", "option_type", "INFO_KEYS", "MODEL_KEYS",
           "SETTINGS_FILE", "read_json", "recorded_files", "write_record", "Runtime", "SamSpec"]
