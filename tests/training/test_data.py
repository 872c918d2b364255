"""Tests for training.data: built-in datasets, file loaders written in tmp_path, augmentation."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training.data import (
    DataError,
    DatasetBundle,
    add_noise,
    list_datasets,
    load_dataset,
    make_augment,
    normalize,
    read_idx,
)


def _check_bundle(b: DatasetBundle, shape: tuple[int, ...], num_classes: int) -> None:
    assert b.input_shape == shape
    assert len(b.labels) == num_classes
    for split in (b.train, b.val, b.test):
        x, y = split.tensors
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert tuple(x.shape[1:]) == shape and len(x) == len(y) > 0
        assert x.min() >= 0.0 and x.max() <= 1.0
        assert y.min() >= 0 and y.max() < num_classes
    assert len(b.mean) == len(b.std) == shape[0]


def _all_x(b: DatasetBundle) -> torch.Tensor:
    return torch.cat([b.train.tensors[0], b.val.tensors[0], b.test.tensors[0]])


# ---------------------------------------------------------------------------------------------
# Built-in datasets


def test_list_datasets_names() -> None:
    assert {"digits", "digits28", "shapes", "mnist", "cifar10", "image-folder"} <= set(list_datasets())


def test_digits_and_digits28() -> None:
    d8 = load_dataset("digits")
    _check_bundle(d8, (1, 8, 8), 10)
    assert d8.labels == [str(i) for i in range(10)]
    assert len(d8.train) + len(d8.val) + len(d8.test) == 1797
    assert d8.chance_accuracy == pytest.approx(0.1, abs=0.01)
    assert _all_x(d8).max() == 1.0  # scaled from 0..16, not left raw

    d28 = load_dataset("digits28")
    _check_bundle(d28, (1, 28, 28), 10)
    # Same seed, same split: the resized images line up with the 8x8 ones label for label.
    assert torch.equal(d8.train.tensors[1], d28.train.tensors[1])


def test_mean_std_are_from_train_split() -> None:
    b = load_dataset("digits", seed=3)
    x = b.train.tensors[0]
    assert b.mean == pytest.approx((x.mean().item(),), abs=1e-5)
    assert b.std == pytest.approx((x.std(unbiased=False).item(),), abs=1e-5)
    assert b.mean != pytest.approx((_all_x(b).mean().item(),), abs=1e-7)


def test_splits_fixed_by_seed() -> None:
    a, b, c = (load_dataset("digits", seed=s) for s in (1, 1, 2))
    for name in ("train", "val", "test"):
        assert torch.equal(getattr(a, name).tensors[0], getattr(b, name).tensors[0])
        assert torch.equal(getattr(a, name).tensors[1], getattr(b, name).tensors[1])
    assert not torch.equal(a.test.tensors[0], c.test.tensors[0])
    # Stratified: every class lands in every split.
    for split in (a.train, a.val, a.test):
        assert len(torch.unique(split.tensors[1])) == 10


def test_fractions_and_limit() -> None:
    b = load_dataset("digits", val_fraction=0.1, test_fraction=0.2)
    n = len(b.train) + len(b.val) + len(b.test)
    assert len(b.test) == pytest.approx(0.2 * n, abs=10) and len(b.val) == pytest.approx(0.1 * n, abs=10)

    small = load_dataset("digits", limit=50)
    assert len(small.train) == 50 and 0 < len(small.val) < 50 and 0 < len(small.test) < 50
    assert len(torch.unique(small.train.tensors[1])) == 10  # prefixes stay stratified


@pytest.mark.parametrize(
    "kwargs",
    [
        {"val_fraction": 1.2},
        {"test_fraction": -0.1},
        {"val_fraction": 0.5, "test_fraction": 0.5},
        {"limit": 0},
        {"seed": -1},
        {"bogus": 1},
    ],
)
def test_invalid_options(kwargs: dict) -> None:
    with pytest.raises(DataError):
        load_dataset("digits", **kwargs)


def test_unknown_dataset_lists_known_names() -> None:
    with pytest.raises(DataError, match=r"known datasets:.*digits.*shapes"):
        load_dataset("imagenet")


def test_shapes_task() -> None:
    b = load_dataset("shapes", seed=0, n_per_class=60)
    _check_bundle(b, (3, 32, 32), 6)
    assert b.labels == ["circle", "square", "triangle", "cross", "ring", "star"]
    assert b.chance_accuracy == pytest.approx(1 / 6)
    assert "16.7%" in b.description
    ys = torch.cat([b.train.tensors[1], b.val.tensors[1], b.test.tensors[1]])
    assert torch.bincount(ys).tolist() == [60] * 6
    assert torch.bincount(b.train.tensors[1]).tolist() == [42] * 6
    # Colour is a nuisance: every class uses the whole colour range, so mean colour per class is
    # close to the overall mean.
    x = b.train.tensors[0]
    per_class = torch.stack([x[b.train.tensors[1] == k].mean(dim=(0, 2, 3)) for k in range(6)])
    assert (per_class - x.mean(dim=(0, 2, 3))).abs().max() < 0.1


def test_shapes_deterministic_and_seeded() -> None:
    a = load_dataset("shapes", seed=0, n_per_class=20)
    b = load_dataset("shapes", seed=0, n_per_class=20)
    c = load_dataset("shapes", seed=1, n_per_class=20)
    assert torch.equal(_all_x(a), _all_x(b))
    assert not torch.equal(_all_x(a), _all_x(c))
    assert (_all_x(a) - _all_x(c)).abs().mean() > 0.1


def test_shapes_bad_option() -> None:
    with pytest.raises(DataError, match=r"n_per_class"):
        load_dataset("shapes", n_per_class=0)


# ---------------------------------------------------------------------------------------------
# MNIST IDX


def _idx_bytes(arr: np.ndarray) -> bytes:
    code = {np.dtype(np.uint8): 0x08}[arr.dtype]
    return bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def _write_mnist(root: Path, *, gz: bool, n_train: int = 40, n_test: int = 20) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype(np.uint8),
    }
    root.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        if gz:
            with gzip.open(root / f"{name}.gz", "wb") as f:
                f.write(_idx_bytes(arr))
        else:
            (root / name).write_bytes(_idx_bytes(arr))
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_round_trip(tmp_path: Path, gz: bool) -> None:
    arrays = _write_mnist(tmp_path, gz=gz)
    b = load_dataset("mnist", root=tmp_path, seed=0, val_fraction=0.25)
    _check_bundle(b, (1, 28, 28), 10)
    assert len(b.train) == 30 and len(b.val) == 10
    # The official test set is the test split, pixel for pixel (in a shuffled order).
    test_imgs = arrays["t10k-images-idx3-ubyte"]
    got = (b.test.tensors[0][:, 0] * 255).round().to(torch.uint8).numpy()
    order = np.argsort([int(np.flatnonzero((test_imgs == g).all(axis=(1, 2)))[0]) for g in got])
    np.testing.assert_array_equal(got[order], test_imgs)
    np.testing.assert_array_equal(b.test.tensors[1].numpy()[order], arrays["t10k-labels-idx1-ubyte"])
    # Train + val together are exactly the official train set.
    train_val = torch.cat([b.train.tensors[0], b.val.tensors[0]])[:, 0].mul(255).round().to(torch.uint8)
    assert sorted(map(bytes, train_val.numpy())) == sorted(map(bytes, arrays["train-images-idx3-ubyte"]))


def test_read_idx_truncated_names_file(tmp_path: Path) -> None:
    _write_mnist(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.*expected \d+ bytes, got \d+"):
        load_dataset("mnist", root=tmp_path)


def test_read_idx_bad_magic_and_bad_gzip(tmp_path: Path) -> None:
    bad = tmp_path / "bad-idx"
    bad.write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(DataError, match=r"bad-idx.*bad IDX magic"):
        read_idx(bad)
    _write_mnist(tmp_path / "gz", gz=True)
    gz_path = tmp_path / "gz" / "t10k-labels-idx1-ubyte.gz"
    gz_path.write_bytes(gz_path.read_bytes()[:15])
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz"):
        load_dataset("mnist", root=tmp_path / "gz")


def test_mnist_missing_file_and_root(tmp_path: Path) -> None:
    _write_mnist(tmp_path, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.*not found"):
        load_dataset("mnist", root=tmp_path)
    with pytest.raises(DataError, match=r"root is required"):
        load_dataset("mnist")
    with pytest.raises(DataError, match=r"does not exist"):
        load_dataset("cifar10", root=tmp_path / "nowhere")


# ---------------------------------------------------------------------------------------------
# CIFAR-10


def _write_cifar(root: Path, n: int = 20) -> None:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    names = [f"class{i}" for i in range(10)]
    with (root / "batches.meta").open("wb") as f:
        pickle.dump({b"label_names": [s.encode() for s in names], b"num_vis": 3072}, f)
    for i, file in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        data[:, 0] = i  # tag the batch in the first red pixel so the test can tell batches apart
        labels = [int(v) for v in np.arange(n) % 10]
        with (root / file).open("wb") as f:
            # Protocol 2 as in the official files; bytes keys as the official files decode to.
            pickle.dump({b"batch_label": file.encode(), b"data": data, b"labels": labels}, f, protocol=2)


def test_cifar10_batches(tmp_path: Path) -> None:
    _write_cifar(tmp_path / "cifar-10-batches-py")
    b = load_dataset("cifar10", root=tmp_path, val_fraction=0.1)
    _check_bundle(b, (3, 32, 32), 10)
    assert b.labels == [f"class{i}" for i in range(10)]
    assert len(b.train) + len(b.val) == 100 and len(b.test) == 20
    assert len(b.val) == 10
    tags = lambda ds: set((ds.tensors[0][:, 0, 0, 0] * 255).round().int().tolist())  # noqa: E731
    assert tags(b.test) == {5} and tags(b.train) | tags(b.val) == {0, 1, 2, 3, 4}


def test_cifar10_missing_and_corrupt(tmp_path: Path) -> None:
    _write_cifar(tmp_path)
    (tmp_path / "data_batch_3").write_bytes(b"\x80\x02garbage")
    with pytest.raises(DataError, match=r"data_batch_3"):
        load_dataset("cifar10", root=tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(DataError, match=r"data_batch_3 not found"):
        load_dataset("cifar10", root=tmp_path)


def test_cifar10_refuses_code_in_pickle(tmp_path: Path) -> None:
    _write_cifar(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with (tmp_path / "test_batch").open("wb") as f:
        pickle.dump({"data": Evil(), "labels": []}, f)
    with pytest.raises(DataError, match=r"test_batch.*refusing"):
        load_dataset("cifar10", root=tmp_path)


# ---------------------------------------------------------------------------------------------
# Image folder


def _write_folder(root: Path, per_class: int = 6) -> None:
    colours = {"cat": (255, 0, 0), "dog": (0, 0, 255)}
    for k, (name, colour) in enumerate(colours.items()):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            ext = ("png", "jpg", "bmp")[i % 3]
            Image.new("RGB", (40 + i, 24 + k), colour).save(root / name / f"{i}.{ext}")
        (root / name / "notes.txt").write_text("ignored")


def test_image_folder(tmp_path: Path) -> None:
    _write_folder(tmp_path)
    b = load_dataset("image-folder", root=tmp_path, image_size=16, val_fraction=0.2, test_fraction=0.2)
    _check_bundle(b, (3, 16, 16), 2)
    assert b.labels == ["cat", "dog"]
    x, y = (torch.cat(t) for t in zip(b.train.tensors, b.val.tensors, b.test.tensors, strict=True))
    assert len(y) == 12
    # Red images are class 0, blue class 1 (jpg is lossy, hence the tolerance).
    assert (x[y == 0][:, 0].mean() > 0.9) and (x[y == 1][:, 2].mean() > 0.9)

    grey = load_dataset("image-folder", root=tmp_path, image_size=8, channels=1)
    assert grey.input_shape == (1, 8, 8)


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no class sub-folders"):
        load_dataset("image-folder", root=tmp_path)
    _write_folder(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty.*holds no images"):
        load_dataset("image-folder", root=tmp_path)
    (tmp_path / "empty").rmdir()
    (tmp_path / "dog" / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=r"broken\.png"):
        load_dataset("image-folder", root=tmp_path)
    with pytest.raises(DataError, match=r"channels"):
        load_dataset("image-folder", root=tmp_path, channels=2)


# ---------------------------------------------------------------------------------------------
# normalize, augmentation, noise


def test_normalize() -> None:
    x = torch.rand(4, 3, 5, 5)
    y = normalize(x, (0.1, 0.2, 0.3), (0.5, 0.5, 2.0))
    assert torch.allclose(y[:, 2], (x[:, 2] - 0.3) / 2.0)
    f = torch.rand(4, 7)
    assert torch.allclose(normalize(f, [0.5], [0.25]), (f - 0.5) / 0.25)
    with pytest.raises(DataError):
        normalize(x, (0.1, 0.2), (1.0, 1.0))


@pytest.mark.parametrize("name", ["shift", "shift-flip"])
def test_augment_keeps_shape_changes_content(name: str) -> None:
    b = load_dataset("shapes", n_per_class=10)
    x = b.train.tensors[0][:32]
    aug = make_augment(name)
    assert aug is not None
    out = aug(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert not torch.equal(out, x)
    assert out.min() >= 0.0 and out.max() <= 1.0
    # Seeded: the same generator state gives the same augmentation.
    assert torch.equal(out, aug(x, torch.Generator().manual_seed(0)))


def test_shift_is_a_translation() -> None:
    x = torch.zeros(64, 1, 9, 9)
    x[:, :, 4, 4] = 1.0
    out = make_augment("shift")(x, torch.Generator().manual_seed(1))  # type: ignore[misc]
    assert torch.equal(out.sum(dim=(1, 2, 3)), torch.ones(64))  # the dot moved, it did not smear
    pos = out[:, 0].flatten(1).argmax(1)
    rows, cols = pos // 9, pos % 9
    assert rows.min() >= 2 and rows.max() <= 6 and cols.min() >= 2 and cols.max() <= 6
    assert len(set(pos.tolist())) > 5  # each image got its own offset


def test_make_augment_names() -> None:
    assert make_augment(None) is None and make_augment("none") is None
    with pytest.raises(DataError, match=r"unknown augmentation"):
        make_augment("mixup")


def test_add_noise_in_range() -> None:
    x = torch.rand(8, 1, 8, 8)
    g = torch.Generator().manual_seed(0)
    noisy = add_noise(x, 0.5, g)
    assert noisy.shape == x.shape and noisy.min() >= 0.0 and noisy.max() <= 1.0
    assert not torch.equal(noisy, x)
    assert torch.equal(add_noise(x, 0.0), x)
