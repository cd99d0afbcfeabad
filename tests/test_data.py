"""Dataset loaders on data the tests make, in each on-disk format; bad roots get one clear error."""

from __future__ import annotations

import gzip
import pickle
import struct
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from mia_tasks.config import DatasetConfig
from mia_tasks.data import load_dataset
from mia_tasks.errors import LayerleakError

RNG = np.random.default_rng(0)


def test_digits_is_bundled():
    d = load_dataset(DatasetConfig(name="digits"))
    assert d.train_x.dtype == torch.uint8 and d.train_x.shape[1:] == (1, 8, 8)
    assert d.n_train + len(d.test_y) == 1797 and d.num_classes == 10
    assert int(d.train_x.max()) == 255


def test_synthetic_shapes():
    d = load_dataset(DatasetConfig(name="synthetic", synthetic_train=40, synthetic_test=12, synthetic_classes=3,
                                   synthetic_channels=3, synthetic_size=6))
    assert d.train_x.shape == (40, 3, 6, 6) and d.test_x.shape == (12, 3, 6, 6) and d.num_classes == 3
    x, y = d.images(np.array([0, 40, 51]))
    assert (x[1] == d.test_x[0]).all() and y[2] == d.test_y[11]


def _cifar_batch(path, n, label_key, classes):
    data = RNG.integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8)
    labels = list(RNG.integers(0, classes, size=n))
    with open(path, "wb") as f:
        pickle.dump({"data": data, label_key: labels}, f)
    return data, labels


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_python_batches(tmp_path, name):
    if name == "cifar10":
        folder, label_key, classes = tmp_path / "cifar-10-batches-py", "labels", 10
        folder.mkdir()
        batches = [_cifar_batch(folder / f"data_batch_{i}", 7, label_key, classes) for i in range(1, 6)]
        test = _cifar_batch(folder / "test_batch", 5, label_key, classes)
    else:
        folder, label_key, classes = tmp_path / "cifar-100-python", "fine_labels", 100
        folder.mkdir()
        batches = [_cifar_batch(folder / "train", 35, label_key, classes)]
        test = _cifar_batch(folder / "test", 5, label_key, classes)
    d = load_dataset(DatasetConfig(name=name, root=str(tmp_path)))
    assert d.train_x.shape == (35, 3, 32, 32) and d.test_x.shape == (5, 3, 32, 32) and d.num_classes == classes
    first = batches[0][0][0].reshape(3, 32, 32)
    assert (d.train_x[0].numpy() == first).all() and d.train_y[0] == batches[0][1][0]
    assert (d.test_x[0].numpy() == test[0][0].reshape(3, 32, 32)).all() and d.test_y[0] == test[1][0]
    assert d.mean != (0.5, 0.5, 0.5)  # the dataset's own normalisation


def _idx(path, arr, gz=True):
    header = struct.pack(">BBBB", 0, 0, 8, arr.ndim) + b"".join(struct.pack(">I", s) for s in arr.shape)
    raw = header + arr.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(raw)


@pytest.mark.parametrize("layout", ["debian", "torchvision"])
def test_fashion_mnist_idx(tmp_path, layout):
    folder = tmp_path if layout == "debian" else tmp_path / "FashionMNIST" / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    gz = layout == "debian"
    ext = ".gz" if gz else ""
    train = RNG.integers(0, 256, size=(9, 28, 28))
    _idx(folder / f"train-images-idx3-ubyte{ext}", train, gz)
    _idx(folder / f"train-labels-idx1-ubyte{ext}", np.arange(9) % 10, gz)
    _idx(folder / f"t10k-images-idx3-ubyte{ext}", RNG.integers(0, 256, size=(4, 28, 28)), gz)
    _idx(folder / f"t10k-labels-idx1-ubyte{ext}", np.arange(4), gz)
    d = load_dataset(DatasetConfig(name="fashion-mnist", root=str(tmp_path)))
    assert d.train_x.shape == (9, 1, 28, 28) and (d.train_x[:, 0].numpy() == train).all()
    assert d.test_y.tolist() == [0, 1, 2, 3]


def test_fashion_mnist_truncated(tmp_path):
    _idx(tmp_path / "train-images-idx3-ubyte.gz", RNG.integers(0, 256, size=(9, 28, 28)))
    raw = gzip.open(tmp_path / "train-images-idx3-ubyte.gz").read()[:-10]
    gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "wb").write(raw)
    for stem in ("train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        _idx(tmp_path / f"{stem}.gz", np.zeros(3))
    with pytest.raises(LayerleakError, match="truncated"):
        load_dataset(DatasetConfig(name="fashion-mnist", root=str(tmp_path)))


def _image_tree(root, per_class=3):
    pixels = {}
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            for i in range(per_class):
                arr = RNG.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
                Image.fromarray(arr).save(root / split / cls / f"{i}.png")
                pixels[(split, cls, i)] = arr
    return pixels


@pytest.mark.parametrize("packed", [False, True])
def test_imagefolder_folder_and_tarball(tmp_path, monkeypatch, packed):
    monkeypatch.setenv("LAYERLEAK_CACHE", str(tmp_path / "cache"))
    pixels = _image_tree(tmp_path / "set")
    root = tmp_path / "set"
    if packed:
        root = tmp_path / "set.tar.gz"
        with tarfile.open(root, "w:gz") as tar:
            tar.add(tmp_path / "set", arcname="set")
    cfg = DatasetConfig(name="imagefolder", root=str(root))
    d = load_dataset(cfg)
    assert d.train_x.shape == (6, 3, 6, 6) and d.num_classes == 2
    assert sorted(d.train_y.tolist()) == [0, 0, 0, 1, 1, 1]
    assert any((d.train_x[j].numpy().transpose(1, 2, 0) == pixels[("train", "dog", 0)]).all() for j in range(6))
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1  # decoded once, cached as arrays
    again = load_dataset(cfg)
    assert (again.train_x == d.train_x).all()


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "fashion-mnist", "imagefolder"])
def test_missing_root(tmp_path, name):
    with pytest.raises(LayerleakError, match="does not exist"):
        load_dataset(DatasetConfig(name=name, root=str(tmp_path / "absent")))
    with pytest.raises(LayerleakError, match="needs dataset.root"):
        load_dataset(DatasetConfig(name=name, root=None))


