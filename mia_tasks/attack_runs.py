"""One attack, cross-fitted over the audited pool: metrics with bootstrap intervals, and its ROC curve.

Each audited sample is scored once, by the attack fitted on the other ``folds`` (balanced by
membership); every metric uses all audited samples and carries a 95% interval from a bootstrap over
them, stratified by membership (``{"value", "ci95", "n", "resampling"}``). Used by ``layerleak attack``,
by the sweep's loss baseline and by the seed study's experiments, so a number in the report is exactly
what a direct call gives. The logistic attack is fitted with the sweep's batched fitter
(mia_tasks.coalitions, the model of LogisticAttack), so a feature selection's value here is its v(S).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .attacks import AttackData, make_attack, select_columns
from .attacks.references import CALIBRATED, reference_columns
from .featurestore import Features
from .metrics import roc_curve
from .schema import LOSS
from .splits import Splits
from .errors import LayerleakError
from .attacks.threshold import best_threshold
from .uncertainty import bootstrap_metrics, combine_targets, crossfit_attack, crossfit_coalitions
from .uncertainty.crossfit import check_membership, margin, stratified_folds, training_rows
from .uncertainty.pooled import pooled_metrics
from .uncertainty.lowfpr import MIN_FALSE_POSITIVES

EVALUATION = "k-fold cross-fitted (folds balanced by membership): each audited sample scored once, by the attack fitted on the other folds"
RAW_EVALUATION = ("as the papers evaluate: AUC, TPR at low FPR and the ROC on each sample's raw score over the whole audited pool "
                  "(LiRA's pooled variance over every audited sample; RMIA's population z = every other audited non-member); "
                  "accuracy from a threshold cross-fitted over the folds (each sample's threshold read on other folds)")


def _roc_points(y: np.ndarray, scores: np.ndarray, n: int = 200) -> dict[str, list[float]]:
    """The ROC curve thinned to at most ``n`` points (kept log-spaced in FPR), for plots."""
    fpr, tpr, _ = roc_curve(y, scores)
    if len(fpr) > n:
        keep = np.unique(np.concatenate([[0, len(fpr) - 1], np.searchsorted(fpr, np.geomspace(1e-4, 1, n)).clip(0, len(fpr) - 1)]))
        fpr, tpr = fpr[keep], tpr[keep]
    return {"fpr": [float(v) for v in fpr], "tpr": [float(v) for v in tpr]}


def out_of_fold(name: str, features: Features, splits: Splits, columns: Sequence[str], folds: int, seed: int,
                C: float = 1.0, transform: str = "none", make: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """(out-of-fold margins float64 [n], membership bool [n]) of the audited samples in splits order;
    a margin >= 0 predicts a member. ``make`` builds a fresh attack per fold (default: ``make_attack(name)``)."""
    data = AttackData.from_table(features.table, list(columns), splits.sample_ids)
    if name in CALIBRATED:
        margins, y, _raw, _z = calibrated_scores(name, data, folds, seed, make)
        return margins, y
    if name == "logistic":
        cf = crossfit_coalitions(data.X, data.y, [np.arange(len(columns))], k=folds, seed=seed, C=C, transform=transform)
        return cf.scores[0].astype(np.float64), cf.y
    if name == "nasr":
        data.inputs = make.inputs(splits.sample_ids)
    cf = crossfit_attack(make.new if name == "nasr" else (make or (lambda: make_attack(name))), data, k=folds, seed=seed)
    return cf.scores, cf.y


def calibrated_scores(name: str, data: AttackData, folds: int, seed: int,
                      make: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(margins [n], membership [n], raw scores [n], population size) of a calibrated attack (LiRA, RMIA).

    They need no training: each sample's raw score is computed once over the whole audited pool, so it
    does not depend on which samples share its fold (LiRA's pooled variance reads every audited sample's
    references; RMIA's population z is every audited non-member but the sample itself). Only the threshold
    that accuracy needs is cross-fitted: fold j's margin is its raw score minus the best threshold on the
    folds that train fold j (crossfit.training_rows, as for every other attack).
    """
    y = check_membership(data.y)
    attack = (make or (lambda: make_attack(name)))().fit(data)
    raw = np.asarray(attack.score(data), dtype=np.float64)
    fold_of = stratified_folds(y, folds, seed)
    margins = np.empty(y.size)
    for j in range(folds):
        test = fold_of == j
        train = training_rows(fold_of, j, folds)
        margins[test] = margin(raw[test], best_threshold(y[train], raw[train])[0])
    population = int((~y).sum()) - 1 if hasattr(attack, "lr_z_") else 0
    return margins, y, raw, population


