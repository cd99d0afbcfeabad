"""OUT/scores.parquet: one row per audited sample of target 0 (other targets of a population are left out), with
every current attack's out-of-fold score; and ``layerleak compare``: paired differences between two audits of the
same samples (B - A), by a bootstrap over the audited samples stratified by membership."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import LayerleakError
from .rundir import ATTACKS, FEATURES, HASH_KEY, MARKER, SCORES, SHAPLEY, SPLITS, RunDir
from .uncertainty.bootstrap import percentile_interval, stratified_weights, weighted_auc

TOP = 10  # the report's most exposed samples


def _losses(rd: RunDir) -> dict[int, float]:
    out: dict[int, float] = {}
    for name in rd.listdir(FEATURES, ".parquet"):
        t = rd.read_parquet(f"{FEATURES}/{name}")
        if "loss" in t.column_names:
            out.update(zip(t.column("sample_id").to_pylist(), t.column("loss").to_pylist()))
    return out


def scores_table(rd: RunDir, attacks: dict[str, dict]) -> pa.Table:
    """sample_id (global: train split then test split), split, index (within that split), label, member, loss and
    ``score.<attacks/ file stem>`` for each attack record holding per-sample scores of these samples: the score its
    AUC and ROC read (higher = more member-like): the out-of-fold margin, or a calibrated attack's raw score."""
    splits = rd.read_parquet(SPLITS)
    n_train = int(rd.parquet_metadata(SPLITS).get("n_train", 0))
    ids = splits.column("sample_id").to_numpy()
    losses = _losses(rd)
    cols: dict[str, Any] = {
        "sample_id": pa.array(ids, pa.int64()),
        "split": pa.array(np.where(ids < n_train, "train", "test")),
        "index": pa.array(np.where(ids < n_train, ids, ids - n_train), pa.int64()),
        "label": splits.column("label"), "member": splits.column("member"),
        "loss": pa.array([losses.get(int(i)) for i in ids], pa.float64()),
    }
    for stem, rec in sorted(attacks.items()):
        if rec.get("sample_ids") is not None and list(rec["sample_ids"]) == ids.tolist():
            cols[f"score.{stem}"] = pa.array(ranking_scores(rec), pa.float64())
    return pa.table(cols)


def ranking_scores(rec: dict) -> list[float]:
    """The per-sample scores an attack's threshold-free metrics read: a calibrated attack's (LiRA, RMIA) raw scores
    over the whole pool, every other attack's out-of-fold margins."""
    return rec["raw_scores"] if rec.get("raw_scores") is not None else rec["scores"]


def write_scores(rd: RunDir, attacks: dict[str, dict], hashes: dict) -> pa.Table:
    """Write OUT/scores.parquet whole (rewritten by every report, so it follows the attacks OUT holds)."""
    table = scores_table(rd, attacks)
    rd.write_parquet(SCORES, table, {HASH_KEY: hashes.get("config"), "attacks": sorted(attacks)})
    return table


def main_score(table: pa.Table) -> str | None:
    """The report's main attack column: the all-layer logistic attack, else the first attack."""
    names = [c for c in table.column_names if c.startswith("score.")]
    return "score.logistic" if "score.logistic" in names else (names[0] if names else None)


def most_exposed(table: pa.Table, n: int = TOP) -> list[dict]:
    """The ``n`` samples the main attack scores most member-like."""
    col = main_score(table)
    if col is None:
        return []
    order = np.argsort(-table.column(col).to_numpy(), kind="stable")[:n]
    rows = table.take(pa.array(order)).to_pylist()
    return [{"sample_id": r["sample_id"], "split": r["split"], "index": r["index"], "label": r["label"],
             "member": r["member"], "attack": col[len("score."):], "score": r[col]} for r in rows]


# --- compare -------------------------------------------------------------------------------------------------
def _run_attacks(rd: RunDir) -> dict[str, dict]:
    if not (rd.exists(MARKER) or rd.earlier_run_folder()):
        raise LayerleakError(f"{rd.uri} is not a layerleak run folder (no {MARKER})")
    if not rd.exists(SPLITS):
        raise LayerleakError(f"{rd.uri} has no {SPLITS}; run 'layerleak run --out {rd.uri}' first")
    out = {}
    for fname in rd.listdir(ATTACKS, ".json"):
        rec = rd.read_json(f"{ATTACKS}/{fname}")
        if rec.get("scores") is not None:
            out[fname[:-len(".json")]] = rec
    return out


def _tpr_at(y: np.ndarray, s: np.ndarray, W: np.ndarray, fpr: float) -> np.ndarray:
    """TPR at FPR ``fpr`` per weight row: threshold at the weighted (1 - fpr) quantile of non-member scores."""
    neg, pos = s[~y], s[y]
    order = np.argsort(neg)
    wn = W[:, ~y][:, order].astype(np.float64)
    cum = np.cumsum(wn, axis=1) / wn.sum(axis=1, keepdims=True)
    k = (cum < 1 - fpr).sum(axis=1).clip(0, len(neg) - 1)
    thr = neg[order][k]
    wp = W[:, y].astype(np.float64)
    return ((pos[None, :] > thr[:, None]) * wp).sum(axis=1) / wp.sum(axis=1)


def _metrics(y: np.ndarray, margins: np.ndarray, ranking: np.ndarray, W: np.ndarray) -> dict[str, np.ndarray]:
    """AUC and TPR@1% FPR of the ranking scores, accuracy of the out-of-fold margins' sign, per weight row."""
    correct = ((margins >= 0) == y).astype(np.float64)
    out = {"auc": weighted_auc(y, ranking, W), "accuracy": (W * correct).sum(axis=1) / W.sum(axis=1)}
    if (~y).sum() >= 100:  # at least one false positive at 1% FPR: measurable
        out["tpr@1%"] = _tpr_at(y, ranking, W, 0.01)
    return out


