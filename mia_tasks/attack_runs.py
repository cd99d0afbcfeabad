"""One attack run over every repeat of the attacker sets: metrics with mean ± std, and ROC curves.

Used by ``layerleak attack`` and by the seed study's experiments, so a number in the report is
exactly what a direct call of the attack gives.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .attacks import AttackData, evaluate, make_attack, select_columns
from .featurestore import Features
from .metrics import aggregate, roc_curve
from .schema import LOSS
from .splits import ROLE_EVAL, ROLE_TRAIN, Splits


def _roc_points(y: np.ndarray, scores: np.ndarray, n: int = 200) -> dict[str, list[float]]:
    """The ROC curve thinned to at most ``n`` points (kept log-spaced in FPR), for plots."""
    fpr, tpr, _ = roc_curve(y, scores)
    if len(fpr) > n:
        keep = np.unique(np.concatenate([[0, len(fpr) - 1], np.searchsorted(fpr, np.geomspace(1e-4, 1, n)).clip(0, len(fpr) - 1)]))
        fpr, tpr = fpr[keep], tpr[keep]
    return {"fpr": [float(v) for v in fpr], "tpr": [float(v) for v in tpr]}


def run_attack(name: str, features: Features, splits: Splits, layers: Sequence[str] | None = None,
               kinds: Sequence[str] = ("grad",), C: float = 1.0, transform: str = "none", model: Any = None, data: Any = None,
               nasr: dict | None = None, seed: int = 0) -> dict:
    """Fit ``name`` on each repeat's attack-train set, evaluate on its attack-eval set; a JSON-ready dict.

    Feature attacks read the features table; ``nasr`` needs the target ``model`` and the image ``data``.
    """
    layers = list(layers) if layers else list(features.layers)
    if name == "logistic":
        columns = select_columns(features.table.column_names, layers, kinds, exclude=features.constant)
    else:
        columns = [LOSS]
    per_repeat, rocs = [], []
    for r in range(splits.repeats):
        tr, ev = splits.ids(r, ROLE_TRAIN), splits.ids(r, ROLE_EVAL)
        train, held = AttackData.from_table(features.table, columns, tr), AttackData.from_table(features.table, columns, ev)
        if name == "nasr":
            train.inputs = data.normalise(data.images(tr)[0])
            held.inputs = data.normalise(data.images(ev)[0])
            attack = make_attack("nasr", model=model, seed=seed + r, **(nasr or {}))
        elif name == "logistic":
            attack = make_attack(name, C=C, seed=seed + r, transform=transform)
        else:
            attack = make_attack(name)
        metrics = evaluate(attack, train, held)
        per_repeat.append(metrics)
        rocs.append(_roc_points(held.y, attack.score(held)))
    return {
        "attack": name,
        "layers": layers if name in ("logistic", "nasr") else [],
        "kinds": list(kinds) if name == "logistic" else (["grad", "out", "loss"] if name == "nasr" else ["loss"]),
        "columns": len(columns) if name != "nasr" else None,
        "transform": transform if name == "logistic" else None,
        "repeats": splits.repeats,
        "n_train": int(len(splits.ids(0, ROLE_TRAIN))),
        "n_eval": int(len(splits.ids(0, ROLE_EVAL))),
        "metrics": aggregate(per_repeat),
        "per_repeat": per_repeat,
        "roc": rocs,
    }
