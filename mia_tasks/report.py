"""The audit report: report.json (the source of truth), rendered to Markdown, self-contained HTML and plots.

``build_report`` assembles everything OUT holds for this config (target accuracies, per-layer Shapley
values, the seed study's experiments, attacks with ROC points) and tests the seed study's conclusion
("deeper and larger layers leak more") with Spearman rank correlations across layers instead of
restating it. ``render_markdown``/``render_html`` and ``make_plots`` read only the report dict, so a
report.json can be re-rendered anywhere. Plots use matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import base64
import html
import io
import itertools
import math
import platform
import re
from importlib import metadata
from typing import Any, Sequence

import numpy as np

ALPHA = 0.05
EXACT_MAX_N = 8  # exact permutation p-values up to 8! = 40,320 orderings
CLAIM = "deeper and larger layers leak more"
HEADLINE_METRICS = ("accuracy", "auc", "tpr@1%", "tpr@0.1%")
NASR_NOTE = (" Nasr attack: its attack model reads the raw per-sample weight gradients and output activations of "
             "these layers, plus the label (not the loss), instead of their seven statistics.")
PLOTS = {"shapley": "plots/shapley.png", "single_layer": "plots/single_layer.png", "groups": "plots/groups.png",
         "roc": "plots/roc.png"}


# --- numbers ---------------------------------------------------------------------------------

def versions() -> dict[str, str | None]:
    """Versions of Python and the packages whose behaviour the numbers depend on (read without importing them)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for key, dist in (("torch", "torch"), ("numpy", "numpy"), ("scipy", "scipy"), ("sklearn", "scikit-learn"),
                      ("ray", "ray"), ("pyarrow", "pyarrow"), ("layerleak", "layerleak")):
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[key] = None
    return out


def spearman(x: Sequence[float], y: Sequence[float]) -> dict[str, Any]:
    """Spearman's rho (scipy.stats.spearmanr) with a two-sided p-value, n and the smallest p that n allows.

    Up to EXACT_MAX_N points the p-value is exact: the share of all n! re-pairings of the ranks whose
    |rho| reaches the observed one (scipy's t approximation gives p = 0 for rho = 1 at any n, which
    overstates 4 points). Larger n uses scipy's p-value.
    """
    from scipy.stats import rankdata, spearmanr

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n = int(len(x))
    out: dict[str, Any] = {"rho": None, "p": None, "n": n, "p_method": None, "min_p": None}
    if n < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return out
    rho = float(spearmanr(x, y).statistic)
    out["rho"] = rho
    if n <= EXACT_MAX_N:
        rx, ry = rankdata(x) - (n + 1) / 2, rankdata(y) - (n + 1) / 2
        perms = np.array(list(itertools.permutations(range(n))))
        rhos = (ry[perms] @ rx) / math.sqrt((rx @ rx) * (ry @ ry))
        tol = 1e-9
        out["p"] = float(np.mean(np.abs(rhos) >= abs(rho) - tol))
        out["min_p"] = float(np.mean(np.abs(rhos) >= np.abs(rhos).max() - tol))
        out["p_method"] = f"exact permutation ({len(perms):,} orderings)"
    else:
        out["p"] = float(spearmanr(x, y).pvalue)
        out["min_p"] = 0.0
        out["p_method"] = "t approximation (scipy.stats.spearmanr)"
    return out


def verdict(test: dict[str, Any]) -> str:
    """'supported' only when rho > 0 and p < ALPHA; names why otherwise."""
    if test["rho"] is None:
        return "undefined (fewer than 3 points or a constant variable)"
    if test["min_p"] is not None and test["min_p"] >= ALPHA:
        return f"inconclusive (n too small: with n={test['n']} no p below {test['min_p']:.3f} is possible)"
    if test["p"] < ALPHA:
        return "supported" if test["rho"] > 0 else "contradicted (significant negative correlation)"
    return "not supported (no significant correlation)"


def correlations(shapley: dict | None, single: dict | None, layers: list[dict]) -> list[dict]:
    """Leakage (Shapley value per player, single-layer accuracy per layer) against parameter count and depth."""
    tests = []
    if shapley:
        ps = shapley["players"]
        for against in ("params", "depth"):
            t = spearman([p[against] for p in ps], [p["shapley"] for p in ps])
            tests.append({"leakage": "Shapley value", "against": against, "unit": "player", **t, "verdict": verdict(t)})
    if single:
        info = {l["name"]: l for l in layers}
        rows = [r for r in single["rows"] if "result" in r and len(r["layers"]) == 1]
        for against in ("params", "depth"):
            t = spearman([info[r["layers"][0]][against] for r in rows], [r["result"]["metrics"]["accuracy"]["mean"] for r in rows])
            tests.append({"leakage": f"single-layer accuracy ({single['attack']})", "against": against, "unit": "layer",
                          **t, "verdict": verdict(t)})
    return tests


