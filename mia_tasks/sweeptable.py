"""OUT/sweep: rows keyed by (coalition, repeat), read back with validation, and shapley.json built from them."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from .errors import one_line
from .featurestore import Features
from .rundir import HASH_KEY, SWEEP, RunDir, is_current, stamp
from .shapley import EMPTY_VALUE, exact_shapley, value_table

SWEEP_METRICS = ("accuracy", "auc", "tpr@1%", "tpr@0.1%")  # what a sweep part stores per (coalition, repeat)


def read_sweep(rd: RunDir, config_hash: str) -> dict[int, dict[int, dict[str, float]]]:
    """{repeat: {coalition: {metric: value}}} from every valid part; invalid parts are reported and removed."""
    out: dict[int, dict[int, dict[str, float]]] = {}
    for name in rd.listdir(SWEEP, ".parquet"):
        rel = f"{SWEEP}/{name}"
        try:
            meta = rd.parquet_metadata(rel)
            if not is_current(meta, "sweep", {"sweep": config_hash}):
                raise ValueError(f"made by another config (hash {meta.get(HASH_KEY)})")
            t = rd.read_parquet(rel)
            cols = {c: t.column(c).to_numpy() for c in ("coalition", "repeat", *SWEEP_METRICS)}
        except (OSError, pa.ArrowException, ValueError, KeyError) as e:
            print(f"[layerleak] sweep: {rel} is not a valid part ({one_line(e)}); removing it, its keys will be refitted")
            rd.delete(rel)
            continue
        for i, (c, r) in enumerate(zip(cols["coalition"], cols["repeat"])):
            out.setdefault(int(r), {})[int(c)] = {m: float(cols[m][i]) for m in SWEEP_METRICS}
    return out


def shapley_text(report: dict) -> str:
    """shapley.json as the table the sweep stage prints: each player's depth, parameters and Shapley value."""
    lines = [f"Shapley values of attack accuracy ({report['method']}, {report['repeats']} repeats; "
             f"v(all) = {report['v_all']['mean']:.3f} ± {report['v_all']['std']:.3f}, v(∅) = {report['v_empty']})",
             f"  {'player':24s} {'depth':>5} {'params':>10} {'shapley':>9} {'± std':>7}"]
    for p in report["players"]:
        lines.append(f"  {p['player']:24s} {p['depth']:5.1f} {p['params']:10,d} {p['shapley']:9.4f} {p['std']:7.4f}")
    return "\n".join(lines) + "\n"


def repeat_values(rows: dict[int, dict[str, float]], n_players: int, metric: str = "accuracy", empty: float = EMPTY_VALUE) -> np.ndarray:
    """v(S) for all 2^L masks from one repeat's rows, v(∅) = ``empty``; a missing coalition is an error."""
    masks = np.fromiter(rows.keys(), np.int64, len(rows))
    return value_table(masks, np.array([rows[m][metric] for m in masks]), n_players, empty)


def shapley_report(table: dict, players: dict[str, list[str]], features: Features, cfg, config_hash: str,
                   sampled: list | None = None) -> dict:
    """The content of shapley.json: per player, Shapley value (mean, std over repeats), layers, parameters, depth."""
    L, names, R = len(players), list(players), len(table)
    per_metric = {}
    if sampled is None:
        for metric in ("accuracy", "auc"):  # v(∅) = EMPTY_VALUE: a coin flip has accuracy and AUC 0.5
            tables = np.stack([repeat_values(table[r], L, metric) for r in sorted(table)])
            per_metric[metric] = (np.stack([exact_shapley(t) for t in tables]), tables[:, -1], None)
    else:
        values = np.stack([s.values for s in sampled])
        full = 2 ** L - 1
        v_all = np.array([table[r][full]["accuracy"] if full in table.get(r, {}) else np.nan for r in sorted(table)])
        per_metric["accuracy"] = (values, v_all, np.stack([s.stderr for s in sampled]))
    phi, v_all, stderr = per_metric["accuracy"]
    out_players = []
    for i, name in enumerate(names):
        layers = players[name]
        entry = {"player": name, "layers": layers, "params": int(sum(features.params[l] for l in layers)),
                 "depth": float(np.mean([features.depths[l] for l in layers])),
                 "shapley": float(phi[:, i].mean()), "std": float(phi[:, i].std(ddof=1)) if R > 1 else 0.0,
                 "per_repeat": [float(v) for v in phi[:, i]]}
        if stderr is not None:
            entry["stderr"] = float(np.sqrt((stderr[:, i] ** 2).mean() / R))
        if "auc" in per_metric:
            entry["shapley_auc"] = float(per_metric["auc"][0][:, i].mean())
            entry["std_auc"] = float(per_metric["auc"][0][:, i].std(ddof=1)) if R > 1 else 0.0
        out_players.append(entry)
    return {
        **stamp("shapley", {"sweep": config_hash}),
        "method": "exact" if sampled is None else "sampled",
        "metric": "accuracy",
        "players": out_players,
        "kinds": list(cfg.sweep.kinds),
        "repeats": R,
        "v_empty": EMPTY_VALUE,
        "v_all": {"mean": float(np.nanmean(v_all)), "std": float(np.nanstd(v_all, ddof=1)) if R > 1 else 0.0},
        "efficiency_gap": float(np.abs(phi.sum(axis=1) - (v_all - EMPTY_VALUE)).max()) if sampled is None else None,
        "coalitions": int(sum(len(t) for t in table.values())),
        "n_permutations": [int(s.n_permutations) for s in sampled] if sampled else None,
    }
