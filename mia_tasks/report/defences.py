"""The report's defence comparison: the audited target next to each defended one found in OUT/defences/.

Per defence: test accuracy (exact binomial interval over the test split), ε spent (DP-SGD) or "empirical",
the overall leakage of the strongest attack available (the original's highest-AUC attack, the same one for
every row: AUC and TPR at low FPR with their intervals), each player's Shapley value with its interval
next to the original's, and whether protecting some layers moved the leakage to the others.
"""

from __future__ import annotations

import io
from typing import Any

from ..rundir import default_attack_stem

LOW_FPR = ("tpr@1%", "tpr@0.1%")


def metric(result: dict | None, key: str) -> dict | None:
    """An attack result's metrics[key], or None where it is absent."""
    return (result or {}).get("metrics", {}).get(key)


def fmt(m: dict | None, digits: int = 3) -> str:
    """``value [lo, hi]`` of an entry (``mean ± std`` of one made before intervals); its reason where it has no value."""
    if not m:
        return "–"
    if "value" not in m and m.get("mean") is not None:
        return f"{m['mean']:.{digits}f} ± {m.get('std') or 0:.{digits}f}"
    if m.get("value") is None:
        return m.get("reason") or "–"
    if not m.get("ci95"):
        return f"{m['value']:.{digits}f}"
    return f"{m['value']:.{digits}f} [{m['ci95'][0]:.{digits}f}, {m['ci95'][1]:.{digits}f}]"


def accuracy_entry(accuracy: float | None, n: int | None) -> dict | None:
    """A test accuracy as an entry with its exact (Clopper-Pearson) 95% interval over the ``n`` test images."""
    if accuracy is None or not n:
        return None
    from scipy.stats import binomtest

    k = int(round(accuracy * n))
    ci = binomtest(k, n).proportion_ci(0.95, method="exact")
    return {"value": float(accuracy), "ci95": [float(ci.low), float(ci.high)], "n": int(n),
            "resampling": {"unit": "test image", "interval": "exact binomial (Clopper-Pearson)"}}


def _strongest(attacks: dict[str, dict]) -> str | None:
    """The attack with the highest AUC among those of the default selection (file stem = attack name, calibrated or
    not: every layer for the logistic attack; the loss threshold), the overall leakage."""
    ranked = [(m.get("value", m.get("mean")), name) for name, a in attacks.items()
              if name == default_attack_stem(a.get("attack", ""), (a.get("settings") or {}).get("calibration", "none"))
              and (m := metric(a, "auc")) and m.get("value", m.get("mean")) is not None]
    return max(ranked)[1] if ranked else None


def _players(report: dict) -> dict[str, dict]:
    block = (report.get("targets") or (report.get("shapley") or {}).get("targets") or [{}])[0]
    return {p["player"]: p for p in block.get("players", [])}


def _row(name: str, report: dict, attack: str | None) -> dict[str, Any]:
    t = report.get("target") or {}
    d = t.get("defence") or {}
    a = (report.get("attacks") or {}).get(attack) if attack else None
    return {"name": name, "defence": (t.get("settings") or {}).get("defence", "none"),
            "epsilon": d.get("epsilon"), "delta": d.get("delta"), "noise_multiplier": d.get("noise_multiplier"),
            "layers": d.get("layers"), "train_accuracy": t.get("train_accuracy"),
            "test_accuracy": accuracy_entry(t.get("test_accuracy"), t.get("test_size")),
            "attack": attack, "auc": metric(a, "auc"), "attack_accuracy": metric(a, "accuracy"),
            **{k: metric(a, k) for k in LOW_FPR}, "leakage_detected": report.get("leakage_detected"),
            "shapley": {p: e.get("shapley") for p, e in _players(report).items()}}


def _moved(original: dict, row: dict, players: dict[str, dict]) -> str | None:
    """For a defence of some layers: whether the unprotected players' Shapley intervals rose clear of the original's."""
    if not row["layers"]:
        return None
    protected = {p for p, e in players.items() if set(e.get("layers") or [p]) <= set(row["layers"])}
    rose, fell = [], []
    for p in players:
        new, old = row["shapley"].get(p), original["shapley"].get(p)
        if not (new and old and new.get("ci95") and old.get("ci95")):
            continue
        if new["ci95"][0] > old["ci95"][1]:
            rose.append(p)
        elif new["ci95"][1] < old["ci95"][0]:
            fell.append(p)
    others = [p for p in players if p not in protected]
    moved_to = [p for p in rose if p not in protected]
    text = (f"Protecting {', '.join(sorted(protected)) or 'no whole player'} "
            + (f"moved leakage to {', '.join(moved_to)}: their Shapley intervals now lie above the original's. "
               if moved_to else
               f"did not measurably move leakage to the other players ({', '.join(others)}): none of their Shapley "
               f"intervals lies above the original's. ")
            + (f"Clearly lower than the original: {', '.join(fell)}. " if fell else "")
            + "(Two audits of two targets: intervals compared for non-overlap, a conservative test.)")
    return text


