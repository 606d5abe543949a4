"""Models registered in timm's registry on import (``timm.create_model("resnet20")``)."""

from qsgt_plugin.models.resnet_cifar import BasicBlock, CifarResNet

__all__ = ["BasicBlock", "CifarResNet"]
