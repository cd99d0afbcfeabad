"""Defences a model's owner can train with, audited again with the same config (``layerleak defend``).

    dp-sgd      Opacus DP-SGD on the whole model to a target ε (dp_sgd.py); ε from the accountant
    layer-dp    clipping and noise on the chosen layers only (layer_dp.py); empirical, no ε claim
    regularise  strong weight decay and/or early stopping: the cheap baseline (regularise.py)

A defended target is trained on the audited target's members with its recipe; its name says which
settings made it (``dp-sgd-eps1``, ``layer-dp-fc2``, ``regularise-wd0.01``), so several coexist in
OUT/defences/, and its stage hashes are the audited target's extended by those settings, so a
finished defence is reused only when they match.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import LayerleakError

if TYPE_CHECKING:  # the report reads defences' names and hashes without loading torch
    import numpy as np
    import torch
    from torch import nn

    from ..data import ImageData

DEFENCES = {
    "dp-sgd": "Opacus DP-SGD on every layer to a target ε (δ = 1/members unless defence.delta); ε from the RDP accountant",
    "layer-dp": "clipping and Gaussian noise on the chosen layers' per-sample gradients only; empirical, no ε",
    "regularise": "the target's recipe with strong weight decay (defence.weight_decay) and/or fewer epochs (defence.epochs)",
}
# What each defence's result depends on besides the audited target's settings (keys of DefenceConfig).
SETTINGS = {
    "dp-sgd": ("epsilon", "delta", "max_grad_norm", "per_layer_clipping"),
    "layer-dp": ("clip", "noise_multiplier"),
    "regularise": ("weight_decay", "epochs"),
}
DEFENDED_STAGES = ("target", "features", "sweep")  # the stages a defence redoes; splits are the audited target's


def defence_settings(defence, layers: Sequence[str] | None = None) -> dict[str, Any]:
    """The settings a defended target records (and its hashes cover): the defence's keys, and layer-dp's layers."""
    out: dict[str, Any] = {"defence": defence.name, **{k: getattr(defence, k) for k in SETTINGS[defence.name]}}
    if defence.name == "layer-dp":
        out["layers"] = list(layers or [])
    return out


def defence_name(settings: dict[str, Any]) -> str:
    """The folder name under OUT/defences/: the defence and the settings that tell two of a kind apart."""
    kind = settings["defence"]
    if kind == "dp-sgd":
        return f"dp-sgd-eps{settings['epsilon']:g}" + ("-perlayer" if settings["per_layer_clipping"] else "")
    if kind == "layer-dp":
        return "layer-dp-" + "+".join(settings["layers"])
    return f"regularise-wd{settings['weight_decay']:g}" + (f"-ep{settings['epochs']}" if settings["epochs"] else "")


def defence_hashes(hashes: dict[str, str], settings: dict[str, Any]) -> dict[str, str]:
    """The defended audit's stage hashes: the audited one's, with the defence's settings folded into the stages it redoes."""
    out = dict(hashes)
    for stage in DEFENDED_STAGES:
        out[stage] = hashlib.sha256(json.dumps([hashes[stage], settings], sort_keys=True).encode()).hexdigest()[:16]
    return out


def top_players(shapley: dict, count: int) -> list[dict]:
    """The ``count`` players with the highest Shapley values in a shapley.json: by the interval's lower end where
    there are intervals (the first target's), else by the mean over repeats. Each: {player, layers}."""
    block = shapley["targets"][0] if "targets" in shapley else shapley
    ranked = []
    for p in block["players"]:
        s = p.get("shapley")
        if isinstance(s, dict) and s.get("ci95"):
            key = (s["ci95"][0], s["value"])
        elif isinstance(s, dict):
            key = (s.get("value", s.get("mean")), 0.0)
        else:
            key = (p.get("mean", p.get("value")), 0.0)
        ranked.append((key, p))
    ranked.sort(key=lambda kp: kp[0], reverse=True)
    return [{"player": p["player"], "layers": list(p.get("layers") or [p["player"]])} for _, p in ranked[:count]]


def check_layers(layers: Sequence[str], audited: Sequence[str]) -> list[str]:
    """``layers`` in forward order, or one error naming the unknown ones and the audited layers."""
    unknown = [l for l in layers if l not in audited]
    if unknown:
        raise LayerleakError(f"defence.layers: unknown layer(s) {', '.join(unknown)}; the audited layers are {', '.join(audited)}")
    if not layers:
        raise LayerleakError("defence.layers: name at least one layer to protect")
    return [l for l in audited if l in set(layers)]


def require_opacus(name: str) -> None:
    """dp-sgd and layer-dp need Opacus (the optional extra ``layerleak[defences]``): say so in one line, before any work."""
    if name == "regularise":
        return
    try:
        import opacus  # noqa: F401
    except ImportError:
        raise LayerleakError(f"defence {name} needs Opacus: pip install 'layerleak[defences]' (or opacus>=1.5)") from None


def train_defended(model: nn.Module, data: ImageData, member_ids: np.ndarray, cfg, layers: Sequence[str] | None,
                   device: torch.device, progress: Callable[[int, float], None] | None = None) -> dict:
    """Train ``model`` in place on the members with ``cfg.defence``; returns what the defence did (ε spent, ...)."""
    defence = cfg.defence
    if defence.name == "dp-sgd":
        from .dp_sgd import check_trainable, train_dp_sgd

        check_trainable(model, cfg.model.arch)
        return train_dp_sgd(model, data, member_ids, cfg.train, defence, cfg.seed, device, progress)
    if defence.name == "layer-dp":
        from .layer_dp import train_layer_dp

        return train_layer_dp(model, data, member_ids, cfg.train, defence, list(layers or []), cfg.seed, device, progress)
    from .regularise import train_regularised

    return train_regularised(model, data, member_ids, cfg.train, defence, cfg.seed, device, progress)
