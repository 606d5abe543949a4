"""Each test below, run against a deliberately broken variant of the code, must fail.

    python tests/mutants.py        # one line per mutant: FAILS (good) or PASSES (a weak test)

Every mutant copies the checkout's files into a temporary folder, applies one change and runs
the test that claims the property it breaks. Not part of the suite (it takes a few minutes).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SRC = Path(__file__).resolve().parents[1]
MUT = Path(tempfile.mkdtemp(prefix="qsgt-mutants-")) / "tree"
# (what breaks, file, old text, new text, the test that must catch it)
MUTANTS = [
    (
        "fused SGT reads the eval-mode gradient",
        "qsgt_plugin/sgt/guided_loss.py",
        "            target_logits = logits.gather(1, y.unsqueeze(1)).sum()\n"
        "            (grad,) = torch.autograd.grad(target_logits, x, retain_graph=True)",
        "            logits_eval = (self.model.eval()(x), self.model.train())[0]\n"
        "            target_logits = logits_eval.gather(1, y.unsqueeze(1)).sum()\n"
        "            (grad,) = torch.autograd.grad(target_logits, x, retain_graph=True)",
        "tests/test_sgt.py::test_fused_path_uses_the_train_mode_input_gradient",
    ),
    (
        "timm registry fixture restores nothing",
        "tests/test_plugins.py",
        "            current.clear()\n            current.update(value)",
        "            pass",
        "tests/test_plugins.py::test_a_test_model_leaves_timm_registry_when_the_test_ends",
    ),
    (
        "quant imports the run directory",
        "qsgt_plugin/quant/conversion.py",
        "from __future__ import annotations\n",
        "from __future__ import annotations\n\nfrom qsgt_plugin.run_dir import weights  # noqa\n",
        "tests/test_layers.py",
    ),
    (
        "a leaf imports a sibling leaf",
        "qsgt_plugin/sgt/masking.py",
        "from __future__ import annotations\n",
        "from __future__ import annotations\n\n"
        "from qsgt_plugin.models import resnet_cifar  # noqa\n",
        "tests/test_layers.py::test_every_import_edge_goes_down_the_architecture_rows",
    ),
    (
        "run storage imports training (a cycle)",
        "qsgt_plugin/run_dir/payload.py",
        "from __future__ import annotations\n",
        "from __future__ import annotations\n\n"
        "from qsgt_plugin.training.data import Loader  # noqa\n",
        "tests/test_layers.py::test_every_import_edge_goes_down_the_architecture_rows",
    ),
    (
        "quant imports the training package",
        "qsgt_plugin/quant/state.py",
        "from __future__ import annotations\n",
        "from __future__ import annotations\n\nimport qsgt_plugin.training  # noqa\n",
        "tests/test_layers.py",
    ),
    (
        "comparison numbers keep a tensor",
        "qsgt_plugin/attribution/views.py",
        None,
        None,
        "tests/test_attribution.py::test_metrics_survive_a_json_round_trip_with_their_values",
    ),
    (
        "a dataset plugin's images are not checked",
        "qsgt_plugin/training/data.py",
        "    if images.dtype != torch.uint8 or tuple(images.shape[1:]) != dataset.shape:",
        "    if False:",
        "tests/test_plugins.py::"
        "test_a_dataset_plugin_feeds_the_loader_and_its_declaration_is_checked",
    ),
    (
        "the summary counts a seed twice",
        "benchmarks/results_table.py",
        "            if row.seed in seeds:",
        "            if False:",
        "tests/test_results_table.py::"
        "test_the_summary_is_mean_and_sample_std_over_seeds_and_refuses_a_seed_twice",
    ),
    (
        "rows go to the end of the file",
        "benchmarks/results_table.py",
        '    while end < len(rows) and rows[end].startswith("|"):\n        end += 1',
        "    end = len(rows)",
        "tests/test_results_table.py::test_rows_go_in_after_the_last_row_and_come_back_equal",
    ),
    (
        "from_json accepts unknown fields",
        "qsgt_plugin/attribution/results.py",
        "        extra = [k for k in data if k not in names]",
        "        extra = []",
        "tests/test_faithfulness.py::test_the_suite_result_is_typed_and_round_trips_through_json",
    ),
    (
        "a NaN loss does not stop training",
        "qsgt_plugin/training/loop.py",
        "(nonfinite_at < 0) & ~torch.isfinite(parts[0])",
        "(nonfinite_at < 0) & torch.isnan(parts[0]) & False",
        "tests/test_engine.py::test_nan_loss_stops_and_keeps_the_last_good_checkpoint",
    ),
    (
        "best.pt written at every evaluation",
        "qsgt_plugin/training/loop.py",
        '    if improved:\n        _save(s, "best.pt")',
        '    _save(s, "best.pt")',
        "tests/test_engine.py::test_best_pt_holds_the_best_evaluation",
    ),
    (
        "a resumed run replays its first batches",
        "qsgt_plugin/training/loop.py",
        "loader.batches(skip=p.batch, epoch=p.epoch)",
        "loader.batches(skip=0, epoch=p.epoch)",
        "tests/test_engine.py::test_resume_mid_epoch_from_a_step_checkpoint",
    ),
]
JSON_UNSAFE = """

import torch  # noqa: E402

_numbers = Comparison.numbers
Comparison.numbers = lambda self: {
    **_numbers(self),
    "pairs": [{**p, "spearman": torch.tensor(p["spearman"])} for p in _numbers(self)["pairs"]],
}
"""


def main() -> int:
    env = {**os.environ, "PYTHONPATH": str(MUT)}
    weak = 0
    for name, path, old, new, test in MUTANTS:
        weak += not run(name, path, old, new, test, env)
    return 1 if weak else 0


def run(name: str, path: str, old: str | None, new: str | None, test: str, env: dict) -> bool:
    if MUT.exists():
        shutil.rmtree(MUT)
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=SRC, capture_output=True, text=True
    )
    for file in listed.stdout.split():
        (MUT / file).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(SRC / file, MUT / file)
    target = MUT / path
    text = target.read_text()
    if old is None:
        text += JSON_UNSAFE
    else:
        assert old in text, (name, old)
        text = text.replace(old, new)
    target.write_text(text)
    command = [sys.executable, "-m", "pytest", "-q", "-m", "not gpu", "-p", "no:cacheprovider"]
    done = subprocess.run([*command, test], cwd=MUT, env=env, capture_output=True, text=True)
    out = done.stdout.splitlines()
    last = [line for line in out if line.strip()][-1]
    first_error = next((line[1:].strip() for line in out if line.startswith("E ")), "")
    verdict = "FAILS" if done.returncode else "PASSES (the test is weak)"
    print(f"{verdict} | {name} | {test} | {last} | {first_error[:150]}", flush=True)
    return done.returncode != 0


if __name__ == "__main__":
    sys.exit(main())
