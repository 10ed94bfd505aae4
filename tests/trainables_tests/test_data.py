"""Tests for trainables.setting.data: bundled sets, seeded splits, file loaders, errors."""

from __future__ import annotations

import gzip
import pickle
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from trainables.errors import ConfigError, DataError
from trainables.setting.data import (
    DataSplits,
    load_dataset,
    split_indices,
)
from trainables.setting.setup import dataset_info, list_datasets

ALL_SETS = {"digits", "mnist5k", "mnist", "fashion_mnist", "cifar10", "svhn"}
FILE_SETS = ["mnist", "fashion_mnist", "cifar10", "svhn"]


# ---- fixtures written in the real file formats -------------------------------------------------


def _write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


def _idx_fixture(
    directory: Path, gz: bool, n_train: int = 50, n_test: int = 20, side: int = 28
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(123)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, side, side), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, side, side), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype(np.uint8),
    }
    for name, array in arrays.items():
        magic = 2051 if "images" in name else 2049
        _write_idx(directory / (name + (".gz" if gz else "")), array, magic)
    return arrays


def _check_official_split(
    splits: DataSplits,
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    seed: int,
) -> None:
    """Test set = the official one in order; train/val = the seeded 10% split of official train."""
    train, val, test = split_indices(train_y, seed=seed, val_fraction=0.1, test_fraction=0.0)
    assert len(test) == 0 and len(val) == round(0.1 * len(train_y))
    expect = {
        "train": (train_x[train], train_y[train]),
        "val": (train_x[val], train_y[val]),
        "test": (test_x, test_y),
    }
    for part, (x, y) in expect.items():
        got_x, got_y = getattr(splits, f"{part}_x"), getattr(splits, f"{part}_y")
        assert got_x.dtype == torch.float32 and got_y.dtype == torch.int64
        assert got_x.is_contiguous()
        want = torch.from_numpy(x.reshape(got_x.shape)).float() / 255
        assert torch.equal(got_x, want)
        assert torch.equal(got_y, torch.from_numpy(y.astype(np.int64)))


# ---- bundled sets ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "pool", "shape", "val", "test"),
    [("digits", 1797, (1, 8, 8), 449, 449), ("mnist5k", 5000, (1, 28, 28), 1000, 1500)]
)
def test_bundled_sets_load(name: str, pool: int, shape: tuple[int, int, int], val: int,
                           test: int) -> None:
    splits = load_dataset(name, seed=0)
    info = splits.info
    assert info == dataset_info(name) and info.image_shape == shape and info.num_classes == 10
    assert not info.needs_data_dir and info.default_arch == "small_cnn"
    sizes = [len(splits.train_x), len(splits.val_x), len(splits.test_x)]
    assert sum(sizes) == pool
    assert sizes[1:] == [val, test]  # as much for validation and test as the set allows
    for x, y in [
        (splits.train_x, splits.train_y),
        (splits.val_x, splits.val_y),
        (splits.test_x, splits.test_y),
    ]:
        assert x.shape[1:] == shape and x.dtype == torch.float32 and x.is_contiguous()
        assert y.dtype == torch.int64 and len(y) == len(x)
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
        assert set(y.tolist()) == set(range(10))
    assert float(splits.train_x.max()) == 1.0  # scaled by the true maximum, not left at 0..16


def test_same_seed_same_tensors_other_seed_differs() -> None:
    a, b, c = (load_dataset("digits", seed=s) for s in (0, 0, 1))
    for part in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y"):
        assert torch.equal(getattr(a, part), getattr(b, part))
    assert not torch.equal(a.test_y, c.test_y) or not torch.equal(a.test_x, c.test_x)


def test_to_moves_every_tensor() -> None:
    splits = load_dataset("digits").to("cpu")
    assert isinstance(splits, DataSplits) and splits.val_x.device.type == "cpu"


# ---- split_indices -----------------------------------------------------------------------------


def test_split_indices_disjoint_covering_deterministic_stratified() -> None:
    pool = load_dataset("digits")
    labels = torch.cat([pool.train_y, pool.val_y, pool.test_y]).numpy()  # all 1797 labels
    train, val, test = split_indices(labels, seed=0, val_fraction=0.15, test_fraction=0.15)
    joined = np.concatenate([train, val, test])
    assert len(joined) == len(labels) and set(joined.tolist()) == set(range(len(labels)))
    for part in (train, val, test):
        assert part.dtype == np.int64 and np.all(np.diff(part) > 0)  # sorted, no repeats
        assert set(labels[part].tolist()) == set(range(10))
    share = np.bincount(labels[test], minlength=10) / np.bincount(labels, minlength=10)
    assert np.all(np.abs(share - 0.15) < 0.01)  # stratified: every class gets its share
    again = split_indices(labels, seed=0, val_fraction=0.15, test_fraction=0.15)
    assert all(np.array_equal(p, q) for p, q in zip(again, (train, val, test), strict=True))
    other = split_indices(labels, seed=1, val_fraction=0.15, test_fraction=0.15)
    assert not np.array_equal(other[2], test)


