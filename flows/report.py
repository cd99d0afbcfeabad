"""The audit report from what OUT holds -> OUT/report.json, report.md, report.html, plots/*.png.

    layerleak report --out runs/default

A pure reader: it computes nothing and starts no Ray. It needs the target's metrics, the features
(for the layer table) and the sweep's Shapley values made by this config; where one is missing or was
made by another config, it names the command that makes it. Attack results and experiments are shown
when their settings match the config (the logistic attack's calibration is the one its file name says:
attacks/logistic.json and attacks/logistic-calibrated-<mode>.json are both shown); files made with other
settings are listed under "Left out", never mixed in. ``layerleak run`` makes the ROC plot's two attacks
(the all-layer logistic attack and the loss-threshold baseline) before its report; ``layerleak attack``
makes them on their own.
"""

from __future__ import annotations

from mia_tasks.config import ATTACK_SETTINGS, Config, attack_settings
from mia_tasks.errors import LayerleakError, one_line
from mia_tasks.experiments import experiment_settings
from mia_tasks.defences import DEFENDED_STAGES, SETTINGS, defence_hashes
from mia_tasks.report import build_report, headline_text, make_plots, render_html, render_markdown
from mia_tasks.report.defences import compare_defences
from mia_tasks.scores import most_exposed, score_histogram, write_scores
from mia_tasks.rundir import (ATTACKS, DEFENCES, EXPERIMENTS, FEATURES, PLOTS, REPORT_HTML, REPORT_JSON, REPORT_MD, SHAPLEY,
                              TARGET_METRICS, RunDir, attack_calibration, default_attack_stem, defence_dir, is_current)

ROC_ATTACKS = ("logistic", "loss-threshold")  # the ROC plot's attack and its baseline


def _read(rd: RunDir, rel: str) -> dict | None:
    try:
        return rd.read_json(rel) if rd.exists(rel) else None
    except (OSError, ValueError):
        return None


def file_settings(cfg: Config, name: str, rel: str) -> dict:
    """The settings a current result of attack ``name`` in file ``rel`` records: the config's, with the calibration
    the file's name says (calibrated and uncalibrated logistic results live side by side; the report shows both)."""
    return attack_settings(cfg, name, attack_calibration(rel) if name == "logistic" else None)


def _missing(rd: RunDir, what: str, command: str) -> LayerleakError:
    return LayerleakError(f"OUT {rd.uri} has no {what} made with this config; run 'layerleak {command} --out {rd.uri}' "
                          f"(or 'layerleak run') with the same --config/--set")


def _feature_layers(rd: RunDir, hashes: dict) -> dict:
    """The features parts' record of the audited layers (names, parameter counts, depths), when every part is current."""
    names = rd.listdir(FEATURES, ".parquet")
    metas = []
    for name in names:
        try:
            metas.append(rd.parquet_metadata(f"{FEATURES}/{name}"))
        except (OSError, ValueError) as e:
            raise LayerleakError(f"OUT {rd.uri}/{FEATURES}/{name} is unreadable ({one_line(e)}); "
                                 f"run 'layerleak extract --out {rd.uri}' to recompute it") from None
    if not metas or not all(is_current(m, "features", hashes) for m in metas):
        raise _missing(rd, f"features ({FEATURES}/part-*.parquet)", "extract")
    return metas[0]


