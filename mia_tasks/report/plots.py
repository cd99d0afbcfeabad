"""The report's plots as PNG bytes, drawn from the report dict alone (matplotlib's Agg backend: no display)."""

from __future__ import annotations

import io
import textwrap

import numpy as np

from ..rundir import PLOTS
from .stats import fmt, metric


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _ci(m: dict | None) -> tuple[float | None, float | None, float | None]:
    """(value, lower, upper) of an entry; Nones where it has no value."""
    if not m or m.get("value") is None:
        return None, None, None
    lo, hi = m["ci95"] if m.get("ci95") else (m["value"], m["value"])
    return m["value"], lo, hi


def _count(n: int) -> str:
    """A parameter count in at most four characters: 320, 18.5k, 2.4M."""
    return f"{n}" if n < 1000 else f"{n / 1e3:.3g}k" if n < 1e6 else f"{n / 1e6:.3g}M"


def _bars(ax, labels: list[str], series: dict[str, list[tuple]], ylabel: str, chance: float | None = None) -> None:
    """Grouped bars with asymmetric 95%-interval error bars; ``series`` maps a name to (value, lo, hi) per label."""
    width = 0.8 / max(1, len(series))
    x = np.arange(len(labels))
    for i, (name, vals) in enumerate(series.items()):
        means = np.array([np.nan if v is None else v for v, _, _ in vals])
        err = np.array([[0.0 if v is None else v - lo, 0.0 if v is None else hi - v] for v, lo, hi in vals]).T
        ax.bar(x + (i - (len(series) - 1) / 2) * width, means, width, yerr=err, capsize=3, label=name)
    lows = [lo for vals in series.values() for v, lo, _ in vals if v is not None]
    highs = [hi for vals in series.values() for v, _, hi in vals if v is not None]
    if chance is not None:
        ax.axhline(chance, color="grey", lw=0.8, ls="--", label="chance")
        ax.set_ylim(bottom=min([chance - 0.05, *[v - 0.03 for v in lows]]))  # accuracies: start near chance
    longest = max((len(line) for label in labels for line in label.split("\n")), default=0)
    per_tick = ax.figure.get_size_inches()[0] * 0.75 / max(1, len(labels))  # inches of axis per label
    crowded = longest > 0.8 * 15 * per_tick  # about 15 characters an inch at 8 pt, a fifth kept free between labels
    ax.set_xticks(x, labels, rotation=30 if crowded else 0, ha="right" if crowded else "center", fontsize=8)
    ax.set_ylabel(ylabel)
    if len(series) > 1 or chance is not None:
        ax.set_ylim(top=max(highs, default=1.0) + 0.04 * max(1.0, len(series) / 2))  # room for the legend
        ax.legend(fontsize=8, loc="upper center", ncol=len(series) + 1, frameon=False)


