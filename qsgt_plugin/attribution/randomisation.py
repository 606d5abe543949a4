"""Sanity checks by randomisation: cascading model-parameter randomisation and random logits.

MPRT: Adebayo et al. 2018, "Sanity Checks for Saliency Maps", https://arxiv.org/abs/1810.03292.
The weights of the convolution and linear layers are re-initialised one layer at a time from
the output down (cascading, top-down), and after each layer the maps are compared with the
trained model's (Spearman correlation of ``|a|``). A map that explains the model, rather than
the input's edges, loses its similarity as more layers are randomised.

Only weights and biases are re-initialised (each layer's own ``reset_parameters``, as Quantus
does): the PACT clipping levels and BatchNorm stay as trained. Randomising them too would let
activation saturation, not the weights, decide the result.

Random logit: Sixt et al. 2020, "When Explanations Lie", https://arxiv.org/abs/1912.09818. The
map of the true class is compared with the map of a random other class; a class-sensitive
explanation gives a low similarity. Quantus computes it correctly on these models in about the
time a native version takes, so it does (``quantus.RandomLogit``); MPRT is native because
Quantus' version re-initialises every module with ``reset_parameters``, BatchNorm included.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import Tensor, nn

from qsgt_plugin.attribution.metrics import spearman
from qsgt_plugin.errors import MissingDependencyError
from qsgt_plugin.sgt.masking import reduce_saliency
from qsgt_plugin.sgt.saliency import attribute

__all__ = ["mprt", "random_logit", "weight_layers"]


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Convolution and linear layers (Brevitas' included), in registration order."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)) and hasattr(m, "reset_parameters")
    ]


def mprt(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    method: str = "Saliency",
    seed: int = 42,
    **attribution_kwargs,
) -> dict:
    """Similarity of the maps after randomising 1, 2, ... weight layers from the top down.

    The model itself is not changed (a copy is randomised); the global random state is
    restored afterwards. Each layer is re-initialised under ``torch.manual_seed(seed + 1)``,
    Quantus' scheme, so the numbers match ``quantus.MPRT`` on a model without BatchNorm.

    Returns:
        ``{"layers": [...], "similarity": [...], "per_image": [[...], ...]}``: the layer
        randomised at each depth (the output layer first) and the mean Spearman correlation of
        ``|a|`` with the trained model's maps.
    """
    original = attribute(model, x, y, method, **attribution_kwargs)
    randomised = copy.deepcopy(model)
    layers = list(reversed(weight_layers(randomised)))
    out: dict = {"layers": [], "similarity": [], "per_image": []}
    with torch.random.fork_rng(devices=[]):
        for name, layer in layers:
            torch.manual_seed(seed + 1)
            layer.reset_parameters()
            maps = attribute(randomised, x, y, method, **attribution_kwargs)
            similarity = spearman(original, maps)
            out["layers"].append(name)
            out["similarity"].append(similarity.mean().item())
            out["per_image"].append(similarity.tolist())
    return out


def random_logit(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    num_classes: int,
    method: str = "Saliency",
    seed: int = 42,
    maps: Tensor | None = None,
    **attribution_kwargs,
) -> dict:
    """Spearman correlation of ``|a|`` between the true class's map and a random other class's.

    Computed by Quantus' ``RandomLogit`` (the ``xai`` extra), which draws one other class per
    image with ``seed`` and explains it through ``method``; maps are compared as this package
    compares them everywhere (``|a|``, channel mean). ``maps`` are the true class's, when
    already computed. Quantus seeds NumPy's global generator; its state is restored.
    """
    quantus = _quantus()

    def explain(model: nn.Module, inputs, targets, **_) -> np.ndarray:
        inputs = torch.as_tensor(inputs, device=x.device)
        targets = torch.as_tensor(targets, device=x.device)
        return _reduced(attribute(model, inputs, targets, method, **attribution_kwargs))

    maps = attribute(model, x, y, method, **attribution_kwargs) if maps is None else maps
    metric = quantus.RandomLogit(
        num_classes=num_classes,
        seed=seed,
        abs=True,
        similarity_func=quantus.similarity_func.correlation_spearman,
        disable_warnings=True,
    )
    state = np.random.get_state()
    try:
        scores = metric(
            model=model,
            x_batch=x.detach().cpu().numpy(),
            y_batch=y.cpu().numpy(),
            a_batch=_reduced(maps),
            explain_func=explain,
            device=str(x.device),
            batch_size=len(x),
        )
    finally:
        np.random.set_state(state)
    similarity = np.nan_to_num(np.asarray(scores, dtype=float), nan=0.0)
    return {"similarity": float(similarity.mean()), "per_image": similarity.tolist()}


def _reduced(maps: Tensor) -> np.ndarray:
    """``(N, 1, H, W)`` channel-mean ``|a|`` as NumPy, the form Quantus takes explanations in."""
    return reduce_saliency(maps).unsqueeze(1).cpu().numpy()


def _quantus():
    try:
        import quantus
    except ImportError:
        raise MissingDependencyError(
            "the random-logit test uses Quantus, which is not installed: "
            "pip install 'qsgt-plugin[xai]'"
        ) from None
    return quantus
