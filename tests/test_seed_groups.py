"""Which runs the report counts as seeds of one recipe: fine-tunings from each seed's own parent
are one group (their ``model.init_from`` paths differ by the seed, their parents' recipe does
not), and SGT twins among them pair."""

from __future__ import annotations

from pathlib import Path

import pytest
from torch import nn

from qsgt_plugin.errors import UsageError
from qsgt_plugin.recipe import Recipe
from qsgt_plugin.report.seeds import group_runs, pair_groups
from qsgt_plugin.run_dir.checkpoint import save_checkpoint
from qsgt_plugin.runs import Run


def recipe(seed: int, init_from: str | None = None, sgt: bool = False, lr: float = 0.1) -> Recipe:
    return Recipe.model_validate(
        {
            "model": {"name": "resnet20", "init_from": init_from},
            "quant": {"enabled": init_from is not None},
            "sgt": {"enabled": sgt},
            "data": {"dataset": "cifar10"},
            "optim": {"lr": lr},
            "train": {"seed": seed},
        }
    )


def run(path: Path, r: Recipe) -> Run:
    return Run(path, r, {}, nn.Identity())


def parent(root: Path, seed: int, lr: float = 0.1) -> str:
    """A shipped float parent of ``seed``: a folder with a checkpoint holding its recipe."""
    folder = root / f"cifar10-fp32-cpu-s{seed}"
    folder.mkdir(parents=True)
    payload = {"model": {}, "model_config": {"name": "resnet20"}, "step": 1}
    payload["recipe"] = recipe(seed, lr=lr).model_dump(mode="json")
    save_checkpoint(payload, folder / "model.pt")
    return str(folder)


def test_fine_tunings_from_their_own_seeds_parents_are_one_group_and_pair(tmp_path):
    sources = [parent(tmp_path, seed) for seed in range(3)]
    runs = [
        run(tmp_path / f"{name}-s{seed}", recipe(seed, sources[seed], sgt="sgt" in name))
        for name in ("w4a4-ft", "w4a4-sgt-ft")
        for seed in range(3)
    ]
    groups = group_runs(runs)
    assert [(g.label, g.seeds) for g in groups] == [
        ("w4a4 from fp32", [0, 1, 2]),
        ("w4a4+SGT from fp32", [0, 1, 2]),
    ]
    assert [(a.label, b.label) for a, b in pair_groups(groups)] == [
        ("w4a4 from fp32", "w4a4+SGT from fp32")
    ]
    # a checkpoint inside the parent names the same source as its folder
    same = run(tmp_path / "x", recipe(3, str(Path(sources[0]) / "model.pt")))
    # (seed 3 from seed 0's parent: another seed of the same fine-tuning recipe)
    assert [g.seeds for g in group_runs([*runs[:3], same])] == [[0, 1, 2, 3]]


def test_parents_of_another_recipe_make_another_group(tmp_path):
    ours = parent(tmp_path / "a", 0)
    theirs = parent(tmp_path / "b", 1, lr=0.05)  # a parent trained differently
    groups = group_runs(
        [run(tmp_path / "r0", recipe(0, ours)), run(tmp_path / "r1", recipe(1, theirs))]
    )
    assert [g.seeds for g in groups] == [[0], [1]]
    assert [g.label for g in groups] == ["w4a4 from fp32", "w4a4 from fp32 (model.init_from)"]


def test_unreadable_sources_group_by_their_path_with_the_seed_set_aside(tmp_path):
    gone = tmp_path / "moved"
    runs = [run(tmp_path / f"r{s}", recipe(s, f"{gone}/cifar10-fp32-cpu-s{s}")) for s in (0, 1)]
    assert [g.seeds for g in group_runs(runs)] == [[0, 1]]
    # a seed-1 run from a parent named for seed 0 is not the seed-1 run of that recipe
    odd = run(tmp_path / "odd", recipe(1, f"{gone}/cifar10-fp32-cpu-s0"))
    assert [g.seeds for g in group_runs([runs[0], odd])] == [[0], [1]]
    # and one seed twice is still refused
    with pytest.raises(UsageError, match="same recipe with the same seed"):
        group_runs([runs[0], run(tmp_path / "copy", runs[0].recipe)])


