"""Input attributions from Captum, computed the way SGT needs them.

The model runs in eval mode for the attribution (each sample's map is exact; BatchNorm in train
mode would couple the samples of a batch) with its parameters frozen (autograd records nothing
for them, so the pass costs a forward and an input-gradient backward, and no ``.grad``
changes); both are restored afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import captum.attr
from brevitas.nn.quant_layer import QuantNonLinearActLayer
from captum.attr import (
    GradientAttribution,
    InputXGradient,
    IntegratedGradients,
    NoiseTunnel,
    Saliency,
)
from torch import Tensor, nn

from qsgt_plugin.common.modes import eval_mode, frozen_parameters

__all__ = ["ATTRIBUTIONS", "MODULE_HOOK_METHODS", "attribute", "make_attribution"]

# Methods with a name of their own; any other captum.attr gradient method works by class name.
ATTRIBUTIONS: dict[str, Callable[[nn.Module], GradientAttribution | NoiseTunnel]] = {
    "Saliency": Saliency,
    "InputXGradient": InputXGradient,
    "IntegratedGradients": IntegratedGradients,
    "SmoothGrad": lambda model: NoiseTunnel(Saliency(model)),
}
# These rewrite the backward pass of nn.ReLU modules through module hooks; after convert() the
# activations are Brevitas layers they do not see, and their maps would be silently wrong.
MODULE_HOOK_METHODS = frozenset(
    {"GuidedBackprop", "Deconvolution", "DeepLift", "DeepLiftShap", "GuidedGradCam", "LRP"}
)
# attribute() arguments each method is given unless the caller sets them.
_DEFAULT_KWARGS: dict[str, dict[str, Any]] = {
    "Saliency": {"abs": False},
    "SmoothGrad": {"nt_type": "smoothgrad", "nt_samples": 8, "stdevs": 0.15, "abs": False},
}


def make_attribution(
    model: nn.Module, method: str, forward: Callable[[Tensor], Tensor] | None = None
) -> GradientAttribution | NoiseTunnel:
    """The Captum attribution object for ``method`` on ``model`` (or on ``forward``, a function
    of the input computed by ``model``: the logits picked out of a tuple output).

    Raises:
        ValueError: an unknown name, a method that is not gradient-based, or a module-hook
            method (GuidedBackprop, DeepLift, ...) on a model with Brevitas activations.
    """
    if method in MODULE_HOOK_METHODS and any(
        isinstance(m, QuantNonLinearActLayer) for m in model.modules()
    ):
        raise ValueError(
            f"{method} rewrites the gradients of nn.ReLU modules, which a quantized model no "
            "longer has; its maps would be wrong. Use Saliency, InputXGradient, "
            "IntegratedGradients or SmoothGrad."
        )
    if method in ATTRIBUTIONS:
        return ATTRIBUTIONS[method](forward or model)
    cls = getattr(captum.attr, method, None)
    if isinstance(cls, type) and issubclass(cls, GradientAttribution):
        try:
            return cls(forward or model)
        except TypeError as exc:  # a layer or neuron method needs more than the model
            raise ValueError(
                f"captum.attr.{method} cannot run on a model alone ({exc}); SGT and the report "
                "attribute to the input: use Saliency, InputXGradient, IntegratedGradients, "
                "SmoothGrad or another input-gradient method"
            ) from None
    known = ", ".join(sorted(ATTRIBUTIONS))
    raise ValueError(
        f"unknown attribution method {method!r}; use one of {known} or the name of a "
        "captum.attr gradient method"
    )


def attribute(
    model: nn.Module,
    x: Tensor,
    target: Tensor,
    method: str = "Saliency",
    select: Callable[[Any], Tensor] | None = None,
    call: Callable[[Tensor], Any] | None = None,
    **kwargs: Any,
) -> Tensor:
    """Attributions of ``model``'s ``target`` logit to ``x``, shaped like ``x``, signed.

    ``select`` picks the logits out of a model whose output is a tuple or a dict; ``call``
    runs ``model`` on an input where ``model(x)`` would not (the input passed by keyword).

    Example::

        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
        >>> images, labels = torch.randn(2, 3, 2, 2), torch.tensor([0, 2])
        >>> maps = attribute(model, images, labels)  # Saliency, signed
        >>> torch.equal(maps[0].flatten(), model[1].weight[0])  # d logit_0 / d x = W[0]
        True
        >>> attribute(model, images, labels, "IntegratedGradients", n_steps=16).shape
        torch.Size([2, 3, 2, 2])
    """
    run = call or model
    forward = (lambda inputs: select(run(inputs))) if select is not None else call
    explainer = make_attribution(model, method, forward)
    kwargs = {**_DEFAULT_KWARGS.get(method, {}), **kwargs}
    with eval_mode(model), frozen_parameters(model):
        maps = explainer.attribute(x.detach().requires_grad_(), target=target, **kwargs)
    return maps.detach()
