"""The seed study's experiments (figures 3-6) on this run -> OUT/experiments/<name>-<attack>.json.

    layerleak paper --experiment all --out runs/default                 # logistic attack on the features
    layerleak paper --experiment groups-grad --attack nasr --out runs/default

Logistic rows run on the driver (a few milliseconds each). Nasr rows train Nasr et al.'s attack model
on raw gradients in parallel Ray actors (one per GPU where the cluster has them; each loads the data
and the target once); selections whose raw gradients exceed ``experiments.NASR_MAX_GRAD_PARAMS`` per
sample are skipped and say so (on a CIFAR AlexNet: the groups that hold its big fc layers). The shapley
experiment is the sweep (OUT/shapley.json, logistic only). An experiment whose file holds the same
key (features hash, attack and its settings) is reused, not rerun. One OUT is one architecture: run
the three seed architectures as three configs into three OUT folders (see docs/results.md).
"""

from __future__ import annotations

import numpy as np
import ray
from threadpoolctl import threadpool_limits

from mia_tasks.config import Config
from mia_tasks.errors import LayerleakError
from mia_tasks.experiments import (EXPERIMENTS, Selection, experiment_key, experiment_settings, logistic_row,
                                   nasr_options, nasr_too_big, run_experiment, selections, summary)
from mia_tasks.featurestore import Features
from mia_tasks.report.render import interval_text
from mia_tasks.rundir import SHAPLEY, RunDir, experiment_result, is_current, stamp
from mia_tasks.splits import Splits
from mia_tasks.sweeptable import shapley_text

from .actors import actor_pool, load_data_and_target, pool_size
from .runtime import gpus_available, held_device, init_ray


class NasrRunner:
    """One Ray actor per GPU (or CPU slot): loads the data and the target once, then scores selections."""

    def __init__(self, cfg: Config, out: str, gpu: bool):
        import torch

        torch.set_num_threads(1)  # its many small ops gain nothing from threads on a busy CPU
        self.cfg = cfg
        self.device = held_device(gpu)
        self.data, self.model = load_data_and_target(cfg, out)

    def __call__(self, features: Features, splits: Splits, sel: Selection) -> dict:
        from mia_tasks.attack_runs import run_attack

        a = self.cfg.attack
        return run_attack("nasr", features, splits, sel.layers(features.layers), model=self.model, data=self.data,
                          nasr={**nasr_options(sel, a), "device": self.device}, seed=self.cfg.seed, folds=a.folds,
                          bootstrap=a.bootstrap)


def _nasr_results(cfg: Config, rd: RunDir, features: Features, splits: Splits, sels: list[Selection]) -> dict[str, dict]:
    """{label: run_attack result} for the selections small enough for the Nasr attack, fitted by parallel actors."""
    todo = [sel for sel in sels if nasr_too_big(sel, features.params) is None]
    if not todo:
        return {}
    init_ray(cfg.ray)
    gpus = gpus_available()
    f_ref, s_ref = ray.put(features), ray.put(splits)
    n = pool_size(len(todo), gpus, cfg.ray.fit_actors, "nasr", "ray.fit_actors")
    with actor_pool(NasrRunner, (cfg, rd.uri, bool(gpus)), n, gpu=bool(gpus), max_retries=cfg.ray.max_retries) as pool:
        results = pool.map(lambda a, sel: a.__call__.remote(f_ref, s_ref, sel), todo, "nasr", "selection", ordered=True)
    return {sel.label: res for sel, res in zip(todo, results)}


def reusable(rd: RunDir, path: str, hashes: dict, sets: dict) -> dict | None:
    """The saved experiment at ``path`` when it was made from these features with these settings, else None."""
    try:
        record = rd.read_json(path) if rd.exists(path) else None
    except ValueError:
        return None
    return record if is_current(record, "experiment", hashes, sets) else None


def run_one(cfg: Config, rd: RunDir, hashes: dict, splits: Splits, features: Features, name: str, attack: str) -> dict:
    """One experiment with one attack: reused from OUT when its key matches, else computed and saved."""
    sets = experiment_settings(cfg, name, attack, features.layers)
    key = experiment_key(hashes["features"], name, attack, sets)
    path = experiment_result(name, attack)
    record = reusable(rd, path, hashes, sets)
    if record is not None:
        print(f"[layerleak] paper: {name} ({attack}): reusing {rd.uri}/{path}")
        return record
    sels = selections(name, features.layers, cfg.sweep.kinds)
    if attack == "logistic":
        row_fn = lambda sel: logistic_row(sel, features, splits, cfg.attack, cfg.seed)  # noqa: E731
    else:
        results = _nasr_results(cfg, rd, features, splits, sels)

        def row_fn(sel: Selection) -> dict | str:
            return nasr_too_big(sel, features.params) or results[sel.label]

    with threadpool_limits(1):  # tiny lbfgs fits: BLAS threads only contend (3x slower on a busy 2-core box)
        record = run_experiment(name, attack, sels, features, row_fn, hashes["features"], key, sets)
    rd.write_json(path, record)
    print_experiment(record)
    print(f"[layerleak] paper: saved {rd.uri}/{path}")
    return record


