"""The audit report from what OUT holds -> OUT/report.json, report.md, report.html, plots/*.png.

    layerleak report --out runs/default

Reads target/metrics.json, shapley.json, experiments/*.json and attacks/*.json made by this config
(files made by another config are listed under "Left out", never mixed in). The ROC plot needs the
all-layer logistic attack and the loss-threshold baseline: they are run (``run_attack`` via the
attack stage, no Ray needed) when OUT lacks them.
"""

from __future__ import annotations

from threadpoolctl import threadpool_limits

from mia_tasks.config import Config
from mia_tasks.experiments import EXPERIMENTS_DIR, experiment_key
from mia_tasks.featurestore import Features
from mia_tasks.report import PLOTS, build_report, headline_text, make_plots, render_html, render_markdown
from mia_tasks.rundir import RunDir
from mia_tasks.splits import Splits


def _read(rd: RunDir, rel: str) -> dict | None:
    try:
        return rd.read_json(rel)
    except (OSError, ValueError):
        return None


def _attack_current(rec: dict | None, cfg: Config, hashes: dict) -> bool:
    """A saved attack result made from these features with this config's attack settings."""
    from .attack import attack_settings

    return (rec is not None and rec.get("config_hash") == hashes["features"]
            and rec.get("settings") == attack_settings(cfg, rec.get("attack", "")))


def ensure_roc_attacks(cfg: Config, rd: RunDir, hashes: dict, splits: Splits, features: Features) -> None:
    """Run the all-layer logistic attack and the loss-threshold baseline unless OUT holds them for these features."""
    from .attack import attack_flow, result_name

    for name in ("logistic", "loss-threshold"):
        path = result_name(name, None, list(cfg.attack.kinds), cfg.attack.kinds)
        have = _read(rd, path) if rd.exists(path) else None
        ok = _attack_current(have, cfg, hashes) and (
            name != "logistic" or (have.get("layers") == list(features.layers) and sorted(have.get("kinds", [])) == sorted(cfg.attack.kinds)))
        if not ok:
            attack_flow(cfg, rd, hashes, splits, features, name, None, list(cfg.attack.kinds))


def gather(cfg: Config, rd: RunDir, hashes: dict, features: Features) -> dict:
    """Everything OUT holds for this config, as build_report's arguments."""
    from .paper import settings

    ignored: list[str] = []
    target = _read(rd, "target/metrics.json") if rd.exists("target/metrics.json") else None
    if target is not None and target.get("config_hash") != hashes["target"]:
        ignored.append("target/metrics.json")
        target = None
    shapley = _read(rd, "shapley.json") if rd.exists("shapley.json") else None
    if shapley is not None and shapley.get("config_hash") != hashes["sweep"]:
        ignored.append("shapley.json")
        shapley = None
    experiments = {}
    for fname in rd.listdir(EXPERIMENTS_DIR, ".json"):
        rec = _read(rd, f"{EXPERIMENTS_DIR}/{fname}")
        ok = rec is not None and rec.get("features_hash") == hashes["features"] and rec.get("key") == experiment_key(
            hashes["features"], rec["experiment"], rec["attack"], settings(cfg, rec["experiment"], rec["attack"], features))
        if ok:
            experiments[fname[:-len(".json")]] = rec
        else:
            ignored.append(f"{EXPERIMENTS_DIR}/{fname}")
    attacks = {}
    for fname in rd.listdir("attacks", ".json"):
        rec = _read(rd, f"attacks/{fname}")
        if _attack_current(rec, cfg, hashes):
            attacks[fname[:-len(".json")]] = rec
        else:
            ignored.append(f"attacks/{fname}")
    layers = [{"name": l, "depth": int(features.depths[l]), "params": int(features.params[l])} for l in features.layers]
    return {"config": cfg.to_dict(), "hashes": hashes, "target": target, "layers": layers, "shapley": shapley,
            "experiments": experiments, "attacks": attacks, "ignored": ignored}


def report_flow(cfg: Config, rd: RunDir, hashes: dict, splits: Splits, features: Features) -> dict:
    """Write report.json, the plots, report.md and report.html; print report.md's path and the headline table."""
    with threadpool_limits(1):  # tiny lbfgs fits: BLAS threads only contend
        ensure_roc_attacks(cfg, rd, hashes, splits, features)
    report = build_report(**gather(cfg, rd, hashes, features))
    rd.write_json("report.json", report)
    plots = make_plots(report)
    for rel in PLOTS.values():
        if rel not in plots:
            rd.delete(rel)  # a plot of an earlier report that this one has no data for
    for rel, png in plots.items():
        rd.write_bytes(rel, png)
    rd.write_text("report.md", render_markdown(report, list(plots)))
    rd.write_text("report.html", render_html(report, plots))
    where = rd.path("report.md") if rd.local else f"{rd.uri}/report.md"
    print(f"[layerleak] report: {where} (also report.html, report.json, {len(plots)} plots)")
    print(headline_text(report), end="")
    return report