def compare_defences(report: dict, defences: dict[str, dict]) -> dict[str, Any]:
    """report.json's "defences" section from the main report and each defence's report.json (keyed by its folder name)."""
    attack = _strongest(report.get("attacks") or {})
    original = _row("original", report, attack)
    players = _players(report)
    rows = [original]
    for name, sub in sorted(defences.items()):
        row = _row(name, sub, attack)
        row["moved"] = _moved(original, row, players)
        rows.append(row)
    return {"attack": attack, "players": list(players), "rows": rows}


def _eps(row: dict) -> str:
    if row["defence"] == "none":
        return "–"
    if row["epsilon"] is None:
        return "none (empirical)"
    return f"{row['epsilon']:.2f} (δ={row['delta']:.2g})"


def defence_blocks(report: dict) -> list[tuple]:
    """Report blocks (render.py's kinds) for the comparison; none when OUT holds no defence."""
    sec = report.get("defences")
    if not sec or len(sec["rows"]) < 2:
        return []
    b: list[tuple] = [("h", 2, "Defences, re-audited")]
    b.append(("p", f"Each defended target was trained on the same members with the same recipe and audited with the same "
                   f"config (OUT/defences/<name>/). Leakage: the `{sec['attack']}` attack (the original's highest AUC), "
                   "value [95% interval]. DP-SGD's ε is the one Opacus's accountant says was spent; layer-dp and the "
                   "regulariser make no ε claim."))
    # TPR at a low FPR only where some row could measure it; otherwise its reason, once
    shown = [k for k in LOW_FPR if any((r[k] or {}).get("value") is not None for r in sec["rows"])]
    b.append(("table", ["target", "ε spent", "train acc", "test acc", "AUC", *shown, "leakage detected"],
              [[r["name"], _eps(r), "–" if r["train_accuracy"] is None else f"{r['train_accuracy']:.3f}", fmt(r["test_accuracy"]),
                fmt(r["auc"]), *[fmt(r[k]) for k in shown], {True: "yes", False: "no"}.get(r["leakage_detected"], "–")]
               for r in sec["rows"]]))
    hidden = [f"TPR at {k[4:]} FPR {fmt(sec['rows'][0][k])}" for k in LOW_FPR if k not in shown and sec["rows"][0][k]]
    if hidden:
        b.append(("p", "; ".join(hidden) + " (for every target)."))
    b.append(("p", "Shapley value per player (attack accuracy), value [95% interval]. A target without measurable "
                   "leakage supports no per-layer claim; its values are shown for completeness (marked *)."))
    b.append(("table", ["player", *[r["name"] + ("" if r["leakage_detected"] is not False else " *") for r in sec["rows"]]],
              [[p, *[fmt(r["shapley"].get(p), 4) for r in sec["rows"]]] for p in sec["players"]]))
    moved = [f"{r['name']}: {r['moved']}" for r in sec["rows"][1:] if r.get("moved")]
    if moved:
        b.append(("ul", moved))
    return b


def defence_plot(report: dict) -> bytes | None:
    """Utility versus leakage: test accuracy against the attack's AUC, one point per target, ε in the label."""
    sec = report.get("defences")
    if not sec or len(sec["rows"]) < 2:
        return None
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for r in sec["rows"]:
        acc, auc = r["test_accuracy"], r["auc"]
        if not acc or not auc or auc.get("value", auc.get("mean")) is None:
            continue
        x, y = auc.get("value", auc.get("mean")), acc["value"]
        xerr = [[x - auc["ci95"][0]], [auc["ci95"][1] - x]] if auc.get("ci95") else None
        yerr = [[y - acc["ci95"][0]], [acc["ci95"][1] - y]]
        label = r["name"] + (f" (ε={r['epsilon']:.2g})" if r["epsilon"] is not None else "")
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="o", capsize=3, label=label)
    ax.axvline(0.5, color="grey", lw=0.6, ls="--")
    ax.set_xlabel(f"leakage: AUC of the {sec['attack']} attack")
    ax.set_ylabel("utility: test accuracy")
    ax.set_title("utility versus leakage (95% intervals)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()
