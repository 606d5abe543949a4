"""The four analysis commands on short real MNIST runs trained inside the test session."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from qsgt_plugin.attribution import SuiteResult
from qsgt_plugin.cli import main
from qsgt_plugin.common.evaluation import evaluate
from qsgt_plugin.recipe import Recipe
from qsgt_plugin.runs import load_run
from qsgt_plugin.training.loop import train

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.environ.get("QSGT_DATA"), reason="QSGT_DATA not set"),
    pytest.mark.xdist_group("report"),  # one worker trains the shared runs once (`-n 2`)
]

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="session")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A float ResNet-20 with seeds 0 and 1 and a W4A4 one, 150 steps each on real MNIST."""
    root = tmp_path_factory.mktemp("runs")
    paths = {}
    for name, quant, seed in (("fp32", False, 0), ("fp32-s1", False, 1), ("w4a4", True, 0)):
        recipe = Recipe.model_validate(
            {
                "model": {"name": "resnet20", "kwargs": {"in_chans": 1}},
                "quant": {"enabled": quant},
                "data": {"dataset": "mnist", "batch_size": 64, "test_subset": 600},
                "optim": {"lr": 0.05},
                "schedule": {"name": "onecycle"},
                "train": {"max_steps": 150, "log_every": 25, "seed": seed},
                "output": {"dir": str(root / f"mnist-{name}")},
            }
        )
        paths[name] = train(recipe).run_dir
    return paths


def test_trained_runs_beat_chance(runs):
    for path in runs.values():
        run = load_run(path)
        assert evaluate(run.model, run.test_loader())[0] > 0.8


def test_compare_writes_the_grid_and_numbers(runs, tmp_path, capsys):
    out = tmp_path / "attr.png"
    assert (
        main(["compare", str(runs["fp32"]), str(runs["w4a4"]), "--images", "6", "--out", str(out)])
        == 0
    )
    assert out.read_bytes()[:8] == PNG and out.stat().st_size > 10_000
    numbers = json.loads(out.with_suffix(".json").read_text())
    assert set(numbers["views"]) == {
        "mnist-fp32 (fp32)",
        "mnist-w4a4 (w4a4)",
        "mnist-w4a4 (float view)",
    }
    assert len(numbers["pairs"]) == 3
    for pair in numbers["pairs"]:
        assert -1 <= pair["spearman"] <= 1 and 0 <= pair["top10_overlap"] <= 1
    assert "Spearman" in capsys.readouterr().out


