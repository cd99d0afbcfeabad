"""The report's plots as PNG bytes, drawn from the report dict alone (matplotlib's Agg backend: no display)."""

from __future__ import annotations

import io

import numpy as np

from ..rundir import PLOTS
from .stats import metric


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _bars(ax, labels: list[str], series: dict[str, list[tuple[float | None, float | None]]], ylabel: str, chance: float | None = None) -> None:
    width = 0.8 / max(1, len(series))
    x = np.arange(len(labels))
    for i, (name, vals) in enumerate(series.items()):
        means = [np.nan if m is None else m for m, _ in vals]
        stds = [0.0 if s is None else s for _, s in vals]
        ax.bar(x + (i - (len(series) - 1) / 2) * width, means, width, yerr=stds, capsize=3, label=name)
    if chance is not None:
        ax.axhline(chance, color="grey", lw=0.8, ls="--", label="chance")
        lows = [m - (s or 0.0) for vals in series.values() for m, s in vals if m is not None]
        ax.set_ylim(bottom=min([chance - 0.05, *[v - 0.03 for v in lows]]))  # accuracies: start near chance
    ax.set_xticks(x, labels, rotation=30 if max(map(len, labels), default=0) > 6 else 0, ha="right" if max(map(len, labels), default=0) > 6 else "center")
    ax.set_ylabel(ylabel)
    if len(series) > 1 or chance is not None:
        highs = [m + (s or 0.0) for vals in series.values() for m, s in vals if m is not None]
        ax.set_ylim(top=max(highs, default=1.0) + 0.04 * max(1.0, len(series) / 2))  # room for the legend
        ax.legend(fontsize=8, loc="upper center", ncol=len(series) + 1, frameon=False)


def make_plots(report: dict) -> dict[str, bytes]:
    """PNG bytes keyed by the paths in PLOTS, for what the report holds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots: dict[str, bytes] = {}
    sh = report.get("shapley")
    if sh and sh.get("players"):
        ps = sorted(sh["players"], key=lambda p: p["depth"])
        fig, ax = plt.subplots(figsize=(max(5, 0.7 * len(ps) + 2), 3.6))
        _bars(ax, [p["player"] for p in ps], {"Shapley": [(p["shapley"], p["std"]) for p in ps]},
              "Shapley value (attack accuracy)")
        ax.axhline(0, color="black", lw=0.6)
        ax2 = ax.twinx()
        ax2.plot(np.arange(len(ps)), [p["params"] for p in ps], "o-", color="tab:red", lw=1, ms=4)
        ax2.set_yscale("log")
        ax2.set_ylabel("parameters (log scale)", color="tab:red")
        for i, p in enumerate(ps):
            ax2.annotate(f"{p['params']:,}", (i, p["params"]), textcoords="offset points", xytext=(0, 5), ha="center",
                         fontsize=7, color="tab:red")
        ax.set_title(f"Shapley value per {'layer' if all(len(p['layers']) == 1 for p in ps) else 'player'} in depth order "
                     f"(mean ± std over {sh['repeats']} repeats)", fontsize=9)
        plots[PLOTS["shapley"]] = _png(fig)
    exps = report.get("experiments", {})
    singles = {k.split("-")[-1]: v for k, v in exps.items() if k.startswith("single-layer-")}
    if singles:
        labels = [r["label"] for r in next(iter(singles.values()))["rows"]]
        fig, ax = plt.subplots(figsize=(max(5, 0.7 * len(labels) + 2), 3.4))
        _bars(ax, labels, {a: [(m["mean"], m["std"]) if (m := metric(r.get("result"))) else (None, None) for r in rec["rows"]]
                          for a, rec in singles.items()}, "attack accuracy", chance=0.5)
        ax.set_title("Each layer alone (mean ± std over repeats)", fontsize=9)
        plots[PLOTS["single_layer"]] = _png(fig)
    groups = [g for g in ("groups-grad", "groups-out") if any(k.startswith(g + "-") for k in exps)]
    if groups:
        fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 3.6), squeeze=False)
        for ax, g in zip(axes[0], groups):
            recs = {k.split("-")[-1]: v for k, v in exps.items() if k.startswith(g + "-")}
            labels = [r["label"] for r in next(iter(recs.values()))["rows"]]
            _bars(ax, labels, {a: [(m["mean"], m["std"]) if (m := metric(r.get("result"))) else (None, None) for r in rec["rows"]]
                              for a, rec in recs.items()}, "attack accuracy", chance=0.5)
            ax.set_title(g, fontsize=9)
        plots[PLOTS["groups"]] = _png(fig)
    rocs = {name: a for name, a in report.get("attacks", {}).items() if name in ("logistic", "loss-threshold") and a.get("roc")}
    if rocs:
        fig, ax = plt.subplots(figsize=(4.6, 4.2))
        # below the smallest non-zero FPR (1 / non-members evaluated) a ROC curve says nothing
        lo = min(min((f for f in r["fpr"] if f and f > 0), default=1.0) for a in rocs.values() for r in a["roc"])
        grid = np.geomspace(lo, 1, 200)
        for (name, a), color in zip(rocs.items(), ("tab:blue", "tab:orange")):
            curves = []
            for r in a["roc"]:
                f, t = np.asarray(r["fpr"], float), np.asarray(r["tpr"], float)
                ok = (f > 0) & (t > 0)
                ax.step(f[ok], t[ok], where="post", color=color, lw=0.6, alpha=0.35)
                # the best TPR reachable at FPR <= x (the ROC as a step function), averaged over repeats
                curves.append(np.maximum.accumulate(t)[np.searchsorted(f, grid, side="right") - 1])
            mean = np.mean(curves, axis=0)
            auc = metric(a, "auc")
            label = f"{name} (AUC {auc['mean']:.3f})" if auc and auc["mean"] is not None else name
            ax.step(grid[mean > 0], mean[mean > 0], where="post", color=color, lw=1.8, label=label)
        ax.plot(grid, grid, color="grey", ls="--", lw=0.8, label="chance")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(lo / 1.5, 1.05)
        ax.set_ylim(lo / 1.5, 1.05)
        ax.set_xlabel("false-positive rate")
        ax.set_ylabel("true-positive rate")
        ax.set_title("ROC (log-log; thin: each repeat, bold: mean)", fontsize=9)
        ax.legend(fontsize=8, loc="lower right")
        plots[PLOTS["roc"]] = _png(fig)
    from .defences import defence_plot  # the defences module renders from the report dict too

    png = defence_plot(report)
    if png is not None:
        plots[PLOTS["defences"]] = png
    return plots
