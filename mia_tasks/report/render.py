"""report.md and a self-contained report.html, rendered from the report dict alone (one list of blocks, two writers)."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence

from .defences import defence_blocks
from .plots import PLOTS
from .stats import ALPHA, metric

HEADLINE_METRICS = ("accuracy", "auc", "tpr@1%", "tpr@0.1%")
NASR_NOTE = (" Nasr attack: its attack model reads the raw per-sample weight gradients and output activations of "
             "these layers, plus the label (not the loss), instead of their seven statistics.")


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
                    *[_pm(metric(a, k)) for k in HEADLINE_METRICS]] for name, a in attacks.items()]))
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
                        *([_pm(metric(r.get("result"), k)) for k in HEADLINE_METRICS] if "result" in r
                          else [r.get("skipped", "–"), "", "", ""])] for r in rec["rows"]]))
        for key in ("single_layer", "groups"):
            if PLOTS[key] in plots:
                b.append(("img", PLOTS[key], key.replace("_", "-") + " experiments"))
    b += defence_blocks(report)
    if PLOTS["defences"] in plots:
        b.append(("img", PLOTS["defences"], "utility versus leakage across defences"))
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
        items.append(f"all layers, logistic attack: accuracy {_pm(metric(a))}, AUC {_pm(metric(a, 'auc'))}, "
                     f"TPR@1% FPR {_pm(metric(a, 'tpr@1%'))}")
    if base:
        items.append(f"loss-threshold baseline: accuracy {_pm(metric(base))}, AUC {_pm(metric(base, 'auc'))}, "
                     f"TPR@1% FPR {_pm(metric(base, 'tpr@1%'))}")
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
