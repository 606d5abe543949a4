"""RESULTS.md's bookkeeping: rows in and out, the seed summary, the shipped weights."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
import yaml
from results_table import (
    QUICK_SUFFIX,
    ResultsTable,
    Row,
    append_to_table,
    ship,
    shipped_dir,
)

from qsgt_plugin.run_dir.checkpoint import load_checkpoint, save_checkpoint


def row(experiment: str = "mnist-w4a4-sgt", seed: int = 0, acc: str = "99.50%") -> Row:
    return Row(
        experiment, "mnist", "resnet20", "pact", "w4a4", "yes", seed, "2.00", acc, "100", "900",
        "CPU, 2 cores", "2026-12-03", "`python benchmarks/reproduce.py x`",
    )  # fmt: skip


def test_rows_go_in_after_the_last_row_and_come_back_equal(tmp_path):
    table = ResultsTable(tmp_path / "RESULTS.md")
    table.add(row(seed=0))
    text = table.path.read_text()
    table.path.write_text(text + "\n## Later section\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")
    table.add(row(seed=1, acc="99.60%"))
    table.add(row("mnist-fp32" + QUICK_SUFFIX))
    assert table.rows() == [row(seed=0), row(seed=1, acc="99.60%")]
    assert [r.experiment for r in table.rows(quick=True)][-1].endswith(QUICK_SUFFIX)
    assert table.measured() == {("mnist-w4a4-sgt", 0), ("mnist-w4a4-sgt", 1)}
    lines = table.path.read_text().splitlines()
    # the new rows sit in the measured table, not in the later one
    assert lines.index("## Later section") > lines.index(row(seed=1, acc="99.60%").line())
    assert lines[-1] == "| 1 | 2 |"


def test_the_summary_is_mean_and_sample_std_over_seeds_and_refuses_a_seed_twice(tmp_path):
    table = ResultsTable(tmp_path / "RESULTS.md")
    for seed, acc in enumerate(("99.00%", "99.50%", "100.00%")):
        table.add(row(seed=seed, acc=acc))
    table.add(row("mnist-fp32", acc="98.00%"))
    table.write_summary()
    table.write_summary()  # replaced, not appended twice
    text = table.path.read_text()
    assert text.count("<!-- summary:start -->") == 1
    assert "| mnist-w4a4-sgt | 3 | 99.50% ± 0.50 |" in text  # stdev([99, 99.5, 100]) = 0.5
    assert "| mnist-fp32 | 1 | 98.00% |" in text
    table.add(row(seed=2, acc="100.00%"))  # one run's row copied twice
    with pytest.raises(ValueError, match="mnist-w4a4-sgt seed 2 has two rows"):
        table.summary()


def test_a_malformed_table_is_named():
    with pytest.raises(ValueError, match=re.escape("no table with the header '| x |'")):
        append_to_table("# nothing\n", "| x |", ["| 1 |"])
    with pytest.raises(ValueError, match="14 cells, not 3"):
        Row.from_cells(["a", "b", "c"])


def test_ship_keeps_the_model_state_only(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    payload = {
        "model": {"w": torch.ones(2)},
        "model_config": {"name": "resnet20"},
        "recipe": {},
        "step": 8,
        "test_acc": 0.5,
        "optimizer": {"state": {}},
        "train_model": {"w": torch.zeros(2)},
    }
    save_checkpoint(payload, run / "last.pt")
    (run / "recipe.yaml").write_text("model: {}\n")
    (run / "metrics.jsonl").write_text("{}\n")
    dest = ship(run, shipped_dir(row(), tmp_path / "results"))
    assert dest == tmp_path / "results" / "mnist" / "mnist-w4a4-sgt-s0"
    shipped = load_checkpoint(dest / "model.pt")
    assert set(shipped) - {"format"} == {"model", "model_config", "recipe", "step", "test_acc"}
    assert (dest / "recipe.yaml").read_text() == "model: {}\n"
    assert dataclasses.asdict(row())["seed"] == 0


def test_a_fine_tuning_is_compared_with_its_own_seeds_parent(tmp_path):
    """The paired cell pairs seed s with the parent of seed s (not the parents' mean), whatever
    form ``model.init_from`` takes (a shipped folder, a checkpoint in it, an absolute path)."""
    table = ResultsTable(tmp_path / "RESULTS.md")
    parents = {0: "91.00%", 1: "92.00%", 2: "90.00%"}
    tuned = {0: "90.50%", 1: "91.70%", 2: "89.80%"}  # -0.5, -0.3, -0.2: mean -0.33, sd 0.15
    sources = {
        0: "results/cifar10/cifar10-fp32-cpu-s0",
        1: "results/cifar10/cifar10-fp32-cpu-s1/model.pt",
        2: str(tmp_path / "results/cifar10/cifar10-fp32-cpu-s2"),
    }
    for seed in range(3):
        parent = dataclasses.replace(
            row("cifar10-fp32-cpu", seed, parents[seed]), dataset="cifar10", method="fp32"
        )
        child = dataclasses.replace(row("cifar10-w4a4-ft", seed, tuned[seed]), dataset="cifar10")
        for r, source in ((parent, None), (child, sources[seed])):
            table.add(r)
            folder = shipped_dir(r, tmp_path / "results")
            folder.mkdir(parents=True)
            (folder / "recipe.yaml").write_text(yaml.safe_dump({"model": {"init_from": source}}))
    table.add(row("cifar10-w4a4-ft", 3, "95.00%"))  # no shipped recipe, no parent row: unpaired
    summary = table.summary().splitlines()
    assert summary[2] == "| cifar10-fp32-cpu | 3 | 91.00% ± 1.00 |  |"
    # the difference of the means would be -0.33 too, but its spread is the parents' (1.0)
    assert summary[3] == (
        "| cifar10-w4a4-ft | 4 | 91.75% ± 2.30 | -0.33 ± 0.15 points (3 seeds, cifar10-fp32-cpu) |"
    )
