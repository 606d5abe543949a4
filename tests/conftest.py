from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# CI sets QSGT_REQUIRE_DATA: there a missing dataset fails the run instead of skipping the
# tests that read it.
DATA_FILES = ("MNIST/raw/t10k-images-idx3-ubyte", "cifar-10-batches-py/test_batch")


def pytest_sessionstart(session: pytest.Session) -> None:
    if not os.environ.get("QSGT_REQUIRE_DATA"):
        return
    root = os.environ.get("QSGT_DATA")
    missing = [f for f in DATA_FILES if not root or not (Path(root) / f).is_file()]
    if missing:
        raise pytest.UsageError(
            f"QSGT_REQUIRE_DATA is set but QSGT_DATA ({root!r}) lacks {', '.join(missing)}: "
            "the real-data tests would be skipped. Point QSGT_DATA at the datasets."
        )


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