def conclusion(tests: list[dict]) -> dict[str, str]:
    """One plain sentence on the seed study's claim from the correlation tests."""
    if not tests:
        return {"claim": CLAIM, "verdict": "untested", "text": f"No Shapley values or single-layer results in OUT: '{CLAIM}' is untested."}
    verdicts = [t["verdict"] for t in tests]
    named = "; ".join(f"{t['leakage']} vs {t['against']}: {t['verdict'].split(' (')[0]}" for t in tests)
    if all(v == "supported" for v in verdicts):
        v, text = "supported", f"This run supports '{CLAIM}': every rank correlation is positive with p < {ALPHA}."
    elif any(v.startswith("contradicted") for v in verdicts):
        v, text = "contradicted", f"This run contradicts '{CLAIM}' in part ({named})."
    elif all(v.startswith(("inconclusive", "undefined")) for v in verdicts):
        n = max(t["n"] for t in tests)
        v, text = "inconclusive", (f"This run cannot test '{CLAIM}': with n={n} layers no rank correlation can reach "
                                   f"p < {ALPHA}. Audit a deeper model (e.g. ResNet) for a test.")
    else:
        v, text = "not supported", f"This run does not support '{CLAIM}' ({named})."
    return {"claim": CLAIM, "verdict": v, "text": text}


def _metric(result: dict | None, key: str = "accuracy") -> dict | None:
    return (result or {}).get("metrics", {}).get(key)


def headline(shapley: dict | None, single: dict | None, layers: list[dict]) -> list[dict]:
    """Per player in depth order: depth, parameters, Shapley ± std, and the single-layer accuracy where it is one layer."""
    single_by_layer = {r["layers"][0]: _metric(r.get("result")) for r in (single or {}).get("rows", []) if len(r["layers"]) == 1}
    rows = []
    if shapley:
        for p in sorted(shapley["players"], key=lambda p: p["depth"]):
            acc = single_by_layer.get(p["layers"][0]) if len(p["layers"]) == 1 else None
            rows.append({"player": p["player"], "depth": p["depth"], "params": p["params"], "shapley": p["shapley"],
                         "shapley_std": p["std"], "shapley_n": len(p.get("per_repeat", [])), "single": acc})
    else:
        for l in layers:
            rows.append({"player": l["name"], "depth": l["depth"], "params": l["params"], "shapley": None,
                         "shapley_std": None, "shapley_n": 0, "single": single_by_layer.get(l["name"])})
    return rows


