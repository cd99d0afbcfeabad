"""The commented YAML presets shipped with the package (flows/configs/*.yaml, package data), found by name.

    layerleak run --config cifar100-alexnet.yaml     # a preset, by name (or cifar100-alexnet)
    layerleak run --config my.yaml                   # any file, by path

The library only loads a file (``mia_tasks.config.load_config(path)``); which file a preset name
means is decided here, through importlib.resources, so it works from a checkout and an install alike.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from mia_tasks.config import Config, load_config
from mia_tasks.errors import LayerleakError

DEFAULT = "default.yaml"


def _folder() -> Path:
    """flows/configs on disk (pip installs packages as files, never zipped)."""
    return Path(str(files("flows").joinpath("configs")))


def names() -> list[str]:
    """The presets' file names, sorted."""
    return sorted(p.name for p in _folder().glob("*.yaml"))


def resolve(config: str | None) -> Path:
    """The file ``--config`` means: an existing file as given, else a preset by name (``.yaml`` optional);
    no ``--config``: default.yaml."""
    if config and Path(config).is_file():
        return Path(config)
    name = config or DEFAULT
    for candidate in (name, f"{name}.yaml"):
        if "/" not in candidate and (_folder() / candidate).is_file():
            return _folder() / candidate
    raise LayerleakError(f"config file {config} not found: give a path or a preset name ({', '.join(names())})")


def load(config: str | None = None, overrides: list[str] | None = None) -> Config:
    """The validated config of ``--config`` (a path or a preset name) with ``--set`` overrides applied."""
    return load_config(resolve(config), overrides)
