"""Tests for jkt.data: every loader on tiny files written here, plus subsets, noise and batches."""
import gzip
import math
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from jkt import batching, data


# ---------------------------------------------------------------- helpers
def write_idx(path, arr, magic, gz):
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    raw = header + arr.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)
    return path


def make_fashion(folder, gz=True, n_train=12, n_test=5):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = (np.arange(n) % 10).astype(np.uint8)
        write_idx(folder / f"{split}-images-idx3-ubyte", x, 2051, gz)
        write_idx(folder / f"{split}-labels-idx1-ubyte", y, 2049, gz)
        arrays[split] = (x, y)
    return arrays


@pytest.fixture
def no_debian(monkeypatch, tmp_path):
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")
    monkeypatch.delenv("JKT_DATA", raising=False)


def toy_split(counts, seed=0):
    y = np.concatenate([np.full(n, c) for c, n in enumerate(counts)])
    y = np.random.default_rng(seed).permutation(y)
    x = torch.arange(len(y), dtype=torch.int32).remainder(256).to(torch.uint8).view(-1, 1, 1, 1)
    return data.Split(x, torch.from_numpy(y.astype(np.int64)))


# ---------------------------------------------------------------- data_root
def test_data_root_order(monkeypatch, tmp_path):
    assert data.data_root(tmp_path) == tmp_path.resolve()
    monkeypatch.setenv("JKT_DATA", str(tmp_path / "env"))
    assert data.data_root() == (tmp_path / "env").resolve()
    monkeypatch.delenv("JKT_DATA")
    assert data.data_root() == (data.Path(data.__file__).resolve().parents[1] / "data")


# ---------------------------------------------------------------- fashion-mnist
@pytest.mark.parametrize("gz", [True, False])
def test_fashion_idx(tmp_path, no_debian, gz):
    arrays = make_fashion(tmp_path / "fashion-mnist", gz=gz)
    ds = data.load("fashion-mnist", root=tmp_path)
    assert ds.train.x.shape == (12, 1, 28, 28) and ds.test.x.shape == (5, 1, 28, 28)
    assert ds.train.x.dtype == torch.uint8 and ds.train.y.dtype == torch.int64
    assert np.array_equal(ds.train.x[:, 0].numpy(), arrays["train"][0])
    assert np.array_equal(ds.test.y.numpy(), arrays["t10k"][1])
    assert ds.num_classes == 10 and ds.in_channels == 1 and ds.image_size == (28, 28)
    assert ds.mean == (0.2860,) and ds.std == (0.3530,)


def test_fashion_torchvision_layout(tmp_path, no_debian):
    make_fashion(tmp_path / "FashionMNIST" / "raw", gz=False)
    assert len(data.load("fashion-mnist", root=tmp_path).train) == 12


def test_fashion_bad_magic(tmp_path, no_debian):
    folder = tmp_path / "fashion-mnist"
    make_fashion(folder)
    write_idx(folder / "train-labels-idx1-ubyte", np.zeros(12, np.uint8), 2051, gz=True)
    with pytest.raises(ValueError, match=r"magic number 2051, expected 2049"):
        data.load("fashion-mnist", root=tmp_path)


def test_fashion_truncated_and_not_gzip(tmp_path, no_debian):
    folder = tmp_path / "fashion-mnist"
    make_fashion(folder)
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="corrupt"):
        data.load("fashion-mnist", root=tmp_path)
    raw = gzip.decompress((folder / "train-images-idx3-ubyte.gz").read_bytes())
    p = tmp_path / "short-images-idx3-ubyte"
    p.write_bytes(raw[:-7])
    with pytest.raises(ValueError, match="truncated"):
        data.read_idx(p, 2051)


def test_fashion_not_found_message(tmp_path, no_debian):
    root = tmp_path / "empty"
    root.mkdir()
    with pytest.raises(FileNotFoundError) as err:
        data.load("fashion-mnist", root=root)
    msg = str(err.value)
    assert "fashion-mnist" in msg
    for place in (root / "fashion-mnist", root / "FashionMNIST" / "raw", tmp_path / "no-debian"):
        assert str(place.resolve()) in msg
    assert "sudo apt-get install dataset-fashion-mnist" in msg
    assert "JKT_DATA" in msg and "download=True" in msg
    assert "train-images-idx3-ubyte.gz" in msg


def test_download_failure_is_reported(tmp_path, no_debian, monkeypatch):
    import torchvision

    def offline(*a, **k):
        raise RuntimeError("no internet here")
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    with pytest.raises(FileNotFoundError, match="no internet here"):
        data.load("fashion-mnist", root=tmp_path, download=True)


