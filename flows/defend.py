"""Defences, re-audited: train a defended target on the audited target's members with its recipe, then audit
it with the same config into OUT/defences/<name>/ (a run folder of the same layout).

    layerleak run --out runs/default
    layerleak defend --defence dp-sgd --epsilon 1 --out runs/default
    layerleak defend --defence layer-dp --out runs/default          # the top player by Shapley value

The defended target is trained in a Ray task (on a GPU where the cluster has one); its audit runs the
main audit's own stages (extractor actors, sweep, attacks, report) on the nested folder, with stage
hashes extended by the defence's settings (mia_tasks.defences.defence_hashes): a rerun reuses every
finished part, and a defence made with other settings is made again.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import numpy as np
import ray
import torch
import yaml

from mia_tasks.config import Config
from mia_tasks.defences import (check_layers, defence_hashes, defence_name, defence_settings, require_opacus, top_players,
                                train_defended)
from mia_tasks.errors import LayerleakError
from mia_tasks.featurestore import Features
from mia_tasks.rundir import CONFIG, MEMBERS, SHAPLEY, SPLITS, TARGET_METRICS, RunDir, defence_dir, is_current, stamp
from mia_tasks.target import build_target, save_target, saved_state
from mia_tasks.train import accuracy

from .runtime import held_device, init_ray, remote_errors, stage, stage_gpus


@ray.remote
def _defence_task(cfg: Config, out: RunDir, member_ids: np.ndarray, layers: list[str] | None, gpu: bool) -> dict:
    """Train the defended target, save it in its folder, and measure its train and test accuracy."""
    from mia_tasks.data import load_dataset

    data = load_dataset(cfg.dataset)
    model = build_target(cfg, data)
    device = torch.device(held_device(gpu))
    start = time.perf_counter()
    every = max(1, cfg.train.epochs // 5)

    def progress(done: int, loss: float) -> None:
        if done % every == 0 or done == cfg.train.epochs:
            print(f"[layerleak] defence {cfg.defence.name}: epoch {done}, loss {loss:.3f}", flush=True)

    info = train_defended(model, data, member_ids, cfg, layers, device, progress)
    wall = time.perf_counter() - start
    save_target(model, RunDir(out))
    x, y = data.images(member_ids)
    return {"train_accuracy": accuracy(model, data, x, y, device), "test_accuracy": accuracy(model, data, data.test_x, data.test_y, device),
            "members": len(y), "test_size": len(data.test_y), "epochs": info.get("epochs", cfg.train.epochs),
            "device": str(device), "wall_s": round(wall, 2), "defence": info}


def check_defence(cfg: Config) -> None:
    """What can be refused before any work: a missing Opacus, layers given to a defence of every layer."""
    require_opacus(cfg.defence.name)
    if cfg.defence.name != "layer-dp" and cfg.defence.layers:
        raise LayerleakError(f"defence.layers applies to layer-dp only; {cfg.defence.name} defends every layer")


def protected_layers(cfg: Config, rd: RunDir, hashes: dict, features: Features) -> list[str] | None:
    """layer-dp's layers: defence.layers, else those of the top defence.top player(s) of OUT/shapley.json."""
    if cfg.defence.name != "layer-dp":
        return None
    if cfg.defence.layers is not None:
        return check_layers(cfg.defence.layers, features.layers)
    shapley = rd.read_derived(SHAPLEY, rd.read_json)
    if not is_current(shapley, "shapley", hashes):
        raise LayerleakError(f"OUT {rd.uri} has no Shapley values for this config to pick the top player from; "
                             f"name the layers (--layers) or run 'layerleak sweep --out {rd.uri}'")
    top = top_players(shapley, cfg.defence.top)
    print("[layerleak] defence layer-dp: protecting the top player(s) by Shapley value: "
          + ", ".join(f"{p['player']} ({', '.join(p['layers'])})" for p in top))
    return check_layers([l for p in top for l in p["layers"]], features.layers)


def _defended_target(cfg: Config, sub: RunDir, hashes: dict, settings: dict, member_ids: np.ndarray,
                     layers: list[str] | None) -> dict:
    """The defended target's metrics, trained in a Ray task unless its folder holds one made with these settings."""
    metrics = sub.read_derived(TARGET_METRICS, sub.read_json)
    if is_current(metrics, "target", hashes, settings) and saved_state(sub) is not None:
        print(f"[layerleak] defence: reusing {sub.uri}/target (test acc {metrics['test_accuracy']:.3f})")
        return metrics
    init_ray(cfg.ray)
    gpu = 1 if stage_gpus("train.device", cfg.train.device) else 0
    task = _defence_task.options(num_gpus=gpu, num_cpus=1, max_retries=cfg.ray.max_retries)
    with remote_errors():
        metrics = ray.get(task.remote(cfg, sub, member_ids, layers, bool(gpu)))
    metrics.update(**stamp("target", hashes, settings), dataset=cfg.dataset.name, arch=cfg.model.arch,
                   overfit_gap=round(metrics["train_accuracy"] - metrics["test_accuracy"], 4))
    sub.write_json(TARGET_METRICS, metrics)
    eps = metrics["defence"].get("epsilon")
    print(f"[layerleak] defence: train acc {metrics['train_accuracy']:.3f}, test acc {metrics['test_accuracy']:.3f}"
          + (f", ε spent {eps:.3f} (δ {metrics['defence']['delta']:.2g})" if eps is not None else ", no ε (empirical)")
          + f" in {metrics['wall_s']}s", flush=True)
    return metrics


def defend_flow(cfg: Config, rd: RunDir, hashes: dict, features: Features,
                audit: Callable[[Config, RunDir, dict], None]) -> RunDir:
    """Train and audit ``cfg.defence`` into OUT/defences/<name>/; ``audit`` is the main audit's extract, sweep,
    attacks and report, run on the nested folder. Returns that folder."""
    layers = protected_layers(cfg, rd, hashes, features)
    settings = defence_settings(cfg.defence, layers)
    name = defence_name(settings)
    sub = rd.nested(defence_dir(name))
    sub_hashes = defence_hashes(hashes, settings)
    sub_cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, checkpoint=None))  # trained here, by the recipe
    with stage(f"defence {name}: target"):
        for rel in (SPLITS, MEMBERS):  # the audited target's members and audited samples, as they are
            if not sub.exists(rel) or sub.read_bytes(rel) != rd.read_bytes(rel):
                sub.write_bytes(rel, rd.read_bytes(rel))
        members = rd.read_parquet(MEMBERS).column("sample_id").to_numpy()
        sub.write_text(CONFIG, yaml.safe_dump({"hashes": sub_hashes, **sub_cfg.to_dict()}, sort_keys=False))
        _defended_target(sub_cfg, sub, sub_hashes, settings, members, layers)
    audit(sub_cfg, sub, sub_hashes)
    return sub
