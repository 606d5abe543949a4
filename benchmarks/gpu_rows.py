"""Turn a GPU stage's JSON (``stage1.json``, ``stage2.json``) into RESULTS.md rows.

    python benchmarks/gpu_rows.py FILES_AT/stage1.json            # appends to RESULTS.md
    python benchmarks/gpu_rows.py stage1.json --results /tmp/R.md # elsewhere (a dry run's)

Every row names the device the stage recorded, its date and the command that measured it. A dry
run's JSON is refused unless ``--results`` points away from RESULTS.md: CPU numbers never pass
for GPU ones.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from results_table import append_to_table

ROOT = Path(__file__).resolve().parents[1]
TABLE_HEADER = "| experiment | measurement | device | date | command |"
HEADER = f"\n## GPU stages\n\n{TABLE_HEADER}\n|---|---|---|---|---|\n"
COMMANDS = {
    1: "python benchmarks/gpu_stage1.py --out $OUT",
    2: "python benchmarks/gpu_stage2.py --out $OUT",
}


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def _seconds(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.0f} s"


def stage1_rows(stage: dict) -> list[tuple[str, str]]:
    rows = [("stage1-gpu-tests", f"pytest -m gpu: {stage['gpu_tests']['summary']}")]
    for r in stage["throughput"].get("rows", []):
        name = f"stage1-throughput {r['model']} {r['training']} {r['mode']}"
        if "skipped" in r or "failed" in r:
            rows.append((name, r.get("skipped") or f"failed: {r['failed']}"))
            continue
        goal = f", goal >= {r['goal']}" if r.get("goal") else ""
        rows.append(
            (
                name,
                f"{r['images_per_s']:.0f} images/s at batch {stage['throughput']['batch']}, "
                f"{stage['throughput'].get('precision', 'fp32')}"
                f" ({r['ratio']:.2f} x fp32 eager{goal}); first step {r['first_step_s']:.1f} s;"
                f" peak {r['peak_gib'] or 0:.2f} GiB",
            )
        )
    m = stage["mnist"]
    rows.append(
        (
            "stage1-mnist-w4a4-sgt",
            f"test accuracy {_pct(m['final_acc'])}; 99.5% after "
            f"{_seconds(m['time_to_target_s'])} of training; compiled: {m['compiled']}",
        )
    )
    return rows


def stage2_rows(stage: dict) -> list[tuple[str, str]]:
    rows = []
    for name, r in stage["runs"].items():
        if "skipped" in r:
            rows.append((f"stage2-{name}", f"skipped: {r['skipped']}"))
            continue
        rows.append(
            (
                f"stage2-{name}",
                f"test accuracy {_pct(r['final_acc'])} (full test set) "
                f"after {_seconds(r['training_s'])} of training; {100 * r['target']:.1f}% "
                f"after {_seconds(r['time_to_target_s'])}; compiled: {r['compiled']}",
            )
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("stage_json", type=Path)
    parser.add_argument("--results", type=Path, default=ROOT / "RESULTS.md")
    args = parser.parse_args(argv)
    stage = json.loads(args.stage_json.read_text())
    if stage["dry_run"] and args.results.resolve() == (ROOT / "RESULTS.md").resolve():
        print("gpu_rows: a dry run's numbers do not go into RESULTS.md", file=sys.stderr)
        return 2
    rows = stage1_rows(stage) if stage["stage"] == 1 else stage2_rows(stage)
    text = args.results.read_text() if args.results.exists() else "# Results\n"
    if "## GPU stages" not in text:
        text += HEADER
    command = COMMANDS[stage["stage"]]
    new = [
        f"| {name} | {value} | {stage['device']} | {stage['date']} | `{command}` |"
        for name, value in rows
    ]
    text = append_to_table(text, TABLE_HEADER, new)
    args.results.write_text(text)
    print(f"{len(rows)} rows added to {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
