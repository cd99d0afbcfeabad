"""What the coalition sweep fits: the audited pool's feature matrix, the columns a coalition uses, the coalitions left.

A coalition is an int64 bitmask over the players (bit i: player i); each player owns a contiguous
block of feature columns, ``widths[i]`` wide, in player order. Rows are the audited samples in the
order of splits.parquet; the attacks are cross-fitted over them (every transform fitted inside the
training folds, by mia_tasks.uncertainty), so the matrix here is untransformed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .featurestore import Features
from .splits import Splits


def membership(splits: Splits, sample_ids: np.ndarray) -> np.ndarray:
    """int64 0/1 labels (1 = member of the target's training set) of audited ``sample_ids``, in their order."""
    ids = splits.table.column("sample_id").to_numpy()
    member = splits.table.column("member").to_numpy(zero_copy_only=False)
    order = np.argsort(ids, kind="stable")
    pos = order[np.searchsorted(ids[order], sample_ids)]
    return member[pos].astype(np.int64)


def attack_data(features: Features, splits: Splits, columns: list[str]) -> dict[str, np.ndarray]:
    """The audited pool: ``X`` [n, len(columns)] raw features and ``y`` [n] int64 membership, in splits order."""
    ids = splits.sample_ids
    return {"X": features.matrix(columns, ids), "y": membership(splits, ids)}


def column_masks(coalitions: np.ndarray, widths: Sequence[int]) -> np.ndarray:
    """[K, sum(widths)] bool: row k marks the feature columns of the players in coalition ``coalitions[k]``."""
    bits = (np.asarray(coalitions, np.int64)[:, None] >> np.arange(len(widths))[None, :]) & 1
    return np.repeat(bits.astype(bool), np.asarray(widths, np.int64), axis=1)


def missing_coalitions(have: dict[int, dict], n_players: int, targets: int = 1) -> dict[int, np.ndarray]:
    """{target: sorted int64 coalitions not in ``have[target]``} over every non-empty coalition of ``n_players``;
    targets with nothing missing are left out (``have``: {target: {coalition: ...}}, as read_sweep returns)."""
    every = np.arange(1, 2 ** n_players, dtype=np.int64)
    missing = {}
    for t in range(targets):
        done = np.fromiter(have.get(t, {}).keys(), np.int64, len(have.get(t, {})))
        todo = every[~np.isin(every, done)]
        if len(todo):
            missing[t] = todo
    return missing