def test_cifar_root_without_batches(tmp_path):
    with pytest.raises(LayerleakError, match="not found under"):
        load_dataset(DatasetConfig(name="cifar100", root=str(tmp_path)))


def _jpeg(path, size=(6, 6)):
    Image.fromarray(RNG.integers(0, 256, size=(*size, 3), dtype=np.uint8)).save(path, format="JPEG")


@pytest.mark.parametrize("damage,needle", [
    ("truncated", "cannot be decoded (Truncated File Read); it may be truncated or damaged"),
    ("not-an-image", "is not an image that Pillow can read"),
    ("other-size", "is 9x7 pixels, the other images are 6x6; resize or remove it"),
])
def test_imagefolder_bad_image_names_the_file(tmp_path, monkeypatch, damage, needle):
    monkeypatch.setenv("LAYERLEAK_CACHE", str(tmp_path / "cache"))
    _image_tree(tmp_path / "set")
    bad = tmp_path / "set" / "train" / "dog" / "odd.jpg"
    if damage == "truncated":
        _jpeg(bad)
        bad.write_bytes(bad.read_bytes()[:200])
    elif damage == "not-an-image":
        bad.write_text("these are notes, not pixels\n")
    else:
        _jpeg(bad, size=(7, 9))
    with pytest.raises(LayerleakError) as e:
        load_dataset(DatasetConfig(name="imagefolder", root=str(tmp_path / "set")))
    assert str(bad) in str(e.value) and needle in str(e.value), str(e.value)
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())  # nothing cached


def test_imagefolder_single_class_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERLEAK_CACHE", str(tmp_path / "cache"))
    for split in ("train", "test"):
        (tmp_path / "set" / split / "cat").mkdir(parents=True)
        for i in range(3):
            _jpeg(tmp_path / "set" / split / "cat" / f"{i}.jpg")
    with pytest.raises(LayerleakError, match="has one class \\('cat'\\); membership inference needs a classifier of at least 2 classes"):
        load_dataset(DatasetConfig(name="imagefolder", root=str(tmp_path / "set")))


@pytest.mark.parametrize("change", ["change", "add", "remove"])
def test_imagefolder_cache_is_keyed_by_content(tmp_path, monkeypatch, change):
    """A changed, added or removed image gives another fingerprint: the folder is decoded again, not read from the cache."""
    from mia_tasks.data import dataset_fingerprint

    monkeypatch.setenv("LAYERLEAK_CACHE", str(tmp_path / "cache"))
    _image_tree(tmp_path / "set")
    cfg = DatasetConfig(name="imagefolder", root=str(tmp_path / "set"))
    before, fingerprint = load_dataset(cfg), dataset_fingerprint(cfg)
    assert dataset_fingerprint(cfg) == fingerprint and load_dataset(cfg).fingerprint == fingerprint  # unchanged: same key
    target = tmp_path / "set" / "train" / "cat" / "1.png"
    if change == "change":
        new = np.full((6, 6, 3), 7, dtype=np.uint8)
        Image.fromarray(new).save(target)
    elif change == "add":
        Image.fromarray(np.full((6, 6, 3), 7, dtype=np.uint8)).save(tmp_path / "set" / "train" / "cat" / "9.png")
    else:
        target.unlink()
    after = load_dataset(cfg)
    assert after.fingerprint != fingerprint and len(list((tmp_path / "cache").glob("*.npz"))) == 2  # decoded again
    assert len(after.train_y) == len(before.train_y) + {"change": 0, "add": 1, "remove": -1}[change]
    if change != "remove":
        assert any((x.numpy() == 7).all() for x in after.train_x) and not any((x.numpy() == 7).all() for x in before.train_x)


@pytest.mark.slow  # about a minute: decodes, trains and redoes the stages twice
def test_changed_image_folder_redoes_its_stages(ray_head, tmp_path):
    """Issue 12: after one image is removed, the next run decodes the folder again and redoes splits and target
    (the folder's fingerprint enters the stage hashes; config.yaml's hashes, which refuse another config, stay)."""
    import json

    import pyarrow.parquet as pq
    from helpers import run_cli, tiny_args

    root = tmp_path / "set"
    for split, n in (("train", 64), ("test", 10)):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(RNG.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)).save(root / split / cls / f"{i}.png")
    out, env = tmp_path / "run", {"LAYERLEAK_CACHE": str(tmp_path / "cache")}
    args = tiny_args(out, "dataset.name=imagefolder", f"dataset.root={root}", "train.epochs=3")
    first = run_cli("train", *args, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    hashes = (pq.read_schema(out / "splits.parquet").metadata, json.loads((out / "target" / "metrics.json").read_text())["config_hash"])
    (root / "train" / "dog" / "5.png").unlink()
    second = run_cli("train", *args, env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "reusing" not in second.stdout and len(list((tmp_path / "cache").glob("*.npz"))) == 2
    assert pq.read_schema(out / "splits.parquet").metadata != hashes[0]
    assert json.loads((out / "target" / "metrics.json").read_text())["config_hash"] != hashes[1]
