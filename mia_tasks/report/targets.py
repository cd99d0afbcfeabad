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
    """One table for the attacks run on several targets (``layerleak attack`` with split.targets > 1): each attack's
    pooled AUC and TPR at low FPR with the between-target means, its baseline's, and their paired differences."""
    runs = {key: a for key, a in attacks.items() if a.get("targets")}
    if not runs:
        return []
    first = next(iter(runs.values()))["targets"]["pooled"]
    keys = list(next(iter(first["attacks"].values())))
    mean_keys = [k for k in ("auc", "tpr@1%") if k in keys]
    rows, labels, diffs = [], set(), []
    for key, a in runs.items():  # each attack's own row, under its report name, with its mean over targets
        summary, name = a["targets"], a.get("attack", key)
        between = summary.get("between_targets") or {}
        rows.append([key, *[fmt(summary["pooled"]["attacks"][name][k], 4) for k in keys],
                     *[fmt(between.get(k), 4) for k in mean_keys]])
        labels.add(key)
    for key, a in runs.items():  # baselines not run on their own, and the paired differences
        p, name = a["targets"]["pooled"], a.get("attack", key)
        for attack, m in p["attacks"].items():
            if attack != name and attack not in labels:
                rows.append([attack, *[fmt(m[k], 4) for k in keys], *["–"] * len(mean_keys)])
                labels.add(attack)
        for label, m in p["differences"].items():
            diffs.append([key + label[len(name):] if label.startswith(name) else label,
                          *[fmt(m[k], 4) for k in keys], *["–"] * len(mean_keys)])
    header = ["attack", *[f"pooled {k}" for k in keys], *[f"mean of targets: {k}" for k in mean_keys]]
    return [("h", 3, f"Attacks on {first['targets']} targets"),
            ("p", f"Pooled over {first['targets']} targets × {first['samples']} audited samples ({first['members']} member "
                  f"and {first['non_members']} non-member scores; each target has its own membership and its own "
                  f"references, other models of the population): value [95% percentile interval from "
                  f"{first['resampling']['replicates']:,} replicates of a two-way bootstrap: targets and audited samples "
                  f"redrawn with replacement, the threshold re-read in each]; a difference is paired in the same "
                  f"replicates. Mean of targets: mean over targets [95% t-interval, n = targets]."),
            ("table", header, rows + diffs)]
