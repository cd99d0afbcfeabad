"""The cheap baseline: the target's recipe with strong weight decay and/or early stopping (fewer epochs).

No privacy claim; it shows how much of what DP buys a plain regulariser buys too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from ..data import ImageData
from ..train import train_epochs


def train_regularised(model: nn.Module, data: ImageData, member_ids: np.ndarray, train_cfg, defence, seed: int,
                      device: torch.device, progress: Callable[[int, float], None] | None = None) -> dict:
    """Train ``model`` in place with ``defence.weight_decay`` and ``defence.epochs`` (None: train.epochs)."""
    recipe = dataclasses.replace(train_cfg, weight_decay=defence.weight_decay, epochs=defence.epochs or train_cfg.epochs)
    for done, loss in train_epochs(model, data, member_ids, recipe, seed, device):
        if progress is not None:
            progress(done, loss)
    return {"weight_decay": recipe.weight_decay, "epochs": recipe.epochs, "epsilon": None, "guarantee": "none (a regulariser)"}
