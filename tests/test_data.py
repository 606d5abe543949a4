"""Data: real datasets through torchvision, where they are looked for, batch augmentation."""

from __future__ import annotations

import itertools
import os
import shutil
from pathlib import Path

import pytest
import torch
import torchvision.transforms.functional as TF

from qsgt_plugin.datasets import CIFAR10, MNIST
from qsgt_plugin.training.data import (
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
    for name in CIFAR10.files:
        (folder / name).write_bytes(b"not a pickle")
    with pytest.raises(DatasetNotFoundError, match="is not the official cifar10 file"):
        load_split("cifar10", True, root=tmp_path)
    with pytest.raises(DatasetNotFoundError, match="cifar10 could not be loaded from"):
        load_split("cifar10", True, root=tmp_path, verify=False)


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
            padding=4,
            flip="random",
            generator=torch.Generator().manual_seed(3),
        )

    full = list(loader().batches())
    resumed = list(loader().batches(skip=2))
    assert len(resumed) == 2
    for (x, y), (x2, y2) in zip(full[2:], resumed, strict=True):
        assert torch.equal(x, x2) and torch.equal(y, y2)


def _asymmetric(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose left half is 0 and right half is 200: a flip shows in the first pixel."""
    images = torch.zeros(n, 1, 4, 4, dtype=torch.uint8)
    images[..., 2:] = 200
    return images, torch.arange(n)


def _flipped(loader: Loader, epoch: int) -> dict[int, bool]:
    """Label -> whether that image came out mirrored in this epoch."""
    out = {}
    for x, y in loader.batches(epoch=epoch):
        for image, label in zip(x, y, strict=True):
            out[int(label)] = bool(image[0, 0, 0] > 100)
    return out


def test_alternating_flips_show_every_image_both_ways_in_two_epochs():
    images, labels = _asymmetric(64)
    loader = Loader(
        images, labels, 16, (0.0,), (1 / 255,), shuffle=True, flip="alternate",
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    epochs = [_flipped(loader, e) for e in range(4)]
    assert 16 < sum(epochs[0].values()) < 48  # a random half to start with
    for a, b in itertools.pairwise(epochs):
        assert all(a[i] != b[i] for i in a)  # every image changes side each epoch
    assert epochs[0] == epochs[2] and epochs[1] == epochs[3]


def test_random_flips_and_no_flips():
    images, labels = _asymmetric(64)

    def loader(flip: str) -> Loader:
        return Loader(
            images, labels, 16, (0.0,), (1 / 255,), shuffle=True, flip=flip,
            generator=torch.Generator().manual_seed(0),
        )  # fmt: skip

    assert not any(_flipped(loader("none"), 0).values())
    random = loader("random")
    first, second = _flipped(random, 0), _flipped(random, 1)
    assert 16 < sum(first.values()) < 48 and first != second
    with pytest.raises(ValueError, match="unknown flip 'mirror'; allowed: none, random, alternate"):
        loader("mirror")


def test_crop_padding_shifts_without_flipping():
    images = torch.zeros(200, 1, 8, 8, dtype=torch.uint8)
    images[:, :, 3, 3] = 255  # one bright pixel
    loader = Loader(
        images, torch.arange(200), 50, (0.0,), (1 / 255,), padding=2,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    shifts = set()
    for x, _ in loader:
        for image in x:
            rows, cols = torch.nonzero(image[0] > 100, as_tuple=True)
            assert len(rows) == 1  # a shift of at most 2 keeps the pixel inside the image
            shifts.add((int(rows[0]) - 3, int(cols[0]) - 3))
    assert shifts == {(dr, dc) for dr in range(-2, 3) for dc in range(-2, 3)}


def test_dataset_defaults_augment_cifar_only():
    from qsgt_plugin.recipe import Recipe
    from qsgt_plugin.training.build import make_loader

    if not os.environ.get("QSGT_DATA"):
        pytest.skip("QSGT_DATA not set")
    for dataset, expected in (("mnist", (0, "none")), ("cifar10", (4, "random"))):
        recipe = Recipe.model_validate({"data": {"dataset": dataset, "train_subset": 10}})
        loader = make_loader(recipe, True, torch.device("cpu"))
        assert (loader.padding, loader.flip) == expected
    recipe = Recipe.model_validate(
        {"data": {"dataset": "mnist", "train_subset": 10, "crop_padding": 2, "flip": "random"}}
    )
    loader = make_loader(recipe, True, torch.device("cpu"))
    assert (loader.padding, loader.flip) == (2, "random")
    off = recipe.model_copy(update={"data": recipe.data.model_copy(update={"augment": False})})
    loader = make_loader(off, True, torch.device("cpu"))
    assert (loader.padding, loader.flip) == (0, "none")


def _mnist_copy(tmp_path) -> Path:
    """A writable copy of the real MNIST files."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MNIST.files:
        shutil.copyfile(Path(os.environ["QSGT_DATA"]) / "MNIST" / "raw" / name, raw / name)
        (raw / name).chmod(0o644)
    return raw


@needs_data
def test_a_size_preserving_corruption_is_refused_by_its_md5(tmp_path):
    raw = _mnist_copy(tmp_path)
    data = bytearray((raw / "train-images-idx3-ubyte").read_bytes())
    data[16:] = torch.randint(0, 256, (len(data) - 16,), dtype=torch.uint8).numpy().tobytes()
    (raw / "train-images-idx3-ubyte").write_bytes(bytes(data))  # still parses as 60000 images
    with pytest.raises(
        DatasetNotFoundError,
        match=r"train-images-idx3-ubyte \(from data\.root\) is not the official mnist file: its "
        r"md5 is [0-9a-f]{32}, the release's is 6bbc9ace898e44ae57da46a324031adb",
    ):
        load_split("mnist", True, root=tmp_path)
    images, _ = load_split("mnist", True, root=tmp_path, verify=False)  # on purpose
    assert images.shape == (60000, 1, 28, 28)


@needs_data
def test_labels_outside_the_classes_are_refused_even_unverified(tmp_path):
    raw = _mnist_copy(tmp_path)
    data = bytearray((raw / "t10k-labels-idx1-ubyte").read_bytes())
    data[8 + 17] = 12
    (raw / "t10k-labels-idx1-ubyte").write_bytes(bytes(data))
    with pytest.raises(
        DatasetNotFoundError, match=r"t10k-labels-idx1-ubyte .* is not the official"
    ):
        load_split("mnist", False, root=tmp_path)
    with pytest.raises(DatasetNotFoundError, match=r"has labels 0\.\.12, outside 0\.\.9"):
        load_split("mnist", False, root=tmp_path, verify=False)
