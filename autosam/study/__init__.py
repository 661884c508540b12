"""``autosam study``: the low-data comparison on the user's own dataset, by one command.

Each repeat fixes its test cases first (by subject: its own split, or ``--test-cases`` in every repeat) and no model
ever trains or tunes on them. For each training size, a nested, seeded subset of the other cases trains the
prompter (whose own validation split then tunes its SAM default), a SAM adapter on the prompter's (or,
``--adapt-source nnunet``, nnU-Net's) cross-fitted prompts, and nnU-Net through its own commands, every model seeded
by the repeat. Every method then segments the same test cases and is scored per case and label (Dice, NSD, HD95,
seconds), and compared with a baseline method on the same (repeat, case) pairs.

Layout of ``STUDY_DIR``: ``plan.json``; ``test_images/`` (links; ``test_images_r<R>/`` for repeat R's own split);
``models/<run>/{prompter,adapter,nnunet_folds}``; ``nnunet/`` (nnU-Net's raw, preprocessed and results folders);
``predictions/<run>/<method>/`` (nnU-Net layout); ``embedding_cache/``; ``results.csv``, ``stats.csv``,
``summary.md`` and ``learning_curve.png``. Everything is kept and reused, so a rerun resumes where the last one
stopped.

Modules, each building on the ones before: :mod:`.methods` (the methods, their names and variants),
:mod:`.options` (:class:`StudyOptions` and its checks), :mod:`.plan` (the plan, the resume check and the
``--dry-run`` time estimate), :mod:`.results` (``results.csv``, the case values, step seconds), :mod:`.stats`
(paired statistics: bootstrap interval, wins/losses/ties, Wilcoxon p), :mod:`.summary` (``summary.md``,
``stats.csv``, the learning curve), :mod:`.folder` (the paths and pieces every step shares), :mod:`.checks` (kept
models checked against the options before anything is written), :mod:`.steps` (the model steps: prompter,
adapters, nnU-Nets, tuned defaults) and :mod:`.run` (:class:`Study`, which segments and scores each method, and
:func:`run_study`). The study sits with the models that train (layer 7 in ``tests/test_layers.py``): it may import
them (:mod:`autosam.prompter`, :mod:`autosam.adapt`, :mod:`autosam.nnunet.train`, :mod:`autosam.settings.model`) and
everything below them, never :mod:`autosam.commands` or :mod:`autosam.cli`.
"""
from .methods import (DEFAULT_METHODS, DESCRIPTIONS, LEVERS, METHODS, VARIABLE, VARIANT_BASE, describe,
                      parse_method)
from .options import ADAPT_SOURCES, StudyOptions, quick_options
from .plan import check_plan, estimate_seconds, make_plan
from .results import RESULT_FIELDS, case_values, score_folder, write_results
from .stats import compare, hierarchical_ci, pair, wilcoxon_p, wins_losses_ties
from .summary import STATS_FIELDS, comparisons, learning_curve, summary_markdown, write_reports, write_stats
from .folder import NNUNET_FOLDS
from .run import Study, run_study

__all__ = ["ADAPT_SOURCES", "DEFAULT_METHODS", "DESCRIPTIONS", "LEVERS", "METHODS", "NNUNET_FOLDS", "RESULT_FIELDS",
           "STATS_FIELDS", "Study", "StudyOptions", "VARIABLE", "VARIANT_BASE", "case_values", "check_plan",
           "compare", "comparisons", "describe", "estimate_seconds", "hierarchical_ci", "learning_curve", "make_plan",
           "pair", "parse_method", "quick_options", "run_study", "score_folder", "summary_markdown", "wilcoxon_p",
           "wins_losses_ties", "write_reports", "write_results", "write_stats"]
