"""Run the study's named experiments, append their rows to RESULTS.md, ship the weights.

    python benchmarks/reproduce.py --list
    python benchmarks/reproduce.py mnist-w4a4-sgt --seed 1      # one row; skipped if measured
    python benchmarks/reproduce.py --table mnist                 # every MNIST row not yet measured
    python benchmarks/reproduce.py --table cifar10-cpu           # CIFAR-10 parents, fine-tunings
    python benchmarks/reproduce.py --summary                     # rewrite the mean +- std table
    python benchmarks/reproduce.py --quick mnist-w4a4-sgt --results /tmp/R.md   # CPU smoke (CI)

Each row: dataset, model, method, bits, SGT, seed, epochs, test accuracy (of the final
weights, on the whole test split), wall time, images/s, device, date and the command that
produced it. A row already in RESULTS.md (same experiment and seed) is skipped unless --force;
an interrupted run continues (``--resume``) where it stopped. The final weights go to
``results/DATASET/EXPERIMENT-sSEED/`` (``model.pt`` with the model state only, ``recipe.yaml``,
``metrics.jsonl``), which ``qsgt evaluate``, ``qsgt report`` and ``qsgt export`` read.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from results_table import (
    ANCHORS,
    QUICK_SUFFIX,
    ResultsTable,
    Row,
    processor_name,
    ship,
    shipped_dir,
)

from qsgt_plugin.common.memory import keep_freed_memory
from qsgt_plugin.recipe import load_recipe
from qsgt_plugin.run_dir import read_metrics
from qsgt_plugin.training.loop import train

ROOT = Path(__file__).resolve().parents[1]
RECIPES = "qsgt_plugin/recipes"  # the study's recipes, shipped with the package


VARIANTS = ("w4a4-sgt", "fp32-sgt", "w4a4", "fp32")
# What the seeds of the study's table ran, pinned so that a new seed pools with them on any
# machine (`auto` resolves by the processor): the MNIST seeds predate train.precision and
# train.channels_last and ran float32, contiguous; the CIFAR-10 CPU seeds recorded bf16
# autocast and channels-last.
SEED_SETTINGS = {
    "mnist": ["train.precision=fp32", "train.channels_last=false"],
    "cifar10-cpu": ["train.precision=bf16", "train.channels_last=true"],
}


def _experiments() -> dict[str, tuple[str, list[str]]]:
    out = {}
    for dataset in ("mnist", "cifar10"):
        pins = SEED_SETTINGS["mnist"] if dataset == "mnist" else []
        for variant in VARIANTS:
            out[f"{dataset}-{variant}"] = (
                f"{RECIPES}/{dataset}-resnet20-{variant}.yaml",
                pins,
            )
        for bits in (2, 3, 8):
            out[f"{dataset}-w{bits}a{bits}-sgt"] = (
                f"{RECIPES}/{dataset}-resnet20-w4a4-sgt.yaml",
                [f"quant.weight_bits={bits}", f"quant.act_bits={bits}"],
            )
    # The W4A4 + SGT recipe at the training default since 2026-12-02 (bf16 autocast where the
    # device has it, channels-last), beside the float32 rows above it (recorded before that
    # default existed, their recipes hold no train.precision).
    out["mnist-w4a4-sgt-bf16"] = (
        f"{RECIPES}/mnist-resnet20-w4a4-sgt.yaml",
        ["train.precision=bf16"],
    )
    # CIFAR-10 on the CPU: a float parent per seed, fine-tunings from the parent of the same
    # seed ("{seed}" is filled in), PACT + SGT at other widths from the seed-0 parent, and W4A4
    # + SGT from scratch for as many epochs as the parent and a fine-tuning together.
    parent = f"{RECIPES}/cifar10-resnet20-fp32-cpu.yaml"
    pins = SEED_SETTINGS["cifar10-cpu"]
    out["cifar10-fp32-cpu"] = (parent, pins)
    init = "model.init_from=results/cifar10/cifar10-fp32-cpu-s{seed}"
    # fp32-ft is fp32-sgt-ft's control: the same epochs from the same parent, without SGT.
    for variant in VARIANTS:
        recipe = f"{RECIPES}/finetune/cifar10-resnet20-{variant}-finetune.yaml"
        out[f"cifar10-{variant}-ft"] = (recipe, [init, *pins])
    for bits in (2, 3, 8):
        out[f"cifar10-w{bits}a{bits}-sgt-ft"] = (
            f"{RECIPES}/finetune/cifar10-resnet20-w4a4-sgt-finetune.yaml",
            [
                "model.init_from=results/cifar10/cifar10-fp32-cpu-s0",
                f"quant.weight_bits={bits}",
                f"quant.act_bits={bits}",
            ],
        )
    out["cifar10-w4a4-sgt-scratch"] = (
        parent,
        [
            "quant.enabled=true",
            "quant.alpha_init=calibrate",
            "sgt.enabled=true",
            "sgt.mask_fraction=0.1",
            "train.epochs=58",
        ],
    )
    # Fine-tunings of the CIFAR-10 W4A4 + SGT seed-0 fine-tuning, as for MNIST below: the
    # recipe `qsgt mixed-precision` wrote at uniform W3A3's size, and uniform W3A3 itself.
    for name in ("mixed-113kb", "w3a3-sgt"):
        recipe = f"{RECIPES}/finetune/cifar10-resnet20-{name}-from-w4a4.yaml"
        out[f"cifar10-{name}-from-w4a4"] = (recipe, [])
    # Fine-tunings of the MNIST W4A4 + SGT seed-0 run: the mixed-precision recipe that
    # `qsgt mixed-precision` wrote at uniform W3A3's size, and uniform W3A3 itself.
    for name, recipe in (
        ("mnist-mixed-112kb-ft", "mnist-resnet20-mixed-112kb"),
        ("mnist-w3a3-sgt-ft", "mnist-resnet20-w3a3-sgt-finetune"),
    ):
        out[name] = (f"{RECIPES}/finetune/{recipe}.yaml", [])
    return out


EXPERIMENTS = _experiments()
# The study's table: every variant over three seeds, the other bit widths with seed 0; seed by
# seed, so that an interrupted table has whole seeds.
TABLE = [(f"{{d}}-{v}", seed) for seed in (0, 1, 2) for v in VARIANTS] + [
    (f"{{d}}-w{b}a{b}-sgt", 0) for b in (2, 3, 8)
]
# CIFAR-10 on the CPU, in the order that gives whole seeds first: each seed's float parent, then
# its fine-tunings; then the other widths from the seed-0 parent and the from-scratch run.
CPU_TABLE = (
    [
        (name, seed)
        for seed in (0, 1, 2)
        for name in (
            "cifar10-fp32-cpu",
            "cifar10-w4a4-sgt-ft",
            "cifar10-w4a4-ft",
            "cifar10-fp32-sgt-ft",
            "cifar10-fp32-ft",
        )
    ]
    + [(f"cifar10-w{b}a{b}-sgt-ft", 0) for b in (2, 3, 8)]
    + [("cifar10-w4a4-sgt-scratch", 0)]
)
# The pre-registered replication (reports/preregistration.md), one run at a time in this order:
# MNIST's four variants for seeds 3-8 (9 seeds a group), then CIFAR-10's parent and its four
# fine-tunings for seeds 3 and 4 (5 seeds a group). Whole seeds first, so a stop leaves whole
# seeds.
PREREGISTERED = [(f"mnist-{v}", seed) for seed in range(3, 9) for v in VARIANTS] + [
    (name, seed)
    for seed in (3, 4)
    for name in ("cifar10-fp32-cpu", *(f"cifar10-{v}-ft" for v in VARIANTS))
]
QUICK = [
    "train.max_steps=3",
    "train.epochs=1",
    "data.train_subset=256",
    "data.test_subset=200",
    "data.batch_size=32",
    "train.log_every=1",
    "quant.calibration_images=64",
]


def device_name(recipe) -> str:
    if torch.cuda.is_available() and recipe.train.device != "cpu":
        return torch.cuda.get_device_name()
    return f"CPU, {os.cpu_count()} cores, {processor_name()}"


def run(name: str, seed: int, extra: list[str], quick: bool, results: Path, out_root: Path):
    recipe_path, overrides = EXPERIMENTS[name]
    run_dir = out_root / f"{name}-s{seed}"
    overrides = [o.format(seed=seed) for o in overrides]
    sets = [*overrides, f"train.seed={seed}", *extra, *(QUICK if quick else [])]
    recipe = load_recipe(ROOT / recipe_path, [*sets, f"output.dir={run_dir}"])
    resume = (run_dir / "last.pt").exists() and not quick
    started = time.time()
    result = train(recipe, resume=resume, overwrite=not resume)
    wall = time.time() - started
    final = [r for r in read_metrics(run_dir) if r["kind"] == "eval"][-1]
    quant = recipe.quant
    command = f"python benchmarks/reproduce.py {'--quick ' if quick else ''}{name} --seed {seed}"
    command += "".join(f" --set {s}" for s in extra)
    row = Row(
        experiment=name + (QUICK_SUFFIX if quick else ""),
        dataset=recipe.data.dataset,
        model=recipe.model.name,
        method=quant.method if quant.enabled else "fp32",
        bits=quant.label if quant.enabled else "32",
        sgt="yes" if recipe.sgt.enabled else "no",
        seed=seed,
        epochs=f"{final['epoch']:.2f}",
        test_acc=f"{100 * result.test_acc:.2f}%",
        wall_s=f"{final['elapsed']:.0f}" if resume else f"{wall:.0f}",
        images_s=f"{result.step * recipe.data.batch_size / final['elapsed']:.0f}",
        device=device_name(recipe),
        date=dt.date.today().isoformat(),
        command=f"`{command}`",
    )
    ResultsTable(results).add(row)
    if not quick:
        ship(run_dir, shipped_dir(row, ROOT / "results"))
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("experiments", nargs="*", metavar="NAME")
    parser.add_argument("--seed", type=int, default=0, help="train.seed of the named runs (0)")
    parser.add_argument(
        "--table",
        choices=["mnist", "cifar10", "cifar10-cpu", "preregistered"],
        help="every row of a table (cifar10: the papers' GPU schedule; cifar10-cpu: a float "
        "parent per seed and fine-tunings from it; preregistered: the replication's new seeds)",
    )
    parser.add_argument("--list", action="store_true", help="list the experiments")
    parser.add_argument("--quick", action="store_true", help="3 steps on a few images (CI)")
    parser.add_argument("--force", action="store_true", help="rerun rows already measured")
    parser.add_argument("--summary", action="store_true", help="rewrite the summary table")
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
    keep_freed_memory()  # as `qsgt train` does: evaluations reuse freed memory
    if args.table == "cifar10-cpu":
        jobs = list(CPU_TABLE)
    elif args.table == "preregistered":
        jobs = list(PREREGISTERED)
    else:
        jobs = [(n.format(d=args.table), s) for n, s in TABLE] if args.table else []
    jobs += [(name, args.seed) for name in args.experiments]
    if args.list or not (jobs or args.summary):
        for name, (recipe, overrides) in EXPERIMENTS.items():
            print(f"{name:20s} {recipe} {' '.join(overrides)}")
        return 0
    unknown = [n for n, _ in jobs if n not in EXPERIMENTS]
    if unknown:
        print(f"unknown experiment(s) {', '.join(unknown)}; see --list", file=sys.stderr)
        return 2
    out_root = args.runs or (Path(tempfile.mkdtemp()) if args.quick else ROOT / "runs/reproduce")
    done = set() if (args.force or args.quick) else ResultsTable(args.results).measured()
    print(ANCHORS)
    for name, seed in jobs:
        if (name, seed) in done:
            print(f"{name} seed {seed}: already in {args.results}; skipped (--force reruns it)")
            continue
        row = run(name, seed, args.set, args.quick, args.results, out_root)
        print(row.line(), flush=True)
    if args.summary:
        ResultsTable(args.results).write_summary()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
