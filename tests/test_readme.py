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


def test_quick_start_runs():
    quick_start = readme_code("python")[0]
    exec(compile(quick_start, "README.md", "exec"), {})
