"""A population of models over one pool: several targets and reference models, each trained on its own random half.

Model 0 is OUT's target, trained on the members splits.parquet was drawn with. The pool is the target's
members and the audited non-members; every other model k trains on a random subset of the pool as large
as the target's member set (half the pool for the default 70 + 70; half the pool for a pretrained
target, whose recipe is applied to the references), drawn from (seed, k) alone. So each audited sample
is IN for about half of the models, adding models never changes the halves of the models already
drawn, and the same trained models serve as targets (``split.targets``: models 0..T-1) and as each
other's references (``references.count``: K others per target, ``references_of``).

OUT/population.parquet holds the pool: ``sample_id`` and one bool column ``in.<k>`` per model.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from .errors import LayerleakError
from .splits import Splits

IN_PREFIX = "in."


def population_size(targets: int, references: int) -> int:
    """Models to train: every target needs ``references`` others, and the targets are models 0..T-1."""
    return max(targets, references + 1)


def references_of(target: int, size: int, references: int) -> list[int]:
    """The reference models of ``target``: the first ``references`` models of the population other than it."""
    return [k for k in range(size) if k != target][:references]


def model_seed(seed: int, k: int) -> int:
    """Model k's training seed (initialisation, batch order): the config seed for the target (model 0)."""
    return seed if k == 0 else int(np.random.SeedSequence([seed, k]).generate_state(1)[0] & 0x7FFFFFFF)


def model_config(cfg, k: int):
    """The config model k is trained and scored with: the target's recipe with its own seed; a pretrained
    target's references are trained (the report says calibration then assumes a similar training)."""
    if k == 0:
        return cfg
    return dataclasses.replace(cfg, seed=model_seed(cfg.seed, k), model=dataclasses.replace(cfg.model, checkpoint=None))


def model_hashes(hashes: dict[str, str], k: int) -> dict[str, str]:
    """Model k's stage hashes: OUT's for model 0, else each one keyed by k (its unit is current on its own)."""
    if k == 0:
        return hashes
    return {stage: hashlib.sha256(f"{h}/model/{k}".encode()).hexdigest()[:16] for stage, h in hashes.items()}


def draw_population(splits: Splits, size: int, seed: int, pretrained: bool = False) -> pa.Table:
    """The pool (the target's members and the audited samples) with each of ``size`` models' membership.

    Model 0's column is the target's membership; model k >= 1 takes a uniformly random subset of the
    pool, of the target's member count (half the pool for a pretrained target), from ``(seed, k)``.
    """
    members = np.asarray(splits.target_members, np.int64)
    pool = np.union1d(members, splits.sample_ids)
    n_in = len(pool) // 2 if pretrained else len(members)
    columns = {"sample_id": pa.array(pool, pa.int64()), f"{IN_PREFIX}0": pa.array(np.isin(pool, members))}
    for k in range(1, size):
        rng = np.random.default_rng([seed, 0x706F70, k])  # 'pop': a stream of its own, per model
        chosen = np.zeros(len(pool), bool)
        chosen[rng.choice(len(pool), n_in, replace=False)] = True
        columns[f"{IN_PREFIX}{k}"] = pa.array(chosen)
    return pa.table(columns)


@dataclass
class Population:
    """OUT/population.parquet read back: the pool and every model's half."""

    table: pa.Table

    @property
    def size(self) -> int:
        return sum(1 for n in self.table.column_names if n.startswith(IN_PREFIX))

    def members(self, k: int) -> np.ndarray:
        """Sorted sample ids model k trains on."""
        if not 0 <= k < self.size:
            raise LayerleakError(f"model {k} is not in the population of {self.size} models")
        inside = self.table.column(f"{IN_PREFIX}{k}").to_numpy(zero_copy_only=False).astype(bool)
        return self.table.column("sample_id").to_numpy()[inside]

    def membership(self) -> np.ndarray:
        """bool [models, pool]: row k marks the pool samples model k trains on."""
        return np.vstack([self.table.column(f"{IN_PREFIX}{k}").to_numpy(zero_copy_only=False) for k in range(self.size)]).astype(bool)

    def splits_for(self, splits: Splits, k: int) -> Splits:
        """The audited samples as model k sees them: the same rows, ``member`` from model k's half."""
        if k == 0:
            return splits
        member = np.isin(splits.sample_ids, self.members(k))
        table = splits.table.set_column(splits.table.schema.get_field_index("member"), "member", pa.array(member))
        return Splits(self.members(k), table)


def check_population(cfg) -> None:
    """Refuse what the population cannot do before any work: several targets need trained ones."""
    if cfg.split.targets > 1 and cfg.model.checkpoint:
        raise LayerleakError(f"split.targets ({cfg.split.targets}) needs targets trained here; a pretrained "
                             f"model.checkpoint is one target (set split.targets=1, or references.count for references)")
