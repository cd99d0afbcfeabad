"""Membership splits: who trained the target and who is audited.

Sample ids are global: ``0..n_train-1`` are the dataset's train split, ``n_train..`` its test split.
A target trained here takes its members from the train split and its non-members from the rest of
the train split (same distribution); a pretrained target (a checkpoint) has the whole train split
as members and the test split as non-members. ``audit`` members and ``audit`` non-members are
audited; the attacks are cross-fitted over all of them (mia_tasks.uncertainty.stratified_folds), so
there are no attacker roles here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from .errors import LayerleakError


@dataclass
class Splits:
    target_members: np.ndarray  # sample ids the target trains on (all members)
    table: pa.Table  # one row per audited sample: sample_id, member, label (members first, each side by id)

    @property
    def sample_ids(self) -> np.ndarray:
        """Audited sample ids, in the table's order: the order of every per-sample vector the attacks store."""
        return self.table.column("sample_id").to_numpy()

    @property
    def member(self) -> np.ndarray:
        """bool membership of the audited samples, in the table's order."""
        return self.table.column("member").to_numpy(zero_copy_only=False).astype(bool)


def make_splits(train_y: np.ndarray, test_y: np.ndarray, split, seed: int, pretrained: bool = False) -> Splits:
    """Draw the splits deterministically from ``seed``; sizes that cannot be met raise LayerleakError."""
    n_train, n_test = len(train_y), len(test_y)
    rng = np.random.default_rng(seed)
    if (split.members_file or split.nonmembers_file) and not pretrained:
        raise LayerleakError("split.members_file/split.nonmembers_file need model.checkpoint (a pretrained target); "
                             "set it or drop the file")
    if pretrained and (split.members_file or split.nonmembers_file):
        members = (read_indices(split.members_file, "split.members_file", n_train, "train split") if split.members_file else
                   _take(rng, np.arange(n_train), n_train if split.members is None else split.members, "split.members", "train split"))
        nonmembers = (n_train + read_indices(split.nonmembers_file, "split.nonmembers_file", n_test, "test split")
                      if split.nonmembers_file else
                      _take(rng, n_train + np.arange(n_test), split.nonmembers, "split.nonmembers", "test split (non-members of a pretrained target)"))
    elif pretrained:
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
    if audit > min(len(members), len(nonmembers)):
        raise LayerleakError(f"split.audit ({audit}) exceeds the members ({len(members)}) or non-members ({len(nonmembers)}) available")
    audit_m = np.sort(rng.choice(members, audit, replace=False))
    audit_n = np.sort(rng.choice(nonmembers, audit, replace=False))
    ids = np.concatenate([audit_m, audit_n])
    member = np.concatenate([np.ones(audit, bool), np.zeros(audit, bool)])
    labels = np.concatenate([train_y, test_y])[ids]
    columns = {"sample_id": pa.array(ids, pa.int64()), "member": pa.array(member), "label": pa.array(labels, pa.int64())}
    return Splits(np.sort(members), pa.table(columns))


def _take(rng: np.random.Generator, pool: np.ndarray, n: int, key: str, where: str) -> np.ndarray:
    if n > len(pool):
        raise LayerleakError(f"{key} ({n}) exceeds the {len(pool)} samples of the {where}; lower it")
    return np.sort(rng.choice(pool, n, replace=False))


def read_indices(path: str, key: str, n: int, where: str) -> np.ndarray:
    """Sorted sample indices (0..n-1 into the ``where`` split) from a .npy, .csv or .parquet file; bad input raises."""
    import os
    if not os.path.isfile(path):
        raise LayerleakError(f"{key}: {path} is not a file; give the path of a .npy, .csv or .parquet index file")
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == ".npy":
            values = np.load(path, allow_pickle=False).ravel()
        elif ext == ".csv":
            lines = [ln.strip().split(",")[0] for ln in open(path) if ln.strip()]
            if lines and not lines[0].lstrip("-+").replace(".", "", 1).isdigit():
                lines = lines[1:]  # a header
            values = np.array([float(v) for v in lines])
        elif ext == ".parquet":
            import pyarrow.parquet as pq
            t = pq.read_table(path)
            if "sample_id" not in t.column_names and t.num_columns != 1:
                raise LayerleakError(f"{key}: {path} has columns {t.column_names}; name the index column sample_id or keep only one")
            values = t.column("sample_id" if "sample_id" in t.column_names else 0).to_numpy(zero_copy_only=False)
        else:
            raise LayerleakError(f"{key}: {path} is not .npy, .csv or .parquet; save the indices in one of those")
    except LayerleakError:
        raise
    except (OSError, ValueError) as e:
        raise LayerleakError(f"{key}: {path} cannot be read as indices ({str(e).splitlines()[0]}); write one integer index per entry")
    values = np.asarray(values)
    if values.size == 0:
        raise LayerleakError(f"{key}: {path} holds no indices; list at least one {where} index")
    if values.dtype.kind not in "iuf" or (values.dtype.kind == "f" and not np.all(np.isfinite(values) & (values == np.round(values)))):
        raise LayerleakError(f"{key}: {path} holds non-integer values; give integer indices into the {where}")
    ids = values.astype(np.int64)
    if ids.min() < 0 or ids.max() >= n:
        raise LayerleakError(f"{key}: {path} has indices outside 0..{n - 1} (the {where} has {n} samples); fix or drop them")
    if len(np.unique(ids)) != len(ids):
        raise LayerleakError(f"{key}: {path} repeats {len(ids) - len(np.unique(ids))} indices; list each sample once")
    return np.sort(ids)
