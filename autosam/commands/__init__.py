"""One module per CLI verb; each has ``add_parser(subparsers)`` and ``run(args) -> int``.

A verb parses its options, calls the library (folder-level work in :mod:`autosam.pipelines`, training in
:mod:`autosam.prompter` and :mod:`autosam.adapt`, the study in :mod:`autosam.study`) and reports; the vocabulary
every verb shares lives in :mod:`~autosam.commands.options` and :mod:`~autosam.commands.common`. Commands sit on the
top layer: they may import any autosam module, and nothing in autosam but :mod:`autosam.cli` imports them.
"""
