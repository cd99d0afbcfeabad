"""Stage 4-5: the cross-fitted attack on every coalition of players, fitted by parallel actors, then Shapley
values with bootstrap intervals and the verdicts.

    layerleak sweep --out runs/default

Coalitions are cut into chunks; fitter actors (the audited pool's features shared once through the object
store) cross-fit a chunk with the batched logistic-regression fitter (``attack.folds`` folds balanced by
membership; each sample scored once, by the attack fitted on the other folds) and write
OUT/sweep/part-*.parquet rows keyed by (target, coalition), each with every audited sample's out-of-fold
correctness bit-packed (scores for the full coalition and single players). A rerun reads the keys present
and submits only the missing ones; once the table is complete, OUT/shapley.json: the stratified bootstrap
over audited samples (``attack.bootstrap`` replicates) gives every v(S), every Shapley value and every
pairwise difference an interval, and the verdicts follow in order (mia_tasks.uncertainty).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from contextlib import ExitStack

import numpy as np
import ray

from mia_tasks.attack_data import attack_data, column_masks, missing_coalitions
from mia_tasks.attack_runs import out_of_fold
from mia_tasks.attacks import AttackData
from mia_tasks.attacks.references import CALIBRATED, join_models, reference_columns
from mia_tasks.baseline import BASELINE_ATTACK, baseline_score
from mia_tasks.calibration import calibrate_table
from mia_tasks.config import Config, sweep_references
from mia_tasks.errors import LayerleakError
from mia_tasks.featurestore import Features
from mia_tasks.players import make_players, player_columns
from mia_tasks.rundir import SHAPLEY, RunDir, stamp, sweep_part
from mia_tasks.schema import LOSS
from mia_tasks.splits import Splits
from mia_tasks.between_targets import between_target_summary
from mia_tasks.sweeptable import read_sweep, shapley_report, sweep_rows, target_block

from .actors import actor_pool, pool_size
from .runtime import held_device, init_ray, stage_gpus

TARGET = 0  # OUT's own target; targets 1..T-1 (split.targets, flows.population) key their rows by their index


class Fitter:
    """Cross-fits chunks of coalitions of one target and writes each as a sweep part.

    The audited pool's features come with each call as an object-store ref that the driver holds: Ray hands
    the actor zero-copy numpy views (fetched once per node), and a retried call after an actor restart finds
    the same data. Nothing lives in the constructor, so a restart needs nothing back.
    """

    def __init__(self, widths: list[int], out: str, config_hash: str, attack: dict, gpu: bool, always: int = 0):
        self.rd, self.hash, self.attack = RunDir(out), config_hash, attack
        self.device = held_device(gpu)
        self.widths, self.always = widths, always  # always: trailing columns in every coalition (the baseline score)

    def fit(self, d: dict[str, np.ndarray], target: int, coalitions: np.ndarray) -> int:
        from mia_tasks.uncertainty import crossfit_coalitions

        a = self.attack
        masks = column_masks(coalitions, self.widths)
        masks = np.hstack([masks, np.ones((len(masks), self.always), bool)])
        # the baseline's score is unpenalised, like the intercept: with no feature weight the coalition's attack is
        # a threshold on that score, as v(∅) is, so the penalty never shrinks the baseline a coalition builds on
        penalty = np.r_[np.ones(sum(self.widths)), np.zeros(self.always)]
        cf = crossfit_coalitions(d["X"], d["y"], masks, k=a["folds"], seed=a["seed"],
                                 C=a["C"], transform=a["transform"], device=self.device, penalty=penalty)
        table = sweep_rows(target, coalitions, cf.scores, cf.packed, cf.y, len(self.widths))
        name = sweep_part(target, int(coalitions[0]), int(coalitions[-1]))
        self.rd.write_parquet(name, table, stamp("sweep", {"sweep": self.hash}))
        return len(coalitions)


def calibrated_inputs(cfg: Config, rd: RunDir, hashes: dict, splits: Splits, target: int, features: Features,
                      columns: list[str]) -> tuple[Features, Features]:
    """(features for the coalitions' attacks, features with the reference models' raw columns joined in) of one
    target: calibrated against its references with attack.calibration; both ``features`` without references."""
    if sweep_references(cfg) == 0:
        return features, features
    from .population import reference_inputs

    joined = join_models(features, reference_inputs(cfg, rd, hashes, splits, target), sorted({*columns, LOSS}))
    if cfg.attack.calibration == "none":
        return joined, joined
    return dataclasses.replace(joined, table=calibrate_table(joined.table, columns, cfg.attack.calibration)), joined


def baseline_inputs(cfg: Config, splits: Splits, joined: Features) -> tuple[np.ndarray | None, str, list[str]]:
    """(the label-free baseline score each coalition's attack also sees, or None; the attack whose cross-fitted value
    is v(∅) (the report's baseline: loss-threshold without sweep.baseline); the columns that attack reads)."""
    name = BASELINE_ATTACK.get(cfg.sweep.baseline, "loss-threshold")
    columns = [LOSS, *reference_columns(joined.table.column_names)] if name in CALIBRATED else [LOSS]
    if cfg.sweep.baseline == "none":
        return None, name, columns
    return baseline_score(cfg.sweep.baseline, AttackData.from_table(joined.table, columns, splits.sample_ids)), name, columns


def sweep_flow(cfg: Config, rd: RunDir, hashes: dict, splits: Splits, features: Features,
               others: Sequence[tuple[Splits, Features]] = ()) -> dict:
    """Cross-fit every missing (target, coalition), then write OUT/shapley.json; returns its content.

    ``others``: (splits, features) of targets 1..T-1 (each its own model's features and membership); with
    them shapley.json holds one block per target and the between-target means and ranking stability."""
    players = make_players(cfg.sweep.players, features.layers)
    L = len(players)
    if cfg.sweep.method == "exact" and L > cfg.sweep.max_exact_players:
        raise LayerleakError(f"{L} players is too many for an exact sweep (2^{L} coalitions; sweep.max_exact_players="
                             f"{cfg.sweep.max_exact_players}): group layers into players (--set sweep.players=groups) "
                             f"or estimate by sampling (--set sweep.method=sampled)")
    cols = player_columns(players, cfg.sweep.kinds, features.constant)
    targets = [(splits, features), *others]
    flat = [c for pc in cols for c in pc]
    inputs = [calibrated_inputs(cfg, rd, hashes, splits, t, f, flat) for t, (_, f) in enumerate(targets)]
    baselines = [baseline_inputs(cfg, s, joined) for (s, _), (_, joined) in zip(targets, inputs)]
    datas = [attack_data(f, s, flat) for (s, _), (f, _) in zip(targets, inputs)]
    for d, (score, _, _) in zip(datas, baselines):
        if score is not None:
            d["X"] = np.column_stack([d["X"], score])
    attack = {"folds": cfg.attack.folds, "seed": cfg.seed, "C": cfg.attack.C, "transform": cfg.attack.transform}
    with ExitStack() as stack:  # the fitters, started on the first fit, are killed however the sweep ends
        fitters = None  # the Pool, once started
        data_refs: list = []  # held here so retried calls after a restart still find the data

        def evaluate(target_masks: dict[int, np.ndarray]) -> None:
            """Cross-fit the given coalitions of each target through the actor pool, in chunks (one part each)."""
            nonlocal fitters
            jobs = [(t, masks[i:i + cfg.sweep.chunk_size]) for t, masks in target_masks.items()
                    for i in range(0, len(masks), cfg.sweep.chunk_size)]
            if not jobs:
                return
            if fitters is None:
                init_ray(cfg.ray)
                gpus = stage_gpus("sweep.device", cfg.sweep.device)
                data_refs.extend(ray.put(d) for d in datas)
                n = pool_size(len(jobs), gpus, cfg.ray.fit_actors, "sweep", "ray.fit_actors")
                always = 0 if cfg.sweep.baseline == "none" else 1
                fitters = stack.enter_context(actor_pool(Fitter, ([len(c) for c in cols], rd, hashes["sweep"], attack, bool(gpus), always),
                                                         n, gpu=bool(gpus), max_retries=cfg.ray.max_retries))
            total = sum(len(m) for _, m in jobs)
            start = time.perf_counter()
            fitters.map(lambda a, job: a.fit.remote(data_refs[job[0]], *job), jobs, "sweep", "coalition",
                        size=lambda n_done: n_done, total=total)
            print(f"[layerleak] sweep: {total} coalitions cross-fitted ({cfg.attack.folds} folds) in {time.perf_counter() - start:.1f}s")

        table = read_sweep(rd, hashes["sweep"])
        if cfg.sweep.method == "exact":
            missing = missing_coalitions(table, L, len(targets))
            if missing:
                n_have = sum(len(v) for v in table.values())
                print(f"[layerleak] sweep: {L} players: {n_have} of {len(targets) * (2 ** L - 1)} (target, coalition)s present, "
                      f"fitting {sum(len(v) for v in missing.values())}")
            evaluate(missing)
            sampled = [None] * len(targets)
        else:
            from mia_tasks.shapley import sampled_shapley

            sampled = []
            for t in range(len(targets)):
                def value_fn(masks: np.ndarray, t: int = t) -> np.ndarray:
                    """v(S) of target t's given non-empty coalitions (sampled_shapley holds v(∅)), fitting those not in OUT yet."""
                    have = read_sweep(rd, hashes["sweep"]).get(t, {})
                    evaluate({t: np.unique(np.array([m for m in masks if m not in have], np.int64))})
                    have = read_sweep(rd, hashes["sweep"]).get(t, {})
                    return np.array([have[m]["accuracy"] for m in masks])

                est = sampled_shapley(value_fn, L, max_permutations=cfg.sweep.permutations, tol=cfg.sweep.tol, seed=cfg.seed)
                sampled.append({"permutations": int(est.n_permutations), "seed": cfg.seed})
        table = read_sweep(rd, hashes["sweep"])
    blocks = []
    for t, ((s, f), d, (_, joined), (score, name, columns)) in enumerate(zip(targets, datas, inputs, baselines)):
        baseline, y = out_of_fold(name, joined, s, columns, cfg.attack.folds, cfg.seed)
        empty = None if score is None else (baseline >= 0) == y  # v(∅): the baseline's out-of-fold correctness
        blocks.append(target_block(table[t], d["y"], players, f, baseline, cfg.attack.bootstrap, cfg.seed, t, sampled[t],
                                   baseline_attack=name, empty_correct=empty))
    report = shapley_report(blocks, cfg, hashes["sweep"], sampled[0])
    if len(blocks) > 1:
        report["between_targets"] = between_target_summary(blocks)
    rd.write_json(SHAPLEY, report)
    return report
