"""The seed study's experiments (its figures 3-5) as feature selections, each scored by ``run_attack``.

    groups-grad   gradients of every suffix of the layer list: the last layer, the last two, ..., all
                  (the seed's groups; every one holds the last layer, so the trend is confounded)
    groups-out    last-layer gradient; + last-layer output; + all outputs; all gradients + all outputs
    single-layer  each layer alone (the sweep's feature kinds)

Figure 6 (Shapley per layer) is the sweep itself (OUT/shapley.json). A ``Selection`` names, per
feature kind, the layers whose statistics the attack reads. The logistic attack runs on a view of
the features table holding only those columns, so a selection that is a plain layers × kinds
product gives exactly ``run_attack("logistic", features, splits, layers, kinds)``. The Nasr attack
reads the same layers' raw weight gradients and output activations (plus the label; not the loss,
so a row measures the layers alone). Every row is cross-fitted over the audited pool and carries
bootstrap intervals (mia_tasks.attack_runs): a logistic row's accuracy is the v(S) of its feature set.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from .attack_runs import run_attack
from .config import attack_settings
from .errors import LayerleakError
from .featurestore import Features
from .rundir import stamp
from .schema import ID_COLUMNS, LAYER_KINDS, LOSS, STATS, column
from .splits import Splits

EXPERIMENTS = ("groups-grad", "groups-out", "single-layer")
ALL_EXPERIMENTS = (*EXPERIMENTS, "shapley")
# The Nasr attack model convolves each raw per-sample weight gradient: a selection whose gradients hold
# more parameters than this per sample is skipped (a CIFAR AlexNet's fc layers alone hold ~50M).
NASR_MAX_GRAD_PARAMS = 2_000_000

DESCRIPTIONS = {
    "groups-grad": "gradient statistics of every suffix of the layer list (last layer, last 2, ..., all); every group "
                   "holds the last layer, so a rise with group size measures what earlier layers add to it, not that "
                   "later layers leak more",
    "groups-out": "last-layer gradient; + last-layer output; + all layers' outputs; all gradients + all outputs",
    "single-layer": "each layer's features alone",
    "shapley": "exact (or sampled) Shapley value of each player from the sweep of every coalition (OUT/shapley.json)",
}


@dataclass
class Selection:
    """One bar of an experiment: the layers whose gradient (``grad``) and output (``out``) features the attack reads."""

    label: str
    grad: list[str] = field(default_factory=list)
    out: list[str] = field(default_factory=list)

    def layers(self, order: Sequence[str]) -> list[str]:
        """Every layer the selection touches, in forward ``order``."""
        used = set(self.grad) | set(self.out)
        return [l for l in order if l in used]

    def kinds(self) -> list[str]:
        return [k for k in LAYER_KINDS if getattr(self, k)]

    def columns(self, features: Features) -> list[str]:
        """The feature columns, in the table's order (kind.layer.stat), less those constant by construction."""
        wanted = {column(k, l, s) for k in LAYER_KINDS for l in getattr(self, k) for s in STATS} - set(features.constant)
        return [c for c in features.table.column_names if c in wanted]


def selections(name: str, layers: Sequence[str], single_kinds: Sequence[str] = ("grad",)) -> list[Selection]:
    """The bars of experiment ``name`` over ``layers`` (forward order)."""
    layers = list(layers)
    if not layers:
        raise LayerleakError("no audited layers to run experiments on")
    last = layers[-1]
    if name == "groups-grad":
        return [Selection(f"last {k}" if k > 1 else "last layer", grad=layers[-k:]) for k in range(1, len(layers) + 1)]
    if name == "groups-out":
        return [Selection("last-layer gradient", grad=[last]),
                Selection("+ last-layer output", grad=[last], out=[last]),
                Selection("+ all outputs", grad=[last], out=layers),
                Selection("all gradients + all outputs", grad=layers, out=layers)]
    if name == "single-layer":
        return [Selection(l, **{k: [l] for k in single_kinds}) for l in layers]
    raise LayerleakError(f"unknown experiment {name!r}; choose one of {', '.join(ALL_EXPERIMENTS)}")


