"""The report's verdicts, in order, and the per-layer headline, read from shapley.json (mia_tasks.uncertainty).

1. Is there leakage at all? (the all-layer attack's AUC interval above 0.5; the loss baseline beside it)
2. If not: "no measurable leakage" and no per-layer claim. Else: which players' Shapley intervals exclude
   zero, and which are flagged after Holm's correction.
3. Which pairwise differences of Shapley values are significant after Holm.
4. The seed study's claim ("deeper and larger layers leak more"): one joint test of log-parameters and depth.
"""

from __future__ import annotations

ALPHA = 0.05
CLAIM = "deeper and larger layers leak more"


def fmt(m: dict | None, digits: int = 3) -> str:
    """``value [lo, hi]`` of an entry; its reason where it has no value (e.g. TPR at an FPR not measurable)."""
    if not m:
        return "–"
    if m.get("value") is None:
        return m.get("reason") or "–"
    if not m.get("ci95"):
        return f"{m['value']:.{digits}f}"
    return f"{m['value']:.{digits}f} [{m['ci95'][0]:.{digits}f}, {m['ci95'][1]:.{digits}f}]"


def conclusion(block: dict | None) -> dict[str, str]:
    """One plain sentence on the seed study's claim from the joint params/depth test of one target's Shapley values."""
    if not block:
        return {"claim": CLAIM, "verdict": "untested", "text": f"No Shapley values in OUT: '{CLAIM}' is untested."}
    if not block["leakage_detected"]:
        return {"claim": CLAIM, "verdict": "untested",
                "text": f"No measurable leakage, so no per-layer claim: '{CLAIM}' is not tested."}
    t = block["verdicts"].get("params_depth") or {"tested": False, "reason": "no parameter counts or depths"}
    if not t["tested"]:
        return {"claim": CLAIM, "verdict": "untested", "text": f"'{CLAIM}' is {t['reason']}."}
    both = f"R² = {t['r_squared']:.3f}, permutation p = {t['p_value']:.3g} ({t['permutations']}); " \
           f"standardised coefficients: log10(params) {t['std_coef_log10_params']:+.2f}, depth {t['std_coef_depth']:+.2f}"
    if t["p_value"] >= ALPHA:
        return {"claim": CLAIM, "verdict": "not supported",
                "text": f"This run does not support '{CLAIM}': Shapley values are not explained by parameters and depth ({both})."}
    if t["std_coef_log10_params"] > 0 and t["std_coef_depth"] > 0:
        return {"claim": CLAIM, "verdict": "supported", "text": f"This run supports '{CLAIM}' ({both})."}
    if t["std_coef_log10_params"] < 0 and t["std_coef_depth"] < 0:
        return {"claim": CLAIM, "verdict": "contradicted", "text": f"This run contradicts '{CLAIM}' ({both})."}
    return {"claim": CLAIM, "verdict": "not supported",
            "text": f"Parameters and depth explain the Shapley values, but not both with a positive sign ({both})."}


def verdict_list(block: dict | None) -> list[dict[str, str]]:
    """The verdicts in order, each {"step", "statement"}, for one target's block of shapley.json."""
    if not block:
        return []
    v = block["verdicts"]
    base = block.get("baseline", {}).get("attack", "loss-threshold")
    out = [{"step": "leakage", "statement": f"{v['statement']} (all-layer attack AUC {fmt(v['attack_auc'])}; {base} "
                                            f"baseline AUC {fmt(v['baseline_auc'])}, "
                                            f"{'above' if v['baseline_above_chance'] else 'not above'} chance)."}]
    if not block["leakage_detected"]:
        out.append({"step": "players", "statement": "No player is flagged: without measurable leakage no per-layer claim is made."})
        return out
    excl = [p["player"] for p in block["players"] if p["excludes_zero"]]
    flagged = v["players_flagged"]
    out.append({"step": "players", "statement": (
        f"Shapley intervals excluding zero: {', '.join(excl) or 'none'}; flagged after Holm's correction over "
        f"{len(block['players'])} players (alpha {v['alpha']}): {', '.join(flagged) or 'none'}.")})
    sig = [f"{d['a']} − {d['b']} = {fmt(d['difference'], 4)}" for d in block["differences"] if d["significant"]]
    out.append({"step": "differences", "statement": (
        f"Pairwise differences significant after Holm's correction over {len(block['differences'])} pairs: "
        + ("; ".join(sig) if sig else "none") + ".")})
    pd = v.get("params_depth")
    if pd:
        text = (f"{pd['test']}: R² = {pd['r_squared']:.3f}, p = {pd['p_value']:.3g} ({pd['permutations']}); {pd['correction']}."
                if pd["tested"] else f"Parameters and depth: {pd['reason']}.")
        out.append({"step": "params_depth", "statement": text})
    return out


def metric(result: dict | None, key: str = "accuracy") -> dict | None:
    """``result``'s metrics[key] ({value, ci95, n, resampling}), or None where the result or the metric is absent."""
    return (result or {}).get("metrics", {}).get(key)


def headline(block: dict | None, single: dict | None, layers: list[dict]) -> list[dict]:
    """Per player in depth order: depth, parameters, Shapley value and interval, whether it excludes zero and is
    flagged, its value alone in the sweep, and the single-layer experiment's accuracy where it is one layer."""
    single_by_layer = {r["layers"][0]: metric(r.get("result")) for r in (single or {}).get("rows", []) if len(r["layers"]) == 1}
    rows = []
    if block:
        for p in sorted(block["players"], key=lambda p: p["depth"]):
            acc = single_by_layer.get(p["layers"][0]) if len(p["layers"]) == 1 else None
            rows.append({"player": p["player"], "depth": p["depth"], "params": p["params"], "shapley": p["shapley"],
                         "excludes_zero": p["excludes_zero"], "flagged": p["flagged"], "alone": p.get("alone"), "single": acc})
    else:
        for l in layers:
            rows.append({"player": l["name"], "depth": l["depth"], "params": l["params"], "shapley": None,
                         "excludes_zero": None, "flagged": None, "alone": None, "single": single_by_layer.get(l["name"])})
    return rows