def _clean(obj: Any) -> Any:
    """NaN/inf -> None so report.json is strict JSON; numpy scalars -> Python."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def build_report(config: dict, hashes: dict, target: dict | None, layers: list[dict], shapley: dict | None,
                 experiments: dict[str, dict], attacks: dict[str, dict], ignored: list[str] | None = None) -> dict:
    """report.json's content. ``layers``: [{name, depth, params}] in forward order; ``experiments`` keyed
    '<name>-<attack>'; ``attacks`` keyed by the attacks/ file stem; ``ignored``: files left out (another config)."""
    single = experiments.get("single-layer-logistic")
    tests = correlations(shapley, single, layers)
    return _clean({
        "claim_tested": CLAIM,
        "config": config,
        "config_hash": hashes.get("config"),
        "hashes": hashes,
        "versions": versions(),
        "target": target,
        "layers": layers,
        "headline": headline(shapley, single, layers),
        "correlations": tests,
        "conclusion": conclusion(tests),
        "shapley": shapley,
        "experiments": experiments,
        "attacks": attacks,
        "ignored": ignored or [],
    })


# --- plots -----------------------------------------------------------------------------------

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
        _bars(ax, labels, {a: [(m["mean"], m["std"]) if (m := _metric(r.get("result"))) else (None, None) for r in rec["rows"]]
                          for a, rec in singles.items()}, "attack accuracy", chance=0.5)
        ax.set_title("Each layer alone (mean ± std over repeats)", fontsize=9)
        plots[PLOTS["single_layer"]] = _png(fig)
    groups = [g for g in ("groups-grad", "groups-out") if any(k.startswith(g + "-") for k in exps)]
    if groups:
        fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 3.6), squeeze=False)
        for ax, g in zip(axes[0], groups):
            recs = {k.split("-")[-1]: v for k, v in exps.items() if k.startswith(g + "-")}
            labels = [r["label"] for r in next(iter(recs.values()))["rows"]]
            _bars(ax, labels, {a: [(m["mean"], m["std"]) if (m := _metric(r.get("result"))) else (None, None) for r in rec["rows"]]
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
            auc = _metric(a, "auc")
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
    return plots


# --- documents -------------------------------------------------------------------------------

def _pm(m: dict | None, digits: int = 4) -> str:
    if not m or m.get("mean") is None:
        return "–"
    std = "–" if m.get("std") is None else f"{m['std']:.{digits}f}"
    return f"{m['mean']:.{digits}f} ± {std} (n={m['n']})"


def _blocks(report: dict, plots: Sequence[str]) -> list[tuple]:
    """The document as blocks: ('h', level, text), ('p', text), ('ul', items), ('table', header, rows), ('img', path, alt)."""
    cfg, t = report["config"], report.get("target") or {}
    b: list[tuple] = [("h", 1, f"layerleak audit: {cfg['model']['arch']} on {cfg['dataset']['name']}")]
    b.append(("p", f"Config hash `{report['config_hash']}`; features hash `{report['hashes'].get('features')}`. "
                   f"Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items() if v) + "."))
    if t:
        b.append(("p", f"Target: train accuracy {t.get('train_accuracy', float('nan')):.4f}, test accuracy "
                       f"{t.get('test_accuracy', float('nan')):.4f} (overfit gap {t.get('overfit_gap')}; {t.get('members')} members, "
                       f"{t.get('epochs')} epochs)."))
    b.append(("h", 2, "Headline: leakage per layer"))
    b += _headline_blocks(report)
    b.append(("h", 2, f"Does this run support '{report['claim_tested']}'?"))
    b.append(("p", f"**{report['conclusion']['verdict'].upper()}.** {report['conclusion']['text']}"))
    if report["correlations"]:
        b.append(("table", ["leakage", "against", "n", "Spearman rho", "p (two-sided)", "p method", "verdict"],
                  [[c["leakage"], c["against"], str(c["n"]), "–" if c["rho"] is None else f"{c['rho']:+.3f}",
                    "–" if c["p"] is None else f"{c['p']:.3g}", c["p_method"] or "–", c["verdict"]] for c in report["correlations"]]))
        b.append(("p", f"Supported only if rho > 0 and p < {ALPHA}. Depth is the layer's position in forward order "
                       "(a player's mean depth); parameters are the layer's weights and biases."))
    if PLOTS["shapley"] in plots:
        b.append(("img", PLOTS["shapley"], "Shapley value per layer with parameter counts"))
    sh = report.get("shapley")
    if sh:
        b.append(("p", f"Shapley values: {sh['method']}, metric {sh['metric']}, features {', '.join(sh['kinds'])}, "
                       f"{sh['repeats']} repeats, {sh['coalitions']} coalition fits; v(all) = {sh['v_all']['mean']:.4f} ± "
                       f"{sh['v_all']['std']:.4f}, v(∅) = {sh['v_empty']}."))
    attacks = report.get("attacks", {})
    if attacks:
        b.append(("h", 2, "Attacks"))
        b.append(("table", ["attack", "layers", "kinds", *HEADLINE_METRICS],
                  [[name, ", ".join(a.get("layers") or []) or "–", ", ".join(a.get("kinds") or []),
                    *[_pm(_metric(a, k)) for k in HEADLINE_METRICS]] for name, a in attacks.items()]))
        if PLOTS["roc"] in plots:
            b.append(("img", PLOTS["roc"], "ROC curves on log-log axes"))
    exps = report.get("experiments", {})
    if exps:
        b.append(("h", 2, "The seed study's experiments"))
        for key, rec in exps.items():
            b.append(("h", 3, f"{rec['experiment']} ({rec['attack']})"))
            b.append(("p", rec["description"] + "." + (NASR_NOTE if rec["attack"] == "nasr" else "")))
            b.append(("table", ["selection", "gradient layers", "output layers", *HEADLINE_METRICS],
                      [[r["label"], ", ".join(r["grad"]) or "–", ", ".join(r["out"]) or "–",
                        *([_pm(_metric(r.get("result"), k)) for k in HEADLINE_METRICS] if "result" in r
                          else [r.get("skipped", "–"), "", "", ""])] for r in rec["rows"]]))
        for key in ("single_layer", "groups"):
            if PLOTS[key] in plots:
                b.append(("img", PLOTS[key], key.replace("_", "-") + " experiments"))
    if report.get("ignored"):
        b.append(("h", 2, "Left out"))
        b.append(("ul", [f"{x} (made by another config)" for x in report["ignored"]]))
    return b


def _headline_blocks(report: dict) -> list[tuple]:
    rows = report["headline"]
    has_single = any(r["single"] for r in rows)
    header = ["player", "depth", "params", "Shapley ± std"] + (["alone: accuracy ± std"] if has_single else [])
    body = []
    for r in rows:
        sh = "–" if r["shapley"] is None else f"{r['shapley']:+.4f} ± {r['shapley_std']:.4f} (n={r['shapley_n']})"
        body.append([r["player"], f"{r['depth']:g}", f"{r['params']:,}", sh] + ([_pm(r["single"])] if has_single else []))
    out: list[tuple] = [("table", header, body)]
    a, base = report.get("attacks", {}).get("logistic"), report.get("attacks", {}).get("loss-threshold")
    items = []
    if a:
        items.append(f"all layers, logistic attack: accuracy {_pm(_metric(a))}, AUC {_pm(_metric(a, 'auc'))}, "
                     f"TPR@1% FPR {_pm(_metric(a, 'tpr@1%'))}")
    if base:
        items.append(f"loss-threshold baseline: accuracy {_pm(_metric(base))}, AUC {_pm(_metric(base, 'auc'))}, "
                     f"TPR@1% FPR {_pm(_metric(base, 'tpr@1%'))}")
    if items:
        out.append(("ul", items))
    return out


def headline_text(report: dict) -> str:
    """The headline table and verdict as plain text (printed at the end of ``layerleak run``)."""
    return _markdown(_headline_blocks(report) + [("p", f"{report['conclusion']['verdict'].upper()}: {report['conclusion']['text']}")])


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(esc, header)) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(map(esc, r)) + " |" for r in rows])


def _markdown(blocks: list[tuple]) -> str:
    parts = []
    for blk in blocks:
        kind = blk[0]
        if kind == "h":
            parts.append("#" * blk[1] + " " + blk[2])
        elif kind == "p":
            parts.append(blk[1])
        elif kind == "ul":
            parts.append("\n".join(f"- {i}" for i in blk[1]))
        elif kind == "table":
            parts.append(_md_table(blk[1], blk[2]))
        elif kind == "img":
            parts.append(f"![{blk[2]}]({blk[1]})")
    return "\n\n".join(parts) + "\n"


def render_markdown(report: dict, plots: Sequence[str]) -> str:
    """report.md: images referenced by their paths relative to OUT."""
    return _markdown(_blocks(report, plots))


def _inline(text: str) -> str:
    s = html.escape(text)
    s = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", s)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", s)


def render_html(report: dict, plots: dict[str, bytes]) -> str:
    """report.html, self-contained: every plot embedded as a base64 PNG data URI."""
    body = []
    for blk in _blocks(report, list(plots)):
        kind = blk[0]
        if kind == "h":
            body.append(f"<h{blk[1]}>{_inline(blk[2])}</h{blk[1]}>")
        elif kind == "p":
            body.append(f"<p>{_inline(blk[1])}</p>")
        elif kind == "ul":
            body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in blk[1]) + "</ul>")
        elif kind == "table":
            head = "".join(f"<th>{_inline(h)}</th>" for h in blk[1])
            rows = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in blk[2])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif kind == "img":
            data = base64.b64encode(plots[blk[1]]).decode()
            body.append(f'<figure><img alt="{html.escape(blk[2])}" src="data:image/png;base64,{data}"></figure>')
    style = ("body{font-family:sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;line-height:1.4}"
             "table{border-collapse:collapse;margin:1rem 0;font-size:.9rem}td,th{border:1px solid #ccc;padding:.25rem .5rem}"
             "th{background:#f3f3f3}img{max-width:100%}code{background:#f3f3f3;padding:0 .2rem}")
    title = html.escape(f"layerleak audit: {report['config']['model']['arch']} on {report['config']['dataset']['name']}")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
