"""Shapley players: audited layers, or groups of them, and the feature columns each brings."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from . import schema
from .errors import LayerleakError
from .models import default_groups


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


def player_columns(players: "OrderedDict[str, list[str]]", kinds: list[str], constant: Iterable[str] = ()) -> list[list[str]]:
    """For each player, its feature columns (kind.layer.stat) in canonical order, less the ``constant`` ones
    (columns constant by construction carry nothing an attack could use)."""
    constant = list(constant)
    return [schema.player_columns(members, kinds, constant) for members in players.values()]
