"""The report's section on several targets (``split.targets``): each target's headline numbers and the
between-target means with their t-intervals, and the stability of the players' ranking."""

from __future__ import annotations

from .stats import fmt


def targets_blocks(report: dict) -> list[tuple]:
    """Blocks (render.py's kinds) for several targets; none for a single target."""
    between, targets = report.get("between_targets"), report.get("targets") or []
    if not between or len(targets) < 2:
        return []
    names = [p["player"] for p in targets[0]["players"]]
    header = ["target", "leakage", "v(all)", "AUC (all layers)", "AUC (loss)", *[f"φ({n})" for n in names]]
    rows = [[str(t["target"]), "yes" if t["leakage_detected"] else "no", fmt(t["v_all"], 4),
             fmt(t["all_layers"].get("auc"), 4), fmt(t["baseline"].get("auc"), 4),
             *[fmt(p["shapley"], 4) for p in t["players"]]] for t in targets]
    rows.append([f"mean of {between['targets']}", f"{between['leakage_detected']}/{between['targets']}",
                 fmt(between["v_all"], 4), fmt(between["all_layers"].get("auc"), 4), fmt(between["baseline"].get("auc"), 4),
                 *[fmt(p["shapley"], 4) for p in between["players"]]])
    out: list[tuple] = [("h", 2, f"Several targets ({between['targets']})"),
                        ("p", "Each target is trained on its own random half of one population pool and audited on the same "
                              "samples with its own membership. Per target: value [95% bootstrap interval over its audited "
                              "samples]; the mean row: mean over targets [95% t-interval, n = targets], the variance of "
                              "training a target included."),
                        ("table", header, rows)]
    if between.get("gain"):
        diffs = between.get("all_layers_minus_baseline") or {}
        out.append(("p", f"What all the players add to v(∅) (v(all) − v(∅), mean over targets [95% t-interval]): "
                         f"{fmt(between['gain'], 4)}" + ("; the all-layer attack minus the baseline: " + ", ".join(
                             f"{k} {fmt(m, 4)}" for k, m in diffs.items()) if diffs else "") + "."))
    rs = between.get("ranking_stability")
    if rs:
        out.append(("p", f"Ranking stability across targets: Kendall's W = {rs['kendall_w']:.3f} (p = {rs['kendall_w_p_value']:.3g}; "
                         f"1 = the same ranking in every target), mean pairwise Spearman {rs['mean_pairwise_spearman']:.3f}."))
    return out


def attack_targets_blocks(attacks: dict) -> list[tuple]:
    """Per attack run on several targets (``layerleak attack`` with split.targets > 1): the pooled ROC's AUC and
    TPR at low FPR of the attack and its baseline, their paired difference, and the between-target means."""
    out: list[tuple] = []
    for name, a in attacks.items():
        summary = a.get("targets")
        if not summary:
            continue
        p = summary["pooled"]
        keys = list(next(iter(p["attacks"].values())))
        rows = [[attack, *[fmt(m[k], 4) for k in keys]] for attack, m in {**p["attacks"], **p["differences"]}.items()]
        if summary.get("between_targets"):
            bt = summary["between_targets"]
            rows.append([f"{name}, mean of {summary['count']} targets", *[fmt(bt.get(k), 4) for k in keys]])
        out += [("h", 3, f"{name} on {summary['count']} targets"),
                ("p", f"Pooled over {p['targets']} targets × {p['samples']} audited samples ({p['members']} member and "
                      f"{p['non_members']} non-member scores; each target has its own membership and its own references, "
                      f"other models of the population). Pooled rows: value [95% percentile interval from {p['resampling']['replicates']:,} "
                      f"replicates of a two-way bootstrap: targets and audited samples redrawn with replacement, the "
                      f"threshold re-read in each]. The mean row: mean over targets [95% t-interval, n = targets]."),
                ("table", ["attack", *keys], rows)]
    return out
