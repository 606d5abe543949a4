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
import statistics
from dataclasses import dataclass
from pathlib import Path

from qsgt_plugin.run_dir.checkpoint import load_checkpoint, save_checkpoint

__all__ = [
    "ANCHORS",
    "COLUMNS",
    "ResultsTable",
    "Row",
    "append_to_table",
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

    def summary(self) -> str:
        """Mean +- std of the test accuracy over seeds, per experiment, as a markdown table.

        Raises:
            ValueError: an experiment with one seed in two rows (a seed counted twice would
                shrink the spread).
        """
        by_name: dict[str, dict[int, float]] = {}
        for row in self.rows():
            seeds = by_name.setdefault(row.experiment, {})
            if row.seed in seeds:
                raise ValueError(
                    f"{self.path}: {row.experiment} seed {row.seed} has two rows; keep one"
                )
            seeds[row.seed] = row.accuracy
        lines = ["| experiment | seeds | test acc, mean ± std |", "|---|---|---|"]
        for name, seeds in by_name.items():
            accs = list(seeds.values())
            spread = f" ± {statistics.stdev(accs):.2f}" if len(accs) > 1 else ""
            lines.append(f"| {name} | {len(accs)} | {statistics.mean(accs):.2f}%{spread} |")
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
