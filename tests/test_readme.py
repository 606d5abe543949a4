"""README.md stays true: its test command is the one CI runs, its quick start runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_code(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_ci_runs_the_readme_test_command():
    commands = [
        line.split("#")[0].strip() for block in readme_code("bash") for line in block.splitlines()
    ]
    readme_cmd = next(c for c in commands if c.startswith("pytest"))
    ci_lines = [line.strip() for line in (ROOT / ".ci/run").read_text().splitlines()]
    assert readme_cmd in ci_lines
    assert "not gpu" in readme_cmd and "slow" not in readme_cmd


def test_python_examples_run():
    namespace: dict = {}
    for block in readme_code("python"):
        if "my_package" in block:  # the third-party plugin example
            continue
        exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["handle"].sgt.last["kl"] >= 0
