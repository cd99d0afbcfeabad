"""report.json's content: everything OUT holds for this config, the verdicts in order, the claim tested, versions."""

from __future__ import annotations

import math
import platform
from importlib import metadata
from typing import Any

import numpy as np

from .answer import plain_answer
from .stats import CLAIM, conclusion, headline, verdict_list


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
    targets = (shapley or {}).get("targets", [])
    first = targets[0] if targets else None
    return _clean({
        "claim_tested": CLAIM,
        "leakage_detected": None if first is None else bool(shapley["leakage_detected"]),
        "answer": plain_answer(first),
        "verdicts": verdict_list(first),
        "targets": [{k: v for k, v in t.items() if k != "values"} for t in targets],  # every v(S): under "shapley"
        "between_targets": (shapley or {}).get("between_targets"),  # several targets: means with t-intervals
        "config": config,
        "config_hash": hashes.get("config"),
        "hashes": hashes,
        "versions": versions(),
        "target": target,
        "layers": layers,
        "headline": headline(first, single, layers),
        "params_depth_test": None if first is None else first["verdicts"].get("params_depth"),
        "conclusion": conclusion(first),
        "shapley": shapley,
        "experiments": experiments,
        "attacks": attacks,
        "ignored": ignored or [],
    })
