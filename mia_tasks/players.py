"""Shapley players: audited layers, or groups of them, and the feature columns each brings."""

from __future__ import annotations

from collections import OrderedDict

from .errors import LayerleakError
from .models import default_groups

STAT_NAMES = ("max", "min", "mean", "l1", "l2", "kurtosis", "skewness")


def make_players(spec, layers: list[str]) -> "OrderedDict[str, list[str]]":
    """``spec`` is 'layers' (one player per layer), 'groups' (the model's default grouping) or {player: [layers]}."""
    if spec == "layers":
        return OrderedDict((l, [l]) for l in layers)
    if spec == "groups":
        return default_groups(layers)
    players: "OrderedDict[str, list[str]]" = OrderedDict()
    seen: set[str] = set()
    for name, members in spec.items():
        members = [members] if isinstance(members, str) else list(members)
        unknown = [m for m in members if m not in layers]
        if unknown:
            raise LayerleakError(f"sweep.players[{name!r}]: unknown layer(s) {unknown}; audited layers: {', '.join(layers)}")
        twice = [m for m in members if m in seen]
        if twice:
            raise LayerleakError(f"sweep.players: layer(s) {twice} belong to more than one player")
        seen.update(members)
        players[str(name)] = members
    return players


def player_columns(players: "OrderedDict[str, list[str]]", kinds: list[str]) -> list[list[str]]:
    """For each player, its feature columns (kind.layer.stat) in canonical order."""
    return [[f"{kind}.{layer}.{stat}" for layer in members for kind in kinds for stat in STAT_NAMES] for members in players.values()]
