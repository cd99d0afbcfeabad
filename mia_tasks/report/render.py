"""report.md and a self-contained report.html, rendered from the report dict alone (one list of blocks, two writers)."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence

from .defences import defence_blocks
from .plots import PLOTS
from .stats import ALPHA, fmt, metric
from .targets import attack_targets_blocks, targets_blocks

HEADLINE_METRICS = ("accuracy", "balanced_accuracy", "auc", "tpr@1%", "tpr@0.1%", "far")
NASR_NOTE = (" Nasr attack: its attack model reads the raw per-sample weight gradients and output activations of "
             "these layers, plus the label (not the loss), instead of their seven statistics.")


def interval_text(m: dict | None, digits: int = 4) -> str:
    """An entry as ``value [lo, hi] (n=N)``, or why it has no value."""
    if not m or m.get("value") is None:
        return fmt(m)
    return f"{fmt(m, digits)} (n={m['n']})"


def _resampling_text(how: dict | None) -> str:
    if not how:
        return ""
    return (f"95% {how['interval']} intervals from {how['replicates']:,} replicates of a {how['scheme']} (unit: "
            f"{how['unit']}; {how['members']} members, {how['non_members']} non-members; seed {how['seed']}); TPR at an FPR "
            f"f only with >= 10/f non-members, with an exact binomial (Clopper-Pearson) interval.")


def _blocks(report: dict, plots: Sequence[str]) -> list[tuple]:
    """The document as blocks: ('h', level, text), ('p', text), ('ul', items), ('table', header, rows), ('img', path, alt)."""
    cfg, t = report["config"], report.get("target") or {}
    b: list[tuple] = [("h", 1, f"layerleak audit: {cfg['model']['arch']} on {cfg['dataset']['name']}")]
    if report.get("answer"):
        b.append(("h", 2, "Answer"))
        b.append(("ul", report["answer"]))
    b.append(("p", f"Config hash `{report['config_hash']}`; features hash `{report['hashes'].get('features')}`. "
                   f"Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items() if v) + "."))
    if t:
        b.append(("p", target_text(t, trained_here=not cfg["model"].get("checkpoint"))))
    refs = (cfg.get("references") or {}).get("count", 0)
    if refs and cfg["model"].get("checkpoint"):
        tr = cfg.get("train", {})
        b.append(("p", f"The target is a pretrained checkpoint; its {refs} reference models were trained here with this "
                       f"config's recipe ({tr.get('epochs')} epochs, batch {tr.get('batch_size')}, lr {tr.get('lr')}, "
                       f"{tr.get('schedule')} schedule, augmentation {'on' if tr.get('augment') else 'off'}), each on a "
                       f"random half of the pool. Calibrated attacks (LiRA, RMIA, calibrated features) assume the target "
                       f"was trained similarly; if it was not, their scores are miscalibrated."))
    sh = report.get("shapley")
    first = (report.get("targets") or [None])[0]
    if first:
        b.append(("h", 2, "Verdicts"))
        check = report.get("membership_check") or {}
        b.append(("p", "**MEMBERSHIP LOOKS WRONG.**" if check.get("looks_wrong") else
                       "**LEAKAGE DETECTED.**" if report["leakage_detected"] else "**NO MEASURABLE LEAKAGE.**"))
        b.append(("ul", [f"{i}. {v['statement']}" for i, v in enumerate(report["verdicts"], 1)]))
        b.append(("p", f"Attacks are {sh['folds']}-fold cross-fitted over the audited samples (each scored once, by an attack "
                       f"fitted on the other folds). " + _resampling_text(first["v_all"].get("resampling"))))
    b.append(("h", 2, "Headline: leakage per layer"))
    b += _headline_blocks(report)
    if first:
        b += _differences_blocks(first)
    b += targets_blocks(report)
    b.append(("h", 2, f"Does this run support '{report['claim_tested']}'?"))
    b.append(("p", f"**{report['conclusion']['verdict'].upper()}.** {report['conclusion']['text']}"))
    pd = report.get("params_depth_test")
    if pd and pd.get("tested"):
        b.append(("p", f"One joint test: {pd['test']} over {pd['n_players']} players; {pd['correction']}."))
    if PLOTS["shapley"] in plots:
        b.append(("img", PLOTS["shapley"], "Shapley value per layer with 95% intervals and parameter counts"))
    if sh and first:
        b.append(("p", f"Shapley values: {sh['method']}, metric {sh['metric']}, features {', '.join(sh['kinds'])}, "
                       f"{len(sh['targets'][0]['values'])} coalitions; v(all) = "
                       f"{interval_text(first['v_all'])}, v(∅) = "
                       + (f"{sh['v_empty']}" if sh.get("v_empty") is not None else
                          f"{interval_text(first['v_empty'])} ({first['baseline']['attack']}: Shapley values are leakage beyond it)")
                       + (f"; efficiency gap {first['efficiency_gap']:.1e}" if first.get("efficiency_gap") is not None else "") + "."))
    attacks = report.get("attacks", {})
    if attacks:
        b.append(("h", 2, "Attacks"))
        # on a pool balanced by membership, balanced accuracy is accuracy: one column then
        shown = [k for k in HEADLINE_METRICS if k != "balanced_accuracy"
                 or any(fmt(metric(a, k)) != fmt(metric(a, "accuracy")) for a in attacks.values())]
        b.append(("table", ["attack", "layers", "kinds", "n", *shown],
                  [[name, ", ".join(a.get("layers") or []) or "–", ", ".join(a.get("kinds") or []), str(a.get("n", "–")),
                    *[fmt(metric(a, k)) for k in shown]] for name, a in attacks.items()]))
        b.append(("p", "Each cell: value [95% interval]. " + _resampling_text(
            (metric(next(iter(attacks.values())), "accuracy") or {}).get("resampling"))))
        if PLOTS["roc"] in plots:
            b.append(("img", PLOTS["roc"], "ROC curves on log-log axes, measurable region marked"))
        b += attack_targets_blocks(attacks)
        if PLOTS["roc_pooled"] in plots:
            b.append(("img", PLOTS["roc_pooled"], "ROC curves pooled over the targets, log-log, measurable region marked"))
    exps = report.get("experiments", {})
    if exps:
        b.append(("h", 2, "The seed study's experiments"))
        b.append(("p", "Each row's attack is cross-fitted over the audited samples; a logistic row's accuracy is the v(S) of "
                       "its feature set. Each cell: value [95% interval]."))
        for key, rec in exps.items():
            if rec["experiment"] == "seed-shapley":
                b += _seed_protocol_blocks(rec)
                continue
            b.append(("h", 3, f"{rec['experiment']} ({rec['attack']})"))
            b.append(("p", rec["description"] + "." + (NASR_NOTE if rec["attack"] == "nasr" else "")))
            b.append(("table", ["selection", "gradient layers", "output layers", *HEADLINE_METRICS[:3]],
                      [[r["label"], ", ".join(r["grad"]) or "–", ", ".join(r["out"]) or "–",
                        *([fmt(metric(r.get("result"), k)) for k in HEADLINE_METRICS[:3]] if "result" in r
                          else [r.get("skipped", "–"), "", ""])] for r in rec["rows"]]))
        for key in ("single_layer", "groups"):
            if PLOTS[key] in plots:
                b.append(("img", PLOTS[key], key.replace("_", "-") + " experiments"))
    b += defence_blocks(report)
    if PLOTS["defences"] in plots:
        b.append(("img", PLOTS["defences"], "utility versus leakage across defences"))
    top = report.get("most_exposed") or []
    if top:
        b.append(("h", 2, "Most exposed samples"))
        b.append(("p", f"The {len(top)} audited samples the `{top[0]['attack']}` attack scores most member-like "
                       "(out-of-fold scores; every sample's scores: `scores.parquet`)."))
        b.append(("table", ["sample id", "split[index]", "label", "member", "score"],
                  [[str(r["sample_id"]), f"{r['split']}[{r['index']}]", str(r["label"]), "yes" if r["member"] else "no",
                    f"{r['score']:.3f}"] for r in top]))
    if PLOTS["scores"] in plots:
        b.append(("img", PLOTS["scores"], "main attack's scores by membership"))
    if report.get("ignored"):
        b.append(("h", 2, "Left out"))
        b.append(("ul", [f"{x} (made by another config)" for x in report["ignored"]]))
    return b


def _seed_protocol_blocks(rec: dict) -> list[tuple]:
    """The sweep's players under the seed's own protocol (experiments/seed-shapley-logistic.json)."""
    sizes = rec["sizes"]
    text = (f"The seed's own evaluation ({rec['protocol']}): attack-train {sizes['train_members']} members + "
            f"{sizes['train_nonmembers']} non-members, evaluation {sizes['eval_members']} + {sizes['eval_nonmembers']}, "
            f"{rec['seeds']} seeds, v(∅) = {rec['empty']:g}. Ranges are the 2.5-97.5 percentiles over seeds (the split's "
            "variation, not a confidence interval); docs/seed-protocol.md says how it differs from this report's protocol. "
            f"v(all): AUROC {rec['auc']['v_all']:.3f}, accuracy {rec['accuracy']['v_all']:.3f}.")
    rows = [[p, f"{e['value']:+.4f} [{e['seed_range'][0]:+.4f}, {e['seed_range'][1]:+.4f}]",
             f"{rec['accuracy']['shapley'][p]['value']:+.4f}"] for p, e in rec["auc"]["shapley"].items()]
    return [("h", 3, "Shapley values under the seed's protocol"), ("p", text),
            ("table", ["player", "Shapley over AUROC [seed range]", "Shapley over best-threshold accuracy"], rows)]


def _differences_blocks(block: dict) -> list[tuple]:
    diffs = block["differences"]
    if not diffs:
        return []
    out: list[tuple] = [("h", 3, "Pairwise differences of Shapley values")]
    note = ("paired: the same bootstrap replicates for both players; two-sided bootstrap p-values, Holm-corrected over "
            f"the {len(diffs)} pairs; significant when p (Holm) < {ALPHA}")
    if not block["leakage_detected"]:
        note += "; none is significant without measurable leakage"
    out.append(("p", note[0].upper() + note[1:] + "."))
    out.append(("table", ["a", "b", "φ(a) − φ(b) [95% interval]", "p", "p (Holm)", "significant"],
                [[d["a"], d["b"], fmt(d["difference"], 4), f"{d['p_value']:.3g}", f"{d['p_holm']:.3g}",
                  "yes" if d["significant"] else "no"] for d in diffs]))
    return out


def target_text(t: dict, trained_here: bool = True) -> str:
    """The target's accuracies with their exact binomial intervals and n; the recipe only for a model trained here."""
    def acc(key: str) -> str:
        ci, n = t.get(f"{key}_ci95"), t.get(f"{key}_n")
        value = t.get(key)
        if value is None:
            return "not measured"
        return f"{value:.4f}" + (f" [{ci[0]:.4f}, {ci[1]:.4f}] (n={n})" if ci else "")
    how = (f"{t.get('members')} members, {t.get('epochs')} epochs" if trained_here
           else f"{t.get('members')} members; a pretrained checkpoint, not trained here")
    return (f"Target: train accuracy {acc('train_accuracy')}, test accuracy {acc('test_accuracy')} (exact binomial 95% "
            f"intervals; overfit gap {t.get('overfit_gap')}; {how}).")


