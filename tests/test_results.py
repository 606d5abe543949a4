"""Every row of RESULTS.md's tables (MNIST and CIFAR-10) has its weights in results/, and they
re-evaluate to the accuracy the row states, to the image (2 decimals of 10,000 test images);
every quantized one also exports and runs in onnxruntime with the PyTorch model's predictions.

They re-evaluate as training evaluated them, in its memory layout (``Run.evaluation``, what
``qsgt evaluate`` runs): evaluated contiguous instead of channels-last, 4 of the 20 CIFAR-10
rows moved by 1 to 4 images on an AMD EPYC with AVX2 only (2026-12-07), and every one
re-evaluated to the image channels-last, on that machine and on the ones that trained them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from results_table import ResultsTable, Row, shipped_dir

from qsgt_plugin.cli import main
from qsgt_plugin.common.evaluation import evaluate
from qsgt_plugin.runs import load_run

ROOT = Path(__file__).resolve().parents[1]


# CI re-evaluates every run of the study's table as it stood before the pre-registered seeds
# (seeds 0-2 and the single-seed rows) and the first pre-registered seed of each experiment
# (seed 3): each added seed makes the check longer. QSGT_ALL_RESULTS=1 re-evaluates every row
# (README, "Tests").
ALL = os.environ.get("QSGT_ALL_RESULTS") == "1"


def rows() -> list[Row]:
    return ResultsTable(ROOT / "RESULTS.md").rows()


def checked() -> list[Row]:
    """The rows the shipped-weights tests re-evaluate: all of them, or CI's sample."""
    return rows() if ALL else [r for r in rows() if r.seed <= 3]


def shipped(row: Row) -> Path:
    return shipped_dir(row, ROOT / "results")


def test_every_row_ships_its_weights_and_every_shipped_run_has_a_row():
    table = rows()
    for row in table:
        folder = shipped(row)
        assert {p.name for p in folder.iterdir()} >= {"model.pt", "recipe.yaml", "metrics.jsonl"}
        assert (folder / "model.pt").stat().st_size < 2_000_000  # model state only
    listed = {shipped(row) for row in table}
    on_disk = {p.parent for p in (ROOT / "results").glob("*/*/model.pt")}
    assert on_disk == listed


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("QSGT_DATA"), reason="QSGT_DATA not set")
@pytest.mark.parametrize(
    "row",
    # the quantized rows: in the export test below, which evaluates them once for both checks
    [r for r in checked() if r.method == "fp32"],
    ids=lambda r: f"{r.experiment}-s{r.seed}",
)
def test_shipped_float_weights_reach_the_stated_accuracy(row):
    model, loader = load_run(shipped(row)).evaluation()
    accuracy, _ = evaluate(model, loader)
    assert len(loader.labels) == 10000
    assert f"{100 * accuracy:.2f}%" == row.test_acc


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("QSGT_DATA"), reason="QSGT_DATA not set")
@pytest.mark.parametrize(
    "row",
    [r for r in checked() if r.method != "fp32"],
    ids=lambda r: f"{r.experiment}-s{r.seed}",
)
def test_shipped_quantized_weights_export_and_predict_the_same_on_the_test_set(row, tmp_path):
    pytest.importorskip("onnxruntime")
    from qsgt_plugin.quant.export.writer import ort_session

    model, loader = load_run(shipped(row)).evaluation()
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []  # each batch's images and logits
    hook = model.register_forward_hook(
        lambda m, i, o: seen.append((i[0].detach().clone(), o.detach().clone()))
    )
    # the stated accuracy, to the image, as evaluate() (which qsgt evaluate runs) computes it
    accuracy, _ = evaluate(model, loader)
    hook.remove()
    assert f"{100 * accuracy:.2f}%" == row.test_acc
    x = torch.cat([images for images, _ in seen]).float().contiguous()
    expected = torch.cat([logits for _, logits in seen]).float().numpy()
    labels = loader.labels.numpy()
    assert len(labels) == len(x) == 10000
    # qdq on CIFAR-10: its logits are closer together (label smoothing, a harder task), so the
    # same re-quantization moves more images across a class boundary, and more at 3 and 2 bits,
    # where a level is a larger step (RESULTS.md, Deployment: 97.7-97.8% at W4A4, 95.7-96.1%
    # for W3A3 and the mixed model with 2-bit layers; 92.07% for W2A2, whose every activation is
    # one of 4 levels, at the same accuracy: 85.30% in PyTorch, 85.45% in qdq)
    qdq_same, qdq_points = {"mnist": (0.995, 0.0015), "cifar10": (0.97, 0.003)}[row.dataset]
    if row.dataset == "cifar10" and row.bits not in ("w4a4", "w8a8"):
        qdq_same, qdq_points = (0.90, 0.006) if row.bits == "w2a2" else (0.95, 0.006)
    for format, same_top1, points in (("packed", 0.999, 0.0015), ("qdq", qdq_same, qdq_points)):
        out = tmp_path / f"{format}.onnx"
        assert main(["export", str(shipped(row)), "--out", str(out), "--format", format]) == 0
        session = ort_session(out, threads=torch.get_num_threads())  # 1 under xdist
        got = np.concatenate([session.run(None, {"input": b.numpy()})[0] for b in x.split(500)])
        # packed: the model's arithmetic in float; an activation within float rounding of a
        # level boundary may land on the neighbour. qdq: the residual branch re-quantized to
        # 8 bits for the integer sum moves about one activation in a hundred by a level (99.64%
        # to 99.9x% of the images keep their class, RESULTS.md "Deployment").
        assert (got.argmax(1) == expected.argmax(1)).mean() >= same_top1, format
        accuracy = (got.argmax(1) == labels).mean()
        assert abs(accuracy - (expected.argmax(1) == labels).mean()) <= points, format
