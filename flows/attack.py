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

import dataclasses

import ray

from mia_tasks.attack_runs import run_attack, run_attack_targets
from mia_tasks.attacks.references import CALIBRATED, join_models
from mia_tasks.calibration import calibrate_table
from mia_tasks.errors import LayerleakError
from mia_tasks.schema import parse_column
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


def attack_options(cfg: Config, name: str) -> dict:
    """The constructor options of attack ``name`` from the config (calibrated attacks only)."""
    a = cfg.attack
    if name == "lira":
        return {"mode": a.lira_mode, "variance": a.lira_variance}
    if name in ("lira-online", "lira-offline"):
        return {"variance": a.lira_variance}
    if name == "rmia":
        return {"mode": a.rmia_mode, "a": a.rmia_a, "gamma": a.rmia_gamma}
    return {}


def check_references(cfg: Config, name: str) -> None:
    """Refuse, before any stage runs, a calibrated attack without reference models."""
    if cfg.references.count == 0 and (name in CALIBRATED or (name == "logistic" and cfg.attack.calibration != "none")):
        why = f"attack {name!r}" if name in CALIBRATED else f"attack.calibration={cfg.attack.calibration}"
        raise LayerleakError(f"{why} needs reference models: set references.count (e.g. --set references.count=16)")


def with_references(cfg: Config, rd: RunDir, hashes: dict, splits: Splits, features: Features, name: str,
                    target: int = 0) -> Features:
    """``features`` (of model ``target``) with what a calibrated attack reads: its reference models' loss and
    membership (lira, rmia), or every feature column calibrated against them (attack.calibration); ``features``
    itself otherwise. ``splits``: OUT's (target 0's) splits, whatever the target."""
    calibrate = name == "logistic" and cfg.attack.calibration != "none"
    if name not in CALIBRATED and not calibrate:
        return features
    from .population import reference_inputs

    check_references(cfg, name)
    refs = reference_inputs(cfg, rd, hashes, splits, target)
    if not calibrate:
        return join_models(features, refs)
    columns = [c for c in features.table.column_names if parse_column(c)[0] and c not in features.constant]
    joined = join_models(features, refs, columns)
    return dataclasses.replace(joined, table=calibrate_table(joined.table, columns, cfg.attack.calibration))


def attack_targets(cfg: Config, rd: RunDir, hashes: dict, splits: Splits, features: Features, name: str,
                   layers: list[str] | None, kinds: list[str]) -> dict:
    """``name`` on each of the split.targets targets (targets for free: each model of the population in turn, with
    references.count others as its references), the between-target means and the pooled ROC against the loss threshold."""
    from .population import target_inputs

    targets = [(splits, features), *target_inputs(cfg, rd, hashes, splits)]
    inputs = [(with_references(cfg, rd, hashes, splits, f, name, target=t), s, f) for t, (s, f) in enumerate(targets)]
    return run_attack_targets(name, inputs, layers, kinds, C=cfg.attack.C, transform=cfg.attack.transform, seed=cfg.seed,
                              folds=cfg.attack.folds, bootstrap=cfg.attack.bootstrap, options=attack_options(cfg, name))


def targets_text(summary: dict) -> str:
    """The several-targets lines of ``layerleak attack``: between-target means and the pooled comparison."""
    lines = []
    if summary["between_targets"]:
        lines.append(f"mean over {summary['count']} targets (95% t-interval, n = targets):")
        lines += [f"  {k:18s} {interval_text(m)}" for k, m in summary["between_targets"].items()]
    p = summary["pooled"]
    lines.append(f"pooled over {p['targets']} targets x {p['samples']} audited samples ({p['members']} member and "
                 f"{p['non_members']} non-member scores; 95% two-way bootstrap over targets and samples, "
                 f"{p['resampling']['replicates']} replicates):")
    for attack, metrics in {**p["attacks"], **p["differences"]}.items():
        lines += [f"  {attack + ' ' + k:34s} {interval_text(m)}" for k, m in metrics.items()]
    return "".join(line + "\n" for line in lines)


def attack_flow(cfg: Config, rd: RunDir, hashes: dict, splits: Splits, features: Features, name: str,
                layers: list[str] | None, kinds: list[str]) -> dict:
    """Run the attack, save and print every metric with its interval."""
    if name == "nasr":
        init_ray(cfg.ray)
        gpu = 1 if gpus_available() else 0
        task = _nasr_task.options(num_gpus=gpu, max_retries=cfg.ray.max_retries)
        with remote_errors():
            result = ray.get(task.remote(cfg, rd, features, splits, layers or cfg.attack.nasr_layers, bool(gpu)))
    elif cfg.split.targets > 1:
        result = attack_targets(cfg, rd, hashes, splits, features, name, layers, kinds)
    else:
        features = with_references(cfg, rd, hashes, splits, features, name)
        result = run_attack(name, features, splits, layers, kinds, C=cfg.attack.C, transform=cfg.attack.transform, seed=cfg.seed,
                            folds=cfg.attack.folds, bootstrap=cfg.attack.bootstrap, options=attack_options(cfg, name))
    result.update(stamp("attack", hashes, attack_settings(cfg, name)))
    path = attack_result(name, layers, kinds, cfg.attack.kinds, cfg.attack.calibration if name == "logistic" else "none")
    rd.write_json(path, result)
    print(f"{name} attack ({result['folds']}-fold cross-fitted over {result['n']} audited samples: {result['members']} members, "
          f"{result['non_members']} non-members; 95% intervals):")
    for key, m in result["metrics"].items():
        print(f"  {key:18s} {interval_text(m)}")
    if "targets" in result:
        print(targets_text(result["targets"]), end="")
    print(f"[layerleak] attack: saved {rd.uri}/{path}")
    return result
