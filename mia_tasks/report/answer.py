"""The report's answer in plain words, on top: is there leakage, which layer leaks most (or that the audit
cannot rank them), and what the gradients add beyond the black-box baseline attack, each with its interval."""

from __future__ import annotations

from .stats import fmt


def _ci(e: dict | None, digits: int = 3) -> str:
    if not e or e.get("value") is None:
        return "n/a"
    lo, hi = e["ci95"]
    return f"{e['value']:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"


def ranking(block: dict) -> str:
    """Which player leaks most, as far as the Holm-corrected pairwise differences allow."""
    players = sorted(block["players"], key=lambda p: -p["shapley"]["value"])
    top = players[0]["player"]
    beats: dict[str, set[str]] = {}
    for d in block["differences"]:
        if d["significant"]:
            hi, lo = (d["a"], d["b"]) if d["difference"]["value"] > 0 else (d["b"], d["a"])
            beats.setdefault(hi, set()).add(lo)
    if not any(d["significant"] for d in block["differences"]):
        return (f"The audit cannot rank the layers: no pairwise difference of Shapley values is significant after Holm's "
                f"correction over {len(block['differences'])} pairs (largest point value: {top}, "
                f"{fmt(players[0]['shapley'], 4)}).")
    others = [p["player"] for p in players[1:]]
    below = sorted(beats.get(top, set()), key=others.index)
    if len(below) == len(others):
        return f"{top} leaks most: its Shapley value {fmt(players[0]['shapley'], 4)} is significantly above every other player's (Holm)."
    tied = [o for o in others if o not in below]
    return (f"{top} has the largest Shapley value ({fmt(players[0]['shapley'], 4)}); it is significantly above "
            f"{', '.join(below) or 'no other player'} but not distinguishable from {', '.join(tied)} (Holm).")


def plain_answer(block: dict | None, membership_note: str | None = None) -> list[str]:
    """The answer's sentences for one target's block of shapley.json (target 0's in the report)."""
    if membership_note:
        return [membership_note]
    if not block:
        return ["No Shapley values in OUT yet: run 'layerleak sweep' (or 'layerleak run') for the answer."]
    v, n = block["verdicts"], block["all_layers"]["auc"]["n"]
    base = block.get("baseline", {}).get("attack", "loss-threshold")
    if not block["leakage_detected"]:
        return [f"No measurable leakage: the all-layer attack's AUC {fmt(v['attack_auc'])} (n = {n}) does not exceed chance, "
                "so no layer is ranked or flagged. This is a result, not a missing one: at this n, a leak smaller than the "
                "interval's half-width would go unseen."]
    out = [f"Leakage detected: the all-layer attack's AUC {fmt(v['attack_auc'])} (n = {n}, 95% bootstrap interval over "
           "audited samples) lies above chance.", ranking(block)]
    beyond = block.get("beyond_baseline")
    if beyond:
        acc, auc = beyond["accuracy"], beyond["auc"]
        adds = acc["ci95"][0] > 0 or auc["ci95"][0] > 0
        out.append(f"Beyond the {base} attack, the gradients {'add' if adds else 'add no measurable'} leakage: accuracy "
                   f"{_ci(acc)}, AUC {_ci(auc)} (all-layer attack minus {base}, paired bootstrap).")
    return out