def test_masking_curve_starts_at_clean_accuracy_and_random_stays_close(runs, tmp_path):
    out = tmp_path / "curve.png"
    assert main(["masking-curve", str(runs["fp32"]), "--images", "500", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG
    numbers = json.loads(out.with_suffix(".json").read_text())
    (curve,) = numbers["curves"].values()
    run = load_run(runs["fp32"])
    clean = evaluate(run.model, run.test_loader(limit=500))[0]
    assert curve["saliency"]["0.0"] == clean == curve["random"]["0.0"]
    # Replacing 10% of the pixels at random costs a trained model little (binomial noise on
    # 500 images is about 1.5 points); removing the salient ones first costs more.
    assert abs(curve["random"]["0.1"] - clean) < 0.05
    assert curve["saliency"]["0.5"] < curve["random"]["0.5"]


def test_alpha_plot_of_a_quantized_run(runs, capsys):
    assert main(["alpha-plot", str(runs["w4a4"])]) == 0
    path = Path(re.search(r"figure: (\S+)", capsys.readouterr().out).group(1))
    assert path == runs["w4a4"] / "alpha.png" and path.read_bytes()[:8] == PNG
    with pytest.raises(SystemExit):  # one run only
        main(["alpha-plot", str(runs["w4a4"]), str(runs["fp32"])])


def test_report_embeds_every_figure_and_saves_every_number(runs, tmp_path, capsys):
    out = tmp_path / "report"
    paths = [str(runs[name]) for name in ("fp32", "fp32-s1", "w4a4")]
    args = ["report", *paths, "--out", str(out), "--images", "4", "--curve-images", "100"]
    assert main([*args, "--mprt-images", "32"]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"mnist-w4a4 +[\d. ]+$", printed, re.M)  # seconds per metric
    text = (out / "report.md").read_text()
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert sorted(figures) == sorted(
        [
            "attributions-mnist.png",
            "masking-curve-mnist.png",
            "deletion-insertion-mnist.png",
            "road-mnist.png",
            "mprt-mnist.png",
            "alpha-mnist-w4a4.png",
        ]
    )
    for figure in figures:
        assert (out / figure).read_bytes()[:8] == PNG
    metrics = json.loads((out / "metrics.json").read_text())
    rows = {row["run"]: row for row in metrics["accuracy"]}
    assert set(rows) == {"mnist-fp32", "mnist-fp32-s1", "mnist-w4a4", "mnist-w4a4 (float view)"}
    assert rows["mnist-w4a4"]["size_bytes"] < rows["mnist-fp32"]["size_bytes"] / 6
    assert rows["mnist-fp32"]["test_images"] == 600
    assert "| mnist-w4a4 | resnet20 | mnist | w4a4 | no |" in text
    # Two seeds of fp32: one group, with a spread and a 95% interval
    groups = metrics["datasets"]["mnist"]["groups"]
    assert groups["fp32"]["seeds"] == [0, 1] and groups["w4a4"]["seeds"] == [0]
    assert groups["fp32"]["test_acc"]["n"] == 2
    low, high = groups["fp32"]["deletion_auc"]["ci95"]
    assert low <= groups["fp32"]["deletion_auc"]["mean"] <= high
    assert re.search(r"\| fp32 \| 2 \| [\d.]+ ± [\d.]+ \[[\d.-]+, [\d.-]+\] \|", text)
    for name, seconds in metrics["runs"]["mnist-w4a4"]["suite"]["seconds"].items():
        assert seconds > 0, name
    suite = SuiteResult.from_json(metrics["runs"]["mnist-w4a4"]["suite"])
    assert suite.images == 100 and len(suite.per_image["deletion_auc"]) == 100
    # every file the report names is relative to it: the folder can move
    assert metrics["datasets"]["mnist"]["figures"]["masking"] == "masking-curve-mnist.png"
    assert metrics["datasets"]["mnist"]["comparison"]["figure"] == "attributions-mnist.png"
    assert str(tmp_path) not in (out / "metrics.json").read_text() + text


def test_not_a_run_is_a_user_error(tmp_path, capsys):
    assert main(["compare", str(tmp_path)]) == 2
    assert "is not a run directory" in capsys.readouterr().err


def test_the_suite_timing_benchmark_runs(runs):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, str(root / "benchmarks/suite_time.py"), str(runs["w4a4"]), "--quick"],
        capture_output=True, text=True, timeout=600, check=True,
    ).stdout  # fmt: skip
    assert "32 mnist test images" in out
    for metric in ("deletion_insertion", "road", "mprt", "random_logit", "total"):
        assert re.search(rf"^{metric} +\d+\.\d$", out, re.M) or metric == "total", metric
    assert re.search(r"^total +\d+\.\d +\(target <= 300 s", out, re.M)


@pytest.fixture(scope="session")
def cifar_runs(tmp_path_factory) -> dict[str, Path]:
    """fp32 and fp32 + SGT ResNet-20s on real CIFAR-10, seeds 0 and 1, 40 steps each."""
    root = tmp_path_factory.mktemp("cifar")
    paths = {}
    for sgt in (False, True):
        for seed in (0, 1):
            name = f"fp32{'-sgt' if sgt else ''}-s{seed}"
            recipe = Recipe.model_validate(
                {
                    "model": {"name": "resnet20"},
                    "quant": {"enabled": False},
                    "sgt": {"enabled": sgt, "mask_fraction": 0.1},
                    "data": {"dataset": "cifar10", "batch_size": 64, "test_subset": 300},
                    "train": {"max_steps": 40, "log_every": 20, "seed": seed},
                    "output": {"dir": str(root / name)},
                }
            )
            paths[name] = train(recipe).run_dir
    return paths