def attack_record(y: np.ndarray, scores: np.ndarray, folds: int, bootstrap: int, seed: int,
                  raw: np.ndarray | None = None, sample_ids: np.ndarray | None = None) -> dict:
    """Metrics with intervals, the ROC curve and the evaluation's sizes, from out-of-fold margins (with ``raw``,
    a calibrated attack's raw scores, the threshold-free metrics and the ROC read those, which are stored);
    the ROC is measurable from FPR = 10 / non-members up (at least ten false positives), as TPR at an FPR is.
    ``sample_ids`` given: the per-sample out-of-fold margins are kept too (``sample_ids``, ``scores``), for
    OUT/scores.parquet and ``layerleak compare``."""
    y = np.asarray(y, bool)
    metrics = bootstrap_metrics(y, scores, replicates=bootstrap, seed=seed, raw=raw)
    record = {"n": int(y.size), "members": int(y.sum()), "non_members": int((~y).sum()), "folds": int(folds),
              "evaluation": EVALUATION if raw is None else RAW_EVALUATION, "metrics": metrics,
              "roc": _roc_points(y, scores if raw is None else raw),
              "roc_measurable_from": min(1.0, MIN_FALSE_POSITIVES / max(1, int((~y).sum())))}
    if raw is not None:
        record["raw_scores"] = [float(v) for v in raw]
    if sample_ids is not None:
        record["sample_ids"] = [int(i) for i in sample_ids]
        record["scores"] = [float(v) for v in np.asarray(scores, np.float64)]
    return record


class NasrMaker:
    """Builds a fresh Nasr attack per fold, and its raw inputs (the target's images) by sample id."""

    def __init__(self, model: Any, data: Any, seed: int, options: dict):
        self.model, self.data, self.seed, self.options = model, data, seed, options

    def new(self) -> Any:
        return make_attack("nasr", model=self.model, seed=self.seed, **self.options)

    def inputs(self, sample_ids: np.ndarray) -> Any:
        return self.data.normalise(self.data.images(sample_ids)[0])


