"""The tree is what README.md and ARCHITECTURE.md say it is, and every module is reachable by
its dotted name (no function or object of a package hides a submodule of the same name)."""

from __future__ import annotations

import importlib
import pkgutil
import re
import types
from collections import defaultdict
from pathlib import Path

import qsgt_plugin

ROOT = Path(__file__).resolve().parents[1]
PATH = re.compile(
    r"(?<![\w./-])((?:qsgt_plugin|recipes|benchmarks|tests|docs|reports|results)/[\w./*{},<>-]*)"
)


def named_paths(text: str) -> set[str]:
    """Paths named in ``text``; patterns (``*``, ``{a,b}``, ``<name>``) are left out."""
    found = {m.rstrip(".,") for m in PATH.findall(text)}
    return {p for p in found if not any(c in p for c in "*{<")}


def modules() -> list[str]:
    return [info.name for info in pkgutil.walk_packages(qsgt_plugin.__path__, "qsgt_plugin.")]


def test_the_path_finder_finds_paths_in_prose_and_tables():
    text = (
        "see `qsgt_plugin/quant/export/qdq.py` and qsgt_plugin/training/, not my_qsgt_plugin/x "
        "nor recipes/finetune/cifar10-*-finetune.yaml"
    )
    assert named_paths(text) == {"qsgt_plugin/quant/export/qdq.py", "qsgt_plugin/training/"}


def test_every_path_readme_and_architecture_name_exists():
    for doc in ("README.md", "ARCHITECTURE.md"):
        missing = [p for p in named_paths((ROOT / doc).read_text()) if not (ROOT / p).exists()]
        assert not missing, f"{doc} names {missing}"


def test_architecture_names_every_subpackage_and_top_level_module():
    text = (ROOT / "ARCHITECTURE.md").read_text()
    package = ROOT / "qsgt_plugin"
    parts = [p for p in package.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()]
    unnamed = [p.name for p in parts if f"qsgt_plugin/{p.name}" not in text]
    assert not unnamed, unnamed


def test_every_module_is_a_module_under_its_dotted_name():
    for name in modules():
        importlib.import_module(name)
    for name in modules():
        parent, _, leaf = name.rpartition(".")
        attribute = getattr(importlib.import_module(parent), leaf)
        assert isinstance(attribute, types.ModuleType), f"{parent}.{leaf} is {attribute!r}"


def test_no_two_modules_share_a_name():
    by_leaf = defaultdict(list)
    for name in modules():
        by_leaf[name.rpartition(".")[2]].append(name)
    shared = {leaf: names for leaf, names in by_leaf.items() if len(names) > 1}
    assert not shared, shared
