"""OUT/sweep: rows keyed by (target, coalition) holding each audited sample's out-of-fold correctness, read
back with validation, and shapley.json built from them with bootstrap intervals and the verdicts.

A row stores, for one coalition of one target, the point values of its cross-fitted attack (accuracy,
balanced accuracy, AUC), ``correct``: np.packbits of each audited sample's out-of-fold correctness (the
samples in splits.parquet order), and ``scores``: the out-of-fold margins as float32 bytes, kept for the
full coalition and each single player (the AUC and ROC need scores; accuracy needs only the bits). The
bootstrap of mia_tasks.uncertainty turns the bits of all coalitions into every v(S) and every Shapley
value per replicate at once.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa

from .coalitions import batched_metrics
from .errors import one_line
from .featurestore import Features
from .rundir import HASH_KEY, SWEEP, RunDir, is_current, stamp
from .shapley import EMPTY_VALUE, sampled_shapley
from .uncertainty import (bootstrap_metrics, bootstrap_sweep, stratified_weights, unpack_correct, verdicts)
from .uncertainty.bootstrap import SweepBootstrap, entry, linear_metric, paired_difference, percentile_interval, resampling

SWEEP_METRICS = ("accuracy", "balanced_accuracy", "auc")  # the point values a sweep row stores per coalition
SWEEP_COLUMNS = ("target", "coalition", *SWEEP_METRICS, "correct", "scores")


def keeps_scores(coalitions: np.ndarray, n_players: int) -> np.ndarray:
    """bool per coalition: its scores are stored (the full coalition and each single player)."""
    c = np.asarray(coalitions, np.int64)
    return (c == (1 << n_players) - 1) | ((c & (c - 1)) == 0)


def sweep_rows(target: int, coalitions: np.ndarray, scores: np.ndarray, packed: np.ndarray, y: np.ndarray,
               n_players: int) -> pa.Table:
    """One sweep part: a row per coalition with its point values, packed correctness and (where kept) scores."""
    import torch

    metrics = batched_metrics(torch.as_tensor(np.asarray(scores, np.float64)), torch.as_tensor(np.asarray(y, bool)))
    keep = keeps_scores(coalitions, n_players)
    return pa.table({
        "target": pa.array(np.full(len(coalitions), target), pa.int64()),
        "coalition": pa.array(np.asarray(coalitions, np.int64), pa.int64()),
        **{m: pa.array(metrics[m].numpy().astype(np.float64)) for m in SWEEP_METRICS},
        "correct": pa.array([row.tobytes() for row in packed], pa.binary()),
        "scores": pa.array([s.astype(np.float32).tobytes() if k else None for s, k in zip(scores, keep)], pa.binary()),
    })


def read_sweep(rd: RunDir, config_hash: str) -> dict[int, dict[int, dict]]:
    """{target: {coalition: {metric: value, "correct": bytes, "scores": bytes | None}}} from every valid part;
    invalid parts are reported and removed."""
    out: dict[int, dict[int, dict]] = {}
    for name in rd.listdir(SWEEP, ".parquet"):
        rel = f"{SWEEP}/{name}"
        try:
            meta = rd.parquet_metadata(rel)
            if not is_current(meta, "sweep", {"sweep": config_hash}):
                raise ValueError(f"made by another config or layerleak version (hash {meta.get(HASH_KEY)})")
            t = rd.read_parquet(rel)
            cols = {c: t.column(c).to_pylist() for c in SWEEP_COLUMNS}
        except (OSError, pa.ArrowException, ValueError, KeyError) as e:
            print(f"[layerleak] sweep: {rel} is not a valid part ({one_line(e)}); removing it, its keys will be refitted")
            rd.delete(rel)
            continue
        for i, (tg, c) in enumerate(zip(cols["target"], cols["coalition"])):
            out.setdefault(int(tg), {})[int(c)] = {k: cols[k][i] for k in (*SWEEP_METRICS, "correct", "scores")}
    return out


def packed_matrix(rows: dict[int, dict], n: int) -> tuple[np.ndarray, np.ndarray]:
    """(masks int64 [K] sorted, packed correctness uint8 [K, ceil(n/8)]) of one target's rows."""
    masks = np.array(sorted(rows), dtype=np.int64)
    packed = np.frombuffer(b"".join(rows[int(m)]["correct"] for m in masks), np.uint8).reshape(len(masks), (n + 7) // 8)
    return masks, packed


def stored_scores(rows: dict[int, dict], mask: int) -> np.ndarray:
    """float32 out-of-fold margins of coalition ``mask`` (stored for the full coalition and single players)."""
    return np.frombuffer(rows[int(mask)]["scores"], np.float32)


def shapley_text(report: dict) -> str:
    """shapley.json as the table the sweep stage prints: per player depth, parameters, Shapley value and interval."""
    lines = []
    for t in report["targets"]:
        va, ve = t["v_all"], t.get("v_empty")
        empty = (f"{report['v_empty']}" if report.get("v_empty") is not None else
                 f"{ve['value']:.3f} [{ve['ci95'][0]:.3f}, {ve['ci95'][1]:.3f}], {t['baseline']['attack']}: values beyond it")
        lines += [f"Shapley values of attack {report['metric']} ({report['method']}; target {t['target']}, n={va['n']} audited "
                  f"samples, {report['folds']}-fold cross-fitted, {va['resampling']['replicates']} bootstrap replicates; "
                  f"v(all) = {va['value']:.3f} [{va['ci95'][0]:.3f}, {va['ci95'][1]:.3f}], v(∅) = {empty})",
                  f"  {t['verdicts']['statement']}",
                  f"  {'player':24s} {'depth':>5} {'params':>10} {'shapley':>9} {'95% interval':>20}  flagged"]
        for p in t["players"]:
            s = p["shapley"]
            lines.append(f"  {p['player']:24s} {p['depth']:5.1f} {p['params']:10,d} {s['value']:+9.4f} "
                         f"[{s['ci95'][0]:+.4f}, {s['ci95'][1]:+.4f}]  {'yes' if p['flagged'] else 'no'}")
    return "\n".join(lines) + "\n"


def _sampled_replicates(values: np.ndarray, masks: np.ndarray, n_players: int, used: int, seed: int, empty: float) -> np.ndarray:
    """Shapley values [B, L] of the permutation estimate redone with each replicate's v(S) (same permutations:
    same seed and count), so sampled Shapley values get bootstrap intervals too."""
    out = np.empty((values.shape[0], n_players))
    index = {int(m): i for i, m in enumerate(masks)}
    for b in range(values.shape[0]):
        row = values[b]
        est = sampled_shapley(lambda ms: row[[index[int(m)] for m in ms]], n_players, max_permutations=used, tol=None,
                              seed=seed, empty_value=empty)
        out[b] = est.values
    return out


def target_block(rows: dict[int, dict], y: np.ndarray, players: dict[str, list[str]], features: Features,
                 baseline_scores: np.ndarray, bootstrap: int, seed: int, target: int = 0,
                 sampled: dict | None = None, baseline_attack: str = "loss-threshold",
                 empty_correct: np.ndarray | None = None) -> dict:
    """One target's part of shapley.json: every v(S), the Shapley values and their pairwise differences with
    bootstrap intervals (shared weights: paired), the all-layer attack and the loss baseline, the verdicts.

    ``sampled`` ({"permutations", "seed"}) when the Shapley values come from permutation sampling (then
    ``rows`` holds only the coalitions it evaluated); else ``rows`` holds every non-empty coalition.
    ``baseline_attack`` names the attack of ``baseline_scores``; with ``empty_correct`` (its out-of-fold correctness,
    sweep.baseline) v(∅) is that attack's value in each replicate instead of 0.5 (exact sweeps only).
    """
    names, L = list(players), len(players)
    y = np.asarray(y, bool)
    W = stratified_weights(y, bootstrap, seed)
    how = resampling(y, bootstrap, seed)
    masks, packed = packed_matrix(rows, y.size)
    full = (1 << L) - 1
    if sampled is None:
        sb = bootstrap_sweep(packed, masks, y, n_players=L, weights=W, seed=seed, empty_correct=empty_correct)
        table_masks, v_point, v_reps = np.arange(1, 1 << L), sb.values[1:], sb.replicates[:, 1:]
    else:
        C = unpack_correct(packed, y.size).astype(np.float32)
        v_reps = linear_metric(W, C, y, "accuracy")
        v_point = linear_metric(np.ones((1, y.size), np.float32), C, y, "accuracy")[0]
        point = sampled_shapley(lambda ms: v_point[np.searchsorted(masks, ms)], L, max_permutations=sampled["permutations"],
                                tol=None, seed=sampled["seed"], empty_value=EMPTY_VALUE)
        reps = _sampled_replicates(v_reps, masks, L, sampled["permutations"], sampled["seed"], EMPTY_VALUE)
        sb = SweepBootstrap(np.r_[EMPTY_VALUE, v_point], v_reps, point.values, reps, y.size, "accuracy", how)
        table_masks = masks
    v_ci = percentile_interval(v_reps)
    all_layers = bootstrap_metrics(y, stored_scores(rows, full), weights=W)
    baseline = bootstrap_metrics(y, baseline_scores, weights=W)
    beyond = paired_difference(y, stored_scores(rows, full), baseline_scores, W, how)
    params = [int(sum(features.params[l] for l in players[n])) for n in names]
    depth = [float(np.mean([features.depths[l] for l in players[n]])) for n in names]
    v = verdicts(sb, names, all_layers["auc"], baseline["auc"], params, depth, seed=seed)
    by_name = {p["player"]: p for p in v.pop("players")}
    out_players = [{"player": n, "layers": players[n], "params": params[i], "depth": depth[i], **by_name[n],
                    "alone": entry(v_point[np.searchsorted(table_masks, 1 << i)], v_ci[:, np.searchsorted(table_masks, 1 << i)],
                                   y.size, how) if (1 << i) in set(table_masks.tolist()) else None}
                   for i, n in enumerate(names)]
    differences = v.pop("differences")
    full_at = int(np.searchsorted(table_masks, full))
    return {
        "target": target,
        "leakage_detected": v["leakage_detected"],
        "v_all": entry(v_point[full_at], v_ci[:, full_at], y.size, how),
        "all_layers": all_layers,
        "baseline": {"attack": baseline_attack, **baseline},
        "beyond_baseline": beyond,  # all-layer attack minus the baseline attack, paired over the same replicates
        "v_empty": entry(sb.values[0], percentile_interval(sb.replicates[:, :1])[:, 0], y.size, how),
        "players": out_players,
        "differences": differences,
        "verdicts": v,
        "efficiency_gap": float(abs(sb.shapley.sum() - (sb.values[-1] - sb.values[0]))) if sampled is None else None,
        "values": [{"coalition": int(m), "players": [names[i] for i in range(L) if (int(m) >> i) & 1],
                    "accuracy": entry(v_point[j], v_ci[:, j], y.size, how)} for j, m in enumerate(table_masks)],
    }


def shapley_report(blocks: Sequence[dict], cfg, config_hash: str, sampled: dict | None = None) -> dict:
    """The content of shapley.json: how it was made, and one block per target (``target_block``)."""
    return {
        **stamp("shapley", {"sweep": config_hash}),
        "method": "exact" if sampled is None else "sampled",
        "metric": "accuracy",
        "kinds": list(cfg.sweep.kinds),
        "folds": cfg.attack.folds,
        "bootstrap": cfg.attack.bootstrap,
        "v_empty": EMPTY_VALUE if cfg.sweep.baseline == "none" else None,  # else each target's baseline value (v_empty)
        "sweep_baseline": cfg.sweep.baseline,
        "n_permutations": None if sampled is None else sampled["permutations"],
        "leakage_detected": all(b["leakage_detected"] for b in blocks),
        "targets": list(blocks),
    }