def attack_scores(name: str, features: Features, splits: Splits, layers: Sequence[str] | None = None,
                  kinds: Sequence[str] = ("grad",), C: float = 1.0, transform: str = "none", model: Any = None,
                  data: Any = None, nasr: dict | None = None, seed: int = 0, folds: int = 5,
                  options: dict | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """(out-of-fold margins [n], membership [n], raw scores [n] or None, what was attacked) of ``name`` cross-fitted
    over the audited pool; raw scores for the calibrated attacks (calibrated_scores), None for the others.

    Feature attacks read the features table; ``nasr`` needs the target ``model`` and the image ``data``
    (it is cross-fitted too: one attack model trained per fold). Calibrated attacks (lira, rmia) read the
    ``loss`` and the reference models' columns joined in (attacks.references.join_models), built with ``options``.
    """
    layers = list(layers) if layers else list(features.layers)
    if name == "logistic":
        columns = select_columns(features.table.column_names, layers, kinds, exclude=features.constant)
    elif name in CALIBRATED:
        columns = [LOSS, *reference_columns(features.table.column_names)]
    else:
        columns = [LOSS]
    if name == "nasr":
        make = NasrMaker(model, data, seed, nasr or {})
    else:
        make = (lambda: make_attack(name, **options)) if options else None
    raw = None
    if name in CALIBRATED:
        data = AttackData.from_table(features.table, list(columns), splits.sample_ids)
        scores, y, raw, population = calibrated_scores(name, data, folds, seed, make)
    else:
        scores, y = out_of_fold(name, features, splits, columns, folds, seed, C, transform, make)
    about = {
        "attack": name,
        "layers": layers if name in ("logistic", "nasr") else [],
        "kinds": list(kinds) if name == "logistic" else (["grad", "out", "loss"] if name == "nasr" else ["loss"]),
        "columns": len(columns) if name != "nasr" else None,
        **({"references": len(reference_columns(columns)) // 2, "options": dict(options or {})} if name in CALIBRATED else {}),
        "transform": transform if name == "logistic" else None,
        **({"population": population} if name in CALIBRATED and population else {}),
    }
    return scores, y, raw, about


def run_attack(name: str, features: Features, splits: Splits, layers: Sequence[str] | None = None,
               kinds: Sequence[str] = ("grad",), C: float = 1.0, transform: str = "none", model: Any = None, data: Any = None,
               nasr: dict | None = None, seed: int = 0, folds: int = 5, bootstrap: int = 1000,
               options: dict | None = None) -> dict:
    """Cross-fit ``name`` over the audited pool (attack_scores), bootstrap its metrics; a JSON-ready dict."""
    scores, y, raw, about = attack_scores(name, features, splits, layers, kinds, C, transform, model, data, nasr, seed, folds, options)
    return {**about, **attack_record(y, scores, folds, bootstrap, seed, raw, splits.sample_ids)}


def run_attack_targets(name: str, inputs: Sequence[tuple[Features, Splits, Features]], layers: Sequence[str] | None = None,
                       kinds: Sequence[str] = ("grad",), C: float = 1.0, transform: str = "none", seed: int = 0,
                       folds: int = 5, bootstrap: int = 1000, options: dict | None = None,
                       baseline: str = "loss-threshold") -> dict:
    """``name`` on every target of a population, each audited with its own membership (and its own references).

    ``inputs``: per target t = 0..T-1, (features for ``name``, splits, features for ``baseline``). The result is
    target 0's record (run_attack's) plus ``targets``: each target's metrics, their between-target means
    (t-intervals, n = targets), and the pooled ROC over every (target, sample) of ``name`` and ``baseline``
    with their paired difference (uncertainty.pooled: a two-way bootstrap over targets and samples).
    """
    if not inputs:
        raise LayerleakError("run_attack_targets: no targets given")
    per_target, scores, base, member = [], [], [], []
    for t, (features, splits, base_features) in enumerate(inputs):
        s, y, raw, about = attack_scores(name, features, splits, layers, kinds, C, transform, seed=seed, folds=folds, options=options)
        record = {**about, **attack_record(y, s, folds, bootstrap, seed, raw, splits.sample_ids)}
        per_target.append(record)
        scores.append(s if raw is None else raw)  # pooled metrics are threshold-free: a calibrated attack's raw scores
        member.append(y)
        if baseline != name:
            base.append(out_of_fold(baseline, base_features, splits, [LOSS], folds, seed)[0])
    pooled_scores = {name: np.vstack(scores), **({baseline: np.vstack(base)} if base else {})}
    M = np.vstack(member)
    pooled = pooled_metrics(pooled_scores, M, replicates=bootstrap, seed=seed, baseline=baseline if base else name)
    y = M.ravel()
    pooled["roc"] = {attack: _roc_points(y, s.ravel()) for attack, s in pooled_scores.items()}
    pooled["roc_measurable_from"] = min(1.0, MIN_FALSE_POSITIVES / max(1, int((~y).sum())))
    summary = {
        "count": len(inputs),
        "per_target": [{"target": t, "n": r["n"], "members": r["members"], "non_members": r["non_members"],
                        "metrics": r["metrics"]} for t, r in enumerate(per_target)],
        "between_targets": combine_targets([r["metrics"] for r in per_target]) if len(inputs) > 1 else None,
        "pooled": pooled,
    }
    return {**per_target[0], "targets": summary}
