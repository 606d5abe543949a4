"""The README's main command, as a newcomer runs it: W4A4 PACT + SGT ResNet-20 on real MNIST
through the installed ``qsgt`` command, from a folder of their own."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def qsgt(*args: str, cwd: Path) -> str:
    command = shutil.which("qsgt", path=str(Path(sys.executable).parent))
    assert command, "the qsgt console script is not installed beside this Python"
    done = subprocess.run([command, *args], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("QSGT_DATA"), reason="QSGT_DATA not set")
def test_quickstart_prints_the_accuracy_readme_shows(tmp_path):
    readme = (ROOT / "README.md").read_text()
    line = re.compile(
        r"test accuracy (\d+\.\d+)% \(best \d+\.\d+%\) after 300 steps; "
        r"run written to runs/quickstart"
    )
    said = line.search(readme)
    assert said, "README.md no longer shows the quick start's output line"
    assert "qsgt train quickstart\n" in readme  # the packaged recipe by name, from anywhere
    printed = qsgt("train", "quickstart", cwd=tmp_path)
    got = line.search(printed)
    assert got, printed[-2000:]
    # bf16 where the processor has a bf16 path, float32 elsewhere ("auto"): 97.91% and 97.89%
    assert abs(float(got.group(1)) - float(said.group(1))) <= 0.5, (got.group(0), said.group(0))
    # README's next command: the checkpoint evaluates to the same accuracy.
    assert (tmp_path / "runs/quickstart/best.pt").is_file()
    evaluated = qsgt("evaluate", "runs/quickstart/best.pt", cwd=tmp_path)
    assert f"test accuracy {got.group(1)}%" in evaluated