# ---------------------------------------------------------------- cifar
def cifar_rows(n, seed):
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3072), dtype=np.uint8)


def dump(path, obj):
    path.write_bytes(pickle.dumps(obj))


def test_cifar10_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rows = []
    for i in range(1, 6):
        r = cifar_rows(2, i)
        rows.append(r)
        dump(folder / f"data_batch_{i}", {b"data": r, b"labels": [i % 10, (i + 3) % 10]})
    test = cifar_rows(3, 9)
    test[0, :] = 0
    test[0, 5 * 32 + 7] = 200           # red plane, row 5, column 7
    test[0, 1024 + 5 * 32 + 7] = 100    # green
    test[0, 2048 + 5 * 32 + 7] = 50     # blue
    dump(folder / "test_batch", {b"data": test, b"labels": [1, 2, 3]})
    ds = data.load("cifar10", root=tmp_path)
    assert ds.train.x.shape == (10, 3, 32, 32) and ds.test.x.shape == (3, 3, 32, 32)
    assert ds.train.y.tolist() == [1, 4, 2, 5, 3, 6, 4, 7, 5, 8]
    assert ds.test.x[0, :, 5, 7].tolist() == [200, 100, 50]
    assert ds.test.x[0].sum().item() == 350
    assert np.array_equal(ds.train.x[2].numpy().reshape(-1), rows[1][0])
    assert ds.classes == data.CIFAR10_CLASSES  # no batches.meta: fallback names
    assert ds.mean == (0.4914, 0.4822, 0.4465)


