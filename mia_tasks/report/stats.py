"""The numbers of the report: does this run support the seed study's claim, and leakage per layer.

The claim ("deeper and larger layers leak more") is tested with Spearman rank correlations across
layers (exact permutation p-values for few layers), not restated; ``headline`` is the per-layer table.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

ALPHA = 0.05
EXACT_MAX_N = 8  # exact permutation p-values up to 8! = 40,320 orderings
CLAIM = "deeper and larger layers leak more"


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


def metric(result: dict | None, key: str = "accuracy") -> dict | None:
    """``result``'s metrics[key] ({mean, std, n, ...}), or None where the result or the metric is absent."""
    return (result or {}).get("metrics", {}).get(key)


def headline(shapley: dict | None, single: dict | None, layers: list[dict]) -> list[dict]:
    """Per player in depth order: depth, parameters, Shapley ± std, and the single-layer accuracy where it is one layer."""
    single_by_layer = {r["layers"][0]: metric(r.get("result")) for r in (single or {}).get("rows", []) if len(r["layers"]) == 1}
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
