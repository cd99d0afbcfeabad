"""DP-SGD with Opacus to a target ε: the whole model's per-sample gradients clipped and noised.

The recipe is the target's (optimiser, learning rate, momentum, weight decay, epochs, schedule, expected
batch size); batches are Poisson-sampled at rate batch_size / members, as the accountant assumes. Opacus
picks the noise multiplier that reaches ``epsilon`` at ``delta`` after ``train.epochs`` epochs; the ε
reported is the one its RDP accountant says was spent.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ..data import ImageData
from ..errors import LayerleakError
from ..train import lr_schedule
from .layer_dp import FIRST_LAYER_WARNING

ACCOUNTANT = "rdp"


def check_trainable(model: nn.Module, arch: str) -> None:
    """Refuse a model Opacus cannot train privately (BatchNorm mixes samples), in one line."""
    from opacus.validators import ModuleValidator

    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise LayerleakError(f"defence dp-sgd: model {arch} has layers DP-SGD cannot train ({str(errors[0]).strip()}); "
                             f"use --defence layer-dp or --defence regularise")


def train_dp_sgd(model: nn.Module, data: ImageData, member_ids: np.ndarray, train_cfg, defence, seed: int,
                 device: torch.device, progress: Callable[[int, float], None] | None = None) -> dict:
    """Train ``model`` in place with DP-SGD; returns the privacy it spent ({epsilon, delta, noise_multiplier, ...})."""
    from opacus import PrivacyEngine

    torch.manual_seed(seed)
    x, y = data.images(member_ids)
    delta = defence.delta if defence.delta is not None else 1.0 / len(y)
    model.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=train_cfg.lr, momentum=train_cfg.momentum, weight_decay=train_cfg.weight_decay)
    loader = DataLoader(TensorDataset(x, y), batch_size=train_cfg.batch_size, generator=torch.Generator().manual_seed(seed))
    params = [p for p in model.parameters() if p.requires_grad]
    # per-layer clipping: each parameter tensor to C/sqrt(k), so a sample's whole gradient stays within C
    norm = [defence.max_grad_norm / len(params) ** 0.5] * len(params) if defence.per_layer_clipping else defence.max_grad_norm
    engine = PrivacyEngine(accountant=ACCOUNTANT)
    private, opt, loader = engine.make_private_with_epsilon(
        module=model, optimizer=opt, data_loader=loader, target_epsilon=defence.epsilon, target_delta=delta,
        epochs=train_cfg.epochs, max_grad_norm=norm, clipping="per_layer" if defence.per_layer_clipping else "flat")
    sched = lr_schedule(opt, train_cfg, len(loader))
    for epoch in range(train_cfg.epochs):
        private.train()
        total, seen = 0.0, 0
        for xb, yb in loader:
            if len(yb) == 0:  # Poisson sampling may draw an empty batch: nothing to learn from it
                sched.step()
                continue
            xb, yb = xb.to(device), yb.to(device)
            loss = F.cross_entropy(private(data.normalise(xb)), yb)
            opt.zero_grad(set_to_none=True)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=FIRST_LAYER_WARNING)
                loss.backward()
            opt.step()
            sched.step()
            total, seen = total + loss.item() * len(yb), seen + len(yb)
        private.eval()
        if progress is not None:
            progress(epoch + 1, total / max(1, seen))
    private.remove_hooks()
    return {"epsilon": float(engine.get_epsilon(delta)), "target_epsilon": defence.epsilon, "delta": delta,
            "noise_multiplier": float(opt.noise_multiplier), "max_grad_norm": defence.max_grad_norm,
            "clipping": "per_layer" if defence.per_layer_clipping else "flat", "sample_rate": float(loader.sample_rate),
            "accountant": ACCOUNTANT, "steps": sum(int(h[2]) for h in engine.accountant.history)}
