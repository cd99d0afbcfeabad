"""Which stages each subcommand runs; every stage reuses what OUT already holds for this config."""

from __future__ import annotations

from mia_tasks.config import Config
from mia_tasks.featurestore import load_features
from mia_tasks.rundir import RunDir
from mia_tasks.target import layer_table, load_target

from .runtime import stage
from .train import train_flow


def _train(cfg: Config, rd: RunDir, hashes: dict, args) -> None:
    train_flow(cfg, rd, hashes)


def _extract(cfg: Config, rd: RunDir, hashes: dict, args):
    from .extract import extract_flow

    data, splits, _ = train_flow(cfg, rd, hashes)
    with stage("extract"):
        layers = layer_table(load_target(cfg, rd, data), data, cfg.features.layers)
        extract_flow(cfg, rd, hashes, splits.table, layers)
    return splits, load_features(rd, hashes["features"])


def _sweep(cfg: Config, rd: RunDir, hashes: dict, args):
    from .sweep import sweep_flow

    splits, features = _extract(cfg, rd, hashes, args)
    with stage("sweep"):
        report = sweep_flow(cfg, rd, hashes, splits, features)
    print_shapley(report)
    return splits, features


def _attack(cfg: Config, rd: RunDir, hashes: dict, args) -> dict:
    from .attack import attack_flow

    splits, features = _extract(cfg, rd, hashes, args)
    name = args.attack or cfg.attack.name
    layers = [l for l in args.layers.split(",") if l] if args.layers else cfg.attack.layers
    kinds = [k for k in args.features.split(",") if k] if args.features else list(cfg.attack.kinds)
    with stage(f"attack ({name})"):
        return attack_flow(cfg, rd, hashes, splits, features, name, layers, kinds)


def print_shapley(report: dict) -> None:
    print(f"Shapley values of attack accuracy ({report['method']}, {report['repeats']} repeats; "
          f"v(all) = {report['v_all']['mean']:.3f} ± {report['v_all']['std']:.3f}, v(∅) = 0.5)")
    print(f"  {'player':24s} {'depth':>5} {'params':>10} {'shapley':>9} {'± std':>7}")
    for p in report["players"]:
        print(f"  {p['player']:24s} {p['depth']:5.1f} {p['params']:10,d} {p['shapley']:9.4f} {p['std']:7.4f}")


def _paper(cfg: Config, rd: RunDir, hashes: dict, args) -> dict:
    from .paper import paper_flow

    splits, features = _extract(cfg, rd, hashes, args)
    with stage(f"paper ({args.experiment}, {args.attack})"):
        return paper_flow(cfg, rd, hashes, splits, features, args.experiment, args.attack)


def _report(cfg: Config, rd: RunDir, hashes: dict, args) -> dict:
    from .report import report_flow

    splits, features = _extract(cfg, rd, hashes, args)
    with stage("report"):
        return report_flow(cfg, rd, hashes, splits, features)


def _run(cfg: Config, rd: RunDir, hashes: dict, args) -> None:
    """The whole audit: train, extract, sweep, the seed study's experiments (logistic, cheap), then the report."""
    from .paper import paper_flow
    from .report import report_flow

    splits, features = _sweep(cfg, rd, hashes, args)
    with stage("paper (all, logistic)"):
        paper_flow(cfg, rd, hashes, splits, features, "all", "logistic")
    with stage("report"):
        report_flow(cfg, rd, hashes, splits, features)


STAGE_FUNCTIONS = {"train": _train, "extract": _extract, "attack": _attack, "sweep": _sweep, "run": _run,
                   "paper": _paper, "report": _report}
