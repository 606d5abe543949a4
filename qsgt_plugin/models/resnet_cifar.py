"""ResNets for CIFAR-10: resnet20, resnet32, resnet44, resnet56.

He et al. 2016, "Deep Residual Learning for Image Recognition", section 4.2,
https://arxiv.org/abs/1512.03385. A 3x3 stem of 16 channels, three stages of ``n`` basic blocks
with 16, 32 and 64 channels (stride 2 at the start of stages 2 and 3), global average pooling
and a linear classifier: depth ``6n + 2``.

Shortcuts where the shape changes:

* option A (default, the paper's CIFAR choice): identity on every second pixel, padded with
  zero channels; no parameters.
* option B: a 1x1 convolution with stride 2 and BatchNorm.

ResNet-20 with option A and 10 classes has 269,722 parameters. ``in_chans=1`` serves MNIST.
Importing this module files the models in timm's registry.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import Tensor, nn

from qsgt_plugin.common.cifar import CIFAR10_MEAN, CIFAR10_STD
from qsgt_plugin.markers import hookimpl

__all__ = ["CIFAR10_MEAN", "CIFAR10_STD", "BasicBlock", "CifarResNet"]


class _ChannelsLastGrad(torch.autograd.Function):
    """Identity whose backward hands the gradient on in channels-last memory."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad.contiguous(memory_format=torch.channels_last)


def channels_last_grad(x: Tensor) -> Tensor:
    """``x``, with its gradient made channels-last in the backward pass when ``x`` is.

    The backward passes of slicing and of global average pooling (``mean``) produce contiguous
    gradients whatever the input's layout; every element-wise backward that then meets a
    channels-last tensor (ReLU's, PACT's, the residual sum) runs a strided kernel, about 20x
    slower on the CPU. Forward values are unchanged; outside autograd it is ``x`` itself.
    """
    channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
    if x.requires_grad and torch.is_grad_enabled() and channels_last and not x.is_contiguous():
        return _ChannelsLastGrad.apply(x)
    return x


class PadShortcut(nn.Module):
    """Option A shortcut: keep every ``stride``-th pixel and zero-pad the new channels."""

    def __init__(self, in_chs: int, out_chs: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.pad = out_chs - in_chs

    def forward(self, x: Tensor) -> Tensor:
        x = channels_last_grad(x)[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        stride: int = 1,
        shortcut: str = "A",
        act_layer: Callable[..., nn.Module] = nn.ReLU,
        norm_layer: Callable[..., nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm_layer(out_chs)
        self.act1 = act_layer()
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, padding=1, bias=False)
        self.bn2 = norm_layer(out_chs)
        self.act2 = act_layer()
        if stride == 1 and in_chs == out_chs:
            self.shortcut: nn.Module = nn.Identity()
        elif shortcut == "A":
            self.shortcut = PadShortcut(in_chs, out_chs, stride)
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False), norm_layer(out_chs)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet of depth ``6 * blocks_per_stage + 2``.

    Args:
        blocks_per_stage: ``n``; 3, 5, 7, 9 give ResNet-20, 32, 44, 56.
        num_classes: classifier outputs; 0 leaves the head an identity.
        in_chans: input channels (1 for MNIST).
        widths: channels of the three stages.
        shortcut: ``"A"`` (zero-padded identity) or ``"B"`` (1x1 projection).
        drop_rate: dropout before the classifier.
        act_layer, norm_layer: layer classes, injected as in timm.
    """

    def __init__(
        self,
        blocks_per_stage: int = 3,
        num_classes: int = 10,
        in_chans: int = 3,
        widths: tuple[int, int, int] = (16, 32, 64),
        shortcut: str = "A",
        drop_rate: float = 0.0,
        act_layer: Callable[..., nn.Module] = nn.ReLU,
        norm_layer: Callable[..., nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False)
        self.bn1 = norm_layer(widths[0])
        self.act1 = act_layer()
        self.feature_info = [dict(num_chs=widths[0], reduction=1, module="act1")]
        in_chs = widths[0]
        for i, out_chs in enumerate(widths):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(blocks_per_stage):
                s = stride if j == 0 else 1
                blocks.append(BasicBlock(in_chs, out_chs, s, shortcut, act_layer, norm_layer))
                in_chs = out_chs
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=out_chs, reduction=2**i, module=f"layer{i + 1}"))
        self.num_features = self.head_hidden_size = in_chs
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_chs, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str = "avg") -> None:
        if global_pool != "avg":
            raise ValueError(f"only global_pool='avg' is supported, got {global_pool!r}")
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.layer1(x)
        x = self.layer2(x)
        return self.layer3(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.global_pool(channels_last_grad(x)).flatten(1)
        if self.drop_rate:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def _create_resnet_cifar(variant: str, pretrained: bool = False, **kwargs) -> CifarResNet:
    return build_model_with_cfg(CifarResNet, variant, pretrained, **kwargs)


def _cfg(**kwargs) -> dict:
    return {
        "url": "",
        "num_classes": 10,
        "input_size": (3, 32, 32),
        "pool_size": (8, 8),
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": CIFAR10_MEAN,
        "std": CIFAR10_STD,
        "first_conv": "conv1",
        "classifier": "fc",
        "license": "bsd-3-clause",
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {"resnet20": _cfg(), "resnet32": _cfg(), "resnet44": _cfg(), "resnet56": _cfg()}
)


@register_model
def resnet20(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-20 for CIFAR (3 blocks per stage)."""
    return _create_resnet_cifar("resnet20", pretrained, **dict(blocks_per_stage=3, **kwargs))


@register_model
def resnet32(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-32 for CIFAR (5 blocks per stage)."""
    return _create_resnet_cifar("resnet32", pretrained, **dict(blocks_per_stage=5, **kwargs))


@register_model
def resnet44(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-44 for CIFAR (7 blocks per stage)."""
    return _create_resnet_cifar("resnet44", pretrained, **dict(blocks_per_stage=7, **kwargs))


@register_model
def resnet56(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-56 for CIFAR (9 blocks per stage)."""
    return _create_resnet_cifar("resnet56", pretrained, **dict(blocks_per_stage=9, **kwargs))


@hookimpl
def register_models(register: Callable[[Callable[..., nn.Module]], None]) -> None:
    for fn in (resnet20, resnet32, resnet44, resnet56):
        register(fn)
