"""The target model of a run: built from the config, trained here or loaded from a checkpoint."""

from __future__ import annotations

import io

import torch
from torch import nn

from .data import ImageData
from .errors import LayerleakError
from .models import ARCHS, audited_layers, build, load_checkpoint, param_count
from .rundir import CHECKPOINT, RunDir


def build_target(cfg, data: ImageData) -> nn.Module:
    """An untrained model of the configured architecture, shaped for the dataset, initialised from the config seed."""
    if cfg.model.arch in ARCHS and data.train_x.ndim != 4:
        raise LayerleakError(f"model.arch {cfg.model.arch!r} takes images [N, C, H, W]; dataset {data.name} holds inputs of shape "
                             f"{list(data.train_x.shape[1:])} per sample: give your own model (model.arch=file.py:factory)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return build(cfg.model.arch, data.num_classes, data.in_channels, input_size=data.input_size, **cfg.model.options)


def load_target(cfg, rd: RunDir, data: ImageData) -> nn.Module:
    """The run's target in eval mode: the user's checkpoint, or the one the target stage saved in OUT."""
    model = build_target(cfg, data)
    if cfg.model.checkpoint:
        load_checkpoint(model, cfg.model.checkpoint, trusted=cfg.model.trust_checkpoint)
    else:
        state = saved_state(rd)
        if state is None:
            raise LayerleakError(f"no trained target in {rd.uri}/target; run 'layerleak train' first (or 'layerleak run')")
        model.load_state_dict(state)
    return model.eval()


def saved_state(rd: RunDir) -> dict[str, torch.Tensor] | None:
    """The state dict the target stage saved in OUT, or None when it is missing or damaged (the stage trains again)."""
    return rd.read_derived(CHECKPOINT, lambda rel: torch.load(io.BytesIO(rd.read_bytes(rel)), map_location="cpu", weights_only=True))


def save_target(model: nn.Module, rd: RunDir) -> None:
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buf)
    rd.write_bytes(CHECKPOINT, buf.getvalue())


def layer_table(model: nn.Module, data: ImageData, layers: list[str] | None = None) -> list[dict]:
    """Audited layers in forward order with depth (1-based) and parameter count."""
    example = data.normalise(data.train_x[:2])
    order = audited_layers(model, example)
    if layers:
        unknown = [l for l in layers if l not in order]
        if unknown:
            raise LayerleakError(f"features.layers: unknown layer(s) {unknown}; the model has {', '.join(order)}")
        order = [l for l in order if l in set(layers)]
    return [{"name": n, "depth": i + 1, "params": param_count(model, n), "type": type(model.get_submodule(n)).__name__}
            for i, n in enumerate(order)]
