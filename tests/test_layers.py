"""The parts depend on each other as ARCHITECTURE.md draws them."""

from __future__ import annotations

import subprocess
import sys

APP_LAYER = (
    "qsgt_plugin.training",
    "qsgt_plugin.recipe",
    "qsgt_plugin.run_dir",
    "qsgt_plugin.report",
    "qsgt_plugin.precision",
    "qsgt_plugin.cli",
)


def loaded_after(statement: str) -> set[str]:
    """The qsgt_plugin modules a fresh interpreter has loaded after ``statement``."""
    code = (
        f"import sys; {statement}; "
        "print('\\n'.join(m for m in sys.modules if m.startswith('qsgt_plugin')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    return set(out.split())


def application(modules: set[str]) -> list[str]:
    """The application-layer modules among ``modules``, submodules included."""
    return sorted(m for m in modules if any(m == a or m.startswith(a + ".") for a in APP_LAYER))


def test_the_application_check_sees_submodules_and_packages():
    assert application({"qsgt_plugin.run_dir.runs", "qsgt_plugin.sgt.masking"}) == [
        "qsgt_plugin.run_dir.runs"
    ]
    assert application({"qsgt_plugin.training.loop"}) == ["qsgt_plugin.training.loop"]
    assert application({"qsgt_plugin.reporting"}) == []  # a prefix of a name is not the module


def test_the_leaves_and_attribution_load_no_application_module():
    modules = loaded_after(
        "import qsgt_plugin.quant, qsgt_plugin.sgt, qsgt_plugin.models, qsgt_plugin.attribution"
    )
    assert "qsgt_plugin.attribution.suite" in modules  # the import did happen
    assert not application(modules), application(modules)


def test_the_package_itself_loads_no_application_module():
    modules = loaded_after("import qsgt_plugin")
    assert not application(modules), application(modules)


def test_quant_does_not_reach_up_to_the_plugin_host():
    modules = loaded_after("import qsgt_plugin.quant.conversion")
    # the package __init__ wires the host; the quant modules themselves never import it
    import ast
    import pathlib

    import qsgt_plugin

    root = pathlib.Path(qsgt_plugin.__file__).parent
    for path in (root / "quant").rglob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {
            node.module
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module
        }
        assert not {m for m in imported if m in ("qsgt_plugin.plugins", *APP_LAYER)}, path
    assert "qsgt_plugin.quant.conversion" in modules
