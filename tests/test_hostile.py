"""Hostile and mistaken inputs: each is one line on stderr and exit status 2, nothing lost.

The table holds what a new user (or an adversary) tried: every row runs the real CLI in this
process and checks the message, the status, that no traceback was printed and that nothing
was written where it should not be.
"""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path

import pytest
import torch
import yaml

from qsgt_plugin.cli import main
from qsgt_plugin.recipe import Recipe
from qsgt_plugin.run_dir.checkpoint import load_checkpoint, save_checkpoint
from qsgt_plugin.training.loop import train

# The table's runs train on real MNIST (for two steps): CI runs these, plain `pytest` does not.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.environ.get("QSGT_DATA"), reason="QSGT_DATA not set"),
]

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "qsgt_plugin/recipes/quickstart.yaml")


def tiny(out: Path, **sections) -> dict:
    base = {
        "model": {"name": "resnet20", "kwargs": {"in_chans": 1}},
        "data": {"dataset": "mnist", "batch_size": 32, "train_subset": 64, "test_subset": 50},
        "train": {"epochs": 1, "log_every": 1},
        "output": {"dir": str(out)},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    return base


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A quantized and a float run, trained for 2 steps."""
    root = tmp_path_factory.mktemp("hostile-runs")
    paths = {}
    for name, quant in (("w4a4", {}), ("fp32", {"enabled": False})):
        recipe = Recipe.model_validate(tiny(root / name, quant=quant))
        paths[name] = train(recipe).run_dir
    return paths


def write_recipe(tmp_path: Path, **sections) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny(tmp_path / "run", **sections)))
    return str(path)


def alias_bomb(tmp_path: Path) -> str:
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for i, name in enumerate("bcdefgh"):
        prev = "abcdefg"[i]
        lines.append(f"{name}: &{name} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\nmodel: {kwargs: {x: *h}}\n")
    return str(path)


def twice(tmp_path: Path) -> str:
    """A recipe whose quant section is given twice (YAML would train the second silently)."""
    path = tmp_path / "twice.yaml"
    text = yaml.safe_dump(tiny(tmp_path / "run"))
    path.write_text(text + "quant: {weight_bits: 2}\nquant: {weight_bits: 4}\n")
    return str(path)


def crafted_checkpoint(tmp_path: Path, runs: dict, **kwargs) -> str:
    payload = load_checkpoint(runs["fp32"] / "last.pt")
    payload["model_config"] = {**payload["model_config"], "kwargs": kwargs}
    path = tmp_path / "crafted.pt"
    save_checkpoint({k: v for k, v in payload.items() if k != "format"}, path)
    return str(path)


def a_file(tmp_path: Path) -> Path:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    return blocker


# (id, argv builder(tmp_path, runs), expected message regex)
CASES = [
    (
        "num_classes that does not fit the dataset",
        lambda t, r: [
            "train",
            write_recipe(t, model={"kwargs": {"in_chans": 1, "num_classes": 5}}),
        ],
        r"model\.kwargs\.num_classes: 5 does not fit mnist \(10\)",
    ),
    (
        "in_chans that does not fit the dataset",
        lambda t, r: ["train", write_recipe(t, model={"kwargs": {"in_chans": 3}})],
        r"model\.kwargs\.in_chans: 3 does not fit mnist \(1\)",
    ),
    (
        "a model option the model does not take",
        lambda t, r: ["train", write_recipe(t, model={"kwargs": {"in_chans": 1, "foo": 1}})],
        r"model: timm cannot build 'resnet20' with .*foo",
    ),
    (
        "a model the dataset's images cannot run",
        lambda t, r: ["train", write_recipe(t, model={"name": "vit_tiny_patch16_224"})],
        r"model\.name: vit_tiny_patch16_224 cannot run on 1x28x28 images",
    ),
    (
        "pretrained weights (a download)",
        lambda t, r: ["train", write_recipe(t, model={"kwargs": {"pretrained": True}})],
        r"model\.kwargs: pretrained cannot be set \(nothing downloads\)",
    ),
    (
        "a misspelled attribution method",
        lambda t, r: ["train", QUICKSTART, "--set", "sgt.attribution=Salency"],
        r"sgt: unknown attribution method 'Salency'",
    ),
    (
        "an override pattern that matches no layer",
        lambda t, r: ["train", QUICKSTART, "--set", "quant.overrides={nothing*: {act_bits: 8}}"],
        r"quant: override pattern\(s\) \['nothing\*'\] match no Conv/Linear/ReLU layer",
    ),
    (
        "an alpha_init below the quantizer's floor",
        lambda t, r: ["train", QUICKSTART, "--set", "quant.alpha_init=0.0005"],
        r"quant: alpha_init must be a finite number greater than 0\.001, got 0\.0005",
    ),
    (
        "milestones outside the run",
        lambda t, r: ["train", QUICKSTART, "--set", "schedule.milestones=[0.5, 1.5]"],
        r"schedule\.milestones: milestones are fractions of the run, each strictly between 0 and 1",
    ),
    (
        "--resume with --overwrite",
        lambda t, r: ["train", write_recipe(t), "--resume", "--overwrite"],
        r"--resume and --overwrite contradict each other",
    ),
    (
        "--resume where no run exists",
        lambda t, r: ["train", write_recipe(t), "--resume"],
        r"nothing to resume: .*run holds no run \(no last\.pt\)\. Start it without --resume",
    ),
    (
        "--nproc 0",
        lambda t, r: ["train", QUICKSTART, "--nproc", "0"],
        r"argument --nproc: must be at least 1, got 0",
    ),
    (
        "a batch the processes cannot share",
        lambda t, r: ["train", write_recipe(t, data={"batch_size": 1}), "--nproc", "2"],
        r"data\.batch_size: 2 processes share each batch, but a batch of 1 images",
    ),
    (
        "an output folder under a regular file",
        lambda t, r: ["train", QUICKSTART, "--set", f"output.dir={a_file(t)}/run"],
        r"cannot write the run to .*a-file/run: .*a-file is a file",
    ),
    (
        "an attribution argument the method does not take",
        lambda t, r: [
            "train",
            write_recipe(t, sgt={"enabled": True, "attribution_kwargs": {"foo": 1}}),
        ],
        r"sgt\.attribution_kwargs: Saliency with \{'foo': 1\} fails on a trial batch: TypeError",
    ),
    (
        "an attribution argument of a bad value",
        lambda t, r: [
            "train",
            write_recipe(
                t,
                sgt={
                    "enabled": True,
                    "attribution": "IntegratedGradients",
                    "attribution_kwargs": {"n_steps": -3},
                },
            ),
        ],
        r"IntegratedGradients with \{'n_steps': -3\} fails .*number of steps must be a positive",
    ),
    (
        "a Captum method that needs a layer",
        lambda t, r: [
            "train",
            write_recipe(t, sgt={"enabled": True, "attribution": "LayerGradCam"}),
        ],
        r"captum\.attr\.LayerGradCam cannot run on a model alone",
    ),
    (
        "a negative seed",
        lambda t, r: ["train", write_recipe(t), "--set", "train.seed=-1"],
        r"train\.seed: Input should be greater than or equal to 0",
    ),
    (
        "a seed past torch's range",
        lambda t, r: ["train", write_recipe(t), "--set", "train.seed=18446744073709551616"],
        r"train\.seed: Input should be less than or equal to 9223372036854775807",
    ),
    (
        "a run folder name too long",
        lambda t, r: ["train", write_recipe(t), "--set", f"output.dir={t}/{'y' * 300}"],
        r"cannot write the run to .*: File name too long\. Choose a writable folder",
    ),
    (
        "a section given twice",
        lambda t, r: ["train", twice(t)],
        r"twice\.yaml: quant is given twice \(lines \d+ and \d+\); YAML would keep only the last",
    ),
    (
        "a key given twice in --set",
        lambda t, r: ["train", write_recipe(t), "--set", "optim={lr: 0.01, lr: 1.0}"],
        r"--set: optim\.lr is given twice",
    ),
    (
        "a YAML alias bomb",
        lambda t, r: ["train", alias_bomb(t)],
        r"bomb\.yaml expands to more than 10,000 values \(YAML aliases\?\)",
    ),
    (
        "export into an existing folder",
        lambda t, r: ["export", str(r["w4a4"]), "--out", str(t)],
        r"cannot write .*: it is a folder; give --out a file name",
    ),
    (
        "mixed-precision into an existing folder",
        lambda t, r: ["mixed-precision", str(r["w4a4"]), "--size-kb", "200", "--out", str(t)],
        r"cannot write .*: it is a folder; give --out a file name",
    ),
    (
        "a comparison figure named .txt",
        lambda t, r: ["compare", str(r["w4a4"]), "--out", f"{t}/x.txt"],
        r"cannot write the figure .*x\.txt: \.txt is not a figure format; use \.png, \.pdf, \.svg",
    ),
    (
        "evaluate on a device that does not exist",
        lambda t, r: ["evaluate", str(r["w4a4"]), "--device", "tpu"],
        r"device 'tpu' is not one of auto, cpu, cuda, cuda:N",
    ),
    (
        "GuidedBackprop on a quantized run",
        lambda t, r: [
            "compare",
            str(r["w4a4"]),
            "--method",
            "GuidedBackprop",
            "--out",
            f"{t}/a.png",
        ],
        r"--method: GuidedBackprop rewrites the gradients of nn\.ReLU modules",
    ),
    (
        "an unknown attribution method",
        lambda t, r: ["compare", str(r["fp32"]), "--method", "Sailency", "--out", f"{t}/a.png"],
        r"--method: unknown attribution method 'Sailency'",
    ),
    (
        "--images 0",
        lambda t, r: ["compare", str(r["fp32"]), "--images", "0"],
        r"argument --images: must be at least 1, got 0",
    ),
    (
        "--fill nan",
        lambda t, r: ["masking-curve", str(r["fp32"]), "--fill", "nan"],
        r"argument --fill: must be a finite number, got 'nan'",
    ),
    (
        "alpha-plot of a float run",
        lambda t, r: ["alpha-plot", str(r["fp32"]), "--out", f"{t}/a.png"],
        r"fp32 is a float run: it has no clipping levels to plot",
    ),
    (
        "alpha-plot of a bare checkpoint",
        lambda t, r: ["alpha-plot", bare_copy(t, r["w4a4"]), "--out", f"{t}/a.png"],
        r"no clipping levels logged in .*: alpha-plot needs the run directory",
    ),
    (
        "--out under a regular file",
        lambda t, r: ["compare", str(r["fp32"]), "--out", f"{a_file(t)}/grid.png"],
        r"cannot write .*a-file/grid\.png: .*a-file is a file; choose another --out",
    ),
    (
        "a checkpoint naming an unknown model",
        lambda t, r: ["evaluate", renamed_model(t, r["fp32"])],
        r"the checkpoint describes a model that cannot be built: .*[Uu]nknown model",
    ),
    (
        "a checkpoint that asks timm for pretrained weights",
        lambda t, r: ["evaluate", crafted_checkpoint(t, r, pretrained=True, in_chans=1)],
        r"the checkpoint's model options \['pretrained'\] would make timm load files",
    ),
    (
        "a checkpoint with a pretrained_cfg overlay",
        lambda t, r: [
            "evaluate",
            crafted_checkpoint(t, r, pretrained_cfg_overlay={"file": "/etc/passwd"}, in_chans=1),
        ],
        r"the checkpoint's model options \['pretrained_cfg_overlay'\] would make timm load",
    ),
]


def bare_copy(tmp_path: Path, run: Path) -> str:
    target = tmp_path / "bare" / "model.pt"
    target.parent.mkdir()
    target.write_bytes((run / "last.pt").read_bytes())
    return str(target)


def renamed_model(tmp_path: Path, run: Path) -> str:
    payload = load_checkpoint(run / "last.pt")
    payload["model_config"] = {**payload["model_config"], "name": "resnet21"}
    path = tmp_path / "renamed.pt"
    save_checkpoint({k: v for k, v in payload.items() if k != "format"}, path)
    return str(path)


@pytest.mark.parametrize(("argv", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_input_is_one_line_and_exit_2(argv, expected, tmp_path, runs, capsys):
    args = argv(tmp_path, runs)
    with pytest.raises(SystemExit) as exit_info:  # argparse errors exit from inside main
        raise SystemExit(main(args))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert re.search(expected, lines[0]), lines[0]
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()  # validated before the disk is touched


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("sgt.attribution=Salency", "sgt: unknown attribution method 'Salency'"),
        ("quant.overrides={nothing*: {act_bits: 8}}", "match no Conv/Linear/ReLU layer"),
        ("quant.alpha_init=0.0005", "alpha_init must be a finite number greater than 0.001"),
        ("model.name=resnet2O", "model.name: unknown model 'resnet2O'"),
    ],
)
def test_a_recipe_error_is_told_before_the_occupied_output_folder(
    override, expected, tmp_path, capsys
):
    """A newcomer who ran the quick start and then mistyped a setting is told the mistake,
    not that the folder holds a run; the folder's run is left exactly as it was."""
    out = tmp_path / "quickstart"
    out.mkdir()
    (out / "last.pt").write_bytes(b"a finished run")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    status = main(["train", QUICKSTART, "--set", override, "--set", f"output.dir={out}"])
    err = capsys.readouterr().err
    assert status == 2
    assert expected in err and "already holds a run" not in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # without the mistake, the folder is what stops it (nothing is overwritten)
    assert main(["train", QUICKSTART, "--set", f"output.dir={out}"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_bug_is_exit_1_with_a_pointer_to_debug(tmp_path, capsys, monkeypatch):
    import qsgt_plugin.training.loop

    def broken(*args, **kwargs):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(qsgt_plugin.training.loop, "train", broken)
    assert main(["train", QUICKSTART]) == 1
    err = capsys.readouterr().err
    assert "internal error (ZeroDivisionError: division by zero)" in err
    assert "rerun with --debug" in err and "Traceback" not in err
    with pytest.raises(ZeroDivisionError):  # --debug after the subcommand shows it
        main(["train", QUICKSTART, "--debug"])


def test_a_metrics_line_cut_by_a_kill_does_not_break_alpha_plot_or_report(runs, tmp_path):
    run = tmp_path / "cut"
    run.mkdir()
    for name in ("last.pt", "recipe.yaml"):
        (run / name).write_bytes((runs["w4a4"] / name).read_bytes())
    text = (runs["w4a4"] / "metrics.jsonl").read_text()
    (run / "metrics.jsonl").write_text(text + '{"kind": "train", "step": 9, "alph')
    assert main(["alpha-plot", str(run), "--out", str(tmp_path / "alpha.png")]) == 0
    assert (tmp_path / "alpha.png").stat().st_size > 0


def test_export_names_the_data_it_needs_and_the_formats_that_need_none(
    runs, tmp_path, monkeypatch, capsys
):
    pytest.importorskip("onnx")
    monkeypatch.setenv("QSGT_DATA", str(tmp_path / "no-data-here"))
    out = tmp_path / "m.onnx"
    assert main(["export", str(runs["w4a4"]), "--out", str(out)]) == 2  # qdq calibrates
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "no-data-here" in err and "--format packed or qcdq needs no data" in err
    assert not out.exists()
    for format in ("packed", "qcdq"):
        assert main(["export", str(runs["w4a4"]), "--out", str(out), "--format", format]) == 0
        assert out.stat().st_size > 0
        assert f"format {format}" in capsys.readouterr().out


def test_overwrite_removes_the_old_run_and_its_outputs_and_keeps_the_users_files(tmp_path):
    recipe = Recipe.model_validate(tiny(tmp_path / "run"))
    train(recipe)
    run = tmp_path / "run"
    (run / "model.onnx").write_bytes(b"old export")  # made from the old model: stale
    (run / "sensitivity").mkdir()
    (run / "sensitivity" / "sensitivity.json").write_text("{}")
    (run / "figures").mkdir()  # the user's own
    (run / "figures" / "alpha.png").write_bytes(b"user figure")
    (run / "notes.txt").write_text("mine")
    train(recipe, overwrite=True)
    assert sorted(p.name for p in run.iterdir()) == [
        "best.pt",
        "figures",
        "last.pt",
        "metrics.jsonl",
        "notes.txt",
        "recipe.yaml",
    ]
    assert (run / "figures" / "alpha.png").read_bytes() == b"user figure"
    assert (run / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("flag", [["--overwrite"], []])
def test_a_folder_of_the_users_files_is_never_emptied_or_written_over(
    tmp_path, monkeypatch, capsys, flag
):
    # The reported case: output.dir is ".", which holds a thesis and the recipe itself.
    monkeypatch.chdir(tmp_path)
    Path("thesis.tex").write_text("\\documentclass{article}")
    Path("recipe.yaml").write_text(yaml.safe_dump(tiny(Path("."))))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert main(["train", "recipe.yaml", *flag]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "recipe.yaml, which no run wrote" in err and "--set output.dir=PATH" in err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_overwrite_refuses_a_folder_that_holds_no_run(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("chapter 1")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny(out)))
    assert main(["train", str(recipe), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "holds no run and holds thesis.tex; nothing was removed" in err
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]
    # without --overwrite a run may share a folder with other files: it writes only its own
    assert main(["train", str(recipe)]) == 0
    assert (out / "thesis.tex").read_text() == "chapter 1" and (out / "last.pt").exists()


def test_a_run_stopped_before_its_first_checkpoint_is_a_run(tmp_path, capsys):
    out = tmp_path / "out"
    train(Recipe.model_validate(tiny(out)))
    for name in ("last.pt", "best.pt"):
        (out / name).unlink()
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny(out)))
    assert main(["train", str(recipe)]) == 2
    assert "holds the start of a run" in capsys.readouterr().err
    assert main(["train", str(recipe), "--overwrite"]) == 0
    assert (out / "last.pt").exists()


def test_overwrite_keeps_the_old_run_when_the_new_one_cannot_start(tmp_path, capsys):
    recipe = tiny(tmp_path / "run")
    train(Recipe.model_validate(recipe))
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
    path = tmp_path / "bad.yaml"
    recipe["model"]["name"] = "vit_tiny_patch16_224"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["train", str(path), "--overwrite"]) == 2
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == before


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    from qsgt_plugin.errors import RunLockedError
    from qsgt_plugin.run_dir import RunDir

    recipe = Recipe.model_validate(tiny(tmp_path / "run"))
    held = RunDir(tmp_path / "run").open(resume=False, overwrite=False)
    with held, pytest.raises(RunLockedError, match=rf"being written by process {os.getpid()} on "):
        train(recipe)
    assert not (tmp_path / "run" / "last.pt").exists()
    train(recipe)  # the lock is gone with its holder
    assert not (tmp_path / "run" / ".lock").exists()


def test_two_runs_with_the_same_name_keep_both_in_a_report(runs, tmp_path):
    from qsgt_plugin.report import load_runs

    a, b = tmp_path / "a" / "ref", tmp_path / "b" / "ref"
    for target, source in ((a, runs["w4a4"]), (b, runs["fp32"])):
        target.mkdir(parents=True)
        for name in ("last.pt", "recipe.yaml", "metrics.jsonl"):
            (target / name).write_bytes((source / name).read_bytes())
    loaded = load_runs([a, b, a])
    assert [r.name for r in loaded] == ["a/ref", "b/ref"]


def test_a_crafted_checkpoint_never_reaches_timm_with_pretrained(runs, tmp_path, monkeypatch):
    import timm

    calls = []
    monkeypatch.setattr(timm, "create_model", lambda *a, **k: calls.append(k))
    path = crafted_checkpoint(tmp_path, runs, pretrained=True)
    assert main(["evaluate", path]) == 2
    assert calls == []
    assert torch.load(path, weights_only=True)["model_config"]["kwargs"] == {"pretrained": True}


def test_a_figure_named_without_a_suffix_is_written_and_recorded_as_png(runs, tmp_path):
    out = tmp_path / "grid"
    assert main(["compare", str(runs["w4a4"]), "--images", "2", "--out", str(out)]) == 0
    numbers = json.loads((tmp_path / "grid.json").read_text())
    assert numbers["figure"] == str(tmp_path / "grid.png")
    assert (tmp_path / "grid.png").read_bytes()[:4] == b"\x89PNG"
    assert not out.exists()


def _full_disk(path, *args, **kwargs):
    """A writer that gets half-way, then finds the device full."""
    with open(path, "wb") as f:
        f.write(b"half a file")
    raise OSError(errno.ENOSPC, "No space left on device", str(path))


@pytest.mark.parametrize("command", ["alpha-plot", "export", "compare"])
def test_a_full_disk_is_one_line_exit_2_and_leaves_nothing_partial(
    command, runs, tmp_path, capsys, monkeypatch
):
    import matplotlib.figure

    import qsgt_plugin.quant.export.writer

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda self, p, **k: _full_disk(p))
    monkeypatch.setattr(
        qsgt_plugin.quant.export.writer,
        "_trace",
        lambda *a: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left", "x.onnx")),
    )
    out = tmp_path / ("model.onnx" if command == "export" else "figure.png")
    out.write_bytes(b"an earlier, complete file")
    argv = [command, str(runs["w4a4"]), "--out", str(out)]
    assert main(argv + (["--images", "2"] if command == "compare" else [])) == 2
    err = capsys.readouterr().err
    assert f"qsgt {command}: error: no space left on the device" in err
    assert len(err.strip().splitlines()) == 1
    assert out.read_bytes() == b"an earlier, complete file"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # no temporary left


def test_a_checkpoint_on_a_full_disk_keeps_the_last_complete_one(tmp_path, monkeypatch):
    from qsgt_plugin.errors import RunDirError
    from qsgt_plugin.run_dir import checkpoint

    path = tmp_path / "last.pt"
    complete = {"step": 1, "model": {}, "model_config": {}, "recipe": {}}
    save_checkpoint(complete, path)

    def full(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise RuntimeError(
            "[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing "
            "file data/0: file write failed"
        )

    monkeypatch.setattr(checkpoint.torch, "save", full)
    with pytest.raises(RunDirError, match="no space left on the device; free some space, then"):
        save_checkpoint({**complete, "step": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


WRITERS = {
    "compare": lambda r, out: ["compare", str(r["w4a4"]), "--out", out + ".png"],
    "masking-curve": lambda r, out: ["masking-curve", str(r["w4a4"]), "--out", out + ".png"],
    "alpha-plot": lambda r, out: ["alpha-plot", str(r["w4a4"]), "--out", out + ".png"],
    "report": lambda r, out: ["report", str(r["w4a4"]), "--out", out],
    "sensitivity": lambda r, out: ["sensitivity", str(r["w4a4"]), "--out", out],
    "export": lambda r, out: ["export", str(r["w4a4"]), "--out", out + ".onnx"],
}


@pytest.mark.parametrize("where", ["a name too long", "a virtual filesystem"])
@pytest.mark.parametrize("command", sorted(WRITERS))
def test_every_writer_refuses_an_unwritable_output_in_one_line(
    runs, tmp_path, capsys, command, where
):
    out = str(tmp_path / ("x" * 300)) if where == "a name too long" else "/proc/qsgt-out/x"
    assert main(WRITERS[command](runs, out)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert re.search(r"cannot write .*: .*; choose a writable folder with --out", err), err
    assert not Path("/proc/qsgt-out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no folder left behind
