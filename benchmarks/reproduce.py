"""Run the study's named experiments from recipes/ and append their rows to RESULTS.md.

    python benchmarks/reproduce.py --list
    python benchmarks/reproduce.py cifar10-w4a4-sgt mnist-w4a4-sgt      # on the GPU
    python benchmarks/reproduce.py --quick mnist-w4a4-sgt --results /tmp/R.md   # CPU smoke (CI)

Each row: dataset, model, method, bits, SGT, epochs, test accuracy, wall time, images/s, device,
date and the command that produced it. PACT's Table 1 (ResNet-20, CIFAR-10 top-1) is printed
beside the rows as the anchor.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from qsgt_plugin.engine import train
from qsgt_plugin.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
ANCHORS = (
    "Anchor, PACT Table 1 (ResNet-20, CIFAR-10 top-1): "
    "fp32 91.6, 5-bit 91.7, 4-bit 91.3, 3-bit 91.1, 2-bit 89.7"
)
HEADER = (
    "| experiment | dataset | model | method | bits | SGT | epochs | test acc | wall s | images/s "
    "| device | date | command |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
)


def _experiments() -> dict[str, tuple[str, list[str]]]:
    out = {}
    for dataset in ("mnist", "cifar10"):
        for variant in ("fp32", "w4a4", "fp32-sgt", "w4a4-sgt"):
            out[f"{dataset}-{variant}"] = (f"recipes/{dataset}-resnet20-{variant}.yaml", [])
        for bits in (2, 3, 8):
            out[f"{dataset}-w{bits}a{bits}-sgt"] = (
                f"recipes/{dataset}-resnet20-w4a4-sgt.yaml",
                [f"quant.weight_bits={bits}", f"quant.act_bits={bits}"],
            )
    return out


EXPERIMENTS = _experiments()
QUICK = [
    "train.max_steps=3",
    "data.train_subset=256",
    "data.test_subset=200",
    "data.batch_size=32",
    "train.log_every=1",
]


def run(name: str, extra: list[str], quick: bool, results: Path, out_root: Path) -> dict:
    recipe_path, overrides = EXPERIMENTS[name]
    sets = [*overrides, *extra, *(QUICK if quick else []), f"output.dir={out_root / name}"]
    recipe = load_recipe(ROOT / recipe_path, sets)
    started = time.time()
    result = train(recipe, overwrite=True)
    wall = time.time() - started
    records = [
        json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    last_eval = [r for r in records if r["kind"] == "eval"][-1]
    images = result.step * recipe.data.batch_size
    device = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available() and recipe.train.device != "cpu"
        else "CPU"
    )
    quant = recipe.quant
    command = "python benchmarks/reproduce.py " + ("--quick " if quick else "") + name
    command += "".join(f" --set {s}" for s in extra)
    row = {
        "experiment": name + (" (quick smoke run)" if quick else ""),
        "dataset": recipe.data.dataset,
        "model": recipe.model.name,
        "method": quant.method if quant.enabled else "fp32",
        "bits": f"w{quant.weight_bits}a{quant.act_bits}" if quant.enabled else "32",
        "sgt": "yes" if recipe.sgt.enabled else "no",
        "epochs": f"{last_eval['epoch']:.2f}",
        "test_acc": f"{100 * result.test_acc:.2f}%",
        "wall_s": f"{wall:.0f}",
        "images_per_s": f"{images / last_eval['elapsed']:.0f}",
        "device": device,
        "date": dt.date.today().isoformat(),
        "command": f"`{command}`",
    }
    if not results.exists():
        results.write_text("# Results\n\n" + ANCHORS + "\n\n" + HEADER)
    with results.open("a") as f:
        f.write("| " + " | ".join(row.values()) + " |\n")
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("experiments", nargs="*", metavar="NAME")
    parser.add_argument("--list", action="store_true", help="list the experiments")
    parser.add_argument("--quick", action="store_true", help="3 steps on a few images (CI)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra recipe override for every experiment",
    )
    parser.add_argument("--results", type=Path, default=ROOT / "RESULTS.md")
    parser.add_argument("--runs", type=Path, help="where runs go (default: runs/reproduce)")
    args = parser.parse_args(argv)
    if args.list or not args.experiments:
        for name, (recipe, overrides) in EXPERIMENTS.items():
            print(f"{name:20s} {recipe} {' '.join(overrides)}")
        return 0
    unknown = [n for n in args.experiments if n not in EXPERIMENTS]
    if unknown:
        print(f"unknown experiment(s) {', '.join(unknown)}; see --list", file=sys.stderr)
        return 2
    out_root = args.runs or (Path(tempfile.mkdtemp()) if args.quick else ROOT / "runs/reproduce")
    print(ANCHORS)
    for name in args.experiments:
        row = run(name, args.set, args.quick, args.results, out_root)
        print(" | ".join(f"{k}={v}" for k, v in row.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