def test_split_indices_tiny_classes_still_fill_every_split() -> None:
    labels = np.arange(50) % 10  # 5 per class: per-class rounding of 10% would give 0
    train, val, test = split_indices(labels, seed=3, val_fraction=0.1, test_fraction=0.0)
    assert (len(train), len(val), len(test)) == (45, 5, 0)
    assert len(set(labels[val].tolist())) == 5  # at most one per class


def test_split_indices_rejects_bad_fractions() -> None:
    with pytest.raises(ConfigError, match="val_fraction"):
        split_indices(np.zeros(10), seed=0, val_fraction=0.6, test_fraction=0.5)


# ---- standard-file loaders ---------------------------------------------------------------------


@pytest.mark.parametrize(("layout", "gz"), [("mnist", False), ("MNIST/raw", True), ("", True)])
def test_mnist_idx(tmp_path: Path, layout: str, gz: bool) -> None:
    arrays = _idx_fixture(tmp_path / layout, gz=gz)
    splits = load_dataset("mnist", data_dir=str(tmp_path), seed=2)
    assert splits.info.name == "mnist" and splits.train_x.shape == (45, 1, 28, 28)
    _check_official_split(splits, *arrays.values(), seed=2)


def test_fashion_mnist_torchvision_layout(tmp_path: Path) -> None:
    arrays = _idx_fixture(tmp_path / "FashionMNIST" / "raw", gz=False)
    splits = load_dataset("fashion_mnist", data_dir=str(tmp_path), seed=0)
    assert splits.info.threat_model.eps == pytest.approx(0.1)
    _check_official_split(splits, *arrays.values(), seed=0)


@pytest.mark.parametrize("layout", ["cifar-10-batches-py", ""])
def test_cifar10_pickles(tmp_path: Path, layout: str) -> None:
    rng = np.random.default_rng(7)
    directory = tmp_path / layout
    directory.mkdir(exist_ok=True)
    batches = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        labels = [(len(batches) * 4 + j) % 10 for j in range(4)]
        if name == "test_batch":
            data[0, 1 * 1024 + 2 * 32 + 3] = 200  # channel 1, row 2, column 3
        with (directory / name).open("wb") as f:
            pickle.dump({b"data": data, b"labels": labels}, f)
        batches.append((data, np.array(labels)))
    train_x = np.concatenate([d for d, _ in batches[:5]]).reshape(-1, 3, 32, 32)
    train_y = np.concatenate([y for _, y in batches[:5]])
    test_x, test_y = batches[5][0].reshape(-1, 3, 32, 32), batches[5][1]
    splits = load_dataset("cifar10", data_dir=str(tmp_path), seed=1)
    assert splits.info.image_shape == (3, 32, 32) and splits.info.default_arch == "resnet"
    assert splits.test_x[0, 1, 2, 3].item() == pytest.approx(200 / 255)
    _check_official_split(splits, train_x, train_y, test_x, test_y, seed=1)


def test_svhn_mat(tmp_path: Path) -> None:
    (tmp_path / "svhn").mkdir()
    rng = np.random.default_rng(5)
    for split, n in (("train", 30), ("test", 10)):
        x = rng.integers(0, 100, (32, 32, 3, n), dtype=np.uint8)
        x[5, 7, 2, 0] = 250  # row 5, column 7, channel 2 of image 0
        y = (np.arange(n) % 10 + 1).reshape(-1, 1)  # labels 1..10, 10 meaning digit 0
        scipy.io.savemat(tmp_path / "svhn" / f"{split}_32x32.mat", {"X": x, "y": y})
    splits = load_dataset("svhn", data_dir=str(tmp_path))
    assert splits.test_x.shape == (10, 3, 32, 32) and splits.test_x.is_contiguous()
    assert splits.test_x[0, 2, 5, 7].item() == pytest.approx(250 / 255)
    assert splits.test_y.tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0]
    assert len(splits.train_x) == 27 and len(splits.val_x) == 3
    assert set(splits.train_y.tolist()) | set(splits.val_y.tolist()) == set(range(10))


# ---- errors ------------------------------------------------------------------------------------


def test_unknown_name_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="digits"):
        load_dataset("imagenet")
    with pytest.raises(ConfigError, match="imagenet"):
        dataset_info("imagenet")


