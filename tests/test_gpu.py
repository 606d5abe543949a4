"""GPU-only checks (marked gpu: CI, which has no GPU, leaves them out)."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

import qsgt_plugin
from qsgt_plugin import SaliencyGuidedTraining
from qsgt_plugin.training.data import Loader

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("fused", [False, True])
def test_fast_path_training_steps_never_wait_for_the_host(fused):
    device = torch.device("cuda")
    images = torch.randint(0, 256, (512, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (512,))
    loader = Loader(
        images,
        labels,
        128,
        (0.5,) * 3,
        (0.25,) * 3,
        shuffle=True,
        padding=4,
        flip="random",
        device=device,
        resident=True,
        channels_last=True,
    )
    model = qsgt_plugin.convert(timm.create_model("resnet20"), bits=4).to(device)
    model = model.to(memory_format=torch.channels_last).train()
    sgt = SaliencyGuidedTraining(model, 0.1, fused=fused)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    batches = list(loader)  # the epoch's draws move to the device once, outside the check
    sgt.loss(*batches[0], criterion).backward()  # warm-up (lazy initialisation may sync)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for x, y in batches[1:]:
            loss = sgt.loss(x, y, criterion)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(loss).item()