def gather(cfg: Config, rd: RunDir, hashes: dict) -> dict:
    """Everything OUT holds for this config, as build_report's arguments; the outputs the report needs must be there."""
    target = _read(rd, TARGET_METRICS)
    if not is_current(target, "target", hashes):
        raise _missing(rd, f"trained target ({TARGET_METRICS})", "train")
    meta = _feature_layers(rd, hashes)
    shapley = _read(rd, SHAPLEY)
    if not is_current(shapley, "shapley", hashes):
        raise _missing(rd, f"sweep results ({SHAPLEY})", "sweep")
    if shapley.get("bootstrap") != cfg.attack.bootstrap:  # the fits are current, their intervals are not
        raise _missing(rd, f"Shapley intervals of attack.bootstrap={cfg.attack.bootstrap} ({SHAPLEY})", "sweep")
    ignored: list[str] = []
    experiments = {}
    for fname in rd.listdir(EXPERIMENTS, ".json"):
        rec = _read(rd, f"{EXPERIMENTS}/{fname}")
        ok = rec is not None and is_current(rec, "experiment", hashes, experiment_settings(
            cfg, rec.get("experiment"), rec.get("attack"), meta["layers"]))
        if ok:
            experiments[fname[:-len(".json")]] = rec
        else:
            ignored.append(f"{EXPERIMENTS}/{fname}")
    attacks = {}
    for fname in rd.listdir(ATTACKS, ".json"):
        rec = _read(rd, f"{ATTACKS}/{fname}")
        name = (rec or {}).get("attack")
        if name in ATTACK_SETTINGS and is_current(rec, "attack", hashes, file_settings(cfg, name, fname)):
            attacks[fname[:-len(".json")]] = rec
        else:
            ignored.append(f"{ATTACKS}/{fname}")
    layers = [{"name": l, "depth": int(meta["depths"][l]), "params": int(meta["params"][l])} for l in meta["layers"]]
    return {"config": cfg.to_dict(), "hashes": hashes, "target": target, "layers": layers, "shapley": shapley,
            "experiments": experiments, "attacks": attacks, "ignored": ignored}


def gather_defences(rd: RunDir, hashes: dict) -> tuple[dict[str, dict], list[str]]:
    """Each defence's report.json in OUT/defences/ made from this audit (its hashes are this config's extended by
    the settings its target records), and the folders left out (another config, or not audited to the end)."""
    found, stale = {}, []
    for name in rd.subfolders(DEFENCES):
        sub = rd.nested(defence_dir(name))
        target, rep = _read(sub, TARGET_METRICS), _read(sub, REPORT_JSON)
        settings = (target or {}).get("settings")
        want = defence_hashes(hashes, settings) if isinstance(settings, dict) and settings.get("defence") in SETTINGS else None
        if want and rep and all((rep.get("hashes") or {}).get(k) == want[k] for k in DEFENDED_STAGES):
            found[name] = rep
        else:
            stale.append(f"{defence_dir(name)}/")
    return found, stale


def report_flow(cfg: Config, rd: RunDir, hashes: dict) -> dict:
    """Write report.json, the plots, report.md and report.html; print report.md's path and the headline table."""
    report = build_report(**gather(cfg, rd, hashes))
    defences, stale = gather_defences(rd, hashes)
    if defences:
        report["defences"] = compare_defences(report, defences)
    report["ignored"] = report.get("ignored", []) + stale
    lacking = [a for a in ROC_ATTACKS if default_attack_stem(a, cfg.attack.calibration if a == "logistic" else "none")
               not in report["attacks"]]
    if lacking:
        print(f"[layerleak] report: no ROC plot: OUT holds no {' or '.join(lacking)} attack made with this config; "
              + " and ".join(f"'layerleak attack --attack {a} --out {rd.uri}'" for a in lacking) + " make it")
    table = write_scores(rd, report["attacks"], hashes)  # every current attack's per-sample scores
    report["most_exposed"], report["score_histogram"] = most_exposed(table), score_histogram(table)
    for rec in report["attacks"].values():  # per-sample scores live in scores.parquet, not in report.json
        rec.pop("sample_ids", None)
        rec.pop("scores", None)
        rec.pop("raw_scores", None)
    rd.write_json(REPORT_JSON, report)
    plots = make_plots(report)
    for rel in PLOTS.values():
        if rel not in plots:
            rd.delete(rel)  # a plot of an earlier report that this one has no data for
    for rel, png in plots.items():
        rd.write_bytes(rel, png)
    rd.write_text(REPORT_MD, render_markdown(report, list(plots)))
    rd.write_text(REPORT_HTML, render_html(report, plots))
    where = rd.path(REPORT_MD) if rd.local else f"{rd.uri}/{REPORT_MD}"
    print(f"[layerleak] report: {where} (also {REPORT_HTML}, {REPORT_JSON}, {len(plots)} plots)")
    print(headline_text(report), end="")
    return report