def _roc_plot(curves: dict[str, tuple[dict, dict | None]], non_members: int, measurable: float, notes: list[str],
              title: str) -> bytes:
    """One log-log ROC with a curve per attack ({name: (roc points, AUC entry)}), the measurable region shaded."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    # below the smallest non-zero FPR (1 / non-members) a ROC curve says nothing; from 10 / non-members up
    # (ten false positives) a TPR is measurable
    lo = 1.0 / max(1, non_members)
    ax.axvspan(measurable, 1.05, color="tab:green", alpha=0.08, lw=0)
    ax.axvline(measurable, color="tab:green", lw=0.8, ls=":", label=f"measurable: FPR ≥ {measurable:.2g}")
    for (name, (roc, auc)), color in zip(curves.items(), [f"C{i % 10}" for i in range(len(curves))]):
        f, t = np.asarray(roc["fpr"], float), np.asarray(roc["tpr"], float)
        ok = (f > 0) & (t > 0)
        label = f"{name} (AUC {fmt(auc)})" if auc and auc.get("value") is not None else name
        ax.step(f[ok], t[ok], where="post", color=color, lw=1.6, label=label)
    ax.plot([lo, 1], [lo, 1], color="grey", ls="--", lw=0.8, label="chance")
    if notes:
        # under the axes: inside them the notes would lie on the curves
        ax.text(0.0, -0.16, "\n".join(textwrap.fill(n, 80) for n in notes), transform=ax.transAxes, va="top",
                fontsize=7, color="tab:red")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo / 1.5, 1.05)
    ax.set_ylim(lo / 1.5, 1.05)
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    return _png(fig)


def make_plots(report: dict) -> dict[str, bytes]:
    """PNG bytes keyed by the paths in PLOTS, for what the report holds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots: dict[str, bytes] = {}
    first = (report.get("targets") or [None])[0]
    if first and first.get("players"):
        ps = sorted(first["players"], key=lambda p: p["depth"])
        fig, ax = plt.subplots(figsize=(max(5.5, 1.2 * len(ps) + 1.5), 3.6))
        # parameter counts under each bar's name: labels in the plot area would overlap bars and error bars
        _bars(ax, [f"{p['player']}\n{_count(p['params'])} params" for p in ps], {"Shapley": [_ci(p["shapley"]) for p in ps]},
              "Shapley value (attack accuracy)")
        ax.axhline(0, color="black", lw=0.6)
        n = first["v_all"]["n"]
        what = "layer" if all(len(p["layers"]) == 1 for p in ps) else "player"
        if first["leakage_detected"]:
            flagged = [p["player"] for p in ps if p["flagged"]]
            title = (f"Shapley value per {what} in depth order (95% bootstrap intervals, n={n}); "
                     f"flagged after Holm: {', '.join(flagged) or 'none'}")
        else:
            title = f"No measurable leakage: no per-{what} claim (Shapley values with 95% intervals, n={n})"
            ax.text(0.5, 0.92, "no measurable leakage — no per-layer claim", transform=ax.transAxes, ha="center",
                    fontsize=9, color="tab:red")
        ax.set_title(textwrap.fill(title, 70), fontsize=9)
        plots[PLOTS["shapley"]] = _png(fig)
    exps = report.get("experiments", {})
    singles = {k.split("-")[-1]: v for k, v in exps.items() if k.startswith("single-layer-")}
    if singles:
        labels = [r["label"] for r in next(iter(singles.values()))["rows"]]
        fig, ax = plt.subplots(figsize=(max(5, 0.7 * len(labels) + 2), 3.4))
        _bars(ax, labels, {a: [_ci(metric(r.get("result"))) for r in rec["rows"]] for a, rec in singles.items()},
              "attack accuracy", chance=0.5)
        ax.set_title("Each layer alone (cross-fitted; 95% bootstrap intervals)", fontsize=9)
        plots[PLOTS["single_layer"]] = _png(fig)
    groups = [g for g in ("groups-grad", "groups-out") if any(k.startswith(g + "-") for k in exps)]
    if groups:
        fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 3.6), squeeze=False)
        for ax, g in zip(axes[0], groups):
            recs = {k.split("-")[-1]: v for k, v in exps.items() if k.startswith(g + "-")}
            labels = [r["label"] for r in next(iter(recs.values()))["rows"]]
            _bars(ax, labels, {a: [_ci(metric(r.get("result"))) for r in rec["rows"]] for a, rec in recs.items()},
                  "attack accuracy", chance=0.5)
            ax.set_title(g, fontsize=9)
        plots[PLOTS["groups"]] = _png(fig)
    rocs = {name: a for name, a in report.get("attacks", {}).items() if a.get("roc")}  # every attack OUT holds: one log-log ROC
    if rocs:
        notes = {f"TPR@{k[4:]}: {m['reason']}" for a in rocs.values() for k, m in a["metrics"].items()
                 if k.startswith("tpr@") and not m.get("measurable", True)}
        plots[PLOTS["roc"]] = _roc_plot({name: (a["roc"], metric(a, "auc")) for name, a in rocs.items()},
                                        min(a["non_members"] for a in rocs.values()),
                                        max(a["roc_measurable_from"] for a in rocs.values()), sorted(notes),
                                        "ROC, out-of-fold scores (log-log; shaded: measurable)")
    runs = {key: a for key, a in report.get("attacks", {}).items() if (a.get("targets") or {}).get("pooled", {}).get("roc")}
    pooled = {key: a["targets"]["pooled"] for key, a in runs.items()}
    if pooled:  # attacks run on several targets: the pooled ROC over every (target, sample), one curve per attack
        curves = {}
        for key, a in runs.items():  # each attack under its report name, then the baselines not run on their own
            name = a.get("attack", key)
            curves[key] = (pooled[key]["roc"][name], pooled[key]["attacks"][name]["auc"])
        for key, a in runs.items():
            for attack, m in pooled[key]["attacks"].items():
                if attack != a.get("attack", key) and attack not in curves:
                    curves[attack] = (pooled[key]["roc"][attack], m["auc"])
        notes = {f"TPR@{k[4:]}: {m['reason']}" for p in pooled.values() for m_all in p["attacks"].values()
                 for k, m in m_all.items() if k.startswith("tpr@") and not m.get("measurable", True)}
        first = next(iter(pooled.values()))
        plots[PLOTS["roc_pooled"]] = _roc_plot(curves, min(p["non_members"] for p in pooled.values()),
                                               max(p["roc_measurable_from"] for p in pooled.values()), sorted(notes),
                                               f"ROC pooled over {first['targets']} targets (log-log; shaded: measurable)")
    hist = report.get("score_histogram")
    if hist:
        fig, ax = plt.subplots(figsize=(6, 3.4))
        e = np.asarray(hist["edges"])
        for key, colour in (("non_members", "tab:blue"), ("members", "tab:red")):
            ax.stairs(hist[key], e, fill=True, alpha=0.45, color=colour, label=key.replace("_", "-"))
        ax.set_xlabel(f"{hist['attack']} out-of-fold score (>= 0 predicts a member)")
        ax.set_ylabel("audited samples")
        ax.legend()
        ax.set_title(f"{hist['attack']} scores by membership")
        plots[PLOTS["scores"]] = _png(fig)
    from .defences import defence_plot  # the defences module renders from the report dict too

    png = defence_plot(report)
    if png is not None:
        plots[PLOTS["defences"]] = png
    return plots
