"""RESULTS.md's measured rows, its seed summary, and the weights shipped behind the rows.

The study's numbers live in one markdown file. Its measured table has one :class:`Row` per
training run (experiment, seed, accuracy, wall time, device, date, the command); every row's
final weights ship under ``results/DATASET/EXPERIMENT-sSEED/``. This module is the one place that
reads and writes both, for ``benchmarks/reproduce.py``, the GPU stage scripts and the tests::

    table = ResultsTable("RESULTS.md")
    if ("mnist-w4a4-sgt", 0) not in table.measured():
        table.add(row)
        ship(run_dir, shipped_dir(row, "results"))
    table.write_summary()
"""

from __future__ import annotations

import dataclasses
import platform
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

import yaml

from qsgt_plugin.run_dir.checkpoint import load_checkpoint, save_checkpoint

__all__ = [
    "ANCHORS",
    "COLUMNS",
    "ResultsTable",
    "Row",
    "append_to_table",
    "processor_name",
    "ship",
    "shipped_dir",
]

ANCHORS = (
    "Anchor, PACT Table 1 (ResNet-20, CIFAR-10 top-1): "
    "fp32 91.6, 5-bit 91.7, 4-bit 91.3, 3-bit 91.1, 2-bit 89.7"
)
COLUMNS = (
    "experiment", "dataset", "model", "method", "bits", "SGT", "seed", "epochs", "test acc",
    "wall s", "images/s", "device", "date", "command",
)  # fmt: skip
SUMMARY_START, SUMMARY_END = "<!-- summary:start -->", "<!-- summary:end -->"
SHIPPED = ("model", "model_config", "recipe", "step", "test_acc")
"""What a shipped ``model.pt`` keeps of a checkpoint (no optimizer, no training copy)."""
QUICK_SUFFIX = " (quick smoke run)"


@dataclass(frozen=True)
class Row:
    """One measured training run, as RESULTS.md shows it (cells are the printed strings)."""

    experiment: str
    dataset: str
    model: str
    method: str
    bits: str
    sgt: str
    seed: int
    epochs: str
    test_acc: str
    wall_s: str
    images_s: str
    device: str
    date: str
    command: str

    @property
    def quick(self) -> bool:
        """A CI smoke run's row (a few steps): never a measurement."""
        return self.experiment.endswith(QUICK_SUFFIX)

    @property
    def accuracy(self) -> float:
        """The test accuracy in percent."""
        return float(self.test_acc.rstrip("%"))

    def line(self) -> str:
        return "| " + " | ".join(str(v) for v in dataclasses.astuple(self)) + " |"

    @classmethod
    def from_cells(cls, cells: list[str]) -> Row:
        if len(cells) != len(COLUMNS):
            raise ValueError(f"a results row has {len(COLUMNS)} cells, not {len(cells)}")
        values = dict(zip([f.name for f in dataclasses.fields(cls)], cells, strict=True))
        return cls(**{**values, "seed": int(values["seed"])})