def print_experiment(record: dict) -> None:
    print(f"{record['experiment']} ({record['attack']} attack; accuracy, cross-fitted, 95% bootstrap interval):")
    for row in summary(record):
        print(f"  {row['label']:32s} {row['skipped'] or interval_text(row['metric'])}")


def shapley_experiment(cfg: Config, rd: RunDir, hashes: dict, splits: Splits, features: Features) -> dict:
    """Figure 6 is the sweep: OUT/shapley.json when it matches this config, else the sweep stage runs."""
    report = rd.read_json(SHAPLEY) if rd.exists(SHAPLEY) else None
    if is_current(report, "shapley", hashes) and report.get("bootstrap") == cfg.attack.bootstrap:
        print(f"[layerleak] paper: shapley: reusing {rd.uri}/{SHAPLEY}")
        return report
    from .sweep import sweep_flow

    report = sweep_flow(cfg, rd, hashes, splits, features)
    print(shapley_text(report), end="")
    return report


def seed_shapley_experiment(cfg: Config, rd: RunDir, hashes: dict, splits: Splits, features: Features) -> dict:
    """The sweep's players under the seed's own protocol (mia_tasks.seed_protocol), beside layerleak's shapley.json."""
    from mia_tasks.attack_data import membership
    from mia_tasks.players import make_players, player_columns
    from mia_tasks.seed_protocol import SeedProtocol, seed_record

    path = experiment_result("seed-shapley", "logistic")
    sets = experiment_settings(cfg, "seed-shapley", "logistic", features.layers)
    record = reusable(rd, path, hashes, sets)
    if record is not None:
        print(f"[layerleak] paper: seed-shapley: reusing {rd.uri}/{path}")
        return record
    players = make_players(cfg.sweep.players, features.layers)
    cols = player_columns(players, cfg.sweep.kinds, features.constant)
    flat = [c for group in cols for c in group]
    ids = splits.sample_ids
    X, y = features.matrix(flat, ids), membership(splits, ids).astype(bool)
    starts = np.cumsum([0, *map(len, cols)])
    with threadpool_limits(1):
        record = seed_record(X, y, players, [list(range(a, b)) for a, b in zip(starts[:-1], starts[1:])], SeedProtocol())
    record.update({"experiment": "seed-shapley", "attack": "logistic", **stamp("experiment", {"features": hashes["features"]}, sets)})
    rd.write_json(path, record)
    print(f"seed-shapley (the seed's protocol: {record['seeds']} seeds, sizes {record['sizes']}, v(∅) = {record['empty']}):")
    for p, e in record["auc"]["shapley"].items():
        print(f"  {p:16s} AUROC {e['value']:+.4f} (seeds {e['seed_range'][0]:+.4f}..{e['seed_range'][1]:+.4f})   "
              f"accuracy {record['accuracy']['shapley'][p]['value']:+.4f}")
    print(f"[layerleak] paper: saved {rd.uri}/{path}")
    return record


def paper_flow(cfg: Config, rd: RunDir, hashes: dict, splits: Splits, features: Features, experiment: str = "all",
               attack: str = "logistic") -> dict[str, dict]:
    """Run the chosen experiment(s) (``all``: the four) with ``attack``; {name: record}."""
    names = [*EXPERIMENTS, "shapley"] if experiment == "all" else [experiment]
    if attack not in ("logistic", "nasr"):
        raise LayerleakError(f"paper --attack {attack!r}: choose logistic or nasr")
    out = {}
    for name in names:
        if name == "seed-shapley":
            out[name] = seed_shapley_experiment(cfg, rd, hashes, splits, features)
        elif name == "shapley":
            if attack != "logistic":
                print("[layerleak] paper: shapley: the sweep fits the logistic attack on every coalition (2^L fits); "
                      "there is no nasr version, skipping it")
                continue
            out[name] = shapley_experiment(cfg, rd, hashes, splits, features)
        else:
            out[name] = run_one(cfg, rd, hashes, splits, features, name, attack)
    return out