def features_view(features: Features, sel: Selection) -> Features:
    """The features with only the selection's feature columns (plus ids, labels, membership, loss)."""
    keep = [c for c in (*ID_COLUMNS, LOSS) if c in features.table.column_names]
    cols = sel.columns(features)
    if not cols:
        raise LayerleakError(f"the features table has no columns for {sel.label!r} (grad {sel.grad}, out {sel.out})")
    return Features(features.table.select(keep + cols), sel.layers(features.layers), features.params, features.depths,
                    features.constant)


def logistic_row(sel: Selection, features: Features, splits: Splits, attack_cfg: Any, seed: int) -> dict:
    """``run_attack('logistic', ...)`` on the selection's columns, cross-fitted and bootstrapped as ``attack_cfg`` says."""
    view = features_view(features, sel)
    return run_attack("logistic", view, splits, sel.layers(features.layers), sel.kinds(), C=attack_cfg.C,
                      transform=attack_cfg.transform, seed=seed, folds=attack_cfg.folds, bootstrap=attack_cfg.bootstrap)


def nasr_options(sel: Selection, attack_cfg: Any) -> dict:
    """NasrAttack options for a selection: its gradient layers and output activations, the label, no loss."""
    return {"layers": list(sel.grad), "outputs": list(sel.out), "use_loss": False, "use_label": True,
            "epochs": attack_cfg.nasr_epochs, "lr": attack_cfg.nasr_lr, "batch_size": attack_cfg.nasr_batch_size}


def nasr_too_big(sel: Selection, params: dict[str, int]) -> str | None:
    """Why the Nasr attack skips a selection (raw gradients too large), or None."""
    n = sum(params[l] for l in sel.grad)
    if n > NASR_MAX_GRAD_PARAMS:
        return f"skipped: {n:,} gradient parameters per sample exceed the Nasr attack's budget ({NASR_MAX_GRAD_PARAMS:,})"
    return None


def experiment_settings(cfg: Any, name: str, attack: str, layers: Sequence[str]) -> dict:
    """Everything besides the features that changes an experiment's numbers: a saved one is reused or
    reported only when these match (rundir.is_current)."""
    if name == "seed-shapley":  # the seed's own protocol (mia_tasks.seed_protocol) on the sweep's players
        return {"seed": cfg.seed, "players": cfg.sweep.players, "kinds": list(cfg.sweep.kinds), "protocol": "seed-1"}
    plain = {k: v for k, v in attack_settings(cfg, "logistic").items() if k not in ("references", "targets")}
    s = {**plain, "layers": list(layers)}  # experiments audit target 0 with plain features
    if name == "single-layer":
        s["kinds"] = list(cfg.sweep.kinds)
    if attack == "nasr":
        nasr = {k: v for k, v in attack_settings(cfg, "nasr").items() if k != "seed"}
        s["nasr"] = {**nasr, "max_grad_params": NASR_MAX_GRAD_PARAMS, "use_loss": False}
    return s


def experiment_key(features_hash: str, name: str, attack: str, settings: dict) -> str:
    """Identifies a result: reused only when features, experiment, attack and its settings all match."""
    blob = json.dumps({"features": features_hash, "experiment": name, "attack": attack, **settings}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_experiment(name: str, attack: str, sels: list[Selection], features: Features,
                   row_fn: Callable[[Selection], dict | str], features_hash: str, key: str, settings: dict) -> dict:
    """Score every selection with ``row_fn`` (a result dict, or a str: why it was skipped); the experiment's JSON."""
    rows = []
    for sel in sels:
        row = {"label": sel.label, "grad": sel.grad, "out": sel.out, "layers": sel.layers(features.layers)}
        row["params"] = int(sum(features.params[l] for l in set(sel.grad)))
        result = row_fn(sel)
        if isinstance(result, str):
            row["skipped"] = result
        else:
            row["result"] = result
        rows.append(row)
    return {"experiment": name, "attack": attack, "description": DESCRIPTIONS[name],
            **stamp("experiment", {"features": features_hash}, settings), "key": key, "layers": list(features.layers), "rows": rows}


def summary(record: dict, metric: str = "accuracy") -> list[dict]:
    """Per row: label, layers, and ``metric``'s entry ({"value", "ci95", "n", "resampling"}; None where skipped)."""
    return [{"label": row["label"], "layers": row["layers"], "metric": row.get("result", {}).get("metrics", {}).get(metric),
             "skipped": row.get("skipped")} for row in record["rows"]]
