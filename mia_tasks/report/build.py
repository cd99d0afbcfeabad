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


def membership_check(config: dict, target: dict | None) -> dict | None:
    """For a pretrained target: is it more accurate on its members than on the test split? ``looks_wrong`` when
    the members' exact binomial (Clopper-Pearson) 95% interval does not lie wholly above the test split's
    (target/metrics.json); None for a target trained here (its members are known)."""
    if not (config.get("model") or {}).get("checkpoint") or not target:
        return None
    tr, te = target.get("train_accuracy_ci95"), target.get("test_accuracy_ci95")
    if not tr or not te:
        return None
    wrong = not tr[0] > te[1]
    stated = bool((config.get("split") or {}).get("members_file"))
    statement = (f"membership looks wrong: the model is not more accurate on its {'stated' if stated else 'assumed'} members "
                 f"(accuracy {target.get('train_accuracy', float('nan')):.3f}, 95% CI {tr[0]:.3f}-{tr[1]:.3f}) than on "
                 f"non-members ({target.get('test_accuracy', float('nan')):.3f}, {te[0]:.3f}-{te[1]:.3f}); "
                 + ("check the member file (split.members_file)" if stated else
                    "state the samples it was trained on with split.members_file") +
                 "; the leakage verdicts below audit samples that may not be members") if wrong else (
                 f"membership plausible: the members' accuracy interval ({tr[0]:.3f}-{tr[1]:.3f}) lies above the "
                 f"non-members' ({te[0]:.3f}-{te[1]:.3f})")
    return {"looks_wrong": wrong, "members_stated": stated, "rule": "members' Clopper-Pearson 95% interval above the non-members'",
            "members_accuracy_ci95": tr, "nonmembers_accuracy_ci95": te, "statement": statement}


def build_report(config: dict, hashes: dict, target: dict | None, layers: list[dict], shapley: dict | None,
                 experiments: dict[str, dict], attacks: dict[str, dict], ignored: list[str] | None = None) -> dict:
    """report.json's content. ``layers``: [{name, depth, params}] in forward order; ``experiments`` keyed
    '<name>-<attack>'; ``attacks`` keyed by the attacks/ file stem; ``ignored``: files left out (another config)."""
    single = experiments.get("single-layer-logistic")
    targets = (shapley or {}).get("targets", [])
    first = targets[0] if targets else None
    check = membership_check(config, target)
    listed = verdict_list(first)
    if check and check["looks_wrong"]:
        # never "no measurable leakage" about samples that may not be members
        listed = [{"step": "membership", "statement": check["statement"] + "."},
                  *[{**v, "statement": v["statement"].replace("no measurable leakage", "no leakage measured on these samples, "
                     "which says nothing while membership looks wrong").replace("without measurable leakage",
                     "without leakage measured on true members")} for v in listed]]
    report = {
        "claim_tested": CLAIM,
        "membership_check": check,
        "leakage_detected": None if first is None else bool(shapley["leakage_detected"]),
        "answer": plain_answer(first, check["statement"] + "." if check and check["looks_wrong"] else None),
        "verdicts": listed,
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
    }
    if check and check["looks_wrong"]:  # the statements a reader sees: none may say "no measurable leakage"
        for key in ("headline", "params_depth_test", "conclusion"):
            report[key] = _unclaim(report[key])
    return _clean(report)


def _unclaim(obj: Any) -> Any:
    """``obj`` with "no measurable leakage" reworded: the audited samples may not be members."""
    if isinstance(obj, str):
        return obj.replace("no measurable leakage", "no leakage measured on samples that may not be members").replace(
            "No measurable leakage", "No leakage measured on samples that may not be members")
    if isinstance(obj, dict):
        return {k: _unclaim(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unclaim(v) for v in obj]
    return obj
