"""The population of models (mia_tasks.population): its halves, every model's features from one pool of
extractor actors, and each target's (and reference's) inputs to the attacks. Its models are trained by
flows.train, in parallel Ray tasks.

    layerleak run --out runs/three --set split.targets=3
    layerleak extract --out runs/refs --set references.count=16

Model 0 is OUT's target; model k >= 1 is a unit OUT/models/<k>/ of the same layout (target/model.pt,
target/metrics.json, features/part-*.parquet).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mia_tasks.config import Config
from mia_tasks.data import ImageData
from mia_tasks.errors import LayerleakError
from mia_tasks.featurestore import Features, load_features
from mia_tasks.population import (Population, check_population, draw_population, model_config, model_hashes,
                                  population_size, references_of)
from mia_tasks.rundir import POPULATION, RunDir, is_current, model_dir, model_run, stamp
from mia_tasks.splits import Splits

from .extract import Extractor, parts_to_do, run_extractors, shards


def run_population(cfg: Config, rd: RunDir, hashes: dict, splits: Splits) -> Population | None:
    """Draw (or reuse) OUT/population.parquet; None when the audit has one model (the target alone)."""
    check_population(cfg)
    size = population_size(cfg.split.targets, cfg.references.count)
    if size == 1:
        return None
    if is_current(rd.read_derived(POPULATION, rd.parquet_metadata), "population", hashes):
        table = rd.read_derived(POPULATION, rd.read_parquet)
        if table is not None:
            return Population(table)
    table = draw_population(splits, size, cfg.seed, pretrained=bool(cfg.model.checkpoint))
    rd.write_parquet(POPULATION, table, stamp("population", hashes))
    return Population(table)


def load_population(cfg: Config, rd: RunDir, hashes: dict) -> Population | None:
    """The population the train stage drew for this config, None for a single model."""
    if population_size(cfg.split.targets, cfg.references.count) == 1:
        return None
    if not is_current(rd.read_derived(POPULATION, rd.parquet_metadata), "population", hashes):
        raise LayerleakError(f"no population for this config in {rd.uri}/{POPULATION}; run 'layerleak train' first")
    return Population(rd.read_parquet(POPULATION))


class ModelExtractor(Extractor):
    """An extractor for any model of the population: loads the data once and each model when its shards come
    (the last two kept), then writes a features part into that model's unit as ``Extractor`` does."""

    def __init__(self, cfg: Config, layers: list[dict], gpu: bool):
        from mia_tasks.data import load_dataset

        from .runtime import held_device

        self.cfg, self.layers = cfg, layers
        self.device = held_device(gpu)
        self.data: ImageData = load_dataset(cfg.dataset)
        self.models: dict[int, object] = {}

    def extract(self, k: int, out: RunDir, config_hash: str, shard: int, sample_ids: np.ndarray, member: np.ndarray) -> dict:
        from mia_tasks.target import load_target

        if k not in self.models:
            self.models = dict(list(self.models.items())[-1:])
            self.models[k] = load_target(model_config(self.cfg, k), RunDir(out), self.data).to(self.device)
        self.model, self.rd, self.hash = self.models[k], RunDir(out), config_hash
        return {**self(shard, sample_ids, member), "model": k}


def extract_models(cfg: Config, rd: RunDir, hashes: dict, splits: Splits, layers: list[dict]) -> list[dict]:
    """Features of every model k >= 1 on the audited samples (OUT/models/<k>/features), the missing parts only,
    all models' shards through one pool of extractor actors."""
    population = load_population(cfg, rd, hashes)
    if population is None:
        return []
    todo = []
    for k in range(1, population.size):
        unit, h = model_run(rd, k), model_hashes(hashes, k)["features"]
        jobs = shards(population.splits_for(splits, k).table, cfg.features.shard_size)
        todo += [(k, unit, h, *job) for job in parts_to_do(unit, jobs, h, f"{model_dir(k)}/")]
    if not todo:
        print(f"[layerleak] extract: every model's features present ({population.size - 1} models)")
        return []
    return run_extractors(cfg, ModelExtractor, (cfg, layers), todo, lambda a, job: a.extract.remote(*job),
                          "extract models", lambda n: f"of {len({job[0] for job in todo})} models in {n} parts")


def target_inputs(cfg: Config, rd: RunDir, hashes: dict, splits: Splits) -> Sequence[tuple[Splits, Features]]:
    """(splits, features) of targets 1..T-1 as each sees the audited samples (target 0: OUT's own)."""
    if cfg.split.targets == 1:
        return []
    population = load_population(cfg, rd, hashes)
    return [(population.splits_for(splits, t), load_features(model_run(rd, t), model_hashes(hashes, t)["features"]))
            for t in range(1, cfg.split.targets)]


def reference_inputs(cfg: Config, rd: RunDir, hashes: dict, splits: Splits, target: int = 0) -> list[tuple[int, Splits, Features]]:
    """(k, splits, features) of target ``target``'s ``references.count`` reference models (calibrated attacks):
    each model's features on the audited samples and whether each sample was IN for it (``splits.member``)."""
    population = load_population(cfg, rd, hashes)
    if population is None or cfg.references.count == 0:
        return []
    return [(k, population.splits_for(splits, k), load_features(model_run(rd, k), model_hashes(hashes, k)["features"]))
            for k in references_of(target, population.size, cfg.references.count)]