def _headline_blocks(report: dict) -> list[tuple]:
    rows = report["headline"]
    # the single-layer experiment's accuracy is the sweep's v({player}) (same folds, same replicates): shown once
    has_single = any(r["single"] for r in rows) and any(r["single"] != r["alone"] for r in rows)
    header = (["player", "depth", "params", "Shapley [95% interval]", "excludes 0", "flagged (Holm)", "alone: v({player})"]
              + (["single-layer experiment"] if has_single else []))
    body = []
    for r in rows:
        yn = lambda v: "–" if v is None else ("yes" if v else "no")  # noqa: E731
        body.append([r["player"], f"{r['depth']:g}", f"{r['params']:,}", fmt(r["shapley"], 4), yn(r["excludes_zero"]),
                     yn(r["flagged"]), fmt(r["alone"])] + ([fmt(r["single"])] if has_single else []))
    out: list[tuple] = [("table", header, body)]
    first = (report.get("targets") or [None])[0]
    if first:
        items = []
        extra = report["config"].get("sweep", {}).get("baseline", "none")
        full = "all layers" + ("" if extra == "none" else f" + the {first['baseline'].get('attack')} score")
        for label, m in ((f"{full}, logistic attack (the sweep's full coalition)", first["all_layers"]),
                         (f"{first['baseline'].get('attack', 'loss-threshold')} baseline", first["baseline"])):
            items.append(f"{label}: accuracy {interval_text(m['accuracy'])}, AUC {fmt(m['auc'])}, "
                         f"TPR@1% FPR {fmt(m['tpr@1%'])}, TPR@0.1% FPR {fmt(m['tpr@0.1%'])}")
        out.append(("ul", items))
    return out


def headline_text(report: dict) -> str:
    """The answer, the verdicts and the headline table as plain text (printed at the end of ``layerleak run``)."""
    verdicts = [("ul", [f"{i}. {v['statement']}" for i, v in enumerate(report.get("verdicts", []), 1)])] if report.get("verdicts") else []
    answer = [("p", "Answer: " + " ".join(report["answer"]))] if report.get("answer") else []
    return _markdown(answer + verdicts + _headline_blocks(report)
                     + [("p", f"{report['conclusion']['verdict'].upper()}: {report['conclusion']['text']}")])


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
