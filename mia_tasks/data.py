"""Datasets (a registry), loaded once into uint8 tensors [N, C, H, W] plus int64 labels.

``load_dataset(cfg.dataset)`` returns an ``ImageData`` with the train and test splits and the
per-channel normalisation. ``digits`` (scikit-learn's bundled set) needs no files; the others read a
local root and never download unless the config asks.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import tarfile
import zlib
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .arraydata import npz_fingerprint, read_npz
from .errors import LayerleakError, one_line

NORMALISATION = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
}


@dataclass
class ImageData:
    """Train and test images as uint8 [N, C, H, W] (or an array dataset's float inputs [N, ...]), labels int64 [N],
    and the images' normalisation."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    fingerprint: str = ""  # the content's identity beyond the config (dataset_fingerprint); part of the stage hashes

    @property
    def in_channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def input_size(self) -> int | None:
        return int(self.train_x.shape[2]) if self.train_x.ndim >= 3 else None

    @property
    def n_train(self) -> int:
        return int(self.train_x.shape[0])

    @cached_property
    def _all(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat([self.train_x, self.test_x]), torch.cat([self.train_y, self.test_y])

    def images(self, sample_ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images and labels of global sample ids (train ids first, then test ids offset by n_train)."""
        ids = torch.from_numpy(np.array(sample_ids, dtype=np.int64))
        x, y = self._all
        return x[ids], y[ids]

    @property
    def images_kind(self) -> bool:
        """uint8 images [N, C, H, W] (normalised by mean/std), not float inputs taken as they are (an npz of floats)."""
        return self.train_x.dtype == torch.uint8 and self.train_x.ndim == 4

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images to the float inputs the target model sees; float inputs (an array dataset's) as they are."""
        if x.dtype != torch.uint8:
            return x.float()
        mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
        return (x.float() / 255.0 - mean) / std


def _require_root(name: str, root: str | None) -> Path:
    if not root:
        raise LayerleakError(f"dataset {name!r} needs dataset.root (a local folder); set it with --set dataset.root=DIR")
    path = Path(root).expanduser()
    if not path.exists():
        raise LayerleakError(f"dataset root {path} does not exist (dataset {name!r}); check dataset.root")
    return path


def _digits(cfg) -> tuple:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    y = bunch.target.astype(np.int64)
    order = np.random.default_rng(12345).permutation(len(y))  # a fixed train/test split of the data itself
    train, test = order[:1300], order[1300:]
    return x[train], y[train], x[test], y[test], 10


CIFAR_LAYOUT = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels", "CIFAR10"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels", "CIFAR100"),
}


def _cifar(name: str) -> Callable:
    """The python-version CIFAR batches under ``root`` (torchvision's layout); torchvision downloads on request."""
    folder, train_files, test_files, label_key, tv_name = CIFAR_LAYOUT[name]

    def load(cfg) -> tuple:
        import pickle

        root = Path(cfg.root).expanduser() if cfg.root else None
        if cfg.download and root is not None:
            import torchvision

            try:
                getattr(torchvision.datasets, tv_name)(str(root), train=True, download=True)
            except (OSError, RuntimeError, EOFError, tarfile.TarError) as e:  # URLError is an OSError
                raise LayerleakError(f"dataset {name}: downloading into {root} failed ({type(e).__name__}: {one_line(e)}); "
                                     f"download it where the internet is reachable and point dataset.root at it with "
                                     f"dataset.download=false") from None
        root = _require_root(name, cfg.root)
        base = root / folder if (root / folder).is_dir() else root
        missing = [f for f in train_files + test_files if not (base / f).is_file()]
        if missing:
            raise LayerleakError(f"dataset {name}: {', '.join(missing)} not found under {root}/{folder}; point dataset.root at "
                                 f"the folder holding {folder}/ (torchvision's layout), or set dataset.download=true where the internet is reachable")

        def read(files: list[str]) -> tuple[np.ndarray, np.ndarray]:
            xs, ys = [], []
            for f in files:
                with open(base / f, "rb") as fh:
                    batch = pickle.load(fh, encoding="latin1")
                xs.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                ys.append(np.asarray(batch[label_key], dtype=np.int64))
            return np.concatenate(xs), np.concatenate(ys)

        train_x, train_y = read(train_files)
        test_x, test_y = read(test_files)
        return train_x, train_y, test_x, test_y, 10 if name == "cifar10" else 100
    return load


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise LayerleakError(f"{path} is not an idx file of unsigned bytes")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise LayerleakError(f"{path} is truncated: expected {int(np.prod(dims))} values, found {data.size}")
    return data.reshape(dims)


def _fashion_mnist(cfg) -> tuple:
    root = _require_root("fashion-mnist", cfg.root)
    stems = {"train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
             "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte"}
    found = {}
    for key, stem in stems.items():
        for folder in (root, root / "FashionMNIST" / "raw", root / "raw"):
            for name in (stem, stem + ".gz"):
                if (folder / name).is_file():
                    found[key] = folder / name
                    break
            if key in found:
                break
        if key not in found:
            raise LayerleakError(f"fashion-mnist: {stem}[.gz] not found under {root} (nor FashionMNIST/raw/); "
                                 f"Debian's dataset-fashion-mnist installs them in /usr/share/datasets/fashion-mnist")
    arr = {k: _read_idx(p) for k, p in found.items()}
    return arr["train_x"][:, None], arr["train_y"].astype(np.int64), arr["test_x"][:, None], arr["test_y"].astype(np.int64), 10


IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")


@dataclass(frozen=True)
class _ImageFile:
    split: str  # train | test
    label: str  # the class folder's name
    name: str  # how messages name the file: its path, or archive:member
    read: Callable[[], bytes]


def _damaged_archive(root: Path, e: BaseException) -> LayerleakError:
    return LayerleakError(f"image archive {root} cannot be read ({type(e).__name__}: {one_line(e)}); it may be truncated "
                          f"or damaged: download or pack it again (tar -tzf {root} checks it)")


def _imagefolder_entries(root: Path) -> list[_ImageFile]:
    """Every image file under train/<class>/ and test/<class>/ of a folder or a .tar(.gz) archive, by class."""
    files = []
    if root.is_file() and tarfile.is_tarfile(root):
        try:
            tar = tarfile.open(root)
            members = tar.getmembers()  # reads the whole archive: a cut-short one fails here, not mid-decode
        except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
            raise _damaged_archive(root, e) from None

        def read(m: tarfile.TarInfo) -> bytes:
            try:
                return tar.extractfile(m).read()
            except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
                raise _damaged_archive(root, e) from None
        for member in members:
            parts = Path(member.name).parts
            if member.isfile() and member.name.lower().endswith(IMAGE_EXTS) and len(parts) >= 3 and parts[-3] in ("train", "test"):
                files.append(_ImageFile(parts[-3], parts[-2], f"{root}:{member.name}", lambda m=member: read(m)))
    else:
        for split in ("train", "test"):
            for path in sorted((root / split).glob("*/*")):
                if path.is_file() and path.suffix.lower() in IMAGE_EXTS:
                    files.append(_ImageFile(split, path.parent.name, str(path), path.read_bytes))
    return sorted(files, key=lambda f: (f.split, f.label))  # stable: within a class, the folder's or the archive's order


def _decode(item: _ImageFile) -> np.ndarray:
    """One image as uint8 [H, W, 3]; a file that is not an image, or is cut short, is an error naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(item.read())) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except UnidentifiedImageError:
        raise LayerleakError(f"image folder: {item.name} is not an image that Pillow can read; remove or replace it") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise LayerleakError(f"image folder: {item.name} cannot be decoded ({one_line(e)}); "
                             f"it may be truncated or damaged: remove or replace it") from None


def imagefolder_fingerprint(root: Path) -> str:
    """The image folder's identity: every file's relative path, size and mtime (an archive's own size and mtime),
    so a changed, added or removed image gives another fingerprint and the folder is decoded again.
    os.scandir, not pathlib: 60,000 files in about a second instead of ten."""
    if root.is_file():
        st = root.stat()
        return hashlib.sha256(f"archive:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    lines: list[str] = []

    def walk(folder: str, rel: str) -> None:
        with os.scandir(folder) as entries:
            for entry in entries:
                name = f"{rel}/{entry.name}"
                if entry.is_dir():
                    walk(entry.path, name)
                elif entry.is_file():
                    st = entry.stat()
                    lines.append(f"{name}\0{st.st_size}\0{st.st_mtime_ns}")

    for split in ("train", "test"):
        if (root / split).is_dir():
            walk(str(root / split), split)
    return hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()[:16]


def _imagefolder(cfg) -> tuple:
    root = _require_root("imagefolder", cfg.root)
    entries = _imagefolder_entries(root)
    splits = {split: [f for f in entries if f.split == split] for split in ("train", "test")}
    if not splits["train"] or not splits["test"]:
        raise LayerleakError(f"imagefolder root {root} needs train/<class>/*.jpg and test/<class>/*.jpg (a folder or a .tar.gz of one)")
    classes = sorted({f.label for f in entries})
    train_classes, test_classes = ({f.label for f in splits[s]} for s in ("train", "test"))
    if train_classes != test_classes:
        only = [f"{a}/ only: {', '.join(sorted(x - y))}" for a, x, y in (("train", train_classes, test_classes),
                                                                       ("test", test_classes, train_classes)) if x - y]
        raise LayerleakError(f"imagefolder root {root}: train/ and test/ have different classes ({'; '.join(only)}); "
                             f"give both the same class folders (labels are the sorted folder names)")
    if len(classes) < 2:
        raise LayerleakError(f"imagefolder root {root} has one class ({classes[0]!r}); membership inference needs a classifier "
                             f"of at least 2 classes: one folder per class under train/ and test/")
    index = {c: i for i, c in enumerate(classes)}
    images = {split: [_decode(f) for f in items] for split, items in splits.items()}
    shapes = Counter(im.shape for ims in images.values() for im in ims)
    size = shapes.most_common(1)[0][0]
    for split, items in splits.items():
        for f, im in zip(items, images[split]):
            if im.shape != size:
                raise LayerleakError(f"image folder: {f.name} is {im.shape[1]}x{im.shape[0]} pixels, the other images are "
                                     f"{size[1]}x{size[0]}; resize or remove it (every image must have one size)")
    out = []
    for split, items in splits.items():
        x = np.stack(images[split]).transpose(0, 3, 1, 2)
        y = np.asarray([index[f.label] for f in items], dtype=np.int64)
        out += [np.ascontiguousarray(x), y]
    return (*out, len(classes))


def _cache_path(name: str, fingerprint: str) -> Path:
    return Path(os.environ.get("LAYERLEAK_CACHE", Path.home() / ".cache" / "layerleak")) / f"{name}-{fingerprint}.npz"


def _read_cache(path: Path) -> tuple | None:
    """The decoded arrays of a dataset with this content, or None (absent, or damaged: then decoded again)."""
    try:
        with np.load(path) as z:
            return z["train_x"], z["train_y"], z["test_x"], z["test_y"], int(z["classes"])
    except (OSError, ValueError, KeyError, EOFError):
        return None


def _write_cache(path: Path, arrays: tuple) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
    train_x, train_y, test_x, test_y, classes = arrays
    np.savez(tmp, train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y, classes=classes)
    os.replace(tmp, path)


def _synthetic(cfg) -> tuple:
    """Class templates plus noise: learnable, small, made on the spot (for tests)."""
    rng = np.random.default_rng(2024)
    k, c, s = cfg.synthetic_classes, cfg.synthetic_channels, cfg.synthetic_size
    templates = rng.uniform(100, 155, size=(k, c, s, s))

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(n) % k
        rng.shuffle(y)
        x = templates[y] + rng.normal(0, 70, size=(n, c, s, s))
        return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.int64)

    return (*draw(cfg.synthetic_train), *draw(cfg.synthetic_test), k)


def _npz(cfg) -> tuple:
    if not cfg.root:
        raise LayerleakError("dataset 'npz' needs dataset.root (a .npz file of train_x, train_y, test_x, test_y); "
                             "set it with --set dataset.root=FILE.npz")
    return read_npz(cfg.root)


DATASETS: dict[str, Callable] = {
    "digits": _digits,
    "cifar10": _cifar("cifar10"),
    "cifar100": _cifar("cifar100"),
    "fashion-mnist": _fashion_mnist,
    "imagefolder": _imagefolder,
    "npz": _npz,
    "synthetic": _synthetic,
}


def dataset_fingerprint(cfg) -> str:
    """What identifies the dataset's content beyond its config (stage hashes include it): for an image folder
    its files' paths, sizes and mtimes; "" for the bundled and generated sets, which the config fixes."""
    if cfg.name == "imagefolder" and cfg.root:
        root = Path(cfg.root).expanduser()
        return imagefolder_fingerprint(root) if root.exists() else ""
    if cfg.name == "npz" and cfg.root:
        path = Path(cfg.root).expanduser()
        return npz_fingerprint(path) if path.is_file() else ""
    return ""


def load_dataset(cfg) -> ImageData:
    """Load the configured dataset once into uint8 tensors; bad roots raise LayerleakError."""
    if cfg.name not in DATASETS:
        raise LayerleakError(f"unknown dataset {cfg.name!r}; choose one of {', '.join(DATASETS)}")
    fingerprint = dataset_fingerprint(cfg)
    cache = _cache_path(cfg.name, fingerprint) if fingerprint and cfg.name == "imagefolder" else None  # decoded once per content
    arrays = _read_cache(cache) if cache is not None and cache.is_file() else None
    if arrays is None:
        try:
            arrays = DATASETS[cfg.name](cfg)
        except (OSError, EOFError, pickle.UnpicklingError, zlib.error, KeyError, ValueError) as e:  # damaged files of a dataset
            raise LayerleakError(f"dataset {cfg.name} under {cfg.root}: a file cannot be read ({type(e).__name__}: {one_line(e)}); "
                                 f"it may be truncated or damaged: download or copy the dataset again") from None
        if cache is not None:
            _write_cache(cache, arrays)
    train_x, train_y, test_x, test_y, classes = arrays
    if train_x.dtype != np.uint8:  # an array dataset's float inputs, used as they are
        if cfg.mean is not None or cfg.std is not None:
            raise LayerleakError(f"dataset.mean/std normalise uint8 images; {cfg.root} holds float inputs, which the model "
                                 f"gets as they are: drop dataset.mean/std (or give uint8 images)")
        t = lambda a, dt: torch.from_numpy(np.array(a, copy=True)).to(dt)
        return ImageData(cfg.name, t(train_x, torch.float32), t(train_y, torch.int64), t(test_x, torch.float32),
                         t(test_y, torch.int64), int(classes), (), (), fingerprint)
    channels = train_x.shape[1]
    mean, std = NORMALISATION.get(cfg.name, ((0.5,) * channels, (0.25,) * channels))
    mean = tuple(cfg.mean) if cfg.mean is not None else mean
    std = tuple(cfg.std) if cfg.std is not None else std
    if len(mean) != channels or len(std) != channels:
        raise LayerleakError(f"dataset.mean/std need {channels} value(s) for {cfg.name!r}, got {len(mean)}/{len(std)}")
    t = lambda a, dt: torch.from_numpy(np.array(a, copy=True)).to(dt)
    return ImageData(cfg.name, t(train_x, torch.uint8), t(train_y, torch.int64), t(test_x, torch.uint8),
                     t(test_y, torch.int64), int(classes), mean, std, fingerprint)