def test_cifar100_batches_and_meta(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    dump(folder / "train", {b"data": cifar_rows(4, 1), b"fine_labels": [0, 99, 5, 5],
                            b"coarse_labels": [0, 1, 2, 2]})
    dump(folder / "test", {b"data": cifar_rows(2, 2), b"fine_labels": [7, 8]})
    dump(folder / "meta", {b"fine_label_names": [f"name{i}".encode() for i in range(100)]})
    ds = data.load("cifar100", root=tmp_path)
    assert ds.train.x.shape == (4, 3, 32, 32) and ds.train.y.tolist() == [0, 99, 5, 5]
    assert ds.num_classes == 100 and ds.classes[99] == "name99"
    assert ds.std == (0.2673, 0.2564, 0.2762)


def test_cifar_not_found_and_fake_download(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError) as err:
        data.load("cifar100", root=tmp_path)
    msg = str(err.value)
    assert "cifar100" in msg and str(tmp_path.resolve() / "cifar-100-python") in msg
    assert "download=True" in msg and "JKT_DATA" in msg

    import torchvision
    calls = []

    def fake_cifar10(root, download, **kw):  # writes what torchvision would
        calls.append((root, download))
        f = data.Path(root) / "cifar-10-batches-py"
        f.mkdir(parents=True)
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            dump(f / name, {b"data": cifar_rows(1, 0), b"labels": [3]})
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", fake_cifar10)
    ds = data.load("cifar10", root=tmp_path, download=True)
    assert calls == [(str(tmp_path.resolve()), True)] and len(ds.train) == 5


def test_cifar_bad_batch(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    dump(folder / "train", {b"data": cifar_rows(2, 1), b"labels": [0, 1]})
    dump(folder / "test", {b"data": cifar_rows(2, 1), b"fine_labels": [0, 1]})
    with pytest.raises(ValueError, match="fine_labels"):
        data.load("cifar100", root=tmp_path)


# ---------------------------------------------------------------- image folders
def make_folder(base, n_per_class=6, classes=("kitchen", "bar", "office"), sub="Images"):
    """Solid-colour images of varied sizes; odd ones PNG, even ones JPEG, office/img03 greyscale."""
    images = base / sub if sub else base
    for k, c in enumerate(classes):
        (images / c).mkdir(parents=True)
        for i in range(n_per_class):
            ext = "png" if i % 2 else "jpg"
            im = Image.new("RGB", (10 + i, 7), (40 * k + i, 200 - 30 * k, 10 * i))
            if (c, i) == ("office", 3):
                im = Image.new("L", (9, 9), 90)
            im.save(images / c / f"img{i:02d}.{ext}")
    return images


def test_imagefolder_fixed_split(tmp_path):
    make_folder(tmp_path / "indoor", sub=None)
    ds = data.load(f"imagefolder:{tmp_path / 'indoor'}", image_size=12)
    assert ds.classes == ["bar", "kitchen", "office"]
    assert ds.train.x.shape == (15, 3, 12, 12) and ds.test.x.shape == (3, 3, 12, 12)
    assert ds.test.y.tolist() == [0, 1, 2]   # img04 of each class is the 5th by name
    assert ds.train.x.dtype == torch.uint8 and ds.mean == (0.485, 0.456, 0.406)
    # test image of class 1 = kitchen/img04.jpg, colour (4, 200, 40) up to JPEG error
    assert (ds.test.x[1, :, 6, 6].int() - torch.tensor([4, 200, 40])).abs().max() <= 6
    assert ds.class_counts()["test"] == {"bar": 1, "kitchen": 1, "office": 1}


def test_imagefolder_official_split_relative_default_size(tmp_path, monkeypatch):
    base = tmp_path / "data" / "mit67"
    make_folder(base)
    (base / "TrainImages.txt").write_text("bar/img01.png\nkitchen/img00.jpg\noffice/img03.png\n")
    (base / "TestImages.txt").write_text("office/img05.png\n\n")
    monkeypatch.chdir(tmp_path)
    ds = data.load("imagefolder:mit67", root=tmp_path / "data")   # resolved against data_root
    assert ds.train.y.tolist() == [0, 1, 2] and ds.test.y.tolist() == [2]
    assert ds.image_size == (64, 64)
    assert ds.test.x[0, :, 30, 30].tolist() == [85, 140, 50]      # office/img05.png: exact colour
    assert ds.train.x[2, :, 5, 5].tolist() == [90, 90, 90]        # greyscale PNG became RGB
    ds2 = data.load("imagefolder:data/mit67", image_size=8)        # resolved against the cwd
    assert ds2.train.x.shape == (3, 3, 8, 8)
    (base / "TestImages.txt").write_text("gym/img00.jpg\n")
    with pytest.raises(ValueError, match="gym/img00.jpg"):
        data.load("imagefolder:mit67", root=tmp_path / "data")
    (base / "TestImages.txt").unlink()
    with pytest.raises(ValueError, match="TestImages.txt"):
        data.load("imagefolder:mit67", root=tmp_path / "data")


def test_imagefolder_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="imagefolder:nowhere") as err:
        data.load("imagefolder:nowhere", root=tmp_path)
    assert str(tmp_path.resolve() / "nowhere") in str(err.value)


# ---------------------------------------------------------------- names
@pytest.mark.parametrize("name", ["mnist", "CIFAR10", "imagefolder:", "", None])
def test_unknown_dataset(name, tmp_path, monkeypatch):
    monkeypatch.setattr(data, "data_root", lambda root=None: pytest.fail("touched the disk"))
    with pytest.raises(ValueError) as err:
        data.load(name)
    msg = str(err.value)
    assert "dataset" in msg and repr(name) in msg and "imagefolder:PATH" in msg
    assert all(n in msg for n in data.DATASETS)


# ---------------------------------------------------------------- subset
def test_subset_stratified_reproducible_nested():
    split = toy_split([30, 12, 20])
    s = data.subset(split, 10, seed=3)
    assert torch.bincount(s.y).tolist() == [10, 10, 10]
    i10 = data.subset_indices(split, 10, seed=3)
    assert torch.equal(i10, data.subset_indices(split, 10, seed=3))
    assert not torch.equal(i10, data.subset_indices(split, 10, seed=4))
    assert torch.equal(i10, torch.sort(i10).values)               # original order
    assert torch.equal(s.x, split.x[i10]) and torch.equal(s.y, split.y[i10])
    i5 = data.subset_indices(split, 5, seed=3)
    assert set(i5.tolist()) <= set(i10.tolist())
    assert set(data.subset_indices(split, 12, seed=3).tolist()) >= set(i10.tolist())
    assert data.subset(split, "full", seed=0) is split


def test_subset_fixed_values():
    # pins the draw so a change of algorithm is noticed (cross-machine reproducibility)
    split = data.Split(torch.zeros(8, 1, 1, 1, dtype=torch.uint8), torch.tensor([0, 1] * 4))
    rng = np.random.default_rng(7)
    expect = sorted([int(2 * rng.permutation(4)[0]), int(2 * rng.permutation(4)[0] + 1)])
    assert data.subset_indices(split, 1, seed=7).tolist() == expect


@pytest.mark.parametrize("bad", [0, -3, 13, 2.5, "ten", True, None])
def test_subset_bad_values(bad):
    with pytest.raises(ValueError, match=r"per_class must be an integer from 1 to 12") as err:
        data.subset(toy_split([30, 12, 20]), bad, seed=0)
    assert repr(bad) in str(err.value)


# ---------------------------------------------------------------- add_noise
def test_add_noise():
    x = torch.zeros(200_000)
    assert data.add_noise(x, 0) is x
    g = torch.Generator().manual_seed(0)
    noisy = data.add_noise(x, 0.3, generator=g)
    assert abs(noisy.std().item() - 0.3) < 0.005 and abs(noisy.mean().item()) < 0.005
    again = data.add_noise(x, 0.3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(noisy, again)
    for bad in (-0.1, float("nan"), float("inf"), "0.1", True):
        with pytest.raises(ValueError, match="sigma"):
            data.add_noise(x, bad)
    with pytest.raises(ValueError, match="normalize"):
        data.add_noise(torch.zeros(3, dtype=torch.uint8), 0.1)


# ---------------------------------------------------------------- Batches
def test_batches():
    ds = data.load("digits")
    b = batching.Batches(ds.train, ds, batch_size=64, device="cpu", shuffle=True, seed=1)
    assert len(b) == math.ceil(len(ds.train) / 64)
    epochs = []
    for _ in range(2):
        seen = []
        for x, y, idx in b:
            assert x.dtype == torch.float32 and idx.dtype == torch.int64
            assert torch.allclose(x, ds.normalize(ds.train.x[idx]))
            assert torch.equal(y, ds.train.y[idx])
            seen.append(idx)
        order = torch.cat(seen)
        assert sorted(order.tolist()) == list(range(len(ds.train)))
        epochs.append(order)
    assert not torch.equal(epochs[0], epochs[1])                   # generator advances
    b2 = batching.Batches(ds.train, ds, 64, "cpu", shuffle=True, seed=1)
    assert [torch.cat([i for _, _, i in b2]).tolist() for _ in range(2)] == [e.tolist() for e in epochs]
    plain = torch.cat([i for _, _, i in batching.Batches(ds.test, ds, 100, "cpu", shuffle=False)])
    assert plain.tolist() == list(range(len(ds.test)))
    with pytest.raises(ValueError, match="batch_size"):
        batching.Batches(ds.test, ds, 0, "cpu", shuffle=False)


def test_normalize_values():
    ds = data.load("digits")
    x = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1)
    out = ds.normalize(x).view(-1).tolist()
    assert out == pytest.approx([-ds.mean[0] / ds.std[0], (1 - ds.mean[0]) / ds.std[0]], rel=1e-6)


# ---------------------------------------------------------------- digits
def test_digits():
    ds = data.load("digits")
    assert ds.num_classes == 10 and ds.in_channels == 1 and ds.image_size == (8, 8)
    assert (len(ds.train), len(ds.test)) == (1201, 596)
    counts = ds.class_counts()
    for c in ds.classes:
        n = counts["train"][c] + counts["test"][c]
        assert counts["test"][c] == n // 3
    assert ds.train.x.max().item() == 255 and ds.train.x.dtype == torch.uint8
    pix = ds.train.x.double() / 255
    assert ds.mean[0] == pytest.approx(pix.mean().item(), abs=1e-4)
    assert ds.std[0] == pytest.approx(pix.std(unbiased=False).item(), abs=1e-4)
    again = data.load("digits")
    assert torch.equal(ds.train.x, again.train.x) and torch.equal(ds.test.y, again.test.y)
    big = data.load("digits", image_size=16)
    assert big.train.x.shape[1:] == (1, 16, 16) and big.train.x.dtype == torch.uint8


# ---------------------------------------------------------------- real Fashion-MNIST
@pytest.mark.skipif(not (data.DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").exists(),
                    reason="Debian's dataset-fashion-mnist package is not installed")
def test_real_fashion_mnist(tmp_path, monkeypatch):
    monkeypatch.delenv("JKT_DATA", raising=False)
    ds = data.load("fashion-mnist", root=tmp_path)     # empty root: falls through to Debian's folder
    assert (len(ds.train), len(ds.test)) == (60000, 10000)
    assert set(ds.class_counts()["train"].values()) == {6000}
    assert set(ds.class_counts()["test"].values()) == {1000}
    pix = ds.train.x.double() / 255
    assert round(pix.mean().item(), 4) == ds.mean[0] == 0.2860
    assert round(pix.std().item(), 4) == ds.std[0] == 0.3530
