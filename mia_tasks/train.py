"""Target training: SGD with momentum and weight decay, a learning-rate schedule, optional augmentation.

Deterministic from the seed on the CPU. Members are the only training data; the test split measures
generalisation, so ``train_acc - test_acc`` is the overfitting the attacks feed on.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

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


@torch.no_grad()
def accuracy(model: nn.Module, data: ImageData, x: torch.Tensor, y: torch.Tensor, device: torch.device, batch: int = 512) -> float:
    """Top-1 accuracy of the model (eval mode) on uint8 images."""
    model.eval()
    correct = 0
    for i in range(0, len(y), batch):
        xb = data.normalise(x[i:i + batch].to(device))
        correct += (model(xb).argmax(1).cpu() == y[i:i + batch]).sum().item()
    return correct / max(1, len(y))


def train_target(model: nn.Module, data: ImageData, member_ids: np.ndarray, cfg, seed: int,
                 progress: Callable[[int, float], None] | None = None) -> dict:
    """Train ``model`` on the members; return metrics (accuracies, sizes, epochs, wall time)."""
    device = resolve_device(cfg.device)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x, y = data.images(member_ids)
    x_dev, y_dev = x.to(device), y.to(device)
    model.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    steps_per_epoch = (len(y) + cfg.batch_size - 1) // cfg.batch_size
    if cfg.schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps_per_epoch)
    elif cfg.schedule == "step":
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, [m * steps_per_epoch for m in cfg.milestones], cfg.gamma)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    start = time.perf_counter()
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
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if progress:
            progress(epoch + 1, total / len(y))
    wall = time.perf_counter() - start
    model.eval()
    return {
        "train_accuracy": accuracy(model, data, x, y, device),
        "test_accuracy": accuracy(model, data, data.test_x, data.test_y, device),
        "members": int(len(y)),
        "test_size": int(len(data.test_y)),
        "epochs": cfg.epochs,
        "device": str(device),
        "wall_s": round(wall, 2),
    }