def processor_name(cpuinfo: str | None = None) -> str:
    """The processor's name and its fastest training path: ``Intel Xeon Processor (AMX-BF16)``,
    ``AMD EPYC (AVX2)``. Machines sold under one name differ: two "AMD EPYC" machines here had
    AVX512-BF16 and only AVX2, and their wall times and float rounding differ with it."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    fields = dict(
        (key.strip(), value.strip())
        for key, _, value in (line.partition(":") for line in cpuinfo.splitlines())
        if key.strip() in ("model name", "flags")
    )
    name = fields.get("model name") or platform.processor() or "unknown processor"
    name = " ".join(name.replace("(R)", "").replace("(TM)", "").split())
    flags = set(fields.get("flags", "").split())
    for flag, path in (
        ("amx_bf16", "AMX-BF16"),
        ("avx512_bf16", "AVX512-BF16"),
        ("avx512f", "AVX-512"),
        ("avx2", "AVX2"),
    ):
        if flag in flags:
            return f"{name} ({path})"
    return name


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def append_to_table(text: str, header: str, lines: list[str]) -> str:
    """``text`` with ``lines`` after the last row of the markdown table whose header row is
    ``header`` (the first such table).

    Raises:
        ValueError: no table has that header.
    """
    rows = text.splitlines()
    try:
        start = rows.index(header)
    except ValueError:
        raise ValueError(f"no table with the header {header!r}") from None
    end = start + 2  # the header and its |---| line
    while end < len(rows) and rows[end].startswith("|"):
        end += 1
    return "\n".join(rows[:end] + list(lines) + rows[end:]) + "\n"


class ResultsTable:
    """The measured table of a results file (created with its header when first written)."""

    HEADER = "| " + " | ".join(COLUMNS) + " |"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def rows(self, quick: bool = False) -> list[Row]:
        """The table's rows in file order; smoke-run rows only with ``quick``."""
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            cells = _cells(line)
            if len(cells) == len(COLUMNS) and cells[0] not in (COLUMNS[0], "---"):
                row = Row.from_cells(cells)
                if quick or not row.quick:
                    out.append(row)
        return out

    def measured(self) -> set[tuple[str, int]]:
        """``(experiment, seed)`` of every measured (not smoke-run) row."""
        return {(row.experiment, row.seed) for row in self.rows()}

    def add(self, row: Row) -> None:
        """Append ``row`` at the end of the measured table."""
        if not self.path.exists():
            separator = "|---" * len(COLUMNS) + "|"
            self.path.write_text(f"# Results\n\n{ANCHORS}\n\n{self.HEADER}\n{separator}\n")
        self.path.write_text(append_to_table(self.path.read_text(), self.HEADER, [row.line()]))

    def summary(self, results: str | Path | None = None) -> str:
        """Mean +- std of the test accuracy over seeds, per experiment, as a markdown table.

        A run fine-tuned from another row's shipped weights (its shipped recipe's
        ``model.init_from`` names ``results/DATASET/EXPERIMENT-sSEED``) also gets the paired
        difference to that parent: its accuracy minus its own seed's parent, mean +- std over
        the seeds that have both. Seeds differ more between parents than a fine-tuning moves
        away from its own, so this, not the difference of the two means, is what a goal such
        as "within 0.5 points of its parent" is read from.

        Args:
            results: the shipped runs' root (default: ``results/`` beside the results file).

        Raises:
            ValueError: an experiment with one seed in two rows (a seed counted twice would
                shrink the spread).
        """
        results = Path(results) if results is not None else self.path.parent / "results"
        by_name: dict[str, dict[int, float]] = {}
        parents: dict[str, dict[int, tuple[str, int]]] = {}
        for row in self.rows():
            seeds = by_name.setdefault(row.experiment, {})
            if row.seed in seeds:
                raise ValueError(
                    f"{self.path}: {row.experiment} seed {row.seed} has two rows; keep one"
                )
            seeds[row.seed] = row.accuracy
            parent = _parent(shipped_dir(row, results))
            if parent is not None:
                parents.setdefault(row.experiment, {})[row.seed] = parent
        lines = [
            "| experiment | seeds | test acc, mean ± std | minus its parent (same seed) |",
            "|---|---|---|---|",
        ]
        for name, seeds in by_name.items():
            accs = list(seeds.values())
            lines.append(
                f"| {name} | {len(accs)} | {_mean_std(accs, '%')} "
                f"| {_paired(seeds, parents.get(name, {}), by_name)} |"
            )
        return "\n".join(lines)

    def write_summary(self) -> None:
        """Replace the summary block (between its markers), or append one."""
        text = self.path.read_text()
        block = f"{SUMMARY_START}\n{self.summary()}\n{SUMMARY_END}"
        if SUMMARY_START in text and SUMMARY_END in text:
            head, rest = text.split(SUMMARY_START, 1)
            text = head + block + rest.split(SUMMARY_END, 1)[1]
        else:
            text += "\n" + block + "\n"
        self.path.write_text(text)


def _mean_std(values: list[float], unit: str = "", sign: str = "") -> str:
    spread = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):{sign}.2f}{unit}{spread}"


def _parent(shipped: Path) -> tuple[str, int] | None:
    """``(experiment, seed)`` of the shipped run a shipped run was initialised from, if any."""
    recipe = shipped / "recipe.yaml"
    if not recipe.exists():
        return None
    source = ((yaml.safe_load(recipe.read_text()) or {}).get("model") or {}).get("init_from")
    if not source:
        return None
    source = Path(source)
    if source.suffix == ".pt":  # a checkpoint file inside the run directory
        source = source.parent
    found = re.fullmatch(r"(.+)-s(\d+)", source.name)
    return (found.group(1), int(found.group(2))) if found else None


def _paired(
    seeds: dict[int, float],
    parents: dict[int, tuple[str, int]],
    accuracy: dict[str, dict[int, float]],
) -> str:
    """The paired difference cell: ``-0.41 ± 0.10 points (3 seeds, cifar10-fp32-cpu)``;
    empty for a run not fine-tuned from a row."""
    names = {name for name, _ in parents.values()}
    pairs = [
        seeds[seed] - accuracy[name][parent_seed]
        for seed, (name, parent_seed) in sorted(parents.items())
        if parent_seed in accuracy.get(name, {})
    ]
    if not pairs:
        return ""
    count = f"{len(pairs)} seed{'s' if len(pairs) > 1 else ''}"
    return f"{_mean_std(pairs, sign='+')} points ({count}, {', '.join(sorted(names))})"


def shipped_dir(row: Row, root: str | Path) -> Path:
    """Where a row's weights ship: ``ROOT/DATASET/EXPERIMENT-sSEED`` (``ROOT``: ``results/``)."""
    return Path(root) / row.dataset / f"{row.experiment}-s{row.seed}"


def ship(run_dir: str | Path, dest: str | Path) -> Path:
    """Copy a run's final weights (model state only), resolved recipe and metrics log."""
    run_dir, dest = Path(run_dir), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    payload = load_checkpoint(run_dir / "last.pt")
    save_checkpoint({k: payload[k] for k in SHIPPED}, dest / "model.pt")
    for name in ("recipe.yaml", "metrics.jsonl"):
        (dest / name).write_bytes((run_dir / name).read_bytes())
    return dest
