"""Several targets' results side by side: the between-target mean of every headline number with its t-interval
(targets are independently trained models, each on its own random half of the pool) and how stable the
players' ranking is across targets (mia_tasks.uncertainty.combine_targets / ranking_stability)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .uncertainty import between_targets, combine_targets, ranking_stability


def _entries(block: Mapping) -> dict:
    """The metric entries of a metrics block (``{"value", ...}`` dicts), without its labels."""
    return {k: v for k, v in block.items() if isinstance(v, Mapping) and "value" in v}


def _differences(a: Sequence[Mapping], b: Sequence[Mapping]) -> dict:
    """Between-target means of a[t][metric] - b[t][metric] for the metrics with values in every target."""
    return combine_targets([{k: {"value": x[k]["value"] - y[k]["value"]} for k in x
                             if x[k].get("value") is not None and (y.get(k) or {}).get("value") is not None}
                            for x, y in zip(a, b)])


def between_target_summary(blocks: Sequence[Mapping]) -> dict:
    """shapley.json's ``between_targets``: from the per-target blocks (sweeptable.target_block), the mean over
    targets of the all-layer attack's metrics, the baseline's, their differences, v(all), v(all) - v(∅) (``gain``:
    what the players add beyond the baseline) and each player's Shapley value,
    each with its t-interval (n = targets), the players' ranking stability, and how many targets leak."""
    names = [p["player"] for p in blocks[0]["players"]]
    shapley = np.array([[p["shapley"]["value"] for p in b["players"]] for b in blocks], dtype=np.float64)
    attack, baseline = [_entries(b["all_layers"]) for b in blocks], [_entries(b["baseline"]) for b in blocks]
    return {
        "targets": len(blocks),
        "resampling": "targets: independently trained models, each on its own random half of the pool",
        "leakage_detected": int(sum(bool(b["leakage_detected"]) for b in blocks)),
        "v_all": between_targets([b["v_all"]["value"] for b in blocks]),
        # what all the players add to v(∅) (the baseline attack's value under sweep.baseline), target by target
        "gain": between_targets([b["v_all"]["value"] - (b.get("v_empty") or {}).get("value", 0.5) for b in blocks]),
        "all_layers_minus_baseline": _differences(attack, baseline),
        "all_layers": combine_targets(attack),
        "baseline": combine_targets(baseline),
        "players": [{"player": n, "shapley": between_targets(shapley[:, i])} for i, n in enumerate(names)],
        "ranking_stability": ranking_stability(shapley) if len(blocks) >= 2 and len(names) >= 2 else None,
    }
