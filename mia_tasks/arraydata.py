"""Array datasets: a ``.npz`` of train/test inputs and labels (``dataset.name=npz``), and the checks that turn a
user's arrays, tensors or torch ``Dataset`` into the (train_x, train_y, test_x, test_y, classes) every loader returns.

Inputs of dtype uint8 are images (normalised by dataset.mean/std like every image dataset); float inputs are the
model's inputs exactly as given (any per-sample shape, no normalisation). The train split holds the members.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .errors import LayerleakError, one_line

# the keys a .npz may use for each array: ours first, then Keras' load_data() names
KEYS = {"train_x": ("train_x", "x_train"), "train_y": ("train_y", "y_train"),
        "test_x": ("test_x", "x_test"), "test_y": ("test_y", "y_test")}
CHANNELS = (1, 3, 4)


def _images_first(x: np.ndarray) -> np.ndarray:
    """uint8 images as [N, C, H, W]: [N, H, W] gets one channel, channels-last [N, H, W, C] is transposed."""
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4 and x.shape[-1] in CHANNELS and x.shape[1] not in CHANNELS:
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    return x


def check_arrays(train_x: Any, train_y: Any, test_x: Any, test_y: Any, where: str,
                 classes: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Validated arrays: inputs uint8 images [N, C, H, W] or float32 [N, ...] with one per-sample shape for both
    splits, finite; labels int64 [N] in 0..classes-1 (classes = the largest label + 1 unless given); at least two
    classes among the members. Anything else is one LayerleakError naming ``where`` and the fix."""
    out = []
    for name, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
        x, y = np.asarray(x), np.asarray(y)
        if x.ndim < 2 or x.shape[0] == 0:
            raise LayerleakError(f"{where}: {name} inputs have shape {list(x.shape)}; expected [N, ...] with N >= 1 samples")
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise LayerleakError(f"{where}: {name} labels have shape {list(y.shape)} for {x.shape[0]} inputs; "
                                 f"expected one integer class label per sample, shape [{x.shape[0]}]")
        if not (np.issubdtype(y.dtype, np.integer) or (np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0))):
            raise LayerleakError(f"{where}: {name} labels are {y.dtype}, not class indices; give integer labels 0..classes-1")
        if y.size and y.min() < 0:
            raise LayerleakError(f"{where}: {name} labels hold {int(y.min())}; class labels are 0..classes-1")
        if x.dtype == np.uint8:
            x = _images_first(x)
        elif np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_:
            x = x.astype(np.float32)
            if not np.isfinite(x).all():
                raise LayerleakError(f"{where}: {name} inputs hold NaN or infinite values; give finite inputs")
        else:
            raise LayerleakError(f"{where}: {name} inputs are {x.dtype}; give uint8 images or float inputs")
        out += [np.ascontiguousarray(x), y.astype(np.int64)]
    (tr_x, tr_y, te_x, te_y) = out
    if tr_x.dtype != te_x.dtype or tr_x.shape[1:] != te_x.shape[1:]:
        raise LayerleakError(f"{where}: train inputs are {tr_x.dtype} {list(tr_x.shape[1:])} per sample, test inputs "
                             f"{te_x.dtype} {list(te_x.shape[1:])}; both splits need one dtype and shape")
    top = int(max(tr_y.max(), te_y.max())) + 1
    k = top if classes is None else int(classes)
    if top > k:
        raise LayerleakError(f"{where}: labels go up to {top - 1} but classes is {k}; raise classes or fix the labels")
    if len(np.unique(tr_y)) < 2:
        raise LayerleakError(f"{where}: the train split (members) holds one class; membership inference needs a classifier "
                             f"of at least 2 classes")
    return tr_x, tr_y, te_x, te_y, k


def npz_fingerprint(path: Path) -> str:
    """The file's content (sha256), so a changed .npz redoes the stages and a moved one does not."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def read_npz(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """The checked arrays of a ``.npz`` holding train_x, train_y, test_x, test_y (or x_train, y_train, x_test,
    y_test) and optionally classes; loaded without pickle."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise LayerleakError(f"dataset npz: {path} not found; set dataset.root to a .npz file of train_x, train_y, test_x, test_y")
    try:
        with np.load(path, allow_pickle=False) as z:
            found = list(z.files)
            arrays = {}
            for key, names in KEYS.items():
                name = next((n for n in names if n in found), None)
                if name is None:
                    raise LayerleakError(f"dataset npz {path}: no {key} array (found {', '.join(found) or 'none'}); "
                                         f"give train_x, train_y, test_x, test_y (or x_train, y_train, x_test, y_test)")
                arrays[key] = z[name]
            classes = int(z["classes"]) if "classes" in found else None
    except LayerleakError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise LayerleakError(f"dataset npz {path} cannot be read ({type(e).__name__}: {one_line(e)}); give a .npz written by "
                             f"numpy.savez (arrays only, no pickled objects)") from None
    return check_arrays(arrays["train_x"], arrays["train_y"], arrays["test_x"], arrays["test_y"], f"dataset npz {path}", classes)


def write_npz(path: str | Path, arrays: tuple) -> None:
    """Write checked arrays whole (a temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.npz")
    train_x, train_y, test_x, test_y, classes = arrays
    np.savez(tmp, train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y, classes=classes)
    os.replace(tmp, path)


def as_arrays(data: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, labels) as numpy arrays from a pair of arrays or tensors, or from a torch Dataset of (input, label)."""
    import torch

    def numpy(v: Any) -> np.ndarray:
        return v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)

    if isinstance(data, (tuple, list)) and len(data) == 2:
        return numpy(data[0]), numpy(data[1])
    if isinstance(data, torch.utils.data.Dataset):
        try:
            items = [data[i] for i in range(len(data))]  # type: ignore[arg-type]
        except TypeError:
            raise LayerleakError(f"audit({what}=...): the Dataset has no len(); give a map-style Dataset or (x, y) arrays") from None
        if not items or not all(isinstance(it, (tuple, list)) and len(it) >= 2 for it in items):
            raise LayerleakError(f"audit({what}=...): the Dataset's items must be (input, label) pairs")
        return np.stack([numpy(it[0]) for it in items]), np.asarray([int(numpy(it[1])) for it in items])
    raise LayerleakError(f"audit({what}=...): got {type(data).__name__}; give (inputs, labels) as numpy arrays or tensors, "
                         f"or a torch Dataset of (input, label)")
