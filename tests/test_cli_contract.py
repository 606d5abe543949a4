"""The CLI's contract under generated bad input (hypothesis): every ``qsgt train`` exits 0 or
2, never with an internal error, and touches nothing but its own run's files.

Each example starts from a tiny valid recipe on the tests' synthetic dataset (one step), then
breaks it: random values for random keys, random ``--set`` overrides, ``--resume`` and
``--overwrite``, and an output folder that is fresh, the working folder full of a user's files,
a folder under a file, or a name too long. A user's files sit beside and inside the output.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from qsgt_plugin.cli import main

BASE = {
    "model": {"name": "resnet20"},
    "quant": {"enabled": False},
    "data": {"dataset": "synthetic", "batch_size": 16, "train_subset": 32, "test_subset": 16},
    "train": {"max_steps": 1, "log_every": 1},
}
KEYS = [
    "model.name", "model.kwargs", "model.init_from", "quant.enabled", "quant.weight_bits",
    "quant.overrides", "quant.alpha_init", "sgt.enabled", "sgt.mask_fraction",
    "sgt.attribution", "sgt.attribution_kwargs", "data.dataset", "data.batch_size",
    "data.train_subset", "data.root", "optim.lr", "optim.name", "schedule.name",
    "schedule.milestones", "train.seed", "train.epochs", "train.precision", "train.device",
    "output.dir", "nonsense.key",
]  # fmt: skip
values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 300),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.text(max_size=10),
    st.sampled_from(["resnet20", "pact", "Saliency", "IntegratedGradients", "bf16", "cpu"]),
    st.dictionaries(st.text(max_size=6), st.integers(-3, 3), max_size=2),
    st.lists(st.floats(-1, 2), max_size=3),
)
OUTPUTS = ["fresh", "working folder", "under a file", "name too long", "occupied"]


def fingerprint(root: Path, skip: Path | None) -> dict[str, str]:
    """Every file under ``root`` but those of the run folder ``skip``, by content."""
    out = {}
    for path in root.rglob("*"):
        if path.is_file() and not (skip is not None and skip in path.parents):
            out[str(path.relative_to(root))] = hashlib.md5(path.read_bytes()).hexdigest()
    return out


@settings(
    max_examples=int(os.environ.get("QSGT_CONTRACT_EXAMPLES", 30)),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    changes=st.one_of(st.just({}), st.dictionaries(st.sampled_from(KEYS), values, max_size=3)),
    sets=st.one_of(st.just([]), st.lists(st.tuples(st.sampled_from(KEYS), values), max_size=2)),
    flags=st.lists(st.sampled_from(["--resume", "--overwrite"]), max_size=2, unique=True),
    output=st.sampled_from(OUTPUTS),
)
def test_train_exits_0_or_2_and_touches_only_its_run(
    synthetic_dataset, tmp_path_factory, capsys, changes, sets, flags, output
):
    home = tmp_path_factory.mktemp("user")
    (home / "thesis.tex").write_text("chapter 1")
    (home / "a-file").write_text("not a folder")
    occupied = home / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    run_dir = {
        "fresh": home / "runs" / "r",
        "working folder": home,
        "under a file": home / "a-file" / "r",
        "name too long": home / ("n" * 300),
        "occupied": occupied,
    }[output]
    document = yaml.safe_load(yaml.safe_dump(BASE))
    document["output"] = {"dir": str(run_dir)}
    for key, value in changes.items():
        section, leaf = key.split(".")
        document.setdefault(section, {})
        if isinstance(document[section], dict):
            document[section][leaf] = value
    recipe = home / "experiment.yaml"
    recipe.write_text(yaml.safe_dump(document))
    before = fingerprint(home, None)
    argv = ["train", str(recipe), *flags]
    for key, value in sets:
        argv += ["--set", f"{key}={yaml.safe_dump(value, default_flow_style=True).strip()}"]
    cwd = os.getcwd()
    os.chdir(home)
    try:
        status = main(argv)
    finally:
        os.chdir(cwd)
    err = capsys.readouterr().err
    event(f"exit {status}")  # --hypothesis-show-statistics: how many examples trained
    assert status in (0, 2), err
    assert "internal error" not in err and "Traceback" not in err, err
    if status == 2:
        assert len([line for line in err.splitlines() if line.strip()]) == 1, err
    # nothing outside the run's own files changed: a run written into a folder writes only
    # recipe.yaml, metrics.jsonl, last.pt, best.pt
    after = fingerprint(home, None)
    run_files = {"recipe.yaml", "metrics.jsonl", "last.pt", "best.pt"}
    changed = {name for name in before.keys() | after.keys() if before.get(name) != after.get(name)}
    outputs = [document["output"]["dir"], *(v for k, v in sets if k == "output.dir")]
    allowed = set()
    if status == 0:
        for folder in outputs:
            folder = (home / str(folder)).resolve()  # a relative one is under the working folder
            if home.resolve() in (folder, *folder.parents):
                allowed |= {str((folder / f).relative_to(home.resolve())) for f in run_files}
    assert changed <= allowed, (changed, err)
