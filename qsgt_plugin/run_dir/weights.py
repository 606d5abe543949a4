"""Finding a run's checkpoint, and starting a model from another run's weights."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from qsgt_plugin.errors import CheckpointError, RecipeError, RunError
from qsgt_plugin.run_dir.checkpoint import load_checkpoint

__all__ = ["CHECKPOINTS", "find_checkpoint", "init_weights"]

CHECKPOINTS = ("best.pt", "last.pt", "model.pt")  # the order ``load_run`` looks for them


def find_checkpoint(path: str | Path) -> Path:
    """The checkpoint a path names: a file, or a run directory's best, last or shipped one."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        file = next((path / c for c in CHECKPOINTS if (path / c).is_file()), None)
        if file is None:
            raise RunError(
                f"{path} is not a run directory: it has no {', '.join(CHECKPOINTS)}. "
                "Train one with `qsgt train RECIPE`."
            )
        return file
    if path.exists():
        raise RunError(f"{path} is neither a run directory nor a checkpoint file")
    raise RunError(f"{path} does not exist")


def init_weights(model: nn.Module, source: str | Path) -> bool:
    """Start ``model`` from the weights of another run (``model.init_from``).

    Every float weight and BatchNorm statistic must be there with its shape; quantizer state
    (clipping levels) is taken where both models have it. Returns whether the source held
    clipping levels for this model.

    Raises:
        RecipeError: the source is missing, unreadable, or holds a different architecture.
    """
    try:
        state = load_checkpoint(find_checkpoint(source))["model"]
    except (RunError, CheckpointError) as exc:
        hint = ""
        if not Path(source).exists() and not Path(source).is_absolute():
            hint = (
                f" (a relative path is read from the current folder, {Path.cwd()}): run from "
                "the folder that holds it, or give it whole with --set model.init_from=PATH"
            )
        raise RecipeError(f"model.init_from: {exc}{hint}") from None
    target = model.state_dict()
    missing = [k for k in target if k not in state and not _is_quantizer_key(k)]
    wrong = [k for k in target if k in state and state[k].shape != target[k].shape]
    if missing or wrong:
        sample = ", ".join((missing + wrong)[:3])
        raise RecipeError(
            f"model.init_from: {source} holds a different model ({len(missing)} tensors "
            f"missing, {len(wrong)} of another shape, e.g. {sample}); start from a run of the "
            "same model and kwargs"
        )
    shared = {k: v for k, v in state.items() if k in target}
    model.load_state_dict(shared, strict=False)
    return any(_is_quantizer_key(k) for k in shared)


def _is_quantizer_key(key: str) -> bool:
    return ".act_quant." in key or ".weight_quant." in key or key.startswith("act_quant.")
