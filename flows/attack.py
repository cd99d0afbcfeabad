"""One membership attack, cross-fitted over the audited pool, with bootstrap intervals -> OUT/attacks/<name>.json.

    layerleak attack --attack logistic --layers conv2,fc2 --features grad,out --out runs/default
    layerleak attack --attack nasr --out runs/default        # trains Nasr et al.'s attack model

Each audited sample is scored once, by the attack fitted on the other ``attack.folds`` folds; every metric
carries a 95% interval from ``attack.bootstrap`` replicates of a bootstrap over audited samples stratified by
membership; TPR at an FPR only where enough non-members exist to measure it. Feature attacks read
OUT/features; the Nasr attack (cross-fitted too: one attack model per fold) streams raw gradients from the
target, in a Ray task that takes a GPU where the cluster has one.
"""

from __future__ import annotations

import ray

from mia_tasks.attack_runs import run_attack
from mia_tasks.config import Config, attack_settings
from mia_tasks.featurestore import Features
from mia_tasks.report.render import interval_text
from mia_tasks.rundir import RunDir, attack_result, stamp
from mia_tasks.splits import Splits

from .actors import load_data_and_target
from .runtime import gpus_available, held_device, init_ray, remote_errors


@ray.remote
def _nasr_task(cfg: Config, out: str, features: Features, splits: Splits, layers: list[str] | None, gpu: bool) -> dict:
    import torch

    torch.set_num_threads(1)  # its many small ops gain nothing from threads on a busy CPU
    data, model = load_data_and_target(cfg, out)
    a = cfg.attack
    options = {"layers": layers, "epochs": a.nasr_epochs, "lr": a.nasr_lr, "batch_size": a.nasr_batch_size,
               "device": held_device(gpu)}
    return run_attack("nasr", features, splits, layers, model=model, data=data, nasr=options, seed=cfg.seed,
                      folds=a.folds, bootstrap=a.bootstrap)


def attack_flow(cfg: Config, rd: RunDir, hashes: dict, splits: Splits, features: Features, name: str,
                layers: list[str] | None, kinds: list[str]) -> dict:
    """Run the attack, save and print every metric with its interval."""
    if name == "nasr":
        init_ray(cfg.ray)
        gpu = 1 if gpus_available() else 0
        task = _nasr_task.options(num_gpus=gpu, max_retries=cfg.ray.max_retries)
        with remote_errors():
            result = ray.get(task.remote(cfg, rd, features, splits, layers or cfg.attack.nasr_layers, bool(gpu)))
    else:
        result = run_attack(name, features, splits, layers, kinds, C=cfg.attack.C, transform=cfg.attack.transform, seed=cfg.seed,
                            folds=cfg.attack.folds, bootstrap=cfg.attack.bootstrap)
    result.update(stamp("attack", hashes, attack_settings(cfg, name)))
    path = attack_result(name, layers, kinds, cfg.attack.kinds)
    rd.write_json(path, result)
    print(f"{name} attack ({result['folds']}-fold cross-fitted over {result['n']} audited samples: {result['members']} members, "
          f"{result['non_members']} non-members; 95% intervals):")
    for key, m in result["metrics"].items():
        print(f"  {key:18s} {interval_text(m)}")
    print(f"[layerleak] attack: saved {rd.uri}/{path}")
    return result
