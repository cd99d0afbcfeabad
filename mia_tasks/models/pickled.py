"""A model handed to ``layerleak.audit()`` in memory: its module pickled by value into OUT/inputs (cloudpickle, so a
class defined in a notebook or a script's ``__main__`` reaches the Ray workers too), rebuilt here as the run's
architecture; its weights come from the state-dict checkpoint written beside it (model.checkpoint)."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import cloudpickle
import torch
from torch import nn

from ..errors import LayerleakError, one_line

FACTORY = "mia_tasks.models.pickled:load_module"
_INSTALLED = ("torch", "torchvision", "mia_tasks", "flows", "numpy")


def dump_module(model: nn.Module) -> bytes:
    """The module as bytes: classes of the user's own modules are pickled by value (not importable on a worker)."""
    owned = set()
    for m in model.modules():
        name = type(m).__module__
        top = name.split(".")[0]
        if name != "__main__" and top not in _INSTALLED and name in sys.modules:
            owned.add(sys.modules[name])
    for mod in owned:
        cloudpickle.register_pickle_by_value(mod)
    try:
        with torch.no_grad():
            return cloudpickle.dumps(model.cpu())
    except Exception as e:  # an attribute that cannot be pickled (an open file, a lock, a CUDA stream)
        raise LayerleakError(f"audit(model): the model cannot be pickled ({type(e).__name__}: {one_line(e)}); give a module "
                             f"without open files or handles, or save it and use model.arch=file.py:factory") from None
    finally:
        for mod in owned:
            cloudpickle.unregister_pickle_by_value(mod)


def load_module(path: str) -> nn.Module:
    """The module pickled by ``dump_module`` at ``path`` (written by audit(): trusted as the user's own object)."""
    try:
        with open(Path(path), "rb") as f:
            model = pickle.load(f)
    except FileNotFoundError:
        raise LayerleakError(f"the audited model's file {path} is missing; rerun layerleak.audit(model, ...)") from None
    except Exception as e:
        raise LayerleakError(f"the audited model's file {path} cannot be loaded here ({type(e).__name__}: {one_line(e)})") from None
    if not isinstance(model, nn.Module):
        raise LayerleakError(f"{path} holds a {type(model).__name__}, not a torch.nn.Module")
    return model