def compare_runs(out_a: str, out_b: str, replicates: int = 1000, seed: int = 0) -> dict:
    """Paired B - A differences of each attack both runs hold (and of Shapley values with the same players)."""
    a, b = RunDir(out_a), RunDir(out_b)
    att_a, att_b = _run_attacks(a), _run_attacks(b)
    sa, sb = a.read_parquet(SPLITS), b.read_parquet(SPLITS)
    ids, member = sa.column("sample_id").to_numpy(), sa.column("member").to_numpy(zero_copy_only=False).astype(bool)
    if sorted(ids.tolist()) != sorted(sb.column("sample_id").to_pylist()) or not pc.all(pc.equal(
            sa.sort_by("sample_id").column("member"), sb.sort_by("sample_id").column("member"))).as_py():
        raise LayerleakError(f"{out_a} and {out_b} audited different samples (sample ids or membership differ); "
                             f"compare needs two audits of the same samples")
    common = sorted(set(att_a) & set(att_b))
    if not common:
        raise LayerleakError(f"{out_a} and {out_b} hold no attack with per-sample scores in common; "
                             f"rerun 'layerleak run' on both")
    W = stratified_weights(member, replicates, seed)
    one = np.ones((1, ids.size))
    result: dict[str, Any] = {"a": out_a, "b": out_b, "n": int(ids.size), "members": int(member.sum()),
                              "replicates": replicates, "interval": "95% percentile, paired bootstrap over the audited "
                              "samples stratified by membership", "attacks": {}}
    pos = {int(i): k for k, i in enumerate(ids)}
    for stem in common:
        s = []
        for rec in (att_a[stem], att_b[stem]):
            at = [pos[int(i)] for i in rec["sample_ids"]]
            margins, ranking = np.full(ids.size, np.nan), np.full(ids.size, np.nan)
            margins[at], ranking[at] = rec["scores"], ranking_scores(rec)
            s.append((margins, ranking))
        ma, mb = _metrics(member, *s[0], W), _metrics(member, *s[1], W)
        pa_, pb = _metrics(member, *s[0], one), _metrics(member, *s[1], one)
        result["attacks"][stem] = {m: {"a": float(pa_[m][0]), "b": float(pb[m][0]), "diff": float(pb[m][0] - pa_[m][0]),
                                       "ci": [float(x) for x in percentile_interval(mb[m] - ma[m])]} for m in ma}
    result["shapley"] = _shapley_diff(a, b)
    return result


def _shapley_diff(a: RunDir, b: RunDir) -> dict | None:
    """Per-layer Shapley values of both runs (target 0); the bootstrap replicates are not stored, so each run's own
    interval is shown beside the difference instead of a paired one."""
    if not (a.exists(SHAPLEY) and b.exists(SHAPLEY)):
        return None
    ta, tb = (rd.read_json(SHAPLEY).get("targets", [{}])[0] for rd in (a, b))
    va = {p["player"]: p["shapley"] for p in ta.get("players", [])}
    vb = {p["player"]: p["shapley"] for p in tb.get("players", [])}
    if sorted(va) != sorted(vb):
        return {"note": "different players: not compared"}
    rows = {}
    for layer in va:
        ga, gb = va[layer]["value"], vb[layer]["value"]
        rows[layer] = {"a": ga, "b": gb, "diff": None if ga is None or gb is None else gb - ga,
                       "a_ci": va[layer].get("ci95"), "b_ci": vb[layer].get("ci95")}
    return {"note": "bootstrap replicates are not stored: each run's own interval, no paired interval", "layers": rows}


def compare_text(r: dict) -> str:
    """The comparison as a table."""
    lines = [f"compare: B - A, B = {r['b']}, A = {r['a']}; {r['n']} audited samples ({r['members']} members); {r['interval']}",
             f"{'attack':<28}{'metric':<10}{'A':>8}{'B':>8}{'B-A':>9}  95% interval"]
    for stem, ms in r["attacks"].items():
        for m, e in ms.items():
            lines.append(f"{stem:<28}{m:<10}{e['a']:>8.3f}{e['b']:>8.3f}{e['diff']:>+9.3f}  [{e['ci'][0]:+.3f}, {e['ci'][1]:+.3f}]")
    sh = r.get("shapley")
    if sh:
        lines.append(f"shapley: {sh['note']}")
        for layer, e in (sh.get("layers") or {}).items():
            d = "n/a" if e["diff"] is None else f"{e['diff']:+.4f}"
            lines.append(f"  {layer:<26}A {e['a']:.4f} {e['a_ci']}  B {e['b']:.4f} {e['b_ci']}  B-A {d}")
    return "\n".join(lines) + "\n"


def score_histogram(table: pa.Table, bins: int = 30) -> dict | None:
    """The main attack's score histogram by membership (counts on shared edges), for plots/scores.png."""
    col = main_score(table)
    if col is None:
        return None
    s = table.column(col).to_numpy()
    m = table.column("member").to_numpy(zero_copy_only=False).astype(bool)
    edges = np.histogram_bin_edges(s, bins)
    return {"attack": col[len("score."):], "edges": edges.tolist(), "members": np.histogram(s[m], edges)[0].tolist(),
            "non_members": np.histogram(s[~m], edges)[0].tolist()}
