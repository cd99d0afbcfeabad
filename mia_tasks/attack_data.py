"""What the coalition sweep fits: each repeat's attack matrices, the columns a coalition uses, the coalitions left.

A coalition is an int64 bitmask over the players (bit i: player i); each player owns a contiguous
block of feature columns, ``widths[i]`` wide, in player order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .featurestore import Features
from .splits import ROLE_EVAL, ROLE_TRAIN, Splits
from .transforms import fit_transform_pair


def membership(splits: Splits, sample_ids: np.ndarray) -> np.ndarray:
    """int64 0/1 labels (1 = member of the target's training set) of audited ``sample_ids``, in their order."""
    ids = splits.table.column("sample_id").to_numpy()
    member = splits.table.column("member").to_numpy(zero_copy_only=False)
    order = np.argsort(ids, kind="stable")
    pos = order[np.searchsorted(ids[order], sample_ids)]
    return member[pos].astype(np.int64)


def attack_data(features: Features, splits: Splits, columns: list[str], transform: str = "none") -> list[dict[str, np.ndarray]]:
    """Per repeat: the attack-train and attack-eval matrices (``transform`` fitted on attack-train only) and labels."""
    out = []
    for r in range(splits.repeats):
        tr, ev = splits.ids(r, ROLE_TRAIN), splits.ids(r, ROLE_EVAL)
        X_train, X_eval = fit_transform_pair(features.matrix(columns, tr), features.matrix(columns, ev), transform)
        out.append({"X_train": X_train, "y_train": membership(splits, tr), "X_eval": X_eval, "y_eval": membership(splits, ev)})
    return out


def column_masks(coalitions: np.ndarray, widths: Sequence[int]) -> np.ndarray:
    """[K, sum(widths)] bool: row k marks the feature columns of the players in coalition ``coalitions[k]``."""
    bits = (np.asarray(coalitions, np.int64)[:, None] >> np.arange(len(widths))[None, :]) & 1
    return np.repeat(bits.astype(bool), np.asarray(widths, np.int64), axis=1)


def missing_coalitions(have: dict[int, dict], n_players: int, repeats: int) -> dict[int, np.ndarray]:
    """{repeat: sorted int64 coalitions not in ``have[repeat]``} over every non-empty coalition of ``n_players``;
    repeats with nothing missing are left out (``have``: {repeat: {coalition: ...}}, as read_sweep returns)."""
    every = np.arange(1, 2 ** n_players, dtype=np.int64)
    missing = {}
    for r in range(repeats):
        done = np.fromiter(have.get(r, {}).keys(), np.int64, len(have.get(r, {})))
        todo = every[~np.isin(every, done)]
        if len(todo):
            missing[r] = todo
    return missing