def test_the_report_on_three_channel_images_tests_pairs_corrected_over_seeds_and_images(
    cifar_runs, tmp_path
):
    out = tmp_path / "report"
    paths = [str(p) for p in cifar_runs.values()]
    args = ["report", *paths, "--out", str(out), "--images", "3", "--curve-images", "40"]
    assert main([*args, "--offset", "200", "--mprt-images", "8"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_images"] == {"offset": 200, "count": 40}
    suite = metrics["runs"]["fp32-s0"]["suite"]
    assert suite["images"] == 40
    per_image, scalars = suite["per_image"], metrics["runs"]["fp32-s0"]["scalars"]
    for name in ("masking_auc", "deletion_auc", "insertion_auc", "road_morf_auc", "gini"):
        assert len(per_image[name]) == 40
        assert sum(per_image[name]) / 40 == pytest.approx(scalars[name], abs=1e-4), name
    assert len(per_image["mprt_mean"]) == 8
    assert "per_image" not in suite["mprt"]  # the per-layer matrix is not kept
    pairs = metrics["datasets"]["cifar10"]["pairs"]
    assert len(pairs) == 9  # one pair x the paired areas: one family
    from qsgt_plugin.report.statistics import holm

    assert [p["p_holm"] for p in pairs] == pytest.approx(holm([p["p"] for p in pairs]))
    for p in pairs:
        assert p["seeds"] == [2, 2] and p["images"] == (
            [8, 8] if "mprt" in p["metric"] else [40, 40]
        )
        low, high = p["bootstrap_ci95"]
        assert low <= high and p["p_holm"] >= p["p"]
        assert p["finding"] == (p["beyond_noise"] and p["holds_over_images"])
    text = (out / "report.md").read_text()
    assert "indices 200..239" in text and "p, Holm" in text and "9 tests, one family" in text
    assert (out / "attributions-cifar10.png").read_bytes()[:8] == PNG


def test_a_copied_run_is_not_a_second_seed(cifar_runs, tmp_path, capsys):
    import shutil

    copy = tmp_path / "copy-of-s0"
    shutil.copytree(cifar_runs["fp32-s0"], copy)
    paths = [str(cifar_runs["fp32-s0"]), str(copy), str(cifar_runs["fp32-sgt-s0"])]
    assert main(["report", *paths, "--out", str(tmp_path / "r"), "--curve-images", "8"]) == 2
    err = capsys.readouterr().err
    assert "same recipe with the same seed (0)" in err and "copy-of-s0" in err
    assert not (tmp_path / "r").exists()


def test_an_offset_past_the_test_split_is_refused(cifar_runs, tmp_path, capsys):
    # the split is the dataset's: the run's data.test_subset (300) only said what training
    # evaluated
    args = ["report", str(cifar_runs["fp32-s0"]), "--out", str(tmp_path / "r")]
    assert main([*args, "--offset", "10000"]) == 2
    err = capsys.readouterr().err
    assert "the cifar10 test split has 10000 images; use an offset below 10000" in err


def test_runs_trained_with_different_test_subsets_are_analysed_on_one_image_set(
    runs, tmp_path, capsys
):
    from qsgt_plugin.run_dir.checkpoint import load_checkpoint, save_checkpoint

    other = tmp_path / "mnist-fp32-s1-subset80"
    other.mkdir()
    payload = load_checkpoint(runs["fp32-s1"] / "last.pt")
    payload["recipe"]["data"]["test_subset"] = 80  # runs["fp32"] evaluated 600
    save_checkpoint(payload, other / "last.pt")
    out = tmp_path / "r"
    args = ["report", str(runs["fp32"]), str(other), "--out", str(out), "--curve-images", "100"]
    assert main([*args, "--offset", "500", "--images", "4", "--mprt-images", "8"]) == 0
    numbers = json.loads((out / "metrics.json").read_text())
    assert numbers["test_images"] == {"offset": 500, "count": 100}
    assert {r["suite"]["images"] for r in numbers["runs"].values()} == {100}
    assert "100 test images, indices 500..599" in (out / "report.md").read_text()


def test_a_report_replaces_an_earlier_one_and_leaves_other_files(cifar_runs, tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    (out / "report.md").write_text("# old\n\n![alpha](alpha-w4a4-SGT.png)\n")
    (out / "alpha-w4a4-SGT.png").write_bytes(PNG)
    (out / "notes.txt").write_text("mine")
    paths = [str(cifar_runs["fp32-s0"]), str(cifar_runs["fp32-s1"])]
    args = ["report", *paths, "--out", str(out), "--images", "2", "--curve-images", "8"]
    assert main([*args, "--mprt-images", "4"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert not (out / "alpha-w4a4-SGT.png").exists()  # the earlier report's figure
    assert (out / "notes.txt").read_text() == "mine"  # not a report's: kept
    assert sorted(p.name for p in out.iterdir()) == sorted([*metrics["files"], "notes.txt"])
