"""Layer-wise clipping and noise: DP-SGD's update rule on the chosen layers only, the rest trained normally.

Each batch, every member's gradient w.r.t. the chosen layers' parameters (all of them together) is
clipped to norm ``clip``; the clipped gradients are summed, Gaussian noise N(0, (noise_multiplier·clip)²)
is added to each coordinate, and the sum is divided by the batch size. The other layers keep the plain
mean gradient, and the optimiser, schedule and batches are the target's (``train.train_epochs``).

An empirical defence: the unprotected layers still see every sample unclipped, so no (ε, δ) guarantee
holds for the model; the audit measures what it buys. Per-sample gradients come from Opacus's grad
samplers (the layer types it registers: Linear, Conv, ...), fed by hooks on the chosen modules only.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..data import ImageData
from ..errors import LayerleakError
from ..train import train_epochs


# torch's note that the first layer's full backward hook sees no input gradient: the output gradient is all we use
FIRST_LAYER_WARNING = "Full backward hook is firing when gradients are computed with respect to module outputs"


def _sampler(module: nn.Module, name: str):
    from opacus.grad_sample import GradSampleModule

    fn = GradSampleModule.GRAD_SAMPLERS.get(type(module))
    if fn is None:
        raise LayerleakError(f"defence layer-dp: layer {name} is a {type(module).__name__}, which has no per-sample gradient rule in Opacus")
    return fn


class LayerClipNoise:
    """Hooks on the chosen modules; ``__call__`` (between backward and the optimiser step) replaces their
    parameters' gradients by the clipped, noised mean of the per-sample gradients."""

    def __init__(self, model: nn.Module, layers: Sequence[str], clip: float, noise_multiplier: float, seed: int):
        self.clip, self.sigma = float(clip), float(noise_multiplier)
        self.modules = {name: model.get_submodule(name) for name in layers}
        self.samplers = {name: _sampler(m, name) for name, m in self.modules.items()}
        self.gen: torch.Generator | None = None
        self.seed = seed
        self.acts: dict[str, Tensor] = {}
        self.backprops: dict[str, Tensor] = {}
        self.clipped = self.samples = 0
        self.handles = []
        for name, m in self.modules.items():
            self.handles.append(m.register_forward_hook(self._keep_input(name)))
            self.handles.append(m.register_full_backward_hook(self._keep_backprop(name)))

    def _keep_input(self, name: str):
        def hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
            if module.training and torch.is_grad_enabled():
                self.acts[name] = inputs[0].detach()
        return hook

    def _keep_backprop(self, name: str):
        def hook(module: nn.Module, grad_input: tuple, grad_output: tuple) -> None:
            self.backprops[name] = grad_output[0].detach()
        return hook

    def __call__(self) -> None:
        """The chosen layers' gradients for this batch (the loss is the batch mean, as in train_epochs)."""
        per_sample: dict[nn.Parameter, Tensor] = {}
        batch = None
        for name, m in self.modules.items():
            if name not in self.acts or name not in self.backprops:
                raise LayerleakError(f"defence layer-dp: layer {name} did not run in the training pass")
            batch = self.backprops[name].shape[0]
            # the mean loss scales each sample's output gradient by 1/B: undo it for each sample's own gradient
            grads = self.samplers[name](m, [self.acts[name]], self.backprops[name] * batch)
            per_sample.update({p: g for p, g in grads.items() if p.requires_grad})
        self.acts.clear()
        self.backprops.clear()
        norms = torch.sqrt(sum(g.reshape(batch, -1).pow(2).sum(1) for g in per_sample.values()))
        factor = (self.clip / (norms + 1e-6)).clamp(max=1.0)
        self.clipped += int((factor < 1.0).sum())
        self.samples += batch
        if self.gen is None:
            first = next(iter(per_sample.values()))
            self.gen = torch.Generator(device=first.device).manual_seed(self.seed)
        for p, g in per_sample.items():
            total = torch.einsum("b,b...->...", factor.to(g.dtype), g)
            if self.sigma > 0:
                total = total + torch.normal(0.0, self.sigma * self.clip, size=total.shape, generator=self.gen,
                                             device=total.device, dtype=total.dtype)
            p.grad = (total / batch).to(p.dtype)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


def train_layer_dp(model: nn.Module, data: ImageData, member_ids: np.ndarray, train_cfg, defence, layers: Sequence[str],
                   seed: int, device: torch.device, progress: Callable[[int, float], None] | None = None) -> dict:
    """Train ``model`` in place with clipping and noise on ``layers`` only; returns what was applied."""
    clipper = LayerClipNoise(model, layers, defence.clip, defence.noise_multiplier, seed)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=FIRST_LAYER_WARNING)
            for done, loss in train_epochs(model, data, member_ids, train_cfg, seed, device, before_step=clipper):
                if progress is not None:
                    progress(done, loss)
    finally:
        clipper.remove()
    return {"layers": list(layers), "clip": defence.clip, "noise_multiplier": defence.noise_multiplier,
            "clipped_fraction": round(clipper.clipped / max(1, clipper.samples), 4), "epsilon": None,
            "guarantee": "none (empirical: the other layers see every sample unclipped)"}
