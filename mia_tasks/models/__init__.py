"""Target architectures (a registry), their audited layers, Shapley player groups and checkpoint loading.

``build(arch, num_classes, in_channels=3, **kwargs)`` makes a model; ``arch`` is a registered name
(``cnn``, ``alexnet``, ``resnet``) or a user's factory given as ``package.module:factory`` or
``path/to/file.py:factory``.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..errors import LayerleakError
from .cifar import AlexNet, ResNet, SmallCNN

ARCHS: dict[str, Callable[..., nn.Module]] = {
    "cnn": SmallCNN,
    "alexnet": AlexNet,
    "resnet": ResNet,
}

AUDITED_TYPES = (nn.Conv1d, nn.Conv2d, nn.Linear)


def _load_factory(spec: str) -> Callable[..., nn.Module]:
    target, _, name = spec.rpartition(":")
    if not target or not name:
        raise LayerleakError(f"model.arch {spec!r}: expected one of {sorted(ARCHS)} or 'package.module:factory' or 'file.py:factory'")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise LayerleakError(f"model.arch {spec!r}: file {target} not found")
        mod_spec = importlib.util.spec_from_file_location(f"layerleak_user_{path.stem}", path)
        module = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            raise LayerleakError(f"model.arch {spec!r}: cannot import {target}: {e}") from None
    factory = getattr(module, name, None)
    if not callable(factory):
        raise LayerleakError(f"model.arch {spec!r}: {target} has no callable {name!r}")
    return factory


def build(arch: str, num_classes: int, in_channels: int = 3, **kwargs: Any) -> nn.Module:
    """Build a target model; unknown names and impossible shapes raise LayerleakError."""
    if arch in ARCHS:
        factory = ARCHS[arch]
    elif ":" in arch:
        factory = _load_factory(arch)
    else:
        raise LayerleakError(f"unknown model.arch {arch!r}: choose one of {', '.join(sorted(ARCHS))}, or give 'module:factory'")
    params = inspect.signature(factory).parameters
    takes_all = any(p.kind is p.VAR_KEYWORD for p in params.values())
    offered = {"num_classes": num_classes, "in_channels": in_channels, **kwargs}
    call = {k: v for k, v in offered.items() if takes_all or k in params}
    unknown = set(kwargs) - set(call)
    if unknown and arch in ARCHS:
        raise LayerleakError(f"model {arch!r} takes no option(s) {sorted(unknown)}; it takes {sorted(set(params) - {'self'})}")
    try:
        return factory(**call)
    except (ValueError, TypeError) as e:
        raise LayerleakError(f"model {arch!r}: {e}") from None


def audited_layers(model: nn.Module, example: torch.Tensor | None = None) -> list[str]:
    """Qualified names of the modules with their own conv/linear weights, in forward order.

    With ``example`` (a batch of inputs) the order is observed from a forward pass; without it,
    registration order (which is forward order for the built-in architectures).
    """
    names = [n for n, m in model.named_modules() if isinstance(m, AUDITED_TYPES) and getattr(m, "weight", None) is not None]
    if example is None:
        return names
    order: list[str] = []
    handles = [m.register_forward_hook(lambda mod, i, o, n=n: order.append(n) if n not in order else None)
               for n, m in model.named_modules() if n in set(names)]
    try:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            model(example)
        model.train(was_training)
    finally:
        for h in handles:
            h.remove()
    return order + [n for n in names if n not in order]


def param_count(model: nn.Module, layer: str) -> int:
    """Number of parameters a layer owns directly (weight and bias)."""
    return sum(p.numel() for p in model.get_submodule(layer).parameters(recurse=False))


def default_groups(layers: list[str]) -> "OrderedDict[str, list[str]]":
    """The default Shapley players of a deep net: its top-level children that hold audited layers.

    For ResNet this is stem (conv1) / layer1 / layer2 / layer3 / head (fc).
    """
    groups: "OrderedDict[str, list[str]]" = OrderedDict()
    for name in layers:
        groups.setdefault(name.split(".")[0], []).append(name)
    return groups


def _strip_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model", "net"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise LayerleakError("checkpoint holds no state dict (expected a dict of tensors, or {'state_dict': ...})")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def load_checkpoint(model: nn.Module, path: str | Path, trusted: bool = False) -> nn.Module:
    """Load a state dict (bare, ``{'state_dict': ...}``, ``module.``-prefixed) into ``model``.

    Files load with ``weights_only=True`` unless ``trusted``. A key or shape mismatch raises a
    LayerleakError naming the first offending keys.
    """
    path = Path(path)
    if not path.is_file():
        raise LayerleakError(f"checkpoint {path} not found")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=not trusted)
    except Exception as e:  # pickle errors differ by torch version
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LayerleakError(f"checkpoint {path} could not be read safely ({first}); set model.trust_checkpoint=true only for files you trust") from None
    state = _strip_state_dict(raw)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:3]}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:3]}")
        if shape:
            parts.append(f"shape mismatch {shape[:3]}")
        raise LayerleakError(f"checkpoint {path} does not fit the model: {'; '.join(parts)}")
    model.load_state_dict(state)
    return model
