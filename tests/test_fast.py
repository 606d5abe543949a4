"""The fast path (device-resident data, channels-last, torch.compile with fallback) and the
benchmark scripts' quick modes."""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from results_table import ResultsTable, processor_name

from qsgt_plugin.recipe import Recipe
from qsgt_plugin.training.data import Loader
from qsgt_plugin.training.loop import train
from qsgt_plugin.training.step import resolve_auto

ROOT = Path(__file__).resolve().parents[1]
needs_data = pytest.mark.skipif(not os.environ.get("QSGT_DATA"), reason="QSGT_DATA not set")


def test_auto_means_on_for_cuda_only():
    assert resolve_auto("auto", torch.device("cuda")) is True
    assert resolve_auto("auto", torch.device("cpu")) is False
    assert resolve_auto(True, torch.device("cpu")) is True
    assert resolve_auto(False, torch.device("cuda")) is False


def test_resident_channels_last_batches_equal_the_plain_ones():
    images = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8)
    labels = torch.arange(50)

    def loader(**fast):
        return Loader(
            images,
            labels,
            16,
            (0.5,) * 3,
            (0.25,) * 3,
            shuffle=True,
            padding=4,
            flip="random",
            generator=torch.Generator().manual_seed(4),
            **fast,
        )

    plain = list(loader())
    fast = list(loader(resident=True, channels_last=True))
    for (x, y), (fx, fy) in zip(plain, fast, strict=True):
        assert torch.equal(x, fx) and torch.equal(y, fy)
        assert fx.is_contiguous(memory_format=torch.channels_last)


def tiny(out: Path, **train_options) -> Recipe:
    """Float ResNet-20 on 8192 real MNIST images: 128 steps, past early-training noise."""
    return Recipe.model_validate(
        {
            "model": {"name": "resnet20", "kwargs": {"in_chans": 1}},
            "quant": {"enabled": False},
            "data": {
                "dataset": "mnist",
                "batch_size": 64,
                "train_subset": 8192,
                "test_subset": 1000,
            },
            "optim": {"lr": 0.05},
            "schedule": {"name": "onecycle"},
            "train": {"epochs": 1, "log_every": 8, **train_options},
            "output": {"dir": str(out)},
        }
    )


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """The plain path (contiguous, eager), which the two tests below compare with."""
    return train(tiny(tmp_path_factory.mktemp("plain"), fast_path=False, compile=False))


@needs_data
@pytest.mark.slow
@pytest.mark.xdist_group("fast")  # with the test below: one worker trains `plain` once
def test_fast_path_trains_like_the_plain_path(plain, tmp_path):
    fast = train(tiny(tmp_path / "fast", fast_path=True, compile=False))
    assert plain.step == fast.step == 128
    # Channels-last only reorders floating-point sums: the same accuracy within noise.
    assert abs(plain.test_acc - fast.test_acc) < 0.03, (plain.test_acc, fast.test_acc)


@needs_data
@pytest.mark.slow
@pytest.mark.xdist_group("fast")
def test_torch_compile_on_the_cpu_trains_like_eager(plain, tmp_path):
    eager = plain
    compiled = train(tiny(tmp_path / "compiled", compile=True))
    records = (compiled.run_dir / "metrics.jsonl").read_text().splitlines()
    assert json.loads(records[-1])["compiled"] is True
    assert abs(eager.test_acc - compiled.test_acc) < 0.03, (eager.test_acc, compiled.test_acc)


@needs_data
@pytest.mark.slow
def test_a_model_that_fails_to_compile_trains_eagerly(tmp_path, monkeypatch, caplog):
    def broken_compile(model, *args, **kwargs):
        def fail(*a, **k):
            raise RuntimeError("inductor could not lower this graph")

        return fail

    monkeypatch.setattr(torch, "compile", broken_compile)
    recipe = tiny(tmp_path / "run", compile=True)
    recipe.data.train_subset, recipe.train.max_steps = 256, 3
    with caplog.at_level(logging.INFO):
        result = train(recipe)
    assert result.step == 3
    assert "training path: compiled" in caplog.text
    assert "torch.compile failed (RuntimeError: inductor could not lower this graph)" in caplog.text
    evals = [
        json.loads(line)
        for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()
        if '"eval"' in line
    ]
    assert evals[-1]["compiled"] is False


@pytest.mark.slow
@pytest.mark.parametrize(
    "script",
    ["benchmarks/step_time.py", "benchmarks/throughput.py", "benchmarks/deploy.py"],
    ids=["step_time", "throughput", "deploy"],
)
def test_benchmarks_run_in_quick_mode(script):
    out = subprocess.run(
        [sys.executable, str(ROOT / script), "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    ).stdout
    assert "w4a4" in out and "fp32" in out
    assert "failed" not in out


@needs_data
@pytest.mark.slow
def test_reproduce_quick_appends_a_row(tmp_path):
    results = tmp_path / "RESULTS.md"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks/reproduce.py"),
            "--quick",
            "mnist-w4a4-sgt",
            "--results",
            str(results),
            "--runs",
            str(tmp_path / "runs"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    assert "PACT Table 1" in results.read_text()
    table = ResultsTable(results)
    assert table.rows() == []  # a smoke run is never a measurement
    (row,) = table.rows(quick=True)
    assert row.experiment == "mnist-w4a4-sgt (quick smoke run)"
    assert (row.dataset, row.model, row.method, row.bits, row.sgt, row.seed) == (
        "mnist", "resnet20", "pact", "w4a4", "yes", 0,
    )  # fmt: skip
    assert row.test_acc.endswith("%") and row.device.startswith(f"CPU, {os.cpu_count()} cores, ")
    assert "python benchmarks/reproduce.py --quick mnist-w4a4-sgt --seed 0" in row.command


def test_a_row_names_the_processor_and_its_training_path():
    """Virtual machines of '2 cores' differ by up to twice in wall time, and two sold as "AMD
    EPYC" differed in instruction set (AVX512-BF16 on one, AVX2 only on the other): the row
    says which."""
    amd = (
        "processor\t: 0\nmodel name\t: AMD EPYC 9R14 96-Core Processor\n"
        "flags\t\t: fpu avx512f avx512_bf16 avx512_vnni\n"
    )
    intel = (
        "model name\t: Intel(R) Xeon(R) Processor\n"
        "flags\t\t: avx512f avx512_bf16 amx_bf16 amx_int8\n"
    )
    assert processor_name(amd + amd) == "AMD EPYC 9R14 96-Core Processor (AVX512-BF16)"
    assert processor_name(intel) == "Intel Xeon Processor (AMX-BF16)"
    assert processor_name("model name\t: AMD EPYC\nflags\t: sse2 avx2 fma\n") == "AMD EPYC (AVX2)"
    assert processor_name("model name\t: Old CPU\nflags\t: sse2\n") == "Old CPU"


@needs_data
@pytest.mark.slow
@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_the_allocator_benchmark_shows_fewer_faults_and_the_same_accuracy():
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/allocator.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,  # exit 1 where the two settings' accuracies differ
    ).stdout
    rows = {
        line.split("|")[1].strip(): line.split("|")[2:-1]
        for line in out.splitlines()
        if line.startswith("| glibc") or line.startswith("| keep")
    }
    faults = {name: int(cells[3].strip().replace(",", "")) for name, cells in rows.items()}
    assert faults["keep_freed_memory()"] < faults["glibc default"] / 4, faults
    assert rows["glibc default"][-1] == rows["keep_freed_memory()"][-1]  # the accuracy
