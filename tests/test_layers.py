"""Layers point one way: engine, then case-level modules, then the models that train, then commands and plugins.

Every ``import`` in ``autosam/`` and ``nnunet_plugins/`` (at module level or inside a function) is read with
:mod:`ast`; a module may import only modules of its own rank or below.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: module (dotted, a package prefix covers its modules) -> rank; lower ranks never import higher ones
RANKS = {
    "autosam": 0, "autosam.errors": 0, "autosam.progress": 0,
    "autosam.nnunet": 0, "autosam.nnunet.env": 0,  # the package's __init__ and the env helper are cheap
    "autosam.settings": 2,
    "autosam.io": 1, "autosam.slicing": 1, "autosam.splits": 1, "autosam.sample": 1,
    "autosam.labels": 1, "autosam.background": 1,
    "autosam.integrity": 1,  # file-content checks that io runs on every read
    "autosam.sam": 2,  # the engine
    "autosam.prompts": 3, "autosam.losses": 3, "autosam.export": 3, "autosam.evaluation": 3,
    "autosam.nnunet.inference": 3, "autosam.nnunet.folds": 3, "autosam.nnunet.planes": 3, "autosam.report": 3,
    "autosam.qc": 3,  # label-free quality signals, model and table: io and errors only; runner and report read it
    "autosam.answers": 4, "autosam.runner": 4,
    "autosam.fusion": 5,
    "autosam.refine": 6, "autosam.oracle": 6, "autosam.tune": 6,
    "autosam.pipelines": 6,  # folder-level pipelines: refine, oracle, segment, predict
    "autosam.prompter": 7, "autosam.adapt": 7,
    "autosam.settings.model": 7, "autosam.settings.args": 7,  # build RefineConfig; the rest of settings is 2
    "autosam.nnunet.train": 7, "autosam.nnunet.refinement": 7, "autosam.nnunet.validation": 7,
    "autosam.fit": 7, "autosam.study": 7,  # the models that train, and the study that trains them
    "autosam.commands": 8, "autosam.cli": 8, "nnunet_plugins": 8,
}


def rank(module: str) -> int:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in RANKS:
            return RANKS[".".join(parts[:n])]
    raise KeyError(module)


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    """``(line, dotted module)`` of every autosam / nnunet_plugins import in a file (relative ones resolved)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text() if source is None else source, str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(base)
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            # "from . import io" names modules: check each imported name that is a module of ours
            found.append((node.lineno, target))
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                try:
                    rank(candidate)
                except KeyError:
                    continue
                if (ROOT / Path(*candidate.split("."))).with_suffix(".py").is_file() or \
                        (ROOT / Path(*candidate.split("."))).is_dir():
                    found.append((node.lineno, candidate))
    return [(line, m) for line, m in found if m.split(".")[0] in ("autosam", "nnunet_plugins")]


SOURCES = sorted(p for folder in ("autosam", "nnunet_plugins") for p in (ROOT / folder).rglob("*.py"))


def test_every_module_has_a_layer():
    missing = [module_name(p) for p in SOURCES if not any(
        module_name(p) == k or module_name(p).startswith(k + ".") for k in RANKS)]
    assert not missing, f"add these modules to RANKS in {__file__}: {missing}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down(path):
    own = rank(module_name(path))
    upward = [f"{path.relative_to(ROOT)}:{line} imports {target} (layer {rank(target)} > {own})"
              for line, target in imports(path) if rank(target) > own]
    assert not upward, "\n".join(upward)


def test_the_engine_never_imports_adapt_pipeline_or_commands():
    for path in (ROOT / "autosam" / "sam").rglob("*.py"):
        for line, target in imports(path):
            assert not target.startswith(("autosam.adapt", "autosam.prompter", "autosam.pipeline",
                                          "autosam.commands", "nnunet_plugins")), f"{path}:{line} imports {target}"


def test_the_rule_catches_an_upward_import():
    """The checker itself can fail: an engine module importing the adapt package is reported."""
    probe = ROOT / "autosam" / "sam" / "probe.py"  # never written: the source is given
    found = imports(probe, "import torch\nfrom ..adapt import load_adapter\nfrom . import transforms\n")
    assert [t for _, t in found if rank(t) > rank(module_name(probe))] == ["autosam.adapt"]
    assert ("autosam.sam.transforms" in [t for _, t in found]) and rank("autosam.sam.transforms") == 2
