"""The README's main command: W4A4 PACT + SGT ResNet-20 on real MNIST through `qsgt train`."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from qsgt_plugin.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("QSGT_DATA"), reason="QSGT_DATA not set")
def test_quickstart_trains_a_w4a4_sgt_resnet20_above_97_percent(tmp_path, capsys):
    out = tmp_path / "quickstart"
    recipe = ROOT / "recipes/quickstart.yaml"
    assert main(["train", str(recipe), "--set", f"output.dir={out}"]) == 0
    printed = capsys.readouterr().out
    match = re.search(r"test accuracy (\d+\.\d+)% .* after 300 steps; run written to", printed)
    assert match, printed
    assert float(match.group(1)) >= 97.0
    # The checkpoint evaluates to the same accuracy.
    assert main(["evaluate", str(out / "last.pt")]) == 0
    assert f"test accuracy {match.group(1)}%" in capsys.readouterr().out
