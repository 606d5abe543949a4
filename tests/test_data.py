"""Data: real datasets through torchvision, where they are looked for, batch augmentation."""

from __future__ import annotations

import os

import pytest
import torch
import torchvision.transforms.functional as TF

from qsgt_plugin.data import (
    DATASETS,
    DatasetNotFoundError,
    Loader,
    crop_flip,
    crop_flip_params,
    find_root,
    load_split,
)

needs_data = pytest.mark.skipif(not os.environ.get("QSGT_DATA"), reason="QSGT_DATA not set")


@needs_data
def test_real_mnist_loads_as_uint8_tensors():
    images, labels = load_split("mnist", train=False)
    assert images.shape == (10000, 1, 28, 28) and images.dtype == torch.uint8
    assert torch.bincount(labels).tolist() == [
        980,
        1135,
        1032,
        1010,
        982,
        892,
        958,
        1028,
        974,
        1009,
    ]


@needs_data
def test_real_cifar10_loads_channels_first():
    images, labels = load_split("cifar10", train=False)
    assert images.shape == (10000, 3, 32, 32)
    # The first test image's red channel starts 158 159 165 (the published values).
    assert images[0, 0, 0, :3].tolist() == [158, 159, 165]
    assert torch.bincount(labels).tolist() == [1000] * 10


def test_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("QSGT_DATA", str(tmp_path / "env"))
    assert find_root(tmp_path / "recipe")[:2] == (tmp_path / "recipe", "data.root")
    assert find_root(None)[:2] == (tmp_path / "env", "QSGT_DATA")
    monkeypatch.delenv("QSGT_DATA")
    _, source, download = find_root(None)
    assert source == "the default cache" and download


def test_missing_dataset_says_where_it_looked(tmp_path):
    with pytest.raises(
        DatasetNotFoundError,
        match=rf"mnist not found: looked in {tmp_path}/MNIST/raw \(from data\.root\)",
    ):
        load_split("mnist", True, root=tmp_path)


def test_corrupted_dataset_is_a_clear_error(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in DATASETS["cifar10"].files:
        (folder / name).write_bytes(b"not a pickle")
    with pytest.raises(DatasetNotFoundError, match="cifar10 could not be loaded from"):
        load_split("cifar10", True, root=tmp_path)


def test_crop_flip_matches_torchvision_semantics():
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    crops, flips = crop_flip_params(16, 4, torch.Generator().manual_seed(1), torch.device("cpu"))
    out = crop_flip(images, 4, crops, flips)
    for i in range(16):
        expected = TF.crop(TF.pad(images[i], [4]), int(crops[i, 0]), int(crops[i, 1]), 32, 32)
        if flips[i]:
            expected = TF.hflip(expected)
        assert torch.equal(out[i], expected)
    assert crops.min() >= 0 and crops.max() <= 8 and 0 < flips.sum() < 16


def test_loader_normalises_shuffles_and_covers_the_split_once():
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 1, 2, 2).contiguous()
    labels = torch.arange(10)
    loader = Loader(
        images,
        labels,
        4,
        (0.0,),
        (1 / 255,),
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
    )
    batches = list(loader)
    assert len(loader) == len(batches) == 3 and [len(y) for _, y in batches] == [4, 4, 2]
    seen = torch.cat([y for _, y in batches])
    assert sorted(seen.tolist()) == list(range(10)) and seen.tolist() != list(range(10))
    for x, y in batches:  # value v maps to v/255 normalised by std 1/255 -> v
        torch.testing.assert_close(x[:, 0, 0, 0], y.float())


def test_skipping_batches_replays_the_same_draws():
    images = torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8)
    labels = torch.arange(20)

    def loader():
        return Loader(
            images,
            labels,
            6,
            (0.5,) * 3,
            (0.25,) * 3,
            shuffle=True,
            augment=True,
            generator=torch.Generator().manual_seed(3),
        )

    full = list(loader().batches())
    resumed = list(loader().batches(skip=2))
    assert len(resumed) == 2
    for (x, y), (x2, y2) in zip(full[2:], resumed, strict=True):
        assert torch.equal(x, x2) and torch.equal(y, y2)
