"""Stage 4-5: the attack on every coalition of players, fitted by parallel actors, then Shapley values.

    layerleak sweep --out runs/default

Coalitions of every repeat are cut into chunks; fitter actors (each repeat's attack data shared once
through the object store) fit a chunk with the batched logistic-regression fitter and write
OUT/sweep/part-*.parquet rows keyed by (coalition, repeat). A rerun reads the keys present and
submits only the missing ones; once the table is complete, OUT/shapley.json.
"""

from __future__ import annotations

import time
from contextlib import ExitStack

import numpy as np
import pyarrow as pa
import ray

from mia_tasks.attack_data import attack_data, column_masks, missing_coalitions
from mia_tasks.config import Config
from mia_tasks.errors import LayerleakError
from mia_tasks.featurestore import Features
from mia_tasks.players import make_players, player_columns
from mia_tasks.rundir import SHAPLEY, RunDir, stamp, sweep_part
from mia_tasks.splits import Splits
from mia_tasks.sweeptable import SWEEP_METRICS, read_sweep, shapley_report

from .actors import actor_pool, pool_size
from .runtime import held_device, init_ray, stage_gpus


class Fitter:
    """Fits chunks of coalitions of one repeat and writes each as a sweep part.

    The attack data of a repeat comes with each call as an object-store ref that the driver holds: Ray
    hands the actor zero-copy numpy views (fetched once per node), and a retried call after an actor
    restart finds the same data. Nothing lives in the constructor, so a restart needs nothing back.
    """

    def __init__(self, widths: list[int], out: str, config_hash: str, C: float, gpu: bool):
        self.rd, self.hash, self.C = RunDir(out), config_hash, C
        self.device = held_device(gpu)
        self.widths = widths

    def fit(self, d: dict[str, np.ndarray], repeat: int, coalitions: np.ndarray) -> int:
        from mia_tasks.coalitions import fit_coalitions

        res = fit_coalitions(d["X_train"], d["y_train"], d["X_eval"], d["y_eval"], column_masks(coalitions, self.widths),
                             C=self.C, device=self.device)
        table = pa.table({"coalition": pa.array(coalitions, pa.int64()), "repeat": pa.array(np.full(len(coalitions), repeat), pa.int64()),
                          **{m: pa.array(np.asarray(res[m], np.float64)) for m in SWEEP_METRICS}})
        name = sweep_part(repeat, int(coalitions[0]), int(coalitions[-1]))
        self.rd.write_parquet(name, table, stamp("sweep", {"sweep": self.hash}))
        return len(coalitions)


def sweep_flow(cfg: Config, rd: RunDir, hashes: dict, splits: Splits, features: Features) -> dict:
    """Fit every missing (coalition, repeat), then write OUT/shapley.json; returns its content."""
    players = make_players(cfg.sweep.players, features.layers)
    L = len(players)
    if cfg.sweep.method == "exact" and L > cfg.sweep.max_exact_players:
        raise LayerleakError(f"{L} players is too many for an exact sweep (2^{L} coalitions; sweep.max_exact_players="
                             f"{cfg.sweep.max_exact_players}): group layers into players (--set sweep.players=groups) "
                             f"or estimate by sampling (--set sweep.method=sampled)")
    cols = player_columns(players, cfg.sweep.kinds, features.constant)
    data = attack_data(features, splits, [c for pc in cols for c in pc], cfg.attack.transform)
    with ExitStack() as stack:  # the fitters, started on the first fit, are killed however the sweep ends
        fitters = None  # the Pool, once started
        data_refs: list = []  # one per repeat, held here so retried calls after a restart still find the data

        def evaluate(repeat_masks: dict[int, np.ndarray]) -> None:
            """Fit the given coalitions of each repeat through the actor pool, in chunks (one part each)."""
            nonlocal fitters
            jobs = [(r, masks[i:i + cfg.sweep.chunk_size]) for r, masks in repeat_masks.items()
                    for i in range(0, len(masks), cfg.sweep.chunk_size)]
            if not jobs:
                return
            if fitters is None:
                init_ray(cfg.ray)
                gpus = stage_gpus("sweep.device", cfg.sweep.device)
                data_refs.extend(ray.put(d) for d in data)
                n = pool_size(len(jobs), gpus, cfg.ray.fit_actors, "sweep", "ray.fit_actors")
                fitters = stack.enter_context(actor_pool(Fitter, ([len(c) for c in cols], rd, hashes["sweep"], cfg.attack.C, bool(gpus)),
                                                         n, gpu=bool(gpus), max_retries=cfg.ray.max_retries))
            total = sum(len(m) for _, m in jobs)
            start = time.perf_counter()
            fitters.map(lambda a, job: a.fit.remote(data_refs[job[0]], *job), jobs, "sweep", "coalition",
                        size=lambda n_done: n_done, total=total)
            print(f"[layerleak] sweep: {total} coalition fits in {time.perf_counter() - start:.1f}s")

        table = read_sweep(rd, hashes["sweep"])
        if cfg.sweep.method == "exact":
            missing = missing_coalitions(table, L, splits.repeats)
            if missing:
                n_have = sum(len(v) for v in table.values())
                print(f"[layerleak] sweep: {L} players, {splits.repeats} repeats: {n_have} of {(2 ** L - 1) * splits.repeats} "
                      f"(coalition, repeat) keys present, fitting {sum(len(v) for v in missing.values())}")
            evaluate(missing)
            sampled = None
        else:
            from mia_tasks.shapley import sampled_shapley

            sampled = []
            for r in range(splits.repeats):
                def value_fn(masks: np.ndarray, r: int = r) -> np.ndarray:
                    """v(S) of the given non-empty coalitions (sampled_shapley holds v(∅)), fitting those not in OUT yet."""
                    have = read_sweep(rd, hashes["sweep"]).get(r, {})
                    evaluate({r: np.unique(np.array([m for m in masks if m not in have], np.int64))})
                    have = read_sweep(rd, hashes["sweep"]).get(r, {})
                    return np.array([have[m]["accuracy"] for m in masks])
                sampled.append(sampled_shapley(value_fn, L, max_permutations=cfg.sweep.permutations, tol=cfg.sweep.tol,
                                               seed=cfg.seed + r))
        table = read_sweep(rd, hashes["sweep"])
    report = shapley_report(table, players, features, cfg, hashes["sweep"], sampled)
    rd.write_json(SHAPLEY, report)
    return report
