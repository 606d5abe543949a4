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


# --- every import edge against ARCHITECTURE.md's rows ---------------------------------------

import ast  # noqa: E402
import re  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "qsgt_plugin"


def architecture_rows(text: str | None = None) -> list[list[str]]:
    """The parts of each row of ARCHITECTURE.md's layer diagram, top row first, as module
    prefixes (``qsgt_plugin.report``, ``qsgt_plugin.cli``)."""
    text = text or (ROOT / "ARCHITECTURE.md").read_text()
    block = text.split("## The layers", 1)[1].split("```", 2)[1]
    rows = []
    for line in block.splitlines():
        parts = re.findall(r"qsgt_plugin/[\w/]*(?:\.py)?", line)
        if parts:
            names = [p.removesuffix(".py").removesuffix("/").replace("/", ".") for p in parts]
            rows.append([n.removesuffix(".__init__") for n in names])
    return rows


def module_name(path: Path) -> str:
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    return name.removesuffix(".__init__")


def import_edges() -> list[tuple[str, str, int]]:
    """``(module, imported module, line)`` for every import of the package in its source,
    those inside functions and ``TYPE_CHECKING`` blocks included."""
    edges = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = module_name(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [_imported(node.module, a.name) for a in node.names]
            else:
                continue
            edges += [(source, t, node.lineno) for t in targets if t.startswith("qsgt_plugin")]
    return edges


def _imported(module: str, name: str) -> str:
    """``from qsgt_plugin import hookspecs`` imports the module ``qsgt_plugin.hookspecs``."""
    if module == "qsgt_plugin" and (
        (PACKAGE / name).with_suffix(".py").exists() or (PACKAGE / name).is_dir()
    ):
        return f"{module}.{name}"
    return module


def _holds(part: str, module: str) -> bool:
    # the package's own __init__ is the part "qsgt_plugin", which holds nothing below it
    return module == part or (part != "qsgt_plugin" and module.startswith(part + "."))


def row_of(module: str, rows: list[list[str]]) -> int | None:
    """The index of the row whose part holds ``module`` (the longest matching prefix)."""
    best, found = -1, None
    for index, parts in enumerate(rows):
        for part in parts:
            if _holds(part, module) and len(part) > best:
                best, found = len(part), index
    return found


def part_of(module: str, rows: list[list[str]]) -> str:
    parts = [p for row in rows for p in row if _holds(p, module)]
    return max(parts, key=len)


def violations(edges, rows) -> list[str]:
    out = []
    for source, target, line in edges:
        a, b = row_of(source, rows), row_of(target, rows)
        if part_of(source, rows) == part_of(target, rows):
            continue  # inside one part
        if b <= a:  # the same row or above: rows are listed top first
            out.append(f"{source}:{line} imports {target} ({'its own row' if a == b else 'up'})")
    return out


def test_the_diagram_names_every_module_of_the_package():
    rows = architecture_rows()
    modules = [module_name(p) for p in PACKAGE.rglob("*.py")]
    unplaced = sorted(m for m in modules if row_of(m, rows) is None)
    assert not unplaced, f"modules in no row of ARCHITECTURE.md: {unplaced}"


def test_every_import_edge_goes_down_the_architecture_rows():
    edges = import_edges()
    assert len(edges) > 200  # the parser does see the package's imports
    problems = violations(edges, architecture_rows())
    assert not problems, "\n".join(problems)


def test_the_edge_check_catches_an_upward_a_sideways_and_a_circular_import():
    rows = architecture_rows()
    planted = [
        ("qsgt_plugin.sgt.masking", "qsgt_plugin.training.loop", 1),  # up
        ("qsgt_plugin.sgt.masking", "qsgt_plugin.models.resnet_cifar", 1),  # a sibling leaf
        ("qsgt_plugin.run_dir.payload", "qsgt_plugin.training.data", 1),  # closes a cycle
    ]
    assert len(violations(planted, rows)) == 3
    assert not violations([("qsgt_plugin.runs", "qsgt_plugin.training.build", 1)], rows)
