"""Stage 3: per-sample white-box features, sharded over a pool of extractor actors into Parquet parts.

    layerleak extract --out runs/default

One actor per GPU where the cluster has GPUs, else ``ray.extract_actors`` CPU actors. Each actor
loads the data and the target once; a call turns one shard of sample ids into
OUT/features/part-NNNNN.parquet (whole or absent). Parts already present for this config are kept; a damaged
one is reported and recomputed (``parts_to_do``, ``run_extractors``: shared with flows.population's models).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from mia_tasks.config import Config
from mia_tasks.featurestore import part_name, part_problem
from mia_tasks.rundir import RunDir, stamp
from mia_tasks.schema import CONSTANT_COLUMNS_KEY, LABEL, MEMBER, SAMPLE_ID

from .actors import actor_pool, load_data_and_target, pool_size
from .runtime import held_device, init_ray, stage_gpus


class Extractor:
    """Loads the target once; ``__call__`` writes one shard's features part and reports where it ran."""

    def __init__(self, cfg: Config, out: str, config_hash: str, layers: list[dict], gpu: bool):
        self.cfg, self.hash, self.layers = cfg, config_hash, layers
        self.rd = RunDir(out)
        self.device = held_device(gpu)  # recorded per part
        self.data, self.model = load_data_and_target(cfg, out, self.device)

    def __call__(self, shard: int, sample_ids: np.ndarray, member: np.ndarray) -> dict:
        from mia_tasks.gradstats import features_in_batches

        names = [l["name"] for l in self.layers]
        x, y = self.data.images(sample_ids)
        columns, constant = features_in_batches(self.model, x, y, names, self.cfg.features.batch_size, self.cfg.features.budget_mb,
                                                prepare=lambda xb: self.data.normalise(xb.to(self.device)))
        table = pa.table({SAMPLE_ID: pa.array(sample_ids, pa.int64()), LABEL: pa.array(y.numpy(), pa.int64()),
                          MEMBER: pa.array(member, pa.bool_()), **{k: pa.array(v, pa.float64()) for k, v in columns.items()}})
        meta = {**stamp("features", {"features": self.hash}), "shard": shard, "layers": names,
                "params": {l["name"]: l["params"] for l in self.layers}, "depths": {l["name"]: l["depth"] for l in self.layers},
                CONSTANT_COLUMNS_KEY: constant}
        self.rd.write_parquet(part_name(shard), table, meta)
        return {"shard": shard, "rows": len(sample_ids), "node": ray.get_runtime_context().get_node_id(), "device": str(self.device)}


def shards(splits_table: pa.Table, shard_size: int) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """Fixed shards of the audited samples, in sample-id order: (shard, sample_ids, member)."""
    order = np.argsort(splits_table.column("sample_id").to_numpy(), kind="stable")
    ids = splits_table.column("sample_id").to_numpy()[order]
    member = splits_table.column("member").to_numpy(zero_copy_only=False)[order]
    return [(i // shard_size, ids[i:i + shard_size], member[i:i + shard_size]) for i in range(0, len(ids), shard_size)]


def parts_to_do(unit: RunDir, jobs: Sequence[tuple[int, np.ndarray, np.ndarray]], config_hash: str,
                label: str = "") -> list[tuple[int, np.ndarray, np.ndarray]]:
    """The shards of ``jobs`` whose part in ``unit`` is missing or damaged. A damaged part (unreadable, another
    config's, other samples) is reported as ``label`` + its name (``label``: where ``unit`` lies in OUT, e.g.
    "models/3/"; "" for OUT itself) and deleted, so it is recomputed."""
    todo = []
    for shard, ids, member in jobs:
        problem = part_problem(unit, shard, config_hash, ids)
        if problem is None:
            continue
        if problem != "missing":
            print(f"[layerleak] extract: {label}{part_name(shard)} is {problem}; recomputing it")
            unit.delete(part_name(shard))
        todo.append((shard, ids, member))
    return todo


def run_extractors(cfg: Config, actor: type, args: tuple, jobs: list[tuple], submit: Callable[[Any, tuple], Any],
                   progress: str, what: Callable[[int], str]) -> list[dict]:
    """Run ``jobs`` (each ending in shard, sample_ids, member) through one pool of ``actor(*args, gpu)``: one actor per
    GPU where the cluster has GPUs, else ``ray.extract_actors``. Prints the throughput line, "<rows> samples"
    + ``what(number of jobs)`` + rows/s; returns the pool's records."""
    init_ray(cfg.ray)
    gpus = stage_gpus("features.device", cfg.features.device)
    n_actors = pool_size(len(jobs), gpus, cfg.ray.extract_actors, "extract", "ray.extract_actors")
    rows, start = sum(len(job[-2]) for job in jobs), time.perf_counter()
    with actor_pool(actor, (*args, bool(gpus)), n_actors, gpu=bool(gpus), max_retries=cfg.ray.max_retries) as pool:
        records = pool.map(submit, jobs, progress, "sample", size=lambda rec: rec["rows"], total=rows)
    print(f"[layerleak] extract: {rows} samples {what(len(jobs))}, "
          f"{rows / (time.perf_counter() - start):.1f} rows/s with {n_actors} actors")
    return records


def extract_flow(cfg: Config, rd: RunDir, hashes: dict, splits_table: pa.Table, layers: list[dict]) -> list[dict]:
    """Write every missing part; returns one record per shard computed now (shard, rows, node, device)."""
    todo = parts_to_do(rd, shards(splits_table, cfg.features.shard_size), hashes["features"])
    n_parts = -(-splits_table.num_rows // cfg.features.shard_size)
    if not todo:
        print(f"[layerleak] extract: all {n_parts} parts present")
        return []
    return run_extractors(cfg, Extractor, (cfg, rd, hashes["features"], layers), todo,
                          lambda a, job: a.__call__.remote(*job), "extract",
                          lambda n: f"in {n} parts ({n_parts - n} reused)")
