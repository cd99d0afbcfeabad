"""Target architectures (a registry), their audited layers, Shapley player groups and checkpoint loading.

``build(arch, num_classes, in_channels=3, **kwargs)`` makes a model; ``arch`` is a registered name
(``cnn``, ``alexnet``, ``resnet``) or a user's factory given as ``package.module:factory`` or
``path/to/file.py:factory``.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from ..errors import LayerleakError, one_line
from ..gradstats import registered_layers
from .cifar import AlexNet, ResNet, SmallCNN

ARCHS: dict[str, Callable[..., nn.Module]] = {
    "cnn": SmallCNN,
    "alexnet": AlexNet,
    "resnet": ResNet,
}

def load_factory(spec: str) -> Callable[..., nn.Module]:
    """The factory a user names as 'package.module:factory' or 'path/to/file.py:factory' (imports its module);
    any error in the user's code is a LayerleakError naming model.arch."""
    target, _, name = spec.rpartition(":")
    if not target or not name:
        raise LayerleakError(f"model.arch {spec!r}: expected one of {sorted(ARCHS)} or 'package.module:factory' or 'file.py:factory'")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise LayerleakError(f"model.arch {spec!r}: file {target} not found")
        mod_spec = importlib.util.spec_from_file_location(f"layerleak_user_{path.stem}", path)
        module = importlib.util.module_from_spec(mod_spec)
        try:
            mod_spec.loader.exec_module(module)
        except Exception as e:  # the user's code: any error, reported as one line naming the file
            raise LayerleakError(f"model.arch {spec!r}: importing {target} raised {type(e).__name__}: {one_line(e)}") from None
    else:
        try:
            module = importlib.import_module(target)
        except Exception as e:
            raise LayerleakError(f"model.arch {spec!r}: cannot import {target}: {type(e).__name__}: {one_line(e)}") from None
    factory = getattr(module, name, None)
    if not callable(factory):
        raise LayerleakError(f"model.arch {spec!r}: {target} has no callable {name!r}")
    return factory


def build(arch: str, num_classes: int, in_channels: int = 3, **kwargs: Any) -> nn.Module:
    """Build a target model; unknown names and impossible shapes raise LayerleakError."""
    if arch in ARCHS:
        factory = ARCHS[arch]
    elif ":" in arch:
        factory = load_factory(arch)
    else:
        raise LayerleakError(f"unknown model.arch {arch!r}: choose one of {', '.join(sorted(ARCHS))}, or give 'module:factory'")
    params = inspect.signature(factory).parameters
    takes_all = any(p.kind is p.VAR_KEYWORD for p in params.values())
    offered = {"num_classes": num_classes, "in_channels": in_channels, **kwargs}
    call = {k: v for k, v in offered.items() if takes_all or k in params}
    unknown = set(kwargs) - set(call) - {"input_size"}  # the data's shape is offered to every factory; options are asked for
    if unknown:  # a built-in or a user's factory: an option it does not take is a typo, never dropped silently
        takes = sorted(set(params) - {"self", "num_classes", "in_channels"})
        raise LayerleakError(f"model {arch!r} takes no option(s) {sorted(unknown)} (model.options / --option); "
                             f"it takes {takes or 'no options'}: fix or remove the option")
    try:
        model = factory(**call)
    except LayerleakError:
        raise
    except (ValueError, TypeError) as e:
        raise LayerleakError(f"model {arch!r}: {one_line(e)}") from None
    except Exception as e:  # a user's factory: any error, one line naming it
        if arch in ARCHS:
            raise
        raise LayerleakError(f"model.arch {arch!r}: the factory raised {type(e).__name__}: {one_line(e)}") from None
    if not isinstance(model, nn.Module):
        raise LayerleakError(f"model.arch {arch!r}: the factory returned {type(model).__name__}, not a torch.nn.Module")
    return model


def audited_layers(model: nn.Module, example: torch.Tensor | None = None) -> list[str]:
    """Qualified names of the modules with their own weights that per-sample statistics support (a route
    registered in ``mia_tasks.gradstats``: conv and linear layers), in forward order.

    With ``example`` (a batch of inputs) the order is observed from a forward pass; without it,
    registration order (which is forward order for the built-in architectures).
    """
    names = registered_layers(model)
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


def default_groups(layers: list[str]) -> OrderedDict[str, list[str]]:
    """The default Shapley players of a deep net: its top-level children that hold audited layers.

    For ResNet this is stem (conv1) / layer1 / layer2 / layer3 / head (fc).
    """
    groups: OrderedDict[str, list[str]] = OrderedDict()
    for name in layers:
        groups.setdefault(name.split(".")[0], []).append(name)
    return groups


WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "network")  # training scripts' usual wrappers
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DistributedDataParallel, torch.compile


