"""Target training: SGD with momentum and weight decay, a learning-rate schedule, optional augmentation.

Deterministic from the seed on the CPU. Members are the only training data; the test split measures
generalisation, so ``train_acc - test_acc`` is the overfitting the attacks feed on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.fx.experimental.optimization import fuse

from .data import ImageData
from .errors import LayerleakError


def resolve_device(device: str, setting: str = "train.device", fallback: bool = False) -> torch.device:
    """'auto' picks CUDA when present. 'cuda' without a usable CUDA device is an error naming ``setting``,
    or the CPU when ``fallback`` (an actor given a GPU resource on a node whose CUDA does not work)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        if fallback:
            return torch.device("cpu")
        raise LayerleakError(f"{setting}={device} but no CUDA device is usable here; use {setting}=auto or cpu")
    return torch.device(device)


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding (1/8 of the side) and, for colour images, horizontal flips."""
    n, _, h, w = x.shape
    pad = max(1, h // 8)
    padded = F.pad(x, (pad, pad, pad, pad))
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    rows = (dy.view(n, 1) + torch.arange(h).view(1, h)).to(x.device)
    cols = (dx.view(n, 1) + torch.arange(w).view(1, w)).to(x.device)
    out = padded[torch.arange(n, device=x.device)[:, None, None, None], torch.arange(x.shape[1], device=x.device)[None, :, None, None],
                 rows[:, None, :, None], cols[:, None, None, :]]
    if x.shape[1] == 3:
        flip = (torch.rand(n, generator=gen) < 0.5).to(x.device)
        out[flip] = out[flip].flip(-1)
    return out


@torch.inference_mode()
def for_inference(model: nn.Module, example: torch.Tensor) -> tuple[nn.Module, torch.memory_format]:
    """A faster copy of ``model`` for a long inference pass, and the memory format its inputs take.

    BatchNorm folded into the convolution before it (torch.fx) and channels-last memory (the layout
    oneDNN's CPU convolutions prefer) make a ResNet-20 forward ~1.5x faster on 2 CPU cores. Used only
    where it traces, runs and gives the model's logits on ``example``; else ``model`` as it is.
    """
    model.eval()
    expected = model(example)
    fmt = torch.channels_last if example.dim() == 4 else torch.contiguous_format
    try:
        fast = fuse(model).to(memory_format=fmt).eval()
        got = fast(example.contiguous(memory_format=fmt))
    except Exception:  # noqa: BLE001 -- a model fx cannot trace, or a .view() that needs contiguous inputs
        return model, torch.contiguous_format
    if got.shape == expected.shape and torch.allclose(got, expected, rtol=1e-3, atol=1e-4):
        return fast, fmt
    return model, torch.contiguous_format


@torch.inference_mode()
def correct_batches(model: nn.Module, data: ImageData, x: torch.Tensor, y: torch.Tensor, device: torch.device,
                    batch: int = 512, memory_format: torch.memory_format = torch.contiguous_format) -> Iterator[tuple[int, int]]:
    """(images, correct top-1 predictions) per batch of uint8 images, in eval and inference mode: a caller
    over a large set (a pretrained target's 60,000 images) reports progress between batches."""
    model.eval()
    for i in range(0, len(y), batch):
        xb = data.normalise(x[i:i + batch].to(device)).contiguous(memory_format=memory_format)
        yield len(xb), int((model(xb).argmax(1).cpu() == y[i:i + batch]).sum())


@torch.inference_mode()
def accuracy(model: nn.Module, data: ImageData, x: torch.Tensor, y: torch.Tensor, device: torch.device, batch: int = 512) -> float:
    """Top-1 accuracy of the model (eval mode, inference mode) on uint8 images."""
    return sum(c for _, c in correct_batches(model, data, x, y, device, batch)) / max(1, len(y))


def lr_schedule(opt: torch.optim.Optimizer, cfg, steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    """The learning-rate schedule of ``train.schedule`` (stepped once per batch), for the target and the defences."""
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps_per_epoch)
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.MultiStepLR(opt, [m * steps_per_epoch for m in cfg.milestones], cfg.gamma)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


def train_epochs(model: nn.Module, data: ImageData, member_ids: np.ndarray, cfg, seed: int,
                 device: torch.device, before_step: Callable[[], None] | None = None) -> Iterator[tuple[int, float]]:
    """Train ``model`` on the members on ``device``, yielding (epochs done, the epoch's mean loss) after each
    epoch, so a caller can report progress; the model is left in eval mode. ``before_step`` runs between each
    batch's backward pass and its optimiser step (a defence rewriting some layers' gradients: mia_tasks.defences)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x, y = data.images(member_ids)
    x_dev, y_dev = x.to(device), y.to(device)
    model.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    steps_per_epoch = (len(y) + cfg.batch_size - 1) // cfg.batch_size
    sched = lr_schedule(opt, cfg, steps_per_epoch)
    for epoch in range(cfg.epochs):
        model.train()
        order = torch.randperm(len(y), generator=gen).to(device)
        total = 0.0
        for i in range(0, len(y), cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            xb = x_dev[idx]
            if cfg.augment:
                xb = _augment(xb, gen)
            loss = F.cross_entropy(model(data.normalise(xb)), y_dev[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if before_step is not None:
                before_step()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        model.eval()
        yield epoch + 1, total / len(y)
