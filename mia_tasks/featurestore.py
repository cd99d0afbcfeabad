"""OUT/features: Parquet parts of per-sample statistics, validated before they are read as data.

A part is trusted only when it opens as Parquet, carries this config's features hash and holds the
rows of its shard; anything else (truncated, foreign, stale) is reported and recomputed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads

from .errors import LayerleakError, one_line
from .schema import CONSTANT_COLUMNS_KEY
from .rundir import FEATURES, HASH_KEY, RunDir, is_current
from .rundir import feature_part as part_name


def part_problem(rd: RunDir, shard: int, config_hash: str, sample_ids: np.ndarray) -> str | None:
    """None when the shard's part is whole and made by this config for these samples, else why not."""
    name = part_name(shard)
    if not rd.exists(name):
        return "missing"
    try:
        meta = rd.parquet_metadata(name)
        if not is_current(meta, "features", {"features": config_hash}):
            return f"made by another config or layerleak version (hash {meta.get(HASH_KEY)})"
        ids = rd.read_parquet(name).column("sample_id").to_numpy()
    except (OSError, pa.ArrowException, ValueError) as e:
        return f"unreadable ({one_line(e)})"
    if not np.array_equal(ids, sample_ids):
        return "holds other samples"
    return None


@dataclass
class Features:
    """The whole features table (sorted by sample_id) and what the parts say about the layers.

    ``constant`` names the columns constant by construction (``schema.constant_columns``): stored as
    exact zeros, left out of every attack and coalition.
    """

    table: pa.Table
    layers: list[str]
    params: dict[str, int]
    depths: dict[str, int]
    constant: list[str] = field(default_factory=list)

    def matrix(self, columns: list[str], sample_ids: np.ndarray) -> np.ndarray:
        """float64 [len(sample_ids), len(columns)] in the order of ``sample_ids``."""
        all_ids = self.table.column("sample_id").to_numpy()
        pos = np.searchsorted(all_ids, sample_ids)
        if np.any(pos >= len(all_ids)) or np.any(all_ids[np.minimum(pos, len(all_ids) - 1)] != sample_ids):
            raise LayerleakError("features are missing for some audited samples; rerun 'layerleak extract'")
        return np.column_stack([self.table.column(c).to_numpy()[pos] for c in columns]).astype(np.float64)


def load_features(rd: RunDir, config_hash: str) -> Features:
    """Read every part of OUT/features as one table; refuses parts of another config."""
    names = rd.listdir(FEATURES, ".parquet")
    if not names:
        raise LayerleakError(f"no features in {rd.uri}/{FEATURES}; run 'layerleak extract' first")
    meta = None
    for name in names:
        m = rd.parquet_metadata(f"{FEATURES}/{name}")
        if not is_current(m, "features", {"features": config_hash}):
            raise LayerleakError(f"{rd.uri}/{FEATURES}/{name} was made by another config; rerun 'layerleak extract' to recompute it")
        meta = meta or m
    dataset = pads.dataset([rd.path(f"{FEATURES}/{n}") for n in names], format="parquet", filesystem=rd.fs)
    table = dataset.to_table().sort_by("sample_id")
    ids = table.column("sample_id").to_numpy()
    if len(np.unique(ids)) != len(ids):
        raise LayerleakError(f"{rd.uri}/{FEATURES} holds duplicate sample ids; delete the folder and rerun 'layerleak extract'")
    return Features(table, meta["layers"], meta["params"], meta["depths"], list(meta.get(CONSTANT_COLUMNS_KEY, [])))
