"""Membership splits: who trained the target, who is audited, and each repeat's attacker roles.

Sample ids are global: ``0..n_train-1`` are the dataset's train split, ``n_train..`` its test split.
A target trained here takes its members from the train split and its non-members from the rest of
the train split (same distribution); a pretrained target (a checkpoint) has the whole train split
as members and the test split as non-members. From ``audit`` members and ``audit`` non-members,
each repeat draws disjoint, balanced attack-train and attack-eval sets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from .errors import LayerleakError

ROLE_TRAIN, ROLE_EVAL, ROLE_UNUSED = "attack-train", "attack-eval", "unused"


@dataclass
class Splits:
    target_members: np.ndarray  # sample ids the target trains on (all members)
    table: pa.Table  # one row per audited sample: sample_id, member, label, role_<r> per repeat

    @property
    def repeats(self) -> int:
        return sum(1 for n in self.table.column_names if n.startswith("role_"))

    def ids(self, repeat: int, role: str) -> np.ndarray:
        """Audited sample ids with ``role`` in ``repeat``."""
        roles = self.table.column(f"role_{repeat}").to_numpy(zero_copy_only=False)
        return self.table.column("sample_id").to_numpy()[roles == role]


def make_splits(train_y: np.ndarray, test_y: np.ndarray, split, seed: int, pretrained: bool = False) -> Splits:
    """Draw the splits deterministically from ``seed``; sizes that cannot be met raise LayerleakError."""
    n_train, n_test = len(train_y), len(test_y)
    rng = np.random.default_rng(seed)
    if pretrained:
        members = np.arange(n_train) if split.members is None else _take(rng, np.arange(n_train), split.members, "split.members", "train split")
        pool = n_train + np.arange(n_test)
        nonmembers = _take(rng, pool, split.nonmembers, "split.nonmembers", "test split (non-members of a pretrained target)")
    else:
        order = rng.permutation(n_train)
        n_members = n_train - split.nonmembers if split.members is None else split.members
        if n_members < 1 or n_members + split.nonmembers > n_train:
            raise LayerleakError(f"split.members ({split.members}) + split.nonmembers ({split.nonmembers}) exceed the "
                                 f"{n_train} train images available; lower them")
        members, nonmembers = order[:n_members], order[n_members:n_members + split.nonmembers]
    audit = split.audit if split.audit is not None else min(len(members), len(nonmembers))
    need = split.attack_train + split.attack_eval
    if audit > min(len(members), len(nonmembers)):
        raise LayerleakError(f"split.audit ({audit}) exceeds the members ({len(members)}) or non-members ({len(nonmembers)}) available")
    if need > audit:
        raise LayerleakError(f"split.attack_train + split.attack_eval ({need}) exceed the {audit} audited samples per side; "
                             f"lower them or raise split.audit/members/nonmembers")
    audit_m = np.sort(rng.choice(members, audit, replace=False))
    audit_n = np.sort(rng.choice(nonmembers, audit, replace=False))
    ids = np.concatenate([audit_m, audit_n])
    member = np.concatenate([np.ones(audit, bool), np.zeros(audit, bool)])
    labels = np.concatenate([train_y, test_y])[ids]
    columns = {"sample_id": pa.array(ids, pa.int64()), "member": pa.array(member), "label": pa.array(labels, pa.int64())}
    for r in range(split.repeats):
        roles = np.full(len(ids), ROLE_UNUSED, dtype=object)
        for side in (np.flatnonzero(member), np.flatnonzero(~member)):
            pick = rng.permutation(side)
            roles[pick[:split.attack_train]] = ROLE_TRAIN
            roles[pick[split.attack_train:need]] = ROLE_EVAL
        columns[f"role_{r}"] = pa.array(roles, pa.string())
    return Splits(np.sort(members), pa.table(columns))


def _take(rng: np.random.Generator, pool: np.ndarray, n: int, key: str, where: str) -> np.ndarray:
    if n > len(pool):
        raise LayerleakError(f"{key} ({n}) exceeds the {len(pool)} samples of the {where}; lower it")
    return np.sort(rng.choice(pool, n, replace=False))