def test_a_parent_and_its_fine_tuning_are_told_apart_by_their_labels(tmp_path):
    """fp32 trained from scratch and fp32 fine-tuned from it are both ``fp32`` runs; a reader
    of the report must see which is which (not ``fp32`` and ``fp32 #2``)."""
    source = parent(tmp_path, 0)
    scratch = run(tmp_path / "p", recipe(0))
    tuned = run(
        tmp_path / "t", recipe(0, source).model_copy(update={"quant": scratch.recipe.quant})
    )
    lost = run(tmp_path / "l", recipe(1, str(tmp_path / "gone-s1")))
    assert [g.label for g in group_runs([scratch, tuned, lost])] == [
        "fp32",
        "fp32 from fp32",
        "w4a4 fine-tuned",
    ]


def test_settings_of_a_switched_off_feature_do_not_split_a_group_or_a_pair(tmp_path):
    """A float recipe that inherits ``quant.alpha_init: calibrate`` from a quantized base trains
    the same model as one that does not; left in the key, the fp32 / fp32 + SGT pair would
    silently not be tested."""

    def variant(seed: int, **quant) -> Recipe:
        r = recipe(seed)  # float: quant.enabled is false
        return r.model_copy(update={"quant": r.quant.model_copy(update=quant)})

    plain, inherited = variant(0), variant(1, alpha_init="calibrate", weight_bits=2)
    sgt = plain.model_copy(update={"sgt": plain.sgt.model_copy(update={"enabled": True})})
    runs = [run(tmp_path / name, r) for name, r in zip("abc", (plain, inherited, sgt), strict=True)]
    groups = group_runs(runs)
    assert [(g.label, g.seeds) for g in groups] == [("fp32", [0, 1]), ("fp32+SGT", [0])]
    assert len(pair_groups(groups)) == 1
    # a switched-on feature's settings still tell groups apart
    w4, w2 = variant(0, enabled=True), variant(1, enabled=True, weight_bits=2)
    assert [g.label for g in group_runs([run(tmp_path / "q4", w4), run(tmp_path / "q2", w2)])] == [
        "w4a4",
        "w2a4",
    ]


def test_groups_of_one_label_are_told_apart_by_what_differs(tmp_path):
    base = recipe(0)
    lr = base.model_copy(update={"optim": base.optim.model_copy(update={"lr": 0.05})})
    bf16 = base.model_copy(update={"train": base.train.model_copy(update={"precision": "bf16"})})
    groups = group_runs(
        [run(tmp_path / n, r) for n, r in zip("abc", (base, lr, bf16), strict=True)]
    )
    assert [g.label for g in groups] == [
        "fp32",
        "fp32 (optim.lr=0.05)",
        "fp32 (train.precision=bf16)",
    ]


def test_a_run_saved_before_the_precision_keys_pools_with_a_new_seed_pinned_to_what_it_ran():
    # The shipped MNIST seeds 0-2 predate train.precision and train.channels_last (they ran
    # float32, contiguous); new seeds of the pre-registration pin those values. One group.
    from qsgt_plugin.recipe import parse_run_recipe
    from qsgt_plugin.runs import load_run

    shipped = Path(__file__).resolve().parents[1] / "results/mnist/mnist-w4a4-sgt-s0"
    old = load_run(shipped)
    assert (old.recipe.train.precision, old.recipe.train.channels_last) == ("fp32", False)
    data = old.recipe.model_dump(mode="json")
    data["train"].update(seed=3, precision="fp32", channels_last=False)
    new = parse_run_recipe(data)
    groups = group_runs([old, run(Path("mnist-w4a4-sgt-s3"), new)])
    assert [g.seeds for g in groups] == [[0, 3]]
    # a saved recipe that states its precision keeps it: bf16 is another group
    data["train"].update(seed=4, precision="bf16")
    groups = group_runs([old, run(Path("mnist-w4a4-sgt-s4"), parse_run_recipe(data))])
    assert [g.seeds for g in groups] == [[0], [4]]
