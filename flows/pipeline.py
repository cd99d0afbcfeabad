"""Which stages each subcommand runs; every stage reuses what OUT already holds for this config."""

from __future__ import annotations

from threadpoolctl import threadpool_limits

from mia_tasks.config import Config, attack_settings
from mia_tasks.featurestore import Features, load_features
from mia_tasks.rundir import RunDir, attack_result, is_current
from mia_tasks.splits import Splits
from mia_tasks.sweeptable import shapley_text
from mia_tasks.target import layer_table, load_target

from .runtime import stage
from .train import train_flow


def _train(cfg: Config, rd: RunDir, hashes: dict, args) -> None:
    train_flow(cfg, rd, hashes)


def _extract(cfg: Config, rd: RunDir, hashes: dict, args):
    from .extract import extract_flow
    from .population import extract_models

    data, splits, _ = train_flow(cfg, rd, hashes)
    with stage("extract"):
        layers = layer_table(load_target(cfg, rd, data), data, cfg.features.layers)
        extract_flow(cfg, rd, hashes, splits.table, layers)
        extract_models(cfg, rd, hashes, splits, layers)  # the population's other models, when there are any
    return splits, load_features(rd, hashes["features"])


def _sweep(cfg: Config, rd: RunDir, hashes: dict, args):
    from .population import target_inputs
    from .sweep import sweep_flow

    splits, features = _extract(cfg, rd, hashes, args)
    with stage("sweep"):
        report = sweep_flow(cfg, rd, hashes, splits, features, others=target_inputs(cfg, rd, hashes, splits))
    print(shapley_text(report), end="")
    return splits, features


def _attack(cfg: Config, rd: RunDir, hashes: dict, args) -> dict:
    from mia_tasks.attacks import ATTACKS
    from mia_tasks.errors import LayerleakError

    from .attack import attack_flow, check_references

    name = args.attack or cfg.attack.name
    if name not in ATTACKS:  # before any stage runs
        raise LayerleakError(f"--attack {name!r}: choose one of {', '.join(ATTACKS)}")
    check_references(cfg, name)
    splits, features = _extract(cfg, rd, hashes, args)
    layers = [l for l in args.layers.split(",") if l] if args.layers else cfg.attack.layers
    kinds = [k for k in args.features.split(",") if k] if args.features else list(cfg.attack.kinds)
    with stage(f"attack ({name})"):
        return attack_flow(cfg, rd, hashes, splits, features, name, layers, kinds)


def _paper(cfg: Config, rd: RunDir, hashes: dict, args) -> dict:
    from .paper import paper_flow

    splits, features = _extract(cfg, rd, hashes, args)
    with stage(f"paper ({args.experiment}, {args.attack})"):
        return paper_flow(cfg, rd, hashes, splits, features, args.experiment, args.attack)


def _report(cfg: Config, rd: RunDir, hashes: dict, args) -> dict:
    """Only reads OUT (see flows.report): nothing is computed, no Ray is started."""
    from .report import report_flow

    with stage("report"):
        return report_flow(cfg, rd, hashes)


def roc_attacks(cfg: Config, rd: RunDir, hashes: dict, splits: Splits, features: Features) -> None:
    """The all-layer logistic attack and the loss-threshold baseline (the report's ROC plot), unless OUT holds
    them for these features and settings."""
    from .attack import attack_flow
    from .report import ROC_ATTACKS

    kinds = list(cfg.attack.kinds)
    for name in ROC_ATTACKS:
        path = attack_result(name, None, kinds, kinds, cfg.attack.calibration if name == "logistic" else "none")
        have = rd.read_json(path) if rd.exists(path) else None
        ok = is_current(have, "attack", hashes, attack_settings(cfg, name)) and (
            name != "logistic" or (have.get("layers") == list(features.layers) and sorted(have.get("kinds", [])) == sorted(kinds))) and "scores" in have  # scores.parquet needs them
        if not ok:
            attack_flow(cfg, rd, hashes, splits, features, name, None, kinds)


def _run(cfg: Config, rd: RunDir, hashes: dict, args) -> None:
    """The whole audit: train, extract, sweep, the seed study's experiments (logistic, cheap), the ROC plot's
    two attacks, then the report."""
    from .paper import paper_flow
    from .report import report_flow

    splits, features = _sweep(cfg, rd, hashes, args)
    with stage("paper (all, logistic)"):
        paper_flow(cfg, rd, hashes, splits, features, "all", "logistic")
    with stage("attacks for the ROC plot"), threadpool_limits(1):  # tiny lbfgs fits: BLAS threads only contend
        roc_attacks(cfg, rd, hashes, splits, features)
    with stage("report"):
        report_flow(cfg, rd, hashes)


def _audit(cfg: Config, rd: RunDir, hashes: dict, args=None) -> None:
    """The audit of the target OUT holds: features, sweep, the ROC plot's attacks and the report (a defence's
    nested folder is audited by this, with the same stages as the main audit)."""
    from .report import report_flow

    splits, features = _sweep(cfg, rd, hashes, args)
    with stage("attacks for the ROC plot"), threadpool_limits(1):
        roc_attacks(cfg, rd, hashes, splits, features)
    with stage("report"):
        report_flow(cfg, rd, hashes)


def _defend(cfg: Config, rd: RunDir, hashes: dict, args) -> None:
    """The audited target first (reused when OUT has it), then the defended target trained and audited into
    OUT/defences/<name>/, then the main report, which compares them."""
    from .defend import check_defence, defend_flow
    from .report import report_flow

    check_defence(cfg)
    splits, features = _sweep(cfg, rd, hashes, args)
    with stage("attacks for the ROC plot"), threadpool_limits(1):
        roc_attacks(cfg, rd, hashes, splits, features)
    defend_flow(cfg, rd, hashes, features, _audit)
    with stage("report"):
        report_flow(cfg, rd, hashes)


STAGE_FUNCTIONS = {"train": _train, "extract": _extract, "attack": _attack, "sweep": _sweep, "run": _run,
                   "paper": _paper, "report": _report, "defend": _defend}
READERS = ("report",)  # commands that only read OUT: a shared lock, no marker or config.yaml written
