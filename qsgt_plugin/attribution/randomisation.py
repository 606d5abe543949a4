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
explanation gives a low similarity.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from qsgt_plugin.attribution.metrics import spearman
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
    off_targets: Tensor | None = None,
    maps: Tensor | None = None,
    **attribution_kwargs,
) -> dict:
    """Spearman correlation of ``|a|`` between the true class's map and a random other class's.

    ``off_targets`` (one class per image, never its label) are drawn uniformly among the other
    classes with ``seed`` unless given; ``maps`` are the true class's, when already computed.
    """
    if off_targets is None:
        generator = torch.Generator().manual_seed(seed)
        shift = torch.randint(1, num_classes, y.shape, generator=generator).to(y.device)
        off_targets = (y + shift) % num_classes
    if bool((off_targets == y).any()):
        raise ValueError("random_logit needs off_targets that differ from the labels")
    true_maps = attribute(model, x, y, method, **attribution_kwargs) if maps is None else maps
    off_maps = attribute(model, x, off_targets, method, **attribution_kwargs)
    similarity = spearman(true_maps, off_maps)
    return {"similarity": similarity.mean().item(), "per_image": similarity.tolist()}