def _read(path: Path, trusted: bool) -> Any:
    """``torch.load`` (weights only unless ``trusted``); a file that is no checkpoint, or needs trust, is one error."""
    try:
        return torch.load(path, map_location="cpu", weights_only=not trusted)
    except Exception as e:  # noqa: BLE001 -- unpickling garbage raises almost any type; all mean the same here
        text = str(e)
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if unsafe and not trusted:
            raise LayerleakError(f"checkpoint {path} holds pickled objects besides tensors ({unsafe.group(1)}), which loading "
                                 "would run as code; set model.trust_checkpoint=true only for a file you trust") from None
        if trusted and isinstance(e, (ImportError, AttributeError)):
            raise LayerleakError(f"checkpoint {path} pickles objects whose code is not importable here ({e}); put their "
                                 "module on PYTHONPATH, or save a bare state dict: torch.save(model.state_dict(), ...)") from None
        raise LayerleakError(f"checkpoint {path} is not a PyTorch checkpoint ({_reason(e, path)})") from None


def _reason(e: Exception, path: Path) -> str:
    """The informative part of torch.load's error, whole (no sentence cut in the middle)."""
    if path.stat().st_size == 0:
        return "the file is empty"
    text = str(e)
    operand = re.search(r"Unsupported operand \d+", text)
    if operand:  # weights-only unpickler: bytes torch.save never writes
        return f"unpickling failed: {operand.group(0)}"
    first = text.strip().splitlines()[0] if text.strip() else ""
    first = first.split(". ")[0].rstrip(".")
    return f"{type(e).__name__}: {first}" if first else f"{type(e).__name__} while unpickling"


def _state_dict(obj: Any, path: Path) -> dict[str, Any]:
    """The state dict inside a checkpoint: bare, a whole pickled module, or under a wrapper key; prefixes removed."""
    for _ in range(3):  # e.g. {'model': {'state_dict': ...}}
        if isinstance(obj, nn.Module):
            obj = obj.state_dict()
        if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), (dict, nn.Module))), None)
            if inner is not None:
                obj = inner
                continue
        break
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        found = f"a dict with keys {_short(list(obj))}" if isinstance(obj, dict) else f"a {type(obj).__name__}"
        raise LayerleakError(f"checkpoint {path} holds no state dict (found {found}); expected a dict of tensors, "
                             f"or one under {' / '.join(repr(k) for k in WRAPPER_KEYS)}")
    for prefix in WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in obj):
            consume_prefix_in_state_dict_if_present(obj, prefix)
    return obj


def _short(items: list[str], n: int = 3) -> str:
    """The first ``n`` items and how many more, e.g. ``['a', 'b', 'c'] and 4 more``."""
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return f"{items[:n]}{more}"


_QUOTED = re.compile(r'"([^"]+)"')
_SIZE_MISMATCH = re.compile(r"size mismatch for (\S+): copying a param with shape torch.Size\((\[[^\]]*\])\) from "
                            r"checkpoint, the shape in current model is torch.Size\((\[[^\]]*\])\)")


def _misfit(e: RuntimeError, path: Path) -> LayerleakError:
    """One line from load_state_dict's lists of missing, unexpected and mis-shaped keys."""
    text = str(e)
    parts = []
    for label, head in (("missing keys", "Missing key(s) in state_dict:"), ("unexpected keys", "Unexpected key(s) in state_dict:")):
        line = next((l for l in text.splitlines() if head in l), None)
        if line:
            parts.append(f"{label} {_short(_QUOTED.findall(line))}")
    shapes = [f"{k} {_dims(a)} vs {_dims(b)}" for k, a, b in _SIZE_MISMATCH.findall(text)]
    if shapes:
        parts.append(f"shape mismatch {_short(shapes)}")
    if not parts:  # another kind of load error: torch's own lines, joined
        parts = [l.strip() for l in text.splitlines()[1:] if l.strip()] or [text.strip()]
    return LayerleakError(f"checkpoint {path} does not fit the model: {'; '.join(parts)}")


def _dims(shape: str) -> str:
    """``[3, 128]`` as a tuple: ``(3, 128)``."""
    return str(tuple(int(d) for d in shape.strip("[]").split(",") if d.strip()))


def load_checkpoint(model: nn.Module, path: str | Path, trusted: bool = False) -> nn.Module:
    """Load a checkpoint into ``model`` with PyTorch's own semantics, as published checkpoints expect.

    ``torch.load`` (``weights_only`` unless ``trusted``; legacy non-zip files too), the state dict
    unwrapped from ``{'state_dict': ...}``-style wrappers, ``module.`` prefixes removed with torch's
    helper, then ``load_state_dict(strict=True)`` (which accepts old BatchNorm states without
    ``num_batches_tracked``). Any failure is one LayerleakError naming the file and what is wrong.
    """
    path = Path(path)
    if not path.is_file():
        raise LayerleakError(f"checkpoint {path} not found")
    state = _state_dict(_read(path, trusted), path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise _misfit(e, path) from None
    bad = [k for k, v in model.state_dict().items() if torch.is_floating_point(v) and not torch.isfinite(v).all()]
    if bad:
        raise LayerleakError(f"checkpoint {path} holds NaN or infinite values in {len(bad)} tensor(s) ({', '.join(bad[:3])}"
                             f"{', ...' if len(bad) > 3 else ''}); a diverged or damaged model cannot be audited: "
                             f"give a checkpoint of finite weights")
    return model