def test_file_set_without_data_dir() -> None:
    with pytest.raises(DataError, match=r"--data-dir.*train-images-idx3-ubyte\[\.gz\]"):
        load_dataset("mnist")


@pytest.mark.parametrize("name", FILE_SETS)
def test_data_dir_without_the_files(tmp_path: Path, name: str) -> None:
    with pytest.raises(DataError) as caught:
        load_dataset(name, data_dir=str(tmp_path))
    message = str(caught.value)
    assert str(tmp_path) in message and "--download" in message and "\n" not in message


def test_nonexistent_data_dir(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="nowhere"):
        load_dataset("cifar10", data_dir=str(missing))


def test_idx_with_wrong_magic_number(tmp_path: Path) -> None:
    arrays = _idx_fixture(tmp_path / "mnist", gz=False)
    bad = tmp_path / "mnist" / "t10k-labels-idx1-ubyte"
    _write_idx(bad, arrays["t10k-labels-idx1-ubyte"], 2051)
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.*magic"):
        load_dataset("mnist", data_dir=str(tmp_path))


def test_idx_with_wrong_image_size(tmp_path: Path) -> None:
    _idx_fixture(tmp_path, gz=True, side=10)
    with pytest.raises(DataError, match="shape"):
        load_dataset("mnist", data_dir=str(tmp_path))


def test_failed_download_says_where_to_put_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)  # never touch the real network
    with pytest.raises(DataError, match=r"failed.*by hand"):
        load_dataset("svhn", data_dir=str(tmp_path / "new"), download=True)


# ---- registry ----------------------------------------------------------------------------------


def test_every_registered_set_has_info_without_files() -> None:
    assert set(list_datasets()) == ALL_SETS and len(list_datasets()) == len(ALL_SETS)
    for name in list_datasets():
        info = dataset_info(name)
        assert info.name == name and info.num_classes == 10
        assert info.needs_data_dir == (name in FILE_SETS)
        assert info.threat_model.norm == "Linf"
        info.threat_model.validate(info.image_shape)  # budgets fit the image size
    assert dataset_info("cifar10").threat_model.eps == pytest.approx(8 / 255)
    assert dataset_info("digits").threat_model.budget("L0") == 4


def test_every_architecture_has_a_builder() -> None:
    from trainables.defense.models import list_archs
    from trainables.vocab import Arch

    assert sorted(Arch) == sorted(list_archs())


def test_the_teacher_cache_is_keyed_by_the_code_and_the_packages(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A teacher cached by other code or other package versions is never reused (issue 15: a
    fresh machine's numbers differed from those measured with a long-cached teacher)."""
    from trainables.config import TrialConfig
    from trainables.setting import prepare

    config = TrialConfig(dataset="digits", teacher_epochs=1, cache_dir=str(tmp_path))
    first = prepare.prepare_shared(config, log=lambda _: None)
    folders = {p.name for p in tmp_path.iterdir()}
    assert len(folders) == 1 and (tmp_path / next(iter(folders)) / "teacher.pt").is_file()
    again = prepare.prepare_shared(config, log=lambda _: None)  # the same code: reused
    assert {p.name for p in tmp_path.iterdir()} == folders
    assert all(torch.equal(a, b) for a, b in zip(first.teacher.encoder.state_dict().values(),
                                                 again.teacher.encoder.state_dict().values(),
                                                 strict=True))
    monkeypatch.setattr(prepare, "source_hash", lambda *_: "other code or packages")
    prepare.prepare_shared(config, log=lambda _: None)
    assert len({p.name for p in tmp_path.iterdir()} - folders) == 1  # trained afresh


def test_the_teacher_is_the_same_whoever_trains_it_first(tmp_path: Path) -> None:
    """The cached teacher depends on neither the caller's torch threads nor which tool filled
    the cache (found 2026-12-05: a calibration at batch 32 filled the cache that a search at
    batch 64 then read, and 1 and 2 threads trained different teachers)."""
    from trainables.config import TrialConfig
    from trainables.setting.prepare import prepare_shared

    def teacher(threads: int, folder: str, batch_size: int = 32) -> list[torch.Tensor]:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            config = TrialConfig(dataset="digits", teacher_epochs=2, batch_size=batch_size,
                                 cache_dir=str(tmp_path / folder))
            shared = prepare_shared(config, log=lambda _: None)
            assert torch.get_num_threads() == threads  # the pin gives the caller's back
        finally:
            torch.set_num_threads(before)
        return list(shared.teacher.encoder.state_dict().values())

    one, two = teacher(1, "one"), teacher(2, "two")
    assert all(torch.equal(a, b) for a, b in zip(one, two, strict=True))
    teacher(1, "one", batch_size=64)  # another batch size: another teacher, not the cached one
    assert len(list((tmp_path / "one").iterdir())) == 2
