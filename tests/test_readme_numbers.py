"""README's numbers that are quoted from a file are that file's numbers.

Each check rebuilds a README phrase from the file it cites (RESULTS.md's tables, a report's
metrics.json) and asserts that README says exactly that: a rerun that changes a number, or an
edit that rounds it differently, fails here until README follows.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _flat(text: str) -> str:
    return " ".join(text.split())


README = _flat((ROOT / "README.md").read_text())
RESULTS = (ROOT / "RESULTS.md").read_text()


def table_after(marker: str) -> list[dict[str, str]]:
    """The first Markdown table after the line containing ``marker`` in RESULTS.md."""
    lines = RESULTS[RESULTS.index(marker) :].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        cells = re.split(r"(?<!\\)\|", line.strip().removeprefix("|").removesuffix("|"))
        rows.append([cell.strip() for cell in cells])
    header, body = rows[0], rows[2:]
    return [dict(zip(header, row, strict=True)) for row in body]


def percent(cell: str) -> float:
    return float(re.match(r"([\d.]+)%", cell).group(1))


def report(name: str) -> dict:
    return json.loads((ROOT / "reports" / name / "metrics.json").read_text())


def says(phrase: str) -> None:
    assert _flat(phrase) in README, f"README does not say: {phrase!r}"


def agreement(dataset: str) -> list[dict[str, str]]:
    marker = {
        "mnist": "python benchmarks/deploy.py --agreement mnist",
        "cifar10": "python benchmarks/deploy.py --agreement cifar10",
    }[dataset]
    return table_after(marker)


def test_qdq_changes_the_class_of_the_mnist_images_results_md_gives():
    moved = [100 - percent(r["qdq: same top-1"]) for r in agreement("mnist")]
    w2 = next(r for r in agreement("mnist") if r["run"] == "mnist-w2a2-sgt-s0")
    says(
        f"changes the top-1 class of {min(moved):.2f}% to {max(moved):.2f}% of the MNIST test "
        f"images ({100 - percent(w2['qdq: same top-1']):.2f}% at 2 bits)"
    )
    seed0 = next(r for r in agreement("cifar10") if r["run"] == "cifar10-w4a4-sgt-ft-s0")
    says(f"and of {100 - percent(seed0['qdq: same top-1']):.1f}% of the CIFAR-10 ones")


def test_packed_agreement_and_size_are_results_md_s():
    cifar = [percent(r["packed: same top-1"]) for r in agreement("cifar10")]
    mnist = [percent(r["packed: same top-1"]) for r in agreement("mnist")]
    deploy = table_after("CIFAR-10, W4A4 + SGT fine-tuned:")
    packed_kb = float(next(r for r in deploy if r["graph"] == "packed")["file kB"])
    sizes = report("cifar10")["accuracy"]
    counted = next(r for r in sizes if r["run"] == "cifar10-w4a4-sgt-ft-s0")["size_bytes"]
    says(
        f"`packed` to ship or store the model ({packed_kb:.1f} kB, "
        f"{round(100 * (packed_kb / (counted / 1000) - 1))}% above the {counted / 1000:.1f} kB "
        "the CIFAR-10 model counts)"
    )
    says(
        f"the same class on {min(cifar):.2f}% to {max(cifar):.0f}% of the test images of every "
        f"shipped CIFAR-10 run, {min(mnist):.2f}% to {max(mnist):.0f}% on MNIST"
    )


def test_the_scratch_comparison_quotes_each_report_it_names():
    scratch = report("cifar10-scratch")["runs"]
    earlier = report("cifar10")
    groups = earlier["datasets"]["cifar10"]["groups"]["w4a4+SGT from fp32"]

    def run(numbers: dict, name: str, key: str) -> float:
        return 100 * numbers[name]["scalars"][key]

    s, f = "cifar10-w4a4-sgt-scratch-s0", "cifar10-w4a4-sgt-ft-s0"
    masking = (run(scratch, s, "masking_auc"), run(scratch, f, "masking_auc"))
    says(
        f"Masking is {masking[0] - masking[1]:.2f} points worse than seed 0's in the same report "
        f"({masking[0]:.2f} against {masking[1]:.2f}), less than one standard deviation of the "
        f"three seeds ({100 * groups['masking_auc']['std']:.2f}; that spread comes from the "
        "earlier report, whose code gives seed 0 "
        f"{run(earlier['runs'], f, 'masking_auc'):.2f} on the same images)"
    )
    deletion = run(scratch, s, "deletion_auc")
    spread = groups["deletion_auc"]
    says(
        f"on deletion ({deletion:.1f} against {100 * spread['mean']:.1f} ± "
        f"{100 * spread['std']:.1f})"
    )
    sens = (run(scratch, s, "sensitivity_max") / 100, run(scratch, f, "sensitivity_max") / 100)
    says(f"(sensitivity-max {sens[0]:.2f} against {sens[1]:.2f})")


@pytest.mark.parametrize("name", ["mnist", "mnist-heldout", "cifar10", "cifar10-scratch"])
def test_the_reports_readme_links_exist(name):
    assert f"reports/{name}/report.md" in README
    assert (ROOT / "reports" / name / "report.md").is_file()
